//! Contact information: user profiles (name, avatar, locale, email, phone)
//! and the push devices of each user.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use crate::{Millis, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub user_id: String,
    pub display_name: String,
    pub avatar_url: Option<String>,
    /// BCP 47 tag, e.g. `fr-FR`.
    pub locale: Option<String>,
    pub email: Option<String>,
    /// E.164, e.g. `+33612345678`.
    pub phone: Option<String>,
    pub updated_at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    Ios,
    Android,
    Web,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Ios => "ios",
            Platform::Android => "android",
            Platform::Web => "web",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ios" => Ok(Platform::Ios),
            "android" => Ok(Platform::Android),
            "web" => Ok(Platform::Web),
            other => Err(format!("unknown platform `{other}`")),
        }
    }
}

/// A push token of one user. An invalidation is a tombstone with a time
/// rather than a delete, so that events arriving out of order resolve by
/// time: the device is live while `invalidated_at < registered_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub user_id: String,
    pub token: String,
    pub platform: Platform,
    pub registered_at: Millis,
    pub invalidated_at: Option<Millis>,
}

impl Device {
    pub fn is_live(&self) -> bool {
        self.invalidated_at.is_none_or(|at| at < self.registered_at)
    }
}

#[async_trait::async_trait]
pub trait ContactStore: Send + Sync + 'static {
    async fn upsert_user(&self, user: &User) -> Result<(), StoreError>;
    async fn get_user(&self, user_id: &str) -> Result<Option<User>, StoreError>;
    /// The users that exist among `user_ids`, in the order asked; missing ids
    /// are skipped.
    async fn get_users(&self, user_ids: &[String]) -> Result<Vec<User>, StoreError>;
    /// Sets or clears the email, creating a bare user row if there is none.
    async fn set_email(&self, user_id: &str, email: Option<String>) -> Result<(), StoreError>;
    /// Sets or clears the phone number, creating a bare user row if there is none.
    async fn set_phone(&self, user_id: &str, phone: Option<String>) -> Result<(), StoreError>;

    /// Upserts platform and `registered_at`; an earlier invalidation stays
    /// recorded and loses against the newer registration.
    async fn register_device(&self, device: &Device) -> Result<(), StoreError>;
    async fn remove_device(&self, user_id: &str, token: &str) -> Result<(), StoreError>;
    /// Records that the provider rejected the token at `at`. The tombstone is
    /// kept even for a token not registered (yet), so a registration older
    /// than `at` that arrives late stays hidden.
    async fn invalidate_device(
        &self,
        user_id: &str,
        token: &str,
        at: Millis,
    ) -> Result<(), StoreError>;
    /// The devices for which [`Device::is_live`] holds.
    async fn live_devices(&self, user_id: &str) -> Result<Vec<Device>, StoreError>;
    /// [`live_devices`](Self::live_devices) of every user in `user_ids`, in
    /// one call: each [`Device`] carries its `user_id`, and the list is
    /// ordered by user id, then token (byte order). A user asked twice is
    /// answered once; unknown users and users without a live device add
    /// nothing. An empty `user_ids` is answered without a round trip.
    async fn live_devices_many(&self, user_ids: &[String]) -> Result<Vec<Device>, StoreError>;
    /// Removes all of `user_id`'s device rows but the `keep` that
    /// [`devices_beyond`] ranks first (live devices, newest first, then
    /// tombstones, newest first); answers how many it removed. Bounds what
    /// one user's devices cost every notification to them.
    async fn trim_devices(&self, user_id: &str, keep: usize) -> Result<usize, StoreError>;
}

/// One stored device row, as far as trimming needs it: a token may have a
/// registration, a tombstone, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub token: String,
    pub registered_at: Option<Millis>,
    pub invalidated_at: Option<Millis>,
}

impl DeviceRow {
    fn is_live(&self) -> bool {
        self.registered_at
            .is_some_and(|r| self.invalidated_at.is_none_or(|i| i < r))
    }

    /// When it last changed.
    fn latest(&self) -> Millis {
        self.registered_at
            .max(self.invalidated_at)
            .unwrap_or(Millis::MIN)
    }
}

/// The tokens of `rows` beyond the first `keep`, ranked live before
/// invalidated, then most recently changed first (ties by token): what
/// [`ContactStore::trim_devices`] removes.
pub fn devices_beyond(mut rows: Vec<DeviceRow>, keep: usize) -> Vec<String> {
    if rows.len() <= keep {
        return Vec::new();
    }
    rows.sort_by(|a, b| {
        (b.is_live(), b.latest())
            .cmp(&(a.is_live(), a.latest()))
            .then_with(|| a.token.cmp(&b.token))
    });
    rows.split_off(keep).into_iter().map(|r| r.token).collect()
}

/// Cuts `devices` (one user's) to the `keep` that [`devices_beyond`] ranks
/// first, the most recently registered; returns how many it dropped. For
/// readers of rows written before `RegisterDevice` trimmed them, or by a
/// gateway that did not.
pub fn keep_newest_devices(devices: &mut Vec<Device>, keep: usize) -> usize {
    if devices.len() <= keep {
        return 0;
    }
    let rows = devices
        .iter()
        .map(|d| DeviceRow {
            token: d.token.clone(),
            registered_at: Some(d.registered_at),
            invalidated_at: d.invalidated_at,
        })
        .collect();
    let beyond: HashSet<String> = devices_beyond(rows, keep).into_iter().collect();
    devices.retain(|d| !beyond.contains(&d.token));
    beyond.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        token: &str,
        registered_at: Option<Millis>,
        invalidated_at: Option<Millis>,
    ) -> DeviceRow {
        DeviceRow {
            token: token.into(),
            registered_at,
            invalidated_at,
        }
    }

    #[test]
    fn live_and_recent_devices_are_kept_first() {
        let rows = vec![
            row("old-live", Some(100), None),
            row("new-live", Some(300), None),
            row("dead", Some(400), Some(500)),
            row("tombstone-only", None, Some(600)),
            row("back", Some(700), Some(200)),
        ];
        assert!(devices_beyond(rows.clone(), 5).is_empty());
        assert_eq!(
            devices_beyond(rows.clone(), 3),
            ["tombstone-only", "dead"],
            "tombstones go first, newest kept longest"
        );
        assert_eq!(
            devices_beyond(rows.clone(), 1),
            ["new-live", "old-live", "tombstone-only", "dead"]
        );
        assert_eq!(devices_beyond(rows, 0).len(), 5);
    }

    #[test]
    fn a_reader_keeps_the_newest_devices() {
        let device = |token: &str, registered_at: Millis| Device {
            user_id: "u".into(),
            token: token.into(),
            platform: Platform::Ios,
            registered_at,
            invalidated_at: None,
        };
        let mut devices = vec![
            device("b", 200),
            device("d", 400),
            device("a", 100),
            device("c", 300),
        ];
        assert_eq!(keep_newest_devices(&mut devices, 4), 0);
        assert_eq!(devices.len(), 4);
        assert_eq!(keep_newest_devices(&mut devices, 2), 2);
        let kept: Vec<&str> = devices.iter().map(|d| d.token.as_str()).collect();
        assert_eq!(kept, ["d", "c"], "the newest two, in the order read");
    }
}
