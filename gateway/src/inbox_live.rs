//! The inbox's live path: every change to an inbox is an `InboxEvent` on
//! `tidings.inbox.events` (key: user id), written by the in-app sender (a new
//! item) and by the gateway that served a state change (`inbox.rs`). Each
//! gateway process reads the whole topic with ONE consumer and pushes the
//! events of the users connected to it into their live streams (SSE in
//! `inbox_http.rs`, gRPC `Watch` in `inbox.rs`).
//!
//! The consumer is assigned every partition explicitly, from the end as of
//! when it starts: it joins no group and commits nothing, since every
//! gateway needs every event and none needs the past (a reconnecting client
//! resumes from the store, not from Kafka). Partitions are looked up again
//! every [`PARTITION_RECHECK`], so partitions added to the topic are read
//! too (from their beginning: all they hold is new).
//!
//! Memory is bounded three ways: at most `[inbox] max_streams` streams per
//! gateway (then 503 / RESOURCE_EXHAUSTED); each stream has a queue of
//! [`STREAM_QUEUE`] events, and a stream whose client does not keep up
//! misses events rather than buffering them: it is marked lagged and resyncs
//! from the store (the items it missed and fresh counts); the per-user map
//! holds only users with an open stream, the entry going with their last
//! stream.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
};
use tidings_kafka::Backoff;
use tidings_schemas::{
    AvroCodec, AvroRecord,
    records::{InboxEvent, InboxEventKind},
};
use tidings_store::{InboxCounts, InboxFilter, InboxItem, InboxQuery, Millis};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{info, warn};

use crate::{Gateway, inbox::ShownItem, store_status, validate};

/// Events queued per stream before it counts as lagged. A person's inbox
/// changes a few times a minute; 64 queued means the client stopped reading.
pub(crate) const STREAM_QUEUE: usize = 64;
/// How often the consumer looks for partitions added to the topic.
const PARTITION_RECHECK: Duration = Duration::from_secs(30);
/// How long a new stream waits for the consumer to be reading (just after
/// the gateway started) before it is refused with UNAVAILABLE.
const LIVE_WAIT: Duration = Duration::from_secs(5);
/// Most missed items a resumed (or resynced) stream is sent from the store;
/// a client that missed more reloads its list (it also gets the counts).
pub(crate) const RESUME_MAX: u32 = 100;
/// How long a metadata or watermark request of the consumer may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(5);
/// Consumer errors are logged at most this often (librdkafka repeats them).
const ERROR_LOG_EVERY: Duration = Duration::from_secs(5);

/// One gateway's live streams, by user, and whether its consumer reads.
pub(crate) struct InboxHub {
    max_streams: usize,
    queue: usize,
    state: Mutex<HubState>,
    live: watch::Sender<Liveness>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    /// The consumer has not been assigned the topic's partitions yet.
    Starting,
    /// Every event written from now on reaches the streams.
    Reading,
    /// The gateway is shutting down: streams end, new ones are refused.
    Closed,
}

#[derive(Default)]
struct HubState {
    /// Only users with at least one open stream.
    users: HashMap<String, Vec<Subscriber>>,
    /// Streams open, over every user.
    streams: usize,
    next_id: u64,
    /// The one clone of the gateway every open stream reads the store
    /// through: a clone is 1.6 KiB (configuration, clients' handles), held
    /// by each idle stream otherwise (issue 9). Weak, as the gateway holds
    /// the hub: the streams keep it alive, and the first stream after the
    /// last one closed makes a new one.
    gateway: Weak<Gateway>,
}

struct Subscriber {
    id: u64,
    events: mpsc::Sender<Arc<InboxEvent>>,
    lagged: Arc<AtomicBool>,
}

/// One open stream's end of the hub; dropping it leaves the hub.
pub(crate) struct Subscription {
    hub: Arc<InboxHub>,
    user: String,
    id: u64,
    events: mpsc::Receiver<Arc<InboxEvent>>,
    lagged: Arc<AtomicBool>,
}

/// What a stream receives from the hub.
#[derive(Debug)]
pub(crate) enum Received {
    Event(Arc<InboxEvent>),
    /// Events were dropped because the queue was full; those still queued
    /// were discarded too: the stream must resync from the store.
    Lagged,
}

