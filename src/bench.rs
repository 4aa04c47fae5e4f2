//! `tidings bench`: a load generator through the public batch send API.
//!
//! It starts the whole pipeline in this process (on the embedded default, or
//! on the Kafka and store the configuration names), points one channel at a
//! provider stand-in with the real provider client (SMS through Twilio's
//! API, Android through FCM HTTP v1, iOS through APNs; see
//! [`crate::bench_providers`]), sends notifications with `SendBatch` from
//! concurrent callers, and measures, per notification, the time from the
//! gateway's acknowledgement to the stand-in receiving the message, and,
//! from this process's own metrics, the store calls and Kafka records each
//! notification cost. Then, as same-run ceilings, a bare HTTP client sends
//! as many requests straight to the same stand-in at the provider client's
//! concurrency, and as many Kafka records as the pipeline moved go through
//! a cluster of the same kind with nothing around them
//! ([`crate::bench_kafka`]).

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde_json::json;
use tidings_config::Config;
use tidings_schemas::proto::v1 as pb;
use tidings_store::{Device, Platform, User};

use crate::{
    bench_kafka,
    bench_providers::{self, BenchChannel, StandIn, unix_micros},
    client::Client,
    runtime::{Pipeline, create_app},
};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Notifications to send (one message each on the channel).
    #[arg(long, default_value_t = 50_000)]
    pub notifications: usize,
    /// Send for this many seconds instead of a fixed --notifications, then
    /// wait for every notification accepted by then to reach the provider.
    /// With --rate, at that rate; without, as fast as the callers go.
    #[arg(long, value_name = "SECS", conflicts_with = "notifications")]
    pub duration: Option<u64>,
    /// Users they go to, round robin (each created with a phone number, or
    /// one device of the channel's platform).
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Notifications per SendBatch call.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Concurrent callers.
    #[arg(long, default_value_t = 4)]
    pub callers: usize,
    /// Offered load in notifications/s (default: as fast as possible).
    /// Latency is meaningful below saturation, so measure it at a rate.
    #[arg(long)]
    pub rate: Option<f64>,
    /// The provider to deliver through: Twilio's API (HTTP/1.1), FCM HTTP v1
    /// or APNs (both TLS and HTTP/2), SendGrid's Mail Send (TLS), or `mix`:
    /// the design's daily ratio (10 push : 1 SMS : 5 email, push half
    /// Android, half iOS), each through its client, over TLS.
    #[arg(long, value_enum, default_value_t = BenchChannel::Sms)]
    pub channel: BenchChannel,
    /// A `tidings bench-provider` to deliver to instead of the stand-in in
    /// this process (SMS then goes over TLS, as in the mix), so this process's CPU is tidings'
    /// alone and other clients can be measured against the same server.
    #[arg(long, value_name = "ADDR")]
    pub provider_addr: Option<SocketAddr>,
    /// Requests in flight to the provider, for the provider client and for
    /// the bare client alike.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub provider_in_flight: usize,
    /// Send through a template (created for the run: `bench {{seq}}` in the
    /// channel's fields) instead of raw content, so the enricher renders
    /// every notification and the template statistics count each send.
    #[arg(long)]
    pub template: bool,
    /// The event ids the callers send: `v7`, time-ordered UUIDs (as the
    /// gateway mints when a caller gives none), or `v4`, random ones (as
    /// some callers' idempotency keys are). A notification id leads with a
    /// time-ordered event id's time, so the store's rows for it are written
    /// in order; `v4` shows what random keys cost.
    #[arg(long, value_enum, default_value_t = EventIds::V7)]
    pub event_ids: EventIds,
    /// Skip the same-run baselines: a bare HTTP client sending as many
    /// requests straight to the stand-in, as many Kafka records produced
    /// and consumed with nothing around them, and a row per notification
    /// inserted into one partition of the store with the same driver.
    #[arg(long)]
    pub no_baseline: bool,
    /// Print the results as one JSON object instead of the text report;
    /// progress lines go to stderr, so stdout is the JSON alone.
    #[arg(long)]
    pub json: bool,
}

/// How the bench's callers make event ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventIds {
    /// UUIDv7: time first, so the ids derived from them sort by time.
    V7,
    /// UUIDv4: random.
    V4,
}

impl EventIds {
    fn mint(self) -> String {
        match self {
            EventIds::V7 => uuid::Uuid::now_v7().to_string(),
            EventIds::V4 => uuid::Uuid::new_v4().to_string(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            EventIds::V7 => "v7",
            EventIds::V4 => "v4",
        }
    }
}

/// The warm-up notification's sequence number: past any a run sends, so a
/// late copy of it is never taken for a measured one.
const WARM_UP_SEQ: usize = u32::MAX as usize;

/// Accept->provider latencies in microseconds, 1 us to an hour at 3
/// significant digits: fixed memory however long a `--duration` run is.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

/// The latency percentiles the report prints, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Latencies {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Latencies {
    fn of(micros: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1e3;
        Self {
            p50: ms(micros.value_at_quantile(0.50)),
            p90: ms(micros.value_at_quantile(0.90)),
            p99: ms(micros.value_at_quantile(0.99)),
            p999: ms(micros.value_at_quantile(0.999)),
            max: ms(micros.max()),
        }
    }

