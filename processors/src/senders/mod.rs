//! Channel senders: one stage per channel topic, each a consumer group that
//! scales by adding members. A sender hands a `Delivery` to its provider and
//! records the outcome in the notification log and on the tracking topic.
//!
//! Outcomes: sent (marked in the sent-ledger, so a redelivered record is not
//! sent twice); an invalid target (the device token is tombstoned, so later
//! sends skip it until it is registered again); a permanent rejection or too
//! many attempts (dead-lettered with the reason); a transient failure (the
//! delivery moves to a retry tier, see [`retry`], and the main topic goes
//! on); a misconfigured provider (wrong credentials: the channel is held,
//! nothing is dead-lettered, see [`health`]).
//!
//! Crashes: as soon as the provider accepts, the sender writes the *sent*
//! mark (`sender.sent`) with the `sent` status, through [`group_commit`]
//! (one store call per few milliseconds, not per delivery). A delivery's
//! slot is free once the provider answers: its sent mark is queued, and
//! `finish` waits for the batch's marks. A batch replayed after a crash
//! skips what is marked sent and sends the rest again: with the default
//! `uncertain = resend` a crash duplicates at most the requests in flight
//! and the last few milliseconds of sends, never a batch. With
//! `uncertain = skip` the sender also writes an *intent* mark
//! (`sender.intent`, per delivery and attempt) before each call and waits
//! for it: a delivery with an intent but no sent mark was in flight at the
//! crash, or its mark was still queued, and may or may not have reached the
//! user; it is skipped with the status `uncertain`. Resend keeps no intent
//! marks: a replay would resend such a delivery all the same, so they would
//! cost a write and a read per delivery for a count.
//!
//! Only a record that may repeat one handled before needs the ledgers read:
//! one the stage runner marks [`Handling::MaybeRepeat`] (read again after a
//! crash or rebalance, or produced again; see [`tidings_kafka::handling`]),
//! and every retry (`attempt > 0`: the relays put a delivery back whose
//! first copy went its own way). Any other record is the first copy of its
//! delivery to reach this topic, so nothing can have sent it: it is sent
//! without a read. In steady state a sender reads no ledger at all; after a
//! crash it reads them for the records its partitions held at the restart.

pub mod apns;
pub mod fcm;
pub mod group_commit;
pub mod health;
pub mod http;
pub mod inbox;
pub mod jwt;
pub mod log_sink;
pub mod providers;
pub mod retry;
pub mod sendgrid;
pub mod setup;
pub mod smtp;
pub mod twilio;
pub mod webpush;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use tidings_config::{SendersConfig, Uncertain};
use tidings_kafka::{Emitter, Handling, ProcessError, Processor, RecordMeta, Topics, now_millis};
use tidings_schemas::{
    AvroCodec, Channel, ids,
    records::{DeadLetter, Delivery, TrackingEvent, TrackingKind},
};
use tidings_store::{DeliveryKey, StatusEntry, Store, StoreError, notification_log};
use tidings_telemetry::SenderUncertain;
use tracing::warn;
use uuid::Uuid;

use crate::enricher::store_failure;
use group_commit::{GroupCommit, GroupOptions, Written};
use health::{Outcome, ProviderHealth};

/// The group writer of sent marks, for its metrics and logs. The marks are
/// the notification log's `sent` entries (see
/// [`tidings_store::notification_log`]).
const SENT: &str = "sender.sent";
/// Intent-ledger scope: "about to call the provider", per delivery attempt
/// (kept with `uncertain = skip` only).
const INTENT: &str = "sender.intent";

/// What a provider said about one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The provider's id for the message, if it gave one.
    pub provider_id: Option<String>,
}

/// What a push shows: `{"title", "body"}` in both APNs' `aps.alert` and
/// FCM's `notification`, each left out when the delivery has none; `None`
/// when it has neither.
#[derive(serde::Serialize)]
pub(crate) struct Shown<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
}

impl<'a> Shown<'a> {
    pub(crate) fn of(d: &'a Delivery) -> Option<Self> {
        (d.title.is_some() || d.body.is_some()).then_some(Self {
            title: d.title.as_deref(),
            body: d.body.as_deref(),
        })
    }
}

