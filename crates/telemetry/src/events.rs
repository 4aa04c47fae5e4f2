//! Every metric update as a typed event (Vector's `internal_events`): the
//! event's fields are its labels, by name, and its `emit` is the one place
//! that knows the metric, its label order and how a field becomes a label
//! value. A call site says what happened and cannot get the labels wrong.
//!
//! The few reads (`total`, `current`) are for tests and the benches, which
//! check what a run counted.

use std::time::Duration;

use crate::{IntCounter, IntGauge, metrics};

/// What became of a record a stage consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFate {
    Processed,
    DeadLettered,
    /// Skipped unread: a record the stage has no use for (see
    /// `Processor::PASSES_OVER`).
    PassedOver,
}

impl RecordFate {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::DeadLettered => "dead_lettered",
            Self::PassedOver => "passed_over",
        }
    }
}

/// `count` records a stage consumed met `fate`:
/// `tidings_stage_records_total{stage,outcome}`.
#[derive(Debug, Clone, Copy)]
pub struct StageRecords<'a> {
    pub stage: &'a str,
    pub fate: RecordFate,
    pub count: u64,
}

impl StageRecords<'_> {
    pub fn emit(self) {
        Self::counter(self.stage, self.fate).inc_by(self.count);
    }

    /// The counter, for a stage that resolves it once and counts often.
    pub fn counter(stage: &str, fate: RecordFate) -> IntCounter {
        metrics()
            .stage_records
            .with_label_values(&[stage, fate.as_str()])
    }

    /// What this process counted so far.
    pub fn total(stage: &str, fate: RecordFate) -> u64 {
        Self::counter(stage, fate).get()
    }
}

/// A stage produced `count` records to `topic`:
/// `tidings_stage_outputs_total{stage,topic}`.
#[derive(Debug, Clone, Copy)]
pub struct StageOutputs<'a> {
    pub stage: &'a str,
    pub topic: &'a str,
    pub count: u64,
}

impl StageOutputs<'_> {
    pub fn emit(self) {
        metrics()
            .stage_outputs
            .with_label_values(&[self.stage, self.topic])
            .inc_by(self.count);
    }
}

/// A stage failed to handle a record or a batch, and a retry could or could
/// not help: `tidings_stage_errors_total{stage,retriable}`.
#[derive(Debug, Clone, Copy)]
pub struct StageError<'a> {
    pub stage: &'a str,
    pub retriable: bool,
}

impl StageError<'_> {
    pub fn emit(self) {
        let retriable = if self.retriable { "true" } else { "false" };
        metrics()
            .stage_errors
            .with_label_values(&[self.stage, retriable])
            .inc();
    }
}

/// A stage's batch went from poll to committed in `elapsed`:
/// `tidings_stage_batch_seconds{stage}`.
#[derive(Debug, Clone, Copy)]
pub struct StageBatch<'a> {
    pub stage: &'a str,
    pub elapsed: Duration,
}

impl StageBatch<'_> {
    pub fn emit(self) {
        metrics()
            .stage_batch_seconds
            .with_label_values(&[self.stage])
            .observe(self.elapsed.as_secs_f64());
    }
}

/// Records waiting in one partition for a stage:
/// `tidings_consumer_lag{stage,topic,partition}`.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerLag<'a> {
    pub stage: &'a str,
    pub topic: &'a str,
    pub partition: i32,
}

impl ConsumerLag<'_> {
    pub fn set(self, lag: i64) {
        metrics()
            .consumer_lag
            .with_label_values(&[self.stage, self.topic, &self.partition.to_string()])
            .set(lag);
    }

    /// The partition went to another member, which reports it now.
    pub fn remove(self) {
        let _ = metrics().consumer_lag.remove_label_values(&[
            self.stage,
            self.topic,
            &self.partition.to_string(),
        ]);
    }
}

/// The gateway answered a call, gRPC or HTTP, with `code` (a gRPC code's
/// name, `ok`, or an HTTP status): `tidings_gateway_requests_total{method,code}`.
#[derive(Debug, Clone, Copy)]
pub struct GatewayRequest<'a> {
    pub method: &'a str,
    pub code: &'a str,
}

impl GatewayRequest<'_> {
    pub fn emit(self) {
        metrics()
            .gateway_requests
            .with_label_values(&[self.method, self.code])
            .inc();
    }
}

/// The gateway served a cached row of `what` (app, template) because the
/// store could not be reached: `tidings_gateway_stale_reads_total{what}`.
#[derive(Debug, Clone, Copy)]
pub struct StaleRead<'a> {
    pub what: &'a str,
}

impl StaleRead<'_> {
    pub fn emit(self) {
        metrics()
            .gateway_stale_reads
            .with_label_values(&[self.what])
            .inc();
    }

    pub fn total(what: &str) -> u64 {
        metrics()
            .gateway_stale_reads
            .with_label_values(&[what])
            .get()
    }
}

/// One provider call's outcome (`sent`, `invalid_target`, `rejected`,
/// `transient`, `misconfigured`): `tidings_provider_results_total{provider,outcome}`.
/// A sender counts every call, so it resolves the counter once.
#[derive(Debug, Clone, Copy)]
pub struct ProviderResult<'a> {
    pub provider: &'a str,
    pub outcome: &'a str,
}

