//! The production engine: ScyllaDB through the `scylla` driver.
//!
//! Only portable CQL is used, so Apache Cassandra 5 works too (the tests run
//! against it). Every statement is prepared once at connect time and kept by
//! the aggregate that uses it. Multi-key calls run concurrent single-partition
//! requests (at most `StoreOptions::concurrency` in flight) rather than
//! multi-partition `IN` queries or batches, which would load one coordinator.

mod apps;
mod contacts;
mod counters;
mod dedupe;
mod feed;
mod inbox;
mod notification_log;
mod posts;
mod preferences;
mod rate_limits;
mod reactions;
mod recipients;
mod schedule;
mod social_graph;
mod templates;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::errors::{
    DbError, DeserializationError, ExecutionError, IntoRowsResultError, MaybeFirstRowError,
    NextPageError, NextRowError, PagerExecutionError, PrepareError, RequestAttemptError,
    RequestError, RowsError, TypeCheckError,
};
use scylla::observability::history::{AttemptId, HistoryListener, RequestId, SpeculativeId};
use scylla::policies::retry::RetryDecision;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlValue, Row};

use tidings_telemetry::{IntCounter, StoreStatement};

use crate::error::BoxError;
use crate::migrations::{self, AppliedMigration, Migration, Recorded, SchemaStatus};
use crate::script;
use crate::url::is_cql_identifier;
use crate::{Backend, Replication, Store, StoreError, StoreOptions};

/// Creates the keyspace; run before every migrate, outside the versions
/// (the version table lives in the keyspace). Idempotent.
const KEYSPACE_MIGRATION: &str = include_str!("../../migrations/cql/0000_keyspace.cql");

/// This build's migrations, versions 1..N (see `crate::migrations`).
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration::new(
        "0001_init.cql",
        include_str!("../../migrations/cql/0001_init.cql"),
    ),
    Migration::new(
        "0002_rate_limits.cql",
        include_str!("../../migrations/cql/0002_rate_limits.cql"),
    ),
    Migration::new(
        "0003_pulled_authors.cql",
        include_str!("../../migrations/cql/0003_pulled_authors.cql"),
    ),
    Migration::new(
        "0004_scheduled_scope.cql",
        include_str!("../../migrations/cql/0004_scheduled_scope.cql"),
    ),
    Migration::new(
        "0005_inbox.cql",
        include_str!("../../migrations/cql/0005_inbox.cql"),
    ),
    Migration::new(
        "0006_reactions.cql",
        include_str!("../../migrations/cql/0006_reactions.cql"),
    ),
    Migration::new(
        "0007_cooling_authors.cql",
        include_str!("../../migrations/cql/0007_cooling_authors.cql"),
    ),
    Migration::new(
        "0008_dedupe_claimant.cql",
        include_str!("../../migrations/cql/0008_dedupe_claimant.cql"),
    ),
    Migration::new(
        "0009_sent_mark.cql",
        include_str!("../../migrations/cql/0009_sent_mark.cql"),
    ),
    Migration::new(
        "0010_recipient_copy.cql",
        include_str!("../../migrations/cql/0010_recipient_copy.cql"),
    ),
    Migration::new(
        "0011_recipient_copy_filled.cql",
        include_str!("../../migrations/cql/0011_recipient_copy_filled.cql"),
    ),
];

/// Where applied migrations are recorded, and the lease one migrator holds
/// while it applies them.
const MIGRATION_TABLES: &str = "
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    int PRIMARY KEY,
    name       text,
    checksum   text,
    applied_at timestamp
);
CREATE TABLE IF NOT EXISTS schema_migration_lock (
    id          text PRIMARY KEY,
    owner       text,
    acquired_at timestamp
);";

/// How long the migration lease lives without renewal: a migrator that dies
/// holding it delays the next one by at most this. Renewed after each
/// migration, so it bounds one migration, not all of them.
const LOCK_TTL: Duration = Duration::from_secs(120);
/// How long a migrator waits for another one's lease before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(180);
const LOCK_POLL: Duration = Duration::from_millis(500);
/// How long a table another migrator just created may be listed in
/// `system_schema` yet refuse requests ("table ... does not exist"): seen on
/// Cassandra 5 with two migrators starting at once.
const SCHEMA_SETTLE: Duration = Duration::from_secs(10);

