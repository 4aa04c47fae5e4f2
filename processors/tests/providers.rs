//! Provider clients against local servers that speak each provider's real
//! protocol (tests/support/): what goes over the wire, and how each answer
//! becomes a `Receipt` or a `ProviderError`.

mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use support::{FakeServer, Reply, delivery};
use tidings_processors::{Provider, ProviderError};
use tidings_schemas::tracking_link::{DeliveryRef, LinkSigner};

/// The `tracking.link_secret` the providers sign receipt tokens with.
const RECEIPT_SECRET: &str = "provider-tests-link-secret";

/// The signer the providers get, and the gateway would verify with.
fn receipts() -> LinkSigner {
    LinkSigner::new(RECEIPT_SECRET, "https://t.example.com")
}

/// The delivery a receipt token should name.
fn delivery_ref(d: &tidings_schemas::records::Delivery) -> DeliveryRef {
    DeliveryRef {
        notification_id: d.notification_id.clone(),
        user_id: d.user_id.clone(),
        template_name: d.template_name.clone(),
        channel: d.channel.clone(),
        target: d.target.clone(),
    }
}

/// A SQLite store where `user` has three in-app items, one of them read:
/// two unread, the badge `[inbox] push_badge` puts on their pushes.
async fn inbox_with_two_unread(
    user: &str,
) -> (
    tempfile::TempDir,
    tidings_processors::senders::inbox::UnreadBadge,
) {
    use tidings_store::{InboxAction, InboxItem, Store, StoreOptions};
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::connect(
        &format!("sqlite://{}/tidings.db", dir.path().display()),
        &StoreOptions::default(),
    )
    .await
    .expect("store");
    for i in 0..3 {
        let item = InboxItem {
            user_id: user.into(),
            notification_id: format!("n-{i}"),
            created_at: 1_000 + i,
            category: None,
            template_name: None,
            title: Some(format!("item {i}")),
            body: None,
            action_url: None,
            avatar_url: None,
            data: Default::default(),
            read_at: None,
            archived_at: None,
        };
        assert!(
            store
                .inbox
                .put(&item, 100, Duration::from_secs(3600))
                .await
                .expect("put")
        );
    }
    assert!(
        store
            .inbox
            .mark(user, "n-0", InboxAction::Read, 2_000)
            .await
            .expect("mark read")
    );
    let badge = tidings_processors::senders::inbox::UnreadBadge::new(store.inbox.clone());
    (dir, badge)
}

fn assert_transient(
    r: Result<tidings_processors::Receipt, ProviderError>,
    retry_after: Option<Duration>,
) {
    match r {
        Err(ProviderError::Transient {
            retry_after: got, ..
        }) => assert_eq!(got, retry_after),
        other => panic!("expected a transient failure, got {other:?}"),
    }
}

fn transient_reason(r: Result<tidings_processors::Receipt, ProviderError>) -> String {
    match r {
        Err(ProviderError::Transient { reason, .. }) => reason,
        other => panic!("expected a transient failure, got {other:?}"),
    }
}

fn assert_invalid_target(r: Result<tidings_processors::Receipt, ProviderError>) -> String {
    match r {
        Err(ProviderError::InvalidTarget(why)) => why,
        other => panic!("expected InvalidTarget, got {other:?}"),
    }
}

fn assert_rejected(r: Result<tidings_processors::Receipt, ProviderError>) -> String {
    match r {
        Err(ProviderError::Rejected(why)) => why,
        other => panic!("expected Rejected, got {other:?}"),
    }
}

/// A configuration failure: returns the setting it names and the reason.
fn assert_misconfigured(
    r: Result<tidings_processors::Receipt, ProviderError>,
) -> (&'static str, String) {
    match r {
        Err(ProviderError::Misconfigured { setting, reason }) => (setting, reason),
        other => panic!("expected Misconfigured, got {other:?}"),
    }
}

/// Sends `n` deliveries at once and returns how long they all took.
async fn send_concurrently(
    provider: Arc<dyn Provider>,
    make: impl Fn(usize) -> tidings_schemas::records::Delivery,
    n: usize,
) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (p, d) = (provider.clone(), make(i));
            tokio::spawn(async move { p.deliver(&d).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("delivered");
    }
    start.elapsed()
}

mod apns {
    use tidings_processors::senders::{
        apns::{ApnsConfig, ApnsProvider, ApnsTransport},
        http::HttpSettings,
        setup::{Secret, SendLimits},
    };
    use tidings_schemas::records::Priority;

    use super::{support::apns as fake, *};

    const DEVICE: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

    fn config(url: String, key_pem: String, limits: SendLimits) -> ApnsConfig {
        ApnsConfig {
            base_url: url,
            transport: ApnsTransport::H2c,
            team_id: fake::TEAM_ID.into(),
            key_id: fake::KEY_ID.into(),
            key_path: None,
            key_pem: Some(Secret::new(key_pem)),
            topic: fake::TOPIC.into(),
            token_refresh_ms: 50 * 60 * 1000,
            http: HttpSettings::default(),
            limits,
        }
    }

    async fn setup(limits: SendLimits) -> (FakeServer<fake::Apns>, ApnsProvider) {
        let (key_pem, public) = fake::signing_key();
        let server = FakeServer::start(|_| fake::Apns::new(public), fake::handle).await;
        let provider =
            ApnsProvider::new(config(server.url(), key_pem, limits)).expect("provider builds");
        (server, provider)
    }

    #[tokio::test]
    async fn sends_an_alert_over_http2_and_reuses_token_and_connection() {
        let (server, apns) = setup(SendLimits::new(10)).await;
        let mut first = delivery("ios", DEVICE);
        first.priority = Priority::High;
        first.collapse_id = Some("order-1042".into());
        first.expires_at = Some(1_900_000_000_123);
        let receipt = apns.deliver(&first).await.expect("accepted");
        assert_eq!(
            receipt.provider_id.as_deref(),
            Some(first.delivery_id.as_str())
        );
        let second = delivery("ios", DEVICE);
        apns.deliver(&second).await.expect("accepted");

        let reqs = server.requests();
        assert_eq!(reqs.len(), 2);
        let r = &reqs[0];
        assert_eq!(r.version, axum::http::Version::HTTP_2);
        assert_eq!(r.path, format!("/3/device/{DEVICE}"));
        assert_eq!(r.header("apns-id"), Some(first.delivery_id.as_str()));
        assert_eq!(r.header("apns-topic"), Some(fake::TOPIC));
        assert_eq!(r.header("apns-push-type"), Some("alert"));
        assert_eq!(r.header("apns-priority"), Some("10"));
        assert_eq!(r.header("apns-collapse-id"), Some("order-1042"));
        assert_eq!(r.header("apns-expiration"), Some("1900000000"));
        let body = r.json().expect("JSON body");
        assert_eq!(body["aps"]["alert"]["title"], "Your order shipped");
        assert_eq!(body["aps"]["alert"]["body"], "It arrives on Tuesday.");
        assert_eq!(body["order_id"], "1042");
        let r2 = &reqs[1];
        assert_eq!(r2.header("apns-priority"), Some("5"));
        assert_eq!(r2.header("apns-collapse-id"), None);
        assert_eq!(r2.header("apns-expiration"), None);
        // One signed token and one HTTP/2 connection for both.
        assert_eq!(r.bearer(), r2.bearer());
        assert_eq!(r.peer, r2.peer);
    }

