//! Tracking links and open pixels: signed tokens the enricher puts into
//! rendered content and the gateway verifies when a user clicks or opens.
//!
//! A token is `base64url(json) "." base64url(HMAC-SHA256(secret, json))`.
//! The JSON names the notification, the user, the template and, for a click,
//! the destination, so the gateway needs no look-up to record the event and
//! redirect, and nobody can forge events or turn it into an open redirect.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::hmac;
use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tracking token")]
pub struct InvalidToken;

/// Signs and verifies tracking tokens with one secret.
#[derive(Clone)]
pub struct LinkSigner {
    key: hmac::Key,
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
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
            public_url: public_url.trim_end_matches('/').to_owned(),
        }
    }

    pub fn token(&self, target: &TrackedTarget) -> String {
        // Serialising a struct of strings cannot fail.
        let json = serde_json::to_vec(target).unwrap_or_default();
        let tag = hmac::sign(&self.key, &json);
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&json),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    pub fn verify(&self, token: &str) -> Result<TrackedTarget, InvalidToken> {
        let (body, tag) = token.split_once('.').ok_or(InvalidToken)?;
        let json = URL_SAFE_NO_PAD.decode(body).map_err(|_| InvalidToken)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| InvalidToken)?;
        hmac::verify(&self.key, &json, &tag).map_err(|_| InvalidToken)?;
        serde_json::from_slice(&json).map_err(|_| InvalidToken)
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
}