pub(crate) async fn connect(
    nodes: &[String],
    keyspace: &str,
    opts: &StoreOptions,
) -> Result<Store, StoreError> {
    let address = nodes.join(",");
    let unreachable = |reason: String| StoreError::Connect {
        backend: "scylla",
        address: address.clone(),
        reason,
    };
    let cql = session(nodes, keyspace, opts).await?;
    if opts.migrate {
        cql.migrate().await?;
    } else {
        cql.session
            .use_keyspace(keyspace, false)
            .await
            .map_err(|e| {
                unreachable(format!(
                    "keyspace `{keyspace}` unusable (not migrated yet?): {e}"
                ))
            })?;
    }
    let recorded = cql.recorded().await?;
    if !opts.migrate {
        migrations::check("scylla", MIGRATIONS, &recorded)?;
    }
    let has = |version: u32| recorded.applied.iter().any(|m| m.version == version);
    let copy = match has(recipients::COPY_COLUMNS) {
        true => Some(recipients::CopyWrites::prepare(&cql).await?),
        false => None,
    };
    let contacts: Arc<dyn crate::ContactStore> =
        Arc::new(contacts::ScyllaContacts::prepare(&cql, copy.as_ref()).await?);
    let preferences: Arc<dyn crate::PreferenceStore> =
        Arc::new(preferences::ScyllaPreferences::prepare(&cql, copy.as_ref()).await?);
    let separate = crate::recipients::SeparateReads {
        contacts: contacts.clone(),
        preferences: preferences.clone(),
    };
    let filled = copy.is_some() && has(recipients::COPY_FILLED);

    Ok(Store {
        recipients: Arc::new(recipients::ScyllaRecipients::prepare(&cql, filled, separate).await?),
        contacts,
        preferences,
        templates: Arc::new(templates::ScyllaTemplates::prepare(&cql).await?),
        dedupe: Arc::new(dedupe::ScyllaDedupe::prepare(&cql).await?),
        notification_log: Arc::new(notification_log::ScyllaNotificationLog::prepare(&cql).await?),
        posts: Arc::new(posts::ScyllaPosts::prepare(&cql).await?),
        social_graph: Arc::new(social_graph::ScyllaSocialGraph::prepare(&cql).await?),
        feed: Arc::new(feed::ScyllaFeed::prepare(&cql).await?),
        counters: Arc::new(counters::ScyllaCounters::prepare(&cql).await?),
        schedule: Arc::new(schedule::ScyllaSchedule::prepare(&cql, opts.schedule_lookback).await?),
        apps: Arc::new(apps::ScyllaApps::prepare(&cql).await?),
        rate_limits: Arc::new(rate_limits::ScyllaRateLimits::prepare(&cql).await?),
        inbox: Arc::new(inbox::ScyllaInbox::prepare(&cql).await?),
        reactions: Arc::new(reactions::ScyllaReactions::prepare(&cql).await?),
        backend: Arc::new(cql),
    })
}

/// A session to the cluster, keyspace not chosen yet.
async fn session(nodes: &[String], keyspace: &str, opts: &StoreOptions) -> Result<Cql, StoreError> {
    let address = nodes.join(",");
    let unreachable = |reason: String| StoreError::Connect {
        backend: "scylla",
        address: address.clone(),
        reason,
    };
    // Schema agreement is awaited after every DDL statement (the driver's
    // default, spelled out because migrations depend on it): the next
    // statement, or another node's prepare, must see the new table.
    let builder = SessionBuilder::new()
        .known_nodes(nodes)
        .connection_timeout(opts.connect_timeout)
        .auto_await_schema_agreement(true);
    // The driver bounds each connection attempt, but not the whole start-up
    // (metadata fetch included); this makes "unreachable" a bounded wait.
    let session = tokio::time::timeout(opts.connect_timeout * 2, builder.build())
        .await
        .map_err(|_| unreachable(format!("no answer within {:?}", opts.connect_timeout * 2)))?
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(Cql {
        session: Arc::new(session),
        keyspace: keyspace.to_owned(),
        replication: opts.replication.clone(),
        concurrency: opts.concurrency.max(1),
    })
}

