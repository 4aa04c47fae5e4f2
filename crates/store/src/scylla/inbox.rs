//! [`InboxStore`](crate::InboxStore) on CQL: the `inbox_items`,
//! `inbox_index` and `inbox_seen` tables, one partition per user.
//!
//! An item's TTL is its `expires_at`, compared with the clock on every read
//! (to the millisecond, as on SQLite). Its rows are written `USING TTL` a
//! little longer ([`TTL_MARGIN`]): Cassandra's TTL counts whole seconds
//! from the second of the write, so it only collects rows already expired.
//!
//! No lightweight transactions: every call works on one user's partition,
//! and where two calls on it overlap, the read-then-write steps stay safe. Two puts (the sender's concurrency, a retry tier) each write their
//! item before reading the index for the cap, so at least one of them sees
//! both, and each deletes only items older than the cap-th newest it saw,
//! never one the cap keeps. Two puts of the same notification at once may
//! both answer "new"; they write the same row. Two devices marking the same
//! item at once both write, and one of their marks stands. The "seen" mark
//! needs no read at all (see `mark_seen`).
//!
//! A partition holds at most the cap's rows plus those expired in the last
//! seconds, so whole-partition reads (counts, read-all, the cap) are
//! bounded; pages filter in memory while they walk it.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::TryStreamExt;
use scylla::DeserializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::MaybeUnset;

use super::dedupe::ttl_secs;
use super::{Context, Cql, counted_batch, statement_label};
use crate::inbox::{InboxAction, InboxCounts, InboxFilter, InboxItem, InboxQuery, InboxStore};
use crate::{Millis, StoreError, now_millis};

/// How much longer than its `expires_at` an item's rows live in CQL.
const TTL_MARGIN: Duration = Duration::from_secs(2);

/// Rows per batch when many rows of one partition change at once (the cap
/// lowered, read-all): well under Cassandra's batch size warning (5 KiB).
const BATCH_ROWS: usize = 32;

/// Page sizes of `list`: a page of a filtered view may have to walk past
/// many items the filter drops.
const MIN_PAGE: u32 = 32;
const MAX_PAGE: u32 = 1_000;

pub(crate) struct ScyllaInbox {
    cql: Cql,
    /// Prepared at first use: a process connecting without migrating to a
    /// store that lacks migration 0005 still starts (as for any pending
    /// migration, only the calls on the missing tables fail).
    statements: tokio::sync::OnceCell<Statements>,
}

struct Statements {
    /// Unlogged: both rows are in the user's partition (same key, two
    /// tables), which each replica applies as one mutation.
    put: Batch,
    find: PreparedStatement,
    index: PreparedStatement,
    page: PreparedStatement,
    item: PreparedStatement,
    state: PreparedStatement,
    states: PreparedStatement,
    set_read: PreparedStatement,
    clear_read: PreparedStatement,
    set_archived: PreparedStatement,
    clear_archived: PreparedStatement,
    delete_item: PreparedStatement,
    delete_index: PreparedStatement,
    seen: PreparedStatement,
    mark_seen: PreparedStatement,
}

/// The columns of an item, as `page` and `item` select them.
const ITEM_COLUMNS: &str = "notification_id, created_at, category, title, body, action_url, \
                            avatar_url, data, read_at, archived_at, expires_at, template_name";

#[derive(DeserializeRow)]
struct ItemRow {
    notification_id: String,
    created_at: Millis,
    category: Option<String>,
    title: Option<String>,
    body: Option<String>,
    action_url: Option<String>,
    avatar_url: Option<String>,
    data: Option<BTreeMap<String, String>>,
    read_at: Option<Millis>,
    archived_at: Option<Millis>,
    expires_at: Option<Millis>,
    template_name: Option<String>,
}

impl ItemRow {
    fn into_item(self, user_id: &str) -> InboxItem {
        InboxItem {
            user_id: user_id.to_owned(),
            notification_id: self.notification_id,
            created_at: self.created_at,
            category: self.category,
            template_name: self.template_name,
            title: self.title,
            body: self.body,
            action_url: self.action_url,
            avatar_url: self.avatar_url,
            // CQL keeps an empty map as null.
            data: self.data.unwrap_or_default(),
            read_at: self.read_at,
            archived_at: self.archived_at,
        }
    }
}