    #[tokio::test]
    async fn with_push_badge_the_badge_is_the_users_unread_inbox_count() {
        let (server, apns) = setup(SendLimits::new(10)).await;
        let d = delivery("ios", DEVICE);
        let (_dir, badge) = inbox_with_two_unread(&d.user_id).await;
        let apns = apns.with_unread_badge(badge);
        apns.deliver(&d).await.expect("accepted");
        let mut other = delivery("ios", DEVICE);
        other.user_id = "u-without-an-inbox".into();
        apns.deliver(&other).await.expect("accepted");
        let reqs = server.requests();
        let body = reqs[0].json().expect("JSON body");
        assert_eq!(body["aps"]["badge"], 2);
        assert_eq!(body["aps"]["alert"]["title"], "Your order shipped");
        // An empty inbox clears the badge.
        assert_eq!(reqs[1].json().expect("JSON body")["aps"]["badge"], 0);
    }

    #[tokio::test]
    async fn unregistered_and_bad_tokens_are_invalid_targets() {
        let (server, apns) = setup(SendLimits::new(10)).await;
        server
            .state
            .unregistered
            .lock()
            .expect("lock")
            .insert(DEVICE.into());
        let why = assert_invalid_target(apns.deliver(&delivery("ios", DEVICE)).await);
        assert!(why.contains("Unregistered"), "{why}");

        let other = "00ff".repeat(16);
        server.script([Reply::json(
            400,
            serde_json::json!({ "reason": "BadDeviceToken" }),
        )]);
        assert_invalid_target(apns.deliver(&delivery("ios", &other)).await);
        server.script([Reply::json(
            400,
            serde_json::json!({ "reason": "DeviceTokenNotForTopic" }),
        )]);
        assert_invalid_target(apns.deliver(&delivery("ios", &other)).await);
        // Not hex: refused before it reaches the URL.
        assert_invalid_target(apns.deliver(&delivery("ios", "not/a/token")).await);
        assert_eq!(server.requests().len(), 3);
    }

    #[tokio::test]
    async fn throttling_and_outages_are_transient() {
        let (server, apns) = setup(SendLimits::new(10)).await;
        server.script([
            Reply::json(429, serde_json::json!({ "reason": "TooManyRequests" }))
                .header("retry-after", "7"),
        ]);
        assert_transient(
            apns.deliver(&delivery("ios", DEVICE)).await,
            Some(Duration::from_secs(7)),
        );
        server.script([Reply::json(
            503,
            serde_json::json!({ "reason": "ServiceUnavailable" }),
        )]);
        assert_transient(apns.deliver(&delivery("ios", DEVICE)).await, None);
        server.script([Reply::json(
            500,
            serde_json::json!({ "reason": "InternalServerError" }),
        )]);
        assert_transient(apns.deliver(&delivery("ios", DEVICE)).await, None);
    }

