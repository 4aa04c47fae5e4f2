//! The news feed end to end, as clients use it: users act with bearer
//! tokens over HTTP (`POST`/`GET /v1/me/feed`) and gRPC (`FeedService`);
//! posts go through Kafka to the fan-out planner and writers, into the feed
//! tables, and back out through the read path. On the embedded default and
//! on real Kafka and Cassandra.

mod support;

use std::{collections::HashSet, time::Duration};

use support::{
    Backend, TestPipeline, eventually,
    feed_users::{as_user, http_addr, name_user, now_secs, token, user},
    http,
};
use tidings::client::FeedClient;
use tidings_gateway::user_token::UserTokens;
use tidings_processors::feed::writer::new_post_notification_id;
use tidings_schemas::{
    proto::v1 as pb,
    records::{Delivery, NotificationRequest, TrackingEvent, TrackingKind},
};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(60);
const JSON: &str = "application/json";

/// `POST /v1/me/feed` as `user`; the response.
async fn http_publish(
    t: &TestPipeline,
    user: &str,
    body: &serde_json::Value,
) -> http::HttpResponse {
    let auth = format!("Bearer {}", token(t, user));
    http::request(
        http_addr(t),
        "POST",
        "/v1/me/feed",
        &[("Authorization", &auth)],
        Some((JSON, &body.to_string())),
    )
    .await
}

/// `GET /v1/me/feed?...` as `user`.
async fn http_read(t: &TestPipeline, user: &str, query: &str) -> http::HttpResponse {
    let auth = format!("Bearer {}", token(t, user));
    http::request(
        http_addr(t),
        "GET",
        &format!("/v1/me/feed{query}"),
        &[("Authorization", &auth)],
        None,
    )
    .await
}

fn bodies(page: &pb::GetFeedResponse) -> Vec<&str> {
    page.items.iter().map(|i| i.body.as_str()).collect()
}

/// Waits until the fan-out planner and the feed writers have handled every
/// post published so far: after this, a post missing from a feed was never
/// written there.
async fn feed_settled(t: &TestPipeline) {
    t.caught_up("feed-planner", &t.topic("feed.posts")).await;
    t.caught_up("feed-writer", &t.topic("feed.fanout")).await;
}

/// Waits until `reader`'s newest page holds `n` items; returns it.
async fn feed_of(reader: &FeedClient, n: usize) -> pb::GetFeedResponse {
    eventually(&format!("{n} posts in the feed"), WAIT, || async {
        let page = reader.page("", 100).await.ok()?;
        (page.items.len() == n).then_some(page)
    })
    .await
}

