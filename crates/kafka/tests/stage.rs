//! The stage runner on the embedded brokers (librdkafka's mock cluster, the
//! same client code path as a real cluster): what `prefetch` sees, that
//! `process` gets what it prefetched, that a retriable `finish` failure is
//! retried and outputs are produced only after `finish` succeeded, and that
//! an undecodable record is dead-lettered without holding back the rest;
//! then that no input stops a stage and nothing handled is lost (oversized
//! outputs, refused produces, `not_due`, shutdown mid-batch, per-key order, a
//! permanent `finish` failure, a rebalance between two members), and that
//! each member publishes where it stands in its group (readiness).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer},
};
use tidings_config::KafkaConfig;
use tidings_kafka::{
    Assignment, AvroProducer, Emitter, Handling, KafkaCluster, OutRecord, ProcessError, Processor,
    RecordMeta, Stage, StageAssignments, StageOptions, is_marked, now_millis,
};
use tidings_schemas::{
    AvroCodec, Label, UNCOUNTED,
    records::{DeadLetter, TrackingEvent, TrackingKind},
};
use tokio_util::sync::CancellationToken;

mod common;

const INPUT: &str = "t.in";
const OUTPUT: &str = "t.out";
const DEAD_LETTERS: &str = "t.deadletter";
const RECORDS: usize = 60;
const WAIT: Duration = Duration::from_secs(30);

fn event(i: usize) -> TrackingEvent {
    TrackingEvent {
        event_id: format!("event-{i}"),
        notification_id: format!("n-{i}"),
        user_id: format!("user-{}", i % 7),
        kind: TrackingKind::Sent,
        channel: None,
        target: None,
        template_name: None,
        stage: "test".into(),
        detail: None,
        at: 0,
        dispatched_at: None,
    }
}

/// What the test processor saw.
#[derive(Default)]
struct Seen {
    batch_sizes: Mutex<Vec<usize>>,
    finish_calls: AtomicU32,
    /// When `finish` first succeeded (ms since the epoch).
    finished_at: Mutex<Option<i64>>,
    /// Records processed per successful finish.
    finished_records: Mutex<Vec<usize>>,
}

/// Copies each event to the output topic, but only those its prefetch
/// announced; its first `finish` fails retriably.
struct Copier(Arc<Seen>);

#[derive(Default)]
struct Batch {
    announced: HashSet<String>,
    processed: Mutex<usize>,
}

#[async_trait]
impl Processor for Copier {
    type Input = TrackingEvent;
    type Prefetched = Batch;

    fn name(&self) -> &'static str {
        "copier"
    }

    async fn prefetch(&self, batch: &[(&TrackingEvent, &RecordMeta)]) -> Batch {
        self.0.batch_sizes.lock().unwrap().push(batch.len());
        Batch {
            announced: batch.iter().map(|(e, _)| e.event_id.clone()).collect(),
            processed: Mutex::new(0),
        }
    }

    async fn process(
        &self,
        input: &TrackingEvent,
        batch: &Batch,
        _meta: &RecordMeta,
        out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        if !batch.announced.contains(&input.event_id) {
            return Err(ProcessError::permanent(format!(
                "{} was not in its batch's prefetch",
                input.event_id
            )));
        }
        *batch.processed.lock().unwrap() += 1;
        out.emit(OUTPUT, &input.user_id, input)
    }

    async fn finish(&self, batch: &Batch) -> Result<(), ProcessError> {
        if self.0.finish_calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(ProcessError::retriable("the store is briefly away"));
        }
        self.0
            .finished_at
            .lock()
            .unwrap()
            .get_or_insert_with(now_millis);
        self.0
            .finished_records
            .lock()
            .unwrap()
            .push(*batch.processed.lock().unwrap());
        Ok(())
    }
}

fn config() -> KafkaConfig {
    KafkaConfig {
        group_prefix: "stage-test".into(),
        ..KafkaConfig::default()
    }
}

/// The [`Copier`] reading [`INPUT`] with `options`, retrying after 10 ms.
fn copier_stage(
    cluster: &KafkaCluster,
    config: &KafkaConfig,
    codec: &AvroCodec,
    seen: &Arc<Seen>,
    options: StageOptions,
) -> Stage<Copier> {
    Stage::new(
        cluster,
        config,
        AvroProducer::new(cluster, config, codec.clone()).expect("producer"),
        Copier(seen.clone()),
        &[INPUT.to_owned()],
        DEAD_LETTERS.to_owned(),
        StageOptions {
            min_backoff: Duration::from_millis(10),
            ..options
        },
    )
    .expect("stage")
}

