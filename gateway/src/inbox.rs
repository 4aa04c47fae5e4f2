//! The in-app inbox's front door, for the user a bearer token names (the
//! feed's tokens, `user_token.rs`): `tidings.v1.InboxService` over gRPC and
//! `/v1/me/notifications` over HTTP (`inbox_http.rs`). Both call the logic
//! here.
//!
//! Items are written by the in-app sender; here they are listed, counted
//! and marked. Each state change is stored first, then announced as an
//! `InboxEvent` on `tidings.inbox.events` (key: the user) with the counts
//! after it, which every gateway's live streams pick up (`inbox_live.rs`),
//! and a read or an archive is a `READ` / `ARCHIVED` tracking event for the
//! template's stats. Both writes are best effort: the change is durable
//! once stored, and a stream that missed it gets fresh counts on reconnect.

use std::pin::Pin;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::Stream;
use tidings_kafka::now_millis;
use tidings_schemas::{
    Channel, ids,
    proto::v1::{
        self as pb, GetCountsRequest, GetCountsResponse, ListNotificationsRequest,
        ListNotificationsResponse, MarkAllReadRequest, MarkAllReadResponse,
        MarkNotificationRequest, MarkNotificationResponse, MarkSeenRequest, MarkSeenResponse,
        WatchEvent, WatchRequest, inbox_service_server::InboxService,
    },
    records::{InboxEvent, InboxEventKind, TrackingEvent, TrackingKind},
};
use tidings_store::{InboxAction, InboxCounts, InboxFilter, InboxItem, InboxQuery, Millis};
use tonic::{Request, Response, Status, metadata::MetadataMap};
use tracing::warn;
use uuid::Uuid;

use crate::{
    Gateway,
    feed::MAX_PAGE,
    inbox_live::{Change, EventId, Numbered, Update},
    store_status, validate,
};

/// A position in an inbox: the (created_at, id) of the last item shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InboxCursor {
    pub at: Millis,
    pub id: String,
}

impl InboxCursor {
    /// Tagged `i1`, so a feed cursor is not taken for one.
    pub(crate) fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("i1:{}:{}", self.at, self.id))
    }

    /// The empty string is the newest page.
    pub(crate) fn decode(raw: &str) -> Result<Option<Self>, Status> {
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
            (Some("i1"), Some(at), Some(id)) if validate::id("cursor", id).is_ok() => {
                Ok(Some(InboxCursor {
                    at: at.parse().map_err(|_| bad())?,
                    id: id.to_owned(),
                }))
            }
            _ => Err(bad()),
        }
    }
}

/// The filter as HTTP names it; absent or empty is `inbox`.
pub(crate) fn parse_filter(raw: Option<&str>) -> Result<InboxFilter, Status> {
    match raw.unwrap_or("") {
        "" | "inbox" => Ok(InboxFilter::Inbox),
        "unread" => Ok(InboxFilter::Unread),
        "archived" => Ok(InboxFilter::Archived),
        "all" => Ok(InboxFilter::All),
        other => Err(validate::invalid(
            "filter",
            format!("is {other:?}; one of inbox, unread, archived, all"),
        )),
    }
}

fn filter_from_pb(value: i32) -> Result<InboxFilter, Status> {
    match pb::InboxFilter::try_from(value) {
        Ok(pb::InboxFilter::Unspecified | pb::InboxFilter::Inbox) => Ok(InboxFilter::Inbox),
        Ok(pb::InboxFilter::Unread) => Ok(InboxFilter::Unread),
        Ok(pb::InboxFilter::Archived) => Ok(InboxFilter::Archived),
        Ok(pb::InboxFilter::All) => Ok(InboxFilter::All),
        Err(_) => Err(validate::invalid(
            "filter",
            format!("{value} is not an InboxFilter"),
        )),
    }
}

