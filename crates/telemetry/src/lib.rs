//! Logging and Prometheus metrics
