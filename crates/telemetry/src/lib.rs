//! Logging and metrics for every tidings process.
//!
//! Every metric has one named home in [`Metrics`], registered once in the
//! process-wide Prometheus registry and served at `/metrics`. Metrics are
//! recorded only through typed events ([`events`], [`StoreCall`],
//! [`StoreStatement`]) whose `emit` fills in the labels, so call sites
//! cannot get their order wrong: the metrics themselves are private.

use std::{sync::OnceLock, time::Duration};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tidings_config::{LogFormat, TelemetryConfig};

pub mod events;
pub use events::*;

/// Counter and gauge handles, for callers that resolve one once and update
/// it often.
pub use prometheus::{IntCounter, IntGauge};
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
    registry: Registry,
    /// Records a stage consumed, by stage and outcome (processed,
    /// dead_lettered, passed_over).
    stage_records: IntCounterVec,
    /// Records a stage produced, by stage and topic.
    stage_outputs: IntCounterVec,
    /// Processing failures, by stage and whether a retry could help.
    stage_errors: IntCounterVec,
    /// Seconds from poll to committed batch, by stage.
    stage_batch_seconds: HistogramVec,
    /// Requests accepted by the gateway, by RPC and gRPC code.
    gateway_requests: IntCounterVec,
    /// Cached rows the gateway served because the store could not be
    /// reached, by what they are (app, template).
    gateway_stale_reads: IntCounterVec,
    /// Consumer lag (high watermark minus committed position), by stage,
    /// topic and partition: the queue-depth signal for scaling workers.
    consumer_lag: IntGaugeVec,
    /// Provider outcomes, by provider and outcome (sent, invalid_target,
    /// rejected, transient).
    provider_results: IntCounterVec,
    /// 1 while a provider is failing (the developer alert), else 0.
    provider_failing: IntGaugeVec,
    /// Deliveries a sender found in flight at a crash (intent marked, not
    /// marked sent), by stage and decision (skipped: only senders with
    /// `uncertain = skip` mark intents).
    sender_uncertain: IntCounterVec,
    /// Times a writer (a stage, or the gateway) waited for its readers to
    /// catch up on the embedded cluster, by writer and topic (see
    /// tidings_kafka::backlog).
    embedded_backlog_waits: IntCounterVec,
    /// Seconds to answer one feed page (the design's feed-refresh latency).
    feed_read_seconds: Histogram,
    /// Feed entries the fan-out wrote (pushed), and posts left to be pulled
    /// at read time, by outcome (pushed, pulled_post, backfilled,
    /// unfollow_removed, cooled_down).
    feed_fanout: IntCounterVec,
    /// Seconds per store call, by engine and operation (`apps.get`, ...):
    /// recorded by [`StoreCall::emit`].
    store_call_seconds: HistogramVec,
    /// Store calls that failed, by engine and operation.
    store_errors: IntCounterVec,
    /// Statements sent to the database, by engine and statement (verb and
    /// table, `INSERT dedupe`): a store call may send many. Counted through
    /// [`StoreStatement::counter`].
    store_statements: IntCounterVec,
    /// The standard `process_*` metrics (CPU, resident memory, open file
    /// descriptors, start time), in a registry of their own: their names
    /// are the conventional ones, without the `tidings_` prefix.
    process: Registry,
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
        let embedded_backlog_waits = IntCounterVec::new(
            Opts::new(
                "embedded_backlog_waits_total",
                "Writes held until the embedded Kafka's readers caught up, by writer and topic",
            ),
            &["writer", "topic"],
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
        let store_call_seconds = HistogramVec::new(
            HistogramOpts::new(
                "store_call_seconds",
                "Time to answer one store call, by engine and operation",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["engine", "operation"],
        )
        .expect("valid metric");
        let store_errors = IntCounterVec::new(
            Opts::new(
                "store_errors_total",
                "Store calls that failed, by engine and operation",
            ),
            &["engine", "operation"],
        )
        .expect("valid metric");
        let store_statements = IntCounterVec::new(
            Opts::new(
                "store_statements_total",
                "Statements sent to the database, by engine and statement (verb and table)",
            ),
            &["engine", "statement"],
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "build_info",
                "1, labelled with the build's version, commit and compiler",
            ),
            &["version", "commit", "rustc"],
        )
        .expect("valid metric");
        // 1, labelled with this build's version, commit and compiler; set
        // once, and kept by the registry.
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                option_env!("TIDINGS_BUILD_COMMIT").unwrap_or("unknown"),
                env!("TIDINGS_RUSTC_VERSION"),
            ])
            .set(1);
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
            Box::new(embedded_backlog_waits.clone()),
            Box::new(feed_read_seconds.clone()),
            Box::new(feed_fanout.clone()),
            Box::new(store_call_seconds.clone()),
            Box::new(store_errors.clone()),
            Box::new(store_statements.clone()),
            Box::new(build_info.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        let process = Registry::new();
        #[cfg(target_os = "linux")]
        process
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("metric names are unique");
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
            embedded_backlog_waits,
            feed_read_seconds,
            feed_fanout,
            store_call_seconds,
            store_errors,
            store_statements,
            process,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&families, &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// One call to the store, timed: `tidings_store_call_seconds` and, when it
/// failed, `tidings_store_errors_total`, by engine (`sqlite`, `scylla`) and
/// operation (`contacts.get_user`, ...).
#[derive(Debug, Clone, Copy)]
pub struct StoreCall {
    pub engine: &'static str,
    pub operation: &'static str,
    pub elapsed: Duration,
    pub failed: bool,
}

impl StoreCall {
    pub fn emit(self) {
        let m = metrics();
        let labels = [self.engine, self.operation];
        m.store_call_seconds
            .with_label_values(&labels)
            .observe(self.elapsed.as_secs_f64());
        // The error series exists from the first call, at 0, so a rate
        // over it (dashboards, alerts) is 0 rather than absent.
        let errors = m.store_errors.with_label_values(&labels);
        if self.failed {
            errors.inc();
        }
    }

    /// How many calls of `operation` on `engine` this process timed so far.
    pub fn count(engine: &str, operation: &str) -> u64 {
        metrics()
            .store_call_seconds
            .with_label_values(&[engine, operation])
            .get_sample_count()
    }
}

/// One kind of statement an engine sends (`INSERT dedupe`): its counter,
/// `tidings_store_statements_total{engine,statement}`, is resolved once,
/// when the statement is prepared, and counted per request after that.
#[derive(Debug, Clone, Copy)]
pub struct StoreStatement<'a> {
    pub engine: &'static str,
    pub statement: &'a str,
}

