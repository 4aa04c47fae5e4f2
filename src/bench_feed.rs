//! `tidings bench-feed`: a load generator for the news feed through the
//! public gRPC API.
//!
//! It starts the whole pipeline in this process (on the embedded default, or
//! on the Kafka and store the configuration names) and builds a social graph
//! in the store: every user follows `follows` others, and everyone follows
//! `stars` authors big enough to be pulled at read time, and one author has
//! `wide_followers` followers of their own. Then it measures, in turn:
//!
//! - **publish and fan out**: `posts` posts from concurrent publishers; the
//!   rate the gateway accepts them, the feed rows the writers produce per
//!   second until every post reached every follower, and for a sample of
//!   posts the time from the gateway's answer to the post being in a
//!   follower's feed;
//! - **one author, many followers**: `wide_posts` posts, one after the
//!   other, by an author with `wide_followers` followers (5,000, the
//!   design's friend cap), each timed from the gateway's answer until the
//!   writers have put it in every follower's feed;
//! - **likes**: `likes` likes of those posts from concurrent callers; the
//!   rate the gateway accepts them, the rate the feed-tally stage counts
//!   them, and for a sample the time from the gateway's answer until the
//!   post's count in the store (what `GetFeed` shows as `like_count`)
//!   includes the like;
//! - **read**: `reads` feed pages from concurrent readers, each merging the
//!   reader's pushed rows with the stars' pulled posts and hydrating them
//!   with their like counts; pages per second and latency percentiles. Then
//!   `paced_secs` of reads at half that rate, sent on a fixed schedule
//!   whether or not earlier ones were answered, so a slow answer cannot
//!   hold back (and hide) the requests behind it.
//!
//! Beside each phase it prints the CPU time this process used (the whole
//! pipeline, and on the embedded default the mock Kafka cluster and SQLite
//! too; real Kafka and Cassandra are other processes).

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
use tidings_store::{Store, User};
use tidings_telemetry::{FanoutOutcome, FeedFanout, RecordFate, StageRecords};

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
    /// pipeline) while fanning out, and like notifications to authors.
    #[arg(long)]
    pub notify: bool,
    /// Followers of one more author whose posts are timed until they are in
    /// every follower's feed (0: no such phase).
    #[arg(long, value_name = "N", default_value_t = 5_000)]
    pub wide_followers: usize,
    /// Posts that author publishes, one after the other.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub wide_posts: usize,
    /// Likes of the published posts, each by a different user (0: none).
    #[arg(long, default_value_t = 20_000)]
    pub likes: usize,
    /// Concurrent likers.
    #[arg(long, default_value_t = 4)]
    pub likers: usize,
    /// Seconds of feed reads paced at half the rate the unpaced reads
    /// reached (0: none).
    #[arg(long, value_name = "SECS", default_value_t = 20)]
    pub paced_secs: u64,
}

/// Every `SAMPLE_EVERY`th post is watched until it shows in a feed.
const SAMPLE_EVERY: usize = 25;

/// Longest wait for one phase's work to finish before the bench gives up.
const PHASE_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a phase looks whether its work is done.
const POLL: Duration = Duration::from_millis(10);

/// How often progress is shown: a bar on a terminal, a line otherwise.
fn progress_every(terminal: bool) -> Duration {
    Duration::from_millis(if terminal { 200 } else { 1000 })
}

/// The id of bench user `i` of run `run_id`.
fn bench_user(run_id: &str, i: usize) -> String {
    format!("fb-{run_id}-{i}")
}

/// The id of follower `i` of the author with many followers.
fn wide_follower(run_id: &str, i: usize) -> String {
    format!("fb-{run_id}-wf{i}")
}

fn pushed_rows() -> u64 {
    FeedFanout::total(FanoutOutcome::Pushed)
}

/// Reaction records the feed-tally stage has counted.
fn tallied() -> u64 {
    StageRecords::total("feed-tally", RecordFate::Processed)
}

