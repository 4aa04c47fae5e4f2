//! Where the brokers are: a real Kafka cluster, or librdkafka's mock cluster
//! running inside this process for the embedded default. Both are reached
//! through the same rdkafka clients; only the bootstrap address differs.

use std::{
    sync::{Arc, mpsc},
    thread::{self, JoinHandle},
    time::Duration,
};

use rdkafka::{
    ClientConfig, ClientContext,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, Consumer, ConsumerContext},
    error::RDKafkaErrorCode,
    mocking::MockCluster,
};
use tidings_config::KafkaConfig;
use tracing::{info, warn};

use crate::{
    KafkaError,
    backlog::{Backlog, Marks},
    topics::TopicSpec,
};

/// A running set of brokers.
pub struct KafkaCluster {
    bootstrap_servers: String,
    embedded: Option<EmbeddedBrokers>,
}

/// librdkafka's mock cluster on a thread of its own: `MockCluster` is not
/// `Send`, and must outlive every client that talks to it.
struct EmbeddedBrokers {
    commands: mpsc::Sender<MockCommand>,
    thread: Option<JoinHandle<()>>,
    /// What the mock brokers hold unread (they drop the oldest beyond a
    /// size, read or not).
    backlog: Arc<Backlog>,
}

/// Work for the mock cluster's thread. Topics are created through the mock
/// API: the mock brokers do not implement the CreateTopics admin request.
enum MockCommand {
    CreateTopic {
        name: String,
        partitions: i32,
        done: mpsc::Sender<Result<(), String>>,
    },
    Stop,
}

impl KafkaCluster {
    /// Starts the embedded brokers or checks that the configured ones answer,
    /// so a wrong address fails here, with the address in the message.
    pub async fn connect(config: &KafkaConfig) -> Result<Self, KafkaError> {
        if config.is_embedded() {
            return Self::start_embedded();
        }
        let cluster = Self {
            bootstrap_servers: config.bootstrap_servers.clone(),
            embedded: None,
        };
        cluster
            .check_reachable(config, Duration::from_secs(10))
            .await?;
        Ok(cluster)
    }

