//! [`NotificationLog`](crate::NotificationLog) on CQL: the `notification_status` table.

use scylla::statement::prepared::PreparedStatement;

use super::{Context, Cql, from_int, to_int};
use crate::notification_log::{NotificationLog, StatusEntry};
use crate::{Millis, StoreError};

pub(crate) struct ScyllaNotificationLog {
    cql: Cql,
    record: PreparedStatement,
    get: PreparedStatement,
}

/// (channel, target, user_id, state, detail, attempt, at)
type StatusRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<Millis>,
);

impl ScyllaNotificationLog {
    pub(crate) async fn prepare(cql: &Cql) -> Result<Self, StoreError> {
        Ok(ScyllaNotificationLog {
            // The write timestamp is the entry's own time (in microseconds),
            // so the newest `at` wins however late an older entry arrives.
            record: cql
                .prepare(
                    "INSERT INTO notification_status
                     (notification_id, channel, target, user_id, state, detail, attempt, at)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
                )
                .await?,
            get: cql
                .prepare(
                    "SELECT channel, target, user_id, state, detail, attempt, at
                     FROM notification_status WHERE notification_id = ?",
                )
                .await?,
            cql: cql.clone(),
        })
    }
}

#[async_trait::async_trait]
impl NotificationLog for ScyllaNotificationLog {
    async fn record(&self, e: &StatusEntry) -> Result<(), StoreError> {
        const OP: &str = "notification_log.record";
        let values = (
            &e.notification_id,
            &e.channel,
            &e.target,
            &e.user_id,
            &e.state,
            &e.detail,
            to_int(OP, &e.notification_id, e.attempt)?,
            e.at,
            e.at.saturating_mul(1000),
        );
        self.cql
            .execute(&self.record, values)
            .await
            .ctx(OP, &e.notification_id)?;
        Ok(())
    }

    async fn record_many(&self, entries: &[StatusEntry]) -> Result<(), StoreError> {
        self.cql.concurrently(entries, |e| self.record(e)).await?;
        Ok(())
    }

    async fn get(&self, notification_id: &str) -> Result<Vec<StatusEntry>, StoreError> {
        const OP: &str = "notification_log.get";
        let rows = self
            .cql
            .all_rows::<StatusRow>(&self.get, (notification_id,))
            .await
            .ctx(OP, notification_id)?;
        rows.into_iter()
            .map(|(channel, target, user_id, state, detail, attempt, at)| {
                Ok(StatusEntry {
                    notification_id: notification_id.to_owned(),
                    user_id: user_id.unwrap_or_default(),
                    channel,
                    target,
                    state: state.unwrap_or_default(),
                    detail,
                    attempt: from_int(OP, notification_id, attempt.unwrap_or_default())?,
                    at: at.unwrap_or_default(),
                })
            })
            .collect()
    }
}
