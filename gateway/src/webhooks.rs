//! Delivery receipts: the status callbacks of the providers that report
//! delivery, turned into DELIVERED and FAILED tracking events.
//!
//! - `POST /webhooks/twilio/status?d=<token>`: Twilio's message status
//!   callback (form-encoded `MessageSid`, `MessageStatus`, `ErrorCode`, ...).
//!   The SMS sender sets each message's `StatusCallback` to the configured
//!   `status_callback` plus the delivery's receipt token.
//! - `POST /webhooks/sendgrid/events`: SendGrid's Event Webhook, a JSON array
//!   of events; the email sender puts the token in the message's
//!   `custom_args`, which SendGrid repeats as a top-level field of each event.
//!
//! **Authentication is the receipt token.** It is an HMAC over the delivery
//! it names, keyed by a key derived from `tracking.link_secret`
//! (`tidings_schemas::tracking_link`), so a callback without a token the
//! senders signed is refused (403) or, in a SendGrid batch, skipped. Only the
//! provider ever sees a token (over TLS, in the request that sent the
//! message), and a token names a single delivery: whoever held one could at
//! most report that one message as delivered or failed, and repeats are
//! harmless (below). Twilio's own request signature (`X-Twilio-Signature`)
//! is checked too when the gateway's configuration has the SMS provider's
//! settings (`[providers.sms]`, kind twilio, with `status_callback`): a
//! callback must then carry both. Likewise SendGrid's signed Event Webhook
//! (ECDSA P-256 over the `X-Twilio-Email-Event-Webhook-Timestamp` header and
//! the raw body) is checked when the email provider is SendGrid with a
//! `webhook_verification_key`; a batch without a valid signature is refused
//! (403) as a whole.
//!
//! **Repeats count once.** Providers retry callbacks and send several per
//! message (Twilio: `sent`, then `delivered`, then for some channels `read`).
//! A receipt's event id is derived from the delivery and the kind, so every
//! DELIVERED of one delivery carries the same id and the template-stats stage
//! counts it once.
//!
//! **The notification log too.** Each receipt also sets the delivery's entry
//! in the notification log (`delivered`, or `failed` with the detail), so
//! `GetStatus` shows it: one `record_many` per callback, beside the tracking
//! events. The entry's `at` is the time the callback arrived, and the log
//! keeps the newest `at`, so the sender's earlier `sent` does not replace it
//! even when the sender writes it later. Its `attempt` is 0: the token does
//! not say which attempt the provider accepted.
//!
//! **Answers.** 204 once the events are on the tracking topic and the
//! entries in the log; 503 when Kafka or the store did not take them in
//! time, so the provider retries (both writes are idempotent: the event ids
//! are stable and the log entry is an upsert); 4xx for requests that will
//! never work.
//!
//! **Decoding.** Bodies are decoded here with serde: Twilio's form with
//! `serde_urlencoded`, SendGrid's array with `serde_json`, one element at a
//! time, so one bad event is skipped without losing the others.

use std::time::Duration;

use axum::{
    body::Bytes,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use ring::hmac;
use serde::{Deserialize, Deserializer};
use tidings_kafka::now_millis;
use tidings_schemas::{
    ids,
    records::{TrackingEvent, TrackingKind},
    tracking_link::{DeliveryRef, with_receipt_token},
};
use tidings_store::StatusEntry;
use tidings_telemetry::GatewayRequest;
use tracing::{debug, warn};
use utoipa::{IntoResponses, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::Gateway;

/// Namespace of receipt event ids: stable per (delivery, kind).
const RECEIPT_EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x7469_6469_6e67_7300_8000_0000_0000_0010);

/// How long a callback waits for its events to be acknowledged and its log
/// entries written before it answers 503 and lets the provider retry.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The webhooks' routes, each with its OpenAPI operation (`openapi.rs`).
pub fn routes() -> OpenApiRouter<Gateway> {
    OpenApiRouter::new()
        .routes(routes!(twilio_status))
        .routes(routes!(sendgrid_events))
}

/// The answers of both webhooks (module docs, **Answers**).
#[derive(IntoResponses)]
#[allow(dead_code)] // only documents the answers
enum ReceiptAnswers {
    /// The receipts are recorded (or there was nothing to record)
    #[response(status = 204)]
    Recorded,
    /// The body can never be read (says why)
    #[response(status = 400, content_type = "text/plain")]
    BadRequest(String),
    /// No valid receipt token or provider signature
    #[response(status = 403, content_type = "text/plain")]
    Forbidden(String),
    /// The body is over 2 MB (axum's limit; no provider sends that much)
    #[response(status = 413, content_type = "text/plain")]
    TooLarge(String),
    /// Kafka or the store did not take the receipts in time: retry
    #[response(status = 503, content_type = "text/plain",
        headers(("retry-after" = String, description = "Seconds to wait")))]
    Unavailable(String),
}

