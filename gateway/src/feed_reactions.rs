//! Likes and replies, the gateway's half: `Like`, `Unlike`, `Reply` and
//! `ListReplies` of `FeedService`, and `/v1/me/likes/{post_id}` and
//! `/v1/posts/{post_id}/replies` over HTTP (`feed_http.rs`).
//!
//! A like or a reply is written to the store first (the truth: a user sees
//! their own like at once), then announced as a `PostReaction` on
//! `tidings.feed.reactions`, keyed by post id, for the feed-tally stage,
//! which keeps the counts and tells the post's author
//! (`processors/src/feed/tally.rs`). If Kafka does not take the record the
//! call fails with `UNAVAILABLE`: the caller repeats it, which is safe (a
//! like is one row however often it is given; a repeated reply is a new
//! reply, as a repeated post is a new post).

use tidings_kafka::now_millis;
use tidings_schemas::records::{PostReaction, ReactionKind};
use tidings_store::{Post, Reply, User};
use tonic::Status;
use uuid::Uuid;

use crate::{
    Gateway,
    feed::{Budget, Cursor},
    store_status, validate,
};

/// A page of a post's replies, oldest first, with their authors.
pub struct ReplyPage {
    pub items: Vec<(Reply, User)>,
    /// `None` when there is nothing newer yet.
    pub next_cursor: Option<String>,
}

impl Gateway {
    /// The post `post_id` names: `INVALID_ARGUMENT` for what is not an id,
    /// `NOT_FOUND` for an unknown post, both naming `post_id`.
    async fn reacted_post(&self, post_id: &str) -> Result<Post, Status> {
        validate::id("post_id", post_id)?;
        if let Some(post) = self.caches.posts.get(post_id) {
            return Ok(post);
        }
        let mark = self.caches.mark();
        let post = self
            .store
            .posts
            .get_many(&[post_id.to_owned()])
            .await
            .map_err(store_status)?
            .into_iter()
            .next()
            .ok_or_else(|| {
                validate::field_error(tonic::Code::NotFound, "post_id", "is not a post")
            })?;
        // Unless an edit or delete came in meanwhile (`feed_cache.rs`).
        self.caches.keep_post(mark, post.clone());
        Ok(post)
    }

    /// Likes `post_id` as `user` (or, with `like` false, takes the like
    /// back), then announces it for counting.
    pub(crate) async fn set_like(
        &self,
        user: &str,
        post_id: &str,
        like: bool,
    ) -> Result<(), Status> {
        let post = self.reacted_post(post_id).await?;
        let now = now_millis();
        let reactions = &self.store.reactions;
        if like {
            reactions.like(user, post_id, now).await
        } else {
            reactions.unlike(user, post_id).await
        }
        .map_err(store_status)?;
        let kind = if like {
            ReactionKind::Like
        } else {
            ReactionKind::Unlike
        };
        self.announce_reaction(&post, user, kind, None, now).await
    }

    /// Stores `body` as `user`'s reply to `post_id` and announces it.
    pub(crate) async fn reply_to_post(
        &self,
        user: &str,
        post_id: &str,
        body: String,
    ) -> Result<Reply, Status> {
        if body.trim().is_empty() {
            return Err(validate::invalid("body", "is empty"));
        }
        let chars = body.chars().count();
        let max = self.feed.max_body_chars;
        if chars > max {
            return Err(validate::invalid(
                "body",
                format!("has {chars} characters, more than {max}"),
            ));
        }
        let post = self.reacted_post(post_id).await?;
        let now = now_millis();
        let reply = Reply {
            reply_id: Uuid::now_v7().to_string(),
            post_id: post.post_id.clone(),
            author_id: user.to_owned(),
            body,
            created_at: now,
        };
        self.admit(Budget::Replies, user, &reply.reply_id, now)
            .await?;
        self.store
            .reactions
            .put_reply(&reply)
            .await
            .map_err(store_status)?;
        self.announce_reaction(&post, user, ReactionKind::Reply, Some(&reply), now)
            .await?;
        Ok(reply)
    }

    /// A page of `post_id`'s replies after `cursor`, oldest first.
    pub(crate) async fn list_replies(
        &self,
        post_id: &str,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<ReplyPage, Status> {
        self.reacted_post(post_id).await?;
        let after = cursor.map(|c| (c.at, c.post_id));
        let mut replies = self
            .store
            .reactions
            .replies(post_id, after, limit + 1)
            .await
            .map_err(store_status)?;
        let more = replies.len() > limit as usize;
        replies.truncate(limit as usize);
        let next_cursor = more.then(|| {
            let last = replies.last().expect("a full page");
            Cursor {
                at: last.created_at,
                post_id: last.reply_id.clone(),
            }
            .encode()
        });
        let author_ids: Vec<String> = replies.iter().map(|r| r.author_id.clone()).collect();
        let authors = self.authors(&author_ids).await?;
        let items = replies
            .into_iter()
            .map(|r| {
                let author = authors
                    .get(&r.author_id)
                    .cloned()
                    .unwrap_or_else(|| crate::feed::unnamed(&r.author_id));
                (r, author)
            })
            .collect();
        Ok(ReplyPage { items, next_cursor })
    }

    /// Writes the `PostReaction` the tally stage counts.
    async fn announce_reaction(
        &self,
        post: &Post,
        user: &str,
        kind: ReactionKind,
        reply: Option<&Reply>,
        at: i64,
    ) -> Result<(), Status> {
        let record = PostReaction {
            post_id: post.post_id.clone(),
            post_author_id: post.author_id.clone(),
            user_id: user.to_owned(),
            kind,
            reply_id: reply.map(|r| r.reply_id.clone()),
            reply_body: reply.map(|r| r.body.clone()),
            at,
        };
        // Stored but not announced, the reaction is not counted: the caller
        // is told to repeat it (which is safe, see the module docs).
        self.producer
            .send(self.topics.reactions(), &post.post_id, &record)
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "the reaction is stored but could not be queued for counting: {e}; repeat the call"
                ))
            })?;
        Ok(())
    }
}
