//! [`RateLimitLedger`](crate::RateLimitLedger) on SQLite: the
//! `rate_limit_admissions` table.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::params;

use super::{Context, Db};
use crate::rate_limits::{NewAdmission, RateLimitLedger};
use crate::{Millis, StoreError, now_millis};

/// Expired rows are ignored by reads and deleted in bulk every
/// `PURGE_EVERY` admissions, so the table stays bounded without a timer.
const PURGE_EVERY: u64 = 4096;

pub(crate) struct SqliteRateLimits {
    db: Db,
    written: AtomicU64,
}

impl SqliteRateLimits {
    pub(crate) fn new(db: Db) -> Self {
        SqliteRateLimits {
            db,
            written: AtomicU64::new(0),
        }
    }

    /// Whether this call's `count` admissions cross a purge boundary.
    fn purge_due(&self, count: usize) -> bool {
        let count = count as u64;
        let before = self.written.fetch_add(count, Ordering::Relaxed);
        before / PURGE_EVERY != (before + count) / PURGE_EVERY
    }
}

const SELECT_ADMISSIONS: &str = "SELECT admitted_at, notification_id FROM rate_limit_admissions
     WHERE key = ?1 AND expires_at > ?2 ORDER BY admitted_at, notification_id";

fn expiry(now: Millis, ttl: Duration) -> Millis {
    now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

#[async_trait::async_trait]
impl RateLimitLedger for SqliteRateLimits {
    async fn admissions_many(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, Vec<(Millis, String)>>, StoreError> {
        let unique: Vec<String> = keys
            .iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .cloned()
            .collect();
        if unique.is_empty() {
            return Ok(HashMap::new());
        }
        let first = unique[0].clone();
        self.db
            .call(move |c| {
                let now = now_millis();
                let mut stmt = c.prepare_cached(SELECT_ADMISSIONS)?;
                let mut found = HashMap::new();
                for key in &unique {
                    let admissions = stmt
                        .query_map(params![key, now], |row| Ok((row.get(0)?, row.get(1)?)))?
                        .collect::<rusqlite::Result<Vec<(Millis, String)>>>()?;
                    if !admissions.is_empty() {
                        found.insert(key.clone(), admissions);
                    }
                }
                Ok(found)
            })
            .await
            .ctx("rate_limits.admissions_many", &first)
    }

    async fn admit_many(&self, admissions: &[NewAdmission]) -> Result<(), StoreError> {
        let Some((first, ..)) = admissions.first() else {
            return Ok(());
        };
        let first = first.clone();
        let purge_due = self.purge_due(admissions.len());
        let admissions = admissions.to_vec();
        self.db
            .call(move |c| {
                let now = now_millis();
                if purge_due {
                    c.prepare_cached("DELETE FROM rate_limit_admissions WHERE expires_at <= ?1")?
                        .execute([now])?;
                }
                {
                    // In order, so a pair given twice ends as its last.
                    let mut upsert = c.prepare_cached(
                        "INSERT INTO rate_limit_admissions (key, notification_id, admitted_at, expires_at)
                         VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (key, notification_id) DO UPDATE
                         SET admitted_at = excluded.admitted_at, expires_at = excluded.expires_at",
                    )?;
                    for (key, at, notification_id, ttl) in &admissions {
                        upsert.execute(params![key, notification_id, at, expiry(now, *ttl)])?;
                    }
                }
                Ok(())
            })
            .await
            .ctx("rate_limits.admit_many", &first)
    }
}