/// A provider refused or failed a delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The target will never accept this (unregistered token, bad number).
    #[error("target rejected: {0}")]
    InvalidTarget(String),
    /// This message is wrong and will stay wrong (payload too large, ...).
    #[error("rejected: {0}")]
    Rejected(String),
    /// Try again later (429, 5xx, timeout), after `retry_after` if given.
    #[error("transient failure: {reason}")]
    Transient {
        reason: String,
        retry_after: Option<std::time::Duration>,
    },
    /// The provider refuses our credentials or account settings (401, 403,
    /// SMTP 535): every delivery would fail the same way until `setting` is
    /// fixed, so the channel is held rather than its messages given up on.
    #[error("misconfigured: {setting}: {reason}")]
    Misconfigured {
        /// The config key to fix, e.g. `providers.sms.auth_token`.
        setting: &'static str,
        reason: String,
    },
}

/// A way to reach users on one channel (APNs, FCM, Twilio, SMTP, ... or the
/// log sink of the embedded default).
#[async_trait::async_trait]
pub trait Provider: Send + Sync + 'static {
    /// For logs and metrics, e.g. `apns` or `log`.
    fn name(&self) -> &'static str;
    async fn deliver(&self, delivery: &Delivery) -> Result<Receipt, ProviderError>;
}

/// What the ledgers say to do with a delivery before sending it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Not marked sent (with `resend`, perhaps in flight at a crash: a
    /// duplicate is accepted): send it.
    Send,
    /// The provider took it before: do not send it again.
    AlreadySent,
    /// An earlier attempt called the provider and no answer was recorded
    /// (a crash in flight): it may have gone out, and the channel prefers a
    /// loss to a duplicate (`uncertain = skip`).
    SkipUncertain,
}

/// What a sender does about a crash during a provider call.
enum InFlight {
    /// Sends again whatever is not marked sent; keeps no intent marks.
    Resend,
    /// Marks the intent before each call (in groups, waited for), and
    /// skips an attempt whose intent is marked but not its send.
    Skip { intents: GroupCommit<String> },
}

impl Replay {
    /// `sent`: the sent-ledger has the delivery; `intent`: the intent ledger
    /// has this attempt (None: the sender keeps no intent marks).
    pub fn decide(sent: bool, intent: Option<bool>) -> Self {
        match (sent, intent) {
            (true, _) => Replay::AlreadySent,
            (false, None | Some(false)) => Replay::Send,
            (false, Some(true)) => Replay::SkipUncertain,
        }
    }
}

/// The id of a delivery's SENT tracking event: the same in every run, so a
/// replay that emits it again is counted once; led by the delivery's time,
/// as the template statistics mark it in the store.
fn sent_event_id(d: &Delivery) -> String {
    ids::time_ordered(
        &Uuid::NAMESPACE_OID,
        format!("tidings.sent/{}", d.delivery_id).as_bytes(),
        &d.delivery_id,
    )
    .to_string()
}

/// Whether `d` may have been handled before, so the ledgers must be read
/// before it is sent: see the module's doc.
fn may_repeat(d: &Delivery, meta: &RecordMeta) -> bool {
    d.attempt > 0 || meta.handling == Handling::MaybeRepeat
}

/// The intent-ledger key of one attempt: a retry (a later attempt) is a new
/// send, with an intent of its own.
fn intent_key(d: &Delivery) -> String {
    format!("{}#{}", d.delivery_id, d.attempt)
}

/// The stage that drains one channel topic into its provider.
pub struct ChannelSender {
    channel: Channel,
    provider: Arc<dyn Provider>,
    store: Store,
    topics: Topics,
    codec: AvroCodec,
    config: SendersConfig,
    in_flight: InFlight,
    health: ProviderHealth,
    /// `sent` status entries (the sent marks), written in groups as the
    /// provider accepts.
    sent: GroupCommit<StatusEntry>,
}

