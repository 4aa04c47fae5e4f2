//! `tidings inbox --as <user> ...` against a running pipeline (the embedded
//! default: the command is a gRPC client, the backend is the pipeline's
//! business): in-app notifications listed, counted, read, archived, read all
//! and seen, as text and as the HTTP API's JSON; an unknown id is one error
//! line naming NotFound.

mod support;

use std::{process::Command, time::Duration};

use serde_json::Value;
use support::{Backend, TestPipeline, eventually};
use tidings_schemas::proto::v1 as pb;
use uuid::Uuid;

/// Runs `tidings inbox --as <user> <args>` against the test's gateway;
/// returns the exit code, stdout and stderr.
async fn inbox(t: &TestPipeline, user: &str, args: &[&str]) -> (Option<i32>, String, String) {
    // Tokens are minted with the test configuration's secret (the default):
    // no tidings.toml of the working directory in between.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
    command
        .args(["inbox", "--as", user, "--gateway", &t.grpc_endpoint()])
        .args(args)
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env_remove("TIDINGS_CONFIG");
    let out = tokio::task::spawn_blocking(move || {
        let out = command.output().expect("tidings runs");
        drop(dir);
        out
    })
    .await
    .expect("joined");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn json(t: &TestPipeline, user: &str, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["--output", "json"]);
    let (code, stdout, stderr) = inbox(t, user, &args).await;
    assert_eq!(code, Some(0), "{args:?}: {stderr}");
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {stdout}"))
}

async fn send(t: &TestPipeline, user: &str, title: &str) -> String {
    let response = t
        .client
        .send(pb::SendRequest {
            user_ids: vec![user.into()],
            channels: vec![pb::Channel::InApp as i32],
            category: "billing".into(),
            content: Some(pb::send_request::Content::Raw(pb::RawContent {
                title: title.into(),
                body: "See your account.".into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .expect("send");
    response.notification_ids[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_command_reads_and_changes_a_users_inbox() {
    let t = TestPipeline::start(Backend::Embedded).await;
    let user = format!("u-{}", Uuid::new_v4());
    t.client
        .upsert_user(pb::UpsertUserRequest {
            user_id: user.clone(),
            ..Default::default()
        })
        .await
        .expect("upsert user");
    let first = send(&t, &user, "Invoice paid").await;
    let second = send(&t, &user, "Invoice due").await;

    let counts = eventually(
        "both items in the inbox",
        Duration::from_secs(30),
        || async {
            let counts = json(&t, &user, &["count"]).await;
            (counts["total"] == 2).then_some(counts)
        },
    )
    .await;
    assert_eq!(
        counts,
        serde_json::json!({"unread": 2, "unseen": 2, "total": 2})
    );
    let page = json(&t, &user, &["list"]).await;
    let ids: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        [second.as_str(), first.as_str()],
        "newest first: {page}"
    );
    assert_eq!(page["items"][0]["title"], "Invoice due");
    assert_eq!(page["items"][0]["category"], "billing");
    assert_eq!(page["items"][0]["read"], false);
    assert!(page.get("next_cursor").is_none(), "one page: {page}");
    let (_, text, _) = inbox(&t, &user, &["list"]).await;
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.starts_with(&format!("* {second}"))
                && l.contains("[billing]")
                && l.contains("Invoice due: See your account.")),
        "{text}"
    );

    let read = json(&t, &user, &["read", &first]).await;
    assert_eq!(read["item"]["read"], true, "{read}");
    assert_eq!(read["counts"]["unread"], 1, "{read}");
    let (code, text, _) = inbox(&t, &user, &["read", &first]).await;
    assert_eq!(
        (code, text.trim()),
        (Some(0), format!("read {first} (1 unread)").as_str()),
        "idempotent"
    );
    let archived = json(&t, &user, &["archive", &second]).await;
    assert_eq!(archived["item"]["archived"], true, "{archived}");
    assert_eq!(archived["counts"]["total"], 1, "{archived}");
    let page = json(&t, &user, &["list", "--filter", "archived"]).await;
    assert_eq!(page["items"][0]["id"], second.as_str(), "{page}");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");
    json(&t, &user, &["unarchive", &second]).await;
    json(&t, &user, &["unread", &first]).await;
    let all = json(&t, &user, &["read-all"]).await;
    assert_eq!(all["changed"], 2, "{all}");
    assert_eq!(all["counts"]["unread"], 0, "{all}");
    let seen = json(&t, &user, &["seen"]).await;
    assert_eq!(seen["counts"]["unseen"], 0, "{seen}");
    let (code, text, _) = inbox(&t, &user, &["count"]).await;
    assert_eq!(
        (code, text.trim()),
        (Some(0), "0 unread, 0 unseen, 2 in the inbox")
    );

    let (code, _, stderr) = inbox(&t, &user, &["read", "no-such-item"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr
            .trim()
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("error: ") && l.contains("NotFound")),
        "{stderr}"
    );
    // Another user's inbox is another inbox.
    let other = json(&t, "someone-else", &["count"]).await;
    assert_eq!(other["total"], 0, "{other}");
    t.stop().await;
}
