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

/// What an edit or a delete found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revised {
    /// The post was there and is changed (or gone).
    Applied,
    /// No such post: never stored, or deleted already.
    Missing,
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
    /// Replaces the body of `post` (as `get_many` returned it: its author
    /// and time locate its by-author copy); its media and time stay. A
    /// restricted post stays unlisted.
    async fn edit(&self, post: &Post, body: &str) -> Result<Revised, StoreError>;
    /// Deletes `post` (as `get_many` returned it) and its by-author copy.
    /// Deleting again answers `Missing`.
    async fn delete(&self, post: &Post) -> Result<Revised, StoreError>;
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
