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
mod notification_log;
mod posts;
mod preferences;
mod rate_limits;
mod schedule;
mod social_graph;
mod templates;

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt, stream};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::errors::{
    DbError, DeserializationError, ExecutionError, IntoRowsResultError, MaybeFirstRowError,
    NextPageError, NextRowError, PagerExecutionError, PrepareError, RequestAttemptError,
    RequestError, RowsError, TypeCheckError,
};
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;

use crate::error::BoxError;
use crate::url::is_cql_identifier;
use crate::{Backend, Replication, Store, StoreError, StoreOptions};

const KEYSPACE_MIGRATION: &str = include_str!("../../migrations/cql/0000_keyspace.cql");
/// Applied in order by every migrate; each file is idempotent.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init.cql",
        include_str!("../../migrations/cql/0001_init.cql"),
    ),
    (
        "0002_rate_limits.cql",
        include_str!("../../migrations/cql/0002_rate_limits.cql"),
    ),
    (
        "0003_pulled_authors.cql",
        include_str!("../../migrations/cql/0003_pulled_authors.cql"),
    ),
];

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
    let builder = SessionBuilder::new()
        .known_nodes(nodes)
        .connection_timeout(opts.connect_timeout);
    // The driver bounds each connection attempt, but not the whole start-up
    // (metadata fetch included); this makes "unreachable" a bounded wait.
    let session = tokio::time::timeout(opts.connect_timeout * 2, builder.build())
        .await
        .map_err(|_| unreachable(format!("no answer within {:?}", opts.connect_timeout * 2)))?
        .map_err(|e| unreachable(e.to_string()))?;

    let cql = Cql {
        session: Arc::new(session),
        keyspace: keyspace.to_owned(),
        replication: opts.replication.clone(),
        concurrency: opts.concurrency.max(1),
    };
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

    Ok(Store {
        contacts: Arc::new(contacts::ScyllaContacts::prepare(&cql).await?),
        preferences: Arc::new(preferences::ScyllaPreferences::prepare(&cql).await?),
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
        backend: Arc::new(cql),
    })
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
        self.session.prepare(cql).await.ctx("prepare", cql)
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

    /// Creates the keyspace, makes it the session's keyspace (the scripts
    /// name tables unqualified) and applies every table script.
    async fn migrate(&self) -> Result<(), StoreError> {
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
        for (name, script) in MIGRATIONS {
            self.run_script(name, script).await?;
        }
        Ok(())
    }
}

impl Cql {
    /// Runs the `;`-separated statements of a migration file in order. The
    /// driver waits for schema agreement after each DDL statement.
    async fn run_script(&self, name: &str, script: &str) -> Result<(), StoreError> {
        for statement in statements(script) {
            self.session
                .query_unpaged(statement.as_str(), ())
                .await
                .map_err(|e| migration_error(name, format!("{e} in `{statement}`")))?;
        }
        Ok(())
    }
}

fn migration_error(migration: &str, source: impl Into<BoxError>) -> StoreError {
    StoreError::Migration {
        backend: "scylla",
        migration: migration.to_owned(),
        source: source.into(),
    }
}

/// The statements of a CQL script: `--` comment lines dropped, split on `;`.
fn statements(script: &str) -> Vec<String> {
    let code: String = script
        .lines()
        .map(|line| line.split_once("--").map_or(line, |(code, _comment)| code))
        .collect::<Vec<_>>()
        .join("\n");
    code.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn scripts_split_into_statements_without_comments() {
        let script = "-- header; with a semicolon\nCREATE TABLE a (x int PRIMARY KEY);\n\n-- b\nCREATE TABLE b (y int PRIMARY KEY); -- tail\n";
        assert_eq!(
            statements(script),
            vec![
                "CREATE TABLE a (x int PRIMARY KEY)",
                "CREATE TABLE b (y int PRIMARY KEY)"
            ]
        );
    }

    #[test]
    fn shipped_migrations_parse() {
        assert_eq!(statements(KEYSPACE_MIGRATION).len(), 1);
        for (name, script) in MIGRATIONS {
            let statements = statements(script);
            assert!(!statements.is_empty(), "{name}");
            assert!(
                statements
                    .iter()
                    .all(|s| s.starts_with("CREATE TABLE IF NOT EXISTS")),
                "{name}"
            );
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
