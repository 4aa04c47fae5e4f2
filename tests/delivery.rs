//! Delivery through a real provider client (Twilio's REST API, served
//! locally), end to end through the public API, on the embedded default and
//! on real Kafka and Cassandra: transient failures (429 with Retry-After,
//! 5xx) are retried through the retry tiers and then delivered; permanent
//! rejections and deliveries that use up their attempts are dead-lettered.
//! Delivery receipts: Twilio's status callbacks and SendGrid's event webhook,
//! posted to the gateway as the providers would, become DELIVERED and FAILED
//! tracking events, the templates' delivered counts and the notification
//! log's `delivered` and `failed` (`GetStatus`).

mod support;

use std::time::Duration;

use support::email_provider::EmailProvider;
use support::{
    Backend, TestPipeline,
    apns_provider::ApnsServer,
    eventually,
    sms_provider::{self, Answer, SmsProvider},
};
use tidings_schemas::{
    AvroCodec,
    proto::v1 as pb,
    records::{DeadLetter, Delivery, TrackingEvent, TrackingKind},
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

fn sms(user: &str, text: &str) -> pb::SendRequest {
    pb::SendRequest {
        user_ids: vec![user.into()],
        channels: vec![pb::Channel::Sms as i32],
        content: Some(pb::send_request::Content::Raw(pb::RawContent {
            sms_text: text.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// An iOS push to `user`, event `event`.
fn ios(user: &str, event: &str) -> pb::SendRequest {
    pb::SendRequest {
        event_id: event.into(),
        user_ids: vec![user.into()],
        channels: vec![pb::Channel::Ios as i32],
        content: Some(pb::send_request::Content::Raw(pb::RawContent {
            title: "Hi".into(),
            body: "there".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The notification log's entry of a single-delivery notification.
async fn log_entry(t: &TestPipeline, id: &str) -> Option<pb::DeliveryStatus> {
    t.client
        .status(id)
        .await
        .ok()?
        .deliveries
        .into_iter()
        .next()
}

async fn state_of(t: &TestPipeline, id: &str) -> Option<(String, u32)> {
    let s = t.client.status(id).await.ok()?;
    s.deliveries.first().map(|d| (d.state.clone(), d.attempt))
}

async fn transient_failures_are_retried_then_delivered_and_permanent_ones_dead_lettered(
    backend: Backend,
) {
    let (provider, addr) = SmsProvider::start().await;
    let t = TestPipeline::start_with(backend, |c| {
        c.providers.insert("sms".into(), SmsProvider::config(addr));
        c.senders.retry_delays_ms = [200, 400, 800];
        c.senders.max_attempts = 3;
    })
    .await;

    // 429 with Retry-After, then 503, then accepted.
    let flaky = "+14155550001";
    provider.script(
        flaky,
        &[
            Answer {
                status: 429,
                retry_after_secs: Some(1),
                code: 20429,
            },
            Answer {
                status: 503,
                retry_after_secs: None,
                code: 20500,
            },
        ],
    );
    let user = t.sms_user(flaky).await;
    let id = t
        .client
        .send(sms(&user, "third time lucky"))
        .await
        .unwrap()
        .notification_ids[0]
        .clone();
    eventually("the retried SMS delivered", WAIT, || async {
        state_of(&t, &id).await.filter(|(s, _)| s == "sent")
    })
    .await;
    assert_eq!(provider.answered(flaky), vec![429, 503, 201]);
    assert_eq!(
        state_of(&t, &id).await.unwrap().1,
        2,
        "delivered on the third attempt"
    );

    // Always 500: dead-lettered once the attempts are used up.
    let down = "+14155550002";
    provider.script(
        down,
        &[Answer {
            status: 500,
            retry_after_secs: None,
            code: 20500,
        }; 5],
    );
    let user = t.sms_user(down).await;
    let gave_up = t
        .client
        .send(sms(&user, "never"))
        .await
        .unwrap()
        .notification_ids[0]
        .clone();

    // A permanent rejection (Twilio 400, not about the number): dead-lettered at once.
    let rejected = "+14155550003";
    provider.script(
        rejected,
        &[Answer {
            status: 400,
            retry_after_secs: None,
            code: 21617,
        }],
    );
    let user = t.sms_user(rejected).await;
    let refused = t
        .client
        .send(sms(&user, "too long"))
        .await
        .unwrap()
        .notification_ids[0]
        .clone();

    t.read_until::<DeadLetter>(&t.topic("deadletter"), WAIT, |d| d.len() >= 2)
        .await;
    let dead = t.read_all::<DeadLetter>(&t.topic("deadletter")).await;
    let codec = AvroCodec::local();
    let letters_of = |id: &str| -> Vec<&DeadLetter> {
        dead.iter()
            .filter(|d| {
                codec
                    .decode::<Delivery>(&d.payload)
                    .is_ok_and(|del| del.notification_id == id)
            })
            .collect()
    };
    assert_eq!(dead.len(), 2, "one dead letter each: {dead:?}");
    assert!(letters_of(&id).is_empty(), "the retried SMS was delivered");
    let of = |id: &str| {
        *letters_of(id)
            .first()
            .unwrap_or_else(|| panic!("no dead letter for {id}"))
    };
    assert!(
        of(&gave_up).reason.contains("gave up after 3 attempts"),
        "{}",
        of(&gave_up).reason
    );
    assert!(of(&gave_up).retriable);
    assert_eq!(of(&refused).stage, "sender.sms");
    assert!(!of(&refused).retriable);
    assert_eq!(provider.answered(down), vec![500, 500, 500]);
    assert_eq!(provider.answered(rejected), vec![400]);

    t.read_until::<TrackingEvent>(&t.topic("tracking"), WAIT, |e| {
        // Partitions are read side by side: wait for the retries of
        // `id` too, not only for the dead letters on other partitions.
        let count = |kind: TrackingKind, of: Option<&str>| {
            e.iter()
                .filter(|e| e.kind == kind && of.is_none_or(|id| e.notification_id == id))
                .count()
        };
        count(TrackingKind::DeadLettered, None) >= 2 && count(TrackingKind::Retried, Some(&id)) >= 2
    })
    .await;
    // Counted on everything written so far: `id` was delivered, so its
    // retries all came before.
    let events = t.read_all::<TrackingEvent>(&t.topic("tracking")).await;
    let kinds = |id: &str| {
        events
            .iter()
            .filter(|e| e.notification_id == id)
            .map(|e| e.kind)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        kinds(&id)
            .iter()
            .filter(|k| **k == TrackingKind::Retried)
            .count(),
        2
    );
    assert!(kinds(&gave_up).contains(&TrackingKind::DeadLettered));
    assert_eq!(state_of(&t, &gave_up).await.unwrap().0, "dead_lettered");
    t.stop().await;
}

async fn devices(t: &TestPipeline, user: &str) -> Vec<String> {
    let request = t
        .client
        .request(pb::ListDevicesRequest {
            user_id: user.into(),
        })
        .unwrap();
    let response = t
        .client
        .contacts()
        .list_devices(request)
        .await
        .unwrap()
        .into_inner();
    let mut tokens: Vec<String> = response.devices.into_iter().map(|d| d.token).collect();
    tokens.sort();
    tokens
}

async fn an_unregistered_device_is_tombstoned_until_registered_again(backend: Backend) {
    let (apns, addr) = ApnsServer::start().await;
    let t = TestPipeline::start_with(backend, |c| {
        c.providers.insert("ios".into(), ApnsServer::config(addr));
    })
    .await;
    let (live, gone) = ("a1".repeat(32), "b2".repeat(32));
    apns.uninstall(&gone);
    let user = format!("u-{}", Uuid::new_v4());
    t.client
        .upsert_user(pb::UpsertUserRequest {
            user_id: user.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    t.client
        .register_device(&user, pb::Platform::Ios, &live)
        .await
        .unwrap();
    t.client
        .register_device(&user, pb::Platform::Ios, &gone)
        .await
        .unwrap();
    let id = t
        .client
        .send(ios(&user, "first"))
        .await
        .unwrap()
        .notification_ids[0]
        .clone();
    let status = eventually("both iOS deliveries settled", WAIT, || async {
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
    assert_eq!(state(&gone).as_deref(), Some("invalid_target"));
    let (_, events) = t
        .read_until::<TrackingEvent>(&t.topic("tracking"), WAIT, |e| {
            e.iter().any(|e| e.kind == TrackingKind::InvalidToken)
        })
        .await;
    assert!(events.iter().any(
        |e| e.kind == TrackingKind::InvalidToken && e.target.as_deref() == Some(gone.as_str())
    ));

    assert_eq!(
        devices(&t, &user).await,
        vec![live.clone()],
        "the unregistered token is tombstoned"
    );

    // The app is reinstalled: registering again wins over the tombstone
    // (newest write wins: a later millisecond than the tombstone's).
    apns.reinstall(&gone);
    tokio::time::sleep(Duration::from_millis(5)).await;
    t.client
        .register_device(&user, pb::Platform::Ios, &gone)
        .await
        .unwrap();
    assert_eq!(devices(&t, &user).await.len(), 2);
    let again = t
        .client
        .send(ios(&user, "second"))
        .await
        .unwrap()
        .notification_ids[0]
        .clone();
    eventually("both devices reached", WAIT, || async {
        let s = t.client.status(&again).await.ok()?;
        (s.deliveries.iter().filter(|d| d.state == "sent").count() == 2).then_some(())
    })
    .await;
    // Once the sender has handled every iOS delivery: the reinstalled
    // device got exactly one push.
    t.caught_up("sender.ios", &t.topic("deliver.ios")).await;
    assert_eq!(apns.delivered().iter().filter(|t| **t == gone).count(), 1);
    t.stop().await;
}

/// A raw HTTP/1.1 POST to the gateway: the status code and the body.
async fn http_post(
    addr: std::net::SocketAddr,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, String) {
    http_post_with(addr, path, content_type, &[], body).await
}

async fn http_post_with(
    addr: std::net::SocketAddr,
    path: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let r = support::http::request(addr, "POST", path, headers, Some((content_type, body))).await;
    (r.status, r.body)
}

/// Twilio's `X-Twilio-Signature` for a form posted to `url`: base64 of
/// HMAC-SHA1 (keyed by the auth token) over the URL and every parameter's
/// name and value, sorted by name.
fn twilio_signature(auth_token: &str, url: &str, form: &str) -> String {
    use base64::Engine;
    let unescape = |s: &str| {
        let bytes = s.replace('+', " ").into_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("hex");
                out.push(u8::from_str_radix(hex, 16).expect("escape"));
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).expect("utf-8")
    };
    let mut params: Vec<(String, String)> = form
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect();
    params.sort();
    let mut text = url.to_owned();
    for (k, v) in params {
        text.push_str(&k);
        text.push_str(&v);
    }
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        auth_token.as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, text.as_bytes()))
}

/// Posts a status callback as Twilio does: to the message's StatusCallback,
/// signed.
async fn twilio_post(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, String) {
    let url = format!("https://hooks.tidings.test{path}");
    let signature = twilio_signature(sms_provider::AUTH_TOKEN, &url, body);
    http_post_with(
        addr,
        path,
        FORM,
        &[("X-Twilio-Signature", &signature)],
        body,
    )
    .await
}

/// A form-encoded body, escaped as Twilio does.
fn form(fields: &[(&str, &str)]) -> String {
    let escape = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_owned(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}

async fn put_template(t: &TestPipeline, content: pb::TemplateContent) -> String {
    let name = format!("receipts-{}", Uuid::new_v4().simple());
    t.client
        .put_template(pb::Template {
            name: name.clone(),
            params: vec!["order".into()],
            default_locale: "en".into(),
            variants: [("en".to_owned(), content)].into(),
            ..Default::default()
        })
        .await
        .expect("put template");
    name
}

fn templated(user: &str, channel: pb::Channel, template: &str) -> pb::SendRequest {
    pb::SendRequest {
        user_ids: vec![user.into()],
        channels: vec![channel as i32],
        content: Some(pb::send_request::Content::Template(pb::TemplateRef {
            name: template.into(),
            version: 0,
            params: [("order".to_owned(), "1042".to_owned())].into(),
        })),
        ..Default::default()
    }
}

/// Waits for the template's counts to reach `sent` and `delivered`, then,
/// once the template-stats stage has counted every tracking event written
/// so far, checks that they are exact (repeated receipts count once).
async fn assert_counts(t: &TestPipeline, name: &str, sent: i64, delivered: i64) {
    eventually("the template's sent and delivered counts", WAIT, || async {
        let s = t.template_stats(name).await?;
        (s.sent >= sent && s.delivered >= delivered).then_some(())
    })
    .await;
    t.caught_up("template-stats", &t.topic("tracking")).await;
    let stats = t.template_stats(name).await.expect("stats");
    assert_eq!(
        (stats.sent, stats.delivered),
        (sent, delivered),
        "a delivery counts as delivered once, however many receipts say so"
    );
}

/// Waits for the senders' `sent` in the notification log. Providers report
/// on a message only after accepting it; waiting makes the order of the two
/// writes certain here (the log keeps the newest entry whatever the order,
/// but entries of the same millisecond would leave it to the engine).
async fn sent_in_log(t: &TestPipeline, ids: &[String]) {
    for id in ids {
        eventually("the sender's `sent` in the log", WAIT, || async {
            state_of(t, id).await.filter(|(s, _)| s == "sent")
        })
        .await;
    }
}

/// Asserts the notification log's state of `id`; returns its entry.
async fn assert_logged(t: &TestPipeline, id: &str, state: &str) -> pb::DeliveryStatus {
    let entry = log_entry(t, id).await.expect("a log entry");
    assert_eq!(entry.state, state, "{entry:?}");
    entry
}

/// Reads the tracking topic until `done`; then returns every event written
/// so far (read to the high watermarks), so that what is absent is absent.
async fn tracking_until(
    t: &TestPipeline,
    done: impl Fn(&[TrackingEvent]) -> bool,
) -> Vec<TrackingEvent> {
    t.read_until::<TrackingEvent>(&t.topic("tracking"), WAIT, done)
        .await;
    t.read_all::<TrackingEvent>(&t.topic("tracking")).await
}

fn events_of<'a>(
    events: &'a [TrackingEvent],
    id: &str,
    kind: TrackingKind,
) -> Vec<&'a TrackingEvent> {
    events
        .iter()
        .filter(|e| e.notification_id == id && e.kind == kind)
        .collect()
}

/// Where the SMS sender tells Twilio to post status updates: the gateway's
/// public address, which a proxy would forward to its HTTP listener.
const STATUS_HOOK: &str = "https://hooks.tidings.test/webhooks/twilio/status";
const FORM: &str = "application/x-www-form-urlencoded";

async fn twilio_status_callbacks_record_delivered_and_failed(backend: Backend) {
    let (provider, addr) = SmsProvider::start().await;
    let t = TestPipeline::start_with(backend, |c| {
        c.providers.insert(
            "sms".into(),
            SmsProvider::config_with_status_callback(addr, STATUS_HOOK),
        );
    })
    .await;
    let template = put_template(
        &t,
        pb::TemplateContent {
            sms_text: "Order {{order}} shipped".into(),
            ..Default::default()
        },
    )
    .await;
    let (reached, unreachable) = ("+14155550021", "+14155550022");
    let mut ids = Vec::new();
    for phone in [reached, unreachable] {
        let user = t.sms_user(phone).await;
        let sent = t
            .client
            .send(templated(&user, pb::Channel::Sms, &template))
            .await
            .expect("send");
        ids.push(sent.notification_ids[0].clone());
    }
    let accepted = |phone: &'static str| {
        let provider = provider.clone();
        async move {
            eventually("the SMS at Twilio", WAIT, || async {
                provider.accepted(phone).into_iter().next()
            })
            .await
        }
    };
    // The path and query Twilio would request: the gateway's public URL is
    // the test's HTTP listener.
    let callback_path = |(_, callback): &(String, Option<String>)| {
        let callback = callback.clone().expect("a StatusCallback on the message");
        callback
            .strip_prefix("https://hooks.tidings.test")
            .unwrap_or_else(|| panic!("{callback} is not under {STATUS_HOOK}"))
            .to_owned()
    };
    let (sid, path) = {
        let a = accepted(reached).await;
        (a.0.clone(), callback_path(&a))
    };
    assert!(
        path.starts_with("/webhooks/twilio/status?d="),
        "the callback carries the receipt token: {path}"
    );
    let (failed_sid, failed_path) = {
        let a = accepted(unreachable).await;
        (a.0.clone(), callback_path(&a))
    };
    assert_ne!(path, failed_path, "one token per delivery");
    let http = t.pipeline.as_ref().unwrap().gateway.http;
    let status = |sid: &str, status: &str| {
        form(&[
            ("SmsSid", sid),
            ("SmsStatus", status),
            ("MessageStatus", status),
            ("To", reached),
            ("MessageSid", sid),
            ("AccountSid", "ACe2e"),
            ("From", "+15005550006"),
            ("ApiVersion", "2010-04-01"),
        ])
    };

    sent_in_log(&t, &ids).await;
    // Steps on the way record nothing.
    for step in ["queued", "sending", "sent"] {
        let (code, _) = twilio_post(http, &path, &status(&sid, step)).await;
        assert_eq!(code, 204, "{step}");
    }
    assert_logged(&t, &ids[0], "sent").await;
    // Delivered, then Twilio's retry of it, then `read`: one delivery.
    for done in ["delivered", "delivered", "read"] {
        let (code, body) = twilio_post(http, &path, &status(&sid, done)).await;
        assert_eq!(code, 204, "{done}: {body}");
        // 204 once the log has it too.
        let entry = assert_logged(&t, &ids[0], "delivered").await;
        assert_eq!(
            (entry.target.as_str(), entry.detail.as_str()),
            (reached, sid.as_str())
        );
    }

    // Forged, altered and missing tokens are refused; nothing is recorded.
    let altered = format!("{}x", path);
    let (code, _) = twilio_post(http, &altered, &status(&sid, "failed")).await;
    assert_eq!(code, 403, "an altered token");
    let forged = "/webhooks/twilio/status?d=eyJuIjoieCJ9.AAAA";
    let (code, _) = twilio_post(http, forged, &status(&sid, "delivered")).await;
    assert_eq!(code, 403, "a forged token");
    let (code, _) = http_post(
        http,
        "/webhooks/twilio/status",
        FORM,
        &status(&sid, "failed"),
    )
    .await;
    assert_eq!(code, 403, "no token");
    // A callback Twilio did not sign, or signed for other parameters, is
    // refused even with a valid receipt token.
    let (code, body) = http_post(http, &path, FORM, &status(&sid, "failed")).await;
    assert_eq!(code, 403, "no X-Twilio-Signature: {body}");
    assert!(body.contains("X-Twilio-Signature"), "{body}");
    let signed_for_delivered = twilio_signature(
        sms_provider::AUTH_TOKEN,
        &format!("https://hooks.tidings.test{path}"),
        &status(&sid, "delivered"),
    );
    let (code, _) = http_post_with(
        http,
        &path,
        FORM,
        &[("X-Twilio-Signature", &signed_for_delivered)],
        &status(&sid, "failed"),
    )
    .await;
    assert_eq!(code, 403, "a signature over other parameters");
    assert_logged(&t, &ids[0], "delivered").await;
    // A body that is not Twilio's names what is wrong.
    let (code, body) = twilio_post(http, &path, &form(&[("MessageSid", &sid)])).await;
    assert_eq!(code, 400);
    assert!(body.contains("MessageStatus"), "{body}");
    let bad_code = form(&[("MessageStatus", "failed"), ("ErrorCode", "oops")]);
    let (code, body) = twilio_post(http, &path, &bad_code).await;
    assert_eq!(code, 400);
    assert!(body.contains("ErrorCode"), "{body}");

    // The other message never reached the handset.
    let mut failed = status(&failed_sid, "undelivered");
    failed.push_str("&ErrorCode=30003");
    let (code, _) = twilio_post(http, &failed_path, &failed).await;
    assert_eq!(code, 204);
    let entry = assert_logged(&t, &ids[1], "failed").await;
    assert!(
        entry.detail.contains("undelivered") && entry.detail.contains("30003"),
        "{entry:?}"
    );
    assert_eq!(entry.target, unreachable);

    let events = tracking_until(&t, |e| {
        events_of(e, &ids[0], TrackingKind::Delivered).len() >= 3
            && !events_of(e, &ids[1], TrackingKind::Failed).is_empty()
    })
    .await;
    let delivered = events_of(&events, &ids[0], TrackingKind::Delivered);
    let first = delivered[0];
    assert_eq!(first.template_name.as_deref(), Some(template.as_str()));
    assert_eq!(first.channel.as_deref(), Some("sms"));
    assert_eq!(first.target.as_deref(), Some(reached));
    assert_eq!(first.stage, "gateway.twilio");
    assert_eq!(first.detail.as_deref(), Some(sid.as_str()));
    assert!(
        delivered.iter().all(|e| e.event_id == first.event_id),
        "receipts of one delivery share an event id"
    );
    assert!(events_of(&events, &ids[0], TrackingKind::Failed).is_empty());
    let failure = events_of(&events, &ids[1], TrackingKind::Failed)[0];
    let detail = failure.detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains("undelivered") && detail.contains("30003"),
        "{detail}"
    );
    assert_eq!(failure.target.as_deref(), Some(unreachable));
    assert!(events_of(&events, &ids[1], TrackingKind::Delivered).is_empty());

    assert_counts(&t, &template, 2, 1).await;
    // The refused callbacks changed nothing, and the receipts stay newest.
    assert_logged(&t, &ids[0], "delivered").await;
    assert_logged(&t, &ids[1], "failed").await;
    t.stop().await;
}

async fn email_user(t: &TestPipeline, email: &str) -> String {
    let user = format!("u-{}", Uuid::new_v4());
    t.client
        .upsert_user(pb::UpsertUserRequest {
            user_id: user.clone(),
            email: email.into(),
            ..Default::default()
        })
        .await
        .expect("upsert user");
    user
}

/// What SendGrid holds for a signed Event Webhook: a P-256 key pair; the
/// account shows the public half, base64 SubjectPublicKeyInfo DER.
struct SendGridWebhookKey {
    key: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
}

impl SendGridWebhookKey {
    fn generate() -> Self {
        use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Self { key, rng }
    }

    fn verification_key(&self) -> String {
        use base64::Engine;
        use ring::signature::KeyPair;
        const SPKI_PREFIX: [u8; 26] = [
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        let spki = [&SPKI_PREFIX[..], self.key.public_key().as_ref()].concat();
        base64::engine::general_purpose::STANDARD.encode(spki)
    }

    /// The two headers SendGrid adds: the signature over timestamp + body.
    fn sign(&self, timestamp: &str, body: &str) -> [(&'static str, String); 2] {
        use base64::Engine;
        let signature = self
            .key
            .sign(&self.rng, format!("{timestamp}{body}").as_bytes())
            .unwrap();
        [
            (
                "X-Twilio-Email-Event-Webhook-Signature",
                base64::engine::general_purpose::STANDARD.encode(signature.as_ref()),
            ),
            (
                "X-Twilio-Email-Event-Webhook-Timestamp",
                timestamp.to_owned(),
            ),
        ]
    }
}

async fn sendgrid_events_record_delivered_and_failed(backend: Backend) {
    let (provider, addr) = EmailProvider::start().await;
    let webhook_key = SendGridWebhookKey::generate();
    let mut email = EmailProvider::config(addr);
    email["webhook_verification_key"] = webhook_key.verification_key().into();
    let t = TestPipeline::start_with(backend, |c| {
        c.providers.insert("email".into(), email);
    })
    .await;
    let template = put_template(
        &t,
        pb::TemplateContent {
            email_subject: "Order {{order}} shipped".into(),
            email_text: "It arrives on Tuesday.".into(),
            ..Default::default()
        },
    )
    .await;
    let (reached, bounced) = ("ada@example.org", "nobody@example.org");
    let mut ids = Vec::new();
    for email in [reached, bounced] {
        let user = email_user(&t, email).await;
        let sent = t
            .client
            .send(templated(&user, pb::Channel::Email, &template))
            .await
            .expect("send");
        ids.push(sent.notification_ids[0].clone());
    }
    let mail = |email: &'static str| {
        let provider = provider.clone();
        async move {
            eventually("the mail at SendGrid", WAIT, || async {
                provider.accepted(email).into_iter().next()
            })
            .await
        }
    };
    let (message_id, sent_mail) = mail(reached).await;
    let (_, bounced_mail) = mail(bounced).await;
    let args = |mail: &serde_json::Value| mail["personalizations"][0]["custom_args"].clone();
    let token = |mail: &serde_json::Value| {
        args(mail)["tidings_receipt"]
            .as_str()
            .expect("a receipt token in custom_args")
            .to_owned()
    };
    // SendGrid repeats custom_args as top-level fields of every event.
    let event = |email: &str, mail: &serde_json::Value, fields: serde_json::Value| {
        let mut event = serde_json::json!({
            "email": email,
            "timestamp": 1_700_000_000,
            "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
            "sg_event_id": Uuid::new_v4().to_string(),
            "sg_message_id": format!("{message_id}.filter0001"),
        });
        for (k, v) in args(mail).as_object().unwrap() {
            event[k] = v.clone();
        }
        for (k, v) in fields.as_object().unwrap() {
            event[k] = v.clone();
        }
        event
    };
    let mut forged = event(
        reached,
        &sent_mail,
        serde_json::json!({"event": "delivered"}),
    );
    forged["tidings_receipt"] = format!("{}x", token(&sent_mail)).into();
    let batch = serde_json::json!([
        event(reached, &sent_mail, serde_json::json!({"event": "processed"})),
        forged,
        "not an event",
        {"email": "someone@example.net", "event": "delivered", "timestamp": 1_700_000_001},
        event(reached, &sent_mail, serde_json::json!({"event": "delivered", "response": "250 OK"})),
        event(reached, &sent_mail, serde_json::json!({"event": "open", "useragent": "Mozilla/5.0"})),
        event(bounced, &bounced_mail, serde_json::json!({
            "event": "bounce", "type": "bounce", "status": "5.1.1",
            "reason": "550 5.1.1 The email account that you tried to reach does not exist",
        })),
    ]);
    let http = t.pipeline.as_ref().unwrap().gateway.http;
    let path = "/webhooks/sendgrid/events";
    let json = "application/json";
    // Posted as SendGrid does: signed with the account's webhook key.
    let post = |body: String| {
        let headers = webhook_key.sign("1700000000", &body);
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            http_post_with(http, path, json, &headers, &body).await
        }
    };
    sent_in_log(&t, &ids).await;
    // Unsigned, or signed by another key: refused as a whole.
    let (code, body) = http_post(http, path, json, &batch.to_string()).await;
    assert_eq!(code, 403, "unsigned: {body}");
    let other = SendGridWebhookKey::generate().sign("1700000000", &batch.to_string());
    let other: Vec<(&str, &str)> = other.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let (code, _) = http_post_with(http, path, json, &other, &batch.to_string()).await;
    assert_eq!(code, 403, "signed by another key");
    assert_logged(&t, &ids[0], "sent").await;
    let (code, body) = post(batch.to_string()).await;
    assert!(
        code == 204 || code == 200,
        "one bad event does not spoil the batch: {code} {body}"
    );
    // Answered once the log has them too.
    let entry = assert_logged(&t, &ids[0], "delivered").await;
    assert_eq!(entry.target, reached);
    assert_eq!(entry.detail, format!("{message_id}.filter0001"));
    let entry = assert_logged(&t, &ids[1], "failed").await;
    assert!(
        entry.detail.contains("bounce") && entry.detail.contains("does not exist"),
        "{entry:?}"
    );
    assert_eq!(entry.target, bounced);
    // SendGrid retries a batch it thinks failed: the same delivery again.
    let retry = serde_json::json!([event(
        reached,
        &sent_mail,
        serde_json::json!({"event": "delivered"})
    )]);
    let (code, _) = post(retry.to_string()).await;
    assert_eq!(code, 204);
    let (code, body) = post("{\"event\": \"delivered\"}".into()).await;
    assert_eq!(code, 400, "not an array: {body}");

    let events = tracking_until(&t, |e| {
        events_of(e, &ids[0], TrackingKind::Delivered).len() >= 2
            && !events_of(e, &ids[1], TrackingKind::Failed).is_empty()
    })
    .await;
    let delivered = events_of(&events, &ids[0], TrackingKind::Delivered);
    assert_eq!(
        delivered[0].template_name.as_deref(),
        Some(template.as_str())
    );
    assert_eq!(delivered[0].channel.as_deref(), Some("email"));
    assert_eq!(delivered[0].target.as_deref(), Some(reached));
    assert_eq!(delivered[0].stage, "gateway.sendgrid");
    assert_eq!(delivered[0].event_id, delivered[1].event_id);
    let failure = events_of(&events, &ids[1], TrackingKind::Failed)[0];
    let detail = failure.detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains("bounce") && detail.contains("does not exist"),
        "{detail}"
    );
    assert!(events_of(&events, &ids[1], TrackingKind::Delivered).is_empty());
    assert!(events_of(&events, &ids[0], TrackingKind::Failed).is_empty());

    assert_counts(&t, &template, 2, 1).await;
    assert_logged(&t, &ids[0], "delivered").await;
    assert_logged(&t, &ids[1], "failed").await;

    // On the embedded brokers, receipts wait for the tracking topic's
    // readers like every writer: while template stats is a fifth of what
    // the mock keeps behind (made so here), a batch is answered 503 (the
    // provider retries) instead of written past it; once it caught up, 204.
    let runtime = &t.pipeline.as_ref().unwrap().runtime;
    if let Some(backlog) = runtime.cluster.backlog() {
        let tracking = runtime.topics.tracking().to_owned();
        let stats = format!("{}.template-stats", t.config.kafka.group_prefix);
        let behind = backlog.marks().bytes;
        for p in 0..t.config.kafka.partitions {
            backlog.produced(&tracking, p, behind);
        }
        let (code, body) = post(retry.to_string()).await;
        assert_eq!(code, 503, "past a reader that is behind: {body}");
        for p in 0..t.config.kafka.partitions {
            backlog.taken(&stats, &tracking, p, behind);
        }
        let (code, body) = post(retry.to_string()).await;
        assert_eq!(code, 204, "once it caught up: {body}");
    }
    t.stop().await;
}

/// A client registering token after token for one user keeps only
/// `gateway.max_devices_per_user` of them: the newest.
async fn a_user_keeps_at_most_max_devices_per_user(backend: Backend) {
    let t = TestPipeline::start_with(backend, |c| c.gateway.max_devices_per_user = 3).await;
    let user = format!("u-{}", Uuid::new_v4());
    let tokens: Vec<String> = (0..6).map(|i| format!("{i:02}").repeat(32)).collect();
    for token in &tokens {
        t.client
            .register_device(&user, pb::Platform::Ios, token)
            .await
            .unwrap();
        // Registrations in distinct milliseconds: newest is well defined.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert_eq!(devices(&t, &user).await, tokens[3..].to_vec());
    t.stop().await;
}

/// Device rows beyond the cap that the gateway did not trim (written before
/// it trimmed them, or by an older release) are not all sent to: the
/// enricher sends to the newest `gateway.max_devices_per_user` live ones.
async fn a_notification_goes_to_at_most_max_devices_per_user(backend: Backend) {
    let t = TestPipeline::start_with(backend, |c| c.gateway.max_devices_per_user = 2).await;
    let user = format!("u-{}", Uuid::new_v4());
    let tokens: Vec<String> = (0..4).map(|i| format!("{i:02}").repeat(32)).collect();
    for (i, token) in tokens.iter().enumerate() {
        // Straight into the store, as rows written before the cap were.
        t.store()
            .contacts
            .register_device(&tidings_store::Device {
                user_id: user.clone(),
                token: token.clone(),
                platform: tidings_store::Platform::Ios,
                registered_at: 1_000 + i as i64,
                invalidated_at: None,
            })
            .await
            .unwrap();
    }
    let id = t
        .client
        .send(ios(&user, "capped"))
        .await
        .unwrap()
        .notification_ids[0]
        .clone();
    // Everything the enricher made of the request is on the iOS topic once
    // it has committed past the request.
    t.caught_up("enricher", &t.topic("notify.requests")).await;
    let mut targets: Vec<String> = t
        .read_all::<Delivery>(&t.topic("deliver.ios"))
        .await
        .into_iter()
        .filter(|d| d.notification_id == id)
        .map(|d| d.target)
        .collect();
    targets.sort();
    assert_eq!(targets, tokens[2..].to_vec(), "the two newest devices only");
    t.stop().await;
}

on_every_backend!(
    transient_failures_are_retried_then_delivered_and_permanent_ones_dead_lettered,
    an_unregistered_device_is_tombstoned_until_registered_again,
    a_user_keeps_at_most_max_devices_per_user,
    a_notification_goes_to_at_most_max_devices_per_user,
    twilio_status_callbacks_record_delivered_and_failed,
    sendgrid_events_record_delivered_and_failed,
);
