//! [`InboxStore`](crate::InboxStore) on SQLite.

use std::time::Duration;

use crate::inbox::{InboxAction, InboxCounts, InboxItem, InboxQuery, InboxStore};
use crate::{Millis, StoreError};

use super::Db;

#[allow(dead_code)]
pub(crate) struct SqliteInbox(pub(crate) Db);

fn pending<T>(op: &'static str) -> Result<T, StoreError> {
    // Placeholder while the engine is written (issue 9); replaced in the same session.
    Err(StoreError::InvalidData {
        op,
        key: String::new(),
        reason: "inbox store not implemented yet".into(),
    })
}

#[async_trait::async_trait]
impl InboxStore for SqliteInbox {
    async fn put(&self, _item: &InboxItem, _cap: u32, _ttl: Duration) -> Result<bool, StoreError> {
        pending("inbox.put")
    }
    async fn list(
        &self,
        _user_id: &str,
        _query: &InboxQuery,
    ) -> Result<Vec<InboxItem>, StoreError> {
        pending("inbox.list")
    }
    async fn get(
        &self,
        _user_id: &str,
        _notification_id: &str,
    ) -> Result<Option<InboxItem>, StoreError> {
        pending("inbox.get")
    }
    async fn mark(
        &self,
        _user_id: &str,
        _notification_id: &str,
        _action: InboxAction,
        _at: Millis,
    ) -> Result<bool, StoreError> {
        pending("inbox.mark")
    }
    async fn mark_all_read(&self, _user_id: &str, _at: Millis) -> Result<u32, StoreError> {
        pending("inbox.mark_all_read")
    }
    async fn mark_seen(&self, _user_id: &str, _at: Millis) -> Result<(), StoreError> {
        pending("inbox.mark_seen")
    }
    async fn counts(&self, _user_id: &str) -> Result<InboxCounts, StoreError> {
        pending("inbox.counts")
    }
}
