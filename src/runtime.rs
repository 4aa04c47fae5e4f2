//! Connects to Kafka and the store from one [`Config`] and runs the gateway
//! and processor stages, all in one process (`tidings dev`, tests) or a role
//! per process (`tidings gateway`, `tidings process enricher`).

use std::{fmt, path::Path, str::FromStr, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use tidings_config::Config;
use tidings_gateway::auth::{PERMISSIONS, hash_secret};
use tidings_gateway::{
    Gateway, GatewayAddrs, PROBE_EVERY, Probe,
    webhooks::{SendGridSignatures, TwilioSignatures},
};
use tidings_kafka::{
    AvroProducer, KafkaCluster, Pickup, Processor, RETRY_TIERS, Stage, StageAssignments,
    StageOptions, Topics,
};
use tidings_processors::{
    ChannelSender, Enricher, FanoutPlanner, FeedFollows, FeedPruner, FeedWriter, LogSink, Provider,
    ReactionTally, RetryRelay, Scheduler, TemplateStats,
    senders::{
        inbox::{InboxProvider, UnreadBadge},
        providers::ProviderConfig,
    },
};
use tidings_schemas::{AvroCodec, Channel, tracking_link::LinkSigner};
use tidings_store::{App, Replication, SchemaStatus, Store, StoreOptions};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use uuid::Uuid;

/// A processor stage that can run in a process of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageName {
    Enricher,
    Scheduler,
    Sender(Channel),
    /// Retry tier 0..RETRY_TIERS.
    Retry(usize),
    TemplateStats,
    FeedPlanner,
    FeedWriter,
    FeedTally,
    FeedPruner,
    FeedFollows,
}

impl StageName {
    pub fn all() -> Vec<StageName> {
        let mut all = vec![StageName::Enricher, StageName::Scheduler];
        all.extend(Channel::ALL.map(StageName::Sender));
        all.extend((0..RETRY_TIERS).map(StageName::Retry));
        all.push(StageName::TemplateStats);
        all.extend([
            StageName::FeedPlanner,
            StageName::FeedWriter,
            StageName::FeedTally,
            StageName::FeedPruner,
            StageName::FeedFollows,
        ]);
        all
    }
}

impl fmt::Display for StageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageName::Enricher => f.write_str("enricher"),
            StageName::Scheduler => f.write_str("scheduler"),
            // Kubernetes names take no `_`: `sender-in-app`.
            StageName::Sender(c) => write!(f, "sender-{}", c.as_str().replace('_', "-")),
            StageName::Retry(tier) => write!(f, "retry-{}", tier + 1),
            StageName::TemplateStats => f.write_str("template-stats"),
            StageName::FeedPlanner => f.write_str("feed-planner"),
            StageName::FeedWriter => f.write_str("feed-writer"),
            StageName::FeedTally => f.write_str("feed-tally"),
            StageName::FeedPruner => f.write_str("feed-pruner"),
            StageName::FeedFollows => f.write_str("feed-follows"),
        }
    }
}

impl FromStr for StageName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // `sender.ios` and `sender.in_app` (the consumer-group and metric
        // spelling) work too.
        let s = s.replace(['.', '_'], "-");
        StageName::all()
            .into_iter()
            .find(|n| n.to_string() == s)
            .ok_or_else(|| {
                let names: Vec<String> = StageName::all().iter().map(ToString::to_string).collect();
                format!("unknown stage `{s}`; expected one of: {}", names.join(", "))
            })
    }
}

/// Connections shared by everything running in this process.
pub struct Runtime {
    pub config: Config,
    pub store: Store,
    pub producer: AvroProducer,
    pub topics: Topics,
    log_sink: Arc<LogSink>,
    /// Where each stage consumer started here stands in its group.
    stages: StageAssignments,
    /// Last: fields drop in order, and the embedded brokers must outlive
    /// every client.
    pub cluster: KafkaCluster,
}

