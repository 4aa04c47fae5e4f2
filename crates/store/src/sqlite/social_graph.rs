//! [`SocialGraph`](crate::SocialGraph) on SQLite: the `follows`, `follower_counts` and `mutes` tables.

use std::collections::HashSet;

use rusqlite::{OptionalExtension, params};

use super::{Context, Db};
use crate::social_graph::SocialGraph;
use crate::{Millis, StoreError};

pub(crate) struct SqliteSocialGraph(pub(crate) Db);

/// Edge and counter change in one transaction, and only when the edge
/// actually appeared or disappeared, so repeated calls do not drift the count.
fn bump_followers(c: &rusqlite::Connection, user: &str, delta: i64) -> rusqlite::Result<usize> {
    c.prepare_cached(
        "INSERT INTO follower_counts (user_id, followers) VALUES (?1, ?2)
         ON CONFLICT (user_id) DO UPDATE SET followers = followers + excluded.followers",
    )?
    .execute(params![user, delta])
}

impl SqliteSocialGraph {
    /// The `candidates` for which `exists` (`?1` the candidate, `?2` the
    /// user) finds a row, in one call.
    async fn candidates_with(
        &self,
        op: &'static str,
        exists: &'static str,
        user: &str,
        candidates: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        let (id, candidates) = (user.to_owned(), candidates.to_vec());
        self.0
            .call(move |c| {
                let mut row = c.prepare_cached(exists)?;
                let mut found = HashSet::new();
                for candidate in &candidates {
                    if row.exists(params![candidate, id])? {
                        found.insert(candidate.clone());
                    }
                }
                Ok(found)
            })
            .await
            .ctx(op, user)
    }
}

#[async_trait::async_trait]
impl SocialGraph for SqliteSocialGraph {
    async fn follow(&self, follower: &str, followee: &str, at: Millis) -> Result<(), StoreError> {
        let (from, to) = (follower.to_owned(), followee.to_owned());
        self.0
            .call(move |c| {
                let added = c
                    .prepare_cached("INSERT OR IGNORE INTO follows (follower_id, followee_id, since) VALUES (?1, ?2, ?3)")?
                    .execute(params![from, to, at])?;
                if added == 1 {
                    bump_followers(c, &to, 1)?;
                }
                Ok(())
            })
            .await
            .ctx("social_graph.follow", &format!("{follower}->{followee}"))
    }

    async fn unfollow(&self, follower: &str, followee: &str) -> Result<(), StoreError> {
        let (from, to) = (follower.to_owned(), followee.to_owned());
        self.0
            .call(move |c| {
                let removed = c
                    .prepare_cached(
                        "DELETE FROM follows WHERE follower_id = ?1 AND followee_id = ?2",
                    )?
                    .execute([&from, &to])?;
                if removed == 1 {
                    bump_followers(c, &to, -1)?;
                }
                Ok(())
            })
            .await
            .ctx("social_graph.unfollow", &format!("{follower}->{followee}"))
    }

    async fn followers(
        &self,
        user: &str,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let id = user.to_owned();
        self.0
            .call(move |c| {
                c.prepare_cached(
                    "SELECT follower_id FROM follows WHERE followee_id = ?1 AND follower_id > ?2
                     ORDER BY follower_id LIMIT ?3",
                )?
                .query_map(
                    params![id, after.as_deref().unwrap_or_default(), limit],
                    |r| r.get(0),
                )?
                .collect()
            })
            .await
            .ctx("social_graph.followers", user)
    }

    async fn muted_among(
        &self,
        user: &str,
        candidates: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        self.candidates_with(
            "social_graph.muted_among",
            "SELECT 1 FROM mutes WHERE user_id = ?1 AND muted_user_id = ?2",
            user,
            candidates,
        )
        .await
    }

    async fn followers_among(
        &self,
        user: &str,
        candidates: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        self.candidates_with(
            "social_graph.followers_among",
            "SELECT 1 FROM follows WHERE follower_id = ?1 AND followee_id = ?2",
            user,
            candidates,
        )
        .await
    }

    async fn following(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let id = user.to_owned();
        self.0
            .call(move |c| {
                c.prepare_cached(
                    "SELECT followee_id FROM follows WHERE follower_id = ?1 ORDER BY followee_id",
                )?
                .query_map([&id], |r| r.get(0))?
                .collect()
            })
            .await
            .ctx("social_graph.following", user)
    }

    async fn follower_count(&self, user: &str) -> Result<u64, StoreError> {
        let id = user.to_owned();
        let count: Option<i64> = self
            .0
            .call(move |c| {
                c.prepare_cached("SELECT followers FROM follower_counts WHERE user_id = ?1")?
                    .query_row([&id], |r| r.get(0))
                    .optional()
            })
            .await
            .ctx("social_graph.follower_count", user)?;
        Ok(count.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    }

    async fn following_count(&self, user: &str) -> Result<u64, StoreError> {
        let id = user.to_owned();
        let count: i64 = self
            .0
            .call(move |c| {
                c.prepare_cached("SELECT COUNT(*) FROM follows WHERE follower_id = ?1")?
                    .query_row([&id], |r| r.get(0))
            })
            .await
            .ctx("social_graph.following_count", user)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn set_muted(&self, user: &str, muted_user: &str, muted: bool) -> Result<(), StoreError> {
        let sql = if muted {
            "INSERT OR IGNORE INTO mutes (user_id, muted_user_id) VALUES (?1, ?2)"
        } else {
            "DELETE FROM mutes WHERE user_id = ?1 AND muted_user_id = ?2"
        };
        let (id, other) = (user.to_owned(), muted_user.to_owned());
        self.0
            .call(move |c| c.prepare_cached(sql)?.execute([&id, &other]))
            .await
            .ctx("social_graph.set_muted", &format!("{user}->{muted_user}"))?;
        Ok(())
    }

    async fn muted(&self, user: &str) -> Result<HashSet<String>, StoreError> {
        let id = user.to_owned();
        self.0
            .call(move |c| {
                c.prepare_cached("SELECT muted_user_id FROM mutes WHERE user_id = ?1")?
                    .query_map([&id], |r| r.get(0))?
                    .collect()
            })
            .await
            .ctx("social_graph.muted", user)
    }
}
