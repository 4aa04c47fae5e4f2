//! The enricher: turns one accepted `NotificationRequest` into one
//! `Delivery` per target on the topic of its channel.
//!
//! For each request, in order: drop it if expired; hold it in the durable
//! schedule if its send time is in the future; drop it if its event was
//! already handled (dedupe ledger); look up the user's contact points, live
//! devices and preferences; drop channels the user opted out of (unless the
//! category is critical) or that are over the user's rate limit; render the
//! template in the user's locale; emit the deliveries. Everything emitted is
//! derived deterministically from the request (delivery ids included), so a
//! replay after a crash produces the same records and the senders' ledger
//! drops the repeats.
//!
//! Store round trips are per batch, not per record: `prefetch` marks the
//! batch's dedupe claims and events, reads its users' contacts and
//! preferences and, when rate limits are configured, reads the rate-limit
//! windows its records can touch and merges them into the windows in memory;
//! `finish` writes the rate-limit admissions the batch made, in one call,
//! before its outputs are produced (see [`rate_limit`]).

pub mod dedupe;
pub mod rate_limit;
pub mod render;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use tidings_config::{EnricherConfig, OverLimit, TrackingConfig};
use tidings_kafka::{Emitter, ProcessError, Processor, RecordMeta, Topics, now_millis};
use tidings_schemas::{
    AvroCodec, Channel,
    records::{Delivery, NotificationRequest, TrackingEvent, TrackingKind},
    tracking_link::{LinkSigner, TrackedTarget},
};
use tidings_store::{
    Device, Millis, NewAdmission, Platform, Preference, ScheduledItem, Store, StoreError,
    TemplateVersion, User,
};
use tracing::{debug, warn};
use uuid::Uuid;

use self::{
    dedupe::Verdict,
    rate_limit::{Decision, RateLimiter},
    render::{Rendered, render},
};

/// Namespace of delivery ids: stable per (notification, channel, target).
const DELIVERY_ID_NAMESPACE: Uuid = Uuid::from_u128(0x7469_6469_6e67_7300_8000_0000_0000_0002);

pub struct Enricher {
    store: Store,
    topics: Topics,
    codec: AvroCodec,
    config: EnricherConfig,
    limiter: RateLimiter,
    links: LinkSigner,
    open_pixel: bool,
    templates: Mutex<HashMap<(String, u32), Arc<TemplateVersion>>>,
}

/// Template versions kept in memory; the cache starts over when full.
const TEMPLATE_CACHE_SIZE: usize = 1_024;

impl Enricher {
    pub fn new(
        store: Store,
        topics: Topics,
        codec: AvroCodec,
        config: EnricherConfig,
        tracking: &TrackingConfig,
    ) -> Self {
        let limiter = RateLimiter::new(config.rate_limits.clone());
        let links = LinkSigner::new(&tracking.link_secret, &tracking.public_url);
        Self {
            store,
            topics,
            codec,
            config,
            limiter,
            links,
            open_pixel: tracking.open_pixel,
            templates: Mutex::default(),
        }
    }

    fn tracked(
        &self,
        req: &NotificationRequest,
        channel: Option<Channel>,
        url: Option<&str>,
    ) -> TrackedTarget {
        TrackedTarget {
            notification_id: req.notification_id.clone(),
            user_id: req.user_id.clone(),
            template_name: req.template.as_ref().map(|t| t.name.clone()),
            channel: channel.map(|c| c.as_str().to_owned()),
            url: url.map(str::to_owned),
        }
    }

    /// Adds the open pixel to an HTML email.
    fn with_open_pixel(&self, req: &NotificationRequest, html: Option<String>) -> Option<String> {
        let html = html?;
        if !self.open_pixel {
            return Some(html);
        }
        let pixel = format!(
            "<img src=\"{}\" width=\"1\" height=\"1\" alt=\"\">",
            self.links
                .open_pixel_url(&self.tracked(req, Some(Channel::Email), None))
        );
        Some(match html.rfind("</body>") {
            Some(i) => format!("{}{pixel}{}", &html[..i], &html[i..]),
            None => html + &pixel,
        })
    }

    fn is_critical(&self, category: Option<&str>) -> bool {
        category.is_some_and(|c| self.config.critical_categories.iter().any(|k| k == c))
    }

