//! The in-app inbox over HTTP, for web and mobile clients:
//! `/v1/me/notifications` lists, counts and marks the bearer's items, and
//! `/v1/me/notifications/stream` is their live stream as Server-Sent Events.
//! Every call carries `Authorization: Bearer <user token>`; the stream also
//! takes the token as `?access_token=` (RFC 6750 section 2.3), since a
//! browser's `EventSource` cannot send headers. The logic is `inbox.rs`'s and
//! `inbox_live.rs`'s, shared with gRPC; errors are the feed's JSON
//! [`ErrorBody`].

use std::{collections::BTreeMap, convert::Infallible};

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use serde::{Deserialize, Serialize};
use tidings_store::{InboxAction, InboxCounts};
use tonic::{Code, Status};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    Gateway,
    feed::{DEFAULT_PAGE, MAX_PAGE, page_limit},
    feed_http::{ApiError, status_response},
    inbox::{InboxCursor, PageAsk, ShownItem, parse_category, parse_filter},
    inbox_live::{EventId, Numbered, Update},
    openapi::ErrorBody,
    validate,
};

/// The inbox's routes, each with its OpenAPI operation (`openapi.rs`).
pub fn routes() -> OpenApiRouter<Gateway> {
    OpenApiRouter::with_openapi(Schemas::openapi())
        .routes(routes!(list))
        .routes(routes!(count))
        .routes(routes!(read))
        .routes(routes!(unread))
        .routes(routes!(archive))
        .routes(routes!(unarchive))
        .routes(routes!(read_all))
        .routes(routes!(seen))
        .routes(routes!(stream))
}

/// The schemas only [`MarkAnswers`] refers to: `IntoResponses` does not
/// collect them as the operations' bodies are.
#[derive(OpenApi)]
#[openapi(components(schemas(Marked, Item, Counts)))]
struct Schemas;

