//! The news feed over HTTP, as the design names it, for mobile and web
//! clients: `POST /v1/me/feed` publishes, `GET /v1/me/feed` reads a page;
//! `PUT`/`DELETE /v1/me/following/{user_id}` and `/v1/me/muted/{user_id}`
//! edit the social graph; `PUT`/`DELETE /v1/me/likes/{post_id}` like and
//! unlike, `POST`/`GET /v1/posts/{post_id}/replies` reply and list replies;
//! `PATCH`/`DELETE /v1/me/posts/{post_id}` edit and delete the caller's post.
//! Every call carries `Authorization: Bearer <user token>`. The logic is `feed.rs`'s, shared with gRPC; errors are the same
//! statuses, as HTTP codes with a JSON body naming the field.

use axum::{
    Json,
    extract::{Path, Query, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use tonic::{Code, Status};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    Gateway,
    feed::{AuthorCounts, Cursor, FeedItem, NewPost, page_limit},
    feed_reactions::ReplyPage,
    openapi::{ErrorBody, FieldViolation},
};

/// The feed's routes, each with its OpenAPI operation (`openapi.rs`).
pub fn routes() -> OpenApiRouter<Gateway> {
    OpenApiRouter::new()
        .routes(routes!(read, publish))
        .routes(routes!(follow, unfollow))
        .routes(routes!(mute, unmute))
        .routes(routes!(like, unlike))
        .routes(routes!(reply, replies))
        .routes(routes!(edit_post, delete_post))
}

/// A new post: a body, media, or both.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    /// At most `feed.max_body_chars` characters.
    #[serde(default)]
    body: String,
    /// Absolute http(s) URLs.
    #[serde(default)]
    #[schema(max_items = 10)]
    media_urls: Vec<String>,
    /// Only these users see the post (empty: every follower); user ids.
    #[serde(default)]
    #[schema(max_items = 5000)]
    audience: Vec<String>,
}

#[derive(Serialize, ToSchema)]
struct Published {
    post_id: String,
    created_at_ms: i64,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// `next_cursor` of the previous page; absent or empty for the newest.
    #[serde(default)]
    cursor: String,
    /// Absent means the default page; `limit=0` is refused (it asks for
    /// nothing, which is not what anyone means).
    #[serde(default)]
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
}

impl PageQuery {
    /// Where the page starts and how long it is.
    fn position(&self) -> Result<(Option<Cursor>, u32), Status> {
        let cursor = Cursor::decode(&self.cursor)?;
        let limit = match self.limit {
            Some(0) => {
                return Err(crate::validate::invalid(
                    "limit",
                    "must be at least 1 (leave it out for the default page)",
                ));
            }
            asked => page_limit(asked.unwrap_or(0))?,
        };
        Ok((cursor, limit))
    }
}

/// A page of the feed, newest first.
#[derive(Serialize, ToSchema)]
struct Page {
    items: Vec<Item>,
    /// Absent when there is nothing older.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct Item {
    post_id: String,
    author: Author,
    body: String,
    media_urls: Vec<String>,
    created_at_ms: i64,
    /// Counted by the feed-tally stage: a new like shows within moments.
    like_count: u64,
    reply_count: u64,
    /// Whether the bearer likes the post (at once after a like).
    liked_by_me: bool,
}

#[derive(Serialize, ToSchema)]
struct Author {
    user_id: String,
    display_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    avatar_url: Option<String>,
    /// Feed items only: how many follow the author (up to 30 s old).
    #[serde(skip_serializing_if = "Option::is_none")]
    follower_count: Option<u64>,
    /// Feed items only: how many the author follows (up to 30 s old).
    #[serde(skip_serializing_if = "Option::is_none")]
    following_count: Option<u64>,
}

impl Author {
    fn new(user: tidings_store::User, counts: Option<AuthorCounts>) -> Self {
        Author {
            user_id: user.user_id,
            display_name: user.display_name,
            avatar_url: user.avatar_url,
            follower_count: counts.map(|c| c.followers),
            following_count: counts.map(|c| c.following),
        }
    }
}

impl From<FeedItem> for Item {
    fn from(i: FeedItem) -> Self {
        Item {
            post_id: i.post.post_id,
            author: Author::new(i.author, Some(i.author_counts)),
            body: i.post.body,
            media_urls: i.post.media_urls,
            created_at_ms: i.post.created_at,
            like_count: i.tally.likes,
            reply_count: i.tally.replies,
            liked_by_me: i.liked_by_me,
        }
    }
}