    /// No server, and one that takes the connection and never answers:
    /// both may pass, and the second within the configured timeout.
    #[tokio::test]
    async fn no_server_and_a_silent_one_are_transient() {
        let (key_pem, _) = fake::signing_key();
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let apns = ApnsProvider::new(config(
            format!("http://127.0.0.1:{port}"),
            key_pem.clone(),
            SendLimits::new(4),
        ))
        .expect("provider builds");
        let why = transient_reason(apns.deliver(&delivery("ios", DEVICE)).await);
        assert!(why.contains("cannot connect"), "{why}");

        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = silent.local_addr().expect("addr").port();
        let hold = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((sock, _)) = silent.accept().await {
                open.push(sock);
            }
        });
        let mut c = config(
            format!("http://127.0.0.1:{port}"),
            key_pem,
            SendLimits::new(4),
        );
        c.http.timeout_ms = 300;
        let apns = ApnsProvider::new(c).expect("provider builds");
        let start = Instant::now();
        let why = transient_reason(apns.deliver(&delivery("ios", DEVICE)).await);
        assert!(why.contains("timed out after 300 ms"), "{why}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "took {:?}",
            start.elapsed()
        );
        hold.abort();
    }

    #[tokio::test]
    async fn other_client_errors_are_rejections() {
        let (server, apns) = setup(SendLimits::new(10)).await;
        server.script([Reply::json(
            400,
            serde_json::json!({ "reason": "BadCollapseId" }),
        )]);
        let why = assert_rejected(apns.deliver(&delivery("ios", DEVICE)).await);
        assert!(why.contains("BadCollapseId"), "{why}");
        // Too large for APNs: refused locally, the server never sees it.
        let mut big = delivery("ios", DEVICE);
        big.body = Some("x".repeat(5000));
        assert_rejected(apns.deliver(&big).await);
        assert_eq!(server.requests().len(), 1);
    }

    #[tokio::test]
    async fn an_expired_provider_token_is_replaced_on_retry() {
        let (server, apns) = setup(SendLimits::new(10)).await;
        server.script([Reply::json(
            403,
            serde_json::json!({ "reason": "ExpiredProviderToken" }),
        )]);
        assert_transient(apns.deliver(&delivery("ios", DEVICE)).await, None);
        apns.deliver(&delivery("ios", DEVICE))
            .await
            .expect("accepted with a new token");
        let reqs = server.requests();
        assert_ne!(reqs[0].bearer(), reqs[1].bearer());
    }

    #[tokio::test]
    async fn a_wrong_signing_key_is_a_config_problem() {
        let (_, public) = fake::signing_key();
        let (other_key, _) = fake::signing_key();
        let server = FakeServer::start(|_| fake::Apns::new(public), fake::handle).await;
        let apns =
            ApnsProvider::new(config(server.url(), other_key, SendLimits::new(1))).expect("builds");
        let (setting, why) = assert_misconfigured(apns.deliver(&delivery("ios", DEVICE)).await);
        assert!(why.contains("InvalidProviderToken"), "{why}");
        assert!(setting.contains("providers.ios.key_id"), "{setting}");
    }

    #[tokio::test]
    async fn a_topic_the_key_may_not_use_is_a_config_problem() {
        let (server, apns) = setup(SendLimits::new(10)).await;
        for reason in ["BadTopic", "TopicDisallowed"] {
            server.script([Reply::json(400, serde_json::json!({ "reason": reason }))]);
            let (setting, why) = assert_misconfigured(apns.deliver(&delivery("ios", DEVICE)).await);
            assert_eq!(setting, "providers.ios.topic");
            assert!(why.contains(reason), "{why}");
        }
        server.script([Reply::json(
            403,
            serde_json::json!({ "reason": "Forbidden" }),
        )]);
        assert_misconfigured(apns.deliver(&delivery("ios", DEVICE)).await);
    }

    #[tokio::test]
    async fn concurrency_stays_within_the_limit() {
        let (server, apns) = setup(SendLimits::new(3)).await;
        server.delay(Duration::from_millis(100));
        send_concurrently(Arc::new(apns), |_| delivery("ios", DEVICE), 12).await;
        assert_eq!(server.max_in_flight(), 3, "streams in flight");
        // All twelve multiplexed over one connection.
        let reqs = server.requests();
        assert!(reqs.iter().all(|r| r.peer == reqs[0].peer));
    }

    #[tokio::test]
    async fn the_production_transport_is_tls_with_alpn_h2() {
        let (key_pem, public) = fake::signing_key();
        let server = FakeServer::start_tls(|_| fake::Apns::new(public), fake::handle).await;
        let mut c = config(server.url(), key_pem, SendLimits::new(4));
        c.transport = ApnsTransport::Tls;
        // Without the test CA the certificate is not trusted.
        let untrusting = ApnsProvider::new(c.clone()).expect("builds");
        match untrusting.deliver(&delivery("ios", DEVICE)).await {
            Err(ProviderError::Transient { reason, .. }) => {
                assert!(reason.contains("certificate"), "{reason}")
            }
            other => panic!("expected a transient TLS failure, got {other:?}"),
        }
        c.http.extra_root_ca_path = Some(support::test_ca_path());
        let apns = ApnsProvider::new(c).expect("builds");
        apns.deliver(&delivery("ios", DEVICE))
            .await
            .expect("accepted over TLS");
        let reqs = server.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].version, axum::http::Version::HTTP_2);
    }

    #[tokio::test]
    async fn setup_errors_name_the_setting() {
        let (key_pem, _) = fake::signing_key();
        let mut c = config(
            "https://api.push.apple.com".into(),
            key_pem.clone(),
            SendLimits::new(1),
        );
        let err = ApnsProvider::new(c.clone())
            .err()
            .expect("h2c with https is refused");
        assert!(err.to_string().contains("base_url"), "{err}");
        c.transport = ApnsTransport::Tls;
        ApnsProvider::new(c.clone()).expect("production settings build");
        c.key_pem = Some(Secret::new(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ));
        let err = ApnsProvider::new(c.clone()).err().expect("bad key");
        assert!(err.to_string().contains("signing key"), "{err}");
        c.key_pem = None;
        assert!(ApnsProvider::new(c).is_err(), "no key at all");
        let parsed: ApnsConfig = serde_json::from_value(serde_json::json!({
            "team_id": "T", "key_id": "K", "key_path": "/keys/AuthKey_K.p8", "topic": "com.example.app"
        }))
        .expect("minimal config parses");
        assert_eq!(parsed.base_url, "https://api.push.apple.com");
        assert_eq!(parsed.transport, ApnsTransport::Tls);
        assert_eq!(parsed.limits.max_in_flight, 100);
    }
}

mod fcm {
    use tidings_processors::senders::{
        fcm::{FcmConfig, FcmProvider},
        http::HttpSettings,
        setup::{Secret, SendLimits},
    };
    use tidings_schemas::records::Priority;

    use super::{support::fcm as fake, *};

    const TOKEN: &str = "fcm-registration-token:APA91bHun4MxP5egoKMwt2KZFBaFUH";

    async fn setup(limits: SendLimits) -> (FakeServer<fake::Fcm>, FcmProvider) {
        let server = FakeServer::start(fake::Fcm::new, fake::handle).await;
        let provider = FcmProvider::new(FcmConfig {
            service_account_path: None,
            service_account_json: Some(Secret::new(fake::service_account(&server.state.token_uri))),
            project_id: None,
            base_url: server.url(),
            http: HttpSettings::default(),
            limits,
        })
        .expect("provider builds");
        (server, provider)
    }

    #[tokio::test]
    async fn sends_a_message_with_one_access_token_for_many_sends() {
        let (server, fcm) = setup(SendLimits::new(10)).await;
        let mut d = delivery("android", TOKEN);
        d.priority = Priority::High;
        d.collapse_id = Some("order-1042".into());
        d.expires_at = Some((support::unix_now() as i64 + 600) * 1000);
        let receipt = fcm.deliver(&d).await.expect("accepted");
        let id = receipt.provider_id.expect("message name");
        assert!(
            id.starts_with(&format!("projects/{}/messages/", fake::PROJECT)),
            "{id}"
        );
        fcm.deliver(&delivery("android", TOKEN))
            .await
            .expect("accepted");

        assert_eq!(
            server.state.issued(),
            1,
            "token endpoint hit once for two sends"
        );
        let sends = server.requests_to("/v1/");
        assert_eq!(sends.len(), 2);
        let r = &sends[0];
        assert_eq!(
            r.path,
            format!("/v1/projects/{}/messages:send", fake::PROJECT)
        );
        assert_eq!(r.bearer(), Some("ya29.fake-access-token-1"));
        assert_eq!(r.bearer(), sends[1].bearer());
        let m = &r.json().expect("JSON")["message"];
        assert_eq!(m["token"], TOKEN);
        assert_eq!(m["notification"]["title"], "Your order shipped");
        assert_eq!(m["notification"]["body"], "It arrives on Tuesday.");
        assert_eq!(m["data"]["order_id"], "1042");
        assert_eq!(m["android"]["priority"], "HIGH");
        assert_eq!(m["android"]["collapse_key"], "order-1042");
        let ttl = m["android"]["ttl"].as_str().expect("ttl");
        let secs: u64 = ttl
            .strip_suffix('s')
            .and_then(|s| s.parse().ok())
            .expect("ttl like 599s");
        assert!((590..=600).contains(&secs), "{ttl}");
    }

