//! The embedded brokers drop a partition's oldest records beyond 5 MiB,
//! read or not. Nothing accepted may be lost that way: with the last stage
//! of a chain held, 32 MiB written into the chain's head reach that stage
//! whole once it is released, because the writers waited for room instead.
//! (Without the wait they would not: the held stage's consumer reads up to
//! 16 MiB ahead into its own memory, and the mock keeps 5 MiB more.)

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use tidings_config::KafkaConfig;
use tidings_kafka::{
    Assignment, AvroProducer, Emitter, KafkaCluster, ProcessError, Processor, RecordMeta, Stage,
    StageOptions, backlog::record_bytes,
};
use tidings_schemas::{
    AvroCodec,
    records::{TrackingEvent, TrackingKind},
};
use tokio_util::sync::CancellationToken;

mod common;

const HEAD: &str = "b.head";
const TAIL: &str = "b.tail";
const DEAD_LETTERS: &str = "b.deadletter";
/// 4,096 records of 8 KiB that LZ4 cannot shrink: 32 MiB, more than the
/// held stage's consumer reads ahead and the mock keeps together.
const RECORDS: usize = 4096;
const DETAIL_BYTES: usize = 8 << 10;
const WAIT: Duration = Duration::from_secs(120);

fn config() -> KafkaConfig {
    KafkaConfig {
        group_prefix: "backlog-test".into(),
        ..KafkaConfig::default()
    }
}

/// Record `i`, its detail pseudo-random hex.
fn event(i: usize) -> TrackingEvent {
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let detail: String = (0..DETAIL_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x % 16) as u32, 16).unwrap()
        })
        .collect();
    TrackingEvent {
        event_id: format!("event-{i}"),
        notification_id: format!("n-{i}"),
        user_id: format!("user-{}", i % 13),
        kind: TrackingKind::Sent,
        channel: None,
        target: None,
        template_name: None,
        stage: "test".into(),
        detail: Some(detail),
        at: 0,
        dispatched_at: None,
    }
}

/// Copies the head to the tail.
struct Copy;

#[async_trait]
impl Processor for Copy {
    type Input = TrackingEvent;
    type Prefetched = ();

    fn name(&self) -> &'static str {
        "copy"
    }

    async fn process(
        &self,
        input: &TrackingEvent,
        _batch: &(),
        _meta: &RecordMeta,
        out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        out.emit(TAIL, &input.user_id, input)
    }
}

/// Reads the tail, holding every record (a retriable failure) until
/// released; then notes each event id.
#[derive(Default)]
struct Sink {
    released: AtomicBool,
    seen: Mutex<HashSet<String>>,
}

struct Held(Arc<Sink>);

#[async_trait]
impl Processor for Held {
    type Input = TrackingEvent;
    type Prefetched = ();

    fn name(&self) -> &'static str {
        "held"
    }

    async fn process(
        &self,
        input: &TrackingEvent,
        _batch: &(),
        _meta: &RecordMeta,
        _out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        if !self.0.released.load(Ordering::SeqCst) {
            return Err(ProcessError::retriable("held"));
        }
        self.0.seen.lock().unwrap().insert(input.event_id.clone());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_reader_loses_nothing_when_more_than_the_mock_keeps_is_written() {
    let cluster = KafkaCluster::start_embedded().expect("embedded brokers");
    let config = config();
    common::create_topics(&cluster, &config, &[HEAD, TAIL, DEAD_LETTERS], 1).await;
    let codec = AvroCodec::local();
    let producer = AvroProducer::new(&cluster, &config, codec.clone()).expect("producer");
    let options = StageOptions {
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        ..StageOptions::default()
    };
    let sink = Arc::new(Sink::default());
    let shutdown = CancellationToken::new();
    let mut stages = Vec::new();
    let mut assignments = Vec::new();
    for stage in [
        Stage::new(
            &cluster,
            &config,
            producer.clone(),
            Copy,
            &[HEAD.to_owned()],
            DEAD_LETTERS.to_owned(),
            options.clone(),
        )
        .map(|s| {
            assignments.push(s.assignment());
            tokio::spawn(s.run(shutdown.clone()))
        }),
        Stage::new(
            &cluster,
            &config,
            producer.clone(),
            Held(sink.clone()),
            &[TAIL.to_owned()],
            DEAD_LETTERS.to_owned(),
            options.clone(),
        )
        .map(|s| {
            assignments.push(s.assignment());
            tokio::spawn(s.run(shutdown.clone()))
        }),
    ] {
        stages.push(stage.expect("stage"));
    }

    // Both stages hold their partition before anything is written.
    for mut assignment in assignments {
        tokio::time::timeout(
            WAIT,
            assignment.wait_for(|a| matches!(a, Assignment::Assigned { partitions: 1 })),
        )
        .await
        .expect("assigned in time")
        .expect("assignment");
    }

    // The writer waits for room as the gateway does, 32 records a call.
    let waits = Arc::new(AtomicUsize::new(0));
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (producer, codec, waits, written) = (
            producer.clone(),
            codec.clone(),
            waits.clone(),
            written.clone(),
        );
        tokio::spawn(async move {
            let never = CancellationToken::new();
            for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(32) {
                let records: Vec<_> = chunk
                    .iter()
                    .map(|i| {
                        let e = event(*i);
                        let payload = codec.encode(&e).expect("encode");
                        tidings_kafka::OutRecord {
                            topic: HEAD.into(),
                            key: e.user_id,
                            payload,
                            handling: tidings_kafka::Handling::First,
                            label: None,
                        }
                    })
                    .collect();
                let adding = records
                    .iter()
                    .map(|r| record_bytes(r.key.len(), r.payload.len()))
                    .sum();
                producer
                    .room_for(HEAD, adding, None, &never, |_| {
                        waits.fetch_add(1, Ordering::SeqCst);
                    })
                    .await
                    .expect("room");
                producer.send_all(&records).await.expect("written");
                written.fetch_add(records.len(), Ordering::SeqCst);
            }
        })
    };

    // The tail is held until the writer finished or made no progress for
    // a second: with the waits in place it comes to a stop at the marks;
    // without them it writes all 32 MiB past the held reader.
    let started = Instant::now();
    let mut last = (0, Instant::now());
    while !writer.is_finished() {
        assert!(
            started.elapsed() < WAIT,
            "the writer neither finished nor stopped"
        );
        let now = written.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(waits.load(Ordering::SeqCst) > 0, "the writer never waited");
    let backlog = cluster.backlog().expect("embedded");
    let (_, tail) = backlog.fullest(TAIL).expect("the tail is read");
    assert!(
        tail.bytes <= backlog.marks().bytes + (64 << 10),
        "the tail holds {} unread bytes, over the mark",
        tail.bytes
    );
    assert!(written.load(Ordering::SeqCst) < RECORDS);

    sink.released.store(true, Ordering::SeqCst);
    writer.await.expect("writer");
    let started = Instant::now();
    while sink.seen.lock().unwrap().len() < RECORDS {
        assert!(
            started.elapsed() < WAIT,
            "the held reader saw {} of {RECORDS} records",
            sink.seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    for stage in stages {
        stage.await.expect("stage task").expect("stage");
    }
    let seen = sink.seen.lock().unwrap();
    assert!((0..RECORDS).all(|i| seen.contains(&format!("event-{i}"))));
}
