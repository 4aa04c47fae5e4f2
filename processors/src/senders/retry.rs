//! Retry tiers: a stage per tier holds each delivery until its `not_before`,
//! then puts it back on its channel topic for another attempt.
//!
//! Records of a tier share one delay, so they fall due in offset order: the
//! stage waits for the head of each partition and never holds back a record
//! that is due sooner. The main channel topics never wait for a retry.

use tidings_kafka::{Emitter, ProcessError, Processor, RecordMeta, Topics, now_millis};
use tidings_schemas::{Channel, records::Delivery};

pub struct RetryRelay {
    name: &'static str,
    topics: Topics,
}

impl RetryRelay {
    /// The relay for tier `tier` (0-based).
    pub fn new(tier: usize, topics: Topics) -> Self {
        let name = match tier {
            0 => "retry.1",
            1 => "retry.2",
            _ => "retry.3",
        };
        Self { name, topics }
    }
}

#[async_trait::async_trait]
impl Processor for RetryRelay {
    type Input = Delivery;
    type Prefetched = ();

    // Its sender waits on this tier's topic; were the relay to wait on the
    // sender's topic, the two could wait on each other.
    const WAITS_FOR_ROOM: bool = false;

    fn name(&self) -> &'static str {
        self.name
    }

    async fn process(
        &self,
        d: &Delivery,
        _prefetched: &(),
        _meta: &RecordMeta,
        out: &mut Emitter<'_>,
    ) -> Result<(), ProcessError> {
        let wait = d.not_before.unwrap_or(0) - now_millis();
        if wait > 0 {
            return Err(ProcessError::not_due(std::time::Duration::from_millis(
                wait.unsigned_abs(),
            )));
        }
        let channel: Channel =
            d.channel
                .parse()
                .map_err(|e: tidings_schemas::channel::UnknownChannel| {
                    ProcessError::permanent(e.to_string())
                })?;
        let mut next = d.clone();
        next.not_before = None;
        out.emit(self.topics.deliver(channel), &d.user_id, &next)
    }
}
