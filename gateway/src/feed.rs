//! The news feed's front door: `tidings.v1.FeedService` over gRPC and
//! `/v1/me/...` over HTTP (`feed_http.rs`), for the user a bearer token names
//! (`user_token.rs`).
//!
//! Publishing stores the post, then writes `PostPublished` to
//! `tidings.feed.posts`; the fan-out processors put its id into followers'
//! feeds and tell them. Reading merges the user's materialised feed (posts
//! pushed to it) with the newest posts of the authors they follow that are
//! too big to push to (pulled at read time: the hybrid model), and, past the
//! end of its rows (a returning user's trimmed feed), with the newest posts
//! of the authors they follow (rebuilt at read time), drops muted
//! authors, and hydrates posts, authors (with their follower and following
//! counts) and
//! reactions (like and reply counts, whether the reader likes the post).
//! Pages are cut by an opaque cursor on (created_at, post_id), so a page
//! never repeats or skips a post as new ones arrive. Likes and replies
//! themselves are `feed_reactions.rs`.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::{StreamExt, TryStreamExt, stream};
use tidings_kafka::now_millis;
use tidings_schemas::{
    proto::v1::{
        self as pb, DeletePostRequest, DeletePostResponse, EditPostRequest, EditPostResponse,
        FollowRequest, FollowResponse, GetFeedRequest, GetFeedResponse, LikeRequest, LikeResponse,
        ListRepliesRequest, ListRepliesResponse, MuteRequest, MuteResponse, PublishRequest,
        PublishResponse, ReplyRequest, ReplyResponse, feed_service_server::FeedService,
    },
    records::{FollowChanged, FollowKind, PostPublished},
};
use tidings_store::{Millis, Post, PostTally, User};
use tidings_telemetry::FeedRead;
use tonic::{Request, Response, Status, metadata::MetadataMap};
use uuid::Uuid;

use crate::{
    Gateway,
    feed_cache::{AUTHOR_TTL, FeedCaches, NEWEST_KEPT, NEWEST_TTL, PULLED_TTL},
    feed_reactions::ReplyPage,
    store_status, validate,
};

/// Items per page when the caller does not say.
pub const DEFAULT_PAGE: u32 = 20;
/// Most items one page may ask for.
pub const MAX_PAGE: u32 = 100;
/// The friend cap of the design: nobody follows more users than this.
pub const MAX_FOLLOWING: usize = 5_000;
/// Most media URLs one post may carry.
pub const MAX_MEDIA: usize = 10;
/// Pulled authors read at once for one feed page.
const PULL_CONCURRENCY: usize = 16;

/// A post to publish, as both APIs take it.
pub struct NewPost {
    pub body: String,
    pub media_urls: Vec<String>,
    /// Empty: every follower; otherwise the followers among these users.
    pub audience: Vec<String>,
}

/// One page of a feed, hydrated.
pub struct FeedPage {
    pub items: Vec<FeedItem>,
    /// `None` when there is nothing older.
    pub next_cursor: Option<String>,
}

pub struct FeedItem {
    pub post: Post,
    pub author: User,
    /// The author's follower and following counts, up to `AUTHOR_TTL` old.
    pub author_counts: AuthorCounts,
    /// Likes and replies, as the feed-tally stage counted them.
    pub tally: PostTally,
    /// Whether the reader likes the post.
    pub liked_by_me: bool,
}

/// How many users follow an author, and how many they follow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthorCounts {
    pub followers: u64,
    pub following: u64,
}

/// What a user may only do so often, counted in the store so every gateway
/// agrees.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Budget {
    /// `feed.max_posts` per `feed.post_window_secs`.
    Posts,
    /// `feed.max_replies` per `feed.post_window_secs`.
    Replies,
}

impl Budget {
    fn name(self) -> &'static str {
        match self {
            Budget::Posts => "posts",
            Budget::Replies => "replies",
        }
    }
}

