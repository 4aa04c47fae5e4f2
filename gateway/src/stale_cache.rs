//! The gateway's read-through cache of store rows on the `Send` hot path
//! (apps, a template's latest version), bounded and able to ride out a store
//! outage.
//!
//! Accepting a notification needs Kafka, not the store: the store only says
//! who the caller is and which template version to pin. So a row read once is
//! reused for `fresh_for`, then re-read; when the re-read fails with a
//! retriable store error (or the store does not answer within
//! [`REFRESH_WAIT`]) the last good row is served for up to `stale_for` after
//! it was read (`gateway.auth_stale_serve_secs`). A key never read is refused
//! until the store answers: nothing is known about it.
//!
//! Both maps are bounded by entries (quick_cache, CLOCK-Pro), and keys the
//! store does not have sit in a map of their own for `fresh_for` only, so a
//! caller spraying unknown keys can neither grow memory nor evict the rows
//! of known callers.

use std::{future::Future, hash::Hash, time::Duration};

use quick_cache::sync::Cache;
use tidings_store::StoreError;
use tidings_telemetry::StaleRead;
use tokio::time::Instant;

/// How long a re-read may take when a stale row could be served instead: a
/// store that hangs (rather than refusing) must not hold every call.
pub const REFRESH_WAIT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Entry<V> {
    value: V,
    /// When the store last returned `value`: bounds how stale it may get.
    read_at: Instant,
    /// When the store was last asked (successfully or not): a failing store
    /// is asked again only `fresh_for` later, not on every call.
    asked_at: Instant,
}

/// How a lookup was answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup<V> {
    /// From the store, or from a row read within `fresh_for`.
    Fresh(Option<V>),
    /// The store could not be read: the last good row, read `age` ago.
    Stale { value: V, age: Duration },
}

impl<V> Lookup<V> {
    pub fn into_value(self) -> Option<V> {
        match self {
            Lookup::Fresh(v) => v,
            Lookup::Stale { value, .. } => Some(value),
        }
    }
}

/// Weighs cached rows for quick_cache: by a function of the value (bytes,
/// for templates), at least 1 so every row can be evicted.
pub struct Weigh<V>(fn(&V) -> u64);

impl<V> Clone for Weigh<V> {
    fn clone(&self) -> Self {
        Self(self.0)
    }
}

impl<K, V> quick_cache::Weighter<K, Entry<V>> for Weigh<V> {
    fn weight(&self, _: &K, entry: &Entry<V>) -> u64 {
        (self.0)(&entry.value).max(1)
    }
}

pub struct StaleCache<K, V> {
    /// What the rows are (`app`, `template`): the `what` of
    /// `tidings_gateway_stale_reads_total`.
    what: &'static str,
    found: Cache<K, Entry<V>, Weigh<V>>,
    /// Keys the store said it does not have, with when it said so.
    missing: Cache<K, Instant>,
    fresh_for: Duration,
    stale_for: Duration,
}