impl Runtime {
    /// Connects Kafka and the store, creating topics and tables when asked
    /// (always on the embedded default, where nothing exists before).
    pub async fn connect(config: Config, init: bool) -> Result<Self> {
        let cluster = KafkaCluster::connect(&config.kafka)
            .await
            .context("connecting to Kafka (kafka.bootstrap_servers)")?;
        let store = connect_store(&config, init).await?;
        let codec = codec(&config.kafka).await?;
        let producer = AvroProducer::new(&cluster, &config.kafka, codec)
            .context("creating the Kafka producer")?;
        let topics = Topics::new(&config.kafka.topic_prefix);
        let runtime = Self {
            config,
            store,
            producer,
            topics,
            log_sink: Arc::new(LogSink::default()),
            stages: StageAssignments::default(),
            cluster,
        };
        if init || runtime.cluster.is_embedded() {
            runtime.create_topics().await?;
        }
        Ok(runtime)
    }

    pub async fn create_topics(&self) -> Result<()> {
        let specs = self.topics.specs(self.config.kafka.partitions);
        self.cluster
            .ensure_topics(&self.config.kafka, &specs)
            .await
            .context("creating Kafka topics")?;
        info!(count = specs.len(), prefix = %self.config.kafka.topic_prefix, "topics ready");
        Ok(())
    }

    /// The deliveries the log-sink provider has printed.
    pub fn log_sink_count(&self) -> u64 {
        self.log_sink.sent()
    }

    /// The configured provider of a channel (`[providers.<channel>]`).
    /// Providers with delivery receipts sign a token per delivery with the
    /// tracking secret, which the gateway's webhooks verify. `in_app` always
    /// has the inbox (and refuses a `[providers.in_app]`).
    fn provider(&self, channel: Channel) -> Result<Arc<dyn Provider>> {
        let config =
            ProviderConfig::for_channel(channel, self.config.providers.get(channel.as_str()))?;
        if channel == Channel::InApp {
            return Ok(Arc::new(InboxProvider::new(
                self.store.clone(),
                self.producer.clone(),
                &self.topics,
                &self.config.inbox,
            )));
        }
        let tracking = &self.config.tracking;
        let receipts = LinkSigner::new(&tracking.link_secret, &tracking.public_url);
        let badge = self
            .config
            .inbox
            .push_badge
            .then(|| UnreadBadge::new(self.store.inbox.clone()));
        Ok(config.build(channel, self.log_sink.clone(), &receipts, badge)?)
    }

    /// Starts one stage on `tasks`.
    pub fn spawn_stage(
        &self,
        name: StageName,
        tasks: &mut JoinSet<Result<()>>,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let options = StageOptions {
            max_batch_bytes: self.config.kafka.stage_batch_bytes,
            ..StageOptions::default()
        };
        // Off the path to a user: a caught-up member may fetch less often.
        let relaxed = StageOptions {
            pickup: Pickup::Relaxed,
            ..options
        };
        let (store, topics) = (&self.store, &self.topics);
        match name {
            StageName::Enricher => self.spawn_consumer(
                Enricher::new(
                    store.clone(),
                    topics.clone(),
                    self.producer.codec().clone(),
                    self.config.enricher.clone(),
                    &self.config.tracking,
                    self.config.gateway.max_devices_per_user,
                ),
                topics.requests().to_owned(),
                options,
                tasks,
                shutdown,
            ),
            StageName::Scheduler => {
                let poll = Duration::from_millis(self.config.enricher.schedule_poll_ms);
                let scheduler =
                    Scheduler::new(store.clone(), self.producer.clone(), topics.clone(), poll);
                let shutdown = shutdown.clone();
                tasks
                    .spawn(async move { scheduler.run(shutdown).await.context("stage scheduler") });
                Ok(())
            }
            StageName::TemplateStats => self.spawn_consumer(
                TemplateStats::new(store.clone()),
                topics.tracking().to_owned(),
                relaxed,
                tasks,
                shutdown,
            ),
            StageName::FeedPlanner => self.spawn_consumer(
                FanoutPlanner::new(store.clone(), topics.clone(), &self.config.feed),
                topics.posts().to_owned(),
                options,
                tasks,
                shutdown,
            ),
            StageName::FeedWriter => self.spawn_consumer(
                FeedWriter::new(store.clone(), topics.clone(), &self.config.feed),
                topics.fanout().to_owned(),
                options,
                tasks,
                shutdown,
            ),
            StageName::FeedTally => self.spawn_consumer(
                ReactionTally::new(store.clone(), topics.clone(), &self.config.feed),
                topics.reactions().to_owned(),
                relaxed,
                tasks,
                shutdown,
            ),
            StageName::FeedFollows => self.spawn_consumer(
                FeedFollows::new(store.clone(), topics.clone(), &self.config.feed),
                topics.follows().to_owned(),
                relaxed,
                tasks,
                shutdown,
            ),
            StageName::FeedPruner => self.spawn_consumer(
                FeedPruner::new(store.clone(), &self.config.feed),
                topics.revisions().to_owned(),
                relaxed,
                tasks,
                shutdown,
            ),
            StageName::Retry(tier) => {
                // A tier holds records until due: let a member wait that long
                // between polls without being evicted from its group.
                let delay = Duration::from_millis(
                    self.config.senders.retry_delays_ms[tier.min(RETRY_TIERS - 1)],
                );
                let options = StageOptions {
                    max_poll_interval: delay + Duration::from_secs(300),
                    ..relaxed
                };
                self.spawn_consumer(
                    RetryRelay::new(tier, topics.clone()),
                    topics.retry(tier).to_owned(),
                    options,
                    tasks,
                    shutdown,
                )
            }
            StageName::Sender(channel) => self.spawn_consumer(
                ChannelSender::new(
                    channel,
                    self.provider(channel)?,
                    store.clone(),
                    topics.clone(),
                    self.producer.codec().clone(),
                    self.config.senders.clone(),
                ),
                topics.deliver(channel).to_owned(),
                options,
                tasks,
                shutdown,
            ),
        }
    }

