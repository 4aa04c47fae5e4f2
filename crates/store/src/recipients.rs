//! Recipients: what the enricher reads of each user to address a
//! notification (profile, live devices, preferences), in one call for a
//! batch's users.
//!
//! The three parts belong to two aggregates ([`ContactStore`],
//! [`PreferenceStore`]), which stay the way to write and to read them one at
//! a time. This read exists because it is the hot one: on CQL it is one
//! partition read per user (a copy of the profile and preferences kept in
//! the user's `devices` partition) instead of three; SQLite answers it with
//! the aggregates' own reads ([`SeparateReads`]).

use std::collections::HashMap;
use std::sync::Arc;

use crate::{ContactStore, Device, Preference, PreferenceStore, StoreError, User};

/// One user as the enricher needs them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recipient {
    /// `None`: no profile (a user known only by devices or preferences).
    pub user: Option<User>,
    /// The devices for which [`Device::is_live`] holds, by token.
    pub devices: Vec<Device>,
    /// Every recorded choice, by (category, channel); channel-wide choices
    /// (`category: None`) first.
    pub preferences: Vec<Preference>,
}

impl Recipient {
    /// Nothing recorded for the user.
    pub fn is_empty(&self) -> bool {
        self.user.is_none() && self.devices.is_empty() && self.preferences.is_empty()
    }
}

#[async_trait::async_trait]
pub trait RecipientStore: Send + Sync + 'static {
    /// Every user of `user_ids` with a profile, a live device or a
    /// preference, keyed by user id; the others are absent. Answers what
    /// [`ContactStore::get_users`], [`ContactStore::live_devices_many`] and
    /// [`PreferenceStore::list_many`] would. An empty `user_ids` is answered
    /// without a round trip.
    async fn recipients_many(
        &self,
        user_ids: &[String],
    ) -> Result<HashMap<String, Recipient>, StoreError>;
}

/// [`RecipientStore`] as the three reads of the aggregates, side by side.
pub(crate) struct SeparateReads {
    pub contacts: Arc<dyn ContactStore>,
    pub preferences: Arc<dyn PreferenceStore>,
}

#[async_trait::async_trait]
impl RecipientStore for SeparateReads {
    async fn recipients_many(
        &self,
        user_ids: &[String],
    ) -> Result<HashMap<String, Recipient>, StoreError> {
        if user_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let (users, devices, preferences) = tokio::try_join!(
            self.contacts.get_users(user_ids),
            self.contacts.live_devices_many(user_ids),
            self.preferences.list_many(user_ids),
        )?;
        let mut recipients: HashMap<String, Recipient> = HashMap::new();
        for user in users {
            let user_id = user.user_id.clone();
            recipients.entry(user_id).or_default().user = Some(user);
        }
        for device in devices {
            recipients
                .entry(device.user_id.clone())
                .or_default()
                .devices
                .push(device);
        }
        for (user_id, preferences) in preferences {
            recipients.entry(user_id).or_default().preferences = preferences;
        }
        Ok(recipients)
    }
}