impl ChannelSender {
    /// Starts the sender's ledger writers on the current Tokio runtime.
    pub fn new(
        channel: Channel,
        provider: Arc<dyn Provider>,
        store: Store,
        topics: Topics,
        codec: AvroCodec,
        config: SendersConfig,
    ) -> Self {
        let ttl = Duration::from_secs(config.sent_ledger_ttl_secs);
        let in_flight = match config.uncertain.for_channel(channel.as_str()) {
            Uncertain::Resend => InFlight::Resend,
            Uncertain::Skip => {
                let ledger = store.dedupe.clone();
                InFlight::Skip {
                    intents: GroupCommit::start(
                        INTENT,
                        GroupOptions::default(),
                        Box::new(move |keys: Vec<String>| {
                            let ledger = ledger.clone();
                            Box::pin(async move { ledger.mark_many(INTENT, &keys, ttl).await })
                        }),
                    ),
                }
            }
        };
        let log = store.notification_log.clone();
        let sent = GroupCommit::start(
            SENT,
            GroupOptions::default(),
            Box::new(move |statuses: Vec<StatusEntry>| {
                let log = log.clone();
                Box::pin(async move { log.record_many(&statuses).await })
            }),
        );
        Self {
            channel,
            health: ProviderHealth::new(provider.name(), config.alert_after_failures),
            in_flight,
            provider,
            store,
            topics,
            codec,
            config,
            sent,
        }
    }

