//! Notification scenarios end to end through the public gRPC API, on the
//! embedded default and on real Kafka and Cassandra: dedupe, opt-out and
//! critical categories, rate limits (their windows across a restart),
//! scheduling across a restart, templates in the user's locale, and the
//! gateway's auth.

mod support;

use std::time::Duration;

use support::{Backend, TestPipeline, eventually};
use tidings_config::RateLimit;
use tidings_kafka::now_millis;
use tidings_schemas::{
    proto::v1 as pb,
    records::{Delivery, TrackingEvent, TrackingKind},
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

async fn user_with_email_and_phone(t: &TestPipeline, locale: &str) -> String {
    let user = format!("u-{}", Uuid::new_v4());
    t.client
        .upsert_user(pb::UpsertUserRequest {
            user_id: user.clone(),
            display_name: "Ann".into(),
            locale: locale.into(),
            email: format!("{user}@example.com"),
            phone: "+14155550100".into(),
            ..Default::default()
        })
        .await
        .expect("upsert user");
    user
}

fn send(user: &str, event_id: &str, channels: &[pb::Channel], category: &str) -> pb::SendRequest {
    pb::SendRequest {
        event_id: event_id.into(),
        user_ids: vec![user.into()],
        channels: channels.iter().map(|c| *c as i32).collect(),
        category: category.into(),
        content: Some(pb::send_request::Content::Raw(pb::RawContent {
            title: "Hello".into(),
            body: "Hello there".into(),
            email_subject: "Hello".into(),
            email_text: "Hello there".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Tracking events of one notification, once `done` holds for them.
async fn tracking_of(
    t: &TestPipeline,
    notification_id: &str,
    done: impl Fn(&[TrackingEvent]) -> bool,
) -> Vec<TrackingEvent> {
    let id = notification_id.to_owned();
    let (_, events) = t
        .read_until::<TrackingEvent>(&t.topic("tracking"), WAIT, |all| {
            let mine: Vec<TrackingEvent> = all
                .iter()
                .filter(|e| e.notification_id == id)
                .cloned()
                .collect();
            done(&mine)
        })
        .await;
    events
        .into_iter()
        .filter(|e| e.notification_id == notification_id)
        .collect()
}

/// Every tracking event of one notification written so far (read to the
/// topic's high watermarks).
async fn all_tracking_of(t: &TestPipeline, notification_id: &str) -> Vec<TrackingEvent> {
    t.read_all::<TrackingEvent>(&t.topic("tracking"))
        .await
        .into_iter()
        .filter(|e| e.notification_id == notification_id)
        .collect()
}

/// The deliveries of one notification on `channel`'s topic, read to its
/// high watermarks once the enricher has handled every request so far.
async fn deliveries_of(t: &TestPipeline, channel: &str, notification_id: &str) -> Vec<Delivery> {
    t.caught_up("enricher", &t.topic("notify.requests")).await;
    t.read_all::<Delivery>(&t.topic(&format!("deliver.{channel}")))
        .await
        .into_iter()
        .filter(|d| d.notification_id == notification_id)
        .collect()
}

fn count(events: &[TrackingEvent], kind: TrackingKind) -> usize {
    events.iter().filter(|e| e.kind == kind).count()
}

async fn sent_count(t: &TestPipeline, notification_id: &str) -> usize {
    t.client
        .status(notification_id)
        .await
        .map(|s| s.deliveries.iter().filter(|d| d.state == "sent").count())
        .unwrap_or(0)
}

async fn duplicates_are_dropped(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let user = user_with_email_and_phone(&t, "en").await;
    let first = t
        .client
        .send(send(&user, "invoice-7", &[pb::Channel::Email], ""))
        .await
        .unwrap();
    let again = t
        .client
        .send(send(&user, "invoice-7", &[pb::Channel::Email], ""))
        .await
        .unwrap();
    assert_eq!(
        first.notification_ids, again.notification_ids,
        "a retried send returns the same ids"
    );
    let id = &first.notification_ids[0];
    // The gateway writes ACCEPTED after answering, so the second may land
    // after the enricher's DEDUPLICATED: wait for all of them.
    let events = tracking_of(&t, id, |e| {
        count(e, TrackingKind::Deduplicated) == 1
            && count(e, TrackingKind::Sent) == 1
            && count(e, TrackingKind::Accepted) >= 2
    })
    .await;
    assert_eq!(count(&events, TrackingKind::Accepted), 2);
    // Once the enricher has handled both requests and the sender every
    // email: exactly one email went out, and was sent once.
    t.caught_up("enricher", &t.topic("notify.requests")).await;
    // Only this user's: on the real servers other tests' pipelines may
    // share the topic.
    let emails: Vec<Delivery> = t
        .read_all::<Delivery>(&t.topic("deliver.email"))
        .await
        .into_iter()
        .filter(|d| d.user_id == user)
        .collect();
    assert_eq!(emails.len(), 1, "{emails:?}");
    t.caught_up("sender.email", &t.topic("deliver.email")).await;
    let events = all_tracking_of(&t, id).await;
    assert_eq!(count(&events, TrackingKind::Sent), 1);
    assert_eq!(count(&events, TrackingKind::Deduplicated), 1);
    assert_eq!(sent_count(&t, id).await, 1);
    t.stop().await;
}

async fn opt_out_is_respected_and_critical_categories_still_arrive(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let user = user_with_email_and_phone(&t, "en").await;
    t.client
        .set_preference(&user, pb::Channel::Email, "", false)
        .await
        .unwrap();
    t.client
        .set_preference(&user, pb::Channel::Sms, "marketing", false)
        .await
        .unwrap();

    let marketing = t
        .client
        .send(send(
            &user,
            "",
            &[pb::Channel::Email, pb::Channel::Sms],
            "marketing",
        ))
        .await
        .unwrap();
    let marketing = &marketing.notification_ids[0];
    tracking_of(&t, marketing, |e| count(e, TrackingKind::Suppressed) >= 2).await;

    let social = t
        .client
        .send(send(
            &user,
            "",
            &[pb::Channel::Email, pb::Channel::Sms],
            "social",
        ))
        .await
        .unwrap();
    let social = &social.notification_ids[0];
    eventually("the social SMS", WAIT, || async {
        (sent_count(&t, social).await == 1).then_some(())
    })
    .await;

    let security = t
        .client
        .send(send(&user, "", &[pb::Channel::Email], "security"))
        .await
        .unwrap();
    let security = &security.notification_ids[0];
    eventually("the critical email despite opt-out", WAIT, || async {
        (sent_count(&t, security).await == 1).then_some(())
    })
    .await;

    // Everything the enricher wrote, read to the end: the opted-out
    // channels got no delivery at all.
    for (id, channel, expected) in [
        (marketing, "email", 0),
        (marketing, "sms", 0),
        (social, "email", 0),
        (social, "sms", 1),
        (security, "email", 1),
    ] {
        assert_eq!(
            deliveries_of(&t, channel, id).await.len(),
            expected,
            "{channel} deliveries of {id}"
        );
    }
    let status = t.client.status(social).await.unwrap();
    let sent: Vec<&str> = status
        .deliveries
        .iter()
        .filter(|d| d.state == "sent")
        .map(|d| d.channel.as_str())
        .collect();
    assert_eq!(sent, ["sms"], "email is opted out on every category");
    t.stop().await;
}

async fn the_rate_limit_is_enforced(backend: Backend) {
    let t = TestPipeline::start_with(backend, |c| {
        c.enricher.rate_limits = vec![RateLimit {
            channel: Some("sms".into()),
            category: None,
            max: 2,
            per_secs: 3600,
        }];
    })
    .await;
    let user = user_with_email_and_phone(&t, "en").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.extend(
            t.client
                .send(send(&user, "", &[pb::Channel::Sms], ""))
                .await
                .unwrap()
                .notification_ids,
        );
    }
    let critical = t
        .client
        .send(send(&user, "", &[pb::Channel::Sms], "security"))
        .await
        .unwrap()
        .notification_ids;
    let third = ids[2].clone();
    tracking_of(&t, &third, |e| count(e, TrackingKind::RateLimited) >= 1).await;
    for id in &ids[..2] {
        eventually("the first two SMS", WAIT, || async {
            (sent_count(&t, id).await == 1).then_some(())
        })
        .await;
    }
    eventually("the critical SMS, never limited", WAIT, || async {
        (sent_count(&t, &critical[0]).await == 1).then_some(())
    })
    .await;
    // Read to the end: the third got no SMS, and one RATE_LIMITED.
    assert!(deliveries_of(&t, "sms", &third).await.is_empty());
    let events = all_tracking_of(&t, &third).await;
    assert_eq!(count(&events, TrackingKind::RateLimited), 1);
    assert_eq!(count(&events, TrackingKind::Sent), 0);
    assert_eq!(sent_count(&t, &third).await, 0);
    t.stop().await;
}

/// The windows are durable: a restart (like a rebalance, a new owner of the
/// user's partition) does not give the user a fresh allowance.
async fn the_rate_limit_window_survives_a_restart(backend: Backend) {
    let limit = |c: &mut tidings_config::Config| {
        c.enricher.rate_limits = vec![RateLimit {
            channel: Some("sms".into()),
            category: None,
            max: 2,
            per_secs: 3600,
        }];
    };
    let t = TestPipeline::start_with(backend, limit).await;
    let user = user_with_email_and_phone(&t, "en").await;
    for _ in 0..2 {
        let id = t
            .client
            .send(send(&user, "", &[pb::Channel::Sms], ""))
            .await
            .unwrap()
            .notification_ids[0]
            .clone();
        // Sent, so the enricher's batch that admitted it has finished.
        eventually("an SMS within the limit", WAIT, || async {
            (sent_count(&t, &id).await == 1).then_some(())
        })
        .await;
    }

    let t = t.restart().await;
    let third = t
        .client
        .send(send(&user, "", &[pb::Channel::Sms], ""))
        .await
        .unwrap()
        .notification_ids[0]
        .clone();
    tracking_of(&t, &third, |e| count(e, TrackingKind::RateLimited) >= 1).await;
    // Read to the end once the enricher has handled it: limited once, and
    // no SMS written.
    assert!(deliveries_of(&t, "sms", &third).await.is_empty());
    let events = all_tracking_of(&t, &third).await;
    assert_eq!(count(&events, TrackingKind::RateLimited), 1);
    let limited = events
        .iter()
        .find(|e| e.kind == TrackingKind::RateLimited)
        .expect("a RATE_LIMITED event");
    assert_eq!(limited.channel.as_deref(), Some("sms"));
    assert_eq!(
        limited.detail.as_deref(),
        Some("over the rate limit; suppressed")
    );
    assert_eq!(count(&events, TrackingKind::Sent), 0);
    assert_eq!(sent_count(&t, &third).await, 0);
    t.stop().await;
}

async fn a_scheduled_send_fires_at_its_time_and_survives_a_restart(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let user = user_with_email_and_phone(&t, "en").await;
    let send_at = now_millis() + 6_000;
    let mut request = send(&user, "", &[pb::Channel::Email], "");
    request.send_at_ms = send_at;
    let id = t.client.send(request).await.unwrap().notification_ids[0].clone();
    tracking_of(&t, &id, |e| count(e, TrackingKind::Scheduled) == 1).await;

    // Held durably: the process goes away and comes back before the time.
    let t = t.restart().await;
    assert_eq!(sent_count(&t, &id).await, 0, "not before its time");
    eventually("the scheduled email", WAIT, || async {
        (sent_count(&t, &id).await == 1).then_some(())
    })
    .await;
    let status = t.client.status(&id).await.unwrap();
    assert!(
        status.deliveries[0].at_ms >= send_at,
        "sent at {} before {send_at}",
        status.deliveries[0].at_ms
    );
    t.stop().await;
}

async fn templates_render_in_the_users_locale(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let name = format!("shipped-{}", Uuid::new_v4().simple());
    let content = |title: &str, body: &str| pb::TemplateContent {
        push_title: title.into(),
        push_body: body.into(),
        email_subject: title.into(),
        email_text: body.into(),
        ..Default::default()
    };
    let version = t
        .client
        .put_template(pb::Template {
            name: name.clone(),
            params: vec!["item".into()],
            default_locale: "en".into(),
            variants: [
                (
                    "en".to_owned(),
                    content("Shipped", "Your {{item}} has shipped"),
                ),
                (
                    "fr".to_owned(),
                    content("Expédié", "Votre {{item}} est en route"),
                ),
            ]
            .into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(version, 1);

    let template = |params: &[(&str, &str)]| {
        Some(pb::send_request::Content::Template(pb::TemplateRef {
            name: name.clone(),
            version: 0,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }))
    };
    let french = user_with_email_and_phone(&t, "fr-CA").await;
    let german = user_with_email_and_phone(&t, "de-DE").await;
    let mut request = send(&french, "", &[pb::Channel::Email], "");
    request.user_ids.push(german.clone());
    request.content = template(&[("item", "vélo")]);
    t.client.send(request.clone()).await.unwrap();

    t.read_until::<Delivery>(&t.topic("deliver.email"), WAIT, |d| d.len() >= 2)
        .await;
    // Read to the end once the enricher is done: one email per user.
    t.caught_up("enricher", &t.topic("notify.requests")).await;
    let emails = t.read_all::<Delivery>(&t.topic("deliver.email")).await;
    assert_eq!(emails.len(), 2, "{emails:?}");
    let of = |u: &str| {
        emails
            .iter()
            .find(|d| d.user_id == u)
            .expect("an email per user")
            .clone()
    };
    assert_eq!(
        of(&french).email_text.as_deref(),
        Some("Votre vélo est en route")
    );
    assert_eq!(of(&french).locale.as_deref(), Some("fr"));
    assert_eq!(
        of(&german).email_text.as_deref(),
        Some("Your vélo has shipped"),
        "falls back to the default"
    );
    assert_eq!(of(&german).template_version, Some(1));

    request.content = template(&[]);
    let err = t
        .client
        .send(request.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("InvalidArgument") && err.contains("template.params: missing `item`"),
        "{err}"
    );
    request.content = template(&[("item", "x"), ("colour", "red")]);
    let err = t.client.send(request).await.unwrap_err().to_string();
    assert!(
        err.contains("InvalidArgument") && err.contains("`colour`"),
        "{err}"
    );
    t.stop().await;
}

async fn the_gateway_authenticates_authorizes_and_limits_callers(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let user = user_with_email_and_phone(&t, "en").await;
    let request = || send(&user, "", &[pb::Channel::Email], "");

    let nobody = t.client_as("", "").await;
    let err = nobody.send(request()).await.unwrap_err().to_string();
    assert!(err.starts_with("Unauthenticated"), "{err}");
    let wrong = t.client_as(&t.app.0, "not-the-secret").await;
    assert!(
        wrong
            .send(request())
            .await
            .unwrap_err()
            .to_string()
            .starts_with("Unauthenticated")
    );

    let (key, secret) =
        tidings::runtime::create_app(t.store(), "contacts-only", vec!["contacts".into()], None)
            .await
            .unwrap();
    let limited = t.client_as(&key, &secret).await;
    let err = limited.send(request()).await.unwrap_err().to_string();
    assert!(
        err.starts_with("PermissionDenied") && err.contains("`send`"),
        "{err}"
    );

    let (key, secret) =
        tidings::runtime::create_app(t.store(), "slow", vec!["send".into()], Some(2))
            .await
            .unwrap();
    let slow = t.client_as(&key, &secret).await;
    let mut exhausted = false;
    for _ in 0..10 {
        if let Err(e) = slow.send(request()).await {
            assert!(e.to_string().starts_with("ResourceExhausted"), "{e}");
            exhausted = true;
        }
    }
    assert!(exhausted, "10 calls at once exceed a quota of 2/s");

    assert!(t.store().apps.revoke(&t.app.0).await.unwrap());
    eventually(
        "the revocation to take effect",
        Duration::from_secs(15),
        || async {
            t.client
                .send(request())
                .await
                .err()
                .filter(|e| e.to_string().starts_with("Unauthenticated"))
                .map(|_| ())
        },
    )
    .await;
    t.stop().await;
}

on_every_backend!(
    duplicates_are_dropped,
    opt_out_is_respected_and_critical_categories_still_arrive,
    the_rate_limit_is_enforced,
    the_rate_limit_window_survives_a_restart,
    a_scheduled_send_fires_at_its_time_and_survives_a_restart,
    templates_render_in_the_users_locale,
    the_gateway_authenticates_authorizes_and_limits_callers,
);

/// A raw HTTP/1.1 GET against the gateway: the status line and headers.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    support::http::request(addr, "GET", path, &[], None)
        .await
        .head
}

/// The path of the first `/t/<kind>/<token>` URL in `html`.
fn tracking_path(html: &str, kind: char) -> String {
    let marker = format!("/t/{kind}/");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} link in {html}"));
    let end = html[start..].find('"').map_or(html.len(), |e| start + e);
    html[start..end].to_owned()
}

async fn clicks_and_opens_are_tracked_and_counted_per_template(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let name = format!("digest-{}", Uuid::new_v4().simple());
    t.client
        .put_template(pb::Template {
            name: name.clone(),
            params: vec!["who".into()],
            default_locale: "en".into(),
            variants: [(
                "en".to_owned(),
                pb::TemplateContent {
                    email_subject: "Your digest".into(),
                    email_html: "<html><body><p>Hi {{who}}</p><a href=\"{{link.docs}}\">read</a></body></html>".into(),
                    tracking_links: [("docs".to_owned(), "https://example.com/docs?x=1".to_owned())].into(),
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let user = user_with_email_and_phone(&t, "en").await;
    let mut request = send(&user, "", &[pb::Channel::Email], "");
    request.content = Some(pb::send_request::Content::Template(pb::TemplateRef {
        name: name.clone(),
        version: 0,
        params: [("who".to_owned(), "Ann".to_owned())].into(),
    }));
    let id = t.client.send(request).await.unwrap().notification_ids[0].clone();
    let (_, emails) = t
        .read_until::<Delivery>(&t.topic("deliver.email"), WAIT, |d| !d.is_empty())
        .await;
    let html = emails[0].email_html.clone().expect("html body");
    assert!(
        !html.contains("https://example.com/docs"),
        "the destination is behind a tracked link: {html}"
    );
    let http = t.pipeline.as_ref().unwrap().gateway.http;

    let click = http_get(http, &tracking_path(&html, 'c')).await;
    assert!(
        click.starts_with("HTTP/1.1 303") || click.starts_with("HTTP/1.1 302"),
        "{click}"
    );
    assert!(
        click
            .to_lowercase()
            .contains("location: https://example.com/docs?x=1"),
        "{click}"
    );
    let open = http_get(http, &tracking_path(&html, 'o')).await;
    assert!(
        open.starts_with("HTTP/1.1 200") && open.contains("image/gif"),
        "{open}"
    );
    let forged = http_get(http, &format!("{}x", tracking_path(&html, 'c'))).await;
    assert!(forged.starts_with("HTTP/1.1 404"), "{forged}");

    tracking_of(&t, &id, |e| {
        count(e, TrackingKind::Clicked) == 1 && count(e, TrackingKind::Opened) == 1
    })
    .await;
    let stats = eventually("template counts", WAIT, || async {
        let request = t
            .client
            .request(pb::GetTemplateStatsRequest { name: name.clone() })
            .ok()?;
        let stats = t
            .client
            .templates()
            .get_template_stats(request)
            .await
            .ok()?
            .into_inner();
        (stats.sent == 1 && stats.opened == 1 && stats.clicked == 1).then_some(stats)
    })
    .await;
    assert_eq!(
        stats.delivered, 0,
        "no provider here reports delivery receipts"
    );
    t.stop().await;
}

mod tracking {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded() {
        clicks_and_opens_are_tracked_and_counted_per_template(Backend::Embedded).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn servers() {
        clicks_and_opens_are_tracked_and_counted_per_template(Backend::Servers).await
    }
}

/// With `over_limit = "defer"` and a rule for every channel, a notification
/// over the limit on two channels is held once per channel, and each is
/// delivered once the window has room (both used to share one schedule key
/// and one dedupe key, so one channel was lost).
async fn deferred_sends_reach_every_channel_once_the_window_has_room(backend: Backend) {
    let t = TestPipeline::start_with(backend, |c| {
        c.enricher.rate_limits = vec![RateLimit {
            channel: None,
            category: None,
            max: 1,
            per_secs: 4,
        }];
        c.enricher.over_limit = tidings_config::OverLimit::Defer;
    })
    .await;
    let user = user_with_email_and_phone(&t, "en").await;
    let both = [pb::Channel::Email, pb::Channel::Sms];
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.extend(
            t.client
                .send(send(&user, "", &both, ""))
                .await
                .unwrap()
                .notification_ids,
        );
    }
    let (first, second) = (&ids[0], &ids[1]);
    let events = tracking_of(&t, second, |e| count(e, TrackingKind::RateLimited) == 2).await;
    for e in events
        .iter()
        .filter(|e| e.kind == TrackingKind::RateLimited)
    {
        assert!(
            e.detail
                .as_deref()
                .is_some_and(|d| d.starts_with("over the rate limit; deferred until")),
            "{e:?}"
        );
    }
    for id in [first, second] {
        eventually("an email and an SMS", WAIT, || async {
            (sent_count(&t, id).await == 2).then_some(())
        })
        .await;
    }
    let status = t.client.status(second).await.unwrap();
    let mut sent: Vec<&str> = status
        .deliveries
        .iter()
        .filter(|d| d.state == "sent")
        .map(|d| d.channel.as_str())
        .collect();
    sent.sort();
    assert_eq!(sent, ["email", "sms"], "{status:?}");
    // Each channel got exactly one delivery of the deferred notification.
    for channel in ["email", "sms"] {
        let deliveries = t
            .read_all::<Delivery>(&t.topic(&format!("deliver.{channel}")))
            .await;
        let of_second = deliveries
            .iter()
            .filter(|d| &d.notification_id == second)
            .count();
        assert_eq!(of_second, 1, "{channel}");
    }
    t.stop().await;
}

/// GetStatus answers for every accepted notification, with each channel's
/// outcome: an opted-out channel is `suppressed`, a notification wholly over
/// its rate limit is `rate_limited` (it used to be NOT_FOUND), a channel the
/// user has no address for is `no_contact`.
async fn get_status_tells_each_channels_outcome(backend: Backend) {
    let t = TestPipeline::start_with(backend, |c| {
        c.enricher.rate_limits = vec![RateLimit {
            channel: Some("sms".into()),
            category: None,
            max: 1,
            per_secs: 3600,
        }];
    })
    .await;
    let user = user_with_email_and_phone(&t, "en").await;
    t.client
        .set_preference(&user, pb::Channel::Email, "", false)
        .await
        .unwrap();
    let states = |id: String| {
        let t = &t;
        async move {
            let status = t.client.status(&id).await.ok()?;
            let mut states: Vec<(String, String, String)> = status
                .deliveries
                .into_iter()
                .map(|d| (d.channel, d.target, d.state))
                .collect();
            states.sort();
            Some(states)
        }
    };

    let both = [pb::Channel::Email, pb::Channel::Sms];
    let first = t.client.send(send(&user, "", &both, "")).await.unwrap();
    let first = first.notification_ids[0].clone();
    let rows = eventually("the first notification's status", WAIT, || async {
        states(first.clone())
            .await
            .filter(|s| s.iter().any(|(_, _, state)| state == "sent"))
    })
    .await;
    let email = rows
        .iter()
        .find(|(channel, _, _)| channel == "email")
        .unwrap_or_else(|| panic!("no email row: {rows:?}"));
    assert_eq!(email.2, "suppressed", "{rows:?}");
    assert!(
        rows.iter()
            .any(|(c, target, state)| c == "sms" && target == "+14155550100" && state == "sent"),
        "{rows:?}"
    );

    let second = t
        .client
        .send(send(&user, "", &[pb::Channel::Sms], ""))
        .await
        .unwrap();
    let second = second.notification_ids[0].clone();
    tracking_of(&t, &second, |e| count(e, TrackingKind::RateLimited) == 1).await;
    let rows = eventually("the rate-limited notification's status", WAIT, || async {
        states(second.clone()).await
    })
    .await;
    assert_eq!(
        rows,
        [("sms".to_owned(), String::new(), "rate_limited".to_owned())]
    );

    let no_phone = format!("u-{}", Uuid::new_v4());
    t.client
        .upsert_user(pb::UpsertUserRequest {
            user_id: no_phone.clone(),
            email: format!("{no_phone}@example.com"),
            ..Default::default()
        })
        .await
        .unwrap();
    let third = t
        .client
        .send(send(&no_phone, "", &[pb::Channel::Sms], ""))
        .await
        .unwrap();
    let third = third.notification_ids[0].clone();
    let rows = eventually(
        "the status of a send with no phone number",
        WAIT,
        || async { states(third.clone()).await },
    )
    .await;
    assert_eq!(
        rows,
        [("sms".to_owned(), String::new(), "no_contact".to_owned())]
    );
    t.stop().await;
}

mod deferred {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded() {
        deferred_sends_reach_every_channel_once_the_window_has_room(Backend::Embedded).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn servers() {
        deferred_sends_reach_every_channel_once_the_window_has_room(Backend::Servers).await
    }
}

mod status {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded() {
        get_status_tells_each_channels_outcome(Backend::Embedded).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn servers() {
        get_status_tells_each_channels_outcome(Backend::Servers).await
    }
}

/// A template that repeats `{{name}}` `times` times in its email HTML.
async fn repeating_template(t: &TestPipeline, times: usize) -> String {
    let name = format!("repeat-{}", Uuid::new_v4().simple());
    t.client
        .put_template(pb::Template {
            name: name.clone(),
            params: vec!["name".into()],
            default_locale: "en".into(),
            variants: [(
                "en".to_owned(),
                pb::TemplateContent {
                    email_subject: "Hello".into(),
                    email_html: "<p>{{name}}</p>".repeat(times),
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        })
        .await
        .expect("put template");
    name
}

fn with_template(
    mut send: pb::SendRequest,
    name: &str,
    version: u32,
    value: &str,
) -> pb::SendRequest {
    send.content = Some(pb::send_request::Content::Template(pb::TemplateRef {
        name: name.into(),
        version,
        params: [("name".to_owned(), value.to_owned())].into(),
    }));
    send
}

/// Sizes are checked at the gateway, before anything is written: a 1 MiB
/// body, a param over its limit, and a param that fits alone but not
/// rendered 20 times are INVALID_ARGUMENT naming the field (they used to be
/// UNAVAILABLE "retry", or accepted and then poison the pipeline), in a
/// batch per item; and nothing refused reaches the requests topic.
async fn sizes_are_checked_at_the_gateway(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let user = user_with_email_and_phone(&t, "en").await;
    let refused = |e: anyhow::Error, field: &str| {
        let e = e.to_string();
        assert!(
            e.starts_with("InvalidArgument") && e.contains(&format!("{field}:")),
            "expected INVALID_ARGUMENT naming {field}: {e}"
        );
        e
    };

    let mut huge = send(&user, "huge-body", &[pb::Channel::Email], "");
    if let Some(pb::send_request::Content::Raw(raw)) = huge.content.as_mut() {
        raw.body = "x".repeat(1 << 20);
    }
    refused(t.client.send(huge.clone()).await.unwrap_err(), "raw.body");

    // The poison: the param four times, 300,000 characters.
    let four = repeating_template(&t, 4).await;
    let poison = with_template(
        send(&user, "poison", &[pb::Channel::Email], ""),
        &four,
        0,
        &"y".repeat(300_000),
    );
    refused(
        t.client.send(poison).await.unwrap_err(),
        "template.params.name",
    );

    // Under the per-param limit, but 20 occurrences render 1.2 MB.
    let twenty = repeating_template(&t, 20).await;
    let rendered = with_template(
        send(&user, "rendered", &[pb::Channel::Email], ""),
        &twenty,
        0,
        &"z".repeat(60_000),
    );
    let e = refused(
        t.client.send(rendered).await.unwrap_err(),
        "template.params.name",
    );
    assert!(e.contains("appears 20 times"), "{e}");

    // A template version that does not exist is blamed on the version.
    let missing = with_template(send(&user, "v9", &[pb::Channel::Email], ""), &four, 9, "ok");
    refused(
        t.client.send(missing).await.unwrap_err(),
        "template.version",
    );

    // Email asked for by name, with nothing to make a subject of.
    let mut html_only = send(&user, "html-only", &[pb::Channel::Email], "");
    html_only.content = Some(pb::send_request::Content::Raw(pb::RawContent {
        email_html: "<p>hi</p>".into(),
        ..Default::default()
    }));
    refused(t.client.send(html_only).await.unwrap_err(), "raw.title");

    // In a batch, each item on its own.
    let fine = send(&user, "fine", &[pb::Channel::Email], "");
    huge.event_id = "huge-in-batch".into();
    let results = t
        .client
        .notifications()
        .send_batch(
            t.client
                .request(pb::SendBatchRequest {
                    items: vec![fine, huge],
                })
                .unwrap(),
        )
        .await
        .expect("batch")
        .into_inner()
        .results;
    assert!(
        matches!(
            results[0].outcome,
            Some(pb::send_batch_result::Outcome::Accepted(_))
        ),
        "{results:?}"
    );
    match &results[1].outcome {
        Some(pb::send_batch_result::Outcome::Error(e)) => {
            assert!(e.starts_with("items[1].raw.body:"), "{e}")
        }
        other => panic!("the oversized item was not refused: {other:?}"),
    }

    // Only the fine one was written (seen first, so the topic's partitions
    // are known to have leaders before their watermarks are asked).
    let requests_topic = t.topic("notify.requests");
    t.read_until::<tidings_schemas::records::NotificationRequest>(&requests_topic, WAIT, |r| {
        !r.is_empty()
    })
    .await;
    let requests: Vec<tidings_schemas::records::NotificationRequest> =
        t.read_all(&requests_topic).await;
    let events: Vec<&str> = requests.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(events, ["fine"], "refused sends must not be written");
    t.stop().await;
}

/// One call expands to at most `gateway.max_expanded_notifications`
/// notifications: a batch over it is refused whole, naming the limit, and
/// writes nothing.
async fn a_call_expands_to_a_bounded_number_of_notifications(backend: Backend) {
    let t = TestPipeline::start_with(backend, |c| c.gateway.max_expanded_notifications = 3).await;
    let a = user_with_email_and_phone(&t, "en").await;
    let b = user_with_email_and_phone(&t, "en").await;
    let mut two = send(&a, "two", &[pb::Channel::Email], "");
    two.user_ids.push(b.clone());
    let err = t
        .client
        .notifications()
        .send_batch(
            t.client
                .request(pb::SendBatchRequest {
                    items: vec![two.clone(), two.clone()],
                })
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("items: expand to 4 notifications")
            && err.message().contains("gateway.max_expanded_notifications"),
        "{}",
        err.message()
    );
    let mut four = two.clone();
    four.user_ids.extend([format!("{a}-x"), format!("{b}-y")]);
    let err = t.client.send(four).await.unwrap_err().to_string();
    assert!(
        err.starts_with("InvalidArgument") && err.contains("user_ids: has 4 users; at most 3"),
        "{err}"
    );
    t.client.send(two).await.expect("within the limit");
    let requests_topic = t.topic("notify.requests");
    t.read_until::<tidings_schemas::records::NotificationRequest>(&requests_topic, WAIT, |r| {
        r.len() >= 2
    })
    .await;
    let requests: Vec<tidings_schemas::records::NotificationRequest> =
        t.read_all(&requests_topic).await;
    assert_eq!(requests.len(), 2, "only the accepted send was written");
    t.stop().await;
}

/// Users times content is bounded per call (`gateway.max_call_bytes`), not
/// only each: a send whose records add up to more is refused naming
/// `user_ids` and the setting, and writes nothing.
async fn a_call_writes_a_bounded_number_of_bytes(backend: Backend) {
    let t = TestPipeline::start_with(backend, |c| c.gateway.max_call_bytes = 1_000_000).await;
    let big = |users: usize, event: &str| {
        let mut s = send("x", event, &[pb::Channel::Email], "");
        s.user_ids = (0..users).map(|i| format!("bytes-{event}-{i}")).collect();
        if let Some(pb::send_request::Content::Raw(raw)) = &mut s.content {
            raw.email_text = "x".repeat(30_000);
        }
        s
    };
    // 40 x ~30 KB is over 1,000,000 bytes.
    let err = t
        .client
        .send(big(40, "too-many"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("InvalidArgument")
            && err.contains("user_ids: 40 users x")
            && err.contains("gateway.max_call_bytes"),
        "{err}"
    );
    let accepted = t.client.send(big(20, "fits")).await.expect("600 KB fits");
    assert_eq!(accepted.notification_ids.len(), 20);
    let requests_topic = t.topic("notify.requests");
    t.read_until::<tidings_schemas::records::NotificationRequest>(&requests_topic, WAIT, |r| {
        r.len() >= 20
    })
    .await;
    let requests: Vec<tidings_schemas::records::NotificationRequest> =
        t.read_all(&requests_topic).await;
    assert_eq!(requests.len(), 20, "only the accepted send was written");
    t.stop().await;
}

/// A batch's items are answered in order, each with its own notification
/// ids, whether the gateway writes them together (one user each, here in
/// two groups as together they are larger than the call may hold at once),
/// chunk by chunk (an item of five users larger than its share of the
/// buffer), or not at all (an invalid item); exactly the accepted ones are
/// on the requests topic.
async fn a_batch_answers_each_item_with_its_own_ids(backend: Backend) {
    let t = TestPipeline::start_with(backend, |c| c.gateway.expansion_buffer_bytes = 1 << 20).await;
    let item = |event: &str, users: usize| {
        let mut s = send("x", event, &[pb::Channel::Email], "");
        s.user_ids = (0..users).map(|i| format!("batch-{event}-{i}")).collect();
        if let Some(pb::send_request::Content::Raw(raw)) = &mut s.content {
            raw.email_text = "x".repeat(30_000);
        }
        s
    };
    let mut items: Vec<pb::SendRequest> = (0..12).map(|i| item(&format!("one-{i}"), 1)).collect();
    items.insert(5, item("five", 5));
    let mut invalid = item("invalid", 1);
    invalid.channels = vec![99];
    items.insert(9, invalid);
    let asked: Vec<(String, usize)> = items
        .iter()
        .map(|s| (s.event_id.clone(), s.user_ids.len()))
        .collect();
    let results = t
        .client
        .notifications()
        .send_batch(t.client.request(pb::SendBatchRequest { items }).unwrap())
        .await
        .expect("batch")
        .into_inner()
        .results;
    assert_eq!(results.len(), asked.len());
    let mut accepted = std::collections::BTreeSet::new();
    for (i, (result, (event, users))) in results.iter().zip(&asked).enumerate() {
        match &result.outcome {
            Some(pb::send_batch_result::Outcome::Error(e)) if event == "invalid" => {
                assert!(e.starts_with(&format!("items[{i}].channels")), "{e}")
            }
            Some(pb::send_batch_result::Outcome::Accepted(a)) if event != "invalid" => {
                assert_eq!(&a.event_id, event, "item {i} answered with another's event");
                assert_eq!(a.notification_ids.len(), *users, "item {i}");
                accepted.extend(a.notification_ids.iter().cloned());
            }
            other => panic!("item {i} ({event}): {other:?}"),
        }
    }
    assert_eq!(accepted.len(), 17, "twelve single users and five");
    let requests_topic = t.topic("notify.requests");
    t.read_until::<tidings_schemas::records::NotificationRequest>(&requests_topic, WAIT, |r| {
        r.len() >= 17
    })
    .await;
    let requests: Vec<tidings_schemas::records::NotificationRequest> =
        t.read_all(&requests_topic).await;
    assert_eq!(
        requests.len(),
        17,
        "each accepted notification written once"
    );
    let written: std::collections::BTreeSet<String> =
        requests.into_iter().map(|r| r.notification_id).collect();
    assert_eq!(written, accepted, "exactly the accepted notifications");
    t.stop().await;
}

mod batch_items {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded() {
        a_batch_answers_each_item_with_its_own_ids(Backend::Embedded).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn servers() {
        a_batch_answers_each_item_with_its_own_ids(Backend::Servers).await
    }
}

mod call_bytes {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded() {
        a_call_writes_a_bounded_number_of_bytes(Backend::Embedded).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn servers() {
        a_call_writes_a_bounded_number_of_bytes(Backend::Servers).await
    }
}

mod sizes {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded() {
        sizes_are_checked_at_the_gateway(Backend::Embedded).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn servers() {
        sizes_are_checked_at_the_gateway(Backend::Servers).await
    }
}

mod expansion {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded() {
        a_call_expands_to_a_bounded_number_of_notifications(Backend::Embedded).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn servers() {
        a_call_expands_to_a_bounded_number_of_notifications(Backend::Servers).await
    }
}
