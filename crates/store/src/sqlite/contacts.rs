//! [`ContactStore`](crate::ContactStore) on SQLite: the `users` and `devices` tables.

use std::{collections::BTreeSet, sync::Arc};

use rusqlite::{OptionalExtension, Row, Statement, params};

use super::{Context, Db};
use crate::contacts::{ContactStore, Device, User};
use crate::{Millis, StoreError, now_millis};

pub(crate) struct SqliteContacts(pub(crate) Db);

const SELECT_USER: &str = "SELECT user_id, display_name, avatar_url, locale, email, phone, updated_at FROM users WHERE user_id = ?1";

/// Ordered by token, so that a loop over sorted user ids yields the order
/// `live_devices_many` promises.
pub(super) const SELECT_LIVE_DEVICES: &str =
    "SELECT token, platform, registered_at, invalidated_at FROM devices
     WHERE user_id = ?1 AND registered_at IS NOT NULL
       AND (invalidated_at IS NULL OR invalidated_at < registered_at)
     ORDER BY token";

/// token, platform, registered_at, invalidated_at
type DeviceRow = (String, String, Millis, Option<Millis>);

fn live_device_rows(stmt: &mut Statement<'_>, user_id: &str) -> rusqlite::Result<Vec<DeviceRow>> {
    stmt.query_map([user_id], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })?
    .collect()
}

fn device(
    op: &'static str,
    user_id: &str,
    (token, platform, registered_at, invalidated_at): DeviceRow,
) -> Result<Device, StoreError> {
    Ok(Device {
        user_id: user_id.to_owned(),
        token,
        platform: platform
            .parse()
            .map_err(|e| StoreError::invalid_data(op, user_id, e))?,
        registered_at,
        invalidated_at,
    })
}

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        user_id: row.get(0)?,
        display_name: row.get(1)?,
        avatar_url: row.get(2)?,
        locale: row.get(3)?,
        email: row.get(4)?,
        phone: row.get(5)?,
        updated_at: row.get(6)?,
    })
}