/// `tidings migrate --status`: reads the schema tables only.
pub(crate) async fn schema_status(
    nodes: &[String],
    keyspace: &str,
    opts: &StoreOptions,
) -> Result<SchemaStatus, StoreError> {
    let cql = session(nodes, keyspace, opts).await?;
    SchemaStatus::new("scylla", MIGRATIONS, &cql.recorded().await?)
}

/// The session and what every aggregate needs alongside it.
#[derive(Clone)]
pub(crate) struct Cql {
    session: Arc<Session>,
    keyspace: String,
    replication: Replication,
    concurrency: usize,
}

impl Cql {
    /// Prepares a statement that is safe to retry (the driver may then retry
    /// it on another node after a timeout).
    async fn prepare(&self, cql: &str) -> Result<PreparedStatement, StoreError> {
        let mut statement = self.prepare_once_only(cql).await?;
        statement.set_is_idempotent(true);
        Ok(statement)
    }

    /// Prepares a statement whose retry could apply it twice (counter
    /// updates) or misreport its outcome (lightweight transactions).
    async fn prepare_once_only(&self, cql: &str) -> Result<PreparedStatement, StoreError> {
        let mut statement = self.session.prepare(cql).await.ctx("prepare", cql)?;
        statement.set_history_listener(Arc::new(StatementCounter::new(&statement_label(cql))));
        Ok(statement)
    }

    async fn execute(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<QueryResult, Failure> {
        Ok(self.session.execute_unpaged(statement, values).await?)
    }

    /// All rows of a query whose result is bounded (a LIMIT or a small
    /// partition), in one response.
    async fn rows<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Vec<R>, Failure>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let result = self.execute(statement, values).await?.into_rows_result()?;
        let rows = result.rows::<R>()?.collect::<Result<Vec<R>, _>>()?;
        Ok(rows)
    }

    async fn maybe_row<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Option<R>, Failure>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let result = self.execute(statement, values).await?.into_rows_result()?;
        Ok(result.maybe_first_row::<R>()?)
    }

    /// All rows of a query over a partition of unbounded size, page by page.
    async fn all_rows<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Vec<R>, Failure>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm> + 'static,
    {
        let pager = self.session.execute_iter(statement.clone(), values).await?;
        Ok(pager.rows_stream::<R>()?.try_collect().await?)
    }

    /// Runs `f` for every input with bounded concurrency, keeping input order.
    async fn concurrently<I, T, F, Fut>(&self, inputs: I, f: F) -> Result<Vec<T>, StoreError>
    where
        I: IntoIterator,
        F: FnMut(I::Item) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        // The (lazy) futures are created up front so that no closure is held
        // across an await: that keeps the callers' futures provably `Send`.
        let requests: Vec<Fut> = inputs.into_iter().map(f).collect();
        stream::iter(requests)
            .buffered(self.concurrency)
            .try_collect()
            .await
    }
}

