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
//! Every decision is also written to the notification log, so `GetStatus`
//! answers for every notification the enricher handled: one row per channel
//! with an empty target (`expired`, `scheduled`, `suppressed` for an
//! opt-out, `rate_limited`, `deferred`, `no_contact`, `no_content` for an
//! in-app item with neither title nor body, `failed` when the template
//! cannot be rendered) for each channel that ends there. A channel
//! whose deliveries are on its topic has its sender's rows, one per target,
//! and an enricher row `queued` only when the request was held before (so
//! the row says `queued`, no longer `scheduled` or `deferred`). A duplicate
//! record writes no row: it carries the same notification id as the record
//! it repeats, whose rows are the notification's status.
//!
//! Store round trips are per batch, not per record: `prefetch` marks the
//! batch's dedupe claims and events, reads its users' contacts and
//! preferences and, when rate limits are configured, reads the rate-limit
//! windows its records can touch and merges them into the windows in memory;
//! `finish` writes the rate-limit admissions and the status rows the batch
//! made, one call each, before its outputs are produced (see
//! [`rate_limit`]).

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
    AvroCodec, Channel, ids,
    records::{Delivery, NotificationRequest, TrackingEvent, TrackingKind},
    tracking_link::{LinkSigner, TrackedTarget},
};
use tidings_store::{
    Device, Millis, NewAdmission, Platform, Preference, Recipient as StoredRecipient,
    ScheduledItem, StatusEntry, Store, StoreError, TemplateVersion, User, keep_newest_devices,
};
use tracing::{debug, warn};
use uuid::Uuid;

use self::{
    dedupe::Verdict,
    rate_limit::{Decision, RateLimiter},
    render::{InAppContent, Rendered, render},
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
    /// `gateway.max_devices_per_user`: the most live devices of one user a
    /// notification goes to.
    max_devices_per_user: usize,
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
        max_devices_per_user: usize,
    ) -> Self {
        let limiter = RateLimiter::bounded(config.rate_limits.clone(), config.rate_limit_windows);
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
            max_devices_per_user,
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
            // This deployment's scheduler, and only it, releases the item.
            scope: self.topics.prefix().to_owned(),
            item_id: event_key(&held),
            due_at,
            payload,
        };
        self.store.schedule.put(&item).await.map_err(store_failure)
    }
}