async fn the_feed_merges_followed_authors_newest_first_and_pages_with_cursors(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let (ann, bob, cat) = (user("ann"), user("bob"), user("cat"));
    name_user(&t, &ann, "Ann").await;
    name_user(&t, &cat, "Cat").await;
    let bob_feed = as_user(&t, &bob).await;
    bob_feed.follow(&ann, true).await.expect("follow ann");
    bob_feed.follow(&cat, true).await.expect("follow cat");

    // Ann posts over HTTP as a mobile app would, Cat over gRPC.
    let cat_feed = as_user(&t, &cat).await;
    let mut expected = Vec::new();
    for i in 0..3 {
        let body = format!("ann {i}");
        let r = http_publish(
            &t,
            &ann,
            &serde_json::json!({"body": body, "media_urls": ["https://cdn.example.com/a.jpg"]}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert!(
            r.json()["post_id"]
                .as_str()
                .is_some_and(|id| !id.is_empty())
        );
        expected.push(body);
        let body = format!("cat {i}");
        cat_feed.publish(&body, vec![]).await.expect("cat posts");
        expected.push(body);
        // Distinct milliseconds, so the expected order is the posting order.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    expected.reverse();

    // Every post in Bob's feed rows first: a short feed is filled from the
    // authors' own posts, so the first page would show a post whose row is
    // still on its way, and a page cut by a cursor (rows only) would not.
    feed_settled(&t).await;
    let page = feed_of(&bob_feed, 6).await;
    assert_eq!(bodies(&page), expected, "newest first, both authors merged");
    let first = &page.items[0];
    let author = first.author.as_ref().expect("hydrated author");
    assert_eq!(
        (author.user_id.as_str(), author.display_name.as_str()),
        (cat.as_str(), "Cat")
    );
    assert_eq!(
        author.avatar_url,
        format!("https://cdn.example.com/{cat}.png")
    );
    assert_eq!(page.items[1].media_urls, ["https://cdn.example.com/a.jpg"]);
    assert!(page.next_cursor.is_empty(), "one page holds everything");

    // Pages of 4 over gRPC: every post once, in order, then no cursor.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = bob_feed.page(&cursor, 4).await.expect("page");
        seen.extend(page.items.iter().map(|i| i.body.clone()));
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(seen, expected);

    // The same over HTTP, 5 then 1.
    let r = http_read(&t, &bob, "?limit=5").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let json = r.json();
    let items = json["items"].as_array().expect("items");
    assert_eq!(items.len(), 5);
    assert_eq!(items[0]["author"]["display_name"], "Cat");
    let next = json["next_cursor"].as_str().expect("a cursor").to_owned();
    let r = http_read(&t, &bob, &format!("?limit=5&cursor={next}")).await;
    let json = r.json();
    assert_eq!(json["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(json["items"][0]["body"], "ann 0");
    assert!(json.get("next_cursor").is_none(), "{json}");

    // Authors see their own posts.
    let ann_feed = as_user(&t, &ann).await;
    assert_eq!(
        bodies(&feed_of(&ann_feed, 3).await),
        ["ann 2", "ann 1", "ann 0"]
    );

    // Muting hides an author at once; unmuting shows them again.
    bob_feed.mute(&cat, true).await.expect("mute");
    let page = bob_feed.page("", 100).await.expect("page");
    assert_eq!(bodies(&page), ["ann 2", "ann 1", "ann 0"]);
    bob_feed.mute(&cat, false).await.expect("unmute");
    assert_eq!(bob_feed.page("", 100).await.expect("page").items.len(), 6);

    // Unfollowing hides the author's posts at once, and new ones never
    // arrive.
    bob_feed.follow(&ann, false).await.expect("unfollow");
    let page = bob_feed.page("", 100).await.expect("page");
    assert_eq!(bodies(&page), ["cat 2", "cat 1", "cat 0"]);
    ann_feed.publish("after", vec![]).await.expect("post");
    cat_feed.publish("cat later", vec![]).await.expect("post");
    feed_of(&bob_feed, 4).await;
    feed_settled(&t).await;
    let page = bob_feed.page("", 100).await.expect("page");
    assert_eq!(bodies(&page), ["cat later", "cat 2", "cat 1", "cat 0"]);
    t.stop().await;
}

async fn authors_with_huge_audiences_are_pulled_at_read_time(backend: Backend) {
    let t = TestPipeline::start_with(backend, |c| c.feed.pull_threshold = 2).await;
    let (star, small) = (user("star"), user("small"));
    let fans: Vec<String> = (0..3).map(|i| user(&format!("fan{i}"))).collect();
    for fan in &fans {
        as_user(&t, fan)
            .await
            .follow(&star, true)
            .await
            .expect("follow star");
    }
    let reader = as_user(&t, &fans[0]).await;
    reader.follow(&small, true).await.expect("follow small");

    let star_feed = as_user(&t, &star).await;
    let small_feed = as_user(&t, &small).await;
    small_feed.publish("small 1", vec![]).await.expect("post");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let big = star_feed.publish("star 1", vec![]).await.expect("post");
    tokio::time::sleep(Duration::from_millis(5)).await;
    small_feed.publish("small 2", vec![]).await.expect("post");

    // The planner marks the star as pulled instead of fanning out.
    eventually("the star marked as pulled", WAIT, || async {
        t.store()
            .feed
            .pulled_authors()
            .await
            .ok()?
            .contains(&star)
            .then_some(())
    })
    .await;
    let page = feed_of(&reader, 3).await;
    assert_eq!(bodies(&page), ["small 2", "star 1", "small 1"]);
    // Pulled, not pushed: once every post is planned and written, no fan's
    // materialised feed holds the star's post.
    feed_settled(&t).await;
    for fan in &fans {
        let pushed = t
            .store()
            .feed
            .read(fan, None, 100)
            .await
            .expect("feed rows");
        assert!(
            pushed.iter().all(|e| e.post_id != big.post_id),
            "{fan} got the star's post pushed"
        );
    }
    // Pages still cut cleanly across pulled and pushed posts.
    let first = reader.page("", 2).await.expect("page");
    assert_eq!(bodies(&first), ["small 2", "star 1"]);
    let second = reader.page(&first.next_cursor, 2).await.expect("page");
    assert_eq!(bodies(&second), ["small 1"]);
    // The star reads their own posts too.
    assert_eq!(bodies(&feed_of(&star_feed, 1).await), ["star 1"]);
    t.stop().await;
}

async fn followers_are_notified_of_new_posts(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let (ann, bob, quiet, muter) = (user("ann"), user("bob"), user("quiet"), user("muter"));
    name_user(&t, &ann, "Ann").await;
    for follower in [&bob, &quiet, &muter] {
        name_user(&t, follower, "Follower").await;
        t.client
            .register_device(follower, pb::Platform::Ios, &"ab".repeat(32))
            .await
            .expect("ios device");
        as_user(&t, follower)
            .await
            .follow(&ann, true)
            .await
            .expect("follow");
    }
    // `muter` muted the author; `quiet` opted out of new-post
    // notifications, on iOS.
    as_user(&t, &muter)
        .await
        .mute(&ann, true)
        .await
        .expect("mute");
    t.client
        .set_preference(
            &quiet,
            pb::Channel::Ios,
            &t.config.feed.notify_category,
            false,
        )
        .await
        .expect("opt out");

    let post = as_user(&t, &ann)
        .await
        .publish("hello friends", vec![])
        .await
        .expect("post");
    let notified = new_post_notification_id(&post.post_id, &bob);
    let status = eventually("bob's new-post push sent", WAIT, || async {
        let s = t.client.status(&notified).await.ok()?;
        s.deliveries
            .iter()
            .any(|d| d.channel == "ios" && d.state == "sent")
            .then_some(s)
    })
    .await;
    // Push only: one delivery to bob's iPhone; the enricher's row for the
    // Android channel he has no device on carries no target.
    let delivered: Vec<_> = status
        .deliveries
        .iter()
        .filter(|d| !d.target.is_empty())
        .collect();
    assert_eq!(delivered.len(), 1, "push only: {status:?}");
    assert!(
        status
            .deliveries
            .iter()
            .all(|d| d.channel == "ios" || d.channel == "android"),
        "push only: {status:?}"
    );
    // The opted-out follower still gets the post, but no push.
    as_user(&t, &quiet)
        .await
        .page("", 10)
        .await
        .expect("page")
        .items
        .iter()
        .find(|i| i.post_id == post.post_id)
        .expect("the post is in the quiet follower's feed");
    // Nor does one who muted the author: the writer wrote no notification
    // for them (it wrote bob's, and with it all of the slice's, before bob's
    // was sent).
    feed_settled(&t).await;
    let requests = t
        .read_all::<NotificationRequest>(&t.topic("notify.requests"))
        .await;
    let told: HashSet<&str> = requests.iter().map(|r| r.user_id.as_str()).collect();
    assert_eq!(told, HashSet::from([bob.as_str(), quiet.as_str()]));
    let quiet_id = new_post_notification_id(&post.post_id, &quiet);
    t.read_until::<TrackingEvent>(&t.topic("tracking"), WAIT, |events| {
        events
            .iter()
            .any(|e| e.notification_id == quiet_id && e.kind == TrackingKind::Suppressed)
    })
    .await;
    // Read to the end once the enricher and the iOS sender are done: no
    // push was written or sent for the opted-out follower.
    t.caught_up("enricher", &t.topic("notify.requests")).await;
    let pushes = t.read_all::<Delivery>(&t.topic("deliver.ios")).await;
    assert!(
        pushes.iter().all(|d| d.notification_id != quiet_id),
        "{pushes:?}"
    );
    t.caught_up("sender.ios", &t.topic("deliver.ios")).await;
    let events = t.read_all::<TrackingEvent>(&t.topic("tracking")).await;
    assert!(
        !events
            .iter()
            .any(|e| e.notification_id == quiet_id && e.kind == TrackingKind::Sent),
        "the opted-out follower was pushed"
    );
    t.stop().await;
}

async fn a_post_for_some_followers_reaches_only_them(backend: Backend) {
    // A threshold of 2: the author, with 3 followers, is pulled at read
    // time, and a restricted post must still never be pulled.
    let t = TestPipeline::start_with(backend, |c| c.feed.pull_threshold = 2).await;
    let (author, chosen, other, third, stranger) = (
        user("author"),
        user("chosen"),
        user("other"),
        user("third"),
        user("stranger"),
    );
    for follower in [&chosen, &other, &third] {
        as_user(&t, follower)
            .await
            .follow(&author, true)
            .await
            .expect("follow");
    }
    let author_feed = as_user(&t, &author).await;
    // A public post first makes the author pulled.
    author_feed
        .publish("for everyone", vec![])
        .await
        .expect("post");
    eventually("the author marked as pulled", WAIT, || async {
        t.store()
            .feed
            .pulled_authors()
            .await
            .ok()?
            .contains(&author)
            .then_some(())
    })
    .await;
    let r = http_publish(
        &t,
        &author,
        &serde_json::json!({"body": "only for you", "audience": [chosen, stranger]}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);

    let chosen_feed = as_user(&t, &chosen).await;
    assert_eq!(
        bodies(&feed_of(&chosen_feed, 2).await),
        ["only for you", "for everyone"]
    );
    assert_eq!(
        bodies(&feed_of(&author_feed, 2).await),
        ["only for you", "for everyone"]
    );
    // Followers outside the audience, and a non-follower inside it, never
    // see it, neither pushed nor pulled (asked once every post is written).
    feed_settled(&t).await;
    for reader in [&other, &third, &stranger] {
        let page = as_user(&t, reader).await.page("", 10).await.expect("page");
        assert!(!bodies(&page).contains(&"only for you"), "{reader} sees it");
    }
    assert_eq!(
        bodies(&as_user(&t, &other).await.page("", 10).await.expect("page")),
        ["for everyone"]
    );
    t.stop().await;
}

async fn bad_feed_requests_are_refused_with_the_reason(backend: Backend) {
    let t = TestPipeline::start_with(backend, |c| c.feed.max_posts = 2).await;
    let ann = user("ann");
    let addr = http_addr(&t);

    // No token, a forged token, an expired one.
    let r = http::request(addr, "GET", "/v1/me/feed", &[], None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.json()["error"].as_str().unwrap().contains("bearer"),
        "{}",
        r.body
    );
    assert!(
        r.head.to_lowercase().contains("www-authenticate: bearer"),
        "{}",
        r.head
    );
    let forged = UserTokens::new("not the secret").mint(&ann, now_secs(), Duration::from_secs(60));
    let r = http::request(
        addr,
        "GET",
        "/v1/me/feed",
        &[("Authorization", &format!("Bearer {forged}"))],
        None,
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("signature"), "{}", r.body);
    let expired = UserTokens::new(&t.config.feed.user_token_secret).mint(
        &ann,
        now_secs() - 7_200,
        Duration::from_secs(60),
    );
    let err = FeedClient::connect(&t.grpc_endpoint(), &expired)
        .await
        .unwrap()
        .page("", 10)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("expired"), "{}", err.message());

    // Bad fields are named.
    for (body, field) in [
        (serde_json::json!({"body": "  "}), "body:"),
        (serde_json::json!({"body": "x".repeat(5_001)}), "body:"),
        (
            serde_json::json!({"body": "hi", "media_urls": ["cdn/x.jpg"]}),
            "media_urls[0]:",
        ),
        (
            serde_json::json!({"body": "hi", "audience": ["ok", "not ok"]}),
            "audience[1]:",
        ),
        (serde_json::json!({"body": "hi", "colour": "red"}), "colour"),
        (serde_json::json!({"body": 7}), "body:"),
    ] {
        let r = http_publish(&t, &ann, &body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let error = r.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains(field), "{body}: {error}");
        assert_eq!(r.json()["code"], "InvalidArgument");
    }
    let r = http_read(&t, &ann, "?cursor=bm9wZQ").await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"].as_str().unwrap().starts_with("cursor:"),
        "{}",
        r.body
    );
    let r = http_read(&t, &ann, "?limit=1000").await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"].as_str().unwrap().starts_with("limit:"),
        "{}",
        r.body
    );
    let r = http_read(&t, &ann, "?limit=many").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("limit"), "{}", r.body);

    let ann_feed = as_user(&t, &ann).await;
    let err = ann_feed.follow(&ann, true).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("user_id:"), "{}", err.message());
    let auth = format!("Bearer {}", token(&t, &ann));
    let r = http::request(
        addr,
        "PUT",
        "/v1/me/following/bad%20id",
        &[("Authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);

    // The post limit: two per window, the third is refused, nothing stored.
    for i in 0..2 {
        ann_feed
            .publish(&format!("p{i}"), vec![])
            .await
            .expect("within the limit");
    }
    let r = http_publish(&t, &ann, &serde_json::json!({"body": "p2"})).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body.contains("at most 2 posts"), "{}", r.body);
    feed_of(&ann_feed, 2).await;
    feed_settled(&t).await;
    let page = ann_feed.page("", 100).await.expect("page");
    let posted: HashSet<&str> = bodies(&page).into_iter().collect();
    assert_eq!(posted, HashSet::from(["p0", "p1"]));
    t.stop().await;
}

on_every_backend!(
    the_feed_merges_followed_authors_newest_first_and_pages_with_cursors,
    authors_with_huge_audiences_are_pulled_at_read_time,
    followers_are_notified_of_new_posts,
    a_post_for_some_followers_reaches_only_them,
    bad_feed_requests_are_refused_with_the_reason,
);

/// `limit=0` asks for an empty page, which nobody means: it is refused
/// (naming `limit`) instead of silently answering the default page; leaving
/// `limit` out still gives the default.
async fn an_explicit_zero_limit_is_refused(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let ann = user("ann");
    let r = http_read(&t, &ann, "?limit=0").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.json()["error"].as_str().unwrap().starts_with("limit:"),
        "{}",
        r.body
    );
    let r = http_read(&t, &ann, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    t.stop().await;
}

mod zero_limit {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded() {
        an_explicit_zero_limit_is_refused(Backend::Embedded).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn servers() {
        an_explicit_zero_limit_is_refused(Backend::Servers).await
    }
}
