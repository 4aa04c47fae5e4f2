//! Test harness: the whole pipeline in this process, on the embedded default
//! or on the real Kafka and Cassandra started by `scripts/servers.sh up`.

#![allow(dead_code)]

pub mod apns_provider;
pub mod email_provider;
pub mod feed_users;
pub mod http;
pub mod sms_provider;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer, StreamConsumer},
};
use tempfile::TempDir;
use tidings::{
    client::Client,
    runtime::{Pipeline, create_app},
};
use tidings_config::Config;
use tidings_schemas::{AvroCodec, AvroRecord};
use uuid::Uuid;

/// Serves a local provider stand-in on a free loopback port.
pub async fn serve_on_loopback(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// librdkafka's mock cluster and SQLite: what `tidings dev` runs.
    Embedded,
    /// Real Kafka and Cassandra from `scripts/servers.sh`.
    Servers,
}

pub fn kafka_address() -> String {
    std::env::var("TIDINGS_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

pub fn cql_address() -> String {
    std::env::var("TIDINGS_TEST_CQL").unwrap_or_else(|_| "127.0.0.1:19042".into())
}

/// Serialises pipeline start-up against the shared Cassandra keyspace:
/// concurrent schema changes from many sessions make Cassandra disagree on
/// its schema.
static SCHEMA_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct TestPipeline {
    pub pipeline: Option<Pipeline>,
    pub backend: Backend,
    pub client: Client,
    pub bootstrap: String,
    pub prefix: String,
    pub config: Config,
    pub app: (String, String),
    dir: TempDir,
}

impl TestPipeline {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts with the test configuration adjusted by `tweak`.
    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::default();
        // Unique topics and groups per test, so tests share servers safely.
        let prefix = format!("t{}", &Uuid::new_v4().simple().to_string()[..12]);
        config.kafka.topic_prefix = prefix.clone();
        config.kafka.group_prefix = prefix.clone();
        config.kafka.partitions = 3;
        config.gateway.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.gateway.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.enricher.schedule_poll_ms = 200;
        match backend {
            Backend::Embedded => {
                config.store.url = format!("sqlite://{}/tidings.db", dir.path().display())
            }
            Backend::Servers => {
                config.kafka.bootstrap_servers = kafka_address();
                config.store.url = format!("scylla://{}/tidings_e2e", cql_address());
            }
        }
        tweak(&mut config);
        let pipeline = Self::launch(backend, config.clone()).await;
        let app = create_app(&pipeline.runtime.store, "tests", vec!["*".into()], None)
            .await
            .expect("test app");
        let client = connect(&pipeline, &app).await;
        let bootstrap = pipeline.runtime.cluster.bootstrap_servers().to_owned();
        Self {
            pipeline: Some(pipeline),
            backend,
            client,
            bootstrap,
            prefix,
            config,
            app,
            dir,
        }
    }

    async fn launch(backend: Backend, config: Config) -> Pipeline {
        let _guard = match backend {
            Backend::Servers => Some(SCHEMA_LOCK.lock().await),
            Backend::Embedded => None,
        };
        tokio::time::timeout(START_LIMIT, Pipeline::start(config, true))
            .await
            .unwrap_or_else(|_| panic!("the pipeline did not start within {START_LIMIT:?} on {backend:?}"))
            .unwrap_or_else(|e| {
            panic!("pipeline did not start on {backend:?}: {e:#}\n(for Servers, run `scripts/servers.sh up`; `scripts/servers.sh logs` shows the servers' logs)")
        })
    }

    /// Stops the pipeline and starts it again on the same store and topics
    /// (on the embedded default the in-process brokers start empty, as after
    /// a real restart of `tidings dev`).
    pub async fn restart(mut self) -> Self {
        if let Some(p) = self.pipeline.take() {
            stop_within_limit(p).await;
        }
        let pipeline = Self::launch(self.backend, self.config.clone()).await;
        self.client = connect(&pipeline, &self.app).await;
        self.bootstrap = pipeline.runtime.cluster.bootstrap_servers().to_owned();
        self.pipeline = Some(pipeline);
        self
    }

    pub fn store(&self) -> &tidings_store::Store {
        &self.pipeline.as_ref().expect("running").runtime.store
    }

    /// A client with other credentials.
    pub async fn client_as(&self, key: &str, secret: &str) -> Client {
        Client::connect(&self.grpc_endpoint(), Some(key.into()), Some(secret.into()))
            .await
            .expect("gateway answers")
    }

    pub fn topic(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.prefix)
    }

    pub fn grpc_endpoint(&self) -> String {
        format!(
            "http://{}",
            self.pipeline.as_ref().expect("running").gateway.grpc
        )
    }

    /// Stops every task; a task that failed, or a pipeline that does not
    /// stop within [`STOP_LIMIT`], fails the test.
    pub async fn stop(mut self) {
        if let Some(p) = self.pipeline.take() {
            stop_within_limit(p).await;
        }
    }

    /// A consumer that reads every partition of `topic` from the beginning.
    /// It is assigned the partitions rather than subscribing: no group join
    /// to wait for, and no membership to leave when it is dropped (rdkafka's
    /// drop of a group member waits for the close with no limit). librdkafka
    /// still wants a group id, which it never joins.
    pub fn reader(&self, topic: &str) -> StreamConsumer {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", format!("reader-{}", Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .create()
            .expect("test consumer");
        let mut partitions = TopicPartitionList::new();
        for p in partitions_of(&consumer, topic) {
            partitions
                .add_partition_offset(topic, p, Offset::Beginning)
                .expect("partition offset");
        }
        assert!(partitions.count() > 0, "{topic} has no partitions");
        consumer.assign(&partitions).expect("assign");
        consumer
    }

    /// Every record of `topic` written before this call: reads each
    /// partition up to its high watermark as of now.
    pub async fn read_all<T: AvroRecord>(&self, topic: &str) -> Vec<T> {
        let consumer = self.reader(topic);
        let codec = AvroCodec::local();
        let mut left: std::collections::HashMap<i32, i64> = std::collections::HashMap::new();
        for p in partitions_of(&consumer, topic) {
            let (low, high) = watermarks(&consumer, topic, p);
            if high > low {
                left.insert(p, high);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut records = Vec::new();
        while !left.is_empty() {
            let wait = deadline.saturating_duration_since(Instant::now());
            assert!(!wait.is_zero(), "timed out reading all of {topic}");
            if let Ok(Ok(m)) = tokio::time::timeout(wait, consumer.recv()).await {
                if m.offset() + 1 >= left.get(&m.partition()).copied().unwrap_or(0) {
                    left.remove(&m.partition());
                }
                records.push(
                    codec
                        .decode::<T>(m.payload().unwrap_or_default())
                        .expect("valid Avro in the Confluent wire format"),
                );
            }
        }
        records
    }

    /// Waits until the consumer group of `stage` (its name: `enricher`,
    /// `sender.sms`, `feed-writer`, ...) has committed, on every partition
    /// of `topic`, the high watermark as of this call: every record written
    /// to `topic` before the call has been handled, and what the stage
    /// produced from it is on its topics (a stage commits only after its
    /// outputs are acknowledged). The point after which a test may read an
    /// output topic with [`TestPipeline::read_all`] and assert what the
    /// stage did not do.
    pub async fn caught_up(&self, stage: &str, topic: &str) {
        let group = format!("{}.{stage}", self.config.kafka.group_prefix);
        // Only asks the group's coordinator for its offsets: a consumer that
        // neither subscribes nor commits never joins the stage's group.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("offsets client");
        let mut partitions = TopicPartitionList::new();
        let mut high_of = std::collections::HashMap::new();
        for p in partitions_of(&consumer, topic) {
            let (low, high) = watermarks(&consumer, topic, p);
            if high > low {
                high_of.insert(p, high);
                partitions.add_partition(topic, p);
            }
        }
        if high_of.is_empty() {
            return;
        }
        eventually(
            &format!("{group} to handle {topic} up to its high watermarks {high_of:?}"),
            Duration::from_secs(60),
            || {
                let committed =
                    consumer.committed_offsets(partitions.clone(), Duration::from_secs(10));
                let done = committed.is_ok_and(|c| {
                    c.elements().iter().all(|e| match e.offset() {
                        Offset::Offset(o) => o >= high_of[&e.partition()],
                        _ => false,
                    })
                });
                async move { done.then_some(()) }
            },
        )
        .await;
    }

    /// Reads records of `topic` until `done` holds for what was read, or
    /// fails the test after `timeout`. Returns the raw payloads and the
    /// decoded records.
    pub async fn read_until<T: AvroRecord>(
        &self,
        topic: &str,
        timeout: Duration,
        done: impl Fn(&[T]) -> bool,
    ) -> (Vec<Vec<u8>>, Vec<T>) {
        let consumer = self.reader(topic);
        let codec = AvroCodec::local();
        let deadline = Instant::now() + timeout;
        let (mut raw, mut records) = (Vec::new(), Vec::new());
        while !done(&records) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out on {topic}; read {} records so far",
                records.len()
            );
            if let Ok(Ok(m)) = tokio::time::timeout(left, consumer.recv()).await {
                let payload = m.payload().unwrap_or_default().to_vec();
                records.push(
                    codec
                        .decode::<T>(&payload)
                        .expect("valid Avro in the Confluent wire format"),
                );
                raw.push(payload);
            }
        }
        (raw, records)
    }
}

