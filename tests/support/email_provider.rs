//! A local SendGrid-compatible Mail Send API for end-to-end tests:
//! `POST /v3/mail/send` with a Bearer API key and a JSON mail, answered 202
//! with an `X-Message-Id`. It keeps every accepted mail, whose
//! personalization's `custom_args` SendGrid would repeat in its Event
//! Webhook.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::{Value, json};

pub const API_KEY: &str = "SG.e2e-key";

#[derive(Clone, Default)]
pub struct EmailProvider(Arc<Mutex<Vec<(String, Value)>>>);

impl EmailProvider {
    pub async fn start() -> (Self, SocketAddr) {
        let provider = EmailProvider::default();
        let app = Router::new()
            .route("/v3/mail/send", post(send))
            .with_state(provider.clone());
        let addr = super::serve_on_loopback(app).await;
        (provider, addr)
    }

    /// The accepted mails to `to`: (X-Message-Id, the mail as sent), in order.
    pub fn accepted(&self, to: &str) -> Vec<(String, Value)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, mail)| mail["personalizations"][0]["to"][0]["email"] == to)
            .cloned()
            .collect()
    }

    /// The `[providers.email]` settings pointing at this server.
    pub fn config(addr: SocketAddr) -> Value {
        json!({
            "kind": "sendgrid",
            "api_key": API_KEY,
            "from_email": "notifications@example.com",
            "base_url": format!("http://{addr}"),
        })
    }
}

async fn send(
    State(provider): State<EmailProvider>,
    headers: HeaderMap,
    Json(mail): Json<Value>,
) -> Response {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(API_KEY) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"errors": [{"message": "The provided authorization grant is invalid, expired, or revoked", "field": null}]})),
        )
            .into_response();
    }
    let custom_args_ok = mail["personalizations"][0]["custom_args"]
        .as_object()
        .is_none_or(|args| args.values().all(Value::is_string));
    if !custom_args_ok {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"errors": [{"message": "custom_args values must be strings", "field": "personalizations.0.custom_args"}]})),
        )
            .into_response();
    }
    let id = format!("sg-{}", uuid::Uuid::new_v4().simple());
    provider.0.lock().unwrap().push((id.clone(), mail));
    (StatusCode::ACCEPTED, [("x-message-id", id)]).into_response()
}
