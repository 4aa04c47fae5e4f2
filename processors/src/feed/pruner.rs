//! Removes a deleted post's feed rows: `tidings.feed.revisions` -> deletes
//! in the feed tables. The gateway has stopped showing the post already
//! (it is gone from the store and every gateway's caches); this stage
//! takes its rows out of the feeds it was pushed to, so they neither take a
//! place in a trimmed feed nor wait for trimming to go. An edit needs
//! nothing here: feeds hold ids, and the body is read from the store.
//!
//! Which feeds hold the post: the author's and those of the followers the
//! planner pushed it to. The followers are paged as the planner pages them
//! and each page's rows removed in one call. What is cheap and correct for
//! an author pulled at read time, whose followers may be millions:
//!
//! - a post published while the author was pulled has no rows at all, and
//!   walking millions of followers to delete rows that do not exist would
//!   cost as much as a fan-out (and, on Cassandra, a tombstone per
//!   follower);
//! - but a pulled author's post may have rows: it was pushed before the
//!   author grew past the threshold, or it was shared with an audience
//!   (pushed whatever the author's size);
//! - every pushed post has a row in its author's own feed (the planner puts
//!   the author in the first slice, and a cooled-down author's re-pushed
//!   posts go to the author too), and a pulled one never has.
//!
//! So for a pulled author the stage looks up the author's own row (a read
//! of the rows at the post's millisecond) and walks the followers only if
//! it is there; an author who is not pulled has few enough followers to
//! walk always. The author's row is removed last, so a batch replayed
//! after a crash still finds it and walks again. What this leaves behind:
//! the rows of a post pushed long ago whose author is pulled now and whose
//! own row was trimmed since; reads never show them (the post is gone from
//! the store) and trimming takes them out in time.
//!
//! Idempotent under replay: removing a missing row is no error.

use tidings_config::FeedConfig;
use tidings_kafka::{Emitter, ProcessError, Processor, RecordMeta};
use tidings_schemas::records::{PostRevised, RevisionKind};
use tidings_store::{FeedEntry, Store, StoreError};
use tracing::debug;

use crate::enricher::store_failure;

/// Rows at one millisecond read at a time when looking for the author's.
const PROBE_PAGE: u32 = 50;

pub struct FeedPruner {
    store: Store,
    page: u32,
}

impl FeedPruner {
    pub fn new(store: Store, config: &FeedConfig) -> Self {
        Self {
            store,
            // The planner's slice: a page of followers is as many rows as
            // one fan-out batch wrote.
            page: u32::try_from(config.slice_size.max(1)).unwrap_or(u32::MAX),
        }
    }

    /// Whether `owner`'s feed holds `entry`: reads the rows at the entry's
    /// millisecond (strictly older than the next one), newest first.
    async fn holds(&self, owner: &str, entry: &FeedEntry) -> Result<bool, StoreError> {
        let mut before = (entry.created_at.saturating_add(1), String::new());
        loop {
            let rows = self
                .store
                .feed
                .read(owner, Some(before), PROBE_PAGE)
                .await?;
            for row in &rows {
                if row.created_at < entry.created_at {
                    return Ok(false);
                }
                if row.post_id == entry.post_id {
                    return Ok(true);
                }
            }
            match rows.last() {
                Some(last) if rows.len() == PROBE_PAGE as usize => {
                    before = (last.created_at, last.post_id.clone());
                }
                _ => return Ok(false),
            }
        }
    }

    /// Removes `entry` from the feed of every follower of its author;
    /// answers how many rows it asked to remove.
    async fn remove_from_followers(&self, entry: &FeedEntry) -> Result<usize, StoreError> {
        let graph = &self.store.social_graph;
        let mut after: Option<String> = None;
        let mut removed = 0;
        loop {
            let followers = graph
                .followers(&entry.author_id, after.take(), self.page)
                .await?;
            let last_page = followers.len() < self.page as usize;
            let rows: Vec<(String, FeedEntry)> = followers
                .iter()
                .map(|f| (f.clone(), entry.clone()))
                .collect();
            self.store.feed.remove_many(&rows).await?;
            removed += rows.len();
            if last_page {
                return Ok(removed);
            }
            after = followers.last().cloned();
        }
    }

    async fn prune(&self, revision: &PostRevised) -> Result<(), StoreError> {
        let entry = FeedEntry {
            post_id: revision.post_id.clone(),
            author_id: revision.author_id.clone(),
            created_at: revision.post_created_at,
        };
        let author = &revision.author_id;
        let pulled = self.store.feed.pulled_authors().await?.contains(author);
        let walk = !pulled || self.holds(author, &entry).await?;
        let removed = if walk {
            self.remove_from_followers(&entry).await?
        } else {
            0
        };
        // Last: a replay finds it and walks again.
        self.store
            .feed
            .remove_many(&[(author.clone(), entry)])
            .await?;
        debug!(post_id = %revision.post_id, %author, pulled, walked = walk, followers = removed, "deleted post's feed rows removed");
        Ok(())
    }
}

#[async_trait::async_trait]
impl Processor for FeedPruner {
    type Input = PostRevised;
    type Prefetched = ();

    fn name(&self) -> &'static str {
        "feed-pruner"
    }

    async fn process(
        &self,
        revision: &PostRevised,
        _: &(),
        _meta: &RecordMeta,
        _out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        match revision.kind {
            RevisionKind::Deleted => self.prune(revision).await.map_err(store_failure),
            // Feeds hold ids: an edit is read from the store.
            RevisionKind::Edited | RevisionKind::Unknown => Ok(()),
        }
    }
}
