//! Logging and metrics for every tidings process.
//!
//! Every metric has one named home in [`Metrics`], registered once in the
//! process-wide Prometheus registry and served at `/metrics`.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tidings_config::{LogFormat, TelemetryConfig};
use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber. `RUST_LOG` overrides the
/// configured filter. Safe to call more than once (tests): later calls are
/// no-ops.
pub fn init_logging(config: &TelemetryConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let _ = match config.log_format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// All metrics of a tidings process.
pub struct Metrics {
    pub registry: Registry,
    /// Records a stage consumed, by stage and outcome (processed,
    /// dead_lettered).
    pub stage_records: IntCounterVec,
    /// Records a stage produced, by stage and topic.
    pub stage_outputs: IntCounterVec,
    /// Processing failures, by stage and whether a retry could help.
    pub stage_errors: IntCounterVec,
    /// Seconds from poll to committed batch, by stage.
    pub stage_batch_seconds: HistogramVec,
    /// Requests accepted by the gateway, by RPC and gRPC code.
    pub gateway_requests: IntCounterVec,
    /// Cached rows the gateway served because the store could not be
    /// reached, by what they are (app, template).
    pub gateway_stale_reads: IntCounterVec,
    /// Consumer lag (high watermark minus committed position), by stage,
    /// topic and partition: the queue-depth signal for scaling workers.
    pub consumer_lag: IntGaugeVec,
    /// Provider outcomes, by provider and outcome (sent, invalid_target,
    /// rejected, transient).
    pub provider_results: IntCounterVec,
    /// 1 while a provider is failing (the developer alert), else 0.
    pub provider_failing: IntGaugeVec,
    /// Deliveries a sender found in flight at a crash (intent marked, not
    /// marked sent), by stage and decision (resent, skipped).
    pub sender_uncertain: IntCounterVec,
    /// Seconds to answer one feed page (the design's feed-refresh latency).
    pub feed_read_seconds: Histogram,
    /// Feed entries the fan-out wrote (pushed), and posts left to be pulled
    /// at read time, by outcome (pushed, pulled_post).
    pub feed_fanout: IntCounterVec,
}

impl Metrics {
    fn new() -> Self {
        let registry =
            Registry::new_custom(Some("tidings".into()), None).unwrap_or_else(|_| Registry::new());
        let stage_records = IntCounterVec::new(
            Opts::new(
                "stage_records_total",
                "Records consumed by a stage, by outcome",
            ),
            &["stage", "outcome"],
        );
        let stage_outputs = IntCounterVec::new(
            Opts::new(
                "stage_outputs_total",
                "Records produced by a stage, by topic",
            ),
            &["stage", "topic"],
        );
        let stage_errors = IntCounterVec::new(
            Opts::new(
                "stage_errors_total",
                "Processing failures, by whether a retry could help",
            ),
            &["stage", "retriable"],
        );
        let stage_batch_seconds = HistogramVec::new(
            HistogramOpts::new(
                "stage_batch_seconds",
                "Time to process and commit one batch",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["stage"],
        );
        let gateway_requests = IntCounterVec::new(
            Opts::new(
                "gateway_requests_total",
                "Gateway calls, by method and status code",
            ),
            &["method", "code"],
        );
        let gateway_stale_reads = IntCounterVec::new(
            Opts::new(
                "gateway_stale_reads_total",
                "Cached rows served while the store was unreachable, by what they are",
            ),
            &["what"],
        )
        .expect("valid metric");
        let consumer_lag = IntGaugeVec::new(
            Opts::new("consumer_lag", "Records waiting per partition"),
            &["stage", "topic", "partition"],
        );
        let provider_results = IntCounterVec::new(
            Opts::new("provider_results_total", "Provider calls, by outcome"),
            &["provider", "outcome"],
        )
        .expect("valid metric");
        let provider_failing = IntGaugeVec::new(
            Opts::new(
                "provider_failing",
                "1 while a provider fails repeatedly (developer alert)",
            ),
            &["provider"],
        )
        .expect("valid metric");
        let sender_uncertain = IntCounterVec::new(
            Opts::new(
                "sender_uncertain_total",
                "Deliveries found in flight at a sender crash, by decision",
            ),
            &["stage", "decision"],
        )
        .expect("valid metric");
        let feed_read_seconds = Histogram::with_opts(
            HistogramOpts::new("feed_read_seconds", "Time to answer one feed page").buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
        )
        .expect("valid metric");
        let feed_fanout = IntCounterVec::new(
            Opts::new(
                "feed_fanout_total",
                "Feed entries pushed, and posts left to be pulled at read time",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        // The names and labels above are constants; failing here is a defect
        // caught by the test below, not a runtime condition.
        let (
            stage_records,
            stage_outputs,
            stage_errors,
            stage_batch_seconds,
            gateway_requests,
            consumer_lag,
        ) = (
            stage_records.expect("valid metric"),
            stage_outputs.expect("valid metric"),
            stage_errors.expect("valid metric"),
            stage_batch_seconds.expect("valid metric"),
            gateway_requests.expect("valid metric"),
            consumer_lag.expect("valid metric"),
        );
        for c in [
            Box::new(stage_records.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(stage_outputs.clone()),
            Box::new(stage_errors.clone()),
            Box::new(stage_batch_seconds.clone()),
            Box::new(gateway_requests.clone()),
            Box::new(gateway_stale_reads.clone()),
            Box::new(consumer_lag.clone()),
            Box::new(provider_results.clone()),
            Box::new(provider_failing.clone()),
            Box::new(sender_uncertain.clone()),
            Box::new(feed_read_seconds.clone()),
            Box::new(feed_fanout.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            stage_records,
            stage_outputs,
            stage_errors,
            stage_batch_seconds,
            gateway_requests,
            gateway_stale_reads,
            consumer_lag,
            provider_results,
            provider_failing,
            sender_uncertain,
            feed_read_seconds,
            feed_fanout,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register_and_render() {
        let m = metrics();
        m.stage_records
            .with_label_values(&["enricher", "processed"])
            .inc_by(3);
        let text = m.render();
        assert!(
            text.contains(
                "tidings_stage_records_total{outcome=\"processed\",stage=\"enricher\"} 3"
            ),
            "{text}"
        );
    }
}
