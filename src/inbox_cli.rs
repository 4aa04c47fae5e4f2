//! `tidings inbox --as <user> ...`: the in-app inbox as one user, from the
//! command line, through the gateway's gRPC `InboxService` with a user token
//! minted from `feed.user_token_secret` (as `tidings feed` does). With
//! `--output json` each command prints the JSON the HTTP API answers
//! (`/v1/me/notifications*`, docs/api.md).

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};
use tidings_schemas::proto::v1::{self as pb, inbox_service_client::InboxServiceClient};
use tonic::{Request, transport::Channel as GrpcChannel};

use crate::client::{ActingUser, user_channel};

#[derive(Args)]
pub struct InboxArgs {
    /// The acting user (its token is minted with feed.user_token_secret).
    #[arg(long = "as", value_name = "USER")]
    pub user: String,
    /// The gateway's gRPC address.
    #[arg(
        long,
        env = "TIDINGS_GATEWAY_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub gateway: String,
    #[command(subcommand)]
    pub command: InboxCommand,
}

#[derive(Subcommand)]
pub enum InboxCommand {
    /// Print a page of the inbox, newest first (unread items marked `*`).
    List {
        /// Which items: inbox (not archived), unread, archived, or all.
        #[arg(long, value_enum, default_value_t = Filter::Inbox)]
        filter: Filter,
        /// Only items of this category.
        #[arg(long)]
        category: Option<String>,
        /// Items per page, 1 to 100.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The cursor a previous page printed.
        #[arg(long, default_value = "")]
        cursor: String,
    },
    /// Print the counts: unread (the widget's badge), unseen (new since the
    /// list was last opened, see `seen`) and total (not archived).
    Count,
    /// Mark an item read.
    Read {
        /// The item's id (its notification id; `list` prints it).
        id: String,
    },
    /// Mark an item unread again.
    Unread {
        /// The item's id.
        id: String,
    },
    /// Mark every unread item read.
    ReadAll,
    /// Archive an item: it leaves the inbox (`list --filter archived` shows
    /// it).
    Archive {
        /// The item's id.
        id: String,
    },
    /// Bring an archived item back to the inbox.
    Unarchive {
        /// The item's id.
        id: String,
    },
    /// Mark every item so far seen: unseen drops to 0 (what opening the
    /// list does).
    Seen,
}

/// `list --filter`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Filter {
    Inbox,
    Unread,
    Archived,
    All,
}

impl Filter {
    fn to_proto(self) -> pb::InboxFilter {
        match self {
            Filter::Inbox => pb::InboxFilter::Inbox,
            Filter::Unread => pb::InboxFilter::Unread,
            Filter::Archived => pb::InboxFilter::Archived,
            Filter::All => pb::InboxFilter::All,
        }
    }
}

/// The inbox as one user: every call carries the user's bearer token.
/// Errors are the gateway's statuses as they came.
pub struct InboxClient {
    inbox: InboxServiceClient<GrpcChannel>,
    user: ActingUser,
}

