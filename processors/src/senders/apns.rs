//! Apple Push Notification service: HTTP/2 to `{base_url}/3/device/{token}`
//! with token (JWT) authentication.
//!
//! Why not the a2 crate: a2 0.10's client reaches only Apple's two hosts and
//! pins the bundled webpki roots, so no local server can stand in for Apple
//! and tests would stop at a seam. Taking only its request and error types
//! would pull a second rustls (0.22) and hyper-rustls into the build for a
//! few lines of JSON, so the payload and the error reasons are written here
//! from Apple's documented format, and one transport with a configurable base
//! URL runs the same code in production (TLS, ALPN h2) and in tests (h2c).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use reqwest::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize, Serializer, ser::SerializeMap};
use serde_json::json;
use tidings_schemas::records::{Delivery, Priority};
use uuid::Uuid;

use super::{
    Provider, ProviderError, Receipt, Shown,
    http::{self, Endpoint, HttpSettings, HyperClient, Protocol},
    inbox::UnreadBadge,
    jwt::{JwtSigner, unix_now},
    setup::{Limiter, Secret, SendLimits, SetupError},
};

const NAME: &str = "apns";
/// Apple's limit for a regular (non-VoIP) notification payload.
const MAX_PAYLOAD: usize = 4096;

/// How to reach APNs and who we are to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// `https://api.push.apple.com`, or `https://api.sandbox.push.apple.com`
    /// for development builds of the app.
    #[serde(default = "ApnsConfig::default_base_url")]
    pub base_url: String,
    #[serde(default)]
    pub transport: ApnsTransport,
    /// The Apple developer team that owns the key (JWT `iss`).
    pub team_id: String,
    /// The signing key's id (JWT header `kid`).
    pub key_id: String,
    /// The `.p8` signing key: a file, or the PEM text itself (set one).
    #[serde(default)]
    pub key_path: Option<PathBuf>,
    #[serde(default)]
    pub key_pem: Option<Secret>,
    /// The app's bundle id, sent as `apns-topic`.
    pub topic: String,
    /// When to sign a fresh provider token. Apple rejects tokens older than
    /// an hour and answers 429 TooManyProviderTokenUpdates to tokens renewed
    /// more often than every 20 minutes.
    #[serde(default = "ApnsConfig::default_token_refresh_ms")]
    pub token_refresh_ms: u64,
    #[serde(default)]
    pub http: HttpSettings,
    /// One connection carries every request as an HTTP/2 stream; Apple caps
    /// streams per connection (its SETTINGS say how many, often 1000).
    #[serde(default = "ApnsConfig::default_limits")]
    pub limits: SendLimits,
}

impl ApnsConfig {
    fn default_base_url() -> String {
        "https://api.push.apple.com".into()
    }
    fn default_token_refresh_ms() -> u64 {
        50 * 60 * 1000
    }
    fn default_limits() -> SendLimits {
        SendLimits::new(100)
    }
}

/// How the HTTP/2 connection is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApnsTransport {
    /// TLS with ALPN `h2`, as Apple requires.
    #[default]
    Tls,
    /// HTTP/2 over plain TCP with prior knowledge: only for local
    /// APNs-compatible servers (tests, a local gateway).
    H2c,
}

struct ProviderToken {
    /// `Bearer <jwt>`, cloned into every request until it is refreshed.
    authorization: HeaderValue,
    issued: Instant,
}

pub struct ApnsProvider {
    client: HyperClient,
    /// `{base_url}/3/device`: a device token is its last path segment.
    device_url: Endpoint,
    topic: String,
    /// `topic` as the `apns-topic` header, checked and built once.
    topic_header: HeaderValue,
    team_id: String,
    key_id: String,
    signer: JwtSigner,
    token: Mutex<Option<ProviderToken>>,
    token_refresh: Duration,
    limiter: Limiter,
    /// `[inbox] push_badge`: where the `badge` comes from.
    badge: Option<UnreadBadge>,
}

impl ApnsProvider {
    /// Puts the user's unread inbox count in each push's `aps.badge`.
    pub fn with_unread_badge(mut self, badge: UnreadBadge) -> Self {
        self.badge = Some(badge);
        self
    }

