//! Producing Avro records durably: acks=all with the idempotent producer, and
//! a send that returns only once the brokers have the record. Records are
//! bounded by `kafka.max_message_bytes`, the producer's `message.max.bytes`
//! and the `max.message.bytes` of the topics `tidings init` creates.

use std::time::Duration;

use futures::{
    FutureExt,
    future::{BoxFuture, try_join_all},
};
use rdkafka::{
    error::KafkaError as RdKafkaError,
    message::Header,
    producer::{FutureProducer, FutureRecord, Producer, future_producer::OwnedDeliveryResult},
    util::Timeout,
};
use tidings_config::KafkaConfig;
use tidings_schemas::{AvroCodec, AvroRecord, Label};

use crate::{
    KafkaCluster, KafkaError,
    handling::{Handling, maybe_repeat_headers},
};

/// Bytes of `kafka.max_message_bytes` kept for what Kafka adds around a
/// record's key and value (record, batch and request headers), so that a
/// record under [`AvroProducer::max_record_bytes`] fits whatever librdkafka
/// and the broker count.
pub const RECORD_OVERHEAD_BYTES: usize = 512;

/// One encoded record, ready to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    /// [`Handling::MaybeRepeat`] goes out as the [`MAYBE_REPEAT_HEADER`].
    pub handling: Handling,
    /// The record's own [`Label`] ([`AvroRecord::label`]), a header too.
    pub label: Option<Label>,
}

impl OutRecord {
    /// Key and value bytes, what [`AvroProducer::max_record_bytes`] bounds.
    pub fn size(&self) -> usize {
        self.key.len() + self.payload.len()
    }
}

/// Where a produced record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// A producer of Avro records in the Confluent wire format. Cheap to clone.
#[derive(Clone)]
pub struct AvroProducer {
    producer: FutureProducer,
    codec: AvroCodec,
    timeout: Duration,
    max_message_bytes: usize,
}

impl AvroProducer {
    pub fn new(
        cluster: &KafkaCluster,
        config: &KafkaConfig,
        codec: AvroCodec,
    ) -> Result<Self, KafkaError> {
        let mut c = cluster.client_config(config);
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "1000000")
            .set("message.timeout.ms", config.produce_timeout_ms.to_string())
            .set("message.max.bytes", config.max_message_bytes.to_string());
        let producer = c.create().map_err(|e| KafkaError::client("producer", e))?;
        Ok(Self {
            producer,
            codec,
            timeout: Duration::from_millis(config.produce_timeout_ms),
            max_message_bytes: config.max_message_bytes,
        })
    }

    /// The largest key plus value this producer sends: `kafka.max_message_bytes`
    /// less [`RECORD_OVERHEAD_BYTES`]. A larger record can never be produced,
    /// however often it is retried.
    pub fn max_record_bytes(&self) -> usize {
        self.max_message_bytes.saturating_sub(RECORD_OVERHEAD_BYTES)
    }

    pub fn codec(&self) -> &AvroCodec {
        &self.codec
    }

    /// Encodes a record for `topic`.
    pub fn encode<T: AvroRecord>(
        &self,
        topic: &str,
        key: &str,
        record: &T,
    ) -> Result<OutRecord, KafkaError> {
        let payload = self
            .codec
            .encode(record)
            .map_err(|source| KafkaError::Encode {
                topic: topic.to_owned(),
                source,
            })?;
        Ok(OutRecord {
            topic: topic.to_owned(),
            key: key.to_owned(),
            payload,
            handling: Handling::First,
            label: record.label(),
        })
    }

    /// Produces one record and waits until every in-sync replica has it.
    pub async fn send<T: AvroRecord>(
        &self,
        topic: &str,
        key: &str,
        record: &T,
    ) -> Result<Delivered, KafkaError> {
        let out = self.encode(topic, key, record)?;
        self.send_raw(&out).await
    }

    /// Produces already-encoded records concurrently and waits for all of
    /// them. Records with the same key keep their order (idempotent producer).
    pub async fn send_all(&self, records: &[OutRecord]) -> Result<Vec<Delivered>, KafkaError> {
        try_join_all(records.iter().map(|r| self.send_raw(r))).await
    }

    /// Hands `record` to the producer now, unless its local queue is full
    /// (then the returned future waits for room, as [`send_raw`] does), and
    /// returns a future for its delivery. Records enqueued one after another
    /// keep their order, so a caller can enqueue a batch's outputs and go on
    /// to the next batch while the brokers acknowledge them.
    ///
    /// [`send_raw`]: AvroProducer::send_raw
    pub fn enqueue(&self, record: &OutRecord) -> BoxFuture<'_, Result<Delivered, KafkaError>> {
        match self.producer.send_result(future_record(record)) {
            Ok(delivery) => {
                let topic = record.topic.clone();
                async move {
                    match delivery.await {
                        Ok(result) => delivered(&topic, result),
                        // The producer was dropped with the record queued.
                        Err(_) => Err(KafkaError::Produce {
                            topic,
                            source: RdKafkaError::Canceled,
                        }),
                    }
                }
                .boxed()
            }
            Err(_) => {
                let record = record.clone();
                async move { self.send_raw(&record).await }.boxed()
            }
        }
    }

    pub async fn send_raw(&self, record: &OutRecord) -> Result<Delivered, KafkaError> {
        let result = self
            .producer
            .send(future_record(record), Timeout::After(self.timeout))
            .await;
        delivered(&record.topic, result)
    }

    /// The end (high watermark) of `topic`'s `partition` now: the offset
    /// its next record will get. Asks the partition's leader, on a blocking
    /// thread.
    pub async fn end_offset(&self, topic: &str, partition: i32) -> Result<i64, KafkaError> {
        let producer = self.producer.clone();
        let topic = topic.to_owned();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_watermarks(&topic, partition, timeout)
                .map(|(_, end)| end)
        })
        .await
        // Only a panic in librdkafka's call ends the thread early.
        .map_err(|_| KafkaError::Consume(RdKafkaError::Canceled))?
        .map_err(KafkaError::Consume)
    }

    /// Waits for in-flight records, e.g. before shutdown.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

/// `record` as librdkafka takes it, with a header if it may repeat and one
/// for its label.
fn future_record(record: &OutRecord) -> FutureRecord<'_, String, [u8]> {
    let future = FutureRecord::to(&record.topic)
        .key(&record.key)
        .payload(record.payload.as_slice());
    let marked = match record.handling {
        Handling::First => None,
        Handling::MaybeRepeat => Some(maybe_repeat_headers()),
    };
    let headers = match record.label {
        Some((key, value)) => Some(marked.unwrap_or_default().insert(Header {
            key,
            value: Some(value),
        })),
        None => marked,
    };
    match headers {
        Some(headers) => future.headers(headers),
        None => future,
    }
}

/// Where a record of `topic` landed, or why it did not.
fn delivered(topic: &str, result: OwnedDeliveryResult) -> Result<Delivered, KafkaError> {
    result
        .map(|d| Delivered {
            partition: d.partition,
            offset: d.offset,
        })
        .map_err(|(source, _)| KafkaError::Produce {
            topic: topic.to_owned(),
            source,
        })
}