/// Twilio's status callback form, as far as tidings reads it; Twilio's
/// other parameters are ignored.
#[derive(ToSchema)]
#[allow(dead_code, non_snake_case)] // only documents the form
struct TwilioCallbackForm {
    MessageSid: Option<String>,
    /// `delivered` and `read` record a delivery, `undelivered` and `failed`
    /// a failure; other values record nothing.
    MessageStatus: String,
    /// Twilio's error code, digits.
    #[schema(pattern = "^[0-9]*$")]
    ErrorCode: Option<String>,
}

/// Twilio's `MessageStatus` values that end in the handset, and in failure.
/// The others (`accepted`, `scheduled`, `queued`, `sending`, `sent`,
/// `canceled`, ...) are steps on the way and record nothing.
fn twilio_kind(status: &str) -> Option<TrackingKind> {
    match status {
        "delivered" | "read" => Some(TrackingKind::Delivered),
        "undelivered" | "failed" => Some(TrackingKind::Failed),
        _ => None,
    }
}

/// Delivery receipts from Twilio.
#[utoipa::path(post, path = "/webhooks/twilio/status", tag = "webhooks",
    params(("d" = String, Query, description = "The receipt token the SMS sender put in the message's StatusCallback")),
    request_body(content = TwilioCallbackForm, content_type = "application/x-www-form-urlencoded"),
    responses(ReceiptAnswers))]
async fn twilio_status(
    State(gateway): State<Gateway>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = twilio_receipt(&gateway, query.as_deref(), &headers, &body).await;
    count("webhook.twilio", &response);
    response
}

/// The query of Twilio's callback URL: `?d=<receipt token>`
/// ([`tidings_schemas::tracking_link::RECEIPT_QUERY_PARAM`]).
#[derive(Debug, Default, Deserialize)]
struct ReceiptQuery {
    d: Option<String>,
}

/// The fields of Twilio's status callback that tidings reads; the others
/// (`To`, `From`, `AccountSid`, ...) are ignored. Empty counts as absent.
#[doc(hidden)] // pub for the property tests (tests/fuzz.rs)
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TwilioStatus {
    #[serde(rename = "MessageSid")]
    message_sid: Option<String>,
    #[serde(rename = "MessageStatus")]
    message_status: Option<String>,
    #[serde(rename = "ErrorCode")]
    error_code: Option<String>,
}

/// The receipt token in a callback's query string, if there is one.
#[doc(hidden)] // pub for the property tests (tests/fuzz.rs)
pub fn receipt_token(query: Option<&str>) -> Option<String> {
    serde_urlencoded::from_str::<ReceiptQuery>(query?)
        .ok()?
        .d
        .filter(|d| !d.is_empty())
}

/// Reads Twilio's form: the status, or a 400 message naming the field.
#[doc(hidden)] // pub for the property tests (tests/fuzz.rs)
pub fn decode_twilio(body: &[u8]) -> Result<TwilioStatus, String> {
    let form: TwilioStatus =
        serde_urlencoded::from_bytes(body).map_err(|e| format!("the form cannot be read: {e}"))?;
    let nonempty = |v: Option<String>| v.filter(|v| !v.is_empty());
    let form = TwilioStatus {
        message_sid: nonempty(form.message_sid),
        message_status: nonempty(form.message_status),
        error_code: nonempty(form.error_code),
    };
    if form.message_status.is_none() {
        return Err("missing field `MessageStatus`".into());
    }
    if let Some(code) = form
        .error_code
        .as_deref()
        .filter(|c| !c.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("field `ErrorCode` is not a number: {code:?}"));
    }
    Ok(form)
}

