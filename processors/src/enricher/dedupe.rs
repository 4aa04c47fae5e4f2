//! Event dedupe that survives replays.
//!
//! A plain "seen it?" ledger loses notifications under at-least-once
//! delivery: if the enricher marks an event and crashes before its outputs
//! are produced, the replayed record would look like a duplicate. So the
//! ledger records which input record claimed an event:
//!
//! 1. mark the claim `event@topic/partition/offset/timestamp` (the timestamp
//!    tells a record apart from a later one at the same offset, as after the
//!    embedded brokers start empty again);
//! 2. mark the event.
//!
//! A new event is processed. A seen event whose claim was already there is
//! the claiming record replayed (after a crash or a retry): processed again,
//! producing the same deterministic records, which the senders' ledger
//! drops. A seen event with a new claim is a true duplicate: the claim is
//! withdrawn and the record dropped. A crash between 1 and 2 leaves a claim
//! without an event, which the replay treats as new: nothing is lost.

use std::time::Duration;

use tidings_kafka::RecordMeta;
use tidings_store::{DedupeLedger, StoreError};

const EVENTS: &str = "enricher.event";
const CLAIMS: &str = "enricher.claim";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First time: process.
    New,
    /// The record that claimed this event, seen again: process again.
    Replay,
    /// Another record already carried this event: drop.
    Duplicate,
}

pub async fn check(
    ledger: &dyn DedupeLedger,
    event_key: &str,
    meta: &RecordMeta,
    ttl: Duration,
) -> Result<Verdict, StoreError> {
    let claim = format!(
        "{event_key}@{}/{}/{}/{}",
        meta.topic,
        meta.partition,
        meta.offset,
        meta.timestamp.unwrap_or_default()
    );
    let claim_new = ledger.first_seen(CLAIMS, &claim, ttl).await?;
    let event_new = ledger.first_seen(EVENTS, event_key, ttl).await?;
    Ok(match (event_new, claim_new) {
        (true, _) => Verdict::New,
        (false, false) => Verdict::Replay,
        (false, true) => {
            ledger.forget(CLAIMS, &claim).await?;
            Verdict::Duplicate
        }
    })
}
