//! [`AppStore`](crate::AppStore) on SQLite: the `apps` table.

use rusqlite::{OptionalExtension, params};

use super::{Context, Db, from_json, to_json};
use crate::apps::{App, AppStore};
use crate::{Millis, StoreError};

pub(crate) struct SqliteApps(pub(crate) Db);

const SELECT: &str =
    "SELECT app_key, secret_hash, name, permissions, quota_per_sec, revoked, created_at FROM apps";

/// An app with its permissions still as JSON text.
type AppRow = (App, String);

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AppRow> {
    let app = App {
        app_key: r.get(0)?,
        secret_hash: r.get(1)?,
        name: r.get(2)?,
        permissions: Vec::new(),
        quota_per_sec: r.get(4)?,
        revoked: r.get(5)?,
        created_at: r.get::<_, Millis>(6)?,
    };
    Ok((app, r.get(3)?))
}

fn decode(op: &'static str, (mut app, permissions): AppRow) -> Result<App, StoreError> {
    app.permissions = from_json(op, &app.app_key, &permissions)?;
    Ok(app)
}

#[async_trait::async_trait]
impl AppStore for SqliteApps {
    async fn put(&self, app: &App) -> Result<(), StoreError> {
        let permissions = to_json("apps.put", &app.app_key, &app.permissions)?;
        let a = app.clone();
        self.0
            .call(move |c| {
                c.prepare_cached(
                    "INSERT OR REPLACE INTO apps
                     (app_key, secret_hash, name, permissions, quota_per_sec, revoked, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    a.app_key,
                    a.secret_hash,
                    a.name,
                    permissions,
                    a.quota_per_sec,
                    a.revoked,
                    a.created_at
                ])
            })
            .await
            .ctx("apps.put", &app.app_key)?;
        Ok(())
    }

    async fn get(&self, app_key: &str) -> Result<Option<App>, StoreError> {
        let key = app_key.to_owned();
        let row = self
            .0
            .call(move |c| {
                c.prepare_cached(&format!("{SELECT} WHERE app_key = ?1"))?
                    .query_row([&key], read_row)
                    .optional()
            })
            .await
            .ctx("apps.get", app_key)?;
        row.map(|row| decode("apps.get", row)).transpose()
    }

    async fn revoke(&self, app_key: &str) -> Result<bool, StoreError> {
        let key = app_key.to_owned();
        let changed = self
            .0
            .call(move |c| {
                c.prepare_cached("UPDATE apps SET revoked = 1 WHERE app_key = ?1")?
                    .execute([&key])
            })
            .await
            .ctx("apps.revoke", app_key)?;
        Ok(changed == 1)
    }

    async fn list(&self) -> Result<Vec<App>, StoreError> {
        let rows = self
            .0
            .call(|c| {
                c.prepare_cached(&format!("{SELECT} ORDER BY app_key"))?
                    .query_map([], read_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await
            .ctx("apps.list", "*")?;
        rows.into_iter()
            .map(|row| decode("apps.list", row))
            .collect()
    }
}
