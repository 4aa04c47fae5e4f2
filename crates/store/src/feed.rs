//! Materialised news feeds: per owner, the ids of the posts fanned out to
//! them, newest first. Content is hydrated from the post and contact stores.

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
    /// Newest first by (created_at, post_id), strictly older than `before`.
    async fn read(
        &self,
        owner: &str,
        before: Option<(Millis, String)>,
        limit: u32,
    ) -> Result<Vec<FeedEntry>, StoreError>;
    /// Deletes everything but the newest `keep` entries.
    async fn trim(&self, owner: &str, keep: usize) -> Result<(), StoreError>;
}
