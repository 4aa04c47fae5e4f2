//! G. A hostile client next to the steady load: what input can grow must stay
//! bounded (issue 7, "memory that input can grow"), refused calls get the
//! status that says retrying will not help, and the steady load loses
//! nothing.
//!
//! The hostile client, all at once:
//! - `Send` calls with [`UNKNOWN_KEYS`] distinct unknown `x-app-key`s (the
//!   gateway's auth cache must not keep them all);
//! - `SendBatch` calls at the expansion cap (`gateway.max_expanded_notifications`,
//!   10,000 users a call), [`FLOOD_CONCURRENT`] at once, each notification
//!   as large as an SMS send may be (`sms_text` 4 KiB, `data` 16 KiB), then
//!   one call of `gateway.max_batch` (1,000) items filling gRPC's 4 MiB
//!   request limit. Their users (`hostile-<run>-*`) have no contacts, so the
//!   notifications end as no-contact; the steady load's users
//!   (`chaos-<run>-u*`) and notification ids are counted apart from them;
//! - oversized calls that must be refused: fields over their limits, more
//!   users or items than a call may carry, a request over gRPC's 4 MiB;
//! - feed reads over HTTP with garbage bearer tokens and cursors.
//!
//! The gateway is held to [`GATEWAY_RSS_LIMIT_MIB`]; every other process to
//! the suite's per-process bound. A guard kills the gateway if it passes
//! [`GUARD_RSS_MIB`] (the machine is shared), which counts as an exit.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tidings::client::Client;
use tidings_schemas::proto::v1::{self as pb, send_request::Content};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    task::JoinSet,
};
use tonic::{Code, Request};

use crate::{
    harness::{Harness, Stats, say},
    load::lock,
};

/// Distinct unknown app keys the hostile client presents.
pub const UNKNOWN_KEYS: usize = 50_000;
/// Unknown-key calls in flight at once.
const UNKNOWN_KEY_CONCURRENCY: usize = 16;
/// `SendBatch` calls at the expansion cap in flight at once.
pub const FLOOD_CONCURRENT: usize = 3;
/// Users per flood call: `gateway.max_expanded_notifications` (default).
const EXPANSION_CAP: usize = 10_000;
/// Feed reads with garbage over HTTP.
const FEED_READS: usize = 2_000;
/// The bound the gateway's peak RSS is held to under this load (debug
/// build): the flood alone may legitimately hold 3 x 10,000 x 20 KiB.
pub const GATEWAY_RSS_LIMIT_MIB: u64 = 1536;
/// Past this the guard kills the gateway, so a gateway that holds whatever
/// it is sent cannot take the shared machine down with it.
pub const GUARD_RSS_MIB: u64 = 4096;
/// No part of the hostile load runs longer than this.
const HOSTILE_LIMIT: Duration = Duration::from_secs(180);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const FLOOD_TIMEOUT: Duration = Duration::from_secs(180);

/// Answers to one kind of hostile call, by status, against what it should
/// get.
struct Tally {
    what: String,
    expected: Vec<String>,
    answers: BTreeMap<String, u64>,
}

impl Tally {
    fn new(what: &str, expected: &[Code]) -> Self {
        Self {
            what: what.into(),
            expected: expected.iter().map(|c| format!("{c:?}")).collect(),
            answers: BTreeMap::new(),
        }
    }

    fn http(what: &str, expected: &[u16]) -> Self {
        Self {
            what: what.into(),
            expected: expected.iter().map(|c| format!("HTTP {c}")).collect(),
            answers: BTreeMap::new(),
        }
    }

    fn add(&mut self, answer: String) {
        *self.answers.entry(answer).or_default() += 1;
    }

    /// Answers that are neither expected nor a timeout (an overloaded
    /// gateway may be slow; it must never answer wrongly).
    fn wrong(&self) -> Vec<(String, u64)> {
        self.answers
            .iter()
            .filter(|(a, _)| !self.expected.contains(a) && a.as_str() != "timeout")
            .map(|(a, n)| (a.clone(), *n))
            .collect()
    }

    fn line(&self) -> String {
        format!(
            "{}: {} calls, answers {:?} (expected {})",
            self.what,
            self.answers.values().sum::<u64>(),
            self.answers,
            self.expected.join(" or ")
        )
    }
}

fn code_of<T>(answer: Result<Result<T, tonic::Status>, tokio::time::error::Elapsed>) -> String {
    match answer {
        Ok(Ok(_)) => "Ok".into(),
        Ok(Err(s)) => format!("{:?}", s.code()),
        Err(_) => "timeout".into(),
    }
}