impl ProviderResult<'_> {
    pub fn counter(self) -> IntCounter {
        metrics()
            .provider_results
            .with_label_values(&[self.provider, self.outcome])
    }

    /// What this process counted so far.
    pub fn total(self) -> u64 {
        self.counter().get()
    }
}

/// Whether a provider is failing now (the developer alert):
/// `tidings_provider_failing{provider}`, 1 or 0. A sender sets it on every
/// call, so it resolves the gauge once.
#[derive(Debug, Clone, Copy)]
pub struct ProviderFailing<'a> {
    pub provider: &'a str,
}

impl ProviderFailing<'_> {
    pub fn gauge(self) -> IntGauge {
        metrics()
            .provider_failing
            .with_label_values(&[self.provider])
    }

    /// The gauge now: 1 while failing, else 0.
    pub fn current(self) -> i64 {
        self.gauge().get()
    }
}

/// A sender found a delivery in flight at a crash and decided what to do
/// with it (`skipped`: only senders with `uncertain = skip` mark intents):
/// `tidings_sender_uncertain_total{stage,decision}`.
#[derive(Debug, Clone, Copy)]
pub struct SenderUncertain<'a> {
    pub stage: &'a str,
    pub decision: &'a str,
}

impl SenderUncertain<'_> {
    pub fn emit(self) {
        metrics()
            .sender_uncertain
            .with_label_values(&[self.stage, self.decision])
            .inc();
    }
}

/// A writer (a stage, the gateway, the scheduler) waited for the embedded
/// Kafka's readers to catch up on `topic`:
/// `tidings_embedded_backlog_waits_total{writer,topic}`.
#[derive(Debug, Clone, Copy)]
pub struct BacklogWait<'a> {
    pub writer: &'a str,
    pub topic: &'a str,
}

impl BacklogWait<'_> {
    pub fn emit(self) {
        metrics()
            .embedded_backlog_waits
            .with_label_values(&[self.writer, self.topic])
            .inc();
    }
}

/// What the feed's fan-out did with a post for its followers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanoutOutcome {
    /// Feed entries written.
    Pushed,
    /// A post left to be pulled at read time (an author with a huge
    /// audience).
    PulledPost,
    /// Entries written into a new follower's feed.
    Backfilled,
    /// Entries removed after an unfollow.
    UnfollowRemoved,
    /// Authors who fell back under the pull threshold and are pushed again.
    CooledDown,
}

impl FanoutOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pushed => "pushed",
            Self::PulledPost => "pulled_post",
            Self::Backfilled => "backfilled",
            Self::UnfollowRemoved => "unfollow_removed",
            Self::CooledDown => "cooled_down",
        }
    }
}

/// `tidings_feed_fanout_total{outcome}`.
#[derive(Debug, Clone, Copy)]
pub struct FeedFanout {
    pub outcome: FanoutOutcome,
    pub count: u64,
}

impl FeedFanout {
    pub fn emit(self) {
        metrics()
            .feed_fanout
            .with_label_values(&[self.outcome.as_str()])
            .inc_by(self.count);
    }

    pub fn total(outcome: FanoutOutcome) -> u64 {
        metrics()
            .feed_fanout
            .with_label_values(&[outcome.as_str()])
            .get()
    }
}

/// A feed page was answered in `elapsed`: `tidings_feed_read_seconds`.
#[derive(Debug, Clone, Copy)]
pub struct FeedRead {
    pub elapsed: Duration,
}

impl FeedRead {
    pub fn emit(self) {
        metrics()
            .feed_read_seconds
            .observe(self.elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_fill_in_their_labels_by_name() {
        StageRecords {
            stage: "events-test",
            fate: RecordFate::DeadLettered,
            count: 2,
        }
        .emit();
        StageError {
            stage: "events-test",
            retriable: true,
        }
        .emit();
        ConsumerLag {
            stage: "events-test",
            topic: "t",
            partition: 3,
        }
        .set(7);
        ProviderFailing {
            provider: "events-test",
        }
        .gauge()
        .set(1);
        FeedFanout {
            outcome: FanoutOutcome::UnfollowRemoved,
            count: 4,
        }
        .emit();
        let text = metrics().render();
        for line in [
            "tidings_stage_records_total{outcome=\"dead_lettered\",stage=\"events-test\"} 2",
            "tidings_stage_errors_total{retriable=\"true\",stage=\"events-test\"} 1",
            "tidings_consumer_lag{partition=\"3\",stage=\"events-test\",topic=\"t\"} 7",
            "tidings_provider_failing{provider=\"events-test\"} 1",
            "tidings_feed_fanout_total{outcome=\"unfollow_removed\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line}: {text}");
        }
        assert_eq!(
            StageRecords::total("events-test", RecordFate::DeadLettered),
            2
        );
        assert_eq!(
            ProviderFailing {
                provider: "events-test"
            }
            .current(),
            1
        );
        ConsumerLag {
            stage: "events-test",
            topic: "t",
            partition: 3,
        }
        .remove();
        assert!(
            !metrics()
                .render()
                .contains("stage=\"events-test\",topic=\"t\"")
        );
    }
}
