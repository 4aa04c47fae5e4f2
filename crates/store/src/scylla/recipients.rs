//! [`RecipientStore`](crate::RecipientStore) on CQL: one partition read per
//! user.
//!
//! Migration 0010 adds static columns to `devices` holding a copy of the
//! user's `users` row and `preferences` partition, so that one SELECT of
//! the user's `devices` partition answers the profile, the devices and the
//! preferences (three statements before). `users` and `preferences` stay
//! the source of truth:
//!
//! - every write to them also writes the copy, in one logged batch
//!   ([`SourceWrite`]): both get the same write time and land together;
//! - migration 0011 fills the copy of what was written before 0010
//!   ([`fill`]), each cell at its source cell's write time, so a newer
//!   write through the copy is never overwritten by the fill;
//! - the copy is read only once 0011 is recorded; before that, and on a
//!   store without the copy, the three reads answer ([`SeparateReads`]).
//!
//! A process of an earlier release writing contacts or preferences while
//! 0011 fills misses the copy; `tidings migrate --refill-recipients` fills
//! again (docs/operations.md, upgrades).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;

use super::contacts::{device_from_row, user_from_row};
use super::{Context, Cql, Failure, counted_batch};
use crate::preferences::category_from_key;
use crate::recipients::{Recipient, RecipientStore, SeparateReads};
use crate::{Millis, Preference, StoreError};

/// The migration that adds the copy's columns: from it on, writes keep the
/// copy.
pub(super) const COPY_COLUMNS: u32 = 10;
/// The migration that fills the copy: from it on, reads use it.
pub(super) const COPY_FILLED: u32 = 11;

/// The copy's write statements, for the aggregates whose writes it follows.
pub(super) struct CopyWrites {
    pub profile: PreparedStatement,
    pub email: PreparedStatement,
    pub phone: PreparedStatement,
    pub preference: PreparedStatement,
}

impl CopyWrites {
    pub(super) async fn prepare(cql: &Cql) -> Result<Self, StoreError> {
        Ok(CopyWrites {
            profile: cql
                .prepare(
                    "UPDATE devices SET user_display_name = ?, user_avatar_url = ?, user_locale = ?,
                     user_email = ?, user_phone = ?, user_updated_at = ? WHERE user_id = ?",
                )
                .await?,
            email: cql
                .prepare("UPDATE devices SET user_email = ?, user_updated_at = ? WHERE user_id = ?")
                .await?,
            phone: cql
                .prepare("UPDATE devices SET user_phone = ?, user_updated_at = ? WHERE user_id = ?")
                .await?,
            preference: cql
                .prepare("UPDATE devices SET user_preferences[?] = ? WHERE user_id = ?")
                .await?,
        })
    }
}

/// A write to `users` or `preferences`: alone on a store without the copy
/// (before migration 0010), else together with its copy in one logged
/// batch.
pub(super) enum SourceWrite {
    Alone(PreparedStatement),
    WithCopy(Batch),
}

impl SourceWrite {
    pub(super) fn new(
        source: PreparedStatement,
        copy: Option<&PreparedStatement>,
        table: &str,
    ) -> Self {
        match copy {
            None => SourceWrite::Alone(source),
            Some(copy) => {
                let mut batch = counted_batch(BatchType::Logged, table);
                batch.append_statement(source);
                batch.append_statement(copy.clone());
                batch.set_is_idempotent(true);
                SourceWrite::WithCopy(batch)
            }
        }
    }

    pub(super) async fn run(
        &self,
        cql: &Cql,
        source: impl SerializeRow,
        copy: impl SerializeRow,
    ) -> Result<(), Failure> {
        match self {
            SourceWrite::Alone(statement) => cql.execute(statement, source).await.map(drop),
            SourceWrite::WithCopy(batch) => {
                cql.session.batch(batch, (source, copy)).await?;
                Ok(())
            }
        }
    }
}

/// A row of a user's `devices` partition with the copy's static columns.
type CopyRow = (
    Option<String>,
    Option<String>,
    Option<Millis>,
    Option<Millis>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<Millis>,
    Option<BTreeMap<(String, String), (bool, Millis)>>,
);

enum Reads {
    /// The copy is filled: one partition read per user.
    OnePartition(PreparedStatement),
    /// No copy yet (migrations 0010 and 0011 not both recorded).
    Separate(SeparateReads),
}

pub(crate) struct ScyllaRecipients {
    cql: Cql,
    reads: Reads,
}

impl ScyllaRecipients {
    /// With `filled` (migration 0011 recorded) the copy is read; else the
    /// aggregates are.
    pub(super) async fn prepare(
        cql: &Cql,
        filled: bool,
        separate: SeparateReads,
    ) -> Result<Self, StoreError> {
        let reads = if filled {
            Reads::OnePartition(
                cql.prepare(
                    "SELECT device_token, platform, registered_at, invalidated_at,
                     user_display_name, user_avatar_url, user_locale, user_email, user_phone,
                     user_updated_at, user_preferences FROM devices WHERE user_id = ?",
                )
                .await?,
            )
        } else {
            Reads::Separate(separate)
        };
        Ok(ScyllaRecipients {
            cql: cql.clone(),
            reads,
        })
    }

