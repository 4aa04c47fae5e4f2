//! Caller authentication: every call carries `x-app-key` and `x-app-secret`.
//!
//! Secrets are random and long, so a SHA-256 digest is a sufficient stored
//! form (no slow KDF needed, unlike passwords); digests are compared in
//! constant time. Apps are cached for [`CACHE_TTL`], so a revocation takes
//! effect within that long on every gateway while the store is up; while it
//! is unreachable, known apps are served from the cache for up to
//! `gateway.auth_stale_serve_secs` (see [`crate::stale_cache`]) and unknown
//! keys are refused with UNAVAILABLE. Quotas are per gateway instance (token
//! bucket of `quota_per_sec`).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tidings_store::{App, AppStore};
use tonic::{Request, Status};

use crate::stale_cache::StaleCache;

pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// Apps (and as many unknown keys) one gateway keeps in memory: bounded, so
/// a caller trying random keys cannot grow it.
pub const CACHE_ENTRIES: usize = 10_000;

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

pub struct Authenticator {
    apps: StaleCache<String, App>,
    /// One bucket per app with a quota; only keys that authenticated get
    /// one, so it is bounded by the apps that exist.
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Default for Authenticator {
    fn default() -> Self {
        Self::new(Duration::from_secs(600))
    }
}

impl Authenticator {
    /// Serves known apps for up to `stale_for` after they were last read
    /// while the store cannot be reached.
    pub fn new(stale_for: Duration) -> Self {
        Self {
            apps: StaleCache::new("app", CACHE_ENTRIES, CACHE_TTL, stale_for),
            buckets: Mutex::default(),
        }
    }

    /// Checks credentials, permission and quota; returns the app key.
    pub async fn authorize<T>(
        &self,
        store: &dyn AppStore,
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
        // App keys are ids: a longer one cannot exist, so it is not looked up
        // (nor cached).
        if key.len() > crate::validate::MAX_ID_LEN {
            return Err(Status::unauthenticated("invalid app key or secret"));
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

    async fn lookup(&self, store: &dyn AppStore, key: &str) -> Result<Option<App>, Status> {
        let key = key.to_owned();
        let app = self.apps.get(&key, || store.get(&key)).await.map_err(|e| {
            let status = crate::store_status(e);
            Status::new(
                status.code(),
                format!("cannot authenticate app `{key}`: {}", status.message()),
            )
        })?;
        Ok(app.into_value())
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

    /// An app store that can be taken down, as Cassandra was in the chaos
    /// run (`No connections in the pool`).
    #[derive(Default)]
    struct FlakyApps {
        apps: Mutex<HashMap<String, App>>,
        down: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl AppStore for FlakyApps {
        async fn put(&self, app: &App) -> Result<(), tidings_store::StoreError> {
            self.apps
                .lock()
                .unwrap()
                .insert(app.app_key.clone(), app.clone());
            Ok(())
        }
        async fn get(&self, app_key: &str) -> Result<Option<App>, tidings_store::StoreError> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(tidings_store::StoreError::Backend {
                    op: "apps.get",
                    key: app_key.into(),
                    retriable: true,
                    source: "No connections in the pool".into(),
                });
            }
            Ok(self.apps.lock().unwrap().get(app_key).cloned())
        }
        async fn revoke(&self, _: &str) -> Result<bool, tidings_store::StoreError> {
            unimplemented!()
        }
        async fn list(&self) -> Result<Vec<App>, tidings_store::StoreError> {
            unimplemented!()
        }
    }

    fn request(key: &str, secret: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut().insert("x-app-key", key.parse().unwrap());
        r.metadata_mut()
            .insert("x-app-secret", secret.parse().unwrap());
        r
    }

    #[tokio::test(start_paused = true)]
    async fn known_apps_keep_working_while_the_store_is_down() {
        let store = FlakyApps::default();
        store
            .put(&App {
                app_key: "shop".into(),
                secret_hash: hash_secret("s3cret"),
                name: "shop".into(),
                permissions: vec!["send".into()],
                quota_per_sec: None,
                revoked: false,
                created_at: 0,
            })
            .await
            .unwrap();
        let auth = Authenticator::new(Duration::from_secs(600));
        assert_eq!(
            auth.authorize(&store, &request("shop", "s3cret"), "send")
                .await
                .unwrap(),
            "shop"
        );
        store.down.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::advance(CACHE_TTL * 3).await;
        assert_eq!(
            auth.authorize(&store, &request("shop", "s3cret"), "send")
                .await
                .unwrap(),
            "shop",
            "a known app is served from the cache"
        );
        let wrong = auth
            .authorize(&store, &request("shop", "guess"), "send")
            .await
            .unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let unknown = auth
            .authorize(&store, &request("stranger", "x"), "send")
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::Unavailable, "{unknown:?}");
        assert!(unknown.message().contains("stranger"), "{unknown:?}");

        tokio::time::advance(Duration::from_secs(600)).await;
        let expired = auth
            .authorize(&store, &request("shop", "s3cret"), "send")
            .await
            .unwrap_err();
        assert_eq!(
            expired.code(),
            tonic::Code::Unavailable,
            "staleness is bounded: {expired:?}"
        );
    }

    #[tokio::test]
    async fn overlong_keys_are_refused_without_a_lookup() {
        let store = FlakyApps::default();
        store.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let auth = Authenticator::default();
        let err = auth
            .authorize(&store, &request(&"k".repeat(4096), "x"), "send")
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
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
