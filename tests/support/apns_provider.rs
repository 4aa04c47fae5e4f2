//! A local APNs-compatible server for end-to-end tests: HTTP/2 with prior
//! knowledge, `POST /3/device/<token>`, 200 with `apns-id`, or 410
//! `{"reason":"Unregistered"}` for tokens marked uninstalled.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::Engine;
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair},
};

#[derive(Clone, Default)]
pub struct ApnsServer {
    uninstalled: Arc<Mutex<HashSet<String>>>,
    delivered: Arc<Mutex<Vec<String>>>,
}

impl ApnsServer {
    pub async fn start() -> (Self, SocketAddr) {
        let server = ApnsServer::default();
        let app = Router::new()
            .route("/3/device/{token}", post(push))
            .with_state(server.clone());
        let addr = super::serve_on_loopback(app).await;
        (server, addr)
    }

    pub fn uninstall(&self, token: &str) {
        self.uninstalled.lock().unwrap().insert(token.to_owned());
    }

    pub fn reinstall(&self, token: &str) {
        self.uninstalled.lock().unwrap().remove(token);
    }

    pub fn delivered(&self) -> Vec<String> {
        self.delivered.lock().unwrap().clone()
    }

    /// `[providers.ios]` pointing at this server, with a fresh ES256 key.
    pub fn config(addr: SocketAddr) -> serde_json::Value {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("P-256 key");
        let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        );
        serde_json::json!({
            "kind": "apns",
            "base_url": format!("http://{addr}"),
            "transport": "h2c",
            "team_id": "TEAM123456",
            "key_id": "KEY7654321",
            "key_pem": pem,
            "topic": "com.example.tidings",
        })
    }
}

async fn push(
    State(server): State<ApnsServer>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.to_ascii_lowercase().starts_with("bearer "));
    if !authorized {
        return (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({"reason": "MissingProviderToken"})),
        )
            .into_response();
    }
    if server.uninstalled.lock().unwrap().contains(&token) {
        let body = serde_json::json!({"reason": "Unregistered", "timestamp": 1_700_000_000_000u64});
        return (StatusCode::GONE, axum::Json(body)).into_response();
    }
    server.delivered.lock().unwrap().push(token);
    let id = headers.get("apns-id").cloned();
    let mut response = StatusCode::OK.into_response();
    if let Some(id) = id {
        response.headers_mut().insert("apns-id", id);
    }
    response
}
