//! `tidings bench`'s raw Kafka baseline: records of about a pipeline
//! record's size produced and consumed back on the same kind of cluster,
//! with the pipeline's producer and a consumer set up as a stage's, and
//! nothing else. It tells how much of Kafka's own record rate the pipeline
//! reaches, as the bare client tells it for the provider.
//!
//! On the embedded cluster it waits for room as the pipeline's writers do
//! ([`tidings_kafka::backlog`]): the mock broker drops a partition's oldest
//! records beyond a few MiB, read or not, so a producer running ahead of its
//! consumer would lose records and the baseline would stall on them.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, stream::FuturesUnordered};
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    message::BorrowedMessage,
};
use tidings_config::KafkaConfig;
use tidings_kafka::{
    AvroProducer, Handling, KafkaCluster, OutRecord, StageOptions, TopicSpec,
    backlog::{self, Backlog},
};
use tidings_schemas::AvroCodec;
use tokio_util::sync::CancellationToken;

use crate::bench_providers;

/// How long the consumer may go without a record before the baseline
/// fails: long enough for a real cluster's hiccups, short enough that a
/// lost record does not hang the bench.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Records handed over together, as a stage hands over a batch's outputs.
const BATCH_RECORDS: usize = 500;

/// Deliveries awaited at once: bounds the futures held for a long run, far
/// below the producer's `queue.buffering.max.messages`.
const MAX_IN_FLIGHT: usize = 100_000;

/// Bytes of filler the records' values are cut from at shifting offsets, so
/// lz4 finds no more to squeeze out of them than the same bytes repeated.
const FILLER_BYTES: usize = 64 * 1024;

/// What the raw baseline measured.
#[derive(Debug, Clone, PartialEq)]
pub struct RawKafka {
    /// Records the brokers acknowledged (acks=all).
    pub produced: usize,
    /// Records the consumer read back; the run fails unless it is
    /// `produced`.
    pub consumed: usize,
    /// Value bytes per record.
    pub record_bytes: usize,
    /// From the first produce to the last record read back.
    pub elapsed: Duration,
    /// This process's CPU time (all threads) over `elapsed`.
    pub cpu: Duration,
    /// Records per second, each produced and consumed once.
    pub rate: f64,
    pub cpu_us_per_record: f64,
}

impl RawKafka {
    /// The report line's text after its label.
    pub fn text(&self) -> String {
        format!(
            "{:.0} records/s produced and consumed, {:.1} us CPU per record ({} records of {} bytes, same cluster kind)",
            self.rate, self.cpu_us_per_record, self.produced, self.record_bytes
        )
    }
}

