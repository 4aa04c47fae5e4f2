//! A provider that refuses our credentials holds its channel: nothing is
//! dead-lettered or pushed through the retry tiers, the alert gauge is up
//! while it lasts, only a probe now and then reaches the provider, and the
//! deliveries go out on their own once the credentials work again.
//! (A file of its own: the alert gauge is process-wide.)

mod support;

use std::time::Duration;

use support::{
    sender::{SenderHarness, eventually},
    twilio as fake,
};
use tidings_config::SendersConfig;
use tidings_telemetry::ProviderFailing;

const DELIVERIES: usize = 40;
/// More than the first wave of concurrent requests, so some are probes.
const REFUSALS: usize = 6;
const CONCURRENCY: usize = 4;

fn alert() -> i64 {
    ProviderFailing { provider: "twilio" }.current()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_credentials_hold_the_channel_and_it_recovers_by_itself() {
    let h = SenderHarness::start(1).await;
    // Twilio refuses the account's credentials for the next few requests
    // (as if the token were rotated, then fixed in the config), then works.
    h.twilio
        .script((0..REFUSALS).map(|_| fake::error(401, 20003, "Authenticate")));
    let deliveries = SenderHarness::deliveries(DELIVERIES);
    h.produce(&deliveries).await;
    let running = h.run(&SendersConfig::default(), CONCURRENCY);

    eventually("the alert is raised", Duration::from_secs(60), || {
        alert() == 1
    })
    .await;
    // A refused request counts as received too: wait for every refusal and
    // every delivery, then for the log to say each one was sent.
    eventually(
        "every delivery goes out once the credentials work",
        Duration::from_secs(90),
        || h.received().values().sum::<usize>() >= DELIVERIES + REFUSALS,
    )
    .await;
    let started = tokio::time::Instant::now();
    for d in &deliveries {
        loop {
            let log = h
                .store
                .notification_log
                .get(&d.notification_id)
                .await
                .expect("status log");
            if log.iter().any(|e| e.state == "sent") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{} never logged as sent: {log:?}",
                d.delivery_id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(alert(), 0, "the alert clears on recovery");
    running.shutdown.cancel();
    let _ = running.task.await;

    let received = h.received();
    let total: usize = received.values().sum();
    // The refused requests were probes, not one per delivery per retry.
    assert_eq!(
        total,
        DELIVERIES + REFUSALS,
        "each delivery sent once, plus the refused probes: {received:?}"
    );
    h.assert_no_dead_letters_or_retries().await;
    // Every delivery's status is `sent`.
    for d in &deliveries {
        let log = h
            .store
            .notification_log
            .get(&d.notification_id)
            .await
            .expect("status log");
        assert_eq!(
            log.iter().map(|e| e.state.as_str()).collect::<Vec<_>>(),
            ["sent"],
            "{}",
            d.delivery_id
        );
    }
}