    #[tokio::test]
    async fn with_push_badge_the_data_carries_the_users_unread_inbox_count() {
        let (server, fcm) = setup(SendLimits::new(10)).await;
        let d = delivery("android", TOKEN);
        let (_dir, badge) = inbox_with_two_unread(&d.user_id).await;
        fcm.with_unread_badge(badge)
            .deliver(&d)
            .await
            .expect("accepted");
        let sends = server.requests_to("/v1/");
        let m = &sends[0].json().expect("JSON")["message"];
        assert_eq!(m["data"]["unread_count"], "2");
        assert_eq!(m["data"]["order_id"], "1042", "beside the caller's data");
    }

    #[tokio::test]
    async fn unregistered_and_invalid_tokens_are_invalid_targets() {
        let (server, fcm) = setup(SendLimits::new(10)).await;
        server
            .state
            .unregistered
            .lock()
            .expect("lock")
            .insert(TOKEN.into());
        let why = assert_invalid_target(fcm.deliver(&delivery("android", TOKEN)).await);
        assert!(why.contains("UNREGISTERED"), "{why}");
        // The fake, like FCM, calls a malformed token INVALID_ARGUMENT.
        assert_invalid_target(fcm.deliver(&delivery("android", "short")).await);
        // An INVALID_ARGUMENT about the message is the message's fault.
        server.script([fake::google_error(
            400,
            "INVALID_ARGUMENT",
            "Invalid value at 'message.android.ttl'",
            Some("INVALID_ARGUMENT"),
        )]);
        assert_rejected(
            fcm.deliver(&delivery("android", "another-valid-token"))
                .await,
        );
    }

    #[tokio::test]
    async fn quota_and_outages_are_transient() {
        let (server, fcm) = setup(SendLimits::new(10)).await;
        server.script([fake::google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded",
            Some("QUOTA_EXCEEDED"),
        )
        .header("retry-after", "7")]);
        assert_transient(
            fcm.deliver(&delivery("android", TOKEN)).await,
            Some(Duration::from_secs(7)),
        );
        server.script([fake::google_error(
            503,
            "UNAVAILABLE",
            "The service is currently unavailable.",
            Some("UNAVAILABLE"),
        )]);
        assert_transient(fcm.deliver(&delivery("android", TOKEN)).await, None);
    }

    #[tokio::test]
    async fn a_401_refreshes_the_token_once() {
        let (server, fcm) = setup(SendLimits::new(10)).await;
        fcm.deliver(&delivery("android", TOKEN))
            .await
            .expect("accepted");
        server.state.revoke_all();
        fcm.deliver(&delivery("android", TOKEN))
            .await
            .expect("accepted after a refresh");
        assert_eq!(server.state.issued(), 2);
        let sends = server.requests_to("/v1/");
        assert_eq!(sends.len(), 3, "the 401, then the retry with the new token");
        assert_eq!(sends[2].bearer(), Some("ya29.fake-access-token-2"));

        // Still 401 with a fresh token: the credentials are wrong; no loop.
        let unauthorized = fake::google_error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
            None,
        );
        server.state.revoke_all();
        server.script([unauthorized]);
        let (setting, why) = assert_misconfigured(fcm.deliver(&delivery("android", TOKEN)).await);
        assert!(
            setting.contains("providers.android.service_account"),
            "{setting}"
        );
        assert!(why.contains("401"), "{why}");
        assert_eq!(server.state.issued(), 3);
        assert_eq!(server.requests_to("/v1/").len(), 5);
    }

    #[tokio::test]
    async fn a_project_without_rights_or_a_refused_key_is_a_config_problem() {
        let server = FakeServer::start(fake::Fcm::new, fake::handle).await;
        let provider = |project_id: Option<&str>, sa: String| {
            FcmProvider::new(FcmConfig {
                service_account_path: None,
                service_account_json: Some(Secret::new(sa)),
                project_id: project_id.map(Into::into),
                base_url: server.url(),
                http: HttpSettings::default(),
                limits: SendLimits::new(1),
            })
            .expect("builds")
        };
        // 403 PERMISSION_DENIED from the send endpoint.
        let other_project = provider(
            Some("someone-elses-project"),
            fake::service_account(&server.state.token_uri),
        );
        let (setting, why) =
            assert_misconfigured(other_project.deliver(&delivery("android", TOKEN)).await);
        assert!(
            why.contains("403") && why.contains("PERMISSION_DENIED"),
            "{why}"
        );
        assert!(setting.contains("service_account"), "{setting}");
        // 400 invalid_grant from the token endpoint: a key Google refuses.
        let mut sa: serde_json::Value =
            serde_json::from_str(&fake::service_account(&server.state.token_uri)).unwrap();
        sa["client_email"] = "someone-else@example.iam.gserviceaccount.com".into();
        let refused = provider(None, sa.to_string());
        let (_, why) = assert_misconfigured(refused.deliver(&delivery("android", TOKEN)).await);
        assert!(
            why.contains("token endpoint") && why.contains("invalid_grant"),
            "{why}"
        );
        assert!(
            server.requests_to("/v1/").len() == 1,
            "no send without a token"
        );
    }

    #[tokio::test]
    async fn a_failing_token_endpoint_is_transient() {
        let (server, _) = setup(SendLimits::new(1)).await;
        // A token_uri where no token endpoint answers (404).
        let sa = fake::service_account(&format!("{}/no-such-token-endpoint", server.url()));
        let fcm = FcmProvider::new(FcmConfig {
            service_account_path: None,
            service_account_json: Some(Secret::new(sa)),
            project_id: None,
            base_url: server.url(),
            http: HttpSettings::default(),
            limits: SendLimits::new(1),
        })
        .expect("builds");
        let r = fcm.deliver(&delivery("android", TOKEN)).await;
        match r {
            Err(ProviderError::Transient { reason, .. }) => {
                assert!(reason.contains("token endpoint"), "{reason}")
            }
            other => panic!("expected transient, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn concurrency_stays_within_the_limit() {
        let (server, fcm) = setup(SendLimits::new(4)).await;
        server.delay(Duration::from_millis(100));
        send_concurrently(Arc::new(fcm), |_| delivery("android", TOKEN), 12).await;
        assert_eq!(server.max_in_flight(), 4);
        assert_eq!(
            server.state.issued(),
            1,
            "concurrent sends share one token fetch"
        );
    }

    #[tokio::test]
    async fn setup_reads_the_service_account() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("sa.json");
        std::fs::write(
            &path,
            fake::service_account("https://oauth2.googleapis.com/token"),
        )
        .expect("write");
        let parsed: FcmConfig =
            serde_json::from_value(serde_json::json!({ "service_account_path": path }))
                .expect("minimal config parses");
        assert_eq!(parsed.base_url, "https://fcm.googleapis.com");
        FcmProvider::new(parsed.clone()).expect("builds from a file");
        let mut bad = parsed;
        bad.service_account_path = Some(dir.path().join("missing.json"));
        let err = FcmProvider::new(bad).err().expect("missing file");
        assert!(err.to_string().contains("service_account_path"), "{err}");
    }
}