    /// Holds `req` in the durable schedule until `due_at`; the scheduler puts
    /// it back on the request topic then.
    async fn hold(&self, req: &NotificationRequest, due_at: i64) -> Result<(), ProcessError> {
        let mut held = req.clone();
        held.send_at = Some(due_at);
        let payload = self
            .codec
            .encode(&held)
            .map_err(|e| ProcessError::permanent(e.to_string()))?;
        let item = ScheduledItem {
            item_id: event_key(&held),
            due_at,
            payload,
        };
        self.store.schedule.put(&item).await.map_err(store_failure)
    }
}

/// The dedupe key of a request: its notification id, plus its send time when
/// it has one, so a notification deferred to a later time is a new event
/// while a caller retrying the same scheduled send is not.
fn event_key(req: &NotificationRequest) -> String {
    match req.send_at {
        Some(at) => format!("{}:{at}", req.notification_id),
        None => req.notification_id.clone(),
    }
}

pub(crate) fn store_failure(e: StoreError) -> ProcessError {
    if e.is_retriable() {
        ProcessError::retriable(e.to_string())
    } else {
        ProcessError::permanent(e.to_string())
    }
}

/// Whether `user` receives `category` on `channel`: the most specific
/// preference wins (channel + category, then channel); no preference means
/// opted in.
pub fn opted_in(preferences: &[Preference], channel: Channel, category: Option<&str>) -> bool {
    let on_channel = |p: &&Preference| p.channel == channel.as_str();
    let specific = category.and_then(|c| {
        preferences
            .iter()
            .filter(on_channel)
            .find(|p| p.category.as_deref() == Some(c))
    });
    let general = || {
        preferences
            .iter()
            .filter(on_channel)
            .find(|p| p.category.is_none())
    };
    specific.or_else(general).is_none_or(|p| p.opt_in)
}