/// The low and high watermarks of a partition, asked again while the
/// brokers settle (a new topic's leader); anything else fails the test.
fn watermarks(consumer: &impl Consumer, topic: &str, partition: i32) -> (i64, i64) {
    tidings_kafka::watermarks(consumer, topic, partition, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("watermarks of {topic}/{partition}: {e}"))
}

/// The partition ids of `topic`.
fn partitions_of(consumer: &impl Consumer, topic: &str) -> Vec<i32> {
    consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata")
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect()
}

/// How long a pipeline may take to stop before the test fails: a hang here
/// must fail one test, not stall the whole run.
pub const STOP_LIMIT: Duration = Duration::from_secs(60);
/// Start-up waits for the schema lock other tests hold while they migrate.
pub const START_LIMIT: Duration = Duration::from_secs(180);

async fn stop_within_limit(pipeline: Pipeline) {
    tokio::time::timeout(STOP_LIMIT, pipeline.stop())
        .await
        .unwrap_or_else(|_| panic!("the pipeline did not stop within {STOP_LIMIT:?}"))
        .expect("clean shutdown");
}

async fn connect(pipeline: &Pipeline, app: &(String, String)) -> Client {
    Client::connect(
        &format!("http://{}", pipeline.gateway.grpc),
        Some(app.0.clone()),
        Some(app.1.clone()),
    )
    .await
    .expect("gateway answers")
}

