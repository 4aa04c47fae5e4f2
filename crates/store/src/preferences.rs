//! Notification preferences: opt-in or opt-out per (user, channel) and per
//! (user, category, channel). The store records choices; the policy of what an
//! absent choice means belongs to the processors.

use std::collections::HashMap;

use crate::{Millis, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preference {
    pub user_id: String,
    /// Opaque channel name, e.g. `ios`, `android`, `sms`, `email`, `push`.
    pub channel: String,
    /// `None` is the channel-wide choice. `Some("")` is rejected as invalid.
    pub category: Option<String>,
    pub opt_in: bool,
    pub updated_at: Millis,
}

#[async_trait::async_trait]
pub trait PreferenceStore: Send + Sync + 'static {
    /// Upserts by (user, category, channel).
    async fn set(&self, preference: &Preference) -> Result<(), StoreError>;
    async fn list(&self, user_id: &str) -> Result<Vec<Preference>, StoreError>;
    /// Users without any recorded choice are absent from the map.
    async fn list_many(
        &self,
        user_ids: &[String],
    ) -> Result<HashMap<String, Vec<Preference>>, StoreError>;
}

/// Both engines keep the category in a key column, which cannot be null, so
/// "no category" is stored as the empty string.
pub(crate) fn category_key(preference: &Preference) -> Result<&str, StoreError> {
    match preference.category.as_deref() {
        Some("") => Err(StoreError::invalid_data(
            "preferences.set",
            preference.user_id.clone(),
            "empty category; use None for a channel-wide preference",
        )),
        category => Ok(category.unwrap_or("")),
    }
}

pub(crate) fn category_from_key(key: String) -> Option<String> {
    (!key.is_empty()).then_some(key)
}
