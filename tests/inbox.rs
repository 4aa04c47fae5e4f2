//! The in-app inbox end to end, as clients use it, on the embedded default
//! and on real Kafka and Cassandra: a notification sent through gRPC `Send`
//! on CHANNEL_IN_APP goes through the enricher and the in-app sender into
//! the user's inbox; the user lists, counts and marks it over HTTP
//! (`/v1/me/notifications`) and gRPC (`InboxService`) with a bearer token,
//! and watches it live over Server-Sent Events and gRPC `Watch`, on this
//! gateway and on a second one reading the same Kafka.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::{Backend, TestPipeline, eventually, http};
use tidings_gateway::{GatewayAddrs, user_token::UserTokens};
use tidings_schemas::{
    proto::v1::{self as pb, inbox_service_client::InboxServiceClient},
    records::{InboxEvent, InboxEventKind, TrackingEvent, TrackingKind},
};
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
/// The promise of the live path: a new item is on the user's screen within
/// a second of its delivery.
const LIVE_WITHIN: Duration = Duration::from_secs(1);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// A unique user id (tests share the Cassandra keyspace).
fn user(name: &str) -> String {
    format!("{name}-{}", &Uuid::new_v4().simple().to_string()[..8])
}

/// A bearer token for `user`, as the company's auth service would mint it.
fn token(t: &TestPipeline, user: &str) -> String {
    UserTokens::new(&t.config.feed.user_token_secret).mint(
        user,
        now_ms() / 1000,
        Duration::from_secs(600),
    )
}

fn http_addr(t: &TestPipeline) -> SocketAddr {
    t.pipeline.as_ref().expect("running").gateway.http
}

/// Sends one in-app notification to `user` through the public gRPC API;
/// its notification id.
async fn send_in_app(t: &TestPipeline, user: &str, title: &str, category: &str) -> String {
    let sent = t
        .client
        .send(pb::SendRequest {
            event_id: Uuid::new_v4().to_string(),
            user_ids: vec![user.into()],
            channels: vec![pb::Channel::InApp as i32],
            category: category.into(),
            content: Some(pb::send_request::Content::Raw(pb::RawContent {
                title: title.into(),
                body: format!("{title}: the body"),
                action_url: "https://app.example.com/orders/7".into(),
                avatar_url: "https://cdn.example.com/shop.png".into(),
                ..Default::default()
            })),
            data: [("order".to_owned(), "7".to_owned())].into(),
            ..Default::default()
        })
        .await
        .expect("send accepted");
    sent.notification_ids[0].clone()
}

/// One HTTP call as `user` (no token when `user` is `None`).
async fn call(
    addr: SocketAddr,
    t: &TestPipeline,
    user: Option<&str>,
    method: &str,
    path: &str,
) -> http::HttpResponse {
    let auth = user.map(|u| format!("Bearer {}", token(t, u)));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let body = (method == "POST").then_some(("application/json", ""));
    http::request(addr, method, path, &headers, body).await
}

/// `call` that must answer 200; its JSON.
async fn ok(addr: SocketAddr, t: &TestPipeline, user: &str, method: &str, path: &str) -> Value {
    let r = call(addr, t, Some(user), method, path).await;
    assert_eq!(r.status, 200, "{method} {path}: {}", r.body);
    r.json()
}

fn counts(unread: u32, unseen: u32, total: u32) -> Value {
    json!({"unread": unread, "unseen": unseen, "total": total})
}

/// The field a 4xx answer blames.
fn blamed(r: &http::HttpResponse) -> String {
    r.json()["field_violations"][0]["field"]
        .as_str()
        .unwrap_or_else(|| panic!("no field violation: {}", r.body))
        .to_owned()
}

/// A Server-Sent Events client reading the stream as a browser would.
struct SseClient {
    response: reqwest::Response,
    buffer: String,
    heartbeats: usize,
}

#[derive(Debug)]
struct SseEvent {
    id: String,
    event: String,
    data: Value,
    /// When it was read, in epoch milliseconds.
    received_ms: i64,
}