/// The dedupe key of a request, and the schedule key it is held under: its
/// notification id, plus its send time and channels when it has a send time.
/// So a notification deferred to a later time is a new event, and so is
/// each channel of it deferred separately (a rate limit defers channel by
/// channel, often to the same time), while a caller retrying the same
/// scheduled send is not.
fn event_key(req: &NotificationRequest) -> String {
    match req.send_at {
        Some(at) if req.channels.is_empty() => format!("{}:{at}", req.notification_id),
        Some(at) => {
            let mut channels: Vec<&str> = req.channels.iter().map(String::as_str).collect();
            channels.sort_unstable();
            format!("{}:{at}:{}", req.notification_id, channels.join(","))
        }
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
fn targets(
    channel: Channel,
    user_id: &str,
    user: Option<&User>,
    devices: &[Device],
) -> Vec<String> {
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
        Channel::Web => tokens(Platform::Web),
        Channel::Sms => user.and_then(|u| u.phone.clone()).into_iter().collect(),
        Channel::Email => user.and_then(|u| u.email.clone()).into_iter().collect(),
        // Every user id has an inbox, contact record or not.
        Channel::InApp => vec![user_id.to_owned()],
    }
}

/// What the enricher looks up once per batch: the dedupe verdicts of its
/// records and the contacts and preferences of its users; and what it
/// collects for the batch's `finish`: the rate-limit admissions it made.
#[derive(Default)]
pub struct BatchLookups {
    /// Verdicts by (partition, offset): the enricher reads one topic.
    verdicts: HashMap<(i32, i64), Verdict>,
    /// Every user looked up, whether anything is recorded for them or not
    /// (then an empty recipient).
    recipients: HashMap<String, StoredRecipient>,
    /// Rate-limit admissions made by the batch's records, written to the
    /// store by `finish`. Kept (not drained) by `finish`, which the stage
    /// runner retries in place.
    admitted: Mutex<Vec<NewAdmission>>,
    /// The notification-log rows of the batch's decisions, written by
    /// `finish` like the admissions.
    statuses: Mutex<Vec<StatusEntry>>,
}

impl BatchLookups {
    fn verdict(&self, meta: &RecordMeta) -> Option<Verdict> {
        self.verdicts.get(&(meta.partition, meta.offset)).copied()
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

    /// Contacts and preferences of every user in the batch, in one call.
    async fn prefetch_recipients(
        &self,
        batch: &[(&NotificationRequest, &RecordMeta)],
    ) -> Result<HashMap<String, StoredRecipient>, StoreError> {
        let user_ids: Vec<String> = batch
            .iter()
            .map(|(req, _)| req.user_id.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut recipients = self.recipients(&user_ids).await?;
        for user_id in user_ids {
            recipients.entry(user_id).or_default();
        }
        Ok(recipients)
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

    async fn load_recipient(&self, user_id: &str) -> Result<StoredRecipient, ProcessError> {
        let mut found = self
            .recipients(&[user_id.to_owned()])
            .await
            .map_err(store_failure)?;
        Ok(found.remove(user_id).unwrap_or_default())
    }

    /// The contacts and preferences of `user_ids`, each with at most
    /// `gateway.max_devices_per_user` live devices, the most recently
    /// registered: the gateway trims a user's rows when a device registers,
    /// so more are found only for users whose rows predate that (or were
    /// written by an older gateway), and a notification must not fan out
    /// to all of them.
    async fn recipients(
        &self,
        user_ids: &[String],
    ) -> Result<HashMap<String, StoredRecipient>, StoreError> {
        let mut found = self.store.recipients.recipients_many(user_ids).await?;
        for (user_id, recipient) in &mut found {
            let dropped = keep_newest_devices(&mut recipient.devices, self.max_devices_per_user);
            if dropped > 0 {
                debug!(
                    user = %user_id,
                    dropped,
                    cap = self.max_devices_per_user,
                    "not sending to the user's oldest devices beyond gateway.max_devices_per_user"
                );
            }
        }
        Ok(found)
    }
}

#[async_trait::async_trait]
impl Processor for Enricher {
    type Input = NotificationRequest;
    type Prefetched = BatchLookups;

    fn name(&self) -> &'static str {
        "enricher"
    }

    /// Two dedupe-ledger calls, one recipients read and, with rate limits,
    /// one read of the rate-limit windows for the whole batch, instead of
    /// five or more calls per record.
    async fn prefetch(&self, batch: &[(&NotificationRequest, &RecordMeta)]) -> BatchLookups {
        let now = now_millis();
        let (verdicts, recipients, windows) = tokio::join!(
            self.prefetch_verdicts(batch, now),
            self.prefetch_recipients(batch),
            self.prefetch_rate_limits(batch),
        );
        let mut lookups = BatchLookups::default();
        match recipients {
            Ok(recipients) => lookups.recipients = recipients,
            Err(e) => warn!(error = %e, "batch contact lookup failed; looking up record by record"),
        }
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
        let job = Job {
            req,
            lookups,
            now: now_millis(),
        };
        let mut rows = Vec::new();
        self.enrich(&job, meta, out, &mut rows).await?;
        // Only a record that went through adds its rows: a retried one
        // decides again.
        lock(&lookups.statuses).extend(rows);
        Ok(())
    }

    /// Writes the batch's new rate-limit admissions and its status rows, one
    /// call each. Retried in place on a retriable failure, so the batch state
    /// is read, not taken; both writes are idempotent.
    async fn finish(&self, lookups: &BatchLookups) -> Result<(), ProcessError> {
        let admitted = lock(&lookups.admitted).clone();
        let statuses = lock(&lookups.statuses).clone();
        let admit = async {
            if admitted.is_empty() {
                return Ok(());
            }
            self.store.rate_limits.admit_many(&admitted).await
        };
        let log = async {
            if statuses.is_empty() {
                return Ok(());
            }
            self.store.notification_log.record_many(&statuses).await
        };
        tokio::try_join!(admit, log).map_err(store_failure)?;
        Ok(())
    }
}

/// One request being enriched, with what its batch looked up.
struct Job<'a> {
    req: &'a NotificationRequest,
    lookups: &'a BatchLookups,
    now: Millis,
}

/// Where a user can be reached and what they want.
struct Recipient<'a> {
    user: Option<&'a User>,
    devices: &'a [Device],
    preferences: &'a [Preference],
}

/// What the enricher decided for one channel of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelOutcome {
    /// This many deliveries are on the channel's topic.
    Queued(usize),
    /// The user opted out of the channel, or of the category on it.
    OptedOut,
    /// Over a rate limit and dropped (`over_limit = "suppress"`).
    RateLimited,
    /// Over a rate limit and held until the window has room
    /// (`over_limit = "defer"`).
    Deferred { until: Millis },
    /// The user has no device, number or address for the channel.
    NoContact,
    /// The rendering has nothing for the channel to show (an in-app item
    /// with neither a title nor a body).
    NoContent,
}