mod twilio {
    use tidings_processors::senders::{
        http::HttpSettings,
        setup::{Secret, SendLimits},
        twilio::{TwilioConfig, TwilioProvider},
    };

    use super::{support::twilio as fake, *};

    const TO: &str = "+14155550123";

    fn config(url: String, limits: SendLimits) -> TwilioConfig {
        TwilioConfig {
            account_sid: fake::ACCOUNT_SID.into(),
            auth_token: Secret::new(fake::AUTH_TOKEN),
            from: Some(fake::FROM.into()),
            messaging_service_sid: None,
            status_callback: None,
            base_url: url,
            http: HttpSettings::default(),
            limits,
        }
    }

    async fn setup(limits: SendLimits) -> (FakeServer<fake::Twilio>, TwilioProvider) {
        let server = FakeServer::start(|_| fake::Twilio, fake::handle).await;
        let provider =
            TwilioProvider::new(config(server.url(), limits), receipts()).expect("provider builds");
        (server, provider)
    }

    #[tokio::test]
    async fn sends_an_sms_and_returns_the_message_sid() {
        let (server, twilio) = setup(SendLimits::new(4)).await;
        let receipt = twilio
            .deliver(&delivery("sms", TO))
            .await
            .expect("accepted");
        let sid = receipt.provider_id.expect("sid");
        assert!(sid.starts_with("SM") && sid.len() == 34, "{sid}");
        let r = &server.requests()[0];
        assert_eq!(
            r.path,
            format!("/2010-04-01/Accounts/{}/Messages.json", fake::ACCOUNT_SID)
        );
        let form = r.form();
        assert_eq!(form["To"], TO);
        assert_eq!(form["From"], fake::FROM);
        assert_eq!(form["Body"], "It arrives on Tuesday.");
        assert!(
            !form.contains_key("StatusCallback"),
            "no status_callback configured, no StatusCallback sent"
        );
    }

    #[tokio::test]
    async fn each_status_callback_carries_a_token_naming_its_delivery() {
        const HOOK: &str = "https://hooks.example.com/webhooks/twilio/status";
        let server = FakeServer::start(|_| fake::Twilio, fake::handle).await;
        let mut c = config(server.url(), SendLimits::new(2));
        c.status_callback = Some(HOOK.into());
        let twilio = TwilioProvider::new(c, receipts()).expect("builds");
        let mut first = delivery("sms", TO);
        first.template_name = Some("order-shipped".into());
        let mut second = delivery("sms", "+14155550199");
        second.notification_id = "n-2".into();
        twilio.deliver(&first).await.expect("accepted");
        twilio.deliver(&second).await.expect("accepted");

        let callbacks: Vec<String> = server
            .requests()
            .iter()
            .map(|r| r.form()["StatusCallback"].clone())
            .collect();
        let token = |cb: &str| {
            cb.strip_prefix(HOOK)
                .and_then(|q| q.strip_prefix("?d="))
                .unwrap_or_else(|| panic!("{cb} is not {HOOK}?d=<token>"))
                .to_owned()
        };
        let (t1, t2) = (token(&callbacks[0]), token(&callbacks[1]));
        assert_eq!(
            receipts().verify_receipt(&t1),
            Ok(delivery_ref(&first)),
            "the token names the first delivery"
        );
        assert_eq!(receipts().verify_receipt(&t1).unwrap().channel, "sms");
        assert_eq!(
            receipts()
                .verify_receipt(&t1)
                .unwrap()
                .template_name
                .as_deref(),
            Some("order-shipped")
        );
        assert_eq!(receipts().verify_receipt(&t2), Ok(delivery_ref(&second)));
        // Signed with the tracking secret: another secret refuses it, and it
        // is no click or open token.
        assert!(
            LinkSigner::new("another-secret", "https://t.example.com")
                .verify_receipt(&t1)
                .is_err()
        );
        assert!(receipts().verify(&t1).is_err());

        // A callback URL with a query of its own keeps it.
        let server = FakeServer::start(|_| fake::Twilio, fake::handle).await;
        let mut c = config(server.url(), SendLimits::new(1));
        c.status_callback = Some(format!("{HOOK}?region=eu"));
        TwilioProvider::new(c, receipts())
            .expect("builds")
            .deliver(&first)
            .await
            .expect("accepted");
        let cb = server.requests()[0].form()["StatusCallback"].clone();
        let t = cb
            .strip_prefix(&format!("{HOOK}?region=eu&d="))
            .unwrap_or_else(|| panic!("{cb}"));
        assert_eq!(receipts().verify_receipt(t), Ok(delivery_ref(&first)));

        // A callback Twilio could not post to is refused at start.
        let mut c = config(server.url(), SendLimits::new(1));
        c.status_callback = Some("/webhooks/twilio/status".into());
        let err = TwilioProvider::new(c, receipts())
            .err()
            .expect("a relative status_callback is refused");
        assert!(err.to_string().contains("status_callback"), "{err}");
    }

    #[tokio::test]
    async fn bad_numbers_are_invalid_targets() {
        let (server, twilio) = setup(SendLimits::new(4)).await;
        let why = assert_invalid_target(twilio.deliver(&delivery("sms", "555-0123")).await);
        assert!(why.contains("21211"), "{why}");
        server.script([fake::error(
            400,
            21614,
            "'To' number is not a valid mobile number",
        )]);
        assert_invalid_target(twilio.deliver(&delivery("sms", TO)).await);
        // Other 400s are the message's fault.
        server.script([fake::error(
            400,
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        )]);
        assert_rejected(twilio.deliver(&delivery("sms", TO)).await);
    }

    #[tokio::test]
    async fn throttling_and_outages_are_transient() {
        let (server, twilio) = setup(SendLimits::new(4)).await;
        server.script([fake::error(429, 20429, "Too Many Requests").header("Retry-After", "7")]);
        assert_transient(
            twilio.deliver(&delivery("sms", TO)).await,
            Some(Duration::from_secs(7)),
        );
        server.script([fake::error(503, 20503, "Service unavailable")]);
        assert_transient(twilio.deliver(&delivery("sms", TO)).await, None);
    }

