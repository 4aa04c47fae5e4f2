//! Durable schedule of notifications held until their send time.
//!
//! Items are scoped by deployment (the processes sharing one
//! `kafka.topic_prefix`): several deployments may share one store (a keyspace
//! or SQLite file), and each must release only its own items, onto its own
//! topics. `due` of one scope never returns another scope's items.
//!
//! Items written before scoping existed (by a release without it) belong to
//! no deployment: they are in the [`UNSCOPED`] scope, and `due` of every
//! scope returns them too, so whichever deployment polls first releases
//! them, as the release that wrote them would have. Nothing accepted before
//! an upgrade is lost; only those items may still cross deployments.

use crate::{Millis, StoreError};

/// The scope of items written before schedules were scoped; `due` of every
/// scope includes them. Deployments' scopes (topic prefixes) are never empty.
pub const UNSCOPED: &str = "";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledItem {
    /// The deployment that holds the item, its `kafka.topic_prefix`
    /// ([`UNSCOPED`] for items from before scoping).
    pub scope: String,
    pub item_id: String,
    pub due_at: Millis,
    /// Opaque to the store (the encoded notification request).
    pub payload: Vec<u8>,
}

#[async_trait::async_trait]
pub trait ScheduleStore: Send + Sync + 'static {
    /// Holds `item` in its scope; putting the same (scope, item id, due
    /// time) again replaces it.
    async fn put(&self, item: &ScheduledItem) -> Result<(), StoreError>;
    /// Items of `scope`, and [`UNSCOPED`] ones, with `due_at <= now`, oldest
    /// first; each carries its scope, to pass to `remove`. Items stay until
    /// removed, so a crash between `due` and `remove` re-delivers rather
    /// than loses.
    async fn due(
        &self,
        scope: &str,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<ScheduledItem>, StoreError>;
    /// Removes an item of `scope` (the scope `due` returned it with).
    async fn remove(&self, scope: &str, item_id: &str, due_at: Millis) -> Result<(), StoreError>;
}
