//! The consume-process-produce loop every processor runs in.
//!
//! A stage reads a batch of records, hands each to its [`Processor`] (records
//! of one partition and key in order; other keys and partitions
//! concurrently), lets the processor `finish` the batch, produces everything
//! it emitted and waits for the brokers' acks, and only then stores the input
//! offsets for the next commit (Vector's at-least-once scheme:
//! `enable.auto.offset.store=false`, store after downstream acked). A crash
//! between produce and commit replays the batch; stages are written to be
//! idempotent under replay (dedupe ledgers keyed by event and delivery ids),
//! which also holds on the embedded mock cluster, where transactional offset
//! commits are not reliable.
//!
//! No input stops a stage. A record that cannot be decoded, that its
//! processor rejects permanently, or one of whose outputs can never be
//! produced (too large for `kafka.max_message_bytes`, say) goes to the
//! dead-letter topic with the reason; so does every record of a batch whose
//! `finish` fails permanently. A dead letter always fits: a payload too large
//! for it is cut, and the reason says so. Only a failure that a retry can fix
//! (the store, a broker or the schema registry briefly unavailable) holds a
//! record back, retried in place with [`Backoff`], counted in
//! `tidings_stage_errors_total{retriable="true"}`; shutdown interrupts the
//! wait, and what was not handled is consumed again.
//!
//! Rebalances: the consumer's context logs each assignment and revocation,
//! commits the stored offsets before partitions are revoked, and tells the
//! runner, which drops the revoked partitions' records from the batch it is
//! collecting (their new owner reads them from the committed offset). Offsets
//! are only ever stored for, and at shutdown committed for, partitions this
//! member holds (librdkafka refuses to store an offset of a partition not
//! assigned), so a member never rewinds a partition another member now owns.
//! The callbacks also publish where the member stands ([`Stage::assignment`]),
//! which a process's `/readyz` reports.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use futures::{
    FutureExt, StreamExt,
    future::{BoxFuture, join_all},
    stream::FuturesOrdered,
};
use rdkafka::{
    ClientConfig, ClientContext, Message, Statistics, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::{KafkaError as RdKafkaError, RDKafkaErrorCode},
    message::{BorrowedMessage, OwnedMessage, Timestamp},
};
use tidings_config::KafkaConfig;
use tidings_schemas::{AvroRecord, Label, records::DeadLetter};
use tidings_telemetry::{
    BacklogWait, ConsumerLag, IntCounter, RecordFate, StageBatch, StageError, StageOutputs,
    StageRecords,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::{
    KafkaCluster, KafkaError,
    backlog::{Backlog, record_bytes},
    backoff::{Backoff, sleep_or_cancel},
    cluster::watermarks,
    handling::{Frontiers, Handling, is_labelled, is_marked},
    producer::{AvroProducer, Handover, OutRecord},
    readiness::Assignment,
};

/// What a processor's failure means for its record: the retry hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The record itself is at fault and never will succeed: it goes to the
    /// dead-letter topic.
    Permanent,
    /// A dependency failed: the record is retried in place with backoff,
    /// holding back its key.
    Retriable,
    /// Not a failure: the record is not due for this long (retry tiers). The
    /// runner waits (waking for shutdown) and hands it over again; not
    /// counted as an error.
    NotDue(Duration),
}

/// Why a processor could not handle a record, and whether trying again can
/// help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct ProcessError {
    reason: String,
    kind: Failure,
}

impl ProcessError {
    /// The record itself is at fault; it goes to the dead-letter topic.
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            kind: Failure::Permanent,
        }
    }

    /// A dependency failed; the record is retried in place.
    pub fn retriable(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            kind: Failure::Retriable,
        }
    }

    /// The record must wait; the runner sleeps (waking for shutdown) and
    /// hands it over again, holding back its key meanwhile.
    pub fn not_due(wait: Duration) -> Self {
        Self {
            reason: format!("not due for {wait:?}"),
            kind: Failure::NotDue(wait),
        }
    }

    pub fn kind(&self) -> Failure {
        self.kind
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Whether handing the same record over again later can succeed (true
    /// for a record not due yet).
    pub fn is_retriable(&self) -> bool {
        !matches!(self.kind, Failure::Permanent)
    }

    /// How long the record is not due for, if that is all this is.
    pub fn not_due_for(&self) -> Option<Duration> {
        match self.kind {
            Failure::NotDue(wait) => Some(wait),
            _ => None,
        }
    }
}

/// Where an input record came from.
#[derive(Debug, Clone)]
pub struct RecordMeta {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    /// The record's timestamp (producer create time), if it has one.
    pub timestamp: Option<i64>,
    /// Whether it may have been handled before (see [`crate::handling`]).
    pub handling: Handling,
}

/// Collects the records a processor emits for one input.
pub struct Emitter<'a> {
    producer: &'a AvroProducer,
    stage: &'static str,
    records: Vec<OutRecord>,
    /// The input's: the outputs of a record that may repeat may repeat.
    handling: Handling,
}

impl Emitter<'_> {
    /// Marks every output of this input as one that may repeat an earlier
    /// output (a processor that knows it is making again what it made
    /// before: the enricher on a replayed event claim).
    pub fn maybe_repeats(&mut self) {
        self.handling = Handling::MaybeRepeat;
    }

    /// The outputs, each marked if they may repeat.
    fn into_records(self) -> Vec<OutRecord> {
        let mut records = self.records;
        if self.handling == Handling::MaybeRepeat {
            for r in &mut records {
                r.handling = Handling::MaybeRepeat;
            }
        }
        records
    }

    /// Queues `record` for `topic`; it is produced with the rest of the batch
    /// before the input's offset is committed. A record that cannot be
    /// encoded, or is larger than `kafka.max_message_bytes` allows, is a
    /// permanent failure: no retry can produce it.
    pub fn emit<T: AvroRecord>(
        &mut self,
        topic: &str,
        key: &str,
        record: &T,
    ) -> Result<(), ProcessError> {
        let out = self.producer.encode(topic, key, record).map_err(|e| {
            error!(stage = self.stage, %topic, error = %e, "cannot encode an output record");
            ProcessError::permanent(e.to_string())
        })?;
        let limit = self.producer.max_record_bytes();
        if out.size() > limit {
            return Err(ProcessError::permanent(format!(
                "the {} for {topic} would be {} bytes (key and value), over the {limit} bytes \
                 kafka.max_message_bytes allows",
                T::FULL_NAME,
                out.size(),
            )));
        }
        self.records.push(out);
        Ok(())
    }
}

/// One stage of the pipeline: how to handle one record.
#[async_trait]
pub trait Processor: Send + Sync + 'static {
    type Input: AvroRecord;
    /// What the stage looks up once per batch for all of its records (the
    /// contacts of every user in it, say), handed to each `process` call.
    /// `()` for stages that look nothing up. The default is what a stage
    /// whose `prefetch` looks nothing up hands over.
    type Prefetched: Send + Sync + Default;

    /// Records carrying this [`Label`] are of no use to the stage: they are
    /// committed as handled without being decoded or processed (template
    /// statistics pass over tracking events that name no template). A
    /// record without it is handled as usual.
    const PASSES_OVER: Option<Label> = None;

    /// Whether the stage waits, on the embedded cluster, until the topics
    /// it writes have room (see [`crate::backlog`]). Only a stage that
    /// feeds back into a topic upstream of itself opts out (the retry
    /// relays: their senders wait on them, so they must not wait on their
    /// senders).
    const WAITS_FOR_ROOM: bool = true;

    /// The stage's name: consumer group suffix, metric label, dead-letter
    /// `stage` field.
    fn name(&self) -> &'static str;

    /// Looks up in a few store calls what `process` would otherwise look up
    /// record by record: one round trip per batch instead of one per record.
    /// It is only a head start and must be read-only: `process` must look up
    /// itself whatever is missing, so a failed prefetch costs speed, never
    /// correctness, and a batch replayed after a crash finds the store as
    /// `finish` left it. Nothing by default.
    async fn prefetch(&self, batch: &[(&Self::Input, &RecordMeta)]) -> Self::Prefetched {
        let _ = batch;
        Self::Prefetched::default()
    }

    async fn process(
        &self,
        input: &Self::Input,
        prefetched: &Self::Prefetched,
        meta: &RecordMeta,
        out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError>;

    /// Runs once every record of the batch was processed, before the
    /// batch's outputs are produced and its offsets committed: the place to
    /// write in a few calls what `process` collected in `prefetched` (the
    /// senders' ledger marks and status log). A retriable failure is retried
    /// in place with backoff; a permanent one dead-letters every processed
    /// record of the batch (their outputs are not produced), and the stage
    /// carries on. Nothing to write by default.
    async fn finish(&self, prefetched: &Self::Prefetched) -> Result<(), ProcessError> {
        let _ = prefetched;
        Ok(())
    }
}

