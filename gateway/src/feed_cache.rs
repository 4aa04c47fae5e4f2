//! The feed read path's caches, per gateway (the design's content cache):
//!
//! - **posts** by id: posts are immutable (there is no edit), so a cached
//!   post is never stale; hot posts are hydrated without a store read;
//! - **newest posts of pulled authors**: every reader of a star reads the
//!   star's partition, the hot key of the hybrid model. Their newest page is
//!   kept for [`NEWEST_TTL`], so a star's partition is read about once per
//!   gateway per that long, however many followers read;
//! - **authors** (names, avatars) and their **follower and following
//!   counts** for
//!   [`AUTHOR_TTL`]: a renamed user shows the new name within that long;
//! - the **set of pulled authors** for [`PULLED_TTL`].
//!
//! Each is bounded by entries; evictions follow quick_cache's CLOCK-Pro.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use quick_cache::sync::Cache;
use tidings_store::{Post, User};

use crate::feed::AuthorCounts;

/// How long the set of pulled authors is reused: a newly pulled author's
/// posts show in feeds within this long.
pub(crate) const PULLED_TTL: Duration = Duration::from_secs(5);
/// How long a pulled author's newest posts are reused: their new posts show
/// within this long.
pub(crate) const NEWEST_TTL: Duration = Duration::from_secs(2);
/// How long an author's name, avatar and counts are reused.
pub(crate) const AUTHOR_TTL: Duration = Duration::from_secs(30);
/// Newest posts kept per pulled author: enough for the largest first page
/// (`MAX_PAGE` + 1).
pub(crate) const NEWEST_KEPT: u32 = 101;

pub(crate) struct FeedCaches {
    pub(crate) posts: Cache<String, Post>,
    pub(crate) newest: Cache<String, (Instant, Arc<Vec<Post>>)>,
    pub(crate) authors: Cache<String, (Instant, User)>,
    pub(crate) author_counts: Cache<String, (Instant, AuthorCounts)>,
    pub(crate) pulled: Mutex<Option<(Instant, Arc<HashSet<String>>)>>,
}

impl FeedCaches {
    /// Caches holding up to `posts` posts (and a proportionate number of
    /// authors and pulled pages).
    pub(crate) fn new(posts: usize) -> Self {
        let posts = posts.max(1);
        Self {
            posts: Cache::new(posts),
            newest: Cache::new((posts / 100).max(16)),
            authors: Cache::new((posts / 4).max(16)),
            author_counts: Cache::new((posts / 4).max(16)),
            pulled: Mutex::new(None),
        }
    }

    /// The cached value of `key` in `cache` if younger than `ttl`.
    pub(crate) fn fresh<V: Clone>(
        cache: &Cache<String, (Instant, V)>,
        key: &str,
        ttl: Duration,
    ) -> Option<V> {
        cache
            .get(key)
            .filter(|(at, _)| at.elapsed() < ttl)
            .map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_entries_are_not_fresh() {
        let caches = FeedCaches::new(100);
        let page = Arc::new(Vec::new());
        caches
            .newest
            .insert("a".into(), (Instant::now(), page.clone()));
        caches.newest.insert(
            "b".into(),
            (Instant::now() - NEWEST_TTL - Duration::from_millis(1), page),
        );
        assert!(FeedCaches::fresh(&caches.newest, "a", NEWEST_TTL).is_some());
        assert!(FeedCaches::fresh(&caches.newest, "b", NEWEST_TTL).is_none());
        assert!(FeedCaches::fresh(&caches.newest, "c", NEWEST_TTL).is_none());
    }
}
