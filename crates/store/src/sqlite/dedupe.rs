//! [`DedupeLedger`](crate::DedupeLedger) on SQLite: the `dedupe` table.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::{Connection, params};

use super::{Context, Db};
use crate::dedupe::{Claim, DedupeLedger, first_claims, spread_claims};
use crate::{Millis, StoreError, now_millis};

/// Expired rows are treated as absent by the upsert below and deleted in bulk
/// every `PURGE_EVERY` marks, so the table stays bounded without a timer.
const PURGE_EVERY: u64 = 4096;

pub(crate) struct SqliteDedupe {
    db: Db,
    marks: AtomicU64,
}

impl SqliteDedupe {
    /// Runs `write` for each item of `scope` in the call's savepoint (all
    /// or none), purging expired rows first when this call crosses a purge
    /// boundary.
    async fn write_each<I, T>(
        &self,
        op: &'static str,
        scope: &str,
        items: Vec<I>,
        ttl: Duration,
        write: fn(&Connection, &str, &I, Millis, Millis) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError>
    where
        I: Send + 'static,
        T: Send + 'static,
    {
        let purge_due = self.purge_due(items.len());
        let owned_scope = scope.to_owned();
        self.db
            .call(move |c| {
                let now = now_millis();
                let expires_at = expiry(now, ttl);
                if purge_due {
                    purge(c, now)?;
                }
                items
                    .iter()
                    .map(|item| write(c, &owned_scope, item, now, expires_at))
                    .collect()
            })
            .await
            .ctx(op, scope)
    }

    pub(crate) fn new(db: Db) -> Self {
        SqliteDedupe {
            db,
            marks: AtomicU64::new(0),
        }
    }

    /// Whether this batch of `count` marks crosses a purge boundary.
    fn purge_due(&self, count: usize) -> bool {
        let count = count as u64;
        let before = self.marks.fetch_add(count, Ordering::Relaxed);
        before / PURGE_EVERY != (before + count) / PURGE_EVERY
    }
}

/// Inserts the key, or revives an expired one; either way one row changes
/// exactly when the key counts as first seen.
fn mark(
    c: &Connection,
    scope: &str,
    key: &str,
    now: Millis,
    expires_at: Millis,
) -> rusqlite::Result<bool> {
    let changed = c
        .prepare_cached(
            "INSERT INTO dedupe (scope, key, expires_at) VALUES (?1, ?2, ?4)
             ON CONFLICT (scope, key) DO UPDATE SET expires_at = excluded.expires_at WHERE dedupe.expires_at <= ?3",
        )?
        .execute(params![scope, key, now, expires_at])?;
    Ok(changed == 1)
}

/// Claims a free or expired key (one row changes: [`Claim::First`]), else
/// reads who holds it.
fn claim(
    c: &Connection,
    scope: &str,
    key: &str,
    claimant: &str,
    now: Millis,
    expires_at: Millis,
) -> rusqlite::Result<Claim> {
    let changed = c
        .prepare_cached(
            "INSERT INTO dedupe (scope, key, expires_at, claimant) VALUES (?1, ?2, ?4, ?5)
             ON CONFLICT (scope, key) DO UPDATE SET expires_at = excluded.expires_at, claimant = excluded.claimant
             WHERE dedupe.expires_at <= ?3",
        )?
        .execute(params![scope, key, now, expires_at, claimant])?;
    if changed == 1 {
        return Ok(Claim::First);
    }
    let holder: Option<String> = c
        .prepare_cached("SELECT claimant FROM dedupe WHERE scope = ?1 AND key = ?2")?
        .query_row(params![scope, key], |row| row.get(0))?;
    // Marked before claims existed: it may be this record's own, so it is
    // processed again rather than dropped (a duplicate, never a loss).
    Ok(match holder {
        Some(holder) if holder != claimant => Claim::Taken,
        _ => Claim::Held,
    })
}

const SELECT_SEEN: &str =
    "SELECT EXISTS (SELECT 1 FROM dedupe WHERE scope = ?1 AND key = ?2 AND expires_at > ?3)";

fn purge(c: &Connection, now: Millis) -> rusqlite::Result<usize> {
    c.prepare_cached("DELETE FROM dedupe WHERE expires_at <= ?1")?
        .execute([now])
}

fn expiry(now: Millis, ttl: Duration) -> Millis {
    now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

#[async_trait::async_trait]
impl DedupeLedger for SqliteDedupe {
    async fn first_seen(&self, scope: &str, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.first_seen_many(scope, &[key.to_owned()], ttl)
            .await
            .map(|seen| seen.first().copied().unwrap_or(false))
    }

    async fn first_seen_many(
        &self,
        scope: &str,
        keys: &[String],
        ttl: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        self.write_each(
            "dedupe.first_seen",
            scope,
            keys.to_vec(),
            ttl,
            |c, scope, key, now, expires_at| mark(c, scope, key, now, expires_at),
        )
        .await
    }

    async fn claim_many(
        &self,
        scope: &str,
        claims: &[(String, String)],
        ttl: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let (firsts, owner) = first_claims(claims);
        let asked: Vec<(String, String)> = firsts.iter().map(|&i| claims[i].clone()).collect();
        let answers = self
            .write_each(
                "dedupe.claim_many",
                scope,
                asked,
                ttl,
                |c, scope, (key, claimant), now, expires_at| {
                    claim(c, scope, key, claimant, now, expires_at)
                },
            )
            .await?;
        Ok(spread_claims(claims, &firsts, &owner, &answers))
    }

    async fn seen(&self, scope: &str, key: &str) -> Result<bool, StoreError> {
        let (owned_scope, owned_key) = (scope.to_owned(), key.to_owned());
        self.db
            .call(move |c| {
                c.prepare_cached(SELECT_SEEN)?
                    .query_row(params![owned_scope, owned_key, now_millis()], |row| {
                        row.get::<_, bool>(0)
                    })
            })
            .await
            .ctx("dedupe.seen", &format!("{scope}/{key}"))
    }

    async fn seen_many(&self, scope: &str, keys: &[String]) -> Result<Vec<bool>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (owned_scope, keys) = (scope.to_owned(), keys.to_vec());
        self.db
            .call(move |c| {
                let now = now_millis();
                let mut stmt = c.prepare_cached(SELECT_SEEN)?;
                keys.iter()
                    .map(|key| {
                        stmt.query_row(params![owned_scope, key, now], |row| row.get::<_, bool>(0))
                    })
                    .collect()
            })
            .await
            .ctx("dedupe.seen_many", scope)
    }

    async fn forget(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        let (owned_scope, owned_key) = (scope.to_owned(), key.to_owned());
        self.db
            .call(move |c| {
                c.prepare_cached("DELETE FROM dedupe WHERE scope = ?1 AND key = ?2")?
                    .execute([&owned_scope, &owned_key])
            })
            .await
            .ctx("dedupe.forget", &format!("{scope}/{key}"))?;
        Ok(())
    }
}
