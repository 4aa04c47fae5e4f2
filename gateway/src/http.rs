//! The gateway's HTTP side: the news feed (`feed_http.rs`), tracking links and open pixels, the providers'
//! delivery-receipt webhooks (`webhooks.rs`), liveness (`/healthz`), readiness
//! (`/readyz`, from `health.rs`), Prometheus metrics, and the OpenAPI
//! document of all of them (`/openapi.json`, `openapi.rs`).

use std::sync::LazyLock;

use axum::{
    Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use tidings_kafka::now_millis;
use tidings_schemas::{
    records::{TrackingEvent, TrackingKind},
    tracking_link::TrackedTarget,
};
use tidings_telemetry::metrics;
use tracing::warn;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{Gateway, feed_http, openapi::ApiDoc, webhooks};

/// A transparent 1x1 GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

pub fn router(gateway: Gateway) -> Router {
    let (documented, _) = documented().split_for_parts();
    let origins = gateway.config.cors_origins.clone();
    let router = Router::new().merge(documented).with_state(gateway);
    crate::widget::with_cors(router, &origins)
}

/// Every route with its OpenAPI operation.
fn documented() -> OpenApiRouter<Gateway> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(render_metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(click))
        .routes(routes!(open))
        .merge(webhooks::routes())
        .merge(feed_http::routes())
        .merge(crate::inbox_http::routes())
        .merge(crate::schema_registry::routes())
        .merge(crate::widget::routes())
}

/// The OpenAPI document of [`documented`], as served.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented().into_openapi()
}

/// The document's JSON, made once: it depends on no configuration.
static OPENAPI_JSON: LazyLock<String> = LazyLock::new(|| {
    openapi()
        .to_json()
        .unwrap_or_else(|e| format!(r#"{{"error":"the OpenAPI document cannot be written: {e}"}}"#))
});

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of the gateway's HTTP endpoints", content_type = "application/json", body = Object)))]
async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI_JSON.as_str(),
    )
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process answers", content_type = "text/plain", body = String, example = "ok")))]
async fn healthz() -> &'static str {
    "ok"
}

/// 200 while the gateway can accept sends: Kafka answered the latest probe
/// (every `PROBE_EVERY`); the body says `degraded` when the store did not
/// (sends from apps the auth cache knows are still accepted; see
/// `health.rs`). Else 503 naming what did not answer. `/healthz` is
/// liveness: the process answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Kafka answered the latest probe: sends are accepted. `ready`, or `ready (degraded: ...)` while the store does not answer", content_type = "text/plain", body = String, example = "ready"),
        (status = 503, description = "Not ready, naming what did not answer", content_type = "text/plain", body = String),
    ))]
async fn readyz(State(gateway): State<Gateway>) -> Response {
    let verdict = gateway
        .readiness
        .as_ref()
        .map_or_else(|| Err("not probed yet".to_owned()), |r| r.verdict());
    match verdict {
        Ok(None) => (StatusCode::OK, "ready".to_owned()).into_response(),
        Ok(Some(why)) => (
            StatusCode::OK,
            format!("ready (degraded: {why}; sends from apps the gateway knows are accepted)"),
        )
            .into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")).into_response(),
    }
}

/// Prometheus metrics (docs/operations.md lists them).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
async fn render_metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics().render(),
    )
}

/// A tracked link in a sent message: records the click and redirects.
#[utoipa::path(get, path = "/t/c/{token}", tag = "tracking",
    params(("token" = String, Path, description = "The signed link token the sender put in the message")),
    responses(
        (status = 303, description = "The click is recorded (best effort); on to the link's target",
            headers(("location" = String, description = "The link's target"))),
        (status = 404, description = "Not a link tidings signed", content_type = "text/plain", body = String),
    ))]
async fn click(State(gateway): State<Gateway>, Path(token): Path<String>) -> Response {
    let Ok(target) = gateway.links.verify(&token) else {
        return (StatusCode::NOT_FOUND, "unknown link").into_response();
    };
    let Some(url) = target.url.clone() else {
        return (StatusCode::NOT_FOUND, "unknown link").into_response();
    };
    gateway.record(target, TrackingKind::Clicked).await;
    Redirect::to(&url).into_response()
}

/// The open pixel in a sent email: records the open.
#[utoipa::path(get, path = "/t/o/{token}", tag = "tracking",
    params(("token" = String, Path, description = "The signed token the sender put in the message")),
    responses((status = 200, description = "A transparent 1x1 GIF, whatever the token (an unknown one records nothing)",
        content_type = "image/gif", body = Vec<u8>)))]
async fn open(State(gateway): State<Gateway>, Path(token): Path<String>) -> Response {
    // Always the pixel: a broken image in a user's mail helps nobody.
    if let Ok(target) = gateway.links.verify(&token) {
        gateway.record(target, TrackingKind::Opened).await;
    }
    (
        [
            (header::CONTENT_TYPE, "image/gif"),
            (header::CACHE_CONTROL, "no-store, max-age=0"),
        ],
        PIXEL,
    )
        .into_response()
}

impl Gateway {
    /// Writes a click or open to the tracking topic. Best effort: the user
    /// gets the redirect or pixel even when Kafka is slow or down.
    async fn record(&self, target: TrackedTarget, kind: TrackingKind) {
        let event = TrackingEvent {
            event_id: Uuid::now_v7().to_string(),
            notification_id: target.notification_id,
            user_id: target.user_id,
            kind,
            channel: target.channel,
            target: target.url,
            template_name: target.template_name,
            stage: "gateway".into(),
            detail: None,
            at: now_millis(),
            dispatched_at: None,
        };
        if let Err(e) = self
            .producer
            .send(self.topics.tracking(), &event.notification_id, &event)
            .await
        {
            warn!(error = %e, ?kind, "could not record a tracking event");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_openapi_3_1_with_every_route_and_the_bearer_scheme() {
        let doc = serde_json::to_value(super::openapi()).expect("serializes");
        assert_eq!(doc["openapi"], "3.1.0");
        for path in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
            "/t/c/{token}",
            "/t/o/{token}",
            "/webhooks/twilio/status",
            "/webhooks/sendgrid/events",
            "/v1/me/feed",
            "/v1/me/following/{user_id}",
            "/v1/me/muted/{user_id}",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} is not documented");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert_eq!(
            doc["paths"]["/v1/me/feed"]["get"]["security"][0]["bearer"],
            serde_json::json!([])
        );
        if let Ok(out) = std::env::var("TIDINGS_OPENAPI_OUT") {
            std::fs::write(out, serde_json::to_string_pretty(&doc).expect("json")).expect("write");
        }
    }
}
