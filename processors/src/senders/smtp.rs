//! Email over SMTP to a relay (a company mail server, SES/Mailgun/Postmark
//! SMTP endpoints, a local Postfix), through lettre's pooled async
//! transport with rustls over ring.

use std::{path::PathBuf, time::Duration};

use lettre::{
    Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, MultiPart, SinglePart},
    transport::smtp::{
        PoolConfig,
        authentication::Credentials,
        client::{Certificate, Tls, TlsParameters},
        extension::ClientId,
    },
};
use serde::{Deserialize, Serialize};
use tidings_schemas::records::Delivery;

use super::{
    Provider, ProviderError, Receipt,
    http::short,
    setup::{Limiter, Secret, SendLimits, SetupError},
};

const NAME: &str = "smtp";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    /// Defaults by `security`: 587 for starttls, 465 for tls, 25 for none.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub security: SmtpSecurity,
    /// Set both, or neither for an open relay.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// The sender mailbox, e.g. `Tidings <noreply@example.com>`.
    pub from: String,
    #[serde(default)]
    pub reply_to: Option<String>,
    /// The name we greet with (EHLO); defaults to this host's name.
    #[serde(default)]
    pub hello_name: Option<String>,
    /// One whole send, from connecting (or taking a pooled connection) to
    /// the server's final reply. lettre applies its own timeout to
    /// connecting only, so a server that stops answering mid-session would
    /// otherwise hold the sender forever.
    #[serde(default = "SmtpConfig::default_timeout_ms")]
    pub timeout_ms: u64,
    /// A PEM CA certificate to trust besides the system's roots.
    #[serde(default)]
    pub extra_root_ca_path: Option<PathBuf>,
    /// Also the connection pool's size.
    #[serde(default = "SmtpConfig::default_limits")]
    pub limits: SendLimits,
}

impl SmtpConfig {
    fn default_timeout_ms() -> u64 {
        30_000
    }
    fn default_limits() -> SendLimits {
        SendLimits::new(8)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connect, then STARTTLS, required: never falls back to
    /// plaintext.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
    /// No TLS at all: only for a relay on localhost or a test server.
    None,
}

pub struct SmtpProvider {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    timeout: Duration,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    limiter: Limiter,
}

impl SmtpProvider {
    /// Call inside a tokio runtime: lettre's pool starts its idle-connection
    /// reaper task here.
    pub fn new(config: SmtpConfig) -> Result<Self, SetupError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(SetupError::new(
                NAME,
                "must be built inside a tokio runtime (the connection pool spawns a task)",
            ));
        }
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|e| SetupError::new(NAME, format!("`from` {:?}: {e}", config.from)))?;
        let reply_to = match &config.reply_to {
            None => None,
            Some(r) => Some(
                r.parse::<Mailbox>()
                    .map_err(|e| SetupError::new(NAME, format!("`reply_to` {r:?}: {e}")))?,
            ),
        };
        let tls = match config.security {
            SmtpSecurity::None => Tls::None,
            SmtpSecurity::Starttls => Tls::Required(tls_parameters(&config)?),
            SmtpSecurity::Tls => Tls::Wrapper(tls_parameters(&config)?),
        };
        let port = config.port.unwrap_or(match config.security {
            SmtpSecurity::Starttls => 587,
            SmtpSecurity::Tls => 465,
            SmtpSecurity::None => 25,
        });
        let limiter = Limiter::new(NAME, &config.limits)?;
        let pool_size = u32::try_from(config.limits.max_in_flight).unwrap_or(u32::MAX);
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(config.host.as_str())
                .port(port)
                .tls(tls)
                .timeout(Some(Duration::from_millis(config.timeout_ms)))
                .pool_config(PoolConfig::new().max_size(pool_size));
        match (config.username, config.password) {
            (Some(user), Some(password)) => {
                builder = builder.credentials(Credentials::new(user, password.expose().to_string()))
            }
            (None, None) => {}
            _ => {
                return Err(SetupError::new(
                    NAME,
                    "set both `username` and `password`, or neither",
                ));
            }
        }
        if let Some(name) = config.hello_name {
            builder = builder.hello_name(ClientId::Domain(name));
        }
        Ok(Self {
            transport: builder.build(),
            timeout: Duration::from_millis(config.timeout_ms),
            from,
            reply_to,
            limiter,
        })
    }

    fn message(&self, d: &Delivery, to: Address) -> Result<Message, ProviderError> {
        let subject = d
            .email_subject
            .as_deref()
            .or(d.title.as_deref())
            .ok_or_else(|| {
                ProviderError::Rejected(format!(
                    "{NAME}: delivery {} has no subject",
                    d.delivery_id
                ))
            })?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to))
            .subject(subject)
            // A Message-ID of our own makes a resent delivery recognisable
            // as the same mail in the recipient's headers and relay logs.
            .message_id(Some(format!(
                "<{}@{}>",
                d.delivery_id,
                self.from.email.domain()
            )));
        if let Some(r) = &self.reply_to {
            builder = builder.reply_to(r.clone());
        }
        let text = d.email_text.clone().or_else(|| {
            if d.email_html.is_none() {
                d.body.clone()
            } else {
                None
            }
        });
        let built = match (text, d.email_html.clone()) {
            (Some(text), Some(html)) => {
                builder.multipart(MultiPart::alternative_plain_html(text, html))
            }
            (Some(text), None) => builder.singlepart(SinglePart::plain(text)),
            (None, Some(html)) => builder.singlepart(SinglePart::html(html)),
            (None, None) => {
                return Err(ProviderError::Rejected(format!(
                    "{NAME}: delivery {} has no content",
                    d.delivery_id
                )));
            }
        };
        built.map_err(|e| {
            ProviderError::Rejected(format!(
                "{NAME}: cannot build the message for delivery {}: {e}",
                d.delivery_id
            ))
        })
    }
}

