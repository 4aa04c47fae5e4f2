//! `tidings bench`: a load generator through the public batch send API.
//!
//! It starts the whole pipeline in this process (on the embedded default, or
//! on the Kafka and store the configuration names), points one channel at a
//! provider stand-in with the real provider client (SMS through Twilio's
//! API, Android through FCM HTTP v1, iOS through APNs; see
//! [`crate::bench_providers`]), sends notifications with `SendBatch` from
//! concurrent callers, and measures, per notification, the time from the
//! gateway's acknowledgement to the stand-in receiving the message. Then,
//! as a same-run ceiling, a bare HTTP client sends as many requests straight
//! to the same stand-in at the provider client's concurrency.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use tidings_config::Config;
use tidings_schemas::proto::v1 as pb;
use tidings_store::{Device, Platform, User};

use crate::{
    bench_providers::{self, BenchChannel, StandIn, unix_micros},
    client::Client,
    runtime::{Pipeline, create_app},
};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Notifications to send (one message each on the channel).
    #[arg(long, default_value_t = 50_000)]
    pub notifications: usize,
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
    /// or APNs (both TLS and HTTP/2).
    #[arg(long, value_enum, default_value_t = BenchChannel::Sms)]
    pub channel: BenchChannel,
    /// A `tidings bench-provider` to deliver to instead of the stand-in in
    /// this process (android and ios), so this process's CPU is tidings'
    /// alone and other clients can be measured against the same server.
    #[arg(long, value_name = "ADDR")]
    pub provider_addr: Option<SocketAddr>,
    /// Requests in flight to the provider, for the provider client and for
    /// the bare client alike.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub provider_in_flight: usize,
    /// Skip the same-run baseline: a bare HTTP client sending as many
    /// requests straight to the stand-in.
    #[arg(long)]
    pub no_baseline: bool,
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
        || options.provider_in_flight == 0
    {
        bail!(
            "--notifications, --users, --batch, --callers and --provider-in-flight must be at least 1"
        );
    }
    let channel = options.channel;
    let stand_in = match options.provider_addr {
        Some(_) if !channel.uses_tls() => {
            bail!("--provider-addr serves push over TLS: use it with --channel android or ios")
        }
        Some(addr) => StandIn::remote(addr)?,
        None => StandIn::start(channel).await?,
    };
    stand_in
        .reset()
        .await
        .with_context(|| format!("reaching the provider stand-in at {}", stand_in.addr()))?;
    let base_url = stand_in.base_url(channel);
    let scratch = std::env::temp_dir().join(format!("tidings-bench-ca-{}", std::process::id()));
    let ca_path = bench_providers::write_ca(&scratch)?;
    config.providers.insert(
        channel.provider_key().into(),
        bench_providers::provider_config(channel, &base_url, &ca_path, options.provider_in_flight),
    );
    config.gateway.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.gateway.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let kafka = config.kafka.bootstrap_servers.clone();
    let store_url = config.store.url.clone();
    let pipeline = Pipeline::start(config, true).await?;
    let store = pipeline.runtime.store.clone();
    println!(
        "bench: pipeline up (kafka {kafka}, store {store_url}); {} to {base_url}; creating {} users",
        channel.provider_key(),
        options.users
    );
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let users: Vec<String> = (0..options.users)
        .map(|i| format!("bench-{run_id}-{i}"))
        .collect();
    futures::future::try_join_all(users.chunks(500).enumerate().map(|(c, chunk)| {
        let (store, run_id) = (store.clone(), run_id.clone());
        async move {
            for (i, user_id) in chunk.iter().enumerate() {
                let user = User {
                    user_id: user_id.clone(),
                    display_name: user_id.clone(),
                    avatar_url: None,
                    locale: None,
                    email: None,
                    phone: (channel == BenchChannel::Sms).then(|| "+14155550123".into()),
                    updated_at: 0,
                };
                store.contacts.upsert_user(&user).await?;
                let platform = match channel {
                    BenchChannel::Sms => continue,
                    BenchChannel::Android => Platform::Android,
                    BenchChannel::Ios => Platform::Ios,
                };
                // Hex, as APNs device tokens are; unique per run and user.
                let n = c * 500 + i;
                store
                    .contacts
                    .register_device(&Device {
                        user_id: user_id.clone(),
                        token: format!("{run_id}{n:056x}"),
                        platform,
                        registered_at: unix_micros() as i64 / 1000,
                        invalidated_at: None,
                    })
                    .await?;
            }
            Ok::<_, tidings_store::StoreError>(())
        }
    }))
    .await
    .context("creating bench users")?;
    let (key, secret) = create_app(&store, "bench", vec!["send".into()], None).await?;
    let endpoint = format!("http://{}", pipeline.gateway.grpc);
    let send_request = move |event_id: String, user_id: String, seq: usize| {
        let text = format!("bench {seq}");
        let (channel, content) = match channel {
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
        };
        pb::SendRequest {
            event_id,
            user_ids: vec![user_id],
            channels: vec![channel as i32],
            content: Some(pb::send_request::Content::Raw(content)),
            ..Default::default()
        }
    };

    // Warm up: every stage joins its consumer group before the clock starts.
    let warm = Client::connect(&endpoint, Some(key.clone()), Some(secret.clone())).await?;
    let warm_up = options.notifications;
    let request = warm.request(send_request(String::new(), users[0].clone(), warm_up))?;
    warm.notifications().send(request).await?;
    let warm_started = Instant::now();
    while !stand_in.contains(warm_up as u64).await? {
        if warm_started.elapsed() > Duration::from_secs(60) {
            bail!("the warm-up notification did not reach the provider within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stand_in.reset().await?;
    println!(
        "bench: warmed up in {:.1} s; measuring",
        warm_started.elapsed().as_secs_f64()
    );

    // Callers take batches of sequence numbers from a shared counter.
    let accepted: Arc<Mutex<HashMap<usize, u64>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (cpu_before, threads_before) = (
        bench_providers::process_cpu(),
        bench_providers::thread_cpu(),
    );
    let (started, started_us) = (Instant::now(), unix_micros());
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
                    .map(|seq| {
                        send_request(
                            format!("bench-{seq}"),
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
    let deadline = Duration::from_secs(600);
    let (bar, terminal) = crate::progress::bar(
        options.notifications as u64,
        "{bar:40} {pos}/{len} delivered, {msg} [{elapsed}, eta {eta}]",
    );
    // Polled often, so the CPU reading below ends close to the last
    // delivery; printed once a second.
    let mut printed = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let a = accepted.lock().map(|m| m.len()).unwrap_or(0);
        let r = stand_in.delivered().await? as usize;
        let secs = started.elapsed().as_secs_f64();
        if terminal {
            bar.set_position(r as u64);
            bar.set_message(format!("{a} accepted, {:.0}/s", r as f64 / secs));
        } else if printed.elapsed() >= Duration::from_secs(1) {
            printed = Instant::now();
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
    let polled = started.elapsed();
    let cpu = bench_providers::process_cpu().saturating_sub(cpu_before);
    let threads =
        bench_providers::thread_cpu_shares(&threads_before, &bench_providers::thread_cpu());
    for c in callers {
        c.await??;
    }
    let accepted = accepted.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let receipts = stand_in.receipts().await?;
    let mut latencies: Vec<Duration> = receipts
        .iter()
        .filter_map(|(seq, got)| {
            accepted
                .get(&(*seq as usize))
                .map(|acc| Duration::from_micros(got.saturating_sub(*acc)))
        })
        .collect();
    latencies.sort();
    let delivered = receipts.len();
    // From the first call to the last message at the stand-in.
    let elapsed = match receipts.values().max() {
        Some(last) if delivered >= options.notifications => {
            Duration::from_micros(last.saturating_sub(started_us))
        }
        _ => polled,
    };
    let throughput = delivered as f64 / elapsed.as_secs_f64();
    println!("\nbench results ({})", channel.provider_key());
    println!(
        "  notifications   {} sent, {} accepted, {} delivered",
        options.notifications,
        accepted.len(),
        delivered
    );
    println!(
        "  users           {}, batch {}, callers {}, provider in flight {}",
        options.users, options.batch, options.callers, options.provider_in_flight
    );
    println!(
        "  provider        {} stand-in at {base_url}",
        match stand_in {
            StandIn::InProcess { .. } => "in-process",
            StandIn::Remote { .. } => "separate-process",
        }
    );
    if let Some(rate) = options.rate {
        println!("  offered load    {rate:.0} notifications/s");
    }
    println!("  elapsed         {:.2} s", elapsed.as_secs_f64());
    println!("  throughput      {throughput:.0} notifications/s end to end");
    println!(
        "  accept->provider p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "  cpu             {:.0} us per notification ({:.2} cores), whole process{}",
        cpu.as_secs_f64() * 1e6 / delivered.max(1) as f64,
        cpu.as_secs_f64() / polled.as_secs_f64(),
        match stand_in {
            StandIn::InProcess { .. } => ", stand-in included",
            StandIn::Remote { .. } => "",
        }
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
    pipeline.stop().await?;
    let _ = std::fs::remove_dir_all(&scratch);
    if delivered < options.notifications {
        bail!(
            "only {delivered} of {} notifications reached the provider",
            options.notifications
        );
    }
    if !options.no_baseline {
        // After the pipeline stopped: the bare client has the process (and
        // the in-process stand-in) to itself. Its sequence numbers follow
        // the bench's, so none is mistaken for a late tidings delivery.
        stand_in.reset().await?;
        let bare = bench_providers::bare_client(
            channel,
            &base_url,
            options.notifications,
            options.provider_in_flight,
            options.notifications as u64 + 1,
        )
        .await?;
        let bare_rate = bare.sent as f64 / bare.elapsed.as_secs_f64();
        println!(
            "  bare client     {bare_rate:.0} requests/s, {:.0} us CPU per request ({} requests, {} in flight, same stand-in)",
            bare.cpu.as_secs_f64() * 1e6 / bare.sent.max(1) as f64,
            bare.sent,
            options.provider_in_flight
        );
        println!(
            "  tidings/bare    {:.1}% of the bare client's rate",
            throughput / bare_rate * 100.0
        );
    }
    println!(
        "  peak rss        {:.0} MiB",
        bench_providers::peak_rss_mib()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole bench path on the embedded default, kept small: every
    /// notification reaches the FCM and APNs stand-ins through the real
    /// clients over TLS and HTTP/2 (`run` fails on any missing), then the
    /// bare client runs against the same stand-in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn push_benches_deliver_every_notification_embedded() {
        for channel in [BenchChannel::Android, BenchChannel::Ios] {
            let dir = tempfile::tempdir().expect("temporary directory");
            let mut config = Config::default();
            config.store.url = format!("sqlite://{}/tidings.db", dir.path().display());
            let options = BenchOptions {
                notifications: 200,
                users: 20,
                batch: 50,
                callers: 2,
                rate: None,
                channel,
                provider_addr: None,
                provider_in_flight: 16,
                no_baseline: false,
            };
            run(config, options)
                .await
                .unwrap_or_else(|e| panic!("{channel:?}: {e:#}"));
        }
    }
}
