//! Store call latency and errors, for every engine and operation, recorded
//! in one place: [`Store::connect`](crate::Store::connect) wraps each
//! aggregate's trait object in a wrapper that times the call it forwards and
//! emits one [`StoreCall`] (`tidings_store_call_seconds{engine,operation}`,
//! `tidings_store_errors_total{engine,operation}`). Engines and callers stay
//! unaware of it. An operation is named `<aggregate>.<method>`, as the
//! engines name them in their errors (`contacts.live_devices_many`).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings_telemetry::StoreCall;

use crate::{
    App, AppStore, Claim, ContactStore, CounterStore, DedupeLedger, DeliveryKey, Device, FeedEntry,
    FeedStore, InboxAction, InboxCounts, InboxItem, InboxQuery, InboxStore, Millis, NewAdmission,
    NotificationLog, Post, PostStore, PostTally, Preference, PreferenceStore, PullState,
    RateLimitLedger, ReactionStore, Recipient, RecipientStore, Reply, Revised, ScheduleStore,
    ScheduledItem, SocialGraph, StatusEntry, Store, StoreError, TallyMember, TallyState,
    TallyUpdate, TemplateStore, TemplateVersion, User,
};

/// Runs one store call and records how long it took and whether it failed.
/// A conflict (the row already exists, e.g. a template version) is the
/// engine's answer, not its failure, so it is not counted as an error.
async fn timed<T>(
    engine: &'static str,
    operation: &'static str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = Instant::now();
    let result = call.await;
    StoreCall {
        engine,
        operation,
        elapsed: started.elapsed(),
        failed: result
            .as_ref()
            .is_err_and(|e| !matches!(e, StoreError::Conflict { .. })),
    }
    .emit();
    result
}

/// A wrapper per aggregate trait that forwards every method through
/// [`timed`], named `$aggregate.$method`.
macro_rules! metered {
    ($wrapper:ident, $store:ident, $aggregate:literal {
        $( fn $method:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty; )*
    }) => {
        struct $wrapper {
            inner: Arc<dyn $store>,
            engine: &'static str,
        }

        #[async_trait::async_trait]
        impl $store for $wrapper {
            $(
                async fn $method(&self $(, $arg: $ty)*) -> Result<$ret, StoreError> {
                    timed(
                        self.engine,
                        concat!($aggregate, ".", stringify!($method)),
                        self.inner.$method($($arg),*),
                    )
                    .await
                }
            )*
        }
    };
}

metered!(MeteredApps, AppStore, "apps" {
    fn put(&self, app: &App) -> ();
    fn get(&self, app_key: &str) -> Option<App>;
    fn revoke(&self, app_key: &str) -> bool;
    fn list(&self) -> Vec<App>;
});

metered!(MeteredContacts, ContactStore, "contacts" {
    fn upsert_user(&self, user: &User) -> ();
    fn get_user(&self, user_id: &str) -> Option<User>;
    fn get_users(&self, user_ids: &[String]) -> Vec<User>;
    fn set_email(&self, user_id: &str, email: Option<String>) -> ();
    fn set_phone(&self, user_id: &str, phone: Option<String>) -> ();
    fn register_device(&self, device: &Device) -> ();
    fn remove_device(&self, user_id: &str, token: &str) -> ();
    fn invalidate_device(&self, user_id: &str, token: &str, at: Millis) -> ();
    fn live_devices(&self, user_id: &str) -> Vec<Device>;
    fn live_devices_many(&self, user_ids: &[String]) -> Vec<Device>;
    fn trim_devices(&self, user_id: &str, keep: usize) -> usize;
});

metered!(MeteredCounters, CounterStore, "counters" {
    fn add(&self, scope: &str, key: &str, delta: i64) -> ();
    fn add_many(&self, deltas: &[(String, String, i64)]) -> ();
    fn get(&self, scope: &str, key: &str) -> i64;
    fn get_many(&self, scope: &str, keys: &[String]) -> HashMap<String, i64>;
});

metered!(MeteredDedupe, DedupeLedger, "dedupe" {
    fn first_seen(&self, scope: &str, key: &str, ttl: Duration) -> bool;
    fn first_seen_many(&self, scope: &str, keys: &[String], ttl: Duration) -> Vec<bool>;
    fn mark_many(&self, scope: &str, keys: &[String], ttl: Duration) -> ();
    fn claim_many(&self, scope: &str, claims: &[(String, String)], ttl: Duration) -> Vec<Claim>;
    fn forget(&self, scope: &str, key: &str) -> ();
    fn seen(&self, scope: &str, key: &str) -> bool;
    fn seen_many(&self, scope: &str, keys: &[String]) -> Vec<bool>;
});

