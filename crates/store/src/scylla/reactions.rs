//! [`ReactionStore`](crate::ReactionStore) on CQL: the `likes`, `replies`
//! and `post_tallies` tables (see `migrations/cql/0006_reactions.cql`).
//!
//! A post's tally is one partition: the counts are static columns and each
//! counted like or reply a row, so an update is one single-partition
//! unlogged batch, which Cassandra and Scylla apply atomically and in
//! isolation.

use std::collections::{HashMap, HashSet};

use scylla::statement::batch::BatchType;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

use super::{Context, Cql, counted_batch};
use crate::reactions::{PostTally, ReactionStore, Reply, TallyMember, TallyState, TallyUpdate};
use crate::{Millis, StoreError};

/// Members per batch: a batch stays in the kilobytes however many likes a
/// post gets in one go (Cassandra warns from 5 KiB of batch).
const MEMBERS_PER_BATCH: usize = 100;

/// Statements are prepared at first use, not at connect: a process that
/// connects without migrating (to check the schema, or an older keyspace
/// being upgraded) must not fail on tables a later migration creates.
pub(crate) struct ScyllaReactions {
    cql: Cql,
    statements: tokio::sync::OnceCell<Statements>,
}

struct Statements {
    like_of: PreparedStatement,
    like: PreparedStatement,
    unlike: PreparedStatement,
    liked_among: PreparedStatement,
    put_reply: PreparedStatement,
    replies_after: PreparedStatement,
    tally: PreparedStatement,
    counted_among: PreparedStatement,
    count_member: PreparedStatement,
    uncount_member: PreparedStatement,
    set_counts: PreparedStatement,
}

impl ScyllaReactions {
    pub(crate) async fn prepare(cql: &Cql) -> Result<Self, StoreError> {
        Ok(ScyllaReactions {
            cql: cql.clone(),
            statements: tokio::sync::OnceCell::new(),
        })
    }

    async fn statements(&self) -> Result<&Statements, StoreError> {
        self.statements
            .get_or_try_init(|| Statements::prepare(&self.cql))
            .await
    }
}

impl Statements {
    async fn prepare(cql: &Cql) -> Result<Self, StoreError> {
        Ok(Statements {
            like_of: cql
                .prepare("SELECT liked_at FROM likes WHERE user_id = ? AND post_id = ?")
                .await?,
            like: cql
                .prepare("INSERT INTO likes (user_id, post_id, liked_at) VALUES (?, ?, ?)")
                .await?,
            unlike: cql
                .prepare("DELETE FROM likes WHERE user_id = ? AND post_id = ?")
                .await?,
            liked_among: cql
                .prepare("SELECT post_id FROM likes WHERE user_id = ? AND post_id IN ?")
                .await?,
            put_reply: cql
                .prepare(
                    "INSERT INTO replies (post_id, created_at, reply_id, author_id, body) VALUES (?, ?, ?, ?, ?)",
                )
                .await?,
            replies_after: cql
                .prepare(
                    "SELECT reply_id, author_id, body, created_at FROM replies
                     WHERE post_id = ? AND (created_at, reply_id) > (?, ?) LIMIT ?",
                )
                .await?,
            tally: cql
                .prepare("SELECT likes, replies FROM post_tallies WHERE post_id = ? LIMIT 1")
                .await?,
            counted_among: cql
                .prepare("SELECT member FROM post_tallies WHERE post_id = ? AND member IN ?")
                .await?,
            count_member: cql
                .prepare("INSERT INTO post_tallies (post_id, member) VALUES (?, ?)")
                .await?,
            uncount_member: cql
                .prepare("DELETE FROM post_tallies WHERE post_id = ? AND member = ?")
                .await?,
            set_counts: cql
                .prepare("UPDATE post_tallies SET likes = ?, replies = ? WHERE post_id = ?")
                .await?,
        })
    }
}

impl ScyllaReactions {
    async fn tally(&self, op: &'static str, post_id: &str) -> Result<PostTally, StoreError> {
        let s = self.statements().await?;
        let row = self
            .cql
            .maybe_row::<(Option<i64>, Option<i64>)>(&s.tally, (post_id,))
            .await
            .ctx(op, post_id)?;
        let (likes, replies) = row.unwrap_or_default();
        let count = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        Ok(PostTally {
            likes: count(likes),
            replies: count(replies),
        })
    }