/// Reads `topic` from the start until `want` records arrived or `WAIT` ran
/// out: (payload, timestamp) pairs.
fn read(cluster: &KafkaCluster, topic: &str, want: usize) -> Vec<(Vec<u8>, i64)> {
    let consumer: BaseConsumer = cluster
        .client_config(&config())
        .set("group.id", format!("reader-{topic}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    consumer.subscribe(&[topic]).expect("subscribe");
    let started = Instant::now();
    let mut records = Vec::new();
    while records.len() < want && started.elapsed() < WAIT {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            records.push((
                m.payload().unwrap_or_default().to_vec(),
                m.timestamp().to_millis().unwrap_or_default(),
            ));
        }
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_prefetched_finished_then_produced_and_bad_records_dead_lettered() {
    let cluster = KafkaCluster::start_embedded().expect("embedded brokers");
    let config = config();
    common::create_topics(&cluster, &config, &[INPUT, OUTPUT, DEAD_LETTERS], 3).await;

    // The input is on the topic before the stage starts, so its first
    // batches hold many records; one record in the middle is not Avro.
    let codec = AvroCodec::local();
    let producer: ThreadedProducer<DefaultProducerContext> =
        cluster.client_config(&config).create().expect("producer");
    for i in 0..RECORDS {
        let payload = codec.encode(&event(i)).expect("encode");
        let key = event(i).user_id;
        producer
            .send(BaseRecord::to(INPUT).key(&key).payload(&payload))
            .expect("queue");
        if i == RECORDS / 2 {
            producer
                .send(BaseRecord::to(INPUT).key("user-x").payload(b"not avro"))
                .expect("queue");
        }
    }
    producer.flush(Duration::from_secs(10)).expect("flush");

    let seen = Arc::new(Seen::default());
    let stage = copier_stage(&cluster, &config, &codec, &seen, StageOptions::default());
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(stage.run(shutdown.clone()));

    let cluster_ref = &cluster;
    let (outputs, dead) = tokio::task::block_in_place(|| {
        (
            read(cluster_ref, OUTPUT, RECORDS),
            read(cluster_ref, DEAD_LETTERS, 1),
        )
    });
    shutdown.cancel();
    running.await.expect("stage task").expect("stage ran");

    // Every event copied once, none refused for missing from its prefetch.
    let copied: HashMap<String, i64> = outputs
        .iter()
        .map(|(payload, at)| {
            let e: TrackingEvent = codec.decode(payload).expect("an output event");
            (e.event_id, *at)
        })
        .collect();
    assert_eq!(outputs.len(), RECORDS, "one output per good record");
    assert_eq!(copied.len(), RECORDS);

    // The undecodable record went to the dead-letter topic with a reason.
    assert_eq!(dead.len(), 1, "one dead letter");
    let letter: DeadLetter = codec.decode(&dead[0].0).expect("a dead letter");
    assert_eq!(letter.payload, b"not avro");
    assert_eq!(letter.stage, "copier");
    assert!(!letter.reason.is_empty());

    // Prefetch saw whole batches; the first finish failed and was retried.
    let sizes = seen.batch_sizes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), RECORDS, "{sizes:?}");
    assert!(
        sizes.iter().any(|&n| n > 1),
        "records were prefetched one by one: {sizes:?}"
    );
    let calls = seen.finish_calls.load(Ordering::SeqCst) as usize;
    assert_eq!(calls, sizes.len() + 1, "one retry of the first finish");
    assert_eq!(
        seen.finished_records.lock().unwrap().iter().sum::<usize>(),
        RECORDS,
        "finish ran after every record of its batch"
    );

    // Nothing was produced before the first batch's finish succeeded.
    let finished_at = seen.finished_at.lock().unwrap().expect("finished");
    let earliest = copied.values().min().copied().expect("outputs");
    assert!(
        earliest >= finished_at,
        "an output ({earliest}) was produced before finish succeeded ({finished_at})"
    );
}

/// Large records make small batches: a stage takes at most
/// `max_batch_bytes` of them at once (one over it ends the batch), so what
/// it holds is bounded by its configuration, not by what it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_records_are_batched_by_bytes() {
    const LARGE: usize = 40;
    const DETAIL: usize = 20 * 1024;
    const MAX_BYTES: usize = 64 * 1024;
    let cluster = KafkaCluster::start_embedded().expect("embedded brokers");
    let config = config();
    common::create_topics(&cluster, &config, &[INPUT, OUTPUT, DEAD_LETTERS], 1).await;
    // All on the topic before the stage starts: without the byte bound the
    // first batch would take every one of them.
    let codec = AvroCodec::local();
    let producer: ThreadedProducer<DefaultProducerContext> =
        cluster.client_config(&config).create().expect("producer");
    for i in 0..LARGE {
        let large = TrackingEvent {
            detail: Some("x".repeat(DETAIL)),
            ..event(i)
        };
        let payload = codec.encode(&large).expect("encode");
        producer
            .send(BaseRecord::to(INPUT).key(&large.user_id).payload(&payload))
            .expect("queue");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");

    let seen = Arc::new(Seen::default());
    let options = StageOptions {
        max_batch_bytes: MAX_BYTES,
        ..StageOptions::default()
    };
    let stage = copier_stage(&cluster, &config, &codec, &seen, options);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(stage.run(shutdown.clone()));
    let outputs = tokio::task::block_in_place(|| read(&cluster, OUTPUT, LARGE));
    shutdown.cancel();
    running.await.expect("stage task").expect("stage ran");

    assert_eq!(outputs.len(), LARGE, "every large record copied");
    let sizes = seen.batch_sizes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), LARGE, "{sizes:?}");
    // Records are taken until the batch holds MAX_BYTES: the last one
    // taken crosses it.
    let most = MAX_BYTES.div_ceil(DETAIL);
    assert!(
        sizes.iter().all(|&n| n <= most),
        "a batch over {MAX_BYTES} bytes of {DETAIL}-byte records: {sizes:?}"
    );
}

// ---------------------------------------------------------------------------
// No input stops a stage, nothing handled is lost: poison records, `not_due`,
// shutdown mid-batch, per-key order, a permanent `finish` failure and a
// rebalance. Each scenario runs on the embedded brokers, and those that
// depend on what a real broker does (topic size limits, group rebalances)
// on the test Kafka too (`TIDINGS_TEST_KAFKA`, default 127.0.0.1:19092).
// The rebalance runs on the test Kafka only: the mock's group coordinator
// refuses offset commits for as long as a rebalance lasts (seconds to tens of
// seconds there), the revoke commit included, which a real broker accepts.
// ---------------------------------------------------------------------------

/// Where a scenario runs.
#[derive(Clone, Copy, Debug)]
enum Brokers {
    Embedded,
    Kafka,
}

/// A scenario's brokers, with topic and group names of its own.
struct Env {
    cluster: KafkaCluster,
    config: KafkaConfig,
    prefix: String,
}

