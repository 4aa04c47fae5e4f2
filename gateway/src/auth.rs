//! Caller authentication: every call carries `x-app-key` and `x-app-secret`.
//!
//! Secrets are random and long, so a SHA-256 digest is a sufficient stored
//! form (no slow KDF needed, unlike passwords); digests are compared in
//! constant time. Apps are cached for a few seconds, so a revocation takes
//! effect within [`CACHE_TTL`] on every gateway. Quotas are per gateway
//! instance (token bucket of `quota_per_sec`).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tidings_store::{App, Store};
use tonic::{Request, Status};

pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// Permissions an app may hold; `*` holds them all.
pub const PERMISSIONS: &[&str] = &["send", "status", "contacts", "preferences", "templates"];

/// The stored form of a secret: `sha256:<hex digest>`.
pub fn hash_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn secret_matches(secret: &str, stored: &str) -> bool {
    hash_secret(secret)
        .as_bytes()
        .ct_eq(stored.as_bytes())
        .into()
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Default)]
pub struct Authenticator {
    cache: Mutex<HashMap<String, (Instant, Option<App>)>>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Authenticator {
    /// Checks credentials, permission and quota; returns the app key.
    pub async fn authorize<T>(
        &self,
        store: &Store,
        request: &Request<T>,
        permission: &str,
    ) -> Result<String, Status> {
        let meta = request.metadata();
        let key = meta
            .get("x-app-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let secret = meta
            .get("x-app-secret")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if key.is_empty() || secret.is_empty() {
            return Err(Status::unauthenticated(
                "x-app-key and x-app-secret metadata are required",
            ));
        }
        let app = self.lookup(store, key).await?;
        let app = match app {
            Some(app) if !app.revoked && secret_matches(secret, &app.secret_hash) => app,
            // One answer for unknown keys, revoked keys and wrong secrets.
            _ => return Err(Status::unauthenticated("invalid app key or secret")),
        };
        if !app.permissions.iter().any(|p| p == "*" || p == permission) {
            return Err(Status::permission_denied(format!(
                "app `{key}` lacks the `{permission}` permission"
            )));
        }
        if let Some(quota) = app.quota_per_sec {
            self.take(key, quota)?;
        }
        Ok(app.app_key)
    }

    async fn lookup(&self, store: &Store, key: &str) -> Result<Option<App>, Status> {
        if let Some((at, app)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(app.clone());
        }
        let app = store.apps.get(key).await.map_err(crate::store_status)?;
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), (Instant::now(), app.clone()));
        Ok(app)
    }

    fn take(&self, key: &str, quota: u32) -> Result<(), Status> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let rate = f64::from(quota.max(1));
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(rate);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return Err(Status::resource_exhausted(format!(
                "app `{key}` is over its quota of {quota} requests/s"
            )));
        }
        bucket.tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_stored_hashed_and_compared() {
        let stored = hash_secret("s3cret");
        assert!(stored.starts_with("sha256:") && !stored.contains("s3cret"));
        assert!(secret_matches("s3cret", &stored));
        assert!(!secret_matches("s3cret!", &stored));
    }

    #[test]
    fn quota_is_a_token_bucket() {
        let auth = Authenticator::default();
        assert!(auth.take("k", 2).is_ok());
        assert!(auth.take("k", 2).is_ok());
        assert_eq!(
            auth.take("k", 2).unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
    }
}