/// Batching and retry knobs of a stage.
#[derive(Debug, Clone)]
pub struct StageOptions {
    pub max_batch: usize,
    /// Bytes of records (keys and values) in one batch, at most; a record
    /// larger than this is a batch of its own (`kafka.stage_batch_bytes`).
    pub max_batch_bytes: usize,
    /// Records (of different keys) processed at once.
    pub max_concurrency: usize,
    /// How long a member may go between polls before the group evicts it;
    /// retry stages hold records until due, so they need longer.
    pub max_poll_interval: Duration,
    /// How long to wait for more records after the first of a batch.
    pub batch_window: Duration,
    /// Batches handled at once: while the brokers acknowledge one batch's
    /// outputs, the next is processed. 1 waits for each batch's outputs
    /// before the next.
    pub batches_in_flight: usize,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How long a stopping stage waits for its final commit and for leaving
    /// its group before it gives up on them (the group's session timeout
    /// then frees its partitions).
    pub close_timeout: Duration,
    pub pickup: Pickup,
}

/// How soon a caught-up stage must see a record that has just arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pickup {
    /// At once: the stage is on a notification's or a post's way to its
    /// user (the enricher, the senders, the feed's fan-out).
    Prompt,
    /// A moment later changes nothing: bookkeeping (template stats,
    /// reaction tallies, follows, pruning) and retry tiers, which hold their
    /// records for seconds anyway. On the embedded mock cluster these stages fetch
    /// four times a second instead of fifty when idle.
    Relaxed,
}

impl Default for StageOptions {
    fn default() -> Self {
        Self {
            max_batch: 1_000,
            max_batch_bytes: KafkaConfig::default().stage_batch_bytes,
            max_concurrency: 256,
            max_poll_interval: Duration::from_secs(300),
            batch_window: Duration::from_millis(5),
            batches_in_flight: 2,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            close_timeout: Duration::from_secs(15),
            pickup: Pickup::Prompt,
        }
    }
}

/// A stage's consumer callbacks, run by librdkafka inside the runner's
/// `recv` (never while it handles a batch).
struct StageContext {
    stage: &'static str,
    /// Partitions revoked since the runner last looked.
    revoked: Mutex<Vec<(String, i32)>>,
    /// Where this member stands in its group, for readiness. With the
    /// default eager assignors an assignment is the member's whole share.
    assignment: watch::Sender<Assignment>,
    /// Where the assigned partitions ended when this member got them.
    frontiers: Mutex<Frontiers>,
}

impl StageContext {
    /// Publishes where the member stands. Stopping is final: leaving the
    /// group revokes the partitions too, which must not read as a rebalance.
    fn publish(&self, next: Assignment) {
        self.assignment.send_if_modified(|now| {
            if *now == Assignment::Stopping || *now == next {
                return false;
            }
            *now = next;
            true
        });
    }

    /// Asks where each newly assigned partition ends, before any of its
    /// records is read: the records below were perhaps handled by a
    /// previous owner (see [`crate::handling`]). One round trip per
    /// partition, once per assignment. A partition whose end cannot be read
    /// now is asked about again when its first batch comes.
    fn learn_frontiers(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        for e in tpl.elements() {
            let (topic, partition) = (e.topic(), e.partition());
            // Right after a topic is created its brokers may not agree on
            // a leader yet: asked again for a moment.
            match watermarks(consumer, topic, partition, FRONTIER_PATIENCE) {
                Ok((_, end)) => {
                    debug!(
                        stage = self.stage,
                        topic,
                        partition,
                        end,
                        "records below the end of a newly assigned partition may repeat"
                    );
                    lock(&self.frontiers).set(topic.to_owned(), partition, end);
                }
                Err(e) => {
                    warn!(stage = self.stage, topic, partition, error = %e, "cannot read where a newly assigned partition ends; asking again with its first batch");
                }
            }
        }
    }

    fn take_revoked(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Logs `what` once per topic with its partitions.
    fn log_partitions(&self, tpl: &TopicPartitionList, what: &'static str, lost: bool) {
        let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for e in tpl.elements() {
            by_topic
                .entry(e.topic().to_owned())
                .or_default()
                .push(e.partition());
        }
        for (topic, partitions) in by_topic {
            if lost {
                warn!(stage = self.stage, %topic, ?partitions, "partitions lost (this member was evicted); their uncommitted records go to the new owner");
            } else {
                info!(stage = self.stage, %topic, ?partitions, "{what}");
            }
        }
    }
}

impl ClientContext for StageContext {
    /// Turns librdkafka's periodic statistics into the consumer-lag gauge:
    /// the number of records waiting per partition is the queue-depth signal
    /// that says when a stage needs more members.
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is the internal unassigned partition, or unknown lag.
                if *partition >= 0 && p.consumer_lag >= 0 {
                    ConsumerLag {
                        stage: self.stage,
                        topic,
                        partition: *partition,
                    }
                    .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for StageContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let lost = consumer.assignment_lost();
        self.log_partitions(tpl, "partitions revoked", lost);
        self.publish(Assignment::Rebalancing);
        if !lost {
            // Commit what was handled before the new owner reads the
            // committed offsets; sync, because it must land first.
            // (librdkafka's auto-commit on revoke would too; this makes it
            // explicit and logged.) A lost assignment cannot commit.
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => debug!(stage = self.stage, "offsets committed on revoke"),
                Err(RdKafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => {
                    warn!(stage = self.stage, error = %e, "committing on revoke failed; the new owner replays the last records")
                }
            }
        }
        let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        for e in tpl.elements() {
            // Another member reports this partition's lag now.
            ConsumerLag {
                stage: self.stage,
                topic: e.topic(),
                partition: e.partition(),
            }
            .remove();
            revoked.push((e.topic().to_owned(), e.partition()));
        }
        lock(&self.frontiers).forget(&revoked);
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.log_partitions(tpl, "partitions assigned", false);
                self.learn_frontiers(consumer, tpl);
                // An empty assignment is a completed one too: the group has
                // more members than partitions.
                self.publish(Assignment::Assigned {
                    partitions: tpl.count(),
                });
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                warn!(stage = self.stage, error = %e, "rebalance failed");
                self.publish(Assignment::Failed(e.to_string()));
            }
        }
    }
}