    #[tokio::test]
    async fn speaks_tls_to_https_endpoints() {
        let server = FakeServer::start_tls(|_| fake::Twilio, fake::handle).await;
        let mut c = config(server.url(), SendLimits::new(1));
        c.http.extra_root_ca_path = Some(support::test_ca_path());
        TwilioProvider::new(c, receipts())
            .expect("builds")
            .deliver(&delivery("sms", TO))
            .await
            .expect("accepted over TLS");
        // ALPN offers h2 first, and the server takes it.
        assert_eq!(server.requests()[0].version, axum::http::Version::HTTP_2);
    }

    #[tokio::test]
    async fn wrong_credentials_are_a_config_problem() {
        let server = FakeServer::start(|_| fake::Twilio, fake::handle).await;
        let mut c = config(server.url(), SendLimits::new(1));
        c.auth_token = Secret::new("wrong");
        let twilio = TwilioProvider::new(c, receipts()).expect("builds");
        let (setting, why) = assert_misconfigured(twilio.deliver(&delivery("sms", TO)).await);
        assert!(why.contains("401") && why.contains("20003"), "{why}");
        assert!(setting.contains("providers.sms.auth_token"), "{setting}");
        // 403: the account may not do this (e.g. a suspended account).
        let (server, twilio) = setup(SendLimits::new(1)).await;
        server.script([fake::error(403, 20005, "Account not active")]);
        let (_, why) = assert_misconfigured(twilio.deliver(&delivery("sms", TO)).await);
        assert!(why.contains("20005"), "{why}");
    }

    #[tokio::test]
    async fn messaging_service_instead_of_a_from_number() {
        let server = FakeServer::start(|_| fake::Twilio, fake::handle).await;
        let mut c = config(server.url(), SendLimits::new(1));
        c.from = None;
        c.messaging_service_sid = Some("MG0123456789abcdef0123456789abcdef".into());
        TwilioProvider::new(c, receipts())
            .expect("builds")
            .deliver(&delivery("sms", TO))
            .await
            .expect("accepted");
        let form = server.requests()[0].form();
        assert_eq!(
            form.get("MessagingServiceSid").map(String::as_str),
            Some("MG0123456789abcdef0123456789abcdef")
        );
        assert!(!form.contains_key("From"));
    }

    #[tokio::test]
    async fn concurrency_and_rate_stay_within_the_limits() {
        let (server, twilio) = setup(SendLimits::new(2)).await;
        server.delay(Duration::from_millis(80));
        send_concurrently(Arc::new(twilio), |_| delivery("sms", TO), 8).await;
        assert_eq!(server.max_in_flight(), 2);

        // 10/s with a one-second burst: 15 sends need about half a second
        // more than the burst covers.
        let server = FakeServer::start(|_| fake::Twilio, fake::handle).await;
        let twilio = TwilioProvider::new(
            config(
                server.url(),
                SendLimits {
                    max_in_flight: 50,
                    rate_per_sec: Some(10.0),
                },
            ),
            receipts(),
        )
        .expect("builds");
        let took = send_concurrently(Arc::new(twilio), |_| delivery("sms", TO), 15).await;
        assert!(
            took >= Duration::from_millis(400),
            "15 sends at 10/s took only {took:?}"
        );
        assert_eq!(server.requests().len(), 15);
    }
}

mod sendgrid {
    use tidings_processors::senders::{
        http::HttpSettings,
        sendgrid::{SendGridConfig, SendGridProvider},
        setup::{Secret, SendLimits},
    };

    use super::{support::sendgrid as fake, *};

    const TO: &str = "ada@example.org";

    fn config(url: String, limits: SendLimits) -> SendGridConfig {
        SendGridConfig {
            api_key: Secret::new(fake::API_KEY),
            from_email: fake::FROM.into(),
            from_name: Some("Tidings".into()),
            reply_to: None,
            sandbox_mode: false,
            base_url: url,
            http: HttpSettings::default(),
            limits,
            webhook_verification_key: None,
        }
    }

    async fn setup(limits: SendLimits) -> (FakeServer<fake::SendGrid>, SendGridProvider) {
        let server = FakeServer::start(|_| fake::SendGrid, fake::handle).await;
        let provider = SendGridProvider::new(config(server.url(), limits), receipts())
            .expect("provider builds");
        (server, provider)
    }

    #[tokio::test]
    async fn sends_text_and_html_and_returns_the_message_id() {
        let (server, sg) = setup(SendLimits::new(4)).await;
        let d = delivery("email", TO);
        let receipt = sg.deliver(&d).await.expect("accepted");
        assert!(
            receipt
                .provider_id
                .expect("X-Message-Id")
                .starts_with("sg-")
        );
        let mail = server.requests()[0].json().expect("JSON");
        assert_eq!(mail["personalizations"][0]["to"][0]["email"], TO);
        let custom_args = &mail["personalizations"][0]["custom_args"];
        assert_eq!(custom_args["delivery_id"], d.delivery_id.as_str());
        let token = custom_args["tidings_receipt"]
            .as_str()
            .expect("a receipt token in custom_args");
        assert_eq!(receipts().verify_receipt(token), Ok(delivery_ref(&d)));
        assert!(
            LinkSigner::new("another-secret", "x")
                .verify_receipt(token)
                .is_err()
        );
        assert_eq!(mail["from"]["email"], fake::FROM);
        assert_eq!(mail["from"]["name"], "Tidings");
        assert_eq!(mail["subject"], "Order 1042 shipped");
        assert_eq!(mail["content"][0]["type"], "text/plain");
        assert_eq!(mail["content"][0]["value"], "It arrives on Tuesday.");
        assert_eq!(mail["content"][1]["type"], "text/html");
        assert_eq!(
            mail["content"][1]["value"],
            "<p>It arrives on <b>Tuesday</b>.</p>"
        );
    }