#[async_trait::async_trait]
impl Backend for Cql {
    fn name(&self) -> &'static str {
        "scylla"
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    /// Reads the keyspace's tables from `system_schema`, then the recorded
    /// migrations: works before the keyspace exists and needs no
    /// `use_keyspace`.
    async fn recorded(&self) -> Result<Recorded, StoreError> {
        let op = "schema_migrations.read";
        let pager = self
            .session
            .query_iter(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
                (self.keyspace.as_str(),),
            )
            .await
            .ctx(op, &self.keyspace)?;
        let tables: Vec<(String,)> = pager
            .rows_stream::<(String,)>()
            .ctx(op, &self.keyspace)?
            .try_collect()
            .await
            .ctx(op, &self.keyspace)?;
        let versioned = tables.iter().any(|(t,)| t == "schema_migrations");
        let mut applied = Vec::new();
        if versioned {
            // The keyspace name was checked to be a plain identifier.
            let select = format!(
                "SELECT version, name, checksum, applied_at FROM {}.schema_migrations",
                self.keyspace
            );
            let settled = tokio::time::Instant::now() + SCHEMA_SETTLE;
            let rows = loop {
                match self.migration_rows(&select).await {
                    Ok(rows) => break rows,
                    // Listed in system_schema by another migrator's CREATE
                    // a moment ago, and not yet accepting reads here.
                    Err(_) if tokio::time::Instant::now() < settled => {
                        tokio::time::sleep(LOCK_POLL).await;
                    }
                    Err(failure) => return Err(failure).ctx(op, &self.keyspace),
                }
            };
            for (version, name, checksum, applied_at) in rows {
                applied.push(AppliedMigration {
                    version: from_int(op, &self.keyspace, version)?,
                    name: name.unwrap_or_default(),
                    checksum: checksum.unwrap_or_default(),
                    applied_at: applied_at.map_or(0, |t| t.0),
                });
            }
            applied.sort_by_key(|a| a.version);
        }
        Ok(Recorded {
            versioned,
            has_tables: tables.iter().any(|(t,)| t == "users"),
            applied,
        })
    }

    /// Creates the keyspace, makes it the session's keyspace (the scripts
    /// name tables unqualified), then, holding the migration lease, applies
    /// the migrations the keyspace has not recorded.
    async fn migrate(&self) -> Result<Vec<u32>, StoreError> {
        if !is_cql_identifier(&self.keyspace) {
            return Err(migration_error(
                "0000_keyspace.cql",
                format!("bad keyspace name `{}`", self.keyspace),
            ));
        }
        let keyspace = KEYSPACE_MIGRATION
            .replace("$keyspace", &self.keyspace)
            .replace(
                "$replication",
                &replication_map(&self.replication)
                    .map_err(|e| migration_error("0000_keyspace.cql", e))?,
            );
        self.run_script("0000_keyspace.cql", &keyspace).await?;
        self.session
            .use_keyspace(&self.keyspace, false)
            .await
            .map_err(|e| migration_error("0000_keyspace.cql", e))?;
        // Refuse a newer store before touching it, and say when this is the
        // first migrate of a store from before versioned migrations.
        migrations::pending("scylla", MIGRATIONS, &self.recorded().await?)?;
        self.run_script("schema_migrations", MIGRATION_TABLES)
            .await?;

        let lease = self.acquire_lease().await?;
        let applied = self.apply_pending(&lease).await;
        // Released even when a migration failed, so that the next attempt
        // need not wait for the lease to expire.
        let released = self.release_lease(&lease).await;
        let applied = applied?;
        released?;
        Ok(applied)
    }

    async fn refill(&self) -> Result<(), StoreError> {
        let lease = self.acquire_lease().await?;
        let filled = recipients::fill(self, &lease).await;
        let released = self.release_lease(&lease).await;
        filled?;
        released
    }
}

/// Distinguishes two migrators of one process in the lease owner.
static MIGRATOR: AtomicU64 = AtomicU64::new(0);

impl Cql {
    /// Runs the statements of a migration file in order. The driver waits for
    /// schema agreement after each DDL statement.
    async fn run_script(&self, name: &str, script: &str) -> Result<(), StoreError> {
        let statements = script::statements(script).map_err(|e| migration_error(name, e))?;
        for statement in statements {
            self.session
                .query_unpaged(statement.as_str(), ())
                .await
                .map_err(|e| migration_error(name, format!("{e} in `{statement}`")))?;
        }
        Ok(())
    }

