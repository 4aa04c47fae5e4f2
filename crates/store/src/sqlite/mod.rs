//! The embedded engine: one SQLite file in WAL mode.
//!
//! SQLite calls block, so every call runs on tokio's blocking pool. One
//! connection behind a mutex serialises them: SQLite has a single writer
//! anyway, and each call is short (batch methods use one transaction, which is
//! what makes them fast: a commit is the expensive part).

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

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

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

/// The shared connection.
#[derive(Clone)]
pub(crate) struct Db {
    conn: Arc<Mutex<Connection>>,
}

/// Why a blocking call failed, before the caller adds its context.
pub(crate) enum Failure {
    Sql(rusqlite::Error),
    Panicked(tokio::task::JoinError),
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
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, String> {
            if let Some(dir) = Path::new(&owned_path).parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            }
            let conn = Connection::open(&owned_path).map_err(|e| e.to_string())?;
            // NORMAL is durable across application crashes in WAL mode; only
            // an OS crash or power loss may drop the last commits.
            conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;")
                .map_err(|e| e.to_string())?;
            Ok(conn)
        })
        .await
        .map_err(|e| connect_error(e.to_string()))?
        .map_err(connect_error)?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave a half-applied
            // change behind (an open transaction rolls back when dropped), so
            // the connection is still usable.
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        })
        .await
        .map_err(Failure::Panicked)?
        .map_err(Failure::Sql)
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
                        Failure::Panicked(e) => e.into(),
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
                Failure::Panicked(e) => StoreError::Backend {
                    op,
                    key,
                    retriable: false,
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