    /// Runs `processor` on `input` in the shared stage runner, on `tasks`.
    fn spawn_consumer<P: Processor>(
        &self,
        processor: P,
        input: String,
        options: StageOptions,
        tasks: &mut JoinSet<Result<()>>,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let stage_name = processor.name();
        let stage = Stage::new(
            &self.cluster,
            &self.config.kafka,
            self.producer.clone(),
            processor,
            &[input],
            self.topics.dead_letter().to_owned(),
            options,
        )?;
        self.stages.track(stage_name, stage.assignment());
        let shutdown = shutdown.clone();
        // The stage's name goes with any failure, for the `task failed` line.
        let name = format!("stage {stage_name}");
        tasks.spawn(async move { stage.run(shutdown).await.context(name) });
        Ok(())
    }

    /// Binds the gateway and starts serving it on `tasks`.
    pub async fn spawn_gateway(
        &self,
        tasks: &mut JoinSet<Result<()>>,
        shutdown: &CancellationToken,
    ) -> Result<GatewayAddrs> {
        let mut gateway = Gateway::new(
            self.producer.clone(),
            self.cluster.client_config(&self.config.kafka),
            self.store.clone(),
            self.topics.clone(),
            self.config.gateway.clone(),
            &self.config.tracking,
            &self.config.feed,
        )
        .limit_records_to(self.config.kafka.max_message_bytes)
        .with_inbox(&self.config.inbox);
        // Twilio signs its status callbacks with the account's auth token:
        // when the SMS provider is Twilio with a status callback, the
        // gateway checks that signature too.
        if let Ok(ProviderConfig::Twilio(twilio)) =
            ProviderConfig::for_channel(Channel::Sms, self.config.providers.get("sms"))
            && let Some(callback) = &twilio.status_callback
        {
            gateway = gateway.verify_twilio_signatures(TwilioSignatures::new(
                twilio.auth_token.expose(),
                callback,
            ));
        }
        // SendGrid signs its Event Webhook when asked to (ECDSA): with the
        // verification key, unsigned batches are refused.
        if let Ok(ProviderConfig::SendGrid(sendgrid)) =
            ProviderConfig::for_channel(Channel::Email, self.config.providers.get("email"))
            && let Some(key) = &sendgrid.webhook_verification_key
        {
            let signatures = SendGridSignatures::new(key)
                .map_err(|e| anyhow::anyhow!("providers.email.webhook_verification_key: {e}"))?;
            gateway = gateway.verify_sendgrid_signatures(signatures);
        }
        let (addrs, serve) = gateway.bind(shutdown.clone()).await?;
        tasks.spawn(async move { serve.await.context("gateway") });
        Ok(addrs)
    }
}

