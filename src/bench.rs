//! `tidings bench`: a load generator through the public batch send API.
//!
//! It starts the whole pipeline in this process (on the embedded default, or
//! on the Kafka and store the configuration names), points the SMS channel at
//! a local Twilio-compatible server with the real Twilio client, sends
//! notifications with `SendBatch` from concurrent callers, and measures, per
//! notification, the time from the gateway's acknowledgement to the
//! provider server receiving the message.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use axum::{Form, Json, Router, extract::State, routing::post};
use tidings_config::Config;
use tidings_schemas::proto::v1 as pb;
use tidings_store::User;

use crate::{
    client::Client,
    runtime::{Pipeline, create_app},
};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Notifications to send (one SMS each).
    #[arg(long, default_value_t = 50_000)]
    pub notifications: usize,
    /// Users they go to, round robin (each created with a phone number).
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
}

/// Receipt times at the provider, by notification sequence number.
#[derive(Clone, Default)]
struct Receipts(Arc<Mutex<HashMap<usize, Instant>>>);

async fn twilio_messages(
    State(receipts): State<Receipts>,
    Form(form): Form<HashMap<String, String>>,
) -> (axum::http::StatusCode, Json<serde_json::Value>) {
    let at = Instant::now();
    if let Some(seq) = form
        .get("Body")
        .and_then(|b| b.strip_prefix("bench "))
        .and_then(|s| s.parse().ok())
    {
        receipts
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(seq, at);
    }
    (
        axum::http::StatusCode::CREATED,
        Json(serde_json::json!({"sid": "SMbench", "status": "queued"})),
    )
}

