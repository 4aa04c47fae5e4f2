//! The in-app inbox: per user, the notifications delivered on the `in_app`
//! channel, newest first, with their read / archived state and the user's
//! "seen up to" mark (the badge). Written by the in-app sender, read and
//! marked by end users through the gateway.
//!
//! Bounded twice: each user keeps at most `cap` items (the oldest go first)
//! and every item expires `ttl` after it was written.

use std::time::Duration;

use crate::{Millis, StoreError};

/// One notification in a user's inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxItem {
    pub user_id: String,
    /// The notification's id: the item's id in the API. Writing the same
    /// notification twice (a replay) keeps one item and its state.
    pub notification_id: String,
    /// When the gateway accepted the notification: the inbox's order.
    pub created_at: Millis,
    pub category: Option<String>,
    /// The template it was rendered from, so reads and archives count in
    /// that template's stats.
    pub template_name: Option<String>,
    pub title: Option<String>,
    pub body: Option<String>,
    pub action_url: Option<String>,
    pub avatar_url: Option<String>,
    /// The request's custom data, as sent.
    pub data: std::collections::BTreeMap<String, String>,
    /// `None` while unread.
    pub read_at: Option<Millis>,
    /// `None` unless archived.
    pub archived_at: Option<Millis>,
}

/// Which items a page lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InboxFilter {
    /// Every item that is not archived (the default view).
    #[default]
    Inbox,
    /// Not archived and not read.
    Unread,
    /// Only archived items.
    Archived,
    /// Everything, archived or not.
    All,
}

/// One page of an inbox, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxQuery {
    pub filter: InboxFilter,
    /// Only items of this category.
    pub category: Option<String>,
    /// Only items strictly older than this (created_at, notification_id):
    /// the last item of the previous page.
    pub before: Option<(Millis, String)>,
    pub limit: u32,
}

/// The badge numbers of one inbox; archived items count in neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InboxCounts {
    /// Items not read.
    pub unread: u32,
    /// Items newer than the user's "seen" mark (created_at after it).
    pub unseen: u32,
    /// Items not archived.
    pub total: u32,
}

/// A change a user makes to one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxAction {
    Read,
    Unread,
    Archive,
    Unarchive,
}

impl InboxAction {
    pub fn as_str(self) -> &'static str {
        match self {
            InboxAction::Read => "read",
            InboxAction::Unread => "unread",
            InboxAction::Archive => "archive",
            InboxAction::Unarchive => "unarchive",
        }
    }
}

#[async_trait::async_trait]
pub trait InboxStore: Send + Sync + 'static {
    /// Adds the item unless the user already has that notification (then
    /// nothing changes, the stored state included): answers whether it was
    /// new. Afterwards the user keeps at most `cap` items (the oldest by
    /// `created_at` are deleted), and the item expires after `ttl`.
    async fn put(&self, item: &InboxItem, cap: u32, ttl: Duration) -> Result<bool, StoreError>;
    /// A page of the user's items, newest first by (created_at,
    /// notification_id).
    async fn list(&self, user_id: &str, query: &InboxQuery) -> Result<Vec<InboxItem>, StoreError>;
    /// One item, if the user has it.
    async fn get(
        &self,
        user_id: &str,
        notification_id: &str,
    ) -> Result<Option<InboxItem>, StoreError>;
    /// Applies `action` at time `at` to the item; answers `false` when the
    /// user has no such item. Idempotent: reading a read item keeps its
    /// first `read_at`.
    async fn mark(
        &self,
        user_id: &str,
        notification_id: &str,
        action: InboxAction,
        at: Millis,
    ) -> Result<bool, StoreError>;
    /// Marks every unread, unarchived item read at `at`; answers how many
    /// changed.
    async fn mark_all_read(&self, user_id: &str, at: Millis) -> Result<u32, StoreError>;
    /// Moves the user's "seen" mark to `at` (the badge is cleared); a mark
    /// never moves back.
    async fn mark_seen(&self, user_id: &str, at: Millis) -> Result<(), StoreError>;
    async fn counts(&self, user_id: &str) -> Result<InboxCounts, StoreError>;
}