impl StoreStatement<'_> {
    pub fn counter(self) -> IntCounter {
        metrics()
            .store_statements
            .with_label_values(&[self.engine, self.statement])
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

    #[test]
    fn store_calls_are_timed_and_failures_counted() {
        for failed in [false, true, false] {
            StoreCall {
                engine: "sqlite",
                operation: "test.timed",
                elapsed: Duration::from_millis(3),
                failed,
            }
            .emit();
        }
        let text = metrics().render();
        assert!(
            text.contains(
                "tidings_store_call_seconds_count{engine=\"sqlite\",operation=\"test.timed\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "tidings_store_call_seconds_bucket{engine=\"sqlite\",operation=\"test.timed\",le=\"0.005\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "tidings_store_errors_total{engine=\"sqlite\",operation=\"test.timed\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn build_info_and_process_metrics_are_served() {
        let text = metrics().render();
        let info = text
            .lines()
            .find(|l| l.starts_with("tidings_build_info{"))
            .unwrap_or_else(|| panic!("no build_info: {text}"));
        assert!(info.ends_with(" 1"), "{info}");
        assert!(
            info.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
            "{info}"
        );
        assert!(info.contains("rustc=\"rustc "), "{info}");
        // The conventional names, unprefixed, as dashboards expect them.
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "no {name}: {text}"
            );
        }
    }
}
