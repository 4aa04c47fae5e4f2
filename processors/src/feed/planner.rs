//! Plans a post's fan-out: who gets it pushed, in slices.

use tidings_config::FeedConfig;
use tidings_kafka::{Emitter, ProcessError, Processor, RecordMeta, Topics, now_millis};
use tidings_schemas::records::{FanoutBatch, PostPublished};
use tidings_store::{Millis, PullState, SocialGraph, Store};
use tidings_telemetry::{FanoutOutcome, FeedFanout};
use tracing::{debug, info};

use super::cool_down::{CoolDown, Hysteresis, Reach};
use crate::enricher::store_failure;

pub struct FanoutPlanner {
    store: Store,
    topics: Topics,
    hysteresis: Hysteresis,
    cool_down: CoolDown,
    slice_size: usize,
}

impl FanoutPlanner {
    pub fn new(store: Store, topics: Topics, config: &FeedConfig) -> Self {
        let cool_down = CoolDown::new(store.clone(), topics.clone(), config);
        Self {
            store,
            topics,
            hysteresis: cool_down.hysteresis(),
            cool_down,
            slice_size: config.slice_size.max(1),
        }
    }
}

/// One post's fan-out as `FanoutBatch` records on `tidings.feed.fanout`,
/// numbered from 0: what each slice says besides its recipients.
pub(crate) struct Slices<'a> {
    topic: &'a str,
    post_id: &'a str,
    author_id: &'a str,
    created_at: Millis,
    next: i32,
}

impl<'a> Slices<'a> {
    pub(crate) fn new(
        topic: &'a str,
        post_id: &'a str,
        author_id: &'a str,
        created_at: Millis,
    ) -> Self {
        Self {
            topic,
            post_id,
            author_id,
            created_at,
            next: 0,
        }
    }

    /// Emits `recipients` as the next slice.
    pub(crate) fn emit(
        &mut self,
        recipients: &[String],
        out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        out.emit(
            self.topic,
            &slice_key(self.post_id, self.next),
            &FanoutBatch {
                post_id: self.post_id.to_owned(),
                author_id: self.author_id.to_owned(),
                created_at: self.created_at,
                recipients: recipients.to_vec(),
                batch_index: self.next,
            },
        )?;
        self.next += 1;
        Ok(())
    }

    /// Slices emitted so far.
    pub(crate) fn emitted(&self) -> i32 {
        self.next
    }
}

/// Pages through `author`'s followers and hands them to `each` in slices of
/// `slice_size`, the author first (an author sees their own posts): one
/// page of followers in memory at a time, however many there are.
pub(crate) async fn follower_slices(
    graph: &dyn SocialGraph,
    author: &str,
    slice_size: usize,
    mut each: impl FnMut(&[String]) -> Result<(), ProcessError> + Send,
) -> Result<(), ProcessError> {
    let slice_size = slice_size.max(1);
    let page = u32::try_from(slice_size).unwrap_or(u32::MAX);
    let mut recipients = vec![author.to_owned()];
    let mut after: Option<String> = None;
    loop {
        let ids = graph
            .followers(author, after.clone(), page)
            .await
            .map_err(store_failure)?;
        let last_page = ids.len() < slice_size;
        after = ids.last().cloned();
        recipients.extend(ids);
        // Full slices now; the remainder waits for the next page.
        let ready = if last_page {
            recipients.len()
        } else {
            recipients.len() - recipients.len() % slice_size
        };
        for slice in recipients[..ready].chunks(slice_size) {
            each(slice)?;
        }
        recipients.drain(..ready);
        if last_page {
            return Ok(());
        }
    }
}

/// The key of slice `index` of a post: slices of one post land on different
/// partitions, and a replayed slice on the same one.
pub fn slice_key(post_id: &str, index: i32) -> String {
    format!("{post_id}:{index}")
}

#[async_trait::async_trait]
impl Processor for FanoutPlanner {
    type Input = PostPublished;
    type Prefetched = ();

    fn name(&self) -> &'static str {
        "feed-planner"
    }

    async fn process(
        &self,
        post: &PostPublished,
        _: &(),
        _meta: &RecordMeta,
        out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        let graph = &self.store.social_graph;
        let topic = self.topics.fanout();
        let mut slices = Slices::new(topic, &post.post_id, &post.author_id, post.created_at);
        if let Some(audience) = &post.audience {
            // Shared with some followers only: pushed to those, whatever
            // the author's size (the gateway caps an audience at the friend
            // cap); the store never lists it for pulling.
            let chosen = graph
                .followers_among(&post.author_id, audience)
                .await
                .map_err(store_failure)?;
            let mut recipients = vec![post.author_id.clone()];
            recipients.extend(audience.iter().filter(|u| chosen.contains(*u)).cloned());
            for slice in recipients.chunks(self.slice_size) {
                slices.emit(slice, out)?;
            }
            debug!(post_id = %post.post_id, audience = audience.len(), recipients = chosen.len(), slices = slices.emitted(), "restricted fan-out planned");
            return Ok(());
        }
        let (followers, state) = tokio::try_join!(
            graph.follower_count(&post.author_id),
            self.store.feed.pull_state(&post.author_id),
        )
        .map_err(store_failure)?;
        if self.hysteresis.reach(followers, state) == Reach::Pull {
            // Too many followers to push to: they pull this author's posts
            // when they read. Posts pushed earlier remain, and reads drop
            // the duplicates; a cool-down in progress is called off.
            if state != PullState::Pulled {
                self.store
                    .feed
                    .set_pull_state(&post.author_id, PullState::Pulled, now_millis())
                    .await
                    .map_err(store_failure)?;
                info!(author = %post.author_id, followers, post_id = %post.post_id, "author pulled at read time");
            }
            FeedFanout {
                outcome: FanoutOutcome::PulledPost,
                count: 1,
            }
            .emit();
            return Ok(());
        }
        // A pulled author who dropped below the push-again mark without an
        // unfollow passing through feed-follows (it was not running, say):
        // pushed again here, this post with their newest ones.
        if self
            .cool_down
            .if_due(&post.author_id, followers, state, post.created_at, out)
            .await?
        {
            return Ok(());
        }
        follower_slices(
            graph.as_ref(),
            &post.author_id,
            self.slice_size,
            |recipients| slices.emit(recipients, &mut *out),
        )
        .await?;
        let slices = slices.emitted();
        debug!(post_id = %post.post_id, followers, slices, "fan-out planned");
        Ok(())
    }
}