impl Env {
    async fn new(brokers: Brokers, scenario: &str) -> Self {
        // `RUST_LOG=tidings_kafka=debug` shows what the stages did.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        static RUN: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "stage-test.{scenario}.{}.{}.{}",
            std::process::id(),
            now_millis(),
            RUN.fetch_add(1, Ordering::SeqCst)
        );
        let mut config = KafkaConfig {
            group_prefix: prefix.clone(),
            ..KafkaConfig::default()
        };
        let cluster = match brokers {
            Brokers::Embedded => KafkaCluster::start_embedded().expect("embedded brokers"),
            Brokers::Kafka => {
                config.bootstrap_servers = std::env::var("TIDINGS_TEST_KAFKA")
                    .unwrap_or_else(|_| "127.0.0.1:19092".into());
                KafkaCluster::connect(&config).await.expect(
                    "the test Kafka (start it with `scripts/servers.sh up`; \
                     `eval \"$(scripts/servers.sh env)\"` names it)",
                )
            }
        };
        Self {
            cluster,
            config,
            prefix,
        }
    }

    fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// Creates `names` with `partitions` each and `max.message.bytes` at
    /// `max_message_bytes` (on a real broker).
    async fn topics(&self, names: &[&str], partitions: i32, max_message_bytes: usize) {
        let names: Vec<String> = names.iter().map(|name| self.topic(name)).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let config = KafkaConfig {
            max_message_bytes,
            ..self.config.clone()
        };
        common::create_topics(&self.cluster, &config, &names, partitions).await;
    }

    /// Writes `events` to `topic` (keyed by user id) with a plain producer
    /// that allows records of up to 10 MB.
    fn write(&self, topic: &str, events: &[TrackingEvent]) {
        let codec = AvroCodec::local();
        let producer: ThreadedProducer<DefaultProducerContext> = self
            .cluster
            .client_config(&self.config)
            .set("message.max.bytes", "10000000")
            .create()
            .expect("producer");
        for e in events {
            let payload = codec.encode(e).expect("encode");
            producer
                .send(BaseRecord::to(topic).key(&e.user_id).payload(&payload))
                .expect("queue");
        }
        producer.flush(Duration::from_secs(10)).expect("flush");
    }

    /// A stage running `processor` on `input`, dead-lettering to `dead`,
    /// producing with a limit of `max_message_bytes`.
    fn start<P: Processor>(
        &self,
        processor: P,
        input: &str,
        dead: &str,
        max_message_bytes: usize,
    ) -> Running {
        let config = KafkaConfig {
            max_message_bytes,
            ..self.config.clone()
        };
        let producer =
            AvroProducer::new(&self.cluster, &config, AvroCodec::local()).expect("producer");
        let stage = Stage::new(
            &self.cluster,
            &config,
            producer,
            processor,
            &[input.to_owned()],
            dead.to_owned(),
            StageOptions {
                min_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(200),
                ..StageOptions::default()
            },
        )
        .expect("stage");
        let assignment = stage.assignment();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(stage.run(shutdown.clone()));
        Running {
            shutdown,
            task,
            assignment,
        }
    }

    /// Every record on `topic` up to its high watermarks as of this call,
    /// with partition, offset and whether it carries the maybe-repeat
    /// header.
    async fn read_all(&self, topic: &str) -> Vec<(i32, i64, Vec<u8>, bool)> {
        let consumer: BaseConsumer = self
            .cluster
            .client_config(&self.config)
            .set("group.id", format!("{}.reader", self.prefix))
            .set("enable.auto.commit", "false")
            .create()
            .expect("reader");
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let metadata = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .expect("metadata");
            let mut assignment = TopicPartitionList::new();
            let mut left = HashMap::new();
            for p in metadata.topics()[0].partitions() {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, p.id(), Duration::from_secs(10))
                    .expect("watermarks");
                if high > low {
                    left.insert(p.id(), high);
                    assignment
                        .add_partition_offset(&topic, p.id(), Offset::Beginning)
                        .expect("partition");
                }
            }
            consumer.assign(&assignment).expect("assign");
            let started = Instant::now();
            let mut records = Vec::new();
            while !left.is_empty() {
                assert!(started.elapsed() < WAIT, "timed out reading all of {topic}");
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    if m.offset() + 1 >= left.get(&m.partition()).copied().unwrap_or(0) {
                        left.remove(&m.partition());
                    }
                    records.push((
                        m.partition(),
                        m.offset(),
                        m.payload().unwrap_or_default().to_vec(),
                        is_marked(&m),
                    ));
                }
            }
            records
        })
        .await
        .expect("reader thread")
    }

    /// The events on `topic` (read to its high watermarks).
    async fn events(&self, topic: &str) -> Vec<TrackingEvent> {
        let codec = AvroCodec::local();
        self.read_all(topic)
            .await
            .iter()
            .map(|(_, _, payload, _)| codec.decode(payload).expect("an event"))
            .collect()
    }

    /// The ids of the events on `topic`, in order (read to its high
    /// watermarks).
    async fn event_ids(&self, topic: &str) -> Vec<String> {
        self.events(topic)
            .await
            .into_iter()
            .map(|e| e.event_id)
            .collect()
    }

    /// The dead letters on `topic` (read to its high watermarks).
    async fn dead_letters(&self, topic: &str) -> Vec<DeadLetter> {
        let codec = AvroCodec::local();
        self.read_all(topic)
            .await
            .iter()
            .map(|(_, _, payload, _)| codec.decode(payload).expect("a dead letter"))
            .collect()
    }

    /// Waits until `topic` holds events with every id in `ids`.
    async fn wait_for(&self, topic: &str, ids: &[String]) -> Vec<TrackingEvent> {
        let started = Instant::now();
        loop {
            let events = self.events(topic).await;
            let have: HashSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
            if ids.iter().all(|id| have.contains(id.as_str())) {
                return events;
            }
            assert!(
                started.elapsed() < WAIT * 2,
                "timed out waiting for {} events on {topic}; have {}",
                ids.len(),
                have.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The group's committed offset per partition of `topic` (only asks
    /// the coordinator; never joins the group).
    async fn committed(&self, stage: &str, topic: &str, partitions: i32) -> Vec<i64> {
        let consumer: BaseConsumer = self
            .cluster
            .client_config(&self.config)
            .set("group.id", format!("{}.{stage}", self.prefix))
            .set("enable.auto.commit", "false")
            .create()
            .expect("offsets client");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        tokio::task::spawn_blocking(move || {
            let committed = consumer
                .committed_offsets(tpl, Duration::from_secs(10))
                .expect("committed offsets");
            (0..partitions)
                .map(|p| {
                    match committed
                        .elements()
                        .iter()
                        .find(|e| e.partition() == p)
                        .map(|e| e.offset())
                    {
                        Some(Offset::Offset(o)) => o,
                        _ => -1,
                    }
                })
                .collect()
        })
        .await
        .expect("offsets thread")
    }
}

struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), tidings_kafka::KafkaError>>,
    assignment: tokio::sync::watch::Receiver<Assignment>,
}

