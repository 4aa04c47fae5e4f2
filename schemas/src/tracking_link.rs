//! Tracking links and open pixels: signed tokens the enricher puts into
//! rendered content and the gateway verifies when a user clicks or opens.
//!
//! A token is `base64url(json) "." base64url(HMAC-SHA256(secret, json))`.
//! The JSON names the notification, the user, the template and, for a click,
//! the destination, so the gateway needs no look-up to record the event and
//! redirect, and nobody can forge events or turn it into an open redirect.
//!
//! Delivery receipts use tokens of the same shape, under a key derived from
//! the same secret (so a link token is never a receipt token, nor the other
//! way round): a sender puts one per delivery into what it hands a provider
//! that reports delivery (Twilio's `StatusCallback` URL, SendGrid's
//! `custom_args`), the provider echoes it in its callback, and the gateway
//! verifies it and records DELIVERED or FAILED with no look-up. The token is
//! what authenticates a callback: only the provider ever sees it, it names
//! one delivery, and it cannot be forged. Reading the callbacks' bodies is
//! the gateway's business (`gateway/src/webhooks.rs`).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::records::Delivery;

/// The query parameter of Twilio's `StatusCallback` URL that carries the
/// delivery's receipt token: `<status_callback>?d=<token>`.
pub const RECEIPT_QUERY_PARAM: &str = "d";

/// The SendGrid `custom_args` key that carries the delivery's receipt token;
/// SendGrid's Event Webhook echoes it as a top-level field of every event.
pub const RECEIPT_CUSTOM_ARG: &str = "tidings_receipt";

/// Derives the receipt key from the link key: receipt tokens and link tokens
/// are signed with different keys from one configured secret.
const RECEIPT_KEY_LABEL: &[u8] = b"tidings delivery receipt v1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedTarget {
    #[serde(rename = "n")]
    pub notification_id: String,
    #[serde(rename = "u")]
    pub user_id: String,
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub template_name: Option<String>,
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The destination of a click; none for an open pixel.
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// One delivery, as named by a receipt token: enough to record a DELIVERED
/// or FAILED tracking event like the sender's own events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRef {
    #[serde(rename = "n")]
    pub notification_id: String,
    #[serde(rename = "u")]
    pub user_id: String,
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub template_name: Option<String>,
    #[serde(rename = "c")]
    pub channel: String,
    /// The phone number or address delivered to.
    #[serde(rename = "a")]
    pub target: String,
}

impl DeliveryRef {
    pub fn of(d: &Delivery) -> Self {
        Self {
            notification_id: d.notification_id.clone(),
            user_id: d.user_id.clone(),
            template_name: d.template_name.clone(),
            channel: d.channel.clone(),
            target: d.target.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tracking token")]
pub struct InvalidToken;

/// Signs and verifies tracking tokens with one secret.
#[derive(Clone)]
pub struct LinkSigner {
    key: hmac::Key,
    /// Signs receipt tokens (derived from the same secret).
    receipt_key: hmac::Key,
    /// Where the gateway's HTTP side is reachable by users, e.g.
    /// `https://t.example.com`.
    public_url: String,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSigner")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

impl LinkSigner {
    pub fn new(secret: &str, public_url: &str) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        let receipt_key = hmac::Key::new(
            hmac::HMAC_SHA256,
            hmac::sign(&key, RECEIPT_KEY_LABEL).as_ref(),
        );
        Self {
            key,
            receipt_key,
            public_url: public_url.trim_end_matches('/').to_owned(),
        }
    }

    pub fn token(&self, target: &TrackedTarget) -> String {
        sign(&self.key, target)
    }

    pub fn verify(&self, token: &str) -> Result<TrackedTarget, InvalidToken> {
        verify(&self.key, token)
    }

    /// The receipt token of one delivery, for a provider to echo back.
    pub fn receipt_token(&self, delivery: &DeliveryRef) -> String {
        sign(&self.receipt_key, delivery)
    }

    /// The delivery a receipt token names, if this secret signed it.
    pub fn verify_receipt(&self, token: &str) -> Result<DeliveryRef, InvalidToken> {
        verify(&self.receipt_key, token)
    }

    /// The tracked URL that records a click and redirects to `target.url`.
    pub fn click_url(&self, target: &TrackedTarget) -> String {
        format!("{}/t/c/{}", self.public_url, self.token(target))
    }

    /// The URL of the 1x1 image that records an email open.
    pub fn open_pixel_url(&self, target: &TrackedTarget) -> String {
        format!("{}/t/o/{}", self.public_url, self.token(target))
    }
}

fn sign(key: &hmac::Key, value: &impl Serialize) -> String {
    // Serialising a struct of strings cannot fail.
    let json = serde_json::to_vec(value).unwrap_or_default();
    let tag = hmac::sign(key, &json);
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&json),
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    )
}

fn verify<T: for<'de> Deserialize<'de>>(key: &hmac::Key, token: &str) -> Result<T, InvalidToken> {
    let (body, tag) = token.split_once('.').ok_or(InvalidToken)?;
    let json = URL_SAFE_NO_PAD.decode(body).map_err(|_| InvalidToken)?;
    let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| InvalidToken)?;
    hmac::verify(key, &json, &tag).map_err(|_| InvalidToken)?;
    serde_json::from_slice(&json).map_err(|_| InvalidToken)
}

