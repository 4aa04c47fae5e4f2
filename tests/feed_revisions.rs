//! Edits and deletes end to end, as clients use them: `PATCH`/`DELETE
//! /v1/me/posts/{post_id}` and gRPC `EditPost`/`DeletePost`, with two
//! gateways (each with its own caches and its own reader of
//! `tidings.feed.revisions`, as two processes in production), through the
//! feed-pruner stage to the feed rows. On the embedded default and on real
//! Kafka and Cassandra.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use support::{
    Backend, TestPipeline, eventually,
    feed_users::{as_user, http_addr, token, user},
    http,
};
use tidings::client::FeedClient;
use tidings_gateway::GatewayAddrs;
use tidings_schemas::{
    proto::v1::{self as pb, feed_service_client::FeedServiceClient},
    records::{PostRevised, RevisionKind},
};
use tokio_util::sync::CancellationToken;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(60);
/// What the issue asks: an edit or a delete is visible everywhere within.
const VISIBLE_WITHIN: Duration = Duration::from_secs(2);
const JSON: &str = "application/json";

/// Starts a second gateway on the same Kafka and store (another process in
/// production): its own listeners, caches and revisions reader.
async fn second_gateway(t: &TestPipeline) -> (GatewayAddrs, CancellationToken) {
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let addrs = t
        .pipeline
        .as_ref()
        .expect("running")
        .runtime
        .spawn_gateway(&mut tasks, &shutdown)
        .await
        .expect("a second gateway");
    tokio::spawn(async move { while tasks.join_next().await.is_some() {} });
    (addrs, shutdown)
}

/// `method path` over HTTP on the gateway at `addr`, as `user`.
async fn http_as(
    t: &TestPipeline,
    addr: SocketAddr,
    user: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> http::HttpResponse {
    let auth = format!("Bearer {}", token(t, user));
    let body = body.map(ToString::to_string);
    http::request(
        addr,
        method,
        path,
        &[("Authorization", &auth)],
        body.as_deref().map(|b| (JSON, b)),
    )
    .await
}

/// The feed service of the gateway at `addr`, raw, for the calls the CLI
/// client has no method for.
async fn feed_service(addr: SocketAddr) -> FeedServiceClient<tonic::transport::Channel> {
    FeedServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("gateway answers")
}

fn as_bearer<T>(t: &TestPipeline, user: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token(t, user)).parse().expect("ascii"),
    );
    request
}

/// The body of `post_id` on `reader`'s newest page, `None` if absent.
async fn shown(reader: &FeedClient, post_id: &str) -> Option<String> {
    reader
        .page("", 100)
        .await
        .expect("feed page")
        .items
        .into_iter()
        .find(|i| i.post_id == post_id)
        .map(|i| i.body)
}

/// Waits until every reader shows `post_id` as `body` (`None`: not at all)
/// and answers how long that took from `since`.
async fn everywhere(
    readers: &[&FeedClient],
    post_id: &str,
    body: Option<&str>,
    since: Instant,
) -> Duration {
    eventually(&format!("{post_id} shown as {body:?}"), WAIT, || async {
        for reader in readers {
            if shown(reader, post_id).await.as_deref() != body {
                return None;
            }
        }
        Some(since.elapsed())
    })
    .await
}

/// The post ids in `owner`'s feed rows, as the store holds them.
async fn rows(t: &TestPipeline, owner: &str) -> Vec<String> {
    t.store()
        .feed
        .read(owner, None, 100)
        .await
        .expect("feed rows")
        .into_iter()
        .map(|e| e.post_id)
        .collect()
}

