//! The notification log: the latest status of each notification per channel
//! and target, so support and the API can answer "what happened to it?".

use crate::{Millis, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusEntry {
    pub notification_id: String,
    pub user_id: String,
    pub channel: String,
    /// Device token, phone number or email address; `""` before targeting.
    pub target: String,
    /// e.g. `accepted`, `queued`, `sent`, `delivered`, `failed`.
    pub state: String,
    pub detail: Option<String>,
    pub attempt: u32,
    pub at: Millis,
}

#[async_trait::async_trait]
pub trait NotificationLog: Send + Sync + 'static {
    /// Upserts by (notification_id, channel, target); an entry older (by `at`)
    /// than the stored one does not replace it.
    async fn record(&self, entry: &StatusEntry) -> Result<(), StoreError>;
    async fn record_many(&self, entries: &[StatusEntry]) -> Result<(), StoreError>;
    /// Entries ordered by (channel, target).
    async fn get(&self, notification_id: &str) -> Result<Vec<StatusEntry>, StoreError>;
}