/// Leaves the group in two steps, at most `limit` in all. First it
/// unsubscribes and serves the consumer until librdkafka has revoked the
/// partitions: the revoke callback commits what was handled, through the
/// same path as any rebalance. Only then is the consumer closed, with no
/// rebalance left in flight for the close to interleave with: librdkafka
/// aborts the process when a close ends while an assignment change is still
/// in progress (`rd_kafka_cgrp_terminated: assert:
/// !rd_kafka_assignment_in_progress`, confluentinc/librdkafka#4027, #4792,
/// seen once in our CI), and draining the revoke before the close is the
/// shutdown its maintainers' answers point to.
async fn leave_group(consumer: StreamConsumer<StageContext>, stage: &'static str, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let revoke = give_up_partitions(&consumer, stage, deadline).await;
    close_consumer(consumer, stage, revoke, deadline).await;
}

/// How often [`give_up_partitions`] looks whether the revoke has happened
/// while it serves the consumer.
const REVOKE_CHECK: Duration = Duration::from_millis(50);

/// Unsubscribes and serves `consumer` until it holds no partitions (or the
/// deadline passes). A revoke callback's sync commit is bounded by
/// librdkafka (`session.timeout.ms` while the coordinator is away).
async fn give_up_partitions(
    consumer: &StreamConsumer<StageContext>,
    stage: &'static str,
    deadline: tokio::time::Instant,
) -> Revoke {
    consumer.unsubscribe();
    let started = tokio::time::Instant::now();
    loop {
        match consumer.assignment() {
            Ok(held) if held.count() == 0 => {
                debug!(
                    stage,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "partitions given up before the close"
                );
                return Revoke::Done;
            }
            Ok(_) => {}
            Err(e) => {
                warn!(stage, error = %e, "cannot tell whether the partitions were revoked; the close commits them");
                return Revoke::Pending;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Revoke::Pending;
        }
        // Serving the consumer runs the revoke callback, which may be
        // queued behind read-ahead records. Those are dropped unstored: the
        // partitions' next owner reads them again from the committed offsets.
        let wait =
            REVOKE_CHECK.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let _ = tokio::time::timeout(wait, async {
            loop {
                let _ = consumer.recv().await;
            }
        })
        .await;
    }
}

/// Whether a leaving member's partitions were revoked before its close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Revoke {
    /// Revoked, and what was handled committed by the revoke callback.
    Done,
    /// Still held: the close commits their stored offsets first.
    Pending,
}

/// Commits the stored offsets of partitions still held, if any, and closes
/// `consumer` on a thread of its own, waiting until `deadline`. Both block
/// inside librdkafka with no bound of their own: a sync commit waits for
/// the coordinator, and rdkafka's `Drop` polls until the consumer reports
/// closed (fede1024/rust-rdkafka#509). A stage stopped while its group was
/// still joining once hung a whole test run there; past the deadline the
/// close is left to finish (or not) on its thread and the broker expires the
/// membership after `session.timeout.ms`.
async fn close_consumer(
    consumer: StreamConsumer<StageContext>,
    stage: &'static str,
    revoke: Revoke,
    deadline: tokio::time::Instant,
) {
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    let close = move || {
        // Stored offsets exist only for assigned partitions: librdkafka
        // drops them on revoke and refuses to store others.
        if revoke == Revoke::Pending {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(RdKafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => {
                    warn!(stage, error = %e, "final offset commit failed; the last records will be replayed")
                }
            }
        }
        drop(consumer);
        let _ = closed_tx.send(());
    };
    // A failed spawn drops the closure, and with it the consumer, right here.
    if let Err(e) = std::thread::Builder::new()
        .name(format!("close-{stage}"))
        .spawn(close)
    {
        warn!(stage, error = %e, "no thread to close the consumer on; closed inline");
        return;
    }
    if tokio::time::timeout_at(deadline, closed_rx).await.is_err() {
        warn!(
            stage,
            "the consumer did not leave its group in time; its partitions are freed when its session expires"
        );
    }
}

/// A running stage: a consumer group member with its processor.
pub struct Stage<P: Processor> {
    processor: Arc<P>,
    consumer: StreamConsumer<StageContext>,
    producer: AvroProducer,
    dead_letter_topic: String,
    options: StageOptions,
    consumer_errors: Mutex<ErrorLog>,
    /// `stage_records_total{outcome="passed_over"}` of this stage, looked
    /// up once: it counts on the path that exists to be cheap.
    passed_over: IntCounter,
    /// On the embedded cluster: what its brokers hold unread, and this
    /// stage's consumer group, which counts what it takes.
    backlog: Option<(Arc<Backlog>, String)>,
}

/// Consumer errors are librdkafka's reports (a broker down, a connection
/// refused); it recovers by itself. They are logged at most once per
/// [`ErrorLog::EVERY`], with how many were not.
struct ErrorLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    const EVERY: Duration = Duration::from_secs(5);

    /// How many were suppressed since the last logged one, if this one is to
    /// be logged.
    fn should_log(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < Self::EVERY)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// A record as the poll loop took it from librdkafka.
enum Consumed {
    /// Copied out, to be decoded and processed.
    Whole(OwnedMessage),
    /// Labelled as of no use to the stage ([`Processor::PASSES_OVER`]), and
    /// so never copied out of librdkafka: only where it stood. A run of such
    /// records in one partition, one after another in the batch, is one
    /// entry at the last of them: all the batch does with them is commit.
    PassedOver {
        topic: String,
        partition: i32,
        offset: i64,
    },
}

impl Consumed {
    /// Adds a passed-over record to `batch`: it extends the batch's last
    /// entry when that is a run in the same partition, so a run never
    /// reaches over another record of its partition (whose offset must be
    /// committed only once it is handled).
    fn pass_over(batch: &mut Vec<Consumed>, topic: &str, partition: i32, offset: i64) {
        if let Some(Consumed::PassedOver {
            topic: last_topic,
            partition: last_partition,
            offset: last_offset,
        }) = batch.last_mut()
            && *last_partition == partition
            && last_topic == topic
        {
            *last_offset = offset;
            return;
        }
        batch.push(Consumed::PassedOver {
            topic: topic.to_owned(),
            partition,
            offset,
        });
    }

    fn topic(&self) -> &str {
        match self {
            Consumed::Whole(m) => m.topic(),
            Consumed::PassedOver { topic, .. } => topic,
        }
    }

    fn partition(&self) -> i32 {
        match self {
            Consumed::Whole(m) => m.partition(),
            Consumed::PassedOver { partition, .. } => *partition,
        }
    }
}

/// A consumed record and, if it decoded, its input.
struct Record<I> {
    message: OwnedMessage,
    meta: RecordMeta,
    input: Option<I>,
}

/// Why a record was not decoded.
enum Undecoded {
    /// Shutdown came while the codec waited for the schema registry.
    Interrupted,
    /// It never will be: the reason, for its dead letter.
    Undecodable(String),
}

/// What became of one record.
enum RecordOutcome {
    Processed(Vec<OutRecord>),
    DeadLettered(OutRecord),
    /// Shutdown came first; the record will be consumed again.
    Interrupted,
}

/// Where a record ended up once its outputs were produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Processed,
    DeadLettered,
    Interrupted,
}

/// The last handled offset per partition of a batch.
type Offsets = Vec<((String, i32), i64)>;

/// A batch whose outputs are being produced: yields its offsets once they
/// are, or None if shutdown came first.
type Producing<'a> = BoxFuture<'a, Option<Offsets>>;

/// A processed batch and its outputs, being produced.
struct BatchOutputs<I> {
    records: Vec<Record<I>>,
    fates: Vec<Fate>,
    /// Outputs not yet produced, and the index of each one's input record.
    pending: Vec<OutRecord>,
    inputs: Vec<usize>,
    phases: Phases,
}

/// When a batch started and how long its steps took, for the debug log.
struct Phases {
    started: Instant,
    decode: Duration,
    prefetch: Duration,
    process: Duration,
    /// When, since the start, the outputs went to the producer.
    handed_over: Duration,
}

