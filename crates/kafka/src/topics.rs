//! Topic names and layout. `docs/topics.md` documents the same table; keep
//! them in step.

use tidings_schemas::Channel;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// The retry tiers: a failed delivery waits in a tier, then goes back to its
/// channel topic. Each tier has one delay (by default 30 s, 5 min, 1 h), so
/// its records fall due in offset order and waiting for the head never delays
/// a record that is due sooner; a retry never blocks a main topic.
pub const RETRY_TIERS: usize = 3;

/// The names of every topic, from one prefix.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

/// What `tidings init` creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub retention_ms: i64,
    /// Avro record type of the values.
    pub record: &'static str,
    /// What the key is.
    pub key: &'static str,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The deployment's prefix (`kafka.topic_prefix`); it also scopes what a
    /// deployment keeps in a store other deployments may share (the schedule).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Accepted notification requests, one per user (key: user id).
    pub fn requests(&self) -> String {
        format!("{}.notify.requests", self.prefix)
    }

    /// Rendered deliveries for one channel's senders (key: user id).
    pub fn deliver(&self, channel: Channel) -> String {
        format!("{}.deliver.{}", self.prefix, channel.as_str())
    }

    /// Retry tier `tier` (0-based, below [`RETRY_TIERS`]) (key: user id).
    pub fn retry(&self, tier: usize) -> String {
        format!("{}.retry.{}", self.prefix, tier + 1)
    }

    /// Records no stage could process, with the reason (key: original key).
    pub fn dead_letter(&self) -> String {
        format!("{}.deadletter", self.prefix)
    }

    /// Every step of every notification, for analytics (key: notification id).
    pub fn tracking(&self) -> String {
        format!("{}.tracking", self.prefix)
    }

    /// Changes to users' in-app inboxes, read by every gateway for the live
    /// streams (key: user id).
    pub fn inbox_events(&self) -> String {
        format!("{}.inbox.events", self.prefix)
    }

    /// Published posts (key: author id).
    pub fn posts(&self) -> String {
        format!("{}.feed.posts", self.prefix)
    }

    /// Slices of a post's audience for the feed writers (key: post id and
    /// slice number, so one post's slices spread over partitions).
    pub fn fanout(&self) -> String {
        format!("{}.feed.fanout", self.prefix)
    }

    /// Likes, unlikes and replies to feed posts, for the tally stage (key:
    /// post id, so one post's reactions are counted in order by one
    /// consumer).
    pub fn reactions(&self) -> String {
        format!("{}.feed.reactions", self.prefix)
    }

    /// Edits and deletes of feed posts, read by every gateway (caches) and
    /// the feed-pruner stage (key: post id).
    pub fn revisions(&self) -> String {
        format!("{}.feed.revisions", self.prefix)
    }

    /// Follows and unfollows, for the feed-follows stage (key: follower id,
    /// so one follower's changes apply in order).
    pub fn follows(&self) -> String {
        format!("{}.feed.follows", self.prefix)
    }

    /// Every topic with its layout; `partitions` is the configured default.
    pub fn specs(&self, partitions: i32) -> Vec<TopicSpec> {
        let spec =
            |name: String, retention_ms: i64, record: &'static str, key: &'static str| TopicSpec {
                name,
                partitions,
                retention_ms,
                record,
                key,
            };
        let mut specs = vec![spec(
            self.requests(),
            7 * DAY_MS,
            "NotificationRequest",
            "user id",
        )];
        for channel in Channel::ALL {
            specs.push(spec(
                self.deliver(channel),
                3 * DAY_MS,
                "Delivery",
                "user id",
            ));
        }
        for tier in 0..RETRY_TIERS {
            specs.push(spec(self.retry(tier), 3 * DAY_MS, "Delivery", "user id"));
        }
        specs.push(spec(
            self.dead_letter(),
            30 * DAY_MS,
            "DeadLetter",
            "original key",
        ));
        specs.push(spec(
            self.tracking(),
            30 * DAY_MS,
            "TrackingEvent",
            "notification id",
        ));
        // Short: a gateway only needs what happened since a client's
        // reconnect; the inbox itself is in the store.
        specs.push(spec(self.inbox_events(), DAY_MS, "InboxEvent", "user id"));
        specs.push(spec(self.posts(), 7 * DAY_MS, "PostPublished", "author id"));
        specs.push(spec(
            self.fanout(),
            DAY_MS,
            "FanoutBatch",
            "post id + slice",
        ));
        specs.push(spec(
            self.reactions(),
            7 * DAY_MS,
            "PostReaction",
            "post id",
        ));
        specs.push(spec(self.revisions(), 7 * DAY_MS, "PostRevised", "post id"));
        specs.push(spec(
            self.follows(),
            7 * DAY_MS,
            "FollowChanged",
            "follower id",
        ));
        specs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let t = Topics::new("tidings");
        assert_eq!(t.requests(), "tidings.notify.requests");
        assert_eq!(t.deliver(Channel::Sms), "tidings.deliver.sms");
        assert_eq!(t.retry(0), "tidings.retry.1");
        assert_eq!(t.retry(2), "tidings.retry.3");
        assert_eq!(t.revisions(), "tidings.feed.revisions");
        assert_eq!(t.follows(), "tidings.feed.follows");
        let specs = t.specs(6);
        // Requests, deliver per channel, retry tiers, then dead letters,
        // tracking, inbox events and the five feed topics.
        assert_eq!(specs.len(), 1 + Channel::ALL.len() + 3 + 8);
        let mut names: Vec<_> = specs.iter().map(|s| s.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), specs.len());
    }
}