impl InboxHub {
    pub(crate) fn new(max_streams: usize, queue: usize) -> Arc<Self> {
        Arc::new(Self {
            max_streams,
            queue: queue.max(1),
            state: Mutex::new(HubState::default()),
            live: watch::Sender::new(Liveness::Starting),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a stream for `user`; RESOURCE_EXHAUSTED when the gateway holds
    /// `max_streams` already.
    pub(crate) fn subscribe(self: &Arc<Self>, user: &str) -> Result<Subscription, Status> {
        if *self.live.borrow() == Liveness::Closed {
            return Err(Status::unavailable("the gateway is shutting down"));
        }
        let (tx, rx) = mpsc::channel(self.queue);
        let lagged = Arc::new(AtomicBool::new(false));
        let mut state = self.state();
        if state.streams >= self.max_streams {
            return Err(Status::resource_exhausted(format!(
                "this gateway holds {} live inbox streams, the most it allows ([inbox] max_streams): retry later",
                self.max_streams
            )));
        }
        state.streams += 1;
        state.next_id += 1;
        let id = state.next_id;
        state
            .users
            .entry(user.to_owned())
            .or_default()
            .push(Subscriber {
                id,
                events: tx,
                lagged: lagged.clone(),
            });
        Ok(Subscription {
            hub: self.clone(),
            user: user.to_owned(),
            id,
            events: rx,
            lagged,
        })
    }

    /// The gateway clone the open streams share, made from `gateway` when
    /// there is none.
    fn shared_gateway(&self, gateway: &Gateway) -> Arc<Gateway> {
        let mut state = self.state();
        if let Some(shared) = state.gateway.upgrade() {
            return shared;
        }
        let shared = Arc::new(gateway.clone());
        state.gateway = Arc::downgrade(&shared);
        shared
    }

    fn unsubscribe(&self, user: &str, id: u64) {
        let mut state = self.state();
        let Some(subscribers) = state.users.get_mut(user) else {
            return;
        };
        let before = subscribers.len();
        subscribers.retain(|s| s.id != id);
        let removed = before - subscribers.len();
        if subscribers.is_empty() {
            state.users.remove(user);
        }
        state.streams -= removed;
    }

    /// Hands `event` to every stream of its user on this gateway, without
    /// waiting: a stream whose queue is full is marked lagged instead.
    pub(crate) fn dispatch(&self, event: InboxEvent) {
        let state = self.state();
        let Some(subscribers) = state.users.get(&event.user_id) else {
            return;
        };
        let event = Arc::new(event);
        for s in subscribers {
            if s.events.try_send(event.clone()).is_err() {
                s.lagged.store(true, Ordering::Release);
            }
        }
    }

    /// Open streams.
    #[cfg(test)]
    fn streams(&self) -> usize {
        self.state().streams
    }

    /// Users with an open stream.
    #[cfg(test)]
    fn users(&self) -> usize {
        self.state().users.len()
    }

    fn set(&self, liveness: Liveness) {
        self.live.send_if_modified(|now| {
            // Closed is final.
            let changed = *now != liveness && *now != Liveness::Closed;
            if changed {
                *now = liveness;
            }
            changed
        });
    }

    /// Ends every stream (their queues close) and refuses new ones.
    pub(crate) fn close(&self) {
        self.set(Liveness::Closed);
        let mut state = self.state();
        state.users.clear();
        state.streams = 0;
    }

    /// Waits until the consumer reads (at most [`LIVE_WAIT`]): a stream
    /// opened before would miss events.
    async fn wait_reading(&self) -> Result<(), Status> {
        let mut live = self.live.subscribe();
        let reading =
            tokio::time::timeout(LIVE_WAIT, live.wait_for(|l| *l != Liveness::Starting)).await;
        match reading.as_ref().map(|r| r.as_deref().copied()) {
            Ok(Ok(Liveness::Reading)) => Ok(()),
            Ok(_) => Err(Status::unavailable("the gateway is shutting down")),
            Err(_) => Err(Status::unavailable(
                "this gateway is not reading the inbox events topic yet (Kafka?): retry",
            )),
        }
    }
}

impl Subscription {
    /// The next event for this stream; `None` once the hub closed.
    pub(crate) async fn recv(&mut self) -> Option<Received> {
        if self.lagged.swap(false, Ordering::AcqRel) {
            while self.events.try_recv().is_ok() {}
            return Some(Received::Lagged);
        }
        let event = self.events.recv().await?;
        // Dropped events came after the queued ones: the resync covers both.
        if self.lagged.swap(false, Ordering::AcqRel) {
            while self.events.try_recv().is_ok() {}
            return Some(Received::Lagged);
        }
        Some(Received::Event(event))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.user, self.id);
    }
}

/// Reads the inbox events topic into `hub` until `shutdown`, then closes
/// the hub so open streams end (and the servers' graceful shutdown is not
/// held by them).
pub(crate) fn spawn_reader(
    hub: Arc<InboxHub>,
    kafka: ClientConfig,
    topic: String,
    codec: AvroCodec,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let started = tokio::select! {
                _ = shutdown.cancelled() => break,
                started = LiveReader::start(&kafka, &topic, "tidings-gateway-inbox-live") => started,
            };
            match started {
                Ok(reader) => {
                    hub.set(Liveness::Reading);
                    info!(%topic, partitions = reader.partitions(), "reading the inbox events for live streams");
                    reader
                        .run(&codec, &shutdown, |event: InboxEvent| hub.dispatch(event))
                        .await;
                    break;
                }
                Err(e) => {
                    warn!(%topic, error = %e, "cannot read the inbox events yet; live inbox streams wait");
                    if !backoff.sleep_or_cancel(&shutdown).await {
                        break;
                    }
                }
            }
        }
        hub.close();
    });
}