/// How a batch's `finish` went.
enum Finished {
    Done,
    /// Permanently; the reason.
    Failed(String),
    Interrupted,
}

/// What a stage's consumer fetches from one partition at a time, at most
/// (compressed): ordinary notifications, a few hundred bytes each, still
/// come hundreds at a time.
const MAX_PARTITION_FETCH_BYTES: &str = "65536";

/// The settings every stage's consumer runs with, in consumer group
/// `group` (the bench's raw Kafka baseline uses them too, so its fetches
/// cost what a stage's do).
pub fn consumer_config(
    cluster: &KafkaCluster,
    config: &KafkaConfig,
    group: &str,
    max_poll_interval: Duration,
    pickup: Pickup,
) -> ClientConfig {
    let mut c = cluster.client_config(config);
    c.set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", "10000")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms(cluster, pickup))
        .set("statistics.interval.ms", "10000")
        // Bound what a member holds read ahead: librdkafka's defaults
        // (64 MiB queued plus 50 MiB per fetch) let a stage fed large
        // records sit at half a GiB before it processed any of them.
        .set("queued.max.messages.kbytes", "16384")
        .set(
            "fetch.max.bytes",
            (16 << 20).max(config.max_message_bytes).to_string(),
        )
        // The queue's bound is checked before a fetch, in uncompressed
        // bytes, and a fetch is counted compressed: one fetch of lz4
        // batches of repetitive content (1 MiB per partition by default)
        // decompressed to over 300 MiB in the enricher during the chaos
        // suite's flood. A smaller share per partition bounds that
        // overshoot; a broker still returns a larger first batch whole,
        // so no record is too large to be read.
        .set("max.partition.fetch.bytes", MAX_PARTITION_FETCH_BYTES)
        // With the read-ahead bounded, a fetch that found the queue full
        // must try again soon: librdkafka's default second left a stage fed
        // large records idle every other second (its own advice for low
        // queue thresholds).
        .set("fetch.queue.backoff.ms", "20")
        .set(
            "max.poll.interval.ms",
            max_poll_interval.as_millis().to_string(),
        );
    c
}

/// How long a fetch may wait at the broker for records to arrive. A Kafka
/// broker answers a waiting fetch as soon as a record arrives, so the wait
/// adds no latency to the partitions being fetched and only sets how often
/// an idle member asks again: librdkafka's default (500 ms) keeps a
/// deployment's idle stages (a dozen or more consumers) from sending the
/// brokers a fetch every few milliseconds. (A partition newly assigned
/// joins the next fetch, so it may wait for the one in flight.) The
/// embedded mock cluster holds an empty fetch for the whole wait, even when
/// a record arrives meanwhile: there the wait is the latency an idle stage
/// adds to the next record, so it is short where that latency reaches a
/// user ([`Pickup::Prompt`]) and long elsewhere, as each idle member's
/// fetches cost the process CPU.
fn fetch_wait_ms(cluster: &KafkaCluster, pickup: Pickup) -> &'static str {
    match (cluster.is_embedded(), pickup) {
        (false, _) => "500",
        (true, Pickup::Prompt) => "20",
        (true, Pickup::Relaxed) => "250",
    }
}

