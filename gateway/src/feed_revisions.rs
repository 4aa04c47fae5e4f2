//! Edits and deletes of posts, the gateway's half: `EditPost` and
//! `DeletePost` of `FeedService`, `PATCH`/`DELETE /v1/me/posts/{post_id}`
//! over HTTP (`feed_http.rs`), and the reader that keeps this gateway's
//! caches in step with every other gateway's revisions.
//!
//! Only a post's author may revise it. Each revision is a `PostRevised` on
//! `tidings.feed.revisions`, keyed by post id:
//!
//! - an **edit** changes the store first, then is announced. If Kafka does
//!   not take the record the call fails with `UNAVAILABLE` and the caller
//!   repeats it, which is safe (the same body again).
//! - a **delete** is announced first, then the store forgets the post.
//!   The other way round, a delete whose announcement failed could not be
//!   repeated (the post is gone, a repeat is `NOT_FOUND`) and would stay in
//!   feeds and caches. This way a failed delete leaves the post in the
//!   store, the caller repeats it, and a repeated announcement removes
//!   nothing twice. The feed-pruner stage removes its feed rows
//!   (`processors/src/feed/pruner.rs`).
//!
//! Every gateway reads the whole topic from its end with one consumer (as
//! the inbox events, `inbox_live.rs`) and drops the revised post and its
//! author's newest page from its caches (`feed_cache.rs`); a deleted post
//! is also never cached again, since reads may find it in the store for
//! the moment between its announcement and the store's delete. The gateway
//! that served the call drops them at once. What was cached before this
//! gateway's reader was assigned the topic is dropped when it is.

use std::time::Duration;

use rdkafka::ClientConfig;
use tidings_kafka::{Backoff, now_millis};
use tidings_schemas::{
    AvroCodec,
    records::{PostRevised, RevisionKind},
};
use tidings_store::{Post, Revised};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{info, warn};

use crate::{Gateway, feed_cache::FeedCaches, inbox_live::LiveReader, store_status, validate};

/// Group id of the revisions reader: never joined (it is assigned every
/// partition), one per process is fine.
const READER_GROUP: &str = "tidings-gateway-feed-revisions";

impl Gateway {
    /// The caller's post `post_id`: `INVALID_ARGUMENT` for what is not an
    /// id, `NOT_FOUND` for an unknown (or deleted) post,
    /// `PERMISSION_DENIED` for another user's, all naming `post_id`. Read
    /// from the store, not the cache: a post deleted on another gateway a
    /// moment ago may still be cached here.
    async fn own_post(&self, user: &str, post_id: &str) -> Result<Post, Status> {
        validate::id("post_id", post_id)?;
        let post = self
            .store
            .posts
            .get_many(&[post_id.to_owned()])
            .await
            .map_err(store_status)?
            .into_iter()
            .next()
            .ok_or_else(not_found)?;
        if post.author_id != user {
            return Err(validate::field_error(
                tonic::Code::PermissionDenied,
                "post_id",
                "is another user's post (only its author may change it)",
            ));
        }
        Ok(post)
    }

