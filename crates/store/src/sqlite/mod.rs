//! The embedded engine: one SQLite file in WAL mode.
//!
//! SQLite calls block, and SQLite has a single writer, so one thread owns the
//! connection and runs every call, in arrival order. Calls that queue up while
//! it is busy run together in one transaction (group commit): a commit is the
//! expensive part, and under load hundreds of small calls share one. A call
//! is all or nothing without a savepoint: when one fails, the transaction is
//! rolled back and the calls that succeeded run again in a new one, so a call
//! may run twice (store calls are `FnMut`). No caller hears "done" before
//! the commit that holds its writes.

mod apps;
mod contacts;
mod counters;
mod dedupe;
mod feed;
mod inbox;
mod notification_log;
mod page_cache;
mod posts;
mod preferences;
mod rate_limits;
mod reactions;
mod schedule;
mod social_graph;
mod templates;

use std::ffi::c_int;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::{Arc, mpsc};

use rusqlite::config::DbConfig;
use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;
use rusqlite::{Connection, ErrorCode};

use crate::migrations::{self, AppliedMigration, Migration, Recorded, SchemaStatus};
use crate::{Backend, Store, StoreError, StoreOptions};

/// This build's migrations, versions 1..N (see `crate::migrations`).
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration::new(
        "0001_init.sql",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    Migration::new(
        "0002_rate_limits.sql",
        include_str!("../../migrations/sqlite/0002_rate_limits.sql"),
    ),
    Migration::new(
        "0003_pulled_authors.sql",
        include_str!("../../migrations/sqlite/0003_pulled_authors.sql"),
    ),
    Migration::new(
        "0004_scheduled_scope.sql",
        include_str!("../../migrations/sqlite/0004_scheduled_scope.sql"),
    ),
    Migration::new(
        "0005_inbox.sql",
        include_str!("../../migrations/sqlite/0005_inbox.sql"),
    ),
    Migration::new(
        "0006_reactions.sql",
        include_str!("../../migrations/sqlite/0006_reactions.sql"),
    ),
    Migration::new(
        "0007_cooling_authors.sql",
        include_str!("../../migrations/sqlite/0007_cooling_authors.sql"),
    ),
    Migration::new(
        "0008_dedupe_claimant.sql",
        include_str!("../../migrations/sqlite/0008_dedupe_claimant.sql"),
    ),
    Migration::new(
        "0009_sent_mark.sql",
        include_str!("../../migrations/sqlite/0009_sent_mark.sql"),
    ),
];

/// Where applied migrations are recorded. `applied_at` in Unix milliseconds.
const MIGRATION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    checksum   TEXT NOT NULL,
    applied_at INTEGER NOT NULL
)";

pub(crate) async fn connect(path: &str, opts: &StoreOptions) -> Result<Store, StoreError> {
    let db = Db::open(path).await?;
    if opts.migrate {
        db.migrate().await?;
    } else {
        migrations::check("sqlite", MIGRATIONS, &db.recorded().await?)?;
    }
    let contacts: Arc<dyn crate::ContactStore> = Arc::new(contacts::SqliteContacts(db.clone()));
    let preferences: Arc<dyn crate::PreferenceStore> =
        Arc::new(preferences::SqlitePreferences(db.clone()));
    Ok(Store {
        recipients: Arc::new(crate::recipients::SeparateReads {
            contacts: contacts.clone(),
            preferences: preferences.clone(),
        }),
        contacts,
        preferences,
        templates: Arc::new(templates::SqliteTemplates(db.clone())),
        dedupe: Arc::new(dedupe::SqliteDedupe::new(db.clone())),
        notification_log: Arc::new(notification_log::SqliteNotificationLog(db.clone())),
        posts: Arc::new(posts::SqlitePosts(db.clone())),
        social_graph: Arc::new(social_graph::SqliteSocialGraph(db.clone())),
        feed: Arc::new(feed::SqliteFeed(db.clone())),
        counters: Arc::new(counters::SqliteCounters(db.clone())),
        schedule: Arc::new(schedule::SqliteSchedule(db.clone())),
        apps: Arc::new(apps::SqliteApps(db.clone())),
        rate_limits: Arc::new(rate_limits::SqliteRateLimits::new(db.clone())),
        inbox: Arc::new(inbox::SqliteInbox(db.clone())),
        reactions: Arc::new(reactions::SqliteReactions(db.clone())),
        backend: Arc::new(db),
    })
}

