//! The web push provider against a push service stand-in that decrypts
//! every message with the subscriber's private key and verifies the VAPID
//! JWT with independent code (tests/support/webpush_server.py): a payload
//! that does not decrypt or a JWT that does not verify is answered 400 and
//! fails these tests. Then the channel sender on the embedded brokers: a
//! gone subscription is tombstoned, a 429 goes to a retry tier with the
//! push service's Retry-After, and a refused VAPID key holds the channel.

mod support;

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};
use support::{
    delivery,
    sender::{SenderHarness, eventually},
    webpush::PushService,
};
use tidings_config::SendersConfig;
use tidings_kafka::{Stage, StageOptions, now_millis};
use tidings_processors::{
    ChannelSender, Provider, ProviderError,
    senders::{
        http::HttpSettings,
        setup::{Secret, SendLimits},
        webpush::{Urgency, WebPushConfig, WebPushProvider},
    },
};
use tidings_schemas::{
    AvroCodec, Channel,
    records::{Delivery, Priority},
};
use tidings_store::{Device, Platform};
use tidings_telemetry::ProviderFailing;
use tokio_util::sync::CancellationToken;

/// RFC 8291 Appendix A's application-server key pair, as our VAPID key.
const VAPID_PRIVATE: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
const VAPID_PUBLIC: &str =
    "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8";
/// Another valid P-256 key: the push service does not know it.
const OTHER_PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";

fn config(private: &str) -> WebPushConfig {
    WebPushConfig {
        vapid_private_key: Some(Secret::new(private)),
        vapid_private_key_path: None,
        subject: "mailto:ops@tidings.example".into(),
        ttl_secs: 3600,
        urgency: Urgency::Low,
        allow_loopback_http: true,
        http: HttpSettings::default(),
        limits: SendLimits::new(8),
    }
}

fn web_delivery(service: &PushService, path: &str) -> Delivery {
    delivery("web", &service.token(path))
}

