//! The one typed configuration of tidings.
//!
//! Layers, later wins: built-in defaults (which run everything embedded, with
//! no servers), then a TOML file, then environment variables `TIDINGS_*` with
//! `__` between levels, e.g. `TIDINGS_KAFKA__BOOTSTRAP_SERVERS=k1:9092` or
//! `TIDINGS_STORE__URL=scylla://db1:9042/tidings`.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

/// The file read when no path is given and it exists.
pub const DEFAULT_FILE: &str = "tidings.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    /// figment's message names the key and where its value came from
    /// (file and line, or the environment variable).
    #[error("invalid configuration: {0}")]
    Invalid(Box<figment::Error>),
    #[error("invalid configuration: `{key}` {problem}")]
    Semantic { key: &'static str, problem: String },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub store: StoreConfig,
    pub gateway: GatewayConfig,
    pub enricher: EnricherConfig,
    pub senders: SendersConfig,
    pub tracking: TrackingConfig,
    pub feed: FeedConfig,
    pub inbox: InboxConfig,
    /// The provider of each channel (`ios`, `android`, `sms`, `email`,
    /// `web`), as `{ kind = "...", ...settings }`; a channel without one
    /// prints to the log. The settings are read by the sender of that kind
    /// (processors/src/senders/providers.rs). `in_app` has none: its
    /// deliveries always go to the inboxes in the store.
    pub providers: BTreeMap<String, serde_json::Value>,
    pub telemetry: TelemetryConfig,
}

/// The default link secret; fine on the embedded default, refused on a
/// shared cluster (see [`Config::validate`]).
pub const DEV_LINK_SECRET: &str = "tidings-dev-link-secret";

/// Tracking links and open pixels in rendered notifications.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrackingConfig {
    /// Where users reach the gateway's HTTP side (links point here).
    pub public_url: String,
    /// Signs tracking tokens, so clicks and opens cannot be forged.
    pub link_secret: String,
    /// Add an open pixel to HTML emails.
    pub open_pixel: bool,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        Self {
            public_url: "http://127.0.0.1:8080".into(),
            link_secret: DEV_LINK_SECRET.into(),
            open_pixel: true,
        }
    }
}

/// The default user-token secret; fine on the embedded default, refused on
/// a shared cluster (see [`Config::validate`]).
pub const DEV_USER_TOKEN_SECRET: &str = "tidings-dev-user-token-secret";

/// The news feed: who may act as a user, and how posts reach feeds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FeedConfig {
    /// HS256 key of the user bearer tokens (JWTs, `sub` = user id) that
    /// `/v1/me/...` and `FeedService` take. The company's auth service mints
    /// them with any JWT library; `tidings user token` mints one too.
    pub user_token_secret: String,
    /// Authors with more followers than this are not fanned out to: their
    /// followers pull their posts at read time (the hybrid model).
    pub pull_threshold: u64,
    /// A pulled author is pushed again once their followers drop below
    /// this share of `pull_threshold` (hysteresis, so an author near the
    /// threshold does not flip at every follow); between 0 and 1.
    pub push_again_ratio: f64,
    /// Seconds readers keep pulling an author who is pushed again, while
    /// the writers put their newest posts into the feeds: longer than the
    /// fan-out's lag, so no post is missing meanwhile.
    pub cool_down_secs: u64,
    /// Newest posts of an author put into a follower's feed on follow (and
    /// into every follower's feed when the author is pushed again).
    pub backfill_posts: u32,
    /// Recipients per fan-out slice: one `FanoutBatch` record, one feed
    /// write batch.
    pub slice_size: usize,
    /// Entries kept per materialised feed; older ones are trimmed, since
    /// almost everyone reads only the newest stories.
    pub max_entries: usize,
    /// Posts one user may publish per `post_window_secs` (against spam).
    pub max_posts: u32,
    pub post_window_secs: u64,
    /// Longest post body, in characters.
    pub max_body_chars: usize,
    /// Tell followers of a new post through the notification pipeline (push,
    /// category `notify_category`, which users can opt out of).
    pub notify_followers: bool,
    pub notify_category: String,
    /// Posts each gateway keeps in memory for feed reads (posts are
    /// immutable, so never stale); authors and pulled pages get a share.
    pub post_cache_entries: usize,
    /// Replies one user may post per `post_window_secs` (against spam).
    pub max_replies: u32,
    /// Tell a post's author of its likes and replies through the
    /// notification pipeline (categories `feed.like`, `feed.reply`).
    pub notify_reactions: bool,
    /// Likes of one post are told in one notification per this many
    /// seconds at most ("Ann and 41 others liked your post"), sent when
    /// the window closes.
    pub like_digest_secs: u64,
    /// Followed authors a feed read reads posts from once the user's feed
    /// rows run out (trimmed, or never written), so a returning user's feed
    /// is not empty; 0 turns the rebuild off.
    pub rebuild_authors: usize,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            user_token_secret: DEV_USER_TOKEN_SECRET.into(),
            pull_threshold: 10_000,
            push_again_ratio: 0.8,
            cool_down_secs: 300,
            backfill_posts: 20,
            slice_size: 500,
            max_entries: 800,
            max_posts: 30,
            post_window_secs: 3_600,
            max_body_chars: 5_000,
            notify_followers: true,
            notify_category: "feed.new_post".into(),
            post_cache_entries: 100_000,
            max_replies: 120,
            notify_reactions: true,
            like_digest_secs: 60,
            rebuild_authors: 100,
        }
    }
}