    /// Applies, in order, the migrations not recorded (read again under the
    /// lease: another migrator may have applied them meanwhile).
    async fn apply_pending(&self, lease: &str) -> Result<Vec<u32>, StoreError> {
        let recorded = self.recorded().await?;
        SchemaStatus::new("scylla", MIGRATIONS, &recorded)?.refuse_if_too_new()?;
        let mut applied = Vec::new();
        for m in migrations::unrecorded(MIGRATIONS, &recorded) {
            let checksum = m.checksum().map_err(|e| migration_error(m.file, e))?;
            self.run_script(m.file, m.script).await?;
            // Every node must have the new tables before the version says
            // they exist: a process that reads the version next may prepare
            // statements on them through any node.
            self.session
                .await_schema_agreement()
                .await
                .map_err(|e| migration_error(m.file, format!("schema agreement: {e}")))?;
            if m.version == recipients::COPY_FILLED {
                // Code, not a script: recorded only once the copy is whole.
                recipients::fill(self, lease).await?;
            }
            let recorded = self
                .lwt(
                    "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?) IF NOT EXISTS",
                    (
                        to_int("schema_migrations.insert", m.file, m.version)?,
                        m.name,
                        checksum.as_str(),
                        CqlTimestamp(crate::now_millis()),
                    ),
                )
                .await
                .ctx("schema_migrations.insert", m.file)?;
            if recorded {
                tracing::info!(version = m.version, name = m.name, keyspace = %self.keyspace, "scylla schema migration applied");
                applied.push(m.version);
            } else {
                // Only when a lease expired under a slow migrator: the
                // statements are idempotent DDL, and the first record stands.
                tracing::warn!(
                    version = m.version,
                    "schema migration was recorded by another migrator meanwhile"
                );
            }
            self.renew_lease(lease).await?;
        }
        Ok(applied)
    }

    async fn migration_rows(
        &self,
        select: &str,
    ) -> Result<Vec<(i32, Option<String>, Option<String>, Option<CqlTimestamp>)>, Failure> {
        let pager = self.session.query_iter(select, ()).await?;
        Ok(pager.rows_stream()?.try_collect().await?)
    }

    /// Takes the migration lease (a lightweight transaction on one row),
    /// waiting a bounded time for another migrator to finish.
    async fn acquire_lease(&self) -> Result<String, StoreError> {
        let owner = format!(
            "pid-{}-{}-{}",
            std::process::id(),
            crate::now_millis(),
            MIGRATOR.fetch_add(1, Ordering::Relaxed)
        );
        let insert = format!(
            "INSERT INTO schema_migration_lock (id, owner, acquired_at) VALUES ('migrate', ?, ?) IF NOT EXISTS USING TTL {}",
            LOCK_TTL.as_secs()
        );
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        let settled = tokio::time::Instant::now() + SCHEMA_SETTLE;
        loop {
            match self
                .lwt(&insert, (owner.as_str(), CqlTimestamp(crate::now_millis())))
                .await
            {
                Ok(true) => return Ok(owner),
                Ok(false) => {}
                // Paxos contention with the other migrator: try again.
                Err(f) if f.retriable => {}
                // The lock table, created by another migrator a moment ago,
                // may not accept requests on this node yet.
                Err(_) if tokio::time::Instant::now() < settled => {}
                Err(f) => return Err(migration_error("schema_migration_lock", f.source)),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(migration_error(
                    "schema_migration_lock",
                    format!(
                        "another migrator held the migration lock of keyspace `{}` for over {LOCK_WAIT:?}; if it died, its lock expires {LOCK_TTL:?} after its last renewal",
                        self.keyspace
                    ),
                ));
            }
            tracing::info!(keyspace = %self.keyspace, "waiting for another schema migrator to finish");
            tokio::time::sleep(LOCK_POLL).await;
        }
    }

    async fn renew_lease(&self, owner: &str) -> Result<(), StoreError> {
        let update = format!(
            "UPDATE schema_migration_lock USING TTL {} SET owner = ?, acquired_at = ? WHERE id = 'migrate' IF owner = ?",
            LOCK_TTL.as_secs()
        );
        let renewed = self
            .lwt(&update, (owner, CqlTimestamp(crate::now_millis()), owner))
            .await
            .map_err(|f| migration_error("schema_migration_lock", f.source))?;
        if !renewed {
            // The lease expired and another migrator may be applying the
            // same migrations: stop rather than interleave with it.
            return Err(migration_error(
                "schema_migration_lock",
                format!(
                    "the migration lock expired (a migration took over {LOCK_TTL:?}); run the migration again"
                ),
            ));
        }
        Ok(())
    }