/// Twilio's request signature (`X-Twilio-Signature`): base64 of HMAC-SHA1,
/// keyed by the account's auth token, over the URL Twilio requested followed
/// by every POST parameter's name and value, sorted by name. The URL is the
/// status callback the SMS sender gave Twilio for this delivery, rebuilt from
/// the configured `status_callback` and the receipt token, so a proxy in
/// front of the gateway does not change what is signed.
#[derive(Clone)]
pub struct TwilioSignatures {
    key: hmac::Key,
    status_callback: String,
}

impl TwilioSignatures {
    pub fn new(auth_token: &str, status_callback: &str) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, auth_token.as_bytes()),
            status_callback: status_callback.to_owned(),
        }
    }

    /// The URL followed by each parameter's name and value, sorted.
    fn signed_text(url: &str, params: &[(String, String)]) -> String {
        let mut text = url.to_owned();
        let mut sorted: Vec<&(String, String)> = params.iter().collect();
        sorted.sort();
        for (name, value) in sorted {
            text.push_str(name);
            text.push_str(value);
        }
        text
    }

    /// Whether `signature` is Twilio's for this callback (constant time).
    fn verify(
        &self,
        receipt_token: &str,
        params: &[(String, String)],
        signature: Option<&str>,
    ) -> bool {
        let Some(tag) = signature.and_then(|s| STANDARD.decode(s.trim()).ok()) else {
            return false;
        };
        let url = with_receipt_token(&self.status_callback, receipt_token);
        let text = Self::signed_text(&url, params);
        hmac::verify(&self.key, text.as_bytes(), &tag).is_ok()
    }
}

async fn twilio_receipt(
    gateway: &Gateway,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let Some(token) = receipt_token(query) else {
        return (
            StatusCode::FORBIDDEN,
            "no receipt token: the URL must be the StatusCallback tidings sent, with its `d` parameter",
        )
            .into_response();
    };
    let Ok(delivery) = gateway.links.verify_receipt(&token) else {
        return (StatusCode::FORBIDDEN, "unknown delivery").into_response();
    };
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !is_form {
        return bad_request("the body must be application/x-www-form-urlencoded");
    }
    if let Some(signatures) = &gateway.twilio_signatures {
        let params: Vec<(String, String)> = match serde_urlencoded::from_bytes(body) {
            Ok(params) => params,
            Err(e) => return bad_request(&format!("the form cannot be read: {e}")),
        };
        let signature = headers
            .get("x-twilio-signature")
            .and_then(|v| v.to_str().ok());
        if !signatures.verify(&token, &params, signature) {
            return (
                StatusCode::FORBIDDEN,
                "X-Twilio-Signature is missing or does not match",
            )
                .into_response();
        }
    }
    let form = match decode_twilio(body) {
        Ok(form) => form,
        Err(why) => return bad_request(&why),
    };
    let status = form.message_status.as_deref().unwrap_or_default();
    let Some(kind) = twilio_kind(status) else {
        return StatusCode::NO_CONTENT.into_response();
    };
    let detail = match kind {
        TrackingKind::Failed => {
            let mut detail = format!("twilio {status}");
            if let Some(code) = &form.error_code {
                detail.push_str(&format!(": error {code}"));
            }
            if let Some(sid) = &form.message_sid {
                detail.push_str(&format!(" (message {sid})"));
            }
            Some(detail)
        }
        _ => form.message_sid,
    };
    let event = receipt_event(delivery, kind, "twilio", detail);
    gateway.write_receipts(vec![event]).await
}

/// SendGrid's signed Event Webhook: an ECDSA P-256 / SHA-256 signature
/// (base64 DER, `X-Twilio-Email-Event-Webhook-Signature`) over the
/// `X-Twilio-Email-Event-Webhook-Timestamp` header followed by the raw body.
/// No window is put on the timestamp: SendGrid documents none for its
/// retries, and a replayed batch only repeats receipts, which count once.
#[derive(Clone)]
pub struct SendGridSignatures {
    /// The uncompressed P-256 point of the verification key.
    point: std::sync::Arc<[u8]>,
}

/// The DER of a P-256 SubjectPublicKeyInfo up to its 65-byte point: the
/// form SendGrid shows the verification key in (base64, no PEM armour).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