impl Running {
    /// Waits until the member holds an assignment; answers how many
    /// partitions it holds.
    async fn assigned(&mut self) -> usize {
        let ready = tokio::time::timeout(WAIT, self.assignment.wait_for(Assignment::is_ready))
            .await
            .expect("the member was assigned its partitions within the wait")
            .expect("the stage publishes its assignment")
            .clone();
        match ready {
            Assignment::Assigned { partitions } => partitions,
            other => unreachable!("is_ready holds only for Assigned: {other:?}"),
        }
    }

    /// Stops the stage; it must have been running until now, and stop cleanly.
    async fn stop(self) {
        assert!(
            !self.task.is_finished(),
            "the stage stopped on its own before shutdown"
        );
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the stage stops within the wait")
            .expect("stage task")
            .expect("the stage ran without an error");
    }
}

/// What a scripted processor does with one record.
type Decide = dyn Fn(&TrackingEvent, &RecordMeta) -> Result<Option<TrackingEvent>, ProcessError>
    + Send
    + Sync;
/// What its `finish` answers on its `n`th call (0-based).
type FinishWith = dyn Fn(u32) -> Result<(), ProcessError> + Send + Sync;

/// A processor whose answers a test scripts: emits what `decide` returns
/// to `output`, keyed by user, and remembers what it processed.
struct Scripted {
    name: &'static str,
    output: String,
    decide: Box<Decide>,
    finish: Box<FinishWith>,
    log: Arc<Log>,
}

/// What a scripted processor did.
#[derive(Default)]
struct Log {
    /// (event id, partition, offset) of every successful `process`, in order.
    processed: Mutex<Vec<(String, i32, i64)>>,
    /// Calls of `process`, failures included.
    attempts: AtomicU32,
    /// (event id, how the runner said to handle it) of every successful
    /// `process`.
    handled_as: Mutex<Vec<(String, Handling)>>,
    /// Batch sizes seen by `prefetch`.
    batches: Mutex<Vec<usize>>,
    finish_calls: AtomicU32,
}

impl Log {
    fn processed_ids(&self) -> Vec<String> {
        let processed = self.processed.lock().unwrap();
        processed.iter().map(|(id, _, _)| id.clone()).collect()
    }

    /// Waits until every event of `events` with a key other than `held`'s
    /// was processed.
    async fn wait_for_other_keys(&self, events: &[TrackingEvent], held: &TrackingEvent) {
        let others: Vec<&String> = events
            .iter()
            .filter(|e| e.user_id != held.user_id)
            .map(|e| &e.event_id)
            .collect();
        let started = Instant::now();
        while !others.iter().all(|id| self.processed_ids().contains(id)) {
            assert!(
                started.elapsed() < WAIT,
                "the other keys were not processed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Scripted {
    fn new(name: &'static str, output: String, decide: Box<Decide>) -> (Self, Arc<Log>) {
        let log = Arc::new(Log::default());
        let processor = Self {
            name,
            output,
            decide,
            finish: Box::new(|_| Ok(())),
            log: log.clone(),
        };
        (processor, log)
    }

    /// Copies every event.
    fn copier(name: &'static str, output: String) -> (Self, Arc<Log>) {
        Self::new(name, output, Box::new(|e, _| Ok(Some(e.clone()))))
    }

    /// Copies every event but `held`, which fails retriably for good.
    fn holding(name: &'static str, output: String, held: String) -> (Self, Arc<Log>) {
        Self::new(
            name,
            output,
            Box::new(move |e, _| {
                if e.event_id == held {
                    Err(ProcessError::retriable("the store is away"))
                } else {
                    Ok(Some(e.clone()))
                }
            }),
        )
    }
}

#[async_trait]
impl Processor for Scripted {
    type Input = TrackingEvent;
    type Prefetched = ();

    fn name(&self) -> &'static str {
        self.name
    }

    async fn prefetch(&self, batch: &[(&TrackingEvent, &RecordMeta)]) {
        self.log.batches.lock().unwrap().push(batch.len());
    }

    async fn process(
        &self,
        input: &TrackingEvent,
        _: &(),
        meta: &RecordMeta,
        out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        self.log.attempts.fetch_add(1, Ordering::SeqCst);
        if let Some(output) = (self.decide)(input, meta)? {
            out.emit(&self.output, &output.user_id, &output)?;
        }
        self.log.processed.lock().unwrap().push((
            input.event_id.clone(),
            meta.partition,
            meta.offset,
        ));
        self.log
            .handled_as
            .lock()
            .unwrap()
            .push((input.event_id.clone(), meta.handling));
        Ok(())
    }

    async fn finish(&self, _: &()) -> Result<(), ProcessError> {
        (self.finish)(self.log.finish_calls.fetch_add(1, Ordering::SeqCst))
    }
}

fn event_for(user: &str, i: usize) -> TrackingEvent {
    TrackingEvent {
        event_id: format!("{user}-{i}"),
        user_id: user.to_owned(),
        ..event(i)
    }
}

/// `len` characters that lz4 cannot shrink much (the producer compresses).
fn incompressible(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % 64) as usize] as char
        })
        .collect()
}

const LIMIT: usize = 20_000;

