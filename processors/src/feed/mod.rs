//! The news feed's fan-out, in two stages (the hybrid model of the design):
//!
//! 1. [`planner`]: `tidings.feed.posts` -> for an author with at most
//!    `feed.pull_threshold` followers, slices of the follower list as
//!    `FanoutBatch` records on `tidings.feed.fanout`; for a bigger author,
//!    nothing but a mark that followers pull their posts at read time.
//! 2. [`writer`]: `tidings.feed.fanout` -> `<post_id, user_id>` rows in the
//!    feed tables, and a "new post" notification per follower on
//!    `tidings.notify.requests`, so friends are told through the same
//!    pipeline (preferences, rate limits, dedupe) as any notification.
//!
//! and beside them [`tally`]: `tidings.feed.reactions` (likes, unlikes,
//! replies, keyed by post) -> each post's like and reply counts in the
//! store, and a like digest or reply notification to the post's author on
//! `tidings.notify.requests`, and [`pruner`]: `tidings.feed.revisions` ->
//! a deleted post's rows out of every feed it was pushed to.
//!
//! [`follows`]: `tidings.feed.follows` (follows and unfollows, keyed by
//! follower) -> the followee's newest posts put into the follower's feed,
//! or their rows taken out of it; and a pulled author whose followers
//! dropped well below the threshold pushed again ([`cool_down`]: slices of
//! their newest posts on `tidings.feed.fanout`, readers pulling them until
//! the writers have caught up).
//!
//! Slicing spreads one post's fan-out over the fan-out topic's partitions and
//! so over every writer, instead of one hot worker per popular author; both
//! stages are idempotent under replay (feed rows are upserts, notification
//! ids are derived from post and user).

pub mod cool_down;
pub mod follows;
pub mod planner;
pub mod pruner;
pub mod tally;
pub mod writer;

pub use follows::FeedFollows;
pub use planner::FanoutPlanner;
pub use pruner::FeedPruner;
pub use tally::ReactionTally;
pub use writer::FeedWriter;
