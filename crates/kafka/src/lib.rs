//! Kafka plumbing shared by the gateway and every processor: where the
//! brokers are (a real cluster or the embedded mock), topic layout, a durable
//! Avro producer, and the stage runner processors are built on.

pub mod backlog;
pub mod backoff;
mod cluster;
mod error;
pub mod handling;
pub mod producer;
pub mod readiness;
pub mod stage;
pub mod topics;

pub use backoff::Backoff;
pub use cluster::{KafkaCluster, is_settling, watermarks};
pub use error::KafkaError;
pub use handling::{Handling, MAYBE_REPEAT_HEADER, is_marked, maybe_repeat_headers};
pub use producer::{AvroProducer, Delivered, Handover, OutRecord, RECORD_OVERHEAD_BYTES};
pub use readiness::{Assignment, StageAssignments};
pub use stage::{
    Emitter, Failure, Pickup, ProcessError, Processor, RecordMeta, Stage, StageOptions, now_millis,
};
pub use topics::{RETRY_TIERS, TopicSpec, Topics};