    #[tokio::test]
    async fn errors_map_by_status_and_field() {
        let (server, sg) = setup(SendLimits::new(4)).await;
        // The address is what SendGrid blames.
        let why = assert_invalid_target(sg.deliver(&delivery("email", "ada@nowhere")).await);
        assert!(why.contains("personalizations.0.to.0.email"), "{why}");
        server.script([fake::error(
            400,
            "The content value must be a string at least one character in length.",
            Some("content.0.value"),
        )]);
        assert_rejected(sg.deliver(&delivery("email", TO)).await);
        server.script([fake::error(429, "too many requests", None).header("Retry-After", "7")]);
        assert_transient(
            sg.deliver(&delivery("email", TO)).await,
            Some(Duration::from_secs(7)),
        );
        server.script([fake::error(503, "unavailable", None)]);
        assert_transient(sg.deliver(&delivery("email", TO)).await, None);
        server.script([fake::error(
            403,
            "The from address does not match a verified Sender Identity.",
            Some("from"),
        )]);
        let (setting, why) = assert_misconfigured(sg.deliver(&delivery("email", TO)).await);
        assert!(why.contains("verified Sender Identity"), "{why}");
        assert!(setting.contains("providers.email.from_email"), "{setting}");
    }

    #[tokio::test]
    async fn a_wrong_key_is_a_config_problem() {
        let server = FakeServer::start(|_| fake::SendGrid, fake::handle).await;
        let mut c = config(server.url(), SendLimits::new(1));
        c.api_key = Secret::new("SG.revoked");
        let (setting, why) = assert_misconfigured(
            SendGridProvider::new(c, receipts())
                .expect("builds")
                .deliver(&delivery("email", TO))
                .await,
        );
        assert!(why.contains("401"), "{why}");
        assert_eq!(setting, "providers.email.api_key");
    }

    #[tokio::test]
    async fn concurrency_stays_within_the_limit() {
        let (server, sg) = setup(SendLimits::new(3)).await;
        server.delay(Duration::from_millis(80));
        send_concurrently(Arc::new(sg), |_| delivery("email", TO), 9).await;
        assert_eq!(server.max_in_flight(), 3);
    }
}

mod smtp {
    use tidings_processors::senders::{
        setup::{Secret, SendLimits},
        smtp::{SmtpConfig, SmtpProvider, SmtpSecurity},
    };

    use super::{support::smtp::SmtpServer, *};

    const TO: &str = "ada@example.org";

    fn config(port: u16) -> SmtpConfig {
        SmtpConfig {
            host: "127.0.0.1".into(),
            port: Some(port),
            security: SmtpSecurity::None,
            username: None,
            password: None,
            from: "Tidings <notifications@example.com>".into(),
            reply_to: None,
            hello_name: Some("sender.test".into()),
            timeout_ms: 10_000,
            extra_root_ca_path: None,
            limits: SendLimits::new(4),
        }
    }

