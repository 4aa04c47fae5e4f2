//! [`ScheduleStore`](crate::ScheduleStore) on CQL: the `scheduled` table.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use scylla::statement::prepared::PreparedStatement;

use super::{Context, Cql};
use crate::schedule::{ScheduleStore, ScheduledItem};
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

/// Where `due` starts reading is a watermark kept in memory: "every bucket
/// below this one was seen empty". It starts `schedule_lookback` before start-up
/// (the start-up sweep), only moves past buckets seen empty, and a `put` into
/// an older bucket through this store moves it back. An item put by another
/// process into a bucket already retired here (due in the past by more than
/// the grace period) is found at this process's next start, or by the other
/// process itself; producers schedule into the future, so this is rare.
pub(crate) struct ScyllaSchedule {
    cql: Cql,
    lowest_pending: AtomicI64,
    put: PreparedStatement,
    scan: PreparedStatement,
    remove: PreparedStatement,
}

impl ScyllaSchedule {
    pub(crate) async fn prepare(cql: &Cql, lookback: Duration) -> Result<Self, StoreError> {
        let lookback = Millis::try_from(lookback.as_millis()).unwrap_or(Millis::MAX);
        Ok(ScyllaSchedule {
            lowest_pending: AtomicI64::new(bucket_of(now_millis().saturating_sub(lookback))),
            put: cql
                .prepare("INSERT INTO scheduled (bucket, due_at, item_id, payload) VALUES (?, ?, ?, ?)")
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
            cql: cql.clone(),
        })
    }

    async fn scan(
        &self,
        bucket: i64,
        now: Millis,
        limit: i32,
    ) -> Result<Vec<ScheduledItem>, StoreError> {
        let rows = self
            .cql
            .rows::<(Millis, String, Option<Vec<u8>>)>(&self.scan, (bucket, now, limit))
            .await
            .ctx("schedule.due", &bucket.to_string())?;
        Ok(rows
            .into_iter()
            .map(|(due_at, item_id, payload)| ScheduledItem {
                item_id,
                due_at,
                // CQL reads an empty blob back as null.
                payload: payload.unwrap_or_default(),
            })
            .collect())
    }
}

#[async_trait::async_trait]
impl ScheduleStore for ScyllaSchedule {
    async fn put(&self, item: &ScheduledItem) -> Result<(), StoreError> {
        let bucket = bucket_of(item.due_at);
        self.cql
            .execute(
                &self.put,
                (bucket, item.due_at, &item.item_id, &item.payload),
            )
            .await
            .ctx("schedule.put", &item.item_id)?;
        self.lowest_pending.fetch_min(bucket, Ordering::Relaxed);
        Ok(())
    }

    async fn due(&self, now: Millis, limit: u32) -> Result<Vec<ScheduledItem>, StoreError> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let start = self.lowest_pending.load(Ordering::Relaxed);
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
                .concurrently(next..chunk_end, |bucket| self.scan(bucket, now, wanted))
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
            let _ = self.lowest_pending.compare_exchange(
                start,
                retired,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        Ok(items)
    }

    async fn remove(&self, item_id: &str, due_at: Millis) -> Result<(), StoreError> {
        self.cql
            .execute(&self.remove, (bucket_of(due_at), due_at, item_id))
            .await
            .ctx("schedule.remove", item_id)?;
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