impl SqliteContacts {
    /// `column` is one of our own literals, never caller input.
    async fn set_contact_column(
        &self,
        op: &'static str,
        column: &'static str,
        user_id: &str,
        value: Option<String>,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO users (user_id, {column}, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (user_id) DO UPDATE SET {column} = excluded.{column}, updated_at = excluded.updated_at"
        );
        let id = user_id.to_owned();
        self.0
            .call(move |c| {
                c.prepare_cached(&sql)?
                    .execute(params![id, value, now_millis()])
            })
            .await
            .ctx(op, user_id)?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl ContactStore for SqliteContacts {
    async fn upsert_user(&self, user: &User) -> Result<(), StoreError> {
        let u = user.clone();
        self.0
            .call(move |c| {
                c.prepare_cached(
                    "INSERT OR REPLACE INTO users (user_id, display_name, avatar_url, locale, email, phone, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![u.user_id, u.display_name, u.avatar_url, u.locale, u.email, u.phone, u.updated_at])
            })
            .await
            .ctx("contacts.upsert_user", &user.user_id)?;
        Ok(())
    }

    async fn get_user(&self, user_id: &str) -> Result<Option<User>, StoreError> {
        let id = user_id.to_owned();
        self.0
            .call(move |c| {
                c.prepare_cached(SELECT_USER)?
                    .query_row([&id], user_from_row)
                    .optional()
            })
            .await
            .ctx("contacts.get_user", user_id)
    }

    async fn get_users(&self, user_ids: &[String]) -> Result<Vec<User>, StoreError> {
        let ids = user_ids.to_vec();
        self.0
            .call(move |c| {
                let mut stmt = c.prepare_cached(SELECT_USER)?;
                let mut users = Vec::with_capacity(ids.len());
                for id in &ids {
                    users.extend(stmt.query_row([id], user_from_row).optional()?);
                }
                Ok(users)
            })
            .await
            .ctx("contacts.get_users", &format!("{} ids", user_ids.len()))
    }

    async fn set_email(&self, user_id: &str, email: Option<String>) -> Result<(), StoreError> {
        self.set_contact_column("contacts.set_email", "email", user_id, email)
            .await
    }

    async fn set_phone(&self, user_id: &str, phone: Option<String>) -> Result<(), StoreError> {
        self.set_contact_column("contacts.set_phone", "phone", user_id, phone)
            .await
    }

    async fn register_device(&self, device: &Device) -> Result<(), StoreError> {
        let d = device.clone();
        self.0
            .call(move |c| {
                c.prepare_cached(
                    "INSERT INTO devices (user_id, token, platform, registered_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (user_id, token) DO UPDATE
                     SET platform = excluded.platform, registered_at = excluded.registered_at",
                )?
                .execute(params![d.user_id, d.token, d.platform.as_str(), d.registered_at])
            })
            .await
            .ctx("contacts.register_device", &device.user_id)?;
        Ok(())
    }

    async fn remove_device(&self, user_id: &str, token: &str) -> Result<(), StoreError> {
        let (id, token) = (user_id.to_owned(), token.to_owned());
        self.0
            .call(move |c| {
                c.prepare_cached("DELETE FROM devices WHERE user_id = ?1 AND token = ?2")?
                    .execute([&id, &token])
            })
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
        let (id, token) = (user_id.to_owned(), token.to_owned());
        self.0
            .call(move |c| {
                c.prepare_cached(
                    "INSERT INTO devices (user_id, token, invalidated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (user_id, token) DO UPDATE SET invalidated_at = excluded.invalidated_at",
                )?
                .execute(params![id, token, at])
            })
            .await
            .ctx("contacts.invalidate_device", user_id)?;
        Ok(())
    }

    async fn live_devices(&self, user_id: &str) -> Result<Vec<Device>, StoreError> {
        const OP: &str = "contacts.live_devices";
        let id = user_id.to_owned();
        let rows = self
            .0
            .call(move |c| {
                let mut stmt = c.prepare_cached(SELECT_LIVE_DEVICES)?;
                live_device_rows(&mut stmt, &id)
            })
            .await
            .ctx(OP, user_id)?;
        rows.into_iter()
            .map(|row| device(OP, user_id, row))
            .collect()
    }

    async fn live_devices_many(&self, user_ids: &[String]) -> Result<Vec<Device>, StoreError> {
        const OP: &str = "contacts.live_devices_many";
        // Sorted and without repeats: the promised order, each user once.
        let ids: Arc<[String]> = user_ids
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .cloned()
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let call_ids = ids.clone();
        // Rows by the index of their user in `ids`.
        let rows_by_user = self
            .0
            .call(move |c| {
                let mut stmt = c.prepare_cached(SELECT_LIVE_DEVICES)?;
                let mut rows_by_user = Vec::new();
                for (i, id) in call_ids.iter().enumerate() {
                    let rows = live_device_rows(&mut stmt, id)?;
                    if !rows.is_empty() {
                        rows_by_user.push((i, rows));
                    }
                }
                Ok(rows_by_user)
            })
            .await
            .ctx(OP, &format!("{} users", user_ids.len()))?;
        let mut devices = Vec::new();
        for (i, rows) in rows_by_user {
            for row in rows {
                devices.push(device(OP, &ids[i], row)?);
            }
        }
        Ok(devices)
    }

    async fn trim_devices(&self, user_id: &str, keep: usize) -> Result<usize, StoreError> {
        let id = user_id.to_owned();
        self.0
            .call(move |c| {
                let rows = c
                    .prepare_cached(
                        "SELECT token, registered_at, invalidated_at FROM devices WHERE user_id = ?1",
                    )?
                    .query_map([&id], |r| {
                        Ok(crate::DeviceRow {
                            token: r.get(0)?,
                            registered_at: r.get(1)?,
                            invalidated_at: r.get(2)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let beyond = crate::devices_beyond(rows, keep);
                let mut delete =
                    c.prepare_cached("DELETE FROM devices WHERE user_id = ?1 AND token = ?2")?;
                for token in &beyond {
                    delete.execute([&id, token])?;
                }
                Ok(beyond.len())
            })
            .await
            .ctx("contacts.trim_devices", user_id)
    }
}