/// The channels a request names, or all of them when it names none.
fn wanted_channels(req: &NotificationRequest) -> Vec<Channel> {
    if req.channels.is_empty() {
        Channel::ALL.to_vec()
    } else {
        req.channels.iter().filter_map(|c| c.parse().ok()).collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a channel reaches this user.
fn targets(channel: Channel, user: Option<&User>, devices: &[Device]) -> Vec<String> {
    let tokens = |platform: Platform| {
        devices
            .iter()
            .filter(|d| d.platform == platform)
            .map(|d| d.token.clone())
            .collect()
    };
    match channel {
        Channel::Ios => tokens(Platform::Ios),
        Channel::Android => tokens(Platform::Android),
        Channel::Sms => user.and_then(|u| u.phone.clone()).into_iter().collect(),
        Channel::Email => user.and_then(|u| u.email.clone()).into_iter().collect(),
    }
}

/// What the enricher looks up once per batch: the dedupe verdicts of its
/// records and the contacts and preferences of its users; and what it
/// collects for the batch's `finish`: the rate-limit admissions it made.
#[derive(Default)]
pub struct BatchLookups {
    /// Verdicts by (partition, offset): the enricher reads one topic.
    verdicts: HashMap<(i32, i64), Verdict>,
    /// Users whose contacts were looked up, whether they exist or not.
    looked_up: HashSet<String>,
    users: HashMap<String, User>,
    devices: HashMap<String, Vec<Device>>,
    preferences: HashMap<String, Vec<Preference>>,
    /// Rate-limit admissions made by the batch's records, written to the
    /// store by `finish`. Kept (not drained) by `finish`, which the stage
    /// runner retries in place.
    admitted: Mutex<Vec<NewAdmission>>,
}

/// A user's contact points, live devices and preferences.
type Contacts = (Option<User>, Vec<Device>, Vec<Preference>);

impl BatchLookups {
    fn verdict(&self, meta: &RecordMeta) -> Option<Verdict> {
        self.verdicts.get(&(meta.partition, meta.offset)).copied()
    }

    fn contacts(&self, user_id: &str) -> Option<(Option<&User>, &[Device], &[Preference])> {
        self.looked_up.contains(user_id).then(|| {
            (
                self.users.get(user_id),
                self.devices.get(user_id).map_or(&[][..], Vec::as_slice),
                self.preferences.get(user_id).map_or(&[][..], Vec::as_slice),
            )
        })
    }
}

impl Enricher {
    /// Dedupe verdicts for the records that will reach the dedupe check.
    async fn prefetch_verdicts(
        &self,
        batch: &[(&NotificationRequest, &RecordMeta)],
        now: i64,
    ) -> Result<HashMap<(i32, i64), Verdict>, StoreError> {
        let due: Vec<(String, &RecordMeta)> = batch
            .iter()
            .filter(|(req, _)| {
                req.expires_at.is_none_or(|e| e > now) && req.send_at.is_none_or(|at| at <= now)
            })
            .map(|(req, meta)| (event_key(req), *meta))
            .collect();
        let ttl = Duration::from_secs(self.config.dedupe_ttl_secs);
        let verdicts = dedupe::check_many(self.store.dedupe.as_ref(), &due, ttl).await?;
        Ok(due
            .iter()
            .zip(verdicts)
            .map(|((_, meta), v)| ((meta.partition, meta.offset), v))
            .collect())
    }

    /// Contacts and preferences of every user in the batch.
    async fn prefetch_contacts(
        &self,
        batch: &[(&NotificationRequest, &RecordMeta)],
    ) -> Result<BatchLookups, StoreError> {
        let user_ids: Vec<String> = batch
            .iter()
            .map(|(req, _)| req.user_id.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let contacts = &self.store.contacts;
        let (users, devices, preferences) = tokio::try_join!(
            contacts.get_users(&user_ids),
            contacts.live_devices_many(&user_ids),
            self.store.preferences.list_many(&user_ids),
        )?;
        let mut lookups = BatchLookups {
            users: users.into_iter().map(|u| (u.user_id.clone(), u)).collect(),
            preferences,
            looked_up: user_ids.into_iter().collect(),
            ..BatchLookups::default()
        };
        for d in devices {
            lookups
                .devices
                .entry(d.user_id.clone())
                .or_default()
                .push(d);
        }
        Ok(lookups)
    }

    /// Reads every rate-limit window the batch's records can touch (each
    /// record's user, on the channels it names or all of them, under the
    /// rules matching its category) in one call and merges them into the
    /// windows in memory. Nothing to do without rules.
    async fn prefetch_rate_limits(
        &self,
        batch: &[(&NotificationRequest, &RecordMeta)],
    ) -> Result<(), StoreError> {
        if self.limiter.is_empty() {
            return Ok(());
        }
        let mut keys = HashSet::new();
        for (req, _) in batch {
            let category = req.category.as_deref();
            if self.is_critical(category) {
                continue;
            }
            for channel in wanted_channels(req) {
                keys.extend(self.limiter.window_keys(&req.user_id, channel, category));
            }
        }
        if keys.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = keys.into_iter().collect();
        let stored = self.store.rate_limits.admissions_many(&keys).await?;
        self.limiter.merge(stored);
        Ok(())
    }

    async fn load_contacts(&self, user_id: &str) -> Result<Contacts, ProcessError> {
        let contacts = &self.store.contacts;
        tokio::try_join!(
            contacts.get_user(user_id),
            contacts.live_devices(user_id),
            self.store.preferences.list(user_id),
        )
        .map_err(store_failure)
    }
}

#[async_trait::async_trait]
impl Processor for Enricher {
    type Input = NotificationRequest;
    type Prefetched = BatchLookups;

    fn name(&self) -> &'static str {
        "enricher"
    }

    /// Two dedupe-ledger calls, three reads and, with rate limits, one
    /// read of the rate-limit windows for the whole batch, instead of five
    /// or more calls per record.
    async fn prefetch(&self, batch: &[(&NotificationRequest, &RecordMeta)]) -> BatchLookups {
        let now = now_millis();
        let (verdicts, contacts, windows) = tokio::join!(
            self.prefetch_verdicts(batch, now),
            self.prefetch_contacts(batch),
            self.prefetch_rate_limits(batch),
        );
        let mut lookups = contacts.unwrap_or_else(|e| {
            warn!(error = %e, "batch contact lookup failed; looking up record by record");
            BatchLookups::default()
        });
        match verdicts {
            Ok(verdicts) => lookups.verdicts = verdicts,
            Err(e) => warn!(error = %e, "batch dedupe check failed; checking record by record"),
        }
        if let Err(e) = windows {
            warn!(
                error = %e,
                "reading the rate-limit windows failed; going on with the windows in memory"
            );
        }
        lookups
    }

    async fn process(
        &self,
        req: &NotificationRequest,
        lookups: &BatchLookups,
        meta: &RecordMeta,
        out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        let now = now_millis();
        if req.expires_at.is_some_and(|e| e <= now) {
            return self.track(out, req, TrackingKind::Expired, None, None, None);
        }
        if let Some(send_at) = req.send_at.filter(|at| *at > now) {
            self.hold(req, send_at).await?;
            let detail = format!("until {send_at}");
            return self.track(out, req, TrackingKind::Scheduled, None, None, Some(&detail));
        }
        let verdict = match lookups.verdict(meta) {
            Some(v) => v,
            None => {
                let ttl = Duration::from_secs(self.config.dedupe_ttl_secs);
                dedupe::check(self.store.dedupe.as_ref(), &event_key(req), meta, ttl)
                    .await
                    .map_err(store_failure)?
            }
        };
        match verdict {
            Verdict::New | Verdict::Replay => {}
            Verdict::Duplicate => {
                return self.track(
                    out,
                    req,
                    TrackingKind::Deduplicated,
                    None,
                    None,
                    Some("event already handled"),
                );
            }
        }
        let loaded: Contacts;
        let (user, devices, preferences) = match lookups.contacts(&req.user_id) {
            Some(found) => found,
            None => {
                loaded = self.load_contacts(&req.user_id).await?;
                (loaded.0.as_ref(), loaded.1.as_slice(), loaded.2.as_slice())
            }
        };

        let (rendered, template_version) = self.content(req, user).await?;
        let wanted = wanted_channels(req);

        let critical = self.is_critical(req.category.as_deref());
        let mut emitted = 0;
        for channel in wanted {
            if !critical && !opted_in(preferences, channel, req.category.as_deref()) {
                self.track(
                    out,
                    req,
                    TrackingKind::Suppressed,
                    Some(channel),
                    None,
                    Some("opted out"),
                )?;
                continue;
            }
            if !critical
                && let Decision::Over { free_at } = self.rate_limit(lookups, req, channel, now)
            {
                let detail = match self.config.over_limit {
                    OverLimit::Suppress => "over the rate limit; suppressed".to_owned(),
                    OverLimit::Defer => {
                        let mut later = req.clone();
                        later.channels = vec![channel.as_str().to_owned()];
                        self.hold(&later, free_at).await?;
                        format!("over the rate limit; deferred until {free_at}")
                    }
                };
                self.track(
                    out,
                    req,
                    TrackingKind::RateLimited,
                    Some(channel),
                    None,
                    Some(&detail),
                )?;
                continue;
            }
            for target in targets(channel, user, devices) {
                let mut delivery = delivery(req, channel, target, &rendered, template_version);
                if channel == Channel::Email {
                    delivery.email_html = self.with_open_pixel(req, delivery.email_html.take());
                }
                out.emit(&self.topics.deliver(channel), &req.user_id, &delivery)?;
                emitted += 1;
            }
        }
        if emitted == 0 {
            self.track(
                out,
                req,
                TrackingKind::Suppressed,
                None,
                None,
                Some("nothing to deliver on the requested channels"),
            )?;
        } else {
            self.track(out, req, TrackingKind::Rendered, None, None, None)?;
        }
        debug!(notification_id = %req.notification_id, emitted, "enriched");
        Ok(())
    }

    /// Writes the batch's new rate-limit admissions in one call. Retried in
    /// place on a retriable failure, so the batch state is read, not taken.
    async fn finish(&self, lookups: &BatchLookups) -> Result<(), ProcessError> {
        let admitted = lock(&lookups.admitted).clone();
        if admitted.is_empty() {
            return Ok(());
        }
        self.store
            .rate_limits
            .admit_many(&admitted)
            .await
            .map_err(store_failure)
    }
}

impl Enricher {
    /// Admits `req` on `channel` under the rate limits, from the windows in
    /// memory, and adds what it counted to the batch's admissions for
    /// `finish` to write.
    fn rate_limit(
        &self,
        lookups: &BatchLookups,
        req: &NotificationRequest,
        channel: Channel,
        now: Millis,
    ) -> Decision {
        let mut new = Vec::new();
        let decision = self.limiter.admit_recording(
            &req.user_id,
            channel,
            req.category.as_deref(),
            &req.notification_id,
            now,
            &mut new,
        );
        if !new.is_empty() {
            lock(&lookups.admitted).extend(new);
        }
        decision
    }

    /// A template version. Versions never change once written (and the
    /// gateway pins the version of every send), so they are cached; "latest"
    /// is always read from the store.
    async fn template(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<Arc<TemplateVersion>>, ProcessError> {
        if let Some(v) = version {
            let cached = self
                .templates
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&(name.to_owned(), v))
                .cloned();
            if cached.is_some() {
                return Ok(cached);
            }
        }
        let Some(template) = self
            .store
            .templates
            .get(name, version)
            .await
            .map_err(store_failure)?
        else {
            return Ok(None);
        };
        let template = Arc::new(template);
        let mut cache = self.templates.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= TEMPLATE_CACHE_SIZE {
            cache.clear();
        }
        cache.insert((name.to_owned(), template.version), template.clone());
        Ok(Some(template))
    }

    async fn content(
        &self,
        req: &NotificationRequest,
        user: Option<&User>,
    ) -> Result<(Rendered, Option<i32>), ProcessError> {
        if let Some(t) = &req.template {
            let version = t.version.and_then(|v| u32::try_from(v).ok());
            let template = self.template(&t.name, version).await?.ok_or_else(|| {
                ProcessError::permanent(format!(
                    "template {} (version {:?}) does not exist",
                    t.name, t.version
                ))
            })?;
            let locale = user.and_then(|u| u.locale.as_deref());
            let track = |url: &str| self.links.click_url(&self.tracked(req, None, Some(url)));
            let rendered = render(&template, locale, &t.params, &track)
                .map_err(|e| ProcessError::permanent(e.to_string()))?;
            return Ok((rendered, i32::try_from(template.version).ok()));
        }
        let raw = req.content.clone().unwrap_or_default();
        Ok((
            Rendered {
                locale: user.and_then(|u| u.locale.clone()).unwrap_or_default(),
                title: raw.title,
                body: raw.body,
                sms_text: raw.sms_text,
                email_subject: raw.email_subject,
                email_html: raw.email_html,
                email_text: raw.email_text,
            },
            None,
        ))
    }

    fn track(
        &self,
        out: &mut Emitter<'_>,
        req: &NotificationRequest,
        kind: TrackingKind,
        channel: Option<Channel>,
        target: Option<String>,
        detail: Option<&str>,
    ) -> Result<(), ProcessError> {
        let event = TrackingEvent {
            // Stable per (notification, kind, channel) so a replay repeats
            // the same event id and analytics can drop the repeat.
            event_id: Uuid::new_v5(
                &DELIVERY_ID_NAMESPACE,
                format!(
                    "{}\u{0}{kind:?}\u{0}{}",
                    req.notification_id,
                    channel.map(Channel::as_str).unwrap_or("")
                )
                .as_bytes(),
            )
            .to_string(),
            notification_id: req.notification_id.clone(),
            user_id: req.user_id.clone(),
            kind,
            channel: channel.map(|c| c.as_str().to_owned()),
            target,
            template_name: req.template.as_ref().map(|t| t.name.clone()),
            stage: "enricher".into(),
            detail: detail.map(str::to_owned),
            at: now_millis(),
        };
        out.emit(&self.topics.tracking(), &req.notification_id, &event)
    }
}

fn delivery(
    req: &NotificationRequest,
    channel: Channel,
    target: String,
    r: &Rendered,
    template_version: Option<i32>,
) -> Delivery {
    let delivery_id = Uuid::new_v5(
        &DELIVERY_ID_NAMESPACE,
        format!(
            "{}\u{0}{}\u{0}{target}",
            req.notification_id,
            channel.as_str()
        )
        .as_bytes(),
    )
    .to_string();
    // SMS carries its own text, falling back to the push body.
    let body = match channel {
        Channel::Sms => r.sms_text.clone().or_else(|| r.body.clone()),
        _ => r.body.clone(),
    };
    Delivery {
        delivery_id,
        notification_id: req.notification_id.clone(),
        event_id: req.event_id.clone(),
        user_id: req.user_id.clone(),
        channel: channel.as_str().to_owned(),
        target,
        category: req.category.clone(),
        template_name: req.template.as_ref().map(|t| t.name.clone()),
        template_version,
        locale: (!r.locale.is_empty()).then(|| r.locale.clone()),
        title: r.title.clone(),
        body,
        email_subject: r.email_subject.clone(),
        email_html: r.email_html.clone(),
        email_text: r.email_text.clone(),
        data: req.data.clone(),
        collapse_id: req.collapse_id.clone(),
        priority: req.priority,
        expires_at: req.expires_at,
        accepted_at: req.accepted_at,
        attempt: 0,
        not_before: None,
        last_error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pref(channel: &str, category: Option<&str>, opt_in: bool) -> Preference {
        Preference {
            user_id: "u".into(),
            channel: channel.into(),
            category: category.map(str::to_owned),
            opt_in,
            updated_at: 0,
        }
    }

    #[test]
    fn most_specific_preference_wins() {
        let prefs = vec![
            pref("email", None, false),
            pref("email", Some("security"), true),
        ];
        assert!(!opted_in(&prefs, Channel::Email, Some("marketing")));
        assert!(opted_in(&prefs, Channel::Email, Some("security")));
        assert!(!opted_in(&prefs, Channel::Email, None));
        assert!(
            opted_in(&prefs, Channel::Sms, Some("marketing")),
            "no preference means opted in"
        );
    }
}
