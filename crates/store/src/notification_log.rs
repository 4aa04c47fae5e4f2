//! The notification log: the latest status of each notification per channel
//! and target, so support and the API can answer "what happened to it?".
//!
//! It is also the senders' sent-ledger: an entry in the state [`SENT`] marks
//! its row sent for good (no later entry, `delivered` or `opened` or an
//! older one arriving late, clears the mark), and [`NotificationLog::sent_many`]
//! reads the marks back, so a replayed delivery is not sent twice. One write
//! per send does both jobs.

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

/// The state of an entry that records a provider's acceptance: it marks its
/// row sent for good (see the module docs).
pub const SENT: &str = "sent";

/// A row of the log: one delivery of a notification.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeliveryKey {
    pub notification_id: String,
    pub channel: String,
    pub target: String,
}

impl StatusEntry {
    pub fn key(&self) -> DeliveryKey {
        DeliveryKey {
            notification_id: self.notification_id.clone(),
            channel: self.channel.clone(),
            target: self.target.clone(),
        }
    }
}

#[async_trait::async_trait]
pub trait NotificationLog: Send + Sync + 'static {
    /// Upserts by (notification_id, channel, target); an entry older (by `at`)
    /// than the stored one does not replace it. An entry in the state
    /// [`SENT`] marks the row sent, older or not.
    async fn record(&self, entry: &StatusEntry) -> Result<(), StoreError>;
    async fn record_many(&self, entries: &[StatusEntry]) -> Result<(), StoreError>;
    /// Per key, in order: whether an entry in the state [`SENT`] was ever
    /// recorded for it (rows written before the mark existed count by
    /// their state).
    async fn sent_many(&self, keys: &[DeliveryKey]) -> Result<Vec<bool>, StoreError>;
    /// Entries ordered by (channel, target).
    async fn get(&self, notification_id: &str) -> Result<Vec<StatusEntry>, StoreError>;
}
