//! [`CounterStore`](crate::CounterStore) on SQLite: the `counters` table.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Context, Db};
use crate::StoreError;
use crate::counters::CounterStore;

pub(crate) struct SqliteCounters(pub(crate) Db);

fn add(c: &Connection, scope: &str, key: &str, delta: i64) -> rusqlite::Result<usize> {
    c.prepare_cached(
        "INSERT INTO counters (scope, key, value) VALUES (?1, ?2, ?3)
         ON CONFLICT (scope, key) DO UPDATE SET value = value + excluded.value",
    )?
    .execute(params![scope, key, delta])
}

fn get(c: &Connection, scope: &str, key: &str) -> rusqlite::Result<i64> {
    c.prepare_cached("SELECT value FROM counters WHERE scope = ?1 AND key = ?2")?
        .query_row([scope, key], |r| r.get(0))
        .optional()
        .map(Option::unwrap_or_default)
}

#[async_trait::async_trait]
impl CounterStore for SqliteCounters {
    async fn add(&self, scope: &str, key: &str, delta: i64) -> Result<(), StoreError> {
        let (s, k) = (scope.to_owned(), key.to_owned());
        self.0
            .call(move |c| add(c, &s, &k, delta))
            .await
            .ctx("counters.add", &format!("{scope}/{key}"))?;
        Ok(())
    }

    async fn add_many(&self, deltas: &[(String, String, i64)]) -> Result<(), StoreError> {
        let owned = deltas.to_vec();
        self.0
            .call(move |c| {
                for (scope, key, delta) in &owned {
                    add(c, scope, key, *delta)?;
                }
                Ok(())
            })
            .await
            .ctx("counters.add_many", &format!("{} deltas", deltas.len()))
    }

    async fn get(&self, scope: &str, key: &str) -> Result<i64, StoreError> {
        let (s, k) = (scope.to_owned(), key.to_owned());
        self.0
            .call(move |c| get(c, &s, &k))
            .await
            .ctx("counters.get", &format!("{scope}/{key}"))
    }

    async fn get_many(
        &self,
        scope: &str,
        keys: &[String],
    ) -> Result<HashMap<String, i64>, StoreError> {
        let (s, owned) = (scope.to_owned(), keys.to_vec());
        self.0
            .call(move |c| {
                let mut values = HashMap::with_capacity(owned.len());
                for key in &owned {
                    let value = get(c, &s, key)?;
                    values.insert(key.clone(), value);
                }
                Ok(values)
            })
            .await
            .ctx("counters.get_many", scope)
    }
}
