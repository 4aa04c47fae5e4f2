//! `scripts/cluster.sh`, as the README's production section uses it: `up`
//! runs `tidings init`, two gateways and a `tidings process` per stage group
//! (two sender replicas) as OS processes on the real Kafka and Cassandra;
//! a notification sent through each gateway reaches a local Twilio
//! stand-in; `status` shows every process alive with its ports and
//! `/metrics`; `down` stops every process it started.
//!
//! Each run has a state dir, topic prefix and keyspace of its own
//! (`TIDINGS_CLUSTER_DIR`, `TIDINGS_CLUSTER_NAME`), and deletes its topics,
//! consumer groups and keyspace when it passes.

mod support;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use support::{eventually, sms_provider::SmsProvider};
use tidings::client::Client;
use tidings_schemas::proto::v1 as pb;

/// The script, run on one cluster of this test.
#[derive(Clone)]
struct ClusterScript {
    dir: PathBuf,
    name: String,
    extra_config: PathBuf,
}

impl ClusterScript {
    fn run(&self, args: &[&str]) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh");
        Command::new(&script)
            .args(args)
            .env("TIDINGS_CLUSTER_DIR", &self.dir)
            .env("TIDINGS_CLUSTER_NAME", &self.name)
            .env("TIDINGS_CLUSTER_CONFIG", &self.extra_config)
            .env("TIDINGS_BIN", env!("CARGO_BIN_EXE_tidings"))
            .env_remove("RUST_LOG")
            .env_remove("TIDINGS_CONFIG")
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()))
    }

    /// Runs `args`, failing the test with the script's output unless it
    /// succeeds; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "scripts/cluster.sh {} failed ({}):\n{stdout}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

/// Runs `down` when dropped, also when the test fails, so no process
/// outlives the run.
struct DownOnDrop(ClusterScript);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = self.0.run(&["down"]);
    }
}

/// A process `status` lists: name, pid, state, ports.
#[derive(Debug)]
struct Listed {
    name: String,
    pid: u32,
    state: String,
    ports: HashMap<String, u16>,
}

fn parse_status(text: &str) -> Vec<Listed> {
    text.lines()
        .skip_while(|l| !l.starts_with("NAME "))
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let ports = fields
                .iter()
                .filter_map(|f| f.split_once('='))
                .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
                .collect();
            Listed {
                name: fields[0].to_owned(),
                pid: fields[1]
                    .parse()
                    .unwrap_or_else(|_| panic!("no pid in {line:?}")),
                state: fields[2].to_owned(),
                ports,
            }
        })
        .collect()
}