/// An edit over HTTP on one gateway and one over gRPC on the other show on
/// both within 2 s, though both had the post cached; a delete leaves both
/// within 2 s, and once the feed-pruner caught up no feed holds its row.
async fn edits_and_deletes_reach_every_gateway_and_feed(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let a = http_addr(&t);
    let (b, stop_b) = second_gateway(&t).await;
    let (ann, bob, cat) = (user("ann"), user("bob"), user("cat"));
    let ann_on_a = as_user(&t, &ann).await;
    let bob_on_a = as_user(&t, &bob).await;
    let b_endpoint = format!("http://{}", b.grpc);
    let bob_on_b = FeedClient::connect(&b_endpoint, &token(&t, &bob))
        .await
        .expect("gateway B answers");
    let cat_on_b = FeedClient::connect(&b_endpoint, &token(&t, &cat))
        .await
        .expect("gateway B answers");
    bob_on_a.follow(&ann, true).await.expect("bob follows ann");
    cat_on_b.follow(&ann, true).await.expect("cat follows ann");

    let kept = ann_on_a.publish("kept", vec![]).await.expect("publish");
    let post = ann_on_a
        .publish("first words", vec![])
        .await
        .expect("publish");
    let id = post.post_id.as_str();
    // The rows are written (feeds would show the posts without them, rebuilt
    // from the author's), so that the pruner has something to remove.
    t.caught_up("feed-planner", &t.topic("feed.posts")).await;
    t.caught_up("feed-writer", &t.topic("feed.fanout")).await;
    for owner in [&ann, &bob, &cat] {
        let held = rows(&t, owner).await;
        assert!(held.contains(&post.post_id), "{owner}'s feed: {held:?}");
    }
    // Read on both gateways: each caches the post.
    let readers = [&bob_on_a, &bob_on_b, &cat_on_b, &ann_on_a];
    everywhere(&readers, id, Some("first words"), Instant::now()).await;
    everywhere(&readers, &kept.post_id, Some("kept"), Instant::now()).await;

    let edited_at = Instant::now();
    let r = http_as(
        &t,
        a,
        &ann,
        "PATCH",
        &format!("/v1/me/posts/{id}"),
        Some(&serde_json::json!({"body": "better words"})),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let took = everywhere(&readers, id, Some("better words"), edited_at).await;
    println!("{backend:?}: HTTP edit on A shown on A and B after {took:?}");
    assert!(took < VISIBLE_WITHIN, "{took:?}");

    let edited_at = Instant::now();
    feed_service(b.grpc)
        .await
        .edit_post(as_bearer(
            &t,
            &ann,
            pb::EditPostRequest {
                post_id: id.into(),
                body: "best words".into(),
            },
        ))
        .await
        .expect("gRPC edit on B");
    let took = everywhere(&readers, id, Some("best words"), edited_at).await;
    println!("{backend:?}: gRPC edit on B shown on A and B after {took:?}");
    assert!(took < VISIBLE_WITHIN, "{took:?}");

    let deleted_at = Instant::now();
    let r = http_as(&t, a, &ann, "DELETE", &format!("/v1/me/posts/{id}"), None).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let took = everywhere(&readers, id, None, deleted_at).await;
    println!("{backend:?}: HTTP delete on A gone from A and B after {took:?}");
    assert!(took < VISIBLE_WITHIN, "{took:?}");
    for reader in readers {
        assert_eq!(shown(reader, &kept.post_id).await.as_deref(), Some("kept"));
    }

    // The rows are removed by the pruner, not only hidden.
    t.caught_up("feed-pruner", &t.topic("feed.revisions")).await;
    for owner in [&ann, &bob, &cat] {
        let held = rows(&t, owner).await;
        assert!(!held.contains(&post.post_id), "{owner}'s feed: {held:?}");
        assert!(held.contains(&kept.post_id), "{owner}'s feed: {held:?}");
    }
    let revisions: Vec<PostRevised> = t.read_all(&t.topic("feed.revisions")).await;
    let kinds: Vec<RevisionKind> = revisions.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            RevisionKind::Edited,
            RevisionKind::Edited,
            RevisionKind::Deleted
        ]
    );
    assert!(revisions.iter().all(|r| r.post_id == post.post_id
        && r.author_id == ann
        && r.post_created_at == post.created_at_ms));

    // Deleted is deleted, on either API.
    let r = http_as(&t, a, &ann, "DELETE", &format!("/v1/me/posts/{id}"), None).await;
    assert_eq!(r.status, 404, "{}", r.body);
    let again = feed_service(b.grpc)
        .await
        .delete_post(as_bearer(
            &t,
            &ann,
            pb::DeletePostRequest { post_id: id.into() },
        ))
        .await
        .expect_err("deleted already");
    assert_eq!(again.code(), Code::NotFound, "{again:?}");
    stop_b.cancel();
    t.stop().await;
}

