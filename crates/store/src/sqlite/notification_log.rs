//! [`NotificationLog`](crate::NotificationLog) on SQLite: the `notification_status` table.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Context, Db};
use crate::StoreError;
use crate::notification_log::{DeliveryKey, NotificationLog, SENT, StatusEntry};

pub(crate) struct SqliteNotificationLog(pub(crate) Db);

/// The newest `at` wins when entries arrive out of order, column by column
/// (the right-hand sides read the stored row); `sent_at` is set by the first
/// `sent` entry and kept by every later one.
fn upsert(c: &Connection, e: &StatusEntry) -> rusqlite::Result<usize> {
    c.prepare_cached(
        "INSERT INTO notification_status
         (notification_id, channel, target, user_id, state, detail, attempt, at, sent_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, CASE WHEN ?5 = ?9 THEN ?8 END)
         ON CONFLICT (notification_id, channel, target) DO UPDATE SET
            user_id = CASE WHEN excluded.at >= at THEN excluded.user_id ELSE user_id END,
            state = CASE WHEN excluded.at >= at THEN excluded.state ELSE state END,
            detail = CASE WHEN excluded.at >= at THEN excluded.detail ELSE detail END,
            attempt = CASE WHEN excluded.at >= at THEN excluded.attempt ELSE attempt END,
            at = max(excluded.at, at),
            sent_at = coalesce(sent_at, excluded.sent_at)",
    )?
    .execute(params![
        e.notification_id,
        e.channel,
        e.target,
        e.user_id,
        e.state,
        e.detail,
        e.attempt,
        e.at,
        SENT
    ])
}

#[async_trait::async_trait]
impl NotificationLog for SqliteNotificationLog {
    async fn record(&self, entry: &StatusEntry) -> Result<(), StoreError> {
        let e = entry.clone();
        self.0
            .call(move |c| upsert(c, &e))
            .await
            .ctx("notification_log.record", &entry.notification_id)?;
        Ok(())
    }

    async fn record_many(&self, entries: &[StatusEntry]) -> Result<(), StoreError> {
        let owned = entries.to_vec();
        self.0
            .call(move |c| {
                for e in &owned {
                    upsert(c, e)?;
                }
                Ok(())
            })
            .await
            .ctx(
                "notification_log.record_many",
                &format!("{} entries", entries.len()),
            )
    }

    async fn sent_many(&self, keys: &[DeliveryKey]) -> Result<Vec<bool>, StoreError> {
        let owned = keys.to_vec();
        self.0
            .call(move |c| {
                let mut select = c.prepare_cached(
                    "SELECT sent_at IS NOT NULL OR state = ?4 FROM notification_status
                     WHERE notification_id = ?1 AND channel = ?2 AND target = ?3",
                )?;
                owned
                    .iter()
                    .map(|k| {
                        select
                            .query_row(params![k.notification_id, k.channel, k.target, SENT], |r| {
                                r.get::<_, bool>(0)
                            })
                            .optional()
                            .map(|sent| sent.unwrap_or(false))
                    })
                    .collect()
            })
            .await
            .ctx(
                "notification_log.sent_many",
                &format!("{} keys", keys.len()),
            )
    }

    async fn get(&self, notification_id: &str) -> Result<Vec<StatusEntry>, StoreError> {
        let id = notification_id.to_owned();
        self.0
            .call(move |c| {
                c.prepare_cached(
                    "SELECT notification_id, user_id, channel, target, state, detail, attempt, at
                     FROM notification_status WHERE notification_id = ?1 ORDER BY channel, target",
                )?
                .query_map([&id], |r| {
                    Ok(StatusEntry {
                        notification_id: r.get(0)?,
                        user_id: r.get(1)?,
                        channel: r.get(2)?,
                        target: r.get(3)?,
                        state: r.get(4)?,
                        detail: r.get(5)?,
                        attempt: r.get(6)?,
                        at: r.get(7)?,
                    })
                })?
                .collect()
            })
            .await
            .ctx("notification_log.get", notification_id)
    }
}