/// CPU seconds (user + system) this process has used so far, from
/// getrusage: its `process_cpu_seconds_total` metric counts whole seconds
/// only, too coarse for a phase of a few seconds.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; it is read only after
    // the call succeeded.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return 0.0;
        }
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// "p50 .. ms, p90 .. ms, p99 .. ms, max .. ms" of sorted latencies.
fn percentiles(sorted: &[Duration]) -> String {
    format!(
        "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(percentile(sorted, 0.50)),
        ms(percentile(sorted, 0.90)),
        ms(percentile(sorted, 0.99)),
        ms(sorted.last().copied().unwrap_or_default())
    )
}

/// The CPU a phase used: `cpu` seconds over `over` for `units` of work.
fn cpu_line(cpu: f64, over: Duration, units: usize, unit: &str) -> String {
    format!(
        "  CPU             {cpu:.2} s in {:.2} s ({:.0}% of a core): {:.3} ms per {unit}",
        over.as_secs_f64(),
        cpu / over.as_secs_f64().max(1e-9) * 100.0,
        cpu * 1e3 / units.max(1) as f64
    )
}

/// Like `n` of the likes phase: the `k`th like (from 1) of post `p` (by
/// user `p` mod `users`), given by the `k`th user after its author, as
/// (p, k, liker). Every (post, liker) pair differs, and no author likes
/// their own post, while `n` < `posts` x (`users` - 1).
fn like_plan(n: usize, posts: usize, users: usize) -> (usize, usize, usize) {
    let (p, k) = (n % posts, n / posts + 1);
    (p, k, (p % users + k) % users)
}

/// What the phases share: the store, tokens and a connection to the
/// gateway.
struct Bench {
    store: Store,
    tokens: UserTokens,
    /// A connection that any user's token can ride.
    base: FeedClient,
    run_id: String,
    users: usize,
}