/// The in-app inbox (channel `in_app`): how much each user keeps, and how
/// the gateways stream changes to connected clients.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct InboxConfig {
    /// Items kept per user; the oldest go first.
    pub max_items: u32,
    /// Days an item is kept after it arrived.
    pub ttl_days: u64,
    /// Seconds between heartbeats on an idle live stream (an SSE comment, a
    /// `heartbeat` event on the gRPC Watch), so proxies keep it open and
    /// clients notice a dead one.
    pub heartbeat_secs: u64,
    /// Live streams one gateway holds at most; more are refused (503 /
    /// RESOURCE_EXHAUSTED) rather than exhausting memory.
    pub max_streams: usize,
    /// Whether iOS and Android pushes carry the user's unread inbox count
    /// (APNs `badge`, FCM data `unread_count`), read when each is sent.
    pub push_badge: bool,
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self {
            max_items: 1_000,
            ttl_days: 90,
            heartbeat_secs: 15,
            max_streams: 20_000,
            push_badge: false,
        }
    }
}

/// How channel senders retry and give up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SendersConfig {
    /// Delay of each retry tier, in order: attempt n waits in tier
    /// min(n, tiers) - 1. A provider's Retry-After moves a retry to the first
    /// tier at least that long.
    pub retry_delays_ms: [u64; 3],
    /// Attempts (the first send included) before a delivery is dead-lettered.
    pub max_attempts: u32,
    /// This many transient failures in a row of one provider raise the
    /// developer alert (an error log and the `provider_failing` gauge); a
    /// provider refusing our credentials raises it at once.
    pub alert_after_failures: u32,
    /// How long the intent mark of an attempt is remembered (`uncertain =
    /// skip` only; sent marks live in the notification log, as long as its
    /// rows).
    pub sent_ledger_ttl_secs: u64,
    /// What a replay does with a delivery whose send was started but not
    /// confirmed before a crash (it may or may not have reached the user).
    pub uncertain: UncertainConfig,
}

/// What to do with an uncertain delivery: one the sender recorded as about
/// to go to the provider, with no record that the provider took it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Uncertain {
    /// Send it again (at-least-once: a duplicate is possible).
    #[default]
    Resend,
    /// Do not send it again (at-most-once: it may never have gone out).
    Skip,
}

/// [`Uncertain`] per channel, e.g. `default = "resend"` with `sms = "skip"`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct UncertainConfig {
    pub default: Uncertain,
    pub ios: Option<Uncertain>,
    pub android: Option<Uncertain>,
    pub sms: Option<Uncertain>,
    pub email: Option<Uncertain>,
}

impl UncertainConfig {
    /// The choice for `channel` (`ios`, `android`, `sms`, `email`).
    pub fn for_channel(&self, channel: &str) -> Uncertain {
        match channel {
            "ios" => self.ios,
            "android" => self.android,
            "sms" => self.sms,
            "email" => self.email,
            _ => None,
        }
        .unwrap_or(self.default)
    }
}

