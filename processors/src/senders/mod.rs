//! Channel senders: one stage per channel topic, each a consumer group that
//! scales by adding members. A sender hands a `Delivery` to its provider and
//! records the outcome in the notification log and on the tracking topic.
//!
//! Outcomes: sent (marked in the sent-ledger, so a redelivered record is not
//! sent twice); an invalid target (the device token is tombstoned, so later
//! sends skip it until it is registered again); a permanent rejection or too
//! many attempts (dead-lettered with the reason); a transient failure (the
//! delivery moves to a retry tier, see [`retry`], and the main topic goes on).

pub mod apns;
pub mod fcm;
pub mod http;
pub mod jwt;
pub mod log_sink;
pub mod providers;
pub mod retry;
pub mod sendgrid;
pub mod setup;
pub mod smtp;
pub mod twilio;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tidings_config::SendersConfig;
use tidings_kafka::{Emitter, ProcessError, Processor, RecordMeta, Topics, now_millis};
use tidings_schemas::{
    AvroCodec, Channel,
    records::{DeadLetter, Delivery, TrackingEvent, TrackingKind},
};
use tidings_store::{StatusEntry, Store};
use tidings_telemetry::metrics;
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::enricher::store_failure;

/// Sent-ledger scope: delivery ids are unique across channels.
const SENT: &str = "sender.sent";

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
    Transient {
        reason: String,
        retry_after: Option<std::time::Duration>,
    },
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
    codec: AvroCodec,
    config: SendersConfig,
    /// Transient failures in a row, for the developer alert.
    failures_in_a_row: AtomicU32,
}

