//! [`InboxStore`](crate::InboxStore) on SQLite: the `inbox_items` and
//! `inbox_seen` tables.
//!
//! An item's TTL is its `expires_at`: every read skips expired rows, and a
//! put deletes the user's expired rows before it counts the cap, so expired
//! items never take the place of live ones.

use std::collections::BTreeMap;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{Context, Db};
use crate::inbox::{InboxAction, InboxCounts, InboxFilter, InboxItem, InboxQuery, InboxStore};
use crate::{Millis, StoreError, now_millis};

pub(crate) struct SqliteInbox(pub(crate) Db);

/// The item columns every read selects, in [`ItemRow`] order.
macro_rules! select_items {
    ($rest:expr) => {
        concat!(
            "SELECT notification_id, created_at, category, title, body, action_url, avatar_url,
                    data, read_at, archived_at, template_name
             FROM inbox_items ",
            $rest
        )
    };
}

/// A page: ?1 user, ?2 now, ?3/?4 the cursor, ?5 the category or NULL,
/// ?6 the limit; `$filter` is the filter's condition.
macro_rules! select_page {
    ($filter:literal) => {
        select_items!(concat!(
            "WHERE user_id = ?1 AND expires_at > ?2
               AND (created_at < ?3 OR (created_at = ?3 AND notification_id < ?4))
               AND (?5 IS NULL OR category = ?5) AND ",
            $filter,
            " ORDER BY created_at DESC, notification_id DESC LIMIT ?6"
        ))
    };
}

/// One statement per filter, so each keeps a plan of its own.
fn page_statement(filter: InboxFilter) -> &'static str {
    match filter {
        InboxFilter::Inbox => select_page!("archived_at IS NULL"),
        InboxFilter::Unread => select_page!("archived_at IS NULL AND read_at IS NULL"),
        InboxFilter::Archived => select_page!("archived_at IS NOT NULL"),
        InboxFilter::All => select_page!("1"),
    }
}

/// An item as stored; `data` still JSON.
struct ItemRow {
    notification_id: String,
    created_at: Millis,
    category: Option<String>,
    title: Option<String>,
    body: Option<String>,
    action_url: Option<String>,
    avatar_url: Option<String>,
    data: String,
    read_at: Option<Millis>,
    archived_at: Option<Millis>,
    template_name: Option<String>,
}

impl ItemRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<ItemRow> {
        Ok(ItemRow {
            notification_id: r.get(0)?,
            created_at: r.get(1)?,
            category: r.get(2)?,
            title: r.get(3)?,
            body: r.get(4)?,
            action_url: r.get(5)?,
            avatar_url: r.get(6)?,
            data: r.get(7)?,
            read_at: r.get(8)?,
            archived_at: r.get(9)?,
            template_name: r.get(10)?,
        })
    }

    fn into_item(self, op: &'static str, user_id: &str) -> Result<InboxItem, StoreError> {
        let data: BTreeMap<String, String> = serde_json::from_str(&self.data).map_err(|e| {
            StoreError::invalid_data(op, format!("{user_id}/{}", self.notification_id), e)
        })?;
        Ok(InboxItem {
            user_id: user_id.to_owned(),
            notification_id: self.notification_id,
            created_at: self.created_at,
            category: self.category,
            template_name: self.template_name,
            title: self.title,
            body: self.body,
            action_url: self.action_url,
            avatar_url: self.avatar_url,
            data,
            read_at: self.read_at,
            archived_at: self.archived_at,
        })
    }
}

