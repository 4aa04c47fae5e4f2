//! Email through SendGrid's v3 Mail Send API: `POST {base_url}/v3/mail/send`
//! with a Bearer API key; 202 means accepted, and the `X-Message-Id` header
//! is what SendGrid's event webhooks will name the message by.
//!
//! Each personalization carries the delivery's signed receipt token in
//! `custom_args` (key `tidings_receipt`); SendGrid's Event Webhook echoes it
//! in every event, and the gateway (`POST /webhooks/sendgrid/events`) records
//! DELIVERED, or FAILED for a bounce or drop.

use reqwest::header::HeaderValue;
use serde::{Deserialize, Serialize, Serializer, ser::SerializeMap};
use tidings_schemas::{
    records::Delivery,
    tracking_link::{DeliveryRef, LinkSigner, RECEIPT_CUSTOM_ARG},
};

use super::{
    Provider, ProviderError, Receipt,
    http::{self, Endpoint, HttpSettings, HyperClient, Protocol},
    setup::{Limiter, Secret, SendLimits, SetupError},
};

const NAME: &str = "sendgrid";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendGridConfig {
    /// An API key with the `mail.send` scope.
    pub api_key: Secret,
    /// A verified sender address.
    pub from_email: String,
    #[serde(default)]
    pub from_name: Option<String>,
    #[serde(default)]
    pub reply_to: Option<String>,
    /// SendGrid validates but does not send: for staging environments.
    #[serde(default)]
    pub sandbox_mode: bool,
    #[serde(default = "SendGridConfig::default_base_url")]
    pub base_url: String,
    #[serde(default)]
    pub http: HttpSettings,
    #[serde(default = "SendGridConfig::default_limits")]
    pub limits: SendLimits,
    /// The Event Webhook's verification key (Mail Settings, Signed Event
    /// Webhook; base64): the gateway then refuses event batches that SendGrid
    /// did not sign.
    #[serde(default)]
    pub webhook_verification_key: Option<String>,
}

impl SendGridConfig {
    fn default_base_url() -> String {
        "https://api.sendgrid.com".into()
    }
    fn default_limits() -> SendLimits {
        SendLimits::new(32)
    }
}

pub struct SendGridProvider {
    client: HyperClient,
    url: Endpoint,
    /// `Bearer <api_key>`, built once.
    authorization: HeaderValue,
    from: Address,
    reply_to: Option<Address>,
    sandbox_mode: bool,
    /// Signs the receipt token of each delivery (`tracking.link_secret`).
    receipts: LinkSigner,
    limiter: Limiter,
}

impl SendGridProvider {
    /// `receipts` signs the token put into `custom_args`; the gateway
    /// verifies it with the same `tracking.link_secret`.
    pub fn new(config: SendGridConfig, receipts: LinkSigner) -> Result<Self, SetupError> {
        if !config.from_email.contains('@') {
            return Err(SetupError::new(
                NAME,
                format!("`from_email` {:?} is not an address", config.from_email),
            ));
        }
        let authorization = http::bearer(config.api_key.expose()).map_err(|_| {
            SetupError::new(NAME, "`api_key` cannot be an HTTP header (a line break?)")
        })?;
        Ok(Self {
            client: HyperClient::new(NAME, &config.http, Protocol::Negotiated)?,
            url: Endpoint::parse(
                NAME,
                "base_url",
                &format!("{}/v3/mail/send", config.base_url.trim_end_matches('/')),
            )?,
            authorization,
            from: Address {
                email: config.from_email,
                name: config.from_name,
            },
            reply_to: config.reply_to.map(|email| Address { email, name: None }),
            sandbox_mode: config.sandbox_mode,
            receipts,
            limiter: Limiter::new(NAME, &config.limits)?,
        })
    }

    /// The Mail Send body, serialised straight from the delivery's fields
    /// (no JSON tree is built per send).
    fn mail<'a>(&'a self, d: &'a Delivery) -> Result<Mail<'a>, ProviderError> {
        let subject = d
            .email_subject
            .as_deref()
            .or(d.title.as_deref())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ProviderError::Rejected(format!(
                    "{NAME}: delivery {} has no subject",
                    d.delivery_id
                ))
            })?;
        // SendGrid wants text/plain before text/html. With neither, the
        // push body is the best text we have.
        let mut content = Vec::with_capacity(2);
        if let Some(text) = d.email_text.as_deref().or(if d.email_html.is_none() {
            d.body.as_deref()
        } else {
            None
        }) {
            content.push(Content {
                kind: "text/plain",
                value: text,
            });
        }
        if let Some(html) = &d.email_html {
            content.push(Content {
                kind: "text/html",
                value: html,
            });
        }
        if content.is_empty() {
            return Err(ProviderError::Rejected(format!(
                "{NAME}: delivery {} has no content",
                d.delivery_id
            )));
        }
        Ok(Mail {
            personalizations: [Personalization {
                to: [To { email: &d.target }],
                custom_args: CustomArgs {
                    delivery_id: &d.delivery_id,
                    notification_id: &d.notification_id,
                    receipt: self.receipts.receipt_token(&DeliveryRef::of(d)),
                },
            }],
            from: &self.from,
            subject,
            content,
            reply_to: self.reply_to.as_ref(),
            mail_settings: self.sandbox_mode.then_some(MailSettings {
                sandbox_mode: Enable { enable: true },
            }),
        })
    }
}

