//! Plans a post's fan-out: who gets it pushed, in slices.

use tidings_config::FeedConfig;
use tidings_kafka::{Emitter, ProcessError, Processor, RecordMeta, Topics, now_millis};
use tidings_schemas::records::{FanoutBatch, PostPublished};
use tidings_store::Store;
use tidings_telemetry::metrics;
use tracing::{debug, info};

use crate::enricher::store_failure;

pub struct FanoutPlanner {
    store: Store,
    topics: Topics,
    pull_threshold: u64,
    slice_size: usize,
}

impl FanoutPlanner {
    pub fn new(store: Store, topics: Topics, config: &FeedConfig) -> Self {
        Self {
            store,
            topics,
            pull_threshold: config.pull_threshold,
            slice_size: config.slice_size.max(1),
        }
    }
}

impl FanoutPlanner {
    /// Emits `recipients` as slices numbered from `first`; answers the next
    /// slice number.
    fn emit_slices(
        &self,
        post: &PostPublished,
        recipients: Vec<String>,
        first: i32,
        out: &mut Emitter<'_>,
    ) -> Result<i32, ProcessError> {
        let topic = self.topics.fanout();
        let mut index = first;
        for slice in recipients.chunks(self.slice_size) {
            out.emit(
                &topic,
                &slice_key(&post.post_id, index),
                &FanoutBatch {
                    post_id: post.post_id.clone(),
                    author_id: post.author_id.clone(),
                    created_at: post.created_at,
                    recipients: slice.to_vec(),
                    batch_index: index,
                },
            )?;
            index += 1;
        }
        Ok(index)
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

    async fn prefetch(&self, _batch: &[(&PostPublished, &RecordMeta)]) {}

    async fn process(
        &self,
        post: &PostPublished,
        _: &(),
        _meta: &RecordMeta,
        out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        let graph = &self.store.social_graph;
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
            let slices = self.emit_slices(post, recipients, 0, out)?;
            debug!(post_id = %post.post_id, audience = audience.len(), recipients = chosen.len(), slices, "restricted fan-out planned");
            return Ok(());
        }
        let followers = graph
            .follower_count(&post.author_id)
            .await
            .map_err(store_failure)?;
        if followers > self.pull_threshold {
            // Too many followers to push to: they pull this author's posts
            // when they read. Marking is idempotent; an author stays pulled
            // (posts pushed earlier remain, and reads drop the duplicates).
            self.store
                .feed
                .set_pulled_author(&post.author_id, true, now_millis())
                .await
                .map_err(store_failure)?;
            metrics()
                .feed_fanout
                .with_label_values(&["pulled_post"])
                .inc();
            info!(author = %post.author_id, followers, post_id = %post.post_id, "author pulled at read time");
            return Ok(());
        }
        let page = u32::try_from(self.slice_size).unwrap_or(u32::MAX);
        // The author sees their own post, in the first slice.
        let mut recipients = vec![post.author_id.clone()];
        let mut after: Option<String> = None;
        let mut slices = 0;
        loop {
            let ids = graph
                .followers(&post.author_id, after.clone(), page)
                .await
                .map_err(store_failure)?;
            let last_page = ids.len() < self.slice_size;
            after = ids.last().cloned();
            recipients.extend(ids);
            if last_page {
                slices = self.emit_slices(post, recipients, slices, out)?;
                break;
            }
            // Full slices now; the remainder waits for the next page.
            let whole = recipients.len() - recipients.len() % self.slice_size;
            let rest = recipients.split_off(whole);
            slices = self.emit_slices(post, recipients, slices, out)?;
            recipients = rest;
        }
        debug!(post_id = %post.post_id, followers, slices, "fan-out planned");
        Ok(())
    }
}
