//! `tidings bench-inbox`: a load generator for the in-app inbox through its
//! public APIs.
//!
//! It starts the whole pipeline in this process (on the embedded default, or
//! on the Kafka and store the configuration names) and measures three things
//! (`--parts`, all by default):
//!
//! - **writes**: `--notifications` in-app notifications through gRPC `Send`
//!   (CHANNEL_IN_APP, raw content) from concurrent callers to `--users`
//!   users, until the in-app sender has stored every one (progress from its
//!   `provider_results_total{provider="inbox",outcome="sent"}`, counted after
//!   the store write; then checked in the store, user by user): items/s end
//!   to end. `--watched` of the users hold an SSE stream open the whole time,
//!   and every one of their items is timed from the `Send` answer to its
//!   `notification` event on the stream.
//! - **reads**: `GET /v1/me/notifications/count` and
//!   `GET /v1/me/notifications?limit=20`, alternately, offered open loop at
//!   `--read-rate` for `--read-secs` (read `k` is due `k / rate` after the
//!   start, whatever the answers before it did; latency is counted from when
//!   it was due, so a stall shows instead of slowing the load) over
//!   `--read-users` users given `--items-per-user` items each in the store.
//! - **streams**: `--streams` idle SSE streams, one user each, until each
//!   has had its first `counts` event. The client side runs in a child
//!   process (this binary again, `--hold-streams`), so the resident memory
//!   this process gains while they are open is the server side's: the
//!   gateway's connections, tasks and live queues. Twice: the second round
//!   shows whether the first one's memory is reused or lost, and the open
//!   files show the gateway closing its sockets when the client goes.
//!
//! Beside every rate it prints the CPU time this process used per unit of
//! work (getrusage): the gateway, the stages, the embedded Kafka and SQLite
//! when embedded, and the bench's own gRPC/HTTP clients for writes and
//! reads. Everything is on loopback and bounded in count and time.

use std::{
    collections::HashMap,
    io::{BufRead, Write},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use futures::{StreamExt, TryStreamExt, stream};
use tidings_config::Config;
use tidings_gateway::user_token::UserTokens;
use tidings_schemas::proto::v1 as pb;
use tidings_store::{InboxItem, Store};
use tidings_telemetry::ProviderResult;
use tokio::sync::{Semaphore, mpsc};

use crate::{
    bench::percentile,
    client::Client,
    runtime::{Pipeline, create_app},
};

#[derive(Debug, Clone, clap::Args)]
pub struct InboxBenchOptions {
    /// Which measurements to run, comma separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "writes,reads,streams"
    )]
    pub parts: Vec<Part>,
    /// In-app notifications to send through gRPC Send (writes), one user
    /// each, round robin over --users.
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    pub notifications: usize,
    /// Users the notifications go to (writes).
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    pub users: usize,
    /// Concurrent Send callers (writes).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub callers: usize,
    /// Users, among --users, holding an SSE stream open while the
    /// notifications go out; each of their items is timed from the Send
    /// answer to the stream (writes).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub watched: usize,
    /// Offered read load, reads/s, counts and list pages alternately
    /// (reads).
    #[arg(long, value_name = "PER_SEC", default_value_t = 1_000.0)]
    pub read_rate: f64,
    /// Seconds the reads are offered for (reads).
    #[arg(long, value_name = "SECS", default_value_t = 20)]
    pub read_secs: u64,
    /// Users read, spread evenly (reads).
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    pub read_users: usize,
    /// Items each read user has, written to the store before reading
    /// (reads).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub items_per_user: usize,
    /// Idle SSE streams to open, one user each, from a child process
    /// (streams). The gateway refuses more than [inbox] max_streams.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub streams: usize,
    /// Internal: run as the bench's child process that holds the idle
    /// streams of the gateway at this base URL (tokens on stdin).
    #[arg(long, hide = true, value_name = "URL")]
    pub hold_streams: Option<String>,
}

/// One measurement of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// In-app sends through gRPC until stored, and send->stream latency.
    Writes,
    /// Count and list latency at a fixed offered rate.
    Reads,
    /// Memory of idle SSE streams.
    Streams,
}

/// Tokens live longer than any bounded run.
const TOKEN_TTL: Duration = Duration::from_secs(3 * 3600);
/// The writes stop waiting for the sender after this.
const WRITE_DEADLINE: Duration = Duration::from_secs(600);
/// Streams (the child's) must all be open by then.
const OPEN_DEADLINE: Duration = Duration::from_secs(300);
/// Reads in flight at once at most: beyond it the load is no longer open
/// loop (the next read waits, and its latency shows the wait).
const MAX_READS_IN_FLIGHT: usize = 1_024;
/// SSE streams the child opens at once.
const OPENING_AT_ONCE: usize = 128;
/// Descriptors kept for everything but the streams (store, Kafka, clients).
const SPARE_FILES: u64 = 1_000;

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
}

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; zeroed is a valid
    // rusage if it fails, and it is only read after it succeeded.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return Duration::ZERO;
        }
        usage.assume_init()
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Raises the soft open-files limit to the hard one (a stream is a socket
/// on each side) and answers (before, after).
fn raise_open_files() -> Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls read or write only the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            bail!("reading RLIMIT_NOFILE: {}", std::io::Error::last_os_error());
        }
        let before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            bail!(
                "raising RLIMIT_NOFILE to {}: {}",
                limit.rlim_max,
                std::io::Error::last_os_error()
            );
        }
        Ok((before, limit.rlim_cur))
    }
}