impl<P: Processor> Stage<P> {
    pub fn new(
        cluster: &KafkaCluster,
        config: &KafkaConfig,
        producer: AvroProducer,
        processor: P,
        input_topics: &[String],
        dead_letter_topic: String,
        options: StageOptions,
    ) -> Result<Self, KafkaError> {
        let group = format!("{}.{}", config.group_prefix, processor.name());
        let c = consumer_config(
            cluster,
            config,
            &group,
            options.max_poll_interval,
            options.pickup,
        );
        let consumer: StreamConsumer<StageContext> = c
            .create_with_context(StageContext {
                stage: processor.name(),
                revoked: Mutex::default(),
                assignment: watch::Sender::new(Assignment::Joining),
                frontiers: Mutex::default(),
            })
            .map_err(|e| KafkaError::client("consumer", e))?;
        let topics: Vec<&str> = input_topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| KafkaError::client("subscription", e))?;
        info!(stage = processor.name(), %group, topics = ?input_topics, "stage subscribed");
        let backlog = cluster.backlog().map(|backlog| {
            backlog.register(&group, input_topics);
            (backlog, group)
        });
        let passed_over = StageRecords::counter(processor.name(), RecordFate::PassedOver);
        Ok(Self {
            passed_over,
            backlog,
            processor: Arc::new(processor),
            consumer,
            producer,
            dead_letter_topic,
            consumer_errors: Mutex::new(ErrorLog {
                last: None,
                suppressed: 0,
            }),
            options,
        })
    }

    /// Runs until `shutdown` is cancelled, then commits what was handled and
    /// leaves the group. No record makes it return early or fail: records
    /// that cannot be handled are dead-lettered, and failures a retry can
    /// fix are retried.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), KafkaError> {
        let stage = self.processor.name();
        self.poll_loop(&shutdown).await;
        self.consumer.context().publish(Assignment::Stopping);
        leave_group(self.consumer, stage, self.options.close_timeout).await;
        info!(stage, "stage stopped");
        Ok(())
    }

    /// Where this stage's consumer stands in its group, from now on:
    /// [`Assignment::Joining`] until its first rebalance completes. A process
    /// is ready only while each of its stages holds its assignment.
    pub fn assignment(&self) -> watch::Receiver<Assignment> {
        self.consumer.context().assignment.subscribe()
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(self.options.min_backoff, self.options.max_backoff)
    }

    async fn poll_loop(&self, shutdown: &CancellationToken) {
        // Batches whose outputs the brokers are acknowledging, oldest first.
        let mut producing: FuturesOrdered<Producing<'_>> = FuturesOrdered::new();
        let depth = self.options.batches_in_flight.max(1);
        loop {
            while producing.len() >= depth {
                if !self.settle(producing.next().await) {
                    return;
                }
            }
            let Some(batch) = self.next_batch(shutdown, &mut producing).await else {
                break;
            };
            match self.handle_batch(batch, shutdown).await {
                Some(outputs) => producing.push_back(outputs),
                None => break,
            }
            // A batch cut short by shutdown must be the last: a later one
            // would store offsets past its unhandled records.
            if shutdown.is_cancelled() {
                break;
            }
        }
        while let Some(done) = producing.next().await {
            if !self.settle(Some(done)) {
                return;
            }
        }
    }

    /// Stores the offsets of a batch whose outputs were produced, in batch
    /// order. False if it was cut short by shutdown: nothing after it may be
    /// stored.
    fn settle(&self, done: Option<Option<Offsets>>) -> bool {
        let Some(done) = done else { return true };
        let Some(offsets) = done else { return false };
        for ((topic, partition), offset) in offsets {
            // Refused for a partition no longer assigned; the new owner
            // handles it from the committed offset.
            if let Err(e) = self.consumer.store_offset(&topic, partition, offset) {
                debug!(stage = self.processor.name(), %topic, partition, offset, error = %e, "offset not stored");
            }
        }
        true
    }

    /// Waits for the next batch: the first record, then whatever else comes
    /// within the batch window. None at shutdown, or when a batch still
    /// `producing` was cut short by it. Batches in `producing` that finish
    /// meanwhile have their offsets stored, so an idle stage commits them.
    async fn next_batch(
        &self,
        shutdown: &CancellationToken,
        producing: &mut FuturesOrdered<Producing<'_>>,
    ) -> Option<Vec<Consumed>> {
        let mut backoff = self.backoff();
        let mut batch = Vec::new();
        let mut bytes = 0;
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return None,
                m = self.consumer.recv() => m,
                done = producing.next(), if !producing.is_empty() => {
                    if !self.settle(done) {
                        return None;
                    }
                    continue;
                }
            };
            match first {
                Ok(m) => {
                    self.drop_revoked(&mut batch);
                    bytes += self.take(m, &mut batch);
                    break;
                }
                Err(e) => {
                    self.consumer_error(&e);
                    // Only a fatal error repeats without end; the others are
                    // reports librdkafka queued while it recovers, and a
                    // backoff per report would leave the rebalance and the
                    // records behind them waiting (one per 10 s after a
                    // broker restart).
                    if self.consumer.client().fatal_error().is_some()
                        && !backoff.sleep_or_cancel(shutdown).await
                    {
                        return None;
                    }
                }
            }
        }
        let deadline = tokio::time::Instant::now() + self.options.batch_window;
        // Counting bytes as well as records bounds what a stage holds (the
        // records, what they decode to, their outputs until acknowledged)
        // when it is sent large records: 1,000 of 20 KiB held the enricher
        // at over 500 MiB in the chaos suite's hostile flood.
        while batch.len() < self.options.max_batch && bytes < self.options.max_batch_bytes {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => {
                    // Revocations seen in this recv came before `m`.
                    self.drop_revoked(&mut batch);
                    bytes += self.take(m, &mut batch);
                }
                Ok(Err(e)) => {
                    self.consumer_error(&e);
                    break;
                }
                Err(_) => break,
            }
        }
        self.drop_revoked(&mut batch);
        Some(batch)
    }

    /// Adds a consumed record to `batch`: copied out of librdkafka, or,
    /// one the stage passes over, only its position (see
    /// [`Consumed::PassedOver`]).
    /// The bytes it added to the batch: the record's key and value, or
    /// none for a position.
    fn take(&self, m: BorrowedMessage<'_>, batch: &mut Vec<Consumed>) -> usize {
        if let Some((backlog, group)) = &self.backlog {
            backlog.taken(
                group,
                m.topic(),
                m.partition(),
                record_bytes(m.key_len(), m.payload_len()),
            );
        }
        if !P::PASSES_OVER.is_some_and(|label| is_labelled(&m, label)) {
            let bytes = m.key_len() + m.payload_len();
            batch.push(Consumed::Whole(m.detach()));
            return bytes;
        }
        self.passed_over.inc();
        Consumed::pass_over(batch, m.topic(), m.partition(), m.offset());
        0
    }

    fn consumer_error(&self, e: &RdKafkaError) {
        let stage = self.processor.name();
        let now = Instant::now();
        let log = self
            .consumer_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .should_log(now);
        if let Some(suppressed) = log {
            warn!(stage, error = %e, suppressed, "consumer error (librdkafka retries by itself)");
        }
    }

    /// Forgets the records of partitions revoked since the last look: their
    /// new owner consumes them from the committed offset.
    fn drop_revoked(&self, batch: &mut Vec<Consumed>) {
        let revoked = self.consumer.context().take_revoked();
        if revoked.is_empty() {
            return;
        }
        let before = batch.len();
        batch.retain(|m| {
            !revoked
                .iter()
                .any(|(t, p)| t == m.topic() && *p == m.partition())
        });
        if batch.len() < before {
            debug!(
                stage = self.processor.name(),
                dropped = before - batch.len(),
                "records of revoked partitions dropped"
            );
        }
    }

    /// Processes a batch and hands its outputs to the producer; the returned
    /// future waits until they are produced and yields the last handled
    /// offset per partition. None, or a future yielding None, if shutdown
    /// came before the outputs were produced (nothing of the batch may be
    /// committed then).
    async fn handle_batch<'a>(
        &'a self,
        batch: Vec<Consumed>,
        shutdown: &'a CancellationToken,
    ) -> Option<Producing<'a>> {
        let started = Instant::now();
        self.learn_frontiers(&batch).await;
        // Decode the whole batch first, so the processor can look up what
        // all of it needs at once. One record after another: a decode waits
        // only for a writer schema the codec has not seen (once per schema
        // per process), and a future per record cost more than the decoding.
        // What cannot be decoded is dead-lettered together after.
        let mut records = Vec::with_capacity(batch.len());
        let mut judged = Vec::with_capacity(batch.len());
        let mut undecodable = Vec::new();
        for consumed in batch {
            let (record, outcome) = match consumed {
                Consumed::Whole(m) => match self.decode(m, shutdown).await {
                    Ok(record) => (record, None),
                    Err((record, Undecoded::Interrupted)) => {
                        (record, Some(RecordOutcome::Interrupted))
                    }
                    Err((record, Undecoded::Undecodable(reason))) => {
                        undecodable.push((records.len(), reason));
                        (record, None)
                    }
                },
                Consumed::PassedOver {
                    topic,
                    partition,
                    offset,
                } => passed_over(topic, partition, offset),
            };
            records.push(record);
            judged.push(outcome);
        }
        let letters = join_all(
            undecodable
                .iter()
                .map(|(i, reason)| self.dead_letter(&records[*i].message, reason, 1, shutdown)),
        )
        .await;
        for ((i, _), outcome) in undecodable.into_iter().zip(letters) {
            judged[i] = Some(outcome);
        }
        let decoded_at = started.elapsed();
        let inputs: Vec<(&P::Input, &RecordMeta)> = records
            .iter()
            .filter_map(|r| r.input.as_ref().map(|input| (input, &r.meta)))
            .collect();
        let prefetched = self.processor.prefetch(&inputs).await;
        drop(inputs);
        let fetched_at = started.elapsed();

        let mut outcomes = judged;
        let mut by_partition: BTreeMap<(&str, i32), Vec<usize>> = BTreeMap::new();
        for (i, r) in records.iter().enumerate() {
            if r.input.is_some() {
                by_partition
                    .entry((&r.meta.topic, r.meta.partition))
                    .or_default()
                    .push(i);
            }
        }
        let handled = join_all(
            by_partition
                .into_values()
                .map(|indices| self.handle_partition(&records, indices, &prefetched, shutdown)),
        )
        .await;
        for (i, outcome) in handled.into_iter().flatten() {
            outcomes[i] = Some(outcome);
        }
        // Records after an interrupted one of their key were not reached.
        let mut outcomes: Vec<RecordOutcome> = outcomes
            .into_iter()
            .map(|o| o.unwrap_or(RecordOutcome::Interrupted))
            .collect();

        match self.finish(&prefetched, shutdown).await {
            Finished::Done => {}
            Finished::Interrupted => return None,
            Finished::Failed(reason) => {
                let reason = format!("finishing the batch failed: {reason}");
                // Not the records passed over (no input): `finish` had
                // nothing of theirs to write.
                for (record, outcome) in records.iter().zip(outcomes.iter_mut()) {
                    if record.input.is_some() && matches!(outcome, RecordOutcome::Processed(_)) {
                        *outcome = self
                            .dead_letter(&record.message, &reason, 1, shutdown)
                            .await;
                    }
                }
            }
        }
        let processed_at = started.elapsed();
        let phases = Phases {
            started,
            decode: decoded_at,
            prefetch: fetched_at - decoded_at,
            process: processed_at - fetched_at,
            handed_over: Duration::ZERO,
        };
        if P::WAITS_FOR_ROOM && self.producer.counts_backlog() {
            self.room_for_outputs(&outcomes, shutdown).await?;
        }
        Some(self.produce(records, outcomes, phases, shutdown))
    }

    /// Handles one partition's records (`indices` into `records`, in offset
    /// order): records with the same key (user) in order, different keys
    /// concurrently. Stops a key's records at the first one interrupted.
    async fn handle_partition(
        &self,
        records: &[Record<P::Input>],
        indices: Vec<usize>,
        prefetched: &P::Prefetched,
        shutdown: &CancellationToken,
    ) -> Vec<(usize, RecordOutcome)> {
        let mut lanes: BTreeMap<Option<&[u8]>, Vec<usize>> = BTreeMap::new();
        for i in indices {
            lanes.entry(records[i].message.key()).or_default().push(i);
        }
        let results: Vec<Vec<(usize, RecordOutcome)>> = futures::stream::iter(lanes.into_values())
            .map(|lane| async move {
                let mut done = Vec::with_capacity(lane.len());
                for i in lane {
                    let outcome = self.handle_record(&records[i], prefetched, shutdown).await;
                    let interrupted = matches!(outcome, RecordOutcome::Interrupted);
                    done.push((i, outcome));
                    if interrupted {
                        break;
                    }
                }
                done
            })
            .buffer_unordered(self.options.max_concurrency.max(1))
            .collect()
            .await;
        results.into_iter().flatten().collect()
    }

    /// Asks where the batch's partitions end whose end could not be read
    /// when they were assigned (the end now is a later one: more of the
    /// records count as ones that may repeat, never fewer). One that still
    /// cannot be read stays unknown (all of its records may repeat) and is
    /// asked about again with the next batch.
    async fn learn_frontiers(&self, batch: &[Consumed]) {
        let frontiers = &self.consumer.context().frontiers;
        let unknown = lock(frontiers).unknown(batch.iter().map(|m| (m.topic(), m.partition())));
        if unknown.is_empty() {
            return;
        }
        let stage = self.processor.name();
        let ends = join_all(unknown.into_iter().map(|(topic, partition)| async move {
            let end = self.producer.end_offset(&topic, partition).await;
            (topic, partition, end)
        }))
        .await;
        let mut frontiers = lock(frontiers);
        for (topic, partition, end) in ends {
            match end {
                Ok(end) => {
                    info!(stage, %topic, partition, end, "read where a newly assigned partition ends at last");
                    frontiers.set(topic, partition, end);
                }
                Err(e) => {
                    warn!(stage, %topic, partition, error = %e, "cannot read where a newly assigned partition ends; its records count as ones that may repeat until it can");
                }
            }
        }
    }

    /// Decodes a record; one without its input says why.
    async fn decode(
        &self,
        message: OwnedMessage,
        shutdown: &CancellationToken,
    ) -> Result<Record<P::Input>, (Record<P::Input>, Undecoded)> {
        let stage = self.processor.name();
        let meta = RecordMeta {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            timestamp: message.timestamp().to_millis(),
            handling: lock(&self.consumer.context().frontiers).handling(
                message.topic(),
                message.partition(),
                message.offset(),
                is_marked(&message),
            ),
        };
        let mut backoff = self.backoff();
        let failure = loop {
            let payload = message.payload().unwrap_or_default();
            match self
                .producer
                .codec()
                .decode_async::<P::Input>(payload)
                .await
            {
                Ok(input) => {
                    return Ok(Record {
                        message,
                        meta,
                        input: Some(input),
                    });
                }
                // The schema registry is unreachable: wait for it rather
                // than dead-letter records that are fine.
                Err(e) if e.is_retriable() => {
                    warn!(stage, error = %e, backoff = ?backoff.peek(), "cannot decode yet; retrying");
                    if !backoff.sleep_or_cancel(shutdown).await {
                        break Undecoded::Interrupted;
                    }
                }
                Err(e) => {
                    warn!(stage, topic = %meta.topic, partition = meta.partition, offset = meta.offset, error = %e, "undecodable record; dead-lettering");
                    break Undecoded::Undecodable(e.to_string());
                }
            }
        };
        let record = Record {
            message,
            meta,
            input: None,
        };
        Err((record, failure))
    }

    async fn handle_record(
        &self,
        record: &Record<P::Input>,
        prefetched: &P::Prefetched,
        shutdown: &CancellationToken,
    ) -> RecordOutcome {
        let Some(input) = &record.input else {
            return RecordOutcome::Interrupted;
        };
        let stage = self.processor.name();
        let meta = &record.meta;
        let mut backoff = self.backoff();
        let mut attempts = 1;
        loop {
            let mut out = Emitter {
                producer: &self.producer,
                stage,
                records: Vec::new(),
                handling: meta.handling,
            };
            let Err(e) = self
                .processor
                .process(input, prefetched, meta, &mut out)
                .await
            else {
                return RecordOutcome::Processed(out.into_records());
            };
            match e.kind {
                Failure::NotDue(wait) => {
                    if !sleep_or_cancel(wait.min(self.options.max_backoff), shutdown).await {
                        return RecordOutcome::Interrupted;
                    }
                }
                Failure::Permanent => {
                    count_error(stage, false);
                    warn!(stage, topic = %meta.topic, partition = meta.partition, offset = meta.offset, reason = %e, "record rejected; dead-lettering");
                    return self
                        .dead_letter(&record.message, &e.reason, attempts, shutdown)
                        .await;
                }
                Failure::Retriable => {
                    count_error(stage, true);
                    warn!(stage, topic = %meta.topic, partition = meta.partition, offset = meta.offset, attempt = attempts, reason = %e, backoff = ?backoff.peek(), "retriable failure; retrying");
                    if !backoff.sleep_or_cancel(shutdown).await {
                        return RecordOutcome::Interrupted;
                    }
                    attempts += 1;
                }
            }
        }
    }

    /// Hands the batch's state to the processor's `finish`, retrying while
    /// it fails for a reason that can pass.
    async fn finish(&self, prefetched: &P::Prefetched, shutdown: &CancellationToken) -> Finished {
        let stage = self.processor.name();
        let mut backoff = self.backoff();
        loop {
            match self.processor.finish(prefetched).await {
                Ok(()) => return Finished::Done,
                Err(e) if e.is_retriable() => {
                    count_error(stage, true);
                    warn!(stage, reason = %e, backoff = ?backoff.peek(), "finishing the batch failed; retrying");
                    if !backoff.sleep_or_cancel(shutdown).await {
                        return Finished::Interrupted;
                    }
                }
                Err(e) => {
                    count_error(stage, false);
                    error!(stage, reason = %e, "finishing the batch failed for good; dead-lettering its records");
                    return Finished::Failed(e.reason);
                }
            }
        }
    }

    /// Waits, on the embedded cluster, until every topic the batch writes
    /// has room for its share of the outputs (see [`crate::backlog`]),
    /// holding the stage's partitions meanwhile. None at shutdown: the batch
    /// is consumed again.
    async fn room_for_outputs(
        &self,
        outcomes: &[RecordOutcome],
        shutdown: &CancellationToken,
    ) -> Option<()> {
        let mut adding: BTreeMap<&str, u64> = BTreeMap::new();
        for outcome in outcomes {
            let outputs = match outcome {
                RecordOutcome::Processed(outputs) => outputs.as_slice(),
                RecordOutcome::DeadLettered(letter) => std::slice::from_ref(letter),
                RecordOutcome::Interrupted => &[],
            };
            for o in outputs {
                *adding.entry(o.topic.as_str()).or_default() +=
                    record_bytes(o.key.len(), o.payload.len());
            }
        }
        let stage = self.processor.name();
        for (topic, bytes) in adding {
            let waited = self
                .producer
                .room_for(topic, bytes, None, shutdown, |full| {
                    BacklogWait {
                        writer: stage,
                        topic,
                    }
                    .emit();
                    info!(stage, reason = %full, "holding the batch's outputs until the embedded Kafka's readers catch up");
                })
                .await;
            if waited.is_err() {
                return None;
            }
        }
        Some(())
    }

    /// Hands every record's outputs to the producer now, in order, and
    /// returns the future that waits for them, retrying those that failed
    /// for a reason that can pass. A record with an output that can never be
    /// produced is dead-lettered instead (its other outputs may have gone
    /// out); a dead letter is retried whatever its failure, since giving up
    /// on it would lose the record. The future yields the offsets to store,
    /// or None if shutdown came first.
    fn produce<'a>(
        &'a self,
        records: Vec<Record<P::Input>>,
        outcomes: Vec<RecordOutcome>,
        mut phases: Phases,
        shutdown: &'a CancellationToken,
    ) -> Producing<'a> {
        let mut fates = Vec::with_capacity(outcomes.len());
        let mut pending: Vec<OutRecord> = Vec::new();
        let mut inputs: Vec<usize> = Vec::new();
        for (i, outcome) in outcomes.into_iter().enumerate() {
            match outcome {
                RecordOutcome::Processed(outputs) => {
                    fates.push(Fate::Processed);
                    inputs.extend(std::iter::repeat_n(i, outputs.len()));
                    pending.extend(outputs);
                }
                RecordOutcome::DeadLettered(letter) => {
                    fates.push(Fate::DeadLettered);
                    inputs.push(i);
                    pending.push(letter);
                }
                RecordOutcome::Interrupted => fates.push(Fate::Interrupted),
            }
        }
        let handover = self.producer.enqueue_all(&pending);
        phases.handed_over = phases.started.elapsed();
        let outputs = BatchOutputs {
            records,
            fates,
            pending,
            inputs,
            phases,
        };
        self.outputs_produced(outputs, handover, shutdown).boxed()
    }

    /// Waits for a batch's outputs handed to the producer (`handover`),
    /// then retries what failed; see [`Self::produce`].
    async fn outputs_produced(
        &self,
        outputs: BatchOutputs<P::Input>,
        handover: Handover,
        shutdown: &CancellationToken,
    ) -> Option<Offsets> {
        let stage = self.processor.name();
        let BatchOutputs {
            records,
            mut fates,
            mut pending,
            mut inputs,
            phases,
        } = outputs;
        let mut handover = Some(handover);
        let mut produced: BTreeMap<String, u64> = BTreeMap::new();
        let mut backoff = self.backoff();
        while !pending.is_empty() {
            let handover = handover
                .take()
                .unwrap_or_else(|| self.producer.enqueue_all(&pending));
            let results = self.producer.acknowledged(handover, &pending).await;
            let mut retry = Vec::new();
            let mut retry_inputs = Vec::new();
            let mut poisoned: BTreeMap<usize, String> = BTreeMap::new();
            let mut last_error = None;
            for ((i, mut record), result) in inputs.into_iter().zip(pending).zip(results) {
                match result {
                    Ok(()) => *produced.entry(record.topic).or_default() += 1,
                    Err(e) if e.is_retriable() || fates[i] == Fate::DeadLettered => {
                        if !e.is_retriable() {
                            error!(stage, error = %e, "a dead letter cannot be produced; holding its record");
                        }
                        // A produce that timed out may have landed all the
                        // same.
                        record.handling = Handling::MaybeRepeat;
                        retry.push(record);
                        retry_inputs.push(i);
                        last_error = Some(e);
                    }
                    Err(e) => {
                        poisoned.entry(i).or_insert_with(|| e.to_string());
                    }
                }
            }
            let (mut kept, mut kept_inputs) = (Vec::new(), Vec::new());
            for (record, i) in retry.into_iter().zip(retry_inputs) {
                if !poisoned.contains_key(&i) {
                    kept.push(record);
                    kept_inputs.push(i);
                }
            }
            for (i, reason) in poisoned {
                let meta = &records[i].meta;
                count_error(stage, false);
                warn!(stage, topic = %meta.topic, partition = meta.partition, offset = meta.offset, %reason, "an output can never be produced; dead-lettering its input");
                match self
                    .dead_letter(&records[i].message, &reason, 1, shutdown)
                    .await
                {
                    RecordOutcome::DeadLettered(letter) => {
                        fates[i] = Fate::DeadLettered;
                        kept.push(letter);
                        kept_inputs.push(i);
                    }
                    _ => return None,
                }
            }
            pending = kept;
            inputs = kept_inputs;
            if let Some(e) = last_error {
                count_error(stage, true);
                warn!(stage, failed = pending.len(), error = %e, backoff = ?backoff.peek(), "produce failed; retrying");
                if !backoff.sleep_or_cancel(shutdown).await {
                    warn!(
                        stage,
                        "stopping before the batch's outputs were produced; it will be consumed again"
                    );
                    return None;
                }
            }
        }
        for (topic, count) in produced {
            StageOutputs {
                stage,
                topic: &topic,
                count,
            }
            .emit();
        }
        for (fate, label) in [
            (Fate::Processed, RecordFate::Processed),
            (Fate::DeadLettered, RecordFate::DeadLettered),
        ] {
            StageRecords {
                stage,
                fate: label,
                count: fates.iter().filter(|f| **f == fate).count() as u64,
            }
            .emit();
        }
        let elapsed = phases.started.elapsed();
        StageBatch { stage, elapsed }.emit();
        debug!(
            stage,
            size = records.len(),
            decode_ms = phases.decode.as_millis() as u64,
            prefetch_ms = phases.prefetch.as_millis() as u64,
            process_ms = phases.process.as_millis() as u64,
            produce_ms = (elapsed - phases.handed_over).as_millis() as u64,
            elapsed_ms = elapsed.as_millis() as u64,
            "batch phases"
        );
        Some(handled_offsets(&records, &fates))
    }

    /// The dead letter for `message`, retried (holding the record) in the
    /// one case it cannot be encoded: a build whose catalog lacks DeadLetter.
    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        reason: &str,
        attempts: i32,
        shutdown: &CancellationToken,
    ) -> RecordOutcome {
        let stage = self.processor.name();
        let mut backoff = self.backoff();
        loop {
            let letter = DeadLetter {
                source_topic: message.topic().to_owned(),
                source_partition: message.partition(),
                source_offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().unwrap_or_default().to_vec(),
                stage: stage.to_owned(),
                reason: reason.to_owned(),
                retriable: false,
                attempts,
                failed_at: now_millis(),
            };
            match encode_dead_letter(&self.producer, &self.dead_letter_topic, letter) {
                Ok(out) => return RecordOutcome::DeadLettered(out),
                Err(e) => {
                    count_error(stage, true);
                    error!(stage, error = %e, "cannot encode a dead letter; holding the record");
                    if !backoff.sleep_or_cancel(shutdown).await {
                        return RecordOutcome::Interrupted;
                    }
                }
            }
        }
    }
}

