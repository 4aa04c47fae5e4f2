//! Writes fan-out slices into feeds and tells the followers.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::{DefaultHasher, Hash, Hasher},
};

use tidings_config::FeedConfig;
use tidings_kafka::{Emitter, ProcessError, Processor, RecordMeta, Topics, now_millis};
use tidings_schemas::{
    ids,
    records::{FanoutBatch, NotificationRequest, Priority, RawContent},
};
use tidings_store::{FeedEntry, Post, Store, User};
use tidings_telemetry::{FanoutOutcome, FeedFanout};
use tracing::warn;
use uuid::Uuid;

use crate::enricher::store_failure;

/// Namespace of the ids of "new post" notifications: one per (post, user),
/// so a replayed slice is deduplicated by the enricher.
const FEED_NOTIFICATION_NAMESPACE: Uuid =
    Uuid::from_u128(0x7469_6469_6e67_7300_8000_0000_0000_0020);
/// The `app_key` of notifications tidings itself sends.
pub const FEED_APP_KEY: &str = "tidings.feed";
/// A feed is trimmed by about one write in this many: trimming reads the
/// feed's keys, too costly to do on every write, and a feed may exceed its
/// cap by a few dozen entries meanwhile.
const TRIM_ONE_IN: u64 = 32;
/// Characters of the post shown in the notification.
const EXCERPT_CHARS: usize = 120;
/// A "new post" push is pointless a day later.
const NOTIFICATION_TTL_MS: i64 = 24 * 3_600_000;
/// A post older than this when its slice is written is not news: its
/// followers are not told. Such slices are a star's newest posts pushed again
/// as it cools down (they were pulled, never told, and telling each
/// follower of up to `feed.backfill_posts` old posts at once is spam), or a
/// fan-out that lagged that far behind.
const NEWS_FOR_MS: i64 = 10 * 60_000;

pub struct FeedWriter {
    store: Store,
    topics: Topics,
    max_entries: usize,
    notify: Option<String>,
}

impl FeedWriter {
    pub fn new(store: Store, topics: Topics, config: &FeedConfig) -> Self {
        Self {
            store,
            topics,
            max_entries: config.max_entries,
            notify: config
                .notify_followers
                .then(|| config.notify_category.clone()),
        }
    }
}

/// The posts and authors a batch's notifications need.
#[derive(Default)]
pub struct Hydrated {
    posts: HashMap<String, Post>,
    authors: HashMap<String, User>,
}

/// Whether writing `post_id` to `owner`'s feed also trims it: a stable
/// choice, so a replay trims the same feeds.
fn trims(owner: &str, post_id: &str) -> bool {
    let mut h = DefaultHasher::new();
    (owner, post_id).hash(&mut h);
    h.finish().is_multiple_of(TRIM_ONE_IN)
}

/// Whether a post of time `created_at` is worth telling followers of at
/// `now` (see [`NEWS_FOR_MS`]).
fn is_news(created_at: i64, now: i64) -> bool {
    now - created_at <= NEWS_FOR_MS
}

/// The first `EXCERPT_CHARS` characters of `body`, on a character boundary.
pub(crate) fn excerpt(body: &str) -> String {
    match body.char_indices().nth(EXCERPT_CHARS) {
        None => body.to_owned(),
        Some((cut, _)) => format!("{}…", body[..cut].trim_end()),
    }
}

/// The id of the notification that tells `user` about post `post_id`, led
/// by the post's time (post ids are UUIDv7).
pub fn new_post_notification_id(post_id: &str, user: &str) -> String {
    ids::time_ordered(
        &FEED_NOTIFICATION_NAMESPACE,
        format!("{post_id}\u{0}{user}").as_bytes(),
        post_id,
    )
    .to_string()
}

/// The notification that tells `user` about a new post of `author`.
pub fn new_post_notification(
    slice: &FanoutBatch,
    user: &str,
    author: Option<&User>,
    post: Option<&Post>,
    category: &str,
    now: i64,
) -> NotificationRequest {
    let name = author.map_or(slice.author_id.as_str(), |a| a.display_name.as_str());
    let mut data = BTreeMap::new();
    data.insert("post_id".to_owned(), slice.post_id.clone());
    data.insert("author_id".to_owned(), slice.author_id.clone());
    NotificationRequest {
        notification_id: new_post_notification_id(&slice.post_id, user),
        event_id: format!("feed.post:{}", slice.post_id),
        app_key: FEED_APP_KEY.to_owned(),
        user_id: user.to_owned(),
        // Push only: a post is not worth an SMS or an email each.
        channels: vec!["ios".into(), "android".into()],
        category: Some(category.to_owned()),
        template: None,
        content: Some(RawContent {
            title: Some(format!("{name} posted")),
            body: post.map(|p| excerpt(&p.body)).filter(|b| !b.is_empty()),
            ..RawContent::default()
        }),
        send_at: None,
        expires_at: Some(now + NOTIFICATION_TTL_MS),
        priority: Priority::Normal,
        // One notification per author on the lock screen, the newest.
        collapse_id: Some(format!("feed:{}", slice.author_id)),
        data,
        accepted_at: now,
    }
}