    pub fn new(config: ApnsConfig) -> Result<Self, SetupError> {
        let pem = match (&config.key_path, &config.key_pem) {
            (Some(path), None) => SetupError::read(NAME, "key_path", path)?,
            (None, Some(pem)) => pem.expose().as_bytes().to_vec(),
            _ => {
                return Err(SetupError::new(
                    NAME,
                    "set exactly one of `key_path` and `key_pem`",
                ));
            }
        };
        let signer = JwtSigner::es256_from_pem(&pem)
            .map_err(|e| SetupError::new(NAME, format!("signing key: {e}")))?;
        for (key, value) in [
            ("team_id", &config.team_id),
            ("key_id", &config.key_id),
            ("topic", &config.topic),
        ] {
            if value.trim().is_empty() {
                return Err(SetupError::new(NAME, format!("`{key}` is empty")));
            }
        }
        if config.token_refresh_ms == 0 || config.token_refresh_ms >= 60 * 60 * 1000 {
            return Err(SetupError::new(
                NAME,
                "`token_refresh_ms` must be above 0 and below one hour",
            ));
        }
        let topic_header = HeaderValue::from_str(&config.topic).map_err(|_| {
            SetupError::new(
                NAME,
                format!("`topic` {:?} cannot be an HTTP header", config.topic),
            )
        })?;
        let base_url = config.base_url.trim_end_matches('/').to_string();
        match (config.transport, base_url.split_once("://").map(|(s, _)| s)) {
            (ApnsTransport::Tls, Some("https")) | (ApnsTransport::H2c, Some("http")) => {}
            (t, _) => {
                return Err(SetupError::new(
                    NAME,
                    format!(
                        "`base_url` {base_url} does not fit transport {t:?} (tls needs https://, h2c needs http://)"
                    ),
                ));
            }
        }
        Ok(Self {
            client: HyperClient::new(NAME, &config.http, Protocol::Http2Only)?,
            device_url: Endpoint::parse(NAME, "base_url", &format!("{base_url}/3/device"))?,
            topic: config.topic,
            topic_header,
            team_id: config.team_id,
            key_id: config.key_id,
            signer,
            token: Mutex::new(None),
            token_refresh: Duration::from_millis(config.token_refresh_ms),
            limiter: Limiter::new(NAME, &config.limits)?,
            badge: None,
        })
    }

    /// The cached provider token, signed anew once it is `token_refresh`
    /// old. Signing is microseconds, so holding the lock while signing is
    /// cheaper than letting concurrent sends each sign their own.
    fn bearer(&self) -> Result<HeaderValue, ProviderError> {
        let mut cached = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = cached
            .as_ref()
            .filter(|t| t.issued.elapsed() < self.token_refresh)
        {
            return Ok(t.authorization.clone());
        }
        let transient = |reason: String| ProviderError::Transient {
            reason: format!("{NAME}: provider token: {reason}"),
            retry_after: None,
        };
        let claims = json!({ "iss": self.team_id, "iat": unix_now() });
        let jwt = self
            .signer
            .sign(Some(&self.key_id), &claims)
            .map_err(|e| transient(e.to_string()))?;
        let authorization = http::bearer(&jwt).map_err(|e| transient(e.to_string()))?;
        *cached = Some(ProviderToken {
            authorization: authorization.clone(),
            issued: Instant::now(),
        });
        Ok(authorization)
    }

    /// Drops the cached token if it is still `authorization`, so the next
    /// send signs a new one (after APNs said ExpiredProviderToken).
    fn forget_token(&self, authorization: &HeaderValue) {
        let mut cached = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if cached
            .as_ref()
            .is_some_and(|t| t.authorization == authorization)
        {
            *cached = None;
        }
    }

