use std::time::Duration;

use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};

/// Kafka failures, with what was being done and whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("Kafka at {servers} did not answer within {timeout:?}: {reason}")]
    Unreachable {
        servers: String,
        timeout: Duration,
        reason: String,
    },
    #[error("cannot create Kafka {what}: {source}")]
    Client {
        what: &'static str,
        source: RdKafkaError,
    },
    #[error("cannot create topic {topic}: {code}")]
    CreateTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("producing to {topic} failed: {source}")]
    Produce { topic: String, source: RdKafkaError },
    #[error("encoding a record for {topic} failed: {source}")]
    Encode {
        topic: String,
        source: tidings_schemas::CodecError,
    },
    #[error("consuming failed: {0}")]
    Consume(RdKafkaError),
    #[error("embedded Kafka: {0}")]
    Embedded(String),
}

impl KafkaError {
    pub(crate) fn client(what: &'static str, source: RdKafkaError) -> Self {
        Self::Client { what, source }
    }

    /// Whether the same operation could succeed later.
    pub fn is_retriable(&self) -> bool {
        match self {
            KafkaError::Unreachable { .. } | KafkaError::Consume(_) => true,
            KafkaError::Produce { source, .. } => match source.rdkafka_error_code() {
                Some(code) => !matches!(
                    code,
                    RDKafkaErrorCode::MessageSizeTooLarge
                        | RDKafkaErrorCode::InvalidMessage
                        | RDKafkaErrorCode::TopicAuthorizationFailed
                        | RDKafkaErrorCode::UnknownTopicOrPartition
                ),
                None => true,
            },
            KafkaError::Client { .. }
            | KafkaError::CreateTopic { .. }
            | KafkaError::Encode { .. }
            | KafkaError::Embedded(_) => false,
        }
    }
}
