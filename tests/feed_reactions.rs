//! Likes and replies end to end, as clients use them: `PUT`/`DELETE
//! /v1/me/likes/{post_id}`, `POST`/`GET /v1/posts/{post_id}/replies` and
//! their gRPC twins, through `tidings.feed.reactions` to the feed-tally
//! stage, back out as counts in feed items, and as notifications to the
//! post's author. On the embedded default and on real Kafka and Cassandra.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::{
    Backend, TestPipeline, eventually,
    feed_users::{as_user, http_addr, name_user, token, user},
    http,
};
use tidings::client::FeedClient;
use tidings_processors::feed::tally::{LIKE_CATEGORY, REPLY_CATEGORY};
use tidings_schemas::{
    AvroCodec,
    proto::v1 as pb,
    records::{Delivery, NotificationRequest, PostReaction},
};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(60);
const JSON: &str = "application/json";

/// `method path` over HTTP as `user` (no token when `user` is empty).
async fn http_as(
    t: &TestPipeline,
    user: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> http::HttpResponse {
    let auth = format!("Bearer {}", token(t, user));
    let headers: &[(&str, &str)] = if user.is_empty() {
        &[]
    } else {
        &[("Authorization", &auth)]
    };
    let body = body.map(ToString::to_string);
    http::request(
        http_addr(t),
        method,
        path,
        headers,
        body.as_deref().map(|b| (JSON, b)),
    )
    .await
}

/// The item of `post_id` on `reader`'s newest feed page.
async fn item(reader: &FeedClient, post_id: &str) -> pb::FeedItem {
    reader
        .page("", 100)
        .await
        .expect("feed page")
        .items
        .into_iter()
        .find(|i| i.post_id == post_id)
        .expect("the post is in the feed")
}

/// Waits until the post is in `reader`'s feed (the fan-out wrote it).
async fn in_feed(reader: &FeedClient, post_id: &str) {
    eventually("the post in the feed", WAIT, || async {
        let page = reader.page("", 100).await.ok()?;
        page.items
            .iter()
            .any(|i| i.post_id == post_id)
            .then_some(())
    })
    .await;
}

/// Waits until the tally stage has counted every reaction so far.
async fn counted(t: &TestPipeline) {
    t.caught_up("feed-tally", &t.topic("feed.reactions")).await;
}

/// (likes, replies, liked by the reader) of the post in `reader`'s feed.
async fn counts(reader: &FeedClient, post_id: &str) -> (u64, u64, bool) {
    let i = item(reader, post_id).await;
    (i.like_count, i.reply_count, i.liked_by_me)
}

async fn likes_count_once_per_user_and_unlikes_take_them_back(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let (ann, bob, cat) = (user("ann"), user("bob"), user("cat"));
    let (bob_feed, cat_feed) = (as_user(&t, &bob).await, as_user(&t, &cat).await);
    bob_feed.follow(&ann, true).await.expect("follow");
    cat_feed.follow(&ann, true).await.expect("follow");
    let post = as_user(&t, &ann)
        .await
        .publish("like me", vec![])
        .await
        .expect("post")
        .post_id;
    in_feed(&bob_feed, &post).await;
    in_feed(&cat_feed, &post).await;
    assert_eq!(counts(&bob_feed, &post).await, (0, 0, false));

    // Bob likes twice over gRPC and once over HTTP: one like, which he
    // sees at once; the count follows the tally stage.
    bob_feed.like(&post, true).await.expect("like");
    bob_feed.like(&post, true).await.expect("like again");
    assert!(item(&bob_feed, &post).await.liked_by_me, "seen at once");
    let r = http_as(&t, &bob, "PUT", &format!("/v1/me/likes/{post}"), None).await;
    assert_eq!(r.status, 204, "{}", r.body);
    counted(&t).await;
    assert_eq!(counts(&bob_feed, &post).await, (1, 0, true));

    // Cat likes over HTTP: two likes; each sees their own.
    let r = http_as(&t, &cat, "PUT", &format!("/v1/me/likes/{post}"), None).await;
    assert_eq!(r.status, 204, "{}", r.body);
    counted(&t).await;
    assert_eq!(counts(&bob_feed, &post).await, (2, 0, true));
    assert_eq!(counts(&cat_feed, &post).await, (2, 0, true));

    // Every reaction so far delivered again, as after a crash before the
    // stage committed: nothing counts twice.
    let topic = t.topic("feed.reactions");
    let reactions = t.read_all::<PostReaction>(&topic).await;
    assert_eq!(reactions.len(), 4, "{reactions:?}");
    let codec = AvroCodec::local();
    for r in &reactions {
        let payload = codec.encode(r).expect("encode");
        t.produce_raw(&topic, r.post_id.as_bytes(), &payload).await;
    }
    counted(&t).await;
    assert_eq!(counts(&bob_feed, &post).await, (2, 0, true));

    // Bob takes his like back over HTTP (at once for him), then again over
    // gRPC: one like left.
    let r = http_as(&t, &bob, "DELETE", &format!("/v1/me/likes/{post}"), None).await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(!item(&bob_feed, &post).await.liked_by_me, "seen at once");
    bob_feed.like(&post, false).await.expect("unlike again");
    counted(&t).await;
    assert_eq!(counts(&bob_feed, &post).await, (1, 0, false));
    assert_eq!(counts(&cat_feed, &post).await, (1, 0, true));

    // Cat too: back to none, the same count as before any like.
    cat_feed.like(&post, false).await.expect("unlike");
    counted(&t).await;
    assert_eq!(counts(&cat_feed, &post).await, (0, 0, false));
    t.stop().await;
}

async fn replies_page_oldest_first_and_count_into_the_feed(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let (ann, bob) = (user("ann"), user("bob"));
    name_user(&t, &bob, "Bob").await;
    let bob_feed = as_user(&t, &bob).await;
    bob_feed.follow(&ann, true).await.expect("follow");
    let ann_feed = as_user(&t, &ann).await;
    ann_feed.follow(&bob, true).await.expect("follow back");
    let post = ann_feed
        .publish("what do you think?", vec![])
        .await
        .expect("post")
        .post_id;

    // Five replies, the first three over gRPC, the others over HTTP.
    let mut sent = Vec::new();
    for i in 0..5 {
        let body = format!("reply {i}");
        let id = if i < 3 {
            bob_feed.reply(&post, &body).await.expect("reply").reply_id
        } else {
            let path = format!("/v1/posts/{post}/replies");
            let r = http_as(
                &t,
                &bob,
                "POST",
                &path,
                Some(&serde_json::json!({"body": body})),
            )
            .await;
            assert_eq!(r.status, 201, "{}", r.body);
            let json = r.json();
            assert!(json["created_at_ms"].as_i64().is_some_and(|at| at > 0));
            json["reply_id"].as_str().expect("reply_id").to_owned()
        };
        sent.push((id, body));
    }

    // Pages of 2 over gRPC: every reply once, oldest first, with its author.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = bob_feed.replies(&post, &cursor, 2).await.expect("page");
        assert!(page.items.len() <= 2);
        for r in &page.items {
            assert_eq!(r.post_id, post);
            let author = r.author.as_ref().expect("author");
            assert_eq!(
                (author.user_id.as_str(), author.display_name.as_str()),
                (bob.as_str(), "Bob")
            );
        }
        seen.extend(page.items.into_iter().map(|r| (r.reply_id, r.body)));
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(seen, sent);

    // The same over HTTP, 3 then 2; the author of the post may read them.
    let path = format!("/v1/posts/{post}/replies");
    let r = http_as(&t, &ann, "GET", &format!("{path}?limit=3"), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let json = r.json();
    let bodies = |json: &serde_json::Value| -> Vec<String> {
        json["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["body"].as_str().expect("body").to_owned())
            .collect()
    };
    assert_eq!(bodies(&json), ["reply 0", "reply 1", "reply 2"]);
    assert_eq!(json["items"][0]["author"]["display_name"], "Bob");
    let next = json["next_cursor"].as_str().expect("a cursor").to_owned();
    let r = http_as(
        &t,
        &ann,
        "GET",
        &format!("{path}?limit=3&cursor={next}"),
        None,
    )
    .await;
    let json = r.json();
    assert_eq!(bodies(&json), ["reply 3", "reply 4"]);
    assert!(json.get("next_cursor").is_none(), "{json}");

    // Counted into the feed item, over gRPC and HTTP.
    counted(&t).await;
    in_feed(&bob_feed, &post).await;
    assert_eq!(counts(&bob_feed, &post).await, (0, 5, false));
    let r = http_as(&t, &bob, "GET", "/v1/me/feed", None).await;
    let json = r.json();
    let item = json["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["post_id"] == post.as_str())
        .expect("the post")
        .clone();
    assert_eq!(
        (
            &item["reply_count"],
            &item["like_count"],
            &item["liked_by_me"]
        ),
        (
            &serde_json::json!(5),
            &serde_json::json!(0),
            &serde_json::json!(false)
        )
    );
    // Ann's counts on her post: Bob follows her, she follows Bob (followed
    // at the start of the test, within the counts' 30 s cache).
    assert_eq!(item["author"]["follower_count"], 1, "{item}");
    assert_eq!(item["author"]["following_count"], 1, "{item}");
    let author = bob_feed.page("", 10).await.expect("page").items[0]
        .author
        .clone()
        .expect("author");
    assert_eq!((author.follower_count, author.following_count), (1, 1));
    t.stop().await;
}

/// Waits until the clock is early in a window of `window_ms`, so what a
/// test does next falls in one window.
async fn start_of_a_window(window_ms: u128) {
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis()
    };
    let wait = window_ms - now() % window_ms;
    if now() % window_ms > window_ms / 5 {
        tokio::time::sleep(Duration::from_millis(wait as u64 + 10)).await;
    }
}

async fn the_author_is_told_of_likes_in_a_digest_and_of_each_reply(backend: Backend) {
    const DIGEST_SECS: u64 = 3;
    let t = TestPipeline::start_with(backend, |c| c.feed.like_digest_secs = DIGEST_SECS).await;
    let (ann, bob, cat) = (user("ann"), user("bob"), user("cat"));
    name_user(&t, &bob, "Bob").await;
    name_user(&t, &cat, "Cat").await;
    t.client
        .register_device(&ann, pb::Platform::Ios, &"ab".repeat(32))
        .await
        .expect("ios device");
    let ann_feed = as_user(&t, &ann).await;
    let post = ann_feed
        .publish("tell me", vec![])
        .await
        .expect("post")
        .post_id;

    // Two likes in one digest window, and a reply; the author's own like
    // and reply tell nobody.
    start_of_a_window(u128::from(DIGEST_SECS) * 1_000).await;
    as_user(&t, &bob)
        .await
        .like(&post, true)
        .await
        .expect("like");
    as_user(&t, &cat)
        .await
        .like(&post, true)
        .await
        .expect("like");
    ann_feed.like(&post, true).await.expect("own like");
    as_user(&t, &bob)
        .await
        .reply(&post, "nice post")
        .await
        .expect("reply");
    ann_feed.reply(&post, "thanks").await.expect("own reply");

    let is =
        |d: &Delivery, category: &str| d.user_id == ann && d.category.as_deref() == Some(category);
    let (_, pushes) = t
        .read_until::<Delivery>(&t.topic("deliver.ios"), WAIT, |pushes| {
            pushes.iter().any(|d| is(d, LIKE_CATEGORY))
                && pushes.iter().any(|d| is(d, REPLY_CATEGORY))
        })
        .await;
    let reply = pushes
        .iter()
        .find(|d| is(d, REPLY_CATEGORY))
        .expect("reply push");
    assert_eq!(reply.title.as_deref(), Some("Bob replied to your post"));
    assert_eq!(reply.body.as_deref(), Some("nice post"));
    assert_eq!(reply.data.get("post_id"), Some(&post));
    // The digest was sent when its window closed, with the count as of
    // the newest like Ann is told of (her own came after, and tells no
    // one).
    let digest = pushes
        .iter()
        .find(|d| is(d, LIKE_CATEGORY))
        .expect("like push");
    assert_eq!(
        digest.title.as_deref(),
        Some("Cat and 1 other liked your post")
    );

    // Once every stage has caught up: one digest, one reply push.
    counted(&t).await;
    t.caught_up("enricher", &t.topic("notify.requests")).await;
    let requests = t
        .read_all::<NotificationRequest>(&t.topic("notify.requests"))
        .await;
    assert!(
        requests.iter().all(|r| r.user_id == ann),
        "only the post's author is told: {requests:?}"
    );
    let pushes = t.read_all::<Delivery>(&t.topic("deliver.ios")).await;
    let told = |category: &str| pushes.iter().filter(|d| is(d, category)).count();
    assert_eq!(
        (told(LIKE_CATEGORY), told(REPLY_CATEGORY)),
        (1, 1),
        "{pushes:?}"
    );
    t.stop().await;
}

async fn bad_reaction_requests_are_refused_naming_the_field(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let ann = user("ann");
    let ann_feed = as_user(&t, &ann).await;
    let post = ann_feed.publish("hi", vec![]).await.expect("post").post_id;
    let unknown = format!("{post}-gone");
    let field_of = |r: &http::HttpResponse| r.json()["field_violations"][0]["field"].clone();

    // No token.
    for (method, path) in [
        ("PUT", format!("/v1/me/likes/{post}")),
        ("DELETE", format!("/v1/me/likes/{post}")),
        ("GET", format!("/v1/posts/{post}/replies")),
    ] {
        let r = http_as(&t, "", method, &path, None).await;
        assert_eq!(r.status, 401, "{method} {path}: {}", r.body);
        assert!(
            r.head.to_lowercase().contains("www-authenticate: bearer"),
            "{}",
            r.head
        );
    }
    let r = http_as(
        &t,
        "",
        "POST",
        &format!("/v1/posts/{post}/replies"),
        Some(&serde_json::json!({"body": "x"})),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);

    // Unknown posts: 404 naming post_id.
    for (method, path, body) in [
        ("PUT", format!("/v1/me/likes/{unknown}"), None),
        ("DELETE", format!("/v1/me/likes/{unknown}"), None),
        ("GET", format!("/v1/posts/{unknown}/replies"), None),
        (
            "POST",
            format!("/v1/posts/{unknown}/replies"),
            Some(serde_json::json!({"body": "x"})),
        ),
    ] {
        let r = http_as(&t, &ann, method, &path, body.as_ref()).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.body);
        assert_eq!(r.json()["code"], "NotFound");
        assert_eq!(field_of(&r), "post_id", "{}", r.body);
    }

    // Bad input: 400 naming the field.
    let long_id = "p".repeat(129);
    let replies = format!("/v1/posts/{post}/replies");
    for (method, path, body, field) in [
        ("PUT", format!("/v1/me/likes/{long_id}"), None, "post_id"),
        (
            "POST",
            replies.clone(),
            Some(serde_json::json!({"body": "  "})),
            "body",
        ),
        (
            "POST",
            replies.clone(),
            Some(serde_json::json!({"body": "x".repeat(5_001)})),
            "body",
        ),
        (
            "POST",
            replies.clone(),
            Some(serde_json::json!({"body": "x", "colour": "red"})),
            "body",
        ),
        ("GET", format!("{replies}?cursor=bm9wZQ"), None, "cursor"),
        ("GET", format!("{replies}?limit=0"), None, "limit"),
        ("GET", format!("{replies}?limit=1000"), None, "limit"),
    ] {
        let r = http_as(&t, &ann, method, &path, body.as_ref()).await;
        assert_eq!(r.status, 400, "{method} {path} {body:?}: {}", r.body);
        assert_eq!(r.json()["code"], "InvalidArgument");
        assert_eq!(field_of(&r), field, "{method} {path} {body:?}: {}", r.body);
    }

    // Over axum's 2 MB body limit: 413, naming body like any bad body.
    let huge = serde_json::json!({"body": "x".repeat(2_100_000)});
    let r = http_as(&t, &ann, "POST", &replies, Some(&huge)).await;
    assert_eq!(r.status, 413, "{}", &r.body[..r.body.len().min(200)]);
    assert_eq!(field_of(&r), "body", "{}", r.body);

    // The same over gRPC.
    let err = ann_feed.like("", true).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("post_id:"), "{}", err.message());
    let err = ann_feed.like(&unknown, false).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().starts_with("post_id:"), "{}", err.message());
    let err = ann_feed.reply(&post, "").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("body:"), "{}", err.message());
    let err = ann_feed.replies(&unknown, "", 10).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = ann_feed.replies(&post, "nope", 10).await.unwrap_err();
    assert!(err.message().starts_with("cursor:"), "{}", err.message());
    let stranger = FeedClient::connect(&t.grpc_endpoint(), "not-a-token")
        .await
        .expect("gateway answers");
    let err = stranger.like(&post, true).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // Nothing refused was counted or announced.
    counted(&t).await;
    assert!(
        t.read_all::<PostReaction>(&t.topic("feed.reactions"))
            .await
            .is_empty()
    );
    t.stop().await;
}

on_every_backend!(
    likes_count_once_per_user_and_unlikes_take_them_back,
    replies_page_oldest_first_and_count_into_the_feed,
    the_author_is_told_of_likes_in_a_digest_and_of_each_reply,
    bad_reaction_requests_are_refused_naming_the_field,
);