    #[tokio::test]
    async fn sends_a_multipart_mail() {
        let server = SmtpServer::start(&[]).await;
        let smtp = SmtpProvider::new(config(server.port)).expect("builds");
        let d = delivery("email", TO);
        let receipt = smtp.deliver(&d).await.expect("accepted");
        let reply = receipt.provider_id.expect("server reply");
        assert!(reply.contains("queued as TEST0001"), "{reply}");

        let got = server.received();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["mail_from"], "notifications@example.com");
        assert_eq!(got[0]["rcpt_tos"][0], TO);
        let data = got[0]["data"].as_str().expect("data");
        assert!(data.contains("Subject: Order 1042 shipped"), "{data}");
        assert!(data.contains("To: ada@example.org"), "{data}");
        assert!(
            data.contains(&format!("Message-ID: <{}@example.com>", d.delivery_id)),
            "{data}"
        );
        assert!(data.contains("multipart/alternative"), "{data}");
        assert!(data.contains("Content-Type: text/plain"), "{data}");
        assert!(data.contains("Content-Type: text/html"), "{data}");
        assert!(data.contains("It arrives on Tuesday."), "{data}");
        assert_eq!(got[0]["tls"], serde_json::Value::Null, "plaintext");
    }

    #[tokio::test]
    async fn a_rejected_mailbox_is_an_invalid_target_and_4xx_is_transient() {
        let server = SmtpServer::start(&[
            "--reject",
            "gone@example.org",
            "--tempfail",
            "busy@example.org",
        ])
        .await;
        let smtp = SmtpProvider::new(config(server.port)).expect("builds");
        let why = assert_invalid_target(smtp.deliver(&delivery("email", "gone@example.org")).await);
        assert!(why.contains("550"), "{why}");
        assert_transient(
            smtp.deliver(&delivery("email", "busy@example.org")).await,
            None,
        );
        assert_invalid_target(smtp.deliver(&delivery("email", "not an address")).await);
        // The pooled connection still works after the failures.
        smtp.deliver(&delivery("email", TO))
            .await
            .expect("accepted");
        assert_eq!(server.received().len(), 1);
    }

    #[tokio::test]
    async fn authenticates_and_reports_wrong_credentials_as_config() {
        let server = SmtpServer::start(&["--auth", "sender:s3cret"]).await;
        let mut c = config(server.port);
        c.username = Some("sender".into());
        c.password = Some(Secret::new("s3cret"));
        SmtpProvider::new(c.clone())
            .expect("builds")
            .deliver(&delivery("email", TO))
            .await
            .expect("accepted");
        c.password = Some(Secret::new("wrong"));
        let (setting, why) = assert_misconfigured(
            SmtpProvider::new(c)
                .expect("builds")
                .deliver(&delivery("email", TO))
                .await,
        );
        assert!(why.contains("535"), "{why}");
        assert!(setting.contains("providers.email.password"), "{setting}");
        assert_eq!(server.received().len(), 1);
    }

    /// The production settings: `security` with the test CA trusted, as
    /// `extra_root_ca_path` trusts a private relay's CA.
    fn tls_config(port: u16, security: SmtpSecurity) -> SmtpConfig {
        SmtpConfig {
            security,
            extra_root_ca_path: Some(support::test_ca_path()),
            ..config(port)
        }
    }

    fn transient_reason(r: Result<tidings_processors::Receipt, ProviderError>) -> String {
        match r {
            Err(ProviderError::Transient {
                reason,
                retry_after: None,
            }) => reason,
            other => panic!("expected a transient failure, got {other:?}"),
        }
    }

    /// The TLS version a received message came over, from the server's side.
    fn tls_version(message: &serde_json::Value) -> &str {
        let v = message["tls"]
            .as_str()
            .unwrap_or_else(|| panic!("the server got this message in plaintext: {message}"));
        assert!(v.starts_with("TLSv1."), "{v}");
        v
    }

    #[tokio::test]
    async fn starttls_sends_over_tls_to_a_server_that_requires_it() {
        let server = SmtpServer::start(&["--tls", "starttls"]).await;
        let smtp =
            SmtpProvider::new(tls_config(server.port, SmtpSecurity::Starttls)).expect("builds");
        let receipt = smtp
            .deliver(&delivery("email", TO))
            .await
            .expect("accepted");
        assert!(
            receipt
                .provider_id
                .as_deref()
                .is_some_and(|r| r.contains("queued as TEST0001")),
            "{receipt:?}"
        );
        // The second one rides the pooled, already upgraded connection.
        smtp.deliver(&delivery("email", "bob@example.org"))
            .await
            .expect("accepted");

        let got = server.received();
        assert_eq!(got.len(), 2);
        for m in &got {
            tls_version(m);
        }
        assert_eq!(got[0]["rcpt_tos"][0], TO);
        assert_eq!(got[1]["rcpt_tos"][0], "bob@example.org");
        let data = got[0]["data"].as_str().expect("data");
        assert!(data.contains("Subject: Order 1042 shipped"), "{data}");
    }

    #[tokio::test]
    async fn implicit_tls_sends_over_tls() {
        let server = SmtpServer::start(&["--tls", "implicit"]).await;
        let smtp = SmtpProvider::new(tls_config(server.port, SmtpSecurity::Tls)).expect("builds");
        smtp.deliver(&delivery("email", TO))
            .await
            .expect("accepted");
        smtp.deliver(&delivery("email", TO))
            .await
            .expect("accepted over the pooled connection");

        let got = server.received();
        assert_eq!(got.len(), 2);
        for m in &got {
            tls_version(m);
        }
        assert_eq!(got[0]["mail_from"], "notifications@example.com");
        assert_eq!(got[0]["rcpt_tos"][0], TO);
    }

    #[tokio::test]
    async fn an_untrusted_certificate_fails_the_send_and_delivers_nothing() {
        for (mode, security) in [
            ("starttls", SmtpSecurity::Starttls),
            ("implicit", SmtpSecurity::Tls),
        ] {
            let server = SmtpServer::start(&["--tls", mode]).await;
            // Only the system's roots: the test CA is unknown.
            let untrusting = SmtpConfig {
                extra_root_ca_path: None,
                ..tls_config(server.port, security)
            };
            let smtp = SmtpProvider::new(untrusting).expect("builds");
            // A handshake failure is classified like every failure to talk
            // to the server (the fix is on the relay's side or in
            // `extra_root_ca_path`; the provider retries meanwhile).
            let why = transient_reason(smtp.deliver(&delivery("email", TO)).await);
            assert!(why.contains("certificate"), "{mode}: {why}");
            // Once: lettre's errors print their sources themselves.
            assert_eq!(why.matches("UnknownIssuer").count(), 1, "{mode}: {why}");
            assert!(server.received().is_empty(), "{mode}: delivered anyway");

            // The same server, with its CA trusted: the failure above was
            // the certificate and nothing else.
            SmtpProvider::new(tls_config(server.port, security))
                .expect("builds")
                .deliver(&delivery("email", TO))
                .await
                .unwrap_or_else(|e| panic!("{mode}: {e:?}"));
            assert_eq!(server.received().len(), 1, "{mode}");
        }
    }

    #[tokio::test]
    async fn starttls_never_falls_back_to_plaintext() {
        // A server that offers no STARTTLS (or a man in the middle that
        // strips it from the EHLO reply): the mail must not go in clear.
        let server = SmtpServer::start(&[]).await;
        let smtp =
            SmtpProvider::new(tls_config(server.port, SmtpSecurity::Starttls)).expect("builds");
        let why = transient_reason(smtp.deliver(&delivery("email", TO)).await);
        assert_eq!(why.matches("STARTTLS is not supported").count(), 1, "{why}");
        assert!(server.received().is_empty(), "sent in plaintext");

        // And the other way round: plaintext to a server that requires
        // STARTTLS is refused by the server (530), a config problem.
        let server = SmtpServer::start(&["--tls", "starttls"]).await;
        let smtp = SmtpProvider::new(config(server.port)).expect("builds");
        let (setting, why) = assert_misconfigured(smtp.deliver(&delivery("email", TO)).await);
        assert!(why.contains("530"), "{why}");
        assert_eq!(setting, "providers.email.security");
        assert!(server.received().is_empty());
    }

    #[tokio::test]
    async fn authenticates_over_starttls_and_reports_a_wrong_password_as_config() {
        // The server offers AUTH only once TLS is up, as real relays do.
        let server = SmtpServer::start(&["--tls", "starttls", "--auth", "sender:s3cret"]).await;
        let mut c = tls_config(server.port, SmtpSecurity::Starttls);
        c.username = Some("sender".into());
        c.password = Some(Secret::new("s3cret"));
        SmtpProvider::new(c.clone())
            .expect("builds")
            .deliver(&delivery("email", TO))
            .await
            .expect("accepted");
        let got = server.received();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["auth"], "sender");
        tls_version(&got[0]);

        c.password = Some(Secret::new("wrong"));
        let (setting, why) = assert_misconfigured(
            SmtpProvider::new(c)
                .expect("builds")
                .deliver(&delivery("email", TO))
                .await,
        );
        assert!(why.contains("535"), "{why}");
        assert_eq!(why.matches("credentials invalid").count(), 1, "{why}");
        assert!(setting.contains("providers.email.password"), "{setting}");
        assert_eq!(server.received().len(), 1);
    }

    #[tokio::test]
    async fn no_server_is_transient() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        // The listener is dropped: nothing listens there now.
        let smtp = SmtpProvider::new(config(port)).expect("builds");
        assert_transient(smtp.deliver(&delivery("email", TO)).await, None);
    }

    #[tokio::test]
    async fn a_server_that_stops_answering_is_transient() {
        // Accepts connections and never sends the greeting.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let hold = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                open.push(sock);
            }
        });
        let mut c = config(port);
        c.timeout_ms = 300;
        let smtp = SmtpProvider::new(c).expect("builds");
        let start = Instant::now();
        assert_transient(smtp.deliver(&delivery("email", TO)).await, None);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "took {:?}",
            start.elapsed()
        );
        hold.abort();
    }

    #[tokio::test]
    async fn setup_checks() {
        let mut c = config(25);
        c.username = Some("only-user".into());
        assert!(SmtpProvider::new(c).is_err());
        let mut c = config(25);
        c.from = "not a mailbox".into();
        assert!(SmtpProvider::new(c).is_err());
        let mut c = config(587);
        c.host = "smtp.example.com".into();
        c.security = SmtpSecurity::Starttls;
        SmtpProvider::new(c).expect("STARTTLS settings build");
    }
}