/// A pulled author's post published while they were pushed has rows (the
/// pruner finds the author's own and walks the followers); one published
/// while pulled has none (and none are made). Both leave every feed.
async fn a_pulled_authors_earlier_pushed_post_is_pruned_too(backend: Backend) {
    let t = TestPipeline::start_with(backend, |c| c.feed.pull_threshold = 1).await;
    let (ann, bob, cat) = (user("ann"), user("bob"), user("cat"));
    let ann_feed = as_user(&t, &ann).await;
    let bob_feed = as_user(&t, &bob).await;
    let cat_feed = as_user(&t, &cat).await;
    let fanned_out = || async {
        t.caught_up("feed-follows", &t.topic("feed.follows")).await;
        t.caught_up("feed-planner", &t.topic("feed.posts")).await;
        t.caught_up("feed-writer", &t.topic("feed.fanout")).await;
    };

    // One follower, at the threshold: pushed.
    bob_feed.follow(&ann, true).await.expect("bob follows ann");
    let pushed = ann_feed.publish("pushed", vec![]).await.expect("publish");
    fanned_out().await;
    for owner in [&ann, &bob] {
        let held = rows(&t, owner).await;
        assert!(held.contains(&pushed.post_id), "{owner}'s feed: {held:?}");
    }
    // Two: pulled from now on.
    cat_feed.follow(&ann, true).await.expect("cat follows ann");
    let pulled = ann_feed.publish("pulled", vec![]).await.expect("publish");
    fanned_out().await;
    assert!(
        t.store()
            .feed
            .pulled_authors()
            .await
            .expect("pulled authors")
            .contains(&ann),
        "ann is pulled"
    );
    for owner in [&ann, &bob, &cat] {
        let held = rows(&t, owner).await;
        assert!(!held.contains(&pulled.post_id), "{owner}'s feed: {held:?}");
    }
    let readers = [&bob_feed, &cat_feed, &ann_feed];
    everywhere(&readers, &pulled.post_id, Some("pulled"), Instant::now()).await;

    let a = http_addr(&t);
    for post in [&pushed, &pulled] {
        let r = http_as(
            &t,
            a,
            &ann,
            "DELETE",
            &format!("/v1/me/posts/{}", post.post_id),
            None,
        )
        .await;
        assert_eq!(r.status, 204, "{}", r.body);
    }
    everywhere(&readers, &pushed.post_id, None, Instant::now()).await;
    everywhere(&readers, &pulled.post_id, None, Instant::now()).await;
    t.caught_up("feed-pruner", &t.topic("feed.revisions")).await;
    for owner in [&ann, &bob, &cat] {
        let held = rows(&t, owner).await;
        assert!(!held.contains(&pushed.post_id), "{owner}'s feed: {held:?}");
        assert!(!held.contains(&pulled.post_id), "{owner}'s feed: {held:?}");
    }
    t.stop().await;
}

/// Another user's post is 403 / PERMISSION_DENIED, an unknown one 404 /
/// NOT_FOUND, a bad body 400 / INVALID_ARGUMENT naming `body`; none of them
/// changes the post or announces anything.
async fn only_the_author_revises_and_bodies_are_checked(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let a = http_addr(&t);
    let grpc: SocketAddr = t.pipeline.as_ref().expect("running").gateway.grpc;
    let (ann, bob) = (user("ann"), user("bob"));
    let ann_feed = as_user(&t, &ann).await;
    let post = ann_feed.publish("mine", vec![]).await.expect("publish");
    let path = format!("/v1/me/posts/{}", post.post_id);
    let field_of = |r: &http::HttpResponse| r.json()["field_violations"][0]["field"].clone();

    let edit = serde_json::json!({"body": "hijacked"});
    for (method, body) in [("PATCH", Some(&edit)), ("DELETE", None)] {
        let r = http_as(&t, a, &bob, method, &path, body).await;
        assert_eq!(r.status, 403, "{method}: {}", r.body);
        assert_eq!(field_of(&r), "post_id", "{}", r.body);
        let r = http_as(&t, a, &ann, method, "/v1/me/posts/no-such-post", body).await;
        assert_eq!(r.status, 404, "{method}: {}", r.body);
        assert_eq!(field_of(&r), "post_id", "{}", r.body);
    }
    let mut service = feed_service(grpc).await;
    let denied = service
        .edit_post(as_bearer(
            &t,
            &bob,
            pb::EditPostRequest {
                post_id: post.post_id.clone(),
                body: "hijacked".into(),
            },
        ))
        .await
        .expect_err("not bob's");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let denied = service
        .delete_post(as_bearer(
            &t,
            &bob,
            pb::DeletePostRequest {
                post_id: post.post_id.clone(),
            },
        ))
        .await
        .expect_err("not bob's");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let unknown = service
        .delete_post(as_bearer(
            &t,
            &ann,
            pb::DeletePostRequest {
                post_id: "no-such-post".into(),
            },
        ))
        .await
        .expect_err("no such post");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    let too_long = "x".repeat(t.config.feed.max_body_chars + 1);
    for body in [
        serde_json::json!({"body": "  "}),
        serde_json::json!({"body": too_long}),
        serde_json::json!({"text": "no body field"}),
    ] {
        let r = http_as(&t, a, &ann, "PATCH", &path, Some(&body)).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(field_of(&r), "body", "{}", r.body);
    }
    let blank = service
        .edit_post(as_bearer(
            &t,
            &ann,
            pb::EditPostRequest {
                post_id: post.post_id.clone(),
                body: String::new(),
            },
        ))
        .await
        .expect_err("blank body");
    assert_eq!(blank.code(), Code::InvalidArgument, "{blank:?}");
    assert!(blank.message().starts_with("body:"), "{}", blank.message());

    everywhere(&[&ann_feed], &post.post_id, Some("mine"), Instant::now()).await;
    let revisions: Vec<PostRevised> = t.read_all(&t.topic("feed.revisions")).await;
    assert!(revisions.is_empty(), "{revisions:?}");
    t.stop().await;
}

on_every_backend!(
    edits_and_deletes_reach_every_gateway_and_feed,
    a_pulled_authors_earlier_pushed_post_is_pruned_too,
    only_the_author_revises_and_bodies_are_checked,
);