fn tls_parameters(config: &SmtpConfig) -> Result<TlsParameters, SetupError> {
    let mut tls = TlsParameters::builder(config.host.clone());
    if let Some(path) = &config.extra_root_ca_path {
        let pem = SetupError::read(NAME, "extra_root_ca_path", path)?;
        let cert = Certificate::from_pem(&pem).map_err(|e| {
            SetupError::new(
                NAME,
                format!("`extra_root_ca_path` {}: {e}", path.display()),
            )
        })?;
        tls = tls.add_root_certificate(cert);
    }
    // lettre's `ring` feature builds this config with ring, like our HTTP
    // clients, and its platform verifier trusts the same system roots.
    tls.build_rustls()
        .map_err(|e| SetupError::new(NAME, format!("TLS setup: {}", describe(&e))))
}

/// An error and its sources, each once. lettre's errors already print their
/// source after their own text (`Connection error: invalid peer
/// certificate: UnknownIssuer`), nested ones recursively, so listing every
/// source after it as `http::chain` does would repeat the same words three
/// times; a source only adds what the text so far does not end with.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

const SECURITY: &str = "providers.email.security";
const CREDENTIALS: &str = "providers.email.username / providers.email.password";

fn misconfigured(setting: &'static str, text: &str) -> ProviderError {
    ProviderError::Misconfigured {
        setting,
        reason: format!("{NAME}: {text}"),
    }
}

/// Reads an SMTP failure. The reply text of a rejection carries an enhanced
/// status code (RFC 3463) when the server has one: `5.1.x` is about the
/// address, `5.7.x` about policy (spam, auth), which the basic code alone
/// (550 for both) cannot tell apart.
fn classify(e: &lettre::transport::smtp::Error, target: &str) -> ProviderError {
    let text = describe(e);
    if e.is_permanent() {
        let code = e.status().map(|c| c.to_string()).unwrap_or_default();
        let reply = std::error::Error::source(e)
            .map(|s| s.to_string())
            .unwrap_or_default();
        let enhanced = reply.split_whitespace().next().unwrap_or("");
        let bad_mailbox = if enhanced.starts_with("5.1.") {
            true
        } else if enhanced.starts_with("5.") {
            false
        } else {
            matches!(code.as_str(), "550" | "551" | "553")
        };
        return match code.as_str() {
            // Encryption required (538, or a 530 asking for STARTTLS), or
            // authentication required or refused: the relay refuses us, not
            // this mail.
            "538" => misconfigured(SECURITY, &text),
            "530" if reply.contains("STARTTLS") => misconfigured(SECURITY, &text),
            "530" | "534" | "535" => misconfigured(CREDENTIALS, &text),
            _ if bad_mailbox => {
                ProviderError::InvalidTarget(format!("{NAME}: mailbox {}: {text}", short(target)))
            }
            _ => ProviderError::Rejected(format!("{NAME}: {text}")),
        };
    }
    // 4xx replies, and every failure to talk to the server at all
    // (connect, TLS, timeout, a broken connection): the next try may pass.
    ProviderError::Transient {
        reason: format!("{NAME}: {text}"),
        retry_after: None,
    }
}

#[async_trait::async_trait]
impl Provider for SmtpProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn deliver(&self, d: &Delivery) -> Result<Receipt, ProviderError> {
        let to: Address = d.target.trim().parse().map_err(|e| {
            ProviderError::InvalidTarget(format!(
                "{NAME}: `{}` is not an email address: {e}",
                short(&d.target)
            ))
        })?;
        let message = self.message(d, to)?;
        let _slot = self.limiter.acquire().await?;
        let response = tokio::time::timeout(self.timeout, self.transport.send(message))
            .await
            .map_err(|_| ProviderError::Transient {
                reason: format!(
                    "{NAME}: no final reply within {} ms",
                    self.timeout.as_millis()
                ),
                retry_after: None,
            })?
            .map_err(|e| classify(&e, &d.target))?;
        // The final reply usually names the relay's queue id ("2.0.0 Ok:
        // queued as 4F2A1"), which is how the relay's logs find the mail.
        let reply = response.message().collect::<Vec<_>>().join(" ");
        Ok(Receipt {
            provider_id: Some(reply).filter(|r| !r.is_empty()),
        })
    }
}
