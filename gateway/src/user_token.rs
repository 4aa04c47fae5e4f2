//! User bearer tokens: who `/v1/me/...` and `FeedService` act for.
//!
//! A token is a JWT signed with HS256 under `feed.user_token_secret`, with
//! the user id in `sub` and an expiry in `exp` (seconds since the epoch).
//! The company's own auth service mints them with any JWT library after its
//! users sign in; `tidings user token` mints one for development. Only
//! HS256 is accepted: the header cannot pick a weaker algorithm (`none`).
//!
//! Signed with ring, already linked for TLS (see processors/src/senders/
//! jwt.rs for why not the `jsonwebtoken` crate).

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::hmac;
use serde::{Deserialize, Serialize};

/// Clock skew tolerated between the minting service and the gateway.
const LEEWAY_SECS: i64 = 60;

/// Why a bearer token was refused. Every variant is the caller's to fix, so
/// none is retriable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token: send `authorization: Bearer <user token>`")]
    Missing,
    #[error("the bearer token is not a JWT: {0}")]
    Malformed(&'static str),
    #[error("the bearer token is signed with {0}; only HS256 is accepted")]
    Algorithm(String),
    #[error("the bearer token's signature does not verify")]
    Signature,
    #[error("the bearer token expired")]
    Expired,
    #[error("the bearer token is not valid yet")]
    NotYetValid,
    #[error("the bearer token names no user (`sub`)")]
    NoSubject,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
}

/// Mints and verifies user tokens with one secret.
#[derive(Clone)]
pub struct UserTokens {
    key: hmac::Key,
}

impl std::fmt::Debug for UserTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserTokens(..)")
    }
}

impl UserTokens {
    pub fn new(secret: &str) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        }
    }

    /// A token for `user_id`, valid for `ttl` from `now_secs`.
    pub fn mint(&self, user_id: &str, now_secs: i64, ttl: Duration) -> String {
        let header = Header {
            alg: "HS256".into(),
            typ: Some("JWT".into()),
        };
        let claims = Claims {
            sub: user_id.to_owned(),
            exp: Some(now_secs + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2)),
            nbf: None,
            iat: Some(now_secs),
        };
        let signing_input = format!("{}.{}", base64_json(&header), base64_json(&claims));
        let tag = hmac::sign(&self.key, signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The user id a token was minted for, if it verifies at `now_secs`.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<String, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("expected three dot-separated parts"));
        };
        let header: Header = decode_json(header, "the header is not base64url JSON with `alg`")?;
        if header.alg != "HS256" {
            return Err(TokenError::Algorithm(header.alg));
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed("the signature is not base64url"))?;
        let (signing_input, _) = token.rsplit_once('.').expect("three parts");
        hmac::verify(&self.key, signing_input.as_bytes(), &signature)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims = decode_json(claims, "the claims are not a base64url JSON object")?;
        // Saturating: the times are signed input, and i64::MAX/MIN must not overflow.
        match claims.exp {
            None => return Err(TokenError::Malformed("no expiry (`exp`)")),
            Some(exp) if exp.saturating_add(LEEWAY_SECS) <= now_secs => {
                return Err(TokenError::Expired);
            }
            Some(_) => {}
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf.saturating_sub(LEEWAY_SECS) > now_secs)
        {
            return Err(TokenError::NotYetValid);
        }
        if claims.sub.is_empty() {
            return Err(TokenError::NoSubject);
        }
        Ok(claims.sub)
    }
}

/// A token part: base64url JSON; `malformed` says which part failed.
fn decode_json<T: for<'de> Deserialize<'de>>(
    part: &str,
    malformed: &'static str,
) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed(malformed))?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed(malformed))
}

fn base64_json(part: &impl Serialize) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(part).expect("token parts serialise"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_780_000_000;

    fn tokens() -> UserTokens {
        UserTokens::new("s3cret")
    }

    #[test]
    fn a_minted_token_verifies_to_its_user() {
        let t = tokens().mint("u-1", NOW, Duration::from_secs(3600));
        assert_eq!(tokens().verify(&t, NOW + 10), Ok("u-1".into()));
    }

    #[test]
    fn expiry_wrong_key_and_tampering_are_refused() {
        let t = tokens().mint("u-1", NOW, Duration::from_secs(3600));
        assert_eq!(
            tokens().verify(&t, NOW + 3600 + LEEWAY_SECS),
            Err(TokenError::Expired)
        );
        assert_eq!(
            UserTokens::new("other").verify(&t, NOW),
            Err(TokenError::Signature)
        );
        // Another user's claims under the first token's signature.
        let other = tokens().mint("u-2", NOW, Duration::from_secs(3600));
        let forged = format!(
            "{}.{}.{}",
            t.split('.').next().unwrap(),
            other.split('.').nth(1).unwrap(),
            t.split('.').nth(2).unwrap()
        );
        assert_eq!(tokens().verify(&forged, NOW), Err(TokenError::Signature));
        assert!(matches!(
            tokens().verify("abc", NOW),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn the_none_algorithm_is_refused() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"u","exp":{}}}"#, NOW + 60));
        assert_eq!(
            tokens().verify(&format!("{header}.{claims}."), NOW),
            Err(TokenError::Algorithm("none".into()))
        );
    }

    /// A token minted elsewhere (PyJWT:
    /// `jwt.encode({"sub": "alice", "exp": 4102444800}, "s3cret", "HS256")`)
    /// verifies: the format is plain JWT.
    #[test]
    fn a_token_from_a_standard_jwt_library_verifies() {
        let t = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.qRlbyNdlm8NKK6qruixbCq_HGTQfHHpTaGzC9JqMqVM";
        assert_eq!(tokens().verify(t, NOW), Ok("alice".into()));
    }
}