/// When an item written now with `ttl` expires.
fn expires_at(now: Millis, ttl: Duration) -> Millis {
    now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

/// Inserts the item unless the user has it (expired rows were deleted
/// first); answers whether it did.
fn insert(
    c: &Connection,
    item: &InboxItem,
    data: &str,
    expires_at: Millis,
) -> rusqlite::Result<bool> {
    let inserted = c
        .prepare_cached(
            "INSERT INTO inbox_items (user_id, notification_id, created_at, category, title, body,
                                      action_url, avatar_url, data, read_at, archived_at, expires_at,
                                      template_name)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL, NULL, ?10, ?11)
             ON CONFLICT (user_id, notification_id) DO NOTHING",
        )?
        .execute(params![
            item.user_id,
            item.notification_id,
            item.created_at,
            item.category,
            item.title,
            item.body,
            item.action_url,
            item.avatar_url,
            data,
            expires_at,
            item.template_name
        ])?;
    Ok(inserted == 1)
}

/// Deletes the user's items past the newest `cap`.
fn trim(c: &Connection, user_id: &str, cap: u32) -> rusqlite::Result<()> {
    c.prepare_cached(
        "DELETE FROM inbox_items WHERE user_id = ?1 AND notification_id IN (
            SELECT notification_id FROM inbox_items WHERE user_id = ?1
            ORDER BY created_at DESC, notification_id DESC LIMIT -1 OFFSET ?2)",
    )?
    .execute(params![user_id, cap])?;
    Ok(())
}

/// The SQL that applies `action` to one live item: ?1 the user, ?2 the
/// item, ?3 the action's time (bound for the undoing ones too: SQLite counts
/// parameters up to the highest number), ?4 now.
fn mark_statement(action: InboxAction) -> &'static str {
    // COALESCE keeps the first time of a repeated read or archive; the row
    // still counts as changed, which is how the caller learns it exists.
    match action {
        InboxAction::Read => {
            "UPDATE inbox_items SET read_at = COALESCE(read_at, ?3)
             WHERE user_id = ?1 AND notification_id = ?2 AND expires_at > ?4"
        }
        InboxAction::Unread => {
            "UPDATE inbox_items SET read_at = NULL
             WHERE user_id = ?1 AND notification_id = ?2 AND expires_at > ?4"
        }
        InboxAction::Archive => {
            "UPDATE inbox_items SET archived_at = COALESCE(archived_at, ?3)
             WHERE user_id = ?1 AND notification_id = ?2 AND expires_at > ?4"
        }
        InboxAction::Unarchive => {
            "UPDATE inbox_items SET archived_at = NULL
             WHERE user_id = ?1 AND notification_id = ?2 AND expires_at > ?4"
        }
    }
}

#[async_trait::async_trait]
impl InboxStore for SqliteInbox {
    async fn put(&self, item: &InboxItem, cap: u32, ttl: Duration) -> Result<bool, StoreError> {
        const OP: &str = "inbox.put";
        let key = format!("{}/{}", item.user_id, item.notification_id);
        let data =
            serde_json::to_string(&item.data).map_err(|e| StoreError::invalid_data(OP, &key, e))?;
        let now = now_millis();
        let expires_at = expires_at(now, ttl);
        let owned = item.clone();
        self.0
            .call(move |c| {
                c.prepare_cached(
                    "DELETE FROM inbox_items WHERE user_id = ?1 AND expires_at <= ?2",
                )?
                .execute(params![owned.user_id, now])?;
                // A replay changes nothing, so it trims nothing either.
                let added = insert(c, &owned, &data, expires_at)?;
                if added {
                    trim(c, &owned.user_id, cap)?;
                }
                Ok(added)
            })
            .await
            .ctx(OP, &key)
    }

    async fn list(&self, user_id: &str, query: &InboxQuery) -> Result<Vec<InboxItem>, StoreError> {
        const OP: &str = "inbox.list";
        let user = user_id.to_owned();
        let sql = page_statement(query.filter);
        // Without a cursor everything is older than the greatest time.
        let (before_at, before_id) = query
            .before
            .clone()
            .map_or((Millis::MAX, None), |(at, id)| (at, Some(id)));
        let (category, limit, now) = (query.category.clone(), query.limit, now_millis());
        let rows: Vec<ItemRow> = self
            .0
            .call(move |c| {
                c.prepare_cached(sql)?
                    .query_map(
                        params![user, now, before_at, before_id, category, limit],
                        ItemRow::read,
                    )?
                    .collect()
            })
            .await
            .ctx(OP, user_id)?;
        rows.into_iter().map(|r| r.into_item(OP, user_id)).collect()
    }