    async fn release_lease(&self, owner: &str) -> Result<(), StoreError> {
        self.lwt(
            "DELETE FROM schema_migration_lock WHERE id = 'migrate' IF owner = ?",
            (owner,),
        )
        .await
        .map_err(|f| migration_error("schema_migration_lock", f.source))?;
        Ok(())
    }

    /// Runs a lightweight transaction; answers whether it applied.
    async fn lwt(&self, cql: &str, values: impl SerializeRow) -> Result<bool, Failure> {
        let result = self
            .session
            .query_unpaged(cql, values)
            .await?
            .into_rows_result()?;
        let row = result.maybe_first_row::<Row>()?;
        Ok(matches!(
            row.and_then(|r| r.columns.into_iter().next()).flatten(),
            Some(CqlValue::Boolean(true))
        ))
    }
}

/// Counts a statement's requests (`tidings_store_statements_total`): the
/// driver tells the listener of each request it starts, page by page. The
/// counter is resolved once, when the statement is prepared.
#[derive(Debug)]
pub(crate) struct StatementCounter(IntCounter);

impl StatementCounter {
    pub(crate) fn new(label: &str) -> Self {
        Self(
            StoreStatement {
                engine: "scylla",
                statement: label,
            }
            .counter(),
        )
    }
}

impl HistoryListener for StatementCounter {
    fn log_request_start(&self) -> RequestId {
        self.0.inc();
        RequestId(0)
    }
    fn log_request_success(&self, _: RequestId) {}
    fn log_request_error(&self, _: RequestId, _: &RequestError) {}
    fn log_new_speculative_fiber(&self, _: RequestId) -> SpeculativeId {
        SpeculativeId(0)
    }
    fn log_attempt_start(
        &self,
        _: RequestId,
        _: Option<SpeculativeId>,
        _: std::net::SocketAddr,
    ) -> AttemptId {
        AttemptId(0)
    }
    fn log_attempt_success(&self, _: AttemptId) {}
    fn log_attempt_error(&self, _: AttemptId, _: &RequestAttemptError, _: &RetryDecision) {}
}

/// A batch that counts its requests as `BATCH <table>` (one request,
/// however many statements it carries).
pub(crate) fn counted_batch(kind: BatchType, table: &str) -> Batch {
    let mut batch = Batch::new(kind);
    batch.set_history_listener(Arc::new(StatementCounter::new(&format!("BATCH {table}"))));
    batch
}

/// A statement's metric label: its verb and table (`SELECT dedupe`,
/// `UPDATE counters`), a bounded set, since statements are constants.
pub(crate) fn statement_label(cql: &str) -> String {
    let words: Vec<&str> = cql.split_whitespace().collect();
    let verb = words
        .first()
        .map_or(String::new(), |w| w.to_ascii_uppercase());
    let table_after = |keyword: &str| {
        words
            .iter()
            .position(|w| w.eq_ignore_ascii_case(keyword))
            .and_then(|i| words.get(i + 1))
    };
    let table = match verb.as_str() {
        "SELECT" | "DELETE" => table_after("FROM"),
        "INSERT" => table_after("INTO"),
        "UPDATE" => words.get(1),
        _ => None,
    };
    match table {
        // `INTO t (a, b)` and `FROM t WHERE`: the name ends at a bracket.
        Some(table) => format!("{verb} {}", table.split('(').next().unwrap_or(table)),
        None => verb,
    }
}

fn migration_error(migration: &str, source: impl Into<BoxError>) -> StoreError {
    StoreError::Migration {
        backend: "scylla",
        migration: migration.to_owned(),
        source: source.into(),
    }
}

