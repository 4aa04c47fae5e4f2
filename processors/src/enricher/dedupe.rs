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

/// The claim key of the record `meta` carrying `event_key`.
fn claim_key(event_key: &str, meta: &RecordMeta) -> String {
    format!(
        "{event_key}@{}/{}/{}/{}",
        meta.topic,
        meta.partition,
        meta.offset,
        meta.timestamp.unwrap_or_default()
    )
}

fn verdict(event_new: bool, claim_new: bool) -> Verdict {
    match (event_new, claim_new) {
        (true, _) => Verdict::New,
        (false, false) => Verdict::Replay,
        (false, true) => Verdict::Duplicate,
    }
}

pub async fn check(
    ledger: &dyn DedupeLedger,
    event_key: &str,
    meta: &RecordMeta,
    ttl: Duration,
) -> Result<Verdict, StoreError> {
    let claim = claim_key(event_key, meta);
    let claim_new = ledger.first_seen(CLAIMS, &claim, ttl).await?;
    let event_new = ledger.first_seen(EVENTS, event_key, ttl).await?;
    let verdict = verdict(event_new, claim_new);
    if verdict == Verdict::Duplicate {
        ledger.forget(CLAIMS, &claim).await?;
    }
    Ok(verdict)
}

/// [`check`] for a batch of records in offset order, in two ledger calls
/// (plus one per true duplicate): all claims, then all events. An event
/// carried twice in the batch is new only at its first record, as if the
/// records had been checked one by one.
pub async fn check_many(
    ledger: &dyn DedupeLedger,
    records: &[(String, &RecordMeta)],
    ttl: Duration,
) -> Result<Vec<Verdict>, StoreError> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let claims: Vec<String> = records
        .iter()
        .map(|(event_key, meta)| claim_key(event_key, meta))
        .collect();
    let events: Vec<String> = records
        .iter()
        .map(|(event_key, _)| event_key.clone())
        .collect();
    let claims_new = ledger.first_seen_many(CLAIMS, &claims, ttl).await?;
    let events_new = ledger.first_seen_many(EVENTS, &events, ttl).await?;
    let verdicts: Vec<Verdict> = events_new
        .into_iter()
        .zip(claims_new)
        .map(|(event_new, claim_new)| verdict(event_new, claim_new))
        .collect();
    let withdrawn = verdicts
        .iter()
        .zip(&claims)
        .filter(|(v, _)| **v == Verdict::Duplicate)
        .map(|(_, claim)| ledger.forget(CLAIMS, claim));
    futures::future::try_join_all(withdrawn).await?;
    Ok(verdicts)
}