/// The record that stands for a run of passed-over records: handled, with
/// nothing to produce. Its message is only the position (nothing reads the
/// payload, key or headers of a record without input).
fn passed_over<I>(
    topic: String,
    partition: i32,
    offset: i64,
) -> (Record<I>, Option<RecordOutcome>) {
    let meta = RecordMeta {
        topic: topic.clone(),
        partition,
        offset,
        key: None,
        timestamp: None,
        handling: Handling::First,
    };
    let message = OwnedMessage::new(
        None,
        None,
        topic,
        Timestamp::NotAvailable,
        partition,
        offset,
        None,
    );
    let record = Record {
        message,
        meta,
        input: None,
    };
    (record, Some(RecordOutcome::Processed(Vec::new())))
}

/// The last offset per partition up to which every record was handled
/// (processed or dead-lettered): an interrupted record holds back its
/// partition's offset, whatever came after it.
fn handled_offsets<I>(records: &[Record<I>], fates: &[Fate]) -> Vec<((String, i32), i64)> {
    let mut by_partition: BTreeMap<(&str, i32), (Option<i64>, bool)> = BTreeMap::new();
    // Records are in offset order per partition, as consumed.
    for (record, fate) in records.iter().zip(fates) {
        let entry = by_partition
            .entry((&record.meta.topic, record.meta.partition))
            .or_insert((None, false));
        let (last, stopped) = entry;
        if *stopped {
            continue;
        }
        if *fate == Fate::Interrupted {
            *stopped = true;
        } else {
            *last = Some(record.meta.offset);
        }
    }
    by_partition
        .into_iter()
        .filter_map(|((topic, partition), (last, _))| {
            last.map(|offset| ((topic.to_owned(), partition), offset))
        })
        .collect()
}