/// The connection's page cache, the most it holds in memory: bounds the
/// embedded store's share of the process's memory.
const PAGE_CACHE_KIB: u32 = 32 * 1024;

/// WAL pages that start a checkpoint (4 KiB each: about 40 MiB of WAL on
/// disk between them).
const WAL_PAGES: u32 = 10_000;

/// WAL pages past which the connection thread checkpoints itself, between
/// two transactions. The WAL starts over only at a transaction that begins
/// after a checkpoint caught up with it, and under load a transaction often
/// begins while the checkpoint thread is still at work: this bounds the WAL
/// when it keeps missing, at the cost of copying what that thread has not
/// copied yet.
const WAL_PAGES_MAX: u32 = 2 * WAL_PAGES;

/// Most calls one group commit takes.
const MAX_GROUP: usize = 512;

/// Prepared statements the connection keeps. The aggregates use about 50
/// distinct statements (plus the transaction ones below);
/// rusqlite's default LRU of 16 would evict and re-parse them in turn under
/// a mixed load. Room to spare costs a few kilobytes per statement.
const STATEMENT_CACHE: usize = 256;

/// What the connection thread runs: a call, which keeps its result until its
/// transaction's outcome is known.
type Job = Box<dyn Call>;

/// A call on the connection thread. It may run more than once: when a call
/// of its group fails, the group's transaction is rolled back and the calls
/// that did not fail run again without it, so none needs a savepoint.
trait Call: Send {
    /// Runs the call in the open transaction and keeps its result.
    fn run(&mut self, conn: &mut Connection) -> Ran;
    /// Answers the caller: the kept result, as `commit` decided it.
    fn report(self: Box<Self>, commit: Result<(), String>);
}

/// How a call's run went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ran {
    Succeeded,
    /// It failed (or panicked): its writes must not be committed, and it
    /// reports its failure whatever its group's commit does.
    Failed,
}

/// A call and, once it has run, its result.
struct Pending<T, F> {
    f: F,
    result: Option<std::thread::Result<rusqlite::Result<T>>>,
    answer: tokio::sync::oneshot::Sender<Result<T, Failure>>,
}

impl<T, F> Call for Pending<T, F>
where
    T: Send + 'static,
    F: FnMut(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
{
    fn run(&mut self, conn: &mut Connection) -> Ran {
        let result = catch_unwind(AssertUnwindSafe(|| (self.f)(conn)));
        let ran = match result {
            Ok(Ok(_)) => Ran::Succeeded,
            _ => Ran::Failed,
        };
        self.result = Some(result);
        ran
    }

    fn report(self: Box<Self>, commit: Result<(), String>) {
        let answer = match (self.result, commit) {
            (None, Err(e)) => Err(Failure::Commit(e)),
            (None, Ok(())) => Err(Failure::Broken("the call never ran".into())),
            (Some(Err(_)), _) => Err(Failure::Broken("the call panicked".into())),
            (Some(Ok(Err(e))), _) => Err(Failure::Sql(e)),
            (Some(Ok(Ok(_))), Err(e)) => Err(Failure::Commit(e)),
            (Some(Ok(Ok(v))), Ok(())) => Ok(v),
        };
        let _ = self.answer.send(answer);
    }
}

/// A handle to the connection thread.
#[derive(Clone)]
pub(crate) struct Db {
    jobs: mpsc::Sender<Job>,
}

/// Why a call failed, before the caller adds its context.
pub(crate) enum Failure {
    Sql(rusqlite::Error),
    /// The call panicked, or the connection thread is gone.
    Broken(String),
    /// The transaction for the call's writes could not begin or commit.
    Commit(String),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sql(e)
    }
}