fn action_from_pb(value: i32) -> Result<InboxAction, Status> {
    match pb::InboxAction::try_from(value) {
        Ok(pb::InboxAction::Read) => Ok(InboxAction::Read),
        Ok(pb::InboxAction::Unread) => Ok(InboxAction::Unread),
        Ok(pb::InboxAction::Archive) => Ok(InboxAction::Archive),
        Ok(pb::InboxAction::Unarchive) => Ok(InboxAction::Unarchive),
        Ok(pb::InboxAction::Unspecified) => Err(validate::invalid("action", "is required")),
        Err(_) => Err(validate::invalid(
            "action",
            format!("{value} is not an InboxAction"),
        )),
    }
}

/// A category to list; empty is every category.
pub(crate) fn parse_category(raw: &str) -> Result<Option<String>, Status> {
    if raw.is_empty() {
        return Ok(None);
    }
    validate::id("category", raw)?;
    Ok(Some(raw.to_owned()))
}

/// What a page asks for, validated.
pub(crate) struct PageAsk {
    pub filter: InboxFilter,
    pub category: Option<String>,
    pub cursor: Option<InboxCursor>,
    pub limit: u32,
}

/// One page of an inbox, newest first.
pub(crate) struct InboxPage {
    pub items: Vec<ShownItem>,
    /// `None` when there is nothing older.
    pub next_cursor: Option<String>,
}

/// An item as the APIs show it: with whether the user has seen it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShownItem {
    pub item: InboxItem,
    pub seen: bool,
}

/// Where the user's "seen" mark falls among their items. The store keeps
/// the mark and answers only the number of items after it (`unseen`); the
/// items are ordered by `created_at`, so the mark lies between the
/// `unseen`-th newest unarchived item and the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SeenLine {
    /// Nothing is unseen.
    Everything,
    /// Unarchived items created up to this are seen, later ones are not.
    UpTo(Millis),
    /// Every unarchived item is unseen.
    Nothing,
}

impl SeenLine {
    /// Archived items count in no badge: they show as seen.
    pub(crate) fn is_seen(self, item: &InboxItem) -> bool {
        item.archived_at.is_some()
            || match self {
                SeenLine::Everything => true,
                SeenLine::UpTo(at) => item.created_at <= at,
                SeenLine::Nothing => false,
            }
    }
}

impl Gateway {
    /// The user a gRPC call acts for, from its `authorization` metadata.
    fn inbox_user(&self, metadata: &MetadataMap) -> Result<String, Status> {
        self.feed_user(metadata.get("authorization").and_then(|v| v.to_str().ok()))
    }

    pub(crate) async fn inbox_counts(&self, user: &str) -> Result<InboxCounts, Status> {
        self.store.inbox.counts(user).await.map_err(store_status)
    }

    /// Where `user`'s seen mark falls, given their `counts`: free when
    /// nothing is unseen, else a read of the `unseen + 1` newest unarchived
    /// items (in pages of [`MAX_PAGE`]).
    pub(crate) async fn seen_line(
        &self,
        user: &str,
        counts: &InboxCounts,
    ) -> Result<SeenLine, Status> {
        if counts.unseen == 0 {
            return Ok(SeenLine::Everything);
        }
        let mut left = counts.unseen as usize;
        let mut before = None;
        loop {
            let page = self
                .store
                .inbox
                .list(
                    user,
                    &InboxQuery {
                        filter: InboxFilter::Inbox,
                        category: None,
                        before: before.take(),
                        limit: MAX_PAGE,
                    },
                )
                .await
                .map_err(store_status)?;
            if let Some(first_seen) = page.get(left) {
                return Ok(SeenLine::UpTo(first_seen.created_at));
            }
            if page.len() < MAX_PAGE as usize {
                return Ok(SeenLine::Nothing);
            }
            left -= page.len();
            let last = page.last().expect("a full page");
            before = Some((last.created_at, last.notification_id.clone()));
        }
    }

