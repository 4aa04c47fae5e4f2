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
    /// Marks `author` as pulled at read time (too many followers to push
    /// every post to) or, with `pulled` false, as pushed again. Idempotent.
    async fn set_pulled_author(
        &self,
        author: &str,
        pulled: bool,
        at: Millis,
    ) -> Result<(), StoreError>;
    /// Every pulled author. A small set: only authors above the fan-out
    /// threshold.
    async fn pulled_authors(&self) -> Result<HashSet<String>, StoreError>;
}
