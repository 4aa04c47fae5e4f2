//! `tidings top`: a terminal view of a running deployment, refreshed every
//! few seconds, from the `/metrics` of one or more processes: consumer lag
//! per stage and topic, deliveries and failures per channel, stage errors
//! and dead letters, provider outcomes and store calls. Rates are counter
//! deltas between two scrapes over the time between them; series of several
//! processes are added up (each process reports its own partitions and
//! counts).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{IsTerminal, Write as _},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use prometheus_parse::{Scrape, Value};
use tidings_config::Config;
use tidings_schemas::Channel;

#[derive(Debug, clap::Args)]
pub struct TopOptions {
    /// A process's metrics URL, e.g. http://127.0.0.1:9464/metrics;
    /// repeatable (one per gateway or `tidings process`). Default: this
    /// configuration's telemetry.metrics_addr.
    #[arg(long = "metrics", value_name = "URL")]
    pub metrics: Vec<String>,
    /// Seconds between refreshes; rates are per second over this window.
    #[arg(long, default_value_t = 2.0, value_parser = parse_interval)]
    pub interval: f64,
    /// Print one snapshot (two scrapes --interval apart, for the rates) and
    /// exit, instead of refreshing until Ctrl-C.
    #[arg(long)]
    pub once: bool,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{s}` is not a number of seconds between 0.1 and 3600"
        )),
    }
}

/// Every series of one scrape of every URL: (metric, sorted labels) to the
/// value, added up over the processes.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    series: BTreeMap<(String, Vec<(String, String)>), f64>,
    /// URLs that did not answer, with why.
    pub unreachable: Vec<String>,
}

impl Snapshot {
    /// Adds one process's exposition text.
    pub fn add_text(&mut self, text: &str) -> Result<()> {
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .context("parsing the Prometheus text format")?;
        for sample in scrape.samples {
            let value = match sample.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                // Latencies are read from their _sum and _count series.
                Value::Histogram(_) | Value::Summary(_) => continue,
            };
            if !value.is_finite() {
                continue;
            }
            let mut labels: Vec<(String, String)> = sample
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            *self.series.entry((sample.metric, labels)).or_default() += value;
        }
        Ok(())
    }

    /// The sum of `metric`'s series whose labels match `filter`, grouped by
    /// the values of `by`.
    fn sum_by(
        &self,
        metric: &str,
        by: &[&str],
        filter: impl Fn(&Labels) -> bool,
    ) -> BTreeMap<Vec<String>, f64> {
        let mut groups = BTreeMap::new();
        for ((name, labels), value) in &self.series {
            let labels = Labels(labels);
            if name != metric || !filter(&labels) {
                continue;
            }
            let key = by
                .iter()
                .map(|b| labels.get(b).unwrap_or_default().to_owned())
                .collect();
            *groups.entry(key).or_default() += value;
        }
        groups
    }

    fn total(&self, metric: &str, filter: impl Fn(&Labels) -> bool) -> f64 {
        self.sum_by(metric, &[], filter).into_values().sum()
    }
}

/// A series' labels.
struct Labels<'a>(&'a [(String, String)]);

impl Labels<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn is(&self, name: &str, value: &str) -> bool {
        self.get(name) == Some(value)
    }
}

/// Per-second increase of a counter between two scrapes; a counter that
/// went down (a process restarted) counts from zero.
fn rate(before: f64, after: f64, seconds: f64) -> f64 {
    let delta = if after >= before {
        after - before
    } else {
        after
    };
    if seconds > 0.0 { delta / seconds } else { 0.0 }
}

fn is_retry_topic(topic: &str) -> bool {
    topic.contains(".retry.")
}

fn is_dead_letter_topic(topic: &str) -> bool {
    topic.ends_with(".deadletter")
}

/// The view of two scrapes `seconds` apart.
pub fn render(before: &Snapshot, now: &Snapshot, seconds: f64, urls: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tidings top: {} process(es), rates over {seconds:.1}s",
        urls.len()
    );
    for why in &now.unreachable {
        let _ = writeln!(out, "  unreachable: {why}");
    }

    // Lag: a gauge per partition, added up per stage and topic.
    let _ = writeln!(
        out,
        "\nCONSUMER LAG {:>38} {:>10} {:>10}",
        "", "records", "change/s"
    );
    let lag_before = before.sum_by("tidings_consumer_lag", &["stage", "topic"], |_| true);
    let lag_now = now.sum_by("tidings_consumer_lag", &["stage", "topic"], |_| true);
    if lag_now.is_empty() {
        let _ = writeln!(out, "  (no stage consumer reports lag yet)");
    }
    for (key, lag) in &lag_now {
        let was = lag_before.get(key).copied().unwrap_or(*lag);
        let change = if seconds > 0.0 {
            (lag - was) / seconds
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "  {:<22} {:<27} {lag:>10.0} {change:>+10.1}",
            key[0], key[1]
        );
    }

    // Channels: what each sender stage did with its records.
    let _ = writeln!(
        out,
        "\nCHANNELS {:<12} {:>12} {:>12} {:>12} {:>12}",
        "", "delivered/s", "retried/s", "dead/s", "failed/s"
    );
    for channel in Channel::ALL {
        let stage = format!("sender.{}", channel.as_str());
        let counter = |snapshot: &Snapshot, outcome: &str| {
            snapshot.total("tidings_stage_records_total", |l| {
                l.is("stage", &stage) && l.is("outcome", outcome)
            })
        };
        let retried = |snapshot: &Snapshot| {
            snapshot.total("tidings_stage_outputs_total", |l| {
                l.is("stage", &stage) && l.get("topic").is_some_and(is_retry_topic)
            })
        };
        let delivered = rate(
            counter(before, "processed"),
            counter(now, "processed"),
            seconds,
        );
        let dead = rate(
            counter(before, "dead_lettered"),
            counter(now, "dead_lettered"),
            seconds,
        );
        let retried = rate(retried(before), retried(now), seconds);
        // A record sent to a retry tier was processed (handed on), not
        // delivered.
        let delivered = (delivered - retried).max(0.0);
        let _ = writeln!(
            out,
            "  {:<18} {delivered:>12.1} {retried:>12.1} {dead:>12.1} {:>12.1}",
            channel.as_str(),
            retried + dead
        );
    }

    // Stages: throughput and what went wrong.
    let _ = writeln!(
        out,
        "\nSTAGES {:<15} {:>12} {:>12} {:>12} {:>12}",
        "", "records/s", "errors/s", "retries/s", "dead/s"
    );
    let stages: std::collections::BTreeSet<String> = now
        .sum_by("tidings_stage_records_total", &["stage"], |_| true)
        .into_keys()
        .chain(
            now.sum_by("tidings_consumer_lag", &["stage"], |_| true)
                .into_keys(),
        )
        .map(|k| k[0].clone())
        .collect();
    if stages.is_empty() {
        let _ = writeln!(out, "  (no stage has handled a record yet)");
    }
    for stage in &stages {
        let per = |metric: &str, snapshot: &Snapshot, filter: &dyn Fn(&Labels) -> bool| {
            snapshot.total(metric, |l| l.is("stage", stage) && filter(l))
        };
        let change = |metric: &str, filter: &dyn Fn(&Labels) -> bool| {
            rate(
                per(metric, before, filter),
                per(metric, now, filter),
                seconds,
            )
        };
        let records = change("tidings_stage_records_total", &|_| true);
        let errors = change("tidings_stage_errors_total", &|_| true);
        let retries = change("tidings_stage_outputs_total", &|l| {
            l.get("topic").is_some_and(is_retry_topic)
        });
        let dead = change("tidings_stage_outputs_total", &|l| {
            l.get("topic").is_some_and(is_dead_letter_topic)
        });
        let _ = writeln!(
            out,
            "  {stage:<21} {records:>12.1} {errors:>12.1} {retries:>12.1} {dead:>12.1}"
        );
    }

    // Providers: outcomes, and the developer alert.
    let outcomes_now = now.sum_by(
        "tidings_provider_results_total",
        &["provider", "outcome"],
        |_| true,
    );
    if !outcomes_now.is_empty() {
        let outcomes_before = before.sum_by(
            "tidings_provider_results_total",
            &["provider", "outcome"],
            |_| true,
        );
        let failing = now.sum_by("tidings_provider_failing", &["provider"], |_| true);
        let _ = writeln!(out, "\nPROVIDERS");
        for (key, value) in &outcomes_now {
            let was = outcomes_before.get(key).copied().unwrap_or(0.0);
            let alert = if failing.get(&key[..1]).copied().unwrap_or(0.0) > 0.0 {
                "  FAILING"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {:<14} {:<16} {:>10.1}/s{alert}",
                key[0],
                key[1],
                rate(was, *value, seconds)
            );
        }
    }

    // The store: calls, errors and mean latency per engine.
    let calls = |s: &Snapshot| s.sum_by("tidings_store_call_seconds_count", &["engine"], |_| true);
    let time = |s: &Snapshot| s.sum_by("tidings_store_call_seconds_sum", &["engine"], |_| true);
    let errors = |s: &Snapshot| s.sum_by("tidings_store_errors_total", &["engine"], |_| true);
    let (calls_now, time_now, errors_now) = (calls(now), time(now), errors(now));
    if !calls_now.is_empty() {
        let (calls_was, time_was, errors_was) = (calls(before), time(before), errors(before));
        let _ = writeln!(
            out,
            "\nSTORE {:<16} {:>12} {:>12} {:>12}",
            "", "calls/s", "errors/s", "mean ms"
        );
        for (engine, n) in &calls_now {
            let n_was = calls_was.get(engine).copied().unwrap_or(0.0);
            let spent = time_now.get(engine).copied().unwrap_or(0.0)
                - time_was.get(engine).copied().unwrap_or(0.0);
            let mean_ms = if n > &n_was {
                1000.0 * spent / (n - n_was)
            } else {
                0.0
            };
            let failed = rate(
                errors_was.get(engine).copied().unwrap_or(0.0),
                errors_now.get(engine).copied().unwrap_or(0.0),
                seconds,
            );
            let _ = writeln!(
                out,
                "  {:<20} {:>12.1} {failed:>12.1} {mean_ms:>12.2}",
                engine[0],
                rate(n_was, *n, seconds)
            );
        }
    }
    out
}

/// Scrapes every URL once.
async fn scrape(client: &reqwest::Client, urls: &[String]) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for url in urls {
        let text = async {
            let response = client.get(url).send().await?.error_for_status()?;
            response.text().await
        }
        .await;
        match text {
            Ok(text) => {
                if let Err(e) = snapshot.add_text(&text) {
                    snapshot.unreachable.push(format!("{url}: {e:#}"));
                }
            }
            Err(e) => snapshot.unreachable.push(format!("{url}: {}", chain(&e))),
        }
    }
    snapshot
}

/// reqwest's Display names only the outermost error; the cause (connection
/// refused) is in the source chain.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

/// `tidings top`: refreshes until Ctrl-C, or prints one snapshot with
/// `--once`.
pub async fn run(config: &Config, options: TopOptions) -> Result<()> {
    let urls = if options.metrics.is_empty() {
        vec![format!("http://{}/metrics", config.telemetry.metrics_addr)]
    } else {
        options.metrics.clone()
    };
    // reqwest is built without a default TLS crypto provider; this command
    // is a process of its own, so it installs ring's (for https:// URLs).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .context("building the HTTP client")?;
    let interval = Duration::from_secs_f64(options.interval);
    let mut before = scrape(&client, &urls).await;
    let mut taken = Instant::now();
    if options.once && before.unreachable.len() == urls.len() {
        bail!(
            "no metrics endpoint answered ({}); pass --metrics http://HOST:PORT/metrics for each process",
            before.unreachable.join("; ")
        );
    }
    let clear = std::io::stdout().is_terminal() && !options.once;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let now = scrape(&client, &urls).await;
        let seconds = taken.elapsed().as_secs_f64();
        taken = Instant::now();
        let view = render(&before, &now, seconds, &urls);
        let mut stdout = std::io::stdout().lock();
        if clear {
            // Home and clear: redraw in place.
            let _ = write!(stdout, "\x1b[H\x1b[2J");
        }
        let _ = stdout.write_all(view.as_bytes());
        let _ = stdout.flush();
        if options.once {
            return Ok(());
        }
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(text: &str) -> Snapshot {
        let mut s = Snapshot::default();
        s.add_text(text).expect("valid exposition");
        s
    }

    const BEFORE: &str = r#"# TYPE tidings_consumer_lag gauge
tidings_consumer_lag{partition="0",stage="sender.sms",topic="p.deliver.sms"} 10
tidings_consumer_lag{partition="1",stage="sender.sms",topic="p.deliver.sms"} 5
# TYPE tidings_stage_records_total counter
tidings_stage_records_total{outcome="processed",stage="sender.sms"} 100
tidings_stage_records_total{outcome="dead_lettered",stage="sender.sms"} 1
# TYPE tidings_stage_outputs_total counter
tidings_stage_outputs_total{stage="sender.sms",topic="p.retry.1"} 4
# TYPE tidings_store_call_seconds histogram
tidings_store_call_seconds_bucket{engine="scylla",operation="apps.get",le="+Inf"} 10
tidings_store_call_seconds_sum{engine="scylla",operation="apps.get"} 0.01
tidings_store_call_seconds_count{engine="scylla",operation="apps.get"} 10
"#;

    const AFTER: &str = r#"# TYPE tidings_consumer_lag gauge
tidings_consumer_lag{partition="0",stage="sender.sms",topic="p.deliver.sms"} 2
tidings_consumer_lag{partition="1",stage="sender.sms",topic="p.deliver.sms"} 3
# TYPE tidings_stage_records_total counter
tidings_stage_records_total{outcome="processed",stage="sender.sms"} 120
tidings_stage_records_total{outcome="dead_lettered",stage="sender.sms"} 3
# TYPE tidings_stage_outputs_total counter
tidings_stage_outputs_total{stage="sender.sms",topic="p.retry.1"} 8
tidings_stage_outputs_total{stage="sender.sms",topic="p.deadletter"} 2
# TYPE tidings_store_call_seconds histogram
tidings_store_call_seconds_bucket{engine="scylla",operation="apps.get",le="+Inf"} 30
tidings_store_call_seconds_sum{engine="scylla",operation="apps.get"} 0.05
tidings_store_call_seconds_count{engine="scylla",operation="apps.get"} 30
"#;

    #[test]
    fn rates_lag_and_store_latency_from_two_scrapes() {
        let view = render(&snapshot(BEFORE), &snapshot(AFTER), 2.0, &["u".into()]);
        // Lag 15 -> 5 over 2 s, summed over partitions.
        assert!(
            view.lines().any(|l| l.contains("sender.sms")
                && l.contains("p.deliver.sms")
                && l.contains(" 5 ")
                && l.contains("-5.0")),
            "{view}"
        );
        // sms: 20 processed of which 4 went to a retry tier, over 2 s: 8/s
        // delivered, 2/s retried, 1/s dead, 3/s failed.
        let sms = view
            .lines()
            .find(|l| l.trim_start().starts_with("sms "))
            .unwrap_or_else(|| panic!("{view}"));
        let numbers: Vec<&str> = sms.split_whitespace().skip(1).collect();
        assert_eq!(numbers, ["8.0", "2.0", "1.0", "3.0"], "{sms}");
        // Every channel has a row, even without traffic.
        for channel in ["ios", "android", "email"] {
            assert!(
                view.lines().any(|l| l.trim_start().starts_with(channel)),
                "{view}"
            );
        }
        // Store: 20 calls in 2 s, 0.04 s spent: 2 ms mean.
        let store = view
            .lines()
            .find(|l| l.trim_start().starts_with("scylla"))
            .unwrap_or_else(|| panic!("{view}"));
        assert_eq!(
            store.split_whitespace().collect::<Vec<_>>(),
            ["scylla", "10.0", "0.0", "2.00"],
            "{view}"
        );
    }

    #[test]
    fn processes_add_up_and_restarts_do_not_go_negative() {
        let mut both = snapshot(AFTER);
        both.add_text(AFTER).expect("valid");
        let lag = both.sum_by("tidings_consumer_lag", &["stage"], |_| true);
        assert_eq!(lag[&vec!["sender.sms".to_owned()]], 10.0);
        // A counter that went down restarted from zero.
        assert_eq!(rate(100.0, 30.0, 3.0), 10.0);
    }

    #[test]
    fn the_interval_is_bounded() {
        assert!(parse_interval("0.5").is_ok());
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("soon").is_err());
    }
}
