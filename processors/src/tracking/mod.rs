//! Per-template counts from the tracking topic: how many notifications of a
//! template were sent, delivered, opened and clicked, and how many of its
//! in-app items their users read and archived (events the gateway writes).
//!
//! Each tracking event counts once: its id is marked in the dedupe ledger
//! (`stats.counted`) once it is counted, and an event already marked is not
//! counted again, so a replayed tracking record does not inflate the
//! counters. A batch takes four steps, and only the last two write:
//!
//! 1. `prefetch` reads which of the batch's events are marked (one call;
//!    record by record in `process` when that read fails);
//! 2. `process` collects the unmarked ones, once per event id;
//! 3. `finish` adds their sums to the counters, one write per counter;
//! 4. then marks their ids.
//!
//! Counter increments are not idempotent on either engine, so the order
//! decides what a failure between the writes costs. Marking first (as this
//! stage once did) loses counts: a failure after the marks and before the
//! counters leaves events marked but never counted. Counting first never
//! loses one: `finish` is retried in place on a retriable failure and
//! remembers which counters it already added, so a retry adds only the
//! missing ones and then marks; only a crash of the process after the
//! counters and before the marks (or a counter write that timed out but was
//! applied) counts the batch's events again when it is consumed again. A
//! count may so run high by a batch after a crash, never low.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Mutex,
    time::Duration,
};

use tidings_kafka::{Emitter, ProcessError, Processor, RecordMeta};
use tidings_schemas::{
    Label, UNCOUNTED,
    records::{TrackingEvent, TrackingKind},
};
use tidings_store::Store;
use tracing::warn;

use crate::enricher::store_failure;

/// Counter scope of the per-template counts.
pub const TEMPLATE_COUNTERS: &str = "template";
const COUNTED: &str = "stats.counted";
const COUNTED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The counter key of `kind` for template `name`, if that kind is counted.
pub fn counter_key(name: &str, kind: TrackingKind) -> Option<String> {
    kind.template_counter()
        .map(|counter| format!("{name}:{counter}"))
}

/// The counter key of an event that counts for a template.
fn event_counter_key(event: &TrackingEvent) -> Option<String> {
    counter_key(event.template_name.as_deref()?, event.kind)
}

pub struct TemplateStats {
    store: Store,
}

impl TemplateStats {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Adds `event` to the batch's events to count, unless it counts for
    /// nothing or was counted before.
    async fn collect(
        &self,
        event: &TrackingEvent,
        batch: &BatchCounts,
    ) -> Result<(), ProcessError> {
        let Some(key) = event_counter_key(event) else {
            return Ok(());
        };
        let counted = match batch.counted_before.get(&event.event_id) {
            Some(counted) => *counted,
            None => self
                .store
                .dedupe
                .seen(COUNTED, &event.event_id)
                .await
                .map_err(store_failure)?,
        };
        if !counted {
            lock(&batch.progress)
                .to_count
                .insert(event.event_id.clone(), key);
        }
        Ok(())
    }
}

/// A batch's counting: what `prefetch` read, what `process` collected and
/// how far `finish` got (it is retried in place, with the same batch).
#[derive(Default)]
pub struct BatchCounts {
    /// Whether each counted event id of the batch was counted before; empty
    /// when the read failed, and `process` reads for itself.
    counted_before: HashMap<String, bool>,
    progress: Mutex<Progress>,
}

#[derive(Default)]
struct Progress {
    /// Events to count, by id (an event repeated in the batch counts once),
    /// with their counter key.
    to_count: BTreeMap<String, String>,
    /// Counter keys `finish` already added its sums to.
    added: HashSet<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait::async_trait]
impl Processor for TemplateStats {
    type Input = TrackingEvent;
    type Prefetched = BatchCounts;
    /// Events that count for no template: they name none, or their kind is
    /// not counted.
    const PASSES_OVER: Option<Label> = Some(UNCOUNTED);

