//! The embeddable inbox widget (`static/inbox-widget.js`), served at
//! `GET /v1/inbox/widget.js`, and the CORS rules that let a page on another
//! origin use it: the widget's script and the inbox API
//! (`/v1/me/notifications*`) answer the origins in `gateway.cors_origins`,
//! and nothing else on the gateway does.

use std::{convert::Infallible, sync::LazyLock, time::Duration};

use axum::{
    Router,
    extract::Request,
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};
use tower::{Layer, ServiceExt};
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::Gateway;

/// The script, compiled in: the gateway serves the widget of its own version.
const WIDGET_JS: &str = include_str!("../static/inbox-widget.js");

/// How long browsers and CDNs may use their copy without asking: a new
/// gateway's widget reaches pages within this; after it, a revalidation with
/// the ETag is a 304 without the body.
const CACHE_CONTROL: &str = "public, max-age=300";

/// A strong ETag of the script's bytes.
static ETAG: LazyLock<String> = LazyLock::new(|| {
    let digest = Sha256::digest(WIDGET_JS.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
});

/// The widget's route with its OpenAPI operation (`openapi.rs`).
pub fn routes() -> OpenApiRouter<Gateway> {
    OpenApiRouter::new().routes(routes!(widget_js))
}

/// The inbox widget: a framework-free script defining `TidingsInbox.mount(element, {baseUrl, token})`
/// (docs/inbox.md).
#[utoipa::path(get, path = "/v1/inbox/widget.js", tag = "inbox",
    params(("if-none-match" = Option<String>, Header, description = "The ETag of the copy the browser holds")),
    responses(
        (status = 200, description = "The script", content_type = "application/javascript", body = String,
            headers(
                ("etag" = String, description = "Changes with the gateway's version of the widget"),
                ("cache-control" = String, description = "`public, max-age=300`"),
            )),
        (status = 304, description = "The browser's copy (`if-none-match`) is current",
            headers(("etag" = String, description = "The current ETag"))),
    ))]
async fn widget_js(headers: HeaderMap) -> Response {
    let etag = ETAG.as_str();
    let cache = [(header::ETAG, etag), (header::CACHE_CONTROL, CACHE_CONTROL)];
    if holds_current(&headers, etag) {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        WIDGET_JS,
    )
        .into_response()
}

/// Whether `If-None-Match` names `etag` (or is `*`); weak forms compare
/// equal, as RFC 9110 13.1.2 has it for GET.
fn holds_current(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

/// The paths a page on another origin may call: the widget's script and the
/// inbox API.
fn crosses_origins(path: &str) -> bool {
    path == "/v1/inbox/widget.js"
        || path == "/v1/me/notifications"
        || path.starts_with("/v1/me/notifications/")
}

/// The CORS answers for `origins` (`gateway.cors_origins`, checked by the
/// configuration): GET and POST with the bearer token, and `Last-Event-ID`,
/// which a reconnecting `EventSource` sends (a preflighted header). No
/// credentials: the API takes bearer tokens, never cookies.
fn cors_layer(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
        ])
        .max_age(Duration::from_secs(600))
}

/// `router` with CORS on [`crosses_origins`] paths for `origins`; unchanged
/// when there are none. Other paths keep their answers, OPTIONS included
/// (a CORS layer on them would answer every OPTIONS itself).
pub(crate) fn with_cors(router: Router, origins: &[String]) -> Router {
    if origins.is_empty() {
        return router;
    }
    let cors = cors_layer(origins);
    router.layer(axum::middleware::from_fn(
        move |request: Request, next: Next| {
            let cors = cors.clone();
            async move {
                if crosses_origins(request.uri().path()) {
                    let answer: Result<Response, Infallible> =
                        cors.layer(next).oneshot(request).await;
                    answer.unwrap_or_else(|never| match never {})
                } else {
                    next.run(request).await
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_text_never_goes_through_markup() {
        // The widget shows text from whoever sends notifications: it must
        // reach the page as text, never parsed as HTML.
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!WIDGET_JS.contains(sink), "the widget uses {sink}");
        }
        assert!(WIDGET_JS.contains("TidingsInbox"));
    }

    #[tokio::test]
    async fn the_script_is_cached_and_revalidated_by_etag() {
        let first = widget_js(HeaderMap::new()).await;
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].clone();
        assert_eq!(first.headers()[header::CACHE_CONTROL], CACHE_CONTROL);
        assert!(
            first.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/javascript")
        );
        for held in [
            etag.to_str().unwrap().to_owned(),
            format!("W/{}", etag.to_str().unwrap()),
            format!("\"old\", {}", etag.to_str().unwrap()),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, held.parse().unwrap());
            assert_eq!(
                widget_js(headers).await.status(),
                StatusCode::NOT_MODIFIED,
                "{held}"
            );
        }
        let mut stale = HeaderMap::new();
        stale.insert(header::IF_NONE_MATCH, "\"old\"".parse().unwrap());
        assert_eq!(widget_js(stale).await.status(), StatusCode::OK);
    }

    #[test]
    fn the_widget_is_in_the_openapi_document() {
        let doc = serde_json::to_value(crate::http::openapi()).expect("serializes");
        let get = &doc["paths"]["/v1/inbox/widget.js"]["get"];
        assert!(
            get["responses"]["200"]["content"]["application/javascript"].is_object(),
            "{get}"
        );
    }

    #[test]
    fn only_the_widget_and_the_inbox_api_cross_origins() {
        for path in [
            "/v1/inbox/widget.js",
            "/v1/me/notifications",
            "/v1/me/notifications/count",
            "/v1/me/notifications/stream",
            "/v1/me/notifications/n1/read",
        ] {
            assert!(crosses_origins(path), "{path}");
        }
        for path in [
            "/v1/me/feed",
            "/v1/me/notificationsx",
            "/metrics",
            "/t/c/x",
            "/webhooks/twilio/status",
        ] {
            assert!(!crosses_origins(path), "{path}");
        }
    }
}
