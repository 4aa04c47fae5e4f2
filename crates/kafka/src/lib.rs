//! Kafka plumbing: client configuration, topics, Avro producer and consumer, the embedded mock cluster
