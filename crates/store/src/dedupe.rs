//! The dedupe ledger: "have we seen this key in this scope recently?", with a
//! TTL. Used for event-id dedupe in the processors and for the senders'
//! sent-ledger.

use std::time::Duration;

use crate::StoreError;

#[async_trait::async_trait]
pub trait DedupeLedger: Send + Sync + 'static {
    /// True exactly once per (scope, key) within `ttl`, and marks the key.
    async fn first_seen(&self, scope: &str, key: &str, ttl: Duration) -> Result<bool, StoreError>;
    /// [`first_seen`](Self::first_seen) for many keys; a key repeated in
    /// `keys` is first seen only at its first position.
    async fn first_seen_many(
        &self,
        scope: &str,
        keys: &[String],
        ttl: Duration,
    ) -> Result<Vec<bool>, StoreError>;
    async fn forget(&self, scope: &str, key: &str) -> Result<(), StoreError>;
    /// Whether (scope, key) is marked and not expired, without marking it:
    /// for ledgers that must only be written once the work is done (the
    /// senders mark a delivery after the provider accepted it).
    async fn seen(&self, scope: &str, key: &str) -> Result<bool, StoreError>;
    /// [`seen`](Self::seen) for many keys of one scope, in one call: the
    /// answer for `keys[i]` is at position `i` (a repeated key gets the same
    /// answer at each of its positions). Marks nothing. An empty `keys` is
    /// answered without a round trip.
    async fn seen_many(&self, scope: &str, keys: &[String]) -> Result<Vec<bool>, StoreError>;
}