    /// The headers that do not change between sends are built once (the
    /// token's and the topic's) or static; only the path and the ids are
    /// per delivery.
    fn request(&self, d: &Delivery, authorization: HeaderValue) -> ::http::request::Builder {
        let mut req = http::post(self.device_url.join(&d.target), authorization, http::JSON)
            .header(APNS_TOPIC, self.topic_header.clone())
            .header(APNS_PUSH_TYPE, HeaderValue::from_static("alert"))
            .header(
                APNS_PRIORITY,
                HeaderValue::from_static(if d.priority == Priority::High {
                    "10"
                } else {
                    "5"
                }),
            );
        // APNs answers 400 BadMessageId to anything but a UUID; our ids are
        // UUIDs, and if one is not, APNs picks its own id rather than the
        // notification failing.
        if let Ok(id) = Uuid::parse_str(&d.delivery_id) {
            let mut text = Uuid::encode_buffer();
            let text = id.hyphenated().encode_lower(&mut text);
            if let Ok(value) = HeaderValue::from_str(text) {
                req = req.header(APNS_ID, value);
            }
        }
        if let Some(c) = &d.collapse_id {
            req = req.header(APNS_COLLAPSE_ID, c);
        }
        if let Some(ms) = d.expires_at {
            // Seconds since the epoch; APNs stops retrying the device then.
            req = req.header(APNS_EXPIRATION, (ms.max(0) / 1000).to_string());
        }
        req
    }
}

// Header names made once, not parsed from text on every request.
const APNS_TOPIC: HeaderName = HeaderName::from_static("apns-topic");
const APNS_PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
const APNS_PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
const APNS_ID: HeaderName = HeaderName::from_static("apns-id");
const APNS_COLLAPSE_ID: HeaderName = HeaderName::from_static("apns-collapse-id");
const APNS_EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");

/// Device tokens are hex; anything else cannot be one, and must not reach
/// the URL path.
fn check_device_token(token: &str) -> Result<(), ProviderError> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ProviderError::InvalidTarget(format!(
            "{NAME}: `{}` is not a hex device token",
            http::short(token)
        )));
    }
    Ok(())
}

