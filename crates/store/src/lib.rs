//! Durable state of tidings: one storage trait per aggregate, two engines.
//!
//! Every aggregate (contacts, preferences, templates, feeds, rate-limit
//! windows, ...) has a trait in its own module, together with its model
//! types. Two backends implement all of them:
//!
//! - `scylla://host1:9042,host2:9042/keyspace`: ScyllaDB (or Apache Cassandra,
//!   the CQL we use is portable), the production store;
//! - `sqlite:///abs/path/tidings.db` or `sqlite://relative/path.db`: an
//!   embedded SQLite file, for development, tests and single-node installs.
//!
//! [`Store::connect`] picks the engine from the URL and returns a [`Store`]:
//! a cheap-to-clone bundle holding one trait object per aggregate, so callers
//! write `store.contacts.live_devices(user)` and never name an engine. The
//! same conformance suite (`tests/conformance.rs`) runs against both engines.

pub mod apps;
pub mod baseline;
pub mod contacts;
pub mod counters;
pub mod dedupe;
mod error;
pub mod feed;
pub mod inbox;
mod metered;
mod migrations;
pub mod notification_log;
pub mod posts;
pub mod preferences;
pub mod rate_limits;
pub mod reactions;
pub mod recipients;
pub mod schedule;
mod script;
mod scylla;
pub mod social_graph;
mod sqlite;
pub mod templates;
mod url;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use apps::{App, AppStore};
pub use contacts::{
    ContactStore, Device, DeviceRow, Platform, User, devices_beyond, keep_newest_devices,
};
pub use counters::CounterStore;
pub use dedupe::{Claim, DedupeLedger};
pub use error::StoreError;
pub use feed::{FeedEntry, FeedStore, PullState};
pub use inbox::{InboxAction, InboxCounts, InboxFilter, InboxItem, InboxQuery, InboxStore};
pub use migrations::{AppliedMigration, MigrationStatus, SchemaStatus, State as MigrationState};
pub use notification_log::{DeliveryKey, NotificationLog, StatusEntry};
pub use posts::{Post, PostStore, Revised};
pub use preferences::{Preference, PreferenceStore};
pub use rate_limits::{NewAdmission, RateLimitLedger};
pub use reactions::{PostTally, ReactionStore, Reply, TallyMember, TallyState, TallyUpdate};
pub use recipients::{Recipient, RecipientStore};
pub use schedule::{ScheduleStore, ScheduledItem, UNSCOPED};
pub use social_graph::SocialGraph;
pub use templates::{TemplateContent, TemplateStore, TemplateVersion};

use crate::url::StoreUrl;

/// Milliseconds since the Unix epoch: the one time type of the store.
pub type Millis = i64;

/// The current wall-clock time as [`Millis`].
pub fn now_millis() -> Millis {
    // A clock before 1970 is a broken host; saturating keeps us panic-free.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How a new ScyllaDB keyspace is replicated. Ignored by SQLite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// `SimpleStrategy`: fine for a single data centre in development/tests.
    Simple { factor: u32 },
    /// `NetworkTopologyStrategy`: what production should use, with a
    /// replication factor per data-centre name, e.g. `{"dc1": 3, "dc2": 3}`.
    NetworkTopology { datacenters: BTreeMap<String, u32> },
}

impl Default for Replication {
    fn default() -> Self {
        Replication::Simple { factor: 1 }
    }
}

/// Knobs of [`Store::connect`]. `StoreOptions::default()` suits tests and
/// development.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Apply the schema migrations the store has not recorded yet while
    /// connecting. Without it the store's recorded version is still checked:
    /// a store migrated by a newer build is refused.
    pub migrate: bool,
    /// Replication of the keyspace when migrations create it (Scylla only).
    pub replication: Replication,
    /// Bound on establishing the first connection (Scylla only).
    pub connect_timeout: Duration,
    /// How many requests one multi-key call keeps in flight (Scylla only).
    pub concurrency: usize,
    /// How far back in time `ScheduleStore::due` looks for undrained buckets
    /// after start-up (Scylla only; SQLite has an index on the due time).
    pub schedule_lookback: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            migrate: true,
            replication: Replication::default(),
            connect_timeout: Duration::from_secs(5),
            concurrency: 64,
            schedule_lookback: Duration::from_secs(24 * 3600),
        }
    }
}