/// A position in a feed: the (created_at, post_id) of the last item shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub at: Millis,
    pub post_id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1:{}:{}", self.at, self.post_id))
    }

    /// The empty string is the newest page.
    pub fn decode(raw: &str) -> Result<Option<Cursor>, Status> {
        if raw.is_empty() {
            return Ok(None);
        }
        let bad = || validate::invalid("cursor", "is not a cursor this API returned");
        let text = URL_SAFE_NO_PAD
            .decode(raw)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(bad)?;
        let mut parts = text.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("v1"), Some(at), Some(post_id)) if !post_id.is_empty() => Ok(Some(Cursor {
                at: at.parse().map_err(|_| bad())?,
                post_id: post_id.to_owned(),
            })),
            _ => Err(bad()),
        }
    }

    /// Whether a post at (`at`, `post_id`) comes after this cursor, i.e. is
    /// older than the last item shown.
    fn is_before(&self, at: Millis, post_id: &str) -> bool {
        (at, post_id) < (self.at, self.post_id.as_str())
    }
}

/// A page limit as asked (0 = the default).
pub fn page_limit(asked: u32) -> Result<u32, Status> {
    match asked {
        0 => Ok(DEFAULT_PAGE),
        n if n > MAX_PAGE => Err(validate::invalid(
            "limit",
            format!("is more than {MAX_PAGE}"),
        )),
        n => Ok(n),
    }
}

/// A post in the making: where it came from, pushed, pulled or rebuilt.
struct Candidate {
    post_id: String,
    author_id: String,
    at: Millis,
    /// Pulled and rebuilt posts come whole; pushed ones are ids to hydrate.
    post: Option<Post>,
}