/// A reply to a post.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReplyBody {
    /// Not empty; at most `feed.max_body_chars` characters.
    #[serde(default)]
    body: String,
}

#[derive(Serialize, ToSchema)]
struct Replied {
    reply_id: String,
    created_at_ms: i64,
}

/// A page of a post's replies, oldest first.
#[derive(Serialize, ToSchema)]
struct RepliesPage {
    items: Vec<ReplyItem>,
    /// Absent when there is nothing newer yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct ReplyItem {
    reply_id: String,
    post_id: String,
    author: Author,
    body: String,
    created_at_ms: i64,
}

impl From<ReplyPage> for RepliesPage {
    fn from(page: ReplyPage) -> Self {
        RepliesPage {
            items: page
                .items
                .into_iter()
                .map(|(reply, author)| ReplyItem {
                    reply_id: reply.reply_id,
                    post_id: reply.post_id,
                    author: Author::new(author, None),
                    body: reply.body,
                    created_at_ms: reply.created_at,
                })
                .collect(),
            next_cursor: page.next_cursor,
        }
    }
}

// The document's bounds (schema attributes take literals) are the code's.
const _: () = assert!(crate::feed::MAX_MEDIA == 10 && crate::feed::MAX_FOLLOWING == 5000);
const _: () = assert!(crate::feed::MAX_PAGE == 100 && crate::validate::MAX_ID_LEN == 128);

/// A failed call: the gRPC status both APIs share, answered over HTTP by
/// [`status_response`].
pub(crate) struct ApiError {
    status: Box<Status>,
    /// An HTTP code gRPC has no status for (413), instead of the mapped one.
    http: Option<StatusCode>,
}

impl From<Status> for ApiError {
    fn from(status: Status) -> Self {
        ApiError {
            status: Box::new(status),
            http: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = status_response(*self.status);
        if let Some(http) = self.http {
            *response.status_mut() = http;
        }
        response
    }
}

/// A gRPC status as the HTTP answer a client expects ([`ErrorBody`]): the
/// message (which names the field), the gRPC code's name, and the field
/// violations the status carries.
pub(crate) fn status_response(status: Status) -> Response {
    let http = match status.code() {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::FailedPrecondition => StatusCode::UNPROCESSABLE_ENTITY,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = ErrorBody {
        error: status.message().to_owned(),
        code: format!("{:?}", status.code()),
        field_violations: crate::validate::field_violations(&status)
            .into_iter()
            .map(|(field, description)| FieldViolation { field, description })
            .collect(),
    };
    let mut response = (http, Json(body)).into_response();
    if http == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
    }
    response
}

/// The user a call acts for; a refused token is counted under `method`.
fn bearer(gateway: &Gateway, method: &str, headers: &HeaderMap) -> Result<String, ApiError> {
    let user = gateway.feed_user(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    refused(gateway, method, user)
}

/// Passes `result` on, counting it under `method` only when it refuses the
/// call: a call that goes on is counted once, by [`answer`], at its end.
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

/// A JSON request body, or its refusal counted under `method`: serde names
/// the field at fault (`unknown field`, `invalid type ... at line 1 column
/// 12`) in an INVALID_ARGUMENT naming `body`; a body over axum's limit (2 MB)
/// is the same error answered 413, as HTTP says.
fn json_body<T>(
    gateway: &Gateway,
    method: &str,
    body: Result<Json<T>, JsonRejection>,
) -> Result<T, ApiError> {
    let too_large = matches!(&body, Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE);
    let Json(body) = refused(
        gateway,
        method,
        body.map_err(|e| crate::validate::invalid("body", e.body_text())),
    )
    .map_err(|e| ApiError {
        http: too_large.then_some(StatusCode::PAYLOAD_TOO_LARGE),
        ..e
    })?;
    Ok(body)
}

/// Publishes a post as the bearer.
#[utoipa::path(
    post,
    path = "/v1/me/feed",
    tag = "feed",
    security(("bearer" = [])),
    request_body = PublishBody,
    responses(
        (status = 201, description = "Stored and queued for fan-out", body = Published),
        (status = 400, description = "The body is not a post (the field is named), or not JSON", body = ErrorBody),
        (status = 413, description = "The body is over 2 MB", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 429, description = "Posting too often (`feed.max_posts` per `feed.post_window_secs`)", body = ErrorBody),
        (status = 500, description = "The store refused the post and retrying will not help", body = ErrorBody),
        (status = 503, description = "The store or Kafka did not answer: publish again", body = ErrorBody),
    ),
)]
async fn publish(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    body: Result<Json<PublishBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Published>), ApiError> {
    let user = bearer(&gateway, "http POST /v1/me/feed", &headers)?;
    let body = json_body(&gateway, "http POST /v1/me/feed", body)?;
    let post = gateway
        .publish_post(
            &user,
            NewPost {
                body: body.body,
                media_urls: body.media_urls,
                audience: body.audience,
            },
        )
        .await;
    let post = answer(&gateway, "http POST /v1/me/feed", post)?;
    Ok((
        StatusCode::CREATED,
        Json(Published {
            post_id: post.post_id,
            created_at_ms: post.created_at,
        }),
    ))
}