    async fn recipient(
        &self,
        read: &PreparedStatement,
        user_id: &str,
    ) -> Result<Recipient, StoreError> {
        const OP: &str = "recipients.recipients_many";
        let rows: Vec<CopyRow> = self.cql.rows(read, (user_id,)).await.ctx(OP, user_id)?;
        let mut recipient = Recipient::default();
        for (i, row) in rows.into_iter().enumerate() {
            let (token, platform, registered_at, invalidated_at) = (row.0, row.1, row.2, row.3);
            if i == 0 {
                // Static columns repeat on every row of the partition.
                let (name, avatar, locale, email, phone, updated_at) =
                    (row.4, row.5, row.6, row.7, row.8, row.9);
                if updated_at.is_some() {
                    recipient.user = Some(user_from_row((
                        user_id.to_owned(),
                        name,
                        avatar,
                        locale,
                        email,
                        phone,
                        updated_at,
                    )));
                }
                recipient.preferences = row
                    .10
                    .unwrap_or_default()
                    .into_iter()
                    .map(|((category, channel), (opt_in, updated_at))| Preference {
                        user_id: user_id.to_owned(),
                        channel,
                        category: category_from_key(category),
                        opt_in,
                        updated_at,
                    })
                    .collect();
            }
            let device =
                device_from_row(OP, user_id, token, platform, registered_at, invalidated_at)?;
            if let Some(device) = device.filter(|d| d.is_live()) {
                recipient.devices.push(device);
            }
        }
        Ok(recipient)
    }
}

#[async_trait::async_trait]
impl RecipientStore for ScyllaRecipients {
    async fn recipients_many(
        &self,
        user_ids: &[String],
    ) -> Result<HashMap<String, Recipient>, StoreError> {
        let read = match &self.reads {
            Reads::Separate(separate) => return separate.recipients_many(user_ids).await,
            Reads::OnePartition(read) => read,
        };
        let ids: BTreeSet<&String> = user_ids.iter().collect();
        let recipients = self
            .cql
            .concurrently(ids, |id| async move {
                Ok::<_, StoreError>((id, self.recipient(read, id).await?))
            })
            .await?;
        Ok(recipients
            .into_iter()
            .filter(|(_, recipient)| !recipient.is_empty())
            .map(|(id, recipient)| (id.clone(), recipient))
            .collect())
    }
}

/// How often a long fill renews the migration lease and logs its progress.
const FILL_RENEWAL: Duration = Duration::from_secs(20);

/// Copies every `users` cell and `preferences` row into the copy, each at
/// its source's write time (a cell written through the copy since then
/// keeps its newer value), and records the counts in
/// `recipient_copy_fills`. Holding the migration lease `lease`, renewed on
/// the way. Safe to run again.
pub(super) async fn fill(cql: &Cql, lease: &str) -> Result<(), StoreError> {
    fill_users(cql, lease).await?;
    fill_preferences(cql, lease).await
}

/// A fill's rows: their copies in flight (at most the store's concurrency),
/// how many were read, the lease renewed on the way.
struct Progress<'a> {
    cql: &'a Cql,
    lease: &'a str,
    part: &'static str,
    rows: u64,
    renewed: Instant,
    copies: FuturesUnordered<BoxFuture<'a, Result<(), StoreError>>>,
}

impl<'a> Progress<'a> {
    fn new(cql: &'a Cql, lease: &'a str, part: &'static str) -> Self {
        Progress {
            cql,
            lease,
            part,
            rows: 0,
            renewed: Instant::now(),
            copies: FuturesUnordered::new(),
        }
    }