impl SendGridSignatures {
    /// `verification_key`: the base64 public key from SendGrid's Mail
    /// Settings (PEM armour and whitespace are tolerated).
    pub fn new(verification_key: &str) -> Result<Self, String> {
        let b64: String = verification_key
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>()
            .split_whitespace()
            .collect();
        let der = STANDARD
            .decode(b64)
            .map_err(|e| format!("the verification key is not base64: {e}"))?;
        match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            Some(point) if point.len() == 65 && point[0] == 0x04 => Ok(Self {
                point: point.into(),
            }),
            _ => Err(
                "the verification key is not a P-256 public key (SubjectPublicKeyInfo DER)".into(),
            ),
        }
    }

    /// Whether the headers carry SendGrid's signature of `body`.
    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(signature), Some(timestamp)) = (
            header("x-twilio-email-event-webhook-signature"),
            header("x-twilio-email-event-webhook-timestamp"),
        ) else {
            return false;
        };
        let Ok(signature) = STANDARD.decode(signature.trim()) else {
            return false;
        };
        let mut signed = Vec::with_capacity(timestamp.len() + body.len());
        signed.extend_from_slice(timestamp.as_bytes());
        signed.extend_from_slice(body);
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            &*self.point,
        )
        .verify(&signed, &signature)
        .is_ok()
    }
}

/// SendGrid's Event Webhook: an array of events; those with a
/// `tidings_receipt` tidings signed record deliveries (`delivered`) and
/// failures (`bounce`, `dropped`). A bad event is skipped, not the batch.
#[utoipa::path(post, path = "/webhooks/sendgrid/events", tag = "webhooks",
    request_body(content = Vec<Object>, content_type = "application/json"),
    responses(ReceiptAnswers))]
async fn sendgrid_events(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = match &gateway.sendgrid_signatures {
        Some(signatures) if !signatures.verify(&headers, &body) => (
            StatusCode::FORBIDDEN,
            "X-Twilio-Email-Event-Webhook-Signature is missing or does not match",
        )
            .into_response(),
        _ => sendgrid_receipts(&gateway, &body).await,
    };
    count("webhook.sendgrid", &response);
    response
}

/// The fields of one SendGrid event that tidings reads; the others are
/// ignored. Values are read as text whatever their JSON type (a number as
/// its digits, `null` as absent), so an odd type does not lose the event.
#[doc(hidden)] // pub for the property tests (tests/fuzz.rs)
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SendGridEvent {
    #[serde(deserialize_with = "text")]
    event: Option<String>,
    /// The receipt token ([`tidings_schemas::tracking_link::RECEIPT_CUSTOM_ARG`]),
    /// echoed from the message's `custom_args`.
    #[serde(rename = "tidings_receipt", deserialize_with = "text")]
    receipt: Option<String>,
    #[serde(deserialize_with = "text")]
    status: Option<String>,
    #[serde(deserialize_with = "text")]
    reason: Option<String>,
    #[serde(deserialize_with = "text")]
    sg_message_id: Option<String>,
    /// Unix seconds: orders the events of one delivery within a batch.
    #[serde(deserialize_with = "text")]
    timestamp: Option<String>,
}

/// Any JSON value as text: strings as they are, `null` as absent, anything
/// else as its JSON text.
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    })
}

/// Reads SendGrid's body: one result per element of the array, so a bad
/// event is skipped and the others kept; `Err` when the body is not a JSON
/// array at all.
#[doc(hidden)] // pub for the property tests (tests/fuzz.rs)
pub fn decode_sendgrid(body: &[u8]) -> Result<Vec<Result<SendGridEvent, String>>, String> {
    let events: Vec<serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not a JSON array of events: {e}"))?;
    Ok(events
        .into_iter()
        .enumerate()
        .map(|(i, event)| match event {
            serde_json::Value::Object(_) => {
                serde_json::from_value(event).map_err(|e| format!("event {i}: {e}"))
            }
            _ => Err(format!("event {i} is not an object")),
        })
        .collect())
}

async fn sendgrid_receipts(gateway: &Gateway, body: &[u8]) -> Response {
    let events = match decode_sendgrid(body) {
        Ok(events) => events,
        Err(why) => return bad_request(&why),
    };
    let total = events.len();
    let mut receipts = Vec::new();
    let mut refused = 0;
    for (i, event) in events.into_iter().enumerate() {
        let event = match event {
            Ok(event) => event,
            Err(why) => {
                refused += 1;
                warn!(why, "sendgrid webhook: skipped an event");
                continue;
            }
        };
        match sendgrid_receipt(gateway, event) {
            Ok(Some(receipt)) => receipts.push(receipt),
            Ok(None) => {}
            Err(why) => {
                refused += 1;
                warn!(event = i, why, "sendgrid webhook: skipped an event");
            }
        }
    }
    debug!(
        events = total,
        receipts = receipts.len(),
        refused,
        "sendgrid webhook"
    );
    // SendGrid does not promise order within a batch: the log entry of a
    // delivery is its latest event by SendGrid's timestamp.
    receipts.sort_by_key(|(_, timestamp)| *timestamp);
    gateway
        .write_receipts(receipts.into_iter().map(|(event, _)| event).collect())
        .await
}

