//! Choosing a provider per channel from configuration:
//!
//! ```toml
//! [providers.sms]
//! kind = "twilio"
//! account_sid = "AC..."
//! auth_token = "..."
//! from = "+14155550100"
//! ```
//!
//! `kind` is `log` (the default for every channel: print what would be
//! sent), `apns`, `fcm`, `twilio`, `sendgrid`, `smtp` or `webpush`; the
//! other keys are that provider's settings. The `in_app` channel has no
//! provider to choose: its deliveries always go to the users' inboxes
//! ([`super::inbox`]), so `[providers.in_app]` is refused.

use std::sync::Arc;

use serde::Deserialize;
use tidings_schemas::{Channel, tracking_link::LinkSigner};

use super::{
    Provider,
    apns::{ApnsConfig, ApnsProvider},
    fcm::{FcmConfig, FcmProvider},
    inbox::UnreadBadge,
    log_sink::LogSink,
    sendgrid::{SendGridConfig, SendGridProvider},
    setup::SetupError,
    smtp::{SmtpConfig, SmtpProvider},
    twilio::{TwilioConfig, TwilioProvider},
    webpush::{WebPushConfig, WebPushProvider},
};

/// Why `[providers.in_app]` is refused.
pub const IN_APP_HAS_NO_PROVIDER: &str = "[providers.in_app]: the in_app channel has no provider to configure; its deliveries always go to the users' inboxes in the store (sized by [inbox] max_items and ttl_days). Remove [providers.in_app]";

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProviderConfig {
    Log,
    Apns(ApnsConfig),
    Fcm(FcmConfig),
    Twilio(TwilioConfig),
    #[serde(rename = "sendgrid")]
    SendGrid(SendGridConfig),
    Smtp(SmtpConfig),
    #[serde(rename = "webpush")]
    WebPush(WebPushConfig),
}

impl ProviderConfig {
    /// Reads `[providers.<channel>]`; absent means the log sink. `in_app`
    /// takes none (the runtime gives it the inbox provider): one given is
    /// refused rather than ignored.
    pub fn for_channel(
        channel: Channel,
        value: Option<&serde_json::Value>,
    ) -> Result<Self, SetupError> {
        if channel == Channel::InApp && value.is_some() {
            return Err(SetupError::new("config", IN_APP_HAS_NO_PROVIDER));
        }
        let Some(value) = value else {
            return Ok(ProviderConfig::Log);
        };
        serde_json::from_value(value.clone())
            .map_err(|e| SetupError::new("config", format!("[providers.{channel}]: {e}")))
    }

    /// Which channels a provider kind can serve.
    fn serves(&self, channel: Channel) -> bool {
        match self {
            ProviderConfig::Log => channel != Channel::InApp,
            ProviderConfig::Apns(_) => channel == Channel::Ios,
            ProviderConfig::Fcm(_) => channel == Channel::Android,
            ProviderConfig::Twilio(_) => channel == Channel::Sms,
            ProviderConfig::SendGrid(_) | ProviderConfig::Smtp(_) => channel == Channel::Email,
            ProviderConfig::WebPush(_) => channel == Channel::Web,
        }
    }

    /// Builds the provider; `log` reuses the process's shared log sink.
    /// `receipts` (from `[tracking]`) signs the delivery-receipt tokens of the
    /// providers that report delivery (Twilio, SendGrid). With `badge`
    /// (`[inbox] push_badge`), APNs and FCM pushes carry the user's unread
    /// inbox count.
    pub fn build(
        self,
        channel: Channel,
        log_sink: Arc<LogSink>,
        receipts: &LinkSigner,
        badge: Option<UnreadBadge>,
    ) -> Result<Arc<dyn Provider>, SetupError> {
        if !self.serves(channel) {
            return Err(SetupError::new(
                "config",
                format!("[providers.{channel}] names a provider for another channel"),
            ));
        }
        Ok(match self {
            ProviderConfig::Log => log_sink,
            ProviderConfig::Apns(c) => match badge {
                Some(b) => Arc::new(ApnsProvider::new(c)?.with_unread_badge(b)),
                None => Arc::new(ApnsProvider::new(c)?),
            },
            ProviderConfig::Fcm(c) => match badge {
                Some(b) => Arc::new(FcmProvider::new(c)?.with_unread_badge(b)),
                None => Arc::new(FcmProvider::new(c)?),
            },
            ProviderConfig::Twilio(c) => Arc::new(TwilioProvider::new(c, receipts.clone())?),
            ProviderConfig::SendGrid(c) => Arc::new(SendGridProvider::new(c, receipts.clone())?),
            ProviderConfig::Smtp(c) => Arc::new(SmtpProvider::new(c)?),
            ProviderConfig::WebPush(c) => Arc::new(WebPushProvider::new(c)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_means_the_log_sink_and_kinds_must_fit_the_channel() {
        assert!(matches!(
            ProviderConfig::for_channel(Channel::Sms, None).unwrap(),
            ProviderConfig::Log
        ));
        let twilio = serde_json::json!({"kind": "twilio", "account_sid": "AC1", "auth_token": "t", "from": "+14155550100"});
        let config = ProviderConfig::for_channel(Channel::Sms, Some(&twilio)).unwrap();
        let receipts = LinkSigner::new("secret", "http://t");
        assert!(
            config
                .clone()
                .build(Channel::Sms, Arc::default(), &receipts, None)
                .is_ok()
        );
        let err = config
            .build(Channel::Email, Arc::default(), &receipts, None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("[providers.email]"), "{err}");
        let bad = serde_json::json!({"kind": "pigeon"});
        let err = ProviderConfig::for_channel(Channel::Sms, Some(&bad))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[providers.sms]") && err.contains("pigeon"),
            "{err}"
        );
    }

    #[test]
    fn in_app_takes_no_provider_and_no_kind_serves_it() {
        let log = serde_json::json!({"kind": "log"});
        let err = ProviderConfig::for_channel(Channel::InApp, Some(&log))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[providers.in_app]") && err.contains("inbox"),
            "{err}"
        );
        // Built by hand all the same: the log sink must not swallow in-app
        // deliveries.
        let receipts = LinkSigner::new("secret", "http://t");
        let err = ProviderConfig::Log
            .build(Channel::InApp, Arc::default(), &receipts, None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("[providers.in_app]"), "{err}");
    }
}