/// Which items a page lists.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // only documents the values `parse_filter` takes
enum Filter {
    /// Every item that is not archived (the default).
    Inbox,
    /// Not archived and not read.
    Unread,
    /// Only archived items.
    Archived,
    /// Everything.
    All,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Which items; `inbox` when absent.
    #[param(inline, value_type = Option<Filter>)]
    filter: Option<String>,
    /// Only items of this category.
    #[param(min_length = 1, max_length = 128, pattern = "^[!-~]+$")]
    category: Option<String>,
    /// Items per page; 20 when absent.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `next_cursor` of the previous page; absent or empty for the newest.
    cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StreamQuery {
    /// The user token, for clients that cannot send the `Authorization`
    /// header (a browser's `EventSource`; RFC 6750 section 2.3). The header
    /// wins when both are sent. Accepted on this endpoint only.
    access_token: Option<String>,
    /// The id of the last event received, for clients that cannot send the
    /// `Last-Event-ID` header; the header wins when both are sent.
    last_event_id: Option<String>,
}

/// The badge numbers; archived items count in none.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = InboxCounts)]
struct Counts {
    /// Items not read.
    unread: u32,
    /// Items that arrived after the user last cleared the badge
    /// (`POST /v1/me/notifications/seen`).
    unseen: u32,
    /// Items not archived.
    total: u32,
}

impl From<InboxCounts> for Counts {
    fn from(c: InboxCounts) -> Self {
        Counts {
            unread: c.unread,
            unseen: c.unseen,
            total: c.total,
        }
    }
}

/// One notification in the inbox.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = InboxItem)]
struct Item {
    /// The notification's id.
    id: String,
    /// When the gateway accepted the notification: the inbox's order.
    created_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    category: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    avatar_url: Option<String>,
    /// The request's custom data, as sent.
    data: BTreeMap<String, String>,
    read: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_at_ms: Option<i64>,
    archived: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    archived_at_ms: Option<i64>,
    /// Whether the item was there when the user last cleared the badge;
    /// archived items count as seen.
    seen: bool,
}

impl From<ShownItem> for Item {
    fn from(shown: ShownItem) -> Self {
        let ShownItem { item, seen } = shown;
        Item {
            id: item.notification_id,
            created_at_ms: item.created_at,
            category: item.category,
            title: item.title,
            body: item.body,
            action_url: item.action_url,
            avatar_url: item.avatar_url,
            data: item.data,
            read: item.read_at.is_some(),
            read_at_ms: item.read_at,
            archived: item.archived_at.is_some(),
            archived_at_ms: item.archived_at,
            seen,
        }
    }
}

/// A page of the inbox, newest first.
#[derive(Serialize, ToSchema)]
#[schema(as = InboxPage)]
struct Page {
    items: Vec<Item>,
    /// Absent when there is nothing older.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// An item after a change, and the counts.
#[derive(Serialize, ToSchema)]
#[schema(as = InboxMarked)]
struct Marked {
    item: Item,
    counts: Counts,
}

#[derive(Serialize, ToSchema)]
#[schema(as = InboxReadAll)]
struct ReadAll {
    /// Items that were unread.
    changed: u32,
    counts: Counts,
}

#[derive(Serialize, ToSchema)]
#[schema(as = InboxSeen)]
struct SeenAnswer {
    counts: Counts,
}

/// The `data` of a stream's `notification` event.
#[derive(Serialize)]
struct NotificationData {
    item: Item,
    counts: Counts,
}

/// The `data` of a stream's `state` event.
#[derive(Serialize)]
struct StateData {
    /// `read`, `unread`, `archived`, `unarchived`, `read_all` or `seen`.
    kind: &'static str,
    /// The item changed; null for `read_all` and `seen`.
    id: Option<String>,
    counts: Counts,
}

// The document's bounds (schema attributes take literals) are the code's.
const _: () = assert!(MAX_PAGE == 100 && DEFAULT_PAGE == 20 && validate::MAX_ID_LEN == 128);

/// The user a call acts for, from the `Authorization` header; a refused
/// token is counted under `method`.
fn bearer(gateway: &Gateway, method: &str, headers: &HeaderMap) -> Result<String, ApiError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    refused(gateway, method, gateway.feed_user(authorization))
}

/// Passes `result` on, counting it under `method` only when it refuses the
/// call: a call that goes on is counted once, by [`answer`].
fn refused<T>(gateway: &Gateway, method: &str, result: Result<T, Status>) -> Result<T, ApiError> {
    if result.is_err() {
        gateway.count(method, &result);
    }
    Ok(result?)
}

/// Answers `result` and counts it under `method`, like the gRPC calls.
fn answer<T>(gateway: &Gateway, method: &str, result: Result<T, Status>) -> Result<T, ApiError> {
    gateway.count(method, &result);
    Ok(result?)
}

/// `limit` as the query has it: absent is the default page, and it must be
/// a whole number from 1 to [`MAX_PAGE`].
fn parse_limit(raw: Option<&str>) -> Result<u32, Status> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_PAGE);
    };
    match raw.parse::<u32>() {
        Ok(0) => Err(validate::invalid(
            "limit",
            "must be at least 1 (leave it out for the default page)",
        )),
        Ok(n) => page_limit(n),
        Err(_) => Err(validate::invalid(
            "limit",
            format!("is {raw:?}, not a whole number from 1 to {MAX_PAGE}"),
        )),
    }
}

