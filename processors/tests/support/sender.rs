//! A channel sender in the real stage runner, on the embedded brokers and a
//! SQLite store, sending SMS through the production Twilio client to the
//! local Twilio stand-in: for the sender's behaviour under crashes and
//! provider trouble, which needs the runner's batches, retries and commits.

use std::{collections::HashMap, sync::Arc, time::Duration};

use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};
use tempfile::TempDir;
use tidings_config::{KafkaConfig, SendersConfig};
use tidings_kafka::{Assignment, AvroProducer, KafkaCluster, Stage, StageOptions, Topics};
use tidings_processors::{
    ChannelSender,
    senders::{
        http::HttpSettings,
        setup::{Secret, SendLimits},
        twilio::{TwilioConfig, TwilioProvider},
    },
};
use tidings_schemas::{AvroCodec, Channel, records::Delivery, tracking_link::LinkSigner};
use tidings_store::{Store, StoreOptions};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{FakeServer, Recorded, delivery, twilio as fake};

pub struct SenderHarness {
    pub cluster: KafkaCluster,
    pub kafka: KafkaConfig,
    pub topics: Topics,
    pub store: Store,
    pub producer: AvroProducer,
    pub twilio: FakeServer<fake::Twilio>,
    _dir: TempDir,
}

/// A running sender stage.
pub struct Running {
    pub task: JoinHandle<Result<(), tidings_kafka::KafkaError>>,
    pub shutdown: CancellationToken,
    assignment: watch::Receiver<Assignment>,
}

impl Running {
    /// Waits until the stage holds its partitions: records produced from
    /// now on are new to it (not ones a previous run may have handled).
    pub async fn assigned(&mut self) {
        tokio::time::timeout(
            Duration::from_secs(60),
            self.assignment.wait_for(Assignment::is_ready),
        )
        .await
        .expect("the sender was assigned its partitions within a minute")
        .expect("the stage publishes its assignment");
    }
}

