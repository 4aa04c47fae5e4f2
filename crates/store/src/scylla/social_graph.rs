//! [`SocialGraph`](crate::SocialGraph) on CQL: the `followers`, `following`, `follower_counts` and `mutes` tables.

use std::collections::HashSet;

use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::Counter;

use super::{Context, Cql, counted_batch};
use crate::social_graph::SocialGraph;
use crate::{Millis, StoreError};

/// Each edge is kept twice (by followee and by follower) so both directions
/// are single-partition reads. The follower count is a counter table bumped
/// only when a read shows the edge actually appears or disappears; two racing
/// duplicate follows of the same pair can still both count, which is
/// acceptable for a displayed figure.
pub(crate) struct ScyllaSocialGraph {
    cql: Cql,
    edge: PreparedStatement,
    add_edge: Batch,
    remove_edge: Batch,
    bump_count: PreparedStatement,
    count: PreparedStatement,
    followers: PreparedStatement,
    following: PreparedStatement,
    following_count: PreparedStatement,
    mute: PreparedStatement,
    unmute: PreparedStatement,
    muted: PreparedStatement,
    mute_edge: PreparedStatement,
}

impl ScyllaSocialGraph {
    pub(crate) async fn prepare(cql: &Cql) -> Result<Self, StoreError> {
        // Logged batches keep the two copies of an edge in step.
        let mut add_edge = counted_batch(BatchType::Logged, "followers");
        add_edge.append_statement(
            cql.prepare("INSERT INTO followers (user_id, follower_id, since) VALUES (?, ?, ?)")
                .await?,
        );
        add_edge.append_statement(
            cql.prepare("INSERT INTO following (user_id, followee_id, since) VALUES (?, ?, ?)")
                .await?,
        );
        add_edge.set_is_idempotent(true);
        let mut remove_edge = counted_batch(BatchType::Logged, "followers");
        remove_edge.append_statement(
            cql.prepare("DELETE FROM followers WHERE user_id = ? AND follower_id = ?")
                .await?,
        );
        remove_edge.append_statement(
            cql.prepare("DELETE FROM following WHERE user_id = ? AND followee_id = ?")
                .await?,
        );
        remove_edge.set_is_idempotent(true);
        Ok(ScyllaSocialGraph {
            edge: cql.prepare("SELECT since FROM followers WHERE user_id = ? AND follower_id = ?").await?,
            add_edge,
            remove_edge,
            bump_count: cql
                .prepare_once_only("UPDATE follower_counts SET followers = followers + ? WHERE user_id = ?")
                .await?,
            count: cql.prepare("SELECT followers FROM follower_counts WHERE user_id = ?").await?,
            followers: cql
                .prepare("SELECT follower_id FROM followers WHERE user_id = ? AND follower_id > ? LIMIT ?")
                .await?,
            following: cql.prepare("SELECT followee_id FROM following WHERE user_id = ?").await?,
            following_count: cql
                .prepare("SELECT COUNT(*) FROM following WHERE user_id = ?")
                .await?,
            mute: cql.prepare("INSERT INTO mutes (user_id, muted_user_id) VALUES (?, ?)").await?,
            unmute: cql.prepare("DELETE FROM mutes WHERE user_id = ? AND muted_user_id = ?").await?,
            muted: cql.prepare("SELECT muted_user_id FROM mutes WHERE user_id = ?").await?,
            mute_edge: cql
                .prepare("SELECT muted_user_id FROM mutes WHERE user_id = ? AND muted_user_id = ?")
                .await?,
            cql: cql.clone(),
        })
    }

    async fn has_edge(
        &self,
        op: &'static str,
        key: &str,
        follower: &str,
        followee: &str,
    ) -> Result<bool, StoreError> {
        let row = self
            .cql
            .maybe_row::<(Option<Millis>,)>(&self.edge, (followee, follower))
            .await
            .ctx(op, key)?;
        Ok(row.is_some())
    }
}

