//! The OpenAPI 3.1 document of the gateway's HTTP side, served at
//! `GET /openapi.json`: the top-level description, the bearer scheme and the
//! error body every JSON endpoint shares. The operations themselves are the
//! `#[utoipa::path]` attributes on the handlers, registered with
//! utoipa-axum's `routes!` (`http.rs`, `feed_http.rs`, `webhooks.rs`), which
//! adds a route and its operation together: the document cannot list a
//! route the gateway does not serve, or miss one it does. (The gRPC API is
//! described by the protos and served by reflection.)

use serde::Serialize;
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

/// The name of the bearer security scheme the operations refer to.
pub(crate) const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tidings gateway HTTP API",
        description = "The news feed for mobile and web clients (bearer user tokens), \
            tracking links and open pixels, the providers' delivery-receipt webhooks, \
            and the operational endpoints. Notifications, templates, contacts and \
            preferences are gRPC (schemas/proto/tidings/v1, server reflection)."
    ),
    modifiers(&BearerToken),
    tags(
        (name = "feed", description = "The news feed: publish, read, edit, delete, follow, mute, like, reply"),
        (name = "inbox", description = "The in-app inbox: list, count, mark, and its live stream (SSE)"),
        (name = "tracking", description = "Click redirects and open pixels in sent messages"),
        (name = "webhooks", description = "Providers' delivery receipts"),
        (name = "operations", description = "Liveness, readiness, metrics and this document"),
    ),
)]
pub(crate) struct ApiDoc;

/// Declares the `bearer` scheme: the user tokens of `feed.user_token_secret`.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some(
                "An HS256 JWT naming the user in `sub`, signed with feed.user_token_secret \
                 by the company's auth service (or `tidings user-token`)",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(BEARER, SecurityScheme::Http(scheme));
    }
}

/// A refused or failed call of a JSON endpoint: the gRPC status the HTTP
/// and gRPC APIs share.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// What failed, starting with the field at fault when there is one
    /// (`media_urls[0]: must be an http:// or https:// URL`).
    pub error: String,
    /// The gRPC status code's name (`InvalidArgument`, `Unauthenticated`,
    /// `Unavailable`, ...).
    pub code: String,
    /// The fields at fault, as `google.rpc.BadRequest` names them on gRPC;
    /// empty when no field is.
    pub field_violations: Vec<FieldViolation>,
}

/// One field at fault and why.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FieldViolation {
    /// The field's path in the request (`body`, `media_urls[1]`, `limit`).
    pub field: String,
    pub description: String,
}