#[async_trait::async_trait]
impl Processor for FeedWriter {
    type Input = FanoutBatch;
    type Prefetched = Hydrated;

    fn name(&self) -> &'static str {
        "feed-writer"
    }

    /// The posts and authors of the batch's slices, for the notifications.
    async fn prefetch(&self, batch: &[(&FanoutBatch, &RecordMeta)]) -> Hydrated {
        if self.notify.is_none() {
            return Hydrated::default();
        }
        let post_ids: Vec<String> = batch
            .iter()
            .map(|(s, _)| s.post_id.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let author_ids: Vec<String> = batch
            .iter()
            .map(|(s, _)| s.author_id.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let (posts, authors) = tokio::join!(
            self.store.posts.get_many(&post_ids),
            self.store.contacts.get_users(&author_ids)
        );
        // Best effort: a notification without the excerpt or the author's
        // name still tells the follower.
        let posts = posts.unwrap_or_else(|e| {
            warn!(error = %e, "posts for new-post notifications unavailable");
            Vec::new()
        });
        let authors = authors.unwrap_or_else(|e| {
            warn!(error = %e, "authors for new-post notifications unavailable");
            Vec::new()
        });
        Hydrated {
            posts: posts.into_iter().map(|p| (p.post_id.clone(), p)).collect(),
            authors: authors
                .into_iter()
                .map(|u| (u.user_id.clone(), u))
                .collect(),
        }
    }

    async fn process(
        &self,
        slice: &FanoutBatch,
        hydrated: &Hydrated,
        _meta: &RecordMeta,
        out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        let entry = FeedEntry {
            post_id: slice.post_id.clone(),
            author_id: slice.author_id.clone(),
            created_at: slice.created_at,
        };
        let rows: Vec<(String, FeedEntry)> = slice
            .recipients
            .iter()
            .map(|owner| (owner.clone(), entry.clone()))
            .collect();
        let feed = &self.store.feed;
        feed.append_many(&rows).await.map_err(store_failure)?;
        FeedFanout {
            outcome: FanoutOutcome::Pushed,
            count: rows.len() as u64,
        }
        .emit();
        for owner in slice.recipients.iter().filter(|o| trims(o, &slice.post_id)) {
            feed.trim(owner, self.max_entries)
                .await
                .map_err(store_failure)?;
        }
        let now = now_millis();
        if let Some(category) = self
            .notify
            .as_ref()
            .filter(|_| is_news(slice.created_at, now))
        {
            // Whoever muted the author is not told (the row is still
            // written: reads hide it, and unmuting shows it again).
            let muters = self
                .store
                .social_graph
                .muted_among(&slice.author_id, &slice.recipients)
                .await
                .map_err(store_failure)?;
            let topic = self.topics.requests();
            let author = hydrated.authors.get(&slice.author_id);
            let post = hydrated.posts.get(&slice.post_id);
            for user in slice
                .recipients
                .iter()
                .filter(|u| **u != slice.author_id && !muters.contains(*u))
            {
                let request = new_post_notification(slice, user, author, post, category, now);
                out.emit(topic, user, &request)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_cut_on_characters() {
        assert_eq!(excerpt("short"), "short");
        let long = "é".repeat(EXCERPT_CHARS + 5);
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), EXCERPT_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn notification_ids_are_stable_per_post_and_user() {
        let slice = FanoutBatch {
            post_id: "p1".into(),
            author_id: "a".into(),
            created_at: 1,
            recipients: vec!["u1".into(), "u2".into()],
            batch_index: 0,
        };
        let n = |user| new_post_notification(&slice, user, None, None, "feed.new_post", 10);
        assert_eq!(n("u1").notification_id, n("u1").notification_id);
        assert_ne!(n("u1").notification_id, n("u2").notification_id);
        let r = n("u1");
        assert_eq!(r.content.unwrap().title.as_deref(), Some("a posted"));
        assert_eq!(r.category.as_deref(), Some("feed.new_post"));
        assert_eq!(r.data.get("post_id").map(String::as_str), Some("p1"));
    }

    #[test]
    fn only_recent_posts_are_news() {
        let now = 1_000_000_000;
        assert!(is_news(now, now));
        assert!(is_news(now - NEWS_FOR_MS, now));
        assert!(
            !is_news(now - NEWS_FOR_MS - 1, now),
            "a cool-down's old post"
        );
    }

    #[test]
    fn about_one_write_in_trim_one_in_trims() {
        let trimmed = (0..3_200).filter(|i| trims(&format!("u{i}"), "p")).count();
        assert!((50..150).contains(&trimmed), "{trimmed}");
    }
}