fn count_error(stage: &str, retriable: bool) {
    StageError { stage, retriable }.emit();
}

/// How long a newly assigned partition's end is asked for again while its
/// topic is settling, in the rebalance callback.
const FRONTIER_PATIENCE: Duration = Duration::from_secs(3);

/// The longest reason a dead letter carries; the rest is cut.
const MAX_REASON_BYTES: usize = 4_096;
/// The longest key a dead letter keeps as its Kafka key.
const MAX_KEY_BYTES: usize = 1_024;

/// Encodes `letter` for `topic` so that it always fits under the producer's
/// limit: a dead letter must never fail for its size, or the record it
/// stands for would be lost. The reason and the key are capped; a payload too
/// large to fit is cut to a prefix, and the reason says so.
fn encode_dead_letter(
    producer: &AvroProducer,
    topic: &str,
    mut letter: DeadLetter,
) -> Result<OutRecord, KafkaError> {
    let limit = producer.max_record_bytes();
    truncate_utf8(&mut letter.reason, MAX_REASON_BYTES.min(limit / 4));
    let mut key = letter
        .key
        .as_deref()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    truncate_utf8(&mut key, MAX_KEY_BYTES.min(limit / 8));
    let out = producer.encode(topic, &key, &letter)?;
    if out.size() <= limit {
        return Ok(out);
    }
    // Too large: cut what can be cut, leaving room for the note and for
    // Avro's length prefixes.
    let original = letter.payload.len();
    let excess = out.size() - limit;
    let key_field = letter.key.as_ref().map_or(0, Vec::len);
    let kept_key = key_field.min(MAX_KEY_BYTES.min(limit / 8));
    let spare = key_field - kept_key;
    let kept = original.saturating_sub(excess.saturating_sub(spare) + 256);
    if let Some(k) = &mut letter.key {
        k.truncate(kept_key);
    }
    letter.payload.truncate(kept);
    letter.reason.push_str(&format!(
        " (dead letter cut to fit kafka.max_message_bytes: payload {kept} of {original} bytes{})",
        if spare > 0 {
            format!(", key {kept_key} of {key_field} bytes")
        } else {
            String::new()
        }
    ));
    producer.encode(topic, &key, &letter)
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// A poisoned lock's data is still whole here: every holder only inserts
/// or removes entries.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use tidings_schemas::AvroCodec;

    use super::*;

    /// Runs of passed-over records merge only with the batch's last entry
    /// of the same partition; a batch whose record before a run was
    /// interrupted commits nothing past that record.
    #[test]
    fn passed_over_runs_never_reach_over_a_record() {
        let whole = |partition: i32, offset: i64| {
            Consumed::Whole(OwnedMessage::new(
                None,
                None,
                "t".into(),
                Timestamp::NotAvailable,
                partition,
                offset,
                None,
            ))
        };
        let mut batch = Vec::new();
        Consumed::pass_over(&mut batch, "t", 0, 1);
        Consumed::pass_over(&mut batch, "t", 0, 2);
        batch.push(whole(0, 3));
        Consumed::pass_over(&mut batch, "t", 0, 4);
        Consumed::pass_over(&mut batch, "t", 1, 7);
        Consumed::pass_over(&mut batch, "t", 0, 5);
        Consumed::pass_over(&mut batch, "u", 0, 9);
        let positions: Vec<(&str, i32, Option<i64>)> = batch
            .iter()
            .map(|c| match c {
                Consumed::Whole(m) => (m.topic(), m.partition(), None),
                Consumed::PassedOver {
                    topic,
                    partition,
                    offset,
                } => (topic.as_str(), *partition, Some(*offset)),
            })
            .collect();
        assert_eq!(
            positions,
            [
                ("t", 0, Some(2)),
                ("t", 0, None),
                ("t", 0, Some(4)),
                ("t", 1, Some(7)),
                ("t", 0, Some(5)),
                ("u", 0, Some(9)),
            ]
        );

        // As the batch's records: the whole one (offset 3) interrupted.
        let records: Vec<Record<()>> = batch
            .into_iter()
            .map(|c| match c {
                Consumed::Whole(m) => Record {
                    meta: RecordMeta {
                        topic: m.topic().to_owned(),
                        partition: m.partition(),
                        offset: m.offset(),
                        key: None,
                        timestamp: None,
                        handling: Handling::First,
                    },
                    message: m,
                    input: Some(()),
                },
                Consumed::PassedOver {
                    topic,
                    partition,
                    offset,
                } => passed_over::<()>(topic, partition, offset).0,
            })
            .collect();
        let fates = [
            Fate::Processed,
            Fate::Interrupted,
            Fate::Processed,
            Fate::Processed,
            Fate::Processed,
            Fate::Processed,
        ];
        assert_eq!(
            handled_offsets(&records, &fates),
            [
                (("t".to_owned(), 0), 2),
                (("t".to_owned(), 1), 7),
                (("u".to_owned(), 0), 9),
            ]
        );
    }

    /// A burst of consumer errors logs one line per window, then says how
    /// many it did not log.
    #[test]
    fn consumer_errors_are_logged_once_per_window() {
        let mut log = ErrorLog {
            last: None,
            suppressed: 0,
        };
        let t0 = Instant::now();
        assert_eq!(log.should_log(t0), Some(0));
        for i in 1..=100 {
            assert_eq!(log.should_log(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(log.should_log(t0 + ErrorLog::EVERY), Some(100));
        assert_eq!(log.should_log(t0 + ErrorLog::EVERY), None);
    }

    /// A dead letter fits however large the record, its key and the reason.
    #[test]
    fn dead_letters_are_cut_to_fit() {
        let cluster = KafkaCluster::start_embedded().expect("embedded brokers");
        let config = KafkaConfig {
            max_message_bytes: 20_000,
            ..KafkaConfig::default()
        };
        let producer = AvroProducer::new(&cluster, &config, AvroCodec::local()).expect("producer");
        let limit = producer.max_record_bytes();
        for (key, payload, reason) in [
            (10, 50_000, 10),
            (30_000, 10, 10),
            (30_000, 50_000, 100_000),
            (10, 10, 10),
        ] {
            let letter = DeadLetter {
                source_topic: "t".into(),
                source_partition: 0,
                source_offset: 7,
                key: Some(vec![b'k'; key]),
                payload: vec![7; payload],
                stage: "s".into(),
                reason: "r".repeat(reason),
                retriable: false,
                attempts: 1,
                failed_at: 0,
            };
            let out = encode_dead_letter(&producer, "dead", letter).expect("encoded");
            assert!(
                out.size() <= limit,
                "{key}/{payload}/{reason}: {}",
                out.size()
            );
            let back: DeadLetter = AvroCodec::local().decode(&out.payload).expect("decoded");
            assert!(vec![7; payload].starts_with(&back.payload));
            let cut =
                back.payload.len() < payload || back.key.as_ref().is_some_and(|k| k.len() < key);
            assert_eq!(
                cut,
                back.reason.contains("dead letter cut to fit"),
                "{}",
                back.reason
            );
        }
    }
}