/// A record whose output is too large for `kafka.max_message_bytes`, and a
/// record too large for even its dead letter, are dead-lettered (the second
/// cut to fit, saying so); the next record of the same key is processed and
/// the stage runs on.
async fn oversized_output_dead_letters_its_input(brokers: Brokers) {
    let env = Env::new(brokers, "oversized").await;
    let (input, output, dead) = (env.topic("in"), env.topic("out"), env.topic("dead"));
    env.topics(&["in"], 1, 10_000_000).await;
    env.topics(&["out", "dead"], 1, LIMIT).await;
    let inflate = |e: &TrackingEvent| TrackingEvent {
        detail: Some(incompressible(5 * LIMIT)),
        ..e.clone()
    };
    let (processor, log) = Scripted::new(
        "oversized",
        output.clone(),
        Box::new(move |e, _| {
            Ok(Some(if e.event_id.ends_with("-1") {
                inflate(e)
            } else {
                e.clone()
            }))
        }),
    );
    let mut events: Vec<TrackingEvent> = (0..4).map(|i| event_for("u", i)).collect();
    // Its copy is too large, and so is it for a dead letter whole.
    events[2].detail = Some(incompressible(2 * LIMIT));
    env.write(&input, &events);
    let stage = env.start(processor, &input, &dead, LIMIT);

    let want = [events[0].event_id.clone(), events[3].event_id.clone()];
    env.wait_for(&output, &want).await;
    let mut letters = Vec::new();
    let started = Instant::now();
    while letters.len() < 2 && started.elapsed() < WAIT {
        letters = env.dead_letters(&dead).await;
    }
    // The stage carries on: a record written now is processed too.
    let later = event_for("u", 4);
    env.write(&input, std::slice::from_ref(&later));
    env.wait_for(&output, std::slice::from_ref(&later.event_id))
        .await;
    stage.stop().await;

    let outputs: Vec<String> = env.event_ids(&output).await;
    assert_eq!(
        outputs,
        ["u-0", "u-3", "u-4"],
        "only the good records' copies"
    );
    let letters = env.dead_letters(&dead).await;
    assert_eq!(letters.len(), 2, "one dead letter per oversized record");
    assert_eq!(letters[0].source_offset, 1);
    assert!(
        letters[0].reason.contains("kafka.max_message_bytes"),
        "the reason names the limit: {}",
        letters[0].reason
    );
    assert_eq!(
        letters[0].payload,
        AvroCodec::local().encode(&events[1]).unwrap()
    );
    let whole = AvroCodec::local().encode(&events[2]).unwrap();
    assert_eq!(letters[1].source_offset, 2);
    assert!(letters[1].payload.len() < LIMIT, "the payload was cut");
    assert!(whole.starts_with(&letters[1].payload), "to a prefix");
    assert!(
        letters[1]
            .reason
            .contains(&format!("of {} bytes", whole.len())),
        "the reason says it was cut: {}",
        letters[1].reason
    );
    assert_eq!(letters[1].stage, "oversized");
    assert_eq!(log.processed_ids(), ["u-0", "u-3", "u-4"]);
}