/// One consumer of a topic every gateway reads whole and from its end, for
/// what each needs now and none needs from the past: the inbox events here,
/// the feed's post revisions (`feed_revisions.rs`).
pub(crate) struct LiveReader {
    consumer: Arc<StreamConsumer>,
    topic: String,
    partitions: HashSet<i32>,
}

impl LiveReader {
    /// A consumer assigned every partition at its current end (the high
    /// watermark, asked now: `Offset::End` would be resolved later, and an
    /// event written in between would be missed).
    pub(crate) async fn start(
        kafka: &ClientConfig,
        topic: &str,
        group_id: &str,
    ) -> Result<Self, String> {
        let consumer: StreamConsumer = kafka
            .clone()
            // librdkafka wants a group id; it is never joined (assign, not
            // subscribe) and nothing is committed.
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "latest")
            // Low latency over fewer fetches: a new item should reach the
            // user's screen within a second of its delivery.
            .set("fetch.wait.max.ms", "100")
            .create()
            .map_err(|e| format!("cannot create the consumer: {e}"))?;
        let consumer = Arc::new(consumer);
        let partitions = partitions_of(&consumer, topic).await?;
        let topic_owned = topic.to_owned();
        let c = consumer.clone();
        let list = tokio::task::spawn_blocking(move || {
            let mut list = TopicPartitionList::new();
            for &p in &partitions {
                let (_, high) = c
                    .fetch_watermarks(&topic_owned, p, KAFKA_TIMEOUT)
                    .map_err(|e| format!("no watermarks for partition {p}: {e}"))?;
                list.add_partition_offset(&topic_owned, p, Offset::Offset(high))
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>((list, partitions))
        })
        .await
        .map_err(|e| e.to_string())??;
        let (list, partitions) = list;
        consumer
            .assign(&list)
            .map_err(|e| format!("cannot assign the partitions: {e}"))?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            partitions: partitions.into_iter().collect(),
        })
    }

    /// How many partitions it reads.
    pub(crate) fn partitions(&self) -> usize {
        self.partitions.len()
    }

    /// Hands every record that decodes to `handle` until `shutdown`.
    pub(crate) async fn run<T: AvroRecord>(
        mut self,
        codec: &AvroCodec,
        shutdown: &CancellationToken,
        mut handle: impl FnMut(T),
    ) {
        let mut recheck = tokio::time::interval(PARTITION_RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        recheck.reset();
        let mut errors = ErrorLog::new(&self.topic);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = recheck.tick() => self.add_new_partitions(&mut errors).await,
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        let Some(payload) = message.payload() else { continue };
                        match codec.decode_async::<T>(payload).await {
                            Ok(record) => handle(record),
                            Err(e) => warn!(
                                topic = %self.topic,
                                partition = message.partition(),
                                offset = message.offset(),
                                error = %e,
                                "skipping a record that does not decode"
                            ),
                        }
                    }
                    Err(e) => errors.log(&e.to_string()),
                },
            }
        }
    }

    /// Assigns partitions the topic gained since the last look, from their
    /// beginning.
    async fn add_new_partitions(&mut self, errors: &mut ErrorLog) {
        let now = match partitions_of(&self.consumer, &self.topic).await {
            Ok(now) => now,
            Err(e) => return errors.log(&e),
        };
        let mut added = TopicPartitionList::new();
        for p in now.iter().filter(|p| !self.partitions.contains(p)) {
            if let Err(e) = added.add_partition_offset(&self.topic, *p, Offset::Beginning) {
                return errors.log(&e.to_string());
            }
        }
        if added.count() == 0 {
            return;
        }
        match self.consumer.incremental_assign(&added) {
            Ok(()) => {
                info!(topic = %self.topic, added = added.count(), "reading new partitions");
                self.partitions.extend(now);
            }
            Err(e) => errors.log(&format!("cannot assign new partitions: {e}")),
        }
    }
}

