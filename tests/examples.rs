//! The Python examples under `examples/`, run as their users would run them,
//! against a pipeline on the real Kafka and Cassandra of `scripts/servers.sh`
//! and on the embedded default (the Python processes reach the in-process
//! mock cluster at its loopback address, as docs/schemas.md says):
//!
//! - `examples/analytics/template_rates.py` reads the tracking topic, decodes
//!   the Confluent wire format with fastavro and `schemas/avro/`, and its
//!   per-template counts must equal `GetTemplateStats` (sends, SendGrid
//!   delivery receipts, one posted twice, opens and clicks through the
//!   tracking endpoints);
//! - `examples/schema-registry/read_topics.py` decodes every record of the
//!   requests, email and tracking topics with confluent-kafka's
//!   `AvroDeserializer` and `SchemaRegistryClient` pointed at the gateway's
//!   `/schema-registry` API;
//! - `examples/python-client/client.py` sends a notification and reads a
//!   feed through grpcio stubs generated from `schemas/proto`.
//!
//! The examples' Python packages are in the virtualenv `scripts/test-deps.sh`
//! installs (`examples-venv` in the tools' cache; `TIDINGS_EXAMPLES_PYTHON`
//! names another interpreter).

mod support;

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::{Backend, TestPipeline, email_provider::EmailProvider, eventually, http as raw_http};
use tidings_gateway::user_token::UserTokens;
use tidings_schemas::{
    proto::v1 as pb,
    records::{Delivery, NotificationRequest, TrackingEvent},
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
/// A Python example's whole run: stub generation, a topic read, a call.
const RUN_LIMIT: Duration = Duration::from_secs(180);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The interpreter with the examples' packages, or a failure that says how
/// to install them.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(find_python)
}

fn find_python() -> PathBuf {
    let python = std::env::var_os("TIDINGS_EXAMPLES_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let tools = std::env::var_os("TIDINGS_TOOLS_DIR")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("XDG_CACHE_HOME")
                        .map(|c| PathBuf::from(c).join("tidings-tools"))
                })
                .or_else(|| {
                    std::env::var_os("HOME")
                        .map(|h| PathBuf::from(h).join(".cache").join("tidings-tools"))
                })
                .expect("HOME, XDG_CACHE_HOME or TIDINGS_TOOLS_DIR is set");
            tools.join("examples-venv").join("bin").join("python")
        });
    let imports = Command::new(&python)
        .args([
            "-c",
            "import confluent_kafka, confluent_kafka.schema_registry.avro, fastavro, grpc, grpc_tools",
        ])
        .output();
    match imports {
        Ok(out) if out.status.success() => python,
        Ok(out) => panic!(
            "{} cannot import the examples' packages ({}); run scripts/test-deps.sh",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "{} does not run ({e}); run scripts/test-deps.sh (it installs the examples' virtualenv)",
            python.display()
        ),
    }
}

/// What a run of an example printed.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Stdout as JSON; fails the test when it is not.
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }

    /// Stdout's lines, each JSON.
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

/// Runs `examples/<script>` with `args`; a run longer than [`RUN_LIMIT`] is
/// killed and fails the test.
async fn run_example(script: &str, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let file = |p: &Path| std::fs::File::create(p).expect("output file");
    let mut child = Command::new(python())
        .arg(repo().join("examples").join(script))
        .args(args)
        .stdin(Stdio::null())
        .stdout(file(&out_path))
        .stderr(file(&err_path))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the example") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{script} {args:?} did not finish within {RUN_LIMIT:?}; stderr: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let read = |p: &Path| std::fs::read_to_string(p).expect("example output");
    let run = Run {
        success: status.success(),
        stdout: read(&out_path),
        stderr: read(&err_path),
    };
    eprintln!("{script} {args:?}: {status}\n{}", run.stderr);
    run
}