impl ChannelOutcome {
    /// The channel's state in the notification log.
    fn state(self) -> &'static str {
        match self {
            Self::Queued(_) => "queued",
            Self::OptedOut => "suppressed",
            Self::RateLimited => "rate_limited",
            Self::Deferred { .. } => "deferred",
            Self::NoContact => "no_contact",
            Self::NoContent => "no_content",
        }
    }

    /// The detail of its log row, and of its tracking event where it has one.
    fn detail(self) -> String {
        match self {
            Self::Queued(1) => "1 delivery".to_owned(),
            Self::Queued(n) => format!("{n} deliveries"),
            Self::OptedOut => "opted out".to_owned(),
            Self::RateLimited => "over the rate limit; suppressed".to_owned(),
            Self::Deferred { until } => format!("over the rate limit; deferred until {until}"),
            Self::NoContact => {
                "no device, phone number or email address on this channel".to_owned()
            }
            Self::NoContent => "nothing to show on this channel: no title or body".to_owned(),
        }
    }
}

/// The notification-log row of a decision about `channel` of `req`: the
/// enricher's rows have no target (the senders' rows name theirs).
fn status_row(
    req: &NotificationRequest,
    channel: Channel,
    state: &str,
    detail: Option<String>,
    at: Millis,
) -> StatusEntry {
    StatusEntry {
        notification_id: req.notification_id.clone(),
        user_id: req.user_id.clone(),
        channel: channel.as_str().to_owned(),
        target: String::new(),
        state: state.to_owned(),
        detail,
        attempt: 0,
        at,
    }
}

/// A row of the same decision for every channel `req` asks for.
fn status_rows(
    req: &NotificationRequest,
    state: &str,
    detail: Option<String>,
    at: Millis,
) -> impl Iterator<Item = StatusEntry> {
    wanted_channels(req)
        .into_iter()
        .map(move |channel| status_row(req, channel, state, detail.clone(), at))
}

/// Why a notification's content could not be had.
enum ContentError {
    /// The store failed; retrying may help.
    Store(StoreError),
    /// The template is missing or cannot be rendered with these parameters:
    /// it never will be.
    Unrenderable(String),
}