fn sms(user_ids: Vec<String>, text: String) -> pb::SendRequest {
    pb::SendRequest {
        event_id: format!("hostile-{}", uuid::Uuid::new_v4()),
        user_ids,
        channels: vec![pb::Channel::Sms as i32],
        content: Some(Content::Raw(pb::RawContent {
            sms_text: text,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// G. The hostile client while the steady load runs.
pub async fn hostile(h: &mut Harness) -> Stats {
    let mut exp = h.begin(
        "G",
        &format!(
            "hostile client: {}k unknown app keys, SendBatch at the 10,000-user cap x{FLOOD_CONCURRENT} concurrent + 1,000 items, oversized calls, garbage feed reads",
            UNKNOWN_KEYS / 1000
        ),
    );
    exp.rss_limits
        .insert("gateway".into(), GATEWAY_RSS_LIMIT_MIB);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let guard_kills = Arc::new(AtomicU64::new(0));
    let guard = {
        let (cluster, kills) = (h.cluster.clone(), guard_kills.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let Some(pid) = lock(&cluster).pid("gateway") else {
                    continue;
                };
                if vm_rss_kb(pid).is_some_and(|kb| kb > GUARD_RSS_MIB * 1024) {
                    // SAFETY: a plain kill(2) of our own child.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    kills.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    let started = Instant::now();
    let deadline = started + HOSTILE_LIMIT;
    let token = tidings_gateway::user_token::UserTokens::new("chaos-user-token-secret").mint(
        &format!("hostile-{}-reader", h.run),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
        Duration::from_secs(3600),
    );
    let (keys, (flood, accepted), oversized, feed) = tokio::join!(
        unknown_keys(h.client.clone(), deadline),
        batch_flood(h.client.clone(), h.run.clone()),
        oversized(h.client.clone()),
        garbage_feed_reads(h.http, token, deadline),
    );
    let took = started.elapsed();
    guard.abort();
    say(&format!(
        "  hostile load done in {:.0} s; {accepted} hostile notifications accepted",
        took.as_secs_f64()
    ));
    exp.notes.push(format!(
        "hostile load ran {:.0} s; {accepted} notifications to contactless users accepted by the flood",
        took.as_secs_f64()
    ));
    for tally in [&keys, &flood]
        .into_iter()
        .chain(oversized.iter())
        .chain(feed.iter())
    {
        exp.notes.push(tally.line());
        for (answer, n) in tally.wrong() {
            exp.failures.push(format!(
                "{}: {n} answered {answer}, expected {}",
                tally.what,
                tally.expected.join(" or ")
            ));
        }
    }
    let sent_keys: u64 = keys.answers.values().sum();
    if (sent_keys as usize) < UNKNOWN_KEYS {
        exp.notes.push(format!(
            "only {sent_keys} of {UNKNOWN_KEYS} unknown-key calls made within {HOSTILE_LIMIT:?}"
        ));
    }
    let kills = guard_kills.load(Ordering::SeqCst);
    if kills > 0 {
        exp.failures.push(format!(
            "the gateway passed {GUARD_RSS_MIB} MiB and the guard killed it {kills} time(s)"
        ));
    }
    h.recovered(&mut exp, "hostile load ended").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    h.finish(exp).await
}

/// Sends with distinct unknown app keys; each must be UNAUTHENTICATED.
async fn unknown_keys(client: Arc<Client>, deadline: Instant) -> Tally {
    let mut tally = Tally::new(
        &format!("{UNKNOWN_KEYS} distinct unknown x-app-key"),
        &[Code::Unauthenticated],
    );
    let mut calls = JoinSet::new();
    let mut made = 0;
    while made < UNKNOWN_KEYS && Instant::now() < deadline {
        while calls.len() >= UNKNOWN_KEY_CONCURRENCY {
            if let Some(Ok(answer)) = calls.join_next().await {
                tally.add(answer);
            }
        }
        made += 1;
        let mut notifications = client.notifications();
        calls.spawn(async move {
            let mut request = Request::new(sms(vec!["hostile-x".into()], "x".into()));
            let key = format!("hostile-{}", uuid::Uuid::new_v4().simple());
            if let (Ok(key), Ok(secret)) = (key.parse(), "not-a-secret".parse()) {
                request.metadata_mut().insert("x-app-key", key);
                request.metadata_mut().insert("x-app-secret", secret);
            }
            code_of(tokio::time::timeout(CALL_TIMEOUT, notifications.send(request)).await)
        });
    }
    while let Some(answer) = calls.join_next().await {
        if let Ok(answer) = answer {
            tally.add(answer);
        }
    }
    tally
}

/// `SendBatch` at the expansion cap with the largest SMS bodies, a few at
/// once, then one call of 1,000 items filling the 4 MiB request limit.
/// Returns the answers and the notifications accepted.
async fn batch_flood(client: Arc<Client>, run: String) -> (Tally, usize) {
    let mut tally = Tally::new(
        &format!(
            "SendBatch at the cap ({FLOOD_CONCURRENT} x 1 item x {EXPANSION_CAP} users, sms 4 KiB + data 16 KiB; then 1,000 items x 10 users)"
        ),
        &[Code::Ok],
    );
    let users = |call: usize, n: usize| -> Vec<String> {
        (0..n)
            .map(|i| format!("hostile-{run}-{call}-{i}"))
            .collect()
    };
    let text = "h".repeat(4 * 1024);
    // `data` up to its limit, keys and values: 16 KiB.
    let data: std::collections::HashMap<String, String> =
        [("h".to_owned(), "d".repeat(16 * 1024 - 1))].into();
    let mut calls = JoinSet::new();
    for call in 0..FLOOD_CONCURRENT {
        let mut item = sms(users(call, EXPANSION_CAP), text.clone());
        item.data = data.clone();
        let client = client.clone();
        calls.spawn(async move { send_batch(&client, vec![item]).await });
    }
    let mut accepted = 0;
    while let Some(done) = calls.join_next().await {
        if let Ok((answer, n)) = done {
            tally.add(answer);
            accepted += n;
        }
    }
    // 1,000 items of 10 users, ~3.8 MB in all: under gRPC's 4 MiB.
    let items: Vec<pb::SendRequest> = (0..1000)
        .map(|i| sms(users(FLOOD_CONCURRENT + i, 10), "b".repeat(3_500)))
        .collect();
    let (answer, n) = send_batch(&client, items).await;
    tally.add(answer);
    accepted += n;
    (tally, accepted)
}

/// One `SendBatch`: its status (`Ok` only if every item was accepted) and
/// the notifications accepted.
async fn send_batch(client: &Client, items: Vec<pb::SendRequest>) -> (String, usize) {
    let request = match client.request(pb::SendBatchRequest { items }) {
        Ok(r) => r,
        Err(e) => return (format!("request: {e}"), 0),
    };
    let answer =
        tokio::time::timeout(FLOOD_TIMEOUT, client.notifications().send_batch(request)).await;
    match answer {
        Ok(Ok(r)) => {
            let results = r.into_inner().results;
            let mut accepted = 0;
            let mut errors = BTreeMap::<String, u64>::new();
            for result in results {
                match result.outcome {
                    Some(pb::send_batch_result::Outcome::Accepted(a)) => {
                        accepted += a.notification_ids.len()
                    }
                    Some(pb::send_batch_result::Outcome::Error(e)) => {
                        let e: String = e.chars().take(80).collect();
                        *errors.entry(e).or_default() += 1;
                    }
                    None => *errors.entry("no outcome".into()).or_default() += 1,
                }
            }
            if errors.is_empty() {
                ("Ok".into(), accepted)
            } else {
                (format!("Ok with item errors {errors:?}"), accepted)
            }
        }
        Ok(Err(s)) => (format!("{:?}", s.code()), 0),
        Err(_) => ("timeout".into(), 0),
    }
}

/// Calls that must be refused, each a few times at once.
async fn oversized(client: Arc<Client>) -> Vec<Tally> {
    const REPEAT: usize = 8;
    let user = || vec!["hostile-oversized".to_owned()];
    let invalid = [Code::InvalidArgument];
    let mut data_over: pb::SendRequest = sms(user(), "x".into());
    data_over.data = [("h".to_owned(), "d".repeat(16 * 1024))].into();
    let sends: Vec<(&str, Vec<Code>, pb::SendRequest)> = vec![
        (
            "Send, sms_text of 4 KiB + 1",
            invalid.to_vec(),
            sms(user(), "x".repeat(4 * 1024 + 1)),
        ),
        (
            "Send, raw body of 1 MiB",
            invalid.to_vec(),
            pb::SendRequest {
                content: Some(Content::Raw(pb::RawContent {
                    body: "x".repeat(1 << 20),
                    ..Default::default()
                })),
                ..sms(user(), String::new())
            },
        ),
        ("Send, data of 16 KiB + 1", invalid.to_vec(), data_over),
        (
            "Send to 10,001 users",
            invalid.to_vec(),
            sms(
                (0..=EXPANSION_CAP)
                    .map(|i| format!("hostile-o{i}"))
                    .collect(),
                "x".into(),
            ),
        ),
        (
            // Over gRPC's 4 MiB decoding limit: refused by the transport
            // (tonic answers OUT_OF_RANGE) before anything is read.
            "Send of 5 MiB (over gRPC's 4 MiB)",
            vec![
                Code::OutOfRange,
                Code::ResourceExhausted,
                Code::InvalidArgument,
            ],
            pb::SendRequest {
                content: Some(Content::Raw(pb::RawContent {
                    email_html: "x".repeat(5 << 20),
                    ..Default::default()
                })),
                ..sms(user(), String::new())
            },
        ),
    ];
    let batches: Vec<(&str, Vec<pb::SendRequest>)> = vec![
        (
            "SendBatch of 1,001 items",
            (0..1001).map(|_| sms(user(), "x".into())).collect(),
        ),
        (
            "SendBatch of 2 items x 5,001 users (10,002 expanded)",
            (0..2)
                .map(|b| {
                    sms(
                        (0..5001).map(|i| format!("hostile-b{b}-{i}")).collect(),
                        "x".into(),
                    )
                })
                .collect(),
        ),
    ];
    let mut tallies = Vec::new();
    for (what, expected, send) in sends {
        let mut calls = JoinSet::new();
        for _ in 0..REPEAT {
            let (client, send) = (client.clone(), send.clone());
            calls.spawn(async move {
                let Ok(request) = client.request(send) else {
                    return "request".to_owned();
                };
                code_of(
                    tokio::time::timeout(CALL_TIMEOUT, client.notifications().send(request)).await,
                )
            });
        }
        let mut tally = Tally::new(what, &expected);
        while let Some(answer) = calls.join_next().await {
            tally.add(answer.unwrap_or_else(|e| format!("task: {e}")));
        }
        tallies.push(tally);
    }
    for (what, items) in batches {
        let mut calls = JoinSet::new();
        for _ in 0..REPEAT {
            let (client, items) = (client.clone(), items.clone());
            calls.spawn(async move { send_batch(&client, items).await.0 });
        }
        let mut tally = Tally::new(what, &invalid);
        while let Some(answer) = calls.join_next().await {
            tally.add(answer.unwrap_or_else(|e| format!("task: {e}")));
        }
        tallies.push(tally);
    }
    tallies
}

/// Feed reads over HTTP with garbage credentials and cursors, in turn.
async fn garbage_feed_reads(http: SocketAddr, token: String, deadline: Instant) -> Vec<Tally> {
    let garbage_cursor: String = (0..2000)
        .map(|i| (b'A' + (i * 7 % 26) as u8) as char)
        .collect();
    let bearer = format!("Bearer {token}");
    let cases: Vec<(&str, Vec<u16>, String, Option<String>)> = vec![
        (
            "feed read, garbage bearer token",
            vec![401],
            "/v1/me/feed".into(),
            Some("Bearer not.a.token".into()),
        ),
        (
            "feed read, 8 KiB garbage bearer token",
            vec![401],
            "/v1/me/feed".into(),
            Some(format!("Bearer {}", "g".repeat(8 * 1024))),
        ),
        ("feed read, no token", vec![401], "/v1/me/feed".into(), None),
        (
            "feed read, garbage cursor",
            vec![400],
            "/v1/me/feed?cursor=garbage".into(),
            Some(bearer.clone()),
        ),
        (
            "feed read, 2,000-character garbage cursor",
            vec![400],
            format!("/v1/me/feed?cursor={garbage_cursor}"),
            Some(bearer.clone()),
        ),
        (
            "feed read, limit=0",
            vec![400],
            "/v1/me/feed?limit=0".into(),
            Some(bearer),
        ),
    ];
    let mut tallies: Vec<Tally> = cases
        .iter()
        .map(|(what, expected, _, _)| Tally::http(what, expected))
        .collect();
    let cases = Arc::new(cases);
    let mut calls: JoinSet<(usize, String)> = JoinSet::new();
    let mut made = 0;
    while made < FEED_READS && Instant::now() < deadline {
        while calls.len() >= 8 {
            if let Some(Ok((i, answer))) = calls.join_next().await {
                tallies[i].add(answer);
            }
        }
        let i = made % cases.len();
        made += 1;
        let cases = cases.clone();
        calls.spawn(async move {
            let (_, _, path, auth) = &cases[i];
            (i, http_get(http, path, auth.as_deref()).await)
        });
    }
    while let Some(done) = calls.join_next().await {
        if let Ok((i, answer)) = done {
            tallies[i].add(answer);
        }
    }
    tallies
}

/// One `GET` over a fresh connection: "HTTP <status>", or what failed.
async fn http_get(addr: SocketAddr, path: &str, auth: Option<&str>) -> String {
    match tokio::time::timeout(CALL_TIMEOUT, get(addr, path, auth)).await {
        Ok(Ok(status)) | Ok(Err(status)) => status,
        Err(_) => "timeout".into(),
    }
}

async fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> Result<String, String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {}", e.kind()))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| format!("read: {}", e.kind()))?;
    let head = String::from_utf8_lossy(&response[..response.len().min(64)]).into_owned();
    head.split(' ')
        .nth(1)
        .map(|s| format!("HTTP {s}"))
        .ok_or_else(|| "no HTTP status".to_owned())
}

/// VmRSS of a live process, in KiB.
fn vm_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
