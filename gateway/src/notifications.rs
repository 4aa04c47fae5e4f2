//! `tidings.v1.NotificationService`: validates a send, turns it into one
//! `NotificationRequest` per user and returns once Kafka has them all.

use std::collections::BTreeMap;

use tidings_kafka::{
    KafkaError, OutRecord, RECORD_OVERHEAD_BYTES,
    backlog::{NoRoom, record_bytes},
    now_millis,
};
use tidings_schemas::{
    Channel, ids,
    proto::v1::{
        self as pb, GetStatusRequest, GetStatusResponse, SendBatchRequest, SendBatchResponse,
        SendRequest, SendResponse, notification_service_server::NotificationService,
        send_batch_result::Outcome, send_request::Content,
    },
    records::{
        NotificationRequest, Priority, RawContent, TemplateRef, TrackingEvent, TrackingKind,
    },
};
use tidings_telemetry::BacklogWait;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    Gateway,
    limits::{self, MessageBudget},
    validate,
};

/// Most users one send may target (lowered by
/// `gateway.max_expanded_notifications`).
pub const MAX_USERS_PER_SEND: usize = 10_000;

/// Bytes of expanded notifications one call holds at once, unless
/// `gateway.expansion_buffer_bytes` says otherwise.
pub const EXPANSION_BUFFER_BYTES: usize = 16 << 20;

/// Bytes one call may write to the requests topic, unless
/// `gateway.max_call_bytes` says otherwise.
pub const MAX_CALL_BYTES: usize = 256 << 20;

/// What one call may carry, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct SendLimits {
    /// Most notifications one call may expand to.
    pub max_expanded: usize,
    /// Bytes of expanded notifications one call holds at once; the users
    /// beyond are expanded and produced a chunk at a time.
    pub expansion_buffer_bytes: usize,
    /// Bytes one call may write to Kafka in all: each user's record carries
    /// its own copy of the content, so users x content is bounded too, not
    /// only each.
    pub max_call_bytes: usize,
    pub budget: MessageBudget,
}

impl Default for SendLimits {
    fn default() -> Self {
        Self {
            max_expanded: MAX_USERS_PER_SEND,
            expansion_buffer_bytes: EXPANSION_BUFFER_BYTES,
            max_call_bytes: MAX_CALL_BYTES,
            budget: MessageBudget {
                max_message_bytes: 1_000_000,
            },
        }
    }
}

/// One call's (or one batch item's) share of the call's limits.
#[derive(Debug, Clone, Copy)]
struct CallShare {
    /// Bytes of expanded notifications it may hold at once.
    buffer_bytes: usize,
    /// Bytes it may write to the requests topic in all.
    max_bytes: usize,
}

/// How many users to expand at once when each one's record is
/// `record_bytes` and the call may hold `buffer_bytes`: a user's request
/// (decoded), its encoded record and the producer's copy of it live until
/// Kafka acknowledges the record, about three times the record. At least
/// one user, so a send always makes progress.
fn users_per_chunk(record_bytes: usize, buffer_bytes: usize) -> usize {
    (buffer_bytes / (3 * record_bytes.max(1))).max(1)
}

/// Namespace for notification ids derived from (app, event, user), so a
/// caller retrying a send with the same event id gets the same ids back;
/// led by the event id's time when it has one ([`ids::time_ordered`]).
const NOTIFICATION_ID_NAMESPACE: Uuid = Uuid::from_u128(0x7469_6469_6e67_7300_8000_0000_0000_0001);

