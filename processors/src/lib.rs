//! Stream processors: enricher, channel senders, retry, tracking, feed fan-out