impl SseClient {
    /// Opens the stream at `path_and_query` with `headers`; the response
    /// (not 200: it is returned as the error, status and body).
    async fn open(
        addr: SocketAddr,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, (u16, String)> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let mut request = client
            .get(format!("http://{addr}{path_and_query}"))
            .header("accept", "text/event-stream");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the gateway answers");
        let status = response.status().as_u16();
        if status != 200 {
            return Err((status, response.text().await.unwrap_or_default()));
        }
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{:?}",
            response.headers()
        );
        Ok(Self {
            response,
            buffer: String::new(),
            heartbeats: 0,
        })
    }

    /// The stream of `user` on the gateway at `addr`, token in the header.
    async fn of(
        addr: SocketAddr,
        t: &TestPipeline,
        user: &str,
        last_event_id: Option<&str>,
    ) -> Self {
        let auth = format!("Bearer {}", token(t, user));
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(id) = last_event_id {
            headers.push(("last-event-id", id));
        }
        Self::open(addr, "/v1/me/notifications/stream", &headers)
            .await
            .unwrap_or_else(|(status, body)| panic!("stream refused: {status} {body}"))
    }

    /// The next event (heartbeat comments counted, not returned); fails
    /// the test after `within`.
    async fn next(&mut self, within: Duration) -> SseEvent {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    } else if line.starts_with(':') {
                        self.heartbeats += 1;
                    }
                }
                if event.is_empty() {
                    continue;
                }
                return SseEvent {
                    id,
                    event,
                    data: serde_json::from_str(&data)
                        .unwrap_or_else(|e| panic!("data is not JSON ({e}): {data}")),
                    received_ms: now_ms(),
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no SSE event within {within:?}; buffered: {:?}",
                        self.buffer
                    )
                })
                .expect("the stream reads")
                .expect("the stream stays open");
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }

    async fn expect(&mut self, event: &str, within: Duration) -> SseEvent {
        let got = self.next(within).await;
        assert_eq!(got.event, event, "{got:?}");
        assert!(!got.id.is_empty(), "every event has an id: {got:?}");
        got
    }
}

async fn inbox_client(endpoint: &str) -> InboxServiceClient<Channel> {
    InboxServiceClient::connect(endpoint.to_owned())
        .await
        .expect("gateway answers")
}

fn as_user<T>(t: &TestPipeline, user: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token(t, user)).parse().expect("ASCII"),
    );
    request
}

/// The next event of a gRPC `Watch` stream, heartbeats skipped.
async fn next_watched(
    stream: &mut tonic::Streaming<pb::WatchEvent>,
    within: Duration,
) -> pb::WatchEvent {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no Watch event within {within:?}"))
            .expect("the stream reads")
            .expect("the stream stays open");
        if !matches!(event.event, Some(pb::watch_event::Event::Heartbeat(_))) {
            return event;
        }
    }
}

fn pb_counts(unread: u32, unseen: u32, total: u32) -> pb::InboxCounts {
    pb::InboxCounts {
        unread,
        unseen,
        total,
    }
}

/// The NEW event the in-app sender wrote for `notification_id`: when it
/// was delivered.
async fn delivered_at(t: &TestPipeline, notification_id: &str) -> i64 {
    let events: Vec<InboxEvent> = t.read_all(&t.topic("inbox.events")).await;
    events
        .iter()
        .find(|e| {
            e.kind == InboxEventKind::New && e.notification_id.as_deref() == Some(notification_id)
        })
        .unwrap_or_else(|| panic!("no NEW event for {notification_id} in {events:?}"))
        .at
}

/// Waits until `user`'s inbox lists `n` items (filter all).
async fn listed(addr: SocketAddr, t: &TestPipeline, user: &str, n: usize) -> Value {
    eventually(&format!("{n} items in {user}'s inbox"), WAIT, || async {
        let page = ok(
            addr,
            t,
            user,
            "GET",
            "/v1/me/notifications?filter=all&limit=100",
        )
        .await;
        (page["items"].as_array().map(Vec::len) == Some(n)).then_some(page)
    })
    .await
}