/// One SendGrid event: a receipt (with SendGrid's timestamp), nothing to
/// record, or why it was refused.
fn sendgrid_receipt(
    gateway: &Gateway,
    fields: SendGridEvent,
) -> Result<Option<(TrackingEvent, i64)>, &'static str> {
    let Some(name) = fields.event else {
        return Err("no `event` field");
    };
    let kind = match name.as_str() {
        "delivered" => TrackingKind::Delivered,
        "bounce" | "dropped" => TrackingKind::Failed,
        // processed, deferred, open, click, spamreport, unsubscribe, ...
        _ => return Ok(None),
    };
    // Mail tidings did not send (or sent before receipts) has no token.
    let Some(token) = fields.receipt else {
        return Ok(None);
    };
    let delivery = gateway
        .links
        .verify_receipt(&token)
        .map_err(|_| "invalid receipt token")?;
    let detail = match kind {
        TrackingKind::Failed => {
            let mut detail = format!("sendgrid {name}");
            if let Some(status) = &fields.status {
                detail.push_str(&format!(" ({status})"));
            }
            if let Some(reason) = &fields.reason {
                detail.push_str(&format!(": {reason}"));
            }
            Some(detail)
        }
        _ => fields.sg_message_id,
    };
    let timestamp = fields
        .timestamp
        .and_then(|t| t.parse().ok())
        .unwrap_or_default();
    Ok(Some((
        receipt_event(delivery, kind, "sendgrid", detail),
        timestamp,
    )))
}

/// The tracking event of a receipt, like the sender's own events for the
/// delivery, with an id stable per (delivery, kind).
fn receipt_event(
    d: DeliveryRef,
    kind: TrackingKind,
    provider: &str,
    detail: Option<String>,
) -> TrackingEvent {
    let name = format!(
        "{}\n{}\n{}\n{kind:?}",
        d.notification_id, d.channel, d.target
    );
    TrackingEvent {
        // Led by the notification's time: the stage that counts it marks
        // the id in the store ([`ids`]).
        event_id: ids::time_ordered(
            &RECEIPT_EVENT_NAMESPACE,
            name.as_bytes(),
            &d.notification_id,
        )
        .to_string(),
        notification_id: d.notification_id,
        user_id: d.user_id,
        kind,
        channel: Some(d.channel),
        target: Some(d.target),
        template_name: d.template_name,
        stage: format!("gateway.{provider}"),
        detail,
        at: now_millis(),
        dispatched_at: None,
    }
}

fn bad_request(why: &str) -> Response {
    (StatusCode::BAD_REQUEST, why.to_owned()).into_response()
}

fn count(method: &str, response: &Response) {
    GatewayRequest {
        method,
        code: response.status().as_str(),
    }
    .emit();
}

/// The notification-log entries of receipts: one per (notification,
/// channel, target), the last receipt of each in `events`' order, with the
/// time the receipt arrived (newer than the sender's `sent`, so it wins).
fn status_entries(events: &[TrackingEvent]) -> Vec<StatusEntry> {
    let mut entries: Vec<StatusEntry> = Vec::with_capacity(events.len());
    // Where each delivery's entry is, so a batch of n receipts takes O(n)
    // (SendGrid posts up to thousands of events at once).
    let mut index: std::collections::HashMap<(String, String, String), usize> =
        std::collections::HashMap::with_capacity(events.len());
    for e in events {
        let state = match e.kind {
            TrackingKind::Delivered => "delivered",
            TrackingKind::Failed => "failed",
            _ => continue,
        };
        let entry = StatusEntry {
            notification_id: e.notification_id.clone(),
            user_id: e.user_id.clone(),
            channel: e.channel.clone().unwrap_or_default(),
            target: e.target.clone().unwrap_or_default(),
            state: state.into(),
            detail: e.detail.clone(),
            // The token does not say which attempt the provider accepted.
            attempt: 0,
            at: e.at,
        };
        let key = (
            entry.notification_id.clone(),
            entry.channel.clone(),
            entry.target.clone(),
        );
        match index.get(&key) {
            // One write per key: equal times would leave the winner to the
            // engine (CQL breaks ties by value), not to the order here.
            Some(&i) => {
                let at = entries[i].at.max(entry.at);
                entries[i] = StatusEntry { at, ..entry };
            }
            None => {
                index.insert(key, entries.len());
                entries.push(entry);
            }
        }
    }
    entries
}