#[tonic::async_trait]
impl NotificationService for Gateway {
    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        let app_key = match self.authorize(&request, "send").await {
            Ok(key) => key,
            Err(status) => {
                self.count("Send", &Err::<(), _>(status.clone()));
                return Err(status);
            }
        };
        let share = CallShare {
            buffer_bytes: self.limits.expansion_buffer_bytes,
            max_bytes: self.limits.max_call_bytes,
        };
        let accepted = self.accept(&app_key, request.into_inner(), "", share).await;
        self.count("Send", &accepted);
        accepted.map(Response::new)
    }

    async fn send_batch(
        &self,
        request: Request<SendBatchRequest>,
    ) -> Result<Response<SendBatchResponse>, Status> {
        let app_key = self.authorize(&request, "send").await?;
        let items = request.into_inner().items;
        if items.is_empty() {
            return Err(validate::invalid("items", "is empty"));
        }
        if items.len() > self.config.max_batch {
            return Err(validate::invalid(
                "items",
                format!(
                    "has {} entries; at most {} per call (gateway.max_batch)",
                    items.len(),
                    self.config.max_batch
                ),
            ));
        }
        // Each user of each item becomes a record held until Kafka has it:
        // bound the expansion before any of it is built.
        let expanded: usize = items.iter().map(|i| i.user_ids.len()).sum();
        let max = self.limits.max_expanded;
        if expanded > max {
            return Err(validate::invalid(
                "items",
                format!(
                    "expand to {expanded} notifications (user_ids summed over items); at most {max} per call (gateway.max_expanded_notifications): split the batch"
                ),
            ));
        }
        // Each item succeeds or fails on its own. They share the call's
        // expansion buffer, so the call holds at most that much whatever its
        // shape (plus one record per item). Likewise the bytes the call may
        // write: an even share per item.
        let share = CallShare {
            buffer_bytes: self.limits.expansion_buffer_bytes / items.len(),
            max_bytes: self.limits.max_call_bytes / items.len(),
        };
        let prepared = futures::future::join_all(items.into_iter().enumerate().map(|(i, item)| {
            let app_key = &app_key;
            async move {
                let prefix = format!("items[{i}].");
                let prepared = self.prepare(app_key, item, &prefix, share).await;
                (i, prefix, prepared)
            }
        }))
        .await;
        let mut results: Vec<Option<Result<SendResponse, Status>>> = Vec::new();
        results.resize_with(prepared.len(), || None);
        // Items that fit one chunk (one user each, as most batches) are
        // written together; larger ones chunk by chunk, concurrently.
        let chunk_bytes = self.chunk_bytes(share.buffer_bytes);
        let (mut together, mut alone) = (Vec::new(), Vec::new());
        for (i, prefix, prepared) in prepared {
            match prepared {
                Err(status) => results[i] = Some(Err(status)),
                Ok(p) if p.send.user_ids.len() <= users_per_chunk(p.record_bytes, chunk_bytes) => {
                    together.push((i, prefix, p))
                }
                Ok(p) => alone.push((i, prefix, p)),
            }
        }
        // Groups of items, one after another, so that what the call holds
        // stays within its buffer (a record is held about three times, as
        // in `users_per_chunk`), and on the embedded cluster what is
        // written at once within what may wait unread per partition.
        let group_bytes = self.chunk_bytes(self.limits.expansion_buffer_bytes / 3);
        let mut groups: Vec<Vec<(usize, String, Prepared)>> = Vec::new();
        let mut bytes = 0;
        for item in together {
            let item_bytes = item.2.record_bytes * item.2.send.user_ids.len();
            match groups.last_mut() {
                Some(group) if bytes + item_bytes <= group_bytes => group.push(item),
                _ => {
                    bytes = 0;
                    groups.push(vec![item]);
                }
            }
            bytes += item_bytes;
        }
        let (written_together, written_alone) = futures::join!(
            async move {
                let mut answers = Vec::new();
                for group in groups {
                    answers.extend(self.write_together(group).await);
                }
                answers
            },
            futures::future::join_all(alone.into_iter().map(|(i, prefix, p)| async move {
                (i, self.write_in_chunks(p, &prefix, share).await)
            })),
        );
        for (i, answer) in written_together.into_iter().chain(written_alone) {
            results[i] = Some(answer);
        }
        let results = results
            .into_iter()
            .map(|r| pb::SendBatchResult {
                outcome: Some(
                    match r.unwrap_or_else(|| Err(Status::internal("item not answered"))) {
                        Ok(accepted) => Outcome::Accepted(accepted),
                        Err(status) => Outcome::Error(status.message().to_owned()),
                    },
                ),
            })
            .collect();
        self.count("SendBatch", &Ok::<_, Status>(()));
        Ok(Response::new(SendBatchResponse { results }))
    }

    async fn get_status(
        &self,
        request: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        self.authorize(&request, "status").await?;
        let id = request.into_inner().notification_id;
        validate::id("notification_id", &id)?;
        let entries = self
            .store
            .notification_log
            .get(&id)
            .await
            .map_err(crate::store_status)?;
        if entries.is_empty() {
            return Err(Status::not_found(format!(
                "notification_id: no notification `{id}`"
            )));
        }
        let deliveries = entries
            .into_iter()
            .map(|e| pb::DeliveryStatus {
                channel: e.channel,
                target: e.target,
                state: e.state,
                detail: e.detail.unwrap_or_default(),
                attempt: e.attempt,
                at_ms: e.at,
            })
            .collect();
        Ok(Response::new(GetStatusResponse {
            notification_id: id,
            deliveries,
        }))
    }
}

/// A send validated and sized, ready to be written.
struct Prepared {
    send: ValidSend,
    /// The longest user's request and record: built to size the send, and
    /// written as that user's, so a send of one user (most of a batch's
    /// items) is built and encoded once.
    largest: Option<(NotificationRequest, OutRecord)>,
    /// The encoded size of the largest record.
    record_bytes: usize,
}

impl Prepared {
    /// The requests and records of `users`, in order.
    fn build(
        &mut self,
        gateway: &Gateway,
        topic: &str,
        users: &[String],
    ) -> Result<(Vec<NotificationRequest>, Vec<OutRecord>), Status> {
        let mut requests = Vec::with_capacity(users.len());
        let mut records = Vec::with_capacity(users.len());
        for user in users {
            let (request, record) = match self.largest.take_if(|(r, _)| r.user_id == *user) {
                Some(built) => built,
                None => {
                    let request = self.send.request(user);
                    let record = gateway
                        .producer
                        .encode(topic, &request.user_id, &request)
                        .map_err(internal)?;
                    (request, record)
                }
            };
            requests.push(request);
            records.push(record);
        }
        Ok((requests, records))
    }
}

