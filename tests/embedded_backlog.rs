//! On the embedded default the mock brokers drop a partition's oldest
//! records beyond 5 MiB, read or not, so every writer waits for its topic's
//! readers (crates/kafka/src/backlog.rs). The gateway writes two topics per
//! notification: the request, and its ACCEPTED event on the tracking topic,
//! whose reader (template stats) may be slower than the enricher. Held
//! tracking readers must stop the gateway from accepting more, not let its
//! ACCEPTED events run past them until the mock drops them.

mod support;

use tidings::{
    client::Client,
    runtime::{Runtime, create_app, stop_tasks},
};
use tidings_config::Config;
use tidings_schemas::proto::v1 as pb;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Notifications per call, one user each, as a busy client batches them.
const ITEMS: usize = 500;
/// Calls at most: 20,000 ACCEPTED events, about 5 MB, five times the mark.
const CALLS: usize = 40;

/// Sends call number `call`'s batch: the items the gateway accepted, and
/// the first refusal.
async fn send_batch(client: &Client, call: usize) -> (usize, Option<String>) {
    let results = client
        .notifications()
        .send_batch(client.request(batch(call)).expect("request"))
        .await
        .expect("the batch is answered item by item")
        .into_inner()
        .results;
    accepted(&results)
}

fn batch(call: usize) -> pb::SendBatchRequest {
    pb::SendBatchRequest {
        items: (0..ITEMS)
            .map(|i| pb::SendRequest {
                event_id: format!("burst-{call}-{i}"),
                user_ids: vec![format!("user-{i}")],
                channels: vec![pb::Channel::Sms as i32],
                content: Some(pb::send_request::Content::Raw(pb::RawContent {
                    body: "Hello there".into(),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .collect(),
    }
}

/// The items of a batch the gateway accepted, and the first refusal.
fn accepted(results: &[pb::SendBatchResult]) -> (usize, Option<String>) {
    let mut n = 0;
    let mut refusal = None;
    for r in results {
        match &r.outcome {
            Some(pb::send_batch_result::Outcome::Accepted(_)) => n += 1,
            Some(pb::send_batch_result::Outcome::Error(e)) => {
                refusal.get_or_insert_with(|| e.clone());
            }
            None => panic!("an item without an outcome: {r:?}"),
        }
    }
    (n, refusal)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_tracking_readers_hold_the_gateway_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let prefix = format!("t{}", &Uuid::new_v4().simple().to_string()[..12]);
    let mut config = Config::default();
    config.kafka.topic_prefix = prefix.clone();
    config.kafka.group_prefix = prefix;
    // One partition: the mark is reached with fewest records.
    config.kafka.partitions = 1;
    // How long a call waits for room before it answers UNAVAILABLE.
    config.kafka.produce_timeout_ms = 1_000;
    config.gateway.grpc_addr = ([127, 0, 0, 1], 0).into();
    config.gateway.http_addr = ([127, 0, 0, 1], 0).into();
    config.store.url = format!("sqlite://{}/tidings.db", dir.path().display());
    let runtime = tokio::time::timeout(support::START_LIMIT, Runtime::connect(config, true))
        .await
        .expect("the runtime connects within the start limit")
        .expect("embedded runtime");
    let app = create_app(&runtime.store, "tests", vec!["*".into()], None)
        .await
        .expect("app");
    let backlog = runtime.cluster.backlog().expect("the embedded cluster");
    let tracking = runtime.topics.tracking().to_owned();
    // A tracking reader that has taken nothing: template stats, stalled.
    // The requests topic has no reader here, so only tracking can hold the
    // gateway back.
    backlog.register("held-tracking-reader", std::slice::from_ref(&tracking));

    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let gateway = runtime
        .spawn_gateway(&mut tasks, &shutdown)
        .await
        .expect("gateway");
    let client = Client::connect(
        &format!("http://{}", gateway.grpc),
        Some(app.0.clone()),
        Some(app.1.clone()),
    )
    .await
    .expect("gateway answers");

    let mut total = 0;
    let mut refusal = None;
    for call in 0..CALLS {
        let (n, refused) = send_batch(&client, call).await;
        total += n;
        if let Some(e) = refused {
            refusal = Some(e);
            break;
        }
    }
    let refusal = refusal.unwrap_or_else(|| {
        panic!("all {total} notifications were accepted past the held tracking reader")
    });
    assert!(
        refusal.contains(&tracking) && refusal.contains("readers are behind"),
        "{refusal}"
    );

    // What the tracking reader has not taken stays near the mark: at most
    // the events of the calls answered before their acknowledgements were
    // counted, a few calls' worth; without the wait it grew by every call.
    let marks = backlog.marks();
    let (_, unread) = backlog.fullest(&tracking).expect("tracking has a reader");
    assert!(
        unread.bytes <= marks.bytes + 4 * (ITEMS as u64) * 400,
        "{} unread bytes of ACCEPTED events, the mark is {} ({total} accepted)",
        unread.bytes,
        marks.bytes
    );
    assert!(total < CALLS * ITEMS, "{total}");

    // The reader catches up, and the gateway accepts again.
    let per_record = unread.bytes / unread.records.max(1);
    for _ in 0..unread.records {
        backlog.taken("held-tracking-reader", &tracking, 0, per_record);
    }
    assert_eq!(send_batch(&client, CALLS).await, (ITEMS, None));

    stop_tasks(&mut tasks, &shutdown)
        .await
        .expect("the gateway stops");
}
