//! [`ScheduleStore`](crate::ScheduleStore) on CQL: the `scheduled_items`
//! table, partitioned by (scope, minute), and the unscoped `scheduled` table
//! of earlier releases, which `due` of every scope keeps draining (see
//! [`UNSCOPED`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use scylla::statement::prepared::PreparedStatement;

use super::{Context, Cql};
use crate::schedule::{ScheduleStore, ScheduledItem, UNSCOPED};
use crate::{Millis, StoreError, now_millis};

/// Items are partitioned by the minute of their due time, so `due` reads a
/// few small partitions in time order instead of scanning a table.
const BUCKET_MILLIS: Millis = 60_000;

/// Buckets this close to `now` are never retired, even when empty: a writer
/// with a slightly late clock, or a put still in flight, may yet fill them.
const GRACE_BUCKETS: i64 = 2;

/// The bucket holding items due at `at`.
fn bucket_of(at: Millis) -> i64 {
    at.div_euclid(BUCKET_MILLIS)
}

/// After a scan from the watermark up to `scanned_to` (exclusive), found
/// empty up to `first_nonempty`: the new lowest bucket that may hold items.
fn retire_below(first_nonempty: Option<i64>, scanned_to: i64, newest: i64) -> i64 {
    first_nonempty
        .unwrap_or(scanned_to)
        .min(newest - GRACE_BUCKETS)
}

/// One table's statements: a scope's partitions of `scheduled_items`, or the
/// legacy `scheduled` table, which has the same rows without the scope.
struct Statements {
    put: PreparedStatement,
    scan: PreparedStatement,
    remove: PreparedStatement,
}

/// Where `due` starts reading is a watermark kept in memory, one per scope
/// and one for the legacy table: "every bucket below this one was seen
/// empty". It starts `schedule_lookback` before start-up (the start-up
/// sweep), only moves past buckets seen empty, and a `put` into an older
/// bucket through this store moves it back. An item put by another process
/// into a bucket already retired here (due in the past by more than the
/// grace period) is found at this process's next start, or by the other
/// process itself; producers schedule into the future, so this is rare.
///
/// Once the legacy table is drained, reading it costs the grace window's
/// few empty partitions per `due`; it stays read so that a process of the
/// previous release still running during a rolling upgrade loses nothing.
pub(crate) struct ScyllaSchedule {
    cql: Cql,
    /// The first bucket a scope not seen yet is read from.
    sweep_from: i64,
    /// Per scope. Scopes are deployments' topic prefixes, from
    /// configuration, not input: one or a few per process.
    watermarks: Mutex<HashMap<String, Arc<AtomicI64>>>,
    legacy_watermark: Arc<AtomicI64>,
    /// Prepared at first use: a process connecting without migrating to a
    /// store that lacks migration 0004 still starts (as for any pending
    /// migration, only the statements on the missing table fail).
    scoped: tokio::sync::OnceCell<Statements>,
    legacy: Statements,
}

/// Which table, and which partitions of it.
#[derive(Clone, Copy)]
enum Table<'a> {
    Scoped(&'a str),
    Legacy,
}

impl<'a> Table<'a> {
    fn of(scope: &'a str) -> Self {
        if scope == UNSCOPED {
            Table::Legacy
        } else {
            Table::Scoped(scope)
        }
    }
}

impl ScyllaSchedule {
    pub(crate) async fn prepare(cql: &Cql, lookback: Duration) -> Result<Self, StoreError> {
        let lookback = Millis::try_from(lookback.as_millis()).unwrap_or(Millis::MAX);
        let sweep_from = bucket_of(now_millis().saturating_sub(lookback));
        Ok(ScyllaSchedule {
            sweep_from,
            watermarks: Mutex::default(),
            legacy_watermark: Arc::new(AtomicI64::new(sweep_from)),
            scoped: tokio::sync::OnceCell::new(),
            legacy: Statements {
                put: cql
                    .prepare(
                        "INSERT INTO scheduled (bucket, due_at, item_id, payload) VALUES (?, ?, ?, ?)",
                    )
                    .await?,
                scan: cql
                    .prepare(
                        "SELECT due_at, item_id, payload FROM scheduled WHERE bucket = ? AND due_at <= ?
                         ORDER BY due_at, item_id LIMIT ?",
                    )
                    .await?,
                remove: cql
                    .prepare("DELETE FROM scheduled WHERE bucket = ? AND due_at = ? AND item_id = ?")
                    .await?,
            },
            cql: cql.clone(),
        })
    }

    async fn scoped(&self) -> Result<&Statements, StoreError> {
        self.scoped
            .get_or_try_init(|| async {
                Ok(Statements {
                    put: self
                        .cql
                        .prepare(
                            "INSERT INTO scheduled_items (scope, bucket, due_at, item_id, payload)
                             VALUES (?, ?, ?, ?, ?)",
                        )
                        .await?,
                    scan: self
                        .cql
                        .prepare(
                            "SELECT due_at, item_id, payload FROM scheduled_items
                             WHERE scope = ? AND bucket = ? AND due_at <= ?
                             ORDER BY due_at, item_id LIMIT ?",
                        )
                        .await?,
                    remove: self
                        .cql
                        .prepare(
                            "DELETE FROM scheduled_items
                             WHERE scope = ? AND bucket = ? AND due_at = ? AND item_id = ?",
                        )
                        .await?,
                })
            })
            .await
    }

