//! Dead letters are not a dead end (`tidings dlq`, src/dlq.rs): a record a
//! stage gave up on is listed with its reason and source, found by topic,
//! time or notification id, shown in full with its payload decoded, and
//! replayed to the topic it came from once the cause is fixed: delivered
//! once, however often it is replayed. On the embedded default and on real
//! Kafka and Cassandra. The embedded brokers live only in this process, so
//! the test drives `DeadLetters` as a library against the pipeline's own
//! cluster, as the CLI does against a shared one.

mod support;

use std::time::Duration;

use support::{
    Backend, TestPipeline, eventually,
    sms_provider::{Answer, SmsProvider},
};
use tidings::dlq::{DeadLetters, Filter, ReplayEvent, ReplayOptions};
use tidings_schemas::{
    AvroCodec,
    proto::v1 as pb,
    records::{DeadLetter, Delivery},
};

const WAIT: Duration = Duration::from_secs(60);

fn dead_letters(t: &TestPipeline) -> DeadLetters {
    let runtime = &t.pipeline.as_ref().expect("running").runtime;
    DeadLetters::new(&runtime.cluster, &t.config.kafka, AvroCodec::local())
}

/// The SMS deliveries of `id` written so far, once the enricher and the
/// SMS sender have handled everything before this call.
async fn sms_deliveries_of(t: &TestPipeline, id: &str) -> Vec<Delivery> {
    t.caught_up("enricher", &t.topic("notify.requests")).await;
    let topic = t.topic("deliver.sms");
    t.caught_up("sender.sms", &topic).await;
    t.read_all::<Delivery>(&topic)
        .await
        .into_iter()
        .filter(|d| d.notification_id == id)
        .collect()
}