    fn name(&self) -> &'static str {
        "template-stats"
    }

    /// Reads which of the batch's events were counted already. Writes
    /// nothing (the `Processor` contract): that is `finish`'s job.
    async fn prefetch(&self, batch: &[(&TrackingEvent, &RecordMeta)]) -> BatchCounts {
        let ids: Vec<String> = batch
            .iter()
            .filter(|(e, _)| event_counter_key(e).is_some())
            .map(|(e, _)| e.event_id.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let counted_before = match self.store.dedupe.seen_many(COUNTED, &ids).await {
            Ok(seen) => ids.into_iter().zip(seen).collect(),
            Err(e) => {
                warn!(error = %e, "reading which events were counted failed; reading record by record");
                HashMap::new()
            }
        };
        BatchCounts {
            counted_before,
            ..BatchCounts::default()
        }
    }

    async fn process(
        &self,
        event: &TrackingEvent,
        batch: &BatchCounts,
        _meta: &RecordMeta,
        _out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        self.collect(event, batch).await
    }

    /// Adds the batch's sums to the counters, then marks its events counted
    /// (the order that loses no count; see the module docs).
    async fn finish(&self, batch: &BatchCounts) -> Result<(), ProcessError> {
        let (sums, ids) = {
            let progress = lock(&batch.progress);
            let mut sums: BTreeMap<String, i64> = BTreeMap::new();
            for key in progress.to_count.values() {
                if !progress.added.contains(key) {
                    *sums.entry(key.clone()).or_default() += 1;
                }
            }
            let ids: Vec<String> = progress.to_count.keys().cloned().collect();
            (sums, ids)
        };
        if ids.is_empty() {
            return Ok(());
        }
        // One write per counter, so a retry knows which ones went through.
        let adds = sums.iter().map(|(key, n)| async move {
            let result = self.store.counters.add(TEMPLATE_COUNTERS, key, *n).await;
            (key, result)
        });
        let mut failure = None;
        for (key, result) in futures::future::join_all(adds).await {
            match result {
                Ok(()) => {
                    lock(&batch.progress).added.insert(key.clone());
                }
                Err(e) => failure = Some(e),
            }
        }
        if let Some(e) = failure {
            return Err(store_failure(e));
        }
        self.store
            .dedupe
            .mark_many(COUNTED, &ids, COUNTED_TTL)
            .await
            .map_err(store_failure)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
    };

    use tidings_schemas::records::TrackingKind;
    use tidings_store::{CounterStore, DedupeLedger, StoreError, StoreOptions};

    use super::*;

    /// Fails the next `n` calls it guards with a retriable error.
    #[derive(Default)]
    struct Faults(AtomicUsize);

    impl Faults {
        fn arm(&self, n: usize) {
            self.0.store(n, Ordering::SeqCst);
        }

        fn check(&self, op: &'static str) -> Result<(), StoreError> {
            let left = self.0.load(Ordering::SeqCst);
            if left == 0 {
                return Ok(());
            }
            self.0.store(left - 1, Ordering::SeqCst);
            Err(StoreError::Backend {
                op,
                key: "test".into(),
                retriable: true,
                source: "injected fault".into(),
            })
        }
    }

    /// Counters whose writes fail while `faults` says so.
    struct FlakyCounters {
        inner: Arc<dyn CounterStore>,
        faults: Arc<Faults>,
    }

    #[async_trait::async_trait]
    impl CounterStore for FlakyCounters {
        async fn add(&self, scope: &str, key: &str, delta: i64) -> Result<(), StoreError> {
            self.faults.check("counters.add")?;
            self.inner.add(scope, key, delta).await
        }
        async fn add_many(&self, deltas: &[(String, String, i64)]) -> Result<(), StoreError> {
            self.faults.check("counters.add_many")?;
            self.inner.add_many(deltas).await
        }
        async fn get(&self, scope: &str, key: &str) -> Result<i64, StoreError> {
            self.inner.get(scope, key).await
        }
        async fn get_many(
            &self,
            scope: &str,
            keys: &[String],
        ) -> Result<HashMap<String, i64>, StoreError> {
            self.inner.get_many(scope, keys).await
        }
    }

    /// A dedupe ledger whose marking fails while `faults` says so.
    struct FlakyMarks {
        inner: Arc<dyn DedupeLedger>,
        faults: Arc<Faults>,
    }

    #[async_trait::async_trait]
    impl DedupeLedger for FlakyMarks {
        async fn first_seen(
            &self,
            scope: &str,
            key: &str,
            ttl: Duration,
        ) -> Result<bool, StoreError> {
            self.faults.check("dedupe.first_seen")?;
            self.inner.first_seen(scope, key, ttl).await
        }
        async fn first_seen_many(
            &self,
            scope: &str,
            keys: &[String],
            ttl: Duration,
        ) -> Result<Vec<bool>, StoreError> {
            self.faults.check("dedupe.first_seen_many")?;
            self.inner.first_seen_many(scope, keys, ttl).await
        }
        async fn claim_many(
            &self,
            scope: &str,
            claims: &[(String, String)],
            ttl: Duration,
        ) -> Result<Vec<tidings_store::Claim>, StoreError> {
            self.inner.claim_many(scope, claims, ttl).await
        }
        async fn forget(&self, scope: &str, key: &str) -> Result<(), StoreError> {
            self.inner.forget(scope, key).await
        }
        async fn seen(&self, scope: &str, key: &str) -> Result<bool, StoreError> {
            self.inner.seen(scope, key).await
        }
        async fn seen_many(&self, scope: &str, keys: &[String]) -> Result<Vec<bool>, StoreError> {
            self.inner.seen_many(scope, keys).await
        }
    }

    struct Fixture {
        stats: TemplateStats,
        store: Store,
        counter_faults: Arc<Faults>,
        mark_faults: Arc<Faults>,
        _dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("stats.db").display());
        let mut store = Store::connect(&url, &StoreOptions::default())
            .await
            .expect("sqlite store");
        let (counter_faults, mark_faults) =
            (Arc::new(Faults::default()), Arc::new(Faults::default()));
        store.counters = Arc::new(FlakyCounters {
            inner: store.counters.clone(),
            faults: counter_faults.clone(),
        });
        store.dedupe = Arc::new(FlakyMarks {
            inner: store.dedupe.clone(),
            faults: mark_faults.clone(),
        });
        Fixture {
            stats: TemplateStats::new(store.clone()),
            store,
            counter_faults,
            mark_faults,
            _dir: dir,
        }
    }

    fn event(id: &str, kind: TrackingKind) -> TrackingEvent {
        TrackingEvent {
            event_id: id.into(),
            notification_id: "n".into(),
            user_id: "u".into(),
            kind,
            channel: Some("email".into()),
            target: None,
            template_name: Some("digest".into()),
            stage: "test".into(),
            detail: None,
            at: 0,
            dispatched_at: None,
        }
    }

    fn meta(offset: i64) -> RecordMeta {
        RecordMeta {
            topic: "tracking".into(),
            partition: 0,
            offset,
            key: None,
            timestamp: None,
            handling: tidings_kafka::Handling::First,
        }
    }

    /// One batch through prefetch and process; `finish` is the caller's.
    async fn consume(f: &Fixture, events: &[TrackingEvent]) -> BatchCounts {
        let metas: Vec<RecordMeta> = (0..events.len() as i64).map(meta).collect();
        let batch: Vec<(&TrackingEvent, &RecordMeta)> = events.iter().zip(&metas).collect();
        let counts = f.stats.prefetch(&batch).await;
        for (e, _) in &batch {
            f.stats.collect(e, &counts).await.expect("collect");
        }
        counts
    }

    async fn count(f: &Fixture, label: &str) -> i64 {
        f.store
            .counters
            .get(TEMPLATE_COUNTERS, &format!("digest:{label}"))
            .await
            .expect("read a counter")
    }

    fn batch() -> Vec<TrackingEvent> {
        vec![
            event("a", TrackingKind::Sent),
            event("b", TrackingKind::Sent),
            event("a", TrackingKind::Sent),
            event("c", TrackingKind::Opened),
            event("d", TrackingKind::Dispatched),
        ]
    }

    #[tokio::test]
    async fn prefetch_writes_nothing() {
        let f = fixture().await;
        let events = batch();
        drop(consume(&f, &events).await);
        assert_eq!(count(&f, "sent").await, 0);
        let marked = f
            .store
            .dedupe
            .seen_many(COUNTED, &["a".into(), "b".into(), "c".into()])
            .await
            .unwrap();
        assert_eq!(
            marked,
            [false, false, false],
            "a batch never finished marks nothing"
        );
        // So the batch consumed again counts in full.
        let counts = consume(&f, &events).await;
        f.stats.finish(&counts).await.expect("finish");
        assert_eq!((count(&f, "sent").await, count(&f, "opened").await), (2, 1));
    }

    /// The bug this stage had: marks written before the counters, so a
    /// failed counter write left the events marked and never counted.
    #[tokio::test]
    async fn a_failed_counter_write_loses_no_count() {
        let f = fixture().await;
        let events = [
            event("a", TrackingKind::Sent),
            event("b", TrackingKind::Sent),
        ];
        let counts = consume(&f, &events).await;
        f.counter_faults.arm(1);
        assert!(f.stats.finish(&counts).await.is_err());
        // The stage stops or crashes here: the batch is consumed again.
        drop(counts);
        let counts = consume(&f, &events).await;
        f.stats.finish(&counts).await.expect("finish");
        assert_eq!(count(&f, "sent").await, 2);
    }

    /// The window left: a crash after some counters were added and before
    /// the marks counts those again on replay. High, never low.
    #[tokio::test]
    async fn a_crash_between_the_writes_counts_high_never_low() {
        let f = fixture().await;
        let events = batch();
        let counts = consume(&f, &events).await;
        f.mark_faults.arm(1);
        assert!(f.stats.finish(&counts).await.is_err());
        drop(counts);
        let counts = consume(&f, &events).await;
        f.stats.finish(&counts).await.expect("finish");
        assert_eq!((count(&f, "sent").await, count(&f, "opened").await), (4, 2));
    }

    #[tokio::test]
    async fn finish_retried_in_place_counts_once() {
        let f = fixture().await;
        let events = batch();
        let counts = consume(&f, &events).await;
        // One counter fails, then the marks fail: each retry goes on from
        // where the last attempt stopped.
        f.counter_faults.arm(1);
        assert!(f.stats.finish(&counts).await.is_err());
        f.mark_faults.arm(1);
        assert!(f.stats.finish(&counts).await.is_err());
        f.stats.finish(&counts).await.expect("finish");
        assert_eq!((count(&f, "sent").await, count(&f, "opened").await), (2, 1));
        // A replay of the batch counts nothing more.
        let counts = consume(&f, &events).await;
        f.stats.finish(&counts).await.expect("finish");
        assert_eq!((count(&f, "sent").await, count(&f, "opened").await), (2, 1));
    }

    #[tokio::test]
    async fn in_app_reads_and_archives_count_once_each() {
        let f = fixture().await;
        let events = [
            event("r1", TrackingKind::Read),
            event("r2", TrackingKind::Read),
            event("r1", TrackingKind::Read),
            event("x1", TrackingKind::Archived),
        ];
        let counts = consume(&f, &events).await;
        f.stats.finish(&counts).await.expect("finish");
        let counts = consume(&f, &events).await;
        f.stats.finish(&counts).await.expect("finish");
        assert_eq!(
            (count(&f, "read").await, count(&f, "archived").await),
            (2, 1)
        );
        assert_eq!(count(&f, "opened").await, 0, "a read is not an open");
    }

    #[tokio::test]
    async fn without_the_batch_read_each_record_reads_for_itself() {
        let f = fixture().await;
        let first = consume(&f, &batch()).await;
        f.stats.finish(&first).await.expect("finish");
        // prefetch's read failed (an empty head start): process reads.
        let counts = BatchCounts::default();
        for e in batch().iter().chain([&event("e", TrackingKind::Clicked)]) {
            f.stats.collect(e, &counts).await.expect("collect");
        }
        f.stats.finish(&counts).await.expect("finish");
        assert_eq!(
            (
                count(&f, "sent").await,
                count(&f, "opened").await,
                count(&f, "clicked").await
            ),
            (2, 1, 1)
        );
    }
}
