//! A sender killed in the middle of a batch, against a provider that takes
//! 100 ms per message: the replay may resend only what was in flight at the
//! crash (at most the stage's concurrency), never the batch; with
//! `uncertain = skip` it resends nothing and says which ones it skipped.
//! The deliveries are produced once the first run holds its partition, so
//! that run sends them as first copies, without reading its ledgers; the
//! runs after each crash must find what it sent.

mod support;

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use support::sender::{SenderHarness, eventually};
use tidings_config::{SendersConfig, Uncertain, UncertainConfig};
use tidings_schemas::{
    AvroCodec,
    records::{TrackingEvent, TrackingKind},
};

const DELIVERIES: usize = 300;
const CONCURRENCY: usize = 16;
const CRASHES: usize = 3;

/// Kills the sender `CRASHES` times, each once it has sent another
/// `DELIVERIES / 6`, then lets a last one finish. Returns the harness and
/// the deliveries.
async fn crash_repeatedly(senders: &SendersConfig) -> (SenderHarness, Vec<String>) {
    let h = SenderHarness::start(1).await;
    h.twilio.delay(Duration::from_millis(100));
    let deliveries = SenderHarness::deliveries(DELIVERIES);
    for crash in 1..=CRASHES {
        let before: usize = h.received().values().sum();
        let mut running = h.run(senders, CONCURRENCY);
        if crash == 1 {
            running.assigned().await;
            h.produce(&deliveries).await;
        }
        eventually(
            &format!("crash {crash}: the sender sends again"),
            Duration::from_secs(90),
            || h.received().values().sum::<usize>() >= before + DELIVERIES / 6,
        )
        .await;
        // kill -9 as far as this process can: the stage's future is dropped
        // mid-batch, with requests in flight and nothing committed by it.
        running.task.abort();
        let _ = running.task.await;
    }
    let running = h.run(senders, CONCURRENCY);
    eventually(
        "every delivery reached the provider or was settled",
        Duration::from_secs(120),
        || h.received().len() == DELIVERIES,
    )
    .await;
    running.shutdown.cancel();
    let _ = running.task.await;
    (h, deliveries.into_iter().map(|d| d.delivery_id).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_resends_at_most_the_requests_in_flight() {
    let (h, ids) = crash_repeatedly(&SendersConfig::default()).await;
    let received = h.received();
    let total: usize = received.values().sum();
    let duplicates = total - received.len();
    eprintln!(
        "uncertain=resend: {DELIVERIES} deliveries, {CRASHES} crashes, concurrency {CONCURRENCY}: \
         provider received {total}, {} unique, {duplicates} duplicates",
        received.len()
    );
    let want: HashSet<&String> = ids.iter().collect();
    assert!(received.keys().all(|k| want.contains(k)));
    assert_eq!(received.len(), DELIVERIES, "every delivery sent");
    assert!(
        duplicates <= CRASHES * CONCURRENCY,
        "{duplicates} duplicates after {CRASHES} crashes; at most {} allowed",
        CRASHES * CONCURRENCY
    );
    // Every send has its SENT tracking event, under one id per delivery,
    // also when the run that sent it crashed before producing its batch's
    // events (the replay emits it again, under the same id).
    let codec = AvroCodec::local();
    let mut sent: HashMap<String, HashSet<String>> = HashMap::new();
    for bytes in h.read_all(h.topics.tracking()).await {
        let event: TrackingEvent = codec.decode(&bytes).expect("tracking event");
        if event.kind == TrackingKind::Sent {
            sent.entry(event.notification_id)
                .or_default()
                .insert(event.event_id);
        }
    }
    let missing = ids
        .iter()
        .filter(|id| !sent.contains_key(&format!("n-{id}")))
        .count();
    assert_eq!(missing, 0, "deliveries sent without a SENT tracking event");
    assert!(
        sent.values().all(|ids| ids.len() == 1),
        "a delivery's SENT events carry one event id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_uncertain_skip_a_crash_resends_nothing_and_logs_what_it_skipped() {
    let senders = SendersConfig {
        uncertain: UncertainConfig {
            sms: Some(Uncertain::Skip),
            ..UncertainConfig::default()
        },
        ..SendersConfig::default()
    };
    let h = SenderHarness::start(1).await;
    h.twilio.delay(Duration::from_millis(100));
    let deliveries = SenderHarness::deliveries(DELIVERIES);
    let mut running = h.run(&senders, CONCURRENCY);
    running.assigned().await;
    h.produce(&deliveries).await;
    eventually("the sender sends", Duration::from_secs(90), || {
        h.received().len() >= DELIVERIES / 4
    })
    .await;
    running.task.abort();
    let _ = running.task.await;
    let running = h.run(&senders, CONCURRENCY);
    // Every delivery ends sent or uncertain in the notification log.
    let mut uncertain = Vec::new();
    let started = tokio::time::Instant::now();
    loop {
        uncertain.clear();
        let mut settled = 0;
        for d in &deliveries {
            let log = h
                .store
                .notification_log
                .get(&d.notification_id)
                .await
                .expect("status log");
            match log.iter().map(|e| e.state.as_str()).next() {
                Some("sent") => settled += 1,
                Some("uncertain") => {
                    settled += 1;
                    uncertain.push(d.delivery_id.clone());
                }
                _ => {}
            }
        }
        if settled == DELIVERIES {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "only {settled} of {DELIVERIES} settled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.shutdown.cancel();
    let _ = running.task.await;
    let received = h.received();
    let total: usize = received.values().sum();
    eprintln!(
        "uncertain=skip: {DELIVERIES} deliveries, 1 crash: provider received {total}, {} unique, {} skipped as uncertain",
        received.len(),
        uncertain.len()
    );
    assert_eq!(total, received.len(), "no delivery sent twice");
    assert!(
        uncertain.len() <= CONCURRENCY,
        "{} uncertain; at most the {CONCURRENCY} in flight",
        uncertain.len()
    );
    // A skipped delivery is one the provider may have had; the rest all
    // reached it.
    assert_eq!(
        received.len()
            + uncertain
                .iter()
                .filter(|id| !received.contains_key(*id))
                .count(),
        DELIVERIES
    );
}
