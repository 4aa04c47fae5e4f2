//! Stars cool down: when an author's posts are pulled at read time instead
//! of pushed, with hysteresis, and pushing a pulled author again without
//! losing or doubling a post in any follower's feed.
//!
//! An author is pulled once their followers exceed `feed.pull_threshold`
//! (the planner marks them), and pushed again only once they drop below
//! `feed.push_again_ratio` of it, so an author near the threshold does not
//! flip at every follow. Pushing again ([`CoolDown::run`]):
//!
//! 1. the author is marked [`PullState::Cooling`] until the cool-down's end:
//!    readers keep pulling their posts, and the planner pushes every new
//!    post of theirs like any author's;
//! 2. their newest `feed.backfill_posts` posts go to every follower (and the
//!    author) as `FanoutBatch` slices, which the writers put into the feeds
//!    at the posts' own times;
//! 3. when the cool-down ends, readers stop pulling, and the posts are in
//!    the feeds by then (`feed.cool_down_secs` is longer than the fan-out's
//!    lag). Meanwhile a post may come both ways, and reads drop the
//!    duplicate.
//!
//! A post the planner left to pullers was stored before the planner read
//! the author's state, so before step 2 reads the newest posts: none falls
//! between the two.
//!
//! The cool-down's end is derived from the record that started it, so a
//! record replayed after a crash (its slices never produced, the mark
//! already written) recognises its own cool-down and emits the slices again.

use tidings_config::FeedConfig;
use tidings_kafka::{Emitter, ProcessError, Topics};
use tidings_store::{Millis, PullState, Store};
use tidings_telemetry::{FanoutOutcome, FeedFanout};
use tracing::info;

use super::planner::{Slices, follower_slices};
use crate::enricher::store_failure;

/// How an author's next post reaches feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Fanned out into every follower's feed.
    Push,
    /// Pulled by readers at read time.
    Pull,
}

/// The thresholds between pushed and pulled authors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    /// More followers than this: pulled.
    pull_above: u64,
    /// A pulled author with fewer followers than this is pushed again.
    push_again_below: u64,
}

impl Hysteresis {
    pub fn new(config: &FeedConfig) -> Self {
        let below = (config.pull_threshold as f64 * config.push_again_ratio).floor();
        Self {
            pull_above: config.pull_threshold,
            // A ratio of at most 1 keeps this at most the threshold.
            push_again_below: (below as u64).min(config.pull_threshold),
        }
    }

    /// How the post of an author with `followers`, now in `state`, reaches
    /// feeds: pulled above the threshold, and a pulled author stays pulled
    /// until below the push-again mark.
    pub fn reach(&self, followers: u64, state: PullState) -> Reach {
        if followers > self.pull_above {
            return Reach::Pull;
        }
        match state {
            PullState::Pulled if followers >= self.push_again_below => Reach::Pull,
            _ => Reach::Push,
        }
    }

    /// Whether to (re)run the cool-down that would end at `until` for an
    /// author with `followers` in `state`: a pulled author who dropped below
    /// the push-again mark, or the same cool-down already marked (the record
    /// that started it, replayed: its slices may never have been produced).
    pub fn cools_down(&self, followers: u64, state: PullState, until: Millis) -> bool {
        match state {
            PullState::Pulled => self.reach(followers, state) == Reach::Push,
            PullState::Cooling { until: marked } => marked == until,
            PullState::Pushed => false,
        }
    }
}

/// Pushes a pulled author again (see the module docs).
pub struct CoolDown {
    store: Store,
    topics: Topics,
    hysteresis: Hysteresis,
    slice_size: usize,
    backfill_posts: u32,
    cool_down_ms: Millis,
}

impl CoolDown {
    pub fn new(store: Store, topics: Topics, config: &FeedConfig) -> Self {
        Self {
            store,
            topics,
            hysteresis: Hysteresis::new(config),
            slice_size: config.slice_size.max(1),
            backfill_posts: config.backfill_posts,
            cool_down_ms: Millis::try_from(config.cool_down_secs.saturating_mul(1_000))
                .unwrap_or(Millis::MAX),
        }
    }