impl SenderHarness {
    pub async fn start(partitions: i32) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = KafkaCluster::start_embedded().expect("embedded brokers");
        let prefix = format!("s{}", &Uuid::new_v4().simple().to_string()[..10]);
        let kafka = KafkaConfig {
            topic_prefix: prefix.clone(),
            group_prefix: prefix.clone(),
            ..KafkaConfig::default()
        };
        let topics = Topics::new(&prefix);
        cluster
            .ensure_topics(&kafka, &topics.specs(partitions))
            .await
            .expect("topics");
        let store = Store::connect(
            &format!("sqlite://{}/tidings.db", dir.path().display()),
            &StoreOptions::default(),
        )
        .await
        .expect("store");
        let producer = AvroProducer::new(&cluster, &kafka, AvroCodec::local()).expect("producer");
        let twilio = FakeServer::start(|_| fake::Twilio, fake::handle).await;
        Self {
            cluster,
            kafka,
            topics,
            store,
            producer,
            twilio,
            _dir: dir,
        }
    }

    /// `n` SMS deliveries, each to a user of its own (so the runner sends
    /// them concurrently), each carrying its delivery id as its text.
    pub fn deliveries(n: usize) -> Vec<Delivery> {
        (0..n)
            .map(|i| {
                let mut d = delivery("sms", "+14155550123");
                d.user_id = format!("user-{i}");
                d.notification_id = format!("n-{}", d.delivery_id);
                d.body = Some(d.delivery_id.clone());
                d
            })
            .collect()
    }

    pub async fn produce(&self, deliveries: &[Delivery]) {
        let topic = self.topics.deliver(Channel::Sms);
        futures::future::try_join_all(
            deliveries
                .iter()
                .map(|d| self.producer.send(topic, &d.user_id, d)),
        )
        .await
        .expect("deliveries produced");
    }

    /// Starts the SMS sender with `concurrency` records in flight per
    /// partition; the Twilio client allows more, so the stage is the bound.
    pub fn run(&self, senders: &SendersConfig, concurrency: usize) -> Running {
        let provider = TwilioProvider::new(
            TwilioConfig {
                account_sid: fake::ACCOUNT_SID.into(),
                auth_token: Secret::new(fake::AUTH_TOKEN),
                from: Some(fake::FROM.into()),
                messaging_service_sid: None,
                status_callback: None,
                base_url: self.twilio.url(),
                http: HttpSettings::default(),
                limits: SendLimits::new(concurrency * 4),
            },
            LinkSigner::new("sender-tests", "http://127.0.0.1:1"),
        )
        .expect("twilio provider");
        let sender = ChannelSender::new(
            Channel::Sms,
            Arc::new(provider),
            self.store.clone(),
            self.topics.clone(),
            AvroCodec::local(),
            senders.clone(),
        );
        let stage = Stage::new(
            &self.cluster,
            &self.kafka,
            self.producer.clone(),
            sender,
            &[self.topics.deliver(Channel::Sms).to_owned()],
            self.topics.dead_letter().to_owned(),
            StageOptions {
                max_concurrency: concurrency,
                min_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(500),
                close_timeout: Duration::from_secs(5),
                ..StageOptions::default()
            },
        )
        .expect("stage");
        let assignment = stage.assignment();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(stage.run(shutdown.clone()));
        Running {
            task,
            shutdown,
            assignment,
        }
    }

    /// The texts (delivery ids) of the messages Twilio accepted or is
    /// answering, with how many times each arrived.
    pub fn received(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for r in self
            .twilio
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/Messages.json"))
        {
            if let Some(body) = body_of(r) {
                *counts.entry(body).or_default() += 1;
            }
        }
        counts
    }

    /// Asserts that nothing went to the dead-letter topic or a retry tier
    /// (each read to its high watermark).
    pub async fn assert_no_dead_letters_or_retries(&self) {
        assert!(
            self.read_all(self.topics.dead_letter()).await.is_empty(),
            "nothing dead-lettered"
        );
        for tier in 0..tidings_kafka::RETRY_TIERS {
            assert!(
                self.read_all(self.topics.retry(tier)).await.is_empty(),
                "nothing sent to retry tier {tier}"
            );
        }
    }

    /// Every record on `topic`, read up to its high watermark.
    pub async fn read_all(&self, topic: &str) -> Vec<Vec<u8>> {
        read_topic(&self.cluster, &self.kafka, topic).await
    }
}

/// Every record on `topic` written before this call, as bytes: each
/// partition read to its high watermark as of now.
pub async fn read_topic(cluster: &KafkaCluster, kafka: &KafkaConfig, topic: &str) -> Vec<Vec<u8>> {
    let consumer: BaseConsumer = cluster
        .client_config(kafka)
        .set("group.id", format!("reader-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(10);
        let metadata = consumer
            .fetch_metadata(Some(&topic), timeout)
            .expect("metadata");
        let mut highs = HashMap::new();
        let mut tpl = TopicPartitionList::new();
        for p in metadata.topics()[0].partitions() {
            let (low, high) = tidings_kafka::watermarks(&consumer, &topic, p.id(), timeout)
                .unwrap_or_else(|e| panic!("watermarks of {topic}/{}: {e}", p.id()));
            if high > low {
                highs.insert(p.id(), high);
                tpl.add_partition_offset(&topic, p.id(), Offset::Beginning)
                    .expect("partition");
            }
        }
        let mut records = Vec::new();
        if highs.is_empty() {
            return records;
        }
        consumer.assign(&tpl).expect("assign");
        let started = std::time::Instant::now();
        while !highs.is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{topic} not read to its high watermark in 30 s"
            );
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                records.push(m.payload().unwrap_or_default().to_vec());
                if highs
                    .get(&m.partition())
                    .is_some_and(|h| m.offset() + 1 >= *h)
                {
                    highs.remove(&m.partition());
                }
            }
        }
        records
    })
    .await
    .expect("reader thread")
}

fn body_of(r: &Recorded) -> Option<String> {
    r.form().get("Body").cloned()
}

/// Waits for `check` to hold, polling, failing the test after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let started = tokio::time::Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