/// The partitions of `topic`, from the brokers' metadata.
async fn partitions_of(consumer: &Arc<StreamConsumer>, topic: &str) -> Result<Vec<i32>, String> {
    let (consumer, topic) = (consumer.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let metadata = consumer
            .fetch_metadata(Some(&topic), KAFKA_TIMEOUT)
            .map_err(|e| format!("no metadata for {topic}: {e}"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(format!("{topic} does not exist (run `tidings init`)"));
        }
        Ok(partitions)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Logs a repeated consumer error once per [`ERROR_LOG_EVERY`], with how
/// many were not logged.
struct ErrorLog {
    topic: String,
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn new(topic: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            last: None,
            suppressed: 0,
        }
    }

    fn log(&mut self, error: &str) {
        if self.last.is_some_and(|at| at.elapsed() < ERROR_LOG_EVERY) {
            self.suppressed += 1;
            return;
        }
        warn!(
            topic = %self.topic,
            error,
            suppressed = self.suppressed,
            "a live consumer failed"
        );
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

/// A live stream's event id, `<mark>-<seq>`: `mark` is the newest
/// `created_at` among the items the stream has shown or found in the
/// store when it opened, `seq` counts the stream's events. Resuming after
/// an id sends the items created after its mark, so an id is all a
/// reconnecting client needs (the gateway keeps nothing per client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventId {
    pub mark: Millis,
    pub seq: u64,
}

impl EventId {
    pub(crate) fn encode(self) -> String {
        format!("{}-{}", self.mark, self.seq)
    }

    /// An id this API sent; `field` names the header or field it came in.
    /// Empty: none.
    pub(crate) fn decode(field: &str, raw: &str) -> Result<Option<Self>, Status> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Ok(None);
        }
        let bad = || validate::invalid(field, "is not an event id this API sent (`<mark>-<seq>`)");
        let (mark, seq) = raw.split_once('-').ok_or_else(bad)?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(mark) || !digits(seq) {
            return Err(bad());
        }
        Ok(Some(EventId {
            mark: mark.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        }))
    }
}

/// A state change, as the streams name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Read,
    Unread,
    Archived,
    Unarchived,
    ReadAll,
    Seen,
}

impl Change {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Change::Read => "read",
            Change::Unread => "unread",
            Change::Archived => "archived",
            Change::Unarchived => "unarchived",
            Change::ReadAll => "read_all",
            Change::Seen => "seen",
        }
    }

    /// The change an event records; `None` for a new item and for kinds
    /// this build does not know.
    fn of(kind: InboxEventKind) -> Option<Self> {
        Some(match kind {
            InboxEventKind::Read => Change::Read,
            InboxEventKind::Unread => Change::Unread,
            InboxEventKind::Archived => Change::Archived,
            InboxEventKind::Unarchived => Change::Unarchived,
            InboxEventKind::ReadAll => Change::ReadAll,
            InboxEventKind::Seen => Change::Seen,
            InboxEventKind::New | InboxEventKind::Unknown => return None,
        })
    }
}

/// What a live stream tells its client.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Update {
    Counts(InboxCounts),
    Notification {
        item: Box<ShownItem>,
        counts: InboxCounts,
    },
    State {
        change: Change,
        notification_id: Option<String>,
        counts: InboxCounts,
    },
    /// Only on streams that asked for heartbeats (gRPC; SSE has its own).
    Heartbeat,
}

/// An update with the id a client resumes after (`None` on heartbeats).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Numbered {
    pub id: Option<EventId>,
    pub update: Update,
}

/// One live stream of one user.
pub(crate) struct Watch {
    gateway: Arc<Gateway>,
    user: String,
    subscription: Subscription,
    mark: Millis,
    seq: u64,
    /// The counts last sent: a fallback when the store does not answer.
    counts: InboxCounts,
    /// Ids of the items shown lately, so an item both read from the store
    /// (resume, resync) and delivered live is shown once.
    shown: VecDeque<String>,
    queued: VecDeque<Update>,
    heartbeat: Option<Duration>,
}