/// An item's state: what counts, read-all and marks need.
#[derive(DeserializeRow)]
struct StateRow {
    created_at: Millis,
    notification_id: String,
    read_at: Option<Millis>,
    archived_at: Option<Millis>,
    expires_at: Option<Millis>,
}

/// An `inbox_index` row: where the item's row is.
#[derive(DeserializeRow)]
struct IndexRow {
    notification_id: String,
    created_at: Millis,
    expires_at: Option<Millis>,
}

/// Whether a row is still an item at `now`. A row without `expires_at` is a
/// mark that outlived its item by a moment (written just as it expired).
fn live(expires_at: Option<Millis>, now: Millis) -> bool {
    expires_at.is_some_and(|at| at > now)
}

/// When an item written at `now` with `ttl` expires.
fn expires_at(now: Millis, ttl: Duration) -> Millis {
    now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

/// The CQL TTL of a write to an item that expires at `expires_at`.
fn row_ttl(expires_at: Millis, now: Millis) -> i32 {
    let left = Duration::from_millis(u64::try_from(expires_at.saturating_sub(now)).unwrap_or(0));
    ttl_secs(left.saturating_add(TTL_MARGIN))
}

fn admits(filter: InboxFilter, read_at: Option<Millis>, archived_at: Option<Millis>) -> bool {
    match filter {
        InboxFilter::Inbox => archived_at.is_none(),
        InboxFilter::Unread => archived_at.is_none() && read_at.is_none(),
        InboxFilter::Archived => archived_at.is_some(),
        InboxFilter::All => true,
    }
}

/// An optional column of an inserted row: unset when absent, since a null
/// writes a tombstone; null only when the row replaces an expired one whose
/// value must not show through.
fn column<T>(value: Option<T>, replacing: bool) -> MaybeUnset<Option<T>> {
    match value {
        Some(v) => MaybeUnset::Set(Some(v)),
        None if replacing => MaybeUnset::Set(None),
        None => MaybeUnset::Unset,
    }
}

/// An unlogged batch of `rows` runs of one statement (rows of one
/// partition).
fn batch_of(statement: &PreparedStatement, rows: usize) -> Batch {
    let label = statement_label(statement.get_statement());
    let mut batch = counted_batch(BatchType::Unlogged, &label);
    for _ in 0..rows {
        batch.append_statement(statement.clone());
    }
    batch.set_is_idempotent(true);
    batch
}

impl Statements {
    async fn prepare(cql: &Cql) -> Result<Self, StoreError> {
        let mut put = counted_batch(BatchType::Unlogged, "inbox_items");
        put.append_statement(
            cql.prepare(
                "INSERT INTO inbox_items (user_id, created_at, notification_id, category, title, body,
                                          action_url, avatar_url, data, read_at, archived_at, expires_at,
                                          template_name)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
            )
            .await?,
        );
        put.append_statement(
            cql.prepare(
                "INSERT INTO inbox_index (user_id, notification_id, created_at, expires_at)
                 VALUES (?, ?, ?, ?) USING TTL ?",
            )
            .await?,
        );
        put.set_is_idempotent(true);
        let row_key = "WHERE user_id = ? AND created_at = ? AND notification_id = ?";
        Ok(Statements {
            put,
            find: cql
                .prepare(
                    "SELECT notification_id, created_at, expires_at FROM inbox_index
                     WHERE user_id = ? AND notification_id = ?",
                )
                .await?,
            index: cql
                .prepare("SELECT notification_id, created_at, expires_at FROM inbox_index WHERE user_id = ?")
                .await?,
            page: cql
                .prepare(&format!(
                    "SELECT {ITEM_COLUMNS} FROM inbox_items
                     WHERE user_id = ? AND (created_at, notification_id) < (?, ?)"
                ))
                .await?,
            item: cql
                .prepare(&format!("SELECT {ITEM_COLUMNS} FROM inbox_items {row_key}"))
                .await?,
            state: cql
                .prepare(&format!(
                    "SELECT created_at, notification_id, read_at, archived_at, expires_at
                     FROM inbox_items {row_key}"
                ))
                .await?,
            states: cql
                .prepare(
                    "SELECT created_at, notification_id, read_at, archived_at, expires_at
                     FROM inbox_items WHERE user_id = ?",
                )
                .await?,
            set_read: cql
                .prepare(&format!("UPDATE inbox_items USING TTL ? SET read_at = ? {row_key}"))
                .await?,
            clear_read: cql
                .prepare(&format!("DELETE read_at FROM inbox_items {row_key}"))
                .await?,
            set_archived: cql
                .prepare(&format!("UPDATE inbox_items USING TTL ? SET archived_at = ? {row_key}"))
                .await?,
            clear_archived: cql
                .prepare(&format!("DELETE archived_at FROM inbox_items {row_key}"))
                .await?,
            delete_item: cql
                .prepare(&format!("DELETE FROM inbox_items {row_key}"))
                .await?,
            delete_index: cql
                .prepare("DELETE FROM inbox_index WHERE user_id = ? AND notification_id = ?")
                .await?,
            seen: cql
                .prepare("SELECT seen_at FROM inbox_seen WHERE user_id = ?")
                .await?,
            mark_seen: cql
                .prepare("INSERT INTO inbox_seen (user_id, seen_at) VALUES (?, ?) USING TIMESTAMP ?")
                .await?,
        })
    }
}

