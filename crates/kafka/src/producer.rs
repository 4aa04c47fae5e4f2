//! Producing Avro records durably: acks=all with the idempotent producer, and
//! a send that returns only once the brokers have the record.

use std::time::Duration;

use futures::future::try_join_all;
use rdkafka::{
    producer::{FutureProducer, FutureRecord, Producer},
    util::Timeout,
};
use tidings_config::KafkaConfig;
use tidings_schemas::{AvroCodec, AvroRecord};

use crate::{KafkaCluster, KafkaError};

/// One encoded record, ready to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
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
            .set("message.timeout.ms", config.produce_timeout_ms.to_string());
        let producer = c.create().map_err(|e| KafkaError::client("producer", e))?;
        Ok(Self {
            producer,
            codec,
            timeout: Duration::from_millis(config.produce_timeout_ms),
        })
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

    pub async fn send_raw(&self, record: &OutRecord) -> Result<Delivered, KafkaError> {
        let future = FutureRecord::to(&record.topic)
            .key(&record.key)
            .payload(&record.payload);
        match self
            .producer
            .send(future, Timeout::After(self.timeout))
            .await
        {
            Ok(d) => Ok(Delivered {
                partition: d.partition,
                offset: d.offset,
            }),
            Err((source, _)) => Err(KafkaError::Produce {
                topic: record.topic.clone(),
                source,
            }),
        }
    }

    /// Waits for in-flight records, e.g. before shutdown.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}
