//! [`FeedStore`](crate::FeedStore) on CQL: the `feed_entries` table.

use std::collections::HashSet;

use futures::TryStreamExt;
use scylla::statement::prepared::PreparedStatement;

use super::{Context, Cql};
use crate::feed::{FeedEntry, FeedStore};
use crate::{Millis, StoreError};

pub(crate) struct ScyllaFeed {
    cql: Cql,
    append: PreparedStatement,
    remove: PreparedStatement,
    newest: PreparedStatement,
    older: PreparedStatement,
    keys: PreparedStatement,
    delete_from: PreparedStatement,
    pull: PreparedStatement,
    push: PreparedStatement,
    pulled: PreparedStatement,
}

/// The one partition of `pulled_authors`.
const PULLED_BUCKET: i32 = 0;

type EntryRow = (String, Option<String>, Millis);

impl ScyllaFeed {
    pub(crate) async fn prepare(cql: &Cql) -> Result<Self, StoreError> {
        Ok(ScyllaFeed {
            append: cql
                .prepare("INSERT INTO feed_entries (owner_id, created_at, post_id, author_id) VALUES (?, ?, ?, ?)")
                .await?,
            remove: cql
                .prepare("DELETE FROM feed_entries WHERE owner_id = ? AND created_at = ? AND post_id = ?")
                .await?,
            newest: cql
                .prepare("SELECT post_id, author_id, created_at FROM feed_entries WHERE owner_id = ? LIMIT ?")
                .await?,
            older: cql
                .prepare(
                    "SELECT post_id, author_id, created_at FROM feed_entries
                     WHERE owner_id = ? AND (created_at, post_id) < (?, ?) LIMIT ?",
                )
                .await?,
            keys: cql.prepare("SELECT created_at, post_id FROM feed_entries WHERE owner_id = ?").await?,
            // One range tombstone instead of a tombstone per trimmed entry.
            delete_from: cql
                .prepare("DELETE FROM feed_entries WHERE owner_id = ? AND (created_at, post_id) <= (?, ?)")
                .await?,
            pull: cql
                .prepare("INSERT INTO pulled_authors (bucket, author_id, since) VALUES (?, ?, ?)")
                .await?,
            push: cql
                .prepare("DELETE FROM pulled_authors WHERE bucket = ? AND author_id = ?")
                .await?,
            pulled: cql
                .prepare("SELECT author_id FROM pulled_authors WHERE bucket = ?")
                .await?,
            cql: cql.clone(),
        })
    }
}

#[async_trait::async_trait]
impl FeedStore for ScyllaFeed {
    async fn append_many(&self, entries: &[(String, FeedEntry)]) -> Result<(), StoreError> {
        self.cql
            .concurrently(entries, |(owner, e)| async move {
                self.cql
                    .execute(
                        &self.append,
                        (owner, e.created_at, &e.post_id, &e.author_id),
                    )
                    .await
                    .ctx("feed.append_many", owner)
            })
            .await?;
        Ok(())
    }

    async fn remove_many(&self, entries: &[(String, FeedEntry)]) -> Result<(), StoreError> {
        self.cql
            .concurrently(entries, |(owner, e)| async move {
                self.cql
                    .execute(&self.remove, (owner, e.created_at, &e.post_id))
                    .await
                    .ctx("feed.remove_many", owner)
            })
            .await?;
        Ok(())
    }

    async fn read(
        &self,
        owner: &str,
        before: Option<(Millis, String)>,
        limit: u32,
    ) -> Result<Vec<FeedEntry>, StoreError> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows = match &before {
            None => {
                self.cql
                    .rows::<EntryRow>(&self.newest, (owner, limit))
                    .await
            }
            Some((at, post_id)) => {
                self.cql
                    .rows::<EntryRow>(&self.older, (owner, at, post_id, limit))
                    .await
            }
        }
        .ctx("feed.read", owner)?;
        Ok(rows
            .into_iter()
            .map(|(post_id, author_id, created_at)| FeedEntry {
                post_id,
                author_id: author_id.unwrap_or_default(),
                created_at,
            })
            .collect())
    }

    async fn trim(&self, owner: &str, keep: usize) -> Result<(), StoreError> {
        const OP: &str = "feed.trim";
        // The newest entry past `keep` is where deletion starts; reading the
        // kept keys first is cheap since feeds are capped to a few hundred.
        let pager = self
            .cql
            .session
            .execute_iter(self.keys.clone(), (owner,))
            .await
            .ctx(OP, owner)?;
        let mut keys = pager.rows_stream::<(Millis, String)>().ctx(OP, owner)?;
        let mut seen = 0;
        let first_dropped = loop {
            match keys.try_next().await.ctx(OP, owner)? {
                None => return Ok(()),
                Some(key) if seen == keep => break key,
                Some(_) => seen += 1,
            }
        };
        self.cql
            .execute(&self.delete_from, (owner, first_dropped.0, first_dropped.1))
            .await
            .ctx(OP, owner)?;
        Ok(())
    }

    async fn set_pulled_author(
        &self,
        author: &str,
        pulled: bool,
        at: Millis,
    ) -> Result<(), StoreError> {
        const OP: &str = "feed.set_pulled_author";
        if pulled {
            self.cql
                .execute(&self.pull, (PULLED_BUCKET, author, at))
                .await
                .ctx(OP, author)?;
        } else {
            self.cql
                .execute(&self.push, (PULLED_BUCKET, author))
                .await
                .ctx(OP, author)?;
        }
        Ok(())
    }

    async fn pulled_authors(&self) -> Result<HashSet<String>, StoreError> {
        let rows = self
            .cql
            .rows::<(String,)>(&self.pulled, (PULLED_BUCKET,))
            .await
            .ctx("feed.pulled_authors", "all")?;
        Ok(rows.into_iter().map(|(author,)| author).collect())
    }
}
