//! Per-template counts from the tracking topic: how many notifications of a
//! template were sent, delivered, opened and clicked.
//!
//! Each tracking event is counted once: its id goes through the dedupe ledger
//! first, so a replayed tracking record does not inflate the counters.

use std::time::Duration;

use tidings_kafka::{Emitter, ProcessError, Processor, RecordMeta};
use tidings_schemas::records::{TrackingEvent, TrackingKind};
use tidings_store::Store;

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
}

#[async_trait::async_trait]
impl Processor for TemplateStats {
    type Input = TrackingEvent;

    fn name(&self) -> &'static str {
        "template-stats"
    }

    async fn process(
        &self,
        event: &TrackingEvent,
        _meta: &RecordMeta,
        _out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
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
}
