//! Keeps feeds in step with follows: the `feed-follows` stage.
//!
//! The gateway changes the social graph, then writes a `FollowChanged` to
//! `tidings.feed.follows`, keyed by follower: one follower's changes reach
//! one consumer, in order. For each:
//!
//! - **followed**: the followee's newest `feed.backfill_posts` posts (those
//!   every follower may see; restricted ones are never listed by author) go
//!   into the follower's feed at their own times, so a new follow does not
//!   start from an empty page. Not for an author over the pull threshold
//!   (pulled, or still pulled under the hysteresis): readers pull theirs,
//!   and the stage marks them pulled if the planner has not yet.
//! - **unfollowed**: the followee's rows leave the follower's feed (reads
//!   hide them at once already; this frees the rows); then, if the followee
//!   is pulled and dropped well below the pull threshold, they are pushed
//!   again ([`CoolDown`]).
//!
//! Each step reads the graph first, so a record made stale by a quick
//! unfollow, follow back or replay does nothing wrong: rows are written
//! only while the follow holds and removed only once it does not. Writes
//! are upserts and deletes of exact rows, so replays change nothing.
//!
//! What this leaves behind: a fan-out slice planned while the follow held
//! and written after the unfollow's rows were removed puts one row back
//! (the feed-writer is another stage, and reads no graph). Reads never show
//! it (they show only authors still followed), a follow back would have
//! backfilled the post anyway, and trimming takes it out in time, as it
//! does the rows the pruner leaves (see `pruner`).

use tidings_config::FeedConfig;
use tidings_kafka::{Emitter, ProcessError, Processor, RecordMeta, Topics, now_millis};
use tidings_schemas::records::{FollowChanged, FollowKind};
use tidings_store::{FeedEntry, PullState, Store};
use tidings_telemetry::{FanoutOutcome, FeedFanout};
use tracing::debug;

use super::cool_down::{CoolDown, Reach};
use crate::enricher::store_failure;

/// Feed rows read at once while looking for an unfollowed author's.
const FEED_PAGE: u32 = 500;

pub struct FeedFollows {
    store: Store,
    cool_down: CoolDown,
    backfill_posts: u32,
    max_entries: usize,
}

impl FeedFollows {
    pub fn new(store: Store, topics: Topics, config: &FeedConfig) -> Self {
        Self {
            cool_down: CoolDown::new(store.clone(), topics, config),
            store,
            backfill_posts: config.backfill_posts,
            max_entries: config.max_entries,
        }
    }

    /// Whether `follower` follows `followee` now.
    async fn follows(&self, follower: &str, followee: &str) -> Result<bool, ProcessError> {
        let found = self
            .store
            .social_graph
            .followers_among(followee, &[follower.to_owned()])
            .await
            .map_err(store_failure)?;
        Ok(found.contains(follower))
    }

    /// Puts the followee's newest posts into the follower's feed.
    async fn backfill(&self, change: &FollowChanged) -> Result<(), ProcessError> {
        let (follower, followee) = (&change.follower_id, &change.followee_id);
        if !self.follows(follower, followee).await? {
            debug!(follower, followee, "unfollowed since: nothing to backfill");
            return Ok(());
        }
        let feed = &self.store.feed;
        let (followers, state) = tokio::try_join!(
            self.store.social_graph.follower_count(followee),
            feed.pull_state(followee),
        )
        .map_err(store_failure)?;
        if self.cool_down.hysteresis().reach(followers, state) == Reach::Pull {
            // Readers pull this author's posts, the new follower's reads
            // included. Marked here too, not only at their next post: the
            // follow that took them over the threshold must not leave the
            // follower without their posts, and a backfill racing their
            // next post must not push a post the planner pulls.
            if state != PullState::Pulled {
                feed.set_pull_state(followee, PullState::Pulled, now_millis())
                    .await
                    .map_err(store_failure)?;
            }
            return Ok(());
        }
        let posts = self
            .store
            .posts
            .by_author(followee, None, self.backfill_posts)
            .await
            .map_err(store_failure)?;
        if posts.is_empty() {
            return Ok(());
        }
        let rows: Vec<(String, FeedEntry)> = posts
            .into_iter()
            .map(|p| {
                let entry = FeedEntry {
                    post_id: p.post_id,
                    author_id: p.author_id,
                    created_at: p.created_at,
                };
                (follower.clone(), entry)
            })
            .collect();
        feed.append_many(&rows).await.map_err(store_failure)?;
        // Up to backfill_posts more rows at once: keep the feed's cap.
        feed.trim(follower, self.max_entries)
            .await
            .map_err(store_failure)?;
        FeedFanout {
            outcome: FanoutOutcome::Backfilled,
            count: rows.len() as u64,
        }
        .emit();
        Ok(())
    }

    /// Removes the followee's rows from the follower's feed.
    async fn remove(&self, change: &FollowChanged) -> Result<(), ProcessError> {
        let (follower, followee) = (&change.follower_id, &change.followee_id);
        if self.follows(follower, followee).await? {
            debug!(follower, followee, "followed again since: rows kept");
            return Ok(());
        }
        let feed = &self.store.feed;
        // Feeds are trimmed to `feed.max_entries` (a few hundred rows), so
        // reading one through is a few pages.
        let mut theirs = Vec::new();
        let mut before = None;
        loop {
            let page = feed
                .read(follower, before, FEED_PAGE)
                .await
                .map_err(store_failure)?;
            let last_page = page.len() < FEED_PAGE as usize;
            before = page.last().map(|e| (e.created_at, e.post_id.clone()));
            theirs.extend(
                page.into_iter()
                    .filter(|e| e.author_id == *followee)
                    .map(|e| (follower.clone(), e)),
            );
            if last_page {
                break;
            }
        }
        if !theirs.is_empty() {
            feed.remove_many(&theirs).await.map_err(store_failure)?;
            FeedFanout {
                outcome: FanoutOutcome::UnfollowRemoved,
                count: theirs.len() as u64,
            }
            .emit();
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Processor for FeedFollows {
    type Input = FollowChanged;
    type Prefetched = ();

    fn name(&self) -> &'static str {
        "feed-follows"
    }

    async fn process(
        &self,
        change: &FollowChanged,
        _: &(),
        _meta: &RecordMeta,
        out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        match change.kind {
            FollowKind::Followed => self.backfill(change).await,
            FollowKind::Unfollowed => {
                self.remove(change).await?;
                let followee = &change.followee_id;
                let (followers, state) = tokio::try_join!(
                    self.store.social_graph.follower_count(followee),
                    self.store.feed.pull_state(followee),
                )
                .map_err(store_failure)?;
                self.cool_down
                    .if_due(followee, followers, state, change.at, out)
                    .await?;
                Ok(())
            }
            // A kind of a newer build: nothing this one knows to do.
            FollowKind::Unknown => {
                debug!(follower = %change.follower_id, "follow change of an unknown kind skipped");
                Ok(())
            }
        }
    }
}