impl Enricher {
    /// One request, step by step; `rows` collects its status rows.
    async fn enrich(
        &self,
        job: &Job<'_>,
        meta: &RecordMeta,
        out: &mut Emitter<'_>,
        rows: &mut Vec<StatusEntry>,
    ) -> Result<(), ProcessError> {
        let (req, now) = (job.req, job.now);
        if req.expires_at.is_some_and(|e| e <= now) {
            rows.extend(status_rows(req, "expired", None, now));
            return self.track(out, req, TrackingKind::Expired, None, None, None);
        }
        if let Some(send_at) = req.send_at.filter(|at| *at > now) {
            self.hold(req, send_at).await?;
            let detail = format!("until {send_at}");
            rows.extend(status_rows(req, "scheduled", Some(detail.clone()), now));
            return self.track(out, req, TrackingKind::Scheduled, None, None, Some(&detail));
        }
        match self.verdict(job, meta).await? {
            Verdict::New => {}
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
            // This record's deliveries may be on their topics already: the
            // senders check their ledger for these.
            Verdict::Replay => out.maybe_repeats(),
        }
        let loaded: StoredRecipient;
        let stored = match job.lookups.recipients.get(&req.user_id) {
            Some(found) => found,
            None => {
                loaded = self.load_recipient(&req.user_id).await?;
                &loaded
            }
        };
        let user = stored.user.as_ref();
        let recipient = Recipient {
            user,
            devices: &stored.devices,
            preferences: &stored.preferences,
        };
        let content = match self.content(req, user).await {
            Ok(content) => content,
            Err(ContentError::Store(e)) => return Err(store_failure(e)),
            Err(ContentError::Unrenderable(reason)) => {
                // Dead-lettered by the stage: its rows are kept although the
                // record fails.
                let failed = status_rows(req, "failed", Some(reason.clone()), now);
                lock(&job.lookups.statuses).extend(failed);
                return Err(ProcessError::permanent(reason));
            }
        };
        let mut emitted = 0;
        for channel in wanted_channels(req) {
            let outcome = self.route(job, channel, &recipient, &content, out).await?;
            if let ChannelOutcome::Queued(n) = outcome {
                emitted += n;
                // Its sender writes a row per target. The enricher's own row
                // is needed only to replace the `scheduled` or `deferred` row
                // a request held before has.
                if req.send_at.is_none() {
                    continue;
                }
            }
            rows.push(status_row(
                req,
                channel,
                outcome.state(),
                Some(outcome.detail()),
                now,
            ));
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

    /// The dedupe verdict of the request: from the batch's, else checked
    /// now.
    async fn verdict(&self, job: &Job<'_>, meta: &RecordMeta) -> Result<Verdict, ProcessError> {
        if let Some(v) = job.lookups.verdict(meta) {
            return Ok(v);
        }
        let ttl = Duration::from_secs(self.config.dedupe_ttl_secs);
        dedupe::check(self.store.dedupe.as_ref(), &event_key(job.req), meta, ttl)
            .await
            .map_err(store_failure)
    }

    /// Decides one channel of the request: opted out, over a rate limit
    /// (suppressed or deferred), no target, or its deliveries emitted.
    async fn route(
        &self,
        job: &Job<'_>,
        channel: Channel,
        recipient: &Recipient<'_>,
        (rendered, template_version): &(Rendered, Option<i32>),
        out: &mut Emitter<'_>,
    ) -> Result<ChannelOutcome, ProcessError> {
        let req = job.req;
        if channel == Channel::InApp && rendered.in_app.is_empty() {
            // Nothing to show: no delivery, and no rate-limit room used.
            return Ok(ChannelOutcome::NoContent);
        }
        let category = req.category.as_deref();
        let critical = self.is_critical(category);
        if !critical && !opted_in(recipient.preferences, channel, category) {
            let outcome = ChannelOutcome::OptedOut;
            let detail = outcome.detail();
            self.track(
                out,
                req,
                TrackingKind::Suppressed,
                Some(channel),
                None,
                Some(&detail),
            )?;
            return Ok(outcome);
        }
        if !critical
            && let Decision::Over { free_at } = self.rate_limit(job.lookups, req, channel, job.now)
        {
            let outcome = match self.config.over_limit {
                OverLimit::Suppress => ChannelOutcome::RateLimited,
                OverLimit::Defer => {
                    let mut later = req.clone();
                    later.channels = vec![channel.as_str().to_owned()];
                    self.hold(&later, free_at).await?;
                    ChannelOutcome::Deferred { until: free_at }
                }
            };
            let detail = outcome.detail();
            self.track(
                out,
                req,
                TrackingKind::RateLimited,
                Some(channel),
                None,
                Some(&detail),
            )?;
            return Ok(outcome);
        }
        let mut emitted = 0;
        for target in targets(channel, &req.user_id, recipient.user, recipient.devices) {
            let mut delivery = delivery(req, channel, target, rendered, *template_version);
            if channel == Channel::Email {
                delivery.email_html = self.with_open_pixel(req, delivery.email_html.take());
            }
            out.emit(self.topics.deliver(channel), &req.user_id, &delivery)?;
            emitted += 1;
        }
        Ok(match emitted {
            0 => ChannelOutcome::NoContact,
            n => ChannelOutcome::Queued(n),
        })
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
    ) -> Result<Option<Arc<TemplateVersion>>, StoreError> {
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
        let Some(template) = self.store.templates.get(name, version).await? else {
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
    ) -> Result<(Rendered, Option<i32>), ContentError> {
        if let Some(t) = &req.template {
            let version = t.version.and_then(|v| u32::try_from(v).ok());
            let template = self
                .template(&t.name, version)
                .await
                .map_err(ContentError::Store)?
                .ok_or_else(|| {
                    ContentError::Unrenderable(format!(
                        "template {} (version {:?}) does not exist",
                        t.name, t.version
                    ))
                })?;
            let locale = user.and_then(|u| u.locale.as_deref());
            let track = |url: &str| self.links.click_url(&self.tracked(req, None, Some(url)));
            let rendered = render(&template, locale, &t.params, &track)
                .map_err(|e| ContentError::Unrenderable(e.to_string()))?;
            return Ok((rendered, i32::try_from(template.version).ok()));
        }
        let raw = req.content.clone().unwrap_or_default();
        // Raw content has no in-app title or body of its own: the push ones.
        let in_app = InAppContent {
            action_url: raw.action_url,
            avatar_url: raw.avatar_url,
            ..InAppContent::default()
        }
        .or_push(&raw.title, &raw.body);
        Ok((
            Rendered {
                locale: user.and_then(|u| u.locale.clone()).unwrap_or_default(),
                title: raw.title,
                body: raw.body,
                sms_text: raw.sms_text,
                email_subject: raw.email_subject,
                email_html: raw.email_html,
                email_text: raw.email_text,
                in_app,
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
            // the same event id and analytics can drop the repeat; led by
            // the notification's time.
            event_id: ids::time_ordered(
                &DELIVERY_ID_NAMESPACE,
                format!(
                    "{}\u{0}{kind:?}\u{0}{}",
                    req.notification_id,
                    channel.map(Channel::as_str).unwrap_or("")
                )
                .as_bytes(),
                &req.notification_id,
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
            dispatched_at: None,
        };
        out.emit(self.topics.tracking(), &req.notification_id, &event)
    }
}

/// The longest subject derived from a body, in characters: the line length
/// RFC 5322 recommends, which mail clients show whole.
const DERIVED_SUBJECT_CHARS: usize = 78;

/// The subject of an email: the one given, else the title, else the first
/// non-blank line of the text (the email text, else the body), cut to
/// [`DERIVED_SUBJECT_CHARS`] at a word boundary with `…`. Email providers
/// refuse a mail without one, and `tidings send --body hello` gives none.
/// `None` only when there is no text at all (an HTML-only mail without a
/// subject or title), which the provider then refuses.
fn email_subject(r: &Rendered) -> Option<String> {
    fn given(s: &Option<String>) -> Option<&str> {
        s.as_deref().filter(|s| !s.trim().is_empty())
    }
    if let Some(subject) = given(&r.email_subject).or_else(|| given(&r.title)) {
        return Some(subject.to_owned());
    }
    let text = given(&r.email_text).or_else(|| given(&r.body))?;
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    if line.chars().count() <= DERIVED_SUBJECT_CHARS {
        return Some(line.to_owned());
    }
    // Room for the ellipsis; cut at the last space that leaves a word.
    let head: String = line.chars().take(DERIVED_SUBJECT_CHARS - 1).collect();
    let cut = head
        .rfind(char::is_whitespace)
        .filter(|&i| i > 0)
        .map_or(head.as_str(), |i| head[..i].trim_end());
    Some(format!("{cut}…"))
}

fn delivery(
    req: &NotificationRequest,
    channel: Channel,
    target: String,
    r: &Rendered,
    template_version: Option<i32>,
) -> Delivery {
    // Led by the notification's time, as its id is: the intent marks keyed
    // by it (`uncertain = "skip"`) are appended in order too.
    let delivery_id = ids::time_ordered(
        &DELIVERY_ID_NAMESPACE,
        format!(
            "{}\u{0}{}\u{0}{target}",
            req.notification_id,
            channel.as_str()
        )
        .as_bytes(),
        &req.notification_id,
    )
    .to_string();
    // SMS carries its own text, falling back to the push body; the in-app
    // item its own title and body, falling back to the push ones (render).
    let (title, body) = match channel {
        Channel::Sms => (
            r.title.clone(),
            r.sms_text.clone().or_else(|| r.body.clone()),
        ),
        Channel::InApp => (r.in_app.title.clone(), r.in_app.body.clone()),
        _ => (r.title.clone(), r.body.clone()),
    };
    let (action_url, avatar_url) = match channel {
        Channel::InApp => (r.in_app.action_url.clone(), r.in_app.avatar_url.clone()),
        _ => (None, None),
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
        title,
        body,
        email_subject: match channel {
            Channel::Email => email_subject(r),
            _ => r.email_subject.clone(),
        },
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
        action_url,
        avatar_url,
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

    fn rendered(subject: Option<&str>, title: Option<&str>, body: Option<&str>) -> Rendered {
        Rendered {
            email_subject: subject.map(str::to_owned),
            title: title.map(str::to_owned),
            body: body.map(str::to_owned),
            ..Rendered::default()
        }
    }

    #[test]
    fn an_email_without_a_subject_gets_one_from_its_title_or_text() {
        let subject = |s, t, b| email_subject(&rendered(s, t, b));
        assert_eq!(
            subject(Some("Hi"), Some("T"), Some("b")).as_deref(),
            Some("Hi")
        );
        assert_eq!(
            subject(Some(" "), Some("Title"), Some("b")).as_deref(),
            Some("Title")
        );
        // `tidings send --user U --body hello`
        assert_eq!(subject(None, None, Some("hello")).as_deref(), Some("hello"));
        assert_eq!(
            subject(None, Some(""), Some("\n  first line  \nsecond")).as_deref(),
            Some("first line")
        );
        let text = Rendered {
            email_text: Some("from the text".into()),
            ..rendered(None, None, Some("from the body"))
        };
        assert_eq!(email_subject(&text).as_deref(), Some("from the text"));
        assert_eq!(subject(None, None, None), None);

        let long = "word ".repeat(40);
        let cut = subject(None, None, Some(&long)).unwrap();
        assert!(cut.ends_with("word…"), "{cut}");
        assert!(cut.chars().count() <= DERIVED_SUBJECT_CHARS, "{cut}");
        let unbroken = "é".repeat(200);
        let cut = subject(None, None, Some(&unbroken)).unwrap();
        assert_eq!(cut.chars().count(), DERIVED_SUBJECT_CHARS);
        assert!(cut.ends_with("é…"));
    }

    #[test]
    fn deferred_channels_of_one_notification_have_keys_of_their_own() {
        let mut req = NotificationRequest {
            notification_id: "n-1".into(),
            event_id: "e-1".into(),
            app_key: "app".into(),
            user_id: "u".into(),
            channels: Vec::new(),
            category: None,
            template: None,
            content: None,
            send_at: None,
            expires_at: None,
            priority: Default::default(),
            collapse_id: None,
            data: Default::default(),
            accepted_at: 0,
        };
        assert_eq!(event_key(&req), "n-1");
        req.send_at = Some(5);
        assert_eq!(
            event_key(&req),
            "n-1:5",
            "a scheduled send to every channel"
        );
        let mut sms = req.clone();
        sms.channels = vec!["sms".into()];
        let mut email = req.clone();
        email.channels = vec!["email".into()];
        assert_ne!(event_key(&sms), event_key(&email));
        let mut both = req.clone();
        both.channels = vec!["sms".into(), "email".into()];
        let mut reordered = req;
        reordered.channels = vec!["email".into(), "sms".into()];
        assert_eq!(
            event_key(&both),
            event_key(&reordered),
            "a retried send is the same event"
        );
    }

    #[test]
    fn an_in_app_delivery_carries_the_in_app_rendering_and_its_urls() {
        let rendered = Rendered {
            title: Some("push title".into()),
            body: Some("push body".into()),
            sms_text: Some("sms".into()),
            in_app: InAppContent {
                title: Some("inbox title".into()),
                body: Some("push body".into()),
                action_url: Some("https://app.example/orders/1".into()),
                avatar_url: Some("https://cdn.example/a.png".into()),
            },
            ..Rendered::default()
        };
        let req = NotificationRequest {
            notification_id: "n-1".into(),
            event_id: "e-1".into(),
            app_key: "app".into(),
            user_id: "u-1".into(),
            channels: Vec::new(),
            category: Some("orders".into()),
            template: None,
            content: None,
            send_at: None,
            expires_at: None,
            priority: Default::default(),
            collapse_id: None,
            data: Default::default(),
            accepted_at: 42,
        };
        let inbox = delivery(&req, Channel::InApp, "u-1".into(), &rendered, None);
        assert_eq!(inbox.title.as_deref(), Some("inbox title"));
        assert_eq!(inbox.body.as_deref(), Some("push body"));
        assert_eq!(
            inbox.action_url.as_deref(),
            Some("https://app.example/orders/1")
        );
        assert_eq!(
            inbox.avatar_url.as_deref(),
            Some("https://cdn.example/a.png")
        );
        assert_eq!((inbox.target.as_str(), inbox.accepted_at), ("u-1", 42));
        let push = delivery(&req, Channel::Ios, "token".into(), &rendered, None);
        assert_eq!(push.title.as_deref(), Some("push title"));
        assert_eq!((push.action_url, push.avatar_url), (None, None));
        let sms = delivery(&req, Channel::Sms, "+1".into(), &rendered, None);
        assert_eq!(sms.body.as_deref(), Some("sms"));
        assert_ne!(inbox.delivery_id, push.delivery_id);
    }

    #[test]
    fn the_in_app_target_is_the_user_id_with_or_without_a_contact_record() {
        assert_eq!(targets(Channel::InApp, "u-9", None, &[]), vec!["u-9"]);
        assert!(targets(Channel::Sms, "u-9", None, &[]).is_empty());
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