impl ScyllaInbox {
    pub(crate) async fn prepare(cql: &Cql) -> Result<Self, StoreError> {
        Ok(ScyllaInbox {
            cql: cql.clone(),
            statements: tokio::sync::OnceCell::new(),
        })
    }

    async fn statements(&self) -> Result<&Statements, StoreError> {
        self.statements
            .get_or_try_init(|| Statements::prepare(&self.cql))
            .await
    }

    /// The live item's row key (its `created_at`) and expiry, if the user
    /// has that item.
    async fn find(
        &self,
        op: &'static str,
        user_id: &str,
        notification_id: &str,
        now: Millis,
    ) -> Result<Option<(Millis, Millis)>, StoreError> {
        let s = self.statements().await?;
        let row = self
            .cql
            .maybe_row::<IndexRow>(&s.find, (user_id, notification_id))
            .await
            .ctx(op, &format!("{user_id}/{notification_id}"))?;
        Ok(row.and_then(|r| {
            r.expires_at
                .filter(|&at| at > now)
                .map(|at| (r.created_at, at))
        }))
    }

    /// The state of every item of the user's partition, expired ones
    /// included.
    async fn states(&self, op: &'static str, user_id: &str) -> Result<Vec<StateRow>, StoreError> {
        let s = self.statements().await?;
        self.cql
            .all_rows::<StateRow>(&s.states, (user_id,))
            .await
            .ctx(op, user_id)
    }

