//! Posts of the news feed: the content that feeds refer to by id.

use crate::{Millis, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    /// A UUIDv7 string, so ids sort by creation time.
    pub post_id: String,
    pub author_id: String,
    pub body: String,
    /// CDN URLs.
    pub media_urls: Vec<String>,
    pub created_at: Millis,
}

#[async_trait::async_trait]
pub trait PostStore: Send + Sync + 'static {
    async fn put(&self, post: &Post) -> Result<(), StoreError>;
    /// Stores a post shared with only part of the author's followers: it is
    /// hydrated by `get_many` like any post but never listed by
    /// `by_author`, so it cannot be pulled into the feed of a follower
    /// outside its audience.
    async fn put_restricted(&self, post: &Post) -> Result<(), StoreError>;
    /// The posts that exist among `post_ids`, in the order asked.
    async fn get_many(&self, post_ids: &[String]) -> Result<Vec<Post>, StoreError>;
    /// Newest first, strictly older than `before`, restricted posts left
    /// out. Feeds pull the posts of authors with very many followers through
    /// this at read time.
    async fn by_author(
        &self,
        author_id: &str,
        before: Option<Millis>,
        limit: u32,
    ) -> Result<Vec<Post>, StoreError>;
}
