//! [`PostStore`](crate::PostStore) on CQL: the `posts` and `posts_by_author` tables.

use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use super::{Context, Cql, counted_batch};
use crate::posts::{Post, PostStore, Revised};
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
    /// Prepared at the first edit or delete, as the later aggregates'
    /// statements are: connecting prepares only what it always did.
    revisions: tokio::sync::OnceCell<RevisionStatements>,
}

/// Edits and deletes are lightweight transactions (`IF EXISTS`): an edit
/// racing a delete must not write a body into a row the delete removed,
/// which would leave a row of nothing but a body (in `posts_by_author`
/// also a restricted post gaining a by-author copy), and LWTs are only
/// ordered against other LWTs, so the deletes are ones too. Edits and
/// deletes are rare beside reads and publishes.
struct RevisionStatements {
    edit: PreparedStatement,
    edit_by_author: PreparedStatement,
    delete: PreparedStatement,
    delete_by_author: PreparedStatement,
}

impl RevisionStatements {
    async fn prepare(cql: &Cql) -> Result<Self, StoreError> {
        // Once only: a retried LWT could report a write it made as not
        // applied.
        Ok(RevisionStatements {
            edit: cql
                .prepare_once_only("UPDATE posts SET body = ? WHERE post_id = ? IF EXISTS")
                .await?,
            edit_by_author: cql
                .prepare_once_only(
                    "UPDATE posts_by_author SET body = ?
                     WHERE author_id = ? AND created_at = ? AND post_id = ? IF EXISTS",
                )
                .await?,
            delete: cql
                .prepare_once_only("DELETE FROM posts WHERE post_id = ? IF EXISTS")
                .await?,
            delete_by_author: cql
                .prepare_once_only(
                    "DELETE FROM posts_by_author
                     WHERE author_id = ? AND created_at = ? AND post_id = ? IF EXISTS",
                )
                .await?,
        })
    }
}

/// The `[applied]` column of a lightweight transaction's answer.
fn applied(row: Option<(bool,)>) -> Revised {
    match row {
        Some((true,)) => Revised::Applied,
        _ => Revised::Missing,
    }
}

impl ScyllaPosts {
    pub(crate) async fn prepare(cql: &Cql) -> Result<Self, StoreError> {
        let mut put = counted_batch(BatchType::Logged, "posts");
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
            revisions: tokio::sync::OnceCell::new(),
        })
    }

    async fn revisions(&self) -> Result<&RevisionStatements, StoreError> {
        self.revisions
            .get_or_try_init(|| RevisionStatements::prepare(&self.cql))
            .await
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

    async fn edit(&self, p: &Post, body: &str) -> Result<Revised, StoreError> {
        const OP: &str = "posts.edit";
        let s = self.revisions().await?;
        let edited = self
            .cql
            .maybe_row::<(bool,)>(&s.edit, (body, &p.post_id))
            .await
            .ctx(OP, &p.post_id)?;
        if applied(edited) == Revised::Missing {
            return Ok(Revised::Missing);
        }
        // Only where the copy exists: a restricted post has none, and
        // `IF EXISTS` keeps it so.
        self.cql
            .maybe_row::<(bool,)>(
                &s.edit_by_author,
                (body, &p.author_id, p.created_at, &p.post_id),
            )
            .await
            .ctx(OP, &p.post_id)?;
        Ok(Revised::Applied)
    }

    async fn delete(&self, p: &Post) -> Result<Revised, StoreError> {
        const OP: &str = "posts.delete";
        let s = self.revisions().await?;
        // The by-author copy first: a delete that fails in between leaves
        // the post found, so repeating the delete finishes it.
        self.cql
            .maybe_row::<(bool,)>(
                &s.delete_by_author,
                (&p.author_id, p.created_at, &p.post_id),
            )
            .await
            .ctx(OP, &p.post_id)?;
        let deleted = self
            .cql
            .maybe_row::<(bool,)>(&s.delete, (&p.post_id,))
            .await
            .ctx(OP, &p.post_id)?;
        Ok(applied(deleted))
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