#[derive(Serialize)]
struct Mail<'a> {
    personalizations: [Personalization<'a>; 1],
    from: &'a Address,
    subject: &'a str,
    content: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<&'a Address>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mail_settings: Option<MailSettings>,
}

#[derive(Serialize)]
struct Address {
    email: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

#[derive(Serialize)]
struct Personalization<'a> {
    to: [To<'a>; 1],
    custom_args: CustomArgs<'a>,
}

#[derive(Serialize)]
struct To<'a> {
    email: &'a str,
}

/// Echoed back in event webhooks, tying events to our ids; the signed
/// receipt token is what the gateway trusts.
struct CustomArgs<'a> {
    delivery_id: &'a str,
    notification_id: &'a str,
    receipt: String,
}

impl Serialize for CustomArgs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(3))?;
        map.serialize_entry("delivery_id", self.delivery_id)?;
        map.serialize_entry("notification_id", self.notification_id)?;
        map.serialize_entry(RECEIPT_CUSTOM_ARG, &self.receipt)?;
        map.end()
    }
}

#[derive(Serialize)]
struct Content<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    value: &'a str,
}

#[derive(Serialize)]
struct MailSettings {
    sandbox_mode: Enable,
}

#[derive(Serialize)]
struct Enable {
    enable: bool,
}

/// SendGrid's error body: `{"errors": [{"message", "field", "help"}]}`.
#[derive(Deserialize, Default)]
struct SendGridErrors {
    #[serde(default)]
    errors: Vec<SendGridError>,
}

#[derive(Deserialize)]
struct SendGridError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    field: Option<String>,
}

#[async_trait::async_trait]
impl Provider for SendGridProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn deliver(&self, d: &Delivery) -> Result<Receipt, ProviderError> {
        if !d.target.contains('@') {
            return Err(ProviderError::InvalidTarget(format!(
                "{NAME}: `{}` is not an email address",
                http::short(&d.target)
            )));
        }
        let mail = self.mail(d)?;
        let _slot = self.limiter.acquire().await?;
        let body = serde_json::to_vec(&mail)
            .map_err(|e| ProviderError::Rejected(format!("{NAME}: mail: {e}")))?;
        let request = http::post(self.url.uri(), self.authorization.clone(), http::JSON);
        let resp = self.client.send(request, body.into()).await?;
        let status = resp.status;
        if status.is_success() {
            let id = resp
                .headers
                .get("x-message-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            return Ok(Receipt { provider_id: id });
        }
        // Only an error reads more than the id: the rate-limit headers.
        let headers = &resp.headers;
        let text = resp.text();
        let errs: SendGridErrors = serde_json::from_str(&text).unwrap_or_default();
        let detail = if errs.errors.is_empty() {
            text.clone()
        } else {
            errs.errors
                .iter()
                .map(|e| match &e.field {
                    Some(f) => format!("{f}: {}", e.message),
                    None => e.message.clone(),
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        // A 400 that blames only the recipient's address is about the
        // target; any other 400 is about the message.
        let blames_recipient = !errs.errors.is_empty()
            && errs.errors.iter().all(|e| {
                e.field.as_deref().is_some_and(|f| {
                    f.starts_with("personalizations") && f.contains(".to") && f.ends_with(".email")
                })
            });
        Err(match status.as_u16() {
            400 if blames_recipient => ProviderError::InvalidTarget(format!(
                "{NAME}: recipient {}: {detail}",
                http::short(&d.target)
            )),
            401 => ProviderError::Misconfigured {
                setting: "providers.email.api_key",
                reason: format!("{NAME}: {status} {detail}"),
            },
            // A key without the mail.send permission, or a sender identity
            // SendGrid has not verified.
            403 => ProviderError::Misconfigured {
                setting: "providers.email.api_key (mail.send) / providers.email.from_email (a verified sender)",
                reason: format!("{NAME}: {status} {detail}"),
            },
            429 | 500..=599 => match http::transient_status(NAME, status, headers, &detail) {
                // SendGrid's 429 names the end of the rate-limit window in
                // X-RateLimit-Reset (epoch seconds) rather than Retry-After.
                ProviderError::Transient {
                    reason,
                    retry_after: None,
                } => ProviderError::Transient {
                    reason,
                    retry_after: rate_limit_reset(headers),
                },
                other => other,
            },
            _ => ProviderError::Rejected(format!("{NAME}: {status} {detail}")),
        })
    }
}

fn rate_limit_reset(headers: &reqwest::header::HeaderMap) -> Option<std::time::Duration> {
    let reset: u64 = headers
        .get("x-ratelimit-reset")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(std::time::Duration::from_secs(
        reset.saturating_sub(super::jwt::unix_now()),
    ))
}