/// A page of the bearer's inbox.
#[utoipa::path(
    get,
    path = "/v1/me/notifications",
    tag = "inbox",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page, newest first", body = Page),
        (status = 400, description = "A bad filter, category, limit or cursor (the field is named)", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 500, description = "The store failed and retrying will not help", body = ErrorBody),
        (status = 503, description = "The store did not answer: retry", body = ErrorBody),
    ),
)]
async fn list(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    const METHOD: &str = "http GET /v1/me/notifications";
    let user = bearer(&gateway, METHOD, &headers)?;
    let Query(q) = refused(
        &gateway,
        METHOD,
        query.map_err(|e| validate::invalid("query", e.body_text())),
    )?;
    let page = async {
        let ask = PageAsk {
            filter: parse_filter(q.filter.as_deref())?,
            category: parse_category(q.category.as_deref().unwrap_or(""))?,
            cursor: InboxCursor::decode(q.cursor.as_deref().unwrap_or(""))?,
            limit: parse_limit(q.limit.as_deref())?,
        };
        gateway.list_inbox(&user, ask).await
    }
    .await;
    let page = answer(&gateway, METHOD, page)?;
    Ok(Json(Page {
        items: page.items.into_iter().map(Item::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// The bearer's badge numbers.
#[utoipa::path(
    get,
    path = "/v1/me/notifications/count",
    tag = "inbox",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The counts", body = Counts),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 500, description = "The store failed and retrying will not help", body = ErrorBody),
        (status = 503, description = "The store did not answer: retry", body = ErrorBody),
    ),
)]
async fn count(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
) -> Result<Json<Counts>, ApiError> {
    const METHOD: &str = "http GET /v1/me/notifications/count";
    let user = bearer(&gateway, METHOD, &headers)?;
    let counts = gateway.inbox_counts(&user).await;
    Ok(Json(answer(&gateway, METHOD, counts)?.into()))
}

/// The responses of the four changes to one item.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only documents the answers
enum MarkAnswers {
    /// Done (a repeat changes nothing): the item after it and the counts
    #[response(status = 200)]
    Done(Marked),
    /// `id` is not an id
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No valid bearer token
    #[response(status = 401)]
    Unauthenticated(ErrorBody),
    /// The bearer has no item with this id
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The store failed and retrying will not help
    #[response(status = 500)]
    Internal(ErrorBody),
    /// The store did not answer: retry
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Marks the item read.
#[utoipa::path(post, path = "/v1/me/notifications/{id}/read", tag = "inbox", security(("bearer" = [])),
    params(("id" = String, Path, description = "The item's (notification's) id", min_length = 1, max_length = 128, pattern = "^[!-~]+$")),
    responses(MarkAnswers))]
async fn read(
    s: State<Gateway>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Marked>, ApiError> {
    mark(
        s.0,
        h,
        id,
        InboxAction::Read,
        "http POST /v1/me/notifications/{id}/read",
    )
    .await
}

/// Marks the item unread.
#[utoipa::path(post, path = "/v1/me/notifications/{id}/unread", tag = "inbox", security(("bearer" = [])),
    params(("id" = String, Path, description = "The item's (notification's) id", min_length = 1, max_length = 128, pattern = "^[!-~]+$")),
    responses(MarkAnswers))]
async fn unread(
    s: State<Gateway>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Marked>, ApiError> {
    mark(
        s.0,
        h,
        id,
        InboxAction::Unread,
        "http POST /v1/me/notifications/{id}/unread",
    )
    .await
}

/// Archives the item: it leaves the inbox view and every count.
#[utoipa::path(post, path = "/v1/me/notifications/{id}/archive", tag = "inbox", security(("bearer" = [])),
    params(("id" = String, Path, description = "The item's (notification's) id", min_length = 1, max_length = 128, pattern = "^[!-~]+$")),
    responses(MarkAnswers))]
async fn archive(
    s: State<Gateway>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Marked>, ApiError> {
    mark(
        s.0,
        h,
        id,
        InboxAction::Archive,
        "http POST /v1/me/notifications/{id}/archive",
    )
    .await
}

/// Brings an archived item back to the inbox.
#[utoipa::path(post, path = "/v1/me/notifications/{id}/unarchive", tag = "inbox", security(("bearer" = [])),
    params(("id" = String, Path, description = "The item's (notification's) id", min_length = 1, max_length = 128, pattern = "^[!-~]+$")),
    responses(MarkAnswers))]
async fn unarchive(
    s: State<Gateway>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Marked>, ApiError> {
    mark(
        s.0,
        h,
        id,
        InboxAction::Unarchive,
        "http POST /v1/me/notifications/{id}/unarchive",
    )
    .await
}

async fn mark(
    gateway: Gateway,
    headers: HeaderMap,
    id: String,
    action: InboxAction,
    method: &str,
) -> Result<Json<Marked>, ApiError> {
    let user = bearer(&gateway, method, &headers)?;
    let marked = gateway.mark_inbox(&user, &id, action).await;
    let (item, counts) = answer(&gateway, method, marked)?;
    Ok(Json(Marked {
        item: item.into(),
        counts: counts.into(),
    }))
}

/// Marks every unread item read.
#[utoipa::path(
    post,
    path = "/v1/me/notifications/read-all",
    tag = "inbox",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Done: how many items were unread, and the counts", body = ReadAll),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 500, description = "The store failed and retrying will not help", body = ErrorBody),
        (status = 503, description = "The store did not answer: retry", body = ErrorBody),
    ),
)]
async fn read_all(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
) -> Result<Json<ReadAll>, ApiError> {
    const METHOD: &str = "http POST /v1/me/notifications/read-all";
    let user = bearer(&gateway, METHOD, &headers)?;
    let done = gateway.mark_inbox_read(&user).await;
    let (changed, counts) = answer(&gateway, METHOD, done)?;
    Ok(Json(ReadAll {
        changed,
        counts: counts.into(),
    }))
}