/// Runs `f` again while SQLite answers "database is locked" without waiting
/// for its busy timeout, for up to about ten seconds. Seen when two
/// processes open a new file at once (a CI run's concurrent-migrators test):
/// the switch to WAL can find the other connection initialising the WAL
/// index, which SQLite reports at once rather than through the busy handler.
fn while_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let mut wait = std::time::Duration::from_millis(20);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match f() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(wait);
                wait = (wait * 2).min(std::time::Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

impl Db {
    async fn open(path: &str) -> Result<Db, StoreError> {
        if !page_cache::install() {
            tracing::debug!("SQLite had started before the store: its page cache is not wrapped");
        }
        let connect_error = |reason: String| StoreError::Connect {
            backend: "sqlite",
            address: path.to_owned(),
            reason,
        };
        let owned_path = path.to_owned();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (jobs, job_rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite".into())
            .spawn(move || {
                let opened = (|| -> Result<Connection, String> {
                    if let Some(dir) = Path::new(&owned_path)
                        .parent()
                        .filter(|d| !d.as_os_str().is_empty())
                    {
                        std::fs::create_dir_all(dir)
                            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
                    }
                    let mut conn = Connection::open(&owned_path).map_err(|e| e.to_string())?;
                    // NORMAL is durable across application crashes in WAL mode;
                    // only an OS crash or power loss may drop the last commits.
                    // The busy timeout first: switching a new file to WAL
                    // takes a lock, and a second process opening it at that
                    // moment must wait rather than fail "database is locked".
                    conn.execute_batch("PRAGMA busy_timeout = 5000;")
                        .map_err(|e| e.to_string())?;
                    while_busy(|| {
                        conn.execute_batch(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;",
                        )
                    })
                    .map_err(|e| e.to_string())?;
                    // The hot pages in memory: with SQLite's default 2 MiB
                    // cache a loaded pipeline re-read B-tree pages from the
                    // OS on most lookups (a third of the connection thread's
                    // time in read(2) and page copies). And temporary
                    // tables and sorts in memory rather than in temp files.
                    conn.execute_batch(&format!(
                        "PRAGMA cache_size = -{PAGE_CACHE_KIB}; PRAGMA temp_store = MEMORY;"
                    ))
                    .map_err(|e| e.to_string())?;
                    checkpoint_in_background(&mut conn, &owned_path, WAL_PAGES, WAL_PAGES_MAX)?;
                    // Query planner stability: plans never depend on bound
                    // values. Without it SQLite marks parameters whose value
                    // fed a planner heuristic (e.g. `user_id = ?1` as a
                    // filter of a full-scan candidate when there is an ORDER
                    // BY, or any `LIMIT ?`), and `sqlite3_clear_bindings`,
                    // which rusqlite calls whenever a cached statement goes
                    // back to the cache, then expires the statement: every
                    // reuse was re-prepared at its first step. Our queries
                    // have no value-dependent plans to lose (no ANALYZE data,
                    // no LIKE on parameters).
                    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
                        .map_err(|e| e.to_string())?;
                    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
                    Ok(conn)
                })();
                match opened {
                    Ok(conn) => {
                        let _ = ready_tx.send(Ok(()));
                        serve(conn, &job_rx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| connect_error(e.to_string()))?;
        ready_rx
            .await
            .map_err(|_| connect_error("the connection thread exited".into()))?
            .map_err(connect_error)?;
        Ok(Db { jobs })
    }

    /// Runs `f` with the connection on the connection thread; answers once
    /// its writes are committed. `f` may run more than once (its first run
    /// rolled back with its group's transaction), so it must not consume
    /// what it captured: it is `FnMut`.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnMut(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (job, answer) = job(f);
        self.jobs
            .send(job)
            .map_err(|_| Failure::Broken("the connection thread is gone".into()))?;
        answer
            .await
            .map_err(|_| Failure::Broken("the connection thread is gone".into()))?
    }
}

/// `f` as the connection thread runs it, and where its answer will arrive.
fn job<T, F>(f: F) -> (Job, tokio::sync::oneshot::Receiver<Result<T, Failure>>)
where
    T: Send + 'static,
    F: FnMut(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
{
    let (answer, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(Pending {
        f,
        result: None,
        answer,
    });
    (job, rx)
}

/// Hands the WAL's checkpoints to a thread with a connection of its own,
/// so the connection thread, which every store call waits on, does not stop
/// to copy `wal_pages` pages into the database file and sync it (SQLite's
/// automatic checkpoint runs inside the commit that crosses the threshold:
/// that commit, and every call queued behind it, waited for it). A passive
/// checkpoint runs beside the writer, which keeps appending to the WAL; the
/// WAL starts over at the first transaction after a checkpoint has caught
/// up. Past `max_pages` the connection thread checkpoints itself, as
/// SQLite would have. Nothing to do for a database not in WAL mode
/// (`:memory:`).
fn checkpoint_in_background(
    conn: &mut Connection,
    path: &str,
    wal_pages: u32,
    max_pages: u32,
) -> Result<(), String> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .map_err(|e| e.to_string())?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Ok(());
    }
    let checkpointer = Connection::open(path).map_err(|e| e.to_string())?;
    checkpointer
        .busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    // A connection learns that the database is in WAL mode, and opens the
    // WAL, on its first read; until then a checkpoint does nothing. (Busy
    // as the store's own first statements can be, see `while_busy`.)
    while_busy(|| checkpointer.query_row("PRAGMA journal_mode", [], |row| row.get::<_, String>(0)))
        .map_err(|e| e.to_string())?;
    // One request waiting is enough: the checkpoint copies every page
    // committed before it starts.
    let (due, requests) = mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            // Ends when the connection thread's hook, and so `due`, is gone.
            while requests.recv().is_ok() {
                let started = std::time::Instant::now();
                match checkpointer.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
                    Ok((pages, copied)) => tracing::trace!(
                        pages,
                        copied,
                        us = started.elapsed().as_micros() as u64,
                        "wal checkpoint"
                    ),
                    // The connection thread asks again after its next commit.
                    Err(e) => tracing::warn!(error = %e, "sqlite wal checkpoint failed"),
                }
            }
        })
        .map_err(|e| format!("starting the checkpoint thread: {e}"))?;
    // Replaces SQLite's automatic checkpoint, which is a WAL hook too.
    conn.wal_hook(Some(move |wal: &mut Wal, pages: c_int| {
        let pages = u32::try_from(pages).unwrap_or(0);
        if pages >= max_pages {
            // As SQLite's own: a failure here is not the commit's (which
            // has happened), and the next commit tries again. Busy while
            // the checkpoint thread is at it.
            if let Err(e) = wal.checkpoint_v2(CheckpointMode::PASSIVE) {
                tracing::debug!(error = %e, pages, "sqlite wal checkpoint on the connection thread");
            }
        } else if pages >= wal_pages {
            // Full: a checkpoint is already asked for.
            let _ = due.try_send(());
        }
        Ok(())
    }))
    .map_err(|e| e.to_string())
}

/// Runs one of our fixed transaction-control statements. Cached: parsing
/// them on every call (`execute_batch`) cost about as much as running them.
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// The connection thread: takes whatever calls are queued, runs them in one
/// transaction, commits, then reports to each caller.
fn serve(mut conn: Connection, jobs: &mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        run_group(&mut conn, group);
    }
}

/// Runs `group` in one transaction and reports each call's outcome. No
/// call has a savepoint (whose statement journal copies every page a call
/// changes, a tenth of this thread's time when calls write rows at random
/// places): when one fails, the transaction is rolled back, the failures
/// report theirs, and the rest run again in a new transaction. Each pass
/// drops at least one call, so it ends.
fn run_group(conn: &mut Connection, mut group: Vec<Job>) {
    let size = group.len();
    let started = std::time::Instant::now();
    let mut passes = 0;
    while !group.is_empty() {
        passes += 1;
        if let Err(e) = run(conn, "BEGIN IMMEDIATE") {
            // Nothing ran; nothing is kept.
            let e = e.to_string();
            for call in group {
                call.report(Err(e.clone()));
            }
            return;
        }
        let ran: Vec<Ran> = group.iter_mut().map(|call| call.run(conn)).collect();
        if ran.iter().all(|r| *r == Ran::Succeeded) {
            let ran_at = started.elapsed();
            let committed = run(conn, "COMMIT").map_err(|e| e.to_string());
            if committed.is_err() {
                let _ = run(conn, "ROLLBACK");
            }
            tracing::trace!(
                size,
                passes,
                run_us = ran_at.as_micros() as u64,
                commit_us = (started.elapsed() - ran_at).as_micros() as u64,
                "group commit"
            );
            for call in group {
                call.report(committed.clone());
            }
            return;
        }
        let _ = run(conn, "ROLLBACK");
        let mut again = Vec::with_capacity(group.len());
        for (call, ran) in group.into_iter().zip(ran) {
            match ran {
                Ran::Failed => call.report(Ok(())),
                Ran::Succeeded => again.push(call),
            }
        }
        group = again;
    }
}

#[async_trait::async_trait]
impl Backend for Db {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    async fn recorded(&self) -> Result<Recorded, StoreError> {
        self.call(read_recorded)
            .await
            .map_err(|f| migration_error("schema_migrations", f))
    }

    /// Each migration runs in a transaction of its own together with its
    /// record: SQLite's DDL is transactional, so a migration is applied
    /// whole or not at all. Another process migrating the same file waits
    /// for SQLite's write lock, and then finds the version recorded.
    async fn migrate(&self) -> Result<Vec<u32>, StoreError> {
        let recorded = self
            .call(|conn| {
                let recorded = read_recorded(conn)?;
                conn.execute_batch(MIGRATION_TABLE)?;
                Ok(recorded)
            })
            .await
            .map_err(|f| migration_error("schema_migrations", f))?;
        let mut applied = Vec::new();
        for m in migrations::pending("sqlite", MIGRATIONS, &recorded)? {
            let migration = *m;
            let checksum = m.checksum().map_err(|e| StoreError::Migration {
                backend: "sqlite",
                migration: m.file.to_owned(),
                source: e.into(),
            })?;
            let ran = self
                .call(move |conn| {
                    let done: bool = conn.query_row(
                        "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = ?1)",
                        [migration.version],
                        |row| row.get(0),
                    )?;
                    if done {
                        return Ok(false);
                    }
                    // SQLite's own parser: it knows every statement form.
                    conn.execute_batch(migration.script)?;
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?1, ?2, ?3, ?4)",
                        rusqlite::params![migration.version, migration.name, checksum, crate::now_millis()],
                    )?;
                    Ok(true)
                })
                .await
                .map_err(|f| migration_error(m.file, f))?;
            if ran {
                tracing::info!(
                    version = m.version,
                    name = m.name,
                    "sqlite schema migration applied"
                );
                applied.push(m.version);
            }
        }
        Ok(applied)
    }
}