async fn a_rejected_sms_is_listed_shown_and_replayed_once_fixed(backend: Backend) {
    let (provider, addr) = SmsProvider::start().await;
    let t = TestPipeline::start_with(backend, |c| {
        c.providers.insert("sms".into(), SmsProvider::config(addr));
    })
    .await;
    // Twilio refuses the message once (400, not about the number); after
    // that the stand-in accepts: the "fix".
    let phone = "+14155550031";
    provider.script(
        phone,
        &[Answer {
            status: 400,
            retry_after_secs: None,
            code: 21617,
        }],
    );
    let user = t.sms_user(phone).await;
    let id = t
        .client
        .send(pb::SendRequest {
            user_ids: vec![user.clone()],
            channels: vec![pb::Channel::Sms as i32],
            content: Some(pb::send_request::Content::Raw(pb::RawContent {
                sms_text: "your code is 1234".into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .expect("send")
        .notification_ids[0]
        .clone();
    t.read_until::<DeadLetter>(&t.topic("deadletter"), WAIT, |d| !d.is_empty())
        .await;

    // Listed, by notification id, with where it came from and why.
    let dead = dead_letters(&t);
    let by_id = Filter {
        id: Some(id.clone()),
        ..Filter::default()
    };
    let listed = dead.list(&by_id, 10).await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let entry = &listed[0];
    assert_eq!(entry.letter.stage, "sender.sms");
    assert_eq!(entry.letter.source_topic, t.topic("deliver.sms"));
    assert_eq!(entry.letter.key.as_deref(), Some(user.as_bytes()));
    assert!(!entry.letter.reason.is_empty());
    assert!(entry.summary().contains(&id), "{}", entry.summary());
    // The other filters choose it, or not.
    let count = |filter: Filter| {
        let dead = &dead;
        async move { dead.list(&filter, 10).await.expect("list").len() }
    };
    let failed_at = entry.letter.failed_at;
    assert_eq!(
        count(Filter {
            source_topic: Some("deliver.sms".into()),
            since_ms: Some(failed_at),
            until_ms: Some(failed_at + 1),
            ..Filter::default()
        })
        .await,
        1
    );
    assert_eq!(
        count(Filter {
            source_topic: Some("notify.requests".into()),
            ..Filter::default()
        })
        .await,
        0
    );
    assert_eq!(
        count(Filter {
            until_ms: Some(failed_at),
            ..Filter::default()
        })
        .await,
        0
    );
    assert_eq!(
        count(Filter {
            id: Some("no-such-notification".into()),
            ..Filter::default()
        })
        .await,
        0
    );

    // Shown in full, the payload decoded.
    let shown = dead.show(entry.position).await.expect("show").to_json();
    assert_eq!(shown["position"], entry.position.to_string());
    assert_eq!(shown["stage"], "sender.sms");
    assert_eq!(shown["payload"]["record"], "tidings.v1.Delivery");
    assert_eq!(shown["payload"]["value"]["notification_id"], id.as_str());
    assert_eq!(shown["payload"]["value"]["target"], phone);
    assert_eq!(shown["payload"]["value"]["body"], "your code is 1234");

    // A dry run says what it would send, and sends nothing.
    let mut would = Vec::new();
    let report = dead
        .replay(
            &by_id,
            ReplayOptions {
                dry_run: true,
                ..ReplayOptions::default()
            },
            |event| {
                if let ReplayEvent::Replayed(e) = event {
                    would.push(e.position);
                }
            },
        )
        .await
        .expect("dry run");
    assert_eq!((report.matched, report.replayed), (1, 1));
    assert_eq!(would, [entry.position]);
    assert_eq!(sms_deliveries_of(&t, &id).await.len(), 1);
    assert_eq!(provider.answered(phone), [400]);

    // Replayed after the fix: back on deliver.sms, sent once.
    let report = dead
        .replay(&by_id, ReplayOptions::default(), |_| {})
        .await
        .expect("replay");
    assert_eq!((report.matched, report.replayed), (1, 1));
    eventually("the replayed SMS sent", WAIT, || async {
        let s = t.client.status(&id).await.ok()?;
        s.deliveries.iter().any(|d| d.state == "sent").then_some(())
    })
    .await;

    // Replayed again (by mistake, say): the sent-ledger keeps it from
    // going out twice.
    let report = dead
        .replay(&by_id, ReplayOptions::default(), |_| {})
        .await
        .expect("second replay");
    assert_eq!(report.replayed, 1);
    let deliveries = sms_deliveries_of(&t, &id).await;
    assert_eq!(deliveries.len(), 3, "the original and two replays");
    assert!(
        deliveries
            .iter()
            .all(|d| d.delivery_id == deliveries[0].delivery_id),
        "replays keep their ids"
    );
    assert_eq!(provider.answered(phone), [400, 201]);
    assert_eq!(provider.accepted(phone).len(), 1);
    // Nothing was dead-lettered again.
    assert_eq!(dead.list(&by_id, 10).await.expect("list").len(), 1);
    t.stop().await;
}

async fn undecodable_dead_letters_are_shown_and_not_replayed_by_default(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let topic = t.topic("notify.requests");
    t.produce_raw(&topic, &[0xff, 0xfe], b"not avro at all")
        .await;
    t.read_until::<DeadLetter>(&t.topic("deadletter"), WAIT, |d| !d.is_empty())
        .await;

    let dead = dead_letters(&t);
    let from_requests = Filter {
        source_topic: Some(topic.clone()),
        ..Filter::default()
    };
    let listed = dead.list(&from_requests, 10).await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let shown = dead.show(listed[0].position).await.expect("show").to_json();
    assert_eq!(shown["stage"], "enricher");
    assert_eq!(shown["key"]["hex"], "fffe", "{shown}");
    assert!(
        shown["payload"]["undecodable"]
            .as_str()
            .is_some_and(|why| why.contains("magic byte")),
        "{shown}"
    );

    // Replaying garbage would only dead-letter it again: skipped unless
    // asked for.
    let report = dead
        .replay(&from_requests, ReplayOptions::default(), |_| {})
        .await
        .expect("replay");
    assert_eq!(
        (report.matched, report.replayed, report.skipped_undecodable),
        (1, 0, 1)
    );
    let report = dead
        .replay(
            &from_requests,
            ReplayOptions {
                include_undecodable: true,
                ..ReplayOptions::default()
            },
            |_| {},
        )
        .await
        .expect("replay");
    assert_eq!(report.replayed, 1);
    // The enricher meets it again and dead-letters it again, with its key.
    t.caught_up("enricher", &topic).await;
    let again = dead.list(&from_requests, 10).await.expect("list");
    assert_eq!(again.len(), 2, "{again:?}");
    assert_eq!(again[1].letter.key.as_deref(), Some(&[0xff, 0xfe][..]));
    t.stop().await;
}

on_every_backend!(
    a_rejected_sms_is_listed_shown_and_replayed_once_fixed,
    undecodable_dead_letters_are_shown_and_not_replayed_by_default,
);
