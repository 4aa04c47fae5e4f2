//! The stream processors, in the order a notification meets them:
//!
//! 1. [`enricher`]: `tidings.notify.requests` -> contacts, opt-in, template
//!    -> `tidings.deliver.<channel>`;
//! 2. [`senders`]: `tidings.deliver.<channel>` -> provider (APNs, FCM, SMS,
//!    email; the log sink on the embedded default) -> tracking.
//!
//! and for the news feed, [`feed`]: `tidings.feed.posts` -> fan-out plan ->
//! `tidings.feed.fanout` -> feed tables, and "new post" notifications back
//! into `tidings.notify.requests`; `tidings.feed.reactions` -> like and reply
//! counts, and their notifications; `tidings.feed.follows` -> backfilled
//! and removed feed rows, and pulled authors pushed again.
//!
//! Each is a [`tidings_kafka::Processor`] run by the shared stage runner.

pub mod enricher;
pub mod feed;
pub mod scheduler;
pub mod senders;
pub mod tracking;

pub use enricher::Enricher;
pub use feed::{FanoutPlanner, FeedFollows, FeedPruner, FeedWriter, ReactionTally};
pub use scheduler::Scheduler;
pub use senders::{
    ChannelSender, Provider, ProviderError, Receipt, log_sink::LogSink, retry::RetryRelay,
};
pub use tracking::TemplateStats;