impl Gateway {
    /// Writes receipt events to the tracking topic and their entries to the
    /// notification log, side by side, and answers the provider: 204 once
    /// both are done, 503 (retry) when either failed or took longer than
    /// [`WRITE_TIMEOUT`]. Both writes are idempotent, so a retry after a
    /// partial success only repeats what is already there.
    async fn write_receipts(&self, events: Vec<TrackingEvent>) -> Response {
        if events.is_empty() {
            return StatusCode::NO_CONTENT.into_response();
        }
        let entries = status_entries(&events);
        let topic = self.topics.tracking();
        let produce = async {
            let records = events
                .iter()
                .map(|e| self.producer.encode(topic, &e.notification_id, e))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("tracking topic: {e}"))?;
            // On the embedded cluster, not past a slow tracking reader: a
            // provider's burst of receipts waits (or is answered 503 and
            // retried) rather than overrun what the mock broker keeps.
            let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
            self.write_with_room(topic, &records, deadline)
                .await
                .map_err(|e| format!("tracking topic: {e}"))
        };
        let log = async {
            if entries.is_empty() {
                return None;
            }
            self.store
                .notification_log
                .record_many(&entries)
                .await
                .err()
                .map(|e| format!("notification log: {e}"))
        };
        let written =
            tokio::time::timeout(WRITE_TIMEOUT, async { tokio::join!(produce, log) }).await;
        let failure = match written {
            Err(_) => Some("timed out".to_owned()),
            Ok((produced, logged)) => {
                let errors: Vec<String> = [produced.err(), logged].into_iter().flatten().collect();
                (!errors.is_empty()).then(|| errors.join("; "))
            }
        };
        match failure {
            None => StatusCode::NO_CONTENT.into_response(),
            Some(error) => {
                warn!(%error, events = events.len(), "could not record delivery receipts; the provider will retry");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "30")],
                    "try again later",
                )
                    .into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {

    /// The example in Twilio's webhook-security documentation.
    #[test]
    fn twilio_signatures_follow_twilios_documented_example() {
        let params: Vec<(String, String)> = [
            ("To", "+18005551212"),
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675310"),
            ("From", "+14158675310"),
            ("Digits", "1234"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let text =
            TwilioSignatures::signed_text("https://mycompany.com/myapp.php?foo=1&bar=2", &params);
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"12345");
        assert_eq!(
            STANDARD.encode(hmac::sign(&key, text.as_bytes())),
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        );
    }

    #[test]
    fn twilio_signatures_cover_the_receipt_url_and_every_parameter() {
        let signatures =
            TwilioSignatures::new("secret", "https://hooks.example.com/webhooks/twilio/status");
        let params = vec![("MessageStatus".to_owned(), "delivered".to_owned())];
        let url = "https://hooks.example.com/webhooks/twilio/status?d=tok";
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"secret");
        let good = STANDARD.encode(hmac::sign(
            &key,
            TwilioSignatures::signed_text(url, &params).as_bytes(),
        ));
        assert!(signatures.verify("tok", &params, Some(&good)));
        assert!(
            !signatures.verify("other", &params, Some(&good)),
            "another delivery"
        );
        let changed = vec![("MessageStatus".to_owned(), "failed".to_owned())];
        assert!(
            !signatures.verify("tok", &changed, Some(&good)),
            "another status"
        );
        assert!(!signatures.verify("tok", &params, None), "no header");
        assert!(!signatures.verify("tok", &params, Some("not base64!")));
    }
    use super::*;

    #[test]
    fn twilio_statuses_map_to_kinds() {
        for (status, kind) in [
            ("delivered", Some(TrackingKind::Delivered)),
            ("read", Some(TrackingKind::Delivered)),
            ("undelivered", Some(TrackingKind::Failed)),
            ("failed", Some(TrackingKind::Failed)),
            ("queued", None),
            ("sending", None),
            ("sent", None),
            ("accepted", None),
            ("canceled", None),
        ] {
            assert_eq!(twilio_kind(status), kind, "{status}");
        }
    }

    #[test]
    fn receipt_ids_are_stable_per_delivery_and_kind() {
        let d = DeliveryRef {
            notification_id: "n".into(),
            user_id: "u".into(),
            template_name: Some("t".into()),
            channel: "sms".into(),
            target: "+14155550100".into(),
        };
        let delivered = receipt_event(d.clone(), TrackingKind::Delivered, "twilio", None);
        let again = receipt_event(
            d.clone(),
            TrackingKind::Delivered,
            "twilio",
            Some("SM1".into()),
        );
        let failed = receipt_event(d.clone(), TrackingKind::Failed, "twilio", None);
        let mut other = d;
        other.target = "+14155550101".into();
        let other = receipt_event(other, TrackingKind::Delivered, "twilio", None);
        assert_eq!(delivered.event_id, again.event_id);
        assert_ne!(delivered.event_id, failed.event_id);
        assert_ne!(delivered.event_id, other.event_id);
        assert_eq!(delivered.template_name.as_deref(), Some("t"));
        assert_eq!(delivered.stage, "gateway.twilio");
    }

    #[test]
    fn field_names_are_the_ones_the_senders_use() {
        use tidings_schemas::tracking_link::{RECEIPT_CUSTOM_ARG, RECEIPT_QUERY_PARAM};
        let token = receipt_token(Some(&format!("x=1&{RECEIPT_QUERY_PARAM}=a.b")));
        assert_eq!(token.as_deref(), Some("a.b"));
        assert_eq!(receipt_token(Some("x=1")), None);
        assert_eq!(receipt_token(Some("d=")), None);
        assert_eq!(receipt_token(None), None);
        let event: SendGridEvent =
            serde_json::from_value(serde_json::json!({ RECEIPT_CUSTOM_ARG: "t" })).unwrap();
        assert_eq!(event.receipt.as_deref(), Some("t"));
    }

    #[test]
    fn twilio_forms_decode_and_name_what_is_wrong() {
        let form = decode_twilio(
            b"MessageSid=SM1&MessageStatus=delivered&Body=a+b%26c&Empty=&Flag&ErrorCode=",
        )
        .unwrap();
        assert_eq!(form.message_sid.as_deref(), Some("SM1"));
        assert_eq!(form.message_status.as_deref(), Some("delivered"));
        assert_eq!(form.error_code, None, "empty is absent");
        let form = decode_twilio(b"MessageStatus=undelivered&ErrorCode=30003").unwrap();
        assert_eq!(form.error_code.as_deref(), Some("30003"));
        for (body, field) in [
            (&b"MessageSid=SM1"[..], "MessageStatus"),
            (b"MessageSid=SM1&MessageStatus=", "MessageStatus"),
            (b"", "MessageStatus"),
            (b"MessageStatus=failed&ErrorCode=oops", "ErrorCode"),
        ] {
            let why = decode_twilio(body).unwrap_err();
            assert!(why.contains(field), "{why}");
        }
    }

    /// The test vector of SendGrid's own libraries (sendgrid-nodejs
    /// `@sendgrid/eventwebhook`): key, signature, timestamp and payload.
    const SENDGRID_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==";
    const SENDGRID_SIGNATURE: &str = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0=";
    const SENDGRID_TIMESTAMP: &str = "1588788367";
    const SENDGRID_PAYLOAD: &str =
        r#"{"category":"example_payload","event":"test_event","message_id":"message_id"}"#;

    fn signed_headers(signature: &str, timestamp: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-twilio-email-event-webhook-signature",
            signature.parse().unwrap(),
        );
        headers.insert(
            "x-twilio-email-event-webhook-timestamp",
            timestamp.parse().unwrap(),
        );
        headers
    }

    #[test]
    fn sendgrid_signatures_verify_sendgrids_own_test_vector() {
        let signatures = SendGridSignatures::new(SENDGRID_KEY).unwrap();
        let headers = signed_headers(SENDGRID_SIGNATURE, SENDGRID_TIMESTAMP);
        assert!(signatures.verify(&headers, SENDGRID_PAYLOAD.as_bytes()));
        // Another body, another timestamp, no headers: refused.
        assert!(!signatures.verify(&headers, b"[]"));
        let later = signed_headers(SENDGRID_SIGNATURE, "1588788368");
        assert!(!signatures.verify(&later, SENDGRID_PAYLOAD.as_bytes()));
        assert!(!signatures.verify(&HeaderMap::new(), SENDGRID_PAYLOAD.as_bytes()));
        // PEM armour is accepted; other keys are named as such.
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{SENDGRID_KEY}\n-----END PUBLIC KEY-----\n");
        assert!(SendGridSignatures::new(&pem).is_ok());
        assert!(SendGridSignatures::new("not base64!").is_err());
        assert!(SendGridSignatures::new(&STANDARD.encode([0u8; 91])).is_err());
    }

    #[test]
    fn sendgrid_events_decode_one_by_one() {
        let events = decode_sendgrid(
            br#"[{"event":"delivered","timestamp":1700000000,"x":null,"sg_message_id":7,
                  "reason":["a"],"status":null},
                 7,
                 {"event":"bounce"},
                 {"email":"a@example.org"}]"#,
        )
        .unwrap();
        assert_eq!(events.len(), 4);
        let first = events[0].as_ref().unwrap();
        assert_eq!(first.event.as_deref(), Some("delivered"));
        assert_eq!(first.timestamp.as_deref(), Some("1700000000"));
        assert_eq!(first.sg_message_id.as_deref(), Some("7"));
        assert_eq!(first.reason.as_deref(), Some(r#"["a"]"#));
        assert_eq!(first.status, None);
        assert!(events[1].as_ref().unwrap_err().contains("event 1"));
        assert_eq!(events[2].as_ref().unwrap().event.as_deref(), Some("bounce"));
        assert_eq!(events[3].as_ref().unwrap().event, None);
        assert!(decode_sendgrid(b"{}").is_err());
        assert!(decode_sendgrid(b"not json").is_err());
        assert!(decode_sendgrid(b"[]").unwrap().is_empty());
    }

    #[test]
    fn a_large_receipt_batch_takes_linear_time() {
        // 50,000 distinct deliveries and a second receipt for each: with a
        // scan per event this was 2.5 billion comparisons (minutes in a
        // debug build); with the index it is well under a second.
        let n = 50_000;
        let events: Vec<TrackingEvent> = (0..2 * n)
            .map(|i| {
                let d = DeliveryRef {
                    notification_id: format!("n{}", i % n),
                    user_id: "u".into(),
                    template_name: None,
                    channel: "email".into(),
                    target: "a@example.com".into(),
                };
                let kind = if i < n {
                    TrackingKind::Delivered
                } else {
                    TrackingKind::Failed
                };
                receipt_event(d, kind, "sendgrid", None)
            })
            .collect();
        let started = std::time::Instant::now();
        let entries = status_entries(&events);
        let took = started.elapsed();
        assert_eq!(entries.len(), n);
        assert!(entries.iter().all(|e| e.state == "failed"));
        assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    }

    #[test]
    fn receipts_become_one_log_entry_per_delivery() {
        let d = |target: &str| DeliveryRef {
            notification_id: "n".into(),
            user_id: "u".into(),
            template_name: None,
            channel: "email".into(),
            target: target.into(),
        };
        let mut delivered = receipt_event(d("a"), TrackingKind::Delivered, "sendgrid", None);
        delivered.at = 10;
        let mut bounced = receipt_event(
            d("a"),
            TrackingKind::Failed,
            "sendgrid",
            Some("sendgrid bounce".into()),
        );
        bounced.at = 9;
        let other = receipt_event(
            d("b"),
            TrackingKind::Delivered,
            "sendgrid",
            Some("m".into()),
        );
        let entries = status_entries(&[delivered, bounced, other.clone()]);
        assert_eq!(entries.len(), 2);
        assert_eq!(
            (entries[0].target.as_str(), entries[0].state.as_str()),
            ("a", "failed"),
            "the last receipt of a delivery wins"
        );
        assert_eq!(entries[0].detail.as_deref(), Some("sendgrid bounce"));
        assert_eq!(entries[0].at, 10, "and is not older than the others");
        assert_eq!(entries[1].state, "delivered");
        assert_eq!(entries[1].detail.as_deref(), Some("m"));
        assert_eq!(entries[1].attempt, 0);
        assert_eq!(entries[1].at, other.at);
        assert_eq!(
            (entries[1].channel.as_str(), entries[1].user_id.as_str()),
            ("email", "u")
        );
    }
}