/// Everything a user does with their inbox over HTTP, with the live stream
/// open: the item sent arrives on the stream within a second of its
/// delivery, is listed with its content, and every mark changes the counts
/// in the answer, on the stream and in `count`.
async fn the_inbox_over_http_lists_counts_marks_and_streams(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let addr = http_addr(&t);
    let alice = user("alice");

    let mut stream = SseClient::of(addr, &t, &alice, None).await;
    let first = stream.expect("counts", WAIT).await;
    assert_eq!(first.data, counts(0, 0, 0));

    let sent_at = Instant::now();
    let id = send_in_app(&t, &alice, "Your order shipped", "orders").await;
    let arrived = stream.expect("notification", WAIT).await;
    let end_to_end = sent_at.elapsed();
    let item = &arrived.data["item"];
    assert_eq!(item["id"], id.as_str());
    assert_eq!(item["title"], "Your order shipped");
    assert_eq!(item["body"], "Your order shipped: the body");
    assert_eq!(item["category"], "orders");
    assert_eq!(item["action_url"], "https://app.example.com/orders/7");
    assert_eq!(item["avatar_url"], "https://cdn.example.com/shop.png");
    assert_eq!(item["data"], json!({"order": "7"}));
    assert_eq!(
        (item["read"].clone(), item["seen"].clone()),
        (json!(false), json!(false))
    );
    assert_eq!(arrived.data["counts"], counts(1, 1, 1));
    let live = arrived.received_ms - delivered_at(&t, &id).await;
    println!("{backend:?}: Send -> SSE {end_to_end:?}; delivery (NEW event) -> SSE {live} ms");
    assert!(
        live <= LIVE_WITHIN.as_millis() as i64,
        "the item reached the stream {live} ms after its delivery"
    );

    let page = ok(addr, &t, &alice, "GET", "/v1/me/notifications").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["items"][0]["id"], id.as_str());
    assert_eq!(page["items"][0]["created_at_ms"], item["created_at_ms"]);
    assert!(page.get("next_cursor").is_none(), "{page}");
    assert_eq!(
        ok(addr, &t, &alice, "GET", "/v1/me/notifications/count").await,
        counts(1, 1, 1)
    );

    // Each change: the answer's counts, then the same on the stream.
    let steps = [
        ("read", "read", counts(0, 1, 1)),
        ("unread", "unread", counts(1, 1, 1)),
        ("archive", "archived", counts(0, 0, 0)),
        ("unarchive", "unarchived", counts(1, 1, 1)),
    ];
    for (action, kind, after) in steps {
        let answer = ok(
            addr,
            &t,
            &alice,
            "POST",
            &format!("/v1/me/notifications/{id}/{action}"),
        )
        .await;
        assert_eq!(answer["counts"], after, "{action}: {answer}");
        assert_eq!(answer["item"]["id"], id.as_str());
        let state = stream.expect("state", WAIT).await;
        assert_eq!(
            state.data,
            json!({"kind": kind, "id": id, "counts": after}),
            "{action}"
        );
    }
    // Idempotent: reading twice keeps the first read_at.
    let once = ok(
        addr,
        &t,
        &alice,
        "POST",
        &format!("/v1/me/notifications/{id}/read"),
    )
    .await;
    let twice = ok(
        addr,
        &t,
        &alice,
        "POST",
        &format!("/v1/me/notifications/{id}/read"),
    )
    .await;
    assert_eq!(once["item"]["read_at_ms"], twice["item"]["read_at_ms"]);
    assert!(twice["item"]["read"].as_bool().unwrap());
    stream.expect("state", WAIT).await;
    stream.expect("state", WAIT).await;

    // Filters: archived items leave the inbox view.
    ok(
        addr,
        &t,
        &alice,
        "POST",
        &format!("/v1/me/notifications/{id}/archive"),
    )
    .await;
    stream.expect("state", WAIT).await;
    let inbox = ok(addr, &t, &alice, "GET", "/v1/me/notifications?filter=inbox").await;
    assert_eq!(inbox["items"], json!([]));
    let archived = ok(
        addr,
        &t,
        &alice,
        "GET",
        "/v1/me/notifications?filter=archived",
    )
    .await;
    assert_eq!(archived["items"][0]["id"], id.as_str());
    assert_eq!(archived["items"][0]["archived"], true);
    ok(
        addr,
        &t,
        &alice,
        "POST",
        &format!("/v1/me/notifications/{id}/unarchive"),
    )
    .await;
    stream.expect("state", WAIT).await;

    // A second item, then read-all and seen.
    let second = send_in_app(&t, &alice, "A reply", "social").await;
    let arrived = stream.expect("notification", WAIT).await;
    assert_eq!(arrived.data["item"]["id"], second.as_str());
    assert_eq!(arrived.data["counts"], counts(1, 2, 2));
    let social = ok(
        addr,
        &t,
        &alice,
        "GET",
        "/v1/me/notifications?category=social",
    )
    .await;
    assert_eq!(social["items"].as_array().unwrap().len(), 1);
    assert_eq!(social["items"][0]["id"], second.as_str());
    let unread = ok(
        addr,
        &t,
        &alice,
        "GET",
        "/v1/me/notifications?filter=unread",
    )
    .await;
    assert_eq!(unread["items"][0]["id"], second.as_str());
    // Pages of one, newest first, joined by the cursor.
    let first_page = ok(addr, &t, &alice, "GET", "/v1/me/notifications?limit=1").await;
    assert_eq!(first_page["items"][0]["id"], second.as_str());
    let cursor = first_page["next_cursor"].as_str().expect("an older page");
    let second_page = ok(
        addr,
        &t,
        &alice,
        "GET",
        &format!("/v1/me/notifications?limit=1&cursor={cursor}"),
    )
    .await;
    assert_eq!(second_page["items"][0]["id"], id.as_str());
    assert!(second_page.get("next_cursor").is_none(), "{second_page}");

    let all_read = ok(addr, &t, &alice, "POST", "/v1/me/notifications/read-all").await;
    assert_eq!(all_read, json!({"changed": 1, "counts": counts(0, 2, 2)}));
    let state = stream.expect("state", WAIT).await;
    assert_eq!(
        state.data,
        json!({"kind": "read_all", "id": null, "counts": counts(0, 2, 2)})
    );
    let seen = ok(addr, &t, &alice, "POST", "/v1/me/notifications/seen").await;
    assert_eq!(seen, json!({"counts": counts(0, 0, 2)}));
    let state = stream.expect("state", WAIT).await;
    assert_eq!(state.data["kind"], "seen");
    let page = ok(addr, &t, &alice, "GET", "/v1/me/notifications").await;
    assert!(
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["seen"] == true),
        "{page}"
    );

    // Refusals: 404 for another user's or an unknown item, 401 without a
    // token, 400 naming the parameter.
    let bob = user("bob");
    for (who, path) in [
        (&bob, format!("/v1/me/notifications/{id}/read")),
        (&alice, "/v1/me/notifications/no-such-item/read".to_owned()),
    ] {
        let r = call(addr, &t, Some(who), "POST", &path).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert_eq!(r.json()["code"], "NotFound");
    }
    for (method, path) in [
        ("GET", "/v1/me/notifications"),
        ("GET", "/v1/me/notifications/count"),
        ("POST", "/v1/me/notifications/read-all"),
        ("GET", "/v1/me/notifications/stream"),
    ] {
        let r = call(addr, &t, None, method, path).await;
        assert_eq!(r.status, 401, "{path}: {}", r.body);
        assert_eq!(r.json()["code"], "Unauthenticated");
    }
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("cursor=bm90LWEtY3Vyc29y", "cursor"),
        ("filter=starred", "filter"),
        ("category=a%20b", "category"),
    ] {
        let r = call(
            addr,
            &t,
            Some(&alice),
            "GET",
            &format!("/v1/me/notifications?{query}"),
        )
        .await;
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        assert_eq!(blamed(&r), field, "{query}: {}", r.body);
    }

    // The read is a READ tracking event of the in-app channel (once, for
    // the three reads of the item).
    let tracked: Vec<TrackingEvent> = t.read_all(&t.topic("tracking")).await;
    let reads: Vec<&TrackingEvent> = tracked
        .iter()
        .filter(|e| e.notification_id == id && e.kind == TrackingKind::Read)
        .collect();
    assert!(!reads.is_empty(), "no READ tracking event for {id}");
    assert!(
        reads.iter().all(|e| e.event_id == reads[0].event_id
            && e.channel.as_deref() == Some("in_app")
            && e.user_id == alice),
        "{reads:?}"
    );
    assert!(
        tracked
            .iter()
            .any(|e| e.notification_id == id && e.kind == TrackingKind::Archived)
    );
    t.stop().await;
}

