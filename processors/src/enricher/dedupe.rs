//! Event dedupe that survives replays.
//!
//! A plain "seen it?" ledger loses notifications under at-least-once
//! delivery: if the enricher marks an event and crashes before its outputs
//! are produced, the replayed record would look like a duplicate. So the
//! ledger records which input record claimed an event: the event's key and
//! its claimant `topic/partition/offset/timestamp` (the timestamp tells a
//! record apart from a later one at the same offset, as after the embedded
//! brokers start empty again) are written in one row.
//!
//! A free event is claimed and processed. An event held by the same record
//! is that record replayed (after a crash or a retry): processed again,
//! producing the same deterministic records, which the senders' ledger
//! drops. An event held by another record is a true duplicate: dropped.
//! There is no window in which an event is marked without its claimant.

use std::time::Duration;

use tidings_kafka::RecordMeta;
use tidings_store::{Claim, DedupeLedger, StoreError};

const EVENTS: &str = "enricher.event";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First time: process.
    New,
    /// The record that claimed this event, seen again: process again.
    Replay,
    /// Another record already carried this event: drop.
    Duplicate,
}

/// The claimant of an event: the record `meta` carrying it.
fn claimant(meta: &RecordMeta) -> String {
    format!(
        "{}/{}/{}/{}",
        meta.topic,
        meta.partition,
        meta.offset,
        meta.timestamp.unwrap_or_default()
    )
}

fn verdict(claim: Claim) -> Verdict {
    match claim {
        Claim::First => Verdict::New,
        Claim::Held => Verdict::Replay,
        Claim::Taken => Verdict::Duplicate,
    }
}

pub async fn check(
    ledger: &dyn DedupeLedger,
    event_key: &str,
    meta: &RecordMeta,
    ttl: Duration,
) -> Result<Verdict, StoreError> {
    let verdicts = check_many(ledger, &[(event_key.to_owned(), meta)], ttl).await?;
    Ok(verdicts.first().copied().unwrap_or(Verdict::New))
}

/// [`check`] for a batch of records in offset order, in one ledger call. An
/// event carried twice in the batch is new only at its first record, as if
/// the records had been checked one by one.
pub async fn check_many(
    ledger: &dyn DedupeLedger,
    records: &[(String, &RecordMeta)],
    ttl: Duration,
) -> Result<Vec<Verdict>, StoreError> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let claims: Vec<(String, String)> = records
        .iter()
        .map(|(event_key, meta)| (event_key.clone(), claimant(meta)))
        .collect();
    let claims = ledger.claim_many(EVENTS, &claims, ttl).await?;
    Ok(claims.into_iter().map(verdict).collect())
}
