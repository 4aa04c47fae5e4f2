//! The in-app sender in the real stage runner, on the real Kafka of
//! `scripts/servers.sh` and on each store engine (a SQLite file, and
//! Cassandra): a delivery on `deliver.in_app` becomes one item in the user's
//! inbox and one `NEW` event on `inbox.events`; the same delivery replayed
//! (through the stage, and past the sent ledger, as after a crash between
//! the put and the ledger) keeps one item, and the event it produces again
//! has the same id.

mod support;

use std::{sync::Arc, time::Duration};

use tempfile::TempDir;
use tidings_config::{InboxConfig, KafkaConfig, SendersConfig};
use tidings_kafka::{AvroProducer, Handling, KafkaCluster, Stage, StageOptions, Topics};
use tidings_processors::{
    ChannelSender, Provider,
    senders::inbox::{InboxProvider, new_item_event_id},
};
use tidings_schemas::{
    AvroCodec, AvroRecord, Channel,
    records::{Delivery, InboxEvent, InboxEventKind, TrackingEvent, TrackingKind},
};
use tidings_store::{InboxFilter, InboxQuery, Store, StoreOptions, now_millis};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn kafka_address() -> String {
    std::env::var("TIDINGS_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// A keyspace of this test's own: no other test binary migrates it at the
/// same time (concurrent schema changes make Cassandra disagree).
fn cassandra_url() -> String {
    let address = std::env::var("TIDINGS_TEST_CQL").unwrap_or_else(|_| "127.0.0.1:19042".into());
    format!("scylla://{address}/tidings_inbox_sender")
}

#[derive(Debug, Clone, Copy)]
enum Engine {
    Sqlite,
    Cassandra,
}

struct Harness {
    cluster: KafkaCluster,
    kafka: KafkaConfig,
    topics: Topics,
    store: Store,
    producer: AvroProducer,
    _dir: TempDir,
}

impl Harness {
    async fn start(engine: Engine) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let prefix = format!("ib{}", &Uuid::new_v4().simple().to_string()[..10]);
        let kafka = KafkaConfig {
            bootstrap_servers: kafka_address(),
            topic_prefix: prefix.clone(),
            group_prefix: prefix.clone(),
            ..KafkaConfig::default()
        };
        let cluster = KafkaCluster::connect(&kafka)
            .await
            .expect("Kafka from scripts/servers.sh up (TIDINGS_TEST_KAFKA)");
        let topics = Topics::new(&prefix);
        cluster
            .ensure_topics(&kafka, &topics.specs(3))
            .await
            .expect("topics");
        let url = match engine {
            Engine::Sqlite => format!("sqlite://{}/tidings.db", dir.path().display()),
            Engine::Cassandra => cassandra_url(),
        };
        let store = Store::connect(&url, &StoreOptions::default())
            .await
            .unwrap_or_else(|e| panic!("store at {url} (scripts/servers.sh up): {e}"));
        let producer = AvroProducer::new(&cluster, &kafka, AvroCodec::local()).expect("producer");
        Self {
            cluster,
            kafka,
            topics,
            store,
            producer,
            _dir: dir,
        }
    }

    fn provider(&self) -> InboxProvider {
        InboxProvider::new(
            self.store.clone(),
            self.producer.clone(),
            &self.topics,
            &InboxConfig::default(),
        )
    }

    /// Runs the in_app sender stage until `shutdown`.
    fn run(&self, shutdown: &CancellationToken) -> tokio::task::JoinHandle<()> {
        let sender = ChannelSender::new(
            Channel::InApp,
            Arc::new(self.provider()),
            self.store.clone(),
            self.topics.clone(),
            AvroCodec::local(),
            SendersConfig::default(),
        );
        let stage = Stage::new(
            &self.cluster,
            &self.kafka,
            self.producer.clone(),
            sender,
            &[self.topics.deliver(Channel::InApp).to_owned()],
            self.topics.dead_letter().to_owned(),
            StageOptions {
                close_timeout: Duration::from_secs(5),
                ..StageOptions::default()
            },
        )
        .expect("stage");
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            stage.run(shutdown).await.expect("the stage runs cleanly");
        })
    }

    /// Every record of `topic` written before this call, decoded: each
    /// partition read to its high watermark as of now.
    async fn read_all<T: AvroRecord + Send + 'static>(&self, topic: &str) -> Vec<T> {
        let codec = AvroCodec::local();
        support::sender::read_topic(&self.cluster, &self.kafka, topic)
            .await
            .iter()
            .map(|bytes| {
                codec
                    .decode::<T>(bytes)
                    .expect("a record of the topic's schema")
            })
            .collect()
    }

    /// Waits until the tracking topic has `kind` for `delivery`'s target,
    /// which the sender emits after the provider answered.
    async fn wait_for_tracking(&self, d: &Delivery, kind: TrackingKind) {
        let started = tokio::time::Instant::now();
        loop {
            let events: Vec<TrackingEvent> = self.read_all(self.topics.tracking()).await;
            if events
                .iter()
                .any(|e| e.notification_id == d.notification_id && e.kind == kind)
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no {kind:?} for {} within 60 s: {events:?}",
                d.delivery_id
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn inbox_events_of(&self, user: &str) -> Vec<InboxEvent> {
        let events: Vec<InboxEvent> = self.read_all(self.topics.inbox_events()).await;
        events.into_iter().filter(|e| e.user_id == user).collect()
    }

    async fn items_of(&self, user: &str) -> Vec<tidings_store::InboxItem> {
        self.store
            .inbox
            .list(
                user,
                &InboxQuery {
                    filter: InboxFilter::All,
                    category: None,
                    before: None,
                    limit: 100,
                },
            )
            .await
            .expect("list the inbox")
    }
}

fn in_app_delivery() -> Delivery {
    let user = format!("u-{}", Uuid::new_v4());
    let mut d = support::delivery("in_app", &user);
    d.user_id = user;
    d.notification_id = format!("n-{}", Uuid::new_v4());
    d.category = Some("billing".into());
    d.accepted_at = now_millis();
    d.action_url = Some("https://app.example/invoices/7".into());
    d.avatar_url = Some("https://cdn.example/billing.png".into());
    d
}

async fn a_delivery_lands_once_in_the_inbox_with_one_new_event(engine: Engine) {
    let h = Harness::start(engine).await;
    let shutdown = CancellationToken::new();
    let stage = h.run(&shutdown);
    let d = in_app_delivery();
    let topic = h.topics.deliver(Channel::InApp);
    h.producer
        .send(topic, &d.user_id, &d)
        .await
        .expect("delivery produced");
    h.wait_for_tracking(&d, TrackingKind::Sent).await;

    let items = h.items_of(&d.user_id).await;
    assert_eq!(items.len(), 1, "{items:?}");
    let item = &items[0];
    assert_eq!(item.notification_id, d.notification_id);
    assert_eq!(item.created_at, d.accepted_at);
    assert_eq!(
        (item.title.as_deref(), item.body.as_deref()),
        (d.title.as_deref(), d.body.as_deref())
    );
    assert_eq!(
        (&item.action_url, &item.avatar_url, &item.category),
        (&d.action_url, &d.avatar_url, &d.category)
    );
    assert_eq!(item.data, d.data);
    assert_eq!((item.read_at, item.archived_at), (None, None));

    let events = h.inbox_events_of(&d.user_id).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.kind, InboxEventKind::New);
    assert_eq!(event.event_id, new_item_event_id(&d.delivery_id));
    assert_eq!(
        event.notification_id.as_deref(),
        Some(d.notification_id.as_str())
    );
    assert_eq!((event.unread, event.unseen), (1, 1));
    let carried = event.item.as_ref().expect("a NEW event carries its item");
    assert_eq!(carried.title, d.title);
    assert_eq!(carried.action_url, d.action_url);
    assert_eq!(carried.created_at, d.accepted_at);

    // The same delivery again (produced again, so marked as a record that
    // may repeat, as the runner marks a re-produce and the enricher a
    // replayed claim): the sent ledger drops it before the provider, so
    // neither a second item nor a second event.
    let mut again = h.producer.encode(topic, &d.user_id, &d).expect("encoded");
    again.handling = Handling::MaybeRepeat;
    h.producer
        .send_raw(&again)
        .await
        .expect("delivery produced again");
    h.wait_for_tracking(&d, TrackingKind::Deduplicated).await;
    assert_eq!(h.items_of(&d.user_id).await.len(), 1);
    assert_eq!(h.inbox_events_of(&d.user_id).await.len(), 1);

    // Past the ledger (a crash after the put, before the sent mark): the
    // item stays one, and the event comes again under the same id, with the
    // same item, for the clients that missed it.
    h.provider()
        .deliver(&d)
        .await
        .expect("a replay is delivered again");
    let items = h.items_of(&d.user_id).await;
    assert_eq!(items.len(), 1, "{items:?}");
    let events = h.inbox_events_of(&d.user_id).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1].event_id, events[0].event_id);
    assert_eq!(events[1].item, events[0].item);
    assert_eq!(events[1].unread, 1);

    let dead: Vec<tidings_schemas::records::DeadLetter> = h.read_all(h.topics.dead_letter()).await;
    assert!(dead.is_empty(), "{dead:?}");
    shutdown.cancel();
    stage.await.expect("stage task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite() {
    a_delivery_lands_once_in_the_inbox_with_one_new_event(Engine::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_cassandra() {
    a_delivery_lands_once_in_the_inbox_with_one_new_event(Engine::Cassandra).await
}