/// On a real broker, an output the topic refuses (its `max.message.bytes`
/// below the producer's) fails to produce for good: its input is
/// dead-lettered with the broker's reason and the stage carries on.
async fn refused_produce_dead_letters_its_input(brokers: Brokers) {
    let env = Env::new(brokers, "refused").await;
    let (input, output, dead) = (env.topic("in"), env.topic("out"), env.topic("dead"));
    env.topics(&["in", "dead"], 1, LIMIT).await;
    env.topics(&["out"], 1, LIMIT / 2).await;
    let (processor, _log) = Scripted::new(
        "refused",
        output.clone(),
        Box::new(|e, _| {
            Ok(Some(TrackingEvent {
                detail: e
                    .event_id
                    .ends_with("-1")
                    .then(|| incompressible(3 * LIMIT / 4)),
                ..e.clone()
            }))
        }),
    );
    env.write(&input, &[event_for("u", 0), event_for("u", 1)]);
    let stage = env.start(processor, &input, &dead, LIMIT);
    let started = Instant::now();
    let letters = loop {
        let letters = env.dead_letters(&dead).await;
        if !letters.is_empty() || started.elapsed() > WAIT {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        letters.iter().any(|l| l.source_offset == 1),
        "the refused record is dead-lettered: {letters:?}"
    );
    assert!(
        letters
            .iter()
            .all(|l| l.reason.to_lowercase().contains("too large")),
        "with the broker's reason: {letters:?}"
    );
    env.write(&input, &[event_for("u", 2)]);
    env.wait_for(&output, &["u-2".to_owned()]).await;
    stage.stop().await;
}

/// A record `not_due` is held (not dead-lettered, not lost) and processed
/// once due.
async fn not_due_holds_a_record_then_processes_it(brokers: Brokers) {
    let env = Env::new(brokers, "not-due").await;
    let (input, output, dead) = (env.topic("in"), env.topic("out"), env.topic("dead"));
    env.topics(&["in", "out", "dead"], 1, LIMIT).await;
    const HOLD_MS: i64 = 700;
    // Due HOLD_MS after the stage first sees it (joining the group takes a
    // while of its own).
    let first_seen = Arc::new(Mutex::new(None::<i64>));
    let seen = first_seen.clone();
    let (processor, log) = Scripted::new(
        "not-due",
        output.clone(),
        Box::new(move |e, _| {
            let now = now_millis();
            let due = *seen.lock().unwrap().get_or_insert(now) + HOLD_MS;
            if now < due {
                return Err(ProcessError::not_due(Duration::from_millis(
                    (due - now) as u64 / 3 + 1,
                )));
            }
            Ok(Some(e.clone()))
        }),
    );
    env.write(&input, &[event_for("u", 0)]);
    let stage = env.start(processor, &input, &dead, LIMIT);
    env.wait_for(&output, &["u-0".to_owned()]).await;
    stage.stop().await;
    let outputs = env.read_all(&output).await;
    assert_eq!(outputs.len(), 1, "processed once");
    assert!(first_seen.lock().unwrap().is_some());
    assert!(
        log.attempts.load(Ordering::SeqCst) > 1,
        "handed over again after the wait"
    );
    assert!(env.read_all(&dead).await.is_empty(), "not dead-lettered");
}

/// Shutdown in the middle of a batch: one key's record keeps failing
/// retriably while the other keys' records are done. The stage stops
/// cleanly, committing only up to the held record; a new stage of the same
/// group starts exactly there and processes it.
async fn shutdown_mid_batch_loses_nothing(brokers: Brokers) {
    let env = Env::new(brokers, "shutdown").await;
    let (input, output, dead) = (env.topic("in"), env.topic("out"), env.topic("dead"));
    env.topics(&["in", "out", "dead"], 1, LIMIT).await;
    let events: Vec<TrackingEvent> = (0..20)
        .map(|i| event_for(&format!("u{}", i % 4), i))
        .collect();
    let held = events[5].event_id.clone();
    env.write(&input, &events);
    let (first, first_log) = Scripted::holding("shutdown", output.clone(), held.clone());
    let stage = env.start(first, &input, &dead, LIMIT);
    // The other keys' records are processed while the held one retries.
    first_log.wait_for_other_keys(&events, &events[5]).await;
    stage.stop().await;
    // Per-key order: nothing of the held key after the held record.
    let done = first_log.processed_ids();
    assert!(!done.contains(&held));
    for later in [9, 13, 17] {
        assert!(
            !done.contains(&events[later].event_id),
            "{later} overtook its key"
        );
    }
    assert_eq!(
        env.committed("shutdown", &input, 1).await,
        [5],
        "committed up to the held record"
    );

    let (second, second_log) = Scripted::copier("shutdown", output.clone());
    let stage = env.start(second, &input, &dead, LIMIT);
    let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
    env.wait_for(&output, &ids).await;
    stage.stop().await;
    let again = second_log.processed.lock().unwrap().clone();
    assert_eq!(
        again.iter().map(|(_, _, o)| *o).min(),
        Some(5),
        "resumed at the held record"
    );
    assert!(env.read_all(&dead).await.is_empty());
}

/// Which records may repeat: a member that stopped with a record held
/// handled everything it read as new (its records were written after it
/// was given the partition); the next member handles what lay below the
/// partition's end when it was given it as records that may repeat, and
/// marks their outputs; what is written after is new again, unless its
/// producer marked it.
async fn records_read_again_may_repeat(brokers: Brokers) {
    let env = Env::new(brokers, "again").await;
    let (input, output, dead) = (env.topic("in"), env.topic("out"), env.topic("dead"));
    env.topics(&["in", "out", "dead"], 1, LIMIT).await;
    let events: Vec<TrackingEvent> = (0..12)
        .map(|i| event_for(&format!("u{}", i % 3), i))
        .collect();
    let (first, first_log) = Scripted::holding("again", output.clone(), events[4].event_id.clone());
    let mut stage = env.start(first, &input, &dead, LIMIT);
    stage.assigned().await;
    env.write(&input, &events);
    first_log.wait_for_other_keys(&events, &events[4]).await;
    stage.stop().await;
    assert!(
        first_log
            .handled_as
            .lock()
            .unwrap()
            .iter()
            .all(|(_, h)| *h == Handling::First),
        "written after the member was given the partition: all new"
    );
    assert_eq!(env.committed("again", &input, 1).await, [4]);

    // Written while no member runs: below the end the next one finds.
    let between: Vec<TrackingEvent> = (12..15).map(|i| event_for("u0", i)).collect();
    env.write(&input, &between);
    let (second, second_log) = Scripted::copier("again", output.clone());
    let mut stage = env.start(second, &input, &dead, LIMIT);
    stage.assigned().await;
    let again: Vec<String> = events[4..]
        .iter()
        .chain(&between)
        .map(|e| e.event_id.clone())
        .collect();
    env.wait_for(&output, &again).await;
    // Written after it was given the partition: new; one marked by its
    // producer: may repeat.
    let after: Vec<TrackingEvent> = (15..18).map(|i| event_for("u1", i)).collect();
    env.write(&input, &after);
    let marked = event_for("u2", 18);
    let producer =
        AvroProducer::new(&env.cluster, &env.config, AvroCodec::local()).expect("producer");
    let mut record = producer
        .encode(&input, &marked.user_id, &marked)
        .expect("encoded");
    record.handling = Handling::MaybeRepeat;
    producer.send_raw(&record).await.expect("produced");
    let mut ids = again.clone();
    ids.extend(after.iter().map(|e| e.event_id.clone()));
    ids.push(marked.event_id.clone());
    env.wait_for(&output, &ids).await;
    stage.stop().await;

    let handled: HashMap<String, Handling> = second_log
        .handled_as
        .lock()
        .unwrap()
        .iter()
        .cloned()
        .collect();
    for id in &ids {
        let want = if after.iter().any(|e| &e.event_id == id) {
            Handling::First
        } else {
            Handling::MaybeRepeat
        };
        assert_eq!(handled.get(id), Some(&want), "{id}");
    }
    // Outputs carry the mark of their input: none of the first member's,
    // each of the second's but those of the new records.
    let codec = AvroCodec::local();
    let mut marks: HashMap<String, Vec<bool>> = HashMap::new();
    for (_, _, payload, marked) in env.read_all(&output).await {
        let e: TrackingEvent = codec.decode(&payload).expect("an event");
        marks.entry(e.event_id).or_default().push(marked);
    }
    for e in &events[..4] {
        // Below the committed offset: only the first member's copy.
        assert_eq!(marks[&e.event_id], [false], "{}", e.event_id);
    }
    for id in &again {
        assert!(
            marks[id].contains(&true),
            "{id} re-made, marked: {:?}",
            marks[id]
        );
    }
    for e in &after {
        assert_eq!(marks[&e.event_id], [false], "{}", e.event_id);
    }
    assert_eq!(marks[&marked.event_id], [true]);
    assert!(env.read_all(&dead).await.is_empty());
}

/// Records of one key are processed and produced in offset order, across
/// concurrency and retries; keys do not wait for each other.
async fn records_of_a_key_keep_their_order(brokers: Brokers) {
    let env = Env::new(brokers, "order").await;
    let (input, output, dead) = (env.topic("in"), env.topic("out"), env.topic("dead"));
    env.topics(&["in", "out", "dead"], 1, LIMIT).await;
    let events: Vec<TrackingEvent> = (0..200)
        .map(|i| event_for(&format!("u{}", i % 5), i))
        .collect();
    env.write(&input, &events);
    let failed_once = Arc::new(Mutex::new(HashSet::new()));
    let (processor, log) = Scripted::new(
        "order",
        output.clone(),
        Box::new(move |e, meta| {
            // Every seventh record fails once, retriably.
            if meta.offset % 7 == 3 && failed_once.lock().unwrap().insert(meta.offset) {
                return Err(ProcessError::retriable("briefly away"));
            }
            Ok(Some(e.clone()))
        }),
    );
    let stage = env.start(processor, &input, &dead, LIMIT);
    let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
    env.wait_for(&output, &ids).await;
    stage.stop().await;

    let index = |id: &str| -> usize { id.rsplit('-').next().unwrap().parse().unwrap() };
    let processed = log.processed_ids();
    let produced: Vec<String> = env.event_ids(&output).await;
    for (what, ids) in [("processed", &processed), ("produced", &produced)] {
        let mut last: HashMap<String, usize> = HashMap::new();
        for id in ids.iter() {
            let user = id.split('-').next().unwrap().to_owned();
            let i = index(id);
            if let Some(before) = last.insert(user.clone(), i) {
                assert!(before < i, "{what}: {user}'s {i} after {before}");
            }
        }
    }
    assert_eq!(produced.len(), events.len(), "each record once");
}

/// A `finish` that fails for good dead-letters the records of its batch
/// (none of their outputs are produced) and the stage carries on with the
/// next batch.
async fn permanent_finish_failure_dead_letters_the_batch(brokers: Brokers) {
    let env = Env::new(brokers, "finish").await;
    let (input, output, dead) = (env.topic("in"), env.topic("out"), env.topic("dead"));
    env.topics(&["in", "out", "dead"], 1, LIMIT).await;
    let first: Vec<TrackingEvent> = (0..10).map(|i| event_for("u", i)).collect();
    env.write(&input, &first);
    let (mut processor, log) = Scripted::copier("finish", output.clone());
    processor.finish = Box::new(|call| {
        if call == 0 {
            Err(ProcessError::permanent("the ledger refuses this batch"))
        } else {
            Ok(())
        }
    });
    let stage = env.start(processor, &input, &dead, LIMIT);
    let started = Instant::now();
    while log.finish_calls.load(Ordering::SeqCst) == 0 {
        assert!(started.elapsed() < WAIT, "no batch finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failed_batch = log.batches.lock().unwrap()[0];
    // The stage carries on.
    let later = event_for("u", 10);
    env.write(&input, std::slice::from_ref(&later));
    let all: Vec<String> = (failed_batch..=10).map(|i| format!("u-{i}")).collect();
    env.wait_for(&output, &all).await;
    stage.stop().await;

    let letters = env.dead_letters(&dead).await;
    let offsets: Vec<i64> = letters.iter().map(|l| l.source_offset).collect();
    assert_eq!(
        offsets,
        (0..failed_batch as i64).collect::<Vec<_>>(),
        "the failed batch's records, each once"
    );
    assert!(
        letters
            .iter()
            .all(|l| l.reason.contains("the ledger refuses this batch")),
        "{letters:?}"
    );
    let produced: Vec<String> = env.event_ids(&output).await;
    assert_eq!(produced, all, "no output of the failed batch");
}

/// A stage that passes over a label: records carrying it are committed
/// without being decoded (an undecodable one is not dead-lettered) or
/// processed; the others are processed as usual, in order.
async fn labelled_records_are_passed_over(brokers: Brokers) {
    let env = Env::new(brokers, "passover").await;
    let (input, output, dead) = (env.topic("in"), env.topic("out"), env.topic("dead"));
    env.topics(&["in", "out", "dead"], 1, LIMIT).await;
    let producer =
        AvroProducer::new(&env.cluster, &env.config, AvroCodec::local()).expect("producer");
    // Even events name a template, odd ones none; event 4 is of a kind
    // counted for no template. Those that count for nothing go out labelled.
    let events: Vec<TrackingEvent> = (0..10)
        .map(|i| TrackingEvent {
            template_name: (i % 2 == 0).then(|| "welcome".to_owned()),
            kind: if i == 4 {
                TrackingKind::Rendered
            } else {
                TrackingKind::Sent
            },
            ..event_for("u", i)
        })
        .collect();
    let counts = |e: &TrackingEvent| e.template_name.is_some() && e.kind == TrackingKind::Sent;
    for e in &events {
        let record = producer.encode(&input, &e.user_id, e).expect("encode");
        assert_eq!(record.label, (!counts(e)).then_some(UNCOUNTED));
        producer.send_raw(&record).await.expect("produce");
    }
    // Not Avro at all, but labelled: never decoded, so never dead-lettered.
    let garbage = OutRecord {
        topic: input.clone(),
        key: "u".into(),
        payload: b"not avro".to_vec(),
        handling: Handling::First,
        label: Some(UNCOUNTED),
    };
    producer.send_raw(&garbage).await.expect("produce");

    let (copier, log) = Scripted::copier("passover", output.clone());
    let stage = env.start(PassesOver(copier), &input, &dead, LIMIT);
    let templated: Vec<String> = events
        .iter()
        .filter(|e| counts(e))
        .map(|e| e.event_id.clone())
        .collect();
    env.wait_for(&output, &templated).await;
    let started = Instant::now();
    while env.committed("passover", &input, 1).await != [11] {
        assert!(
            started.elapsed() < WAIT,
            "the passed-over records were not committed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stage.stop().await;

    assert_eq!(log.processed_ids(), templated, "only the counted events");
    let produced: Vec<String> = env.event_ids(&output).await;
    assert_eq!(produced, templated);
    assert!(
        env.dead_letters(&dead).await.is_empty(),
        "nothing dead-lettered"
    );
}

/// [`Scripted`], passing over tracking events that name no template.
struct PassesOver(Scripted);

#[async_trait]
impl Processor for PassesOver {
    type Input = TrackingEvent;
    type Prefetched = ();
    const PASSES_OVER: Option<Label> = Some(UNCOUNTED);

    fn name(&self) -> &'static str {
        self.0.name()
    }

    async fn prefetch(&self, batch: &[(&TrackingEvent, &RecordMeta)]) {
        self.0.prefetch(batch).await
    }

    async fn process(
        &self,
        input: &TrackingEvent,
        prefetched: &(),
        meta: &RecordMeta,
        out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        self.0.process(input, prefetched, meta, out).await
    }
}

/// A second member joins a busy stage's group: the partitions split, both
/// members process records, every record is processed at least once, and
/// the group's committed offsets never go backwards.
async fn rebalance_between_two_members(brokers: Brokers) {
    const PARTITIONS: i32 = 4;
    const EACH: usize = 300;
    let env = Env::new(brokers, "rebalance").await;
    let (input, output, dead) = (env.topic("in"), env.topic("out"), env.topic("dead"));
    env.topics(&["in", "out", "dead"], PARTITIONS, LIMIT).await;
    let slow = || -> Box<Decide> {
        Box::new(|e, _| {
            std::thread::sleep(Duration::from_millis(2));
            Ok(Some(e.clone()))
        })
    };
    let batch = |from: usize| -> Vec<TrackingEvent> {
        (from..from + EACH)
            .map(|i| event_for(&format!("u{}", i % 16), i))
            .collect()
    };
    env.write(&input, &batch(0));
    let (a, a_log) = Scripted::new("rebalance", output.clone(), slow());
    let first = env.start(a, &input, &dead, LIMIT);

    // Watch the committed offsets throughout.
    let watching = CancellationToken::new();
    let watcher = {
        let env = &env;
        let input = input.clone();
        let watching = watching.clone();
        async move {
            let mut history: Vec<Vec<i64>> = Vec::new();
            while !watching.is_cancelled() {
                history.push(env.committed("rebalance", &input, PARTITIONS).await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            history
        }
    };
    let scenario = async {
        let started = Instant::now();
        while a_log.processed.lock().unwrap().len() < 50 {
            assert!(started.elapsed() < WAIT, "member a processed nothing");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (b, b_log) = Scripted::new("rebalance", output.clone(), slow());
        let second = env.start(b, &input, &dead, LIMIT);
        // Records written while the group rebalances and after it, until
        // the new member has had some.
        let mut written = EACH;
        let started = Instant::now();
        while b_log.processed.lock().unwrap().is_empty() || written < 3 * EACH {
            assert!(started.elapsed() < WAIT * 2, "member b was given nothing");
            tokio::time::sleep(Duration::from_millis(300)).await;
            env.write(&input, &batch(written));
            written += EACH;
        }
        let ids: Vec<String> = (0..written).map(|i| format!("u{}-{i}", i % 16)).collect();
        env.wait_for(&output, &ids).await;
        first.stop().await;
        second.stop().await;
        watching.cancel();
        b_log
    };
    let (history, b_log) = tokio::join!(watcher, scenario);
    let finally = env.committed("rebalance", &input, PARTITIONS).await;

    let a_parts: HashSet<i32> = a_log
        .processed
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.1)
        .collect();
    let b_parts: HashSet<i32> = b_log
        .processed
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.1)
        .collect();
    assert!(
        !b_parts.is_empty() && !a_parts.is_empty(),
        "{a_parts:?} {b_parts:?}"
    );
    let mut history = history;
    history.push(finally.clone());
    for p in 0..PARTITIONS as usize {
        let offsets: Vec<i64> = history.iter().map(|h| h[p]).collect();
        assert!(
            offsets.windows(2).all(|w| w[0] <= w[1]),
            "partition {p}'s committed offset went backwards: {offsets:?}"
        );
    }
    // Everything was committed in the end: the high watermarks.
    let records = env.read_all(&input).await;
    for p in 0..PARTITIONS {
        let high = records
            .iter()
            .filter(|r| r.0 == p)
            .map(|r| r.1 + 1)
            .max()
            .unwrap_or(0);
        assert_eq!(finally[p as usize], high, "partition {p} fully committed");
    }
    assert!(env.read_all(&dead).await.is_empty());
}

/// Each member publishes where it stands: joining until its first
/// rebalance completes, then its share of the partitions, none for a member
/// the group has no partition for (which is ready all the same), rebalancing
/// while a rebalance is under way, stopping at shutdown.
async fn members_publish_their_assignment(brokers: Brokers) {
    let env = Env::new(brokers, "assignment").await;
    let (input, output, dead) = (env.topic("in"), env.topic("out"), env.topic("dead"));
    env.topics(&["in", "out", "dead"], 1, LIMIT).await;
    let stages = StageAssignments::default();

    let (a, _) = Scripted::copier("assignment", output.clone());
    let mut first = env.start(a, &input, &dead, LIMIT);
    stages.track("assignment-a", first.assignment.clone());
    assert_eq!(
        first.assigned().await,
        1,
        "the only member holds the partition"
    );
    assert_eq!(stages.verdict(), Ok(()));

    let (b, _) = Scripted::copier("assignment", output.clone());
    let mut second = env.start(b, &input, &dead, LIMIT);
    stages.track("assignment-b", second.assignment.clone());
    // Until the group has rebalanced, the new member is not ready.
    let waiting = stages.verdict();
    assert!(
        waiting.is_err_and(|w| w
            .iter()
            .any(|l| l.starts_with("stage assignment-b: waiting"))),
        "a member that just subscribed is not ready"
    );
    // Both members hold what the group gave them: one partition, and none
    // (a's old assignment may still show until its revoke comes).
    let wait_until = Instant::now() + WAIT;
    let mut held = second.assigned().await + first.assigned().await;
    while held != 1 {
        assert!(
            Instant::now() < wait_until,
            "the partition is held {held} times"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        held = [&first, &second]
            .iter()
            .map(|r| match &*r.assignment.borrow() {
                Assignment::Assigned { partitions } => *partitions,
                _ => 0,
            })
            .sum();
    }
    assert_eq!(stages.verdict(), Ok(()), "{:?}", stages.current());

    let (a_state, b_state) = (first.assignment.clone(), second.assignment.clone());
    second.stop().await;
    assert_eq!(*b_state.borrow(), Assignment::Stopping);
    let waiting = stages.verdict().expect_err("a stopped member is not ready");
    assert_eq!(waiting, vec!["stage assignment-b: stopping".to_owned()]);
    first.stop().await;
    assert_eq!(*a_state.borrow(), Assignment::Stopping);
}

macro_rules! on {
    ($module:ident, $brokers:expr, [$($scenario:ident),* $(,)?]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($brokers).await
                }
            )*
        }
    };
}

on!(
    embedded,
    super::Brokers::Embedded,
    [
        oversized_output_dead_letters_its_input,
        not_due_holds_a_record_then_processes_it,
        shutdown_mid_batch_loses_nothing,
        records_read_again_may_repeat,
        records_of_a_key_keep_their_order,
        permanent_finish_failure_dead_letters_the_batch,
        labelled_records_are_passed_over,
    ]
);

on!(
    kafka,
    super::Brokers::Kafka,
    [
        oversized_output_dead_letters_its_input,
        refused_produce_dead_letters_its_input,
        shutdown_mid_batch_loses_nothing,
        records_read_again_may_repeat,
        rebalance_between_two_members,
        members_publish_their_assignment,
        labelled_records_are_passed_over,
    ]
);
