//! A local Twilio-compatible Messages API for end-to-end tests: form POSTs to
//! `/2010-04-01/Accounts/<sid>/Messages.json`, answering from a script
//! (status, headers, Twilio error body) and then 201 with a message sid. It
//! keeps each message's `StatusCallback`, where Twilio would post status
//! updates.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Form, Router,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};

pub const ACCOUNT_SID: &str = "ACe2e";
/// The account's auth token: basic auth to the API, and the key of the
/// `X-Twilio-Signature` on status callbacks.
pub const AUTH_TOKEN: &str = "e2e-token";

/// One scripted answer: status, optional Retry-After, Twilio error code.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub status: u16,
    pub retry_after_secs: Option<u64>,
    pub code: u32,
}

#[derive(Default)]
struct Inner {
    /// Scripts per destination number; an empty script means 201.
    scripts: HashMap<String, VecDeque<Answer>>,
    /// Every request: (To, Body, answered status).
    seen: Vec<(String, String, u16)>,
    /// Every accepted message: (To, MessageSid, StatusCallback).
    accepted: Vec<(String, String, Option<String>)>,
}

#[derive(Clone, Default)]
pub struct SmsProvider(Arc<Mutex<Inner>>);

impl SmsProvider {
    pub async fn start() -> (Self, SocketAddr) {
        let provider = SmsProvider::default();
        let app = Router::new()
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(messages))
            .with_state(provider.clone());
        let addr = super::serve_on_loopback(app).await;
        (provider, addr)
    }

    /// Answers for the next requests to `to`, in order.
    pub fn script(&self, to: &str, answers: &[Answer]) {
        self.0
            .lock()
            .unwrap()
            .scripts
            .entry(to.to_owned())
            .or_default()
            .extend(answers.iter().copied());
    }

    /// The statuses answered to requests for `to`, in order.
    pub fn answered(&self, to: &str) -> Vec<u16> {
        self.0
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|(t, _, _)| t == to)
            .map(|(_, _, s)| *s)
            .collect()
    }

    /// The accepted messages to `to`: (MessageSid, StatusCallback), in order.
    pub fn accepted(&self, to: &str) -> Vec<(String, Option<String>)> {
        self.0
            .lock()
            .unwrap()
            .accepted
            .iter()
            .filter(|(t, _, _)| t == to)
            .map(|(_, sid, cb)| (sid.clone(), cb.clone()))
            .collect()
    }

    /// The `[providers.sms]` settings pointing at this server.
    /// Twilio signs its callbacks with the account's auth token, `AUTH_TOKEN`.
    pub fn config(addr: SocketAddr) -> serde_json::Value {
        serde_json::json!({
            "kind": "twilio",
            "account_sid": ACCOUNT_SID,
            "auth_token": AUTH_TOKEN,
            "from": "+15005550006",
            "base_url": format!("http://{addr}"),
        })
    }

    /// The same, with Twilio told to post status updates to `status_callback`.
    pub fn config_with_status_callback(
        addr: SocketAddr,
        status_callback: &str,
    ) -> serde_json::Value {
        let mut config = Self::config(addr);
        config["status_callback"] = status_callback.into();
        config
    }
}

async fn messages(
    State(provider): State<SmsProvider>,
    Path(sid): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let to = form.get("To").cloned().unwrap_or_default();
    let body = form.get("Body").cloned().unwrap_or_default();
    let answer = {
        let mut inner = provider.0.lock().unwrap();
        let answer = inner.scripts.get_mut(&to).and_then(VecDeque::pop_front);
        inner
            .seen
            .push((to.clone(), body, answer.map_or(201, |a| a.status)));
        answer
    };
    if sid != ACCOUNT_SID {
        return (StatusCode::UNAUTHORIZED, "bad account").into_response();
    }
    match answer {
        None => {
            let sid = format!("SM{}", uuid::Uuid::new_v4().simple());
            provider.0.lock().unwrap().accepted.push((
                to.clone(),
                sid.clone(),
                form.get("StatusCallback").cloned(),
            ));
            (
                StatusCode::CREATED,
                axum::Json(serde_json::json!({"sid": sid, "status": "queued", "to": to})),
            )
                .into_response()
        }
        Some(a) => {
            let status =
                StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut headers = HeaderMap::new();
            if let Some(secs) = a.retry_after_secs {
                headers.insert("retry-after", HeaderValue::from(secs));
            }
            let body = serde_json::json!({"code": a.code, "message": "scripted failure", "status": a.status});
            (status, headers, axum::Json(body)).into_response()
        }
    }
}
