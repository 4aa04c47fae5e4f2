//! Channel senders: one stage per channel topic, each a consumer group that
//! scales by adding members. A sender hands a `Delivery` to its provider,
//! records the outcome in the notification log and on the tracking topic.

pub mod apns;
pub mod fcm;
pub mod http;
pub mod jwt;
pub mod log_sink;
pub mod sendgrid;
pub mod setup;
pub mod smtp;
pub mod twilio;

use std::sync::Arc;

use tidings_kafka::{Emitter, ProcessError, Processor, RecordMeta, Topics, now_millis};
use tidings_schemas::{
    Channel,
    records::{Delivery, TrackingEvent, TrackingKind},
};
use tidings_store::{StatusEntry, Store};
use uuid::Uuid;

use crate::enricher::store_failure;

/// What a provider said about one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The provider's id for the message, if it gave one.
    pub provider_id: Option<String>,
}

/// A provider refused or failed a delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The target will never accept this (unregistered token, bad number).
    #[error("target rejected: {0}")]
    InvalidTarget(String),
    /// This message is wrong and will stay wrong (payload too large, ...).
    #[error("rejected: {0}")]
    Rejected(String),
    /// Try again later (429, 5xx, timeout), after `retry_after` if given.
    #[error("transient failure: {reason}")]
    Transient { reason: String, retry_after: Option<std::time::Duration> },
}

/// A way to reach users on one channel (APNs, FCM, Twilio, SMTP, ... or the
/// log sink of the embedded default).
#[async_trait::async_trait]
pub trait Provider: Send + Sync + 'static {
    /// For logs and metrics, e.g. `apns` or `log`.
    fn name(&self) -> &'static str;
    async fn deliver(&self, delivery: &Delivery) -> Result<Receipt, ProviderError>;
}

/// The stage that drains one channel topic into its provider.
pub struct ChannelSender {
    channel: Channel,
    provider: Arc<dyn Provider>,
    store: Store,
    topics: Topics,
}

impl ChannelSender {
    pub fn new(channel: Channel, provider: Arc<dyn Provider>, store: Store, topics: Topics) -> Self {
        Self { channel, provider, store, topics }
    }

    /// The stage name for a channel, e.g. `sender.ios`.
    pub fn stage_name(channel: Channel) -> &'static str {
        match channel {
            Channel::Ios => "sender.ios",
            Channel::Android => "sender.android",
            Channel::Sms => "sender.sms",
            Channel::Email => "sender.email",
        }
    }

    fn track(&self, out: &mut Emitter<'_>, d: &Delivery, kind: TrackingKind, detail: Option<String>) -> Result<(), ProcessError> {
        let event = TrackingEvent {
            event_id: Uuid::now_v7().to_string(),
            notification_id: d.notification_id.clone(),
            user_id: d.user_id.clone(),
            kind,
            channel: Some(d.channel.clone()),
            target: Some(d.target.clone()),
            template_name: d.template_name.clone(),
            stage: Self::stage_name(self.channel).into(),
            detail,
            at: now_millis(),
        };
        out.emit(&self.topics.tracking(), &d.notification_id, &event)
    }

    async fn log_status(&self, d: &Delivery, state: &str, detail: Option<String>) -> Result<(), ProcessError> {
        let entry = StatusEntry {
            notification_id: d.notification_id.clone(),
            user_id: d.user_id.clone(),
            channel: d.channel.clone(),
            target: d.target.clone(),
            state: state.into(),
            detail,
            attempt: u32::try_from(d.attempt).unwrap_or_default(),
            at: now_millis(),
        };
        self.store.notification_log.record(&entry).await.map_err(store_failure)
    }
}

#[async_trait::async_trait]
impl Processor for ChannelSender {
    type Input = Delivery;

    fn name(&self) -> &'static str {
        Self::stage_name(self.channel)
    }

    async fn process(&self, d: &Delivery, _meta: &RecordMeta, out: &mut Emitter<'_>) -> Result<(), ProcessError> {
        if d.expires_at.is_some_and(|e| e <= now_millis()) {
            self.log_status(d, "expired", None).await?;
            return self.track(out, d, TrackingKind::Expired, None);
        }
        match self.provider.deliver(d).await {
            Ok(receipt) => {
                self.log_status(d, "sent", receipt.provider_id.clone()).await?;
                self.track(out, d, TrackingKind::Sent, receipt.provider_id)
            }
            Err(e @ (ProviderError::InvalidTarget(_) | ProviderError::Rejected(_))) => {
                self.log_status(d, "failed", Some(e.to_string())).await?;
                self.track(out, d, TrackingKind::Failed, Some(e.to_string()))
            }
            Err(ProviderError::Transient { reason, .. }) => Err(ProcessError::retriable(format!(
                "{} could not deliver {}: {reason}",
                self.provider.name(),
                d.delivery_id
            ))),
        }
    }
}
