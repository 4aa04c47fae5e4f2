//! Counters: likes and replies per post, sent/delivered/opened/clicked per
//! template, and so on. A scope names the kind of counter, a key the thing
//! counted.

use std::collections::HashMap;

use crate::StoreError;

#[async_trait::async_trait]
pub trait CounterStore: Send + Sync + 'static {
    async fn add(&self, scope: &str, key: &str, delta: i64) -> Result<(), StoreError>;
    /// (scope, key, delta) triples.
    async fn add_many(&self, deltas: &[(String, String, i64)]) -> Result<(), StoreError>;
    /// 0 when never counted.
    async fn get(&self, scope: &str, key: &str) -> Result<i64, StoreError>;
    /// Every asked key is in the map, 0 when never counted.
    async fn get_many(
        &self,
        scope: &str,
        keys: &[String],
    ) -> Result<HashMap<String, i64>, StoreError>;
}
