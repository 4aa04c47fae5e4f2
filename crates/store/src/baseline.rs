//! The store's floor, for `tidings bench`: plain inserts of small rows into
//! one partition through the same driver and connection set-up the store
//! uses, as many at once as the store allows, and nothing else. Beside the
//! pipeline's store statements per notification it tells how much of the
//! engine's own write rate the pipeline's store work takes.

use std::time::{Duration, Instant};

use crate::{StoreError, StoreOptions, url::StoreUrl};

/// Rows per insert call on SQLite: what one group commit carries at most
/// is larger; this is about a sender's batch of marks.
pub const SQLITE_ROWS_PER_CALL: usize = 256;

/// Bytes of each row's value: about a status entry.
pub const ROW_BYTES: usize = 120;

/// What the baseline measured.
#[derive(Debug, Clone, PartialEq)]
pub struct RawWrites {
    /// `sqlite` or `scylla`.
    pub engine: &'static str,
    pub rows: usize,
    /// Rows (SQLite: calls of [`SQLITE_ROWS_PER_CALL`] rows) in flight.
    pub in_flight: usize,
    pub elapsed: Duration,
}

impl RawWrites {
    pub fn rate(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Inserts `rows` rows into one partition of a scratch table: on SQLite a
/// scratch database file beside the store's (same disk, same pragmas,
/// same group-commit connection thread), on Scylla a scratch table in the
/// store's keyspace (created, then dropped). The store must be migrated
/// (the keyspace must exist).
pub async fn raw_writes(
    url: &str,
    rows: usize,
    opts: &StoreOptions,
) -> Result<RawWrites, StoreError> {
    let started = Instant::now();
    let (engine, in_flight) = match StoreUrl::parse(url)? {
        StoreUrl::Sqlite { path } => ("sqlite", crate::sqlite::raw_writes(&path, rows).await?),
        StoreUrl::Scylla { nodes, keyspace } => (
            "scylla",
            crate::scylla::raw_writes(&nodes, &keyspace, rows, opts).await?,
        ),
    };
    Ok(RawWrites {
        engine,
        rows,
        in_flight,
        elapsed: started.elapsed(),
    })
}
