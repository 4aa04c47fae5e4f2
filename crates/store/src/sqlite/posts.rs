//! [`PostStore`](crate::PostStore) on SQLite: the `posts` table (indexed by author).

use rusqlite::{OptionalExtension, params};

use super::{Context, Db, from_json, to_json};
use crate::posts::{Post, PostStore, Revised};
use crate::{Millis, StoreError};

pub(crate) struct SqlitePosts(pub(crate) Db);

/// (post_id, author_id, body, media_urls as JSON, created_at)
type PostRow = (String, String, String, String, Millis);

fn post_from_row(
    op: &'static str,
    (post_id, author_id, body, media, created_at): PostRow,
) -> Result<Post, StoreError> {
    Ok(Post {
        media_urls: from_json(op, &post_id, &media)?,
        post_id,
        author_id,
        body,
        created_at,
    })
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PostRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

/// An edit or delete that changed `rows` rows.
fn revised(rows: usize) -> Revised {
    if rows == 0 {
        Revised::Missing
    } else {
        Revised::Applied
    }
}

impl SqlitePosts {
    /// The post, and whether it is restricted, in one transaction.
    async fn insert(
        &self,
        op: &'static str,
        post: &Post,
        restricted: bool,
    ) -> Result<(), StoreError> {
        let media = to_json(op, &post.post_id, &post.media_urls)?;
        let p = post.clone();
        self.0
            .call(move |c| {
                c.prepare_cached(
                    "INSERT OR REPLACE INTO posts (post_id, author_id, body, media_urls, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![p.post_id, p.author_id, p.body, media, p.created_at])?;
                if restricted {
                    c.prepare_cached(
                        "INSERT OR IGNORE INTO restricted_posts (post_id) VALUES (?1)",
                    )?
                    .execute([&p.post_id])?;
                }
                Ok(())
            })
            .await
            .ctx(op, &post.post_id)?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl PostStore for SqlitePosts {
    async fn put(&self, post: &Post) -> Result<(), StoreError> {
        self.insert("posts.put", post, false).await
    }

    async fn put_restricted(&self, post: &Post) -> Result<(), StoreError> {
        self.insert("posts.put_restricted", post, true).await
    }

    async fn get_many(&self, post_ids: &[String]) -> Result<Vec<Post>, StoreError> {
        let ids = post_ids.to_vec();
        let rows = self
            .0
            .call(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT post_id, author_id, body, media_urls, created_at FROM posts WHERE post_id = ?1",
                )?;
                let mut rows = Vec::with_capacity(ids.len());
                for id in &ids {
                    rows.extend(stmt.query_row([id], read_row).optional()?);
                }
                Ok(rows)
            })
            .await
            .ctx("posts.get_many", &format!("{} ids", post_ids.len()))?;
        rows.into_iter()
            .map(|row| post_from_row("posts.get_many", row))
            .collect()
    }

    async fn edit(&self, post: &Post, body: &str) -> Result<Revised, StoreError> {
        let (id, body) = (post.post_id.clone(), body.to_owned());
        let changed = self
            .0
            .call(move |c| {
                c.prepare_cached("UPDATE posts SET body = ?2 WHERE post_id = ?1")?
                    .execute(params![id, body])
            })
            .await
            .ctx("posts.edit", &post.post_id)?;
        Ok(revised(changed))
    }

    async fn delete(&self, post: &Post) -> Result<Revised, StoreError> {
        let id = post.post_id.clone();
        let changed = self
            .0
            .call(move |c| {
                c.prepare_cached("DELETE FROM restricted_posts WHERE post_id = ?1")?
                    .execute([&id])?;
                let changed = c
                    .prepare_cached("DELETE FROM posts WHERE post_id = ?1")?
                    .execute([&id])?;
                Ok(changed)
            })
            .await
            .ctx("posts.delete", &post.post_id)?;
        Ok(revised(changed))
    }

    async fn by_author(
        &self,
        author_id: &str,
        before: Option<Millis>,
        limit: u32,
    ) -> Result<Vec<Post>, StoreError> {
        let author = author_id.to_owned();
        let before = before.unwrap_or(Millis::MAX);
        let rows = self
            .0
            .call(move |c| {
                c.prepare_cached(
                    "SELECT post_id, author_id, body, media_urls, created_at FROM posts
                     WHERE author_id = ?1 AND created_at < ?2
                       AND post_id NOT IN (SELECT post_id FROM restricted_posts)
                     ORDER BY created_at DESC, post_id DESC LIMIT ?3",
                )?
                .query_map(params![author, before, limit], read_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await
            .ctx("posts.by_author", author_id)?;
        rows.into_iter()
            .map(|row| post_from_row("posts.by_author", row))
            .collect()
    }
}
