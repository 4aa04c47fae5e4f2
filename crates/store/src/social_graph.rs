//! The social graph: directed follow edges (friends follow each other) and
//! mutes.

use std::collections::HashSet;

use crate::{Millis, StoreError};

#[async_trait::async_trait]
pub trait SocialGraph: Send + Sync + 'static {
    /// Idempotent: following twice counts once.
    async fn follow(&self, follower: &str, followee: &str, at: Millis) -> Result<(), StoreError>;
    async fn unfollow(&self, follower: &str, followee: &str) -> Result<(), StoreError>;
    /// Followers of `user` ordered by id, starting after the cursor `after`
    /// (the last id of the previous page).
    async fn followers(
        &self,
        user: &str,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;
    /// Which of `candidates` follow `user`, without reading all of `user`'s
    /// followers (an author may have millions).
    async fn followers_among(
        &self,
        user: &str,
        candidates: &[String],
    ) -> Result<HashSet<String>, StoreError>;
    /// Everyone `user` follows, ordered by id (bounded by the friend cap).
    async fn following(&self, user: &str) -> Result<Vec<String>, StoreError>;
    async fn follower_count(&self, user: &str) -> Result<u64, StoreError>;
    /// How many users `user` follows: a count over their edges, bounded by
    /// the friend cap, so callers that show it often cache it.
    async fn following_count(&self, user: &str) -> Result<u64, StoreError>;
    async fn set_muted(&self, user: &str, muted_user: &str, muted: bool) -> Result<(), StoreError>;
    async fn muted(&self, user: &str) -> Result<HashSet<String>, StoreError>;
    /// Which of `candidates` muted `user`: the fan-out skips telling them of
    /// `user`'s posts. Point reads, one per candidate.
    async fn muted_among(
        &self,
        user: &str,
        candidates: &[String],
    ) -> Result<HashSet<String>, StoreError>;
}