impl Runtime {
    /// Just the store, for admin commands that need no Kafka.
    pub async fn connect_store_only(config: &Config) -> Result<Store> {
        connect_store(config, false).await
    }

    /// `tidings migrate`: the store's pending schema migrations applied, as
    /// `tidings init` applies them; answers the versions this call applied
    /// and where the schema stands now.
    pub async fn migrate_store(config: &Config) -> Result<(Vec<u32>, SchemaStatus)> {
        let before = Runtime::store_schema_status(config).await?;
        let store = connect_store(config, true).await?;
        let after = store
            .schema_status()
            .await
            .context("reading the store's schema_migrations")?;
        let before = before.pending();
        let applied = after
            .migrations
            .iter()
            .map(|m| m.version)
            .filter(|v| before.contains(v) && !after.pending().contains(v))
            .collect();
        Ok((applied, after))
    }

    /// `tidings migrate --refill-recipients`: the CQL recipient copy filled
    /// again (see `tidings_store::Store::refill_recipients`).
    pub async fn refill_recipients(config: &Config) -> Result<()> {
        let store = connect_store(config, false).await?;
        store
            .refill_recipients()
            .await
            .context("filling the recipient copy")
    }

    /// `tidings migrate --status`: where the store's schema stands; creates
    /// and changes nothing.
    pub async fn store_schema_status(config: &Config) -> Result<SchemaStatus> {
        let url = &config.store.url;
        tidings_store::schema_status(url, &store_options(config, false))
            .await
            .with_context(|| format!("reading the schema version of the store (store.url = {url})"))
    }
}

pub(crate) fn store_options(config: &Config, migrate: bool) -> StoreOptions {
    let replication = if config.store.datacenters.is_empty() {
        Replication::Simple {
            factor: config.store.replication_factor,
        }
    } else {
        Replication::NetworkTopology {
            datacenters: config.store.datacenters.clone(),
        }
    };
    StoreOptions {
        migrate: migrate || config.store.url.starts_with("sqlite://"),
        replication,
        connect_timeout: Duration::from_millis(config.store.connect_timeout_ms),
        ..StoreOptions::default()
    }
}

async fn connect_store(config: &Config, migrate: bool) -> Result<Store> {
    let url = &config.store.url;
    if let Some(path) = url.strip_prefix("sqlite://")
        && let Some(dir) = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {} for the embedded store", dir.display()))?;
    }
    let store = Store::connect(url, &store_options(config, migrate))
        .await
        .with_context(|| format!("opening the store (store.url = {url})"))?;
    info!(backend = store.backend_name(), %url, "store ready");
    Ok(store)
}

/// Everything of one process running: the gateway and every stage.
pub struct Pipeline {
    pub runtime: Runtime,
    pub gateway: GatewayAddrs,
    shutdown: CancellationToken,
    tasks: JoinSet<Result<()>>,
}

impl Pipeline {
    /// Starts the gateway and every stage in this process.
    pub async fn start(config: Config, init: bool) -> Result<Self> {
        let runtime = Runtime::connect(config, init).await?;
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let gateway = runtime.spawn_gateway(&mut tasks, &shutdown).await?;
        for stage in StageName::all() {
            runtime.spawn_stage(stage, &mut tasks, &shutdown)?;
        }
        Ok(Self {
            runtime,
            gateway,
            shutdown,
            tasks,
        })
    }

    /// Runs until Ctrl-C or SIGTERM (or until a task stops, which is a
    /// failure), then shuts down cleanly.
    pub async fn run_until_signal(mut self) -> Result<()> {
        let result = run_until_signal(&mut self.tasks, &self.shutdown).await;
        self.runtime.producer.flush(Duration::from_secs(5));
        result
    }

    /// Cancels every task and waits for them to finish.
    pub async fn stop(mut self) -> Result<()> {
        let result = stop_tasks(&mut self.tasks, &self.shutdown).await;
        self.runtime.producer.flush(Duration::from_secs(5));
        result
    }
}

