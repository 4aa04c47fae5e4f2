//! The dedupe ledger: "have we seen this key in this scope recently?", with a
//! TTL. Used for event-id dedupe in the processors and for the senders'
//! sent-ledger.

use std::time::Duration;

use crate::StoreError;

/// What [`DedupeLedger::claim_many`] found for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Nobody held the key: it is this claimant's now.
    First,
    /// This claimant held it already (the same record, replayed). A key
    /// marked without a claimant (before claims existed) counts as this.
    Held,
    /// Another claimant holds it.
    Taken,
}

#[async_trait::async_trait]
pub trait DedupeLedger: Send + Sync + 'static {
    /// True exactly once per (scope, key) within `ttl`, and marks the key.
    async fn first_seen(&self, scope: &str, key: &str, ttl: Duration) -> Result<bool, StoreError>;
    /// [`first_seen`](Self::first_seen) for many keys; a key repeated in
    /// `keys` is first seen only at its first position.
    async fn first_seen_many(
        &self,
        scope: &str,
        keys: &[String],
        ttl: Duration,
    ) -> Result<Vec<bool>, StoreError>;
    /// Marks `keys` seen for `ttl` without asking whether they were: for
    /// ledgers written once the work is done and read with
    /// [`seen`](Self::seen) (the senders' marks). A key marked before is
    /// marked again, with the new `ttl`. The CQL engine sends one blind
    /// write per key instead of a read and a write; the default is
    /// [`first_seen_many`](Self::first_seen_many) without its answers.
    async fn mark_many(
        &self,
        scope: &str,
        keys: &[String],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.first_seen_many(scope, keys, ttl).await.map(drop)
    }
    /// Claims each `(key, claimant)` for `ttl`: a free (or expired) key is
    /// marked with its claimant, in one row, so a key and who claimed it
    /// are written together or not at all. The answer for `claims[i]` is at
    /// position `i`; a key repeated in `claims` is [`Claim::First`] only at
    /// its first position, and later ones are [`Claim::Held`] for the same
    /// claimant, else [`Claim::Taken`]. Claiming never takes a key over.
    async fn claim_many(
        &self,
        scope: &str,
        claims: &[(String, String)],
        ttl: Duration,
    ) -> Result<Vec<Claim>, StoreError>;
    async fn forget(&self, scope: &str, key: &str) -> Result<(), StoreError>;
    /// Whether (scope, key) is marked and not expired, without marking it:
    /// for ledgers that must only be written once the work is done (the
    /// senders mark a delivery after the provider accepted it).
    async fn seen(&self, scope: &str, key: &str) -> Result<bool, StoreError>;
    /// [`seen`](Self::seen) for many keys of one scope, in one call: the
    /// answer for `keys[i]` is at position `i` (a repeated key gets the same
    /// answer at each of its positions). Marks nothing. An empty `keys` is
    /// answered without a round trip.
    async fn seen_many(&self, scope: &str, keys: &[String]) -> Result<Vec<bool>, StoreError>;
}

/// Answers the repeats among `claims` locally: the positions of each key's
/// first occurrence (to ask the engine) and, for every position, where its
/// key first occurs. Engines share it so both treat repeats alike.
pub(crate) fn first_claims(claims: &[(String, String)]) -> (Vec<usize>, Vec<usize>) {
    let mut first_at = std::collections::HashMap::with_capacity(claims.len());
    let mut firsts = Vec::new();
    let owner = claims
        .iter()
        .enumerate()
        .map(|(i, (key, _))| {
            *first_at.entry(key).or_insert_with(|| {
                firsts.push(i);
                i
            })
        })
        .collect();
    (firsts, owner)
}

/// The answers for every position of `claims`, from the engine's answers
/// for the first occurrences (`firsts`, in order).
pub(crate) fn spread_claims(
    claims: &[(String, String)],
    firsts: &[usize],
    owner: &[usize],
    answers: &[Claim],
) -> Vec<Claim> {
    let by_first: std::collections::HashMap<usize, Claim> = firsts
        .iter()
        .copied()
        .zip(answers.iter().copied())
        .collect();
    claims
        .iter()
        .enumerate()
        .map(|(i, (_, claimant))| {
            let first = owner[i];
            let answer = by_first.get(&first).copied().unwrap_or(Claim::Taken);
            if first == i {
                answer
            } else if answer != Claim::Taken && claims[first].1 == *claimant {
                // The same claimant again: it holds the key now.
                Claim::Held
            } else {
                Claim::Taken
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, c)| ((*k).into(), (*c).into()))
            .collect()
    }

    #[test]
    fn repeats_are_answered_from_the_first_occurrence() {
        let c = claims(&[
            ("e1", "r1"),
            ("e2", "r2"),
            ("e1", "r1"),
            ("e1", "r3"),
            ("e3", "r4"),
            ("e3", "r5"),
        ]);
        let (firsts, owner) = first_claims(&c);
        assert_eq!(firsts, vec![0, 1, 4]);
        assert_eq!(owner, vec![0, 1, 0, 0, 4, 4]);
        let answers = spread_claims(
            &c,
            &firsts,
            &owner,
            &[Claim::First, Claim::Held, Claim::Taken],
        );
        assert_eq!(
            answers,
            vec![
                Claim::First,
                Claim::Held,
                Claim::Held,
                Claim::Taken,
                Claim::Taken,
                Claim::Taken
            ]
        );
    }
}