/// Produces `records` records of `record_bytes` value bytes, keyed over
/// `key_count` keys as notifications are over users, and consumes them all
/// back, on a cluster handle of its own: a fresh mock cluster on the
/// embedded default, the configured brokers otherwise (a scratch topic
/// there). Producing and consuming overlap, as they do in the pipeline.
pub async fn raw_kafka(
    kafka: &KafkaConfig,
    records: usize,
    record_bytes: usize,
    key_count: usize,
) -> Result<RawKafka> {
    if records == 0 || key_count == 0 {
        bail!("the raw Kafka baseline needs at least one record and one key");
    }
    // Declared first, so dropped last: the embedded brokers must outlive
    // every client.
    let cluster = KafkaCluster::connect(kafka)
        .await
        .context("connecting to Kafka for the raw baseline (kafka.bootstrap_servers)")?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    // Under the deployment's prefix, where its ACLs allow topics. The crate
    // offers no topic deletion, so on real brokers the scratch topic stays
    // behind (keeping its records for an hour), as do its group's committed
    // offsets until the brokers expire them.
    let topic = format!("{}.bench.raw-kafka-{run_id}", kafka.topic_prefix);
    let spec = TopicSpec {
        name: topic.clone(),
        partitions: kafka.partitions,
        retention_ms: 3_600_000,
        record: "raw bytes",
        key: "user id",
    };
    cluster
        .ensure_topics(kafka, &[spec])
        .await
        .with_context(|| format!("creating the raw baseline's topic {topic}"))?;
    // The pipeline's producer; the codec goes unused, as values are raw.
    let producer = AvroProducer::new(&cluster, kafka, AvroCodec::local())
        .context("creating the raw baseline's producer")?;
    let keys: Vec<String> = (0..key_count)
        .map(|i| format!("bench-{run_id}-{i}"))
        .collect();
    let longest_key = keys.iter().map(String::len).max().unwrap_or(0);
    if longest_key + record_bytes > producer.max_record_bytes() {
        bail!(
            "raw baseline records of {record_bytes} bytes exceed the producer's {} (kafka.max_message_bytes)",
            producer.max_record_bytes()
        );
    }
    let group = format!("{}.bench-raw-kafka-{run_id}", kafka.group_prefix);
    let consumer = stage_consumer(kafka, &cluster, &group)?;
    // What the consumer takes is counted as a stage's is, so the producer
    // waits for room where the pipeline's writers would.
    let reader = cluster.backlog().map(|backlog| {
        backlog.register(&group, std::slice::from_ref(&topic));
        Reader { backlog, group }
    });
    // Read from the start without joining a group: a rebalance's delay is
    // not the record rate, and the fetches are a stage's all the same.
    let mut partitions = TopicPartitionList::new();
    for partition in 0..kafka.partitions {
        partitions
            .add_partition_offset(&topic, partition, Offset::Beginning)
            .context("listing the raw baseline's partitions")?;
    }
    consumer
        .assign(&partitions)
        .context("assigning the raw baseline's partitions")?;

    // Warm up, as the pipeline's bench does: one record through before the
    // clock starts, so the producer id, metadata and first fetch are not
    // timed.
    let warm = OutRecord {
        topic: topic.clone(),
        key: keys[0].clone(),
        payload: Vec::new(),
        handling: Handling::First,
        label: None,
    };
    producer
        .send_raw(&warm)
        .await
        .context("producing the raw baseline's warm-up record")?;
    // Errors meanwhile are reports librdkafka recovers from, as in
    // `consume`; the last is kept for the message should the record not come.
    let warm_deadline = tokio::time::Instant::now() + STALL_TIMEOUT;
    let mut last_error = None;
    loop {
        match tokio::time::timeout_at(warm_deadline, consumer.recv()).await {
            Ok(Ok(message)) => {
                if let Some(reader) = &reader {
                    reader.took(&message);
                }
                break;
            }
            Ok(Err(e)) => last_error = Some(e.to_string()),
            Err(_) => bail!(
                "the raw baseline's warm-up record did not come back within {} s{}",
                STALL_TIMEOUT.as_secs(),
                last_error_suffix(last_error.as_deref())
            ),
        }
    }

    let filler: Vec<u8> = std::iter::repeat_with(|| *uuid::Uuid::new_v4().as_bytes())
        .flatten()
        .take(FILLER_BYTES + record_bytes)
        .collect();
    let cpu_before = bench_providers::process_cpu();
    let started = Instant::now();
    let consuming = tokio::spawn(consume(consumer, reader, records, record_bytes));
    let produced = match produce(&producer, &topic, &keys, &filler, records, record_bytes).await {
        Ok(produced) => produced,
        Err(e) => {
            // Waits for the consumer to be dropped, before the cluster is.
            consuming.abort();
            let _ = consuming.await;
            return Err(e);
        }
    };
    let consumed = consuming
        .await
        .context("the raw baseline's consumer panicked")??;
    let elapsed = started.elapsed();
    let cpu = bench_providers::process_cpu().saturating_sub(cpu_before);
    Ok(RawKafka {
        produced,
        consumed,
        record_bytes,
        elapsed,
        cpu,
        rate: consumed as f64 / elapsed.as_secs_f64(),
        cpu_us_per_record: cpu.as_secs_f64() * 1e6 / consumed.max(1) as f64,
    })
}

/// The baseline consumer's group in the embedded cluster's backlog.
struct Reader {
    backlog: Arc<Backlog>,
    group: String,
}

impl Reader {
    fn took(&self, m: &BorrowedMessage<'_>) {
        self.backlog.taken(
            &self.group,
            m.topic(),
            m.partition(),
            backlog::record_bytes(m.key_len(), m.payload_len()),
        );
    }
}

/// A consumer with a stage's settings: what the pipeline's fetches cost is
/// what this one's cost.
fn stage_consumer(
    kafka: &KafkaConfig,
    cluster: &KafkaCluster,
    group: &str,
) -> Result<StreamConsumer> {
    let options = StageOptions::default();
    tidings_kafka::stage::consumer_config(
        cluster,
        kafka,
        group,
        options.max_poll_interval,
        options.pickup,
    )
    .create()
    .context("creating the raw baseline's consumer")
}

