//! Firebase Cloud Messaging, HTTP v1 API: `POST
//! {base_url}/v1/projects/{project}/messages:send` with an OAuth2 access
//! token that a service account gets through the JWT bearer grant at its
//! own `token_uri`.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use bytes::Bytes;
use reqwest::{StatusCode, header::HeaderValue};
use serde::{Deserialize, Serialize, Serializer, ser::SerializeMap};
use serde_json::{Value, json};
use tidings_schemas::records::{Delivery, Priority};
use tokio::sync::Mutex;

use super::{
    Provider, ProviderError, Receipt, Shown,
    http::{self, Answer, Endpoint, HttpSettings, HyperClient, Protocol},
    inbox::UnreadBadge,
    jwt::{JwtSigner, unix_now},
    setup::{Limiter, Secret, SendLimits, SetupError},
};

const NAME: &str = "fcm";
/// The setting to fix when Google refuses our credentials.
const SERVICE_ACCOUNT: &str =
    "providers.android.service_account_path / providers.android.service_account_json";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Refresh this long before Google says a token expires, so a token does
/// not expire between our check and FCM's.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// The service-account JSON downloaded from the Firebase console: a
    /// file, or its text (set one).
    #[serde(default)]
    pub service_account_path: Option<PathBuf>,
    #[serde(default)]
    pub service_account_json: Option<Secret>,
    /// Defaults to the service account's `project_id`.
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default = "FcmConfig::default_base_url")]
    pub base_url: String,
    #[serde(default)]
    pub http: HttpSettings,
    #[serde(default = "FcmConfig::default_limits")]
    pub limits: SendLimits,
}

impl FcmConfig {
    fn default_base_url() -> String {
        "https://fcm.googleapis.com".into()
    }
    fn default_limits() -> SendLimits {
        SendLimits::new(64)
    }
}

/// The fields of a Google service-account key file that the grant uses.
#[derive(Deserialize)]
struct ServiceAccount {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    token_uri: String,
    #[serde(default)]
    project_id: Option<String>,
}

struct AccessToken {
    /// `Bearer <token>`, cloned into every send until it expires.
    authorization: HeaderValue,
    /// When to stop using it (Google's expiry less the margin).
    until: Instant,
}

pub struct FcmProvider {
    /// The sends' client.
    client: HyperClient,
    /// The token endpoint's: another host, rarely used, form-encoded.
    token_client: reqwest::Client,
    send_url: Endpoint,
    token_uri: String,
    client_email: String,
    key_id: Option<String>,
    signer: JwtSigner,
    /// An async lock: one task fetches a new token while the others wait
    /// for it instead of each asking Google for their own.
    token: Mutex<Option<AccessToken>>,
    limiter: Limiter,
    /// `[inbox] push_badge`: where the `unread_count` data field comes from.
    badge: Option<UnreadBadge>,
}

/// The data field carrying the user's unread inbox count (`[inbox]
/// push_badge`): Android has no badge number in the notification itself, so
/// the app sets its launcher badge from this.
pub const UNREAD_COUNT_FIELD: &str = "unread_count";

impl FcmProvider {
    /// Puts the user's unread inbox count in each message's data as
    /// [`UNREAD_COUNT_FIELD`].
    pub fn with_unread_badge(mut self, badge: UnreadBadge) -> Self {
        self.badge = Some(badge);
        self
    }

