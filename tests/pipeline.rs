//! The first vertical slice, end to end through the public gRPC API, on the
//! embedded default and on real Kafka and Cassandra: a send is accepted into
//! Kafka as Avro, the enricher reads the store and writes one delivery per
//! target, the senders deliver and record the outcome.

mod support;

use std::time::Duration;

use support::{Backend, TestPipeline, eventually};
use tidings_schemas::{
    codec::schema_id_of,
    proto::v1 as pb,
    records::{DeadLetter, Delivery, NotificationRequest, TrackingEvent, TrackingKind},
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

fn ios_token(seed: u8) -> String {
    format!("{seed:02x}").repeat(32)
}

async fn add_user(t: &TestPipeline, user: &str) {
    t.client
        .upsert_user(pb::UpsertUserRequest {
            user_id: user.into(),
            display_name: "Ann".into(),
            locale: "fr-FR".into(),
            email: format!("{user}@example.com"),
            phone: "+14155550100".into(),
            ..Default::default()
        })
        .await
        .expect("upsert user");
    t.client
        .register_device(user, pb::Platform::Ios, &ios_token(1))
        .await
        .expect("ios device");
    t.client
        .register_device(user, pb::Platform::Ios, &ios_token(2))
        .await
        .expect("second ios device");
    t.client
        .register_device(
            user,
            pb::Platform::Android,
            "fcm-token-0123456789-abcdefghijklmnop",
        )
        .await
        .expect("android device");
}

fn raw_send(user: &str, event_id: &str) -> pb::SendRequest {
    pb::SendRequest {
        event_id: event_id.into(),
        user_ids: vec![user.into()],
        content: Some(pb::send_request::Content::Raw(pb::RawContent {
            title: "Parcel".into(),
            body: "Your parcel has shipped".into(),
            sms_text: "Shipped!".into(),
            email_subject: "Shipped".into(),
            email_text: "Your parcel has shipped".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

async fn a_send_reaches_every_device_and_contact(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let user = format!("u-{}", Uuid::new_v4());
    add_user(&t, &user).await;

    let accepted = t
        .client
        .send(raw_send(&user, "order-42-shipped"))
        .await
        .expect("send accepted");
    assert_eq!(accepted.event_id, "order-42-shipped");
    assert_eq!(accepted.notification_ids.len(), 1);
    let notification_id = accepted.notification_ids[0].clone();

    // The request is on the request topic as Avro in the Confluent wire format.
    let (raw, requests) = t
        .read_until::<NotificationRequest>(&t.topic("notify.requests"), WAIT, |r| !r.is_empty())
        .await;
    assert_eq!(schema_id_of(&raw[0]).unwrap(), 1);
    assert_eq!(requests[0].user_id, user);
    assert_eq!(requests[0].notification_id, notification_id);

    // The enricher wrote one delivery per iOS device, rendered.
    let (_, ios) = t
        .read_until::<Delivery>(&t.topic("deliver.ios"), WAIT, |d| d.len() >= 2)
        .await;
    let mut tokens: Vec<_> = ios.iter().map(|d| d.target.clone()).collect();
    tokens.sort();
    assert_eq!(tokens, vec![ios_token(1), ios_token(2)]);
    assert!(
        ios.iter()
            .all(|d| d.title.as_deref() == Some("Parcel") && d.locale.as_deref() == Some("fr-FR"))
    );
    let (_, sms) = t
        .read_until::<Delivery>(&t.topic("deliver.sms"), WAIT, |d| !d.is_empty())
        .await;
    assert_eq!(sms[0].target, "+14155550100");
    assert_eq!(
        sms[0].body.as_deref(),
        Some("Shipped!"),
        "SMS gets its own text"
    );

    // The senders delivered to all six targets (the five contact points and
    // the user's in-app inbox, every user has one) and say so through the API.
    let status = eventually("six sent deliveries", WAIT, || async {
        let s = t.client.status(&notification_id).await.ok()?;
        (s.deliveries.iter().filter(|d| d.state == "sent").count() == 6).then_some(s)
    })
    .await;
    let mut channels: Vec<_> = status
        .deliveries
        .iter()
        .map(|d| (d.channel.as_str(), d.state.as_str()))
        .collect();
    channels.sort();
    // No web push subscription: the enricher's row for web says so.
    assert_eq!(
        channels,
        [
            ("android", "sent"),
            ("email", "sent"),
            ("in_app", "sent"),
            ("ios", "sent"),
            ("ios", "sent"),
            ("sms", "sent"),
            ("web", "no_contact"),
        ]
    );

    // Read to the end once every stage has handled what it was given: one
    // request, one delivery per target, each sent once.
    t.caught_up("enricher", &t.topic("notify.requests")).await;
    let requests = t
        .read_all::<NotificationRequest>(&t.topic("notify.requests"))
        .await;
    assert_eq!(requests.len(), 1, "{requests:?}");
    for (channel, targets) in [
        ("ios", 2),
        ("android", 1),
        ("sms", 1),
        ("email", 1),
        ("in_app", 1),
    ] {
        let topic = t.topic(&format!("deliver.{channel}"));
        assert_eq!(
            t.read_all::<Delivery>(&topic).await.len(),
            targets,
            "{channel}"
        );
        t.caught_up(&format!("sender.{channel}"), &topic).await;
    }

    // Tracking saw it accepted, rendered and sent, each delivery once.
    t.read_until::<TrackingEvent>(&t.topic("tracking"), WAIT, |e| {
        e.iter().any(|e| e.kind == TrackingKind::Accepted)
    })
    .await;
    let events = t.read_all::<TrackingEvent>(&t.topic("tracking")).await;
    assert!(events.iter().all(|e| e.notification_id == notification_id));
    let count = |kind| events.iter().filter(|e| e.kind == kind).count();
    assert_eq!(count(TrackingKind::Sent), 6, "{events:?}");
    assert_eq!(count(TrackingKind::Accepted), 1, "{events:?}");
    assert!(count(TrackingKind::Rendered) >= 1, "{events:?}");
    t.stop().await;
}

async fn bad_input_is_rejected_with_the_field_named(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let mut no_users = raw_send("x", "");
    no_users.user_ids.clear();
    let err = t.client.send(no_users).await.unwrap_err().to_string();
    assert!(
        err.contains("InvalidArgument") && err.contains("user_ids: is empty"),
        "{err}"
    );

    let err = t
        .client
        .upsert_user(pb::UpsertUserRequest {
            user_id: "u".into(),
            phone: "555-0100".into(),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("InvalidArgument") && err.contains("phone:"),
        "{err}"
    );

    let err = t
        .client
        .register_device("u", pb::Platform::Ios, "not-hex")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("InvalidArgument") && err.contains("token:"),
        "{err}"
    );
    t.stop().await;
}

async fn an_undecodable_record_is_dead_lettered_and_the_stage_goes_on(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let topic = t.topic("notify.requests");
    t.produce_raw(&topic, b"u-bad", b"not avro at all").await;

    // A valid send after the bad record is still processed.
    let user = format!("u-{}", Uuid::new_v4());
    add_user(&t, &user).await;
    let accepted = t
        .client
        .send(raw_send(&user, ""))
        .await
        .expect("send accepted");

    let (_, dead) = t
        .read_until::<DeadLetter>(&t.topic("deadletter"), WAIT, |d| !d.is_empty())
        .await;
    assert_eq!(dead[0].source_topic, topic);
    assert_eq!(dead[0].stage, "enricher");
    assert_eq!(dead[0].payload, b"not avro at all");
    assert_eq!(dead[0].key.as_deref(), Some(&b"u-bad"[..]));
    assert!(dead[0].reason.contains("magic byte"), "{}", dead[0].reason);
    assert!(!dead[0].retriable);

    eventually("the valid send delivered", WAIT, || async {
        let s = t.client.status(&accepted.notification_ids[0]).await.ok()?;
        // Five contact points and the in-app inbox.
        (s.deliveries.iter().filter(|d| d.state == "sent").count() == 6).then_some(())
    })
    .await;
    // Read to the end once the enricher has handled both records: only the
    // bad one was dead-lettered.
    t.caught_up("enricher", &topic).await;
    let dead = t.read_all::<DeadLetter>(&t.topic("deadletter")).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    t.stop().await;
}

on_every_backend!(
    a_send_reaches_every_device_and_contact,
    bad_input_is_rejected_with_the_field_named,
    an_undecodable_record_is_dead_lettered_and_the_stage_goes_on,
);