    fn watermark(&self, table: Table<'_>) -> Arc<AtomicI64> {
        match table {
            Table::Legacy => self.legacy_watermark.clone(),
            Table::Scoped(scope) => self
                .watermarks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(scope.to_owned())
                .or_insert_with(|| Arc::new(AtomicI64::new(self.sweep_from)))
                .clone(),
        }
    }

    async fn scan(
        &self,
        table: Table<'_>,
        bucket: i64,
        now: Millis,
        limit: i32,
    ) -> Result<Vec<ScheduledItem>, StoreError> {
        type Row = (Millis, String, Option<Vec<u8>>);
        let (rows, scope) = match table {
            Table::Scoped(scope) => (
                self.cql
                    .rows::<Row>(&self.scoped().await?.scan, (scope, bucket, now, limit))
                    .await,
                scope,
            ),
            Table::Legacy => (
                self.cql
                    .rows::<Row>(&self.legacy.scan, (bucket, now, limit))
                    .await,
                UNSCOPED,
            ),
        };
        let rows = rows.ctx("schedule.due", &format!("{scope}/{bucket}"))?;
        Ok(rows
            .into_iter()
            .map(|(due_at, item_id, payload)| ScheduledItem {
                scope: scope.to_owned(),
                item_id,
                due_at,
                // CQL reads an empty blob back as null.
                payload: payload.unwrap_or_default(),
            })
            .collect())
    }

    /// Up to `limit` due items of one table, oldest first, from its
    /// watermark on; advances the watermark past buckets seen empty.
    async fn due_in(
        &self,
        table: Table<'_>,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<ScheduledItem>, StoreError> {
        let watermark = self.watermark(table);
        let start = watermark.load(Ordering::Relaxed);
        let newest = bucket_of(now);
        let mut items = Vec::new();
        let mut first_nonempty = None;
        let mut next = start;
        // Buckets are read a chunk at a time, concurrently but consumed in
        // order, until enough items are found: at start-up the whole lookback
        // is swept, afterwards usually just the last few minutes.
        while next <= newest && items.len() < limit {
            let chunk_end = newest.min(next.saturating_add(self.cql.concurrency as i64 - 1)) + 1;
            let wanted = i32::try_from(limit - items.len()).unwrap_or(i32::MAX);
            let scans = self
                .cql
                .concurrently(next..chunk_end, |bucket| {
                    self.scan(table, bucket, now, wanted)
                })
                .await?;
            for (bucket, found) in (next..chunk_end).zip(scans) {
                if first_nonempty.is_none() && !found.is_empty() {
                    first_nonempty = Some(bucket);
                }
                items.extend(found);
            }
            next = chunk_end;
        }
        items.truncate(limit);
        // Only advance if no put moved the watermark back meanwhile.
        let retired = retire_below(first_nonempty, next, newest);
        if retired > start {
            let _ =
                watermark.compare_exchange(start, retired, Ordering::Relaxed, Ordering::Relaxed);
        }
        Ok(items)
    }
}

#[async_trait::async_trait]
impl ScheduleStore for ScyllaSchedule {
    async fn put(&self, item: &ScheduledItem) -> Result<(), StoreError> {
        let bucket = bucket_of(item.due_at);
        let table = Table::of(&item.scope);
        let done = match table {
            Table::Scoped(scope) => {
                self.cql
                    .execute(
                        &self.scoped().await?.put,
                        (scope, bucket, item.due_at, &item.item_id, &item.payload),
                    )
                    .await
            }
            Table::Legacy => {
                self.cql
                    .execute(
                        &self.legacy.put,
                        (bucket, item.due_at, &item.item_id, &item.payload),
                    )
                    .await
            }
        };
        done.ctx("schedule.put", &item.item_id)?;
        self.watermark(table).fetch_min(bucket, Ordering::Relaxed);
        Ok(())
    }

    async fn due(
        &self,
        scope: &str,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<ScheduledItem>, StoreError> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let table = Table::of(scope);
        let Table::Scoped(_) = table else {
            return self.due_in(Table::Legacy, now, limit).await;
        };
        let (mut items, legacy) = futures::try_join!(
            self.due_in(table, now, limit),
            self.due_in(Table::Legacy, now, limit)
        )?;
        items.extend(legacy);
        items.sort_by(|a, b| (a.due_at, &a.item_id).cmp(&(b.due_at, &b.item_id)));
        items.truncate(limit);
        Ok(items)
    }

    async fn remove(&self, scope: &str, item_id: &str, due_at: Millis) -> Result<(), StoreError> {
        let bucket = bucket_of(due_at);
        let done = match Table::of(scope) {
            Table::Scoped(scope) => {
                self.cql
                    .execute(
                        &self.scoped().await?.remove,
                        (scope, bucket, due_at, item_id),
                    )
                    .await
            }
            Table::Legacy => {
                self.cql
                    .execute(&self.legacy.remove, (bucket, due_at, item_id))
                    .await
            }
        };
        done.ctx("schedule.remove", item_id)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_whole_minutes_also_before_the_epoch() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(59_999), 0);
        assert_eq!(bucket_of(60_000), 1);
        assert_eq!(bucket_of(-1), -1);
        assert_eq!(bucket_of(1_700_000_000_000), 28_333_333);
    }

    #[test]
    fn retiring_stops_at_the_first_pending_bucket_and_the_grace_window() {
        // Items found in bucket 105: everything below it was empty.
        assert_eq!(retire_below(Some(105), 111, 110), 105);
        // Nothing found up to now: retire all but the grace window.
        assert_eq!(retire_below(None, 111, 110), 108);
        // Items found inside the grace window: the window still holds.
        assert_eq!(retire_below(Some(110), 111, 110), 108);
    }
}