async fn start_provider(receipts: Receipts) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route(
            "/2010-04-01/Accounts/{sid}/Messages.json",
            post(twilio_messages),
        )
        .with_state(receipts);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub async fn run(mut config: Config, options: BenchOptions) -> Result<()> {
    if options.notifications == 0
        || options.users == 0
        || options.batch == 0
        || options.callers == 0
    {
        bail!("--notifications, --users, --batch and --callers must be at least 1");
    }
    let receipts = Receipts::default();
    let provider = start_provider(receipts.clone()).await?;
    config.providers.insert(
        "sms".into(),
        serde_json::json!({
            "kind": "twilio",
            "account_sid": "ACbench",
            "auth_token": "bench",
            "from": "+14155550100",
            "base_url": format!("http://{provider}"),
            "limits": {"max_in_flight": 256},
        }),
    );
    config.gateway.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.gateway.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let kafka = config.kafka.bootstrap_servers.clone();
    let store_url = config.store.url.clone();
    let pipeline = Pipeline::start(config, true).await?;
    let store = pipeline.runtime.store.clone();
    println!(
        "bench: pipeline up (kafka {kafka}, store {store_url}); creating {} users",
        options.users
    );
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let users: Vec<String> = (0..options.users)
        .map(|i| format!("bench-{run_id}-{i}"))
        .collect();
    futures::future::try_join_all(users.chunks(500).map(|chunk| {
        let store = store.clone();
        async move {
            for user_id in chunk {
                let user = User {
                    user_id: user_id.clone(),
                    display_name: user_id.clone(),
                    avatar_url: None,
                    locale: None,
                    email: None,
                    phone: Some("+14155550123".into()),
                    updated_at: 0,
                };
                store.contacts.upsert_user(&user).await?;
            }
            Ok::<_, tidings_store::StoreError>(())
        }
    }))
    .await
    .context("creating bench users")?;
    let (key, secret) = create_app(&store, "bench", vec!["send".into()], None).await?;
    let endpoint = format!("http://{}", pipeline.gateway.grpc);

    // Warm up: every stage joins its consumer group before the clock starts.
    let warm = Client::connect(&endpoint, Some(key.clone()), Some(secret.clone())).await?;
    let warm_up = options.notifications;
    let request = warm.request(pb::SendRequest {
        user_ids: vec![users[0].clone()],
        channels: vec![pb::Channel::Sms as i32],
        content: Some(pb::send_request::Content::Raw(pb::RawContent {
            sms_text: format!("bench {warm_up}"),
            ..Default::default()
        })),
        ..Default::default()
    })?;
    warm.notifications().send(request).await?;
    let warm_started = Instant::now();
    while !receipts
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains_key(&warm_up)
    {
        if warm_started.elapsed() > Duration::from_secs(60) {
            bail!("the warm-up notification did not reach the provider within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    receipts.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    println!(
        "bench: warmed up in {:.1} s; measuring",
        warm_started.elapsed().as_secs_f64()
    );

    // Callers take batches of sequence numbers from a shared counter.
    let accepted: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..options.callers {
        let client = Client::connect(&endpoint, Some(key.clone()), Some(secret.clone())).await?;
        let (accepted, next, users, options) = (
            accepted.clone(),
            next.clone(),
            users.clone(),
            options.clone(),
        );
        callers.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(options.batch, std::sync::atomic::Ordering::Relaxed);
                if first >= options.notifications {
                    return Ok::<_, anyhow::Error>(());
                }
                if let Some(rate) = options.rate {
                    // Batch `first` is due when the offered load reaches it.
                    let due = started + Duration::from_secs_f64(first as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let last = (first + options.batch).min(options.notifications);
                let items = (first..last)
                    .map(|seq| pb::SendRequest {
                        event_id: format!("bench-{seq}"),
                        user_ids: vec![users[seq % users.len()].clone()],
                        channels: vec![pb::Channel::Sms as i32],
                        content: Some(pb::send_request::Content::Raw(pb::RawContent {
                            sms_text: format!("bench {seq}"),
                            ..Default::default()
                        })),
                        ..Default::default()
                    })
                    .collect();
                let request = client.request(pb::SendBatchRequest { items })?;
                let response = client
                    .notifications()
                    .send_batch(request)
                    .await?
                    .into_inner();
                let at = Instant::now();
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
    let deadline = Duration::from_secs(600);
    let (bar, terminal) = crate::progress::bar(
        options.notifications as u64,
        "{bar:40} {pos}/{len} delivered, {msg} [{elapsed}, eta {eta}]",
    );
    loop {
        tokio::time::sleep(Duration::from_millis(if terminal { 200 } else { 1000 })).await;
        let (a, r) = (
            accepted.lock().map(|m| m.len()).unwrap_or(0),
            receipts.0.lock().map(|m| m.len()).unwrap_or(0),
        );
        let secs = started.elapsed().as_secs_f64();
        if terminal {
            bar.set_position(r as u64);
            bar.set_message(format!("{a} accepted, {:.0}/s", r as f64 / secs));
        } else {
            println!(
                "bench: {secs:>5.1}s accepted {a:>8} delivered {r:>8} ({:.0}/s)",
                r as f64 / secs
            );
        }
        if r >= options.notifications || started.elapsed() > deadline {
            break;
        }
    }
    bar.finish_and_clear();
    for c in callers {
        c.await??;
    }
    let elapsed = started.elapsed();
    let accepted = accepted.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let receipts = receipts.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut latencies: Vec<Duration> = receipts
        .iter()
        .filter_map(|(seq, got)| {
            accepted
                .get(seq)
                .map(|acc| got.saturating_duration_since(*acc))
        })
        .collect();
    latencies.sort();
    let delivered = receipts.len();
    println!("\nbench results");
    println!(
        "  notifications   {} sent, {} accepted, {} delivered",
        options.notifications,
        accepted.len(),
        delivered
    );
    println!(
        "  users           {}, batch {}, callers {}",
        options.users, options.batch, options.callers
    );
    if let Some(rate) = options.rate {
        println!("  offered load    {rate:.0} notifications/s");
    }
    println!("  elapsed         {:.2} s", elapsed.as_secs_f64());
    println!(
        "  throughput      {:.0} notifications/s end to end",
        delivered as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  accept->provider p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    pipeline.stop().await?;
    if delivered < options.notifications {
        bail!(
            "only {delivered} of {} notifications reached the provider",
            options.notifications
        );
    }
    Ok(())
}
