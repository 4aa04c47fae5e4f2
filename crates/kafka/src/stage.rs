//! The consume-process-produce loop every processor runs in.
//!
//! A stage reads a batch of records, hands each to its [`Processor`] (records
//! of one partition in order, partitions concurrently), produces everything
//! the processor emitted and waits for the brokers' acks, and only then
//! stores the input offsets for the next commit (Vector's at-least-once
//! scheme: `enable.auto.offset.store=false`, store after downstream acked).
//! A crash between produce and commit replays the batch; stages are written
//! to be idempotent under replay (dedupe ledgers keyed by event and delivery
//! ids), which also holds on the embedded mock cluster, where transactional
//! offset commits are not reliable.
//!
//! Failures: a record that cannot be decoded, or that its processor rejects
//! permanently, goes to the dead-letter topic with the reason; a retriable
//! failure (the store or a broker briefly unavailable) is retried in place
//! with backoff, holding back its partition but losing nothing.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use futures::{StreamExt, future::join_all};
use rdkafka::{
    ClientContext, Message, Offset, Statistics, TopicPartitionList,
    consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer},
    message::OwnedMessage,
};
use tidings_config::KafkaConfig;
use tidings_schemas::{AvroRecord, records::DeadLetter};
use tidings_telemetry::metrics;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::{
    KafkaCluster, KafkaError,
    producer::{AvroProducer, OutRecord},
};

/// Why a processor could not handle a record.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct ProcessError {
    pub reason: String,
    /// Whether trying the same record again later can succeed.
    pub retriable: bool,
    /// Not a failure: the record is not due before this long (retry tiers).
    pub not_due_for: Option<Duration>,
}

impl ProcessError {
    /// The record itself is at fault; it goes to the dead-letter topic.
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            retriable: false,
            not_due_for: None,
        }
    }

    /// The record must wait; the runner sleeps (waking for shutdown) and
    /// hands it over again, holding back its partition meanwhile.
    pub fn not_due(wait: Duration) -> Self {
        Self {
            reason: format!("not due for {wait:?}"),
            retriable: true,
            not_due_for: Some(wait),
        }
    }

    /// A dependency failed; the record is retried in place.
    pub fn retriable(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            retriable: true,
            not_due_for: None,
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
}

/// Collects the records a processor emits for one input.
pub struct Emitter<'a> {
    producer: &'a AvroProducer,
    stage: &'static str,
    records: Vec<OutRecord>,
}

impl Emitter<'_> {
    /// Queues `record` for `topic`; it is produced with the rest of the batch
    /// before the input's offset is committed.
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
    /// `()` for stages that look nothing up.
    type Prefetched: Send + Sync;

    /// The stage's name: consumer group suffix, metric label, dead-letter
    /// `stage` field.
    fn name(&self) -> &'static str;

    /// Looks up in a few store calls what `process` would otherwise look up
    /// record by record: one round trip per batch instead of one per record.
    /// It is only a head start: `process` must look up itself whatever is
    /// missing, so a failed prefetch costs speed, never correctness.
    async fn prefetch(&self, batch: &[(&Self::Input, &RecordMeta)]) -> Self::Prefetched;

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
    /// senders' ledger marks and status log). A failure is retried in place
    /// (with backoff) if retriable; otherwise the stage stops, and the batch
    /// is consumed again after a restart.
    async fn finish(&self, prefetched: &Self::Prefetched) -> Result<(), ProcessError>;
}

/// Batching and retry knobs of a stage.
#[derive(Debug, Clone)]
pub struct StageOptions {
    pub max_batch: usize,
    /// Records (of different keys) processed at once.
    pub max_concurrency: usize,
    /// How long a member may go between polls before the group evicts it;
    /// retry stages hold records until due, so they need longer.
    pub max_poll_interval: Duration,
    /// How long to wait for more records after the first of a batch.
    pub batch_window: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How long a stopping stage waits for its final commit and for leaving
    /// its group before it gives up on them (the group's session timeout
    /// then frees its partitions).
    pub close_timeout: Duration,
}