    fn text(&self) -> String {
        format!(
            "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
            self.p50, self.p90, self.p99, self.p999, self.max
        )
    }
}

/// The counts the bench reads from this process's own metrics (the
/// pipeline runs in it), summed over their series.
#[derive(Debug, Default, Clone, PartialEq)]
struct MetricCounts {
    /// Store calls by operation (`dedupe.seen_many`, ...), over engines.
    store_calls: BTreeMap<String, f64>,
    /// Statements the database engine sent (CQL only), by statement
    /// (`INSERT dedupe`): a multi-key store call sends many.
    statements: BTreeMap<String, f64>,
    /// Records the stages produced, over stages and topics. The gateway's
    /// own records are not in it, and no metric counts them.
    stage_outputs: f64,
}

impl MetricCounts {
    fn read() -> Result<Self> {
        Self::parse(&tidings_telemetry::metrics().render())
    }

    /// From the Prometheus text, as `tidings top` reads it: this crate
    /// reaches the metrics through their rendering, not prometheus' types.
    fn parse(text: &str) -> Result<Self> {
        use prometheus_parse::{Scrape, Value};
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .context("parsing this process's metrics")?;
        let mut counts = Self::default();
        for sample in scrape.samples {
            let (Value::Counter(value) | Value::Untyped(value)) = sample.value else {
                continue;
            };
            let add = |by: &mut BTreeMap<String, f64>, label: &str| {
                let key = sample.labels.get(label).unwrap_or_default();
                *by.entry(key.to_owned()).or_default() += value;
            };
            match sample.metric.as_str() {
                // A histogram's count of observations: one per call.
                "tidings_store_call_seconds_count" => add(&mut counts.store_calls, "operation"),
                "tidings_store_statements_total" => add(&mut counts.statements, "statement"),
                "tidings_stage_outputs_total" => counts.stage_outputs += value,
                _ => {}
            }
        }
        Ok(counts)
    }

    /// What was counted from `before` to `self`.
    fn since(&self, before: &Self) -> Self {
        fn less(now: &BTreeMap<String, f64>, was: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
            now.iter()
                .map(|(key, n)| (key.clone(), n - was.get(key).copied().unwrap_or(0.0)))
                .filter(|(_, n)| *n > 0.0)
                .collect()
        }
        Self {
            store_calls: less(&self.store_calls, &before.store_calls),
            statements: less(&self.statements, &before.statements),
            stage_outputs: self.stage_outputs - before.stage_outputs,
        }
    }
}

/// Counts per delivered notification: their sum and the five largest.
#[derive(Debug, Clone, PartialEq)]
struct Breakdown {
    total: f64,
    /// Most first, ties by name, so the listing is stable from run to run.
    top: Vec<(String, f64)>,
}

impl Breakdown {
    fn of(counts: &BTreeMap<String, f64>, delivered: usize) -> Self {
        let per = |n: f64| n / delivered.max(1) as f64;
        let mut top: Vec<(String, f64)> = counts
            .iter()
            .map(|(key, n)| (key.clone(), per(*n)))
            .collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(5);
        Self {
            total: per(counts.values().sum()),
            top,
        }
    }