/// A batch item written together with others: where its records are in
/// the shared hand-over.
struct Together {
    index: usize,
    prefix: String,
    event_id: String,
    records: std::ops::Range<usize>,
}

impl Gateway {
    /// Validates one send and writes it to Kafka, durably: answers once
    /// every user's record is acknowledged.
    async fn accept(
        &self,
        app_key: &str,
        send: SendRequest,
        prefix: &str,
        share: CallShare,
    ) -> Result<SendResponse, Status> {
        let prepared = self.prepare(app_key, send, prefix, share).await?;
        self.write_in_chunks(prepared, prefix, share).await
    }

    /// Validates a send (fields, template, sizes) and builds its largest
    /// record; nothing is written yet.
    async fn prepare(
        &self,
        app_key: &str,
        send: SendRequest,
        prefix: &str,
        share: CallShare,
    ) -> Result<Prepared, Status> {
        let mut send = validate_send(app_key, send, prefix, now_millis(), self.limits)?;
        self.check_template(&mut send.prototype, prefix).await?;
        let largest = self.largest_record(&send, prefix)?;
        let record_bytes = largest.1.size();
        let total = record_bytes.saturating_mul(send.user_ids.len());
        if total > share.max_bytes {
            return Err(validate::invalid(
                format!("{prefix}user_ids"),
                format!(
                    "{} users x {record_bytes} bytes each is {total} bytes to write; at most {} for this {} (gateway.max_call_bytes{}): send fewer users per call or less content",
                    send.user_ids.len(),
                    share.max_bytes,
                    if prefix.is_empty() { "call" } else { "item" },
                    if prefix.is_empty() {
                        ""
                    } else {
                        " shared by the batch's items"
                    },
                ),
            ));
        }
        Ok(Prepared {
            send,
            largest: Some(largest),
            record_bytes,
        })
    }

    /// Bytes of records written at once: `buffer_bytes`, and on the
    /// embedded cluster no more than may wait unread per partition, so a
    /// large send waits for the enricher chunk by chunk instead of
    /// overrunning what the mock brokers keep.
    fn chunk_bytes(&self, buffer_bytes: usize) -> usize {
        match self.producer.backlog_marks() {
            Some(marks) => buffer_bytes.min(marks.bytes as usize),
            None => buffer_bytes,
        }
    }

    /// Writes a prepared send. Each user's request carries its own copy of
    /// the content, so the users are expanded and produced a chunk at a
    /// time, holding at most the call's share of the buffer (and one
    /// record).
    async fn write_in_chunks(
        &self,
        mut prepared: Prepared,
        prefix: &str,
        share: CallShare,
    ) -> Result<SendResponse, Status> {
        let topic = self.topics.requests();
        let per_chunk =
            users_per_chunk(prepared.record_bytes, self.chunk_bytes(share.buffer_bytes));
        let users = std::mem::take(&mut prepared.send.user_ids);
        let mut notification_ids = Vec::with_capacity(users.len());
        for users in users.chunks(per_chunk) {
            let (requests, records) = prepared.build(self, topic, users)?;
            let events = self.accepted_events(&requests);
            self.room_for(&records, &events)
                .await
                .map_err(|e| no_room_status(prefix, e))?;
            // The requests first: once they are acknowledged the
            // notifications are accepted; the tracking events after that are
            // best effort. A failure in a later chunk answers UNAVAILABLE and
            // the retry (same event id, same notification ids) is deduplicated.
            self.producer
                .send_all(&records)
                .await
                .map_err(|e| produce_status(prefix, e))?;
            drop(records);
            self.send_tracking(events);
            notification_ids.extend(requests.into_iter().map(|r| r.notification_id));
        }
        Ok(SendResponse {
            event_id: prepared.send.prototype.event_id,
            notification_ids,
        })
    }

    /// Writes batch items that each fit in one chunk as one hand-over: one
    /// wait for room, one wait for the brokers and one tracking write for
    /// all of them, instead of one each. Each item still answers for its
    /// own records only. The items together stay within the call's buffer
    /// (each holds at most its share of it).
    async fn write_together(
        &self,
        items: Vec<(usize, String, Prepared)>,
    ) -> Vec<(usize, Result<SendResponse, Status>)> {
        let topic = self.topics.requests();
        let mut answers = Vec::with_capacity(items.len());
        let mut written = Vec::with_capacity(items.len());
        let mut requests = Vec::new();
        let mut records = Vec::new();
        for (index, prefix, mut prepared) in items {
            let users = std::mem::take(&mut prepared.send.user_ids);
            match prepared.build(self, topic, &users) {
                Ok((item_requests, item_records)) => {
                    let start = records.len();
                    requests.extend(item_requests);
                    records.extend(item_records);
                    written.push(Together {
                        index,
                        prefix,
                        event_id: prepared.send.prototype.event_id,
                        records: start..records.len(),
                    });
                }
                Err(status) => answers.push((index, Err(status))),
            }
        }
        if written.is_empty() {
            return answers;
        }
        let mut events = self.accepted_events(&requests).into_iter();
        if let Err(e) = self.room_for(&records, events.as_slice()).await {
            answers.extend(
                written
                    .into_iter()
                    .map(|item| (item.index, Err(no_room_status(&item.prefix, e.clone())))),
            );
            return answers;
        }
        let handover = self.producer.enqueue_all(&records);
        let mut outcomes = self.producer.acknowledged(handover, &records).await;
        drop(records);
        let mut accepted = Vec::with_capacity(events.len());
        let mut requests = requests.into_iter();
        for item in written {
            let mine = requests.by_ref().take(item.records.len());
            let their_events = events.by_ref().take(item.records.len());
            let failed = outcomes[item.records.clone()]
                .iter_mut()
                .find_map(|outcome| std::mem::replace(outcome, Ok(())).err());
            let answer = match failed {
                Some(e) => Err(produce_status(&item.prefix, e)),
                None => {
                    accepted.extend(their_events);
                    Ok(SendResponse {
                        event_id: item.event_id,
                        notification_ids: mine.map(|r| r.notification_id).collect(),
                    })
                }
            };
            answers.push((item.index, answer));
        }
        self.send_tracking(accepted);
        answers
    }