#[async_trait::async_trait]
impl SocialGraph for ScyllaSocialGraph {
    async fn follow(&self, follower: &str, followee: &str, at: Millis) -> Result<(), StoreError> {
        const OP: &str = "social_graph.follow";
        let key = format!("{follower}->{followee}");
        if self.has_edge(OP, &key, follower, followee).await? {
            return Ok(());
        }
        let values = ((followee, follower, at), (follower, followee, at));
        self.cql
            .session
            .batch(&self.add_edge, values)
            .await
            .ctx(OP, &key)?;
        self.cql
            .execute(&self.bump_count, (Counter(1), followee))
            .await
            .ctx(OP, &key)?;
        Ok(())
    }

    async fn unfollow(&self, follower: &str, followee: &str) -> Result<(), StoreError> {
        const OP: &str = "social_graph.unfollow";
        let key = format!("{follower}->{followee}");
        if !self.has_edge(OP, &key, follower, followee).await? {
            return Ok(());
        }
        let values = ((followee, follower), (follower, followee));
        self.cql
            .session
            .batch(&self.remove_edge, values)
            .await
            .ctx(OP, &key)?;
        self.cql
            .execute(&self.bump_count, (Counter(-1), followee))
            .await
            .ctx(OP, &key)?;
        Ok(())
    }

    async fn followers(
        &self,
        user: &str,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows = self
            .cql
            .rows::<(String,)>(&self.followers, (user, after.unwrap_or_default(), limit))
            .await
            .ctx("social_graph.followers", user)?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    async fn followers_among(
        &self,
        user: &str,
        candidates: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        // One single-row read per candidate, concurrently: each is a point
        // read in `user`'s partition.
        let follows = self
            .cql
            .concurrently(candidates, |c| async move {
                let yes = self
                    .has_edge("social_graph.followers_among", user, c, user)
                    .await?;
                Ok(yes.then(|| c.clone()))
            })
            .await?;
        Ok(follows.into_iter().flatten().collect())
    }

    async fn following(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let rows = self
            .cql
            .all_rows::<(String,)>(&self.following, (user,))
            .await
            .ctx("social_graph.following", user)?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    async fn follower_count(&self, user: &str) -> Result<u64, StoreError> {
        let row = self
            .cql
            .maybe_row::<(Option<Counter>,)>(&self.count, (user,))
            .await
            .ctx("social_graph.follower_count", user)?;
        Ok(row
            .and_then(|(count,)| count)
            .map_or(0, |Counter(n)| u64::try_from(n).unwrap_or(0)))
    }

    async fn following_count(&self, user: &str) -> Result<u64, StoreError> {
        // One partition of at most the friend cap's rows.
        let row = self
            .cql
            .maybe_row::<(i64,)>(&self.following_count, (user,))
            .await
            .ctx("social_graph.following_count", user)?;
        Ok(row.map_or(0, |(n,)| u64::try_from(n).unwrap_or(0)))
    }

    async fn set_muted(&self, user: &str, muted_user: &str, muted: bool) -> Result<(), StoreError> {
        let statement = if muted { &self.mute } else { &self.unmute };
        self.cql
            .execute(statement, (user, muted_user))
            .await
            .ctx("social_graph.set_muted", &format!("{user}->{muted_user}"))?;
        Ok(())
    }

    async fn muted(&self, user: &str) -> Result<HashSet<String>, StoreError> {
        let rows = self
            .cql
            .all_rows::<(String,)>(&self.muted, (user,))
            .await
            .ctx("social_graph.muted", user)?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    async fn muted_among(
        &self,
        user: &str,
        candidates: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        let muters = self
            .cql
            .concurrently(candidates, |c| async move {
                let row = self
                    .cql
                    .maybe_row::<(String,)>(&self.mute_edge, (c, user))
                    .await
                    .ctx("social_graph.muted_among", user)?;
                Ok(row.map(|_| c.clone()))
            })
            .await?;
        Ok(muters.into_iter().flatten().collect())
    }
}