/// The `<field>: <n> kB` line of a `/proc/<pid>/status` or `smaps_rollup`
/// text, in KiB.
fn proc_kib(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// Resident memory of process `pid` ("self" for this one), in KiB.
fn rss_kib(pid: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    proc_kib(&status, "VmRSS").with_context(|| format!("no VmRSS in {path}"))
}

/// This process's resident memory in transparent huge pages, in KiB (0
/// when the kernel does not say): a 2 MiB page is resident whole once any
/// of it is touched, so memory allocated but never written counts too.
fn anon_huge_kib() -> u64 {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|text| proc_kib(&text, "AnonHugePages"))
        .unwrap_or(0)
}

/// Open file descriptors of this process (the gateway's sockets among
/// them).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// CPU model, cores, memory and kernel, for the record.
fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = read("/proc/sys/kernel/osrelease");
    format!(
        "{model}, {cores} cores, {memory_gib:.1} GiB, Linux {}",
        kernel.trim()
    )
}

/// An open-loop schedule: `total` requests, request `k` due `k / rate`
/// seconds after the start, whether or not earlier ones were answered.
#[derive(Debug, Clone, Copy)]
struct Pacing {
    rate: f64,
    total: usize,
}

impl Pacing {
    /// `rate` requests a second for `secs` seconds.
    fn new(rate: f64, secs: u64) -> Result<Self> {
        if !(rate.is_finite() && rate > 0.0) || secs == 0 {
            bail!("--read-rate must be above 0 and --read-secs at least 1");
        }
        Ok(Self {
            rate,
            total: (rate * secs as f64).round().max(1.0) as usize,
        })
    }

    /// When request `k` is due, after the start.
    fn due(&self, k: usize) -> Duration {
        Duration::from_secs_f64(k as f64 / self.rate)
    }
}

/// One Server-Sent Event; comments (heartbeats) are not events.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct SseEvent {
    event: String,
    data: String,
    id: String,
}

/// Splits an SSE body, arriving in chunks cut anywhere, into events (the
/// WHATWG event-stream format: `field: value` lines, `\n` or `\r\n`, a
/// blank line ends an event, `:` lines are comments).
#[derive(Debug, Default)]
struct SseParser {
    /// Bytes of a line not yet ended.
    partial: Vec<u8>,
    pending: SseEvent,
    /// Whether `pending` has a field yet.
    started: bool,
}

impl SseParser {
    /// Feeds `bytes`; answers the events they completed, in order.
    fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut done = Vec::new();
        self.partial.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(end) = self.partial[start..].iter().position(|&b| b == b'\n') {
            let line = &self.partial[start..start + end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = String::from_utf8_lossy(line).into_owned();
            start += end + 1;
            if line.is_empty() {
                if std::mem::take(&mut self.started) {
                    done.push(std::mem::take(&mut self.pending));
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            self.started = true;
            match field {
                "event" => self.pending.event = value.to_owned(),
                "id" => self.pending.id = value.to_owned(),
                "data" => {
                    if !self.pending.data.is_empty() {
                        self.pending.data.push('\n');
                    }
                    self.pending.data.push_str(value);
                }
                _ => {}
            }
        }
        self.partial.drain(..start);
        done
    }
}

/// An open SSE stream and what it has parsed.
struct SseStream {
    response: reqwest::Response,
    parser: SseParser,
    /// Events parsed but not yet taken.
    ready: std::collections::VecDeque<SseEvent>,
}

/// Why a stream could not be opened.
#[derive(Debug)]
enum OpenError {
    /// The gateway answered this status (503: full, or not reading events
    /// yet; retry).
    Refused(u16, String),
    /// No answer, or the stream broke before its first event.
    Broken(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(status, body) => write!(f, "refused with {status}: {body}"),
            Self::Broken(why) => write!(f, "{why}"),
        }
    }
}

impl SseStream {
    /// Opens the inbox stream of the token's user at `base` (the token in
    /// `access_token`, as a browser's EventSource sends it) and waits for
    /// its first event, which is always `counts`.
    async fn open(
        client: &reqwest::Client,
        base: &str,
        token: &str,
    ) -> Result<(Self, SseEvent), OpenError> {
        let response = client
            .get(format!(
                "{base}/v1/me/notifications/stream?access_token={token}"
            ))
            .header("accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| OpenError::Broken(format!("{e:#}")))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(OpenError::Refused(
                status,
                response.text().await.unwrap_or_default(),
            ));
        }
        let mut stream = Self {
            response,
            parser: SseParser::default(),
            ready: Default::default(),
        };
        match stream.next().await {
            Some(first) if first.event == "counts" => Ok((stream, first)),
            Some(other) => Err(OpenError::Broken(format!(
                "the first event was {:?}, not counts",
                other.event
            ))),
            None => Err(OpenError::Broken(
                "the stream ended before its first event".into(),
            )),
        }
    }

    /// The next event; `None` when the stream ends or breaks.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            let chunk = self.response.chunk().await.ok()??;
            self.ready.extend(self.parser.push(&chunk));
        }
    }
}