impl Bench {
    /// `base`'s connection, acting for `user`.
    fn client(&self, user: &str) -> Result<FeedClient> {
        self.base.with_token(
            &self
                .tokens
                .mint(user, now_secs(), Duration::from_secs(3600)),
        )
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

pub async fn run(mut config: Config, options: FeedBenchOptions) -> Result<()> {
    let o = &options;
    if o.users < 2 || o.posts == 0 || o.publishers == 0 || o.readers == 0 {
        bail!("--users must be at least 2; --posts, --publishers and --readers at least 1");
    }
    if o.follows >= o.users {
        bail!("--follows must be below --users");
    }
    // Like n is the (n / posts + 1)th like of post n mod posts, each by
    // another user; a post's likes are `posts` likes apart, far more than
    // the likers in flight.
    if o.likes > 0
        && (o.likers == 0 || o.likes > o.posts * (o.users - 1) || o.posts < 10 * o.likers)
    {
        bail!(
            "--likers must be at least 1, --likes at most --posts x (--users - 1), and --posts at least 10 x --likers"
        );
    }
    // Stars have every user (and every wide follower) as follower; everyone
    // else about `follows`, the wide author `wide_followers`: pushed.
    let threshold = (o.users / 2).max(o.follows + 1).max(o.wide_followers);
    config.feed.pull_threshold = threshold as u64;
    config.feed.notify_followers = o.notify;
    config.feed.notify_reactions = o.notify;
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
    let wide = format!("fb-{run_id}-wide");
    println!(
        "bench-feed: pipeline up (kafka {kafka}, store {store_url}); {} users following {} each, plus {} stars everyone follows",
        o.users, o.follows, o.stars
    );

    // The graph: user i follows users i+1..=i+follows (mod users) and the
    // stars. Written straight to the store, 64 writes at a time.
    let setup = Instant::now();
    let mut edges: Vec<(String, String)> =
        Vec::with_capacity(o.users * (o.follows + o.stars) + o.wide_followers * (1 + o.stars));
    for i in 0..o.users {
        for k in 1..=o.follows {
            edges.push((user(i), user((i + k) % o.users)));
        }
        for s in 0..o.stars {
            edges.push((user(i), star(s)));
        }
    }
    // The wide author's followers follow the stars too, which keeps the
    // stars above the pull threshold.
    for i in 0..o.wide_followers {
        edges.push((wide_follower(&run_id, i), wide.clone()));
        for s in 0..o.stars {
            edges.push((wide_follower(&run_id, i), star(s)));
        }
    }
    let people: Vec<String> = (0..o.users)
        .map(user)
        .chain((0..o.stars).map(star))
        .chain(std::iter::once(wide.clone()))
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
    let now = now_secs;
    let client_for = |id: &str| {
        let token = tokens.mint(id, now(), Duration::from_secs(3600));
        let endpoint = endpoint.clone();
        async move { FeedClient::connect(&endpoint, &token).await }
    };

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
    // Post n's id at n, for the likes.
    let post_ids: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(vec![String::new(); o.posts]));
    let publish_cpu = cpu_seconds();
    let started = Instant::now();
    let mut publishers = Vec::new();
    for _ in 0..o.publishers {
        let (next, visible, store) = (next.clone(), visible.clone(), store.clone());
        let post_ids = post_ids.clone();
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
                post_ids.lock().expect("not poisoned")[n] = post.post_id.clone();
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
    // The end is seen within POLL; progress is shown less often.
    let mut shown = Instant::now();
    loop {
        tokio::time::sleep(POLL).await;
        let rows = pushed_rows() - rows_before;
        let done = rows >= expected_rows || started.elapsed() > PHASE_TIMEOUT;
        if !done && shown.elapsed() < progress_every(terminal) {
            continue;
        }
        shown = Instant::now();
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
        if done {
            break;
        }
    }
    bar.finish_and_clear();
    let fanned_out = started.elapsed();
    let publish_cpu = cpu_seconds() - publish_cpu;
    let mut accepted_in = Duration::ZERO;
    for p in publishers {
        accepted_in = accepted_in.max(p.await??.duration_since(started));
    }
    let rows = pushed_rows() - rows_before;
    // Let the sampled watchers finish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut visible = visible.lock().expect("not poisoned").clone();
    visible.sort();
    let post_ids = post_ids.lock().expect("not poisoned").clone();

    let bench = Bench {
        store: store.clone(),
        tokens: tokens.clone(),
        base: client_for(&user(0)).await?,
        run_id: run_id.clone(),
        users: o.users,
    };
    let wide_report = if o.wide_followers > 0 && o.wide_posts > 0 {
        Some(
            bench
                .wide_author(&wide, o.wide_followers, o.wide_posts)
                .await?,
        )
    } else {
        None
    };
    let likes_report = if o.likes > 0 {
        Some(bench.likes(&post_ids, o.likes, o.likers).await?)
    } else {
        None
    };

    // Read: random users' newest page, from concurrent readers.
    println!("bench-feed: reading {} pages", o.reads);
    let read_cpu = cpu_seconds();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let items = Arc::new(AtomicUsize::new(0));
    let liked_items = Arc::new(AtomicUsize::new(0));
    let read_started = Instant::now();
    let mut readers = Vec::new();
    for r in 0..o.readers {
        let reader = client_for(&user(r % o.users)).await?;
        let (next, latencies, items) = (next.clone(), latencies.clone(), items.clone());
        let liked_items = liked_items.clone();
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
                liked_items.fetch_add(
                    page.items.iter().filter(|i| i.like_count > 0).count(),
                    Ordering::Relaxed,
                );
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
    let read_cpu = cpu_seconds() - read_cpu;
    let mut latencies = latencies.lock().expect("not poisoned").clone();
    latencies.sort();
    let saturated = o.reads as f64 / read_elapsed.as_secs_f64();
    let paced_report = if o.paced_secs > 0 {
        Some(
            bench
                .paced_reads(saturated / 2.0, Duration::from_secs(o.paced_secs))
                .await?,
        )
    } else {
        None
    };

    println!("\nbench-feed results");
    println!(
        "  graph           {} users, {} follows each, {} stars (pulled; threshold {threshold} followers), one author with {} followers",
        o.users, o.follows, o.stars, o.wide_followers
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
        "  publish->feed   {} sampled posts: {}",
        visible.len(),
        percentiles(&visible)
    );
    println!("{}", cpu_line(publish_cpu, fanned_out, o.posts, "post"));
    if let Some(r) = &wide_report {
        r.print(o.wide_followers);
    }
    if let Some(r) = &likes_report {
        r.print(o.likers);
    }
    let items = items.load(Ordering::Relaxed);
    println!(
        "  read            {} pages of 20 by {} readers in {:.2} s: {saturated:.0} pages/s, {:.1} items/page, {:.0}% of items liked",
        o.reads,
        o.readers,
        read_elapsed.as_secs_f64(),
        items as f64 / o.reads.max(1) as f64,
        liked_items.load(Ordering::Relaxed) as f64 * 100.0 / items.max(1) as f64
    );
    println!("  read latency    {}", percentiles(&latencies));
    println!("{}", cpu_line(read_cpu, read_elapsed, o.reads, "page"));
    if let Some(r) = &paced_report {
        r.print();
    }
    drop(first);
    drop(bench);
    pipeline.stop().await?;
    if rows < expected_rows {
        bail!("only {rows} of {expected_rows} feed rows were written");
    }
    Ok(())
}

/// The author with many followers: each post's time from the gateway's
/// answer until the writers put it in half of the feeds and in every one.
struct WideReport {
    posts: usize,
    every: Vec<Duration>,
    half: Vec<Duration>,
    elapsed: Duration,
    cpu: f64,
}

impl WideReport {
    fn print(&self, followers: usize) {
        println!(
            "  wide author     {} posts to {followers} followers, one after another, in {:.2} s",
            self.posts,
            self.elapsed.as_secs_f64()
        );
        println!("  ->half of them  {}", percentiles(&self.half));
        println!("  ->every feed    {}", percentiles(&self.every));
        println!(
            "{}",
            cpu_line(
                self.cpu,
                self.elapsed,
                self.posts * (followers + 1),
                "feed row"
            )
        );
    }
}

/// Likes: how fast the gateway takes them and the feed-tally stage counts
/// them, and when a sample shows in its post's count.
struct LikesReport {
    likes: usize,
    accepted_in: Duration,
    counted_in: Duration,
    visible: Vec<Duration>,
    cpu: f64,
}

impl LikesReport {
    fn print(&self, likers: usize) {
        println!(
            "  likes           {} likes by {likers} callers in {:.2} s: {:.0} likes/s accepted",
            self.likes,
            self.accepted_in.as_secs_f64(),
            self.likes as f64 / self.accepted_in.as_secs_f64()
        );
        println!(
            "  likes counted   all by feed-tally {:.2} s after the first: {:.0} likes/s",
            self.counted_in.as_secs_f64(),
            self.likes as f64 / self.counted_in.as_secs_f64()
        );
        println!(
            "  like->count     {} sampled likes: {}",
            self.visible.len(),
            percentiles(&self.visible)
        );
        println!(
            "{}",
            cpu_line(self.cpu, self.counted_in, self.likes, "like")
        );
    }
}

/// Reads at a fixed rate.
struct PacedReport {
    rate: f64,
    pages: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    liked_items: usize,
    items: usize,
    cpu: f64,
}

impl PacedReport {
    fn print(&self) {
        println!(
            "  paced read      {} pages of 20 at {:.0}/s (half the unpaced rate) in {:.2} s, {:.0}% of items liked",
            self.pages,
            self.rate,
            self.elapsed.as_secs_f64(),
            self.liked_items as f64 * 100.0 / self.items.max(1) as f64
        );
        println!("  paced latency   {}", percentiles(&self.latencies));
        println!("{}", cpu_line(self.cpu, self.elapsed, self.pages, "page"));
    }
}

impl Bench {
    /// `posts` posts by `author`, who has `followers` followers, one after
    /// the other, each timed until the writers' row counter says it is in
    /// half of the feeds and in all of them (nothing else is written
    /// meanwhile); one follower's rows are then read to confirm it.
    async fn wide_author(
        &self,
        author: &str,
        followers: usize,
        posts: usize,
    ) -> Result<WideReport> {
        println!(
            "bench-feed: {posts} posts by an author with {followers} followers, one after another"
        );
        let client = self.client(author)?;
        // The author's own feed gets the post too.
        let rows = (followers + 1) as u64;
        let (mut every, mut half) = (Vec::with_capacity(posts), Vec::with_capacity(posts));
        let cpu = cpu_seconds();
        let started = Instant::now();
        for i in 0..posts {
            let before = pushed_rows();
            let post = client
                .publish(&format!("wide {i}"), vec![])
                .await
                .map_err(status)?;
            let accepted = Instant::now();
            let mut half_at = None;
            loop {
                let written = pushed_rows() - before;
                if half_at.is_none() && written * 2 >= rows {
                    half_at = Some(accepted.elapsed());
                }
                if written >= rows {
                    every.push(accepted.elapsed());
                    break;
                }
                if accepted.elapsed() > PHASE_TIMEOUT {
                    bail!(
                        "post {i} of the wide author reached {written} of {rows} feeds in {PHASE_TIMEOUT:?}"
                    );
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            half.extend(half_at);
            let follower = wide_follower(&self.run_id, i.wrapping_mul(7919) % followers);
            let feed = self.store.feed.read(&follower, None, 10).await?;
            if !feed.iter().any(|e| e.post_id == post.post_id) {
                bail!(
                    "{follower}'s feed lacks post {} after every row was written",
                    post.post_id
                );
            }
            if (i + 1) % 10 == 0 {
                println!(
                    "bench-feed: {} of {posts} posts in every follower's feed",
                    i + 1
                );
            }
        }
        let elapsed = started.elapsed();
        let cpu = cpu_seconds() - cpu;
        every.sort();
        half.sort();
        Ok(WideReport {
            posts,
            every,
            half,
            elapsed,
            cpu,
        })
    }

    /// `likes` likes of `post_ids` from `likers` concurrent callers, until
    /// the feed-tally stage counted them all; every `SAMPLE_EVERY`th is
    /// watched in its post's count in the store, which is what `GetFeed`
    /// hydrates as `like_count` (uncached).
    async fn likes(&self, post_ids: &[String], likes: usize, likers: usize) -> Result<LikesReport> {
        println!("bench-feed: {likes} likes of {} posts", post_ids.len());
        let posts = post_ids.len();
        let post_ids: Arc<Vec<String>> = Arc::new(post_ids.to_vec());
        let next = Arc::new(AtomicUsize::new(0));
        let visible: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let tallied_before = tallied();
        let cpu = cpu_seconds();
        let started = Instant::now();
        let mut callers = Vec::new();
        for _ in 0..likers {
            let (next, visible, post_ids) = (next.clone(), visible.clone(), post_ids.clone());
            let base = self.client(&bench_user(&self.run_id, 0))?;
            let (tokens, run_id, store, users) = (
                self.tokens.clone(),
                self.run_id.clone(),
                self.store.clone(),
                self.users,
            );
            callers.push(tokio::spawn(async move {
                let mut watchers = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= likes {
                        return Ok::<_, anyhow::Error>((Instant::now(), watchers));
                    }
                    let (p, k, liker) = like_plan(n, posts, users);
                    let liker = bench_user(&run_id, liker);
                    let client = base.with_token(&tokens.mint(
                        &liker,
                        now_secs(),
                        Duration::from_secs(3600),
                    ))?;
                    client.like(&post_ids[p], true).await.map_err(status)?;
                    let accepted = Instant::now();
                    if n % SAMPLE_EVERY != 0 {
                        continue;
                    }
                    let (store, visible, post_id) =
                        (store.clone(), visible.clone(), post_ids[p].clone());
                    // The post's earlier likes were answered before this one
                    // was sent, and one post's reactions are counted in
                    // order: a count of k includes this like.
                    watchers.push(tokio::spawn(async move {
                        while accepted.elapsed() < Duration::from_secs(120) {
                            if let Ok(tallies) = store
                                .reactions
                                .tallies(std::slice::from_ref(&post_id))
                                .await
                                && tallies.get(&post_id).is_some_and(|t| t.likes >= k as u64)
                            {
                                visible
                                    .lock()
                                    .expect("not poisoned")
                                    .push(accepted.elapsed());
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }));
                }
            }));
        }
        let (bar, terminal) = crate::progress::bar(
            likes as u64,
            "{bar:40} {pos}/{len} likes counted, {msg} [{elapsed}, eta {eta}]",
        );
        let mut shown = Instant::now();
        let counted = loop {
            tokio::time::sleep(POLL).await;
            let counted = tallied() - tallied_before;
            let done = counted >= likes as u64 || started.elapsed() > PHASE_TIMEOUT;
            if !done && shown.elapsed() < progress_every(terminal) {
                continue;
            }
            shown = Instant::now();
            let accepted = next.load(Ordering::Relaxed).min(likes);
            let secs = started.elapsed().as_secs_f64();
            if terminal {
                bar.set_position(counted);
                bar.set_message(format!("{accepted} accepted"));
            } else {
                println!("bench-feed: {secs:>5.1}s likes {accepted:>7} counted {counted:>7}");
            }
            if done {
                break counted;
            }
        };
        bar.finish_and_clear();
        let counted_in = started.elapsed();
        let cpu = cpu_seconds() - cpu;
        let mut accepted_in = Duration::ZERO;
        let mut watchers = Vec::new();
        for c in callers {
            let (done, w) = c.await??;
            accepted_in = accepted_in.max(done.duration_since(started));
            watchers.extend(w);
        }
        for w in watchers {
            w.await?;
        }
        if counted < likes as u64 {
            bail!("only {counted} of {likes} likes were counted in {PHASE_TIMEOUT:?}");
        }
        let mut visible = visible.lock().expect("not poisoned").clone();
        visible.sort();
        Ok(LikesReport {
            likes,
            accepted_in,
            counted_in,
            visible,
            cpu,
        })
    }

    /// Newest pages of users spread over the graph, `rate` a second for
    /// `over`, each sent when due whether or not earlier ones were answered.
    async fn paced_reads(&self, rate: f64, over: Duration) -> Result<PacedReport> {
        let pages = (rate * over.as_secs_f64()).round().max(1.0) as usize;
        println!("bench-feed: reading {pages} pages at {rate:.0}/s");
        let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
        let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let (bar, _) = crate::progress::bar(
            pages as u64,
            "{bar:40} {pos}/{len} paced pages sent [{elapsed}, eta {eta}]",
        );
        let cpu = cpu_seconds();
        let start = tokio::time::Instant::now();
        let mut sent = Vec::with_capacity(pages);
        for i in 0..pages {
            tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
            let who = bench_user(&self.run_id, i.wrapping_mul(7919) % self.users);
            let client = self.client(&who)?;
            let latencies = latencies.clone();
            sent.push(tokio::spawn(async move {
                let at = Instant::now();
                let page = client.page("", 20).await.map_err(status)?;
                latencies.lock().expect("not poisoned").push(at.elapsed());
                let liked = page.items.iter().filter(|i| i.like_count > 0).count();
                Ok::<_, anyhow::Error>((page.items.len(), liked))
            }));
            bar.set_position(i as u64 + 1);
        }
        let (mut items, mut liked_items) = (0, 0);
        for s in sent {
            let (n, liked) = s.await??;
            items += n;
            liked_items += liked;
        }
        bar.finish_and_clear();
        let elapsed = start.elapsed();
        let cpu = cpu_seconds() - cpu;
        let mut latencies = latencies.lock().expect("not poisoned").clone();
        latencies.sort();
        Ok(PacedReport {
            rate,
            pages,
            elapsed,
            latencies,
            liked_items,
            items,
            cpu,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_planned_like_is_a_new_one_by_someone_else() {
        let (posts, users) = (7, 5);
        let mut seen = HashSet::new();
        for n in 0..posts * (users - 1) {
            let (p, k, liker) = like_plan(n, posts, users);
            assert_ne!(liker, p % users, "like {n} is by the post's author");
            assert!(seen.insert((p, liker)), "like {n} repeats one");
            // The k-th like of its post: k - 1 came before it.
            assert_eq!(
                (0..n)
                    .filter(|m| like_plan(*m, posts, users).0 == p)
                    .count(),
                k - 1
            );
        }
    }

    #[test]
    fn percentiles_name_each_and_cpu_moves_forward() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(
            percentiles(&sorted),
            "p50 51.0 ms, p90 90.0 ms, p99 99.0 ms, max 100.0 ms"
        );
        let before = cpu_seconds();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds() > before);
    }
}