impl Gateway {
    /// Opens `user`'s live stream: counts first, then (resuming after
    /// `after`) the items created after its mark, then live updates.
    /// `heartbeat`: an [`Update::Heartbeat`] after that long without one.
    pub(crate) async fn watch_inbox(
        &self,
        user: &str,
        after: Option<EventId>,
        heartbeat: Option<Duration>,
    ) -> Result<Watch, Status> {
        self.inbox_hub.wait_reading().await?;
        // Subscribed before reading the store: an event in between is
        // delivered (maybe twice, which `shown` catches), never lost.
        let subscription = self.inbox_hub.subscribe(user)?;
        let counts = self.inbox_counts(user).await?;
        let mut watch = Watch {
            gateway: self.inbox_hub.shared_gateway(self),
            user: user.to_owned(),
            subscription,
            mark: 0,
            seq: after.map_or(0, |a| a.seq),
            counts,
            shown: VecDeque::new(),
            queued: VecDeque::from([Update::Counts(counts)]),
            heartbeat,
        };
        match after {
            Some(after) => {
                watch.mark = after.mark;
                watch.queue_missed(counts).await?;
            }
            None => watch.mark = self.newest_item_at(user).await?,
        }
        Ok(watch)
    }

    /// The newest `created_at` in `user`'s inbox, archived items included;
    /// 0 when it is empty.
    async fn newest_item_at(&self, user: &str) -> Result<Millis, Status> {
        let newest = self
            .store
            .inbox
            .list(
                user,
                &InboxQuery {
                    filter: InboxFilter::All,
                    category: None,
                    before: None,
                    limit: 1,
                },
            )
            .await
            .map_err(store_status)?;
        Ok(newest.first().map_or(0, |i| i.created_at))
    }

    /// The items created after `mark`, oldest first: at most
    /// [`RESUME_MAX`], the newest ones when more.
    async fn items_after(&self, user: &str, mark: Millis) -> Result<Vec<InboxItem>, Status> {
        let mut items = self
            .store
            .inbox
            .list(
                user,
                &InboxQuery {
                    filter: InboxFilter::All,
                    category: None,
                    before: None,
                    limit: RESUME_MAX,
                },
            )
            .await
            .map_err(store_status)?;
        items.retain(|i| i.created_at > mark);
        items.reverse();
        Ok(items)
    }
}

impl Watch {
    /// The next update, with its id; `None` when the stream ends (the
    /// gateway shuts down, or the store failed a resync: the client
    /// reconnects with its last id).
    pub(crate) async fn next(&mut self) -> Option<Numbered> {
        loop {
            if let Some(update) = self.queued.pop_front() {
                return Some(self.number(update));
            }
            let received = match self.heartbeat {
                None => self.subscription.recv().await,
                Some(every) => match tokio::time::timeout(every, self.subscription.recv()).await {
                    Ok(received) => received,
                    Err(_) => {
                        return Some(Numbered {
                            id: None,
                            update: Update::Heartbeat,
                        });
                    }
                },
            };
            match received? {
                Received::Lagged => {
                    let counts = self.fresh_counts(None).await;
                    self.queued.push_back(Update::Counts(counts));
                    if let Err(e) = self.queue_missed(counts).await {
                        warn!(user = %self.user, error = %e, "a lagging inbox stream cannot resync: ending it");
                        return None;
                    }
                }
                Received::Event(event) => {
                    if let Some(update) = self.update_for(&event).await {
                        return Some(self.number(update));
                    }
                }
            }
        }
    }

    fn number(&mut self, update: Update) -> Numbered {
        if let Update::Notification { item, .. } = &update {
            self.mark = self.mark.max(item.item.created_at);
            self.remember(&item.item.notification_id);
        }
        match &update {
            Update::Counts(counts)
            | Update::Notification { counts, .. }
            | Update::State { counts, .. } => self.counts = *counts,
            Update::Heartbeat => {}
        }
        self.seq += 1;
        Numbered {
            id: Some(EventId {
                mark: self.mark,
                seq: self.seq,
            }),
            update,
        }
    }

    fn remember(&mut self, id: &str) {
        if self.shown.iter().any(|s| s == id) {
            return;
        }
        if self.shown.len() >= RESUME_MAX as usize {
            self.shown.pop_front();
        }
        self.shown.push_back(id.to_owned());
    }

