//! [`PreferenceStore`](crate::PreferenceStore) on CQL: the `preferences` table.

use std::collections::HashMap;

use scylla::statement::prepared::PreparedStatement;

use super::{Context, Cql};
use crate::preferences::{Preference, PreferenceStore, category_from_key, category_key};
use crate::{Millis, StoreError};

pub(crate) struct ScyllaPreferences {
    cql: Cql,
    set: PreparedStatement,
    list: PreparedStatement,
}

impl ScyllaPreferences {
    pub(crate) async fn prepare(cql: &Cql) -> Result<Self, StoreError> {
        Ok(ScyllaPreferences {
            set: cql
                .prepare(
                    "INSERT INTO preferences (user_id, category, channel, opt_in, updated_at) VALUES (?, ?, ?, ?, ?)",
                )
                .await?,
            list: cql
                .prepare("SELECT category, channel, opt_in, updated_at FROM preferences WHERE user_id = ?")
                .await?,
            cql: cql.clone(),
        })
    }
}

#[async_trait::async_trait]
impl PreferenceStore for ScyllaPreferences {
    async fn set(&self, p: &Preference) -> Result<(), StoreError> {
        let values = (
            &p.user_id,
            category_key(p)?,
            &p.channel,
            p.opt_in,
            p.updated_at,
        );
        self.cql
            .execute(&self.set, values)
            .await
            .ctx("preferences.set", &p.user_id)?;
        Ok(())
    }

    async fn list(&self, user_id: &str) -> Result<Vec<Preference>, StoreError> {
        let rows = self
            .cql
            .all_rows::<(String, String, Option<bool>, Option<Millis>)>(&self.list, (user_id,))
            .await
            .ctx("preferences.list", user_id)?;
        Ok(rows
            .into_iter()
            .map(|(category, channel, opt_in, updated_at)| Preference {
                user_id: user_id.to_owned(),
                channel,
                category: category_from_key(category),
                opt_in: opt_in.unwrap_or_default(),
                updated_at: updated_at.unwrap_or_default(),
            })
            .collect())
    }

    async fn list_many(
        &self,
        user_ids: &[String],
    ) -> Result<HashMap<String, Vec<Preference>>, StoreError> {
        let lists = self.cql.concurrently(user_ids, |id| self.list(id)).await?;
        Ok(user_ids
            .iter()
            .cloned()
            .zip(lists)
            .filter(|(_, preferences)| !preferences.is_empty())
            .collect())
    }
}