impl Default for StageOptions {
    fn default() -> Self {
        Self {
            max_batch: 1_000,
            max_concurrency: 256,
            max_poll_interval: Duration::from_secs(300),
            batch_window: Duration::from_millis(5),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            close_timeout: Duration::from_secs(15),
        }
    }
}

/// Turns librdkafka's periodic statistics into the consumer-lag gauge: the
/// number of records waiting per partition is the queue-depth signal that
/// says when a stage needs more members.
struct LagReporter {
    stage: &'static str,
}

impl ClientContext for LagReporter {
    fn stats(&self, statistics: Statistics) {
        let gauge = &metrics().consumer_lag;
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is the internal unassigned partition, or unknown lag.
                if *partition >= 0 && p.consumer_lag >= 0 {
                    gauge
                        .with_label_values(&[self.stage, topic, &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for LagReporter {}

/// Commits `offsets` and closes `consumer` on a thread of its own, waiting at
/// most `limit`. Both block inside librdkafka with no bound of their own: a
/// sync commit waits for the coordinator, and rdkafka's `Drop` polls until
/// the consumer reports closed (fede1024/rust-rdkafka#509). A stage stopped
/// while its group was still joining once hung a whole test run there; past
/// the limit the close is left to finish (or not) on its thread and the
/// broker expires the membership after `session.timeout.ms`.
async fn leave_group(
    consumer: StreamConsumer<LagReporter>,
    offsets: TopicPartitionList,
    stage: &'static str,
    limit: Duration,
) {
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    let close = move || {
        if offsets.count() > 0
            && let Err(e) = consumer.commit(&offsets, CommitMode::Sync)
        {
            warn!(stage, error = %e, "final offset commit failed; the last records will be replayed");
        }
        consumer.unsubscribe();
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
    if tokio::time::timeout(limit, closed_rx).await.is_err() {
        warn!(
            stage,
            limit_s = limit.as_secs(),
            "the consumer did not leave its group in time; its partitions are freed when its session expires"
        );
    }
}

/// A running stage: a consumer group member with its processor.
pub struct Stage<P: Processor> {
    processor: Arc<P>,
    consumer: StreamConsumer<LagReporter>,
    producer: AvroProducer,
    dead_letter_topic: String,
    options: StageOptions,
}

/// A consumed record, decoded or already judged.
struct Item<I> {
    message: OwnedMessage,
    meta: RecordMeta,
    input: Result<I, RecordOutcome>,
}

enum RecordOutcome {
    Processed(Vec<OutRecord>),
    DeadLettered(OutRecord),
    /// Shutdown came first; the record will be consumed again.
    Interrupted,
}

struct PartitionOutcome {
    topic: String,
    partition: i32,
    outputs: Vec<OutRecord>,
    /// The offset of the last record fully handled, if any.
    last_done: Option<i64>,
    dead_lettered: u64,
    processed: u64,
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
        let mut c = cluster.client_config(config);
        c.set("group.id", &group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("session.timeout.ms", "10000")
            .set("enable.partition.eof", "false")
            // Notifications are soft real time: when a partition is idle,
            // answer fetches quickly rather than wait for a fuller batch.
            .set("fetch.wait.max.ms", "20")
            .set("statistics.interval.ms", "10000")
            .set(
                "max.poll.interval.ms",
                options.max_poll_interval.as_millis().to_string(),
            );
        let consumer: StreamConsumer<LagReporter> = c
            .create_with_context(LagReporter {
                stage: processor.name(),
            })
            .map_err(|e| KafkaError::client("consumer", e))?;
        let topics: Vec<&str> = input_topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| KafkaError::client("subscription", e))?;
        info!(stage = processor.name(), %group, topics = ?input_topics, "stage subscribed");
        Ok(Self {
            processor: Arc::new(processor),
            consumer,
            producer,
            dead_letter_topic,
            options,
        })
    }

    /// Runs until `shutdown` is cancelled, then commits what was handled and
    /// leaves the group.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), KafkaError> {
        let stage = self.processor.name();
        let mut committed: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let result = self.poll_loop(&shutdown, &mut committed).await;
        let mut final_offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in &committed {
            let _ =
                final_offsets.add_partition_offset(topic, *partition, Offset::Offset(offset + 1));
        }
        leave_group(
            self.consumer,
            final_offsets,
            stage,
            self.options.close_timeout,
        )
        .await;
        info!(stage, "stage stopped");
        result
    }

    async fn poll_loop(
        &self,
        shutdown: &CancellationToken,
        committed: &mut BTreeMap<(String, i32), i64>,
    ) -> Result<(), KafkaError> {
        let stage = self.processor.name();
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                m = self.consumer.recv() => m,
            };
            let first = match first {
                Ok(m) => m.detach(),
                Err(e) => {
                    warn!(stage, error = %e, "consumer error");
                    tokio::time::sleep(self.options.min_backoff).await;
                    continue;
                }
            };
            let started = Instant::now();
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + self.options.batch_window;
            while batch.len() < self.options.max_batch {
                match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                    Ok(Ok(m)) => batch.push(m.detach()),
                    Ok(Err(e)) => {
                        warn!(stage, error = %e, "consumer error");
                        break;
                    }
                    Err(_) => break,
                }
            }
            let size = batch.len();
            let done = self.handle_batch(batch, shutdown).await?;
            for (tp, offset) in done {
                let _ = self.consumer.store_offset(&tp.0, tp.1, offset);
                committed.insert(tp, offset);
            }
            metrics()
                .stage_batch_seconds
                .with_label_values(&[stage])
                .observe(started.elapsed().as_secs_f64());
            debug!(
                stage,
                size,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "batch done"
            );
        }
    }

    /// Processes a batch, produces its outputs and returns the last handled
    /// offset per partition.
    async fn handle_batch(
        &self,
        batch: Vec<OwnedMessage>,
        shutdown: &CancellationToken,
    ) -> Result<Vec<((String, i32), i64)>, KafkaError> {
        let started = Instant::now();
        // Decode the whole batch first, so the processor can look up what
        // all of it needs at once.
        let items: Vec<Item<P::Input>> =
            join_all(batch.into_iter().map(|m| self.decode(m, shutdown))).await;
        let decoded = started.elapsed();
        let inputs: Vec<(&P::Input, &RecordMeta)> = items
            .iter()
            .filter_map(|item| item.input.as_ref().ok().map(|input| (input, &item.meta)))
            .collect();
        let prefetched = self.processor.prefetch(&inputs).await;
        drop(inputs);
        let fetched = started.elapsed();
        let mut by_partition: BTreeMap<(String, i32), Vec<Item<P::Input>>> = BTreeMap::new();
        for item in items {
            by_partition
                .entry((item.meta.topic.clone(), item.meta.partition))
                .or_default()
                .push(item);
        }
        let outcomes = join_all(
            by_partition
                .into_values()
                .map(|items| self.handle_partition(items, &prefetched, shutdown)),
        )
        .await;
        let stage = self.processor.name();
        let m = metrics();
        let mut done = Vec::new();
        let mut outputs: Vec<OutRecord> = Vec::new();
        let mut per_topic: BTreeMap<&str, u64> = BTreeMap::new();
        for o in &outcomes {
            for r in &o.outputs {
                *per_topic.entry(&r.topic).or_default() += 1;
            }
        }
        for (topic, n) in per_topic {
            m.stage_outputs.with_label_values(&[stage, topic]).inc_by(n);
        }
        for o in outcomes {
            m.stage_records
                .with_label_values(&[stage, "processed"])
                .inc_by(o.processed);
            m.stage_records
                .with_label_values(&[stage, "dead_lettered"])
                .inc_by(o.dead_lettered);
            if let Some(offset) = o.last_done {
                done.push(((o.topic, o.partition), offset));
            }
            outputs.extend(o.outputs);
        }
        self.finish(&prefetched, shutdown).await?;
        let processed = started.elapsed();
        self.produce_all(outputs, shutdown).await?;
        debug!(
            stage,
            decode_ms = decoded.as_millis() as u64,
            prefetch_ms = (fetched - decoded).as_millis() as u64,
            process_ms = (processed - fetched).as_millis() as u64,
            produce_ms = (started.elapsed() - processed).as_millis() as u64,
            "batch phases"
        );
        Ok(done)
    }

    /// Handles one partition's records: records with the same key (user) in
    /// order, different keys concurrently. The partition's offset advances
    /// to the end of the longest run of handled records.
    async fn handle_partition(
        &self,
        items: Vec<Item<P::Input>>,
        prefetched: &P::Prefetched,
        shutdown: &CancellationToken,
    ) -> PartitionOutcome {
        let mut outcome = PartitionOutcome {
            topic: items
                .first()
                .map(|i| i.meta.topic.clone())
                .unwrap_or_default(),
            partition: items.first().map(|i| i.meta.partition).unwrap_or_default(),
            outputs: Vec::new(),
            last_done: None,
            dead_lettered: 0,
            processed: 0,
        };
        let offsets: Vec<i64> = items.iter().map(|i| i.meta.offset).collect();
        let mut lanes: BTreeMap<Option<Vec<u8>>, Vec<Item<P::Input>>> = BTreeMap::new();
        for item in items {
            lanes
                .entry(item.message.key().map(<[u8]>::to_vec))
                .or_default()
                .push(item);
        }
        let results: Vec<Vec<(i64, RecordOutcome)>> = futures::stream::iter(lanes.into_values())
            .map(|lane| async move {
                let mut done = Vec::with_capacity(lane.len());
                for item in lane {
                    let offset = item.meta.offset;
                    let result = match item.input {
                        Err(outcome) => outcome,
                        Ok(input) => {
                            self.handle_record(
                                &item.message,
                                &item.meta,
                                &input,
                                prefetched,
                                shutdown,
                            )
                            .await
                        }
                    };
                    let interrupted = matches!(result, RecordOutcome::Interrupted);
                    done.push((offset, result));
                    if interrupted {
                        break;
                    }
                }
                done
            })
            .buffer_unordered(self.options.max_concurrency)
            .collect()
            .await;
        let mut handled = std::collections::HashSet::new();
        for (offset, result) in results.into_iter().flatten() {
            match result {
                RecordOutcome::Processed(outputs) => {
                    outcome.processed += 1;
                    outcome.outputs.extend(outputs);
                    handled.insert(offset);
                }
                RecordOutcome::DeadLettered(dead) => {
                    outcome.dead_lettered += 1;
                    outcome.outputs.push(dead);
                    handled.insert(offset);
                }
                RecordOutcome::Interrupted => {}
            }
        }
        outcome.last_done = offsets
            .iter()
            .take_while(|o| handled.contains(o))
            .last()
            .copied();
        outcome
    }

    /// Decodes a record; one that cannot be decoded is dead-lettered.
    async fn decode(&self, message: OwnedMessage, shutdown: &CancellationToken) -> Item<P::Input> {
        let stage = self.processor.name();
        let meta = RecordMeta {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            timestamp: message.timestamp().to_millis(),
        };
        let payload = message.payload().unwrap_or_default();
        let mut backoff = self.options.min_backoff;
        let decoded = loop {
            match self
                .producer
                .codec()
                .decode_async::<P::Input>(payload)
                .await
            {
                // The schema registry is unreachable: wait for it rather
                // than dead-letter records that are fine.
                Err(e) if e.is_retriable() => {
                    warn!(stage, error = %e, ?backoff, "cannot decode yet; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break Err(RecordOutcome::Interrupted),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.options.max_backoff);
                }
                Ok(input) => break Ok(input),
                Err(e) => {
                    warn!(stage, topic = %meta.topic, partition = meta.partition, offset = meta.offset, error = %e, "undecodable record; dead-lettering");
                    break Err(RecordOutcome::DeadLettered(self.dead_letter(
                        &message,
                        &e.to_string(),
                        false,
                        1,
                    )));
                }
            }
        };
        Item {
            message,
            meta,
            input: decoded,
        }
    }

    async fn handle_record(
        &self,
        message: &OwnedMessage,
        meta: &RecordMeta,
        input: &P::Input,
        prefetched: &P::Prefetched,
        shutdown: &CancellationToken,
    ) -> RecordOutcome {
        let stage = self.processor.name();
        let mut backoff = self.options.min_backoff;
        let mut attempts = 1;
        loop {
            let mut out = Emitter {
                producer: &self.producer,
                stage,
                records: Vec::new(),
            };
            match self
                .processor
                .process(input, prefetched, meta, &mut out)
                .await
            {
                Ok(()) => return RecordOutcome::Processed(out.records),
                Err(ProcessError {
                    not_due_for: Some(wait),
                    ..
                }) => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return RecordOutcome::Interrupted,
                        _ = tokio::time::sleep(wait.min(self.options.max_backoff)) => {}
                    }
                }
                Err(e) if !e.retriable => {
                    metrics()
                        .stage_errors
                        .with_label_values(&[stage, "false"])
                        .inc();
                    warn!(stage, offset = meta.offset, reason = %e, "record rejected; dead-lettering");
                    return RecordOutcome::DeadLettered(
                        self.dead_letter(message, &e.reason, false, attempts),
                    );
                }
                Err(e) => {
                    metrics()
                        .stage_errors
                        .with_label_values(&[stage, "true"])
                        .inc();
                    warn!(stage, offset = meta.offset, attempt = attempts, reason = %e, ?backoff, "retriable failure; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return RecordOutcome::Interrupted,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.options.max_backoff);
                    attempts += 1;
                }
            }
        }
    }

    /// Hands the batch's state to the processor's `finish`, retrying while
    /// it fails for a reason that can pass.
    async fn finish(
        &self,
        prefetched: &P::Prefetched,
        shutdown: &CancellationToken,
    ) -> Result<(), KafkaError> {
        let stage = self.processor.name();
        let mut backoff = self.options.min_backoff;
        loop {
            match self.processor.finish(prefetched).await {
                Ok(()) => return Ok(()),
                Err(e) if e.retriable => {
                    metrics()
                        .stage_errors
                        .with_label_values(&[stage, "true"])
                        .inc();
                    warn!(stage, reason = %e, ?backoff, "finishing the batch failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            return Err(KafkaError::Finish { stage, reason: e.reason });
                        }
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.options.max_backoff);
                }
                Err(e) => {
                    error!(stage, reason = %e, "finishing the batch failed; stopping the stage");
                    return Err(KafkaError::Finish {
                        stage,
                        reason: e.reason,
                    });
                }
            }
        }
    }

