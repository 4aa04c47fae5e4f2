//! [`ContactStore`](crate::ContactStore) on CQL: the `users` and `devices`
//! tables (and the copy of `users` in `devices`, see `recipients.rs`).

use std::collections::BTreeSet;

use scylla::statement::prepared::PreparedStatement;

use super::recipients::{CopyWrites, SourceWrite};
use super::{Context, Cql};
use crate::contacts::{ContactStore, Device, User};
use crate::{Millis, StoreError, now_millis};

pub(crate) struct ScyllaContacts {
    cql: Cql,
    upsert_user: SourceWrite,
    get_user: PreparedStatement,
    set_email: SourceWrite,
    set_phone: SourceWrite,
    register_device: PreparedStatement,
    remove_device: PreparedStatement,
    invalidate_device: PreparedStatement,
    devices: PreparedStatement,
}

pub(super) type UserRow = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<Millis>,
);

pub(super) fn user_from_row(
    (user_id, display_name, avatar_url, locale, email, phone, updated_at): UserRow,
) -> User {
    // set_email/set_phone may have created the row without a profile.
    User {
        user_id,
        display_name: display_name.unwrap_or_default(),
        avatar_url,
        locale,
        email,
        phone,
        updated_at: updated_at.unwrap_or_default(),
    }
}

/// A `devices` row as a device: `None` for a row that holds only a
/// tombstone, or only the partition's static columns (the copy of `users`).
pub(super) fn device_from_row(
    op: &'static str,
    user_id: &str,
    token: Option<String>,
    platform: Option<String>,
    registered_at: Option<Millis>,
    invalidated_at: Option<Millis>,
) -> Result<Option<Device>, StoreError> {
    let (Some(token), Some(platform), Some(registered_at)) = (token, platform, registered_at)
    else {
        return Ok(None);
    };
    Ok(Some(Device {
        user_id: user_id.to_owned(),
        token,
        platform: platform
            .parse()
            .map_err(|e| StoreError::invalid_data(op, user_id, e))?,
        registered_at,
        invalidated_at,
    }))
}

/// token, platform, registered_at, invalidated_at: each may be absent
/// (a tombstone alone; a partition holding only the user's copy).
type DeviceColumns = (
    Option<String>,
    Option<String>,
    Option<Millis>,
    Option<Millis>,
);

impl ScyllaContacts {
    /// Every row of `user_id`'s devices partition.
    async fn device_rows(
        &self,
        op: &'static str,
        user_id: &str,
    ) -> Result<Vec<DeviceColumns>, StoreError> {
        self.cql
            .all_rows::<DeviceColumns>(&self.devices, (user_id,))
            .await
            .ctx(op, user_id)
    }

    /// `copy`: the store has the copy of `users` in `devices` (migration
    /// 0010), which every write to `users` then keeps.
    pub(crate) async fn prepare(cql: &Cql, copy: Option<&CopyWrites>) -> Result<Self, StoreError> {
        Ok(ScyllaContacts {
            upsert_user: SourceWrite::new(
                cql.prepare(
                    "INSERT INTO users (user_id, display_name, avatar_url, locale, email, phone, updated_at)
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .await?,
                copy.map(|c| &c.profile),
                "users",
            ),
            get_user: cql
                .prepare(
                    "SELECT user_id, display_name, avatar_url, locale, email, phone, updated_at
                     FROM users WHERE user_id = ?",
                )
                .await?,
            set_email: SourceWrite::new(
                cql.prepare("UPDATE users SET email = ?, updated_at = ? WHERE user_id = ?").await?,
                copy.map(|c| &c.email),
                "users",
            ),
            set_phone: SourceWrite::new(
                cql.prepare("UPDATE users SET phone = ?, updated_at = ? WHERE user_id = ?").await?,
                copy.map(|c| &c.phone),
                "users",
            ),
            register_device: cql
                .prepare("UPDATE devices SET platform = ?, registered_at = ? WHERE user_id = ? AND device_token = ?")
                .await?,
            remove_device: cql.prepare("DELETE FROM devices WHERE user_id = ? AND device_token = ?").await?,
            invalidate_device: cql
                .prepare("UPDATE devices SET invalidated_at = ? WHERE user_id = ? AND device_token = ?")
                .await?,
            devices: cql
                .prepare("SELECT device_token, platform, registered_at, invalidated_at FROM devices WHERE user_id = ?")
                .await?,
            cql: cql.clone(),
        })
    }
}

#[async_trait::async_trait]
impl ContactStore for ScyllaContacts {
    async fn upsert_user(&self, u: &User) -> Result<(), StoreError> {
        let profile = (
            &u.display_name,
            &u.avatar_url,
            &u.locale,
            &u.email,
            &u.phone,
        );
        let source = (
            &u.user_id,
            profile.0,
            profile.1,
            profile.2,
            profile.3,
            profile.4,
            u.updated_at,
        );
        let copy = (
            profile.0,
            profile.1,
            profile.2,
            profile.3,
            profile.4,
            u.updated_at,
            &u.user_id,
        );
        self.upsert_user
            .run(&self.cql, source, copy)
            .await
            .ctx("contacts.upsert_user", &u.user_id)?;
        Ok(())
    }