/// Clears the badge: every item so far counts as seen (`unseen` is 0).
#[utoipa::path(
    post,
    path = "/v1/me/notifications/seen",
    tag = "inbox",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Done: the counts", body = SeenAnswer),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 500, description = "The store failed and retrying will not help", body = ErrorBody),
        (status = 503, description = "The store did not answer: retry", body = ErrorBody),
    ),
)]
async fn seen(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
) -> Result<Json<SeenAnswer>, ApiError> {
    const METHOD: &str = "http POST /v1/me/notifications/seen";
    let user = bearer(&gateway, METHOD, &headers)?;
    let counts = gateway.mark_inbox_seen(&user).await;
    Ok(Json(SeenAnswer {
        counts: answer(&gateway, METHOD, counts)?.into(),
    }))
}

/// The bearer's live inbox as Server-Sent Events.
///
/// Events: first, always, `counts` (data: the counts); then `notification`
/// (data: `{"item": item, "counts": counts}`) for each new item, and `state`
/// (data: `{"kind": "read"|"unread"|"archived"|"unarchived"|"read_all"|"seen",
/// "id": "<item id>"|null, "counts": counts}`) for each change the user makes
/// on any device. Every event has an `id:`; reconnecting with it as
/// `Last-Event-ID` sends the counts, then the items that arrived since, oldest
/// first (at most 100). Idle streams get a `: heartbeat` comment every
/// `[inbox] heartbeat_secs`.
#[utoipa::path(
    get,
    path = "/v1/me/notifications/stream",
    tag = "inbox",
    security(("bearer" = [])),
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "The `id:` of the last event received, to resume after it"),
    ),
    responses(
        (status = 200, description = "The stream (`text/event-stream`), open until the client or the gateway closes it", content_type = "text/event-stream", body = String,
            example = "id: 1764553200000-1\nevent: counts\ndata: {\"unread\":3,\"unseen\":1,\"total\":7}\n\n"),
        (status = 400, description = "A bad `Last-Event-ID` or `last_event_id` (the field is named)", body = ErrorBody),
        (status = 401, description = "No valid bearer token (header or `access_token`)", body = ErrorBody),
        (status = 500, description = "The store failed and retrying will not help", body = ErrorBody),
        (status = 503, description = "This gateway holds `[inbox] max_streams` streams already, is not reading the events yet, or the store did not answer: retry", body = ErrorBody,
            headers(("retry-after" = String, description = "Seconds to wait, when the gateway is full"))),
    ),
)]
async fn stream(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Response {
    const METHOD: &str = "http GET /v1/me/notifications/stream";
    let opened = async {
        let Query(q) = query.map_err(|e| validate::invalid("query", e.body_text()))?;
        let authorization = match headers.get(header::AUTHORIZATION) {
            Some(h) => h.to_str().ok().map(str::to_owned),
            None => q.access_token.map(|t| format!("Bearer {t}")),
        };
        let user = gateway.feed_user(authorization.as_deref())?;
        let after = match headers.get("last-event-id") {
            Some(h) => EventId::decode(
                "Last-Event-ID",
                h.to_str()
                    .map_err(|_| validate::invalid("Last-Event-ID", "is not ASCII"))?,
            )?,
            None => EventId::decode("last_event_id", q.last_event_id.as_deref().unwrap_or(""))?,
        };
        gateway.watch_inbox(&user, after, None).await
    }
    .await;
    gateway.count(METHOD, &opened);
    let watch = match opened {
        Ok(watch) => watch,
        Err(status) => return stream_refused(status),
    };
    let events = futures::stream::unfold(watch, |mut watch| async move {
        let next = watch.next().await?;
        Some((Ok::<_, Infallible>(sse_event(next)), watch))
    });
    let heartbeat = gateway.inbox_heartbeat;
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat"))
        .into_response();
    // Proxies that buffer responses (nginx) would hold the events back.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// A stream refused: the JSON error; a full gateway is 503 (the client
/// should try again, maybe elsewhere), not the 429 of RESOURCE_EXHAUSTED.
fn stream_refused(status: Status) -> Response {
    let full = status.code() == Code::ResourceExhausted;
    let mut response = status_response(status);
    if full {
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

/// One update as an SSE event.
fn sse_event(n: Numbered) -> Event {
    let event = match n.update {
        Update::Counts(c) => Event::default()
            .event("counts")
            .data(json(&Counts::from(c))),
        Update::Notification { item, counts } => {
            Event::default()
                .event("notification")
                .data(json(&NotificationData {
                    item: (*item).into(),
                    counts: counts.into(),
                }))
        }
        Update::State {
            change,
            notification_id,
            counts,
        } => Event::default().event("state").data(json(&StateData {
            kind: change.as_str(),
            id: notification_id,
            counts: counts.into(),
        })),
        // SSE's heartbeats are KeepAlive's comments.
        Update::Heartbeat => Event::default().comment("heartbeat"),
    };
    match n.id {
        Some(id) => event.id(id.encode()),
        None => event,
    }
}

/// Compact JSON: one line, as an SSE `data:` field needs.
fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("inbox payloads serialize")
}

#[cfg(test)]
mod tests {
    use tidings_store::InboxItem;

    use super::*;
    use crate::inbox_live::Change;

    #[test]
    fn limits_default_bound_and_name_the_field() {
        assert_eq!(parse_limit(None).unwrap(), DEFAULT_PAGE);
        assert_eq!(parse_limit(Some("7")).unwrap(), 7);
        assert_eq!(parse_limit(Some("100")).unwrap(), 100);
        for bad in ["0", "101", "-1", "x", "", "1.5"] {
            let err = parse_limit(Some(bad)).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(
                err.message().starts_with("limit:"),
                "{bad}: {}",
                err.message()
            );
        }
    }

    #[test]
    fn a_full_gateway_is_503_with_retry_after() {
        let full = stream_refused(Status::resource_exhausted("full"));
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(full.headers()[header::RETRY_AFTER], "5");
        let unauthenticated = stream_refused(Status::unauthenticated("no"));
        assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn items_leave_absent_fields_out_and_state_ids_may_be_null() {
        let item = Item::from(ShownItem {
            item: InboxItem {
                user_id: "u".into(),
                notification_id: "n1".into(),
                created_at: 5,
                category: Some("billing".into()),
                template_name: None,
                title: Some("Hi".into()),
                body: None,
                action_url: None,
                avatar_url: None,
                data: BTreeMap::from([("k".into(), "v".into())]),
                read_at: None,
                archived_at: None,
            },
            seen: false,
        });
        assert_eq!(
            serde_json::to_value(&item).unwrap(),
            serde_json::json!({"id": "n1", "created_at_ms": 5, "category": "billing", "title": "Hi",
                "data": {"k": "v"}, "read": false, "archived": false, "seen": false})
        );
        let state = StateData {
            kind: Change::ReadAll.as_str(),
            id: None,
            counts: InboxCounts::default().into(),
        };
        assert_eq!(
            json(&state),
            r#"{"kind":"read_all","id":null,"counts":{"unread":0,"unseen":0,"total":0}}"#
        );
    }

    #[test]
    fn the_document_lists_every_inbox_route() {
        let doc = serde_json::to_value(crate::http::openapi()).expect("serializes");
        for (path, method) in [
            ("/v1/me/notifications", "get"),
            ("/v1/me/notifications/count", "get"),
            ("/v1/me/notifications/{id}/read", "post"),
            ("/v1/me/notifications/{id}/unread", "post"),
            ("/v1/me/notifications/{id}/archive", "post"),
            ("/v1/me/notifications/{id}/unarchive", "post"),
            ("/v1/me/notifications/read-all", "post"),
            ("/v1/me/notifications/seen", "post"),
            ("/v1/me/notifications/stream", "get"),
        ] {
            let op = &doc["paths"][path][method];
            assert!(op.is_object(), "{method} {path} is not documented");
            assert_eq!(op["security"][0]["bearer"], serde_json::json!([]), "{path}");
        }
        // Every reference resolves, and the feed's Item and Page are not
        // overwritten by the inbox's.
        let text = doc.to_string();
        for name in text.split("#/components/schemas/").skip(1) {
            let name = &name[..name.find('"').expect("a quoted ref")];
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{name} is not a component"
            );
        }
        assert!(doc["components"]["schemas"]["Item"]["properties"]["post_id"].is_object());
        assert!(doc["components"]["schemas"]["InboxItem"]["properties"]["seen"].is_object());
        let params = &doc["paths"]["/v1/me/notifications"]["get"]["parameters"];
        assert_eq!(params[0]["name"], "filter");
        assert_eq!(
            params[0]["schema"]["enum"],
            serde_json::json!(["inbox", "unread", "archived", "all"]),
            "the filter's values are listed inline: {params}"
        );
    }
}
