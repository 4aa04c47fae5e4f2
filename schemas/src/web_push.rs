//! A browser's push subscription as tidings stores it: the device token of a
//! `web` device is the subscription's JSON in the browser's own
//! `PushSubscription.toJSON()` shape,
//! `{"endpoint":"https://...","keys":{"p256dh":"...","auth":"..."}}`.
//!
//! The token carries the keys because a delivery carries only its target:
//! the web push sender encrypts to `p256dh` and `auth` (RFC 8291) without a
//! store lookup per message, and a tombstone (`invalidate_device`) names the
//! same token the enricher read. The gateway checks a subscription with
//! [`WebSubscription::new`] before storing it; the sender parses it back with
//! [`WebSubscription::from_token`].

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

/// Endpoints are URLs the sender POSTs to; push services' are well under this.
pub const MAX_ENDPOINT_BYTES: usize = 2048;

/// What is wrong with a subscription, and in which of its fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SubscriptionError {
    /// `endpoint`, `p256dh`, `auth`, or `token` for the whole JSON.
    pub field: &'static str,
    pub problem: String,
}

fn bad(field: &'static str, problem: impl Into<String>) -> SubscriptionError {
    SubscriptionError {
        field,
        problem: problem.into(),
    }
}

/// A checked subscription: `p256dh` decodes to a 65-byte uncompressed P-256
/// point encoding and `auth` to 16 bytes (RFC 8291 section 3.2). Whether the
/// point is on the curve is left to the sender, which has the curve
/// arithmetic; a key that is not is an invalid target there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSubscription {
    pub endpoint: String,
    /// The subscriber's public key, as sent (base64url).
    pub p256dh: String,
    /// The subscriber's authentication secret, as sent (base64url).
    pub auth: String,
}

#[derive(Serialize, Deserialize)]
struct Json {
    endpoint: String,
    keys: Keys,
}

#[derive(Serialize, Deserialize)]
struct Keys {
    p256dh: String,
    auth: String,
}

/// Browsers send base64url without padding; some libraries add `=` padding.
pub fn decode_b64url(value: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(value.trim_end_matches('=')).ok()
}

impl WebSubscription {
    /// Checks a subscription. `http://` endpoints are taken only when
    /// `allow_loopback_http` is set and the host is a loopback address (a
    /// local push-service stand-in); a real push service is always https.
    pub fn new(
        endpoint: &str,
        p256dh: &str,
        auth: &str,
        allow_loopback_http: bool,
    ) -> Result<Self, SubscriptionError> {
        check_endpoint(endpoint, allow_loopback_http)?;
        match decode_b64url(p256dh) {
            Some(key) if key.len() == 65 && key[0] == 0x04 => {}
            Some(key) => {
                return Err(bad(
                    "p256dh",
                    format!(
                        "decodes to {} bytes; an uncompressed P-256 public key is 65 bytes starting with 0x04",
                        key.len()
                    ),
                ));
            }
            None => return Err(bad("p256dh", "is not base64url")),
        }
        match decode_b64url(auth) {
            Some(secret) if secret.len() == 16 => {}
            Some(secret) => {
                return Err(bad(
                    "auth",
                    format!(
                        "decodes to {} bytes; the authentication secret is 16",
                        secret.len()
                    ),
                ));
            }
            None => return Err(bad("auth", "is not base64url")),
        }
        Ok(Self {
            endpoint: endpoint.to_owned(),
            p256dh: p256dh.to_owned(),
            auth: auth.to_owned(),
        })
    }

    /// The device token to store: the subscription's JSON.
    pub fn to_token(&self) -> String {
        let json = Json {
            endpoint: self.endpoint.clone(),
            keys: Keys {
                p256dh: self.p256dh.clone(),
                auth: self.auth.clone(),
            },
        };
        // Strings only: serializing cannot fail.
        serde_json::to_string(&json).unwrap_or_default()
    }

    /// Reads a stored token back, checking it as [`new`](Self::new) does.
    pub fn from_token(token: &str, allow_loopback_http: bool) -> Result<Self, SubscriptionError> {
        let json: Json = serde_json::from_str(token).map_err(|e| {
            bad(
                "token",
                format!(
                    "is not a push subscription ({{\"endpoint\", \"keys\": {{\"p256dh\", \"auth\"}}}}): {e}"
                ),
            )
        })?;
        Self::new(
            &json.endpoint,
            &json.keys.p256dh,
            &json.keys.auth,
            allow_loopback_http,
        )
    }
}

fn check_endpoint(endpoint: &str, allow_loopback_http: bool) -> Result<(), SubscriptionError> {
    if endpoint.len() > MAX_ENDPOINT_BYTES {
        return Err(bad(
            "endpoint",
            format!("is longer than {MAX_ENDPOINT_BYTES} bytes"),
        ));
    }
    let url =
        reqwest::Url::parse(endpoint).map_err(|e| bad("endpoint", format!("not a URL: {e}")))?;
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err(bad("endpoint", "has no host"));
    };
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_loopback_http && loopback => Ok(()),
        "http" if allow_loopback_http => Err(bad(
            "endpoint",
            "must be https:// (http:// only to a loopback address)",
        )),
        _ => Err(bad("endpoint", "must be an https:// URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P256DH: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";

    #[test]
    fn subscriptions_round_trip_through_the_token() {
        let s =
            WebSubscription::new("https://push.example/abc", P256DH, AUTH, false).expect("valid");
        let token = s.to_token();
        assert!(token.starts_with(r#"{"endpoint":"https://push.example/abc","keys":{"#));
        assert_eq!(WebSubscription::from_token(&token, false), Ok(s));
        // Padded base64url is taken too.
        assert!(
            WebSubscription::new(
                "https://p.example/",
                P256DH,
                "BTBZMqHH6r4Tts7J_aSIgg==",
                false
            )
            .is_ok()
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let field = |e: &str, k: &str, a: &str, lo: bool| {
            WebSubscription::new(e, k, a, lo).err().map(|e| e.field)
        };
        assert_eq!(
            field("http://push.example/x", P256DH, AUTH, false),
            Some("endpoint")
        );
        assert_eq!(
            field("http://push.example/x", P256DH, AUTH, true),
            Some("endpoint")
        );
        assert_eq!(
            field("http://127.0.0.1:9/x", P256DH, AUTH, false),
            Some("endpoint")
        );
        assert_eq!(field("http://127.0.0.1:9/x", P256DH, AUTH, true), None);
        assert_eq!(
            field("ftp://push.example/x", P256DH, AUTH, true),
            Some("endpoint")
        );
        assert_eq!(field("not a url", P256DH, AUTH, false), Some("endpoint"));
        assert_eq!(
            field("https://p.example/", "BTBZMqHH6r4Tts7J_aSIgg", AUTH, false),
            Some("p256dh")
        );
        assert_eq!(
            field("https://p.example/", "!!", AUTH, false),
            Some("p256dh")
        );
        assert_eq!(
            field("https://p.example/", P256DH, P256DH, false),
            Some("auth")
        );
        assert_eq!(
            WebSubscription::from_token("https://p.example/", false)
                .err()
                .map(|e| e.field),
            Some("token")
        );
    }
}
