//! A provider's health as one sender process sees it, and the developer
//! alert: the `provider_failing` gauge and an ERROR log line.
//!
//! Two ways to be unhealthy. Transient failures (5xx, 429, timeouts) raise
//! the alert after `senders.alert_after_failures` in a row; the deliveries go
//! to the retry tiers meanwhile. A misconfiguration (wrong credentials, a
//! key without rights) raises it at once and *holds* the channel: no
//! delivery is sent, retried through a tier or dead-lettered, because every
//! one would fail the same way; one delivery probes the provider now and
//! then (with capped backoff), and the first answer that is not a
//! misconfiguration lifts the hold. Any answer from the provider about the
//! message or its target (sent, invalid target, rejected) counts as healthy.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use tidings_telemetry::{IntCounter, IntGauge, ProviderFailing, ProviderResult};
use tracing::{error, info};

/// The first and the longest wait between probes of a misconfigured provider.
const FIRST_PROBE: Duration = Duration::from_secs(1);
const MAX_PROBE: Duration = Duration::from_secs(10);
/// How often the misconfiguration ERROR line repeats while it lasts.
const REPEAT_ERROR: Duration = Duration::from_secs(60);

/// What one provider call came to, as counted in `provider_results_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    InvalidTarget,
    Rejected,
    Transient,
    Misconfigured,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Sent,
        Outcome::InvalidTarget,
        Outcome::Rejected,
        Outcome::Transient,
        Outcome::Misconfigured,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::InvalidTarget => "invalid_target",
            Outcome::Rejected => "rejected",
            Outcome::Transient => "transient",
            Outcome::Misconfigured => "misconfigured",
        }
    }
}

/// The misconfiguration a provider reported, while it lasts.
struct Hold {
    setting: String,
    reason: String,
    /// When the next delivery may try the provider.
    next_probe: Instant,
    backoff: Duration,
    logged_at: Instant,
}

pub struct ProviderHealth {
    provider: &'static str,
    /// `tidings_provider_results_total` of each outcome, in
    /// [`Outcome::ALL`]'s order, and `tidings_provider_failing`: resolved
    /// once, as they are updated on every provider call.
    results: [IntCounter; 5],
    failing: IntGauge,
    alert_after: u32,
    failures_in_a_row: AtomicU32,
    hold: Mutex<Option<Hold>>,
}

impl ProviderHealth {
    pub fn new(provider: &'static str, alert_after: u32) -> Self {
        Self {
            provider,
            results: Outcome::ALL.map(|o| {
                ProviderResult {
                    provider,
                    outcome: o.as_str(),
                }
                .counter()
            }),
            failing: ProviderFailing { provider }.gauge(),
            alert_after: alert_after.max(1),
            failures_in_a_row: AtomicU32::new(0),
            hold: Mutex::new(None),
        }
    }

    /// Counts one provider call and updates the alert.
    pub fn record(&self, outcome: Outcome) {
        self.results[outcome as usize].inc();
        match outcome {
            Outcome::Sent | Outcome::InvalidTarget | Outcome::Rejected => self.answered(),
            Outcome::Transient => self.failed_transiently(),
            // `misconfigured` carries the setting, so it is reported there.
            Outcome::Misconfigured => {}
        }
    }

    /// While the provider is held for a misconfiguration: how long this
    /// delivery should wait before asking again. `None` means go ahead; at
    /// most one delivery per probe interval gets `None` during a hold.
    pub fn held_for(&self) -> Option<(Duration, String)> {
        let mut hold = lock(&self.hold);
        let h = hold.as_mut()?;
        let now = Instant::now();
        if now >= h.next_probe {
            // This delivery is the probe; the others keep waiting.
            h.next_probe = now + h.backoff;
            h.backoff = (h.backoff * 2).min(MAX_PROBE);
            return None;
        }
        Some((
            h.next_probe - now,
            format!(
                "{} is misconfigured ({}: {}); holding deliveries until it works",
                self.provider, h.setting, h.reason
            ),
        ))
    }