/// Reads `schema_migrations` (absent on a store that predates it).
fn read_recorded(conn: &mut Connection) -> rusqlite::Result<Recorded> {
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('schema_migrations', 'users')",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let versioned = tables.iter().any(|t| t == "schema_migrations");
    let applied = if versioned {
        conn.prepare(
            "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version",
        )?
        .query_map([], |row| {
            Ok(AppliedMigration {
                version: row.get(0)?,
                name: row.get(1)?,
                checksum: row.get(2)?,
                applied_at: row.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?
    } else {
        Vec::new()
    };
    Ok(Recorded {
        versioned,
        has_tables: tables.iter().any(|t| t == "users"),
        applied,
    })
}

fn migration_error(migration: &str, failure: Failure) -> StoreError {
    StoreError::Migration {
        backend: "sqlite",
        migration: migration.to_owned(),
        source: match failure {
            Failure::Sql(e) => e.into(),
            Failure::Broken(e) | Failure::Commit(e) => e.into(),
        },
    }
}

/// `tidings migrate --status`: reads the file without creating it.
pub(crate) async fn schema_status(path: &str) -> Result<SchemaStatus, StoreError> {
    let recorded = if Path::new(path).exists() {
        Db::open(path).await?.recorded().await?
    } else {
        Recorded::default()
    };
    SchemaStatus::new("sqlite", MIGRATIONS, &recorded)
}

/// Adds the operation and key to a failed call.
pub(crate) trait Context<T> {
    fn ctx(self, op: &'static str, key: &str) -> Result<T, StoreError>;
}

impl<T, E: Into<Failure>> Context<T> for Result<T, E> {
    fn ctx(self, op: &'static str, key: &str) -> Result<T, StoreError> {
        self.map_err(|e| {
            let key = key.to_owned();
            match e.into() {
                Failure::Sql(e) => match e.sqlite_error_code() {
                    Some(ErrorCode::ConstraintViolation) => StoreError::Conflict { op, key },
                    code => StoreError::Backend {
                        op,
                        key,
                        // Another process holding the file's lock longer than
                        // busy_timeout; everything else fails again.
                        retriable: matches!(
                            code,
                            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                        ),
                        source: e.into(),
                    },
                },
                Failure::Broken(e) => StoreError::Backend {
                    op,
                    key,
                    retriable: false,
                    source: e.into(),
                },
                // Busy or out of disk: the same writes may commit later.
                Failure::Commit(e) => StoreError::Backend {
                    op,
                    key,
                    retriable: true,
                    source: e.into(),
                },
            }
        })
    }
}

/// Lists are kept as JSON text columns.
pub(crate) fn to_json(op: &'static str, key: &str, list: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(list).map_err(|e| StoreError::invalid_data(op, key, e))
}

pub(crate) fn from_json(
    op: &'static str,
    key: &str,
    json: &str,
) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::invalid_data(op, key, e))
}

/// [`crate::baseline::raw_writes`] on SQLite: a scratch database beside the
/// store's, opened as the store opens its own (pragmas, one connection
/// thread with group commit), and calls of
/// [`SQLITE_ROWS_PER_CALL`](crate::baseline::SQLITE_ROWS_PER_CALL) inserts
/// into one table, 4 in flight (as the senders' mark writer keeps). The
/// scratch files are removed after. Answers the calls kept in flight.
pub(crate) async fn raw_writes(path: &str, rows: usize) -> Result<usize, StoreError> {
    use futures::{StreamExt, TryStreamExt, stream};

    use crate::baseline::{ROW_BYTES, SQLITE_ROWS_PER_CALL};
    const OP: &str = "baseline.raw_writes";
    const IN_FLIGHT: usize = 4;
    let scratch = if path == ":memory:" {
        path.to_owned()
    } else {
        format!("{path}.raw-writes")
    };
    let remove = |scratch: &str| {
        if scratch != ":memory:" {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{scratch}{suffix}"));
            }
        }
    };
    remove(&scratch);
    let db = Db::open(&scratch).await?;
    let written = async {
        db.call(|c| {
            c.execute_batch(
                "CREATE TABLE raw_writes (p INTEGER NOT NULL, c INTEGER NOT NULL, \
                 v BLOB NOT NULL, PRIMARY KEY (p, c)) WITHOUT ROWID",
            )
        })
        .await
        .ctx(OP, &scratch)?;
        stream::iter((0..rows).step_by(SQLITE_ROWS_PER_CALL))
            .map(|first| {
                let (db, scratch) = (&db, &scratch);
                async move {
                    let last = (first + SQLITE_ROWS_PER_CALL).min(rows);
                    db.call(move |c| {
                        let mut insert = c.prepare_cached(
                            "INSERT INTO raw_writes (p, c, v) VALUES (0, ?1, ?2)",
                        )?;
                        let value = [7u8; ROW_BYTES];
                        for i in first..last {
                            insert.execute(rusqlite::params![
                                i64::try_from(i).unwrap_or(i64::MAX),
                                &value[..]
                            ])?;
                        }
                        Ok(())
                    })
                    .await
                    .ctx(OP, scratch)
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await
    }
    .await;
    drop(db);
    remove(&scratch);
    written.map(|_| IN_FLIGHT)
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::*;
    use crate::{ContactStore, Device, Platform, Preference, PreferenceStore};

    #[test]
    fn shipped_migrations_are_versioned_and_re_runnable() {
        crate::migrations::tests::check_shipped(MIGRATIONS);
    }

    /// A call is all or nothing, and a failing call (an error or a panic)
    /// takes none of its neighbours' writes with it: they run again, once,
    /// in a transaction without it.
    #[test]
    fn a_failing_call_leaves_nothing_and_takes_nothing_from_its_group() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        super::page_cache::install();
        let mut conn = Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY)")
            .expect("table");
        #[derive(Clone, Copy)]
        enum Ends {
            Well,
            InError,
            InPanic,
        }
        let runs = Arc::new(AtomicUsize::new(0));
        let insert = |keys: Vec<i64>, ends: Ends| {
            let runs = runs.clone();
            job(move |c: &mut Connection| {
                runs.fetch_add(1, Ordering::Relaxed);
                for k in &keys {
                    c.execute("INSERT INTO t (k) VALUES (?1)", [k])?;
                }
                match ends {
                    Ends::Well => Ok(()),
                    // A constraint failure after the call's first writes.
                    Ends::InError => c.execute("INSERT INTO t (k) VALUES (1)", []).map(|_| ()),
                    Ends::InPanic => panic!("a call that panics after writing"),
                }
            })
        };
        let keys = |c: &Connection| -> Vec<i64> {
            c.prepare("SELECT k FROM t ORDER BY k")
                .expect("select")
                .query_map([], |r| r.get(0))
                .expect("query")
                .collect::<rusqlite::Result<_>>()
                .expect("rows")
        };
        let outcome = |mut rx: tokio::sync::oneshot::Receiver<Result<(), Failure>>| match rx
            .try_recv()
            .expect("answered")
        {
            Ok(()) => "ok",
            Err(Failure::Sql(_)) => "sql",
            Err(Failure::Broken(_)) => "broken",
            Err(_) => "other",
        };

        let (first, answer) = insert(vec![1], Ends::Well);
        run_group(&mut conn, vec![first]);
        assert_eq!(outcome(answer), "ok");

        // Alone: its transaction is rolled back, and it runs once.
        runs.store(0, Ordering::Relaxed);
        let (alone, answer) = insert(vec![2, 3], Ends::InError);
        run_group(&mut conn, vec![alone]);
        assert_eq!(outcome(answer), "sql");
        assert_eq!(keys(&conn), [1]);
        assert_eq!(runs.load(Ordering::Relaxed), 1);

        // Shared: the others run again without it and are kept.
        runs.store(0, Ordering::Relaxed);
        let (before, before_answer) = insert(vec![4], Ends::Well);
        let (failing, failing_answer) = insert(vec![5, 6], Ends::InError);
        let (panicking, panicking_answer) = insert(vec![8], Ends::InPanic);
        let (after, after_answer) = insert(vec![7], Ends::Well);
        run_group(&mut conn, vec![before, failing, panicking, after]);
        assert_eq!(
            [
                before_answer,
                failing_answer,
                panicking_answer,
                after_answer
            ]
            .map(outcome),
            ["ok", "sql", "broken", "ok"]
        );
        assert_eq!(keys(&conn), [1, 4, 7]);
        assert_eq!(
            runs.load(Ordering::Relaxed),
            6,
            "4, then the 2 that succeeded"
        );
        assert!(conn.is_autocommit(), "no transaction left open");

        // A group without failures runs each call once.
        runs.store(0, Ordering::Relaxed);
        let (a, a_answer) = insert(vec![9], Ends::Well);
        let (b, b_answer) = insert(vec![10], Ends::Well);
        run_group(&mut conn, vec![a, b]);
        assert_eq!([a_answer, b_answer].map(outcome), ["ok", "ok"]);
        assert_eq!(runs.load(Ordering::Relaxed), 2);
    }

    /// When no transaction can begin, nothing runs and every call says so.
    #[test]
    fn without_a_transaction_nothing_runs() {
        super::page_cache::install();
        let mut conn = Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY); BEGIN")
            .expect("a transaction already open");
        let (call, mut answer) =
            job(|c: &mut Connection| c.execute("INSERT INTO t (k) VALUES (1)", []).map(|_| ()));
        run_group(&mut conn, vec![call]);
        assert!(matches!(answer.try_recv(), Ok(Err(Failure::Commit(_)))));
        let count: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(count, 0);
    }

    /// A cached statement must be reused as compiled. Both statements below
    /// used to be re-prepared at every step (see `Db::open`), which cost a
    /// quarter of the connection thread's time under load.
    #[tokio::test]
    async fn cached_statements_are_not_re_prepared() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tidings.db");
        let db = Db::open(path.to_str().expect("utf-8 path"))
            .await
            .expect("open");
        db.migrate().await.expect("migrate");
        let contacts = contacts::SqliteContacts(db.clone());
        let preferences = preferences::SqlitePreferences(db.clone());
        let users: Vec<String> = (0..20).map(|i| format!("user-{i}")).collect();
        for user in &users {
            let device = Device {
                user_id: user.clone(),
                token: "token".into(),
                platform: Platform::Ios,
                registered_at: 1,
                invalidated_at: None,
            };
            contacts.register_device(&device).await.expect("register");
            let preference = Preference {
                user_id: user.clone(),
                channel: "push".into(),
                category: None,
                opt_in: true,
                updated_at: 1,
            };
            preferences.set(&preference).await.expect("set");
        }
        for user in &users {
            assert_eq!(contacts.live_devices(user).await.expect("live").len(), 1);
            assert_eq!(preferences.list(user).await.expect("list").len(), 1);
        }
        assert_eq!(
            contacts
                .live_devices_many(&users)
                .await
                .expect("many")
                .len(),
            20
        );
        assert_eq!(preferences.list_many(&users).await.expect("many").len(), 20);

        let reprepares = db
            .call(|c| {
                let count = |sql| -> rusqlite::Result<i32> {
                    Ok(c.prepare_cached(sql)?
                        .get_status(StatementStatus::RePrepare))
                };
                Ok((
                    count(contacts::SELECT_LIVE_DEVICES)?,
                    count(preferences::SELECT_BY_USER)?,
                ))
            })
            .await
            .unwrap_or_else(|_| panic!("statement status"));
        assert_eq!(
            reprepares,
            (0, 0),
            "(live_devices, preferences) re-prepares"
        );
    }
}

#[cfg(test)]
mod checkpoint_tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// A database in WAL mode with `checkpoint_in_background(wal_pages,
    /// max_pages)`, after about 2,000 pages of rows were written to it in
    /// commits of about 50 pages, `pause` between commits.
    struct Written {
        _dir: tempfile::TempDir,
        path: String,
        _conn: Connection,
    }

    impl Written {
        fn new(wal_pages: u32, max_pages: u32, pause: Duration) -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir
                .path()
                .join("wal.db")
                .to_str()
                .expect("utf-8")
                .to_owned();
            super::page_cache::install();
            let mut conn = Connection::open(&path).expect("open");
            conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
                .expect("wal");
            checkpoint_in_background(&mut conn, &path, wal_pages, max_pages).expect("checkpointer");
            conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
                .expect("table");
            let row = vec![7u8; 3000];
            for commit in 0..40 {
                let tx = conn.transaction().expect("begin");
                for i in 0..50 {
                    tx.execute(
                        "INSERT INTO t (k, v) VALUES (?1, ?2)",
                        (commit * 50 + i, &row),
                    )
                    .expect("insert");
                }
                tx.commit().expect("commit");
                std::thread::sleep(pause);
            }
            Written {
                _dir: dir,
                path,
                _conn: conn,
            }
        }

        /// Pages in the database file: only a checkpoint writes there.
        fn database_pages(&self) -> u64 {
            std::fs::metadata(&self.path).expect("database").len() / 4096
        }

        /// Pages in the WAL file (it only grows: a restarted WAL is written
        /// over from its start).
        fn wal_pages(&self) -> u64 {
            std::fs::metadata(format!("{}-wal", self.path))
                .expect("wal")
                .len()
                / 4096
        }
    }

    #[test]
    fn the_checkpoint_thread_copies_the_wal_into_the_database() {
        // Never asked, nothing reaches the database file.
        let never = Written::new(u32::MAX, u32::MAX, Duration::ZERO);
        assert!(
            never.database_pages() < 10,
            "{} pages",
            never.database_pages()
        );
        assert!(never.wal_pages() >= 1900, "{} pages", never.wal_pages());

        let written = Written::new(100, u32::MAX, Duration::from_millis(2));
        let deadline = Instant::now() + Duration::from_secs(10);
        while written.database_pages() < 1900 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            written.database_pages() >= 1900,
            "the checkpoint thread copied {} pages",
            written.database_pages()
        );
    }

    #[test]
    fn past_the_maximum_the_connection_checkpoints_itself() {
        let written = Written::new(u32::MAX, 200, Duration::ZERO);
        assert!(
            written.wal_pages() < 400,
            "the WAL grew to {} pages",
            written.wal_pages()
        );
        assert!(
            written.database_pages() >= 1500,
            "{} pages",
            written.database_pages()
        );
    }
}