    pub fn new(config: FcmConfig) -> Result<Self, SetupError> {
        let raw = match (&config.service_account_path, &config.service_account_json) {
            (Some(path), None) => SetupError::read(NAME, "service_account_path", path)?,
            (None, Some(json)) => json.expose().as_bytes().to_vec(),
            _ => {
                return Err(SetupError::new(
                    NAME,
                    "set exactly one of `service_account_path` and `service_account_json`",
                ));
            }
        };
        let sa: ServiceAccount = serde_json::from_slice(&raw)
            .map_err(|e| SetupError::new(NAME, format!("service account JSON: {e}")))?;
        let signer = JwtSigner::rs256_from_pem(sa.private_key.as_bytes())
            .map_err(|e| SetupError::new(NAME, format!("service account private_key: {e}")))?;
        let project = config
            .project_id
            .or(sa.project_id)
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| {
                SetupError::new(NAME, "no `project_id` in the config or the service account")
            })?;
        if !project
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':')
        {
            return Err(SetupError::new(
                NAME,
                format!("`project_id` {project:?} is not a project id"),
            ));
        }
        Ok(Self {
            client: HyperClient::new(NAME, &config.http, Protocol::Negotiated)?,
            token_client: http::build_client(NAME, &config.http, Protocol::Negotiated)?,
            send_url: Endpoint::parse(
                NAME,
                "base_url",
                &format!(
                    "{}/v1/projects/{project}/messages:send",
                    config.base_url.trim_end_matches('/')
                ),
            )?,
            token_uri: sa.token_uri,
            client_email: sa.client_email,
            key_id: sa.private_key_id,
            signer,
            token: Mutex::new(None),
            limiter: Limiter::new(NAME, &config.limits)?,
            badge: None,
        })
    }

    /// The cached access token, or a new one from the token endpoint.
    async fn access_token(&self) -> Result<HeaderValue, ProviderError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref().filter(|t| Instant::now() < t.until) {
            return Ok(t.authorization.clone());
        }
        let fresh = self.fetch_token().await?;
        let authorization = fresh.authorization.clone();
        *cached = Some(fresh);
        Ok(authorization)
    }

    /// Drops the cached token if it is still `stale` (FCM said 401 to it);
    /// a concurrent send may already have replaced it.
    async fn forget_token(&self, stale: &HeaderValue) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|t| t.authorization == stale) {
            *cached = None;
        }
    }

    /// RFC 7523 JWT bearer grant, as Google's service accounts use it.
    async fn fetch_token(&self) -> Result<AccessToken, ProviderError> {
        let transient = |reason: String, retry_after| ProviderError::Transient {
            reason,
            retry_after,
        };
        let iat = unix_now();
        let claims = json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat + 3600,
        });
        let assertion = self
            .signer
            .sign(self.key_id.as_deref(), &claims)
            .map_err(|e| transient(format!("{NAME}: token grant: {e}"), None))?;
        let resp = self
            .token_client
            .post(&self.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| http::send_failed("fcm token endpoint", &e))?;
        let status = resp.status();
        let retry_after = http::retry_after(resp.headers());
        if !status.is_success() {
            let text = http::body_text(resp).await;
            let reason = format!(
                "{NAME}: token endpoint {} answered {status} for {}: {text}",
                self.token_uri, self.client_email
            );
            // A 400/401/403 here (invalid_grant, unauthorized_client) means
            // the service account is wrong or disabled: the deliveries are
            // fine and are held until the key is fixed. 429 and 5xx pass.
            return Err(match status.as_u16() {
                400 | 401 | 403 => ProviderError::Misconfigured {
                    setting: SERVICE_ACCOUNT,
                    reason,
                },
                _ => transient(reason, retry_after),
            });
        }
        #[derive(Deserialize)]
        struct Grant {
            access_token: String,
            expires_in: u64,
        }
        let grant: Grant = resp.json().await.map_err(|e| {
            transient(
                format!(
                    "{NAME}: token endpoint {} answer unreadable: {}",
                    self.token_uri,
                    http::chain(&e)
                ),
                None,
            )
        })?;
        let authorization = http::bearer(&grant.access_token).map_err(|_| {
            transient(
                format!(
                    "{NAME}: token endpoint {} answered an access token that cannot be an HTTP header",
                    self.token_uri
                ),
                None,
            )
        })?;
        let lifetime = Duration::from_secs(grant.expires_in).saturating_sub(EXPIRY_MARGIN);
        Ok(AccessToken {
            authorization,
            until: Instant::now() + lifetime,
        })
    }

    async fn send(&self, body: Bytes, authorization: HeaderValue) -> Result<Answer, ProviderError> {
        let request = http::post(self.send_url.uri(), authorization, http::JSON);
        self.client.send(request, body).await
    }
}

