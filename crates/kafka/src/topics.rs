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

/// The names of every topic, from one prefix: made once, as stages name a
/// topic for every record they write. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Topics {
    names: std::sync::Arc<Names>,
}

#[derive(Debug)]
struct Names {
    prefix: String,
    requests: String,
    /// In the order of [`Channel::ALL`].
    deliver: [String; Channel::ALL.len()],
    retry: [String; RETRY_TIERS],
    dead_letter: String,
    tracking: String,
    inbox_events: String,
    posts: String,
    fanout: String,
    reactions: String,
    revisions: String,
    follows: String,
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
        let name = |rest: &str| format!("{prefix}.{rest}");
        Self {
            names: std::sync::Arc::new(Names {
                prefix: prefix.to_owned(),
                requests: name("notify.requests"),
                deliver: Channel::ALL.map(|c| name(&format!("deliver.{}", c.as_str()))),
                retry: std::array::from_fn(|tier| name(&format!("retry.{}", tier + 1))),
                dead_letter: name("deadletter"),
                tracking: name("tracking"),
                inbox_events: name("inbox.events"),
                posts: name("feed.posts"),
                fanout: name("feed.fanout"),
                reactions: name("feed.reactions"),
                revisions: name("feed.revisions"),
                follows: name("feed.follows"),
            }),
        }
    }

    /// The deployment's prefix (`kafka.topic_prefix`); it also scopes what a
    /// deployment keeps in a store other deployments may share (the schedule).
    pub fn prefix(&self) -> &str {
        &self.names.prefix
    }

    /// Accepted notification requests, one per user (key: user id).
    pub fn requests(&self) -> &str {
        &self.names.requests
    }

    /// Rendered deliveries for one channel's senders (key: user id).
    pub fn deliver(&self, channel: Channel) -> &str {
        let i = Channel::ALL
            .iter()
            .position(|c| *c == channel)
            .expect("Channel::ALL lists every channel");
        &self.names.deliver[i]
    }

    /// Retry tier `tier` (0-based, below [`RETRY_TIERS`]) (key: user id).
    pub fn retry(&self, tier: usize) -> &str {
        &self.names.retry[tier]
    }

    /// Records no stage could process, with the reason (key: original key).
    pub fn dead_letter(&self) -> &str {
        &self.names.dead_letter
    }

    /// Every step of every notification, for analytics (key: notification id).
    pub fn tracking(&self) -> &str {
        &self.names.tracking
    }

    /// Changes to users' in-app inboxes, read by every gateway for the live
    /// streams (key: user id).
    pub fn inbox_events(&self) -> &str {
        &self.names.inbox_events
    }

    /// Published posts (key: author id).
    pub fn posts(&self) -> &str {
        &self.names.posts
    }

    /// Slices of a post's audience for the feed writers (key: post id and
    /// slice number, so one post's slices spread over partitions).
    pub fn fanout(&self) -> &str {
        &self.names.fanout
    }

    /// Likes, unlikes and replies to feed posts, for the tally stage (key:
    /// post id, so one post's reactions are counted in order by one
    /// consumer).
    pub fn reactions(&self) -> &str {
        &self.names.reactions
    }

    /// Edits and deletes of feed posts, read by every gateway (caches) and
    /// the feed-pruner stage (key: post id).
    pub fn revisions(&self) -> &str {
        &self.names.revisions
    }

    /// Follows and unfollows, for the feed-follows stage (key: follower id,
    /// so one follower's changes apply in order).
    pub fn follows(&self) -> &str {
        &self.names.follows
    }

    /// Every topic with its layout; `partitions` is the configured default.
    pub fn specs(&self, partitions: i32) -> Vec<TopicSpec> {
        let spec =
            |name: &str, retention_ms: i64, record: &'static str, key: &'static str| TopicSpec {
                name: name.to_owned(),
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