    /// Waits, on the embedded cluster, until the requests topic has room for
    /// `records` (the enricher is behind) and the tracking topic for their
    /// ACCEPTED `events` (its readers are behind), at most the produce
    /// timeout in all. At once on real brokers. Without the second wait a
    /// burst would write its ACCEPTED events past a slow tracking reader,
    /// and the mock broker drops what a partition holds beyond 5 MiB.
    async fn room_for(&self, records: &[OutRecord], events: &[OutRecord]) -> Result<(), NoRoom> {
        let deadline = tokio::time::Instant::now() + self.producer.timeout();
        self.room_on(self.topics.requests(), records, deadline)
            .await?;
        self.room_on(self.topics.tracking(), events, deadline).await
    }

    /// Waits, on the embedded cluster, until `topic` has room for `records`
    /// (its readers are behind), at most until `deadline`; at once on real
    /// brokers. Counted in `tidings_embedded_backlog_waits_total`.
    async fn room_on(
        &self,
        topic: &str,
        records: &[OutRecord],
        deadline: tokio::time::Instant,
    ) -> Result<(), NoRoom> {
        if !self.producer.counts_backlog() {
            return Ok(());
        }
        let adding = records
            .iter()
            .map(|r| record_bytes(r.key.len(), r.payload.len()))
            .sum();
        self.producer
            .room_for(
                topic,
                adding,
                Some(deadline),
                &CancellationToken::new(),
                |_| {
                    BacklogWait {
                        writer: "gateway",
                        topic,
                    }
                    .emit()
                },
            )
            .await
    }

    /// Writes `records` to `topic` once it has room (see [`Self::room_on`]),
    /// waiting at most until `deadline`: the tracking writes a caller waits
    /// for (delivery receipts, inbox reads).
    pub(crate) async fn write_with_room(
        &self,
        topic: &str,
        records: &[OutRecord],
        deadline: tokio::time::Instant,
    ) -> Result<(), RoomOrKafka> {
        self.room_on(topic, records, deadline).await?;
        Ok(self.producer.send_all(records).await?)
    }

    /// The send's largest record (the longest user's), refused by field when
    /// it cannot fit. Records differ only in the user, so the longest user id
    /// makes the largest; checking it before anything is produced keeps a
    /// send from being half accepted.
    fn largest_record(
        &self,
        send: &ValidSend,
        prefix: &str,
    ) -> Result<(NotificationRequest, OutRecord), Status> {
        let longest = send
            .user_ids
            .iter()
            .max_by_key(|u| u.len())
            .map(String::as_str)
            .unwrap_or_default();
        let request = send.request(longest);
        let record = self
            .producer
            .encode(self.topics.requests(), &request.user_id, &request)
            .map_err(internal)?;
        // The estimates in `limits` name the field; this is the exact size,
        // for whatever they did not foresee.
        let size = record.size();
        let max = self.limits.budget.max_message_bytes;
        if size + RECORD_OVERHEAD_BYTES > max {
            return Err(validate::invalid(
                format!("{prefix}content"),
                format!(
                    "the notification encodes to {size} bytes; a record may be at most {max} (kafka.max_message_bytes)"
                ),
            ));
        }
        Ok((request, record))
    }

    /// The ACCEPTED tracking event of each request, encoded; none if one
    /// cannot be (a build whose catalog lacks TrackingEvent): they are best
    /// effort, the requests are not.
    fn accepted_events(&self, requests: &[NotificationRequest]) -> Vec<OutRecord> {
        let tracking = self.topics.tracking();
        let events: Result<Vec<_>, _> = requests
            .iter()
            .map(|r| {
                let event = TrackingEvent {
                    event_id: Uuid::now_v7().to_string(),
                    notification_id: r.notification_id.clone(),
                    user_id: r.user_id.clone(),
                    kind: TrackingKind::Accepted,
                    channel: None,
                    target: None,
                    template_name: r.template.as_ref().map(|t| t.name.clone()),
                    stage: "gateway".into(),
                    detail: None,
                    at: r.accepted_at,
                    dispatched_at: None,
                };
                self.producer.encode(tracking, &r.notification_id, &event)
            })
            .collect();
        events.unwrap_or_default()
    }

