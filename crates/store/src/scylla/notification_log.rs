//! [`NotificationLog`](crate::NotificationLog) on CQL: the `notification_status` table.

use scylla::statement::prepared::PreparedStatement;

use super::{Context, Cql, from_int, to_int};
use crate::notification_log::{DeliveryKey, NotificationLog, SENT, StatusEntry};
use crate::{Millis, StoreError};

pub(crate) struct ScyllaNotificationLog {
    cql: Cql,
    record: PreparedStatement,
    get: PreparedStatement,
    /// Prepared at first use: they name `sent_at`, which an unmigrated
    /// store lacks, and a process that connects without migrating must
    /// still start (and say what to migrate).
    sent_marks: tokio::sync::OnceCell<SentStatements>,
}

struct SentStatements {
    /// `record` with `sent_at` too; no other statement writes that column,
    /// so later entries (by their own timestamps) never clear it.
    record_sent: PreparedStatement,
    sent: PreparedStatement,
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
            sent_marks: tokio::sync::OnceCell::new(),
            cql: cql.clone(),
        })
    }

    async fn sent_statements(&self) -> Result<&SentStatements, StoreError> {
        self.sent_marks
            .get_or_try_init(|| async {
                Ok(SentStatements {
                    record_sent: self
                        .cql
                        .prepare(
                            "INSERT INTO notification_status
                             (notification_id, channel, target, user_id, state, detail, attempt, at, sent_at)
                             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
                        )
                        .await?,
                    sent: self
                        .cql
                        .prepare(
                            "SELECT state, sent_at FROM notification_status
                             WHERE notification_id = ? AND channel = ? AND target = ?",
                        )
                        .await?,
                })
            })
            .await
    }
}

#[async_trait::async_trait]
impl NotificationLog for ScyllaNotificationLog {
    async fn record(&self, e: &StatusEntry) -> Result<(), StoreError> {
        const OP: &str = "notification_log.record";
        let attempt = to_int(OP, &e.notification_id, e.attempt)?;
        let micros = e.at.saturating_mul(1000);
        let (key, user, state, detail) = (
            (&e.notification_id, &e.channel, &e.target),
            &e.user_id,
            &e.state,
            &e.detail,
        );
        if e.state == SENT {
            let statement = &self.sent_statements().await?.record_sent;
            let values = (
                key.0, key.1, key.2, user, state, detail, attempt, e.at, e.at, micros,
            );
            self.cql.execute(statement, values).await
        } else {
            let values = (
                key.0, key.1, key.2, user, state, detail, attempt, e.at, micros,
            );
            self.cql.execute(&self.record, values).await
        }
        .ctx(OP, &e.notification_id)?;
        Ok(())
    }

    async fn record_many(&self, entries: &[StatusEntry]) -> Result<(), StoreError> {
        self.cql.concurrently(entries, |e| self.record(e)).await?;
        Ok(())
    }

    async fn sent_many(&self, keys: &[DeliveryKey]) -> Result<Vec<bool>, StoreError> {
        const OP: &str = "notification_log.sent_many";
        let statement = &self.sent_statements().await?.sent;
        self.cql
            .concurrently(keys, |k| async move {
                let row = self
                    .cql
                    .maybe_row::<(Option<String>, Option<Millis>)>(
                        statement,
                        (&k.notification_id, &k.channel, &k.target),
                    )
                    .await
                    .ctx(OP, &k.notification_id)?;
                Ok(row.is_some_and(|(state, sent_at)| {
                    sent_at.is_some() || state.as_deref() == Some(SENT)
                }))
            })
            .await
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
