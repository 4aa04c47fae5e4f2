//! What became of each notification, read from Kafka up to the high
//! watermarks: terminal states other than delivery (dead-lettered,
//! suppressed, ...) from the tracking and dead-letter topics, and how far
//! each stage's consumer group has committed.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer, StreamConsumer},
};
use tidings_schemas::{
    AvroCodec,
    records::{DeadLetter, Delivery, NotificationRequest, TrackingEvent, TrackingKind},
};

const METADATA: Duration = Duration::from_secs(10);

fn partitions_of<C: Consumer>(consumer: &C, topic: &str) -> Vec<i32> {
    consumer
        .fetch_metadata(Some(topic), METADATA)
        .map(|m| {
            m.topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads one topic from the beginning, a step at a time, each step up to
/// the high watermarks as of that step. Assigned partitions, no group.
pub struct Tail {
    topic: String,
    consumer: StreamConsumer,
    /// Next offset to read, by partition.
    next: HashMap<i32, i64>,
}

impl Tail {
    pub fn new(bootstrap: &str, topic: &str) -> Self {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("chaos-reader-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .create()
            .expect("chaos reader");
        let mut tpl = TopicPartitionList::new();
        let partitions = partitions_of(&consumer, topic);
        assert!(!partitions.is_empty(), "{topic} has no partitions");
        for p in &partitions {
            tpl.add_partition_offset(topic, *p, Offset::Beginning)
                .expect("partition offset");
        }
        consumer.assign(&tpl).expect("assign");
        Self {
            topic: topic.to_owned(),
            next: partitions.iter().map(|p| (*p, 0)).collect(),
            consumer,
        }
    }

    /// Every record written since the last call, up to the high watermarks
    /// as of now: (partition, offset, payload). `Err` if Kafka does not
    /// answer (a broker restart): the caller tries again later.
    pub async fn read_new(&mut self) -> Result<Vec<(i32, i64, Vec<u8>)>, String> {
        let mut left = HashMap::new();
        for (&p, &next) in &self.next {
            let (_, high) = self
                .consumer
                .fetch_watermarks(&self.topic, p, METADATA)
                .map_err(|e| format!("watermarks of {}: {e}", self.topic))?;
            if high > next {
                left.insert(p, high);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut records = Vec::new();
        while !left.is_empty() {
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                return Err(format!(
                    "reading {} to its high watermark took over 60 s",
                    self.topic
                ));
            }
            if let Ok(Ok(m)) = tokio::time::timeout(wait, self.consumer.recv()).await {
                let (p, offset) = (m.partition(), m.offset());
                self.next.insert(p, offset + 1);
                if left.get(&p).is_some_and(|high| offset + 1 >= *high) {
                    left.remove(&p);
                }
                records.push((p, offset, m.payload().unwrap_or_default().to_vec()));
            }
        }
        Ok(records)
    }
}

/// How many records of its input topics a consumer group has not committed.
pub struct Lag {
    consumer: BaseConsumer,
    topics: Vec<String>,
}

impl Lag {
    pub fn new(bootstrap: &str, group: &str, topics: Vec<String>) -> Self {
        // Reads the group's committed offsets; never joins it.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("lag reader");
        Self { consumer, topics }
    }

    /// Uncommitted records, or `Err` when Kafka does not answer.
    pub fn uncommitted(&self) -> Result<i64, String> {
        let mut tpl = TopicPartitionList::new();
        for t in &self.topics {
            for p in partitions_of(&self.consumer, t) {
                tpl.add_partition(t, p);
            }
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, METADATA)
            .map_err(|e| format!("committed offsets: {e}"))?;
        let mut lag = 0;
        for e in committed.elements() {
            let (low, high) = self
                .consumer
                .fetch_watermarks(e.topic(), e.partition(), METADATA)
                .map_err(|e| format!("watermarks: {e}"))?;
            let at = match e.offset() {
                Offset::Offset(n) => n,
                _ => low,
            };
            lag += (high - at).max(0);
        }
        Ok(lag)
    }
}

/// A terminal state other than delivery, with its reason.
#[derive(Debug, Clone)]
pub struct Terminal {
    pub dead_lettered: bool,
    pub reason: String,
}

/// What the tracking and dead-letter topics say so far.
pub struct Outcomes {
    tracking: Tail,
    dead_letter: Tail,
    codec: AvroCodec,
    /// By notification id.
    pub terminal: HashMap<String, Terminal>,
    /// Dead letters by (source topic, partition, offset): for poison records.
    pub dead_letters: HashMap<(String, i32, i64), String>,
}

impl Outcomes {
    pub fn new(bootstrap: &str, tracking: &str, dead_letter: &str) -> Self {
        Self {
            tracking: Tail::new(bootstrap, tracking),
            dead_letter: Tail::new(bootstrap, dead_letter),
            codec: AvroCodec::local(),
            terminal: HashMap::new(),
            dead_letters: HashMap::new(),
        }
    }

    /// Reads both topics up to their high watermarks.
    pub async fn refresh(&mut self) -> Result<(), String> {
        for (_, _, payload) in self.tracking.read_new().await? {
            // Poison on the tracking topic is not ours to count here.
            let Ok(event) = self.codec.decode::<TrackingEvent>(&payload) else {
                continue;
            };
            let dead_lettered = match event.kind {
                TrackingKind::DeadLettered => true,
                TrackingKind::Suppressed
                | TrackingKind::RateLimited
                | TrackingKind::Expired
                | TrackingKind::InvalidToken => false,
                _ => continue,
            };
            let reason = format!(
                "{:?} by {}: {}",
                event.kind,
                event.stage,
                event.detail.unwrap_or_default()
            );
            self.terminal
                .entry(event.notification_id)
                .or_insert(Terminal {
                    dead_lettered,
                    reason,
                });
        }
        for (_, _, payload) in self.dead_letter.read_new().await? {
            let Ok(dl) = self.codec.decode::<DeadLetter>(&payload) else {
                continue;
            };
            let reason = format!("dead-lettered by {}: {}", dl.stage, dl.reason);
            let id = self
                .codec
                .decode::<Delivery>(&dl.payload)
                .map(|d| d.notification_id)
                .or_else(|_| {
                    self.codec
                        .decode::<NotificationRequest>(&dl.payload)
                        .map(|r| r.notification_id)
                })
                .ok();
            if let Some(id) = id {
                self.terminal.insert(
                    id,
                    Terminal {
                        dead_lettered: true,
                        reason: reason.clone(),
                    },
                );
            }
            self.dead_letters.insert(
                (dl.source_topic, dl.source_partition, dl.source_offset),
                reason,
            );
        }
        Ok(())
    }
}