    /// Writes accepted requests' ACCEPTED events, in the background.
    fn send_tracking(&self, events: Vec<OutRecord>) {
        if events.is_empty() {
            return;
        }
        let producer = self.producer.clone();
        tokio::spawn(async move {
            if let Err(e) = producer.send_all(&events).await {
                tracing::warn!(error = %e, "could not write ACCEPTED tracking events");
            }
        });
    }
}

impl Gateway {
    /// Rejects a send whose parameters don't fit its template (names and
    /// sizes, rendered), and pins the template version, so the enricher
    /// renders exactly what was checked.
    async fn check_template(
        &self,
        first: &mut NotificationRequest,
        prefix: &str,
    ) -> Result<(), Status> {
        let Some(t) = first.template.clone() else {
            return Ok(());
        };
        let data_bytes = first.data.iter().map(|(k, v)| k.len() + v.len()).sum();
        let targets_email = first.channels.iter().any(|c| c == Channel::Email.as_str());
        let store = &*self.store.templates;
        let version = t.version.and_then(|v| u32::try_from(v).ok());
        let template = match self
            .templates
            .get(store, &t.name, version)
            .await
            .map_err(crate::store_status)?
        {
            Some(template) => template,
            None => return Err(self.no_template(prefix, &t.name, version).await),
        };
        for param in &template.params {
            if !t.params.contains_key(param) {
                return Err(validate::invalid(
                    format!("{prefix}template.params"),
                    format!("missing `{param}`"),
                ));
            }
        }
        if let Some(extra) = t.params.keys().find(|k| !template.params.contains(k)) {
            return Err(validate::invalid(
                format!("{prefix}template.params"),
                format!("`{extra}` is not a parameter of {}", t.name),
            ));
        }
        limits::rendered_template(prefix, &template, &t.params, data_bytes, self.limits.budget)?;
        if targets_email
            && let Some((locale, _)) = template.variants.iter().find(|(_, c)| {
                [&c.email_subject, &c.push_title, &c.email_text, &c.push_body]
                    .iter()
                    .all(|p| p.as_deref().is_none_or(|p| p.trim().is_empty()))
            })
        {
            return Err(validate::invalid(
                format!("{prefix}template.name"),
                format!(
                    "the send targets email, but the `{locale}` variant of `{}` version {} has no email_subject (nor a push_title or text to derive one from)",
                    t.name, template.version
                ),
            ));
        }
        if let Some(t) = first.template.as_mut() {
            t.version = i32::try_from(template.version).ok();
        }
        Ok(())
    }

    /// Blames the version when the template exists but not that version.
    async fn no_template(&self, prefix: &str, name: &str, version: Option<u32>) -> Status {
        let store = &*self.store.templates;
        let latest = match version {
            Some(_) => self.templates.get(store, name, None).await.ok().flatten(),
            None => None,
        };
        match (version, latest) {
            (Some(v), Some(latest)) => validate::invalid(
                format!("{prefix}template.version"),
                format!(
                    "template `{name}` has no version {v}; its latest is {}",
                    latest.version
                ),
            ),
            _ => validate::invalid(
                format!("{prefix}template.name"),
                format!("no template `{name}`"),
            ),
        }
    }
}

