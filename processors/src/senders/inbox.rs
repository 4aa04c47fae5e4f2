//! The provider of the `in_app` channel: tidings itself. A delivery becomes an
//! item in the user's inbox in the store, and a `NEW` [`InboxEvent`] on
//! `tidings.inbox.events` (key: user id) tells the gateways, which push it to
//! the user's open streams.
//!
//! It runs inside [`ChannelSender`](super::ChannelSender) like every other
//! provider, so the sent ledger, retries, dead letters and tracking apply
//! unchanged. A replay is harmless: the put keeps one item per notification,
//! and the event is produced again under the same id (a UUIDv5 of the
//! delivery id), which clients drop as a repeat. The event is produced even
//! when the item was already there: a crash between the put and the produce
//! must still reach the live clients on the replay.

use std::{sync::Arc, time::Duration};

use tidings_config::InboxConfig;
use tidings_kafka::{AvroProducer, KafkaError, Topics, now_millis};
use tidings_schemas::records::{Delivery, InboxEvent, InboxEventItem, InboxEventKind};
use tidings_store::{InboxCounts, InboxItem, InboxStore, Store, StoreError};
use tracing::{debug, warn};
use uuid::Uuid;

use super::{Provider, ProviderError, Receipt};

/// Namespace of the ids of `NEW` inbox events: stable per delivery.
const NEW_ITEM_EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x7469_6469_6e67_7300_8000_0000_0000_0009);

/// The `in_app` provider: the inbox in the store, and its live events.
pub struct InboxProvider {
    store: Store,
    producer: AvroProducer,
    topic: String,
    /// Items kept per user (`inbox.max_items`).
    cap: u32,
    /// How long an item is kept (`inbox.ttl_days`).
    ttl: Duration,
}

impl InboxProvider {
    pub fn new(
        store: Store,
        producer: AvroProducer,
        topics: &Topics,
        config: &InboxConfig,
    ) -> Self {
        Self {
            store,
            producer,
            topic: topics.inbox_events().to_owned(),
            cap: config.max_items,
            ttl: Duration::from_secs(config.ttl_days.saturating_mul(24 * 60 * 60)),
        }
    }
}

/// The user's unread inbox count for the badge of a push (`[inbox]
/// push_badge`), read by the iOS and Android senders as each push goes out.
#[derive(Clone)]
pub struct UnreadBadge(Arc<dyn InboxStore>);

impl UnreadBadge {
    pub fn new(inbox: Arc<dyn InboxStore>) -> Self {
        Self(inbox)
    }

    /// The user's unread count, or `None` when the store does not answer:
    /// the push goes out without a badge (the app keeps the one it shows)
    /// rather than waiting on the inbox.
    pub async fn unread(&self, user_id: &str) -> Option<u32> {
        match self.0.counts(user_id).await {
            Ok(counts) => Some(counts.unread),
            Err(e) => {
                warn!(user = user_id, error = %e, "no unread count for the push badge; sending without one");
                None
            }
        }
    }
}

/// The id of the `NEW` event of a delivery: the same on every replay, so
/// clients that dedupe by event id show the item once.
pub fn new_item_event_id(delivery_id: &str) -> String {
    Uuid::new_v5(&NEW_ITEM_EVENT_NAMESPACE, delivery_id.as_bytes()).to_string()
}

/// The inbox item a delivery becomes: unread, ordered by when the gateway
/// accepted the notification.
fn item_of(d: &Delivery) -> InboxItem {
    InboxItem {
        user_id: d.user_id.clone(),
        notification_id: d.notification_id.clone(),
        created_at: d.accepted_at,
        category: d.category.clone(),
        template_name: d.template_name.clone(),
        title: d.title.clone(),
        body: d.body.clone(),
        action_url: d.action_url.clone(),
        avatar_url: d.avatar_url.clone(),
        data: d.data.clone(),
        read_at: None,
        archived_at: None,
    }
}

/// The `NEW` event announcing `item`, with the inbox's counts after it.
fn new_item_event(d: &Delivery, item: &InboxItem, counts: InboxCounts, at: i64) -> InboxEvent {
    let count = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    InboxEvent {
        event_id: new_item_event_id(&d.delivery_id),
        user_id: item.user_id.clone(),
        kind: InboxEventKind::New,
        notification_id: Some(item.notification_id.clone()),
        item: Some(InboxEventItem {
            created_at: item.created_at,
            category: item.category.clone(),
            title: item.title.clone(),
            body: item.body.clone(),
            action_url: item.action_url.clone(),
            avatar_url: item.avatar_url.clone(),
            data: item.data.clone(),
        }),
        unread: count(counts.unread),
        unseen: count(counts.unseen),
        at,
    }
}