impl Gateway {
    /// The user a request acts for, from `authorization: Bearer <token>`.
    pub(crate) fn feed_user(&self, authorization: Option<&str>) -> Result<String, Status> {
        let token = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Status::unauthenticated(crate::user_token::TokenError::Missing.to_string())
            })?;
        let user = self
            .user_tokens
            .verify(token, now_millis() / 1000)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        validate::id("sub", &user).map_err(|s| Status::unauthenticated(s.message().to_owned()))?;
        Ok(user)
    }

    fn grpc_feed_user(&self, metadata: &MetadataMap) -> Result<String, Status> {
        self.feed_user(metadata.get("authorization").and_then(|v| v.to_str().ok()))
    }

    /// Validates, rate-limits, stores and announces a post.
    pub(crate) async fn publish_post(&self, author: &str, new: NewPost) -> Result<Post, Status> {
        self.check_post_body(&new.body, !new.media_urls.is_empty())?;
        if new.media_urls.len() > MAX_MEDIA {
            return Err(validate::invalid(
                "media_urls",
                format!("has more than {MAX_MEDIA} entries"),
            ));
        }
        for (i, url) in new.media_urls.iter().enumerate() {
            validate::http_url(&format!("media_urls[{i}]"), url)?;
        }
        if new.audience.len() > MAX_FOLLOWING {
            return Err(validate::invalid(
                "audience",
                format!("has more than {MAX_FOLLOWING} users"),
            ));
        }
        for (i, user) in new.audience.iter().enumerate() {
            validate::id(&format!("audience[{i}]"), user)?;
        }
        let mut audience = new.audience;
        audience.sort();
        audience.dedup();
        let now = now_millis();
        let post = Post {
            post_id: Uuid::now_v7().to_string(),
            author_id: author.to_owned(),
            body: new.body,
            media_urls: new.media_urls,
            created_at: now,
        };
        self.admit(Budget::Posts, author, &post.post_id, now)
            .await?;
        let posts = &self.store.posts;
        if audience.is_empty() {
            posts.put(&post).await
        } else {
            // Never listed by author, so never pulled by other followers.
            posts.put_restricted(&post).await
        }
        .map_err(store_status)?;
        let record = PostPublished {
            post_id: post.post_id.clone(),
            author_id: post.author_id.clone(),
            body: post.body.clone(),
            media_urls: post.media_urls.clone(),
            audience: (!audience.is_empty()).then_some(audience),
            created_at: post.created_at,
        };
        // Stored but not announced, the post reaches no feed: the caller is
        // told to publish again (a new post; the stored one stays unlisted
        // except to followers of a pulled author).
        self.producer
            .send(self.topics.posts(), &post.author_id, &record)
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "the post could not be queued for fan-out: {e}; publish again"
                ))
            })?;
        Ok(post)
    }

    /// A post's body, published or edited: not blank unless the post has
    /// media, at most `feed.max_body_chars` characters.
    pub(crate) fn check_post_body(&self, body: &str, has_media: bool) -> Result<(), Status> {
        if body.trim().is_empty() && !has_media {
            return Err(validate::invalid(
                "body",
                "is empty (a post needs a body or media)",
            ));
        }
        let chars = body.chars().count();
        let max = self.feed.max_body_chars;
        if chars > max {
            return Err(validate::invalid(
                "body",
                format!("has {chars} characters, more than {max}"),
            ));
        }
        Ok(())
    }

    /// The per-user limits against spam (see [`Budget`]): admits one more
    /// post or reply `id` of `user`, or refuses it with
    /// `RESOURCE_EXHAUSTED`.
    pub(crate) async fn admit(
        &self,
        budget: Budget,
        user: &str,
        id: &str,
        now: Millis,
    ) -> Result<(), Status> {
        let config = &self.feed;
        let window = Duration::from_secs(config.post_window_secs);
        let max = match budget {
            Budget::Posts => config.max_posts,
            Budget::Replies => config.max_replies,
        };
        let key = format!("feed.{}:{user}", budget.name());
        let recent = self
            .store
            .rate_limits
            .admissions_many(std::slice::from_ref(&key))
            .await
            .map_err(store_status)?;
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let in_window = recent.get(&key).map_or(0, |a| {
            a.iter().filter(|(at, _)| now - at < window_ms).count()
        });
        if in_window >= max as usize {
            return Err(Status::resource_exhausted(format!(
                "posting too often: at most {max} {} per {} s",
                budget.name(),
                config.post_window_secs
            )));
        }
        self.store
            .rate_limits
            .admit_many(&[(key, now, id.to_owned(), window)])
            .await
            .map_err(store_status)
    }

    /// The authors whose posts are pulled at read time, cached briefly.
    async fn pulled_authors(&self) -> Result<Arc<HashSet<String>>, Status> {
        if let Some((at, set)) = self.caches.pulled.lock().expect("not poisoned").as_ref()
            && at.elapsed() < PULLED_TTL
        {
            return Ok(set.clone());
        }
        let set = Arc::new(
            self.store
                .feed
                .pulled_authors()
                .await
                .map_err(store_status)?,
        );
        *self.caches.pulled.lock().expect("not poisoned") = Some((Instant::now(), set.clone()));
        Ok(set)
    }

    /// One page of `user`'s feed, newest first, after `cursor`.
    pub(crate) async fn read_feed(
        &self,
        user: &str,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<FeedPage, Status> {
        let started = Instant::now();
        let store = &self.store;
        // One more than the page, to know whether there is an older page.
        let fetch = limit + 1;
        let before = cursor.as_ref().map(|c| (c.at, c.post_id.clone()));
        let (pushed, following, muted, pulled) = tokio::try_join!(
            async {
                store
                    .feed
                    .read(user, before, fetch)
                    .await
                    .map_err(store_status)
            },
            async {
                store
                    .social_graph
                    .following(user)
                    .await
                    .map_err(store_status)
            },
            async { store.social_graph.muted(user).await.map_err(store_status) },
            self.pulled_authors(),
        )?;
        let mut pull_from: Vec<&String> =
            following.iter().filter(|a| pulled.contains(*a)).collect();
        // A pulled author sees their own posts too.
        let me = user.to_owned();
        if pulled.contains(user) {
            pull_from.push(&me);
        }
        // Fewer rows than asked: the feed's older end is on this page (its
        // rows were trimmed, or never written), so the followed authors'
        // own posts fill it.
        let rebuild_from = if pushed.len() < fetch as usize {
            rebuild_authors(user, &following, &muted, &pulled, self.feed.rebuild_authors)
        } else {
            Vec::new()
        };
        let (pulled_posts, rebuilt_posts) = tokio::try_join!(
            stream::iter(pull_from.into_iter().cloned())
                .map(|author| self.pulled_posts(author, cursor.as_ref(), fetch))
                .buffer_unordered(PULL_CONCURRENCY)
                .try_collect::<Vec<Arc<Vec<Post>>>>(),
            self.rebuilt_posts(rebuild_from, cursor.as_ref(), fetch),
        )?;

        let mut candidates: Vec<Candidate> = pushed
            .into_iter()
            .map(|e| Candidate {
                post_id: e.post_id,
                author_id: e.author_id,
                at: e.created_at,
                post: None,
            })
            .chain(
                pulled_posts
                    .iter()
                    .flat_map(|page| page.iter())
                    .map(|p| Candidate {
                        post_id: p.post_id.clone(),
                        author_id: p.author_id.clone(),
                        at: p.created_at,
                        post: Some(p.clone()),
                    }),
            )
            .chain(rebuilt_posts.into_iter().map(|p| Candidate {
                post_id: p.post_id.clone(),
                author_id: p.author_id.clone(),
                at: p.created_at,
                post: Some(p),
            }))
            .filter(|c| {
                cursor
                    .as_ref()
                    .is_none_or(|k| k.is_before(c.at, &c.post_id))
            })
            .collect();
        candidates.sort_by(|a, b| (b.at, &b.post_id).cmp(&(a.at, &a.post_id)));
        // A post pushed before its author became pulled comes both ways, and
        // so does a rebuilt post whose row is on the page.
        candidates.dedup_by(|a, b| a.post_id == b.post_id);
        let more = candidates.len() > limit as usize;
        candidates.truncate(limit as usize);
        // The cursor follows the page as cut, muted authors included, so the
        // next page starts after them.
        let next_cursor = more.then(|| {
            let last = candidates.last().expect("a full page");
            Cursor {
                at: last.at,
                post_id: last.post_id.clone(),
            }
            .encode()
        });
        // Rows stay in a feed after an unfollow; showing only authors still
        // followed (and the user) makes an unfollow take effect at once.
        let followed: HashSet<&str> = following.iter().map(String::as_str).collect();
        candidates.retain(|c| {
            (c.author_id == user || followed.contains(c.author_id.as_str()))
                && !muted.contains(&c.author_id)
        });

        let items = self.hydrate(user, candidates).await?;
        FeedRead {
            elapsed: started.elapsed(),
        }
        .emit();
        Ok(FeedPage { items, next_cursor })
    }

    /// The newest `fetch` posts of a pulled author older than `cursor`. The
    /// first page comes from the cache of newest posts, so a star's
    /// partition is not read by every follower who opens the app.
    async fn pulled_posts(
        &self,
        author: String,
        cursor: Option<&Cursor>,
        fetch: u32,
    ) -> Result<Arc<Vec<Post>>, Status> {
        let posts = &self.store.posts;
        let Some(cursor) = cursor else {
            if let Some(newest) = FeedCaches::fresh(&self.caches.newest, &author, NEWEST_TTL) {
                return Ok(newest);
            }
            let mark = self.caches.mark();
            let newest = Arc::new(
                posts
                    .by_author(&author, None, fetch.max(NEWEST_KEPT))
                    .await
                    .map_err(store_status)?,
            );
            self.caches.keep_newest(mark, author, newest.clone());
            return Ok(newest);
        };
        // `by_author` is strictly older than a millisecond: ask from the
        // cursor's millisecond on; the merge cuts at the cursor.
        Ok(Arc::new(
            posts
                .by_author(&author, Some(cursor.at + 1), fetch)
                .await
                .map_err(store_status)?,
        ))
    }

    /// The newest `fetch` posts of each of `authors` older than `cursor`,
    /// read from the post store (not the cache of pulled authors' newest
    /// posts: a rebuilt feed's authors are many and each read by few).
    async fn rebuilt_posts(
        &self,
        authors: Vec<String>,
        cursor: Option<&Cursor>,
        fetch: u32,
    ) -> Result<Vec<Post>, Status> {
        // `by_author` is strictly older than a millisecond: ask from the
        // cursor's millisecond on; the merge cuts at the cursor.
        let before = cursor.map(|c| c.at + 1);
        let posts = &self.store.posts;
        let pages: Vec<Vec<Post>> = stream::iter(authors)
            .map(|author| async move {
                posts
                    .by_author(&author, before, fetch)
                    .await
                    .map_err(store_status)
            })
            .buffer_unordered(PULL_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(pages.into_iter().flatten().collect())
    }

    /// Fills in posts, authors and reactions, from the caches first; a post
    /// deleted since it was fanned out is left out.
    async fn hydrate(
        &self,
        reader: &str,
        candidates: Vec<Candidate>,
    ) -> Result<Vec<FeedItem>, Status> {
        let caches = &self.caches;
        let mut candidates = candidates;
        for c in candidates.iter_mut().filter(|c| c.post.is_none()) {
            c.post = caches.posts.get(&c.post_id);
        }
        let missing: Vec<String> = candidates
            .iter()
            .filter(|c| c.post.is_none())
            .map(|c| c.post_id.clone())
            .collect();
        let author_ids: Vec<String> = candidates
            .iter()
            .map(|c| c.author_id.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let post_ids: Vec<String> = candidates.iter().map(|c| c.post_id.clone()).collect();
        let reactions = &self.store.reactions;
        let mark = caches.mark();
        let (posts, users, author_counts, tallies, liked) = tokio::try_join!(
            async {
                self.store
                    .posts
                    .get_many(&missing)
                    .await
                    .map_err(store_status)
            },
            self.authors(&author_ids),
            self.author_counts(&author_ids),
            async { reactions.tallies(&post_ids).await.map_err(store_status) },
            async {
                reactions
                    .liked_by(reader, &post_ids)
                    .await
                    .map_err(store_status)
            },
        )?;
        let mut posts: HashMap<String, Post> = posts
            .into_iter()
            .map(|p| {
                caches.keep_post(mark, p.clone());
                (p.post_id.clone(), p)
            })
            .collect();
        Ok(candidates
            .into_iter()
            .filter_map(|c| {
                let post = c.post.or_else(|| posts.remove(&c.post_id))?;
                let author = users
                    .get(&c.author_id)
                    .cloned()
                    .unwrap_or_else(|| unnamed(&c.author_id));
                Some(FeedItem {
                    author_counts: author_counts.get(&c.author_id).copied().unwrap_or_default(),
                    tally: tallies.get(&post.post_id).copied().unwrap_or_default(),
                    liked_by_me: liked.contains(&post.post_id),
                    post,
                    author,
                })
            })
            .collect())
    }

    /// The users among `ids` the store knows, names and avatars from the
    /// cache first (up to `AUTHOR_TTL` old).
    pub(crate) async fn authors(&self, ids: &[String]) -> Result<HashMap<String, User>, Status> {
        let cache = &self.caches.authors;
        let mut users: HashMap<String, User> = HashMap::new();
        let mut unknown: Vec<String> = Vec::new();
        for id in ids {
            match FeedCaches::fresh(cache, id, AUTHOR_TTL) {
                Some(user) => {
                    users.insert(id.clone(), user);
                }
                None if !unknown.contains(id) => unknown.push(id.clone()),
                None => {}
            }
        }
        if unknown.is_empty() {
            return Ok(users);
        }
        let read = self
            .store
            .contacts
            .get_users(&unknown)
            .await
            .map_err(store_status)?;
        let now = Instant::now();
        for u in read {
            cache.insert(u.user_id.clone(), (now, u.clone()));
            users.insert(u.user_id.clone(), u);
        }
        Ok(users)
    }

    /// The follower and following counts of `ids`, from the cache first (up
    /// to `AUTHOR_TTL` old): a counter read and a count of at most the
    /// friend cap's edges per author otherwise.
    async fn author_counts(&self, ids: &[String]) -> Result<HashMap<String, AuthorCounts>, Status> {
        let cache = &self.caches.author_counts;
        let mut counts = HashMap::new();
        let mut unknown = Vec::new();
        for id in ids {
            match FeedCaches::fresh(cache, id, AUTHOR_TTL) {
                Some(n) => {
                    counts.insert(id.clone(), n);
                }
                None => unknown.push(id.clone()),
            }
        }
        let graph = &self.store.social_graph;
        // The (lazy) futures are made up front, so no closure is held
        // across an await.
        let reads: Vec<_> = unknown
            .into_iter()
            .map(|id| async move {
                let (followers, following) =
                    tokio::try_join!(graph.follower_count(&id), graph.following_count(&id))?;
                Ok((
                    id,
                    AuthorCounts {
                        followers,
                        following,
                    },
                ))
            })
            .collect();
        let read: Vec<(String, AuthorCounts)> = stream::iter(reads)
            .buffer_unordered(PULL_CONCURRENCY)
            .try_collect()
            .await
            .map_err(store_status)?;
        let now = Instant::now();
        for (id, n) in read {
            cache.insert(id.clone(), (now, n));
            counts.insert(id, n);
        }
        Ok(counts)
    }

    /// Follows (or unfollows) `other` as `user`.
    pub(crate) async fn set_following(
        &self,
        user: &str,
        other: &str,
        follow: bool,
    ) -> Result<(), Status> {
        validate::id("user_id", other)?;
        if other == user {
            return Err(validate::invalid("user_id", "is the caller"));
        }
        let graph = &self.store.social_graph;
        let now = now_millis();
        let kind = if follow {
            let following = graph.following(user).await.map_err(store_status)?;
            if following.len() >= MAX_FOLLOWING && !following.iter().any(|f| f == other) {
                return Err(validate::field_error(
                    tonic::Code::FailedPrecondition,
                    "user_id",
                    format!("already following {MAX_FOLLOWING} users, the most allowed"),
                ));
            }
            graph.follow(user, other, now).await.map_err(store_status)?;
            FollowKind::Followed
        } else {
            graph.unfollow(user, other).await.map_err(store_status)?;
            FollowKind::Unfollowed
        };
        // The graph changed; feed-follows backfills or removes the feed
        // rows. Not announced, the follow holds but the feed lags: the
        // caller is told to retry (following is idempotent).
        let record = FollowChanged {
            follower_id: user.to_owned(),
            followee_id: other.to_owned(),
            kind,
            at: now,
        };
        self.producer
            .send(self.topics.follows(), user, &record)
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "the follow change could not be queued for the feed: {e}; try again"
                ))
            })?;
        Ok(())
    }

    /// Mutes (or unmutes) `other` in `user`'s feed.
    pub(crate) async fn set_muted(
        &self,
        user: &str,
        other: &str,
        muted: bool,
    ) -> Result<(), Status> {
        validate::id("user_id", other)?;
        if other == user {
            return Err(validate::invalid("user_id", "is the caller"));
        }
        self.store
            .social_graph
            .set_muted(user, other, muted)
            .await
            .map_err(store_status)
    }
}