impl<K, V> StaleCache<K, V>
where
    K: Eq + Hash + Clone,
    V: Clone,
{
    /// Up to `capacity` rows and as many missing keys; rows are re-read after
    /// `fresh_for` and served at most `stale_for` after they were read.
    pub fn new(
        what: &'static str,
        capacity: usize,
        fresh_for: Duration,
        stale_for: Duration,
    ) -> Self {
        Self::weighted(what, capacity, capacity as u64, |_| 1, fresh_for, stale_for)
    }

    /// Rows weighing up to `weight_capacity` in all (by `weigh`, e.g. their
    /// bytes), and up to `items` missing keys.
    pub fn weighted(
        what: &'static str,
        items: usize,
        weight_capacity: u64,
        weigh: fn(&V) -> u64,
        fresh_for: Duration,
        stale_for: Duration,
    ) -> Self {
        Self {
            what,
            found: Cache::with_weighter(items.max(1), weight_capacity.max(1), Weigh(weigh)),
            missing: Cache::new(items.max(1)),
            fresh_for,
            stale_for,
        }
    }

    /// The row of `key`: cached, else `read` from the store. `read` is
    /// injected (the store call) so the outage behaviour is testable.
    pub async fn get<F, Fut>(&self, key: &K, read: F) -> Result<Lookup<V>, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, StoreError>>,
    {
        let now = Instant::now();
        let cached = self.found.get(key);
        if let Some(e) = &cached
            && now.duration_since(e.asked_at) < self.fresh_for
        {
            return Ok(Lookup::Fresh(Some(e.value.clone())));
        }
        if cached.is_none()
            && let Some(at) = self.missing.get(key)
            && now.duration_since(at) < self.fresh_for
        {
            return Ok(Lookup::Fresh(None));
        }
        let result = match &cached {
            // Something to fall back on: do not wait long for the store.
            Some(_) => match tokio::time::timeout(REFRESH_WAIT, read()).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Backend {
                    op: "gateway cache refresh",
                    key: String::new(),
                    retriable: true,
                    source: format!("no answer within {REFRESH_WAIT:?}").into(),
                }),
            },
            None => read().await,
        };
        match result {
            Ok(Some(value)) => {
                self.missing.remove(key);
                self.found.insert(
                    key.clone(),
                    Entry {
                        value: value.clone(),
                        read_at: now,
                        asked_at: now,
                    },
                );
                Ok(Lookup::Fresh(Some(value)))
            }
            Ok(None) => {
                self.found.remove(key);
                self.missing.insert(key.clone(), now);
                Ok(Lookup::Fresh(None))
            }
            Err(e) if e.is_retriable() => match cached {
                Some(entry) if now.duration_since(entry.read_at) < self.stale_for => {
                    let age = now.duration_since(entry.read_at);
                    tracing::warn!(error = %e, what = self.what, age_secs = age.as_secs(), "store unreachable: serving a cached row (gateway.auth_stale_serve_secs)");
                    StaleRead { what: self.what }.emit();
                    self.found.insert(
                        key.clone(),
                        Entry {
                            asked_at: now,
                            ..entry.clone()
                        },
                    );
                    Ok(Lookup::Stale {
                        value: entry.value,
                        age,
                    })
                }
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Remembers a row read elsewhere (e.g. a template version found while
    /// resolving the latest one).
    pub fn insert(&self, key: K, value: V) {
        let now = Instant::now();
        self.missing.remove(&key);
        self.found.insert(
            key,
            Entry {
                value,
                read_at: now,
                asked_at: now,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const FRESH: Duration = Duration::from_secs(5);
    const STALE: Duration = Duration::from_secs(60);

    fn down() -> StoreError {
        StoreError::Backend {
            op: "apps.get",
            key: "k".into(),
            retriable: true,
            source: "No connections in the pool".into(),
        }
    }

    fn broken() -> StoreError {
        StoreError::InvalidData {
            op: "apps.get",
            key: "k".into(),
            reason: "bad row".into(),
        }
    }

    /// A store whose answers the test scripts, counting the reads.
    struct FakeStore {
        reads: AtomicUsize,
    }

    impl FakeStore {
        fn new() -> Self {
            Self {
                reads: AtomicUsize::new(0),
            }
        }
        async fn answer(
            &self,
            r: Result<Option<&'static str>, StoreError>,
        ) -> Result<Option<&'static str>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            r
        }
        fn reads(&self) -> usize {
            self.reads.load(Ordering::SeqCst)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_known_row_is_served_while_the_store_is_down_up_to_the_bound() {
        let cache = StaleCache::new("test-stale-bound", 10, FRESH, STALE);
        let stale_reads = || StaleRead::total("test-stale-bound");
        let store = FakeStore::new();
        let key = "app".to_owned();
        let got = cache.get(&key, || store.answer(Ok(Some("v1")))).await;
        assert_eq!(got.unwrap(), Lookup::Fresh(Some("v1")));
        // Within fresh_for the store is not asked.
        let got = cache.get(&key, || store.answer(Err(down()))).await;
        assert_eq!(got.unwrap(), Lookup::Fresh(Some("v1")));
        assert_eq!(store.reads(), 1);

        tokio::time::advance(FRESH).await;
        let got = cache.get(&key, || store.answer(Err(down()))).await.unwrap();
        assert_eq!(
            got,
            Lookup::Stale {
                value: "v1",
                age: FRESH
            }
        );
        assert_eq!(store.reads(), 2);
        assert_eq!(stale_reads(), 1, "the stale answer is counted");
        // A failed refresh counts as asking: the next calls within fresh_for
        // do not hammer the store.
        let got = cache.get(&key, || store.answer(Err(down()))).await.unwrap();
        assert!(matches!(got, Lookup::Fresh(Some("v1"))), "{got:?}");
        assert_eq!(store.reads(), 2);

        // Staleness is bounded from the last good read, not the last ask.
        tokio::time::advance(STALE).await;
        let err = cache
            .get(&key, || store.answer(Err(down())))
            .await
            .unwrap_err();
        assert!(err.is_retriable(), "{err}");

        // Once the store answers again the row is fresh.
        let got = cache.get(&key, || store.answer(Ok(Some("v2")))).await;
        assert_eq!(got.unwrap(), Lookup::Fresh(Some("v2")));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_key_is_refused_while_the_store_is_down() {
        let cache: StaleCache<String, &str> = StaleCache::new("test", 10, FRESH, STALE);
        let store = FakeStore::new();
        let err = cache
            .get(&"never-seen".to_owned(), || store.answer(Err(down())))
            .await
            .unwrap_err();
        assert!(err.is_retriable());
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_store_error_is_not_papered_over() {
        let cache = StaleCache::new("test", 10, FRESH, STALE);
        let store = FakeStore::new();
        let key = "app".to_owned();
        cache
            .get(&key, || store.answer(Ok(Some("v1"))))
            .await
            .unwrap();
        tokio::time::advance(FRESH).await;
        let err = cache
            .get(&key, || store.answer(Err(broken())))
            .await
            .unwrap_err();
        assert!(!err.is_retriable());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_store_is_given_up_on_when_a_row_is_known() {
        let cache = StaleCache::new("test", 10, FRESH, STALE);
        let key = "app".to_owned();
        cache.get(&key, || async { Ok(Some("v1")) }).await.unwrap();
        tokio::time::advance(FRESH).await;
        let got = cache
            .get(&key, || async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Some("never"))
            })
            .await
            .unwrap();
        assert!(matches!(got, Lookup::Stale { value: "v1", .. }), "{got:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn missing_keys_are_remembered_briefly_and_bounded() {
        let cache: StaleCache<String, &str> = StaleCache::new("test", 100, FRESH, STALE);
        let store = FakeStore::new();
        let key = "nope".to_owned();
        assert_eq!(
            cache.get(&key, || store.answer(Ok(None))).await.unwrap(),
            Lookup::Fresh(None)
        );
        cache.get(&key, || store.answer(Ok(None))).await.unwrap();
        assert_eq!(store.reads(), 1, "a missing key is remembered");
        tokio::time::advance(FRESH).await;
        cache.get(&key, || store.answer(Ok(None))).await.unwrap();
        assert_eq!(store.reads(), 2, "but only for fresh_for");

        // A flood of unknown keys stays bounded and does not evict a known row.
        let known = "known".to_owned();
        cache
            .get(&known, || store.answer(Ok(Some("v1"))))
            .await
            .unwrap();
        for i in 0..10_000 {
            cache
                .get(&format!("junk-{i}"), || async { Ok(None) })
                .await
                .unwrap();
        }
        assert!(
            cache.missing.len() <= 100 + 100 / 2,
            "{}",
            cache.missing.len()
        );
        assert!(cache.found.get(&known).is_some());
    }
}
