//! SMS through Twilio's Messages API (or any service that speaks it):
//! form-encoded `POST {base_url}/2010-04-01/Accounts/{sid}/Messages.json`
//! with basic auth.
//!
//! With `status_callback` set, each message's `StatusCallback` is that URL
//! plus the delivery's signed receipt token (`?d=<token>`), so Twilio's status
//! updates name the delivery and the gateway
//! (`POST /webhooks/twilio/status`) records DELIVERED or FAILED.

use reqwest::header::HeaderValue;
use serde::{Deserialize, Serialize};
use tidings_schemas::{
    records::Delivery,
    tracking_link::{DeliveryRef, LinkSigner, with_receipt_token},
};

use super::{
    Provider, ProviderError, Receipt,
    http::{self, Endpoint, HttpSettings, HyperClient, Protocol},
    setup::{Limiter, Secret, SendLimits, SetupError},
};

const NAME: &str = "twilio";

/// Twilio error codes that mean the number itself cannot receive: invalid
/// (21211, 21217, 21401), unreachable or unroutable (21214, 21612), not a
/// mobile number (21614), or the recipient replied STOP (21610).
const BAD_NUMBER_CODES: &[u64] = &[21211, 21214, 21217, 21401, 21610, 21612, 21614];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioConfig {
    /// `AC...`; also the basic-auth user.
    pub account_sid: String,
    pub auth_token: Secret,
    /// The sender: a number (`From`), or a messaging service that picks one
    /// (`MessagingServiceSid`). Set one.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// Where Twilio posts delivery status updates, if anywhere: the
    /// gateway's `https://<public host>/webhooks/twilio/status`. Each message
    /// gets this URL plus its own signed receipt token (`?d=<token>`).
    #[serde(default)]
    pub status_callback: Option<String>,
    #[serde(default = "TwilioConfig::default_base_url")]
    pub base_url: String,
    #[serde(default)]
    pub http: HttpSettings,
    #[serde(default = "TwilioConfig::default_limits")]
    pub limits: SendLimits,
}

impl TwilioConfig {
    fn default_base_url() -> String {
        "https://api.twilio.com".into()
    }
    fn default_limits() -> SendLimits {
        SendLimits::new(16)
    }
}

pub struct TwilioProvider {
    client: HyperClient,
    url: Endpoint,
    /// `Basic <account_sid:auth_token>`, built once.
    authorization: HeaderValue,
    sender: (&'static str, String),
    status_callback: Option<String>,
    /// Signs the receipt token of each delivery (`tracking.link_secret`).
    receipts: LinkSigner,
    limiter: Limiter,
}

impl TwilioProvider {
    /// `receipts` signs the token added to `status_callback`; the gateway
    /// verifies it with the same `tracking.link_secret`.
    pub fn new(config: TwilioConfig, receipts: LinkSigner) -> Result<Self, SetupError> {
        // The sid goes into the URL path.
        if config.account_sid.is_empty()
            || !config
                .account_sid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric())
        {
            return Err(SetupError::new(
                NAME,
                format!(
                    "`account_sid` {:?} is not an account sid",
                    config.account_sid
                ),
            ));
        }
        let sender = match (config.from, config.messaging_service_sid) {
            (Some(from), None) => ("From", from),
            (None, Some(sid)) => ("MessagingServiceSid", sid),
            _ => {
                return Err(SetupError::new(
                    NAME,
                    "set exactly one of `from` and `messaging_service_sid`",
                ));
            }
        };
        if let Some(cb) = &config.status_callback {
            let absolute = cb.starts_with("https://") || cb.starts_with("http://");
            if !absolute || cb.contains(char::is_whitespace) {
                return Err(SetupError::new(
                    NAME,
                    format!(
                        "`status_callback` {cb:?} is not an absolute http(s) URL (the gateway's https://<public host>/webhooks/twilio/status)"
                    ),
                ));
            }
        }
        Ok(Self {
            client: HyperClient::new(NAME, &config.http, Protocol::Negotiated)?,
            url: Endpoint::parse(
                NAME,
                "base_url",
                &format!(
                    "{}/2010-04-01/Accounts/{}/Messages.json",
                    config.base_url.trim_end_matches('/'),
                    config.account_sid
                ),
            )?,
            authorization: http::basic(&config.account_sid, config.auth_token.expose()),
            sender,
            status_callback: config.status_callback,
            receipts,
            limiter: Limiter::new(NAME, &config.limits)?,
        })
    }
}

/// Twilio's error body: `{"code": 21211, "message": "...", "more_info": "...", "status": 400}`.
#[derive(Deserialize, Default)]
struct TwilioError {
    code: Option<u64>,
    #[serde(default)]
    message: String,
}

#[async_trait::async_trait]
impl Provider for TwilioProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn deliver(&self, d: &Delivery) -> Result<Receipt, ProviderError> {
        let body = d.body.as_deref().filter(|b| !b.is_empty()).ok_or_else(|| {
            ProviderError::Rejected(format!("{NAME}: delivery {} has no text", d.delivery_id))
        })?;
        if d.target.trim().is_empty() {
            return Err(ProviderError::InvalidTarget(format!(
                "{NAME}: empty phone number"
            )));
        }
        let status_callback = self
            .status_callback
            .as_deref()
            .map(|url| with_receipt_token(url, &self.receipts.receipt_token(&DeliveryRef::of(d))));
        let mut form = vec![
            ("To", d.target.as_str()),
            ("Body", body),
            (self.sender.0, self.sender.1.as_str()),
        ];
        if let Some(cb) = &status_callback {
            form.push(("StatusCallback", cb));
        }
        let form = serde_urlencoded::to_string(&form)
            .map_err(|e| ProviderError::Rejected(format!("{NAME}: form: {e}")))?;
        let _slot = self.limiter.acquire().await?;
        let request = http::post(
            self.url.uri(),
            self.authorization.clone(),
            "application/x-www-form-urlencoded",
        );
        let resp = self.client.send(request, form.into()).await?;
        let status = resp.status;
        if status.is_success() {
            #[derive(Deserialize)]
            struct Created {
                sid: String,
            }
            let created: Created = serde_json::from_slice(&resp.body)
                // Twilio took the message; without its sid we still must not
                // send it twice, so this is a receipt without an id.
                .unwrap_or(Created { sid: String::new() });
            return Ok(Receipt {
                provider_id: Some(created.sid).filter(|s| !s.is_empty()),
            });
        }
        let headers = &resp.headers;
        let text = resp.text();
        let err: TwilioError = serde_json::from_str(&text).unwrap_or_default();
        let detail = match err.code {
            Some(code) => format!("error {code}: {}", err.message),
            None => text.clone(),
        };
        let number = http::short(&d.target);
        Err(match status.as_u16() {
            400 if err.code.is_some_and(|c| BAD_NUMBER_CODES.contains(&c)) => {
                ProviderError::InvalidTarget(format!("{NAME}: number {number}: {detail}"))
            }
            // The account's credentials or rights, not this message: hold
            // the channel until they are fixed.
            401 | 403 => ProviderError::Misconfigured {
                setting: "providers.sms.account_sid / providers.sms.auth_token",
                reason: format!("{NAME}: {status} {detail}"),
            },
            429 | 500..=599 => http::transient_status(NAME, status, headers, &detail),
            _ => ProviderError::Rejected(format!("{NAME}: {status} {detail} (to {number})")),
        })
    }
}
