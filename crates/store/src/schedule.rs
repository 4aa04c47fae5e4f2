//! Durable schedule of notifications held until their send time.

use crate::{Millis, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledItem {
    pub item_id: String,
    pub due_at: Millis,
    /// Opaque to the store (the encoded notification request).
    pub payload: Vec<u8>,
}

#[async_trait::async_trait]
pub trait ScheduleStore: Send + Sync + 'static {
    async fn put(&self, item: &ScheduledItem) -> Result<(), StoreError>;
    /// Items with `due_at <= now`, oldest first. Items stay until removed, so
    /// a crash between `due` and `remove` re-delivers rather than loses.
    async fn due(&self, now: Millis, limit: u32) -> Result<Vec<ScheduledItem>, StoreError>;
    async fn remove(&self, item_id: &str, due_at: Millis) -> Result<(), StoreError>;
}
