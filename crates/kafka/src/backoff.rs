//! Waiting before trying again: exponential backoff whose sleeps end early
//! when the process is shutting down. The stage runner's retries (decoding,
//! processing, `finish`, producing) all wait through this one helper, and
//! so can any other loop that retries a dependency.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Doubling waits between `min` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        // A zero `min` would never grow; a `max` under `min` caps it.
        let min = min.max(Duration::from_millis(1));
        let max = max.max(min);
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The wait the next [`Backoff::next_wait`] will return.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// The wait before the next attempt; each call doubles the one after, up
    /// to `max`.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(self.max);
        wait
    }

    /// Back to `min`, after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// Sleeps for [`Backoff::next_wait`]; false if `shutdown` came first.
    pub async fn sleep_or_cancel(&mut self, shutdown: &CancellationToken) -> bool {
        sleep_or_cancel(self.next_wait(), shutdown).await
    }
}

/// Sleeps for `wait`; false if `shutdown` came first (or had already come).
pub async fn sleep_or_cancel(wait: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let waits: Vec<u128> = (0..4).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.peek(), Duration::from_millis(100));
    }

    #[test]
    fn a_zero_minimum_still_grows() {
        let mut b = Backoff::new(Duration::ZERO, Duration::from_millis(4));
        let waits: Vec<u128> = (0..4).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [1, 2, 4, 4]);
    }

    #[tokio::test]
    async fn shutdown_ends_the_sleep() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        let started = std::time::Instant::now();
        assert!(!b.sleep_or_cancel(&shutdown).await);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(sleep_or_cancel(Duration::from_millis(1), &CancellationToken::new()).await);
    }
}
