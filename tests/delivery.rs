//! Delivery through a real provider client (Twilio's REST API, served
//! locally), end to end through the public API, on the embedded default and
//! on real Kafka and Cassandra: transient failures (429 with Retry-After,
//! 5xx) are retried through the retry tiers and then delivered; permanent
//! rejections and deliveries that use up their attempts are dead-lettered.

mod support;

use std::time::Duration;

use support::{
    Backend, TestPipeline,
    apns_provider::ApnsServer,
    eventually,
    sms_provider::{Answer, SmsProvider},
};
use tidings_schemas::{
    AvroCodec,
    proto::v1 as pb,
    records::{DeadLetter, Delivery, TrackingEvent, TrackingKind},
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

async fn sms_user(t: &TestPipeline, phone: &str) -> String {
    let user = format!("u-{}", Uuid::new_v4());
    t.client
        .upsert_user(pb::UpsertUserRequest {
            user_id: user.clone(),
            phone: phone.into(),
            ..Default::default()
        })
        .await
        .expect("upsert user");
    user
}

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
    let user = sms_user(&t, flaky).await;
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
    let user = sms_user(&t, down).await;
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
    let user = sms_user(&t, rejected).await;
    let refused = t
        .client
        .send(sms(&user, "too long"))
        .await
        .unwrap()
        .notification_ids[0]
        .clone();

    let (_, dead) = t
        .read_until::<DeadLetter>(&t.topic("deadletter"), WAIT, |d| d.len() >= 2)
        .await;
    let codec = AvroCodec::local();
    let of = |id: &str| {
        dead.iter()
            .find(|d| {
                codec
                    .decode::<Delivery>(&d.payload)
                    .is_ok_and(|del| del.notification_id == id)
            })
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

    let (_, events) = t
        .read_until::<TrackingEvent>(&t.topic("tracking"), WAIT, |e| {
            e.iter()
                .filter(|e| e.kind == TrackingKind::DeadLettered)
                .count()
                >= 2
        })
        .await;
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
    let push = |event: &str| pb::SendRequest {
        event_id: event.into(),
        user_ids: vec![user.clone()],
        channels: vec![pb::Channel::Ios as i32],
        content: Some(pb::send_request::Content::Raw(pb::RawContent {
            title: "Hi".into(),
            body: "there".into(),
            ..Default::default()
        })),
        ..Default::default()
    };

    let id = t.client.send(push("first")).await.unwrap().notification_ids[0].clone();
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

    // The app is reinstalled: registering again wins over the tombstone.
    apns.reinstall(&gone);
    tokio::time::sleep(Duration::from_millis(5)).await;
    t.client
        .register_device(&user, pb::Platform::Ios, &gone)
        .await
        .unwrap();
    assert_eq!(devices(&t, &user).await.len(), 2);
    let again = t
        .client
        .send(push("second"))
        .await
        .unwrap()
        .notification_ids[0]
        .clone();
    eventually("both devices reached", WAIT, || async {
        let s = t.client.status(&again).await.ok()?;
        (s.deliveries.iter().filter(|d| d.state == "sent").count() == 2).then_some(())
    })
    .await;
    assert_eq!(apns.delivered().iter().filter(|t| **t == gone).count(), 1);
    t.stop().await;
}

on_every_backend!(
    transient_failures_are_retried_then_delivered_and_permanent_ones_dead_lettered,
    an_unregistered_device_is_tombstoned_until_registered_again,
);