    /// Queues the items created after the mark that were not shown yet.
    async fn queue_missed(&mut self, counts: InboxCounts) -> Result<(), Status> {
        let missed = self.gateway.items_after(&self.user, self.mark).await?;
        if missed.is_empty() {
            return Ok(());
        }
        let line = self.gateway.seen_line(&self.user, &counts).await?;
        for item in missed {
            if self.shown.contains(&item.notification_id) {
                continue;
            }
            let seen = line.is_seen(&item);
            self.queued.push_back(Update::Notification {
                item: Box::new(ShownItem { item, seen }),
                counts,
            });
        }
        Ok(())
    }

    /// The counts now, from the store; when it does not answer, those an
    /// event carries (it has no total: the last one sent stands).
    async fn fresh_counts(&self, event: Option<&InboxEvent>) -> InboxCounts {
        match self.gateway.inbox_counts(&self.user).await {
            Ok(counts) => counts,
            Err(e) => {
                warn!(user = %self.user, error = %e, "inbox counts for a live stream: the store did not answer");
                match event {
                    Some(e) => InboxCounts {
                        unread: u32::try_from(e.unread).unwrap_or(0),
                        unseen: u32::try_from(e.unseen).unwrap_or(0),
                        total: self.counts.total,
                    },
                    None => self.counts,
                }
            }
        }
    }