/// Runs `tasks` until Ctrl-C or SIGTERM, or until one of them stops: they
/// all run until shutdown, so that is a failure. Then stops the rest.
pub async fn run_until_signal(
    tasks: &mut JoinSet<Result<()>>,
    shutdown: &CancellationToken,
) -> Result<()> {
    let early = tokio::select! {
        _ = shutdown_signal() => None,
        Some(done) = tasks.join_next() => Some(done),
    };
    let early = match early {
        None => None,
        Some(Ok(Ok(()))) => Some(anyhow::anyhow!("a task stopped unexpectedly")),
        Some(Ok(Err(e))) => Some(e),
        Some(Err(e)) => Some(e.into()),
    };
    // The task that stopped first is logged here; stop_tasks logs the rest.
    if let Some(e) = &early {
        error!(error = %format!("{e:#}"), "task failed");
    }
    let stopped = stop_tasks(tasks, shutdown).await;
    match early {
        None => stopped,
        Some(e) => Err(e),
    }
}

/// Cancels `tasks` and waits for them; returns the first failure.
pub async fn stop_tasks(
    tasks: &mut JoinSet<Result<()>>,
    shutdown: &CancellationToken,
) -> Result<()> {
    shutdown.cancel();
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done.map_err(anyhow::Error::from).and_then(|r| r) {
            error!(error = %format!("{e:#}"), "task failed");
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes and `docker stop` send).
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("Ctrl-C: shutting down"),
        _ = term => info!("SIGTERM: shutting down"),
    }
}

/// Whether a `tidings process` is ready: Kafka and the store answered the
/// latest probe (every [`PROBE_EVERY`], the gateway's probe: a metadata
/// request and one app-row read, 2 s timeouts each) and every stage consumer
/// of the process holds its partition assignment (none, when its group has
/// more members than partitions, counts).
#[derive(Clone)]
pub struct ProcessReadiness {
    dependencies: tokio::sync::watch::Receiver<Result<(), String>>,
    stages: StageAssignments,
}

impl ProcessReadiness {
    /// `Ok` with what holds, or `Err` with one line per thing not ready.
    pub fn verdict(&self) -> Result<Vec<String>, Vec<String>> {
        let mut ready = Vec::new();
        let mut waiting = Vec::new();
        match &*self.dependencies.borrow() {
            Ok(()) => ready.push("kafka and the store answer".to_owned()),
            Err(why) => waiting.push(why.clone()),
        }
        match self.stages.verdict() {
            Ok(()) => ready.extend(
                self.stages
                    .current()
                    .into_iter()
                    .map(|(stage, a)| format!("stage {stage}: {}", a.describe())),
            ),
            Err(stages) => waiting.extend(stages),
        }
        if waiting.is_empty() {
            Ok(ready)
        } else {
            Err(waiting)
        }
    }
}

impl Runtime {
    /// Probes Kafka and the store now and every [`PROBE_EVERY`] on `tasks`
    /// until `shutdown`, and answers the process's readiness: those probes
    /// and the stages started so far (start the stages first).
    pub fn readiness(
        &self,
        tasks: &mut JoinSet<Result<()>>,
        shutdown: &CancellationToken,
    ) -> Result<ProcessReadiness> {
        // Every stage dead-letters to this topic: one small metadata request.
        let probe = Probe::new(
            &self.cluster.client_config(&self.config.kafka),
            self.topics.dead_letter().to_owned(),
            self.store.clone(),
        )
        .map_err(anyhow::Error::msg)?;
        let (tx, rx) =
            tokio::sync::watch::channel(Err("kafka and the store: not probed yet".to_owned()));
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let mut ticks = tokio::time::interval(PROBE_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = ticks.tick() => {}
                }
                let verdict = probe.check().await.both();
                if let Err(why) = &verdict
                    && tx.borrow().is_ok()
                {
                    tracing::warn!(reason = %why, "not ready: /readyz 503");
                }
                let _previous = tx.send_replace(verdict);
            }
        });
        Ok(ProcessReadiness {
            dependencies: rx,
            stages: self.stages.clone(),
        })
    }
}