/// Whether `pid` still runs (a zombie has exited).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(") ")
            .next()
            .is_some_and(|s| !s.starts_with('Z'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_script_runs_the_production_shape_and_delivers_through_both_gateways() {
    let (sms, sms_addr) = SmsProvider::start().await;
    let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cluster-{id}"));
    std::fs::create_dir_all(&dir).expect("state dir");
    let extra_config = dir.join("providers.toml");
    let sms_config = SmsProvider::config(sms_addr);
    let field = |k: &str| sms_config[k].as_str().expect("provider setting").to_owned();
    std::fs::write(
        &extra_config,
        format!(
            "[providers.sms]\nkind = \"twilio\"\naccount_sid = \"{}\"\nauth_token = \"{}\"\n\
             from = \"{}\"\nbase_url = \"{}\"\n",
            field("account_sid"),
            field("auth_token"),
            field("from"),
            field("base_url"),
        ),
    )
    .expect("extra config");
    let cluster = ClusterScript {
        dir,
        name: format!("cluster_{id}"),
        extra_config,
    };

    let _down = DownOnDrop(cluster.clone());
    let up = tokio::task::spawn_blocking({
        let cluster = cluster.clone();
        move || cluster.ok(&["up"])
    })
    .await
    .expect("up");
    let listed = parse_status(&up);
    let names: Vec<&str> = listed.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "gateway-1",
            "gateway-2",
            "enricher",
            "scheduler",
            "senders-1",
            "senders-2",
            "retries",
            "feed",
            "template-stats"
        ],
        "{up}"
    );
    let mut ports: Vec<u16> = listed
        .iter()
        .flat_map(|p| p.ports.values().copied())
        .collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 2 * 2 + 7, "every port its own: {up}");

    // Every process is its own OS process and serves its own /metrics.
    for p in &listed {
        assert!(running(p.pid), "{} (pid {}) is not running", p.name, p.pid);
        let port = p.ports.get("http").or(p.ports.get("metrics")).copied();
        let addr = SocketAddr::from(([127, 0, 0, 1], port.expect("a metrics port")));
        let metrics = support::http::request(addr, "GET", "/metrics", &[], None).await;
        assert_eq!(metrics.status, 200, "{}: {}", p.name, metrics.body);
        assert!(
            metrics.body.contains("# TYPE"),
            "{}: {}",
            p.name,
            metrics.body
        );
    }

    // The client commands' environment, as the README has people use it.
    let env: HashMap<String, String> = cluster
        .ok(&["env"])
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect();
    let gateways: Vec<&str> = env["TIDINGS_CLUSTER_GATEWAYS"].split(',').collect();
    assert_eq!(gateways.len(), 2, "{env:?}");
    let (key, secret) = (&env["TIDINGS_APP_KEY"], &env["TIDINGS_APP_SECRET"]);

    let mut phones = Vec::new();
    for (i, gateway) in gateways.iter().enumerate() {
        let client = Client::connect(gateway, Some(key.clone()), Some(secret.clone()))
            .await
            .expect("gateway answers");
        let user = format!("cluster-{id}-{i}");
        let phone = format!("+1415{:07}", rand_digits(&id, i));
        client
            .upsert_user(pb::UpsertUserRequest {
                user_id: user.clone(),
                phone: phone.clone(),
                ..Default::default()
            })
            .await
            .expect("upsert user");
        client
            .send(pb::SendRequest {
                user_ids: vec![user],
                channels: vec![pb::Channel::Sms as i32],
                content: Some(pb::send_request::Content::Raw(pb::RawContent {
                    body: format!("through gateway {}", i + 1),
                    sms_text: format!("through gateway {}", i + 1),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .await
            .expect("send");
        phones.push(phone);
    }
    for phone in &phones {
        eventually(
            &format!("the SMS to {phone} at the provider"),
            Duration::from_secs(120),
            || async { (!sms.accepted(phone).is_empty()).then_some(()) },
        )
        .await;
    }

    // A message the provider rejects is dead-lettered, and `tidings dlq
    // list --output json` with the cluster's configuration (what `env`
    // exports) shows it as JSON.
    let rejected = format!("+1415{:07}", rand_digits(&id, 7));
    sms.script(
        &rejected,
        &[support::sms_provider::Answer {
            status: 400,
            retry_after_secs: None,
            code: 21617,
        }],
    );
    let client = Client::connect(gateways[0], Some(key.clone()), Some(secret.clone()))
        .await
        .expect("gateway answers");
    let user = format!("cluster-{id}-rejected");
    client
        .upsert_user(pb::UpsertUserRequest {
            user_id: user.clone(),
            phone: rejected.clone(),
            ..Default::default()
        })
        .await
        .expect("upsert user");
    let sent = client
        .send(pb::SendRequest {
            user_ids: vec![user],
            channels: vec![pb::Channel::Sms as i32],
            content: Some(pb::send_request::Content::Raw(pb::RawContent {
                body: "rejected".into(),
                sms_text: "rejected".into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .expect("send");
    let notification = sent.notification_ids[0].clone();
    let letter = eventually(
        "the rejected SMS in `tidings dlq list --output json`",
        Duration::from_secs(120),
        || {
            let (config, notification) = (env["TIDINGS_CONFIG"].clone(), notification.clone());
            async move {
                let out = tokio::task::spawn_blocking(move || {
                    Command::new(env!("CARGO_BIN_EXE_tidings"))
                        .args(["--config", &config, "dlq", "list", "--output", "json"])
                        .args(["--notification", &notification])
                        .env_remove("RUST_LOG")
                        .output()
                })
                .await
                .ok()?
                .ok()?;
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let line = text.lines().next()?;
                Some(
                    serde_json::from_str::<serde_json::Value>(line)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {line}")),
                )
            }
        },
    )
    .await;
    assert_eq!(letter["stage"], "sender.sms", "{letter}");
    assert_eq!(letter["payload"]["id"], notification.as_str(), "{letter}");

    let status = parse_status(&cluster.ok(&["status"]));
    assert_eq!(status.len(), listed.len());
    for (p, q) in status.iter().zip(&listed) {
        assert_eq!(
            (p.name.as_str(), p.pid, p.state.as_str()),
            (q.name.as_str(), q.pid, "alive")
        );
    }
    let log = cluster.ok(&["logs", "senders-1"]);
    assert!(log.contains("tidings process sender-ios"), "{log}");

    cluster.ok(&["down"]);
    for p in &listed {
        assert!(
            !running(p.pid),
            "{} (pid {}) still runs after down",
            p.name,
            p.pid
        );
    }
    let after = cluster.run(&["status"]);
    assert_eq!(after.status.code(), Some(1), "status after down");
    assert!(String::from_utf8_lossy(&after.stderr).contains("not up"));

    cleanup(&cluster.name).await;
}

/// Seven digits of a phone number, distinct per run and gateway.
fn rand_digits(id: &str, i: usize) -> u64 {
    let n = u64::from_str_radix(&id[..8], 16).unwrap_or(0);
    (n % 1_000_000) * 10 + i as u64
}

/// Deletes the run's topics, consumer groups and keyspace from the shared
/// servers; a step that fails is reported, not fatal.
async fn cleanup(name: &str) {
    use rdkafka::{
        admin::{AdminClient, AdminOptions},
        client::DefaultClientContext,
        consumer::{BaseConsumer, Consumer},
    };
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", support::kafka_address());
    let ours = format!("{name}.");
    let timeout = Duration::from_secs(10);
    let topics: Vec<String> = config
        .create::<BaseConsumer>()
        .and_then(|c| c.fetch_metadata(None, timeout))
        .map(|m| m.topics().iter().map(|t| t.name().to_owned()).collect())
        .unwrap_or_default();
    let groups: Vec<String> = config
        .create::<BaseConsumer>()
        .and_then(|c| c.fetch_group_list(None, timeout))
        .map(|l| l.groups().iter().map(|g| g.name().to_owned()).collect())
        .unwrap_or_default();
    if let Ok(admin) = config.create::<AdminClient<DefaultClientContext>>() {
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let groups: Vec<&str> = groups
            .iter()
            .filter(|g| g.starts_with(&ours))
            .map(String::as_str)
            .collect();
        if let Err(e) = admin.delete_groups(&groups, &opts).await {
            eprintln!("cleanup: deleting groups failed: {e}");
        }
        let topics: Vec<&str> = topics
            .iter()
            .filter(|t| t.starts_with(&ours))
            .map(String::as_str)
            .collect();
        if let Err(e) = admin.delete_topics(&topics, &opts).await {
            eprintln!("cleanup: deleting topics failed: {e}");
        }
    }
    match scylla::client::session_builder::SessionBuilder::new()
        .known_node(support::cql_address())
        .build()
        .await
    {
        Ok(session) => {
            if let Err(e) = session
                .query_unpaged(format!("DROP KEYSPACE IF EXISTS {name}"), ())
                .await
            {
                eprintln!("cleanup: dropping keyspace {name} failed: {e}");
            }
        }
        Err(e) => eprintln!("cleanup: no CQL session: {e}"),
    }
}