    /// The stage name for a channel, e.g. `sender.ios`.
    pub fn stage_name(channel: Channel) -> &'static str {
        match channel {
            Channel::Ios => "sender.ios",
            Channel::Android => "sender.android",
            Channel::Sms => "sender.sms",
            Channel::Email => "sender.email",
            Channel::Web => "sender.web",
            Channel::InApp => "sender.in_app",
        }
    }

    fn track(
        &self,
        out: &mut Emitter<'_>,
        d: &Delivery,
        kind: TrackingKind,
        detail: Option<String>,
    ) -> Result<(), ProcessError> {
        self.track_at(out, d, kind, detail, None)
    }

    /// [`track`](Self::track) for the outcome of a provider call that
    /// began at `dispatched_at`: the event says when, so no event of its own
    /// marks the call (it would reach the topic with its outcome anyway:
    /// a batch's events are produced together).
    fn track_at(
        &self,
        out: &mut Emitter<'_>,
        d: &Delivery,
        kind: TrackingKind,
        detail: Option<String>,
        dispatched_at: Option<i64>,
    ) -> Result<(), ProcessError> {
        let event_id = match kind {
            TrackingKind::Sent => sent_event_id(d),
            _ => Uuid::now_v7().to_string(),
        };
        let event = TrackingEvent {
            event_id,
            notification_id: d.notification_id.clone(),
            user_id: d.user_id.clone(),
            kind,
            channel: Some(d.channel.clone()),
            target: Some(d.target.clone()),
            template_name: d.template_name.clone(),
            stage: Self::stage_name(self.channel).into(),
            detail,
            at: now_millis(),
            dispatched_at,
        };
        out.emit(self.topics.tracking(), &d.notification_id, &event)
    }

    fn status(d: &Delivery, state: &str, detail: Option<String>) -> StatusEntry {
        StatusEntry {
            notification_id: d.notification_id.clone(),
            user_id: d.user_id.clone(),
            channel: d.channel.clone(),
            target: d.target.clone(),
            state: state.into(),
            detail,
            attempt: u32::try_from(d.attempt).unwrap_or_default(),
            at: now_millis(),
        }
    }

    /// Adds a status-log entry; `finish` writes the batch's entries.
    fn log_status(&self, batch: &SenderBatch, d: &Delivery, state: &str, detail: Option<String>) {
        lock(&batch.statuses).push(Self::status(d, state, detail));
    }

    /// Reads the ledgers for `d`: from the batch's prefetch, from what this
    /// batch did itself, or (if the prefetch failed) from the store; not at
    /// all for a first copy.
    async fn replay(
        &self,
        d: &Delivery,
        meta: &RecordMeta,
        batch: &SenderBatch,
    ) -> Result<Replay, ProcessError> {
        // Sent earlier in this batch: a replayed record twice in it.
        if lock(&batch.sent_now).contains(&d.delivery_id) {
            return Ok(Replay::AlreadySent);
        }
        if !may_repeat(d, meta) {
            return Ok(Replay::Send);
        }
        let sent = match batch.sent_before.get(&d.delivery_id) {
            Some(seen) => *seen,
            None => self
                .store
                .notification_log
                .sent_many(&[delivery_key(d)])
                .await
                .map_err(store_failure)?
                .first()
                .copied()
                .unwrap_or(false),
        };
        if sent {
            // Without the intent read `skip` would make.
            return Ok(Replay::AlreadySent);
        }
        let intent = match self.in_flight {
            InFlight::Resend => None,
            InFlight::Skip { .. } => {
                let key = intent_key(d);
                // An intent this batch wrote is no uncertainty: it is being
                // retried in place after an answer that says the provider
                // did not take it.
                Some(
                    !lock(&batch.intended_now).contains(&key)
                        && match batch.intent_before.get(&key) {
                            Some(seen) => *seen,
                            None => self
                                .store
                                .dedupe
                                .seen(INTENT, &key)
                                .await
                                .map_err(store_failure)?,
                        },
                )
            }
        };
        Ok(Replay::decide(false, intent))
    }

    fn count_uncertain(&self, decision: &str) {
        SenderUncertain {
            stage: Self::stage_name(self.channel),
            decision,
        }
        .emit();
    }

    /// Calls the provider (with `skip`, once the intent is marked, so a
    /// replay knows this delivery may have gone out). Answers when the call
    /// began, for the outcome's tracking event.
    async fn dispatch(
        &self,
        d: &Delivery,
        batch: &SenderBatch,
    ) -> Result<(i64, Result<Receipt, ProviderError>), ProcessError> {
        if let InFlight::Skip { intents } = &self.in_flight {
            let key = intent_key(d);
            intents
                .enqueue(key.clone())
                .await
                .map_err(|e| group_failure(&e))?
                .written()
                .await
                .map_err(|e| group_failure(&e))?;
            lock(&batch.intended_now).insert(key);
        }
        let dispatched_at = now_millis();
        Ok((dispatched_at, self.provider.deliver(d).await))
    }

    /// The provider took it: mark it sent now, not at the end of the batch,
    /// so a crash later in the batch does not send it again.
    async fn sent(
        &self,
        d: &Delivery,
        (dispatched_at, receipt): (i64, Receipt),
        batch: &SenderBatch,
        out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        self.health.record(Outcome::Sent);
        lock(&batch.sent_now).insert(d.delivery_id.clone());
        let status = Self::status(d, notification_log::SENT, receipt.provider_id.clone());
        // Queued now and waited for in `finish`: the delivery's slot is free
        // for the next one as soon as the provider answers.
        match self.sent.enqueue(status.clone()).await {
            Ok(written) => lock(&batch.marks_in_flight).push(SentMark { status, written }),
            Err(e) => self.mark_with_batch(status, batch, &e),
        }
        self.track_at(
            out,
            d,
            TrackingKind::Sent,
            receipt.provider_id,
            Some(dispatched_at),
        )
    }

    /// A sent mark whose own write failed: sent all the same; `finish`
    /// writes the mark with the batch's other status entries (retrying
    /// while the store is away) before the batch's offsets are committed.
    fn mark_with_batch(&self, status: StatusEntry, batch: &SenderBatch, e: &StoreError) {
        warn!(stage = self.name(), notification = %status.notification_id, channel = %status.channel, error = %e, "sent mark failed; writing it with the batch");
        lock(&batch.statuses).push(status);
    }

    async fn invalid_target(
        &self,
        d: &Delivery,
        (dispatched_at, reason): (i64, String),
        batch: &SenderBatch,
        out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        self.health.record(Outcome::InvalidTarget);
        if matches!(self.channel, Channel::Ios | Channel::Android | Channel::Web) {
            // A tombstone with a time: a later re-registration wins.
            self.store
                .contacts
                .invalidate_device(&d.user_id, &d.target, now_millis())
                .await
                .map_err(store_failure)?;
        }
        self.log_status(batch, d, "invalid_target", Some(reason.clone()));
        self.track_at(
            out,
            d,
            TrackingKind::InvalidToken,
            Some(reason),
            Some(dispatched_at),
        )
    }

    fn rejected(
        &self,
        d: &Delivery,
        (dispatched_at, reason): (i64, String),
        batch: &SenderBatch,
        out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        self.health.record(Outcome::Rejected);
        self.dead_letter(
            d,
            &format!("{} rejected it: {reason}", self.provider.name()),
            false,
            out,
        )?;
        self.log_status(batch, d, "dead_lettered", Some(reason.clone()));
        self.track_at(
            out,
            d,
            TrackingKind::DeadLettered,
            Some(reason),
            Some(dispatched_at),
        )
    }

    fn transient(
        &self,
        d: &Delivery,
        (dispatched_at, reason): (i64, String),
        retry_after: Option<Duration>,
        batch: &SenderBatch,
        out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        self.health.record(Outcome::Transient);
        warn!(provider = self.provider.name(), delivery = %d.delivery_id, attempt = d.attempt, %reason, "transient provider failure");
        match self.retry_or_give_up(d, &reason, retry_after, out)? {
            Some((topic, not_before)) => {
                self.log_status(batch, d, "retrying", Some(reason.clone()));
                self.track_at(
                    out,
                    d,
                    TrackingKind::Retried,
                    Some(format!("{reason}; via {topic} at {not_before}")),
                    Some(dispatched_at),
                )
            }
            None => {
                self.log_status(batch, d, "dead_lettered", Some(reason.clone()));
                self.track_at(
                    out,
                    d,
                    TrackingKind::DeadLettered,
                    Some(reason),
                    Some(dispatched_at),
                )
            }
        }
    }

    /// The provider refuses our configuration: nothing about this delivery
    /// is wrong, so it is neither retried through a tier (which would use
    /// up its attempts) nor dead-lettered; it is held in place, and the
    /// stage runner tries it again with backoff.
    async fn misconfigured(&self, d: &Delivery, setting: &str, reason: &str) -> ProcessError {
        self.health.misconfigured(setting, reason);
        // The provider did not take it: a replay after a crash during the
        // hold must not skip it as uncertain.
        if let InFlight::Skip { .. } = self.in_flight
            && let Err(e) = self.store.dedupe.forget(INTENT, &intent_key(d)).await
        {
            warn!(stage = self.name(), delivery = %d.delivery_id, error = %e, "cannot clear the intent mark of a held delivery");
        }
        ProcessError::retriable(format!(
            "{} is misconfigured ({setting}: {reason}); holding delivery {} until it works",
            self.provider.name(),
            d.delivery_id
        ))
    }

    /// Moves a transiently failed delivery to its retry tier, or dead-letters
    /// it once it has used its attempts.
    fn retry_or_give_up(
        &self,
        d: &Delivery,
        reason: &str,
        retry_after: Option<Duration>,
        out: &mut Emitter<'_>,
    ) -> Result<Option<(String, i64)>, ProcessError> {
        let attempts = u32::try_from(d.attempt).unwrap_or(0) + 1;
        if attempts >= self.config.max_attempts {
            self.dead_letter(
                d,
                &format!("gave up after {attempts} attempts: {reason}"),
                true,
                out,
            )?;
            return Ok(None);
        }
        let delays = &self.config.retry_delays_ms;
        let wanted_tier = (attempts as usize - 1).min(delays.len() - 1);
        let retry_after_ms =
            retry_after.map_or(0, |r| u64::try_from(r.as_millis()).unwrap_or(u64::MAX));
        // The first tier at least as long as the provider asked for.
        let tier = (wanted_tier..delays.len())
            .find(|&t| delays[t] >= retry_after_ms)
            .unwrap_or(delays.len() - 1);
        // Jitter spreads the tier's delay, but never undercuts the provider's
        // Retry-After.
        let delay = jittered(delays[tier], &d.delivery_id, attempts).max(retry_after_ms);
        let not_before = now_millis() + i64::try_from(delay).unwrap_or(i64::MAX / 2);
        let mut next = d.clone();
        next.attempt = i32::try_from(attempts).unwrap_or(i32::MAX);
        next.not_before = Some(not_before);
        next.last_error = Some(reason.to_owned());
        out.emit(self.topics.retry(tier), &d.user_id, &next)?;
        Ok(Some((self.topics.retry(tier).to_owned(), not_before)))
    }

    fn dead_letter(
        &self,
        d: &Delivery,
        reason: &str,
        retriable: bool,
        out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        let payload = self
            .codec
            .encode(d)
            .map_err(|e| ProcessError::permanent(e.to_string()))?;
        let record = DeadLetter {
            source_topic: self.topics.deliver(self.channel).to_owned(),
            source_partition: -1,
            source_offset: -1,
            key: Some(d.user_id.clone().into_bytes()),
            payload,
            stage: Self::stage_name(self.channel).into(),
            reason: reason.to_owned(),
            retriable,
            attempts: d.attempt + 1,
            failed_at: now_millis(),
        };
        out.emit(self.topics.dead_letter(), &d.user_id, &record)
    }
}