    async fn get_user(&self, user_id: &str) -> Result<Option<User>, StoreError> {
        let row = self
            .cql
            .maybe_row::<UserRow>(&self.get_user, (user_id,))
            .await
            .ctx("contacts.get_user", user_id)?;
        Ok(row.map(user_from_row))
    }

    async fn get_users(&self, user_ids: &[String]) -> Result<Vec<User>, StoreError> {
        let users = self
            .cql
            .concurrently(user_ids, |id| self.get_user(id))
            .await?;
        Ok(users.into_iter().flatten().collect())
    }

    async fn set_email(&self, user_id: &str, email: Option<String>) -> Result<(), StoreError> {
        let values = (email, now_millis(), user_id);
        self.set_email
            .run(&self.cql, &values, &values)
            .await
            .ctx("contacts.set_email", user_id)?;
        Ok(())
    }

    async fn set_phone(&self, user_id: &str, phone: Option<String>) -> Result<(), StoreError> {
        let values = (phone, now_millis(), user_id);
        self.set_phone
            .run(&self.cql, &values, &values)
            .await
            .ctx("contacts.set_phone", user_id)?;
        Ok(())
    }

    async fn register_device(&self, d: &Device) -> Result<(), StoreError> {
        let values = (d.platform.as_str(), d.registered_at, &d.user_id, &d.token);
        self.cql
            .execute(&self.register_device, values)
            .await
            .ctx("contacts.register_device", &d.user_id)?;
        Ok(())
    }

    async fn remove_device(&self, user_id: &str, token: &str) -> Result<(), StoreError> {
        self.cql
            .execute(&self.remove_device, (user_id, token))
            .await
            .ctx("contacts.remove_device", user_id)?;
        Ok(())
    }

    async fn invalidate_device(
        &self,
        user_id: &str,
        token: &str,
        at: Millis,
    ) -> Result<(), StoreError> {
        self.cql
            .execute(&self.invalidate_device, (at, user_id, token))
            .await
            .ctx("contacts.invalidate_device", user_id)?;
        Ok(())
    }

    async fn live_devices(&self, user_id: &str) -> Result<Vec<Device>, StoreError> {
        const OP: &str = "contacts.live_devices";
        let rows = self.device_rows(OP, user_id).await?;
        let mut live = Vec::new();
        for (token, platform, registered_at, invalidated_at) in rows {
            let device =
                device_from_row(OP, user_id, token, platform, registered_at, invalidated_at)?;
            live.extend(device.filter(Device::is_live));
        }
        Ok(live)
    }

    async fn live_devices_many(&self, user_ids: &[String]) -> Result<Vec<Device>, StoreError> {
        // Sorted and without repeats: each user's partition is read once,
        // and the answers (each in clustering order, by token) concatenate
        // into the promised order.
        let ids: BTreeSet<&String> = user_ids.iter().collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let per_user = self
            .cql
            .concurrently(ids, |id| self.live_devices(id))
            .await?;
        let mut devices: Vec<Device> = per_user.into_iter().flatten().collect();
        // Already sorted unless the clustering order ever changes; then this
        // keeps the contract at the cost of one pass.
        devices.sort_by(|a, b| (&a.user_id, &a.token).cmp(&(&b.user_id, &b.token)));
        Ok(devices)
    }

    /// One partition read and a delete per removed row (rare: only a user
    /// over the cap has any).
    async fn trim_devices(&self, user_id: &str, keep: usize) -> Result<usize, StoreError> {
        const OP: &str = "contacts.trim_devices";
        let rows = self.device_rows(OP, user_id).await?;
        let rows = rows
            .into_iter()
            .filter_map(|(token, _, registered_at, invalidated_at)| {
                // A row with only static columns (the user's copy) is no
                // device.
                token.map(|token| crate::DeviceRow {
                    token,
                    registered_at,
                    invalidated_at,
                })
            })
            .collect();
        let beyond = crate::devices_beyond(rows, keep);
        for token in &beyond {
            self.cql
                .execute(&self.remove_device, (user_id, token))
                .await
                .ctx(OP, user_id)?;
        }
        Ok(beyond.len())
    }
}