    /// Produces every output, retrying only those that failed for a reason
    /// that can pass.
    async fn produce_all(
        &self,
        mut pending: Vec<OutRecord>,
        shutdown: &CancellationToken,
    ) -> Result<(), KafkaError> {
        let stage = self.processor.name();
        let mut backoff = self.options.min_backoff;
        while !pending.is_empty() {
            let results = join_all(pending.iter().map(|r| self.producer.send_raw(r))).await;
            let mut failed = Vec::new();
            let mut last_error = None;
            for (record, result) in pending.into_iter().zip(results) {
                if let Err(e) = result {
                    if !e.is_retriable() {
                        return Err(e);
                    }
                    failed.push(record);
                    last_error = Some(e);
                }
            }
            pending = failed;
            if let Some(e) = last_error {
                warn!(stage, failed = pending.len(), error = %e, "produce failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(e),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(self.options.max_backoff);
            }
        }
        Ok(())
    }

    fn dead_letter(
        &self,
        message: &OwnedMessage,
        reason: &str,
        retriable: bool,
        attempts: i32,
    ) -> OutRecord {
        let record = DeadLetter {
            source_topic: message.topic().to_owned(),
            source_partition: message.partition(),
            source_offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().unwrap_or_default().to_vec(),
            stage: self.processor.name().to_owned(),
            reason: reason.to_owned(),
            retriable,
            attempts,
            failed_at: now_millis(),
        };
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        match self.producer.encode(&self.dead_letter_topic, &key, &record) {
            Ok(out) => out,
            // DeadLetter is in the catalog and its fields are plain; encoding
            // it cannot fail unless the build is broken.
            Err(e) => panic!("cannot encode a dead letter: {e}"),
        }
    }
}

pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
