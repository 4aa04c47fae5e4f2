//! The embedded engine: one SQLite file in WAL mode.
//!
//! SQLite calls block, and SQLite has a single writer, so one thread owns the
//! connection and runs every call, in arrival order. Calls that queue up while
//! it is busy run together in one transaction (group commit): a commit is the
//! expensive part, and under load hundreds of small calls share one. Each call
//! runs in a savepoint of its own, so a failing call rolls back alone, and no
//! caller hears "done" before the commit that holds its writes.

mod apps;
mod contacts;
mod counters;
mod dedupe;
mod feed;
mod notification_log;
mod posts;
mod preferences;
mod schedule;
mod social_graph;
mod templates;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::{Arc, mpsc};

use rusqlite::{Connection, ErrorCode};

use crate::{Backend, Store, StoreError, StoreOptions};

const MIGRATIONS: &[(&str, &str)] = &[(
    "0001_init.sql",
    include_str!("../../migrations/sqlite/0001_init.sql"),
)];

pub(crate) async fn connect(path: &str, opts: &StoreOptions) -> Result<Store, StoreError> {
    let db = Db::open(path).await?;
    if opts.migrate {
        db.migrate().await?;
    }
    Ok(Store {
        contacts: Arc::new(contacts::SqliteContacts(db.clone())),
        preferences: Arc::new(preferences::SqlitePreferences(db.clone())),
        templates: Arc::new(templates::SqliteTemplates(db.clone())),
        dedupe: Arc::new(dedupe::SqliteDedupe::new(db.clone())),
        notification_log: Arc::new(notification_log::SqliteNotificationLog(db.clone())),
        posts: Arc::new(posts::SqlitePosts(db.clone())),
        social_graph: Arc::new(social_graph::SqliteSocialGraph(db.clone())),
        feed: Arc::new(feed::SqliteFeed(db.clone())),
        counters: Arc::new(counters::SqliteCounters(db.clone())),
        schedule: Arc::new(schedule::SqliteSchedule(db.clone())),
        apps: Arc::new(apps::SqliteApps(db.clone())),
        backend: Arc::new(db),
    })
}

/// Most calls one group commit takes.
const MAX_GROUP: usize = 512;

/// What the connection thread runs: the call, which hands back how to report
/// its result once the commit's outcome is known.
type Job = Box<dyn FnOnce(&mut Connection) -> Report + Send>;
type Report = Box<dyn FnOnce(Result<(), String>) + Send>;

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
    /// The group commit holding the call's writes failed.
    Commit(String),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sql(e)
    }
}

impl Db {
    async fn open(path: &str) -> Result<Db, StoreError> {
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
                    if let Some(dir) = Path::new(&owned_path).parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
                    }
                    let conn = Connection::open(&owned_path).map_err(|e| e.to_string())?;
                    // NORMAL is durable across application crashes in WAL mode;
                    // only an OS crash or power loss may drop the last commits.
                    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;")
                        .map_err(|e| e.to_string())?;
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
    /// its writes are committed.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn: &mut Connection| {
            let result = catch_unwind(AssertUnwindSafe(|| in_savepoint(conn, f)));
            Box::new(move |commit: Result<(), String>| {
                let answer = match (result, commit) {
                    (Err(_), _) => Err(Failure::Broken("the call panicked".into())),
                    (Ok(Err(e)), _) => Err(Failure::Sql(e)),
                    (Ok(Ok(_)), Err(e)) => Err(Failure::Commit(e)),
                    (Ok(Ok(v)), Ok(())) => Ok(v),
                };
                let _ = tx.send(answer);
            })
        });
        self.jobs
            .send(job)
            .map_err(|_| Failure::Broken("the connection thread is gone".into()))?;
        rx.await
            .map_err(|_| Failure::Broken("the connection thread is gone".into()))?
    }
}

/// Runs `f` in a savepoint: its writes are kept only if it succeeds.
fn in_savepoint<T>(
    conn: &mut Connection,
    f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.execute_batch("SAVEPOINT call")?;
    match f(conn) {
        Ok(v) => {
            conn.execute_batch("RELEASE call")?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO call; RELEASE call");
            Err(e)
        }
    }
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
        let began = conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| e.to_string());
        let reports: Vec<Report> = group.into_iter().map(|job| job(&mut conn)).collect();
        let committed =
            began.and_then(|()| conn.execute_batch("COMMIT").map_err(|e| e.to_string()));
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for report in reports {
            report(committed.clone());
        }
    }
}

#[async_trait::async_trait]
impl Backend for Db {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        for (name, sql) in MIGRATIONS {
            self.call(move |conn| conn.execute_batch(sql))
                .await
                .map_err(|failure| StoreError::Migration {
                    backend: "sqlite",
                    migration: (*name).to_owned(),
                    source: match failure {
                        Failure::Sql(e) => e.into(),
                        Failure::Broken(e) | Failure::Commit(e) => e.into(),
                    },
                })?;
        }
        Ok(())
    }
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
