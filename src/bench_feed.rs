//! `tidings bench-feed`: a load generator for the news feed through the
//! public gRPC API.
//!
//! It starts the whole pipeline in this process (on the embedded default, or
//! on the Kafka and store the configuration names) and builds a social graph
//! in the store: every user follows `follows` others, and everyone follows
//! `stars` authors big enough to be pulled at read time. Then it measures the
//! two paths of the design:
//!
//! - **publish and fan out**: `posts` posts from concurrent publishers; the
//!   rate the gateway accepts them, the feed rows the writers produce per
//!   second until every post reached every follower, and for a sample of
//!   posts the time from the gateway's answer to the post being in a
//!   follower's feed;
//! - **read**: `reads` feed pages from concurrent readers, each merging the
//!   reader's pushed rows with the stars' pulled posts and hydrating them;
//!   pages per second and latency percentiles.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt, stream};
use tidings_config::Config;
use tidings_gateway::user_token::UserTokens;
use tidings_store::User;
use tidings_telemetry::metrics;

use crate::{bench::percentile, client::FeedClient, runtime::Pipeline};

#[derive(Debug, Clone, clap::Args)]
pub struct FeedBenchOptions {
    /// Users in the social graph.
    #[arg(long, default_value_t = 2_000)]
    pub users: usize,
    /// Authors each user follows (besides the stars).
    #[arg(long, default_value_t = 100)]
    pub follows: usize,
    /// Authors everyone follows, pulled at read time.
    #[arg(long, default_value_t = 2)]
    pub stars: usize,
    /// Posts to publish (each fanned out to its author's followers).
    #[arg(long, default_value_t = 2_000)]
    pub posts: usize,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Feed pages read after the fan-out.
    #[arg(long, default_value_t = 5_000)]
    pub reads: usize,
    /// Concurrent readers.
    #[arg(long, default_value_t = 4)]
    pub readers: usize,
    /// Also send "new post" notifications (through the whole notification
    /// pipeline) while fanning out.
    #[arg(long)]
    pub notify: bool,
}

/// Every `SAMPLE_EVERY`th post is watched until it shows in a feed.
const SAMPLE_EVERY: usize = 25;

/// The id of bench user `i` of run `run_id`.
fn bench_user(run_id: &str, i: usize) -> String {
    format!("fb-{run_id}-{i}")
}

fn pushed_rows() -> u64 {
    metrics().feed_fanout.with_label_values(&["pushed"]).get()
}

