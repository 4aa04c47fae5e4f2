//! Rust types for the Avro records on every topic. Field names and types
//! mirror the `.avsc` files in `schemas/avro/` one to one; the codec checks
//! every record against its schema on write, and the round-trip tests below
//! catch any drift between the two.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (Avro `timestamp-millis`).
pub type Millis = i64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Priority {
    #[default]
    Normal,
    High,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRef {
    pub name: String,
    /// `None` means the latest version.
    pub version: Option<i32>,
    pub params: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RawContent {
    pub title: Option<String>,
    pub body: Option<String>,
    pub sms_text: Option<String>,
    pub email_subject: Option<String>,
    pub email_html: Option<String>,
    pub email_text: Option<String>,
    /// `in_app`: where the item leads when clicked.
    #[serde(default)]
    pub action_url: Option<String>,
    /// `in_app`: the image shown beside the item.
    #[serde(default)]
    pub avatar_url: Option<String>,
}

/// One accepted notification for one user (topic `tidings.notify.requests`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRequest {
    pub notification_id: String,
    pub event_id: String,
    pub app_key: String,
    pub user_id: String,
    /// Empty: every channel the user opted into.
    pub channels: Vec<String>,
    pub category: Option<String>,
    pub template: Option<TemplateRef>,
    pub content: Option<RawContent>,
    pub send_at: Option<Millis>,
    pub expires_at: Option<Millis>,
    pub priority: Priority,
    pub collapse_id: Option<String>,
    pub data: BTreeMap<String, String>,
    pub accepted_at: Millis,
}

/// One rendered message for one target (topics `tidings.deliver.<channel>`
/// and the retry topics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub delivery_id: String,
    pub notification_id: String,
    pub event_id: String,
    pub user_id: String,
    pub channel: String,
    pub target: String,
    pub category: Option<String>,
    pub template_name: Option<String>,
    pub template_version: Option<i32>,
    pub locale: Option<String>,
    pub title: Option<String>,
    pub body: Option<String>,
    pub email_subject: Option<String>,
    pub email_html: Option<String>,
    pub email_text: Option<String>,
    pub data: BTreeMap<String, String>,
    pub collapse_id: Option<String>,
    pub priority: Priority,
    pub expires_at: Option<Millis>,
    pub accepted_at: Millis,
    pub attempt: i32,
    pub not_before: Option<Millis>,
    pub last_error: Option<String>,
    /// `in_app`: where the item leads when clicked.
    #[serde(default)]
    pub action_url: Option<String>,
    /// `in_app`: the image shown beside the item.
    #[serde(default)]
    pub avatar_url: Option<String>,
}

/// A record that could not be processed (topic `tidings.deadletter`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    #[serde(with = "apache_avro::serde::bytes_opt")]
    pub key: Option<Vec<u8>>,
    #[serde(with = "apache_avro::serde::bytes")]
    pub payload: Vec<u8>,
    pub stage: String,
    pub reason: String,
    pub retriable: bool,
    pub attempts: i32,
    pub failed_at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TrackingKind {
    Unknown,
    Accepted,
    Deduplicated,
    Suppressed,
    RateLimited,
    Scheduled,
    Rendered,
    /// No longer emitted: the outcome events of a provider call carry
    /// `dispatched_at`. Kept so that older records still read.
    Dispatched,
    Sent,
    Failed,
    Retried,
    DeadLettered,
    Delivered,
    Opened,
    Clicked,
    InvalidToken,
    Expired,
    /// An in-app item was read by its user.
    Read,
    /// An in-app item was archived by its user.
    Archived,
}

impl TrackingKind {
    /// The per-template counter an event of this kind adds one to (the
    /// template statistics' `<template>:<counter>`), if the kind is counted.
    pub fn template_counter(self) -> Option<&'static str> {
        Some(match self {
            TrackingKind::Sent => "sent",
            TrackingKind::Delivered => "delivered",
            TrackingKind::Opened => "opened",
            TrackingKind::Clicked => "clicked",
            TrackingKind::Read => "read",
            TrackingKind::Archived => "archived",
            _ => return None,
        })
    }
}

/// One step in a notification's life (topic `tidings.tracking`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackingEvent {
    pub event_id: String,
    pub notification_id: String,
    pub user_id: String,
    pub kind: TrackingKind,
    pub channel: Option<String>,
    pub target: Option<String>,
    pub template_name: Option<String>,
    pub stage: String,
    pub detail: Option<String>,
    pub at: Millis,
    /// When a sender began the provider call this event is the outcome of.
    pub dispatched_at: Option<Millis>,
}

/// A new post (topic `tidings.feed.posts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostPublished {
    pub post_id: String,
    pub author_id: String,
    pub body: String,
    pub media_urls: Vec<String>,
    /// `None`: every follower.
    pub audience: Option<Vec<String>>,
    pub created_at: Millis,
}

/// A slice of one post's audience (topic `tidings.feed.fanout`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanoutBatch {
    pub post_id: String,
    pub author_id: String,
    pub created_at: Millis,
    pub recipients: Vec<String>,
    pub batch_index: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InboxEventKind {
    Unknown,
    New,
    Read,
    Unread,
    Archived,
    Unarchived,
    ReadAll,
    Seen,
}

/// The content of a new inbox item, as carried by [`InboxEvent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxEventItem {
    pub created_at: Millis,
    pub category: Option<String>,
    pub title: Option<String>,
    pub body: Option<String>,
    pub action_url: Option<String>,
    pub avatar_url: Option<String>,
    pub data: BTreeMap<String, String>,
}

/// A change to one user's in-app inbox (topic `tidings.inbox.events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxEvent {
    pub event_id: String,
    pub user_id: String,
    pub kind: InboxEventKind,
    /// The item changed; `None` for `ReadAll` and `Seen`.
    pub notification_id: Option<String>,
    /// The new item (`New` only).
    pub item: Option<InboxEventItem>,
    /// Counts after the change.
    pub unread: i32,
    pub unseen: i32,
    pub at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReactionKind {
    Unknown,
    Like,
    Unlike,
    Reply,
}

/// A like, an unlike or a reply to a feed post (topic
/// `tidings.feed.reactions`, key: post id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostReaction {
    pub post_id: String,
    /// Who is told.
    pub post_author_id: String,
    /// Who liked, unliked or replied.
    pub user_id: String,
    pub kind: ReactionKind,
    /// `Reply` only.
    pub reply_id: Option<String>,
    /// `Reply` only: the text, for the author's notification.
    pub reply_body: Option<String>,
    pub at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RevisionKind {
    Unknown,
    Edited,
    Deleted,
}

/// A post edited or deleted by its author (topic `tidings.feed.revisions`,
/// key: post id). The new body is in the store: readers reload it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostRevised {
    pub post_id: String,
    pub author_id: String,
    /// The post's own time: with `post_id`, the key of its feed rows.
    pub post_created_at: Millis,
    pub kind: RevisionKind,
    pub at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FollowKind {
    Unknown,
    Followed,
    Unfollowed,
}

/// A follow or unfollow (topic `tidings.feed.follows`, key: follower id, so
/// one follower's changes apply in order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowChanged {
    pub follower_id: String,
    pub followee_id: String,
    pub kind: FollowKind,
    pub at: Millis,
}
