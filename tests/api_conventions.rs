//! The gateway's API conventions, checked as outside clients see them, on
//! the embedded default and on real Kafka and Cassandra:
//!
//! - a refused gRPC request carries `google.rpc.BadRequest` field violations
//!   in `grpc-status-details-bin` (decoded with tonic-types, as any client
//!   would), and the HTTP API lists the same in its error body;
//! - `GET /openapi.json` is an OpenAPI 3.1 document of every HTTP endpoint,
//!   and schemathesis (PyPI, installed by scripts/test-deps.sh) fuzzing the
//!   running gateway from it finds no server error and no response that
//!   breaks the document (status code, content type, body schema).

mod support;

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use support::{Backend, TestPipeline, eventually, http};
use tidings_gateway::{user_token::UserTokens, validate::field_violations};
use tidings_schemas::proto::v1 as pb;
use tonic::Code;

/// The longest schemathesis may run; it is given a smaller budget itself.
const FUZZ_LIMIT: Duration = Duration::from_secs(300);

fn http_addr(t: &TestPipeline) -> std::net::SocketAddr {
    t.pipeline.as_ref().expect("running").gateway.http
}

/// A bearer token for `user`, valid for an hour.
fn token(t: &TestPipeline, user: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    UserTokens::new(&t.config.feed.user_token_secret).mint(user, now, Duration::from_secs(3600))
}

fn raw_send(user_ids: &[&str], body: &str) -> pb::SendRequest {
    pb::SendRequest {
        event_id: uuid::Uuid::new_v4().to_string(),
        user_ids: user_ids.iter().map(|u| (*u).to_owned()).collect(),
        channels: vec![pb::Channel::Email as i32],
        content: Some(pb::send_request::Content::Raw(pb::RawContent {
            title: "Hello".into(),
            body: body.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Refused calls name the field in the message and in BadRequest details,
/// over gRPC and HTTP.
async fn field_errors_carry_bad_request_details(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let notifications = || t.client.notifications();
    let request = |m| t.client.request(m).expect("request");

    let too_long = raw_send(&["u-1"], &"x".repeat(1 << 20));
    let err = notifications()
        .send(request(too_long))
        .await
        .expect_err("a 1 MiB body is refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("raw.body: "), "{}", err.message());
    let found = field_violations(&err);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "raw.body");
    assert!(
        err.message().ends_with(&found[0].1),
        "the description is the message's problem: {found:?} vs {}",
        err.message()
    );

    let bad_user = raw_send(&["u-1", "has space"], "hi");
    let err = notifications()
        .send(request(bad_user))
        .await
        .expect_err("a user id with a space is refused");
    assert_eq!(field_violations(&err)[0].0, "user_ids[1]", "{err:?}");

    let err = notifications()
        .send_batch(
            t.client
                .request(pb::SendBatchRequest { items: vec![] })
                .expect("request"),
        )
        .await
        .expect_err("an empty batch is refused");
    assert_eq!(field_violations(&err)[0].0, "items", "{err:?}");

    // HTTP: the same violations in the JSON error body.
    let auth = format!("Bearer {}", token(&t, "conventions-user"));
    let response = http::request(
        http_addr(&t),
        "POST",
        "/v1/me/feed",
        &[("Authorization", &auth)],
        Some((
            "application/json",
            r#"{"body":"hi","media_urls":["https://cdn.example.com/a.jpg","ftp://nope"]}"#,
        )),
    )
    .await;
    assert_eq!(response.status, 400, "{}", response.body);
    let body = response.json();
    assert_eq!(body["code"], "InvalidArgument", "{body}");
    assert_eq!(
        body["field_violations"][0]["field"], "media_urls[1]",
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("media_urls[1]: ")),
        "{body}"
    );

    // Over axum's 2 MB body limit: 413, still naming `body`.
    let huge = format!(r#"{{"body":"{}"}}"#, "x".repeat(3 << 20));
    let response = http::request(
        http_addr(&t),
        "POST",
        "/v1/me/feed",
        &[("Authorization", &auth)],
        Some(("application/json", &huge)),
    )
    .await;
    assert_eq!(response.status, 413, "{}", response.body);
    assert_eq!(response.json()["field_violations"][0]["field"], "body");
    t.stop().await;
}

/// schemathesis, as scripts/test-deps.sh installs it.
fn schemathesis() -> PathBuf {
    let tools = std::env::var_os("TIDINGS_TOOLS_DIR").map_or_else(
        || {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache")
                })
                .join("tidings-tools")
        },
        PathBuf::from,
    );
    let path = tools.join("schemathesis-venv/bin/schemathesis");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/test-deps.sh (it installs schemathesis from PyPI)",
        path.display()
    );
    path
}

/// The document is served, is OpenAPI 3.1, and schemathesis fuzzing every
/// operation from it (with a valid bearer token) finds no 5xx and nothing
/// the document does not allow.
async fn schemathesis_finds_no_server_errors_or_schema_violations(backend: Backend) {
    let schemathesis = schemathesis();
    let t = TestPipeline::start(backend).await;
    let addr = http_addr(&t);
    // /readyz is 503 until the first probe: wait, so it is not a 5xx.
    eventually("the gateway is ready", Duration::from_secs(60), || async {
        (http::request(addr, "GET", "/readyz", &[], None)
            .await
            .status
            == 200)
            .then_some(())
    })
    .await;
    let document = http::request(addr, "GET", "/openapi.json", &[], None).await;
    assert_eq!(document.status, 200);
    assert!(
        document
            .head
            .to_ascii_lowercase()
            .contains("content-type: application/json")
    );
    let document = document.json();
    assert_eq!(document["openapi"], "3.1.0");
    assert!(
        document["paths"]["/v1/me/feed"]["post"].is_object(),
        "{document}"
    );

    let report = tempfile::tempdir().expect("temp dir");
    let output = report.path().join("output.txt");
    let log = std::fs::File::create(&output).expect("output file");
    let mut child = Command::new(&schemathesis)
        .arg("run")
        .arg(format!("http://{addr}/openapi.json"))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "40",
            "--max-time",
            "60",
            "--request-timeout",
            "20",
            // One worker: with more, Hypothesis' lambda descriptions
            // (ast.parse from several threads) fail on CPython 3.11 with
            // "AST constructor recursion depth mismatch", an error of the
            // tool, not of the API.
            "--workers",
            "1",
            "--max-redirects",
            "0",
            // The inbox's SSE stream answers 200 and stays open: a
            // request/response fuzzer can only time out on it. Its refusals
            // (401, 400, 503) are checked in tests/inbox.rs.
            "--exclude-path",
            "/v1/me/notifications/stream",
            "--suppress-health-check",
            "too_slow",
            "--output-truncate",
            "false",
            "--header",
        ])
        .arg(format!("Authorization: Bearer {}", token(&t, "schemathesis")))
        .current_dir(report.path())
        .env("NO_COLOR", "1")
        .stdout(log.try_clone().expect("output file"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", schemathesis.display()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("schemathesis runs") {
            break status;
        }
        if started.elapsed() > FUZZ_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "schemathesis ran longer than {FUZZ_LIMIT:?}:\n{}",
                std::fs::read_to_string(&output).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let printed = std::fs::read_to_string(&output).expect("schemathesis output");
    println!("{printed}");
    assert!(
        status.success(),
        "schemathesis found failures ({status}); its report:\n{printed}"
    );
    t.stop().await;
}

on_every_backend!(
    field_errors_carry_bad_request_details,
    schemathesis_finds_no_server_errors_or_schema_violations,
);
