//! Per-user rate limits, so users are not flooded into switching
//! notifications off.
//!
//! A rule keeps one sliding window per user and channel: the notifications it
//! admitted there, as `(admitted at, notification id)`. Windows record ids,
//! so processing the same record twice (a retry, a replay) is not counted
//! twice.
//!
//! The windows are durable in the store's [`RateLimitLedger`], under a
//! [`window_key`] that names the user, the channel and the rule by what it
//! is (not by its position in the configuration), and are worked on in
//! memory by the enricher that owns the user's partition (the request topic
//! is keyed by user), without a store round trip per record:
//!
//! - the batch's `prefetch` reads the windows every record of the batch can
//!   touch ([`RateLimiter::window_keys`]) in one call and [`merge`]s them
//!   into memory, by notification id, so a merge repeated or overlapping
//!   what this process admitted itself counts nothing twice;
//! - `process` admits from memory ([`RateLimiter::admit_recording`]) and
//!   collects the batch's new admissions;
//! - the batch's `finish` writes them in one call, before the batch's
//!   outputs are produced and its offsets committed.
//!
//! So after a restart or a rebalance the new owner of a partition starts
//! from the windows the previous owner wrote. What is left: a batch that
//! admitted but crashed before its `finish` is consumed again, and admits
//! again then; and if a prefetch read fails, the batch goes on with the
//! windows in memory (a warning is logged), which may be empty in a process
//! that just took the partition over.
//!
//! The windows in memory are a cache of the store's, and input (user ids)
//! grows them, so they are bounded ([`RateLimiter::bounded`]): windows with
//! no admission younger than the longest rule's window are empty for every
//! rule and are dropped by a sweep at most once a minute, and past
//! `max_windows` the least recently used windows are dropped too. A dropped
//! window that was still live is read back from the store by the next batch
//! that touches it, so eviction costs a read, not a limit.
//!
//! [`RateLimitLedger`]: tidings_store::RateLimitLedger
//! [`merge`]: RateLimiter::merge

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::Duration,
};

use tidings_config::RateLimit;
use tidings_schemas::Channel;
use tidings_store::NewAdmission;

type Millis = i64;

/// The admissions one window holds, `(at, notification id)`, oldest first.
#[derive(Default)]
struct Window {
    admitted: VecDeque<(Millis, String)>,
    /// When the window was last read or written, by [`Windows::clock`]: the
    /// least recently used windows go first when there are too many.
    used: u64,
}

/// The windows in memory by [`window_key`].
#[derive(Default)]
struct Windows {
    by_key: HashMap<String, Window>,
    /// Counts uses, for least-recently-used eviction.
    clock: u64,
    /// When expired windows were last swept, by the admission clock.
    swept_at: Millis,
}

/// How often (by the admission clock) windows that expired are dropped.
const SWEEP_EVERY_MS: Millis = 60_000;

/// The default bound on windows in memory (`enricher.rate_limit_windows`).
pub const DEFAULT_MAX_WINDOWS: usize = 100_000;

impl Windows {
    /// The window of `key`, created empty if needed, marked as just used.
    fn touch(&mut self, key: &str) -> &mut Window {
        self.clock += 1;
        let clock = self.clock;
        let window = self.by_key.entry(key.to_owned()).or_default();
        window.used = clock;
        window
    }

