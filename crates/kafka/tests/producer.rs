//! The producer on the embedded brokers: a batch handed over together
//! reports each record's outcome in order, a record librdkafka refuses fails
//! alone at its own index, and what was acknowledged is on the topic in the
//! order it was handed over.

use std::time::{Duration, Instant};

use rdkafka::{
    Message,
    consumer::{BaseConsumer, Consumer},
};
use tidings_config::KafkaConfig;
use tidings_kafka::{AvroProducer, Handling, KafkaCluster, OutRecord};
use tidings_schemas::AvroCodec;

mod common;

const TOPIC: &str = "p.out";
const WAIT: Duration = Duration::from_secs(30);

fn config() -> KafkaConfig {
    KafkaConfig {
        group_prefix: "producer-test".into(),
        ..KafkaConfig::default()
    }
}

fn record(key: &str, payload: Vec<u8>) -> OutRecord {
    OutRecord {
        topic: TOPIC.into(),
        key: key.into(),
        payload,
        handling: Handling::First,
        label: None,
    }
}

/// Every record of `TOPIC` (one partition) in offset order, read until
/// its end (high watermark) as it is now.
fn read_to_end(cluster: &KafkaCluster) -> Vec<Vec<u8>> {
    let consumer: BaseConsumer = cluster
        .client_config(&config())
        .set("group.id", "reader")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let (_, end) = consumer
        .fetch_watermarks(TOPIC, 0, Duration::from_secs(10))
        .expect("watermarks");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    let started = Instant::now();
    let mut payloads = Vec::new();
    let mut next = 0;
    while next < end && started.elapsed() < WAIT {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            next = m.offset() + 1;
            payloads.push(m.payload().unwrap_or_default().to_vec());
        }
    }
    assert_eq!(next, end, "read {TOPIC} to its end");
    payloads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reports_each_outcome_in_order_and_a_refused_record_fails_alone() {
    let cluster = KafkaCluster::start_embedded().expect("embedded brokers");
    let config = config();
    common::create_topics(&cluster, &config, &[TOPIC], 1).await;
    let producer = AvroProducer::new(&cluster, &config, AvroCodec::local()).expect("producer");

    // One record in the middle is larger than librdkafka's
    // message.max.bytes: it is refused when handed over.
    const TOO_LARGE: usize = 7;
    let batch: Vec<OutRecord> = (0..20)
        .map(|i| {
            let payload = if i == TOO_LARGE {
                vec![b'x'; config.max_message_bytes + 1]
            } else {
                format!("record {i}").into_bytes()
            };
            record("user-1", payload)
        })
        .collect();
    let handover = producer.enqueue_all(&batch);
    let outcomes = producer.acknowledged(handover, &batch).await;

    assert_eq!(outcomes.len(), batch.len());
    for (i, outcome) in outcomes.iter().enumerate() {
        if i == TOO_LARGE {
            let e = outcome.as_ref().expect_err("the oversized record fails");
            assert!(!e.is_retriable(), "{e}");
            assert!(e.to_string().contains(TOPIC), "{e}");
        } else {
            assert!(outcome.is_ok(), "record {i}: {outcome:?}");
        }
    }

    // A single send after the batch lands after it.
    let last = producer
        .send_raw(&record("user-1", b"last".to_vec()))
        .await
        .expect("single send");
    assert_eq!(last.offset, batch.len() as i64 - 1);

    // An empty batch is acknowledged at once.
    let handover = producer.enqueue_all(&[]);
    assert!(producer.acknowledged(handover, &[]).await.is_empty());
    // So is a batch the brokers took whole, through send_all.
    producer
        .send_all(&[record("user-2", b"after".to_vec())])
        .await
        .expect("send_all");

    let mut want: Vec<Vec<u8>> = (0..20)
        .filter(|i| *i != TOO_LARGE)
        .map(|i| format!("record {i}").into_bytes())
        .collect();
    want.push(b"last".to_vec());
    want.push(b"after".to_vec());
    assert_eq!(tokio::task::block_in_place(|| read_to_end(&cluster)), want);
}
