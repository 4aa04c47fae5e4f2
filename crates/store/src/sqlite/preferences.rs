//! [`PreferenceStore`](crate::PreferenceStore) on SQLite: the `preferences` table.

use std::collections::HashMap;

use rusqlite::params;

use super::{Context, Db};
use crate::StoreError;
use crate::preferences::{Preference, PreferenceStore, category_from_key, category_key};

pub(crate) struct SqlitePreferences(pub(crate) Db);

pub(super) const SELECT_BY_USER: &str = "SELECT category, channel, opt_in, updated_at FROM preferences WHERE user_id = ?1 ORDER BY category, channel";

type PreferenceRow = (String, String, bool, i64);

fn preference(user_id: &str, (category, channel, opt_in, updated_at): PreferenceRow) -> Preference {
    Preference {
        user_id: user_id.to_owned(),
        channel,
        category: category_from_key(category),
        opt_in,
        updated_at,
    }
}

fn select_by_user(c: &rusqlite::Connection, user_id: &str) -> rusqlite::Result<Vec<PreferenceRow>> {
    c.prepare_cached(SELECT_BY_USER)?
        .query_map([user_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect()
}

#[async_trait::async_trait]
impl PreferenceStore for SqlitePreferences {
    async fn set(&self, p: &Preference) -> Result<(), StoreError> {
        let category = category_key(p)?.to_owned();
        let (user_id, channel, opt_in, updated_at) =
            (p.user_id.clone(), p.channel.clone(), p.opt_in, p.updated_at);
        self.0
            .call(move |c| {
                c.prepare_cached(
                    "INSERT OR REPLACE INTO preferences (user_id, category, channel, opt_in, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![user_id, category, channel, opt_in, updated_at])
            })
            .await
            .ctx("preferences.set", &p.user_id)?;
        Ok(())
    }

    async fn list(&self, user_id: &str) -> Result<Vec<Preference>, StoreError> {
        let id = user_id.to_owned();
        let rows = self
            .0
            .call(move |c| select_by_user(c, &id))
            .await
            .ctx("preferences.list", user_id)?;
        Ok(rows
            .into_iter()
            .map(|row| preference(user_id, row))
            .collect())
    }

    async fn list_many(
        &self,
        user_ids: &[String],
    ) -> Result<HashMap<String, Vec<Preference>>, StoreError> {
        let ids = user_ids.to_vec();
        self.0
            .call(move |c| {
                let mut by_user = HashMap::new();
                for id in &ids {
                    let rows = select_by_user(c, id)?;
                    if !rows.is_empty() {
                        let preferences = rows.into_iter().map(|row| preference(id, row)).collect();
                        by_user.insert(id.clone(), preferences);
                    }
                }
                Ok(by_user)
            })
            .await
            .ctx(
                "preferences.list_many",
                &format!("{} users", user_ids.len()),
            )
    }
}