/// A page of the bearer's feed.
#[utoipa::path(
    get,
    path = "/v1/me/feed",
    tag = "feed",
    security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page, newest first", body = Page),
        (status = 400, description = "A bad cursor or limit (the field is named)", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 500, description = "The store failed and retrying will not help", body = ErrorBody),
        (status = 503, description = "The store did not answer: retry", body = ErrorBody),
    ),
)]
async fn read(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    let user = bearer(&gateway, "http GET /v1/me/feed", &headers)?;
    let Query(q) = refused(
        &gateway,
        "http GET /v1/me/feed",
        query.map_err(|e| crate::validate::invalid("query", e.body_text())),
    )?;
    let page = async {
        let (cursor, limit) = q.position()?;
        gateway.read_feed(&user, cursor, limit).await
    }
    .await;
    let page = answer(&gateway, "http GET /v1/me/feed", page)?;
    Ok(Json(Page {
        items: page.items.into_iter().map(Item::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One edit of the caller's social graph, as the four routes name it.
#[derive(Clone, Copy)]
enum GraphEdit {
    Follow,
    Unfollow,
    Mute,
    Unmute,
}

impl GraphEdit {
    fn method(self) -> &'static str {
        match self {
            GraphEdit::Follow => "http PUT /v1/me/following",
            GraphEdit::Unfollow => "http DELETE /v1/me/following",
            GraphEdit::Mute => "http PUT /v1/me/muted",
            GraphEdit::Unmute => "http DELETE /v1/me/muted",
        }
    }
}

/// The responses of the four edits of the social graph.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only documents the answers
enum GraphAnswers {
    /// Done (repeats are no-ops)
    #[response(status = 204)]
    Done,
    /// `user_id` is not an id, or is the caller
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No valid bearer token
    #[response(status = 401)]
    Unauthenticated(ErrorBody),
    /// Following the most users allowed already (follow only)
    #[response(status = 422)]
    TooMany(ErrorBody),
    /// The store failed and retrying will not help
    #[response(status = 500)]
    Internal(ErrorBody),
    /// The store did not answer: retry
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Follows `user_id`: their posts reach the bearer's feed.
#[utoipa::path(put, path = "/v1/me/following/{user_id}", tag = "feed", security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The user to follow", min_length = 1, max_length = 128, pattern = "^[!-~]+$")), responses(GraphAnswers))]
async fn follow(
    s: State<Gateway>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    edit_graph(s.0, h, id, GraphEdit::Follow).await
}

/// Stops following `user_id`.
#[utoipa::path(delete, path = "/v1/me/following/{user_id}", tag = "feed", security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The user to unfollow", min_length = 1, max_length = 128, pattern = "^[!-~]+$")), responses(GraphAnswers))]
async fn unfollow(
    s: State<Gateway>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    edit_graph(s.0, h, id, GraphEdit::Unfollow).await
}

/// Hides `user_id`'s posts from the bearer's feed.
#[utoipa::path(put, path = "/v1/me/muted/{user_id}", tag = "feed", security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The user to mute", min_length = 1, max_length = 128, pattern = "^[!-~]+$")), responses(GraphAnswers))]
async fn mute(
    s: State<Gateway>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    edit_graph(s.0, h, id, GraphEdit::Mute).await
}

/// Shows `user_id`'s posts again.
#[utoipa::path(delete, path = "/v1/me/muted/{user_id}", tag = "feed", security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The user to unmute", min_length = 1, max_length = 128, pattern = "^[!-~]+$")), responses(GraphAnswers))]
async fn unmute(
    s: State<Gateway>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    edit_graph(s.0, h, id, GraphEdit::Unmute).await
}

async fn edit_graph(
    gateway: Gateway,
    headers: HeaderMap,
    other: String,
    edit: GraphEdit,
) -> Result<StatusCode, ApiError> {
    let user = bearer(&gateway, edit.method(), &headers)?;
    let result = match edit {
        GraphEdit::Follow => gateway.set_following(&user, &other, true).await,
        GraphEdit::Unfollow => gateway.set_following(&user, &other, false).await,
        GraphEdit::Mute => gateway.set_muted(&user, &other, true).await,
        GraphEdit::Unmute => gateway.set_muted(&user, &other, false).await,
    };
    answer(&gateway, edit.method(), result)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The responses of a like and an unlike.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only documents the answers
enum LikeAnswers {
    /// Done (repeats are no-ops)
    #[response(status = 204)]
    Done,
    /// `post_id` is not an id
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No valid bearer token
    #[response(status = 401)]
    Unauthenticated(ErrorBody),
    /// No post has this id
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The store failed and retrying will not help
    #[response(status = 500)]
    Internal(ErrorBody),
    /// The store or Kafka did not answer: repeat the call
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Likes `post_id` as the bearer: `liked_by_me` at once, the count within
/// moments.
#[utoipa::path(put, path = "/v1/me/likes/{post_id}", tag = "feed", security(("bearer" = [])),
    params(("post_id" = String, Path, description = "The post to like", min_length = 1, max_length = 128, pattern = "^[!-~]+$")), responses(LikeAnswers))]
async fn like(
    s: State<Gateway>,
    h: HeaderMap,
    Path(post_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    set_like(s.0, h, post_id, true).await
}

/// Takes the bearer's like of `post_id` back.
#[utoipa::path(delete, path = "/v1/me/likes/{post_id}", tag = "feed", security(("bearer" = [])),
    params(("post_id" = String, Path, description = "The post to unlike", min_length = 1, max_length = 128, pattern = "^[!-~]+$")), responses(LikeAnswers))]
async fn unlike(
    s: State<Gateway>,
    h: HeaderMap,
    Path(post_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    set_like(s.0, h, post_id, false).await
}

async fn set_like(
    gateway: Gateway,
    headers: HeaderMap,
    post_id: String,
    like: bool,
) -> Result<StatusCode, ApiError> {
    let method = if like {
        "http PUT /v1/me/likes"
    } else {
        "http DELETE /v1/me/likes"
    };
    let user = bearer(&gateway, method, &headers)?;
    let result = gateway.set_like(&user, &post_id, like).await;
    answer(&gateway, method, result)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replies to `post_id` as the bearer.
#[utoipa::path(
    post,
    path = "/v1/posts/{post_id}/replies",
    tag = "feed",
    security(("bearer" = [])),
    params(("post_id" = String, Path, description = "The post to reply to", min_length = 1, max_length = 128, pattern = "^[!-~]+$")),
    request_body = ReplyBody,
    responses(
        (status = 201, description = "Stored and queued for counting", body = Replied),
        (status = 400, description = "Not a reply (the field is named), or not JSON", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No post has this id", body = ErrorBody),
        (status = 413, description = "The body is over 2 MB", body = ErrorBody),
        (status = 429, description = "Replying too often (`feed.max_replies` per `feed.post_window_secs`)", body = ErrorBody),
        (status = 500, description = "The store refused the reply and retrying will not help", body = ErrorBody),
        (status = 503, description = "The store or Kafka did not answer: reply again", body = ErrorBody),
    ),
)]
async fn reply(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    Path(post_id): Path<String>,
    body: Result<Json<ReplyBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Replied>), ApiError> {
    const METHOD: &str = "http POST /v1/posts/replies";
    let user = bearer(&gateway, METHOD, &headers)?;
    let body = json_body(&gateway, METHOD, body)?;
    let result = gateway.reply_to_post(&user, &post_id, body.body).await;
    let reply = answer(&gateway, METHOD, result)?;
    Ok((
        StatusCode::CREATED,
        Json(Replied {
            reply_id: reply.reply_id,
            created_at_ms: reply.created_at,
        }),
    ))
}

/// A post's new body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct EditBody {
    /// At most `feed.max_body_chars` characters; blank only if the post has
    /// media.
    body: String,
}

/// The answers of an edit or a delete.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // documents the answers; `ApiError` produces them
enum RevisionAnswers {
    /// Done: every feed shows it within seconds
    #[response(status = 204)]
    Done,
    /// A bad post_id or body (the field is named), or not JSON
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No valid bearer token
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The post is another user's
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// No post has this id (or it was deleted)
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The body is over 2 MB
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The store failed and retrying will not help
    #[response(status = 500)]
    Internal(ErrorBody),
    /// The store or Kafka did not answer: repeat the call
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Replaces the body of the bearer's post `post_id` (media stay).
#[utoipa::path(patch, path = "/v1/me/posts/{post_id}", tag = "feed", security(("bearer" = [])),
    params(("post_id" = String, Path, description = "The post to edit", min_length = 1, max_length = 128, pattern = "^[!-~]+$")),
    request_body = EditBody, responses(RevisionAnswers))]
async fn edit_post(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    Path(post_id): Path<String>,
    body: Result<Json<EditBody>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    const METHOD: &str = "http PATCH /v1/me/posts";
    let user = bearer(&gateway, METHOD, &headers)?;
    let body = json_body(&gateway, METHOD, body)?;
    let result = gateway.edit_own_post(&user, &post_id, body.body).await;
    answer(&gateway, METHOD, result)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes the bearer's post `post_id` from every feed.
#[utoipa::path(delete, path = "/v1/me/posts/{post_id}", tag = "feed", security(("bearer" = [])),
    params(("post_id" = String, Path, description = "The post to delete", min_length = 1, max_length = 128, pattern = "^[!-~]+$")),
    responses(RevisionAnswers))]
async fn delete_post(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    Path(post_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    const METHOD: &str = "http DELETE /v1/me/posts";
    let user = bearer(&gateway, METHOD, &headers)?;
    let result = gateway.delete_own_post(&user, &post_id).await;
    answer(&gateway, METHOD, result)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A page of `post_id`'s replies, oldest first.
#[utoipa::path(
    get,
    path = "/v1/posts/{post_id}/replies",
    tag = "feed",
    security(("bearer" = [])),
    params(("post_id" = String, Path, description = "The post whose replies to list", min_length = 1, max_length = 128, pattern = "^[!-~]+$"), PageQuery),
    responses(
        (status = 200, description = "A page, oldest first", body = RepliesPage),
        (status = 400, description = "A bad post_id, cursor or limit (the field is named)", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No post has this id", body = ErrorBody),
        (status = 500, description = "The store failed and retrying will not help", body = ErrorBody),
        (status = 503, description = "The store did not answer: retry", body = ErrorBody),
    ),
)]
async fn replies(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    Path(post_id): Path<String>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RepliesPage>, ApiError> {
    const METHOD: &str = "http GET /v1/posts/replies";
    // Any signed-in user may read a post's replies.
    bearer(&gateway, METHOD, &headers)?;
    let Query(q) = refused(
        &gateway,
        METHOD,
        query.map_err(|e| crate::validate::invalid("query", e.body_text())),
    )?;
    let page = async {
        let (cursor, limit) = q.position()?;
        gateway.list_replies(&post_id, cursor, limit).await
    }
    .await;
    let page = answer(&gateway, METHOD, page)?;
    Ok(Json(RepliesPage::from(page)))
}

#[cfg(test)]
mod tests {
    /// Likes, replies, edits and deletes are in `/openapi.json`, with the
    /// answers the fuzzing holds them to.
    #[test]
    fn reactions_edits_and_deletes_are_documented_with_their_answers() {
        let doc = serde_json::to_value(crate::http::openapi()).expect("serializes");
        let paths = &doc["paths"];
        for (path, method, statuses) in [
            (
                "/v1/me/likes/{post_id}",
                "put",
                &["204", "400", "401", "404", "503"][..],
            ),
            (
                "/v1/me/likes/{post_id}",
                "delete",
                &["204", "400", "401", "404", "503"],
            ),
            (
                "/v1/posts/{post_id}/replies",
                "post",
                &["201", "400", "401", "404", "413", "429"],
            ),
            (
                "/v1/posts/{post_id}/replies",
                "get",
                &["200", "400", "401", "404"],
            ),
            (
                "/v1/me/posts/{post_id}",
                "patch",
                &["204", "400", "401", "403", "404", "413", "503"],
            ),
            (
                "/v1/me/posts/{post_id}",
                "delete",
                &["204", "400", "401", "403", "404", "503"],
            ),
        ] {
            let operation = &paths[path][method];
            assert!(operation.is_object(), "{method} {path} is not documented");
            for status in statuses {
                assert!(
                    operation["responses"][status].is_object(),
                    "{method} {path} does not document {status}"
                );
            }
            assert_eq!(operation["security"][0]["bearer"], serde_json::json!([]));
        }
        let item = &doc["components"]["schemas"]["Item"]["properties"];
        for field in ["like_count", "reply_count", "liked_by_me"] {
            assert!(item[field].is_object(), "feed items lack {field}");
        }
    }
}
