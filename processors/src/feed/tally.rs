//! Counts likes and replies, the tally of each post, and tells the post's
//! author.
//!
//! The gateway writes a like, an unlike or a reply to the store, then a
//! `PostReaction` to `tidings.feed.reactions`, keyed by post id: one post's
//! reactions reach one consumer, in order. For each, this stage reads the
//! truth (does the user like the post now?) and the post's tally (which
//! likes and replies it counts, and the counts), and where they differ
//! counts or uncounts the member; `finish` writes each post's change in one
//! atomic store call (`ReactionStore::update_tally`). So a replayed record
//! changes nothing (its member is counted already), liking twice counts
//! once (one row, one member), an unlike takes the count back, and records
//! arriving in any order converge on the truth.
//!
//! Notifications (category `feed.like`, `feed.reply`) go to
//! `tidings.notify.requests` like the feed writer's:
//!
//! - a reply tells the author at once, one notification per reply;
//! - likes are told in a digest per post and window of
//!   `feed.like_digest_secs`: every like in a window emits the same
//!   notification id with the window's end as its send time, so the
//!   enricher holds one scheduled item per post and window, each emission
//!   replacing the last ("Zed and 41 others liked your post", counted as of
//!   that like), and sends it when the window closes. A batch emits only
//!   for the last like of each post and window it holds.
//!
//! Emitting depends only on the record and the truth, not on whether this
//! record changed the tally: a batch replayed after a crash between its
//! tally write and its produce emits the same notifications again, with the
//! same ids, and the enricher keeps one.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Mutex,
};

use futures::{StreamExt, TryStreamExt, stream};
use tidings_config::FeedConfig;
use tidings_kafka::{Emitter, ProcessError, Processor, RecordMeta, Topics};
use tidings_schemas::records::{
    NotificationRequest, PostReaction, Priority, RawContent, ReactionKind,
};
use tidings_store::{PostTally, Store, StoreError, TallyMember, TallyState, TallyUpdate};
use tracing::warn;
use uuid::Uuid;

use super::writer::{FEED_APP_KEY, excerpt};
use crate::enricher::store_failure;

/// Category of the like digests.
pub const LIKE_CATEGORY: &str = "feed.like";
/// Category of reply notifications.
pub const REPLY_CATEGORY: &str = "feed.reply";
/// Namespace of the ids of like digests (per post and window) and reply
/// notifications (per reply).
const REACTION_NOTIFICATION_NAMESPACE: Uuid =
    Uuid::from_u128(0x7469_6469_6e67_7300_8000_0000_0000_0021);
/// A reaction's push is pointless a day later.
const NOTIFICATION_TTL_MS: i64 = 24 * 3_600_000;
/// Store calls a batch keeps in flight.
const STORE_CONCURRENCY: usize = 16;

pub struct ReactionTally {
    store: Store,
    topics: Topics,
    notify: bool,
    digest: LikeDigest,
}

impl ReactionTally {
    pub fn new(store: Store, topics: Topics, config: &FeedConfig) -> Self {
        Self {
            store,
            topics,
            notify: config.notify_reactions,
            digest: LikeDigest::every_secs(config.like_digest_secs),
        }
    }
}

/// The like digests: windows of a fixed length, aligned on the epoch.
struct LikeDigest {
    window_ms: i64,
}

impl LikeDigest {
    fn every_secs(secs: u64) -> Self {
        Self {
            window_ms: i64::try_from(secs.max(1).saturating_mul(1_000)).unwrap_or(i64::MAX),
        }
    }

    /// The window a like at `at` falls in.
    fn window(&self, at: i64) -> i64 {
        at.div_euclid(self.window_ms)
    }

    /// The digest of `reaction`'s post and window, with `likes` as counted
    /// now and `name` the liker's.
    fn notification(&self, reaction: &PostReaction, name: &str, likes: u64) -> NotificationRequest {
        let window = self.window(reaction.at);
        let send_at = (window + 1).saturating_mul(self.window_ms);
        let title = match likes.saturating_sub(1) {
            0 => format!("{name} liked your post"),
            1 => format!("{name} and 1 other liked your post"),
            others => format!("{name} and {others} others liked your post"),
        };
        let mut data = BTreeMap::new();
        data.insert("post_id".to_owned(), reaction.post_id.clone());
        data.insert("like_count".to_owned(), likes.to_string());
        notification(
            reaction_notification_id(&format!("like\u{0}{}\u{0}{window}", reaction.post_id)),
            format!("feed.like:{}:{window}", reaction.post_id),
            reaction,
            LIKE_CATEGORY,
            RawContent {
                title: Some(title),
                ..RawContent::default()
            },
            Some(send_at),
            data,
        )
    }
}

