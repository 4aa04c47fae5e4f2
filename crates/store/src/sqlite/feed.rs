//! [`FeedStore`](crate::FeedStore) on SQLite: the `feed_entries` table.

use std::collections::HashSet;

use rusqlite::{OptionalExtension, params};

use super::{Context, Db};
use crate::feed::{FeedEntry, FeedStore, PullState};
use crate::{Millis, StoreError, now_millis};

pub(crate) struct SqliteFeed(pub(crate) Db);

#[async_trait::async_trait]
impl FeedStore for SqliteFeed {
    async fn append_many(&self, entries: &[(String, FeedEntry)]) -> Result<(), StoreError> {
        let owned = entries.to_vec();
        self.0
            .call(move |c| {
                {
                    let mut insert = c.prepare_cached(
                        "INSERT OR REPLACE INTO feed_entries (owner_id, created_at, post_id, author_id)
                         VALUES (?1, ?2, ?3, ?4)",
                    )?;
                    for (owner, e) in &owned {
                        insert.execute(params![owner, e.created_at, e.post_id, e.author_id])?;
                    }
                }
                Ok(())
            })
            .await
            .ctx("feed.append_many", &format!("{} entries", entries.len()))
    }

    async fn remove_many(&self, entries: &[(String, FeedEntry)]) -> Result<(), StoreError> {
        let owned = entries.to_vec();
        self.0
            .call(move |c| {
                {
                    let mut delete = c.prepare_cached(
                        "DELETE FROM feed_entries WHERE owner_id = ?1 AND created_at = ?2 AND post_id = ?3",
                    )?;
                    for (owner, e) in &owned {
                        delete.execute(params![owner, e.created_at, e.post_id])?;
                    }
                }
                Ok(())
            })
            .await
            .ctx("feed.remove_many", &format!("{} entries", entries.len()))
    }

    async fn read(
        &self,
        owner: &str,
        before: Option<(Millis, String)>,
        limit: u32,
    ) -> Result<Vec<FeedEntry>, StoreError> {
        let id = owner.to_owned();
        // Without a cursor everything is older than the greatest time.
        let (before_at, before_post) =
            before.map_or((Millis::MAX, None), |(at, post)| (at, Some(post)));
        self.0
            .call(move |c| {
                c.prepare_cached(
                    "SELECT post_id, author_id, created_at FROM feed_entries
                     WHERE owner_id = ?1
                       AND (created_at < ?2 OR (created_at = ?2 AND post_id < ?3))
                     ORDER BY created_at DESC, post_id DESC LIMIT ?4",
                )?
                .query_map(params![id, before_at, before_post, limit], |r| {
                    Ok(FeedEntry {
                        post_id: r.get(0)?,
                        author_id: r.get(1)?,
                        created_at: r.get(2)?,
                    })
                })?
                .collect()
            })
            .await
            .ctx("feed.read", owner)
    }

    async fn trim(&self, owner: &str, keep: usize) -> Result<(), StoreError> {
        let id = owner.to_owned();
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.0
            .call(move |c| {
                c.prepare_cached(
                    "DELETE FROM feed_entries WHERE owner_id = ?1 AND (created_at, post_id) IN (
                        SELECT created_at, post_id FROM feed_entries WHERE owner_id = ?1
                        ORDER BY created_at DESC, post_id DESC LIMIT -1 OFFSET ?2)",
                )?
                .execute(params![id, keep])
            })
            .await
            .ctx("feed.trim", owner)?;
        Ok(())
    }

    async fn set_pull_state(
        &self,
        author: &str,
        state: PullState,
        at: Millis,
    ) -> Result<(), StoreError> {
        let id = author.to_owned();
        self.0
            .call(move |c| {
                match state {
                    PullState::Pushed => {
                        c.prepare_cached("DELETE FROM pulled_authors WHERE author_id = ?1")?
                            .execute(params![id])?;
                    }
                    PullState::Pulled => {
                        c.prepare_cached(
                            "INSERT OR REPLACE INTO pulled_authors (author_id, since, cooling_until)
                             VALUES (?1, ?2, NULL)",
                        )?
                        .execute(params![id, at])?;
                    }
                    PullState::Cooling { until } => {
                        c.prepare_cached(
                            "INSERT OR REPLACE INTO pulled_authors (author_id, since, cooling_until)
                             VALUES (?1, ?2, ?3)",
                        )?
                        .execute(params![id, at, until])?;
                    }
                }
                // Cool-downs that ended are dropped here rather than by a
                // sweeper: SQLite has no TTL, and reads skip them anyway.
                c.prepare_cached("DELETE FROM pulled_authors WHERE cooling_until <= ?1")?
                    .execute(params![now_millis()])?;
                Ok(())
            })
            .await
            .ctx("feed.set_pull_state", author)?;
        Ok(())
    }

    async fn pull_state(&self, author: &str) -> Result<PullState, StoreError> {
        let id = author.to_owned();
        let row: Option<Option<Millis>> = self
            .0
            .call(move |c| {
                c.prepare_cached("SELECT cooling_until FROM pulled_authors WHERE author_id = ?1")?
                    .query_row(params![id], |r| r.get(0))
                    .optional()
            })
            .await
            .ctx("feed.pull_state", author)?;
        Ok(PullState::stored(row).at(now_millis()))
    }

    async fn pulled_authors(&self) -> Result<HashSet<String>, StoreError> {
        let now = now_millis();
        self.0
            .call(move |c| {
                c.prepare_cached(
                    "SELECT author_id FROM pulled_authors
                     WHERE cooling_until IS NULL OR cooling_until > ?1",
                )?
                .query_map(params![now], |r| r.get(0))?
                .collect()
            })
            .await
            .ctx("feed.pulled_authors", "all")
    }
}
