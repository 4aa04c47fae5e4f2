//! The feed read path's caches, per gateway (the design's content cache):
//!
//! - **posts** by id: hot posts are hydrated without a store read. A post
//!   changes only when its author edits or deletes it; every gateway then
//!   drops it (`feed_revisions.rs`, from `tidings.feed.revisions`), so a
//!   cached post is stale for at most that topic's delay;
//! - **newest posts of pulled authors**: every reader of a star reads the
//!   star's partition, the hot key of the hybrid model. Their newest page is
//!   kept for [`NEWEST_TTL`], so a star's partition is read about once per
//!   gateway per that long, however many followers read; an edit or delete
//!   drops its author's page at once, as it does the post;
//! - **authors** (names, avatars) and their **follower and following
//!   counts** for
//!   [`AUTHOR_TTL`]: a renamed user shows the new name within that long;
//! - the **set of pulled authors** for [`PULLED_TTL`].
//!
//! Each is bounded by entries; evictions follow quick_cache's CLOCK-Pro.
//!
//! A read that races a revision must not put the old post back after the
//! revision dropped it: posts and pages read from the store are cached
//! through [`FeedCaches::keep_post`] and [`FeedCaches::keep_newest`] with
//! the [`CacheMark`] taken before the read, and are not kept if a revision
//! was applied since. A delete is announced before the store forgets the
//! post (so a failed delete can be repeated), so reads just after it may
//! still find the post: the recently deleted ids are remembered
//! ([`DELETED_KEPT`] of them) and never cached again.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
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
/// Deleted post ids remembered so that no read re-caches them: at a
/// thousand deletes a second, the last ten seconds' (a store delete lands
/// within milliseconds of its announcement).
pub(crate) const DELETED_KEPT: usize = 10_000;

pub(crate) struct FeedCaches {
    pub(crate) posts: Cache<String, Post>,
    pub(crate) newest: Cache<String, (Instant, Arc<Vec<Post>>)>,
    pub(crate) authors: Cache<String, (Instant, User)>,
    pub(crate) author_counts: Cache<String, (Instant, AuthorCounts)>,
    pub(crate) pulled: Mutex<Option<(Instant, Arc<HashSet<String>>)>>,
    /// How many revisions were applied: see [`CacheMark`].
    revisions: AtomicU64,
    /// Posts deleted lately, never cached again.
    deleted: Cache<String, ()>,
}

/// The caches' revision count before a store read: what the read finds is
/// kept only if no revision was applied meanwhile (it may predate it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CacheMark(u64);

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
            revisions: AtomicU64::new(0),
            deleted: Cache::new(DELETED_KEPT),
        }
    }

    /// Take before reading posts from the store to cache them.
    pub(crate) fn mark(&self) -> CacheMark {
        CacheMark(self.revisions.load(Ordering::SeqCst))
    }

    /// Whether no revision was applied since `mark`.
    fn unrevised_since(&self, mark: CacheMark) -> bool {
        self.mark() == mark
    }

    /// Caches `post`, read from the store after `mark`, unless a revision
    /// came in between. Checked again after inserting: a revision applied
    /// between the check and the insert has removed it or finds it to
    /// remove.
    pub(crate) fn keep_post(&self, mark: CacheMark, post: Post) {
        if !self.unrevised_since(mark) || self.deleted.contains_key(&post.post_id) {
            return;
        }
        let id = post.post_id.clone();
        self.posts.insert(id.clone(), post);
        if !self.unrevised_since(mark) {
            self.posts.remove(&id);
        }
    }

    /// Caches `author`'s newest page, read from the store after `mark`, as
    /// [`Self::keep_post`] does a post.
    pub(crate) fn keep_newest(&self, mark: CacheMark, author: String, page: Arc<Vec<Post>>) {
        if !self.unrevised_since(mark) || page.iter().any(|p| self.deleted.contains_key(&p.post_id))
        {
            return;
        }
        self.newest.insert(author.clone(), (Instant::now(), page));
        if !self.unrevised_since(mark) {
            self.newest.remove(&author);
        }
    }

    /// A post was edited or deleted: drops it and its author's newest page.
    /// Counted first, so a read in flight does not cache what it found.
    pub(crate) fn forget(&self, post_id: &str, author_id: &str) {
        self.revisions.fetch_add(1, Ordering::SeqCst);
        self.posts.remove(post_id);
        self.newest.remove(author_id);
    }

    /// A post was deleted: forgotten as by [`Self::forget`], and not cached
    /// again however late a read finds it.
    pub(crate) fn forget_deleted(&self, post_id: &str, author_id: &str) {
        self.deleted.insert(post_id.to_owned(), ());
        self.forget(post_id, author_id);
    }

    /// Drops every post and page: what was cached before this gateway read
    /// the revisions may have been revised since.
    pub(crate) fn forget_all(&self) {
        self.revisions.fetch_add(1, Ordering::SeqCst);
        self.posts.clear();
        self.newest.clear();
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

    fn post(id: &str, author: &str) -> Post {
        Post {
            post_id: id.into(),
            author_id: author.into(),
            body: "hi".into(),
            media_urls: Vec::new(),
            created_at: 1,
        }
    }

    #[test]
    fn a_revision_drops_the_post_and_its_authors_page() {
        let caches = FeedCaches::new(100);
        let mark = caches.mark();
        caches.keep_post(mark, post("p1", "a"));
        caches.keep_post(mark, post("p2", "b"));
        caches.keep_newest(mark, "a".into(), Arc::new(vec![post("p1", "a")]));
        caches.keep_newest(mark, "b".into(), Arc::new(vec![post("p2", "b")]));
        caches.forget("p1", "a");
        assert!(caches.posts.get("p1").is_none());
        assert!(caches.newest.get("a").is_none());
        assert!(caches.posts.get("p2").is_some(), "other posts stay");
        assert!(
            caches.newest.get("b").is_some(),
            "other authors' pages stay"
        );
        caches.forget_all();
        assert!(caches.posts.get("p2").is_none());
        assert!(caches.newest.get("b").is_none());
    }

    #[test]
    fn a_read_that_raced_a_revision_is_not_cached() {
        let caches = FeedCaches::new(100);
        // Read from the store before the edit, finished after it applied.
        let mark = caches.mark();
        caches.forget("p1", "a");
        caches.keep_post(mark, post("p1", "a"));
        caches.keep_newest(mark, "a".into(), Arc::new(vec![post("p1", "a")]));
        assert!(caches.posts.get("p1").is_none());
        assert!(caches.newest.get("a").is_none());
        // A read begun after it is cached.
        let mark = caches.mark();
        caches.keep_post(mark, post("p1", "a"));
        assert!(caches.posts.get("p1").is_some());
    }

    #[test]
    fn a_deleted_post_is_never_cached_again() {
        let caches = FeedCaches::new(100);
        caches.forget_deleted("p1", "a");
        // Read after the announcement, before the store forgot it.
        let mark = caches.mark();
        caches.keep_post(mark, post("p1", "a"));
        caches.keep_newest(
            mark,
            "a".into(),
            Arc::new(vec![post("p0", "a"), post("p1", "a")]),
        );
        assert!(caches.posts.get("p1").is_none());
        assert!(caches.newest.get("a").is_none());
    }

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