    /// The provider refused our credentials or configuration: raise the
    /// alert now, log the setting (not once per delivery), hold the channel.
    pub fn misconfigured(&self, setting: &str, reason: &str) {
        self.record(Outcome::Misconfigured);
        self.failures_in_a_row.fetch_add(1, Ordering::Relaxed);
        self.alert(true);
        let now = Instant::now();
        let mut hold = lock(&self.hold);
        let log = match hold.as_mut() {
            Some(h) => {
                h.setting = setting.to_owned();
                h.reason = reason.to_owned();
                let due = now.duration_since(h.logged_at) >= REPEAT_ERROR;
                if due {
                    h.logged_at = now;
                }
                due
            }
            None => {
                *hold = Some(Hold {
                    setting: setting.to_owned(),
                    reason: reason.to_owned(),
                    next_probe: now + FIRST_PROBE,
                    backoff: FIRST_PROBE * 2,
                    logged_at: now,
                });
                true
            }
        };
        if log {
            error!(
                provider = self.provider,
                setting,
                reason,
                "ALERT: provider refuses our configuration; fix `{setting}`. Deliveries are held (none is dead-lettered) and resume on their own once it works"
            );
        }
    }

    fn answered(&self) {
        let was_held = lock(&self.hold).take().is_some();
        let failures = self.failures_in_a_row.swap(0, Ordering::Relaxed);
        if was_held || failures >= self.alert_after {
            info!(provider = self.provider, "provider recovered");
        }
        self.alert(false);
    }

    fn alert(&self, failing: bool) {
        self.failing.set(i64::from(failing));
    }

    fn failed_transiently(&self) {
        let n = self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.alert_after {
            self.alert(true);
            if n == self.alert_after || n.is_multiple_of(100) {
                error!(
                    provider = self.provider,
                    failures_in_a_row = n,
                    "ALERT: provider keeps failing; deliveries are going to retry topics"
                );
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing(provider: &str) -> i64 {
        ProviderFailing { provider }.current()
    }

    #[test]
    fn each_outcome_counts_on_its_own_counter() {
        for (i, outcome) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(outcome as usize, i, "{outcome:?}");
        }
        let h = ProviderHealth::new("health-test-outcomes", 3);
        for outcome in Outcome::ALL {
            h.record(outcome);
        }
        h.record(Outcome::Sent);
        for outcome in Outcome::ALL {
            let n = if outcome == Outcome::Sent { 2 } else { 1 };
            assert_eq!(
                ProviderResult {
                    provider: "health-test-outcomes",
                    outcome: outcome.as_str(),
                }
                .total(),
                n,
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn transient_failures_alert_after_the_threshold_and_an_answer_clears_it() {
        let h = ProviderHealth::new("health-test-transient", 3);
        h.record(Outcome::Transient);
        h.record(Outcome::Transient);
        assert_eq!(failing("health-test-transient"), 0);
        h.record(Outcome::Transient);
        assert_eq!(failing("health-test-transient"), 1);
        // A rejection is an answer about the message: the provider works.
        h.record(Outcome::Rejected);
        assert_eq!(failing("health-test-transient"), 0);
        assert!(h.held_for().is_none(), "transient failures never hold");
    }

    #[test]
    fn a_misconfiguration_alerts_at_once_holds_all_but_one_probe_and_an_answer_lifts_it() {
        let h = ProviderHealth::new("health-test-misconfigured", 10);
        h.misconfigured("providers.sms.auth_token", "401 Authenticate");
        assert_eq!(failing("health-test-misconfigured"), 1);
        let (wait, reason) = h.held_for().expect("held");
        assert!(wait <= FIRST_PROBE, "{wait:?}");
        assert!(reason.contains("providers.sms.auth_token"), "{reason}");
        // Once the probe is due, exactly one delivery goes ahead.
        lock(&h.hold).as_mut().unwrap().next_probe = Instant::now();
        assert!(h.held_for().is_none());
        assert!(
            h.held_for().is_some(),
            "a second probe in the same interval"
        );
        // The probe got through: the hold lifts and the alert clears.
        h.record(Outcome::Sent);
        assert!(h.held_for().is_none());
        assert_eq!(failing("health-test-misconfigured"), 0);
    }

    #[test]
    fn probes_back_off_up_to_a_cap() {
        let h = ProviderHealth::new("health-test-backoff", 10);
        h.misconfigured("s", "r");
        let mut waits = Vec::new();
        for _ in 0..8 {
            lock(&h.hold).as_mut().unwrap().next_probe = Instant::now();
            assert!(h.held_for().is_none());
            h.misconfigured("s", "r");
            waits.push(h.held_for().expect("held").0);
        }
        assert!(
            waits
                .windows(2)
                .all(|w| w[0] <= w[1] + Duration::from_millis(50))
        );
        assert!(waits.iter().all(|w| *w <= MAX_PROBE), "{waits:?}");
        assert!(waits.last().unwrap() > &(MAX_PROBE / 2), "{waits:?}");
    }
}