    /// One page of `user`'s inbox.
    pub(crate) async fn list_inbox(&self, user: &str, ask: PageAsk) -> Result<InboxPage, Status> {
        let query = InboxQuery {
            filter: ask.filter,
            category: ask.category,
            before: ask.cursor.map(|c| (c.at, c.id)),
            // One more than the page, to know whether there is an older one.
            limit: ask.limit + 1,
        };
        let (mut items, counts) = tokio::try_join!(
            async {
                self.store
                    .inbox
                    .list(user, &query)
                    .await
                    .map_err(store_status)
            },
            self.inbox_counts(user),
        )?;
        let more = items.len() > ask.limit as usize;
        items.truncate(ask.limit as usize);
        let next_cursor = more.then(|| {
            let last = items.last().expect("a full page");
            InboxCursor {
                at: last.created_at,
                id: last.notification_id.clone(),
            }
            .encode()
        });
        let line = self.seen_line(user, &counts).await?;
        Ok(InboxPage {
            items: items
                .into_iter()
                .map(|item| ShownItem {
                    seen: line.is_seen(&item),
                    item,
                })
                .collect(),
            next_cursor,
        })
    }

    /// Applies `action` to one item: the item after it and the counts.
    pub(crate) async fn mark_inbox(
        &self,
        user: &str,
        id: &str,
        action: InboxAction,
    ) -> Result<(ShownItem, InboxCounts), Status> {
        validate::id("id", id)?;
        let inbox = &self.store.inbox;
        let at = now_millis();
        let not_found = || Status::not_found(format!("id: {id} is not in this inbox"));
        if !inbox
            .mark(user, id, action, at)
            .await
            .map_err(store_status)?
        {
            return Err(not_found());
        }
        let (item, counts) = tokio::try_join!(
            async { inbox.get(user, id).await.map_err(store_status) },
            self.inbox_counts(user),
        )?;
        // Expired or pushed out by newer items in between.
        let item = item.ok_or_else(not_found)?;
        let (kind, tracked) = match action {
            InboxAction::Read => (InboxEventKind::Read, Some(TrackingKind::Read)),
            InboxAction::Unread => (InboxEventKind::Unread, None),
            InboxAction::Archive => (InboxEventKind::Archived, Some(TrackingKind::Archived)),
            InboxAction::Unarchive => (InboxEventKind::Unarchived, None),
        };
        let line = self.seen_line(user, &counts).await?;
        let ((), tracked) = tokio::join!(self.announce(user, kind, Some(id), &counts, at), async {
            match tracked {
                Some(tracked) => {
                    let template = item.template_name.as_deref();
                    self.track_inbox(user, id, template, tracked, at).await
                }
                None => Ok(()),
            }
        });
        tracked?;
        let seen = line.is_seen(&item);
        Ok((ShownItem { item, seen }, counts))
    }

    /// Marks every unread item read: how many were, and the counts.
    ///
    /// No tracking events: a bulk "mark all read" is not the user reading
    /// each item, and the templates' read counts should mean opened.
    pub(crate) async fn mark_inbox_read(&self, user: &str) -> Result<(u32, InboxCounts), Status> {
        let at = now_millis();
        let changed = self
            .store
            .inbox
            .mark_all_read(user, at)
            .await
            .map_err(store_status)?;
        let counts = self.inbox_counts(user).await?;
        self.announce(user, InboxEventKind::ReadAll, None, &counts, at)
            .await;
        Ok((changed, counts))
    }

    /// Clears the badge: everything created so far is seen.
    pub(crate) async fn mark_inbox_seen(&self, user: &str) -> Result<InboxCounts, Status> {
        let at = now_millis();
        self.store
            .inbox
            .mark_seen(user, at)
            .await
            .map_err(store_status)?;
        let counts = self.inbox_counts(user).await?;
        self.announce(user, InboxEventKind::Seen, None, &counts, at)
            .await;
        Ok(counts)
    }

