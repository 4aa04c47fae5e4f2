//! API credentials of the client applications allowed to call the gateway.

use crate::{Millis, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub app_key: String,
    /// Hash of the app secret; the secret itself is never stored.
    pub secret_hash: String,
    pub name: String,
    pub permissions: Vec<String>,
    pub quota_per_sec: Option<u32>,
    pub revoked: bool,
    pub created_at: Millis,
}

#[async_trait::async_trait]
pub trait AppStore: Send + Sync + 'static {
    async fn put(&self, app: &App) -> Result<(), StoreError>;
    async fn get(&self, app_key: &str) -> Result<Option<App>, StoreError>;
    /// Marks the app revoked; false if there is no such app.
    async fn revoke(&self, app_key: &str) -> Result<bool, StoreError>;
    /// All apps ordered by key (a small table).
    async fn list(&self) -> Result<Vec<App>, StoreError>;
}