    /// Replaces the body of `user`'s post `post_id` (validated as a new
    /// post's, its media counting), then announces the edit.
    pub(crate) async fn edit_own_post(
        &self,
        user: &str,
        post_id: &str,
        body: String,
    ) -> Result<(), Status> {
        let post = self.own_post(user, post_id).await?;
        self.check_post_body(&body, !post.media_urls.is_empty())?;
        match self
            .store
            .posts
            .edit(&post, &body)
            .await
            .map_err(store_status)?
        {
            Revised::Applied => {}
            // Deleted since it was read.
            Revised::Missing => return Err(not_found()),
        }
        self.caches.forget(&post.post_id, &post.author_id);
        self.announce_revision(&post, RevisionKind::Edited)
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "the post is edited here, but the edit could not be queued for the other \
                     gateways: {e}; edit again"
                ))
            })
    }

    /// Deletes `user`'s post `post_id`: announced first, then forgotten by
    /// the store (see the module's doc for why).
    pub(crate) async fn delete_own_post(&self, user: &str, post_id: &str) -> Result<(), Status> {
        let post = self.own_post(user, post_id).await?;
        self.announce_revision(&post, RevisionKind::Deleted)
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "the post could not be queued for deletion: {e}; delete again"
                ))
            })?;
        self.caches.forget_deleted(&post.post_id, &post.author_id);
        // `Missing`: a racing delete of the same post won; gone either way.
        self.store.posts.delete(&post).await.map_err(store_status)?;
        Ok(())
    }

    async fn announce_revision(
        &self,
        post: &Post,
        kind: RevisionKind,
    ) -> Result<(), tidings_kafka::KafkaError> {
        let record = PostRevised {
            post_id: post.post_id.clone(),
            author_id: post.author_id.clone(),
            post_created_at: post.created_at,
            kind,
            at: now_millis(),
        };
        self.producer
            .send(self.topics.revisions(), &post.post_id, &record)
            .await?;
        Ok(())
    }
}

fn not_found() -> Status {
    validate::field_error(tonic::Code::NotFound, "post_id", "is not a post")
}

/// What one revision does to a gateway's caches.
fn apply(caches: &FeedCaches, revision: &PostRevised) {
    match revision.kind {
        RevisionKind::Deleted => caches.forget_deleted(&revision.post_id, &revision.author_id),
        // An unknown kind (a newer writer's) is safest treated as a change.
        RevisionKind::Edited | RevisionKind::Unknown => {
            caches.forget(&revision.post_id, &revision.author_id)
        }
    }
}

/// Reads the revisions topic into `caches` until `shutdown`.
pub(crate) fn spawn_reader(
    caches: std::sync::Arc<FeedCaches>,
    kafka: ClientConfig,
    topic: String,
    codec: AvroCodec,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let started = tokio::select! {
                _ = shutdown.cancelled() => return,
                started = LiveReader::start(&kafka, &topic, READER_GROUP) => started,
            };
            match started {
                Ok(reader) => {
                    // Whatever was cached before now may have been revised
                    // before the reader's starting offsets.
                    caches.forget_all();
                    info!(%topic, partitions = reader.partitions(), "reading post revisions for the feed caches");
                    reader
                        .run(&codec, &shutdown, |revision: PostRevised| {
                            apply(&caches, &revision)
                        })
                        .await;
                    return;
                }
                Err(e) => {
                    warn!(%topic, error = %e, "cannot read post revisions yet; cached posts are not dropped on edits and deletes elsewhere");
                    if !backoff.sleep_or_cancel(&shutdown).await {
                        return;
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn post(id: &str, author: &str) -> Post {
        Post {
            post_id: id.into(),
            author_id: author.into(),
            body: "hi".into(),
            media_urls: Vec::new(),
            created_at: 1,
        }
    }

    fn revision(kind: RevisionKind) -> PostRevised {
        PostRevised {
            post_id: "p1".into(),
            author_id: "a".into(),
            post_created_at: 1,
            kind,
            at: 2,
        }
    }

    #[test]
    fn an_edit_drops_the_post_and_a_delete_keeps_it_out() {
        let caches = FeedCaches::new(100);
        let mark = caches.mark();
        caches.keep_post(mark, post("p1", "a"));
        caches.keep_newest(mark, "a".into(), Arc::new(vec![post("p1", "a")]));
        apply(&caches, &revision(RevisionKind::Edited));
        assert!(caches.posts.get("p1").is_none());
        assert!(caches.newest.get("a").is_none());
        // The edited post is cached again when read.
        caches.keep_post(caches.mark(), post("p1", "a"));
        assert!(caches.posts.get("p1").is_some());

        apply(&caches, &revision(RevisionKind::Deleted));
        assert!(caches.posts.get("p1").is_none());
        caches.keep_post(caches.mark(), post("p1", "a"));
        assert!(caches.posts.get("p1").is_none(), "deleted: never again");
    }
}