/// `{"message": {token, notification, data, android}}`; `unread` (the badge)
/// goes in `data` as [`UNREAD_COUNT_FIELD`], over a field of that name the
/// caller sent. Serialised straight from the delivery's fields (no JSON
/// tree is built per send).
fn message(d: &Delivery, unread: Option<u32>) -> Result<Message<'_>, ProviderError> {
    // Tokens are opaque but never blank or spaced; catching that here saves
    // a round trip and names the real problem.
    if d.target.trim().is_empty() || d.target.contains(char::is_whitespace) {
        return Err(ProviderError::InvalidTarget(format!(
            "{NAME}: `{}` is not a registration token",
            http::short(&d.target)
        )));
    }
    // Without title and body it is a data message, which FCM accepts.
    let notification = Shown::of(d);
    // FCM keeps the message for an offline device this long.
    let ttl = d.expires_at.map(|expires_at| {
        let now = i64::try_from(unix_now())
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        format!("{}s", (expires_at - now).max(0) / 1000)
    });
    Ok(Message {
        message: MessageBody {
            token: &d.target,
            notification,
            data: Data {
                fields: &d.data,
                unread: unread.map(|n| n.to_string()),
            },
            android: Android {
                priority: if d.priority == Priority::High {
                    "HIGH"
                } else {
                    "NORMAL"
                },
                collapse_key: d.collapse_id.as_deref(),
                ttl,
            },
        },
    })
}

#[derive(Serialize)]
struct Message<'a> {
    message: MessageBody<'a>,
}

#[derive(Serialize)]
struct MessageBody<'a> {
    token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    notification: Option<Shown<'a>>,
    #[serde(skip_serializing_if = "Data::is_empty")]
    data: Data<'a>,
    android: Android<'a>,
}

/// The caller's data fields, and the unread count in place of any field of
/// its name.
struct Data<'a> {
    fields: &'a BTreeMap<String, String>,
    unread: Option<String>,
}

impl Data<'_> {
    fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.unread.is_none()
    }
}

impl Serialize for Data<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (k, v) in self.fields {
            if !(self.unread.is_some() && k == UNREAD_COUNT_FIELD) {
                map.serialize_entry(k, v)?;
            }
        }
        if let Some(n) = &self.unread {
            map.serialize_entry(UNREAD_COUNT_FIELD, n)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct Android<'a> {
    priority: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    collapse_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
}

/// Google's error body: `{"error": {code, message, status, details: [...]}}`
/// where an `FcmError` detail carries `errorCode` and a `BadRequest` detail
/// names the offending fields.
#[derive(Deserialize, Default)]
struct GoogleError {
    #[serde(default)]
    error: GoogleErrorBody,
}

#[derive(Deserialize, Default)]
struct GoogleErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<Value>,
}

impl GoogleErrorBody {
    fn fcm_error_code(&self) -> Option<&str> {
        self.details
            .iter()
            .find_map(|d| d.get("errorCode").and_then(Value::as_str))
    }

    /// Whether an INVALID_ARGUMENT is about the registration token rather
    /// than the message.
    fn blames_token(&self) -> bool {
        let field_is_token = self.details.iter().any(|d| {
            d.get("fieldViolations")
                .and_then(Value::as_array)
                .is_some_and(|v| {
                    v.iter()
                        .any(|f| f.get("field").and_then(Value::as_str) == Some("message.token"))
                })
        });
        field_is_token
            || self
                .message
                .to_ascii_lowercase()
                .contains("registration token")
    }
}

fn classify(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    text: &str,
    target: &str,
) -> ProviderError {
    let body = serde_json::from_str::<GoogleError>(text)
        .map(|e| e.error)
        .unwrap_or_default();
    let code = body.fcm_error_code().unwrap_or(&body.status);
    let detail = if body.message.is_empty() {
        text.to_string()
    } else {
        format!("{code}: {}", body.message)
    };
    let token = http::short(target);
    match (status.as_u16(), code) {
        (_, "UNREGISTERED") | (_, "SENDER_ID_MISMATCH") => {
            ProviderError::InvalidTarget(format!("{NAME}: registration token {token}: {detail}"))
        }
        (400, "INVALID_ARGUMENT") if body.blames_token() => {
            ProviderError::InvalidTarget(format!("{NAME}: registration token {token}: {detail}"))
        }
        (429, _) | (500..=599, _) => http::transient_status(NAME, status, headers, &detail),
        // PERMISSION_DENIED: the service account has no FCM rights on the
        // project, which no message can fix.
        (401 | 403, _) => ProviderError::Misconfigured {
            setting: SERVICE_ACCOUNT,
            reason: format!("{NAME}: {status} {detail}"),
        },
        _ => ProviderError::Rejected(format!("{NAME}: {status} {detail}")),
    }
}