fn http_client() -> Result<reqwest::Client> {
    // reqwest is built without a default TLS crypto provider (plain HTTP
    // here, but the builder wants one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(MAX_READS_IN_FLIGHT)
        .build()
        .context("building the HTTP client")
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn inbox_sent() -> u64 {
    ProviderResult {
        provider: "inbox",
        outcome: "sent",
    }
    .total()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `p50 x ms, p99 y ms, max z ms` of sorted latencies.
fn spread(sorted: &[Duration]) -> String {
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(percentile(sorted, 0.50)),
        ms(percentile(sorted, 0.99)),
        ms(sorted.last().copied().unwrap_or_default())
    )
}

/// One in-app notification through gRPC Send (raw content) to `to`;
/// answers its notification id, which is the inbox item's id.
async fn send_in_app(client: &Client, to: String, n: usize) -> Result<String> {
    client
        .send(pb::SendRequest {
            user_ids: vec![to],
            channels: vec![pb::Channel::InApp as i32],
            category: "bench".into(),
            content: Some(pb::send_request::Content::Raw(pb::RawContent {
                title: format!("Bench item {n}"),
                body: "An in-app notification from tidings bench-inbox.".into(),
                action_url: format!("https://app.example.com/items/{n}"),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await?
        .notification_ids
        .into_iter()
        .next()
        .context("Send answered no notification id")
}

/// What the parts share.
struct Bench {
    store: Store,
    tokens: UserTokens,
    grpc: String,
    http: String,
    run_id: String,
    web: reqwest::Client,
    /// What else runs in this process and counts in its CPU and memory.
    in_process: &'static str,
    /// CPU seconds a second this process uses with no load.
    idle_cpu_per_sec: f64,
    /// The gateway's heartbeat interval on idle streams.
    heartbeat: Duration,
}

impl Bench {
    /// The report's CPU line: `used` over `over` for `units` of work, gross
    /// and net of what the idle pipeline (consumers polling, the embedded
    /// cluster's timers) uses anyway.
    fn cpu_line(
        &self,
        used: Duration,
        over: Duration,
        units: usize,
        unit: &str,
        what: &str,
    ) -> String {
        let units = units.max(1) as f64;
        let idle = self.idle_cpu_per_sec * over.as_secs_f64();
        format!(
            "  CPU           {:.2} s in {:.2} s: {:.3} ms per {unit}, {:.3} ms net of the idle pipeline's {:.0} ms/s ({what}{})",
            used.as_secs_f64(),
            over.as_secs_f64(),
            ms(used) / units,
            (used.as_secs_f64() - idle).max(0.0) * 1e3 / units,
            self.idle_cpu_per_sec * 1e3,
            self.in_process
        )
    }

    fn token(&self, user: &str) -> String {
        self.tokens.mint(user, now_secs(), TOKEN_TTL)
    }

    /// Opens `user`'s stream, retrying while the gateway answers 503 (its
    /// events consumer is not reading yet) for up to a minute.
    async fn open_stream(&self, user: &str) -> Result<SseStream> {
        let started = Instant::now();
        loop {
            match SseStream::open(&self.web, &self.http, &self.token(user)).await {
                Ok((stream, _counts)) => return Ok(stream),
                Err(OpenError::Refused(503, _)) if started.elapsed() < Duration::from_secs(60) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => bail!("opening {user}'s inbox stream: {e}"),
            }
        }
    }
}

pub async fn run(mut config: Config, options: InboxBenchOptions) -> Result<()> {
    let o = &options;
    let parts = |p: Part| o.parts.contains(&p);
    if parts(Part::Writes) && (o.notifications == 0 || o.users == 0 || o.callers == 0) {
        bail!("--notifications, --users and --callers must be at least 1");
    }
    if o.watched > o.users {
        bail!("--watched must be at most --users");
    }
    let pacing = Pacing::new(o.read_rate, o.read_secs)?;
    if parts(Part::Reads) && (o.read_users == 0 || o.items_per_user == 0) {
        bail!("--read-users and --items-per-user must be at least 1");
    }
    if parts(Part::Streams) && o.streams + o.watched > config.inbox.max_streams {
        bail!(
            "--streams {} is over the gateway's [inbox] max_streams {}: raise it (TIDINGS_INBOX__MAX_STREAMS)",
            o.streams,
            config.inbox.max_streams
        );
    }
    let (files_before, files) = raise_open_files()?;
    if parts(Part::Streams) && o.streams as u64 + SPARE_FILES > files {
        bail!(
            "--streams {} needs more open files than the hard limit {files} allows",
            o.streams
        );
    }
    config.gateway.grpc_addr = ([127, 0, 0, 1], 0).into();
    config.gateway.http_addr = ([127, 0, 0, 1], 0).into();
    let secret = config.feed.user_token_secret.clone();
    let embedded_kafka = config.kafka.is_embedded();
    let (kafka, store_url) = (
        config.kafka.bootstrap_servers.clone(),
        config.store.url.clone(),
    );
    let heartbeat = Duration::from_secs(config.inbox.heartbeat_secs);
    let (max_items, ttl) = (
        config.inbox.max_items,
        Duration::from_secs(config.inbox.ttl_days * 86_400),
    );
    println!(
        "bench-inbox: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!(
        "bench-inbox: {} build; {}; {}",
        if cfg!(debug_assertions) {
            "DEBUG (numbers are relative only)"
        } else {
            "release"
        },
        machine(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    println!(
        "bench-inbox: open files limit (RLIMIT_NOFILE) {files}{}",
        if files_before < files {
            format!(", raised from {files_before}")
        } else {
            ", the soft limit was the hard one already".into()
        }
    );
    let pipeline = Pipeline::start(config, true).await?;
    let store = pipeline.runtime.store.clone();
    println!("bench-inbox: pipeline up (kafka {kafka}, store {store_url})");
    // What the pipeline costs doing nothing, once its consumers have joined.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle_cpu, idle_from) = (cpu_time(), Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_cpu_per_sec =
        cpu_time().saturating_sub(idle_cpu).as_secs_f64() / idle_from.elapsed().as_secs_f64();
    println!(
        "bench-inbox: the idle pipeline uses {:.0} ms of CPU a second",
        idle_cpu_per_sec * 1e3
    );
    let bench = Bench {
        idle_cpu_per_sec,
        heartbeat,
        store: store.clone(),
        tokens: UserTokens::new(&secret),
        grpc: format!("http://{}", pipeline.gateway.grpc),
        http: format!("http://{}", pipeline.gateway.http),
        run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
        web: http_client()?,
        in_process: match (embedded_kafka, store.backend_name()) {
            (true, "sqlite") => ", the embedded Kafka and SQLite",
            (true, _) => ", the embedded Kafka",
            (false, "sqlite") => ", SQLite",
            (false, _) => "",
        },
    };
    let mut report = Vec::new();
    let result = async {
        if parts(Part::Writes) {
            report.extend(writes(&bench, o).await?);
        }
        if parts(Part::Reads) {
            report.extend(reads(&bench, o, pacing, max_items, ttl).await?);
        }
        if parts(Part::Streams) {
            report.extend(streams(&bench, o).await?);
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    println!("\nbench-inbox results");
    for line in &report {
        println!("  {line}");
    }
    pipeline.stop().await?;
    result
}

/// Part 1: in-app sends through gRPC until all are stored; send->stream
/// latency of the watched users' items. Answers the report's lines.
async fn writes(b: &Bench, o: &InboxBenchOptions) -> Result<Vec<String>> {
    let user = |i: usize| format!("ib-{}-w{i}", b.run_id);
    let (key, secret) = create_app(&b.store, "bench-inbox", vec!["send".into()], None).await?;
    // Warm up through the whole path (gateway, enricher, in-app sender,
    // store, events topic, live stream) before the clock starts.
    let warm = Instant::now();
    let warm_user = format!("ib-{}-warm", b.run_id);
    let mut warm_stream = b.open_stream(&warm_user).await?;
    let caller = || Client::connect(&b.grpc, Some(key.clone()), Some(secret.clone()));
    let warm_id = send_in_app(&caller().await?, warm_user, 0).await?;
    loop {
        let left = Duration::from_secs(120).saturating_sub(warm.elapsed());
        match tokio::time::timeout(left, warm_stream.next()).await {
            Err(_) => bail!("the warm-up item did not reach its stream within 120 s"),
            Ok(None) => bail!("the warm-up stream ended"),
            Ok(Some(e)) if e.event == "notification" && e.data.contains(&warm_id) => break,
            Ok(Some(_)) => {}
        }
    }
    drop(warm_stream);
    println!(
        "bench-inbox: warmed up in {:.1} s; {} users hold a stream; sending {} in-app notifications to {} users",
        warm.elapsed().as_secs_f64(),
        o.watched,
        o.notifications,
        o.users
    );

    // The watched users' streams: arrival time by item id.
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut watchers = Vec::new();
    for i in 0..o.watched {
        let mut stream = b.open_stream(&user(i)).await?;
        let arrived = arrived.clone();
        watchers.push(tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                let at = Instant::now();
                if event.event != "notification" {
                    continue;
                }
                let id = serde_json::from_str::<serde_json::Value>(&event.data)
                    .ok()
                    .and_then(|v| v["item"]["id"].as_str().map(str::to_owned));
                if let Some(id) = id {
                    arrived.lock().expect("not poisoned").insert(id, at);
                }
            }
        }));
    }

    let sent_before = inbox_sent();
    let accepted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let cpu = cpu_time();
    let started = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..o.callers {
        let client = caller().await?;
        let (next, accepted, run_id) = (next.clone(), accepted.clone(), b.run_id.clone());
        let (total, users, watched) = (o.notifications, o.users, o.watched);
        callers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, anyhow::Error>(Instant::now());
                }
                let to = n % users;
                let id = send_in_app(&client, format!("ib-{run_id}-w{to}"), n).await?;
                if to < watched {
                    accepted
                        .lock()
                        .expect("not poisoned")
                        .insert(id, Instant::now());
                }
            }
        }));
    }
    let (bar, terminal) = crate::progress::bar(
        o.notifications as u64,
        "{bar:40} {pos}/{len} stored, {msg} [{elapsed}, eta {eta}]",
    );
    let expected = o.notifications as u64;
    // The counter is looked at often, so the end is timed closely; the
    // progress shows less often.
    let mut shown = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let stored = inbox_sent() - sent_before;
        let finished = stored >= expected || started.elapsed() > WRITE_DEADLINE;
        let every = Duration::from_millis(if terminal { 200 } else { 1000 });
        if shown.elapsed() >= every || finished {
            shown = Instant::now();
            let sent = next.load(Ordering::Relaxed).min(o.notifications);
            let secs = started.elapsed().as_secs_f64();
            if terminal {
                bar.set_position(stored);
                bar.set_message(format!("{sent} sent, {:.0}/s", stored as f64 / secs));
            } else {
                println!(
                    "bench-inbox: {secs:>5.1}s sent {sent:>7} stored {stored:>7} ({:.0}/s)",
                    stored as f64 / secs
                );
            }
        }
        if finished {
            break;
        }
    }
    bar.finish_and_clear();
    let stored_in = started.elapsed();
    let write_cpu = cpu_time().saturating_sub(cpu);
    let mut answered_in = Duration::ZERO;
    for c in callers {
        answered_in = answered_in.max(c.await??.duration_since(started));
    }
    // The store's own word: every user's total.
    let in_store: u64 = stream::iter(0..o.users)
        .map(|i| {
            let (store, user) = (b.store.clone(), user(i));
            async move { store.inbox.counts(&user).await }
        })
        .buffer_unordered(32)
        .map_ok(|c| u64::from(c.total))
        .try_fold(0, |sum, n| async move {
            Ok::<_, tidings_store::StoreError>(sum + n)
        })
        .await
        .context("counting the stored items")?;
    // Items a watcher has not seen yet get a last few seconds.
    let sampled = accepted.lock().expect("not poisoned").len();
    let waited = Instant::now();
    while arrived.lock().expect("not poisoned").len() < sampled
        && waited.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for w in &watchers {
        w.abort();
    }
    let mut latencies: Vec<Duration> = {
        let (accepted, arrived) = (
            accepted.lock().expect("not poisoned"),
            arrived.lock().expect("not poisoned"),
        );
        accepted
            .iter()
            .filter_map(|(id, at)| {
                arrived
                    .get(id)
                    .map(|got| got.saturating_duration_since(*at))
            })
            .collect()
    };
    latencies.sort();
    let n = o.notifications as f64;
    let lines = vec![
        format!(
            "writes          {} in-app notifications to {} users by {} callers (gRPC Send, raw content)",
            o.notifications, o.users, o.callers
        ),
        format!(
            "  answered      in {:.2} s: {:.0} sends/s",
            answered_in.as_secs_f64(),
            n / answered_in.as_secs_f64()
        ),
        format!(
            "  stored        {} in {:.2} s: {:.0} items/s end to end; the store holds {in_store} for these users",
            inbox_sent() - sent_before,
            stored_in.as_secs_f64(),
            n / stored_in.as_secs_f64()
        ),
        b.cpu_line(
            write_cpu,
            stored_in,
            o.notifications,
            "item",
            "whole process: gateway, stages, gRPC clients",
        ),
        format!(
            "  send->stream  {} of {sampled} sampled items seen on an open SSE stream: {}",
            latencies.len(),
            spread(&latencies)
        ),
    ];
    if in_store < expected {
        bail!(
            "{}\nonly {in_store} of {expected} items are in the store",
            lines.join("\n")
        );
    }
    Ok(lines)
}

/// Which read a scheduled request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    Count = 0,
    List = 1,
}