/// `{"aps":{"alert":{"title","body"},"badge":n}, ...data}`: custom data sits
/// beside `aps` at the top level, where the app reads it from `userInfo`;
/// `badge` (the app icon's number) only when one is given.
fn payload(d: &Delivery, badge: Option<u32>) -> Result<Vec<u8>, ProviderError> {
    let Some(alert) = Shown::of(d) else {
        return Err(ProviderError::Rejected(format!(
            "{NAME}: delivery {} has neither title nor body to show",
            d.delivery_id
        )));
    };
    let payload = Payload {
        data: &d.data,
        aps: Aps { alert, badge },
    };
    let bytes = serde_json::to_vec(&payload)
        .map_err(|e| ProviderError::Rejected(format!("{NAME}: payload: {e}")))?;
    if bytes.len() > MAX_PAYLOAD {
        return Err(ProviderError::Rejected(format!(
            "{NAME}: payload is {} bytes, APNs takes at most {MAX_PAYLOAD}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// The payload, serialised straight from the delivery's fields (no JSON
/// tree is built per send).
struct Payload<'a> {
    data: &'a BTreeMap<String, String>,
    aps: Aps<'a>,
}

impl Serialize for Payload<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        // `aps` is Apple's; a custom field of that name would collide.
        for (k, v) in self.data.iter().filter(|(k, _)| *k != "aps") {
            map.serialize_entry(k, v)?;
        }
        map.serialize_entry("aps", &self.aps)?;
        map.end()
    }
}

#[derive(Serialize)]
struct Aps<'a> {
    alert: Shown<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    badge: Option<u32>,
}

/// APNs' error body: `{"reason": "...", "timestamp": ms}` (timestamp on 410).
#[derive(Deserialize, Default)]
struct ApnsError {
    #[serde(default)]
    reason: String,
    timestamp: Option<i64>,
}

#[async_trait::async_trait]
impl Provider for ApnsProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn deliver(&self, d: &Delivery) -> Result<Receipt, ProviderError> {
        check_device_token(&d.target)?;
        let badge = match &self.badge {
            Some(b) => b.unread(&d.user_id).await,
            None => None,
        };
        let body = payload(d, badge)?;
        let _slot = self.limiter.acquire().await?;
        let authorization = self.bearer()?;
        let answer = self
            .client
            .send(self.request(d, authorization.clone()), body.into())
            .await?;
        let status = answer.status;
        if status.is_success() {
            let id = answer
                .headers
                .get(APNS_ID)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            return Ok(Receipt {
                provider_id: id.or_else(|| Some(d.delivery_id.clone())),
            });
        }
        // Only an error reads more than the id: Retry-After, on 429 and 5xx.
        let headers = &answer.headers;
        let text = answer.text();
        let err: ApnsError = serde_json::from_str(&text).unwrap_or_default();
        let reason = if err.reason.is_empty() {
            text.as_str()
        } else {
            err.reason.as_str()
        };
        let token = http::short(&d.target);
        Err(match (status.as_u16(), reason) {
            (410, _) => ProviderError::InvalidTarget(match err.timestamp {
                Some(ts) => format!(
                    "{NAME}: device token {token} is no longer active ({reason} since {ts} ms)"
                ),
                None => format!("{NAME}: device token {token} is no longer active ({reason})"),
            }),
            (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => {
                ProviderError::InvalidTarget(format!(
                    "{NAME}: device token {token}: {reason} (topic {})",
                    self.topic
                ))
            }
            (403, "ExpiredProviderToken") => {
                // Our clock or cache let the token age past an hour; a retry
                // signs a fresh one.
                self.forget_token(&authorization);
                http::transient_status(NAME, status, headers, reason)
            }
            (400, "BadTopic" | "TopicDisallowed" | "MissingTopic") => {
                ProviderError::Misconfigured {
                    setting: "providers.ios.topic",
                    reason: format!("{NAME}: {status} {reason} (topic {})", self.topic),
                }
            }
            // InvalidProviderToken, MissingProviderToken, BadCertificate,
            // Forbidden: our signing identity, not this notification.
            (403, _) => ProviderError::Misconfigured {
                setting: "providers.ios.team_id / providers.ios.key_id / providers.ios.key_path",
                reason: format!("{NAME}: {status} {reason} (topic {})", self.topic),
            },
            (429, _) | (500..=599, _) => http::transient_status(NAME, status, headers, reason),
            _ => ProviderError::Rejected(format!(
                "{NAME}: {status} {reason} for device token {token}"
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn the_badge_is_in_aps_only_when_given() {
        let d = Delivery {
            delivery_id: "d".into(),
            notification_id: "n".into(),
            event_id: "e".into(),
            user_id: "u".into(),
            channel: "ios".into(),
            target: "00aa".into(),
            category: None,
            template_name: None,
            template_version: None,
            locale: None,
            title: Some("Hi".into()),
            body: None,
            email_subject: None,
            email_html: None,
            email_text: None,
            data: [("badge".to_owned(), "not this".to_owned())].into(),
            collapse_id: None,
            priority: Priority::Normal,
            expires_at: None,
            accepted_at: 0,
            attempt: 0,
            not_before: None,
            last_error: None,
            action_url: None,
            avatar_url: None,
        };
        let json = |d: &Delivery, badge| -> Value {
            serde_json::from_slice(&payload(d, badge).unwrap()).unwrap()
        };
        let with = json(&d, Some(3));
        assert_eq!(with["aps"]["badge"], 3);
        assert_eq!(with["aps"]["alert"]["title"], "Hi");
        assert_eq!(with["badge"], "not this", "custom data stays beside aps");
        // Zero clears the app's badge; none leaves it as it is.
        assert_eq!(json(&d, Some(0))["aps"]["badge"], 0);
        assert!(json(&d, None)["aps"].get("badge").is_none());
        assert!(json(&d, None)["aps"]["alert"].get("body").is_none());
        let mut d = d;
        d.data.insert("aps".into(), "ours".into());
        assert_eq!(
            json(&d, None)["aps"]["alert"]["title"],
            "Hi",
            "a custom `aps` field does not replace Apple's"
        );
    }

    #[test]
    fn device_tokens_must_be_hex() {
        assert!(check_device_token("00aaFF").is_ok());
        assert!(matches!(
            check_device_token(""),
            Err(ProviderError::InvalidTarget(_))
        ));
        assert!(matches!(
            check_device_token("ab/../x"),
            Err(ProviderError::InvalidTarget(_))
        ));
    }
}
