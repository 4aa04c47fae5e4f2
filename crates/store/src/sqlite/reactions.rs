//! [`ReactionStore`](crate::ReactionStore) on SQLite: the `likes`,
//! `replies`, `post_tallies` and `post_tally_members` tables. A tally update
//! is one store call, so members and counts commit together.

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, params};

use super::{Context, Db};
use crate::reactions::{PostTally, ReactionStore, Reply, TallyMember, TallyState, TallyUpdate};
use crate::{Millis, StoreError};

pub(crate) struct SqliteReactions(pub(crate) Db);

/// The stored counts of `post_id`, zero when never counted.
fn tally(c: &Connection, post_id: &str) -> rusqlite::Result<PostTally> {
    let counts: Option<(i64, i64)> = c
        .prepare_cached("SELECT likes, replies FROM post_tallies WHERE post_id = ?1")?
        .query_row([post_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (likes, replies) = counts.unwrap_or_default();
    Ok(PostTally {
        likes: u64::try_from(likes).unwrap_or(0),
        replies: u64::try_from(replies).unwrap_or(0),
    })
}

/// SQLite integers are signed; a count never comes near the limit.
fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait::async_trait]
impl ReactionStore for SqliteReactions {
    async fn like(&self, user_id: &str, post_id: &str, at: Millis) -> Result<(), StoreError> {
        let (user, post) = (user_id.to_owned(), post_id.to_owned());
        self.0
            .call(move |c| {
                c.prepare_cached(
                    "INSERT OR IGNORE INTO likes (user_id, post_id, liked_at) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![user, post, at])
            })
            .await
            .ctx("reactions.like", &format!("{user_id}/{post_id}"))?;
        Ok(())
    }

    async fn unlike(&self, user_id: &str, post_id: &str) -> Result<(), StoreError> {
        let (user, post) = (user_id.to_owned(), post_id.to_owned());
        self.0
            .call(move |c| {
                c.prepare_cached("DELETE FROM likes WHERE user_id = ?1 AND post_id = ?2")?
                    .execute([&user, &post])
            })
            .await
            .ctx("reactions.unlike", &format!("{user_id}/{post_id}"))?;
        Ok(())
    }

    async fn liked_by(
        &self,
        user_id: &str,
        post_ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        let (user, posts) = (user_id.to_owned(), post_ids.to_vec());
        self.0
            .call(move |c| {
                let mut stmt =
                    c.prepare_cached("SELECT 1 FROM likes WHERE user_id = ?1 AND post_id = ?2")?;
                let mut liked = HashSet::new();
                for post in &posts {
                    if stmt.exists([&user, post])? {
                        liked.insert(post.clone());
                    }
                }
                Ok(liked)
            })
            .await
            .ctx("reactions.liked_by", user_id)
    }

    async fn put_reply(&self, reply: &Reply) -> Result<(), StoreError> {
        let r = reply.clone();
        self.0
            .call(move |c| {
                c.prepare_cached(
                    "INSERT OR REPLACE INTO replies (post_id, created_at, reply_id, author_id, body)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![r.post_id, r.created_at, r.reply_id, r.author_id, r.body])
            })
            .await
            .ctx("reactions.put_reply", &reply.reply_id)?;
        Ok(())
    }

    async fn replies(
        &self,
        post_id: &str,
        after: Option<(Millis, String)>,
        limit: u32,
    ) -> Result<Vec<Reply>, StoreError> {
        let post = post_id.to_owned();
        // Before every real reply: the first page.
        let (at, id) = after.unwrap_or((Millis::MIN, String::new()));
        self.0
            .call(move |c| {
                c.prepare_cached(
                    "SELECT reply_id, author_id, body, created_at FROM replies
                     WHERE post_id = ?1 AND (created_at, reply_id) > (?2, ?3)
                     ORDER BY created_at, reply_id LIMIT ?4",
                )?
                .query_map(params![post, at, id, limit], |r| {
                    Ok(Reply {
                        reply_id: r.get(0)?,
                        post_id: post.clone(),
                        author_id: r.get(1)?,
                        body: r.get(2)?,
                        created_at: r.get(3)?,
                    })
                })?
                .collect()
            })
            .await
            .ctx("reactions.replies", post_id)
    }

    async fn tallies(&self, post_ids: &[String]) -> Result<HashMap<String, PostTally>, StoreError> {
        let posts = post_ids.to_vec();
        self.0
            .call(move |c| {
                let mut tallies = HashMap::with_capacity(posts.len());
                for post in &posts {
                    let counts = tally(c, post)?;
                    tallies.insert(post.clone(), counts);
                }
                Ok(tallies)
            })
            .await
            .ctx("reactions.tallies", &format!("{} posts", post_ids.len()))
    }

    async fn tally_state(
        &self,
        post_id: &str,
        members: &[TallyMember],
    ) -> Result<TallyState, StoreError> {
        let (post, members) = (post_id.to_owned(), members.to_vec());
        self.0
            .call(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT 1 FROM post_tally_members WHERE post_id = ?1 AND member = ?2",
                )?;
                let mut counted = HashSet::new();
                for member in &members {
                    if stmt.exists([&post, &member.key()])? {
                        counted.insert(member.clone());
                    }
                }
                Ok(TallyState {
                    tally: tally(c, &post)?,
                    counted,
                })
            })
            .await
            .ctx("reactions.tally_state", post_id)
    }

    async fn update_tally(&self, update: &TallyUpdate) -> Result<(), StoreError> {
        let u = update.clone();
        self.0
            .call(move |c| {
                {
                    let mut count = c.prepare_cached(
                        "INSERT OR IGNORE INTO post_tally_members (post_id, member) VALUES (?1, ?2)",
                    )?;
                    for member in &u.count {
                        count.execute([&u.post_id, &member.key()])?;
                    }
                    let mut uncount = c.prepare_cached(
                        "DELETE FROM post_tally_members WHERE post_id = ?1 AND member = ?2",
                    )?;
                    for member in &u.uncount {
                        uncount.execute([&u.post_id, &member.key()])?;
                    }
                    c.prepare_cached(
                        "INSERT OR REPLACE INTO post_tallies (post_id, likes, replies) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![u.post_id, signed(u.tally.likes), signed(u.tally.replies)])?;
                }
                Ok(())
            })
            .await
            .ctx("reactions.update_tally", &update.post_id)
    }
}