/// Part 2: count and list latency at a fixed offered rate.
async fn reads(
    b: &Bench,
    o: &InboxBenchOptions,
    pacing: Pacing,
    max_items: u32,
    ttl: Duration,
) -> Result<Vec<String>> {
    let users: Vec<String> = (0..o.read_users)
        .map(|i| format!("ib-{}-r{i}", b.run_id))
        .collect();
    let seeding = Instant::now();
    let now = tidings_store::now_millis();
    let puts = users
        .iter()
        .flat_map(|u| (0..o.items_per_user).map(move |k| (u, k)));
    stream::iter(puts)
        .map(|(user, k)| {
            let store = b.store.clone();
            let item = InboxItem {
                user_id: user.clone(),
                notification_id: format!("{user}-{k}"),
                created_at: now - (o.items_per_user - k) as i64,
                category: Some("bench".into()),
                template_name: None,
                title: Some(format!("Bench item {k}")),
                body: Some("An in-app notification from tidings bench-inbox.".into()),
                action_url: Some(format!("https://app.example.com/items/{k}")),
                avatar_url: None,
                data: Default::default(),
                read_at: None,
                archived_at: None,
            };
            async move { store.inbox.put(&item, max_items, ttl).await }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await
        .context("writing the read users' items")?;
    println!(
        "bench-inbox: {} users given {} items each in {:.1} s; reading at {:.0}/s for {} s",
        o.read_users,
        o.items_per_user,
        seeding.elapsed().as_secs_f64(),
        pacing.rate,
        o.read_secs
    );
    let tokens: Arc<Vec<String>> = Arc::new(users.iter().map(|u| b.token(u)).collect());
    let expected_items = o.items_per_user.min(20);

    // Every connection the reads need, opened before the clock starts.
    for token in tokens.iter().take(8) {
        read_once(&b.web, &b.http, Read::Count, token).await?;
    }

    let latencies: Arc<Mutex<[Vec<Duration>; 2]>> = Arc::default();
    let failures = Arc::new(Mutex::new((0usize, None::<String>)));
    let short_pages = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(Semaphore::new(MAX_READS_IN_FLIGHT));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Instant>();
    let (bar, terminal) = crate::progress::bar(
        pacing.total as u64,
        "{bar:40} {pos}/{len} reads [{elapsed}, eta {eta}]",
    );
    let cpu = cpu_time();
    let start = tokio::time::Instant::now();
    let mut late = Duration::ZERO;
    let mut last_line = Instant::now();
    for k in 0..pacing.total {
        let due = start + pacing.due(k);
        tokio::time::sleep_until(due).await;
        let permit = in_flight.clone().acquire_owned().await?;
        late = late.max(due.elapsed());
        let kind = if k % 2 == 0 { Read::Count } else { Read::List };
        // A spread of users, not a hot few.
        let token = tokens[k.wrapping_mul(7919) % tokens.len()].clone();
        let (web, base) = (b.web.clone(), b.http.clone());
        let (latencies, failures, short_pages, done_tx) = (
            latencies.clone(),
            failures.clone(),
            short_pages.clone(),
            done_tx.clone(),
        );
        tokio::spawn(async move {
            let answer = read_once(&web, &base, kind, &token).await;
            let took = due.elapsed();
            drop(permit);
            match answer {
                Ok(items) => {
                    if kind == Read::List && items < expected_items {
                        short_pages.fetch_add(1, Ordering::Relaxed);
                    }
                    latencies.lock().expect("not poisoned")[kind as usize].push(took);
                }
                Err(e) => {
                    let mut f = failures.lock().expect("not poisoned");
                    f.0 += 1;
                    f.1.get_or_insert_with(|| format!("{e:#}"));
                }
            }
            let _ = done_tx.send(Instant::now());
        });
        if !terminal && last_line.elapsed() >= Duration::from_secs(1) {
            last_line = Instant::now();
            println!(
                "bench-inbox: {:>5.1}s reads offered {k:>7}",
                start.elapsed().as_secs_f64()
            );
        }
        bar.set_position(k as u64);
    }
    drop(done_tx);
    let mut finished = 0;
    let mut last_done = start.into_std();
    let drain = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(drain);
    while finished < pacing.total {
        tokio::select! {
            done = done_rx.recv() => match done {
                Some(at) => { finished += 1; last_done = last_done.max(at); }
                None => break,
            },
            _ = &mut drain => break,
        }
    }
    bar.finish_and_clear();
    let read_cpu = cpu_time().saturating_sub(cpu);
    let elapsed = last_done.duration_since(start.into_std());
    let [mut counts, mut lists] = std::mem::take(&mut *latencies.lock().expect("not poisoned"));
    counts.sort();
    lists.sort();
    let (failed, first_failure) = failures.lock().expect("not poisoned").clone();
    let answered = counts.len() + lists.len();
    let mut lines = vec![
        format!(
            "reads           {} offered at {:.0}/s open loop ({} s; counts and pages of 20 alternately) over {} users with {} items each",
            pacing.total, pacing.rate, o.read_secs, o.read_users, o.items_per_user
        ),
        format!(
            "  achieved      {answered} answered in {:.2} s: {:.0} reads/s; {failed} failed; dispatch at most {:.1} ms late",
            elapsed.as_secs_f64(),
            answered as f64 / elapsed.as_secs_f64(),
            ms(late)
        ),
        format!(
            "  count         {} reads: {} (from when each was due)",
            counts.len(),
            spread(&counts)
        ),
        format!(
            "  list          {} pages: {}; {} pages short of {expected_items} items",
            lists.len(),
            spread(&lists),
            short_pages.load(Ordering::Relaxed)
        ),
        b.cpu_line(
            read_cpu,
            elapsed,
            answered,
            "read",
            "whole process, the HTTP client included",
        ),
    ];
    if let Some(why) = first_failure {
        lines.push(format!("  first failure {why}"));
    }
    Ok(lines)
}

/// One read as `token`'s user: answers the items on the page (0 for a
/// count).
async fn read_once(web: &reqwest::Client, base: &str, kind: Read, token: &str) -> Result<usize> {
    let url = match kind {
        Read::Count => format!("{base}/v1/me/notifications/count"),
        Read::List => format!("{base}/v1/me/notifications?limit=20"),
    };
    let response = web.get(url).bearer_auth(token).send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        bail!(
            "{kind:?} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let value: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(match kind {
        Read::Count => {
            value["total"]
                .as_u64()
                .ok_or_else(|| anyhow!("a count without total: {value}"))?;
            0
        }
        Read::List => value["items"].as_array().map_or(0, Vec::len),
    })
}

/// The bench's child process, holding the idle streams; killed if the
/// bench ends early.
struct StreamHolder(std::process::Child);

impl Drop for StreamHolder {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One round of the streams part, as this process saw it.
struct StreamRound {
    opened: usize,
    failed: usize,
    open_in: Duration,
    open_cpu: Duration,
    /// VmRSS (KiB) and open files before, while open, after closed.
    rss: [u64; 3],
    /// Of the VmRSS while open, KiB in transparent huge pages.
    huge_open: u64,
    fds: [usize; 3],
    /// From the client's exit to the gateway's sockets being closed.
    released_in: Duration,
    child_pid: String,
    child_rss: u64,
}

/// Part 3: resident memory of idle SSE streams, server side. Two rounds of
/// the same streams: the second shows whether the first's memory is
/// reused (kept by the allocator) or lost.
async fn streams(b: &Bench, o: &InboxBenchOptions) -> Result<Vec<String>> {
    let tokens: Vec<String> = (0..o.streams)
        .map(|i| b.token(&format!("ib-{}-s{i}", b.run_id)))
        .collect();
    let mut rounds = Vec::new();
    for round in 1..=2 {
        println!(
            "bench-inbox: round {round}: opening {} idle SSE streams from a child process",
            o.streams
        );
        rounds.push(hold_round(b, tokens.clone()).await?);
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    let first = &rounds[0];
    let growth = first.rss[1].saturating_sub(first.rss[0]);
    let per_stream = growth as f64 / first.opened.max(1) as f64;
    let mut lines = vec![format!(
        "streams         {} idle SSE streams, one user each, opened from a child process (each got its first counts event)",
        o.streams
    )];
    for (i, r) in rounds.iter().enumerate() {
        lines.push(format!(
            "  round {}       {} open, {} failed, in {:.1} s ({:.0} opens/s); RSS {:.1} -> {:.1} MiB open (+{:.1} MiB) -> {:.1} MiB closed; open files {} -> {} -> {} ({:.1} s after the client exited)",
            i + 1,
            r.opened,
            r.failed,
            r.open_in.as_secs_f64(),
            r.opened as f64 / r.open_in.as_secs_f64(),
            mib(r.rss[0]),
            mib(r.rss[1]),
            mib(r.rss[1].saturating_sub(r.rss[0])),
            mib(r.rss[2]),
            r.fds[0],
            r.fds[1],
            r.fds[2],
            r.released_in.as_secs_f64()
        ));
    }
    lines.extend([
        format!(
            "  server RSS    +{:.1} MiB for {} streams: {per_stream:.1} KiB per stream, {:.0} MiB per 10,000 (round 1); round 2 grew RSS by {:.1} MiB over round 1's peak",
            mib(growth),
            first.opened,
            per_stream * 10_000.0 / 1024.0,
            mib(rounds[1].rss[1].saturating_sub(first.rss[1]))
        ),
        format!(
            "  measured      this process's VmRSS (gateway, stages, Kafka clients{}; {:.1} MiB of it in transparent huge pages while open); the client side ran in child process {} ({:.1} MiB RSS, not counted)",
            b.in_process,
            mib(first.huge_open),
            first.child_pid,
            mib(first.child_rss)
        ),
        b.cpu_line(
            first.open_cpu,
            first.open_in,
            first.opened,
            "stream opened",
            "round 1; this process: the server side only",
        ),
    ]);
    Ok(lines)
}

/// Opens a stream for every token from a child process, measures this
/// process with them open, closes them and waits for the gateway to let
/// them go.
async fn hold_round(b: &Bench, tokens: Vec<String>) -> Result<StreamRound> {
    // Let what came before settle before the baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_before, fds_before) = (rss_kib("self")?, open_fds());
    let cpu = cpu_time();
    let exe = std::env::current_exe().context("finding this binary")?;
    let child = std::process::Command::new(exe)
        .args(["bench-inbox", "--hold-streams", &b.http])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .context("starting the stream-holding child process")?;
    let mut holder = StreamHolder(child);
    let child_pid = holder.0.id().to_string();
    let mut stdin = holder.0.stdin.take().context("the child's stdin")?;
    let stdout = holder.0.stdout.take().context("the child's stdout")?;
    // Tokens, then a blank line; stdin stays open: its end tells the child
    // to close the streams and exit.
    let stdin = tokio::task::spawn_blocking(move || {
        for t in &tokens {
            writeln!(stdin, "{t}")?;
        }
        writeln!(stdin)?;
        stdin.flush()?;
        Ok::<_, std::io::Error>(stdin)
    });
    let (lines_tx, mut lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let stdin = stdin.await?.context("giving the child its tokens")?;
    let started = Instant::now();
    let (opened, failed) = loop {
        let line = tokio::time::timeout(OPEN_DEADLINE, lines.recv())
            .await
            .context("the child said nothing for 5 minutes")?
            .context("the child exited before its streams were open")?;
        println!("bench-inbox: child: {line}");
        if let Some(rest) = line.strip_prefix("ready ") {
            let mut n = rest.split_whitespace().map(str::parse::<usize>);
            match (n.next(), n.next()) {
                (Some(Ok(ok)), Some(Ok(failed))) => break (ok, failed),
                _ => bail!("the child's last line is not `ready <opened> <failed>`: {line}"),
            }
        }
    };
    let open_in = started.elapsed();
    let open_cpu = cpu_time().saturating_sub(cpu);
    // Idle for a moment, as open streams are: then the server side's memory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss_open, fds_open, huge_open) = (rss_kib("self")?, open_fds(), anon_huge_kib());
    let child_rss = rss_kib(&child_pid).unwrap_or(0);
    drop(stdin);
    let closing = Instant::now();
    while holder.0.try_wait()?.is_none() {
        if closing.elapsed() > Duration::from_secs(30) {
            bail!("the child did not exit within 30 s of its stdin closing");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The gateway lets a stream go when it notices the client left, at
    // the latest when a heartbeat cannot be written: its sockets tell.
    let released = Instant::now();
    let release_by = b.heartbeat + Duration::from_secs(5);
    while open_fds() > fds_before + 16 && released.elapsed() < release_by {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (released_in, fds_closed) = (released.elapsed(), open_fds());
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(StreamRound {
        opened,
        failed,
        open_in,
        open_cpu,
        rss: [rss_before, rss_open, rss_kib("self")?],
        huge_open,
        fds: [fds_before, fds_open, fds_closed],
        released_in,
        child_pid,
        child_rss,
    })
}

/// The child process of the streams part: reads tokens from stdin (up to a
/// blank line), opens one SSE stream per token at `base`, reports on stdout
/// (`opened <n>` now and then, then `ready <opened> <failed>`), keeps every
/// stream read until its stdin ends, then exits.
pub async fn hold_streams(base: &str) -> Result<()> {
    let tokens = tokio::task::spawn_blocking(|| {
        let mut tokens = Vec::new();
        for line in std::io::stdin().lock().lines() {
            let line = line?;
            if line.is_empty() {
                break;
            }
            tokens.push(line);
        }
        Ok::<_, std::io::Error>(tokens)
    })
    .await??;
    let (_, files) = raise_open_files()?;
    if tokens.len() as u64 + SPARE_FILES > files {
        bail!(
            "{} streams need more open files than the hard limit {files} allows",
            tokens.len()
        );
    }
    let client = http_client()?;
    let opening = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let (opened_tx, mut opened) = mpsc::unbounded_channel::<Result<(), String>>();
    let wanted = tokens.len();
    for token in tokens {
        let (client, base, opening, opened_tx) = (
            client.clone(),
            base.to_owned(),
            opening.clone(),
            opened_tx.clone(),
        );
        tokio::spawn(async move {
            let permit = opening.acquire_owned().await;
            match SseStream::open(&client, &base, &token).await {
                Ok((mut stream, _counts)) => {
                    drop(permit);
                    let _ = opened_tx.send(Ok(()));
                    // Idle: heartbeats only, read and dropped.
                    while stream.next().await.is_some() {}
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e.to_string()));
                }
            }
        });
    }
    drop(opened_tx);
    let (mut ok, mut failed, mut first_failure) = (0, 0, None);
    let mut last_line = Instant::now();
    let started = Instant::now();
    while ok + failed < wanted && started.elapsed() < OPEN_DEADLINE {
        match tokio::time::timeout(Duration::from_secs(1), opened.recv()).await {
            Ok(Some(Ok(()))) => ok += 1,
            Ok(Some(Err(e))) => {
                failed += 1;
                first_failure.get_or_insert(e);
            }
            Ok(None) => break,
            Err(_) => {}
        }
        if last_line.elapsed() >= Duration::from_secs(1) {
            last_line = Instant::now();
            println!("opened {ok}, failed {failed}");
        }
    }
    if let Some(why) = first_failure {
        println!("first failure: {why}");
    }
    println!("ready {ok} {}", wanted - ok);
    // Hold until the bench closes our stdin.
    tokio::task::spawn_blocking(|| {
        std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())
    })
    .await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_spreads_requests_evenly_over_the_window() {
        let p = Pacing::new(1_000.0, 20).unwrap();
        assert_eq!(p.total, 20_000);
        assert_eq!(p.due(0), Duration::ZERO);
        assert_eq!(p.due(1), Duration::from_millis(1));
        assert_eq!(p.due(1_000), Duration::from_secs(1));
        assert_eq!(p.due(19_999), Duration::from_micros(19_999_000));
        let slow = Pacing::new(0.5, 10).unwrap();
        assert_eq!((slow.total, slow.due(3)), (5, Duration::from_secs(6)));
        for (rate, secs) in [
            (0.0, 10),
            (-1.0, 10),
            (f64::NAN, 10),
            (f64::INFINITY, 10),
            (10.0, 0),
        ] {
            assert!(Pacing::new(rate, secs).is_err(), "{rate} {secs}");
        }
    }

    #[test]
    fn sse_events_split_anywhere_come_out_whole() {
        let body = "id: 17-1\nevent: counts\ndata: {\"unread\":0,\"unseen\":0,\"total\":0}\n\n\
                    : heartbeat\n\n\
                    id: 17-2\r\nevent: notification\r\ndata: {\"item\":\r\ndata: {\"id\":\"n1\"}}\r\n\r\n";
        let want = vec![
            SseEvent {
                event: "counts".into(),
                data: "{\"unread\":0,\"unseen\":0,\"total\":0}".into(),
                id: "17-1".into(),
            },
            SseEvent {
                event: "notification".into(),
                data: "{\"item\":\n{\"id\":\"n1\"}}".into(),
                id: "17-2".into(),
            },
        ];
        // Whole, and cut at every byte (\r\n split included).
        let mut whole = SseParser::default();
        assert_eq!(whole.push(body.as_bytes()), want);
        for cut in 0..body.len() {
            let mut p = SseParser::default();
            let mut got = p.push(&body.as_bytes()[..cut]);
            got.extend(p.push(&body.as_bytes()[cut..]));
            assert_eq!(got, want, "cut at {cut}");
        }
        // Byte by byte: a multi-byte character split in two survives.
        let mut p = SseParser::default();
        let text = "event: state\ndata: café\n\n";
        let got: Vec<_> = text.as_bytes().iter().flat_map(|b| p.push(&[*b])).collect();
        assert_eq!(got[0].data, "café");
        assert!(p.push(b"data: no blank line yet\n").is_empty());
    }

    #[test]
    fn a_heartbeat_alone_is_no_event() {
        let mut p = SseParser::default();
        assert!(p.push(b": heartbeat\n\n: heartbeat\n\n").is_empty());
    }

    #[test]
    fn rss_is_read_from_proc_status() {
        let status = "Name:\ttidings\nVmPeak:\t  900 kB\nVmRSS:\t   123456 kB\nThreads:\t9\n";
        assert_eq!(proc_kib(status, "VmRSS"), Some(123_456));
        assert_eq!(proc_kib(status, "VmPeak"), Some(900));
        assert_eq!(proc_kib("Name:\tx\n", "VmRSS"), None);
        // A field whose name only starts like the one asked is not it.
        assert_eq!(proc_kib("VmRSSx:\t5 kB\n", "VmRSS"), None);
        let rollup = "Rss:\t  2048 kB\nAnonHugePages:\t  1024 kB\n";
        assert_eq!(proc_kib(rollup, "AnonHugePages"), Some(1024));
        // This process has one.
        assert!(rss_kib("self").unwrap() > 0);
    }

    #[test]
    fn cpu_time_moves_forward() {
        let before = cpu_time();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_time() > before);
    }
}