/// Why [`Gateway::write_with_room`] wrote nothing, or not all.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RoomOrKafka {
    #[error(transparent)]
    NoRoom(#[from] NoRoom),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

/// The requests topic had no room within the produce timeout (embedded
/// cluster): the caller retries later.
fn no_room_status(prefix: &str, e: NoRoom) -> Status {
    Status::unavailable(format!(
        "{prefix}could not accept the notification now, retry with the same event_id: {e}"
    ))
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// Kafka did not take the records. When a retry can succeed (brokers down,
/// a timeout) the caller should retry with the same event id, so nothing is
/// sent twice; when it cannot (the record is too large, the topic is
/// missing or not ours to write), saying UNAVAILABLE would have it retry
/// forever.
fn produce_status(prefix: &str, e: KafkaError) -> Status {
    if e.is_retriable() {
        return Status::unavailable(format!(
            "could not durably accept the notification, retry with the same event_id: {e}"
        ));
    }
    let too_large = matches!(
        &e,
        KafkaError::Produce { source, .. }
            if source.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge)
    );
    if too_large {
        return validate::invalid(
            format!("{prefix}content"),
            format!(
                "is too large for one Kafka record (kafka.max_message_bytes); retrying will not help: {e}"
            ),
        );
    }
    Status::failed_precondition(format!(
        "Kafka refused the notification and retrying will not help until the deployment is fixed (topics, ACLs): {e}"
    ))
}

/// A validated send: what every user gets, once, and the users. Expanding
/// it copies the content per user, so that is done a chunk at a time
/// ([`ValidSend::request`]).
#[derive(Debug, Clone)]
pub struct ValidSend {
    /// The request of every user, with an empty `user_id` and
    /// `notification_id`.
    pub prototype: NotificationRequest,
    pub user_ids: Vec<String>,
}

impl ValidSend {
    /// The request for one user, with its stable notification id.
    pub fn request(&self, user_id: &str) -> NotificationRequest {
        let p = &self.prototype;
        NotificationRequest {
            notification_id: ids::time_ordered(
                &NOTIFICATION_ID_NAMESPACE,
                format!("{}\u{0}{}\u{0}{user_id}", p.app_key, p.event_id).as_bytes(),
                &p.event_id,
            )
            .to_string(),
            user_id: user_id.to_owned(),
            ..p.clone()
        }
    }
}

/// Validates a send; the users are expanded later, a chunk at a time.
pub fn validate_send(
    app_key: &str,
    send: SendRequest,
    prefix: &str,
    now: i64,
    limits: SendLimits,
) -> Result<ValidSend, Status> {
    let field = |name: &str| format!("{prefix}{name}");
    if send.user_ids.is_empty() {
        return Err(validate::invalid(field("user_ids"), "is empty"));
    }
    let max_users = MAX_USERS_PER_SEND.min(limits.max_expanded);
    if send.user_ids.len() > max_users {
        return Err(validate::invalid(
            field("user_ids"),
            format!(
                "has {} users; at most {max_users} per call (gateway.max_expanded_notifications)",
                send.user_ids.len()
            ),
        ));
    }
    for (i, user) in send.user_ids.iter().enumerate() {
        validate::id(&field(&format!("user_ids[{i}]")), user)?;
    }
    let event_id = if send.event_id.is_empty() {
        Uuid::now_v7().to_string()
    } else {
        validate::id(&field("event_id"), &send.event_id)?;
        send.event_id.clone()
    };
    let mut channels = Vec::new();
    for (i, raw) in send.channels.iter().enumerate() {
        let Some(channel) = Channel::from_proto(*raw) else {
            return Err(validate::invalid(
                field(&format!("channels[{i}]")),
                format!("unknown channel {raw}"),
            ));
        };
        if !channels.contains(&channel.as_str().to_owned()) {
            channels.push(channel.as_str().to_owned());
        }
    }
    let category = if send.category.is_empty() {
        None
    } else {
        validate::id(&field("category"), &send.category)?;
        Some(send.category.clone())
    };
    let data: BTreeMap<String, String> = send.data.into_iter().collect();
    let data_bytes = limits::data_bytes(&field("data"), &data)?;
    limits::at_most(
        format_args!("{prefix}collapse_id"),
        &send.collapse_id,
        limits::MAX_COLLAPSE_ID_BYTES,
    )?;
    let (template, content) = match send.content {
        None => {
            return Err(validate::invalid(
                field("content"),
                "a template or raw content is required",
            ));
        }
        Some(Content::Template(t)) => {
            validate::id(&field("template.name"), &t.name)?;
            let version =
                match t.version {
                    0 => None,
                    v => Some(i32::try_from(v).map_err(|_| {
                        validate::invalid(field("template.version"), "is too large")
                    })?),
                };
            let params: BTreeMap<String, String> = t.params.into_iter().collect();
            limits::params(prefix, &params, data_bytes, limits.budget)?;
            (
                Some(TemplateRef {
                    name: t.name,
                    version,
                    params,
                }),
                None,
            )
        }
        Some(Content::Raw(raw)) => {
            limits::raw(
                prefix,
                &[
                    ("title", raw.title.as_str()),
                    ("body", raw.body.as_str()),
                    ("sms_text", raw.sms_text.as_str()),
                    ("email_subject", raw.email_subject.as_str()),
                    ("email_html", raw.email_html.as_str()),
                    ("email_text", raw.email_text.as_str()),
                    ("action_url", raw.action_url.as_str()),
                    ("avatar_url", raw.avatar_url.as_str()),
                ],
                data_bytes,
                limits.budget,
            )?;
            for (name, url) in [
                ("action_url", &raw.action_url),
                ("avatar_url", &raw.avatar_url),
            ] {
                if !url.is_empty() {
                    validate::http_url(&field(&format!("raw.{name}")), url)?;
                }
            }
            let opt = |s: String| if s.is_empty() { None } else { Some(s) };
            let raw = RawContent {
                title: opt(raw.title),
                body: opt(raw.body),
                sms_text: opt(raw.sms_text),
                email_subject: opt(raw.email_subject),
                email_html: opt(raw.email_html),
                email_text: opt(raw.email_text),
                action_url: opt(raw.action_url),
                avatar_url: opt(raw.avatar_url),
            };
            if raw == RawContent::default() {
                return Err(validate::invalid(field("raw"), "every field is empty"));
            }
            // Email providers refuse a mail without a subject; the enricher
            // derives one from the title or the text, so refuse only what it
            // cannot (e.g. HTML or SMS text alone), and only when email was
            // asked for by name.
            let has_text = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.trim().is_empty());
            if channels.iter().any(|c| c == Channel::Email.as_str())
                && ![&raw.email_subject, &raw.title, &raw.email_text, &raw.body]
                    .into_iter()
                    .any(has_text)
            {
                return Err(validate::invalid(
                    field("raw.title"),
                    "the send targets email, which needs a subject: set title or email_subject (or a body or email_text to derive one from)",
                ));
            }
            (None, Some(raw))
        }
    };
    if send.send_at_ms < 0 {
        return Err(validate::invalid(
            field("send_at_ms"),
            "must not be negative",
        ));
    }
    if send.expires_at_ms < 0 {
        return Err(validate::invalid(
            field("expires_at_ms"),
            "must not be negative",
        ));
    }
    let send_at = (send.send_at_ms > now).then_some(send.send_at_ms);
    let expires_at = (send.expires_at_ms > 0).then_some(send.expires_at_ms);
    if let Some(expiry) = expires_at
        && expiry <= send_at.unwrap_or(now)
    {
        return Err(validate::invalid(
            field("expires_at_ms"),
            "is before the notification would be sent",
        ));
    }
    let priority = match pb::Priority::try_from(send.priority) {
        Ok(pb::Priority::High) => Priority::High,
        Ok(pb::Priority::Normal) => Priority::Normal,
        Err(_) => {
            return Err(validate::invalid(
                field("priority"),
                format!("unknown priority {}", send.priority),
            ));
        }
    };
    let collapse_id = (!send.collapse_id.is_empty()).then_some(send.collapse_id);
    Ok(ValidSend {
        prototype: NotificationRequest {
            notification_id: String::new(),
            event_id,
            app_key: app_key.to_owned(),
            user_id: String::new(),
            channels,
            category,
            template,
            content,
            send_at,
            expires_at,
            priority,
            collapse_id,
            data,
            accepted_at: now,
        },
        user_ids: send.user_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_requests(
        app_key: &str,
        send: SendRequest,
        prefix: &str,
        now: i64,
        limits: SendLimits,
    ) -> Result<Vec<NotificationRequest>, Status> {
        let send = validate_send(app_key, send, prefix, now, limits)?;
        Ok(send.user_ids.iter().map(|u| send.request(u)).collect())
    }

    #[test]
    fn a_call_holds_at_most_its_expansion_buffer() {
        let buffer = EXPANSION_BUFFER_BYTES;
        // 10,000 users of 500 KiB each: 5 GB if expanded at once.
        let per_chunk = users_per_chunk(500 << 10, buffer);
        assert_eq!(per_chunk, 10);
        assert!(per_chunk * 3 * (500 << 10) <= buffer);
        // Small records go in few chunks; a record over the buffer alone
        // still goes, one at a time.
        assert_eq!(users_per_chunk(300, buffer), buffer / 900);
        assert_eq!(users_per_chunk(1 << 20, 1 << 20), 1);
        assert_eq!(users_per_chunk(0, 0), 1);
        // A batch shares the buffer between its items.
        assert_eq!(users_per_chunk(10 << 10, buffer / 1_000), 1);
    }

    fn raw_send(users: &[&str]) -> SendRequest {
        SendRequest {
            user_ids: users.iter().map(|u| u.to_string()).collect(),
            content: Some(Content::Raw(pb::RawContent {
                body: "hi".into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn one_request_per_user_with_stable_ids() {
        let mut send = raw_send(&["a", "b"]);
        send.event_id = "e-1".into();
        let first = to_requests("app", send.clone(), "", 10, SendLimits::default()).unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].user_id, "a");
        assert_ne!(first[0].notification_id, first[1].notification_id);
        let again = to_requests("app", send, "", 20, SendLimits::default()).unwrap();
        assert_eq!(
            first[0].notification_id, again[0].notification_id,
            "same event, same ids"
        );
    }

    #[test]
    fn a_missing_event_id_is_generated() {
        let r = to_requests("app", raw_send(&["a"]), "", 10, SendLimits::default()).unwrap();
        assert!(Uuid::parse_str(&r[0].event_id).is_ok());
    }

    #[test]
    fn one_call_expands_to_at_most_the_configured_notifications() {
        let limits = SendLimits {
            max_expanded: 2,
            ..Default::default()
        };
        assert!(to_requests("app", raw_send(&["a", "b"]), "", 10, limits).is_ok());
        let err =
            to_requests("app", raw_send(&["a", "b", "c"]), "items[1].", 10, limits).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message()
                .starts_with("items[1].user_ids: has 3 users; at most 2")
                && err.message().contains("gateway.max_expanded_notifications"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn oversized_fields_are_refused_by_name() {
        let err = |s: SendRequest| {
            to_requests("app", s, "items[3].", 10, SendLimits::default()).unwrap_err()
        };
        let mut s = raw_send(&["a"]);
        s.content = Some(Content::Raw(pb::RawContent {
            body: "x".repeat(1 << 20),
            ..Default::default()
        }));
        let e = err(s);
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message()
                .starts_with("items[3].raw.body: is 1048576 bytes"),
            "{}",
            e.message()
        );

        let mut s = raw_send(&["a"]);
        s.content = Some(Content::Template(pb::TemplateRef {
            name: "t".into(),
            version: 0,
            params: [("name".to_owned(), "x".repeat(300_000))].into(),
        }));
        assert!(
            err(s)
                .message()
                .starts_with("items[3].template.params.name: is 300000 bytes"),
        );

        let mut s = raw_send(&["a"]);
        s.data = [("k".to_owned(), "v".repeat(limits::MAX_DATA_BYTES))].into();
        assert!(err(s).message().starts_with("items[3].data:"));

        let mut s = raw_send(&["a"]);
        s.collapse_id = "c".repeat(65);
        assert!(err(s).message().starts_with("items[3].collapse_id:"));
    }

    #[test]
    fn in_app_urls_are_absolute_http_urls_of_bounded_size() {
        let send = |action_url: &str, avatar_url: &str| {
            let mut s = raw_send(&["a"]);
            s.channels = vec![pb::Channel::InApp as i32];
            s.content = Some(Content::Raw(pb::RawContent {
                title: "Invoice ready".into(),
                action_url: action_url.into(),
                avatar_url: avatar_url.into(),
                ..Default::default()
            }));
            to_requests("app", s, "items[1].", 10, SendLimits::default())
        };
        let ok = send("https://app.example/invoices/7", "http://cdn.example/a.png").unwrap();
        let content = ok[0].content.as_ref().unwrap();
        assert_eq!(
            content.action_url.as_deref(),
            Some("https://app.example/invoices/7")
        );
        assert_eq!(
            content.avatar_url.as_deref(),
            Some("http://cdn.example/a.png")
        );
        let none = send("", "").unwrap();
        let content = none[0].content.as_ref().unwrap();
        assert_eq!((&content.action_url, &content.avatar_url), (&None, &None));
        for (action, avatar, field) in [
            ("/invoices/7", "", "items[1].raw.action_url:"),
            ("javascript:alert(1)", "", "items[1].raw.action_url:"),
            ("https://x/a b", "", "items[1].raw.action_url:"),
            ("", "cdn.example/a.png", "items[1].raw.avatar_url:"),
        ] {
            let e = send(action, avatar).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with(field), "{}", e.message());
        }
        let long = format!(
            "https://x/{}",
            "a".repeat(limits::part_limit("in_app_action_url"))
        );
        let e = send(&long, "").unwrap_err();
        assert!(
            e.message().starts_with("items[1].raw.action_url: is "),
            "{}",
            e.message()
        );
    }

    #[test]
    fn email_without_anything_to_make_a_subject_of_is_refused() {
        let mut s = raw_send(&["a"]);
        s.channels = vec![pb::Channel::Email as i32];
        s.content = Some(Content::Raw(pb::RawContent {
            email_html: "<p>hi</p>".into(),
            ..Default::default()
        }));
        let e = to_requests("app", s.clone(), "", 10, SendLimits::default()).unwrap_err();
        assert!(e.message().starts_with("raw.title:"), "{}", e.message());
        // A body is enough: the enricher derives the subject from it.
        s.content = Some(Content::Raw(pb::RawContent {
            body: "hello".into(),
            ..Default::default()
        }));
        assert!(to_requests("app", s.clone(), "", 10, SendLimits::default()).is_ok());
        // Without email asked for by name, the other channels may still do.
        s.channels = vec![];
        s.content = Some(Content::Raw(pb::RawContent {
            sms_text: "hi".into(),
            ..Default::default()
        }));
        assert!(to_requests("app", s, "", 10, SendLimits::default()).is_ok());
    }

    #[test]
    fn produce_failures_that_a_retry_cannot_fix_are_not_unavailable() {
        use rdkafka::{error::KafkaError as Rd, types::RDKafkaErrorCode as Code};
        let produce = |code| KafkaError::Produce {
            topic: "t.notify.requests".into(),
            source: Rd::MessageProduction(code),
        };
        let s = produce_status("items[2].", produce(Code::MessageSizeTooLarge));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(
            s.message().starts_with("items[2].content:"),
            "{}",
            s.message()
        );
        let s = produce_status("", produce(Code::TopicAuthorizationFailed));
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        let s = produce_status("", produce(Code::MessageTimedOut));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(s.message().contains("same event_id"));
    }

    #[test]
    fn errors_name_the_field() {
        let err = |s: SendRequest| {
            to_requests("app", s, "items[3].", 10, SendLimits::default()).unwrap_err()
        };
        assert_eq!(err(raw_send(&[])).message(), "items[3].user_ids: is empty");
        assert!(
            err(raw_send(&["ok", ""]))
                .message()
                .starts_with("items[3].user_ids[1]:")
        );
        let mut s = raw_send(&["a"]);
        s.channels = vec![99];
        assert!(err(s).message().starts_with("items[3].channels[0]:"));
        let mut s = raw_send(&["a"]);
        s.content = None;
        assert!(err(s).message().starts_with("items[3].content:"));
        let mut s = raw_send(&["a"]);
        s.send_at_ms = 1_000;
        s.expires_at_ms = 500;
        assert!(err(s).message().starts_with("items[3].expires_at_ms:"));
    }
}
