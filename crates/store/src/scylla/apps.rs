//! [`AppStore`](crate::AppStore) on CQL: the `apps` table.

use scylla::statement::prepared::PreparedStatement;

use super::{Context, Cql, from_int, to_int};
use crate::apps::{App, AppStore};
use crate::{Millis, StoreError};

pub(crate) struct ScyllaApps {
    cql: Cql,
    put: PreparedStatement,
    get: PreparedStatement,
    revoke: PreparedStatement,
    list: PreparedStatement,
}

const COLUMNS: &str = "app_key, secret_hash, name, permissions, quota_per_sec, revoked, created_at";

type AppRow = (
    String,
    Option<String>,
    Option<String>,
    Option<Vec<String>>,
    Option<i32>,
    Option<bool>,
    Option<Millis>,
);

fn app_from_row(op: &'static str, row: AppRow) -> Result<App, StoreError> {
    let (app_key, secret_hash, name, permissions, quota_per_sec, revoked, created_at) = row;
    Ok(App {
        quota_per_sec: quota_per_sec
            .map(|q| from_int(op, &app_key, q))
            .transpose()?,
        app_key,
        secret_hash: secret_hash.unwrap_or_default(),
        name: name.unwrap_or_default(),
        // CQL stores an empty list as null.
        permissions: permissions.unwrap_or_default(),
        revoked: revoked.unwrap_or_default(),
        created_at: created_at.unwrap_or_default(),
    })
}

impl ScyllaApps {
    pub(crate) async fn prepare(cql: &Cql) -> Result<Self, StoreError> {
        Ok(ScyllaApps {
            put: cql
                .prepare(&format!(
                    "INSERT INTO apps ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                ))
                .await?,
            get: cql
                .prepare(&format!("SELECT {COLUMNS} FROM apps WHERE app_key = ?"))
                .await?,
            revoke: cql
                .prepare("UPDATE apps SET revoked = true WHERE app_key = ?")
                .await?,
            list: cql.prepare(&format!("SELECT {COLUMNS} FROM apps")).await?,
            cql: cql.clone(),
        })
    }
}

#[async_trait::async_trait]
impl AppStore for ScyllaApps {
    async fn put(&self, a: &App) -> Result<(), StoreError> {
        const OP: &str = "apps.put";
        let quota = a
            .quota_per_sec
            .map(|q| to_int(OP, &a.app_key, q))
            .transpose()?;
        let values = (
            &a.app_key,
            &a.secret_hash,
            &a.name,
            &a.permissions,
            quota,
            a.revoked,
            a.created_at,
        );
        self.cql
            .execute(&self.put, values)
            .await
            .ctx(OP, &a.app_key)?;
        Ok(())
    }

    async fn get(&self, app_key: &str) -> Result<Option<App>, StoreError> {
        let row = self
            .cql
            .maybe_row::<AppRow>(&self.get, (app_key,))
            .await
            .ctx("apps.get", app_key)?;
        row.map(|row| app_from_row("apps.get", row)).transpose()
    }

    async fn revoke(&self, app_key: &str) -> Result<bool, StoreError> {
        // Read first so revoking an unknown key does not create a row. Apps
        // are never deleted, so the read cannot go stale in a harmful way.
        if self.get(app_key).await?.is_none() {
            return Ok(false);
        }
        self.cql
            .execute(&self.revoke, (app_key,))
            .await
            .ctx("apps.revoke", app_key)?;
        Ok(true)
    }

    async fn list(&self) -> Result<Vec<App>, StoreError> {
        let rows = self
            .cql
            .all_rows::<AppRow>(&self.list, ())
            .await
            .ctx("apps.list", "*")?;
        let mut apps = rows
            .into_iter()
            .map(|row| app_from_row("apps.list", row))
            .collect::<Result<Vec<_>, _>>()?;
        // A full scan comes back in token order.
        apps.sort_by(|a, b| a.app_key.cmp(&b.app_key));
        Ok(apps)
    }
}