    /// Deletes the user's live items past the newest `cap`. The index is
    /// read, not the items: its rows are narrow.
    async fn trim(&self, user_id: &str, cap: u32) -> Result<(), StoreError> {
        const OP: &str = "inbox.put";
        let s = self.statements().await?;
        let now = now_millis();
        let mut kept: Vec<(Millis, String)> = self
            .cql
            .all_rows::<IndexRow>(&s.index, (user_id,))
            .await
            .ctx(OP, user_id)?
            .into_iter()
            .filter(|r| live(r.expires_at, now))
            .map(|r| (r.created_at, r.notification_id))
            .collect();
        let cap = usize::try_from(cap).unwrap_or(usize::MAX);
        if kept.len() <= cap {
            return Ok(());
        }
        kept.sort_unstable_by(|a, b| b.cmp(a));
        let dropped = kept.split_off(cap);
        for chunk in dropped.chunks(BATCH_ROWS) {
            // Items first: an index row left by a failure here still counts,
            // so the next trim deletes it.
            let items: Vec<_> = chunk.iter().map(|(at, id)| (user_id, *at, id)).collect();
            self.cql
                .session
                .batch(&batch_of(&s.delete_item, chunk.len()), items)
                .await
                .ctx(OP, user_id)?;
            let index: Vec<_> = chunk.iter().map(|(_, id)| (user_id, id)).collect();
            self.cql
                .session
                .batch(&batch_of(&s.delete_index, chunk.len()), index)
                .await
                .ctx(OP, user_id)?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl InboxStore for ScyllaInbox {
    async fn put(&self, item: &InboxItem, cap: u32, ttl: Duration) -> Result<bool, StoreError> {
        const OP: &str = "inbox.put";
        let s = self.statements().await?;
        let now = now_millis();
        let key = format!("{}/{}", item.user_id, item.notification_id);
        let existing = self
            .cql
            .maybe_row::<IndexRow>(&s.find, (&item.user_id, &item.notification_id))
            .await
            .ctx(OP, &key)?;
        // An expired row still there (within TTL_MARGIN) is replaced whole.
        let replacing = match existing {
            Some(row) if live(row.expires_at, now) => return Ok(false),
            Some(_) => true,
            None => false,
        };
        let expires_at = expires_at(now, ttl);
        let ttl = row_ttl(expires_at, now);
        let values = (
            (
                &item.user_id,
                item.created_at,
                &item.notification_id,
                column(item.category.as_deref(), replacing),
                column(item.title.as_deref(), replacing),
                column(item.body.as_deref(), replacing),
                column(item.action_url.as_deref(), replacing),
                column(item.avatar_url.as_deref(), replacing),
                &item.data,
                column(None::<Millis>, replacing),
                column(None::<Millis>, replacing),
                expires_at,
                column(item.template_name.as_deref(), replacing),
                ttl,
            ),
            (
                &item.user_id,
                &item.notification_id,
                item.created_at,
                expires_at,
                ttl,
            ),
        );
        self.cql.session.batch(&s.put, values).await.ctx(OP, &key)?;
        // The item is stored: a failed trim is left to the user's next put
        // rather than failing this one, whose retry would answer "not new".
        if let Err(e) = self.trim(&item.user_id, cap).await {
            tracing::warn!(user_id = %item.user_id, error = %e, "inbox cap not applied; the next put applies it");
        }
        Ok(true)
    }

    async fn list(&self, user_id: &str, query: &InboxQuery) -> Result<Vec<InboxItem>, StoreError> {
        const OP: &str = "inbox.list";
        let s = self.statements().await?;
        let limit = usize::try_from(query.limit).unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Without a cursor everything is older than the greatest time (as
        // on SQLite, an item at exactly Millis::MAX is never listed).
        let (before_at, before_id) = query.before.clone().unwrap_or((Millis::MAX, String::new()));
        let mut page = s.page.clone();
        page.set_page_size(query.limit.clamp(MIN_PAGE, MAX_PAGE) as i32);
        let pager = self
            .cql
            .session
            .execute_iter(page, (user_id, before_at, &before_id))
            .await
            .ctx(OP, user_id)?;
        let mut rows = pager.rows_stream::<ItemRow>().ctx(OP, user_id)?;
        let now = now_millis();
        let mut items = Vec::new();
        while items.len() < limit {
            let Some(row) = rows.try_next().await.ctx(OP, user_id)? else {
                break;
            };
            if live(row.expires_at, now)
                && admits(query.filter, row.read_at, row.archived_at)
                && query
                    .category
                    .as_ref()
                    .is_none_or(|c| row.category.as_ref() == Some(c))
            {
                items.push(row.into_item(user_id));
            }
        }
        Ok(items)
    }

    async fn get(
        &self,
        user_id: &str,
        notification_id: &str,
    ) -> Result<Option<InboxItem>, StoreError> {
        const OP: &str = "inbox.get";
        let s = self.statements().await?;
        let now = now_millis();
        let Some((created_at, _)) = self.find(OP, user_id, notification_id, now).await? else {
            return Ok(None);
        };
        let row = self
            .cql
            .maybe_row::<ItemRow>(&s.item, (user_id, created_at, notification_id))
            .await
            .ctx(OP, &format!("{user_id}/{notification_id}"))?;
        Ok(row
            .filter(|r| live(r.expires_at, now))
            .map(|r| r.into_item(user_id)))
    }

    async fn mark(
        &self,
        user_id: &str,
        notification_id: &str,
        action: InboxAction,
        at: Millis,
    ) -> Result<bool, StoreError> {
        const OP: &str = "inbox.mark";
        let s = self.statements().await?;
        let key = format!("{user_id}/{notification_id}");
        let now = now_millis();
        let Some((created_at, expires_at)) = self.find(OP, user_id, notification_id, now).await?
        else {
            return Ok(false);
        };
        let Some(state) = self
            .cql
            .maybe_row::<StateRow>(&s.state, (user_id, created_at, notification_id))
            .await
            .ctx(OP, &key)?
            .filter(|r| live(r.expires_at, now))
        else {
            // An index row whose item the cap just deleted.
            return Ok(false);
        };
        let row_key = (user_id, created_at, notification_id);
        let ttl = row_ttl(expires_at, now);
        // Only changes are written: a repeated read or archive keeps its
        // first time, and an undo of what is not set writes no tombstone.
        let written = match action {
            InboxAction::Read if state.read_at.is_none() => {
                let (u, c, n) = row_key;
                self.cql.execute(&s.set_read, (ttl, at, u, c, n)).await
            }
            InboxAction::Archive if state.archived_at.is_none() => {
                let (u, c, n) = row_key;
                self.cql.execute(&s.set_archived, (ttl, at, u, c, n)).await
            }
            InboxAction::Unread if state.read_at.is_some() => {
                self.cql.execute(&s.clear_read, row_key).await
            }
            InboxAction::Unarchive if state.archived_at.is_some() => {
                self.cql.execute(&s.clear_archived, row_key).await
            }
            _ => return Ok(true),
        };
        written.ctx(OP, &key)?;
        Ok(true)
    }

    async fn mark_all_read(&self, user_id: &str, at: Millis) -> Result<u32, StoreError> {
        const OP: &str = "inbox.mark_all_read";
        let s = self.statements().await?;
        let now = now_millis();
        let unread: Vec<StateRow> = self
            .states(OP, user_id)
            .await?
            .into_iter()
            .filter(|r| live(r.expires_at, now) && r.read_at.is_none() && r.archived_at.is_none())
            .collect();
        for chunk in unread.chunks(BATCH_ROWS) {
            let values: Vec<_> = chunk
                .iter()
                .map(|r| {
                    let ttl = row_ttl(r.expires_at.unwrap_or(now), now);
                    (ttl, at, user_id, r.created_at, r.notification_id.as_str())
                })
                .collect();
            self.cql
                .session
                .batch(&batch_of(&s.set_read, chunk.len()), values)
                .await
                .ctx(OP, user_id)?;
        }
        // At most the cap, itself a u32.
        Ok(u32::try_from(unread.len()).unwrap_or(u32::MAX))
    }

    /// The write's timestamp is the mark (in microseconds, as CQL
    /// timestamps are): of two marks written in any order, by any number of
    /// devices, the greater wins, with no read and no race. Nothing else
    /// writes `inbox_seen`.
    async fn mark_seen(&self, user_id: &str, at: Millis) -> Result<(), StoreError> {
        let s = self.statements().await?;
        self.cql
            .execute(&s.mark_seen, (user_id, at, at.saturating_mul(1_000)))
            .await
            .ctx("inbox.mark_seen", user_id)?;
        Ok(())
    }

    async fn counts(&self, user_id: &str) -> Result<InboxCounts, StoreError> {
        const OP: &str = "inbox.counts";
        let s = self.statements().await?;
        let (seen, states) = futures::try_join!(
            async {
                self.cql
                    .maybe_row::<(Option<Millis>,)>(&s.seen, (user_id,))
                    .await
                    .ctx(OP, user_id)
            },
            self.states(OP, user_id),
        )?;
        let seen_at = seen.and_then(|(at,)| at);
        let now = now_millis();
        let mut counts = InboxCounts::default();
        for r in states {
            if !live(r.expires_at, now) || r.archived_at.is_some() {
                continue;
            }
            counts.total += 1;
            counts.unread += u32::from(r.read_at.is_none());
            counts.unseen += u32::from(seen_at.is_none_or(|seen| r.created_at > seen));
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_outlive_their_expiry() {
        // 1.5 s left: 2 s rounded up, plus the margin.
        assert_eq!(row_ttl(2_500, 1_000), 4);
        // Expired or about to: still a TTL (0 would mean "never expires").
        assert_eq!(row_ttl(1_000, 5_000), 2);
        assert_eq!(expires_at(1_000, Duration::MAX), Millis::MAX);
    }

    #[test]
    fn filters_admit_by_state() {
        let (read, archived) = (Some(1), Some(2));
        assert!(admits(InboxFilter::Inbox, read, None));
        assert!(!admits(InboxFilter::Inbox, None, archived));
        assert!(admits(InboxFilter::Unread, None, None));
        assert!(!admits(InboxFilter::Unread, read, None));
        assert!(!admits(InboxFilter::Unread, None, archived));
        assert!(admits(InboxFilter::Archived, read, archived));
        assert!(!admits(InboxFilter::Archived, read, None));
        assert!(admits(InboxFilter::All, read, archived));
    }

    #[test]
    fn absent_columns_stay_unset_unless_replacing() {
        assert!(matches!(column(None::<i64>, false), MaybeUnset::Unset));
        assert!(matches!(column(None::<i64>, true), MaybeUnset::Set(None)));
        assert!(matches!(column(Some(1), false), MaybeUnset::Set(Some(1))));
    }
}
