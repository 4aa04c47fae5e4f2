//! [`ScheduleStore`](crate::ScheduleStore) on SQLite: the `scheduled` table.

use rusqlite::params;

use super::{Context, Db};
use crate::schedule::{ScheduleStore, ScheduledItem};
use crate::{Millis, StoreError};

pub(crate) struct SqliteSchedule(pub(crate) Db);

#[async_trait::async_trait]
impl ScheduleStore for SqliteSchedule {
    async fn put(&self, item: &ScheduledItem) -> Result<(), StoreError> {
        let i = item.clone();
        self.0
            .call(move |c| {
                c.prepare_cached("INSERT OR REPLACE INTO scheduled (item_id, due_at, payload) VALUES (?1, ?2, ?3)")?
                    .execute(params![i.item_id, i.due_at, i.payload])
            })
            .await
            .ctx("schedule.put", &item.item_id)?;
        Ok(())
    }

    async fn due(&self, now: Millis, limit: u32) -> Result<Vec<ScheduledItem>, StoreError> {
        self.0
            .call(move |c| {
                c.prepare_cached(
                    "SELECT item_id, due_at, payload FROM scheduled WHERE due_at <= ?1
                     ORDER BY due_at, item_id LIMIT ?2",
                )?
                .query_map(params![now, limit], |r| {
                    Ok(ScheduledItem {
                        item_id: r.get(0)?,
                        due_at: r.get(1)?,
                        payload: r.get(2)?,
                    })
                })?
                .collect()
            })
            .await
            .ctx("schedule.due", &now.to_string())
    }

    async fn remove(&self, item_id: &str, due_at: Millis) -> Result<(), StoreError> {
        let id = item_id.to_owned();
        self.0
            .call(move |c| {
                c.prepare_cached("DELETE FROM scheduled WHERE due_at = ?1 AND item_id = ?2")?
                    .execute(params![due_at, id])
            })
            .await
            .ctx("schedule.remove", item_id)?;
        Ok(())
    }
}
