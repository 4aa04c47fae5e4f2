//! [`PreferenceStore`](crate::PreferenceStore) on CQL: the `preferences`
//! table (and its copy in `devices`, see `recipients.rs`).

use std::collections::HashMap;

use scylla::statement::prepared::PreparedStatement;

use super::recipients::{CopyWrites, SourceWrite};
use super::{Context, Cql};
use crate::preferences::{Preference, PreferenceStore, category_from_key, category_key};
use crate::{Millis, StoreError};

pub(crate) struct ScyllaPreferences {
    cql: Cql,
    set: SourceWrite,
    list: PreparedStatement,
}

impl ScyllaPreferences {
    /// `copy`: the store has the copy of `preferences` in `devices`
    /// (migration 0010), which every write then keeps.
    pub(crate) async fn prepare(cql: &Cql, copy: Option<&CopyWrites>) -> Result<Self, StoreError> {
        Ok(ScyllaPreferences {
            set: SourceWrite::new(
                cql.prepare(
                    "INSERT INTO preferences (user_id, category, channel, opt_in, updated_at) VALUES (?, ?, ?, ?, ?)",
                )
                .await?,
                copy.map(|c| &c.preference),
                "preferences",
            ),
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
        let category = category_key(p)?;
        let source = (&p.user_id, category, &p.channel, p.opt_in, p.updated_at);
        let copy = ((category, &p.channel), (p.opt_in, p.updated_at), &p.user_id);
        self.set
            .run(&self.cql, source, copy)
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
