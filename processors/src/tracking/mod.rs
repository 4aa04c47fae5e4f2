//! Per-template counts from the tracking topic: how many notifications of a
//! template were sent, delivered, opened and clicked.
//!
//! Each tracking event is counted once: its id goes through the dedupe ledger
//! first, so a replayed tracking record does not inflate the counters. A
//! batch is counted in two store calls (mark every event, add the sums);
//! record by record only when that fails.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use tidings_kafka::{Emitter, ProcessError, Processor, RecordMeta};
use tidings_schemas::records::{TrackingEvent, TrackingKind};
use tidings_store::{Store, StoreError};
use tracing::warn;

use crate::enricher::store_failure;

/// Counter scope of the per-template counts.
pub const TEMPLATE_COUNTERS: &str = "template";
const COUNTED: &str = "stats.counted";
const COUNTED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The counter key of `kind` for template `name`, if that kind is counted.
pub fn counter_key(name: &str, kind: TrackingKind) -> Option<String> {
    let label = match kind {
        TrackingKind::Sent => "sent",
        TrackingKind::Delivered => "delivered",
        TrackingKind::Opened => "opened",
        TrackingKind::Clicked => "clicked",
        _ => return None,
    };
    Some(format!("{name}:{label}"))
}

pub struct TemplateStats {
    store: Store,
}

impl TemplateStats {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Counts the batch's events; answers the ids it took care of.
    async fn count_batch(&self, events: &[&TrackingEvent]) -> Result<HashSet<String>, StoreError> {
        let counted: Vec<(&TrackingEvent, String)> = events
            .iter()
            .filter_map(|e| {
                let key = counter_key(e.template_name.as_deref()?, e.kind)?;
                Some((*e, key))
            })
            .collect();
        let all: HashSet<String> = events.iter().map(|e| e.event_id.clone()).collect();
        if counted.is_empty() {
            return Ok(all);
        }
        let ids: Vec<String> = counted.iter().map(|(e, _)| e.event_id.clone()).collect();
        let first = self
            .store
            .dedupe
            .first_seen_many(COUNTED, &ids, COUNTED_TTL)
            .await?;
        let mut sums: BTreeMap<&str, i64> = BTreeMap::new();
        for ((_, key), first) in counted.iter().zip(first) {
            if first {
                *sums.entry(key.as_str()).or_default() += 1;
            }
        }
        let deltas: Vec<(String, String, i64)> = sums
            .into_iter()
            .map(|(key, n)| (TEMPLATE_COUNTERS.to_owned(), key.to_owned(), n))
            .collect();
        if !deltas.is_empty() {
            self.store.counters.add_many(&deltas).await?;
        }
        // Events that count for nothing are done too.
        Ok(all)
    }
}

#[async_trait::async_trait]
impl Processor for TemplateStats {
    type Input = TrackingEvent;
    /// Ids of the events the batch count took care of.
    type Prefetched = HashSet<String>;

    fn name(&self) -> &'static str {
        "template-stats"
    }

    async fn prefetch(&self, batch: &[(&TrackingEvent, &RecordMeta)]) -> HashSet<String> {
        let events: Vec<&TrackingEvent> = batch.iter().map(|(e, _)| *e).collect();
        self.count_batch(&events).await.unwrap_or_else(|e| {
            warn!(error = %e, "batch count failed; counting record by record");
            HashSet::new()
        })
    }

    async fn process(
        &self,
        event: &TrackingEvent,
        counted: &HashSet<String>,
        _meta: &RecordMeta,
        _out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        if counted.contains(&event.event_id) {
            return Ok(());
        }
        let Some(key) = event
            .template_name
            .as_deref()
            .and_then(|name| counter_key(name, event.kind))
        else {
            return Ok(());
        };
        if self
            .store
            .dedupe
            .first_seen(COUNTED, &event.event_id, COUNTED_TTL)
            .await
            .map_err(store_failure)?
        {
            self.store
                .counters
                .add(TEMPLATE_COUNTERS, &key, 1)
                .await
                .map_err(store_failure)?;
        }
        Ok(())
    }

    async fn finish(&self, _batch: &HashSet<String>) -> Result<(), ProcessError> {
        Ok(())
    }
}