/// What a record counts in its post's tally, if anything.
fn member(reaction: &PostReaction) -> Option<TallyMember> {
    match reaction.kind {
        ReactionKind::Like | ReactionKind::Unlike => {
            Some(TallyMember::Like(reaction.user_id.clone()))
        }
        ReactionKind::Reply => reaction.reply_id.clone().map(TallyMember::Reply),
        ReactionKind::Unknown => None,
    }
}

/// One post's tally while a batch works on it.
struct PostWork {
    /// The counts, with the batch's changes so far.
    tally: PostTally,
    /// The batch's members the stored tally counts.
    stored: HashSet<TallyMember>,
    /// The batch's members counted now.
    counted: HashSet<TallyMember>,
}

impl PostWork {
    fn new(state: TallyState) -> Self {
        Self {
            tally: state.tally,
            counted: state.counted.clone(),
            stored: state.counted,
        }
    }

    /// Counts `member` or no longer, as the truth says; a no-op when the
    /// tally agrees already.
    fn settle(&mut self, member: &TallyMember, truth: bool) {
        if self.counted.contains(member) == truth {
            return;
        }
        let sign = if truth { 1 } else { -1 };
        match member {
            TallyMember::Like(_) => self.tally.likes = self.tally.likes.saturating_add_signed(sign),
            TallyMember::Reply(_) => {
                self.tally.replies = self.tally.replies.saturating_add_signed(sign)
            }
        }
        if truth {
            self.counted.insert(member.clone());
        } else {
            self.counted.remove(member);
        }
    }

    /// What the store must write for the batch's changes, if anything.
    fn update(&self, post_id: &str) -> Option<TallyUpdate> {
        let mut count: Vec<TallyMember> = self.counted.difference(&self.stored).cloned().collect();
        let mut uncount: Vec<TallyMember> =
            self.stored.difference(&self.counted).cloned().collect();
        if count.is_empty() && uncount.is_empty() {
            return None;
        }
        count.sort();
        uncount.sort();
        Some(TallyUpdate {
            post_id: post_id.to_owned(),
            count,
            uncount,
            tally: self.tally,
        })
    }
}

/// A batch's working state.
#[derive(Default)]
pub struct Batch {
    /// Per post, the members its records name (from the records alone).
    members: HashMap<String, Vec<TallyMember>>,
    /// The last like of each (post, digest window) that tells the author:
    /// (partition, offset).
    last_like: HashMap<(String, i64), (i32, i64)>,
    /// Per user, the batch's posts they like now; a user missing here is
    /// looked up by `process`.
    liked: HashMap<String, HashSet<String>>,
    /// Display names of the batch's reactors, for notifications.
    names: HashMap<String, String>,
    /// Per post, its tally as the batch changes it; a post missing here is
    /// read by `process`.
    posts: Mutex<HashMap<String, PostWork>>,
}

impl ReactionTally {
    /// Whether `user` likes `post` now: from the batch's read, else read.
    async fn likes(&self, batch: &Batch, user: &str, post: &str) -> Result<bool, ProcessError> {
        if let Some(liked) = batch.liked.get(user) {
            return Ok(liked.contains(post));
        }
        let liked = self
            .store
            .reactions
            .liked_by(user, &[post.to_owned()])
            .await
            .map_err(store_failure)?;
        Ok(liked.contains(post))
    }

    /// Reads `post`'s tally for the batch's members unless the batch has it.
    async fn load_post(&self, batch: &Batch, post: &str) -> Result<(), ProcessError> {
        if batch.posts.lock().expect("not poisoned").contains_key(post) {
            return Ok(());
        }
        let members = batch.members.get(post).map_or(&[][..], Vec::as_slice);
        let state = self
            .store
            .reactions
            .tally_state(post, members)
            .await
            .map_err(store_failure)?;
        batch
            .posts
            .lock()
            .expect("not poisoned")
            .entry(post.to_owned())
            .or_insert_with(|| PostWork::new(state));
        Ok(())
    }
}

