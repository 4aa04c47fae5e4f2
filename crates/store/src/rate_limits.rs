//! The rate-limit ledger: which notifications a per-user rate limit admitted,
//! per window key, kept for the rule's window. The enricher keeps its sliding
//! windows in memory and reads and writes them here once per batch, so the
//! windows survive a restart and follow a partition to its next owner.

use std::collections::HashMap;
use std::time::Duration;

use crate::{Millis, StoreError};

/// What a caller records: `(key, admitted at, notification id, ttl)`.
pub type NewAdmission = (String, Millis, String, Duration);

#[async_trait::async_trait]
pub trait RateLimitLedger: Send + Sync + 'static {
    /// The unexpired admissions of every key in `keys`, in one call, each
    /// key's as `(admitted at, notification id)`, oldest first (ties by
    /// notification id). A key with no unexpired admission is absent from
    /// the answer; a key repeated in `keys` is answered once. An empty `keys`
    /// is answered without a round trip.
    async fn admissions_many(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, Vec<(Millis, String)>>, StoreError>;

    /// Records every admission in one call: `(key, notification id)` is
    /// admitted at the given time and forgotten `ttl` after this write (the
    /// TTL counts from the write, in whole seconds on CQL, rounded up).
    /// Idempotent per `(key, notification id)`: admitting a pair again
    /// replaces its time and TTL rather than adding a second admission, and
    /// a pair given twice in one call counts as its last occurrence. An
    /// empty slice is answered without a round trip.
    async fn admit_many(&self, admissions: &[NewAdmission]) -> Result<(), StoreError>;
}