/// The CQL map literal of a replication setting. Data-centre names are
/// spliced into CQL text, so they are checked strictly.
fn replication_map(replication: &Replication) -> Result<String, String> {
    match replication {
        Replication::Simple { factor } => Ok(format!(
            "{{'class': 'SimpleStrategy', 'replication_factor': {factor}}}"
        )),
        Replication::NetworkTopology { datacenters } => {
            let mut map = String::from("{'class': 'NetworkTopologyStrategy'");
            for (dc, factor) in datacenters {
                if !dc
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    || dc.is_empty()
                {
                    return Err(format!("bad data-centre name `{dc}`"));
                }
                map.push_str(&format!(", '{dc}': {factor}"));
            }
            map.push('}');
            Ok(map)
        }
    }
}

/// A failed driver call, before the caller adds its context.
pub(crate) struct Failure {
    retriable: bool,
    source: BoxError,
}

fn attempt_is_retriable(e: &RequestAttemptError) -> bool {
    match e {
        RequestAttemptError::DbError(db, _) => matches!(
            db,
            DbError::Unavailable { .. }
                | DbError::Overloaded
                | DbError::IsBootstrapping
                | DbError::ReadTimeout { .. }
                | DbError::WriteTimeout { .. }
                | DbError::RateLimitReached { .. }
        ),
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => true,
        _ => false,
    }
}

fn request_is_retriable(e: &RequestError) -> bool {
    match e {
        RequestError::EmptyPlan
        | RequestError::ConnectionPoolError(_)
        | RequestError::RequestTimeout(_) => true,
        RequestError::LastAttemptError(e) => attempt_is_retriable(e),
        _ => false,
    }
}

fn execution_is_retriable(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::EmptyPlan
        | ExecutionError::ConnectionPoolError(_)
        | ExecutionError::RequestTimeout(_) => true,
        ExecutionError::LastAttemptError(e) => attempt_is_retriable(e),
        _ => false,
    }
}

fn next_page_is_retriable(e: &NextPageError) -> bool {
    matches!(e, NextPageError::RequestFailure(e) if request_is_retriable(e))
}

fn pager_is_retriable(e: &PagerExecutionError) -> bool {
    matches!(e, PagerExecutionError::NextPageError(e) if next_page_is_retriable(e))
}

fn next_row_is_retriable(e: &NextRowError) -> bool {
    matches!(e, NextRowError::NextPageError(e) if next_page_is_retriable(e))
}

fn prepare_is_retriable(e: &PrepareError) -> bool {
    matches!(e, PrepareError::ConnectionPoolError(_))
}

/// Malformed results fail the same way every time.
fn never<E>(_: &E) -> bool {
    false
}

macro_rules! failure_from {
    ($($error:ty => $retriable:path),* $(,)?) => {$(
        impl From<$error> for Failure {
            fn from(e: $error) -> Self {
                Failure { retriable: $retriable(&e), source: e.into() }
            }
        }
    )*};
}

failure_from! {
    ExecutionError => execution_is_retriable,
    PagerExecutionError => pager_is_retriable,
    NextRowError => next_row_is_retriable,
    PrepareError => prepare_is_retriable,
    IntoRowsResultError => never,
    RowsError => never,
    MaybeFirstRowError => never,
    DeserializationError => never,
    TypeCheckError => never,
}