/// Serves `/metrics`, `/healthz` (liveness: the process answers) and
/// `/readyz` (200 ready, or 503 naming what is not) for a processor
/// process; answers the address it listens on.
pub async fn spawn_metrics(
    addr: std::net::SocketAddr,
    readiness: ProcessReadiness,
    tasks: &mut JoinSet<Result<()>>,
    shutdown: &CancellationToken,
) -> Result<std::net::SocketAddr> {
    use axum::{Router, http::StatusCode, routing::get};
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {addr} (telemetry.metrics_addr): if another tidings process on this host uses it, give each its own, e.g. TIDINGS_TELEMETRY__METRICS_ADDR=127.0.0.1:{}",
                addr.port().wrapping_add(1)
            )
        })?;
    let router = Router::new()
        .route(
            "/metrics",
            get(|| async { tidings_telemetry::metrics().render() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                match readiness.verdict() {
                    Ok(ready) => (StatusCode::OK, format!("ready\n{}\n", ready.join("\n"))),
                    Err(waiting) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready\n{}\n", waiting.join("\n")),
                    ),
                }
            }),
        );
    let addr = listener.local_addr().unwrap_or(addr);
    info!(%addr, "serving metrics, /healthz and /readyz");
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await?;
        Ok(())
    });
    Ok(addr)
}

/// The app `tidings dev` creates, which the CLI client uses by default. It
/// exists only in stores `tidings dev` has run against.
pub const DEV_APP_KEY: &str = "dev";
pub const DEV_APP_SECRET: &str = "dev-secret";

pub async fn ensure_dev_app(store: &Store) -> Result<()> {
    let app = App {
        app_key: DEV_APP_KEY.into(),
        secret_hash: hash_secret(DEV_APP_SECRET),
        name: "tidings dev".into(),
        permissions: vec!["*".into()],
        quota_per_sec: None,
        revoked: false,
        created_at: tidings_kafka::now_millis(),
    };
    store.apps.put(&app).await.context("creating the dev app")?;
    Ok(())
}

/// Creates an app with a random key and secret; returns both.
pub async fn create_app(
    store: &Store,
    name: &str,
    permissions: Vec<String>,
    quota: Option<u32>,
) -> Result<(String, String)> {
    for p in &permissions {
        if p != "*" && !PERMISSIONS.contains(&p.as_str()) {
            bail!(
                "unknown permission `{p}`; expected * or one of {}",
                PERMISSIONS.join(", ")
            );
        }
    }
    let key = format!("app_{}", Uuid::new_v4().simple());
    let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let app = App {
        app_key: key.clone(),
        secret_hash: hash_secret(&secret),
        name: name.to_owned(),
        permissions,
        quota_per_sec: quota,
        revoked: false,
        created_at: tidings_kafka::now_millis(),
    };
    store.apps.put(&app).await.context("saving the app")?;
    Ok((key, secret))
}

/// The codec of `config`: the catalog's local ids, or those of the schema
/// registry when one is configured (registering the catalog there).
pub async fn codec(config: &tidings_config::KafkaConfig) -> Result<AvroCodec> {
    Ok(match &config.schema_registry_url {
        None => AvroCodec::local(),
        Some(url) => AvroCodec::with_registry(url)
            .await
            .with_context(|| format!("registering schemas (kafka.schema_registry_url = {url})"))?,
    })
}

/// Errors early for a configuration that cannot work in a role of its own.
pub fn require_shared_kafka(config: &Config, role: &str) -> Result<()> {
    if config.kafka.is_embedded() {
        bail!(
            "kafka.bootstrap_servers is `embedded`, which exists only inside one process; \
             `tidings {role}` needs a shared Kafka (set TIDINGS_KAFKA__BOOTSTRAP_SERVERS), or use `tidings dev`"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names_are_kubernetes_names_and_parse_back() {
        for stage in StageName::all() {
            let name = stage.to_string();
            // A DNS-1123 label: Deployments, Services and Helm keys use it.
            assert!(
                name.len() <= 63
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !name.starts_with('-')
                    && !name.ends_with('-'),
                "{name}"
            );
            assert_eq!(name.parse::<StageName>(), Ok(stage));
        }
        let in_app = StageName::Sender(Channel::InApp);
        assert_eq!(in_app.to_string(), "sender-in-app");
        // The consumer-group and metric spelling, as for sender.ios.
        assert_eq!("sender.in_app".parse::<StageName>(), Ok(in_app));
        assert_eq!(
            "sender.ios".parse::<StageName>(),
            Ok(StageName::Sender(Channel::Ios))
        );
        assert!("sender-pigeon".parse::<StageName>().is_err());
    }
}