/// A store failure: retried through the tiers if the store may come back,
/// dead-lettered otherwise.
fn store_error(what: &str, e: StoreError) -> ProviderError {
    if e.is_retriable() {
        ProviderError::Transient {
            reason: format!("{what}: {e}"),
            retry_after: None,
        }
    } else {
        ProviderError::Rejected(format!("{what}: {e}"))
    }
}

/// A failed produce is retried (the put before it is idempotent); a record
/// that cannot be encoded never will be.
fn produce_error(e: KafkaError) -> ProviderError {
    match e {
        KafkaError::Encode { .. } => ProviderError::Rejected(e.to_string()),
        e => ProviderError::Transient {
            reason: e.to_string(),
            retry_after: None,
        },
    }
}

#[async_trait::async_trait]
impl Provider for InboxProvider {
    fn name(&self) -> &'static str {
        "inbox"
    }

    async fn deliver(&self, d: &Delivery) -> Result<Receipt, ProviderError> {
        let item = item_of(d);
        let new = self
            .store
            .inbox
            .put(&item, self.cap, self.ttl)
            .await
            .map_err(|e| store_error("inbox put", e))?;
        let counts = self
            .store
            .inbox
            .counts(&item.user_id)
            .await
            .map_err(|e| store_error("inbox counts", e))?;
        let event = new_item_event(d, &item, counts, now_millis());
        self.producer
            .send(&self.topic, &item.user_id, &event)
            .await
            .map_err(produce_error)?;
        if !new {
            debug!(delivery = %d.delivery_id, "already in the inbox; its event produced again");
        }
        Ok(Receipt { provider_id: None })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tidings_schemas::records::Priority;

    use super::*;

    fn delivery() -> Delivery {
        Delivery {
            delivery_id: "d-1".into(),
            notification_id: "n-1".into(),
            event_id: "e-1".into(),
            user_id: "u-1".into(),
            channel: "in_app".into(),
            target: "u-1".into(),
            category: Some("billing".into()),
            template_name: None,
            template_version: None,
            locale: None,
            title: Some("Invoice ready".into()),
            body: Some("You owe $3".into()),
            email_subject: None,
            email_html: None,
            email_text: None,
            data: BTreeMap::from([("invoice".into(), "7".into())]),
            collapse_id: None,
            priority: Priority::Normal,
            expires_at: None,
            accepted_at: 1_764_553_200_000,
            attempt: 0,
            not_before: None,
            last_error: None,
            action_url: Some("https://app.example/invoices/7".into()),
            avatar_url: Some("https://cdn.example/billing.png".into()),
        }
    }

    #[test]
    fn event_ids_are_stable_per_delivery_and_distinct_across_deliveries() {
        let id = new_item_event_id("d-1");
        assert_eq!(id, new_item_event_id("d-1"), "a replay repeats the id");
        assert_ne!(id, new_item_event_id("d-2"));
        let parsed = Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 5);
    }

    #[test]
    fn the_item_and_its_event_carry_the_delivery() {
        let d = delivery();
        let item = item_of(&d);
        assert_eq!(item.created_at, d.accepted_at);
        assert_eq!(item.notification_id, "n-1");
        assert_eq!(item.action_url, d.action_url);
        assert_eq!((item.read_at, item.archived_at), (None, None));
        let counts = InboxCounts {
            unread: 3,
            unseen: 1,
            total: 7,
        };
        let event = new_item_event(&d, &item, counts, 99);
        assert_eq!(event.kind, InboxEventKind::New);
        assert_eq!(event.event_id, new_item_event_id("d-1"));
        assert_eq!(event.notification_id.as_deref(), Some("n-1"));
        assert_eq!((event.unread, event.unseen, event.at), (3, 1, 99));
        let carried = event.item.unwrap();
        assert_eq!(carried.title.as_deref(), Some("Invoice ready"));
        assert_eq!(carried.avatar_url, d.avatar_url);
        assert_eq!(carried.data, d.data);
        assert_eq!(carried.created_at, d.accepted_at);
    }

    #[test]
    fn store_failures_retry_only_when_the_store_may_come_back() {
        let down = StoreError::Connect {
            backend: "scylla",
            address: "127.0.0.1:9042".into(),
            reason: "refused".into(),
        };
        assert!(matches!(
            store_error("inbox put", down),
            ProviderError::Transient { .. }
        ));
        let bad = StoreError::InvalidData {
            op: "inbox.put",
            key: "u-1".into(),
            reason: "corrupt".into(),
        };
        assert!(matches!(
            store_error("inbox put", bad),
            ProviderError::Rejected(_)
        ));
    }
}