/// Engine-level operations that are not about one aggregate.
#[async_trait::async_trait]
trait Backend: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// This build's migrations for the engine, in version order.
    fn migrations(&self) -> &'static [migrations::Migration];
    /// What the store's `schema_migrations` table says; changes nothing.
    async fn recorded(&self) -> Result<migrations::Recorded, StoreError>;
    /// Applies the migrations the store has not recorded, in order, recording
    /// each; answers the versions this call applied.
    async fn migrate(&self) -> Result<Vec<u32>, StoreError>;
    /// Fills the engine's copies of denormalised data again (CQL: the
    /// recipient copy); nothing by default.
    async fn refill(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Handle to every aggregate store of one engine. Cloning is cheap (`Arc`s).
#[derive(Clone)]
pub struct Store {
    pub contacts: Arc<dyn ContactStore>,
    pub preferences: Arc<dyn PreferenceStore>,
    /// The batch read of [`contacts`](Self::contacts) and
    /// [`preferences`](Self::preferences) the enricher makes.
    pub recipients: Arc<dyn RecipientStore>,
    pub templates: Arc<dyn TemplateStore>,
    pub dedupe: Arc<dyn DedupeLedger>,
    pub notification_log: Arc<dyn NotificationLog>,
    pub posts: Arc<dyn PostStore>,
    pub social_graph: Arc<dyn SocialGraph>,
    pub feed: Arc<dyn FeedStore>,
    pub counters: Arc<dyn CounterStore>,
    pub schedule: Arc<dyn ScheduleStore>,
    pub apps: Arc<dyn AppStore>,
    pub rate_limits: Arc<dyn RateLimitLedger>,
    pub inbox: Arc<dyn InboxStore>,
    pub reactions: Arc<dyn ReactionStore>,
    backend: Arc<dyn Backend>,
}

impl Store {
    /// Opens the engine named by `url` (see the crate docs for the forms).
    /// With `opts.migrate` the schema is created or brought up to date first;
    /// without it a missing schema surfaces as an error naming the table (at
    /// connect on Scylla, where statements are prepared; at first use on
    /// SQLite).
    /// Every call through the returned store is timed and its failures
    /// counted (`tidings_store_call_seconds`, `tidings_store_errors_total`).
    pub async fn connect(url: &str, opts: &StoreOptions) -> Result<Store, StoreError> {
        let store = match StoreUrl::parse(url)? {
            StoreUrl::Sqlite { path } => sqlite::connect(&path, opts).await,
            StoreUrl::Scylla { nodes, keyspace } => scylla::connect(&nodes, &keyspace, opts).await,
        }?;
        Ok(metered::metered(store))
    }

    /// Applies the schema migrations the store has not recorded yet, in
    /// order, and answers their versions (none when it is up to date). Safe
    /// on a live store and from several processes at once. Refuses a store
    /// migrated by a newer build ([`StoreError::SchemaTooNew`]).
    pub async fn migrate(&self) -> Result<Vec<u32>, StoreError> {
        self.backend.migrate().await
    }

    /// On CQL, copies every profile and preference into the recipient copy
    /// again (as migration 11 did), never overwriting a newer value: for a
    /// store upgraded while processes of an earlier release, which do not
    /// keep the copy, still wrote contacts or preferences. Holds the
    /// migration lease. Nothing to do on SQLite.
    pub async fn refill_recipients(&self) -> Result<(), StoreError> {
        self.backend.refill().await
    }

    /// Where this store's schema stands against this build's migrations.
    pub async fn schema_status(&self) -> Result<SchemaStatus, StoreError> {
        let recorded = self.backend.recorded().await?;
        SchemaStatus::new(self.backend.name(), self.backend.migrations(), &recorded)
    }

    /// `"scylla"` or `"sqlite"`, for logs and metrics labels.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }
}

/// Where the schema of the store at `url` stands, without creating or
/// changing anything and without needing its tables: `tidings migrate
/// --status` (a store that does not exist yet shows every migration pending).
pub async fn schema_status(url: &str, opts: &StoreOptions) -> Result<SchemaStatus, StoreError> {
    match StoreUrl::parse(url)? {
        StoreUrl::Sqlite { path } => sqlite::schema_status(&path).await,
        StoreUrl::Scylla { nodes, keyspace } => {
            scylla::schema_status(&nodes, &keyspace, opts).await
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend_name())
            .finish_non_exhaustive()
    }
}