    /// Tells every gateway's streams of `user` about a change. Best effort:
    /// the change is stored; a stream that misses it gets fresh counts on
    /// its next event or reconnect.
    async fn announce(
        &self,
        user: &str,
        kind: InboxEventKind,
        id: Option<&str>,
        counts: &InboxCounts,
        at: Millis,
    ) {
        let event = InboxEvent {
            event_id: Uuid::now_v7().to_string(),
            user_id: user.to_owned(),
            kind,
            notification_id: id.map(str::to_owned),
            item: None,
            unread: i32::try_from(counts.unread).unwrap_or(i32::MAX),
            unseen: i32::try_from(counts.unseen).unwrap_or(i32::MAX),
            at,
        };
        if let Err(e) = self
            .producer
            .send(self.topics.inbox_events(), user, &event)
            .await
        {
            warn!(error = %e, ?kind, "could not announce an inbox change to the live streams");
        }
    }

    /// A read or archive as a tracking event, for the templates' stats.
    /// Its id is derived from the user, item and kind, so reading an item
    /// again (after an unread) counts once, and a caller that retries after
    /// UNAVAILABLE (the mark is stored and idempotent) repeats the same
    /// event. On the embedded cluster it waits for room on the tracking
    /// topic, as sends and receipts do, rather than write past a slow
    /// reader.
    async fn track_inbox(
        &self,
        user: &str,
        id: &str,
        template: Option<&str>,
        kind: TrackingKind,
        at: Millis,
    ) -> Result<(), Status> {
        let key = format!("tidings.inbox/{kind:?}/{user}/{id}");
        let event = TrackingEvent {
            event_id: ids::time_ordered(&Uuid::NAMESPACE_URL, key.as_bytes(), id).to_string(),
            notification_id: id.to_owned(),
            user_id: user.to_owned(),
            kind,
            channel: Some(Channel::InApp.as_str().to_owned()),
            target: None,
            template_name: template.map(str::to_owned),
            stage: "gateway".into(),
            detail: None,
            at,
            dispatched_at: None,
        };
        let topic = self.topics.tracking();
        let record = self
            .producer
            .encode(topic, id, &event)
            .map_err(|e| Status::internal(format!("tracking event: {e}")))?;
        let deadline = tokio::time::Instant::now() + self.producer.timeout();
        self.write_with_room(topic, &[record], deadline)
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "the {kind:?} is stored but its tracking event is not, retry: {e}"
                ))
            })
    }
}

pub(crate) fn to_pb_counts(c: InboxCounts) -> pb::InboxCounts {
    pb::InboxCounts {
        unread: c.unread,
        unseen: c.unseen,
        total: c.total,
    }
}

pub(crate) fn to_pb_item(shown: ShownItem) -> pb::InboxItem {
    let ShownItem { item, seen } = shown;
    pb::InboxItem {
        id: item.notification_id,
        created_at_ms: item.created_at,
        category: item.category.unwrap_or_default(),
        title: item.title.unwrap_or_default(),
        body: item.body.unwrap_or_default(),
        action_url: item.action_url.unwrap_or_default(),
        avatar_url: item.avatar_url.unwrap_or_default(),
        data: item.data.into_iter().collect(),
        read: item.read_at.is_some(),
        read_at_ms: item.read_at.unwrap_or_default(),
        archived: item.archived_at.is_some(),
        archived_at_ms: item.archived_at.unwrap_or_default(),
        seen,
    }
}

fn to_pb_change(change: Change) -> pb::InboxChange {
    match change {
        Change::Read => pb::InboxChange::Read,
        Change::Unread => pb::InboxChange::Unread,
        Change::Archived => pb::InboxChange::Archived,
        Change::Unarchived => pb::InboxChange::Unarchived,
        Change::ReadAll => pb::InboxChange::ReadAll,
        Change::Seen => pb::InboxChange::Seen,
    }
}