    /// One row read, with its copy's writes (none for a row with nothing
    /// to copy).
    async fn row(
        &mut self,
        copy: Option<BoxFuture<'a, Result<(), StoreError>>>,
    ) -> Result<(), StoreError> {
        self.copies.extend(copy);
        if self.copies.len() >= self.cql.concurrency {
            self.copies.next().await.transpose()?;
        }
        self.rows += 1;
        if self.renewed.elapsed() >= FILL_RENEWAL {
            self.cql.renew_lease(self.lease).await?;
            self.renewed = Instant::now();
            tracing::info!(
                part = self.part,
                rows = self.rows,
                "filling the recipient copy"
            );
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), StoreError> {
        while let Some(done) = self.copies.next().await {
            done?;
        }
        let record = self
            .cql
            .prepare(
                "INSERT INTO recipient_copy_fills (part, rows_copied, filled_at) VALUES (?, ?, ?)",
            )
            .await?;
        let rows = i64::try_from(self.rows).unwrap_or(i64::MAX);
        self.cql
            .execute(
                &record,
                (self.part, rows, CqlTimestamp(crate::now_millis())),
            )
            .await
            .ctx("recipients.fill", self.part)?;
        tracing::info!(part = self.part, rows = self.rows, "recipient copy filled");
        Ok(())
    }
}

/// `users` columns and their copies, in the order of [`UsersCells`].
const PROFILE_COPIES: [(&str, &str); 5] = [
    ("display_name", "user_display_name"),
    ("avatar_url", "user_avatar_url"),
    ("locale", "user_locale"),
    ("email", "user_email"),
    ("phone", "user_phone"),
];

/// A `users` row as (value, write time) per column; `updated_at` last.
type UsersCells = (
    String,
    [(Option<String>, Option<i64>); 5],
    (Option<Millis>, Option<i64>),
);

async fn fill_users(cql: &Cql, lease: &str) -> Result<(), StoreError> {
    const OP: &str = "recipients.fill_users";
    let mut text_copies = Vec::new();
    for (_, copy) in PROFILE_COPIES {
        text_copies.push(
            cql.prepare(&format!(
                "UPDATE devices USING TIMESTAMP ? SET {copy} = ? WHERE user_id = ?"
            ))
            .await?,
        );
    }
    let updated_copy = cql
        .prepare("UPDATE devices USING TIMESTAMP ? SET user_updated_at = ? WHERE user_id = ?")
        .await?;
    let columns: Vec<String> = PROFILE_COPIES
        .iter()
        .map(|(column, _)| format!("{column}, WRITETIME({column})"))
        .collect();
    let select = cql
        .prepare(&format!(
            "SELECT user_id, {}, updated_at, WRITETIME(updated_at) FROM users",
            columns.join(", ")
        ))
        .await?;
    let mut rows = cql
        .session
        .execute_iter(select, ())
        .await
        .ctx(OP, "")?
        .rows_stream::<UsersRow>()
        .ctx(OP, "")?;
    let mut progress = Progress::new(cql, lease, "users");
    while let Some(row) = rows.next().await {
        let (user_id, cells, updated) = cells_of(row.ctx(OP, "")?);
        let text: Vec<(&PreparedStatement, String, i64)> = text_copies
            .iter()
            .zip(cells)
            .filter_map(|(statement, cell)| match cell {
                (Some(value), Some(written)) => Some((statement, value, written)),
                _ => None,
            })
            .collect();
        let updated = match updated {
            (Some(value), Some(written)) => Some((value, written)),
            _ => None,
        };
        let updated_copy = &updated_copy;
        let copy = async move {
            for (statement, value, written) in text {
                cql.execute(statement, (written, value, user_id.as_str()))
                    .await
                    .ctx(OP, &user_id)?;
            }
            if let Some((value, written)) = updated {
                cql.execute(updated_copy, (written, value, user_id.as_str()))
                    .await
                    .ctx(OP, &user_id)?;
            }
            Ok(())
        };
        progress.row(Some(Box::pin(copy))).await?;
    }
    progress.finish().await
}

/// The SELECT of [`fill_users`] as the driver reads it.
type UsersRow = (
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<Millis>,
    Option<i64>,
);

fn cells_of(row: UsersRow) -> UsersCells {
    (
        row.0,
        [
            (row.1, row.2),
            (row.3, row.4),
            (row.5, row.6),
            (row.7, row.8),
            (row.9, row.10),
        ],
        (row.11, row.12),
    )
}

async fn fill_preferences(cql: &Cql, lease: &str) -> Result<(), StoreError> {
    const OP: &str = "recipients.fill_preferences";
    let copy = cql
        .prepare("UPDATE devices USING TIMESTAMP ? SET user_preferences[?] = ? WHERE user_id = ?")
        .await?;
    let select = cql
        .prepare(
            "SELECT user_id, category, channel, opt_in, updated_at, WRITETIME(opt_in) FROM preferences",
        )
        .await?;
    let mut rows = cql
        .session
        .execute_iter(select, ())
        .await
        .ctx(OP, "")?
        .rows_stream::<(
            String,
            String,
            String,
            Option<bool>,
            Option<Millis>,
            Option<i64>,
        )>()
        .ctx(OP, "")?;
    let mut progress = Progress::new(cql, lease, "preferences");
    while let Some(row) = rows.next().await {
        let (user_id, category, channel, opt_in, updated_at, written) = row.ctx(OP, "")?;
        let copy = (opt_in.zip(written)).map(|(opt_in, written)| {
            let copy = &copy;
            let entry = (
                (category, channel),
                (opt_in, updated_at.unwrap_or_default()),
            );
            Box::pin(async move {
                cql.execute(copy, (written, entry.0, entry.1, user_id.as_str()))
                    .await
                    .ctx(OP, &user_id)
                    .map(drop)
            }) as BoxFuture<'_, Result<(), StoreError>>
        });
        progress.row(copy).await?;
    }
    progress.finish().await
}