/// A group write failed: retriable if the store may come back.
fn group_failure(e: &StoreError) -> ProcessError {
    if e.is_retriable() {
        ProcessError::retriable(e.to_string())
    } else {
        ProcessError::permanent(e.to_string())
    }
}

/// Up to 20% less than `delay_ms`, the same for the same delivery and
/// attempt (so a replay schedules the same time) but spread across
/// deliveries, so a provider outage does not end in a thundering herd.
fn jittered(delay_ms: u64, delivery_id: &str, attempt: u32) -> u64 {
    let seed = delivery_id.bytes().fold(
        u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3),
    );
    delay_ms
        - (delay_ms / 5)
            .checked_mul(seed % 1000)
            .map_or(0, |x| x / 1000)
}

/// A sent mark queued for its group write.
struct SentMark {
    status: StatusEntry,
    written: Written,
}

/// Where the notification log keeps a delivery's status and sent mark.
fn delivery_key(d: &Delivery) -> DeliveryKey {
    DeliveryKey {
        notification_id: d.notification_id.clone(),
        channel: d.channel.clone(),
        target: d.target.clone(),
    }
}

/// A sender's batch: the sent marks of its deliveries, read in one call
/// (and their intent marks in another, with `uncertain = skip`) before any
/// is sent, and what its records did. Sent marks are queued as the provider
/// accepts (see [`ChannelSender::sent`]); `finish` waits for them, and
/// writes the other status-log entries and any sent mark whose own write
/// failed.
#[derive(Default)]
pub struct SenderBatch {
    /// By delivery id.
    sent_before: HashMap<String, bool>,
    /// By [`intent_key`]; empty without intent marks.
    intent_before: HashMap<String, bool>,
    /// Deliveries the provider accepted in this batch.
    sent_now: Mutex<HashSet<String>>,
    /// Intent keys this batch wrote.
    intended_now: Mutex<HashSet<String>>,
    /// Sent marks queued and not yet seen written.
    marks_in_flight: Mutex<Vec<SentMark>>,
    statuses: Mutex<Vec<StatusEntry>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads `keys` of `scope` in one call; on failure an empty map, so
/// `process` asks record by record.
async fn seen_map(
    store: &Store,
    stage: &str,
    scope: &str,
    keys: Vec<String>,
) -> HashMap<String, bool> {
    match store.dedupe.seen_many(scope, &keys).await {
        Ok(seen) => keys.into_iter().zip(seen).collect(),
        Err(e) => {
            warn!(stage, scope, error = %e, "batch ledger read failed; reading record by record");
            HashMap::new()
        }
    }
}

#[async_trait::async_trait]
impl Processor for ChannelSender {
    type Input = Delivery;
    type Prefetched = SenderBatch;