/// Runs an example that must succeed.
async fn run_ok(script: &str, args: &[&str]) -> Run {
    let run = run_example(script, args).await;
    assert!(
        run.success,
        "{script} {args:?} failed\nstdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    run
}

fn http_addr(t: &TestPipeline) -> SocketAddr {
    t.pipeline.as_ref().expect("running").gateway.http
}

fn grpc_addr(t: &TestPipeline) -> String {
    t.pipeline
        .as_ref()
        .expect("running")
        .gateway
        .grpc
        .to_string()
}

fn registry_url(t: &TestPipeline) -> String {
    format!("http://{}/schema-registry", http_addr(t))
}

async fn email_user(t: &TestPipeline) -> (String, String) {
    let user = format!("u-{}", Uuid::new_v4());
    let email = format!("{user}@example.org");
    t.client
        .upsert_user(pb::UpsertUserRequest {
            user_id: user.clone(),
            email: email.clone(),
            ..Default::default()
        })
        .await
        .expect("upsert user");
    (user, email)
}

async fn put_template(t: &TestPipeline, prefix: &str) -> String {
    let name = format!("{prefix}-{}", Uuid::new_v4().simple());
    t.client
        .put_template(pb::Template {
            name: name.clone(),
            default_locale: "en".into(),
            variants: [(
                "en".to_owned(),
                pb::TemplateContent {
                    email_subject: "What's new".into(),
                    email_html: "<p>Read <a href=\"{{link.docs}}\">the docs</a></p>".into(),
                    email_text: "Read the docs".into(),
                    tracking_links: [("docs".to_owned(), "https://example.com/docs".to_owned())]
                        .into(),
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        })
        .await
        .expect("put template");
    name
}

async fn send_template(t: &TestPipeline, user: &str, template: &str) -> String {
    t.client
        .send(pb::SendRequest {
            user_ids: vec![user.into()],
            channels: vec![pb::Channel::Email as i32],
            content: Some(pb::send_request::Content::Template(pb::TemplateRef {
                name: template.into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .expect("send")
        .notification_ids[0]
        .clone()
}

/// The path of the tracked link (`c`) or open pixel (`o`) in a mail.
fn tracking_path(html: &str, kind: char) -> String {
    let marker = format!("/t/{kind}/");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} link in {html}"));
    let end = html[start..].find('"').map_or(html.len(), |e| start + e);
    html[start..end].to_owned()
}

async fn get(t: &TestPipeline, path: &str) -> raw_http::HttpResponse {
    raw_http::request(http_addr(t), "GET", path, &[], None).await
}

/// A SendGrid Event Webhook event for the mail to `email`, as SendGrid
/// posts it: the mail's `custom_args` repeated as top-level fields.
fn sendgrid_event(email: &str, mail: &Value, kind: &str) -> Value {
    let mut event = json!({
        "email": email,
        "event": kind,
        "timestamp": 1_700_000_000,
        "sg_event_id": Uuid::new_v4().to_string(),
    });
    let args = mail["personalizations"][0]["custom_args"]
        .as_object()
        .expect("custom_args in the mail");
    for (k, v) in args {
        event[k] = v.clone();
    }
    event
}

/// Two templates' sends, receipts, opens and clicks; the analytics job's
/// counts and rates per template equal `GetTemplateStats`.
async fn analytics_job_counts_what_get_template_stats_counts(backend: Backend) {
    let (provider, addr) = EmailProvider::start().await;
    let t = TestPipeline::start_with(backend, |c| {
        c.providers
            .insert("email".into(), EmailProvider::config(addr));
    })
    .await;
    let digest = put_template(&t, "digest").await;
    let promo = put_template(&t, "promo").await;
    let mut users = Vec::new();
    for template in [&digest, &digest, &digest, &digest, &promo] {
        let (user, email) = email_user(&t).await;
        let id = send_template(&t, &user, template).await;
        users.push((id, email));
    }
    let (_, deliveries) = t
        .read_until::<Delivery>(&t.topic("deliver.email"), WAIT, |d| d.len() >= users.len())
        .await;
    let html_of = |id: &str| {
        deliveries
            .iter()
            .find(|d| d.notification_id == id)
            .and_then(|d| d.email_html.clone())
            .unwrap_or_else(|| panic!("the email of {id}"))
    };
    let mut mails = Vec::new();
    for (_, email) in &users[..4] {
        let mail = eventually("the mail at SendGrid", WAIT, || async {
            provider.accepted(email).into_iter().next()
        })
        .await;
        mails.push((email.clone(), mail.1));
    }

    // Receipts: three of the four digests delivered, the third one's
    // receipt posted twice (SendGrid retries); it counts once.
    let events: Vec<Value> = [0, 1, 2, 2]
        .iter()
        .map(|&i| sendgrid_event(&mails[i].0, &mails[i].1, "delivered"))
        .collect();
    let answer = raw_http::request(
        http_addr(&t),
        "POST",
        "/webhooks/sendgrid/events",
        &[],
        Some(("application/json", &Value::from(events).to_string())),
    )
    .await;
    assert!(
        answer.status == 204 || answer.status == 200,
        "{} {}",
        answer.status,
        answer.body
    );
    // Opens: the first mail twice, the second once; one click on the first.
    for i in [0, 0, 1] {
        let pixel = get(&t, &tracking_path(&html_of(&users[i].0), 'o')).await;
        assert_eq!(pixel.status, 200, "{}", pixel.head);
    }
    let click = get(&t, &tracking_path(&html_of(&users[0].0), 'c')).await;
    assert!(matches!(click.status, 302 | 303), "{}", click.head);

    let expected = [(&digest, (4, 3, 3, 1)), (&promo, (1, 0, 0, 0))];
    for (name, (sent, delivered, opened, clicked)) in expected {
        eventually(&format!("{name}'s counts"), WAIT, || async {
            let s = t.template_stats(name).await?;
            (s.sent >= sent
                && s.delivered >= delivered
                && s.opened >= opened
                && s.clicked >= clicked)
                .then_some(())
        })
        .await;
    }
    t.caught_up("template-stats", &t.topic("tracking")).await;

    let run = run_ok(
        "analytics/template_rates.py",
        &[
            "--bootstrap",
            &t.bootstrap,
            "--prefix",
            &t.prefix,
            "--template",
            &digest,
            "--template",
            &promo,
            "--json",
        ],
    )
    .await;
    let report = run.json();
    assert_eq!(report["skipped"], 0, "every tracking record decodes");
    for (name, counts) in expected {
        let stats = t.template_stats(name).await.expect("stats");
        assert_eq!(
            (stats.sent, stats.delivered, stats.opened, stats.clicked),
            counts,
            "GetTemplateStats of {name}"
        );
        let row = &report["templates"][name.as_str()];
        let job = |k: &str| row[k].as_i64().unwrap_or_else(|| panic!("{k} in {row}"));
        assert_eq!(
            (job("sent"), job("delivered"), job("opened"), job("clicked")),
            (stats.sent, stats.delivered, stats.opened, stats.clicked),
            "the job's counts of {name} are GetTemplateStats': {row}"
        );
        let rate = |n: i64| (n as f64 / stats.sent as f64 * 10_000.0).round() / 10_000.0;
        assert_eq!(row["delivery_rate"], json!(rate(stats.delivered)), "{row}");
        assert_eq!(row["open_rate"], json!(rate(stats.opened)), "{row}");
        assert_eq!(row["click_rate"], json!(rate(stats.clicked)), "{row}");
    }
    assert_eq!(
        report["templates"].as_object().map(|o| o.len()),
        Some(2),
        "only the templates asked for: {report}"
    );

    // The table, as a person runs it.
    let table = run_ok(
        "analytics/template_rates.py",
        &[
            "--bootstrap",
            &t.bootstrap,
            "--prefix",
            &t.prefix,
            "--template",
            &digest,
        ],
    )
    .await;
    let line = table
        .stdout
        .lines()
        .find(|l| l.starts_with(digest.as_str()))
        .unwrap_or_else(|| panic!("no row for {digest}: {}", table.stdout));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cells[1..],
        ["4", "3", "3", "1", "75.0%", "75.0%", "25.0%"],
        "{line}"
    );
    t.stop().await;
}

/// confluent-kafka's `SchemaRegistryClient` and `AvroDeserializer`, pointed at
/// the gateway, decode every record of three topics (with the writer schema
/// the id names, and with the subject's latest version); the registry's
/// errors are Confluent's.
async fn confluent_deserializer_reads_the_topics_through_the_gateways_registry(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let template = put_template(&t, "registry").await;
    let mut ids = HashSet::new();
    for _ in 0..3 {
        let (user, _) = email_user(&t).await;
        ids.insert(send_template(&t, &user, &template).await);
    }
    t.read_until::<Delivery>(&t.topic("deliver.email"), WAIT, |d| d.len() >= ids.len())
        .await;
    t.caught_up("enricher", &t.topic("notify.requests")).await;
    t.caught_up("sender.email", &t.topic("deliver.email")).await;
    let registry = registry_url(&t);

    // The subjects: every topic's `<topic>-value` and every record's name.
    let subjects = run_ok(
        "schema-registry/read_topics.py",
        &["subjects", "--registry", &registry],
    )
    .await
    .json_lines();
    let id_of: BTreeMap<String, i64> = subjects
        .iter()
        .map(|s| {
            assert_eq!(s["version"], 1, "{s}");
            (
                s["subject"].as_str().expect("subject").to_owned(),
                s["id"].as_i64().expect("id"),
            )
        })
        .collect();
    for (subject, id) in [
        (format!("{}-value", t.topic("notify.requests")), 1),
        (format!("{}-value", t.topic("deliver.email")), 2),
        (format!("{}-value", t.topic("retry.3")), 2),
        (format!("{}-value", t.topic("deadletter")), 3),
        (format!("{}-value", t.topic("tracking")), 4),
        (format!("{}-value", t.topic("feed.posts")), 5),
        (format!("{}-value", t.topic("feed.fanout")), 6),
        ("tidings.v1.Delivery".to_owned(), 2),
        ("tidings.v1.TrackingEvent".to_owned(), 4),
    ] {
        assert_eq!(id_of.get(&subject), Some(&id), "{subject} in {id_of:?}");
    }

    // Unknown ids: Confluent's error, through the client and on the wire.
    let missing = run_example(
        "schema-registry/read_topics.py",
        &["schema", "--registry", &registry, "--id", "99"],
    )
    .await;
    assert!(!missing.success, "{}", missing.stdout);
    assert_eq!(
        missing.json(),
        json!({"http_status": 404, "error_code": 40403, "message": "Schema not found"})
    );
    let raw = get(&t, "/schema-registry/schemas/ids/99").await;
    assert_eq!(raw.status, 404);
    assert!(
        raw.head
            .to_lowercase()
            .contains("content-type: application/vnd.schemaregistry.v1+json"),
        "{}",
        raw.head
    );
    assert_eq!(
        raw.json(),
        json!({"error_code": 40403, "message": "Schema not found"})
    );
    let found = run_ok(
        "schema-registry/read_topics.py",
        &["schema", "--registry", &registry, "--id", "4"],
    )
    .await
    .json();
    assert_eq!(found["schema"]["name"], "TrackingEvent", "{found}");
    assert_eq!(found["schema_type"], "AVRO", "{found}");

    let topics = [
        t.topic("notify.requests"),
        t.topic("deliver.email"),
        t.topic("tracking"),
    ];
    let requests = t.read_all::<NotificationRequest>(&topics[0]).await;
    let deliveries = t.read_all::<Delivery>(&topics[1]).await;
    let tracking = t.read_all::<TrackingEvent>(&topics[2]).await;
    for latest in [false, true] {
        let mut args = vec!["read", "--registry", &registry, "--bootstrap", &t.bootstrap];
        if latest {
            args.push("--use-latest");
        }
        args.extend(topics.iter().map(String::as_str));
        let records = run_ok("schema-registry/read_topics.py", &args)
            .await
            .json_lines();
        let of = |topic: &str| -> Vec<&Value> {
            records.iter().filter(|r| r["topic"] == topic).collect()
        };
        let (r, d, k) = (of(&topics[0]), of(&topics[1]), of(&topics[2]));
        assert_eq!(
            (r.len(), d.len(), k.len()),
            (requests.len(), deliveries.len(), tracking.len()),
            "every record of the three topics, decoded (use.latest.version {latest})"
        );
        for (records, id) in [(&r, 1), (&d, 2), (&k, 4)] {
            assert!(records.iter().all(|r| r["schema_id"] == id), "{records:?}");
        }
        let decoded: HashSet<&str> = d
            .iter()
            .filter_map(|r| r["value"]["notification_id"].as_str())
            .collect();
        assert_eq!(
            decoded,
            ids.iter().map(String::as_str).collect(),
            "the deliveries' notification ids"
        );
        assert!(
            d.iter()
                .all(|r| r["value"]["template_name"] == template.as_str()),
            "{d:?}"
        );
        let kinds: HashSet<&str> = k
            .iter()
            .filter_map(|r| r["value"]["kind"].as_str())
            .collect();
        assert!(
            kinds.contains("ACCEPTED") && kinds.contains("SENT"),
            "{kinds:?}"
        );
    }
    t.stop().await;
}

/// The grpcio client generated from `schemas/proto`: a user, a notification
/// (its email on the delivery topic, its state through `GetStatus`), a
/// follow, a post and the follower's feed.
async fn python_client_sends_a_notification_and_reads_a_feed(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let gateway = grpc_addr(&t);
    let (key, secret) = (t.app.0.clone(), t.app.1.clone());
    let app = [
        "--gateway",
        &gateway,
        "--app-key",
        &key,
        "--app-secret",
        &secret,
    ];
    let user = format!("py-{}", Uuid::new_v4().simple());
    let email = format!("{user}@example.org");
    let with = |extra: &[&'static str], tail: &[&str]| -> Vec<String> {
        app.iter()
            .chain(extra)
            .chain(tail)
            .map(|s| s.to_string())
            .collect()
    };
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_ok("python-client/client.py", &args).await.json()
    };
    run(with(&[], &["upsert-user", &user, "--email", &email])).await;
    let sent = run(with(
        &[],
        &[
            "send",
            &user,
            "--channel",
            "email",
            "--subject",
            "Hello from Python",
            "--text",
            "grpcio",
        ],
    ))
    .await;
    let id = sent["notification_ids"][0]
        .as_str()
        .unwrap_or_else(|| panic!("a notification id in {sent}"))
        .to_owned();
    let (_, deliveries) = t
        .read_until::<Delivery>(&t.topic("deliver.email"), WAIT, |d| {
            d.iter().any(|d| d.notification_id == id)
        })
        .await;
    let delivery = deliveries
        .iter()
        .find(|d| d.notification_id == id)
        .expect("the delivery");
    assert_eq!(
        (delivery.target.as_str(), delivery.email_subject.as_deref()),
        (email.as_str(), Some("Hello from Python"))
    );
    eventually("the email's state in the log", WAIT, || async {
        let s = t.client.status(&id).await.ok()?;
        s.deliveries
            .first()
            .filter(|d| d.state == "sent")
            .map(|_| ())
    })
    .await;
    let status = run(with(&[], &["status", &id])).await;
    assert_eq!(status["deliveries"][0]["state"], "sent", "{status}");
    assert_eq!(status["deliveries"][0]["channel"], "email", "{status}");

    // A refused call: the gateway's error, named by the client.
    let refused = run_example(
        "python-client/client.py",
        &[
            "--gateway",
            &gateway,
            "--app-key",
            &key,
            "--app-secret",
            "wrong",
            "status",
            &id,
        ],
    )
    .await;
    assert!(!refused.success);
    assert_eq!(
        refused.json()["code"],
        "UNAUTHENTICATED",
        "{}",
        refused.stdout
    );

    // The feed, as two users with bearer tokens.
    let tokens = UserTokens::new(&t.config.feed.user_token_secret);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let (author, reader) = (format!("{user}-author"), format!("{user}-reader"));
    let author_token = tokens.mint(&author, now, Duration::from_secs(600));
    let reader_token = tokens.mint(&reader, now, Duration::from_secs(600));
    let as_user = |token: &str, tail: &[&str]| -> Vec<String> {
        ["--gateway", gateway.as_str(), "--user-token", token]
            .iter()
            .chain(tail)
            .map(|s| s.to_string())
            .collect()
    };
    run(as_user(&reader_token, &["follow", &author])).await;
    let post = run(as_user(&author_token, &["publish", "Written in Python"])).await;
    let post_id = post["post_id"]
        .as_str()
        .unwrap_or_else(|| panic!("a post id in {post}"))
        .to_owned();
    let feed = eventually("the post in the reader's feed", WAIT, || {
        let args = as_user(&reader_token, &["feed"]);
        let post_id = post_id.clone();
        async move {
            let feed = run(args).await;
            let items = feed["items"].as_array()?;
            items
                .iter()
                .any(|i| i["post_id"] == post_id.as_str())
                .then_some(feed)
        }
    })
    .await;
    let item = &feed["items"][0];
    assert_eq!(item["body"], "Written in Python", "{feed}");
    assert_eq!(item["author"]["user_id"], author.as_str(), "{feed}");
    t.stop().await;
}

on_every_backend!(
    analytics_job_counts_what_get_template_stats_counts,
    confluent_deserializer_reads_the_topics_through_the_gateways_registry,
    python_client_sends_a_notification_and_reads_a_feed,
);
