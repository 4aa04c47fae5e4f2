//! What every provider client is built from: the setup error, secrets that
//! never print, and the per-provider limits (how many requests may be in
//! flight, how many may start per second) with the limiter that enforces them.

use std::{
    fmt,
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::ProviderError;

/// A provider could not be built from its configuration. Raised at startup,
/// never per delivery, so it says which provider and which setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{provider} provider: {problem}")]
pub struct SetupError {
    pub provider: &'static str,
    pub problem: String,
}

impl SetupError {
    pub(crate) fn new(provider: &'static str, problem: impl Into<String>) -> Self {
        Self {
            provider,
            problem: problem.into(),
        }
    }

    /// Reads a file named in the config, saying which setting named it.
    pub(crate) fn read(provider: &'static str, key: &str, path: &Path) -> Result<Vec<u8>, Self> {
        std::fs::read(path).map_err(|e| {
            Self::new(
                provider,
                format!("cannot read `{key}` {}: {e}", path.display()),
            )
        })
    }
}

/// A credential from the config. Debug output and logs show `<redacted>`, so
/// a config dump or a panic message cannot leak it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.into())
    }
}

/// How hard one provider may be pushed by one sender process. Providers
/// throttle per account (FCM and Twilio quotas, SendGrid's rate limits, an
/// SMTP relay's connection cap); staying under them is cheaper than eating
/// 429s and retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendLimits {
    /// Requests in flight at once. For APNs these are HTTP/2 streams on one
    /// connection; for SMTP it is also the connection pool size.
    pub max_in_flight: usize,
    /// Requests started per second, with bursts of up to one second's worth;
    /// none means no rate limit.
    #[serde(default)]
    pub rate_per_sec: Option<f64>,
}

impl SendLimits {
    pub const fn new(max_in_flight: usize) -> Self {
        Self {
            max_in_flight,
            rate_per_sec: None,
        }
    }
}

impl Default for SendLimits {
    fn default() -> Self {
        Self::new(32)
    }
}

/// Enforces [`SendLimits`] for one provider: a token bucket for the rate,
/// then a semaphore for the requests in flight.
pub(crate) struct Limiter {
    in_flight: Semaphore,
    bucket: Option<Mutex<Bucket>>,
}

struct Bucket {
    per_sec: f64,
    capacity: f64,
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    /// Takes a token, or says how long until one is there.
    fn take(&mut self, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec))
        }
    }
}

impl Limiter {
    pub(crate) fn new(provider: &'static str, limits: &SendLimits) -> Result<Self, SetupError> {
        if limits.max_in_flight == 0 {
            return Err(SetupError::new(
                provider,
                "`limits.max_in_flight` must be at least 1",
            ));
        }
        let bucket = match limits.rate_per_sec {
            None => None,
            Some(r) if r.is_finite() && r > 0.0 => Some(Mutex::new(Bucket {
                per_sec: r,
                // One second's worth, but at least one request, so a rate
                // below 1/s still lets requests through.
                capacity: r.max(1.0),
                tokens: r.max(1.0),
                refilled: Instant::now(),
            })),
            Some(r) => {
                return Err(SetupError::new(
                    provider,
                    format!("`limits.rate_per_sec` must be a positive number, got {r}"),
                ));
            }
        };
        Ok(Self {
            in_flight: Semaphore::new(limits.max_in_flight),
            bucket,
        })
    }

    /// Waits for a rate token, then for a slot. The rate comes first so a
    /// request waiting on the rate does not hold a slot others could use.
    /// The returned permit frees the slot when dropped.
    pub(crate) async fn acquire(&self) -> Result<SemaphorePermit<'_>, ProviderError> {
        if let Some(bucket) = &self.bucket {
            loop {
                // A poisoned lock only means another task panicked while
                // refilling; the bucket's numbers are still usable.
                let wait = bucket
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take(Instant::now());
                match wait {
                    None => break,
                    Some(d) => tokio::time::sleep(d).await,
                }
            }
        }
        // The semaphore is never closed; the error arm is for completeness.
        self.in_flight
            .acquire()
            .await
            .map_err(|_| ProviderError::Transient {
                reason: "provider is shutting down".into(),
                retry_after: None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_paces() {
        let start = Instant::now();
        let mut b = Bucket {
            per_sec: 2.0,
            capacity: 2.0,
            tokens: 2.0,
            refilled: start,
        };
        assert_eq!(b.take(start), None);
        assert_eq!(b.take(start), None);
        let wait = b.take(start).expect("bucket is empty");
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert_eq!(b.take(start + Duration::from_millis(500)), None);
    }

    #[test]
    fn limits_are_checked() {
        assert!(
            Limiter::new(
                "t",
                &SendLimits {
                    max_in_flight: 0,
                    rate_per_sec: None
                }
            )
            .is_err()
        );
        assert!(
            Limiter::new(
                "t",
                &SendLimits {
                    max_in_flight: 1,
                    rate_per_sec: Some(0.0)
                }
            )
            .is_err()
        );
        assert!(
            Limiter::new(
                "t",
                &SendLimits {
                    max_in_flight: 1,
                    rate_per_sec: Some(f64::NAN)
                }
            )
            .is_err()
        );
        assert!(
            Limiter::new(
                "t",
                &SendLimits {
                    max_in_flight: 1,
                    rate_per_sec: Some(0.5)
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::from("hunter2")), "<redacted>");
    }
}
