//! Reactions to feed posts: likes and replies, and the tallies (like and
//! reply counts) kept from them.
//!
//! Truth and tally are kept apart, so that counts stay right when records
//! are replayed and gateways race:
//!
//! - **Truth**: a like is a row `(user, post, at)` the gateway writes (a
//!   repeated like is the same row, an unlike removes it); a reply is a row
//!   of the post's replies. Whether a user likes a post is read here, so a
//!   user sees their own like at once.
//! - **Tally**: per post, the likes and replies counted so far (by user, by
//!   reply id) and the two counts. It has one writer, the feed's tally stage
//!   (`processors/src/feed/tally.rs`), which reads a post's reactions from
//!   Kafka keyed by post id, so one post's are handled in order by one
//!   process. For each it compares the truth with what the tally counts and
//!   writes the difference with [`ReactionStore::update_tally`]: the members
//!   and the counts in one atomic write. A replayed record finds its member
//!   counted already and changes nothing; liking twice is one row and so one
//!   member; unliking removes the member and takes the count back.

use std::collections::{HashMap, HashSet};

use crate::{Millis, StoreError};

/// A reply to a post: a short text under it, listed oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// A UUIDv7 string, so ids sort by creation time.
    pub reply_id: String,
    /// The post replied to.
    pub post_id: String,
    pub author_id: String,
    pub body: String,
    pub created_at: Millis,
}

/// A post's counts, as the tally stage last wrote them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PostTally {
    pub likes: u64,
    pub replies: u64,
}

/// What a tally counts: one like per user, one reply per reply id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TallyMember {
    /// The like of this user.
    Like(String),
    /// The reply with this id.
    Reply(String),
}

impl TallyMember {
    /// How the engines store a member: `like:<user id>`, `reply:<reply id>`.
    pub(crate) fn key(&self) -> String {
        match self {
            TallyMember::Like(user) => format!("like:{user}"),
            TallyMember::Reply(reply) => format!("reply:{reply}"),
        }
    }

    /// The member stored as `key`, `None` for a key no engine writes.
    pub(crate) fn from_key(key: &str) -> Option<TallyMember> {
        if let Some(user) = key.strip_prefix("like:") {
            Some(TallyMember::Like(user.to_owned()))
        } else {
            key.strip_prefix("reply:")
                .map(|reply| TallyMember::Reply(reply.to_owned()))
        }
    }
}

/// A post's tally as stored, with which of the asked members it counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TallyState {
    pub tally: PostTally,
    pub counted: HashSet<TallyMember>,
}

/// One change of a post's tally, written whole or not at all: the members
/// now counted, those no longer counted, and the counts that result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TallyUpdate {
    pub post_id: String,
    pub count: Vec<TallyMember>,
    pub uncount: Vec<TallyMember>,
    pub tally: PostTally,
}

impl PostTally {
    /// The counts with `member` counted (`sign` 1) or no longer (-1).
    fn shifted(self, member: &TallyMember, sign: i64) -> PostTally {
        match member {
            TallyMember::Like(_) => PostTally {
                likes: self.likes.saturating_add_signed(sign),
                ..self
            },
            TallyMember::Reply(_) => PostTally {
                replies: self.replies.saturating_add_signed(sign),
                ..self
            },
        }
    }
}

impl TallyUpdate {
    /// The same change as updates of at most `max` members each, each with
    /// the counts as they stand after it: written one after the other, a
    /// crash between two leaves counts that match the members written. For
    /// engines that bound the size of one atomic write.
    pub(crate) fn in_chunks(&self, max: usize) -> Vec<TallyUpdate> {
        let changes: Vec<(&TallyMember, i64)> = self
            .count
            .iter()
            .map(|m| (m, 1))
            .chain(self.uncount.iter().map(|m| (m, -1)))
            .collect();
        if changes.len() <= max {
            return vec![self.clone()];
        }
        // The counts before any of the change.
        let mut running = changes.iter().fold(self.tally, |tally, (member, sign)| {
            tally.shifted(member, -sign)
        });
        changes
            .chunks(max.max(1))
            .map(|chunk| {
                let mut update = TallyUpdate {
                    post_id: self.post_id.clone(),
                    count: Vec::new(),
                    uncount: Vec::new(),
                    tally: running,
                };
                for &(member, sign) in chunk {
                    update.tally = update.tally.shifted(member, sign);
                    match sign {
                        1 => update.count.push(member.clone()),
                        _ => update.uncount.push(member.clone()),
                    }
                }
                running = update.tally;
                update
            })
            .collect()
    }
}

#[async_trait::async_trait]
pub trait ReactionStore: Send + Sync + 'static {
    /// `user_id` likes `post_id`. Idempotent: liking again keeps the first
    /// like and its time.
    async fn like(&self, user_id: &str, post_id: &str, at: Millis) -> Result<(), StoreError>;
    /// Takes the like back; a no-op when there is none.
    async fn unlike(&self, user_id: &str, post_id: &str) -> Result<(), StoreError>;
    /// Which of `post_ids` `user_id` likes: one read for a page of a feed.
    async fn liked_by(
        &self,
        user_id: &str,
        post_ids: &[String],
    ) -> Result<HashSet<String>, StoreError>;

    /// Stores a reply; idempotent per reply id.
    async fn put_reply(&self, reply: &Reply) -> Result<(), StoreError>;
    /// Replies to `post_id`, oldest first by (created_at, reply_id),
    /// strictly after `after`.
    async fn replies(
        &self,
        post_id: &str,
        after: Option<(Millis, String)>,
        limit: u32,
    ) -> Result<Vec<Reply>, StoreError>;

    /// The tallies of `post_ids`: every asked id is in the map, zero when
    /// never counted.
    async fn tallies(&self, post_ids: &[String]) -> Result<HashMap<String, PostTally>, StoreError>;
    /// `post_id`'s tally and which of `members` it counts, for its writer.
    async fn tally_state(
        &self,
        post_id: &str,
        members: &[TallyMember],
    ) -> Result<TallyState, StoreError>;
    /// Writes `update` atomically: a reader never sees the members changed
    /// without the counts, and a crash leaves all of it or none. Writing the
    /// same update again changes nothing. The tally has one writer per post
    /// (see the module docs); two writers racing on a post could lose an
    /// update of the counts.
    async fn update_tally(&self, update: &TallyUpdate) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip_through_their_keys() {
        for member in [
            TallyMember::Like("ann".into()),
            TallyMember::Reply("0193-r".into()),
            // A user id may hold the separator.
            TallyMember::Like("reply:x".into()),
        ] {
            assert_eq!(TallyMember::from_key(&member.key()), Some(member));
        }
        assert_eq!(TallyMember::from_key("vote:ann"), None);
    }

    #[test]
    fn chunks_carry_the_counts_as_they_stand_after_each() {
        let like = |u: &str| TallyMember::Like(u.into());
        let update = TallyUpdate {
            post_id: "p".into(),
            count: vec![like("a"), like("b"), TallyMember::Reply("r".into())],
            uncount: vec![like("c")],
            // From 10 likes and 4 replies: +2 -1 likes, +1 reply.
            tally: PostTally {
                likes: 11,
                replies: 5,
            },
        };
        assert_eq!(update.in_chunks(4), vec![update.clone()]);
        let chunks = update.in_chunks(3);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].count.len(), 3);
        assert_eq!(
            chunks[0].tally,
            PostTally {
                likes: 12,
                replies: 5
            }
        );
        assert_eq!(chunks[1].uncount, [like("c")]);
        assert_eq!(chunks[1].tally, update.tally);
    }
}