    fn top_text(&self) -> String {
        self.top
            .iter()
            .map(|(key, n)| format!("{key} {n:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn top_json(&self, name: &str) -> Vec<serde_json::Value> {
        self.top
            .iter()
            .map(|(key, n)| json!({name: key, "per_notification": n}))
            .collect()
    }
}

/// Store calls, database statements and Kafka records per delivered
/// notification.
#[derive(Debug, Clone, PartialEq)]
struct PerNotification {
    store_calls: Breakdown,
    statements: Breakdown,
    stage_outputs: f64,
}

impl PerNotification {
    fn of(counts: &MetricCounts, delivered: usize) -> Self {
        Self {
            store_calls: Breakdown::of(&counts.store_calls, delivered),
            statements: Breakdown::of(&counts.statements, delivered),
            stage_outputs: counts.stage_outputs / delivered.max(1) as f64,
        }
    }
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Creates the run's template: each channel's text is what the raw content
/// would be (`bench <seq>`, which the stand-ins read the sequence from).
async fn create_template(store: &tidings_store::Store, name: &str) -> Result<()> {
    let text = Some("bench {{seq}}".to_owned());
    let content = tidings_store::TemplateContent {
        push_title: Some("bench".into()),
        push_body: text.clone(),
        sms_text: text.clone(),
        email_subject: Some("bench".into()),
        email_text: text,
        ..Default::default()
    };
    store
        .templates
        .create_version(&tidings_store::TemplateVersion {
            name: name.to_owned(),
            version: 1,
            category: None,
            params: vec!["seq".into()],
            default_locale: "en".into(),
            variants: [("en".to_owned(), content)].into(),
            created_at: unix_micros() as i64 / 1000,
        })
        .await
        .context("creating the bench template")?;
    Ok(())
}

/// The name of the threads the load's callers run on.
const CALLER_THREAD: &str = "bench-client";

pub async fn run(mut config: Config, options: BenchOptions) -> Result<()> {
    if options.notifications == 0
        || options.users == 0
        || options.batch == 0
        || options.callers == 0
        || options.provider_in_flight == 0
        || options.duration == Some(0)
    {
        bail!(
            "--notifications, --duration, --users, --batch, --callers and --provider-in-flight must be at least 1"
        );
    }
    let json = options.json;
    // With --json, stdout carries the JSON object alone.
    let progress = |line: String| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let channel = options.channel;
    let stand_in = match options.provider_addr {
        Some(addr) => StandIn::remote(addr)?,
        None => StandIn::start(channel).await?,
    };
    stand_in
        .reset()
        .await
        .with_context(|| format!("reaching the provider stand-in at {}", stand_in.addr()))?;
    let base_url = stand_in.base_url(channel);
    // One directory per run, removed on drop: two benches in one process
    // (the tests run them side by side) must not share or delete each
    // other's CA file.
    let scratch = tempfile::Builder::new()
        .prefix("tidings-bench-ca-")
        .tempdir()
        .context("creating the bench's scratch directory")?;
    let ca_path = bench_providers::write_ca(scratch.path())?;
    for single in channel.delivers() {
        config.providers.insert(
            single.provider_key().into(),
            bench_providers::provider_config(
                single,
                &base_url,
                &ca_path,
                options.provider_in_flight,
            ),
        );
    }
    config.gateway.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.gateway.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let kafka = config.kafka.bootstrap_servers.clone();
    // For the raw Kafka baseline, once the pipeline has stopped.
    let kafka_config = config.kafka.clone();
    // For the raw store baseline: the pipeline's store, as it connects.
    let store_options = crate::runtime::store_options(&config, false);
    let store_url = config.store.url.clone();
    let pipeline = Pipeline::start(config, true).await?;
    let store = pipeline.runtime.store.clone();
    progress(format!(
        "bench: pipeline up (kafka {kafka}, store {store_url}); {} to {base_url}; creating {} users",
        channel.provider_key(),
        options.users
    ));
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let users: Vec<String> = (0..options.users)
        .map(|i| format!("bench-{run_id}-{i}"))
        .collect();
    let delivers = channel.delivers();
    futures::future::try_join_all(users.chunks(500).enumerate().map(|(c, chunk)| {
        let (store, run_id, delivers) = (store.clone(), run_id.clone(), delivers.clone());
        async move {
            for (i, user_id) in chunk.iter().enumerate() {
                let n = c * 500 + i;
                let user = User {
                    user_id: user_id.clone(),
                    display_name: user_id.clone(),
                    avatar_url: None,
                    locale: None,
                    email: delivers
                        .contains(&BenchChannel::Email)
                        .then(|| format!("bench-{run_id}-{n}@example.com")),
                    phone: delivers
                        .contains(&BenchChannel::Sms)
                        .then(|| "+14155550123".into()),
                    updated_at: 0,
                };
                store.contacts.upsert_user(&user).await?;
                for single in &delivers {
                    // Hex, as APNs device tokens are; unique per run, user
                    // and platform.
                    let (platform, kind) = match single {
                        BenchChannel::Android => (Platform::Android, 'a'),
                        BenchChannel::Ios => (Platform::Ios, 'b'),
                        _ => continue,
                    };
                    store
                        .contacts
                        .register_device(&Device {
                            user_id: user_id.clone(),
                            token: format!("{run_id}{kind}{n:055x}"),
                            platform,
                            registered_at: unix_micros() as i64 / 1000,
                            invalidated_at: None,
                        })
                        .await?;
                }
            }
            Ok::<_, tidings_store::StoreError>(())
        }
    }))
    .await
    .context("creating bench users")?;
    let template_ref = options.template.then(|| format!("bench-{run_id}"));
    if let Some(name) = &template_ref {
        create_template(&store, name).await?;
    }
    let (key, secret) = create_app(&store, "bench", vec!["send".into()], None).await?;
    let endpoint = format!("http://{}", pipeline.gateway.grpc);
    let send_request = Arc::new(move |event_id: String, user_id: String, seq: usize| {
        let text = format!("bench {seq}");
        let (channel, content) = match channel.of_seq(seq as u64) {
            BenchChannel::Sms => (
                pb::Channel::Sms,
                pb::RawContent {
                    sms_text: text,
                    ..Default::default()
                },
            ),
            BenchChannel::Android | BenchChannel::Ios => (
                if channel == BenchChannel::Android {
                    pb::Channel::Android
                } else {
                    pb::Channel::Ios
                },
                pb::RawContent {
                    title: "bench".into(),
                    body: text,
                    ..Default::default()
                },
            ),
            BenchChannel::Email => (
                pb::Channel::Email,
                pb::RawContent {
                    email_subject: "bench".into(),
                    email_text: text,
                    ..Default::default()
                },
            ),
            BenchChannel::Mix => unreachable!("of_seq names a single channel"),
        };
        let content = match &template_ref {
            // The same text as the raw content's, rendered by the enricher.
            Some(name) => pb::send_request::Content::Template(pb::TemplateRef {
                name: name.clone(),
                version: 0,
                params: [("seq".to_owned(), seq.to_string())].into(),
            }),
            None => pb::send_request::Content::Raw(content),
        };
        pb::SendRequest {
            event_id,
            user_ids: vec![user_id],
            channels: vec![channel as i32],
            content: Some(content),
            ..Default::default()
        }
    });

    // Warm up: every stage joins its consumer group before the clock starts.
    let warm = Client::connect(&endpoint, Some(key.clone()), Some(secret.clone())).await?;
    let request = warm.request(send_request(String::new(), users[0].clone(), WARM_UP_SEQ))?;
    warm.notifications().send(request).await?;
    let warm_started = Instant::now();
    while !stand_in.contains(WARM_UP_SEQ as u64).await? {
        if warm_started.elapsed() > Duration::from_secs(60) {
            bail!("the warm-up notification did not reach the provider within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stand_in.reset().await?;
    progress(format!(
        "bench: warmed up in {:.1} s; measuring",
        warm_started.elapsed().as_secs_f64()
    ));

    // Callers take batches of sequence numbers from a shared counter, up to
    // --notifications, or for --duration.
    let accepted: Arc<Mutex<HashMap<usize, u64>>> = Arc::default();
    let (next, sent) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let window = options.duration.map(Duration::from_secs);
    // The load's senders on threads of their own: the CPU they use is the
    // load generator's, not tidings', and is taken out of the pipeline's
    // figure below (gorush and the bare client are measured without theirs).
    let callers_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(CALLER_THREAD)
        .enable_all()
        .build()
        .context("starting the callers' runtime")?;
    let (cpu_before, threads_before, counts_before) = (
        bench_providers::process_cpu(),
        bench_providers::thread_cpu(),
        MetricCounts::read()?,
    );
    let (started, started_us) = (Instant::now(), unix_micros());
    let window_end = window.map(|w| started + w);
    let mut callers = Vec::new();
    for _ in 0..options.callers {
        let (accepted, next, sent, users, options) = (
            accepted.clone(),
            next.clone(),
            sent.clone(),
            users.clone(),
            options.clone(),
        );
        let (endpoint, key, secret) = (endpoint.clone(), key.clone(), secret.clone());
        let send_request = send_request.clone();
        // Connected on the callers' runtime, so the client's connection
        // task runs on its threads too.
        callers.push(callers_runtime.spawn(async move {
            let client = Client::connect(&endpoint, Some(key), Some(secret)).await?;
            loop {
                let first = next.fetch_add(options.batch, Ordering::Relaxed);
                let last = match window_end {
                    Some(_) => first + options.batch,
                    None if first >= options.notifications => return Ok::<_, anyhow::Error>(()),
                    None => (first + options.batch).min(options.notifications),
                };
                // Batch `first` is due when the offered load reaches it.
                let due = options
                    .rate
                    .map(|rate| started + Duration::from_secs_f64(first as f64 / rate));
                // A batch due after the window is not sent: no sleeping
                // past the window's end for it.
                if window_end.is_some_and(|end| due.unwrap_or_else(Instant::now) >= end) {
                    return Ok(());
                }
                if let Some(due) = due {
                    tokio::time::sleep_until(due.into()).await;
                }
                sent.fetch_add(last - first, Ordering::Relaxed);
                let items = (first..last)
                    .map(|seq| {
                        send_request(
                            options.event_ids.mint(),
                            users[seq % users.len()].clone(),
                            seq,
                        )
                    })
                    .collect();
                let request = client.request(pb::SendBatchRequest { items })?;
                let response = client
                    .notifications()
                    .send_batch(request)
                    .await?
                    .into_inner();
                let at = unix_micros();
                let mut accepted = accepted.lock().unwrap_or_else(|p| p.into_inner());
                for (seq, result) in (first..last).zip(response.results) {
                    if matches!(
                        result.outcome,
                        Some(pb::send_batch_result::Outcome::Accepted(_))
                    ) {
                        accepted.insert(seq, at);
                    }
                }
            }
        }));
    }
    // Progress while the load runs and drains: a bar on a terminal, a line
    // a second otherwise.
    let deadline = Duration::from_secs(600) + window.unwrap_or_default();
    let (bar, terminal) = crate::progress::bar(
        options.notifications as u64,
        "{bar:40} {pos}/{len} delivered, {msg} [{elapsed}, eta {eta}]",
    );
    // What to wait for: --notifications, or with --duration, what was
    // accepted once the callers stopped sending.
    let mut target = window.is_none().then_some(options.notifications);
    // Polled often, so the CPU reading below ends close to the last
    // delivery; printed once a second.
    let mut printed = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if target.is_none() && callers.iter().all(|c| c.is_finished()) {
            target = Some(accepted.lock().map(|m| m.len()).unwrap_or(0));
        }
        let a = accepted.lock().map(|m| m.len()).unwrap_or(0);
        let r = stand_in.delivered().await? as usize;
        let secs = started.elapsed().as_secs_f64();
        if terminal {
            bar.set_length(target.unwrap_or(a) as u64);
            bar.set_position(r as u64);
            bar.set_message(format!("{a} accepted, {:.0}/s", r as f64 / secs));
        } else if printed.elapsed() >= Duration::from_secs(1) {
            printed = Instant::now();
            progress(format!(
                "bench: {secs:>5.1}s accepted {a:>8} delivered {r:>8} ({:.0}/s)",
                r as f64 / secs
            ));
        }
        if target.is_some_and(|t| r >= t) || started.elapsed() > deadline {
            break;
        }
    }
    bar.finish_and_clear();
    let polled = started.elapsed();
    let cpu = bench_providers::process_cpu().saturating_sub(cpu_before);
    let threads =
        bench_providers::thread_cpu_shares(&threads_before, &bench_providers::thread_cpu());
    let counts = MetricCounts::read()?.since(&counts_before);
    for c in callers {
        c.await??;
    }
    // Not dropped here: dropping a runtime inside another blocks on it.
    callers_runtime.shutdown_background();
    let accepted = accepted.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // Past the deadline while still sending: wait for no more than that.
    let target = target.unwrap_or(accepted.len());
    let sent = sent.load(Ordering::Relaxed);
    let receipts = stand_in.receipts().await?;
    let mut latencies = latency_histogram();
    for (seq, got) in &receipts {
        if let Some(acc) = accepted.get(&(*seq as usize)) {
            latencies.saturating_record(got.saturating_sub(*acc));
        }
    }
    let latencies = Latencies::of(&latencies);
    let delivered = receipts.len();
    let per_notification = PerNotification::of(&counts, delivered);
    // From the first call to the last message at the stand-in.
    let elapsed = match receipts.values().max() {
        Some(last) if delivered >= target => Duration::from_micros(last.saturating_sub(started_us)),
        _ => polled,
    };
    let throughput = delivered as f64 / elapsed.as_secs_f64();
    let cpu_per_notification_us = cpu.as_secs_f64() * 1e6 / delivered.max(1) as f64;
    let cores = cpu.as_secs_f64() / polled.as_secs_f64();
    let callers_share = threads
        .iter()
        .find(|(name, _)| name == CALLER_THREAD)
        .map_or(0.0, |(_, share)| *share);
    let pipeline_cpu_us = cpu_per_notification_us * (1.0 - callers_share);
    let pipeline_cores = cores * (1.0 - callers_share);
    let stand_in_kind = match stand_in {
        StandIn::InProcess { .. } => "in-process",
        StandIn::Remote { .. } => "separate-process",
    };
    let mut report = json!({
        "channel": channel.provider_key(),
        "sent": sent,
        "accepted": accepted.len(),
        "delivered": delivered,
        "duration_s": options.duration,
        "users": options.users,
        "batch": options.batch,
        "callers": options.callers,
        "template": options.template,
        "event_ids": options.event_ids.name(),
        "provider_in_flight": options.provider_in_flight,
        "stand_in": stand_in_kind,
        "offered_rate": options.rate,
        "elapsed_s": elapsed.as_secs_f64(),
        "throughput": throughput,
        "latency_ms": {
            "p50": latencies.p50,
            "p90": latencies.p90,
            "p99": latencies.p99,
            "p999": latencies.p999,
            "max": latencies.max,
        },
        "cpu_us_per_notification": cpu_per_notification_us,
        "cores": cores,
        "pipeline_cpu_us_per_notification": pipeline_cpu_us,
        "pipeline_cores": pipeline_cores,
        "store_calls_per_notification": per_notification.store_calls.total,
        "top_store_operations": per_notification.store_calls.top_json("operation"),
        "store_statements_per_notification": per_notification.statements.total,
        "top_store_statements": per_notification.statements.top_json("statement"),
        "stage_outputs_per_notification": per_notification.stage_outputs,
    });
    if !json {
        println!("\nbench results ({})", channel.provider_key());
        println!(
            "  notifications   {sent} sent, {} accepted, {delivered} delivered",
            accepted.len(),
        );
        println!(
            "  users           {}, batch {}, callers {}, provider in flight {}, {}, event ids {}",
            options.users,
            options.batch,
            options.callers,
            options.provider_in_flight,
            if options.template {
                "templated"
            } else {
                "raw content"
            },
            options.event_ids.name(),
        );
        println!("  provider        {stand_in_kind} stand-in at {base_url}");
        if let Some(rate) = options.rate {
            println!("  offered load    {rate:.0} notifications/s");
        }
        if let Some(window) = options.duration {
            println!("  sending for     {window} s");
        }
        println!("  elapsed         {:.2} s", elapsed.as_secs_f64());
        println!("  throughput      {throughput:.0} notifications/s end to end");
        println!("  accept->provider {}", latencies.text());
        println!(
            "  cpu             {cpu_per_notification_us:.0} us per notification ({cores:.2} cores), whole process{}",
            match stand_in {
                StandIn::InProcess { .. } => ", stand-in included",
                StandIn::Remote { .. } => "",
            }
        );
        println!(
            "  pipeline cpu    {pipeline_cpu_us:.0} us per notification ({pipeline_cores:.2} cores): the process less its {CALLER_THREAD} thread ({:.0}%), which sends the load",
            callers_share * 100.0
        );
        println!(
            "  cpu by thread   {}",
            threads
                .iter()
                .take(6)
                .map(|(name, share)| format!("{name} {:.0}%", share * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "  store calls     {:.2} per notification; most: {}",
            per_notification.store_calls.total,
            per_notification.store_calls.top_text()
        );
        // Only the CQL engine counts its statements.
        if per_notification.statements.total > 0.0 {
            println!(
                "  statements      {:.2} CQL statements per notification; most: {}",
                per_notification.statements.total,
                per_notification.statements.top_text()
            );
        }
        // No metric counts the gateway's own records, so these are the
        // stages' alone.
        println!(
            "  stage outputs   {:.2} Kafka records per notification (the gateway's not counted)",
            per_notification.stage_outputs
        );
    }
    pipeline.stop().await?;
    drop(scratch);
    if delivered < target {
        if json {
            report["peak_rss_mib"] = json!(bench_providers::peak_rss_mib());
            println!("{report}");
        }
        bail!("only {delivered} of {target} notifications reached the provider");
    }
    if !options.no_baseline {
        // After the pipeline stopped: the bare client has the process (and
        // the in-process stand-in) to itself. Its sequence numbers follow
        // the bench's, so none is mistaken for a late tidings delivery.
        stand_in.reset().await?;
        let bare = bench_providers::bare_client(
            channel,
            &base_url,
            target,
            options.provider_in_flight,
            next.load(Ordering::Relaxed) as u64 + 1,
        )
        .await?;
        let bare_rate = bare.sent as f64 / bare.elapsed.as_secs_f64();
        let bare_cpu_us = bare.cpu.as_secs_f64() * 1e6 / bare.sent.max(1) as f64;
        let ratio = throughput / bare_rate;
        report["bare_client"] = json!({
            "rate": bare_rate,
            "cpu_us_per_request": bare_cpu_us,
            "requests": bare.sent,
            "tidings_ratio": ratio,
        });
        if !json {
            println!(
                "  bare client     {bare_rate:.0} requests/s, {bare_cpu_us:.0} us CPU per request ({} requests, {} in flight, same stand-in)",
                bare.sent, options.provider_in_flight
            );
            println!(
                "  tidings/bare    {:.1}% of the bare client's rate",
                ratio * 100.0
            );
        }
        // The records the pipeline moved per notification: the stages'
        // outputs, plus the gateway's request and ACCEPTED records, which
        // no metric counts.
        let records_per_notification = per_notification.stage_outputs + 2.0;
        let records = ((delivered as f64 * records_per_notification).ceil() as usize).max(1);
        // About the size of an encoded Delivery record; no metric counts
        // the bytes of the pipeline's records.
        const RAW_RECORD_BYTES: usize = 400;
        let raw = bench_kafka::raw_kafka(&kafka_config, records, RAW_RECORD_BYTES, options.users)
            .await
            .context("running the raw Kafka baseline")?;
        let raw_ratio = throughput * records_per_notification / raw.rate;
        report["raw_kafka"] = json!({
            "rate": raw.rate,
            "cpu_us_per_record": raw.cpu_us_per_record,
            "records": raw.produced,
            "record_bytes": raw.record_bytes,
            "tidings_ratio": raw_ratio,
        });
        if !json {
            println!("  raw kafka       {}", raw.text());
            println!(
                "  tidings/kafka   {:.1}% of raw Kafka's record rate at {records_per_notification:.1} records per notification",
                raw_ratio * 100.0
            );
        }
        // One row per notification delivered: enough for a steady rate.
        let rows = delivered.max(1_000);
        let cpu_before = bench_providers::process_cpu();
        let raw = tidings_store::baseline::raw_writes(&store_url, rows, &store_options)
            .await
            .context("running the raw store baseline")?;
        let cpu_us_per_row = bench_providers::process_cpu()
            .saturating_sub(cpu_before)
            .as_secs_f64()
            * 1e6
            / rows as f64;
        // Only CQL statements are counted: SQLite's calls carry many rows.
        let statements = per_notification.statements.total;
        let store_ratio = (statements > 0.0).then(|| throughput * statements / raw.rate());
        report["raw_store"] = json!({
            "engine": raw.engine,
            "rate": raw.rate(),
            "rows": raw.rows,
            "in_flight": raw.in_flight,
            "cpu_us_per_row": cpu_us_per_row,
            "tidings_ratio": store_ratio,
        });
        if !json {
            println!(
                "  raw store       {:.0} rows/s inserted into one partition, {cpu_us_per_row:.1} us CPU per row ({} rows of {} bytes, {} {} in flight, same driver and set-up)",
                raw.rate(),
                raw.rows,
                tidings_store::baseline::ROW_BYTES,
                raw.in_flight,
                match raw.engine {
                    "sqlite" => format!(
                        "calls of {} rows",
                        tidings_store::baseline::SQLITE_ROWS_PER_CALL
                    ),
                    _ => "statements".to_owned(),
                },
            );
            if let Some(ratio) = store_ratio {
                println!(
                    "  tidings/store   {:.1}% of those statements/s at {statements:.2} CQL statements per notification",
                    ratio * 100.0
                );
            }
        }
    }
    let peak_rss = bench_providers::peak_rss_mib();
    if json {
        report["peak_rss_mib"] = json!(peak_rss);
        println!("{report}");
    } else {
        println!("  peak rss        {peak_rss:.0} MiB");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded default on a store of its own, in a directory removed
    /// when the returned guard drops.
    fn scratch_config() -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = Config::default();
        config.store.url = format!("sqlite://{}/tidings.db", dir.path().display());
        (dir, config)
    }

    /// The whole bench path on the embedded default, kept small: every
    /// notification reaches the FCM, APNs and SendGrid stand-ins (and in the
    /// mix, Twilio's too) through the real clients over TLS (`run` fails on
    /// any missing), then the bare client runs against the same stand-in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_benches_deliver_every_notification_embedded() {
        for channel in [
            BenchChannel::Android,
            BenchChannel::Ios,
            BenchChannel::Email,
            BenchChannel::Mix,
        ] {
            let (_dir, config) = scratch_config();
            let options = BenchOptions {
                notifications: 200,
                users: 20,
                batch: 50,
                callers: 2,
                rate: None,
                channel,
                provider_addr: None,
                provider_in_flight: 16,
                template: false,
                event_ids: EventIds::V7,
                no_baseline: false,
                duration: None,
                json: false,
            };
            run(config, options)
                .await
                .unwrap_or_else(|e| panic!("{channel:?}: {e:#}"));
        }
    }

    /// With --duration the callers stop when the time is up and the bench
    /// waits for what was accepted (`run` fails on any missing); --json
    /// takes the report's place. Templated: each text the stand-in reads
    /// its sequence number from was rendered by the enricher.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_timed_bench_waits_for_what_was_accepted() {
        let (_dir, config) = scratch_config();
        let options = BenchOptions {
            notifications: 50_000,
            users: 20,
            batch: 50,
            callers: 2,
            rate: Some(200.0),
            channel: BenchChannel::Sms,
            provider_addr: None,
            provider_in_flight: 16,
            template: true,
            event_ids: EventIds::V4,
            no_baseline: true,
            duration: Some(1),
            json: true,
        };
        run(config, options)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    #[test]
    fn latencies_are_read_from_the_histogram_in_milliseconds() {
        let mut micros = latency_histogram();
        // 1..=1000 us: below 2048, a 3-digit histogram holds them exactly.
        for us in 1..=1000 {
            micros.saturating_record(us);
        }
        // Past the hour: kept, at the top of the range.
        let latencies = Latencies::of(&micros);
        assert_eq!(
            latencies,
            Latencies {
                p50: 0.5,
                p90: 0.9,
                p99: 0.99,
                p999: 0.999,
                max: 1.0,
            }
        );
        let empty = Latencies::of(&latency_histogram());
        assert_eq!(empty.max, 0.0);
        let text = Latencies {
            p50: 1.25,
            p90: 2.0,
            p99: 10.04,
            p999: 31.0,
            max: 120.5,
        }
        .text();
        assert_eq!(
            text,
            "p50 1.2 ms, p90 2.0 ms, p99 10.0 ms, p99.9 31.0 ms, max 120.5 ms"
        );
    }

    #[test]
    fn a_latency_past_the_range_is_kept_at_its_top() {
        let mut micros = latency_histogram();
        micros.saturating_record(2 * 3_600_000_000);
        assert_eq!(micros.len(), 1);
        assert!(Latencies::of(&micros).max >= 3_600_000.0);
    }

    const BEFORE: &str = "\
# TYPE tidings_store_call_seconds histogram
tidings_store_call_seconds_bucket{engine=\"sqlite\",operation=\"dedupe.seen_many\",le=\"0.001\"} 2
tidings_store_call_seconds_bucket{engine=\"sqlite\",operation=\"dedupe.seen_many\",le=\"+Inf\"} 4
tidings_store_call_seconds_sum{engine=\"sqlite\",operation=\"dedupe.seen_many\"} 0.01
tidings_store_call_seconds_count{engine=\"sqlite\",operation=\"dedupe.seen_many\"} 4
# TYPE tidings_stage_outputs_total counter
tidings_stage_outputs_total{stage=\"router\",topic=\"p.sms\"} 10
# TYPE tidings_stage_records_total counter
tidings_stage_records_total{outcome=\"processed\",stage=\"router\"} 99
";

    const AFTER: &str = "\
# TYPE tidings_store_call_seconds histogram
tidings_store_call_seconds_bucket{engine=\"sqlite\",operation=\"dedupe.seen_many\",le=\"+Inf\"} 9
tidings_store_call_seconds_sum{engine=\"sqlite\",operation=\"dedupe.seen_many\"} 0.02
tidings_store_call_seconds_count{engine=\"sqlite\",operation=\"dedupe.seen_many\"} 9
tidings_store_call_seconds_count{engine=\"scylla\",operation=\"dedupe.seen_many\"} 1
tidings_store_call_seconds_count{engine=\"sqlite\",operation=\"contacts.get_user\"} 20
tidings_store_call_seconds_count{engine=\"sqlite\",operation=\"apps.get\"} 3
tidings_store_call_seconds_count{engine=\"sqlite\",operation=\"a.one\"} 1
tidings_store_call_seconds_count{engine=\"sqlite\",operation=\"b.one\"} 1
tidings_store_call_seconds_count{engine=\"sqlite\",operation=\"c.one\"} 1
# TYPE tidings_store_statements_total counter
tidings_store_statements_total{engine=\"scylla\",statement=\"SELECT dedupe\"} 12
tidings_store_statements_total{engine=\"scylla\",statement=\"INSERT dedupe\"} 6
# TYPE tidings_stage_outputs_total counter
tidings_stage_outputs_total{stage=\"router\",topic=\"p.sms\"} 30
tidings_stage_outputs_total{stage=\"sender.sms\",topic=\"p.status\"} 20
";

    #[test]
    fn store_calls_and_stage_outputs_are_counted_between_readings() {
        let before = MetricCounts::parse(BEFORE).expect("parses");
        assert_eq!(before.store_calls.get("dedupe.seen_many"), Some(&4.0));
        assert_eq!(before.stage_outputs, 10.0);
        let after = MetricCounts::parse(AFTER).expect("parses");
        let delta = after.since(&before);
        // Over engines, less what was there before; stage_records ignored.
        assert_eq!(delta.store_calls.get("dedupe.seen_many"), Some(&6.0));
        assert_eq!(delta.store_calls.get("contacts.get_user"), Some(&20.0));
        assert_eq!(delta.stage_outputs, 40.0);

        assert_eq!(delta.statements.get("SELECT dedupe"), Some(&12.0));

        let per = PerNotification::of(&delta, 20);
        assert_eq!(per.store_calls.total, 1.6);
        assert_eq!(per.stage_outputs, 2.0);
        // Most first, ties by name, five at most.
        assert_eq!(
            per.store_calls.top_text(),
            "contacts.get_user 1.00, dedupe.seen_many 0.30, apps.get 0.15, a.one 0.05, b.one 0.05"
        );
        assert_eq!(per.statements.total, 0.9);
        assert_eq!(
            per.statements.top_text(),
            "SELECT dedupe 0.60, INSERT dedupe 0.30"
        );
        // Nothing delivered: counts, not a division by zero.
        assert_eq!(PerNotification::of(&delta, 0).stage_outputs, 40.0);
    }
}