    fn name(&self) -> &'static str {
        Self::stage_name(self.channel)
    }

    async fn prefetch(&self, batch: &[(&Delivery, &RecordMeta)]) -> SenderBatch {
        // Only what may repeat is looked up (see `replay`).
        let batch: Vec<&(&Delivery, &RecordMeta)> = batch
            .iter()
            .filter(|(d, meta)| may_repeat(d, meta))
            .collect();
        if batch.is_empty() {
            return SenderBatch::default();
        }
        let unique = |key: fn(&Delivery) -> String| -> Vec<String> {
            batch
                .iter()
                .map(|(d, _)| key(d))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect()
        };
        let sent = async {
            let mut ids = HashSet::new();
            let (ids, keys): (Vec<String>, Vec<DeliveryKey>) = batch
                .iter()
                .filter(|(d, _)| ids.insert(&d.delivery_id))
                .map(|(d, _)| (d.delivery_id.clone(), delivery_key(d)))
                .unzip();
            match self.store.notification_log.sent_many(&keys).await {
                Ok(sent) => ids.into_iter().zip(sent).collect(),
                Err(e) => {
                    warn!(stage = self.name(), error = %e, "batch sent-mark read failed; reading record by record");
                    HashMap::new()
                }
            }
        };
        let intents = async {
            match self.in_flight {
                InFlight::Resend => HashMap::new(),
                InFlight::Skip { .. } => {
                    seen_map(&self.store, self.name(), INTENT, unique(intent_key)).await
                }
            }
        };
        let (sent_before, intent_before) = tokio::join!(sent, intents);
        SenderBatch {
            sent_before,
            intent_before,
            ..SenderBatch::default()
        }
    }