/// The SSE stream also takes the token as `access_token` (browsers'
/// EventSource), and a client that reconnects with the last id it saw
/// gets the counts, then what it missed, oldest first; so does gRPC
/// `Watch` with `after_event_id`.
async fn a_reconnecting_stream_gets_what_it_missed(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let addr = http_addr(&t);
    let carol = user("carol");
    let earlier = send_in_app(&t, &carol, "Before", "").await;
    listed(addr, &t, &carol, 1).await;

    let path = format!(
        "/v1/me/notifications/stream?access_token={}",
        token(&t, &carol)
    );
    let mut stream = SseClient::open(addr, &path, &[])
        .await
        .expect("token in the query");
    let first = stream.expect("counts", WAIT).await;
    assert_eq!(first.data, counts(1, 1, 1));
    let mut watch = inbox_client(&t.grpc_endpoint())
        .await
        .watch(as_user(&t, &carol, pb::WatchRequest::default()))
        .await
        .expect("watch")
        .into_inner();
    let watched = next_watched(&mut watch, WAIT).await;
    assert_eq!(
        watched.event,
        Some(pb::watch_event::Event::Counts(pb_counts(1, 1, 1)))
    );
    drop(stream);
    drop(watch);

    let missed = [
        send_in_app(&t, &carol, "Missed 1", "").await,
        send_in_app(&t, &carol, "Missed 2", "").await,
    ];
    listed(addr, &t, &carol, 3).await;

    let mut resumed = SseClient::of(addr, &t, &carol, Some(&first.id)).await;
    assert_eq!(resumed.expect("counts", WAIT).await.data, counts(3, 3, 3));
    let mut got = Vec::new();
    for _ in 0..2 {
        let event = resumed.expect("notification", WAIT).await;
        got.push(event.data["item"]["id"].as_str().unwrap().to_owned());
    }
    // Oldest first; not the item shown before the gap.
    assert_eq!(got, missed, "before the gap: {earlier}");
    // The Last-Event-ID header takes precedence; a garbage one is named.
    let r = SseClient::open(
        addr,
        "/v1/me/notifications/stream",
        &[
            ("authorization", &format!("Bearer {}", token(&t, &carol))),
            ("last-event-id", "yesterday"),
        ],
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(r.0, 400, "{}", r.1);
    assert!(r.1.contains("Last-Event-ID"), "{}", r.1);

    let mut rewatched = inbox_client(&t.grpc_endpoint())
        .await
        .watch(as_user(
            &t,
            &carol,
            pb::WatchRequest {
                after_event_id: watched.event_id.clone(),
            },
        ))
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        next_watched(&mut rewatched, WAIT).await.event,
        Some(pb::watch_event::Event::Counts(pb_counts(3, 3, 3)))
    );
    let mut got_watched = Vec::new();
    for _ in 0..2 {
        match next_watched(&mut rewatched, WAIT).await.event {
            Some(pb::watch_event::Event::Notification(n)) => {
                got_watched.push(n.item.expect("item").id)
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got_watched, got, "gRPC and SSE resume the same way");
    t.stop().await;
}

/// Starts a second gateway on the same Kafka and store (another process in
/// production): its own listeners and its own inbox consumer.
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

/// A change made through one gateway reaches the streams held by another,
/// through Kafka: an SSE stream and a gRPC Watch on gateway B see a read
/// made on gateway A, and the new item sent meanwhile.
async fn a_change_on_one_gateway_reaches_streams_on_another(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let a = http_addr(&t);
    let (b, stop_b) = second_gateway(&t).await;
    let dave = user("dave");

    let mut on_b = SseClient::of(b.http, &t, &dave, None).await;
    assert_eq!(on_b.expect("counts", WAIT).await.data, counts(0, 0, 0));
    let mut watch_b = inbox_client(&format!("http://{}", b.grpc))
        .await
        .watch(as_user(&t, &dave, pb::WatchRequest::default()))
        .await
        .expect("watch on B")
        .into_inner();
    next_watched(&mut watch_b, WAIT).await;

    let id = send_in_app(&t, &dave, "Hello from A", "").await;
    let arrived = on_b.expect("notification", WAIT).await;
    assert_eq!(arrived.data["item"]["id"], id.as_str());
    match next_watched(&mut watch_b, WAIT).await.event {
        Some(pb::watch_event::Event::Notification(n)) => {
            assert_eq!(n.item.expect("item").id, id);
            assert_eq!(n.counts, Some(pb_counts(1, 1, 1)));
        }
        other => panic!("{other:?}"),
    }

    let marked_at = Instant::now();
    ok(
        a,
        &t,
        &dave,
        "POST",
        &format!("/v1/me/notifications/{id}/read"),
    )
    .await;
    let state = on_b.expect("state", WAIT).await;
    println!(
        "{backend:?}: read on A -> state on B's SSE {:?}",
        marked_at.elapsed()
    );
    assert_eq!(
        state.data,
        json!({"kind": "read", "id": id, "counts": counts(0, 1, 1)})
    );
    assert!(
        marked_at.elapsed() < LIVE_WITHIN * 2,
        "{:?}",
        marked_at.elapsed()
    );
    match next_watched(&mut watch_b, WAIT).await.event {
        Some(pb::watch_event::Event::State(s)) => {
            assert_eq!(s.kind(), pb::InboxChange::Read);
            assert_eq!(s.id, id);
            assert_eq!(s.counts, Some(pb_counts(0, 1, 1)));
        }
        other => panic!("{other:?}"),
    }
    stop_b.cancel();
    t.stop().await;
}

/// The gRPC calls: the same inbox, the same refusals as gRPC codes.
async fn the_inbox_over_grpc(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let erin = user("erin");
    let mut inbox = inbox_client(&t.grpc_endpoint()).await;
    let mut watch = inbox
        .watch(as_user(&t, &erin, pb::WatchRequest::default()))
        .await
        .expect("watch")
        .into_inner();
    let first = next_watched(&mut watch, WAIT).await;
    assert_eq!(
        first.event,
        Some(pb::watch_event::Event::Counts(pb_counts(0, 0, 0)))
    );
    assert!(!first.event_id.is_empty());

    let ids = [
        send_in_app(&t, &erin, "One", "billing").await,
        send_in_app(&t, &erin, "Two", "").await,
    ];
    for _ in 0..2 {
        let event = next_watched(&mut watch, WAIT).await;
        assert!(
            matches!(event.event, Some(pb::watch_event::Event::Notification(_))),
            "{event:?}"
        );
    }
    let page = inbox
        .list_notifications(as_user(&t, &erin, pb::ListNotificationsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page.items.len(), 2);
    let billing = inbox
        .list_notifications(as_user(
            &t,
            &erin,
            pb::ListNotificationsRequest {
                category: "billing".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(billing.items.len(), 1);
    assert_eq!(billing.items[0].id, ids[0]);
    assert_eq!(billing.items[0].title, "One");
    assert_eq!(
        billing.items[0].data,
        [("order".to_owned(), "7".to_owned())].into()
    );

    let marked = inbox
        .mark_notification(as_user(
            &t,
            &erin,
            pb::MarkNotificationRequest {
                id: ids[0].clone(),
                action: pb::InboxAction::Archive as i32,
            },
        ))
        .await
        .expect("archive")
        .into_inner();
    assert!(marked.item.expect("item").archived);
    assert_eq!(marked.counts, Some(pb_counts(1, 1, 1)));
    match next_watched(&mut watch, WAIT).await.event {
        Some(pb::watch_event::Event::State(s)) => assert_eq!(s.kind(), pb::InboxChange::Archived),
        other => panic!("{other:?}"),
    }
    let all_read = inbox
        .mark_all_read(as_user(&t, &erin, pb::MarkAllReadRequest {}))
        .await
        .expect("read all")
        .into_inner();
    assert_eq!(
        (all_read.changed, all_read.counts),
        (1, Some(pb_counts(0, 1, 1)))
    );
    let seen = inbox
        .mark_seen(as_user(&t, &erin, pb::MarkSeenRequest {}))
        .await
        .expect("seen")
        .into_inner();
    assert_eq!(seen.counts, Some(pb_counts(0, 0, 1)));
    let counted = inbox
        .get_counts(as_user(&t, &erin, pb::GetCountsRequest {}))
        .await
        .expect("counts")
        .into_inner();
    assert_eq!(counted.counts, Some(pb_counts(0, 0, 1)));

    let unknown = inbox
        .mark_notification(as_user(
            &t,
            &erin,
            pb::MarkNotificationRequest {
                id: "no-such-item".into(),
                action: pb::InboxAction::Read as i32,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let anonymous = inbox.get_counts(pb::GetCountsRequest {}).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let bad_cursor = inbox
        .list_notifications(as_user(
            &t,
            &erin,
            pb::ListNotificationsRequest {
                cursor: "nope".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_cursor.code(), Code::InvalidArgument);
    assert!(
        bad_cursor.message().starts_with("cursor:"),
        "{}",
        bad_cursor.message()
    );
    let bad_limit = inbox
        .list_notifications(as_user(
            &t,
            &erin,
            pb::ListNotificationsRequest {
                limit: 101,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert!(
        bad_limit.message().starts_with("limit:"),
        "{}",
        bad_limit.message()
    );

    // On the embedded cluster a read's tracking event waits for room on the
    // tracking topic, as sends do: past a reader a mark behind, the read is
    // UNAVAILABLE (stored, to retry); once the reader caught up, it is done.
    let runtime = &t.pipeline.as_ref().expect("running").runtime;
    if let Some(backlog) = runtime.cluster.backlog() {
        let tracking = runtime.topics.tracking();
        let stats = format!("{}.template-stats", t.config.kafka.group_prefix);
        let behind = backlog.marks().bytes;
        for p in 0..t.config.kafka.partitions {
            backlog.produced(tracking, p, behind);
        }
        let read = || {
            as_user(
                &t,
                &erin,
                pb::MarkNotificationRequest {
                    id: ids[1].clone(),
                    action: pb::InboxAction::Read as i32,
                },
            )
        };
        let refused = inbox.mark_notification(read()).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(
            refused.message().contains(tracking),
            "{}",
            refused.message()
        );
        for p in 0..t.config.kafka.partitions {
            backlog.taken(&stats, tracking, p, behind);
        }
        let marked = inbox.mark_notification(read()).await.expect("read again");
        assert!(marked.into_inner().item.expect("item").read);
    }
    t.stop().await;
}

/// A gateway holds at most `[inbox] max_streams` streams: the next is 503
/// (SSE) or RESOURCE_EXHAUSTED (gRPC) until one closes. Idle streams get
/// heartbeats.
async fn streams_are_bounded_and_kept_alive(backend: Backend) {
    let t = TestPipeline::start_with(backend, |c| {
        c.inbox.max_streams = 1;
        c.inbox.heartbeat_secs = 1;
    })
    .await;
    let addr = http_addr(&t);
    let frank = user("frank");
    let mut held = SseClient::of(addr, &t, &frank, None).await;
    held.expect("counts", WAIT).await;

    let auth = format!("Bearer {}", token(&t, &frank));
    let refused = SseClient::open(
        addr,
        "/v1/me/notifications/stream",
        &[("authorization", &auth)],
    )
    .await
    .err()
    .expect("over max_streams");
    assert_eq!(refused.0, 503, "{}", refused.1);
    assert!(refused.1.contains("max_streams"), "{}", refused.1);
    let grpc = inbox_client(&t.grpc_endpoint())
        .await
        .watch(as_user(&t, &frank, pb::WatchRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(grpc.code(), Code::ResourceExhausted);

    // Heartbeats on the idle stream: `: heartbeat` comments.
    let id = send_in_app(&t, &frank, "Wake up", "").await;
    let arrived = held.expect("notification", WAIT).await;
    assert_eq!(arrived.data["item"]["id"], id.as_str());
    let beats_before = held.heartbeats;
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.heartbeats < beats_before + 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no heartbeats on an idle stream");
        let chunk = tokio::time::timeout(left, held.response.chunk())
            .await
            .expect("heartbeat")
            .expect("reads")
            .expect("open");
        let text = String::from_utf8_lossy(&chunk).into_owned();
        held.heartbeats += text.matches(": heartbeat\n").count();
        held.buffer.clear();
    }

    drop(held);
    eventually("the slot is freed", WAIT, || async {
        SseClient::open(
            addr,
            "/v1/me/notifications/stream",
            &[("authorization", &auth)],
        )
        .await
        .ok()
    })
    .await;
    t.stop().await;
}

on_every_backend!(
    the_inbox_over_http_lists_counts_marks_and_streams,
    a_reconnecting_stream_gets_what_it_missed,
    a_change_on_one_gateway_reaches_streams_on_another,
    the_inbox_over_grpc,
    streams_are_bounded_and_kept_alive,
);
