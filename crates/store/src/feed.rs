//! Materialised news feeds: per owner, the ids of the posts fanned out to
//! them, newest first. Content is hydrated from the post and contact stores.

use std::collections::HashSet;

use crate::{Millis, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEntry {
    pub post_id: String,
    pub author_id: String,
    pub created_at: Millis,
}

#[async_trait::async_trait]
pub trait FeedStore: Send + Sync + 'static {
    /// Writes (owner, entry) pairs; idempotent.
    async fn append_many(&self, entries: &[(String, FeedEntry)]) -> Result<(), StoreError>;
    /// Deletes (owner, entry) pairs, matched by owner, `created_at` and
    /// `post_id`; idempotent, and a missing entry is no error.
    async fn remove_many(&self, entries: &[(String, FeedEntry)]) -> Result<(), StoreError>;
    /// Newest first by (created_at, post_id), strictly older than `before`.
    async fn read(
        &self,
        owner: &str,
        before: Option<(Millis, String)>,
        limit: u32,
    ) -> Result<Vec<FeedEntry>, StoreError>;
    /// Deletes everything but the newest `keep` entries.
    async fn trim(&self, owner: &str, keep: usize) -> Result<(), StoreError>;
    /// Records how `author`'s posts reach feeds from now on (see
    /// [`PullState`]); [`PullState::Pushed`] forgets the author. Idempotent:
    /// the last call wins.
    async fn set_pull_state(
        &self,
        author: &str,
        state: PullState,
        at: Millis,
    ) -> Result<(), StoreError>;
    /// How `author`'s posts reach feeds now: a cool-down whose time is up
    /// is [`PullState::Pushed`].
    async fn pull_state(&self, author: &str) -> Result<PullState, StoreError>;
    /// Every author whose posts readers pull: the pulled ones and those
    /// still cooling down. A small set: only authors above the fan-out
    /// threshold, and those that recently dropped below it.
    async fn pulled_authors(&self) -> Result<HashSet<String>, StoreError>;
}

/// How an author's posts reach their followers' feeds (the hybrid model,
/// with hysteresis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullState {
    /// Fanned out into every follower's feed by the writers: most authors,
    /// and the store holds nothing for them.
    Pushed,
    /// Too many followers to push to: readers pull the author's newest
    /// posts at read time.
    Pulled,
    /// Pushed again after being pulled: new posts are fanned out, and the
    /// newest earlier ones are being written into the feeds; readers keep
    /// pulling until `until`, so no post is missing while the writers catch
    /// up (reads drop posts that come both ways). Pushed from `until` on.
    Cooling { until: Millis },
}

impl PullState {
    /// The state as of `now`: a cool-down ends by itself.
    pub fn at(self, now: Millis) -> PullState {
        match self {
            PullState::Cooling { until } if until <= now => PullState::Pushed,
            state => state,
        }
    }

    /// The state a `pulled_authors` row stands for: `None` is no row, a
    /// row without `cooling_until` a pulled author. Before the clock is
    /// applied ([`PullState::at`]).
    pub(crate) fn stored(row: Option<Option<Millis>>) -> PullState {
        match row {
            None => PullState::Pushed,
            Some(None) => PullState::Pulled,
            Some(Some(until)) => PullState::Cooling { until },
        }
    }

    /// Whether readers pull the author's posts.
    pub fn is_pulled_by_readers(self) -> bool {
        !matches!(self, PullState::Pushed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cool_down_ends_at_its_time() {
        let cooling = PullState::Cooling { until: 100 };
        assert_eq!(cooling.at(99), cooling);
        assert_eq!(cooling.at(100), PullState::Pushed);
        assert_eq!(PullState::Pulled.at(i64::MAX), PullState::Pulled);
        assert!(cooling.is_pulled_by_readers());
        assert!(!PullState::Pushed.is_pulled_by_readers());
    }
}
