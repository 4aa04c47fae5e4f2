//! tidings: a notification and news-feed platform built as a Kafka
//! stream-processing pipeline.
//!
//! This crate wires the pieces into processes: [`runtime::Runtime`] connects
//! Kafka (or starts the embedded mock cluster) and the store, and starts the
//! gateway and the stages; the `tidings` binary puts a CLI on top.

pub mod bench;
pub mod bench_feed;
pub mod bench_inbox;
pub mod bench_kafka;
pub mod bench_providers;
pub mod client;
pub mod dlq;
pub mod inbox_cli;
pub mod progress;
pub mod runtime;
pub mod top;