/// The notification of one reply.
fn reply_notification(reaction: &PostReaction, reply_id: &str, name: &str) -> NotificationRequest {
    let mut data = BTreeMap::new();
    data.insert("post_id".to_owned(), reaction.post_id.clone());
    data.insert("reply_id".to_owned(), reply_id.to_owned());
    notification(
        reaction_notification_id(&format!("reply\u{0}{reply_id}")),
        format!("feed.reply:{reply_id}"),
        reaction,
        REPLY_CATEGORY,
        RawContent {
            title: Some(format!("{name} replied to your post")),
            body: reaction
                .reply_body
                .as_deref()
                .map(excerpt)
                .filter(|b| !b.is_empty()),
            ..RawContent::default()
        },
        None,
        data,
    )
}

/// The id of a reaction notification: stable, so a replay is dropped by the
/// enricher (and a like digest is one scheduled item per window).
fn reaction_notification_id(what: &str) -> String {
    Uuid::new_v5(&REACTION_NOTIFICATION_NAMESPACE, what.as_bytes()).to_string()
}

/// A push to the post's author, as the feed writer's "new post" ones:
/// iOS and Android, collapsed per post on the device.
fn notification(
    notification_id: String,
    event_id: String,
    reaction: &PostReaction,
    category: &str,
    content: RawContent,
    send_at: Option<i64>,
    data: BTreeMap<String, String>,
) -> NotificationRequest {
    let at = send_at.unwrap_or(reaction.at);
    NotificationRequest {
        notification_id,
        event_id,
        app_key: FEED_APP_KEY.to_owned(),
        user_id: reaction.post_author_id.clone(),
        channels: vec!["ios".into(), "android".into()],
        category: Some(category.to_owned()),
        template: None,
        content: Some(content),
        send_at,
        expires_at: Some(at.saturating_add(NOTIFICATION_TTL_MS)),
        priority: Priority::Normal,
        collapse_id: Some(format!("{category}:{}", reaction.post_id)),
        data,
        accepted_at: reaction.at,
    }
}