#[tokio::test]
async fn the_subscriber_decrypts_what_was_rendered() {
    let service = PushService::start(VAPID_PUBLIC).await;
    let provider = WebPushProvider::new(config(VAPID_PRIVATE)).expect("provider builds");
    let mut d = web_delivery(&service, "/push/sub-1");
    d.collapse_id = Some("order-1042".into());
    let receipt = provider.deliver(&d).await.expect("accepted");
    assert_eq!(receipt.provider_id.as_deref(), Some("/message/1"));

    let mut high = web_delivery(&service, "/push/sub-1");
    high.priority = Priority::High;
    high.expires_at = Some(now_millis() + 600_000);
    high.title = None;
    provider.deliver(&high).await.expect("accepted");

    let got = service.received();
    assert_eq!(got.len(), 2, "{got:?}");
    for push in &got {
        assert!(
            push.get("error").is_none(),
            "the stand-in refused it: {push}"
        );
    }
    let plaintext: Value =
        serde_json::from_str(got[0]["plaintext"].as_str().expect("decrypted")).expect("JSON");
    assert_eq!(
        plaintext,
        json!({
            "notification_id": "n-1",
            "title": "Your order shipped",
            "body": "It arrives on Tuesday.",
            "data": {"order_id": "1042"},
        })
    );
    let headers = &got[0]["headers"];
    assert_eq!(headers["ttl"], "3600");
    assert_eq!(headers["urgency"], "low");
    assert_eq!(headers["topic"], "order-1042");
    let claims = &got[0]["claims"];
    assert_eq!(claims["aud"], format!("http://127.0.0.1:{}", service.port));
    assert_eq!(claims["sub"], "mailto:ops@tidings.example");

    // High priority is urgent; the notification's expiry caps the TTL.
    let second: Value =
        serde_json::from_str(got[1]["plaintext"].as_str().expect("decrypted")).expect("JSON");
    assert_eq!(second.get("title"), None);
    assert_eq!(got[1]["headers"]["urgency"], "high");
    let ttl: u64 = got[1]["headers"]["ttl"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("TTL");
    assert!((590..=600).contains(&ttl), "TTL {ttl}");
    assert_eq!(got[1]["headers"].get("topic"), None);
}

#[tokio::test]
async fn a_jwt_from_another_key_fails_the_stand_in() {
    // The stand-in's checks can fail: signed with a key it was not told of,
    // the request is refused (400: a rejection), and it says why.
    let service = PushService::start(VAPID_PUBLIC).await;
    let provider = WebPushProvider::new(config(OTHER_PRIVATE)).expect("provider builds");
    let r = provider
        .deliver(&web_delivery(&service, "/push/sub-1"))
        .await;
    assert!(matches!(r, Err(ProviderError::Rejected(_))), "{r:?}");
    let got = service.received();
    let error = got[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("not the configured VAPID public key"),
        "{error}"
    );
}

#[tokio::test]
async fn answers_sort_into_provider_errors() {
    let service = PushService::start(VAPID_PUBLIC).await;
    let provider = WebPushProvider::new(config(VAPID_PRIVATE)).expect("provider builds");
    let answer = |code: u16| {
        let d = web_delivery(&service, &format!("/status/{code}/sub"));
        let p = &provider;
        async move { p.deliver(&d).await }
    };
    for code in [404, 410] {
        let r = answer(code).await;
        assert!(
            matches!(r, Err(ProviderError::InvalidTarget(_))),
            "{code}: {r:?}"
        );
    }
    match answer(429).await {
        Err(ProviderError::Transient { retry_after, .. }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(7)));
        }
        other => panic!("429: {other:?}"),
    }
    let r = answer(500).await;
    assert!(
        matches!(
            r,
            Err(ProviderError::Transient {
                retry_after: None,
                ..
            })
        ),
        "500: {r:?}"
    );
    let r = answer(413).await;
    assert!(matches!(r, Err(ProviderError::Rejected(_))), "413: {r:?}");
    for code in [401, 403] {
        match answer(code).await {
            Err(ProviderError::Misconfigured { setting, .. }) => {
                assert_eq!(setting, "providers.web.vapid_private_key");
            }
            other => panic!("{code}: {other:?}"),
        }
    }
    // Every request decrypted and verified: the answers were the scripted
    // ones, not the stand-in refusing a bad message.
    let got = service.received();
    assert_eq!(got.len(), 7);
    assert!(got.iter().all(|p| p.get("error").is_none()), "{got:?}");

    // A subscription that cannot be one is an invalid target, unsent.
    let mut bad = web_delivery(&service, "/push/x");
    bad.target = "https://push.example/not-json".into();
    let r = provider.deliver(&bad).await;
    assert!(matches!(r, Err(ProviderError::InvalidTarget(_))), "{r:?}");
    assert_eq!(service.received().len(), 7);
}

#[test]
fn bad_settings_fail_at_start() {
    let mut c = config("not a key");
    let err = WebPushProvider::new(c.clone())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("vapid_private_key"), "{err}");
    c.vapid_private_key = Some(Secret::new(VAPID_PRIVATE));
    c.subject = "ops@tidings.example".into();
    let err = WebPushProvider::new(c)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("subject"), "{err}");
}

