//! [`DedupeLedger`](crate::DedupeLedger) on CQL: the `dedupe` table.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use scylla::statement::prepared::PreparedStatement;

use super::{Context, Cql};
use crate::dedupe::{Claim, DedupeLedger, first_claims, spread_claims};
use crate::{StoreError, now_millis};

/// Cassandra refuses TTLs above 20 years.
const MAX_TTL_SECS: u64 = 20 * 365 * 24 * 3600;

/// Read, then write with a TTL, without a lightweight transaction: Paxos would
/// cost four round trips per key at 10k keys/s. This is safe because each key
/// has a single writer: topics are partitioned by user and one consumer owns a
/// partition at a time. The only window for a duplicate is a rebalance while
/// the previous owner is still finishing a batch, and the senders' own
/// sent-ledger catches those downstream.
pub(crate) struct ScyllaDedupe {
    cql: Cql,
    seen: PreparedStatement,
    mark: PreparedStatement,
    /// Prepared at first use: they name the `claimant` column (migration
    /// 8), and a store not migrated yet must still connect.
    claims: tokio::sync::OnceCell<ClaimStatements>,
    forget: PreparedStatement,
}

/// TTLs are whole seconds in CQL: round up so a key is never forgotten early.
pub(super) fn ttl_secs(ttl: Duration) -> i32 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i32::try_from(secs.clamp(1, MAX_TTL_SECS)).unwrap_or(i32::MAX)
}

impl ScyllaDedupe {
    pub(crate) async fn prepare(cql: &Cql) -> Result<Self, StoreError> {
        Ok(ScyllaDedupe {
            seen: cql
                .prepare("SELECT seen_at FROM dedupe WHERE scope = ? AND key = ?")
                .await?,
            mark: cql
                .prepare("INSERT INTO dedupe (scope, key, seen_at) VALUES (?, ?, ?) USING TTL ?")
                .await?,
            forget: cql
                .prepare("DELETE FROM dedupe WHERE scope = ? AND key = ?")
                .await?,
            claims: tokio::sync::OnceCell::new(),
            cql: cql.clone(),
        })
    }
}

struct ClaimStatements {
    holder: PreparedStatement,
    claim: PreparedStatement,
}

impl ScyllaDedupe {
    async fn claim_statements(&self) -> Result<&ClaimStatements, StoreError> {
        self.claims
            .get_or_try_init(|| async {
                Ok(ClaimStatements {
                    holder: self
                        .cql
                        .prepare("SELECT claimant FROM dedupe WHERE scope = ? AND key = ?")
                        .await?,
                    claim: self
                        .cql
                        .prepare("INSERT INTO dedupe (scope, key, seen_at, claimant) VALUES (?, ?, ?, ?) USING TTL ?")
                        .await?,
                })
            })
            .await
    }
}

#[async_trait::async_trait]
impl DedupeLedger for ScyllaDedupe {
    async fn first_seen(&self, scope: &str, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        const OP: &str = "dedupe.first_seen";
        let seen = self
            .cql
            .maybe_row::<(Option<i64>,)>(&self.seen, (scope, key))
            .await
            .ctx(OP, key)?;
        if seen.is_some() {
            return Ok(false);
        }
        self.cql
            .execute(&self.mark, (scope, key, now_millis(), ttl_secs(ttl)))
            .await
            .ctx(OP, key)?;
        Ok(true)
    }

    async fn first_seen_many(
        &self,
        scope: &str,
        keys: &[String],
        ttl: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        // Repeats within the call are answered locally: only a key's first
        // position asks the database.
        let mut first_position = HashMap::with_capacity(keys.len());
        let unique: Vec<&String> = keys
            .iter()
            .enumerate()
            .filter(|&(i, key)| *first_position.entry(key).or_insert(i) == i)
            .map(|(_, key)| key)
            .collect();
        let firsts = self
            .cql
            .concurrently(unique.iter().copied(), |key| {
                self.first_seen(scope, key, ttl)
            })
            .await?;
        let mut answers = vec![false; keys.len()];
        for (key, first) in unique.into_iter().zip(firsts) {
            if let Some(&i) = first_position.get(key) {
                answers[i] = first;
            }
        }
        Ok(answers)
    }

    async fn mark_many(
        &self,
        scope: &str,
        keys: &[String],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let unique: HashSet<&String> = keys.iter().collect();
        let (now, ttl) = (now_millis(), ttl_secs(ttl));
        self.cql
            .concurrently(unique, |key| async move {
                self.cql
                    .execute(&self.mark, (scope, key, now, ttl))
                    .await
                    .ctx("dedupe.mark_many", key)
                    .map(drop)
            })
            .await
            .map(drop)
    }

    /// A read, and a write when the key is free: two statements for a new
    /// key, one for a held one. Single writer per key, as above.
    async fn claim_many(
        &self,
        scope: &str,
        claims: &[(String, String)],
        ttl: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        const OP: &str = "dedupe.claim_many";
        let (firsts, owner) = first_claims(claims);
        if firsts.is_empty() {
            return Ok(Vec::new());
        }
        let statements = self.claim_statements().await?;
        let (now, ttl) = (now_millis(), ttl_secs(ttl));
        let answers = self
            .cql
            .concurrently(
                firsts.iter().map(|&i| &claims[i]),
                |(key, claimant)| async move {
                    let holder = self
                        .cql
                        .maybe_row::<(Option<String>,)>(&statements.holder, (scope, key))
                        .await
                        .ctx(OP, key)?;
                    Ok(match holder {
                        None => {
                            self.cql
                                .execute(&statements.claim, (scope, key, now, claimant, ttl))
                                .await
                                .ctx(OP, key)?;
                            Claim::First
                        }
                        Some((Some(holder),)) if holder != *claimant => Claim::Taken,
                        // Marked before claims existed: processed again rather
                        // than dropped (a duplicate, never a loss).
                        Some(_) => Claim::Held,
                    })
                },
            )
            .await?;
        Ok(spread_claims(claims, &firsts, &owner, &answers))
    }

    async fn seen(&self, scope: &str, key: &str) -> Result<bool, StoreError> {
        let row = self
            .cql
            .maybe_row::<(Option<i64>,)>(&self.seen, (scope, key))
            .await
            .ctx("dedupe.seen", key)?;
        Ok(row.is_some())
    }

    async fn seen_many(&self, scope: &str, keys: &[String]) -> Result<Vec<bool>, StoreError> {
        // One single-partition read per distinct key; repeats share it.
        let unique: Vec<&String> = keys.iter().collect::<HashSet<_>>().into_iter().collect();
        if unique.is_empty() {
            return Ok(Vec::new());
        }
        let answers = self
            .cql
            .concurrently(unique.iter().copied(), |key| self.seen(scope, key))
            .await?;
        let seen: HashSet<&String> = unique
            .into_iter()
            .zip(answers)
            .filter_map(|(key, seen)| seen.then_some(key))
            .collect();
        Ok(keys.iter().map(|key| seen.contains(key)).collect())
    }

    async fn forget(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        self.cql
            .execute(&self.forget, (scope, key))
            .await
            .ctx("dedupe.forget", key)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_seconds_within_cql_limits() {
        assert_eq!(ttl_secs(Duration::from_millis(1)), 1);
        assert_eq!(ttl_secs(Duration::ZERO), 1);
        assert_eq!(ttl_secs(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_secs(Duration::from_secs(86_400)), 86_400);
        assert_eq!(ttl_secs(Duration::from_secs(u64::MAX)), MAX_TTL_SECS as i32);
    }
}
