//! [`PostStore`](crate::PostStore) on CQL: the `posts` and `posts_by_author` tables.

use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use super::{Context, Cql};
use crate::posts::{Post, PostStore};
use crate::{Millis, StoreError};

pub(crate) struct ScyllaPosts {
    cql: Cql,
    /// Logged batch: the post and its by-author copy land together or not at
    /// all, even if this process dies in between.
    put: Batch,
    /// Only the `posts` row: a restricted post is never listed by author.
    put_restricted: PreparedStatement,
    get: PreparedStatement,
    by_author: PreparedStatement,
}

impl ScyllaPosts {
    pub(crate) async fn prepare(cql: &Cql) -> Result<Self, StoreError> {
        let mut put = Batch::new(BatchType::Logged);
        let insert_post = cql
            .prepare("INSERT INTO posts (post_id, author_id, body, media_urls, created_at) VALUES (?, ?, ?, ?, ?)")
            .await?;
        put.append_statement(insert_post.clone());
        put.append_statement(
            cql.prepare(
                "INSERT INTO posts_by_author (author_id, created_at, post_id, body, media_urls) VALUES (?, ?, ?, ?, ?)",
            )
            .await?,
        );
        put.set_is_idempotent(true);
        Ok(ScyllaPosts {
            put,
            put_restricted: insert_post,
            get: cql
                .prepare("SELECT post_id, author_id, body, media_urls, created_at FROM posts WHERE post_id = ?")
                .await?,
            by_author: cql
                .prepare(
                    "SELECT post_id, body, media_urls, created_at FROM posts_by_author
                     WHERE author_id = ? AND created_at < ? LIMIT ?",
                )
                .await?,
            cql: cql.clone(),
        })
    }

    async fn get(&self, post_id: &str) -> Result<Option<Post>, StoreError> {
        let row = self
            .cql
            .maybe_row::<(String, String, Option<String>, Option<Vec<String>>, Millis)>(
                &self.get,
                (post_id,),
            )
            .await
            .ctx("posts.get_many", post_id)?;
        Ok(
            row.map(|(post_id, author_id, body, media_urls, created_at)| Post {
                post_id,
                author_id,
                body: body.unwrap_or_default(),
                // CQL stores an empty list as null.
                media_urls: media_urls.unwrap_or_default(),
                created_at,
            }),
        )
    }
}

#[async_trait::async_trait]
impl PostStore for ScyllaPosts {
    async fn put(&self, p: &Post) -> Result<(), StoreError> {
        let values = (
            (
                &p.post_id,
                &p.author_id,
                &p.body,
                &p.media_urls,
                p.created_at,
            ),
            (
                &p.author_id,
                p.created_at,
                &p.post_id,
                &p.body,
                &p.media_urls,
            ),
        );
        self.cql
            .session
            .batch(&self.put, values)
            .await
            .ctx("posts.put", &p.post_id)?;
        Ok(())
    }

    async fn put_restricted(&self, p: &Post) -> Result<(), StoreError> {
        self.cql
            .execute(
                &self.put_restricted,
                (
                    &p.post_id,
                    &p.author_id,
                    &p.body,
                    &p.media_urls,
                    p.created_at,
                ),
            )
            .await
            .ctx("posts.put_restricted", &p.post_id)?;
        Ok(())
    }

    async fn get_many(&self, post_ids: &[String]) -> Result<Vec<Post>, StoreError> {
        let posts = self.cql.concurrently(post_ids, |id| self.get(id)).await?;
        Ok(posts.into_iter().flatten().collect())
    }

    async fn by_author(
        &self,
        author_id: &str,
        before: Option<Millis>,
        limit: u32,
    ) -> Result<Vec<Post>, StoreError> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows = self
            .cql
            .rows::<(String, Option<String>, Option<Vec<String>>, Millis)>(
                &self.by_author,
                (author_id, before.unwrap_or(Millis::MAX), limit),
            )
            .await
            .ctx("posts.by_author", author_id)?;
        Ok(rows
            .into_iter()
            .map(|(post_id, body, media_urls, created_at)| Post {
                post_id,
                author_id: author_id.to_owned(),
                body: body.unwrap_or_default(),
                media_urls: media_urls.unwrap_or_default(),
                created_at,
            })
            .collect())
    }
}