    /// One batch: its members' rows and the counts they make.
    async fn write_chunk(&self, update: &TallyUpdate) -> Result<(), StoreError> {
        let s = self.statements().await?;
        let mut batch = counted_batch(BatchType::Unlogged, "reactions");
        let mut values: Vec<Vec<CqlValue>> = Vec::new();
        let post = || CqlValue::Text(update.post_id.clone());
        for (statement, members) in [
            (&s.count_member, &update.count),
            (&s.uncount_member, &update.uncount),
        ] {
            for member in members {
                batch.append_statement(statement.clone());
                values.push(vec![post(), CqlValue::Text(member.key())]);
            }
        }
        batch.append_statement(s.set_counts.clone());
        let signed = |n: u64| CqlValue::BigInt(i64::try_from(n).unwrap_or(i64::MAX));
        values.push(vec![
            signed(update.tally.likes),
            signed(update.tally.replies),
            post(),
        ]);
        batch.set_is_idempotent(true);
        self.cql
            .session
            .batch(&batch, values)
            .await
            .ctx("reactions.update_tally", &update.post_id)?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl ReactionStore for ScyllaReactions {
    async fn like(&self, user_id: &str, post_id: &str, at: Millis) -> Result<(), StoreError> {
        let s = self.statements().await?;
        const OP: &str = "reactions.like";
        let key = format!("{user_id}/{post_id}");
        // Read before write keeps the first like's time without a
        // lightweight transaction; two racing first likes leave one row
        // with either time, which is still one like.
        let existing = self
            .cql
            .maybe_row::<(Option<Millis>,)>(&s.like_of, (user_id, post_id))
            .await
            .ctx(OP, &key)?;
        if existing.is_none() {
            self.cql
                .execute(&s.like, (user_id, post_id, at))
                .await
                .ctx(OP, &key)?;
        }
        Ok(())
    }

    async fn unlike(&self, user_id: &str, post_id: &str) -> Result<(), StoreError> {
        let s = self.statements().await?;
        self.cql
            .execute(&s.unlike, (user_id, post_id))
            .await
            .ctx("reactions.unlike", &format!("{user_id}/{post_id}"))?;
        Ok(())
    }

    async fn liked_by(
        &self,
        user_id: &str,
        post_ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        let s = self.statements().await?;
        if post_ids.is_empty() {
            return Ok(HashSet::new());
        }
        let rows = self
            .cql
            .rows::<(String,)>(&s.liked_among, (user_id, post_ids))
            .await
            .ctx("reactions.liked_by", user_id)?;
        Ok(rows.into_iter().map(|(post,)| post).collect())
    }

    async fn put_reply(&self, r: &Reply) -> Result<(), StoreError> {
        let s = self.statements().await?;
        self.cql
            .execute(
                &s.put_reply,
                (&r.post_id, r.created_at, &r.reply_id, &r.author_id, &r.body),
            )
            .await
            .ctx("reactions.put_reply", &r.reply_id)?;
        Ok(())
    }

    async fn replies(
        &self,
        post_id: &str,
        after: Option<(Millis, String)>,
        limit: u32,
    ) -> Result<Vec<Reply>, StoreError> {
        let s = self.statements().await?;
        // Before every real reply: the first page.
        let (at, id) = after.unwrap_or((Millis::MIN, String::new()));
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows = self
            .cql
            .rows::<(String, String, Option<String>, Millis)>(
                &s.replies_after,
                (post_id, at, id, limit),
            )
            .await
            .ctx("reactions.replies", post_id)?;
        Ok(rows
            .into_iter()
            .map(|(reply_id, author_id, body, created_at)| Reply {
                reply_id,
                post_id: post_id.to_owned(),
                author_id,
                body: body.unwrap_or_default(),
                created_at,
            })
            .collect())
    }

    async fn tallies(&self, post_ids: &[String]) -> Result<HashMap<String, PostTally>, StoreError> {
        let tallies = self
            .cql
            .concurrently(post_ids, |post| self.tally("reactions.tallies", post))
            .await?;
        Ok(post_ids.iter().cloned().zip(tallies).collect())
    }

    async fn tally_state(
        &self,
        post_id: &str,
        members: &[TallyMember],
    ) -> Result<TallyState, StoreError> {
        let s = self.statements().await?;
        const OP: &str = "reactions.tally_state";
        let keys: Vec<String> = members.iter().map(TallyMember::key).collect();
        let counted = async {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            self.cql
                .rows::<(String,)>(&s.counted_among, (post_id, &keys))
                .await
                .ctx(OP, post_id)
        };
        let (tally, counted) = tokio::try_join!(self.tally(OP, post_id), counted)?;
        Ok(TallyState {
            tally,
            counted: counted
                .iter()
                .filter_map(|(key,)| TallyMember::from_key(key))
                .collect(),
        })
    }

    async fn update_tally(&self, update: &TallyUpdate) -> Result<(), StoreError> {
        // In order: each chunk's counts are those after it.
        for chunk in update.in_chunks(MEMBERS_PER_BATCH) {
            self.write_chunk(&chunk).await?;
        }
        Ok(())
    }
}