impl InboxClient {
    pub async fn connect(endpoint: &str, user_token: &str) -> Result<Self> {
        Ok(Self {
            inbox: InboxServiceClient::new(user_channel(endpoint).await?),
            user: ActingUser::new(user_token)?,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        self.user.request(message)
    }

    pub async fn list(
        &self,
        request: pb::ListNotificationsRequest,
    ) -> Result<pb::ListNotificationsResponse, tonic::Status> {
        Ok(self
            .inbox
            .clone()
            .list_notifications(self.request(request))
            .await?
            .into_inner())
    }

    pub async fn counts(&self) -> Result<pb::InboxCounts, tonic::Status> {
        let answer = self
            .inbox
            .clone()
            .get_counts(self.request(pb::GetCountsRequest {}))
            .await?
            .into_inner();
        Ok(answer.counts.unwrap_or_default())
    }

    pub async fn mark(
        &self,
        id: &str,
        action: pb::InboxAction,
    ) -> Result<pb::MarkNotificationResponse, tonic::Status> {
        let request = pb::MarkNotificationRequest {
            id: id.into(),
            action: action as i32,
        };
        Ok(self
            .inbox
            .clone()
            .mark_notification(self.request(request))
            .await?
            .into_inner())
    }

    pub async fn read_all(&self) -> Result<pb::MarkAllReadResponse, tonic::Status> {
        Ok(self
            .inbox
            .clone()
            .mark_all_read(self.request(pb::MarkAllReadRequest {}))
            .await?
            .into_inner())
    }

    pub async fn seen(&self) -> Result<pb::InboxCounts, tonic::Status> {
        let answer = self
            .inbox
            .clone()
            .mark_seen(self.request(pb::MarkSeenRequest {}))
            .await?
            .into_inner();
        Ok(answer.counts.unwrap_or_default())
    }
}

/// Runs `command` as the user of `user_token`; prints JSON with `json`, else
/// text for people.
pub async fn run(args: InboxArgs, user_token: &str, json: bool) -> Result<()> {
    let inbox = InboxClient::connect(&args.gateway, user_token).await?;
    let status = |s: tonic::Status| anyhow::anyhow!("{:?}: {}", s.code(), s.message());
    let (value, text) = match args.command {
        InboxCommand::List {
            filter,
            category,
            limit,
            cursor,
        } => {
            let page = inbox
                .list(pb::ListNotificationsRequest {
                    filter: filter.to_proto() as i32,
                    category: category.unwrap_or_default(),
                    limit,
                    cursor,
                })
                .await
                .map_err(status)?;
            (page_json(&page), page_text(&page))
        }
        InboxCommand::Count => {
            let counts = inbox.counts().await.map_err(status)?;
            let text = format!(
                "{} unread, {} unseen, {} in the inbox",
                counts.unread, counts.unseen, counts.total
            );
            (counts_json(&counts), text)
        }
        InboxCommand::Read { id } => mark(&inbox, &id, pb::InboxAction::Read, "read").await?,
        InboxCommand::Unread { id } => {
            mark(&inbox, &id, pb::InboxAction::Unread, "marked unread").await?
        }
        InboxCommand::Archive { id } => {
            mark(&inbox, &id, pb::InboxAction::Archive, "archived").await?
        }
        InboxCommand::Unarchive { id } => {
            mark(&inbox, &id, pb::InboxAction::Unarchive, "unarchived").await?
        }
        InboxCommand::ReadAll => {
            let answer = inbox.read_all().await.map_err(status)?;
            let counts = answer.counts.unwrap_or_default();
            let text = format!("marked {} read ({} unread)", answer.changed, counts.unread);
            (
                json!({"changed": answer.changed, "counts": counts_json(&counts)}),
                text,
            )
        }
        InboxCommand::Seen => {
            let counts = inbox.seen().await.map_err(status)?;
            let text = format!(
                "all seen ({} unseen, {} unread)",
                counts.unseen, counts.unread
            );
            (json!({"counts": counts_json(&counts)}), text)
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string(&value).context("rendering the output as JSON")?
        );
    } else {
        println!("{text}");
    }
    Ok(())
}

/// One of the four single-item changes; `done` says what happened, in text.
async fn mark(
    inbox: &InboxClient,
    id: &str,
    action: pb::InboxAction,
    done: &str,
) -> Result<(Value, String)> {
    let answer = inbox
        .mark(id, action)
        .await
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?;
    let counts = answer.counts.unwrap_or_default();
    let value = json!({
        "item": answer.item.as_ref().map_or(Value::Null, item_json),
        "counts": counts_json(&counts),
    });
    Ok((value, format!("{done} {id} ({} unread)", counts.unread)))
}

pub fn counts_json(counts: &pb::InboxCounts) -> Value {
    json!({"unread": counts.unread, "unseen": counts.unseen, "total": counts.total})
}

/// An item as the HTTP API writes it: empty strings and zero times absent.
pub fn item_json(item: &pb::InboxItem) -> Value {
    let mut fields = Map::new();
    fields.insert("id".into(), item.id.clone().into());
    fields.insert("created_at_ms".into(), item.created_at_ms.into());
    for (name, value) in [
        ("category", &item.category),
        ("title", &item.title),
        ("body", &item.body),
        ("action_url", &item.action_url),
        ("avatar_url", &item.avatar_url),
    ] {
        if !value.is_empty() {
            fields.insert(name.into(), value.clone().into());
        }
    }
    let data: Map<String, Value> = item
        .data
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    fields.insert("data".into(), data.into());
    fields.insert("read".into(), item.read.into());
    if item.read_at_ms != 0 {
        fields.insert("read_at_ms".into(), item.read_at_ms.into());
    }
    fields.insert("archived".into(), item.archived.into());
    if item.archived_at_ms != 0 {
        fields.insert("archived_at_ms".into(), item.archived_at_ms.into());
    }
    fields.insert("seen".into(), item.seen.into());
    fields.into()
}

fn page_json(page: &pb::ListNotificationsResponse) -> Value {
    let mut value = json!({"items": page.items.iter().map(item_json).collect::<Vec<_>>()});
    if !page.next_cursor.is_empty() {
        value["next_cursor"] = page.next_cursor.clone().into();
    }
    value
}

/// One line per item: `*` when unread, its id, time, category, title and
/// body; then where the next page starts.
fn page_text(page: &pb::ListNotificationsResponse) -> String {
    let mut lines: Vec<String> = page
        .items
        .iter()
        .map(|item| {
            let mark = if item.read { ' ' } else { '*' };
            let when = chrono::DateTime::from_timestamp_millis(item.created_at_ms).map_or_else(
                || item.created_at_ms.to_string(),
                |t| t.format("%Y-%m-%d %H:%M").to_string(),
            );
            let mut line = format!("{mark} {}  {when}", item.id);
            if !item.category.is_empty() {
                line.push_str(&format!("  [{}]", item.category));
            }
            let text: Vec<&str> = [item.title.as_str(), item.body.as_str()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect();
            if !text.is_empty() {
                line.push_str("  ");
                line.push_str(&text.join(": "));
            }
            if item.archived {
                line.push_str("  (archived)");
            }
            line
        })
        .collect();
    if lines.is_empty() {
        lines.push("(nothing here)".into());
    }
    if !page.next_cursor.is_empty() {
        lines.push(format!("older: --cursor {}", page.next_cursor));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> pb::InboxItem {
        pb::InboxItem {
            id: "n1".into(),
            created_at_ms: 1_764_553_200_000,
            title: "Invoice paid".into(),
            body: "Thanks!".into(),
            read: false,
            seen: true,
            ..Default::default()
        }
    }

    #[test]
    fn an_item_is_written_as_the_http_api_writes_it() {
        let mut read = item();
        read.category = "billing".into();
        read.read = true;
        read.read_at_ms = 1_764_553_300_000;
        read.data.insert("invoice".into(), "42".into());
        assert_eq!(
            item_json(&read),
            json!({
                "id": "n1", "created_at_ms": 1_764_553_200_000_i64, "category": "billing",
                "title": "Invoice paid", "body": "Thanks!", "data": {"invoice": "42"},
                "read": true, "read_at_ms": 1_764_553_300_000_i64, "archived": false, "seen": true,
            })
        );
    }

    #[test]
    fn a_page_marks_unread_items_and_says_where_the_next_starts() {
        let mut archived = item();
        archived.id = "n0".into();
        archived.read = true;
        archived.archived = true;
        archived.body.clear();
        let page = pb::ListNotificationsResponse {
            items: vec![item(), archived],
            next_cursor: "c2".into(),
        };
        assert_eq!(
            page_text(&page),
            "* n1  2025-12-01 01:40  Invoice paid: Thanks!\n  n0  2025-12-01 01:40  Invoice paid  (archived)\nolder: --cursor c2"
        );
        assert_eq!(page_json(&page)["next_cursor"], "c2");
        let empty = pb::ListNotificationsResponse::default();
        assert_eq!(page_text(&empty), "(nothing here)");
        assert!(page_json(&empty).get("next_cursor").is_none());
    }
}
