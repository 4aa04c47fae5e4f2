//! The scheduler: puts held notifications back on the request topic when
//! they are due.
//!
//! Notifications wait in the store's schedule (durable, so they survive
//! restarts). A released request is produced, acknowledged, and only then
//! removed from the schedule; a crash in between releases it twice, and the
//! enricher's dedupe drops the second. Run one scheduler per deployment; a
//! second one is harmless for the same reason, only wasteful.
//!
//! The schedule is scoped by the deployment's topic prefix: deployments
//! sharing a store release only their own items, onto their own topics (and
//! items held before scoping existed, which belong to none; see
//! `tidings_store::schedule`).

use std::time::Duration;

use tidings_kafka::{AvroProducer, KafkaError, Topics, backlog::record_bytes, now_millis};
use tidings_schemas::records::NotificationRequest;
use tidings_store::Store;
use tidings_telemetry::BacklogWait;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub struct Scheduler {
    store: Store,
    producer: AvroProducer,
    topics: Topics,
    poll: Duration,
}

impl Scheduler {
    pub fn new(store: Store, producer: AvroProducer, topics: Topics, poll: Duration) -> Self {
        Self {
            store,
            producer,
            topics,
            poll,
        }
    }

    pub async fn run(self, shutdown: CancellationToken) -> Result<(), KafkaError> {
        info!(poll_ms = self.poll.as_millis() as u64, "scheduler running");
        loop {
            match self.release_due().await {
                Ok(0) => {}
                Ok(n) => info!(released = n, "released scheduled notifications"),
                Err(e) => warn!(error = %e, "releasing scheduled notifications failed; will retry"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.poll) => {}
            }
        }
    }

    /// Releases what is due now; returns how many.
    pub async fn release_due(&self) -> Result<usize, String> {
        let due = self
            .store
            .schedule
            .due(self.topics.prefix(), now_millis(), 1_000)
            .await
            .map_err(|e| e.to_string())?;
        let topic = self.topics.requests();
        for item in &due {
            let request: NotificationRequest = match self
                .producer
                .codec()
                .decode_async(&item.payload)
                .await
            {
                Ok(r) => r,
                Err(e) if e.is_retriable() => return Err(e.to_string()),
                Err(e) => {
                    // Written by the enricher from a decoded record; a payload
                    // that no longer decodes can never be sent.
                    warn!(item = %item.item_id, error = %e, "dropping an undecodable scheduled item");
                    self.store
                        .schedule
                        .remove(&item.scope, &item.item_id, item.due_at)
                        .await
                        .map_err(|e| e.to_string())?;
                    continue;
                }
            };
            // On the embedded cluster, not more than the enricher can catch
            // up with: a due item waits in the store, not in a topic that
            // would drop it.
            let deadline = tokio::time::Instant::now() + self.producer.timeout();
            self.producer
                .room_for(
                    topic,
                    record_bytes(request.user_id.len(), item.payload.len()),
                    Some(deadline),
                    &CancellationToken::new(),
                    |_| {
                        BacklogWait {
                            writer: "scheduler",
                            topic,
                        }
                        .emit()
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            self.producer
                .send(topic, &request.user_id, &request)
                .await
                .map_err(|e| e.to_string())?;
            self.store
                .schedule
                .remove(&item.scope, &item.item_id, item.due_at)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(due.len())
    }
}