/// Hands the records to the producer as a stage hands over its outputs, a
/// batch at a time once the topic has room for it, and waits until the
/// brokers have them all.
async fn produce(
    producer: &AvroProducer,
    topic: &str,
    keys: &[String],
    filler: &[u8],
    records: usize,
    record_bytes: usize,
) -> Result<usize> {
    let window = filler.len() - record_bytes;
    // Nothing stops the baseline midway but an error.
    let never = CancellationToken::new();
    let mut batches = FuturesUnordered::new();
    let mut produced = 0;
    let mut n = 0;
    while n < records {
        let batch: Vec<OutRecord> = (n..records.min(n + BATCH_RECORDS))
            .map(|n| {
                // A prime stride, so neighbouring records differ.
                let at = n * 4099 % window;
                OutRecord {
                    topic: topic.to_owned(),
                    key: keys[n % keys.len()].clone(),
                    payload: filler[at..at + record_bytes].to_vec(),
                    handling: Handling::First,
                    label: None,
                }
            })
            .collect();
        n += batch.len();
        let adding: u64 = batch
            .iter()
            .map(|r| backlog::record_bytes(r.key.len(), r.payload.len()))
            .sum();
        producer
            .room_for(topic, adding, None, &never, |_| {})
            .await
            .context("waiting for room on the embedded cluster")?;
        let handover = producer.enqueue_all(&batch);
        batches.push(async move { producer.acknowledged(handover, &batch).await });
        while batches.len() * BATCH_RECORDS >= MAX_IN_FLIGHT {
            if let Some(outcomes) = batches.next().await {
                produced += acknowledged(outcomes)?;
            }
        }
    }
    while let Some(outcomes) = batches.next().await {
        produced += acknowledged(outcomes)?;
    }
    Ok(produced)
}

/// How many of a batch's records the brokers have, or the first failure.
fn acknowledged(outcomes: Vec<Result<(), tidings_kafka::KafkaError>>) -> Result<usize> {
    let n = outcomes.len();
    for outcome in outcomes {
        outcome.context("producing a raw baseline record")?;
    }
    Ok(n)
}

/// Reads until `records` records of `record_bytes` came back, storing
/// offsets as a stage does; fails when none comes for [`STALL_TIMEOUT`].
async fn consume(
    consumer: StreamConsumer,
    reader: Option<Reader>,
    records: usize,
    record_bytes: usize,
) -> Result<usize> {
    let mut consumed = 0;
    let mut last_error = None;
    while consumed < records {
        match tokio::time::timeout(STALL_TIMEOUT, consumer.recv()).await {
            Ok(Ok(message)) => {
                // Refused only for a partition no longer assigned, which
                // an assignment without a group never loses.
                let _ = consumer.store_offset_from_message(&message);
                if let Some(reader) = &reader {
                    reader.took(&message);
                }
                if message.payload_len() != record_bytes {
                    bail!(
                        "a raw baseline record came back with {} bytes, not {record_bytes}",
                        message.payload_len()
                    );
                }
                consumed += 1;
            }
            // Reports librdkafka queued while it recovers, as a stage
            // sees them; kept for the message should the records stop.
            Ok(Err(e)) => last_error = Some(e.to_string()),
            Err(_) => bail!(
                "the raw Kafka baseline stalled: {consumed} of {records} records came back, none in the last {} s{}",
                STALL_TIMEOUT.as_secs(),
                last_error_suffix(last_error.as_deref())
            ),
        }
    }
    Ok(consumed)
}

/// The stall messages' tail: the last error the consumer reported, if any.
fn last_error_suffix(last_error: Option<&str>) -> String {
    last_error
        .map(|e| format!(" (last consumer error: {e})"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the embedded default: every record comes back, and the rate and
    /// CPU are measured.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raw_kafka_reads_back_every_record_embedded() {
        let raw = raw_kafka(&KafkaConfig::default(), 2_000, 100, 10)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        println!("  raw kafka       {}", raw.text());
        assert_eq!(raw.produced, 2_000);
        assert_eq!(raw.consumed, raw.produced);
        assert_eq!(raw.record_bytes, 100);
        assert!(raw.rate > 0.0, "{raw:?}");
        assert!(raw.cpu_us_per_record > 0.0, "{raw:?}");
    }

    /// Far more than the mock broker keeps of a partition (5 MiB) goes
    /// through one partition, and none of it is lost: the producer waits for
    /// the consumer instead of running ahead until the oldest records are
    /// dropped (a 100,000-notification `tidings bench` stalled on that,
    /// 317,985 of 499,000 records back; this test without the wait, 91,379
    /// of 100,000).
    // One thread: the consumer's task reads only while the producer waits,
    // so a producer that never waited for room would run far ahead of it.
    #[tokio::test(flavor = "current_thread")]
    async fn raw_kafka_loses_nothing_beyond_what_the_mock_keeps() {
        let kafka = KafkaConfig {
            partitions: 1,
            ..KafkaConfig::default()
        };
        let (records, bytes) = (100_000, 400);
        // More than the consumer's read-ahead (queued.max.messages.kbytes,
        // 16 MiB) and the mock's 5 MiB together.
        assert!(records * bytes > (16 << 20) + backlog::MOCK_PARTITION_BYTES as usize);
        let raw = raw_kafka(&kafka, records, bytes, 10)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(raw.produced, records);
        assert_eq!(raw.consumed, records);
    }
}
