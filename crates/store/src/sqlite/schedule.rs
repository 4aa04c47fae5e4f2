//! [`ScheduleStore`](crate::ScheduleStore) on SQLite: the `scheduled_items`
//! table. Rows from before scoping were moved there with the empty scope
//! ([`UNSCOPED`]) by migration 0004, and `due` returns them in every scope.

use rusqlite::params;

use super::{Context, Db};
use crate::schedule::{ScheduleStore, ScheduledItem, UNSCOPED};
use crate::{Millis, StoreError};

pub(crate) struct SqliteSchedule(pub(crate) Db);

#[async_trait::async_trait]
impl ScheduleStore for SqliteSchedule {
    async fn put(&self, item: &ScheduledItem) -> Result<(), StoreError> {
        let i = item.clone();
        self.0
            .call(move |c| {
                c.prepare_cached(
                    "INSERT OR REPLACE INTO scheduled_items (scope, item_id, due_at, payload)
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![i.scope, i.item_id, i.due_at, i.payload])
            })
            .await
            .ctx("schedule.put", &item.item_id)?;
        Ok(())
    }

    async fn due(
        &self,
        scope: &str,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<ScheduledItem>, StoreError> {
        let scope = scope.to_owned();
        self.0
            .call(move |c| {
                // Two index ranges of the key (scope, due_at, item_id),
                // merged in order.
                c.prepare_cached(
                    "SELECT scope, item_id, due_at, payload FROM scheduled_items
                     WHERE scope IN (?1, ?2) AND due_at <= ?3
                     ORDER BY due_at, item_id LIMIT ?4",
                )?
                .query_map(params![scope, UNSCOPED, now, limit], |r| {
                    Ok(ScheduledItem {
                        scope: r.get(0)?,
                        item_id: r.get(1)?,
                        due_at: r.get(2)?,
                        payload: r.get(3)?,
                    })
                })?
                .collect()
            })
            .await
            .ctx("schedule.due", &now.to_string())
    }

    async fn remove(&self, scope: &str, item_id: &str, due_at: Millis) -> Result<(), StoreError> {
        let (scope, id) = (scope.to_owned(), item_id.to_owned());
        self.0
            .call(move |c| {
                c.prepare_cached(
                    "DELETE FROM scheduled_items WHERE scope = ?1 AND due_at = ?2 AND item_id = ?3",
                )?
                .execute(params![scope, due_at, id])
            })
            .await
            .ctx("schedule.remove", item_id)?;
        Ok(())
    }
}