impl Default for SendersConfig {
    fn default() -> Self {
        Self {
            retry_delays_ms: [30_000, 300_000, 3_600_000],
            max_attempts: 5,
            alert_after_failures: 10,
            sent_ledger_ttl_secs: 7 * 24 * 3600,
            uncertain: UncertainConfig::default(),
        }
    }
}

/// Where Kafka is and how topics are laid out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `embedded` runs librdkafka's in-process mock cluster (no servers);
    /// otherwise a comma-separated broker list.
    pub bootstrap_servers: String,
    /// Prefix of every topic name, e.g. `tidings` gives `tidings.notify.requests`.
    pub topic_prefix: String,
    /// Partitions per topic created by `tidings init`. Notification topics are
    /// keyed by user id, so this bounds the consumers per stage.
    pub partitions: i32,
    pub replication_factor: i32,
    /// Consumer group prefix; a stage's group is `<prefix>.<stage>`.
    pub group_prefix: String,
    /// How long a produce may wait for acks=all before it fails. Keep it
    /// below your callers' deadlines: a caller that gives up first sees
    /// DEADLINE_EXCEEDED although the notification may still be accepted
    /// (retrying with the same event_id is safe either way).
    pub produce_timeout_ms: u64,
    /// Largest record tidings produces, in bytes: the producer's
    /// `message.max.bytes` and the `max.message.bytes` of the topics
    /// `tidings init` creates. The gateway refuses requests whose records
    /// could exceed it; a stage dead-letters an output that would.
    pub max_message_bytes: usize,
    /// Bytes of records (keys and values) a stage takes into one batch, at
    /// most: with `max_batch` records, what bounds a stage's memory by
    /// configuration rather than by the size of what it is sent. A record
    /// larger than this is a batch of its own.
    pub stage_batch_bytes: usize,
    /// A Confluent-compatible schema registry; none means the schema ids
    /// compiled in from `schemas/avro`.
    pub schema_registry_url: Option<String>,
    /// Extra librdkafka properties (e.g. `security.protocol`, `sasl.*`).
    pub client: BTreeMap<String, String>,
}

impl KafkaConfig {
    pub fn is_embedded(&self) -> bool {
        self.bootstrap_servers.trim() == "embedded"
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "embedded".into(),
            topic_prefix: "tidings".into(),
            partitions: 6,
            replication_factor: 1,
            group_prefix: "tidings".into(),
            produce_timeout_ms: 10_000,
            max_message_bytes: 1_000_000,
            stage_batch_bytes: 4 << 20,
            schema_registry_url: None,
            client: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://<path>` (embedded, on disk) or
    /// `scylla://host1:9042,host2:9042/<keyspace>`.
    pub url: String,
    /// Replication factor when `tidings init` creates the ScyllaDB keyspace
    /// with SimpleStrategy (one data centre).
    pub replication_factor: u32,
    /// Replication per data centre (NetworkTopologyStrategy), e.g.
    /// `{ dc1 = 3, dc2 = 3 }`; when set it replaces `replication_factor`.
    pub datacenters: BTreeMap<String, u32>,
    pub connect_timeout_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://.tidings/tidings.db".into(),
            replication_factor: 1,
            datacenters: BTreeMap::new(),
            connect_timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    pub grpc_addr: SocketAddr,
    /// HTTP: the feed API, tracking links and pixels, `/metrics`, `/healthz`.
    pub http_addr: SocketAddr,
    /// Most notifications one batch call may carry.
    pub max_batch: usize,
    /// Most notifications (users summed over items) one `Send` or
    /// `SendBatch` call may expand to; each is a record held in memory until
    /// Kafka has it. More is refused with INVALID_ARGUMENT.
    pub max_expanded_notifications: usize,
    /// Bytes of expanded notifications one call holds at once: each user's
    /// record carries its own copy of the content, so a call with more is
    /// expanded and produced a chunk at a time (a batch's items share it).
    pub expansion_buffer_bytes: usize,
    /// Bytes one `Send` or `SendBatch` call may write to the requests topic
    /// in all (users x the size of each one's record; a batch's items share
    /// it evenly): the caps on users and on content each allow 10,000 x
    /// ~1 MB. More is refused with INVALID_ARGUMENT naming `user_ids`.
    pub max_call_bytes: usize,
    /// How long an app (and a template's latest version) read from the store
    /// may still be used while the store is unreachable: the gateway keeps
    /// accepting sends of apps it knows during a store outage, and a
    /// revocation made meanwhile takes effect at most this long later. Unknown
    /// apps are refused (UNAVAILABLE) until the store answers.
    pub auth_stale_serve_secs: u64,
    /// Take `http://` web push endpoints on loopback addresses when devices
    /// are registered (a local push-service stand-in); otherwise only
    /// https:// endpoints are taken.
    pub web_push_loopback_http: bool,
    /// Most device rows (push tokens, web push subscriptions, tombstones)
    /// kept per user: a registration beyond it removes the user's oldest
    /// rows, tombstones first. Every notification to a user reads all of
    /// them, so what one user's client can register is bounded.
    pub max_devices_per_user: usize,
    /// Web origins (`https://app.example.com`, scheme://host[:port]) whose
    /// pages may call the inbox API (`/v1/me/notifications*`) and load the
    /// inbox widget from another origin (CORS); `*` allows any. Empty: no
    /// cross-origin calls. The API takes bearer tokens, never cookies.
    pub cors_origins: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_batch: 1_000,
            max_expanded_notifications: 10_000,
            expansion_buffer_bytes: 16 << 20,
            max_call_bytes: 256 << 20,
            auth_stale_serve_secs: 600,
            web_push_loopback_http: false,
            max_devices_per_user: 20,
            cors_origins: Vec::new(),
        }
    }
}

