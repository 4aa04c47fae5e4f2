//! [`RateLimitLedger`](crate::RateLimitLedger) on CQL: the
//! `rate_limit_admissions` table, one partition per window key.

use std::collections::{HashMap, HashSet};

use scylla::statement::prepared::PreparedStatement;

use super::dedupe::ttl_secs;
use super::{Context, Cql};
use crate::rate_limits::{NewAdmission, RateLimitLedger};
use crate::{Millis, StoreError};

/// Rows expire by TTL, so reads see only a window's worth. Each window key
/// has a single writer (the enricher member owning the user's partition),
/// and a write is an upsert of its (key, notification id) row, so no
/// lightweight transaction is needed for idempotence.
pub(crate) struct ScyllaRateLimits {
    cql: Cql,
    read: PreparedStatement,
    admit: PreparedStatement,
}

impl ScyllaRateLimits {
    pub(crate) async fn prepare(cql: &Cql) -> Result<Self, StoreError> {
        Ok(ScyllaRateLimits {
            read: cql
                .prepare(
                    "SELECT admitted_at, notification_id FROM rate_limit_admissions WHERE key = ?",
                )
                .await?,
            admit: cql
                .prepare(
                    "INSERT INTO rate_limit_admissions (key, notification_id, admitted_at)
                     VALUES (?, ?, ?) USING TTL ?",
                )
                .await?,
            cql: cql.clone(),
        })
    }

    async fn admissions(&self, key: &str) -> Result<Vec<(Millis, String)>, StoreError> {
        // Paged: a window of a generous rule can hold many rows.
        let mut rows = self
            .cql
            .all_rows::<(Millis, String)>(&self.read, (key,))
            .await
            .ctx("rate_limits.admissions_many", key)?;
        rows.sort();
        Ok(rows)
    }
}

#[async_trait::async_trait]
impl RateLimitLedger for ScyllaRateLimits {
    async fn admissions_many(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, Vec<(Millis, String)>>, StoreError> {
        // One single-partition read per distinct key, concurrently.
        let unique: Vec<&String> = keys.iter().collect::<HashSet<_>>().into_iter().collect();
        if unique.is_empty() {
            return Ok(HashMap::new());
        }
        let answers = self
            .cql
            .concurrently(unique.iter().copied(), |key| self.admissions(key))
            .await?;
        Ok(unique
            .into_iter()
            .zip(answers)
            .filter(|(_, admissions)| !admissions.is_empty())
            .map(|(key, admissions)| (key.clone(), admissions))
            .collect())
    }

    async fn admit_many(&self, admissions: &[NewAdmission]) -> Result<(), StoreError> {
        // Concurrent writes to one row would race on their timestamps: a pair
        // given twice is written once, as its last occurrence.
        let mut last: HashMap<(&str, &str), usize> = HashMap::with_capacity(admissions.len());
        for (i, (key, _, notification_id, _)) in admissions.iter().enumerate() {
            last.insert((key.as_str(), notification_id.as_str()), i);
        }
        let writes = admissions
            .iter()
            .enumerate()
            .filter(|(i, (key, _, notification_id, _))| {
                last.get(&(key.as_str(), notification_id.as_str())) == Some(i)
            })
            .map(|(_, admission)| admission);
        self.cql
            .concurrently(writes, |(key, at, notification_id, ttl)| async move {
                self.cql
                    .execute(&self.admit, (key, notification_id, at, ttl_secs(*ttl)))
                    .await
                    .ctx("rate_limits.admit_many", key)?;
                Ok(())
            })
            .await?;
        Ok(())
    }
}
