//! Web push end to end, on the embedded default and on real Kafka and
//! Cassandra: browser subscriptions registered through the gRPC API (checked
//! field by field), a notification sent to CHANNEL_WEB rendered, encrypted
//! and delivered to a push-service stand-in that decrypts it with the
//! subscriber's key and verifies the VAPID JWT
//! (processors/tests/support/webpush_server.py), a gone subscription
//! tombstoned, and an opt-out respected.

#[path = "../processors/tests/support/webpush.rs"]
mod push_service;
mod support;

use std::time::Duration;

use push_service::PushService;
use serde_json::{Value, json};
use support::{Backend, TestPipeline, eventually};
use tidings_schemas::{
    proto::v1 as pb,
    records::{Delivery, TrackingEvent, TrackingKind},
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
/// RFC 8291 Appendix A's application-server key pair, as the VAPID key.
const VAPID_PRIVATE: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
const VAPID_PUBLIC: &str =
    "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8";

async fn register(
    t: &TestPipeline,
    user: &str,
    token: &str,
    keys: Option<pb::WebPushKeys>,
) -> Result<(), tonic::Status> {
    let request = t
        .client
        .request(pb::RegisterDeviceRequest {
            user_id: user.into(),
            platform: pb::Platform::Web as i32,
            token: token.into(),
            web_push: keys,
        })
        .expect("request");
    t.client.contacts().register_device(request).await.map(drop)
}

async fn devices(t: &TestPipeline, user: &str) -> Vec<String> {
    let request = t
        .client
        .request(pb::ListDevicesRequest {
            user_id: user.into(),
        })
        .expect("request");
    let mut tokens: Vec<String> = t
        .client
        .contacts()
        .list_devices(request)
        .await
        .expect("devices")
        .into_inner()
        .devices
        .into_iter()
        .map(|d| d.token)
        .collect();
    tokens.sort();
    tokens
}

fn push(user: &str, event: &str) -> pb::SendRequest {
    pb::SendRequest {
        event_id: event.into(),
        user_ids: vec![user.into()],
        channels: vec![pb::Channel::Web as i32],
        content: Some(pb::send_request::Content::Raw(pb::RawContent {
            title: "Your order shipped".into(),
            body: "It arrives on Tuesday.".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

async fn web_push_reaches_browsers_and_gone_subscriptions_are_dropped(backend: Backend) {
    let service = PushService::start(VAPID_PUBLIC).await;
    let t = TestPipeline::start_with(backend, |c| {
        c.providers.insert(
            "web".into(),
            json!({
                "kind": "webpush",
                "vapid_private_key": VAPID_PRIVATE,
                "subject": "mailto:ops@tidings.example",
                "allow_loopback_http": true,
            }),
        );
        c.gateway.web_push_loopback_http = true;
    })
    .await;
    let user = format!("u-{}", Uuid::new_v4());
    t.client
        .upsert_user(pb::UpsertUserRequest {
            user_id: user.clone(),
            ..Default::default()
        })
        .await
        .expect("user");

    // Invalid subscriptions are refused, naming the field.
    let keys = |p256dh: &str, auth: &str| {
        Some(pb::WebPushKeys {
            p256dh: p256dh.into(),
            auth: auth.into(),
        })
    };
    let live_endpoint = format!("http://127.0.0.1:{}/push/live", service.port);
    for (token, k, field) in [
        (
            live_endpoint.as_str(),
            keys("BTBZMqHH6r4Tts7J_aSIgg", &service.auth),
            "web_push.p256dh",
        ),
        (
            live_endpoint.as_str(),
            keys(&service.p256dh, "AAAA"),
            "web_push.auth",
        ),
        (
            "http://push.example/x",
            keys(&service.p256dh, &service.auth),
            "token",
        ),
        (live_endpoint.as_str(), None, "web_push"),
        (r#"{"endpoint": 1}"#, None, "token"),
    ] {
        let status = register(&t, &user, token, k).await.expect_err(field);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with(&format!("{field}:")),
            "{field}: {}",
            status.message()
        );
    }

    // One subscription as endpoint plus keys, one as the browser's JSON.
    register(
        &t,
        &user,
        &live_endpoint,
        keys(&service.p256dh, &service.auth),
    )
    .await
    .expect("endpoint and keys");
    let gone = service.token("/status/410/gone");
    register(&t, &user, &gone, None)
        .await
        .expect("subscription JSON");
    let live = service.token("/push/live");
    assert_eq!(devices(&t, &user).await, {
        let mut both = vec![live.clone(), gone.clone()];
        both.sort();
        both
    });

    let id = t
        .client
        .send(push(&user, "first"))
        .await
        .expect("send")
        .notification_ids[0]
        .clone();
    let status = eventually("both web deliveries settled", WAIT, || async {
        let s = t.client.status(&id).await.ok()?;
        (s.deliveries.len() == 2 && s.deliveries.iter().all(|d| d.state != "retrying")).then_some(s)
    })
    .await;
    let state = |token: &str| {
        status
            .deliveries
            .iter()
            .find(|d| d.target == token)
            .map(|d| d.state.clone())
    };
    assert_eq!(state(&live).as_deref(), Some("sent"), "{status:?}");
    assert_eq!(
        state(&gone).as_deref(),
        Some("invalid_target"),
        "{status:?}"
    );
    assert_eq!(
        devices(&t, &user).await,
        vec![live.clone()],
        "410 tombstones"
    );

    // What the browser decrypted is what was sent.
    let received = service.received();
    assert!(
        received.iter().all(|p| p.get("error").is_none()),
        "{received:?}"
    );
    let at_live: Vec<&Value> = received
        .iter()
        .filter(|p| p["path"] == "/push/live")
        .collect();
    assert_eq!(at_live.len(), 1, "{received:?}");
    let shown: Value =
        serde_json::from_str(at_live[0]["plaintext"].as_str().expect("decrypted")).expect("JSON");
    assert_eq!(shown["notification_id"], id.as_str());
    assert_eq!(shown["title"], "Your order shipped");
    assert_eq!(shown["body"], "It arrives on Tuesday.");

    // Opted out of web push: nothing more reaches the browser.
    t.client
        .set_preference(&user, pb::Channel::Web, "", false)
        .await
        .expect("opt out");
    let second = t
        .client
        .send(push(&user, "second"))
        .await
        .expect("send")
        .notification_ids[0]
        .clone();
    t.read_until::<TrackingEvent>(&t.topic("tracking"), WAIT, |events| {
        events
            .iter()
            .any(|e| e.notification_id == second && e.kind == TrackingKind::Suppressed)
    })
    .await;
    // The enricher wrote the suppression after everything before it; read
    // the web topic to its end: no delivery for the opted-out notification.
    let deliveries = t.read_all::<Delivery>(&t.topic("deliver.web")).await;
    assert_eq!(
        deliveries
            .iter()
            .filter(|d| d.notification_id == id)
            .count(),
        2
    );
    assert!(!deliveries.iter().any(|d| d.notification_id == second));
    t.caught_up("sender.web", &t.topic("deliver.web")).await;
    assert_eq!(
        service.received().len(),
        received.len(),
        "nothing sent after the opt-out"
    );
    t.stop().await;
}

on_every_backend!(web_push_reaches_browsers_and_gone_subscriptions_are_dropped);
