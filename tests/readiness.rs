//! A stage process on the real servers, as `tidings process` runs it (the
//! runtime in this test process): `/readyz` answers 503 naming the stage
//! while its consumer waits for its partitions, and 200 once its group has
//! assigned them; `/metrics` serves the store's call latency, the build info
//! and the process metrics; `tidings top --once` reads that `/metrics` and
//! names the stage and every channel.
//!
//! The wait for partitions is made to last, not raced: a member of the
//! stage's group that holds every partition and stops polling keeps the
//! rebalance the stage's join starts from completing (librdkafka waits for
//! the application to hand back revoked partitions), until the test lets it
//! go.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig,
    consumer::{BaseConsumer, Consumer},
};
use support::{cql_address, eventually, http, kafka_address};
use tidings::runtime::{Runtime, StageName, spawn_metrics, stop_tasks};
use tidings_config::Config;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// A member of `group` on `topic` that polls until it holds `partitions`
/// partitions, then stops polling.
fn stalling_member(config: &Config, group: &str, topic: &str, partitions: usize) -> BaseConsumer {
    let member: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "10000")
        // The rebalance waits up to this long for the member to rejoin: the
        // test lets it go well before.
        .set("max.poll.interval.ms", "120000")
        .create()
        .expect("group member");
    member.subscribe(&[topic]).expect("subscribe");
    let started = Instant::now();
    while member.assignment().map_or(0, |a| a.count()) < partitions {
        assert!(
            started.elapsed() < WAIT,
            "the stalling member was not assigned {topic}'s partitions"
        );
        let _ = member.poll(Duration::from_millis(100));
    }
    member
}

/// Leaves the group: hands back the partitions (serving the pending
/// rebalance) and closes, on a thread of its own, never for longer than
/// the wait (rdkafka's drop of a member waits for the close with no bound).
fn let_go(member: BaseConsumer) {
    std::thread::spawn(move || {
        member.unsubscribe();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            let _ = member.poll(Duration::from_millis(100));
        }
        drop(member);
    });
}

async fn get(addr: SocketAddr, path: &str) -> http::HttpResponse {
    http::request(addr, "GET", path, &[], None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_process_is_ready_once_its_partitions_are_assigned_and_top_reads_it() {
    let prefix = format!("t{}", &Uuid::new_v4().simple().to_string()[..12]);
    let mut config = Config::default();
    config.kafka.bootstrap_servers = kafka_address();
    config.kafka.topic_prefix = prefix.clone();
    config.kafka.group_prefix = prefix.clone();
    config.kafka.partitions = 3;
    config.store.url = format!("scylla://{}/tidings_e2e", cql_address());
    let runtime = tokio::time::timeout(
        support::START_LIMIT,
        Runtime::connect(config.clone(), true),
    )
    .await
    .expect("the runtime connects within the start limit")
    .unwrap_or_else(|e| {
        panic!("connecting to the test servers: {e:#} (start them with `scripts/servers.sh up`)")
    });
    let tracking = runtime.topics.tracking().to_owned();

    // Another member of the stage's group holds every partition, and stalls.
    let group = format!("{prefix}.template-stats");
    let staller = {
        let (config, group, tracking) = (config.clone(), group.clone(), tracking.clone());
        tokio::task::spawn_blocking(move || stalling_member(&config, &group, &tracking, 3))
            .await
            .expect("stalling member")
    };

    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    runtime
        .spawn_stage(StageName::TemplateStats, &mut tasks, &shutdown)
        .expect("template-stats starts");
    let readiness = runtime
        .readiness(&mut tasks, &shutdown)
        .expect("readiness probe");
    let addr = spawn_metrics(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        readiness,
        &mut tasks,
        &shutdown,
    )
    .await
    .expect("metrics server");

    // Not ready: Kafka and the store answer, the stage waits for partitions.
    let waiting = eventually(
        "/readyz to answer 503 for the stage alone",
        WAIT,
        || async move {
            let r = get(addr, "/readyz").await;
            (r.status == 503 && !r.body.contains("not probed yet")).then_some(r.body)
        },
    )
    .await;
    assert!(
        waiting.contains("stage template-stats: waiting for its partition assignment"),
        "{waiting}"
    );
    assert!(
        !waiting.contains("kafka:") && !waiting.contains("store:"),
        "{waiting}"
    );
    assert_eq!(
        get(addr, "/healthz").await.status,
        200,
        "alive while not ready"
    );
    // Still waiting a while later: the rebalance is held, not slow.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(get(addr, "/readyz").await.status, 503);

    let_go(staller);
    let ready = eventually("/readyz to answer 200", WAIT, || async move {
        let r = get(addr, "/readyz").await;
        (r.status == 200).then_some(r.body)
    })
    .await;
    assert!(ready.starts_with("ready\n"), "{ready}");
    assert!(ready.contains("kafka and the store answer"), "{ready}");
    assert!(ready.contains("stage template-stats: holds "), "{ready}");

    // The readiness probe's store read went through the metered store.
    let metrics = get(addr, "/metrics").await.body;
    let probe_reads = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "tidings_store_call_seconds_count{engine=\"scylla\",operation=\"apps.get\"}",
            )
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no store call latency on /metrics:\n{metrics}"));
    assert!(probe_reads >= 1);
    for series in [
        "tidings_build_info{",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(series)),
            "no {series} on /metrics"
        );
    }

    // A record the stage cannot decode: a dead letter for top to show.
    let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .create()
        .expect("producer");
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&tracking)
                .key("k")
                .payload(b"not avro"),
            Duration::from_secs(10),
        )
        .await
        .expect("raw produce");
    let dead = "tidings_stage_records_total{outcome=\"dead_lettered\",stage=\"template-stats\"}";
    eventually("the stage to dead-letter the record", WAIT, || async move {
        get(addr, "/metrics")
            .await
            .body
            .contains(dead)
            .then_some(())
    })
    .await;

    let url = format!("http://{addr}/metrics");
    let top = url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args([
                "top",
                "--once",
                "--interval",
                "0.5",
                "--metrics",
                top.as_str(),
            ])
            .env_remove("RUST_LOG")
            .output()
            .expect("tidings top runs")
    })
    .await
    .expect("top");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tidings top --once failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 process(es)"), "{stdout}");
    assert!(!stdout.contains("unreachable"), "{stdout}");
    for name in ["template-stats", "ios", "android", "sms", "email", "scylla"] {
        assert!(stdout.contains(name), "top does not name {name}:\n{stdout}");
    }
    assert!(
        stdout.contains("CONSUMER LAG") && stdout.contains("CHANNELS"),
        "{stdout}"
    );

    // Nothing answers: one error line naming the URL, exit 1.
    let out = tokio::task::spawn_blocking(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["top", "--once", "--metrics", "http://127.0.0.1:1/metrics"])
            .output()
            .expect("tidings top runs")
    })
    .await
    .expect("top");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("http://127.0.0.1:1/metrics") && !stderr.contains("panicked"),
        "{stderr}"
    );

    tokio::time::timeout(support::STOP_LIMIT, stop_tasks(&mut tasks, &shutdown))
        .await
        .expect("the stage stops within the limit")
        .expect("clean shutdown");
    drop(runtime);
}
