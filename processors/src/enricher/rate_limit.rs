//! Per-user rate limits, so users are not flooded into switching
//! notifications off.
//!
//! State is in memory in the enricher that owns the user's partition (the
//! request topic is keyed by user). Windows record the notification ids they
//! admitted, so processing the same record twice (a retry, a replay) is not
//! counted twice. A partition moving to another member starts with empty
//! windows: the limit may be exceeded once around a rebalance, never more.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use tidings_config::RateLimit;
use tidings_schemas::Channel;

type Millis = i64;

/// Admitted `(at, notification id)` pairs per `("{user}\0{channel}", rule
/// index)`, oldest first.
type Windows = HashMap<(String, usize), VecDeque<(Millis, String)>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Over a limit; the window has room again at this time.
    Over {
        free_at: Millis,
    },
}

#[derive(Default)]
pub struct RateLimiter {
    rules: Vec<RateLimit>,
    windows: Mutex<Windows>,
}

impl RateLimiter {
    pub fn new(rules: Vec<RateLimit>) -> Self {
        Self {
            rules,
            windows: Mutex::default(),
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
        let matching: Vec<(usize, &RateLimit)> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.channel.as_deref().is_none_or(|c| c == channel.as_str()))
            .filter(|(_, r)| r.category.is_none() || r.category.as_deref() == category)
            .collect();
        if matching.is_empty() {
            return Decision::Allow;
        }
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let mut free_at = None;
        for &(i, rule) in &matching {
            let window_ms = i64::try_from(rule.per_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
            let window = windows
                .entry((format!("{user}\u{0}{}", channel.as_str()), i))
                .or_default();
            while window.front().is_some_and(|(at, _)| *at <= now - window_ms) {
                window.pop_front();
            }
            if window.iter().any(|(_, id)| id == notification_id) {
                continue;
            }
            if window.len() >= rule.max as usize {
                let oldest = window.front().map_or(now, |(at, _)| *at);
                free_at = Some(free_at.unwrap_or(0).max(oldest + window_ms));
            }
        }
        if let Some(free_at) = free_at {
            return Decision::Over { free_at };
        }
        for &(i, _) in &matching {
            let window = windows
                .entry((format!("{user}\u{0}{}", channel.as_str()), i))
                .or_default();
            if !window.iter().any(|(_, id)| id == notification_id) {
                window.push_back((now, notification_id.to_owned()));
            }
        }
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
}