/// Polls `check` until it returns `Some`, failing after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs each named scenario on both backends.
#[macro_export]
macro_rules! on_every_backend {
    ($($scenario:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::support::Backend::Embedded).await
                }
            )*
        }
        mod servers {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::support::Backend::Servers).await
                }
            )*
        }
    };
}

impl TestPipeline {
    /// Produces raw bytes to `topic`, as a client that bypasses the gateway
    /// (or a broken one) would, and waits for the broker's ack.
    pub async fn produce_raw(&self, topic: &str, key: &[u8], payload: &[u8]) {
        let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("producer");
        producer
            .send(
                rdkafka::producer::FutureRecord::to(topic)
                    .key(key)
                    .payload(payload),
                Duration::from_secs(10),
            )
            .await
            .expect("raw produce");
    }

    /// `GetTemplateStats` of `name`, or None while the call fails.
    pub async fn template_stats(
        &self,
        name: &str,
    ) -> Option<tidings_schemas::proto::v1::GetTemplateStatsResponse> {
        let request = self
            .client
            .request(tidings_schemas::proto::v1::GetTemplateStatsRequest { name: name.into() })
            .ok()?;
        Some(
            self.client
                .templates()
                .get_template_stats(request)
                .await
                .ok()?
                .into_inner(),
        )
    }

    /// A new user with only a phone number.
    pub async fn sms_user(&self, phone: &str) -> String {
        let user = format!("u-{}", Uuid::new_v4());
        self.client
            .upsert_user(tidings_schemas::proto::v1::UpsertUserRequest {
                user_id: user.clone(),
                phone: phone.into(),
                ..Default::default()
            })
            .await
            .expect("upsert user");
        user
    }
}