/// The sender tests run one at a time: the `provider_failing` gauge is
/// process-wide, and one test's success would clear the other's alert.
static ONE_SENDER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The web sender stage on the harness's brokers and store.
fn run_sender(
    h: &SenderHarness,
    private: &str,
) -> (
    tokio::task::JoinHandle<Result<(), tidings_kafka::KafkaError>>,
    CancellationToken,
) {
    let provider = WebPushProvider::new(config(private)).expect("provider builds");
    let sender = ChannelSender::new(
        Channel::Web,
        Arc::new(provider),
        h.store.clone(),
        h.topics.clone(),
        AvroCodec::local(),
        SendersConfig::default(),
    );
    let stage = Stage::new(
        &h.cluster,
        &h.kafka,
        h.producer.clone(),
        sender,
        &[h.topics.deliver(Channel::Web).to_owned()],
        h.topics.dead_letter().to_owned(),
        StageOptions {
            max_concurrency: 4,
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
            close_timeout: Duration::from_secs(5),
            ..StageOptions::default()
        },
    )
    .expect("stage");
    let shutdown = CancellationToken::new();
    (tokio::spawn(stage.run(shutdown.clone())), shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sender_tombstones_gone_subscriptions_and_retries_busy_ones() {
    let _one = ONE_SENDER.lock().await;
    let h = SenderHarness::start(1).await;
    let service = PushService::start(VAPID_PUBLIC).await;
    let mut gone = web_delivery(&service, "/status/410/gone");
    gone.user_id = "u-gone".into();
    let mut busy = web_delivery(&service, "/status/429/busy");
    busy.user_id = "u-busy".into();
    let mut fine = web_delivery(&service, "/push/fine");
    fine.user_id = "u-fine".into();
    for d in [&gone, &busy, &fine] {
        h.store
            .contacts
            .register_device(&Device {
                user_id: d.user_id.clone(),
                token: d.target.clone(),
                platform: Platform::Web,
                registered_at: now_millis() - 1000,
                invalidated_at: None,
            })
            .await
            .expect("device registered");
        h.producer
            .send(h.topics.deliver(Channel::Web), &d.user_id, d)
            .await
            .expect("produced");
    }
    let (task, shutdown) = run_sender(&h, VAPID_PRIVATE);
    eventually(
        "all three reach the push service",
        Duration::from_secs(60),
        || service.received().len() >= 3,
    )
    .await;
    // The sender has caught up once the retry tier holds the busy one.
    let codec = AvroCodec::local();
    let started = tokio::time::Instant::now();
    let retried: Delivery = loop {
        let records = h.read_all(h.topics.retry(0)).await;
        if let Some(r) = records.first() {
            assert_eq!(records.len(), 1, "one delivery retried");
            break codec.decode(r).expect("delivery");
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing reached retry tier 0"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(retried.delivery_id, busy.delivery_id);
    let wait = retried.not_before.expect("not_before") - now_millis();
    assert!(wait > 5_000, "Retry-After 7 s honoured: due in {wait} ms");

    let live = |user: &str| {
        let store = h.store.clone();
        let user = user.to_owned();
        async move { store.contacts.live_devices(&user).await.expect("devices") }
    };
    let started = tokio::time::Instant::now();
    while !live("u-gone").await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "410 never tombstoned the subscription"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        live("u-fine").await.len(),
        1,
        "a delivered subscription stays"
    );
    assert_eq!(
        live("u-busy").await.len(),
        1,
        "a busy push service is no reason to drop it"
    );
    assert!(
        h.read_all(h.topics.dead_letter()).await.is_empty(),
        "nothing dead-lettered"
    );
    assert!(service.received().iter().all(|p| p.get("error").is_none()));
    shutdown.cancel();
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_vapid_key_holds_the_channel() {
    let _one = ONE_SENDER.lock().await;
    let h = SenderHarness::start(1).await;
    let service = PushService::start(VAPID_PUBLIC).await;
    let deliveries: Vec<Delivery> = (0..5)
        .map(|i| {
            let mut d = web_delivery(&service, "/status/401/sub");
            d.user_id = format!("u-{i}");
            d
        })
        .collect();
    for d in &deliveries {
        h.producer
            .send(h.topics.deliver(Channel::Web), &d.user_id, d)
            .await
            .expect("produced");
    }
    let alert = || {
        ProviderFailing {
            provider: "webpush",
        }
        .current()
    };
    let (task, shutdown) = run_sender(&h, VAPID_PRIVATE);
    eventually(
        "the channel is held and alerting",
        Duration::from_secs(60),
        || alert() == 1,
    )
    .await;
    shutdown.cancel();
    let _ = task.await;
    h.assert_no_dead_letters_or_retries().await;
    for d in &deliveries {
        let log = h
            .store
            .notification_log
            .get(&d.notification_id)
            .await
            .expect("log");
        assert!(
            log.iter()
                .all(|e| e.state != "sent" && e.state != "dead_lettered"),
            "{log:?}"
        );
    }
}
