//! The provider of the embedded default: prints what would have been sent,
//! so a newcomer sees notifications flow with no provider credentials.

use std::sync::atomic::{AtomicU64, Ordering};

use tidings_schemas::records::Delivery;
use tracing::info;

use super::{Provider, ProviderError, Receipt};

#[derive(Debug, Default)]
pub struct LogSink {
    sent: AtomicU64,
}

impl LogSink {
    /// How many deliveries this sink has printed.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

#[async_trait::async_trait]
impl Provider for LogSink {
    fn name(&self) -> &'static str {
        "log"
    }

    async fn deliver(&self, d: &Delivery) -> Result<Receipt, ProviderError> {
        let n = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        let text = match d.channel.as_str() {
            "email" => d.email_subject.as_deref().or(d.body.as_deref()),
            _ => d.body.as_deref().or(d.title.as_deref()),
        };
        info!(
            target: "tidings::delivered",
            channel = %d.channel,
            to = %d.target,
            user = %d.user_id,
            title = d.title.as_deref().unwrap_or(""),
            text = text.unwrap_or(""),
            notification_id = %d.notification_id,
            "would send #{n}"
        );
        Ok(Receipt {
            provider_id: Some(format!("log-{n}")),
        })
    }
}
