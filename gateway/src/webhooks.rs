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
//! harmless (below). The providers' own request signatures (Twilio's
//! `X-Twilio-Signature`, SendGrid's signed Event Webhook) are not checked:
//! their keys (the Twilio auth token, SendGrid's verification key) are sender
//! settings the gateway is not given.
//!
//! **Repeats count once.** Providers retry callbacks and send several per
//! message (Twilio: `sent`, then `delivered`, then for some channels `read`).
//! A receipt's event id is derived from the delivery and the kind, so every
//! DELIVERED of one delivery carries the same id and the template-stats stage
//! counts it once.
//!
//! **Answers.** 204 once the events are on the tracking topic; 503 when
//! Kafka did not take them in time, so the provider retries (the ids make
//! the retry harmless); 4xx for requests that will never work.

use std::time::Duration;

use axum::{
    Router,
    body::Bytes,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use tidings_kafka::now_millis;
use tidings_schemas::{
    records::{TrackingEvent, TrackingKind},
    tracking_link::{
        CallbackFields, DeliveryRef, RECEIPT_CUSTOM_ARG, RECEIPT_QUERY_PARAM, decode_event_array,
        decode_form,
    },
};
use tidings_telemetry::metrics;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::Gateway;

/// Namespace of receipt event ids: stable per (delivery, kind).
const RECEIPT_EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x7469_6469_6e67_7300_8000_0000_0000_0010);

/// How long a callback waits for its events to be acknowledged before it
/// answers 503 and lets the provider retry.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

pub fn routes() -> Router<Gateway> {
    Router::new()
        .route("/webhooks/twilio/status", post(twilio_status))
        .route("/webhooks/sendgrid/events", post(sendgrid_events))
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

async fn twilio_receipt(
    gateway: &Gateway,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let token = query
        .and_then(|q| decode_form(q.as_bytes()).ok())
        .and_then(|q| q.into_iter().find(|(k, _)| k == RECEIPT_QUERY_PARAM))
        .map(|(_, v)| v);
    let Some(token) = token else {
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
    let form = match decode_form(body) {
        Ok(form) => form,
        Err(e) => return bad_request(&format!("the form cannot be read: {e}")),
    };
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let Some(status) = field("MessageStatus") else {
        return bad_request("missing field `MessageStatus`");
    };
    let error_code = field("ErrorCode");
    if let Some(code) = error_code.filter(|c| !c.bytes().all(|b| b.is_ascii_digit())) {
        return bad_request(&format!("field `ErrorCode` is not a number: {code:?}"));
    }
    let Some(kind) = twilio_kind(status) else {
        return StatusCode::NO_CONTENT.into_response();
    };
    let sid = field("MessageSid");
    let detail = match kind {
        TrackingKind::Failed => {
            let mut detail = format!("twilio {status}");
            if let Some(code) = error_code {
                detail.push_str(&format!(": error {code}"));
            }
            if let Some(sid) = sid {
                detail.push_str(&format!(" (message {sid})"));
            }
            Some(detail)
        }
        _ => sid.map(str::to_owned),
    };
    let event = receipt_event(delivery, kind, "twilio", detail);
    gateway.write_receipts(vec![event]).await
}

async fn sendgrid_events(State(gateway): State<Gateway>, body: Bytes) -> Response {
    let response = sendgrid_receipts(&gateway, &body).await;
    count("webhook.sendgrid", &response);
    response
}

async fn sendgrid_receipts(gateway: &Gateway, body: &[u8]) -> Response {
    let events = match decode_event_array(body) {
        Ok(events) => events,
        Err(e) => return bad_request(&e.to_string()),
    };
    let total = events.len();
    let mut receipts = Vec::new();
    let mut refused = 0;
    for (i, event) in events.into_iter().enumerate() {
        let fields = match event {
            Ok(fields) => fields,
            Err(e) => {
                refused += 1;
                warn!(error = %e, "sendgrid webhook: skipped an event");
                continue;
            }
        };
        match sendgrid_receipt(gateway, &fields) {
            Ok(Some(event)) => receipts.push(event),
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
    gateway.write_receipts(receipts).await
}

/// One SendGrid event: a receipt, nothing to record, or why it was refused.
fn sendgrid_receipt(
    gateway: &Gateway,
    fields: &CallbackFields,
) -> Result<Option<TrackingEvent>, &'static str> {
    let Some(name) = fields.get("event") else {
        return Err("no `event` field");
    };
    let kind = match name.as_str() {
        "delivered" => TrackingKind::Delivered,
        "bounce" | "dropped" => TrackingKind::Failed,
        // processed, deferred, open, click, spamreport, unsubscribe, ...
        _ => return Ok(None),
    };
    // Mail tidings did not send (or sent before receipts) has no token.
    let Some(token) = fields.get(RECEIPT_CUSTOM_ARG) else {
        return Ok(None);
    };
    let delivery = gateway
        .links
        .verify_receipt(token)
        .map_err(|_| "invalid receipt token")?;
    let detail = match kind {
        TrackingKind::Failed => {
            let mut detail = format!("sendgrid {name}");
            if let Some(status) = fields.get("status") {
                detail.push_str(&format!(" ({status})"));
            }
            if let Some(reason) = fields.get("reason") {
                detail.push_str(&format!(": {reason}"));
            }
            Some(detail)
        }
        _ => fields.get("sg_message_id").cloned(),
    };
    Ok(Some(receipt_event(delivery, kind, "sendgrid", detail)))
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
        event_id: Uuid::new_v5(&RECEIPT_EVENT_NAMESPACE, name.as_bytes()).to_string(),
        notification_id: d.notification_id,
        user_id: d.user_id,
        kind,
        channel: Some(d.channel),
        target: Some(d.target),
        template_name: d.template_name,
        stage: format!("gateway.{provider}"),
        detail,
        at: now_millis(),
    }
}

fn bad_request(why: &str) -> Response {
    (StatusCode::BAD_REQUEST, why.to_owned()).into_response()
}

fn count(method: &str, response: &Response) {
    metrics()
        .gateway_requests
        .with_label_values(&[method, response.status().as_str()])
        .inc();
}

impl Gateway {
    /// Writes receipt events to the tracking topic and answers the provider:
    /// 204 once all are acknowledged, 503 (retry) otherwise.
    async fn write_receipts(&self, events: Vec<TrackingEvent>) -> Response {
        if events.is_empty() {
            return StatusCode::NO_CONTENT.into_response();
        }
        let topic = self.topics.tracking();
        let sends = events
            .iter()
            .map(|e| self.producer.send(&topic, &e.notification_id, e));
        let written = tokio::time::timeout(WRITE_TIMEOUT, futures::future::join_all(sends)).await;
        let failure = match written {
            Err(_) => Some("timed out".to_owned()),
            Ok(results) => results
                .into_iter()
                .find_map(Result::err)
                .map(|e| e.to_string()),
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
}