    /// Drops the windows whose every admission is older than `longest_ms`
    /// (the longest rule's window) at `now`: they are empty for every rule.
    /// Runs at most once per [`SWEEP_EVERY_MS`], or when there are more than
    /// `max` windows; then, if there still are, drops the least recently used
    /// down to nine tenths of `max`, so a full map is not swept on every
    /// admission. Run after each admission, which so leaves at most `max`.
    fn bound(&mut self, now: Millis, longest_ms: Millis, max: usize) {
        let over = self.by_key.len() > max;
        if !over && now.saturating_sub(self.swept_at) < SWEEP_EVERY_MS {
            return;
        }
        self.swept_at = now;
        let horizon = now.saturating_sub(longest_ms);
        self.by_key
            .retain(|_, w| w.admitted.back().is_some_and(|(at, _)| *at > horizon));
        if self.by_key.len() <= max {
            return;
        }
        let keep = max - max / 10;
        let mut uses: Vec<u64> = self.by_key.values().map(|w| w.used).collect();
        let cut = uses.len() - keep;
        let (_, oldest_kept, _) = uses.select_nth_unstable(cut);
        let oldest_kept = *oldest_kept;
        // Uses are distinct (one clock tick each), so this keeps `keep`.
        self.by_key.retain(|_, w| w.used >= oldest_kept);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Over a limit; the window has room again at this time.
    Over {
        free_at: Millis,
    },
}

/// The key of the window `rule` keeps for `user` on `channel`, in memory and
/// in the store. It names the rule by what selects and ages its admissions
/// (its channel, category and window length), so reordering, adding or
/// removing other rules keeps a rule's window, and so does changing its
/// `max`, which only sets how many the window may hold. Two rules alike but
/// for `max` select the same notifications and share the window.
///
/// The form is `{user} {channel} {per_secs}s {rule channel} {rule category}`,
/// a rule's unset channel or category written `*` and a set one as
/// `{length}:{text}`, so no two rules or users give the same key (user ids
/// hold no spaces).
pub fn window_key(user: &str, channel: Channel, rule: &RateLimit) -> String {
    fn part(value: Option<&str>) -> String {
        value.map_or_else(|| "*".to_owned(), |v| format!("{}:{v}", v.len()))
    }
    format!(
        "{user} {} {}s {} {}",
        channel.as_str(),
        rule.per_secs,
        part(rule.channel.as_deref()),
        part(rule.category.as_deref()),
    )
}

fn window_ms(rule: &RateLimit) -> Millis {
    i64::try_from(rule.per_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

pub struct RateLimiter {
    rules: Vec<RateLimit>,
    /// The longest window of any rule.
    longest_ms: Millis,
    max_windows: usize,
    windows: Mutex<Windows>,
}

impl RateLimiter {
    /// A limiter keeping at most [`DEFAULT_MAX_WINDOWS`] windows in memory.
    pub fn new(rules: Vec<RateLimit>) -> Self {
        Self::bounded(rules, DEFAULT_MAX_WINDOWS)
    }

    /// A limiter keeping at most `max_windows` windows in memory (at least
    /// one); see the module docs for what is dropped first.
    pub fn bounded(rules: Vec<RateLimit>, max_windows: usize) -> Self {
        let longest_ms = rules.iter().map(window_ms).max().unwrap_or(0);
        Self {
            rules,
            longest_ms,
            max_windows: max_windows.max(1),
            windows: Mutex::default(),
        }
    }

    /// How many windows are in memory.
    pub fn windows_in_memory(&self) -> usize {
        self.lock().by_key.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Windows> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether no rule is configured: nothing is ever limited.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn matching<'a>(
        &'a self,
        channel: Channel,
        category: Option<&'a str>,
    ) -> impl Iterator<Item = &'a RateLimit> {
        self.rules
            .iter()
            .filter(move |r| r.channel.as_deref().is_none_or(|c| c == channel.as_str()))
            .filter(move |r| r.category.is_none() || r.category.as_deref() == category)
    }

    /// The keys of the windows that admitting a notification of `category`
    /// for `user` on `channel` consults: what a batch's prefetch reads.
    pub fn window_keys(&self, user: &str, channel: Channel, category: Option<&str>) -> Vec<String> {
        let mut keys: Vec<String> = self
            .matching(channel, category)
            .map(|rule| window_key(user, channel, rule))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Adds admissions read from the store to the windows in memory: those
    /// whose notification id a window already holds are skipped, so merging
    /// again, or merging what this process admitted and wrote itself, counts
    /// nothing twice. Windows stay oldest first; expired admissions are
    /// dropped by the next [`admit`](Self::admit) of the window.
    pub fn merge(&self, stored: HashMap<String, Vec<(Millis, String)>>) {
        if stored.is_empty() {
            return;
        }
        let mut windows = self.lock();
        for (key, admissions) in stored {
            let window = &mut windows.touch(&key).admitted;
            let before = window.len();
            for (at, id) in admissions {
                if !window.iter().any(|(_, known)| *known == id) {
                    window.push_back((at, id));
                }
            }
            if window.len() != before {
                window.make_contiguous().sort();
            }
        }
    }

    /// Admits `notification_id` for `user` on `channel` if every matching
    /// rule has room, counting it in each; otherwise counts nothing.
    pub fn admit(
        &self,
        user: &str,
        channel: Channel,
        category: Option<&str>,
        notification_id: &str,
        now: Millis,
    ) -> Decision {
        self.admit_recording(
            user,
            channel,
            category,
            notification_id,
            now,
            &mut Vec::new(),
        )
    }

    /// [`admit`](Self::admit), adding to `new` every admission it counted
    /// that its window did not hold yet, with the rule's window as TTL: what
    /// the batch writes to the store when it finishes.
    pub fn admit_recording(
        &self,
        user: &str,
        channel: Channel,
        category: Option<&str>,
        notification_id: &str,
        now: Millis,
        new: &mut Vec<NewAdmission>,
    ) -> Decision {
        let matching: Vec<(String, &RateLimit)> = self
            .matching(channel, category)
            .map(|rule| (window_key(user, channel, rule), rule))
            .collect();
        if matching.is_empty() {
            return Decision::Allow;
        }
        let mut windows = self.lock();
        let mut free_at = None;
        for (key, rule) in &matching {
            let window_ms = window_ms(rule);
            let window = &mut windows.touch(key).admitted;
            while window
                .front()
                .is_some_and(|(at, _)| *at <= now.saturating_sub(window_ms))
            {
                window.pop_front();
            }
            if window.iter().any(|(_, id)| id == notification_id) {
                continue;
            }
            if window.len() >= rule.max as usize {
                let oldest = window.front().map_or(now, |(at, _)| *at);
                free_at = Some(free_at.unwrap_or(0).max(oldest.saturating_add(window_ms)));
            }
        }
        if let Some(free_at) = free_at {
            windows.bound(now, self.longest_ms, self.max_windows);
            return Decision::Over { free_at };
        }
        for (key, rule) in matching {
            let window = &mut windows.touch(&key).admitted;
            if !window.iter().any(|(_, id)| id == notification_id) {
                window.push_back((now, notification_id.to_owned()));
                let ttl = Duration::from_secs(rule.per_secs);
                new.push((key, now, notification_id.to_owned(), ttl));
            }
        }
        windows.bound(now, self.longest_ms, self.max_windows);
        Decision::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> RateLimiter {
        RateLimiter::new(vec![RateLimit {
            channel: Some("sms".into()),
            category: None,
            max: 2,
            per_secs: 60,
        }])
    }

    fn sms_rule(max: u32) -> RateLimit {
        RateLimit {
            channel: Some("sms".into()),
            category: None,
            max,
            per_secs: 60,
        }
    }

    #[test]
    fn at_most_max_per_window() {
        let l = limiter();
        assert_eq!(l.admit("u", Channel::Sms, None, "n1", 0), Decision::Allow);
        assert_eq!(
            l.admit("u", Channel::Sms, None, "n2", 1_000),
            Decision::Allow
        );
        assert_eq!(
            l.admit("u", Channel::Sms, None, "n3", 2_000),
            Decision::Over { free_at: 60_000 }
        );
        assert_eq!(
            l.admit("u", Channel::Sms, None, "n3", 60_001),
            Decision::Allow,
            "window moved on"
        );
    }

    #[test]
    fn the_same_notification_counts_once_and_others_are_separate() {
        let l = limiter();
        for _ in 0..5 {
            assert_eq!(l.admit("u", Channel::Sms, None, "n1", 0), Decision::Allow);
        }
        assert_eq!(l.admit("u", Channel::Sms, None, "n2", 0), Decision::Allow);
        assert_eq!(
            l.admit("v", Channel::Sms, None, "n9", 0),
            Decision::Allow,
            "other users"
        );
        assert_eq!(
            l.admit("u", Channel::Email, None, "n9", 0),
            Decision::Allow,
            "other channels"
        );
    }

    #[test]
    fn window_keys_name_the_rule_not_its_position() {
        let marketing = RateLimit {
            channel: None,
            category: Some("marketing".into()),
            max: 1,
            per_secs: 86_400,
        };
        let key = window_key("u-1", Channel::Ios, &sms_rule(2));
        assert_eq!(key, "u-1 ios 60s 3:sms *");
        assert_eq!(
            window_key("u-1", Channel::Ios, &marketing),
            "u-1 ios 86400s * 9:marketing"
        );
        assert_eq!(
            window_key("u-1", Channel::Ios, &sms_rule(5)),
            key,
            "max is not part of the window"
        );

        let one = RateLimiter::new(vec![sms_rule(2), marketing.clone()]);
        let other = RateLimiter::new(vec![marketing, sms_rule(3)]);
        let mut keys = one.window_keys("u-1", Channel::Sms, Some("marketing"));
        keys.sort();
        let mut reordered = other.window_keys("u-1", Channel::Sms, Some("marketing"));
        reordered.sort();
        assert_eq!(keys, reordered, "rule order does not matter");
        assert_eq!(keys.len(), 2);
        assert_eq!(
            one.window_keys("u-1", Channel::Email, None),
            Vec::<String>::new(),
            "no rule matches"
        );
    }

    #[test]
    fn new_admissions_are_recorded_once_with_the_rules_window() {
        let l = RateLimiter::new(vec![sms_rule(2), sms_rule(3)]);
        let mut new = Vec::new();
        for _ in 0..3 {
            assert_eq!(
                l.admit_recording("u", Channel::Sms, None, "n1", 5, &mut new),
                Decision::Allow
            );
        }
        let key = window_key("u", Channel::Sms, &sms_rule(2));
        assert_eq!(
            new,
            vec![(key, 5, "n1".to_owned(), Duration::from_secs(60))],
            "one window shared by both rules; repeats are not new"
        );
        assert_eq!(
            l.admit_recording("u", Channel::Email, None, "n1", 5, &mut new),
            Decision::Allow
        );
        assert_eq!(new.len(), 1, "no rule, nothing to record");
    }

    #[test]
    fn merged_admissions_fill_the_window() {
        let l = limiter();
        let key = window_key("u", Channel::Sms, &sms_rule(2));
        // What the previous owner of the partition admitted and wrote.
        l.merge(HashMap::from([(
            key.clone(),
            vec![(1_000, "n1".to_owned()), (2_000, "n2".to_owned())],
        )]));
        let mut new = Vec::new();
        assert_eq!(
            l.admit_recording("u", Channel::Sms, None, "n3", 3_000, &mut new),
            Decision::Over { free_at: 61_000 },
            "the window survived the move"
        );
        assert_eq!(
            l.admit_recording("u", Channel::Sms, None, "n2", 3_000, &mut new),
            Decision::Allow,
            "a replay of an admitted notification is admitted again"
        );
        assert!(new.is_empty(), "nothing new to write");
        assert_eq!(
            l.admit("u", Channel::Sms, None, "n3", 61_001),
            Decision::Allow,
            "merged admissions age out like the others"
        );
    }

    #[test]
    fn merging_is_idempotent_and_keeps_the_window_oldest_first() {
        let l = limiter();
        let key = window_key("u", Channel::Sms, &sms_rule(2));
        let mut new = Vec::new();
        assert_eq!(
            l.admit_recording("u", Channel::Sms, None, "n2", 5_000, &mut new),
            Decision::Allow
        );
        // This process's own write read back, plus an older admission by
        // another owner, twice.
        let stored = HashMap::from([(
            key.clone(),
            vec![(1_000, "n1".to_owned()), (5_000, "n2".to_owned())],
        )]);
        l.merge(stored.clone());
        l.merge(stored);
        assert_eq!(
            l.admit("u", Channel::Sms, None, "n3", 6_000),
            Decision::Over { free_at: 61_000 },
            "two admissions, the oldest first: room again when n1 ages out"
        );
        assert_eq!(
            l.admit("u", Channel::Sms, None, "n3", 61_000),
            Decision::Allow
        );
        assert_eq!(
            l.admit("u", Channel::Sms, None, "n4", 61_000),
            Decision::Over { free_at: 65_000 },
            "n2 and n3 fill the window"
        );
    }

    #[test]
    fn expired_windows_are_dropped() {
        let l = limiter();
        for user in 0..100 {
            l.admit(&format!("u{user}"), Channel::Sms, None, "n1", 0);
        }
        assert_eq!(l.windows_in_memory(), 100);
        // A minute on, the windows are still live: nothing is dropped.
        l.admit("v", Channel::Sms, None, "n1", 59_999);
        assert_eq!(l.windows_in_memory(), 101);
        // Once the window (60 s) has passed, the sweep drops every window
        // without a live admission.
        l.admit("v", Channel::Sms, None, "n2", 60_001);
        assert_eq!(l.windows_in_memory(), 1, "only v's window is live");
        assert_eq!(
            l.admit("v", Channel::Sms, None, "n3", 60_002),
            Decision::Over { free_at: 119_999 },
            "v's window kept both of its admissions"
        );
    }

    #[test]
    fn windows_are_bounded_and_the_least_recently_used_go_first() {
        let l = RateLimiter::bounded(vec![sms_rule(2)], 10);
        assert_eq!(l.admit("hot", Channel::Sms, None, "n1", 0), Decision::Allow);
        assert_eq!(l.admit("hot", Channel::Sms, None, "n2", 0), Decision::Allow);
        for user in 0..1_000 {
            l.admit(&format!("u{user}"), Channel::Sms, None, "n1", 1);
            // The hot user is seen between others (a replay of n1).
            l.admit("hot", Channel::Sms, None, "n1", 1);
            assert!(l.windows_in_memory() <= 10, "{}", l.windows_in_memory());
        }
        assert_eq!(
            l.admit("hot", Channel::Sms, None, "n3", 2),
            Decision::Over { free_at: 60_000 },
            "the window in use survived a thousand others"
        );
    }

    #[test]
    fn merging_other_windows_or_nothing_changes_nothing() {
        let l = limiter();
        l.merge(HashMap::new());
        l.merge(HashMap::from([(
            window_key("v", Channel::Sms, &sms_rule(2)),
            vec![(0, "a".to_owned()), (0, "b".to_owned())],
        )]));
        assert_eq!(l.admit("u", Channel::Sms, None, "n1", 0), Decision::Allow);
        assert_eq!(l.admit("u", Channel::Sms, None, "n2", 0), Decision::Allow);
        assert_eq!(
            l.admit("v", Channel::Sms, None, "c", 0),
            Decision::Over { free_at: 60_000 }
        );
    }
}