    async fn finish(&self, batch: &SenderBatch) -> Result<(), ProcessError> {
        // Taken once: a retried `finish` finds the failures among `statuses`.
        let marks = std::mem::take(&mut *lock(&batch.marks_in_flight));
        let results = futures::future::join_all(marks.into_iter().map(|m| async move {
            let result = m.written.written().await;
            (m.status, result)
        }))
        .await;
        for (status, result) in results {
            if let Err(e) = result {
                self.mark_with_batch(status, batch, &e);
            }
        }
        let statuses = lock(&batch.statuses).clone();
        if !statuses.is_empty() {
            self.store
                .notification_log
                .record_many(&statuses)
                .await
                .map_err(store_failure)?;
        }
        Ok(())
    }

    async fn process(
        &self,
        d: &Delivery,
        batch: &SenderBatch,
        meta: &RecordMeta,
        out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        if d.expires_at.is_some_and(|e| e <= now_millis()) {
            self.log_status(batch, d, "expired", None);
            return self.track(out, d, TrackingKind::Expired, None);
        }
        match self.replay(d, meta, batch).await? {
            Replay::Send => {}
            Replay::AlreadySent => {
                // Marked sent by an earlier run: that run may have crashed
                // after the mark and before its batch's tracking events were
                // produced. The SENT event is emitted again under the same
                // id, so counters that dedupe by event id (template stats)
                // count the send exactly once.
                if !lock(&batch.sent_now).contains(&d.delivery_id) {
                    self.track(
                        out,
                        d,
                        TrackingKind::Sent,
                        Some("replayed: the provider took it before a restart".into()),
                    )?;
                }
                return self.track(
                    out,
                    d,
                    TrackingKind::Deduplicated,
                    Some("already sent".into()),
                );
            }
            Replay::SkipUncertain => {
                self.count_uncertain("skipped");
                let detail = format!(
                    "uncertain: in flight at a crash, may or may not have gone out; not sent again (senders.uncertain.{} = skip)",
                    self.channel.as_str()
                );
                self.log_status(batch, d, "uncertain", Some(detail.clone()));
                return self.track(out, d, TrackingKind::Deduplicated, Some(detail));
            }
        }
        // A misconfigured provider is probed by one delivery at a time; the
        // others wait in place.
        if let Some((wait, reason)) = self.health.held_for() {
            warn!(stage = self.name(), delivery = %d.delivery_id, %reason, "delivery held");
            return Err(ProcessError::not_due(wait));
        }
        let (at, result) = self.dispatch(d, batch).await?;
        match result {
            Ok(receipt) => self.sent(d, (at, receipt), batch, out).await,
            Err(ProviderError::InvalidTarget(reason)) => {
                self.invalid_target(d, (at, reason), batch, out).await
            }
            Err(ProviderError::Rejected(reason)) => self.rejected(d, (at, reason), batch, out),
            Err(ProviderError::Transient {
                reason,
                retry_after,
            }) => self.transient(d, (at, reason), retry_after, batch, out),
            Err(ProviderError::Misconfigured { setting, reason }) => {
                Err(self.misconfigured(d, setting, &reason).await)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_sends_skips_sent_and_skips_uncertain_only_with_intent_marks() {
        for intent in [None, Some(false), Some(true)] {
            // Marked sent: never again, whatever the intent says.
            assert_eq!(Replay::decide(true, intent), Replay::AlreadySent);
        }
        // No intent marks kept (`resend`), or none for this attempt: send.
        assert_eq!(Replay::decide(false, None), Replay::Send);
        assert_eq!(Replay::decide(false, Some(false)), Replay::Send);
        // In flight at a crash, with `skip`.
        assert_eq!(Replay::decide(false, Some(true)), Replay::SkipUncertain);
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_is_stable() {
        for id in ["a", "b", "c", "delivery-42"] {
            let d = jittered(30_000, id, 1);
            assert!((24_000..=30_000).contains(&d), "{d}");
            assert_eq!(d, jittered(30_000, id, 1));
        }
        assert_ne!(jittered(30_000, "a", 1), jittered(30_000, "b", 1));
    }
}