metered!(MeteredInbox, InboxStore, "inbox" {
    fn put(&self, item: &InboxItem, cap: u32, ttl: Duration) -> bool;
    fn list(&self, user_id: &str, query: &InboxQuery) -> Vec<InboxItem>;
    fn get(&self, user_id: &str, notification_id: &str) -> Option<InboxItem>;
    fn mark(&self, user_id: &str, notification_id: &str, action: InboxAction, at: Millis) -> bool;
    fn mark_all_read(&self, user_id: &str, at: Millis) -> u32;
    fn mark_seen(&self, user_id: &str, at: Millis) -> ();
    fn counts(&self, user_id: &str) -> InboxCounts;
});

metered!(MeteredFeed, FeedStore, "feed" {
    fn append_many(&self, entries: &[(String, FeedEntry)]) -> ();
    fn remove_many(&self, entries: &[(String, FeedEntry)]) -> ();
    fn read(&self, owner: &str, before: Option<(Millis, String)>, limit: u32) -> Vec<FeedEntry>;
    fn trim(&self, owner: &str, keep: usize) -> ();
    fn set_pull_state(&self, author: &str, state: PullState, at: Millis) -> ();
    fn pull_state(&self, author: &str) -> PullState;
    fn pulled_authors(&self) -> HashSet<String>;
});

metered!(MeteredNotificationLog, NotificationLog, "notification_log" {
    fn record(&self, entry: &StatusEntry) -> ();
    fn record_many(&self, entries: &[StatusEntry]) -> ();
    fn sent_many(&self, keys: &[DeliveryKey]) -> Vec<bool>;
    fn get(&self, notification_id: &str) -> Vec<StatusEntry>;
});

metered!(MeteredPosts, PostStore, "posts" {
    fn put(&self, post: &Post) -> ();
    fn put_restricted(&self, post: &Post) -> ();
    fn get_many(&self, post_ids: &[String]) -> Vec<Post>;
    fn edit(&self, post: &Post, body: &str) -> Revised;
    fn delete(&self, post: &Post) -> Revised;
    fn by_author(&self, author_id: &str, before: Option<Millis>, limit: u32) -> Vec<Post>;
});

metered!(MeteredPreferences, PreferenceStore, "preferences" {
    fn set(&self, preference: &Preference) -> ();
    fn list(&self, user_id: &str) -> Vec<Preference>;
    fn list_many(&self, user_ids: &[String]) -> HashMap<String, Vec<Preference>>;
});

metered!(MeteredRateLimits, RateLimitLedger, "rate_limits" {
    fn admissions_many(&self, keys: &[String]) -> HashMap<String, Vec<(Millis, String)>>;
    fn admit_many(&self, admissions: &[NewAdmission]) -> ();
});

metered!(MeteredReactions, ReactionStore, "reactions" {
    fn like(&self, user_id: &str, post_id: &str, at: Millis) -> ();
    fn unlike(&self, user_id: &str, post_id: &str) -> ();
    fn liked_by(&self, user_id: &str, post_ids: &[String]) -> HashSet<String>;
    fn put_reply(&self, reply: &Reply) -> ();
    fn replies(&self, post_id: &str, after: Option<(Millis, String)>, limit: u32) -> Vec<Reply>;
    fn tallies(&self, post_ids: &[String]) -> HashMap<String, PostTally>;
    fn tally_state(&self, post_id: &str, members: &[TallyMember]) -> TallyState;
    fn update_tally(&self, update: &TallyUpdate) -> ();
});

metered!(MeteredSchedule, ScheduleStore, "schedule" {
    fn put(&self, item: &ScheduledItem) -> ();
    fn due(&self, scope: &str, now: Millis, limit: u32) -> Vec<ScheduledItem>;
    fn remove(&self, scope: &str, item_id: &str, due_at: Millis) -> ();
});

metered!(MeteredSocialGraph, SocialGraph, "social_graph" {
    fn follow(&self, follower: &str, followee: &str, at: Millis) -> ();
    fn unfollow(&self, follower: &str, followee: &str) -> ();
    fn followers(&self, user: &str, after: Option<String>, limit: u32) -> Vec<String>;
    fn followers_among(&self, user: &str, candidates: &[String]) -> HashSet<String>;
    fn following(&self, user: &str) -> Vec<String>;
    fn follower_count(&self, user: &str) -> u64;
    fn following_count(&self, user: &str) -> u64;
    fn set_muted(&self, user: &str, muted_user: &str, muted: bool) -> ();
    fn muted(&self, user: &str) -> HashSet<String>;
    fn muted_among(&self, user: &str, candidates: &[String]) -> HashSet<String>;
});