/// `url` with the receipt token added as the query parameter
/// [`RECEIPT_QUERY_PARAM`]. Tokens are base64url and `.`, so they need no
/// escaping.
pub fn with_receipt_token(url: &str, token: &str) -> String {
    let (url, fragment) = match url.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (url, None),
    };
    let sep = match url.contains('?') {
        false => "?",
        true if url.ends_with('?') || url.ends_with('&') => "",
        true => "&",
    };
    let mut out = format!("{url}{sep}{RECEIPT_QUERY_PARAM}={token}");
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> TrackedTarget {
        TrackedTarget {
            notification_id: "n".into(),
            user_id: "u".into(),
            template_name: Some("welcome".into()),
            channel: Some("email".into()),
            url: Some("https://example.com/a?b=c".into()),
        }
    }

    #[test]
    fn tokens_round_trip_and_resist_tampering() {
        let signer = LinkSigner::new("secret", "https://t.example.com/");
        let token = signer.token(&target());
        assert_eq!(signer.verify(&token).unwrap(), target());
        assert!(
            signer
                .click_url(&target())
                .starts_with("https://t.example.com/t/c/")
        );
        let mut forged = target();
        forged.url = Some("https://evil.example".into());
        let forged_body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let tag = token.split_once('.').unwrap().1;
        assert_eq!(
            signer.verify(&format!("{forged_body}.{tag}")),
            Err(InvalidToken)
        );
        assert_eq!(
            LinkSigner::new("other", "x").verify(&token),
            Err(InvalidToken)
        );
        assert_eq!(signer.verify("garbage"), Err(InvalidToken));
    }

    fn delivery() -> DeliveryRef {
        DeliveryRef {
            notification_id: "n".into(),
            user_id: "u".into(),
            template_name: Some("welcome".into()),
            channel: "sms".into(),
            target: "+14155550100".into(),
        }
    }

    #[test]
    fn receipt_tokens_round_trip_and_are_not_link_tokens() {
        let signer = LinkSigner::new("secret", "https://t.example.com");
        let token = signer.receipt_token(&delivery());
        assert_eq!(signer.verify_receipt(&token).unwrap(), delivery());
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "URL-safe: {token}"
        );
        // Different keys: neither kind of token passes for the other.
        assert_eq!(signer.verify(&token), Err(InvalidToken));
        let link = signer.token(&target());
        assert_eq!(signer.verify_receipt(&link), Err(InvalidToken));
        assert_eq!(
            LinkSigner::new("other", "x").verify_receipt(&token),
            Err(InvalidToken)
        );
        let mut forged = delivery();
        forged.target = "+14155550199".into();
        let forged_body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let tag = token.split_once('.').unwrap().1;
        assert_eq!(
            signer.verify_receipt(&format!("{forged_body}.{tag}")),
            Err(InvalidToken)
        );
    }

    #[test]
    fn receipt_tokens_join_any_callback_url() {
        assert_eq!(
            with_receipt_token("https://h.example/s", "T"),
            "https://h.example/s?d=T"
        );
        assert_eq!(
            with_receipt_token("https://h.example/s?x=1", "T"),
            "https://h.example/s?x=1&d=T"
        );
        assert_eq!(
            with_receipt_token("https://h.example/s?", "T"),
            "https://h.example/s?d=T"
        );
        assert_eq!(
            with_receipt_token("https://h.example/s#rc=5", "T"),
            "https://h.example/s?d=T#rc=5"
        );
    }
}