/// What the enricher does with a notification over a user's rate limit.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OverLimit {
    /// Drop it, with a RATE_LIMITED tracking event.
    #[default]
    Suppress,
    /// Hold it until the window has room again.
    Defer,
}

/// At most `max` notifications per user in `per_secs`, on one channel (or
/// all) and one category (or all). Critical categories are never limited.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub channel: Option<String>,
    pub category: Option<String>,
    pub max: u32,
    pub per_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EnricherConfig {
    /// How long an event id is remembered for dedupe.
    pub dedupe_ttl_secs: u64,
    /// Categories delivered even to users who opted out (password resets,
    /// security alerts) and never rate limited.
    pub critical_categories: Vec<String>,
    pub rate_limits: Vec<RateLimit>,
    pub over_limit: OverLimit,
    /// How many rate-limit windows (one per user, channel and rule) an
    /// enricher keeps in memory; expired ones are dropped, then the least
    /// recently used, which are read back from the store when needed.
    pub rate_limit_windows: usize,
    /// How often the scheduler looks for notifications that are due.
    pub schedule_poll_ms: u64,
}

impl Default for EnricherConfig {
    fn default() -> Self {
        Self {
            dedupe_ttl_secs: 7 * 24 * 3600,
            critical_categories: vec!["security".into()],
            rate_limits: Vec::new(),
            over_limit: OverLimit::Suppress,
            rate_limit_windows: 100_000,
            schedule_poll_ms: 500,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// A tracing filter, e.g. `info,tidings_processors=debug`. `RUST_LOG`
    /// overrides it.
    pub log: String,
    pub log_format: LogFormat,
    /// Where processors (`tidings process ...`) serve `/metrics`; the gateway
    /// serves them on its HTTP address.
    pub metrics_addr: SocketAddr,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log: "info".into(),
            log_format: LogFormat::Pretty,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

/// The `TIDINGS_*` environment, whose errors name the variable to fix
/// (`TIDINGS_FEED__NO_SUCH_KEY`) besides the key, not figment's
/// `FEED.NO_SUCH_KEY`, which is neither.
struct Environment(Env);

impl figment::Provider for Environment {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("`TIDINGS_` environment variable(s)").interpolater(
            |_: &figment::Profile, keys: &[&str]| {
                let upper: Vec<String> = keys.iter().map(|k| k.to_ascii_uppercase()).collect();
                format!("TIDINGS_{} ({})", upper.join("__"), keys.join("."))
            },
        )
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        self.0.data()
    }
}

impl Config {
    /// Loads defaults, then `file` (which must exist when given; otherwise
    /// `tidings.toml` in the working directory if present), then the
    /// environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) if !path.exists() => return Err(ConfigError::MissingFile(path.into())),
            Some(path) => figment = figment.merge(Toml::file(path)),
            None => figment = figment.merge(Toml::file(DEFAULT_FILE)),
        }
        // Only `TIDINGS_<SECTION>__<KEY>` names are configuration; others such
        // as TIDINGS_CONFIG or TIDINGS_APP_KEY belong to the CLI.
        let env = Env::prefixed("TIDINGS_")
            .filter(|key| key.as_str().contains("__"))
            .split("__");
        Self::from_figment(figment.merge(Environment(env)))
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let k = &self.kafka;
        if k.bootstrap_servers.trim().is_empty() {
            return semantic(
                "kafka.bootstrap_servers",
                "is empty; use `embedded` or host:port[,host:port]",
            );
        }
        if !k.is_embedded() {
            for broker in k.bootstrap_servers.split(',') {
                if broker
                    .trim()
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_none()
                {
                    return semantic(
                        "kafka.bootstrap_servers",
                        format!("has `{broker}`, which is not host:port"),
                    );
                }
            }
        }
        if k.partitions < 1 {
            return semantic("kafka.partitions", "must be at least 1");
        }
        if k.replication_factor < 1 {
            return semantic("kafka.replication_factor", "must be at least 1");
        }
        if k.topic_prefix.is_empty()
            || !k
                .topic_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return semantic(
                "kafka.topic_prefix",
                "must be non-empty ASCII letters, digits, '.', '_' or '-'",
            );
        }
        // Below this a templated email or a dead letter carrying its record
        // would not fit; the gateway keeps 16 KiB of every record for the
        // envelope.
        if k.max_message_bytes < 64 * 1024 {
            return semantic(
                "kafka.max_message_bytes",
                format!("is {}; must be at least 65536", k.max_message_bytes),
            );
        }
        if k.stage_batch_bytes < 64 * 1024 {
            return semantic(
                "kafka.stage_batch_bytes",
                format!("is {}; must be at least 65536", k.stage_batch_bytes),
            );
        }
        let url = &self.store.url;
        if !(url.starts_with("sqlite://") || url.starts_with("scylla://")) {
            return semantic(
                "store.url",
                format!("`{url}` must start with sqlite:// or scylla://"),
            );
        }
        for (i, limit) in self.enricher.rate_limits.iter().enumerate() {
            if limit.max == 0 || limit.per_secs == 0 {
                return Err(ConfigError::Semantic {
                    key: "enricher.rate_limits",
                    problem: format!("entry {i} needs max and per_secs of at least 1"),
                });
            }
        }
        if self.gateway.max_expanded_notifications == 0 {
            return semantic("gateway.max_expanded_notifications", "must be at least 1");
        }
        if self.gateway.max_devices_per_user == 0 {
            // The registration being made must be kept.
            return semantic("gateway.max_devices_per_user", "must be at least 1");
        }
        if self.gateway.expansion_buffer_bytes < 1 << 20 {
            return semantic(
                "gateway.expansion_buffer_bytes",
                "must be at least 1048576 (1 MiB)",
            );
        }
        if self.gateway.max_call_bytes < self.kafka.max_message_bytes {
            return semantic(
                "gateway.max_call_bytes",
                "must be at least kafka.max_message_bytes (one notification of the largest size)",
            );
        }
        if self.enricher.rate_limit_windows == 0 {
            return semantic("enricher.rate_limit_windows", "must be at least 1");
        }
        if !k.is_embedded() && self.tracking.link_secret == DEV_LINK_SECRET {
            return semantic(
                "tracking.link_secret",
                "is the development default; set a secret of your own (TIDINGS_TRACKING__LINK_SECRET) on a shared cluster",
            );
        }
        if !k.is_embedded() && self.feed.user_token_secret == DEV_USER_TOKEN_SECRET {
            return semantic(
                "feed.user_token_secret",
                "is the development default; set a secret of your own (TIDINGS_FEED__USER_TOKEN_SECRET) on a shared cluster",
            );
        }
        let f = &self.feed;
        if f.slice_size == 0
            || f.max_entries == 0
            || f.max_posts == 0
            || f.post_window_secs == 0
            || f.max_replies == 0
            || f.like_digest_secs == 0
        {
            return semantic(
                "feed",
                "slice_size, max_entries, max_posts, post_window_secs, max_replies and like_digest_secs must be at least 1",
            );
        }
        if !(f.push_again_ratio > 0.0 && f.push_again_ratio <= 1.0) {
            return semantic(
                "feed.push_again_ratio",
                "must be more than 0 and at most 1 (a share of feed.pull_threshold)",
            );
        }
        if f.cool_down_secs == 0 || f.backfill_posts == 0 {
            return semantic(
                "feed",
                "cool_down_secs and backfill_posts must be at least 1 (a star pushed again needs its newest posts in the feeds)",
            );
        }
        if self.inbox.max_items == 0 || self.inbox.ttl_days == 0 {
            return semantic("inbox", "max_items and ttl_days must be at least 1");
        }
        // Cassandra refuses a TTL over 20 years: every put would fail.
        if self.inbox.ttl_days > 7300 {
            return semantic("inbox.ttl_days", "must be at most 7300 (20 years)");
        }
        if self.providers.contains_key("in_app") {
            return semantic(
                "providers",
                "has `in_app`, which takes no provider: in-app deliveries always go to the users' inboxes in the store (see [inbox]); remove [providers.in_app]",
            );
        }
        if let Some(channel) = self
            .providers
            .keys()
            .find(|c| !["ios", "android", "sms", "email", "web"].contains(&c.as_str()))
        {
            return semantic(
                "providers",
                format!("has `{channel}`; channels are ios, android, sms, email and web"),
            );
        }
        if self.senders.max_attempts == 0 {
            return semantic("senders.max_attempts", "must be at least 1");
        }
        if self.senders.retry_delays_ms.windows(2).any(|w| w[0] > w[1]) {
            return semantic(
                "senders.retry_delays_ms",
                "must not decrease from one tier to the next",
            );
        }
        if self.gateway.max_batch == 0 {
            return semantic("gateway.max_batch", "must be at least 1");
        }
        if let Some(origin) = self
            .gateway
            .cors_origins
            .iter()
            .find(|o| o.as_str() != "*" && !is_web_origin(o))
        {
            return semantic(
                "gateway.cors_origins",
                format!(
                    "has `{origin}`; an origin is scheme://host[:port] with no path or trailing slash (https://app.example.com), or *"
                ),
            );
        }
        Ok(())
    }
}