    /// An in-process mock cluster with one broker.
    pub fn start_embedded() -> Result<Self, KafkaError> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (commands, command_rx) = mpsc::channel::<MockCommand>();
        let thread = thread::Builder::new()
            .name("kafka-mock-cluster".into())
            .spawn(move || match MockCluster::new(1) {
                Ok(mock) => {
                    let _ = ready_tx.send(Ok(mock.bootstrap_servers()));
                    // Serves commands until stopped or its owner is gone.
                    while let Ok(MockCommand::CreateTopic {
                        name,
                        partitions,
                        done,
                    }) = command_rx.recv()
                    {
                        let _ = done.send(
                            mock.create_topic(&name, partitions, 1)
                                .map_err(|e| e.to_string()),
                        );
                    }
                    drop(mock);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| KafkaError::Embedded(e.to_string()))?;
        let bootstrap_servers = ready_rx
            .recv()
            .map_err(|_| KafkaError::Embedded("mock cluster thread exited".into()))?
            .map_err(|e| KafkaError::Embedded(e.to_string()))?;
        info!(%bootstrap_servers, "started embedded Kafka (librdkafka mock cluster)");
        Ok(Self {
            bootstrap_servers,
            embedded: Some(EmbeddedBrokers {
                commands,
                thread: Some(thread),
                backlog: Arc::new(Backlog::new(Marks::default())),
            }),
        })
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// What the embedded brokers hold unread, which writers wait on (see
    /// [`crate::backlog`]); None for real brokers.
    pub fn backlog(&self) -> Option<Arc<Backlog>> {
        self.embedded.as_ref().map(|e| e.backlog.clone())
    }

    /// librdkafka properties every client shares.
    pub fn client_config(&self, config: &KafkaConfig) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        for (k, v) in &config.client {
            c.set(k, v);
        }
        c
    }

    async fn check_reachable(
        &self,
        config: &KafkaConfig,
        timeout: Duration,
    ) -> Result<(), KafkaError> {
        let consumer: BaseConsumer<LastError> = self
            .client_config(config)
            .create_with_context(LastError::default())
            .map_err(|e| KafkaError::client("metadata client", e))?;
        let servers = self.bootstrap_servers.clone();
        tokio::task::spawn_blocking(move || {
            consumer
                .fetch_metadata(None, timeout)
                .map(|_| ())
                .map_err(|e| {
                    // The metadata error only says the transport failed; the
                    // cause (refused, TLS verification, SASL) comes as an error
                    // event, which waits in the client's queue until polled.
                    for _ in 0..10 {
                        if consumer.poll(Duration::from_millis(10)).is_some() {
                            break;
                        }
                    }
                    match consumer.context().take() {
                        Some(cause) => format!("{e}; {cause}"),
                        None => e.to_string(),
                    }
                })
        })
        .await
        .map_err(|e| KafkaError::Embedded(e.to_string()))?
        .map_err(|reason| KafkaError::Unreachable {
            servers,
            timeout,
            reason,
        })
    }

    /// Creates the topics that do not exist yet, with `max.message.bytes` at
    /// `kafka.max_message_bytes`; existing ones are left alone. (The mock
    /// brokers take no topic settings: there the producer's own limit holds.)
    pub async fn ensure_topics(
        &self,
        config: &KafkaConfig,
        specs: &[TopicSpec],
    ) -> Result<(), KafkaError> {
        if let Some(embedded) = &self.embedded {
            for spec in specs {
                let (done, result) = mpsc::channel();
                let command = MockCommand::CreateTopic {
                    name: spec.name.clone(),
                    partitions: spec.partitions,
                    done,
                };
                embedded
                    .commands
                    .send(command)
                    .map_err(|_| KafkaError::Embedded("mock cluster stopped".into()))?;
                result
                    .recv()
                    .map_err(|_| KafkaError::Embedded("mock cluster stopped".into()))?
                    .map_err(|e| {
                        KafkaError::Embedded(format!("creating topic {}: {e}", spec.name))
                    })?;
            }
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = self
            .client_config(config)
            .create()
            .map_err(|e| KafkaError::client("admin client", e))?;
        let retention: Vec<String> = specs.iter().map(|s| s.retention_ms.to_string()).collect();
        // The producer's `message.max.bytes` and the topics' limit are one
        // setting, so whatever the producer accepts the brokers store.
        let max_message_bytes = config.max_message_bytes.to_string();
        let replication = if self.is_embedded() {
            1
        } else {
            config.replication_factor
        };
        let new_topics: Vec<NewTopic<'_>> = specs
            .iter()
            .zip(&retention)
            .map(|(s, r)| {
                NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(replication))
                    .set("retention.ms", r)
                    .set("max.message.bytes", &max_message_bytes)
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin
            .create_topics(&new_topics, &opts)
            .await
            .map_err(|e| KafkaError::client("create topics", e))?;
        let mut created = Vec::new();
        for result in results {
            match result {
                Ok(name) => {
                    info!(topic = %name, "created topic");
                    created.push(name);
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(KafkaError::CreateTopic { topic: name, code }),
            }
        }
        let created: Vec<(String, i32)> = specs
            .iter()
            .filter(|s| created.contains(&s.name))
            .map(|s| (s.name.clone(), s.partitions))
            .collect();
        self.wait_until_led(config, created).await
    }

    /// Waits until every partition of the topics just created answers for
    /// its offsets. For a moment after creation their brokers answer
    /// NotLeaderForPartition, which a producer retries with a backoff of
    /// up to a second and a stage's assignment waits out partition by
    /// partition: the first burst after `tidings init` stalled 0.5-1.3 s
    /// (the bench's p99 at 500/s on real Kafka, docs/benchmarks.md). A
    /// partition still unsettled after [`SETTLE_PATIENCE`] is only logged:
    /// the clients retry by themselves.
    async fn wait_until_led(
        &self,
        config: &KafkaConfig,
        topics: Vec<(String, i32)>,
    ) -> Result<(), KafkaError> {
        if topics.is_empty() {
            return Ok(());
        }
        let consumer: BaseConsumer = self
            .client_config(config)
            .create()
            .map_err(|e| KafkaError::client("metadata client", e))?;
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            for (topic, partitions) in &topics {
                for partition in 0..*partitions {
                    if let Err(e) = watermarks(&consumer, topic, partition, SETTLE_PATIENCE) {
                        warn!(%topic, partition, error = %e, "a new partition has no leader yet; its clients will retry");
                    }
                }
            }
            info!(
                topics = topics.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "new topics have their leaders"
            );
        })
        .await
        .map_err(|e| KafkaError::Embedded(e.to_string()))
    }
}

/// How long [`KafkaCluster::ensure_topics`] waits for a new partition's
/// leader before it leaves the rest to the clients' retries.
const SETTLE_PATIENCE: Duration = Duration::from_secs(30);

/// Keeps the last error librdkafka reported, so a failed reachability check
/// can say why (e.g. "certificate verify failed") and not only that the
/// transport failed.
#[derive(Default)]
struct LastError(std::sync::Mutex<Option<String>>);

impl LastError {
    fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn keep(&self, cause: String) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(cause);
    }
}

impl ClientContext for LastError {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
        ) {
            self.keep(log_message.to_owned());
        }
        DefaultClientContext.log(level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.keep(reason.to_owned());
        DefaultClientContext.error(error, reason);
    }
}

impl ConsumerContext for LastError {}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        if let Some(mut embedded) = self.embedded.take() {
            let _ = embedded.commands.send(MockCommand::Stop);
            if let Some(thread) = embedded.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// Whether a metadata answer comes from a cluster still settling (a new
/// topic whose leader is not elected yet, a broker restarting or out of
/// reach for a moment): worth asking again, unlike a wrong topic name or
/// a refused credential.
pub fn is_settling(error: &rdkafka::error::KafkaError) -> bool {
    use RDKafkaErrorCode as Code;
    matches!(
        error,
        rdkafka::error::KafkaError::MetadataFetch(
            Code::NotLeaderForPartition
                | Code::LeaderNotAvailable
                | Code::UnknownTopicOrPartition
                | Code::UnknownLeaderEpoch
                | Code::FencedLeaderEpoch
                | Code::RequestTimedOut
                | Code::OperationTimedOut
                | Code::BrokerTransportFailure
                | Code::AllBrokersDown
        )
    )
}

/// The low and high watermarks of a partition, asked again every 200 ms
/// for up to `patience` while the cluster [is settling](is_settling) (right
/// after the first write to a new topic its brokers may not agree on a
/// leader yet). Blocks, as `fetch_watermarks` itself does.
pub fn watermarks<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partition: i32,
    patience: Duration,
) -> Result<(i64, i64), rdkafka::error::KafkaError> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Err(e) if is_settling(&e) && std::time::Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(200));
            }
            answer => return answer,
        }
    }
}
