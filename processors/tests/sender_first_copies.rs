//! A sender reads its sent ledger only for records that may repeat one it
//! handled before: first copies of deliveries, produced while it holds its
//! partition, go out without a read; a copy marked by its producer (the
//! runner re-producing after a failed produce, the enricher on a replayed
//! claim, `tidings dlq replay`) and a retry (`attempt > 0`) are checked,
//! and a copy of a sent delivery is not sent again. One test per binary:
//! it counts the store calls of the whole process.

mod support;

use std::time::Duration;

use support::sender::{SenderHarness, eventually};
use tidings_config::SendersConfig;
use tidings_kafka::Handling;
use tidings_schemas::{
    AvroCodec, Channel,
    records::{TrackingEvent, TrackingKind},
};
use tidings_telemetry::StoreCall;

const DELIVERIES: usize = 50;

/// Sent-ledger reads so far, in this process.
fn sent_ledger_reads() -> u64 {
    StoreCall::count("sqlite", "notification_log.sent_many")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_copies_skip_the_sent_ledger_and_copies_are_checked() {
    let h = SenderHarness::start(1).await;
    let mut running = h.run(&SendersConfig::default(), 16);
    running.assigned().await;
    let deliveries = SenderHarness::deliveries(DELIVERIES);
    h.produce(&deliveries).await;
    eventually("every delivery sent", Duration::from_secs(60), || {
        h.received().len() == DELIVERIES
    })
    .await;
    assert_eq!(
        sent_ledger_reads(),
        0,
        "first copies are sent without reading the sent ledger"
    );

    // A copy of a sent delivery produced again (marked), a retry of
    // another, and a new delivery marked as a copy (nothing sent it: it
    // goes out after its read).
    let topic = h.topics.deliver(Channel::Sms);
    let marked = deliveries[0].clone();
    let mut retry = deliveries[1].clone();
    retry.attempt = 1;
    let new_but_marked = SenderHarness::deliveries(1).remove(0);
    for (d, handling) in [
        (&marked, Handling::MaybeRepeat),
        (&retry, Handling::First),
        (&new_but_marked, Handling::MaybeRepeat),
    ] {
        let mut record = h.producer.encode(topic, &d.user_id, d).expect("encoded");
        record.handling = handling;
        h.producer.send_raw(&record).await.expect("produced");
    }
    // Each copy is done once its DEDUPLICATED event is on the tracking
    // topic: nothing of it can reach the provider after that.
    let codec = AvroCodec::local();
    let deduplicated = || async {
        h.read_all(h.topics.tracking())
            .await
            .iter()
            .map(|bytes| codec.decode::<TrackingEvent>(bytes).expect("event"))
            .filter(|e| e.kind == TrackingKind::Deduplicated)
            .map(|e| e.notification_id)
            .collect::<Vec<_>>()
    };
    let started = tokio::time::Instant::now();
    loop {
        let done = deduplicated().await;
        if [&marked, &retry]
            .iter()
            .all(|d| done.contains(&d.notification_id))
            && h.received().contains_key(&new_but_marked.delivery_id)
        {
            assert_eq!(done.len(), 2, "only the two copies deduplicated: {done:?}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the copies were not handled: deduplicated {done:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received = h.received();
    for d in [&marked, &retry, &new_but_marked] {
        assert_eq!(received[&d.delivery_id], 1, "{} sent once", d.delivery_id);
    }
    assert!(
        sent_ledger_reads() >= 1,
        "the copies were checked against the sent ledger"
    );
    running.shutdown.cancel();
    let _ = running.task.await;
    h.assert_no_dead_letters_or_retries().await;
}