/// `http(s)://host[:port]` exactly as a browser sends it in `Origin`: a
/// trailing slash or a path would never match one.
fn is_web_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    // An IPv6 host is bracketed: its colons are not the port's.
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, port)) => (host, Some(port.strip_prefix(':').unwrap_or(port))),
            None => return false,
        },
        None => match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:".contains(c))
        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

fn semantic(key: &'static str, problem: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError::Semantic {
        key,
        problem: problem.into(),
    })
}

#[cfg(test)]
// figment's `Jail` API fixes the closures' error type to its (large) `figment::Error`.
#[allow(clippy::result_large_err)]
mod tests {
    use figment::Jail;

    use super::*;

    #[test]
    fn cors_origins_are_exact_origins() {
        for good in [
            "https://app.example.com",
            "http://127.0.0.1:8000",
            "http://[::1]:3000",
            "*",
        ] {
            let mut c = Config::default();
            c.gateway.cors_origins = vec![good.into()];
            c.validate()
                .unwrap_or_else(|e| panic!("{good} refused: {e}"));
        }
        for bad in [
            "https://app.example.com/",
            "app.example.com",
            "https://app.example.com/inbox",
            "ftp://x",
            "https://",
            "https://a:0",
            "https://a:x",
        ] {
            let mut c = Config::default();
            c.gateway.cors_origins = vec![bad.into()];
            let e = c.validate().expect_err(bad).to_string();
            assert!(e.contains("gateway.cors_origins"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_stage_batch_holds_at_least_64_kib() {
        let mut c = Config::default();
        c.kafka.stage_batch_bytes = 64 * 1024 - 1;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("kafka.stage_batch_bytes"), "{e}");
        c.kafka.stage_batch_bytes = 64 * 1024;
        c.validate().unwrap();
    }

    #[test]
    fn defaults_run_embedded() {
        let c = Config::default();
        assert!(c.kafka.is_embedded());
        assert!(c.store.url.starts_with("sqlite://"));
        c.validate().unwrap();
    }

    #[test]
    fn an_inbox_keeps_at_least_one_item_for_at_least_a_day() {
        for (max_items, ttl_days) in [(0, 90), (1000, 0), (1000, 7301)] {
            let mut c = Config::default();
            c.inbox.max_items = max_items;
            c.inbox.ttl_days = ttl_days;
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("inbox"), "{e}");
        }
    }

    #[test]
    fn providers_in_app_is_refused_with_the_reason() {
        Jail::expect_with(|jail| {
            jail.create_file("t.toml", "[providers.in_app]\nkind = \"log\"\n")?;
            let err = Config::load(Some(Path::new("t.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("providers") && err.contains("inbox"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_push_again_ratio_outside_0_to_1_is_refused_naming_it() {
        for ratio in [0.0, -0.5, 1.5, f64::NAN] {
            let mut c = Config::default();
            c.feed.push_again_ratio = ratio;
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("feed.push_again_ratio"), "{ratio}: {e}");
        }
        let mut c = Config::default();
        c.feed.push_again_ratio = 1.0;
        c.validate().unwrap();
    }

    #[test]
    fn a_zero_like_digest_window_is_refused_naming_it() {
        Jail::expect_with(|jail| {
            jail.create_file("t.toml", "[feed]\nlike_digest_secs = 0\n")?;
            let err = Config::load(Some(Path::new("t.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("feed") && err.contains("like_digest_secs"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn file_then_environment_override_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                "[kafka]\nbootstrap_servers = \"k1:9092\"\npartitions = 12\n[store]\nurl = \"scylla://db:9042/t\"\n[tracking]\nlink_secret = \"s3cret\"\n[feed]\nuser_token_secret = \"t0ken\"\n",
            )?;
            jail.set_env("TIDINGS_KAFKA__PARTITIONS", "24");
            jail.set_env("TIDINGS_GATEWAY__GRPC_ADDR", "0.0.0.0:6000");
            jail.set_env("TIDINGS_APP_KEY", "not configuration");
            let c = Config::load(Some(Path::new("t.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.kafka.bootstrap_servers, "k1:9092");
            assert_eq!(c.kafka.partitions, 24);
            assert_eq!(c.store.url, "scylla://db:9042/t");
            assert_eq!(c.gateway.grpc_addr.port(), 6000);
            assert_eq!(c.telemetry.log, "info");
            Ok(())
        });
    }

    #[test]
    fn an_unknown_environment_key_is_named_as_the_variable() {
        Jail::expect_with(|jail| {
            jail.set_env("TIDINGS_FEED__NO_SUCH_KEY", "1");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("TIDINGS_FEED__NO_SUCH_KEY"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_key_and_its_source() {
        Jail::expect_with(|jail| {
            jail.set_env("TIDINGS_KAFKA__PARTITIONS", "many");
            let err = Config::load(None).unwrap_err().to_string().to_lowercase();
            assert!(err.contains("kafka.partitions"), "{err}");
            assert!(
                err.contains("tidings_") && err.contains("environment"),
                "{err}"
            );
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.create_file(
                "tidings.toml",
                "[kafka]\nbootstrap_servers = \"nohostport\"\n",
            )?;
            let err = Config::load(None).unwrap_err().to_string();
            assert!(
                err.contains("kafka.bootstrap_servers") && err.contains("nohostport"),
                "{err}"
            );
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.create_file("tidings.toml", "[kafka]\nbrokers = \"x:1\"\n")?;
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("brokers"), "unknown keys are rejected: {err}");
            Ok(())
        });
        let err = Config::load(Some(Path::new("/nonexistent/t.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/t.toml"), "{err}");
    }
}