impl ChannelSender {
    pub fn new(
        channel: Channel,
        provider: Arc<dyn Provider>,
        store: Store,
        topics: Topics,
        codec: AvroCodec,
        config: SendersConfig,
    ) -> Self {
        Self {
            channel,
            provider,
            store,
            topics,
            codec,
            config,
            failures_in_a_row: AtomicU32::new(0),
        }
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

    fn track(
        &self,
        out: &mut Emitter<'_>,
        d: &Delivery,
        kind: TrackingKind,
        detail: Option<String>,
    ) -> Result<(), ProcessError> {
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

    /// Adds a status-log entry; `finish` writes the batch's entries.
    fn log_status(&self, batch: &SenderBatch, d: &Delivery, state: &str, detail: Option<String>) {
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
        lock(&batch.statuses).push(entry);
    }

    fn count(&self, outcome: &str) {
        metrics()
            .provider_results
            .with_label_values(&[self.provider.name(), outcome])
            .inc();
    }

    /// Tracks provider health: repeated transient failures raise the
    /// developer alert; a success clears it.
    fn record_health(&self, ok: bool) {
        let provider = self.provider.name();
        if ok {
            if self.failures_in_a_row.swap(0, Ordering::Relaxed) >= self.config.alert_after_failures
            {
                info!(provider, "provider recovered");
            }
            metrics()
                .provider_failing
                .with_label_values(&[provider])
                .set(0);
            return;
        }
        let n = self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.config.alert_after_failures {
            metrics()
                .provider_failing
                .with_label_values(&[provider])
                .set(1);
            if n == self.config.alert_after_failures || n.is_multiple_of(100) {
                error!(
                    provider,
                    failures_in_a_row = n,
                    "ALERT: provider keeps failing; deliveries are going to retry topics"
                );
            }
        }
    }

    /// Moves a transiently failed delivery to its retry tier, or dead-letters
    /// it once it has used its attempts.
    fn retry_or_give_up(
        &self,
        d: &Delivery,
        reason: &str,
        retry_after: Option<Duration>,
        out: &mut Emitter<'_>,
    ) -> Result<Option<(String, i64)>, ProcessError> {
        let attempts = u32::try_from(d.attempt).unwrap_or(0) + 1;
        if attempts >= self.config.max_attempts {
            self.dead_letter(
                d,
                &format!("gave up after {attempts} attempts: {reason}"),
                true,
                out,
            )?;
            return Ok(None);
        }
        let delays = &self.config.retry_delays_ms;
        let wanted_tier = (attempts as usize - 1).min(delays.len() - 1);
        let retry_after_ms =
            retry_after.map_or(0, |r| u64::try_from(r.as_millis()).unwrap_or(u64::MAX));
        // The first tier at least as long as the provider asked for.
        let tier = (wanted_tier..delays.len())
            .find(|&t| delays[t] >= retry_after_ms)
            .unwrap_or(delays.len() - 1);
        // Jitter spreads the tier's delay, but never undercuts the provider's
        // Retry-After.
        let delay = jittered(delays[tier], &d.delivery_id, attempts).max(retry_after_ms);
        let not_before = now_millis() + i64::try_from(delay).unwrap_or(i64::MAX / 2);
        let mut next = d.clone();
        next.attempt = i32::try_from(attempts).unwrap_or(i32::MAX);
        next.not_before = Some(not_before);
        next.last_error = Some(reason.to_owned());
        out.emit(&self.topics.retry(tier), &d.user_id, &next)?;
        Ok(Some((self.topics.retry(tier), not_before)))
    }

    fn dead_letter(
        &self,
        d: &Delivery,
        reason: &str,
        retriable: bool,
        out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        let payload = self
            .codec
            .encode(d)
            .map_err(|e| ProcessError::permanent(e.to_string()))?;
        let record = DeadLetter {
            source_topic: self.topics.deliver(self.channel),
            source_partition: -1,
            source_offset: -1,
            key: Some(d.user_id.clone().into_bytes()),
            payload,
            stage: Self::stage_name(self.channel).into(),
            reason: reason.to_owned(),
            retriable,
            attempts: d.attempt + 1,
            failed_at: now_millis(),
        };
        out.emit(&self.topics.dead_letter(), &d.user_id, &record)
    }
}

/// Up to 20% less than `delay_ms`, the same for the same delivery and
/// attempt (so a replay schedules the same time) but spread across
/// deliveries, so a provider outage does not end in a thundering herd.
fn jittered(delay_ms: u64, delivery_id: &str, attempt: u32) -> u64 {
    let seed = delivery_id.bytes().fold(
        u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3),
    );
    delay_ms
        - (delay_ms / 5)
            .checked_mul(seed % 1000)
            .map_or(0, |x| x / 1000)
}

/// A sender's batch: the sent-ledger entries of its deliveries, read in one
/// call before any is sent, and the ledger marks and status-log entries its
/// records leave, written in two calls once all are through. A crash before
/// those writes sends the batch's deliveries again on replay, the same
/// at-least-once window a per-record mark has between the provider call and
/// the mark, only a batch long.
#[derive(Default)]
pub struct SenderBatch {
    sent_before: HashMap<String, bool>,
    /// Deliveries the provider accepted in this batch.
    sent_now: Mutex<HashSet<String>>,
    statuses: Mutex<Vec<StatusEntry>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait::async_trait]
impl Processor for ChannelSender {
    type Input = Delivery;
    type Prefetched = SenderBatch;

    fn name(&self) -> &'static str {
        Self::stage_name(self.channel)
    }

