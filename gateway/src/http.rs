//! The gateway's HTTP side: health and Prometheus metrics.

use axum::{Router, http::header, response::IntoResponse, routing::get};
use tidings_telemetry::metrics;

use crate::Gateway;

pub fn router(_gateway: Gateway) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(render_metrics))
}

async fn render_metrics() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics().render())
}