pub async fn run(mut config: Config, options: FeedBenchOptions) -> Result<()> {
    let o = &options;
    if o.users < 2 || o.posts == 0 || o.publishers == 0 || o.readers == 0 {
        bail!("--users must be at least 2; --posts, --publishers and --readers at least 1");
    }
    if o.follows >= o.users {
        bail!("--follows must be below --users");
    }
    // Stars have every user as follower; everyone else about `follows`.
    config.feed.pull_threshold = (o.users / 2).max(o.follows + 1) as u64;
    config.feed.notify_followers = o.notify;
    config.feed.max_posts = u32::MAX;
    config.gateway.grpc_addr = ([127, 0, 0, 1], 0).into();
    config.gateway.http_addr = ([127, 0, 0, 1], 0).into();
    let secret = config.feed.user_token_secret.clone();
    let (kafka, store_url) = (
        config.kafka.bootstrap_servers.clone(),
        config.store.url.clone(),
    );
    let pipeline = Pipeline::start(config, true).await?;
    let store = pipeline.runtime.store.clone();
    let endpoint = format!("http://{}", pipeline.gateway.grpc);
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let user = |i: usize| bench_user(&run_id, i);
    let star = |i: usize| format!("fb-{run_id}-star{i}");
    println!(
        "bench-feed: pipeline up (kafka {kafka}, store {store_url}); {} users following {} each, plus {} stars everyone follows",
        o.users, o.follows, o.stars
    );

    // The graph: user i follows users i+1..=i+follows (mod users) and the
    // stars. Written straight to the store, 64 writes at a time.
    let setup = Instant::now();
    let mut edges: Vec<(String, String)> = Vec::with_capacity(o.users * (o.follows + o.stars));
    for i in 0..o.users {
        for k in 1..=o.follows {
            edges.push((user(i), user((i + k) % o.users)));
        }
        for s in 0..o.stars {
            edges.push((user(i), star(s)));
        }
    }
    let people: Vec<String> = (0..o.users)
        .map(user)
        .chain((0..o.stars).map(star))
        .collect();
    stream::iter(people.iter())
        .map(|id| {
            let store = store.clone();
            async move {
                store
                    .contacts
                    .upsert_user(&User {
                        user_id: id.clone(),
                        display_name: format!("Bench {id}"),
                        avatar_url: Some(format!("https://cdn.example.com/{id}.png")),
                        locale: None,
                        email: None,
                        phone: None,
                        updated_at: 0,
                    })
                    .await
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await
        .context("creating bench users")?;
    let done = AtomicUsize::new(0);
    stream::iter(edges.iter())
        .map(|(follower, followee)| {
            let (store, done) = (store.clone(), &done);
            async move {
                store.social_graph.follow(follower, followee, 0).await?;
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n % 50_000 == 0 {
                    println!("bench-feed: {n} follows written");
                }
                Ok::<_, tidings_store::StoreError>(())
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await
        .context("writing the social graph")?;
    println!(
        "bench-feed: graph of {} follows written in {:.1} s",
        edges.len(),
        setup.elapsed().as_secs_f64()
    );

    let tokens = UserTokens::new(&secret);
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    };
    let client_for = |id: &str| {
        let token = tokens.mint(id, now(), Duration::from_secs(3600));
        let endpoint = endpoint.clone();
        async move { FeedClient::connect(&endpoint, &token).await }
    };
    let status = |s: tonic::Status| anyhow::anyhow!("{:?}: {}", s.code(), s.message());

    // Warm up: one post from each star (so they are pulled) and one pushed
    // post through the whole fan-out, before the clock starts.
    let warm = Instant::now();
    for s in 0..o.stars {
        client_for(&star(s))
            .await?
            .publish("warm-up", vec![])
            .await
            .map_err(status)?;
    }
    let first = client_for(&user(0)).await?;
    first.publish("warm-up", vec![]).await.map_err(status)?;
    let warm_rows = (o.follows + 1) as u64;
    while pushed_rows() < warm_rows || store.feed.pulled_authors().await?.len() < o.stars {
        if warm.elapsed() > Duration::from_secs(120) {
            bail!("the warm-up posts were not fanned out within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "bench-feed: warmed up in {:.1} s; publishing {} posts",
        warm.elapsed().as_secs_f64(),
        o.posts
    );

    // Publish: post n is by user n mod users; every user's followers are
    // the `follows` users before it, so each post makes follows + 1 rows.
    let rows_before = pushed_rows();
    let expected_rows = (o.posts * (o.follows + 1)) as u64;
    let next = Arc::new(AtomicUsize::new(0));
    let visible: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let started = Instant::now();
    let mut publishers = Vec::new();
    for _ in 0..o.publishers {
        let (next, visible, store) = (next.clone(), visible.clone(), store.clone());
        // One connection per publisher, acting for each post's author.
        let base = client_for(&user(0)).await?;
        let (posts, users) = (o.posts, o.users);
        let (tokens, run_id) = (tokens.clone(), run_id.clone());
        publishers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= posts {
                    return Ok::<_, anyhow::Error>(Instant::now());
                }
                let author = bench_user(&run_id, n % users);
                let client =
                    base.with_token(&tokens.mint(&author, now(), Duration::from_secs(3600)))?;
                let post = client
                    .publish(&format!("post {n}"), vec![])
                    .await
                    .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?;
                let accepted = Instant::now();
                if n % SAMPLE_EVERY == 0 {
                    // The post's last follower in the graph: user n-1.
                    let follower = bench_user(&run_id, (n % users + users - 1) % users);
                    let (store, visible) = (store.clone(), visible.clone());
                    tokio::spawn(async move {
                        while accepted.elapsed() < Duration::from_secs(120) {
                            if let Ok(rows) = store.feed.read(&follower, None, 50).await
                                && rows.iter().any(|e| e.post_id == post.post_id)
                            {
                                visible
                                    .lock()
                                    .expect("not poisoned")
                                    .push(accepted.elapsed());
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    });
                }
            }
        }));
    }
    // A bar on a terminal, a line a second otherwise.
    let (bar, terminal) = crate::progress::bar(
        expected_rows,
        "{bar:40} {pos}/{len} feed rows, {msg} [{elapsed}, eta {eta}]",
    );
    loop {
        tokio::time::sleep(Duration::from_millis(if terminal { 200 } else { 1000 })).await;
        let rows = pushed_rows() - rows_before;
        let published = next.load(Ordering::Relaxed).min(o.posts);
        let secs = started.elapsed().as_secs_f64();
        if terminal {
            bar.set_position(rows);
            bar.set_message(format!(
                "{published} posts, {:.0} rows/s",
                rows as f64 / secs
            ));
        } else {
            println!(
                "bench-feed: {secs:>5.1}s posts {published:>7} feed rows {rows:>9} ({:.0}/s)",
                rows as f64 / secs
            );
        }
        if rows >= expected_rows || started.elapsed() > Duration::from_secs(600) {
            break;
        }
    }
    bar.finish_and_clear();
    let fanned_out = started.elapsed();
    let mut accepted_in = Duration::ZERO;
    for p in publishers {
        accepted_in = accepted_in.max(p.await??.duration_since(started));
    }
    let rows = pushed_rows() - rows_before;
    // Let the sampled watchers finish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut visible = visible.lock().expect("not poisoned").clone();
    visible.sort();

    // Read: random users' newest page, from concurrent readers.
    println!("bench-feed: reading {} pages", o.reads);
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let items = Arc::new(AtomicUsize::new(0));
    let read_started = Instant::now();
    let mut readers = Vec::new();
    for r in 0..o.readers {
        let reader = client_for(&user(r % o.users)).await?;
        let (next, latencies, items) = (next.clone(), latencies.clone(), items.clone());
        let (reads, users) = (o.reads, o.users);
        let (tokens, run_id) = (tokens.clone(), run_id.clone());
        readers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= reads {
                    return Ok::<_, anyhow::Error>(());
                }
                // A spread of users, not a hot few.
                let who = bench_user(&run_id, n.wrapping_mul(7919) % users);
                let client =
                    reader.with_token(&tokens.mint(&who, now(), Duration::from_secs(3600)))?;
                let at = Instant::now();
                let page = client
                    .page("", 20)
                    .await
                    .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?;
                latencies.lock().expect("not poisoned").push(at.elapsed());
                items.fetch_add(page.items.len(), Ordering::Relaxed);
            }
        }));
    }
    let (bar, _) = crate::progress::bar(
        o.reads as u64,
        "{bar:40} {pos}/{len} pages read [{elapsed}, eta {eta}]",
    );
    let ticker = {
        let (bar, latencies) = (bar.clone(), latencies.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                bar.set_position(latencies.lock().map_or(0, |l| l.len() as u64));
            }
        })
    };
    for r in readers {
        r.await??;
    }
    ticker.abort();
    bar.finish_and_clear();
    let read_elapsed = read_started.elapsed();
    let mut latencies = latencies.lock().expect("not poisoned").clone();
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;

    println!("\nbench-feed results");
    println!(
        "  graph           {} users, {} follows each, {} stars (pulled; threshold {} followers)",
        o.users,
        o.follows,
        o.stars,
        (o.users / 2).max(o.follows + 1)
    );
    println!(
        "  publish         {} posts by {} publishers in {:.2} s: {:.0} posts/s accepted",
        o.posts,
        o.publishers,
        accepted_in.as_secs_f64(),
        o.posts as f64 / accepted_in.as_secs_f64()
    );
    println!(
        "  fan-out         {rows} feed rows in {:.2} s: {:.0} rows/s (notifications {})",
        fanned_out.as_secs_f64(),
        rows as f64 / fanned_out.as_secs_f64(),
        if o.notify { "on" } else { "off" }
    );
    println!(
        "  publish->feed   {} sampled posts: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        visible.len(),
        ms(percentile(&visible, 0.50)),
        ms(percentile(&visible, 0.99)),
        ms(visible.last().copied().unwrap_or_default())
    );
    println!(
        "  read            {} pages of 20 by {} readers in {:.2} s: {:.0} pages/s, {:.1} items/page",
        o.reads,
        o.readers,
        read_elapsed.as_secs_f64(),
        o.reads as f64 / read_elapsed.as_secs_f64(),
        items.load(Ordering::Relaxed) as f64 / o.reads.max(1) as f64
    );
    println!(
        "  read latency    p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default())
    );
    drop(first);
    pipeline.stop().await?;
    if rows < expected_rows {
        bail!("only {rows} of {expected_rows} feed rows were written");
    }
    Ok(())
}
