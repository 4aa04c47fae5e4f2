//! [`FeedStore`](crate::FeedStore) on CQL: the `feed_entries` table.

use std::collections::HashSet;

use futures::TryStreamExt;
use scylla::statement::prepared::PreparedStatement;

use super::{Context, Cql};
use crate::feed::{FeedEntry, FeedStore, PullState};
use crate::{Millis, StoreError, now_millis};

pub(crate) struct ScyllaFeed {
    cql: Cql,
    append: PreparedStatement,
    remove: PreparedStatement,
    newest: PreparedStatement,
    older: PreparedStatement,
    keys: PreparedStatement,
    delete_from: PreparedStatement,
    push: PreparedStatement,
    /// Prepared at first use, not at connect: they name `cooling_until`
    /// (migration 0007), and a process connecting without migrating (to
    /// check the schema, or an older keyspace being upgraded) must not fail.
    pull_statements: tokio::sync::OnceCell<PullStatements>,
}

struct PullStatements {
    pull: PreparedStatement,
    cool: PreparedStatement,
    state: PreparedStatement,
    pulled: PreparedStatement,
}

impl PullStatements {
    async fn prepare(cql: &Cql) -> Result<Self, StoreError> {
        Ok(PullStatements {
            // cooling_until null: a pulled author; the insert also ends a
            // cool-down and its TTL.
            pull: cql
                .prepare(
                    "INSERT INTO pulled_authors (bucket, author_id, since, cooling_until)
                     VALUES (?, ?, ?, null)",
                )
                .await?,
            cool: cql
                .prepare(
                    "INSERT INTO pulled_authors (bucket, author_id, since, cooling_until)
                     VALUES (?, ?, ?, ?) USING TTL ?",
                )
                .await?,
            state: cql
                .prepare(
                    "SELECT cooling_until FROM pulled_authors WHERE bucket = ? AND author_id = ?",
                )
                .await?,
            pulled: cql
                .prepare("SELECT author_id, cooling_until FROM pulled_authors WHERE bucket = ?")
                .await?,
        })
    }
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
            push: cql
                .prepare("DELETE FROM pulled_authors WHERE bucket = ? AND author_id = ?")
                .await?,
            pull_statements: tokio::sync::OnceCell::new(),
            cql: cql.clone(),
        })
    }

    async fn pull_statements(&self) -> Result<&PullStatements, StoreError> {
        self.pull_statements
            .get_or_try_init(|| PullStatements::prepare(&self.cql))
            .await
    }
}

/// Seconds a cooling row lives: until its cool-down ends, at least one
/// (Cassandra refuses a TTL of 0, which would also mean "forever").
fn cooling_ttl(at: Millis, until: Millis) -> i32 {
    let secs = ((until - at).max(0) + 999) / 1_000;
    let secs = secs.max(1);
    i32::try_from(secs).unwrap_or(i32::MAX)
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

    async fn set_pull_state(
        &self,
        author: &str,
        state: PullState,
        at: Millis,
    ) -> Result<(), StoreError> {
        const OP: &str = "feed.set_pull_state";
        match state {
            PullState::Pushed => self.cql.execute(&self.push, (PULLED_BUCKET, author)).await,
            PullState::Pulled => {
                let statements = self.pull_statements().await?;
                self.cql
                    .execute(&statements.pull, (PULLED_BUCKET, author, at))
                    .await
            }
            PullState::Cooling { until } => {
                let statements = self.pull_statements().await?;
                self.cql
                    .execute(
                        &statements.cool,
                        (PULLED_BUCKET, author, at, until, cooling_ttl(at, until)),
                    )
                    .await
            }
        }
        .ctx(OP, author)?;
        Ok(())
    }

    async fn pull_state(&self, author: &str) -> Result<PullState, StoreError> {
        let statements = self.pull_statements().await?;
        let rows = self
            .cql
            .rows::<(Option<Millis>,)>(&statements.state, (PULLED_BUCKET, author))
            .await
            .ctx("feed.pull_state", author)?;
        let row = rows.into_iter().next().map(|(until,)| until);
        Ok(PullState::stored(row).at(now_millis()))
    }

    async fn pulled_authors(&self) -> Result<HashSet<String>, StoreError> {
        let statements = self.pull_statements().await?;
        let rows = self
            .cql
            .rows::<(String, Option<Millis>)>(&statements.pulled, (PULLED_BUCKET,))
            .await
            .ctx("feed.pulled_authors", "all")?;
        let now = now_millis();
        Ok(rows
            .into_iter()
            .filter(|(_, until)| {
                PullState::stored(Some(*until))
                    .at(now)
                    .is_pulled_by_readers()
            })
            .map(|(author, _)| author)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cooling_row_lives_whole_seconds_and_never_forever() {
        assert_eq!(cooling_ttl(1_000, 61_000), 60);
        assert_eq!(cooling_ttl(1_000, 61_001), 61);
        assert_eq!(cooling_ttl(1_000, 1_000), 1);
        assert_eq!(cooling_ttl(5_000, 1_000), 1);
    }
}