    pub fn hysteresis(&self) -> Hysteresis {
        self.hysteresis
    }

    /// The end of a cool-down started by a record of time `at`.
    pub fn until(&self, at: Millis) -> Millis {
        at.saturating_add(self.cool_down_ms)
    }

    /// Pushes `author`, with `followers` and now in `state`, again if they
    /// are pulled and dropped below the push-again mark; `at` is the time of
    /// the record that asks (an unfollow, a post). Answers whether it did.
    pub async fn if_due(
        &self,
        author: &str,
        followers: u64,
        state: PullState,
        at: Millis,
        out: &mut Emitter<'_>,
    ) -> Result<bool, ProcessError> {
        let until = self.until(at);
        if !self.hysteresis.cools_down(followers, state, until) {
            return Ok(false);
        }
        self.run(author, at, until, out).await?;
        info!(author, followers, until, "pulled author pushed again");
        Ok(true)
    }

    /// Marks `author` cooling until `until`, then emits their newest posts
    /// to every follower.
    async fn run(
        &self,
        author: &str,
        at: Millis,
        until: Millis,
        out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        // First the mark, then the newest posts: a post the planner left to
        // pullers before the mark is among them (see the module docs).
        self.store
            .feed
            .set_pull_state(author, PullState::Cooling { until }, at)
            .await
            .map_err(store_failure)?;
        let posts = self
            .store
            .posts
            .by_author(author, None, self.backfill_posts)
            .await
            .map_err(store_failure)?;
        let topic = self.topics.fanout();
        let mut slices: Vec<Slices<'_>> = posts
            .iter()
            .map(|p| Slices::new(topic, &p.post_id, &p.author_id, p.created_at))
            .collect();
        follower_slices(
            self.store.social_graph.as_ref(),
            author,
            self.slice_size,
            |recipients| {
                slices
                    .iter_mut()
                    .try_for_each(|post| post.emit(recipients, &mut *out))
            },
        )
        .await?;
        FeedFanout {
            outcome: FanoutOutcome::CooledDown,
            count: 1,
        }
        .emit();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hysteresis(pull_threshold: u64, push_again_ratio: f64) -> Hysteresis {
        Hysteresis::new(&FeedConfig {
            pull_threshold,
            push_again_ratio,
            ..FeedConfig::default()
        })
    }

    #[test]
    fn pulled_above_the_threshold_and_pushed_again_only_well_below_it() {
        let h = hysteresis(10, 0.8);
        for state in [
            PullState::Pushed,
            PullState::Pulled,
            PullState::Cooling { until: 1 },
        ] {
            assert_eq!(h.reach(11, state), Reach::Pull, "{state:?}");
            assert_eq!(h.reach(7, state), Reach::Push, "{state:?}");
        }
        // Between 80% and the threshold: as the author was.
        for followers in 8..=10 {
            assert_eq!(h.reach(followers, PullState::Pushed), Reach::Push);
            assert_eq!(h.reach(followers, PullState::Pulled), Reach::Pull);
            // Cooling authors are pushed: their new posts must reach the
            // feeds before readers stop pulling.
            let cooling = PullState::Cooling { until: 1 };
            assert_eq!(h.reach(followers, cooling), Reach::Push);
        }
    }

    #[test]
    fn a_ratio_of_one_is_a_plain_threshold() {
        let h = hysteresis(10, 1.0);
        assert_eq!(h.reach(10, PullState::Pulled), Reach::Pull);
        assert_eq!(h.reach(9, PullState::Pulled), Reach::Push);
    }

    #[test]
    fn a_cool_down_starts_once_and_a_replay_of_its_record_resumes_it() {
        let h = hysteresis(10, 0.8);
        assert!(h.cools_down(7, PullState::Pulled, 500));
        assert!(!h.cools_down(8, PullState::Pulled, 500), "not well below");
        assert!(!h.cools_down(3, PullState::Pushed, 500), "never pulled");
        let cooling = PullState::Cooling { until: 500 };
        assert!(h.cools_down(6, cooling, 500), "the same record again");
        assert!(
            !h.cools_down(6, cooling, 900),
            "a later unfollow while cooling"
        );
    }
}