    async fn update_for(&self, event: &InboxEvent) -> Option<Update> {
        if event.kind == InboxEventKind::New {
            let (Some(id), Some(new)) = (&event.notification_id, &event.item) else {
                warn!(event_id = %event.event_id, "a NEW inbox event without its item: skipped");
                return None;
            };
            if self.shown.contains(id) {
                return None;
            }
            let counts = self.fresh_counts(Some(event)).await;
            let item = InboxItem {
                user_id: event.user_id.clone(),
                notification_id: id.clone(),
                created_at: new.created_at,
                category: new.category.clone(),
                template_name: None,
                title: new.title.clone(),
                body: new.body.clone(),
                action_url: new.action_url.clone(),
                avatar_url: new.avatar_url.clone(),
                data: new.data.clone(),
                read_at: None,
                archived_at: None,
            };
            let seen = match self.gateway.seen_line(&self.user, &counts).await {
                Ok(line) => line.is_seen(&item),
                // Just delivered: unseen, most likely.
                Err(_) => false,
            };
            let item = Box::new(ShownItem { item, seen });
            return Some(Update::Notification { item, counts });
        }
        let change = Change::of(event.kind)?;
        Some(Update::State {
            change,
            notification_id: event.notification_id.clone(),
            counts: self.fresh_counts(Some(event)).await,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(user: &str, kind: InboxEventKind) -> InboxEvent {
        InboxEvent {
            event_id: "e".into(),
            user_id: user.into(),
            kind,
            notification_id: Some("n1".into()),
            item: None,
            unread: 1,
            unseen: 1,
            at: 1,
        }
    }

    fn reading(max_streams: usize, queue: usize) -> Arc<InboxHub> {
        let hub = InboxHub::new(max_streams, queue);
        hub.set(Liveness::Reading);
        hub
    }

    #[tokio::test]
    async fn at_most_max_streams_then_resource_exhausted() {
        let hub = reading(2, 4);
        let a = hub.subscribe("u1").unwrap();
        let _b = hub.subscribe("u2").unwrap();
        let refused = hub.subscribe("u3").err().expect("over the bound");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("max_streams"),
            "{}",
            refused.message()
        );
        drop(a);
        let _c = hub.subscribe("u3").expect("a slot was freed");
        assert_eq!(hub.streams(), 2);
    }

    #[tokio::test]
    async fn the_user_map_loses_a_user_with_their_last_stream() {
        let hub = reading(10, 4);
        let a = hub.subscribe("u1").unwrap();
        let b = hub.subscribe("u1").unwrap();
        let c = hub.subscribe("u2").unwrap();
        assert_eq!((hub.users(), hub.streams()), (2, 3));
        drop(a);
        assert_eq!((hub.users(), hub.streams()), (2, 2));
        drop(b);
        assert_eq!((hub.users(), hub.streams()), (1, 1));
        drop(c);
        assert_eq!((hub.users(), hub.streams()), (0, 0));
        assert!(hub.state().users.is_empty());
    }

    #[tokio::test]
    async fn events_reach_every_stream_of_their_user_only() {
        let hub = reading(10, 4);
        let mut a = hub.subscribe("u1").unwrap();
        let mut b = hub.subscribe("u1").unwrap();
        let mut other = hub.subscribe("u2").unwrap();
        hub.dispatch(event("u1", InboxEventKind::Read));
        hub.dispatch(event("nobody-here", InboxEventKind::Read));
        for s in [&mut a, &mut b] {
            match s.recv().await {
                Some(Received::Event(e)) => assert_eq!(e.kind, InboxEventKind::Read),
                other => panic!("{other:?}"),
            }
        }
        assert!(other.events.try_recv().is_err(), "u2 got u1's event");
    }

    /// A stream that does not read is not buffered for: once its queue is
    /// full it is marked lagged, the rest is dropped, and its next receive
    /// says so (with the queue emptied) so it resyncs from the store. Other
    /// streams of the same user are not held back.
    #[tokio::test]
    async fn a_slow_stream_is_marked_lagged_not_buffered() {
        let hub = reading(10, 2);
        let mut slow = hub.subscribe("u1").unwrap();
        let mut fast = hub.subscribe("u1").unwrap();
        for _ in 0..5 {
            hub.dispatch(event("u1", InboxEventKind::Read));
            assert!(matches!(fast.recv().await, Some(Received::Event(_))));
        }
        assert_eq!(slow.events.len(), 2, "the queue is bounded");
        assert!(matches!(slow.recv().await, Some(Received::Lagged)));
        assert_eq!(slow.events.len(), 0, "what was queued is discarded");
        hub.dispatch(event("u1", InboxEventKind::Seen));
        match slow.recv().await {
            Some(Received::Event(e)) => assert_eq!(e.kind, InboxEventKind::Seen),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn closing_ends_streams_and_refuses_new_ones() {
        let hub = reading(10, 2);
        let mut a = hub.subscribe("u1").unwrap();
        hub.close();
        assert!(a.recv().await.is_none());
        assert_eq!(
            hub.subscribe("u1").err().unwrap().code(),
            tonic::Code::Unavailable
        );
        assert_eq!(
            hub.wait_reading().await.unwrap_err().code(),
            tonic::Code::Unavailable
        );
        drop(a);
        assert_eq!(hub.streams(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_waits_for_the_consumer_then_is_refused() {
        let hub = InboxHub::new(10, 2);
        let err = hub.wait_reading().await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        hub.set(Liveness::Reading);
        hub.wait_reading().await.unwrap();
    }

    /// A gateway on the embedded Kafka and a SQLite store, its hub reading
    /// (no consumer: the test hands events to the hub itself).
    async fn gateway(dir: &std::path::Path) -> (Gateway, tidings_kafka::KafkaCluster) {
        use tidings_config::{FeedConfig, GatewayConfig, KafkaConfig, TrackingConfig};
        let cluster = tidings_kafka::KafkaCluster::start_embedded().expect("mock Kafka");
        let kafka = KafkaConfig::default();
        let producer =
            tidings_kafka::AvroProducer::new(&cluster, &kafka, tidings_schemas::AvroCodec::local())
                .expect("producer");
        let store = tidings_store::Store::connect(
            &format!("sqlite://{}/t.db", dir.display()),
            &tidings_store::StoreOptions::default(),
        )
        .await
        .expect("sqlite store");
        let gateway = Gateway::new(
            producer,
            cluster.client_config(&kafka),
            store,
            tidings_kafka::Topics::new("t"),
            GatewayConfig::default(),
            &TrackingConfig::default(),
            &FeedConfig::default(),
        );
        gateway.inbox_hub.set(Liveness::Reading);
        (gateway, cluster)
    }

    /// Streams do not hold a gateway clone each: they share one, which goes
    /// with the last of them.
    #[tokio::test]
    async fn streams_share_one_gateway_clone() {
        let dir = tempfile_dir("shared");
        let (gateway, _cluster) = gateway(&dir).await;
        let a = gateway.watch_inbox("u1", None, None).await.expect("opens");
        let b = gateway
            .clone()
            .watch_inbox("u2", None, None)
            .await
            .expect("opens");
        assert!(Arc::ptr_eq(&a.gateway, &b.gateway));
        assert_eq!(Arc::strong_count(&a.gateway), 2);
        drop((a, b));
        assert!(gateway.inbox_hub.state().gateway.upgrade().is_none());
        let c = gateway
            .watch_inbox("u1", None, None)
            .await
            .expect("opens again");
        assert_eq!(Arc::strong_count(&c.gateway), 1, "a new shared clone");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn stored(user: &str, id: &str, at: Millis) -> InboxItem {
        InboxItem {
            user_id: user.into(),
            notification_id: id.into(),
            created_at: at,
            category: None,
            template_name: None,
            title: Some(id.into()),
            body: None,
            action_url: None,
            avatar_url: None,
            data: Default::default(),
            read_at: None,
            archived_at: None,
        }
    }

    fn new_event(user: &str, item: &InboxItem) -> InboxEvent {
        InboxEvent {
            event_id: format!("new-{}", item.notification_id),
            user_id: user.into(),
            kind: InboxEventKind::New,
            notification_id: Some(item.notification_id.clone()),
            item: Some(tidings_schemas::records::InboxEventItem {
                created_at: item.created_at,
                category: None,
                title: item.title.clone(),
                body: None,
                action_url: None,
                avatar_url: None,
                data: Default::default(),
            }),
            unread: 0,
            unseen: 0,
            at: item.created_at,
        }
    }

    /// A stream whose client stopped reading while events piled up is not
    /// handed the backlog: it resyncs from the store (fresh counts, then
    /// the items created after its mark, once each) and goes on live. An
    /// item both read from the store and delivered live is shown once.
    #[tokio::test]
    async fn a_lagging_stream_resyncs_from_the_store() {
        let dir = tempfile_dir("resync");
        let (gateway, _cluster) = gateway(&dir).await;
        let inbox = &gateway.store.inbox;
        let ttl = Duration::from_secs(3600);
        let user = "u-resync";
        inbox
            .put(&stored(user, "old", 1_000), 100, ttl)
            .await
            .unwrap();

        let mut watch = gateway.watch_inbox(user, None, None).await.expect("opens");
        let first = watch.next().await.expect("counts");
        assert_eq!(
            first.update,
            Update::Counts(InboxCounts {
                unread: 1,
                unseen: 1,
                total: 1
            })
        );
        assert_eq!(
            first.id.map(|i| i.mark),
            Some(1_000),
            "the newest item at open"
        );

        // Two items arrive while the client reads nothing: more events than
        // the queue holds (the second item's among them, and again later).
        let (a, b) = (stored(user, "a", 2_000), stored(user, "b", 3_000));
        inbox.put(&a, 100, ttl).await.unwrap();
        inbox.put(&b, 100, ttl).await.unwrap();
        gateway.inbox_hub.dispatch(new_event(user, &a));
        for _ in 0..STREAM_QUEUE + 10 {
            gateway
                .inbox_hub
                .dispatch(event(user, InboxEventKind::Read));
        }
        let resync = watch.next().await.expect("resync");
        assert_eq!(
            resync.update,
            Update::Counts(InboxCounts {
                unread: 3,
                unseen: 3,
                total: 3
            }),
            "fresh counts, not the queued events"
        );
        let mut shown = Vec::new();
        for _ in 0..2 {
            match watch.next().await.expect("missed item").update {
                Update::Notification { item, .. } => shown.push(item.item.notification_id),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(shown, ["a", "b"], "the missed items, oldest first");
        // Live again; b, shown by the resync, is not shown twice.
        gateway.inbox_hub.dispatch(new_event(user, &b));
        gateway
            .inbox_hub
            .dispatch(event(user, InboxEventKind::Seen));
        let next = watch.next().await.expect("live");
        assert!(
            matches!(
                next.update,
                Update::State {
                    change: Change::Seen,
                    ..
                }
            ),
            "{next:?}"
        );
        assert_eq!(
            next.id.map(|i| i.mark),
            Some(3_000),
            "the mark follows the items shown"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tidings-inbox-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn event_ids_round_trip_and_garbage_is_named() {
        let id = EventId {
            mark: 1_764_553_200_000,
            seq: 7,
        };
        assert_eq!(
            EventId::decode("Last-Event-ID", &id.encode()).unwrap(),
            Some(id)
        );
        assert_eq!(EventId::decode("Last-Event-ID", " ").unwrap(), None);
        for bad in [
            "x",
            "1-",
            "-1",
            "1-2-3",
            "a-1",
            "1-b",
            "+1-2",
            "99999999999999999999-1",
        ] {
            let err = EventId::decode("after_event_id", bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(
                err.message().starts_with("after_event_id:"),
                "{bad}: {}",
                err.message()
            );
        }
    }

    #[test]
    fn every_state_kind_has_its_change_and_new_has_none() {
        assert_eq!(Change::of(InboxEventKind::Read), Some(Change::Read));
        assert_eq!(
            Change::of(InboxEventKind::ReadAll).map(Change::as_str),
            Some("read_all")
        );
        assert_eq!(Change::of(InboxEventKind::New), None);
        assert_eq!(Change::of(InboxEventKind::Unknown), None);
    }
}