/// Whose own posts fill a page once `user`'s feed rows ran out: the user
/// (who sees their own posts), then the authors they follow in the graph's
/// order (by id), at most `cap`. Pulled authors are read on every page
/// anyway and muted ones never shown, so they are left out. The choice
/// depends on neither the cursor nor the page, so every page of one paging
/// reads the same authors and the cursor neither repeats nor skips their
/// posts.
fn rebuild_authors(
    user: &str,
    following: &[String],
    muted: &HashSet<String>,
    pulled: &HashSet<String>,
    cap: usize,
) -> Vec<String> {
    std::iter::once(user)
        .chain(following.iter().map(String::as_str).filter(|a| *a != user))
        .filter(|a| !pulled.contains(*a) && !muted.contains(*a))
        .take(cap)
        .map(str::to_owned)
        .collect()
}

/// A user the store does not know, shown by id.
pub(crate) fn unnamed(user_id: &str) -> User {
    User {
        user_id: user_id.to_owned(),
        display_name: user_id.to_owned(),
        avatar_url: None,
        locale: None,
        email: None,
        phone: None,
        updated_at: 0,
    }
}

fn to_pb_author(author: User, counts: AuthorCounts) -> pb::Author {
    pb::Author {
        user_id: author.user_id,
        display_name: author.display_name,
        avatar_url: author.avatar_url.unwrap_or_default(),
        follower_count: counts.followers,
        following_count: counts.following,
    }
}