metered!(MeteredRecipients, RecipientStore, "recipients" {
    fn recipients_many(&self, user_ids: &[String]) -> HashMap<String, Recipient>;
});

metered!(MeteredTemplates, TemplateStore, "templates" {
    fn create_version(&self, template: &TemplateVersion) -> ();
    fn get(&self, name: &str, version: Option<u32>) -> Option<TemplateVersion>;
    fn list_versions(&self, name: &str) -> Vec<u32>;
});

/// `store` with every aggregate call timed and its failures counted.
pub(crate) fn metered(store: Store) -> Store {
    let engine = store.backend_name();
    Store {
        contacts: Arc::new(MeteredContacts {
            inner: store.contacts,
            engine,
        }),
        preferences: Arc::new(MeteredPreferences {
            inner: store.preferences,
            engine,
        }),
        recipients: Arc::new(MeteredRecipients {
            inner: store.recipients,
            engine,
        }),
        templates: Arc::new(MeteredTemplates {
            inner: store.templates,
            engine,
        }),
        dedupe: Arc::new(MeteredDedupe {
            inner: store.dedupe,
            engine,
        }),
        notification_log: Arc::new(MeteredNotificationLog {
            inner: store.notification_log,
            engine,
        }),
        posts: Arc::new(MeteredPosts {
            inner: store.posts,
            engine,
        }),
        social_graph: Arc::new(MeteredSocialGraph {
            inner: store.social_graph,
            engine,
        }),
        feed: Arc::new(MeteredFeed {
            inner: store.feed,
            engine,
        }),
        counters: Arc::new(MeteredCounters {
            inner: store.counters,
            engine,
        }),
        schedule: Arc::new(MeteredSchedule {
            inner: store.schedule,
            engine,
        }),
        apps: Arc::new(MeteredApps {
            inner: store.apps,
            engine,
        }),
        rate_limits: Arc::new(MeteredRateLimits {
            inner: store.rate_limits,
            engine,
        }),
        inbox: Arc::new(MeteredInbox {
            inner: store.inbox,
            engine,
        }),
        reactions: Arc::new(MeteredReactions {
            inner: store.reactions,
            engine,
        }),
        backend: store.backend,
    }
}

#[cfg(test)]
mod tests {
    use crate::StoreOptions;

    use super::*;

    /// The value of the sample whose line starts with `series`, 0 if absent.
    fn sample(series: &str) -> u64 {
        tidings_telemetry::metrics()
            .render()
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// A call through the store shows up as its operation, on its engine.
    #[tokio::test]
    async fn calls_are_timed_per_engine_and_operation() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/metered.db", dir.path().display());
        let store = Store::connect(&url, &StoreOptions::default())
            .await
            .expect("sqlite store");
        let calls = "tidings_store_call_seconds_count{engine=\"sqlite\",operation=\"apps.get\"}";
        let before = sample(calls);
        store.apps.get("nobody").await.expect("an absent app");
        store
            .apps
            .get("nobody-either")
            .await
            .expect("an absent app");
        assert_eq!(sample(calls), before + 2);
        assert_eq!(
            sample("tidings_store_errors_total{engine=\"sqlite\",operation=\"apps.get\"}"),
            0
        );
    }

    /// A failed call counts as an error of its operation; a conflict is an
    /// answer, not a failure.
    #[tokio::test]
    async fn failures_are_counted_and_conflicts_are_not() {
        let errors = "tidings_store_errors_total{engine=\"test\",operation=\"test.fails\"}";
        let calls = "tidings_store_call_seconds_count{engine=\"test\",operation=\"test.fails\"}";
        let failing = async {
            Err::<(), _>(StoreError::Backend {
                op: "test.fails",
                key: "k".into(),
                retriable: true,
                source: "timed out".into(),
            })
        };
        let conflict = async {
            Err::<(), _>(StoreError::Conflict {
                op: "test.fails",
                key: "k".into(),
            })
        };
        assert!(timed("test", "test.fails", failing).await.is_err());
        assert!(timed("test", "test.fails", conflict).await.is_err());
        assert!(timed("test", "test.fails", async { Ok(()) }).await.is_ok());
        assert_eq!(sample(calls), 3);
        assert_eq!(sample(errors), 1);
    }
}
