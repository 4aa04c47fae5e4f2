//! The stage runner on the embedded brokers (librdkafka's mock cluster, the
//! same client code path as a real cluster): what `prefetch` sees, that
//! `process` gets what it prefetched, that a retriable `finish` failure is
//! retried and outputs are produced only after `finish` succeeded, and that
//! an undecodable record is dead-lettered without holding back the rest.

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
    Message,
    consumer::{BaseConsumer, Consumer},
    producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer},
};
use tidings_config::KafkaConfig;
use tidings_kafka::{
    AvroProducer, Emitter, KafkaCluster, ProcessError, Processor, RecordMeta, Stage, StageOptions,
    TopicSpec, now_millis,
};
use tidings_schemas::{
    AvroCodec,
    records::{DeadLetter, TrackingEvent, TrackingKind},
};
use tokio_util::sync::CancellationToken;

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
    let specs: Vec<TopicSpec> = [INPUT, OUTPUT, DEAD_LETTERS]
        .into_iter()
        .map(|name| TopicSpec {
            name: name.into(),
            partitions: 3,
            retention_ms: 3_600_000,
            record: "TrackingEvent",
            key: "user id",
        })
        .collect();
    cluster
        .ensure_topics(&config, &specs)
        .await
        .expect("topics");

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
    let stage = Stage::new(
        &cluster,
        &config,
        AvroProducer::new(&cluster, &config, codec.clone()).expect("producer"),
        Copier(seen.clone()),
        &[INPUT.to_owned()],
        DEAD_LETTERS.to_owned(),
        StageOptions {
            min_backoff: Duration::from_millis(10),
            ..StageOptions::default()
        },
    )
    .expect("stage");
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