pub(crate) fn to_pb_item(item: FeedItem) -> pb::FeedItem {
    pb::FeedItem {
        post_id: item.post.post_id,
        author: Some(to_pb_author(item.author, item.author_counts)),
        body: item.post.body,
        media_urls: item.post.media_urls,
        created_at_ms: item.post.created_at,
        like_count: item.tally.likes,
        reply_count: item.tally.replies,
        liked_by_me: item.liked_by_me,
    }
}

fn to_pb_replies(page: ReplyPage) -> ListRepliesResponse {
    ListRepliesResponse {
        items: page
            .items
            .into_iter()
            .map(|(reply, author)| pb::PostReply {
                reply_id: reply.reply_id,
                post_id: reply.post_id,
                author: Some(to_pb_author(author, AuthorCounts::default())),
                body: reply.body,
                created_at_ms: reply.created_at,
            })
            .collect(),
        next_cursor: page.next_cursor.unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl FeedService for Gateway {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let result = async {
            let user = self.grpc_feed_user(request.metadata())?;
            let r = request.into_inner();
            let post = self
                .publish_post(
                    &user,
                    NewPost {
                        body: r.body,
                        media_urls: r.media_urls,
                        audience: r.audience,
                    },
                )
                .await?;
            Ok(Response::new(PublishResponse {
                post_id: post.post_id,
                created_at_ms: post.created_at,
            }))
        }
        .await;
        self.count("FeedService/Publish", &result);
        result
    }

    async fn get_feed(
        &self,
        request: Request<GetFeedRequest>,
    ) -> Result<Response<GetFeedResponse>, Status> {
        let result = async {
            let user = self.grpc_feed_user(request.metadata())?;
            let r = request.into_inner();
            let page = self
                .read_feed(&user, Cursor::decode(&r.cursor)?, page_limit(r.limit)?)
                .await?;
            Ok(Response::new(GetFeedResponse {
                items: page.items.into_iter().map(to_pb_item).collect(),
                next_cursor: page.next_cursor.unwrap_or_default(),
            }))
        }
        .await;
        self.count("FeedService/GetFeed", &result);
        result
    }

    async fn follow(
        &self,
        request: Request<FollowRequest>,
    ) -> Result<Response<FollowResponse>, Status> {
        let result = self.follow_as_caller(request, true).await;
        self.count("FeedService/Follow", &result);
        result
    }

    async fn unfollow(
        &self,
        request: Request<FollowRequest>,
    ) -> Result<Response<FollowResponse>, Status> {
        let result = self.follow_as_caller(request, false).await;
        self.count("FeedService/Unfollow", &result);
        result
    }

    async fn mute(&self, request: Request<MuteRequest>) -> Result<Response<MuteResponse>, Status> {
        let result = async {
            let user = self.grpc_feed_user(request.metadata())?;
            let r = request.into_inner();
            self.set_muted(&user, &r.user_id, r.muted).await?;
            Ok(Response::new(MuteResponse {}))
        }
        .await;
        self.count("FeedService/Mute", &result);
        result
    }

    async fn like(&self, request: Request<LikeRequest>) -> Result<Response<LikeResponse>, Status> {
        let result = self.like_as_caller(request, true).await;
        self.count("FeedService/Like", &result);
        result
    }

    async fn unlike(
        &self,
        request: Request<LikeRequest>,
    ) -> Result<Response<LikeResponse>, Status> {
        let result = self.like_as_caller(request, false).await;
        self.count("FeedService/Unlike", &result);
        result
    }

    async fn reply(
        &self,
        request: Request<ReplyRequest>,
    ) -> Result<Response<ReplyResponse>, Status> {
        let result = async {
            let user = self.grpc_feed_user(request.metadata())?;
            let r = request.into_inner();
            let reply = self.reply_to_post(&user, &r.post_id, r.body).await?;
            Ok(Response::new(ReplyResponse {
                reply_id: reply.reply_id,
                created_at_ms: reply.created_at,
            }))
        }
        .await;
        self.count("FeedService/Reply", &result);
        result
    }

    async fn list_replies(
        &self,
        request: Request<ListRepliesRequest>,
    ) -> Result<Response<ListRepliesResponse>, Status> {
        let result = async {
            self.grpc_feed_user(request.metadata())?;
            let r = request.into_inner();
            let page = self
                .list_replies(&r.post_id, Cursor::decode(&r.cursor)?, page_limit(r.limit)?)
                .await?;
            Ok(Response::new(to_pb_replies(page)))
        }
        .await;
        self.count("FeedService/ListReplies", &result);
        result
    }

    async fn delete_post(
        &self,
        request: Request<DeletePostRequest>,
    ) -> Result<Response<DeletePostResponse>, Status> {
        let result = async {
            let user = self.grpc_feed_user(request.metadata())?;
            self.delete_own_post(&user, &request.into_inner().post_id)
                .await?;
            Ok(Response::new(DeletePostResponse {}))
        }
        .await;
        self.count("FeedService/DeletePost", &result);
        result
    }

    async fn edit_post(
        &self,
        request: Request<EditPostRequest>,
    ) -> Result<Response<EditPostResponse>, Status> {
        let result = async {
            let user = self.grpc_feed_user(request.metadata())?;
            let r = request.into_inner();
            self.edit_own_post(&user, &r.post_id, r.body).await?;
            Ok(Response::new(EditPostResponse {}))
        }
        .await;
        self.count("FeedService/EditPost", &result);
        result
    }
}

impl Gateway {
    async fn follow_as_caller(
        &self,
        request: Request<FollowRequest>,
        follow: bool,
    ) -> Result<Response<FollowResponse>, Status> {
        let user = self.grpc_feed_user(request.metadata())?;
        self.set_following(&user, &request.into_inner().user_id, follow)
            .await?;
        Ok(Response::new(FollowResponse {}))
    }

    async fn like_as_caller(
        &self,
        request: Request<LikeRequest>,
        like: bool,
    ) -> Result<Response<LikeResponse>, Status> {
        let user = self.grpc_feed_user(request.metadata())?;
        self.set_like(&user, &request.into_inner().post_id, like)
            .await?;
        Ok(Response::new(LikeResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_named() {
        let c = Cursor {
            at: 1_780_000_000_123,
            post_id: "0193-abc".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), Some(c));
        assert_eq!(Cursor::decode("").unwrap(), None);
        for bad in ["!!", "djE6eDp5", &URL_SAFE_NO_PAD.encode("v2:1:p")] {
            let err = Cursor::decode(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().starts_with("cursor:"), "{}", err.message());
        }
    }

    #[test]
    fn a_cursor_orders_by_time_then_post_id() {
        let c = Cursor {
            at: 100,
            post_id: "p5".into(),
        };
        assert!(c.is_before(99, "p9"));
        assert!(c.is_before(100, "p4"));
        assert!(!c.is_before(100, "p5"));
        assert!(!c.is_before(101, "p0"));
    }

    #[test]
    fn a_rebuild_reads_the_user_then_followed_authors_up_to_the_cap() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
        let following = ids(&["a", "b", "c", "d", "me"]);
        let (muted, pulled) = (set(&["b"]), set(&["c"]));
        assert_eq!(
            rebuild_authors("me", &following, &muted, &pulled, 10),
            ["me", "a", "d"],
            "the user once, then followed authors neither muted nor pulled"
        );
        assert_eq!(
            rebuild_authors("me", &following, &muted, &pulled, 2),
            ["me", "a"]
        );
        assert!(rebuild_authors("me", &following, &muted, &pulled, 0).is_empty());
        // A pulled user's own posts are pulled, not rebuilt.
        assert_eq!(
            rebuild_authors("me", &following, &muted, &set(&["me"]), 10),
            ["a", "c", "d"]
        );
    }

    #[test]
    fn page_limits_default_and_cap() {
        assert_eq!(page_limit(0).unwrap(), DEFAULT_PAGE);
        assert_eq!(page_limit(7).unwrap(), 7);
        assert!(
            page_limit(MAX_PAGE + 1)
                .unwrap_err()
                .message()
                .starts_with("limit:")
        );
    }
}
