//! Topics created on the test Kafka (`scripts/servers.sh up`;
//! `TIDINGS_TEST_KAFKA`, default 127.0.0.1:19092) are led when
//! `ensure_topics` returns: every partition answers for its offsets at once,
//! where right after creation brokers answer NotLeaderForPartition for a
//! moment (which producers retry with backoff, stalling a first burst).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use tidings_config::KafkaConfig;
use tidings_kafka::{KafkaCluster, now_millis};

mod common;

const TOPICS: usize = 6;
const PARTITIONS: i32 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_topics_are_led_when_ensure_topics_returns() {
    let config = KafkaConfig {
        bootstrap_servers: std::env::var("TIDINGS_TEST_KAFKA")
            .unwrap_or_else(|_| "127.0.0.1:19092".into()),
        ..KafkaConfig::default()
    };
    let cluster = KafkaCluster::connect(&config).await.expect(
        "the test Kafka (start it with `scripts/servers.sh up`; \
         `eval \"$(scripts/servers.sh env)\"` names it)",
    );
    let prefix = format!("topics-test.{}.{}", std::process::id(), now_millis());
    let names: Vec<String> = (0..TOPICS).map(|i| format!("{prefix}.t{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    common::create_topics(&cluster, &config, &refs, PARTITIONS).await;

    let consumer: BaseConsumer = cluster
        .client_config(&config)
        .create()
        .expect("metadata client");
    let unled = tokio::task::spawn_blocking(move || {
        let mut unled = Vec::new();
        for topic in &names {
            for partition in 0..PARTITIONS {
                // Asked once, no retries: each must answer now.
                if let Err(e) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(5))
                {
                    unled.push(format!("{topic}/{partition}: {e}"));
                }
            }
        }
        unled
    })
    .await
    .expect("watermarks");
    assert!(unled.is_empty(), "partitions without a leader: {unled:?}");
}