/// Adds the operation and key to a failed driver call.
pub(crate) trait Context<T> {
    fn ctx(self, op: &'static str, key: &str) -> Result<T, StoreError>;
}

impl<T, E: Into<Failure>> Context<T> for Result<T, E> {
    fn ctx(self, op: &'static str, key: &str) -> Result<T, StoreError> {
        self.map_err(|e| {
            let Failure { retriable, source } = e.into();
            StoreError::Backend {
                op,
                key: key.to_owned(),
                retriable,
                source,
            }
        })
    }
}

/// CQL `int` columns hold our `u32`s; larger values are refused rather than
/// wrapped.
pub(crate) fn to_int(op: &'static str, key: &str, value: u32) -> Result<i32, StoreError> {
    i32::try_from(value).map_err(|_| {
        StoreError::invalid_data(op, key, format!("{value} exceeds the CQL int range"))
    })
}

pub(crate) fn from_int(op: &'static str, key: &str, value: i32) -> Result<u32, StoreError> {
    u32::try_from(value)
        .map_err(|_| StoreError::invalid_data(op, key, format!("negative value {value} stored")))
}

/// [`crate::baseline::raw_writes`] on CQL: prepared inserts into one
/// partition of a scratch table, `opts.concurrency` in flight (as a
/// multi-key call of the store keeps), the table dropped after. Not
/// counted in the statement metrics: it is a baseline, not the store's work.
/// Answers the requests kept in flight.
pub(crate) async fn raw_writes(
    nodes: &[String],
    keyspace: &str,
    rows: usize,
    opts: &StoreOptions,
) -> Result<usize, StoreError> {
    const OP: &str = "baseline.raw_writes";
    // `keyspace` is a CQL identifier: the store URL's parser checked it.
    let cql = session(nodes, keyspace, opts).await?;
    let table = format!("{keyspace}.raw_write_baseline");
    cql.session
        .query_unpaged(
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (p int, c bigint, v blob, PRIMARY KEY (p, c))"
            ),
            (),
        )
        .await
        .ctx(OP, &table)?;
    let insert = cql
        .session
        .prepare(format!("INSERT INTO {table} (p, c, v) VALUES (0, ?, ?)"))
        .await
        .ctx(OP, &table)?;
    let value = vec![7u8; crate::baseline::ROW_BYTES];
    let written = stream::iter(0..rows)
        .map(|i| {
            let (insert, value, session) = (&insert, &value, &cql.session);
            async move {
                session
                    .execute_unpaged(insert, (i64::try_from(i).unwrap_or(i64::MAX), value))
                    .await
                    .map(drop)
            }
        })
        .buffer_unordered(cql.concurrency)
        .try_collect::<Vec<()>>()
        .await
        .ctx(OP, &table);
    let dropped = cql
        .session
        .query_unpaged(format!("DROP TABLE IF EXISTS {table}"), ())
        .await
        .ctx(OP, &table);
    written?;
    dropped?;
    Ok(cql.concurrency)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn shipped_migrations_are_versioned_and_re_runnable() {
        assert_eq!(
            script::statements(KEYSPACE_MIGRATION).map(|s| s.len()),
            Ok(1)
        );
        assert_eq!(script::statements(MIGRATION_TABLES).map(|s| s.len()), Ok(2));
        crate::migrations::tests::check_shipped(MIGRATIONS);
    }

    #[test]
    fn statements_are_labelled_by_verb_and_table() {
        for (cql, label) in [
            (
                "SELECT seen_at FROM dedupe WHERE scope = ? AND key = ?",
                "SELECT dedupe",
            ),
            (
                "INSERT INTO dedupe (scope, key) VALUES (?, ?) USING TTL ?",
                "INSERT dedupe",
            ),
            ("insert into feed(a) values (?)", "INSERT feed"),
            (
                "UPDATE counters SET value = value + ? WHERE k = ?",
                "UPDATE counters",
            ),
            ("DELETE FROM dedupe WHERE scope = ?", "DELETE dedupe"),
            ("BEGIN BATCH", "BEGIN"),
        ] {
            assert_eq!(statement_label(cql), label, "{cql}");
        }
    }

    #[test]
    fn replication_maps() {
        assert_eq!(
            replication_map(&Replication::Simple { factor: 1 })
                .ok()
                .as_deref(),
            Some("{'class': 'SimpleStrategy', 'replication_factor': 1}")
        );
        let datacenters = BTreeMap::from([("eu-west".to_owned(), 3), ("us_east".to_owned(), 2)]);
        assert_eq!(
            replication_map(&Replication::NetworkTopology { datacenters })
                .ok()
                .as_deref(),
            Some("{'class': 'NetworkTopologyStrategy', 'eu-west': 3, 'us_east': 2}")
        );
        let bad = BTreeMap::from([("x': 1}; DROP".to_owned(), 3)]);
        assert!(replication_map(&Replication::NetworkTopology { datacenters: bad }).is_err());
    }
}