    async fn prefetch(&self, batch: &[(&Delivery, &RecordMeta)]) -> SenderBatch {
        let ids: Vec<String> = batch
            .iter()
            .map(|(d, _)| d.delivery_id.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let sent_before = match self.store.dedupe.seen_many(SENT, &ids).await {
            Ok(seen) => ids.into_iter().zip(seen).collect(),
            Err(e) => {
                warn!(stage = self.name(), error = %e, "batch sent-ledger read failed; reading record by record");
                HashMap::new()
            }
        };
        SenderBatch {
            sent_before,
            ..SenderBatch::default()
        }
    }

    async fn finish(&self, batch: &SenderBatch) -> Result<(), ProcessError> {
        let sent: Vec<String> = lock(&batch.sent_now).iter().cloned().collect();
        let statuses = lock(&batch.statuses).clone();
        let ttl = Duration::from_secs(self.config.sent_ledger_ttl_secs);
        let mark = async {
            if !sent.is_empty() {
                self.store.dedupe.first_seen_many(SENT, &sent, ttl).await?;
            }
            Ok(())
        };
        let log = async {
            if !statuses.is_empty() {
                self.store.notification_log.record_many(&statuses).await?;
            }
            Ok(())
        };
        tokio::try_join!(mark, log).map_err(store_failure)?;
        Ok(())
    }

    async fn process(
        &self,
        d: &Delivery,
        batch: &SenderBatch,
        _meta: &RecordMeta,
        out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        if d.expires_at.is_some_and(|e| e <= now_millis()) {
            self.log_status(batch, d, "expired", None);
            return self.track(out, d, TrackingKind::Expired, None);
        }
        // Sent earlier in this batch (a replayed record twice in it), sent
        // before it, or, if the batch read failed, ask the ledger.
        let already_sent = lock(&batch.sent_now).contains(&d.delivery_id)
            || match batch.sent_before.get(&d.delivery_id) {
                Some(seen) => *seen,
                None => self
                    .store
                    .dedupe
                    .seen(SENT, &d.delivery_id)
                    .await
                    .map_err(store_failure)?,
            };
        if already_sent {
            return self.track(
                out,
                d,
                TrackingKind::Deduplicated,
                Some("already sent".into()),
            );
        }
        self.track(
            out,
            d,
            TrackingKind::Dispatched,
            Some(self.provider.name().into()),
        )?;
        match self.provider.deliver(d).await {
            Ok(receipt) => {
                self.count("sent");
                self.record_health(true);
                lock(&batch.sent_now).insert(d.delivery_id.clone());
                self.log_status(batch, d, "sent", receipt.provider_id.clone());
                self.track(out, d, TrackingKind::Sent, receipt.provider_id)
            }
            Err(ProviderError::InvalidTarget(reason)) => {
                self.count("invalid_target");
                self.record_health(true);
                if matches!(self.channel, Channel::Ios | Channel::Android) {
                    // A tombstone with a time: a later re-registration wins.
                    self.store
                        .contacts
                        .invalidate_device(&d.user_id, &d.target, now_millis())
                        .await
                        .map_err(store_failure)?;
                }
                self.log_status(batch, d, "invalid_target", Some(reason.clone()));
                self.track(out, d, TrackingKind::InvalidToken, Some(reason))
            }
            Err(ProviderError::Rejected(reason)) => {
                self.count("rejected");
                self.record_health(true);
                self.dead_letter(
                    d,
                    &format!("{} rejected it: {reason}", self.provider.name()),
                    false,
                    out,
                )?;
                self.log_status(batch, d, "dead_lettered", Some(reason.clone()));
                self.track(out, d, TrackingKind::DeadLettered, Some(reason))
            }
            Err(ProviderError::Transient {
                reason,
                retry_after,
            }) => {
                self.count("transient");
                self.record_health(false);
                warn!(provider = self.provider.name(), delivery = %d.delivery_id, attempt = d.attempt, %reason, "transient provider failure");
                match self.retry_or_give_up(d, &reason, retry_after, out)? {
                    Some((topic, not_before)) => {
                        self.log_status(batch, d, "retrying", Some(reason.clone()));
                        self.track(
                            out,
                            d,
                            TrackingKind::Retried,
                            Some(format!("{reason}; via {topic} at {not_before}")),
                        )
                    }
                    None => {
                        self.log_status(batch, d, "dead_lettered", Some(reason.clone()));
                        self.track(out, d, TrackingKind::DeadLettered, Some(reason))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_twenty_percent_and_is_stable() {
        for id in ["a", "b", "c", "delivery-42"] {
            let d = jittered(30_000, id, 1);
            assert!((24_000..=30_000).contains(&d), "{d}");
            assert_eq!(d, jittered(30_000, id, 1));
        }
        assert_ne!(jittered(30_000, "a", 1), jittered(30_000, "b", 1));
    }
}
