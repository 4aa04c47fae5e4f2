//! [`CounterStore`](crate::CounterStore) on CQL: the `counters` table.

use std::collections::HashMap;

use scylla::statement::prepared::PreparedStatement;
use scylla::value::Counter;

use super::{Context, Cql};
use crate::StoreError;
use crate::counters::CounterStore;

pub(crate) struct ScyllaCounters {
    cql: Cql,
    add: PreparedStatement,
    get: PreparedStatement,
}

impl ScyllaCounters {
    pub(crate) async fn prepare(cql: &Cql) -> Result<Self, StoreError> {
        Ok(ScyllaCounters {
            // Counter updates are not idempotent: a driver retry after a
            // timeout could count twice, so they are never retried blindly.
            add: cql
                .prepare_once_only(
                    "UPDATE counters SET value = value + ? WHERE scope = ? AND key = ?",
                )
                .await?,
            get: cql
                .prepare("SELECT value FROM counters WHERE scope = ? AND key = ?")
                .await?,
            cql: cql.clone(),
        })
    }
}

#[async_trait::async_trait]
impl CounterStore for ScyllaCounters {
    async fn add(&self, scope: &str, key: &str, delta: i64) -> Result<(), StoreError> {
        self.cql
            .execute(&self.add, (Counter(delta), scope, key))
            .await
            .ctx("counters.add", &format!("{scope}/{key}"))?;
        Ok(())
    }

    async fn add_many(&self, deltas: &[(String, String, i64)]) -> Result<(), StoreError> {
        // Summing per counter first turns bursts on one post into one write.
        let mut sums: HashMap<(&str, &str), i64> = HashMap::new();
        for (scope, key, delta) in deltas {
            let sum = sums.entry((scope.as_str(), key.as_str())).or_default();
            *sum = sum.saturating_add(*delta);
        }
        sums.retain(|_, sum| *sum != 0);
        self.cql
            .concurrently(sums, |((scope, key), sum)| self.add(scope, key, sum))
            .await?;
        Ok(())
    }

    async fn get(&self, scope: &str, key: &str) -> Result<i64, StoreError> {
        let row = self
            .cql
            .maybe_row::<(Option<Counter>,)>(&self.get, (scope, key))
            .await
            .ctx("counters.get", &format!("{scope}/{key}"))?;
        Ok(row.and_then(|(value,)| value).map_or(0, |Counter(n)| n))
    }

    async fn get_many(
        &self,
        scope: &str,
        keys: &[String],
    ) -> Result<HashMap<String, i64>, StoreError> {
        let values = self
            .cql
            .concurrently(keys, |key| self.get(scope, key))
            .await?;
        Ok(keys.iter().cloned().zip(values).collect())
    }
}