/// Reads what the batch can in a few store calls: the tallies of its posts,
/// the likes of its users, the names of its reactors. Each part is best
/// effort (`process` reads what is missing).
async fn read_batch(tally: &ReactionTally, batch: &mut Batch, reactions: &[&PostReaction]) {
    let reads = &tally.store.reactions;
    // The (lazy) futures are made up front, so no closure is held across an
    // await: that keeps the processor's futures provably `Send`.
    let states: Vec<_> = batch
        .members
        .iter()
        .map(|(post, members)| async move {
            reads
                .tally_state(post, members)
                .await
                .map(|state| (post.clone(), PostWork::new(state)))
        })
        .collect();
    let states: Vec<Result<(String, PostWork), StoreError>> = stream::iter(states)
        .buffer_unordered(STORE_CONCURRENCY)
        .collect()
        .await;
    let mut works = HashMap::new();
    for state in states {
        match state {
            Ok((post, work)) => {
                works.insert(post, work);
            }
            Err(e) => warn!(error = %e, "tally read failed; reading post by post"),
        }
    }
    *batch.posts.get_mut().expect("not poisoned") = works;

    let mut asked: HashMap<String, Vec<String>> = HashMap::new();
    for r in reactions
        .iter()
        .filter(|r| matches!(r.kind, ReactionKind::Like | ReactionKind::Unlike))
    {
        let posts = asked.entry(r.user_id.clone()).or_default();
        if !posts.contains(&r.post_id) {
            posts.push(r.post_id.clone());
        }
    }
    let liked: Vec<_> = asked
        .into_iter()
        .map(|(user, posts)| async move {
            reads
                .liked_by(&user, &posts)
                .await
                .map(|liked| (user, liked))
        })
        .collect();
    let liked: Result<Vec<(String, HashSet<String>)>, StoreError> = stream::iter(liked)
        .buffer_unordered(STORE_CONCURRENCY)
        .try_collect()
        .await;
    match liked {
        Ok(liked) => batch.liked = liked.into_iter().collect(),
        Err(e) => warn!(error = %e, "likes read failed; reading record by record"),
    }

    if tally.notify {
        let reactors: Vec<String> = reactions
            .iter()
            .filter(|r| r.user_id != r.post_author_id)
            .map(|r| r.user_id.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        match tally.store.contacts.get_users(&reactors).await {
            Ok(users) => {
                batch.names = users
                    .into_iter()
                    .filter(|u| !u.display_name.is_empty())
                    .map(|u| (u.user_id, u.display_name))
                    .collect();
            }
            // A notification with the user id for a name still tells.
            Err(e) => warn!(error = %e, "reactors' names unavailable"),
        }
    }
}

#[async_trait::async_trait]
impl Processor for ReactionTally {
    type Input = PostReaction;
    type Prefetched = Batch;

    fn name(&self) -> &'static str {
        "feed-tally"
    }

    async fn prefetch(&self, records: &[(&PostReaction, &RecordMeta)]) -> Batch {
        let mut batch = Batch::default();
        for (reaction, meta) in records {
            if let Some(member) = member(reaction) {
                let members = batch.members.entry(reaction.post_id.clone()).or_default();
                if !members.contains(&member) {
                    members.push(member);
                }
            }
            // The author is not told of their own like.
            if reaction.kind == ReactionKind::Like && reaction.user_id != reaction.post_author_id {
                let last = batch
                    .last_like
                    .entry((reaction.post_id.clone(), self.digest.window(reaction.at)))
                    .or_insert((meta.partition, meta.offset));
                *last = (*last).max((meta.partition, meta.offset));
            }
        }
        let reactions: Vec<&PostReaction> = records.iter().map(|(r, _)| *r).collect();
        read_batch(self, &mut batch, &reactions).await;
        batch
    }

    async fn process(
        &self,
        reaction: &PostReaction,
        batch: &Batch,
        meta: &RecordMeta,
        out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        let Some(member) = member(reaction) else {
            return Err(ProcessError::permanent(format!(
                "a {:?} reaction to post {} without what it counts (kind unknown to this build, or a reply without reply_id)",
                reaction.kind, reaction.post_id
            )));
        };
        let truth = match reaction.kind {
            // A reply is stored before it is announced, and stays.
            ReactionKind::Reply => true,
            _ => {
                self.likes(batch, &reaction.user_id, &reaction.post_id)
                    .await?
            }
        };
        self.load_post(batch, &reaction.post_id).await?;
        let likes = {
            let mut posts = batch.posts.lock().expect("not poisoned");
            let work = posts
                .get_mut(&reaction.post_id)
                .expect("loaded just before");
            work.settle(&member, truth);
            work.tally.likes
        };

        if !self.notify || reaction.user_id == reaction.post_author_id {
            return Ok(());
        }
        let name = batch
            .names
            .get(&reaction.user_id)
            .map_or(reaction.user_id.as_str(), String::as_str);
        let request = match (&reaction.kind, &member) {
            (ReactionKind::Like, _) if truth => {
                let key = (reaction.post_id.clone(), self.digest.window(reaction.at));
                let last = batch.last_like.get(&key).copied();
                if last.is_some_and(|last| last != (meta.partition, meta.offset)) {
                    // A later like of the batch emits the window's digest.
                    return Ok(());
                }
                self.digest.notification(reaction, name, likes)
            }
            (ReactionKind::Reply, TallyMember::Reply(reply_id)) => {
                reply_notification(reaction, reply_id, name)
            }
            _ => return Ok(()),
        };
        out.emit(self.topics.requests(), &reaction.post_author_id, &request)
    }

    /// Writes each changed post's tally in one call.
    async fn finish(&self, batch: &Batch) -> Result<(), ProcessError> {
        let updates: Vec<TallyUpdate> = batch
            .posts
            .lock()
            .expect("not poisoned")
            .iter()
            .filter_map(|(post, work)| work.update(post))
            .collect();
        let writes: Vec<_> = updates
            .into_iter()
            .map(|update| async move { self.store.reactions.update_tally(&update).await })
            .collect();
        stream::iter(writes)
            .buffer_unordered(STORE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .map_err(store_failure)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn like(user: &str) -> TallyMember {
        TallyMember::Like(user.into())
    }

    fn work(likes: u64, counted: &[TallyMember]) -> PostWork {
        PostWork::new(TallyState {
            tally: PostTally { likes, replies: 0 },
            counted: counted.iter().cloned().collect(),
        })
    }

    #[test]
    fn settling_counts_each_member_once_and_takes_an_unlike_back() {
        let mut w = work(5, &[like("ann")]);
        w.settle(&like("ann"), true);
        assert_eq!(w.tally.likes, 5, "counted already");
        assert_eq!(w.update("p"), None);
        w.settle(&like("bob"), true);
        w.settle(&like("bob"), true);
        assert_eq!(w.tally.likes, 6);
        w.settle(&like("ann"), false);
        assert_eq!(w.tally.likes, 5);
        let update = w.update("p").expect("a change");
        assert_eq!(update.count, [like("bob")]);
        assert_eq!(update.uncount, [like("ann")]);
        assert_eq!(update.tally.likes, 5);
        // Back where it was: nothing to write.
        w.settle(&like("bob"), false);
        w.settle(&like("ann"), true);
        assert_eq!(w.update("p"), None);
        w.settle(&TallyMember::Reply("r".into()), true);
        assert_eq!(w.tally.replies, 1);
    }

    fn reaction(kind: ReactionKind, at: i64) -> PostReaction {
        PostReaction {
            post_id: "p1".into(),
            post_author_id: "author".into(),
            user_id: "ann".into(),
            kind,
            reply_id: (kind == ReactionKind::Reply).then(|| "r1".into()),
            reply_body: (kind == ReactionKind::Reply).then(|| "well said".into()),
            at,
        }
    }

    #[test]
    fn one_digest_per_post_and_window_sent_when_it_closes() {
        let digest = LikeDigest::every_secs(60);
        let first = digest.notification(&reaction(ReactionKind::Like, 120_500), "Ann", 1);
        let later = digest.notification(&reaction(ReactionKind::Like, 179_999), "Zed", 42);
        let next = digest.notification(&reaction(ReactionKind::Like, 180_000), "Bob", 43);
        assert_eq!(first.notification_id, later.notification_id);
        assert_eq!(first.send_at, Some(180_000));
        assert_ne!(first.notification_id, next.notification_id);
        assert_eq!(next.send_at, Some(240_000));
        let title = |r: &NotificationRequest| r.content.as_ref().unwrap().title.clone().unwrap();
        assert_eq!(title(&first), "Ann liked your post");
        assert_eq!(title(&later), "Zed and 41 others liked your post");
        assert_eq!(
            title(&digest.notification(&reaction(ReactionKind::Like, 1), "Ann", 2)),
            "Ann and 1 other liked your post"
        );
        assert_eq!(first.user_id, "author");
        assert_eq!(first.category.as_deref(), Some(LIKE_CATEGORY));
        assert_eq!(first.collapse_id.as_deref(), Some("feed.like:p1"));
    }

    #[test]
    fn a_reply_is_told_once_per_reply_with_its_text() {
        let r = reaction(ReactionKind::Reply, 5);
        let n = reply_notification(&r, "r1", "Ann");
        assert_eq!(
            n.notification_id,
            reply_notification(&r, "r1", "Ann").notification_id
        );
        assert_ne!(
            n.notification_id,
            reply_notification(&r, "r2", "Ann").notification_id
        );
        let content = n.content.expect("content");
        assert_eq!(content.title.as_deref(), Some("Ann replied to your post"));
        assert_eq!(content.body.as_deref(), Some("well said"));
        assert_eq!(n.send_at, None);
        assert_eq!(n.category.as_deref(), Some(REPLY_CATEGORY));
    }

    #[test]
    fn a_record_names_what_it_counts() {
        assert_eq!(
            member(&reaction(ReactionKind::Unlike, 1)),
            Some(like("ann"))
        );
        assert_eq!(
            member(&reaction(ReactionKind::Reply, 1)),
            Some(TallyMember::Reply("r1".into()))
        );
        assert_eq!(member(&reaction(ReactionKind::Unknown, 1)), None);
        let mut no_id = reaction(ReactionKind::Reply, 1);
        no_id.reply_id = None;
        assert_eq!(member(&no_id), None);
    }
}
