//! The gateway's HTTP side: the news feed (`feed_http.rs`), tracking links and open pixels, the providers'
//! delivery-receipt webhooks (`webhooks.rs`), liveness (`/healthz`), readiness
//! (`/readyz`, from `health.rs`) and Prometheus metrics.

use axum::{
    Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use tidings_kafka::now_millis;
use tidings_schemas::{
    records::{TrackingEvent, TrackingKind},
    tracking_link::TrackedTarget,
};
use tidings_telemetry::metrics;
use tracing::warn;
use uuid::Uuid;

use crate::{Gateway, feed_http, webhooks};

/// A transparent 1x1 GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

pub fn router(gateway: Gateway) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .route("/t/c/{token}", get(click))
        .route("/t/o/{token}", get(open))
        .merge(webhooks::routes())
        .merge(feed_http::routes())
        .with_state(gateway)
}

/// 200 while Kafka and the store answered the latest probe (every
/// `PROBE_EVERY`), else 503 naming what did not answer. `/healthz` is
/// liveness: the process answers.
async fn readyz(State(gateway): State<Gateway>) -> Response {
    let verdict = gateway
        .readiness
        .as_ref()
        .map_or_else(|| Err("not probed yet".to_owned()), |r| r.verdict());
    match verdict {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")).into_response(),
    }
}

async fn render_metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics().render(),
    )
}

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
        };
        if let Err(e) = self
            .producer
            .send(&self.topics.tracking(), &event.notification_id, &event)
            .await
        {
            warn!(error = %e, ?kind, "could not record a tracking event");
        }
    }
}