    async fn get(
        &self,
        user_id: &str,
        notification_id: &str,
    ) -> Result<Option<InboxItem>, StoreError> {
        const OP: &str = "inbox.get";
        let key = format!("{user_id}/{notification_id}");
        let (user, id, now) = (user_id.to_owned(), notification_id.to_owned(), now_millis());
        let row = self
            .0
            .call(move |c| {
                c.prepare_cached(select_items!(
                    "WHERE user_id = ?1 AND notification_id = ?2 AND expires_at > ?3"
                ))?
                .query_row(params![user, id, now], ItemRow::read)
                .optional()
            })
            .await
            .ctx(OP, &key)?;
        row.map(|r| r.into_item(OP, user_id)).transpose()
    }

    async fn mark(
        &self,
        user_id: &str,
        notification_id: &str,
        action: InboxAction,
        at: Millis,
    ) -> Result<bool, StoreError> {
        let key = format!("{user_id}/{notification_id}");
        let (user, id, now) = (user_id.to_owned(), notification_id.to_owned(), now_millis());
        let changed = self
            .0
            .call(move |c| {
                c.prepare_cached(mark_statement(action))?
                    .execute(params![user, id, at, now])
            })
            .await
            .ctx("inbox.mark", &key)?;
        Ok(changed > 0)
    }

    async fn mark_all_read(&self, user_id: &str, at: Millis) -> Result<u32, StoreError> {
        let (user, now) = (user_id.to_owned(), now_millis());
        let changed = self
            .0
            .call(move |c| {
                c.prepare_cached(
                    "UPDATE inbox_items SET read_at = ?2
                     WHERE user_id = ?1 AND read_at IS NULL AND archived_at IS NULL AND expires_at > ?3",
                )?
                .execute(params![user, at, now])
            })
            .await
            .ctx("inbox.mark_all_read", user_id)?;
        // At most the cap, itself a u32.
        Ok(u32::try_from(changed).unwrap_or(u32::MAX))
    }

    async fn mark_seen(&self, user_id: &str, at: Millis) -> Result<(), StoreError> {
        let user = user_id.to_owned();
        self.0
            .call(move |c| {
                c.prepare_cached(
                    "INSERT INTO inbox_seen (user_id, seen_at) VALUES (?1, ?2)
                     ON CONFLICT (user_id) DO UPDATE SET seen_at = max(seen_at, excluded.seen_at)",
                )?
                .execute(params![user, at])
            })
            .await
            .ctx("inbox.mark_seen", user_id)?;
        Ok(())
    }

    async fn counts(&self, user_id: &str) -> Result<InboxCounts, StoreError> {
        let (user, now) = (user_id.to_owned(), now_millis());
        let (unread, unseen, total): (u32, u32, u32) = self
            .0
            .call(move |c| {
                // No seen mark yet: every item is unseen.
                c.prepare_cached(
                    "SELECT coalesce(sum(i.read_at IS NULL), 0),
                            coalesce(sum(s.seen_at IS NULL OR i.created_at > s.seen_at), 0),
                            count(*)
                     FROM inbox_items i LEFT JOIN inbox_seen s ON s.user_id = i.user_id
                     WHERE i.user_id = ?1 AND i.archived_at IS NULL AND i.expires_at > ?2",
                )?
                .query_row(params![user, now], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
            })
            .await
            .ctx("inbox.counts", user_id)?;
        Ok(InboxCounts {
            unread,
            unseen,
            total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_saturates() {
        assert_eq!(expires_at(1_000, Duration::from_millis(1_500)), 2_500);
        assert_eq!(expires_at(1_000, Duration::MAX), Millis::MAX);
    }
}