#[async_trait::async_trait]
impl Provider for FcmProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn deliver(&self, d: &Delivery) -> Result<Receipt, ProviderError> {
        let unread = match &self.badge {
            Some(b) => b.unread(&d.user_id).await,
            None => None,
        };
        let body: Bytes = serde_json::to_vec(&message(d, unread)?)
            .map_err(|e| ProviderError::Rejected(format!("{NAME}: message: {e}")))?
            .into();
        let _slot = self.limiter.acquire().await?;
        let mut token = self.access_token().await?;
        let mut resp = self.send(body.clone(), token.clone()).await?;
        if resp.status == StatusCode::UNAUTHORIZED {
            // Revoked or expired early: one fresh token, then give up for now.
            self.forget_token(&token).await;
            token = self.access_token().await?;
            resp = self.send(body, token).await?;
            if resp.status == StatusCode::UNAUTHORIZED {
                let text = resp.text();
                return Err(ProviderError::Misconfigured {
                    setting: SERVICE_ACCOUNT,
                    reason: format!("{NAME}: 401 even with a fresh access token: {text}"),
                });
            }
        }
        let status = resp.status;
        if status.is_success() {
            #[derive(Deserialize)]
            struct Sent {
                name: String,
            }
            // The answer is `{"name": "projects/p/messages/0:..."}`; the
            // message is accepted even if we cannot read its id.
            let id = serde_json::from_slice::<Sent>(&resp.body)
                .ok()
                .map(|s| s.name);
            return Ok(Receipt { provider_id: id });
        }
        Err(classify(status, &resp.headers, &resp.text(), &d.target))
    }
}

#[cfg(test)]
mod tests {
    use reqwest::{StatusCode, header::HeaderMap};

    use super::*;

    #[test]
    fn the_unread_count_is_a_data_field_only_when_given() {
        let d = Delivery {
            delivery_id: "d".into(),
            notification_id: "n".into(),
            event_id: "e".into(),
            user_id: "u".into(),
            channel: "android".into(),
            target: "token".into(),
            category: None,
            template_name: None,
            template_version: None,
            locale: None,
            title: Some("Hi".into()),
            body: None,
            email_subject: None,
            email_html: None,
            email_text: None,
            data: Default::default(),
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
        let json =
            |d: &Delivery, unread| serde_json::to_value(message(d, unread).unwrap()).unwrap();
        let with = json(&d, Some(4));
        // FCM data values are strings.
        assert_eq!(with["message"]["data"][UNREAD_COUNT_FIELD], "4");
        assert_eq!(with["message"]["notification"]["title"], "Hi");
        assert!(with["message"]["notification"].get("body").is_none());
        assert_eq!(with["message"]["android"]["priority"], "NORMAL");
        assert!(with["message"]["android"].get("ttl").is_none());
        let without = json(&d, None);
        assert!(without["message"].get("data").is_none());
        let mut d = d;
        d.data.insert(UNREAD_COUNT_FIELD.into(), "theirs".into());
        d.data.insert("k".into(), "v".into());
        assert_eq!(
            json(&d, Some(2))["message"]["data"][UNREAD_COUNT_FIELD],
            "2"
        );
        assert_eq!(json(&d, Some(2))["message"]["data"]["k"], "v");
        assert_eq!(
            json(&d, None)["message"]["data"][UNREAD_COUNT_FIELD],
            "theirs"
        );
    }

    #[test]
    fn invalid_argument_is_about_the_token_only_when_it_says_so() {
        let h = HeaderMap::new();
        let token = r#"{"error":{"code":400,"message":"The registration token is not a valid FCM registration token","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"INVALID_ARGUMENT"}]}}"#;
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, &h, token, "t"),
            ProviderError::InvalidTarget(_)
        ));
        let field = r#"{"error":{"code":400,"message":"Invalid value","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"message.data[0].key","description":"reserved"}]}]}}"#;
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, &h, field, "t"),
            ProviderError::Rejected(_)
        ));
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY, &h, "<html>", "t"),
            ProviderError::Transient { .. }
        ));
    }
}