fn to_pb_event(n: Numbered) -> WatchEvent {
    use pb::watch_event::Event;
    let event = match n.update {
        Update::Counts(c) => Event::Counts(to_pb_counts(c)),
        Update::Notification { item, counts } => Event::Notification(pb::NewNotification {
            item: Some(to_pb_item(*item)),
            counts: Some(to_pb_counts(counts)),
        }),
        Update::State {
            change,
            notification_id,
            counts,
        } => Event::State(pb::StateChange {
            kind: to_pb_change(change).into(),
            id: notification_id.unwrap_or_default(),
            counts: Some(to_pb_counts(counts)),
        }),
        Update::Heartbeat => Event::Heartbeat(pb::Heartbeat {}),
    };
    WatchEvent {
        event_id: n.id.map(EventId::encode).unwrap_or_default(),
        event: Some(event),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl InboxService for Gateway {
    async fn list_notifications(
        &self,
        request: Request<ListNotificationsRequest>,
    ) -> Result<Response<ListNotificationsResponse>, Status> {
        let result = async {
            let user = self.inbox_user(request.metadata())?;
            let r = request.into_inner();
            let ask = PageAsk {
                filter: filter_from_pb(r.filter)?,
                category: parse_category(&r.category)?,
                cursor: InboxCursor::decode(&r.cursor)?,
                limit: crate::feed::page_limit(r.limit)?,
            };
            let page = self.list_inbox(&user, ask).await?;
            Ok(Response::new(ListNotificationsResponse {
                items: page.items.into_iter().map(to_pb_item).collect(),
                next_cursor: page.next_cursor.unwrap_or_default(),
            }))
        }
        .await;
        self.count("InboxService/ListNotifications", &result);
        result
    }

    async fn get_counts(
        &self,
        request: Request<GetCountsRequest>,
    ) -> Result<Response<GetCountsResponse>, Status> {
        let result = async {
            let user = self.inbox_user(request.metadata())?;
            let counts = self.inbox_counts(&user).await?;
            Ok(Response::new(GetCountsResponse {
                counts: Some(to_pb_counts(counts)),
            }))
        }
        .await;
        self.count("InboxService/GetCounts", &result);
        result
    }

    async fn mark_notification(
        &self,
        request: Request<MarkNotificationRequest>,
    ) -> Result<Response<MarkNotificationResponse>, Status> {
        let result = async {
            let user = self.inbox_user(request.metadata())?;
            let r = request.into_inner();
            let action = action_from_pb(r.action)?;
            let (item, counts) = self.mark_inbox(&user, &r.id, action).await?;
            Ok(Response::new(MarkNotificationResponse {
                item: Some(to_pb_item(item)),
                counts: Some(to_pb_counts(counts)),
            }))
        }
        .await;
        self.count("InboxService/MarkNotification", &result);
        result
    }

    async fn mark_all_read(
        &self,
        request: Request<MarkAllReadRequest>,
    ) -> Result<Response<MarkAllReadResponse>, Status> {
        let result = async {
            let user = self.inbox_user(request.metadata())?;
            let (changed, counts) = self.mark_inbox_read(&user).await?;
            Ok(Response::new(MarkAllReadResponse {
                changed,
                counts: Some(to_pb_counts(counts)),
            }))
        }
        .await;
        self.count("InboxService/MarkAllRead", &result);
        result
    }

    async fn mark_seen(
        &self,
        request: Request<MarkSeenRequest>,
    ) -> Result<Response<MarkSeenResponse>, Status> {
        let result = async {
            let user = self.inbox_user(request.metadata())?;
            let counts = self.mark_inbox_seen(&user).await?;
            Ok(Response::new(MarkSeenResponse {
                counts: Some(to_pb_counts(counts)),
            }))
        }
        .await;
        self.count("InboxService/MarkSeen", &result);
        result
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let result = async {
            let user = self.inbox_user(request.metadata())?;
            let after = EventId::decode("after_event_id", &request.get_ref().after_event_id)?;
            let watch = self
                .watch_inbox(&user, after, Some(self.inbox_heartbeat))
                .await?;
            let events = futures::stream::unfold(watch, |mut watch| async move {
                let next = watch.next().await?;
                Some((Ok(to_pb_event(next)), watch))
            });
            Ok(Response::new(Box::pin(events) as WatchStream))
        }
        .await;
        self.count("InboxService/Watch", &result);
        result
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn item(at: Millis, archived: bool) -> InboxItem {
        InboxItem {
            user_id: "u".into(),
            notification_id: format!("n{at}"),
            created_at: at,
            category: None,
            template_name: None,
            title: None,
            body: None,
            action_url: None,
            avatar_url: None,
            data: BTreeMap::new(),
            read_at: None,
            archived_at: archived.then_some(at + 1),
        }
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_named() {
        let c = InboxCursor {
            at: 1_764_553_200_000,
            id: "0193-abc:def".into(),
        };
        assert_eq!(InboxCursor::decode(&c.encode()).unwrap(), Some(c));
        assert_eq!(InboxCursor::decode("").unwrap(), None);
        let feed_cursor = crate::feed::Cursor {
            at: 1,
            post_id: "p".into(),
        }
        .encode();
        for bad in [
            "!!",
            "aTE6eA",
            &feed_cursor,
            &URL_SAFE_NO_PAD.encode("i1:1:"),
            &URL_SAFE_NO_PAD.encode("i1:x:n"),
            &URL_SAFE_NO_PAD.encode("i1:1:has space"),
        ] {
            let err = InboxCursor::decode(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().starts_with("cursor:"), "{}", err.message());
        }
    }

    #[test]
    fn filters_parse_by_name_and_anything_else_is_named() {
        assert_eq!(parse_filter(None).unwrap(), InboxFilter::Inbox);
        assert_eq!(parse_filter(Some("")).unwrap(), InboxFilter::Inbox);
        assert_eq!(parse_filter(Some("unread")).unwrap(), InboxFilter::Unread);
        assert_eq!(
            parse_filter(Some("archived")).unwrap(),
            InboxFilter::Archived
        );
        assert_eq!(parse_filter(Some("all")).unwrap(), InboxFilter::All);
        for bad in ["Unread", "read", "all ", "x"] {
            let err = parse_filter(Some(bad)).unwrap_err();
            assert!(err.message().starts_with("filter:"), "{}", err.message());
        }
        assert_eq!(filter_from_pb(0).unwrap(), InboxFilter::Inbox);
        assert_eq!(filter_from_pb(4).unwrap(), InboxFilter::All);
        assert!(
            filter_from_pb(9)
                .unwrap_err()
                .message()
                .starts_with("filter:")
        );
        assert!(
            action_from_pb(0)
                .unwrap_err()
                .message()
                .starts_with("action:")
        );
        assert_eq!(action_from_pb(3).unwrap(), InboxAction::Archive);
    }

    #[test]
    fn categories_are_ids_or_nothing() {
        assert_eq!(parse_category("").unwrap(), None);
        assert_eq!(parse_category("billing").unwrap(), Some("billing".into()));
        assert!(
            parse_category("a b")
                .unwrap_err()
                .message()
                .starts_with("category:")
        );
    }

    #[test]
    fn the_seen_line_splits_unarchived_items_and_archived_ones_are_seen() {
        assert!(SeenLine::Everything.is_seen(&item(5, false)));
        assert!(!SeenLine::Nothing.is_seen(&item(5, false)));
        assert!(SeenLine::Nothing.is_seen(&item(5, true)));
        let line = SeenLine::UpTo(5);
        assert!(line.is_seen(&item(5, false)));
        assert!(line.is_seen(&item(4, false)));
        assert!(!line.is_seen(&item(6, false)));
        assert!(line.is_seen(&item(6, true)));
    }

    #[test]
    fn items_show_absent_fields_as_empty_on_grpc() {
        let mut i = item(7, false);
        i.title = Some("Hi".into());
        i.read_at = Some(9);
        i.data.insert("k".into(), "v".into());
        let pb = to_pb_item(ShownItem {
            item: i,
            seen: true,
        });
        assert_eq!(
            (pb.id.as_str(), pb.title.as_str(), pb.body.as_str()),
            ("n7", "Hi", "")
        );
        assert!(pb.read && pb.read_at_ms == 9 && !pb.archived && pb.archived_at_ms == 0);
        assert_eq!(pb.data.get("k").map(String::as_str), Some("v"));
    }
}
