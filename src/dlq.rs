//! Dead letters are not a dead end: `tidings dlq list|show|replay`.
//!
//! A stage that cannot handle a record puts it on the dead-letter topic
//! (`<prefix>.deadletter`, record `DeadLetter`) with the record's original
//! key and payload bytes, where it came from and why it failed. This module
//! reads that topic (up to its high watermarks as of the start of the
//! command, so a long read ends and a record dead-lettered again during a
//! replay is not replayed in the same run), decodes each payload with the
//! codec to show it and to find its notification id, and sends chosen
//! records back to the topic they came from, byte for byte. Replayed
//! records keep their ids, so the enricher's dedupe and the senders'
//! sent-ledger keep a replay from sending anything twice.
//!
//! The embedded mock cluster lives only inside the `tidings dev` process
//! that started it, so the commands need a shared Kafka; tests drive
//! [`DeadLetters`] as a library against their own cluster, on both backends.

use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use futures::{StreamExt, stream::FuturesUnordered};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    message::OwnedMessage,
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};
use serde_json::{Value, json};
use tidings_config::{Config, KafkaConfig};
use tidings_kafka::{KafkaCluster, Topics, maybe_repeat_headers};
use tidings_schemas::{
    AvroCodec, AvroRecord,
    records::{
        DeadLetter, Delivery, FanoutBatch, FollowChanged, NotificationRequest, PostPublished,
        PostReaction, PostRevised, TrackingEvent,
    },
};
use uuid::Uuid;

/// How long a read may go without a record before it is given up: the
/// brokers are up (the watermarks were just read), so this is a broker that
/// stopped answering, and running the command again may help.
const STALL_LIMIT: Duration = Duration::from_secs(30);
/// Timeout of metadata and watermark requests.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Replayed records in flight at once.
const REPLAY_WINDOW: usize = 256;

/// Where a dead letter sits on the dead-letter topic, written
/// `partition:offset` (how `list` prints it and `show` takes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.partition, self.offset)
    }
}

impl FromStr for Position {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            anyhow!(
                "`{s}` is not a dead letter's position; expected PARTITION:OFFSET as `tidings dlq list` prints it, e.g. 2:17"
            )
        };
        let (partition, offset) = s.split_once(':').ok_or_else(bad)?;
        Ok(Self {
            partition: partition.trim().parse().map_err(|_| bad())?,
            offset: offset.trim().parse().map_err(|_| bad())?,
        })
    }
}

/// Which dead letters a command applies to; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// The topic the record came from: its full name or the part after the
    /// prefix (`deliver.sms`).
    pub source_topic: Option<String>,
    /// Dead-lettered at or after this time (Unix milliseconds).
    pub since_ms: Option<i64>,
    /// Dead-lettered before this time (Unix milliseconds).
    pub until_ms: Option<i64>,
    /// The notification (or post) id in the decoded payload.
    pub id: Option<String>,
    /// The stage that gave up on it (`enricher`, `sender.sms`, ...).
    pub stage: Option<String>,
    /// Only these positions (none: every position).
    pub positions: Vec<Position>,
}

impl Filter {
    fn matches(&self, prefix: &str, entry: &Entry) -> bool {
        let letter = &entry.letter;
        self.source_topic.as_deref().is_none_or(|t| {
            letter.source_topic == t || letter.source_topic == format!("{prefix}.{t}")
        }) && self.since_ms.is_none_or(|s| letter.failed_at >= s)
            && self.until_ms.is_none_or(|u| letter.failed_at < u)
            && self
                .id
                .as_deref()
                .is_none_or(|id| entry.payload.id() == Some(id))
            && self.stage.as_deref().is_none_or(|s| letter.stage == s)
            && (self.positions.is_empty() || self.positions.contains(&entry.position))
    }
}

/// A dead letter's payload, decoded where it is a record this build knows.
#[derive(Debug, Clone)]
pub enum Payload {
    Decoded {
        /// The Avro record's full name, e.g. `tidings.v1.Delivery`.
        record: &'static str,
        /// The notification id (or, for feed records, the post id).
        id: Option<String>,
        /// The record as JSON.
        json: Value,
    },
    /// Not a record of any known type: why the last decoder refused it.
    Undecodable(String),
}

impl Payload {
    /// The payload's notification (or post) id, if it decoded and has one.
    pub fn id(&self) -> Option<&str> {
        match self {
            Payload::Decoded { id, .. } => id.as_deref(),
            Payload::Undecodable(_) => None,
        }
    }

    fn decode(codec: &AvroCodec, bytes: &[u8]) -> Self {
        fn attempt<T: AvroRecord>(
            codec: &AvroCodec,
            bytes: &[u8],
            id: impl Fn(&T) -> &str,
        ) -> Result<Payload, String> {
            let record = codec.decode::<T>(bytes).map_err(|e| e.to_string())?;
            Ok(Payload::Decoded {
                record: T::FULL_NAME,
                id: Some(id(&record).to_owned()).filter(|i| !i.is_empty()),
                json: serde_json::to_value(&record).unwrap_or(Value::Null),
            })
        }
        // A payload decodes as at most one type: its header names the
        // writer schema, and the codec refuses a schema of another record.
        attempt::<NotificationRequest>(codec, bytes, |r| &r.notification_id)
            .or_else(|_| attempt::<Delivery>(codec, bytes, |r| &r.notification_id))
            .or_else(|_| attempt::<TrackingEvent>(codec, bytes, |r| &r.notification_id))
            .or_else(|_| attempt::<PostPublished>(codec, bytes, |r| &r.post_id))
            .or_else(|_| attempt::<FanoutBatch>(codec, bytes, |r| &r.post_id))
            .or_else(|_| attempt::<PostReaction>(codec, bytes, |r| &r.post_id))
            .or_else(|_| attempt::<PostRevised>(codec, bytes, |r| &r.post_id))
            .or_else(|_| attempt::<FollowChanged>(codec, bytes, |r| &r.follower_id))
            .unwrap_or_else(Payload::Undecodable)
    }
}

/// One dead letter with its payload decoded.
#[derive(Debug, Clone)]
pub struct Entry {
    pub position: Position,
    pub letter: DeadLetter,
    pub payload: Payload,
}

impl Entry {
    /// One line for `list`: position, time, stage, source, id, reason.
    pub fn summary(&self) -> String {
        let l = &self.letter;
        let id = match &self.payload {
            Payload::Decoded { id, .. } => id.as_deref().unwrap_or("-"),
            Payload::Undecodable(_) => "(undecodable)",
        };
        format!(
            "{:<10} {}  {:<16} {}[{}]@{}  {}  {}",
            self.position.to_string(),
            format_millis(l.failed_at),
            l.stage,
            l.source_topic,
            l.source_partition,
            l.source_offset,
            id,
            l.reason.replace('\n', " ")
        )
    }

    /// Everything about the dead letter, the payload decoded where it can be.
    pub fn to_json(&self) -> Value {
        let l = &self.letter;
        let payload = match &self.payload {
            Payload::Decoded { record, id, json } => json!({
                "record": record, "id": id, "value": json,
            }),
            Payload::Undecodable(why) => json!({
                "undecodable": why,
                "bytes": l.payload.len(),
                "hex": hex(&l.payload[..l.payload.len().min(64)]),
            }),
        };
        json!({
            "position": self.position.to_string(),
            "source_topic": l.source_topic,
            "source_partition": l.source_partition,
            "source_offset": l.source_offset,
            "key": l.key.as_deref().map(|k| match std::str::from_utf8(k) {
                Ok(text) => json!(text),
                Err(_) => json!({ "hex": hex(k) }),
            }),
            "stage": l.stage,
            "reason": l.reason,
            "retriable": l.retriable,
            "attempts": l.attempts,
            "failed_at": format_millis(l.failed_at),
            "failed_at_ms": l.failed_at,
            "payload": payload,
        })
    }
}

/// Counts of one replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Dead letters read.
    pub scanned: u64,
    /// Dead letters the filter chose.
    pub matched: u64,
    /// Sent back to their source topics (with `dry_run`: would have been).
    pub replayed: u64,
    /// Chosen, but left alone: their payload decodes as no known record,
    /// so replaying would only dead-letter them again.
    pub skipped_undecodable: u64,
}

/// What a replay is doing, for a progress bar.
#[derive(Debug)]
pub enum ReplayEvent<'a> {
    /// `scanned` of the `total` dead letters up to the high watermarks read.
    Scanned { scanned: u64, total: u64 },
    /// Sent back (or, in a dry run, would be).
    Replayed(&'a Entry),
    /// Left alone, with why.
    Skipped(&'a Entry, &'static str),
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayOptions {
    /// Say what would be sent; send nothing.
    pub dry_run: bool,
    /// Replay payloads that decode as no known record too (e.g. after the
    /// schema they were written with was registered).
    pub include_undecodable: bool,
}

/// The dead-letter topic of one deployment.
pub struct DeadLetters {
    client: ClientConfig,
    prefix: String,
    topic: String,
    codec: AvroCodec,
    produce_timeout: Duration,
    max_message_bytes: usize,
}

impl DeadLetters {
    /// The dead-letter topic of the cluster `cluster`, named and reached as
    /// `config` says; payloads are decoded with `codec`.
    pub fn new(cluster: &KafkaCluster, config: &KafkaConfig, codec: AvroCodec) -> Self {
        Self {
            client: cluster.client_config(config),
            prefix: config.topic_prefix.clone(),
            topic: Topics::new(&config.topic_prefix).dead_letter().to_owned(),
            codec,
            produce_timeout: Duration::from_millis(config.produce_timeout_ms),
            max_message_bytes: config.max_message_bytes,
        }
    }

    /// For the CLI: the shared Kafka of `config` (checked to answer) and
    /// its codec (with the schema registry when one is configured).
    pub async fn connect(config: &Config) -> Result<Self> {
        crate::runtime::require_shared_kafka(config, "dlq")?;
        let cluster = KafkaCluster::connect(&config.kafka)
            .await
            .context("connecting to Kafka (kafka.bootstrap_servers)")?;
        let codec = crate::runtime::codec(&config.kafka).await?;
        Ok(Self::new(&cluster, &config.kafka, codec))
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Every dead letter the filter chooses, oldest first per partition,
    /// up to `limit` of them.
    pub async fn list(&self, filter: &Filter, limit: usize) -> Result<Vec<Entry>> {
        let mut found = Vec::new();
        if limit == 0 {
            return Ok(found);
        }
        self.scan(filter, async |entry, _| {
            found.extend(entry);
            Ok(found.len() < limit)
        })
        .await?;
        Ok(found)
    }

    /// The dead letter at `position`.
    pub async fn show(&self, position: Position) -> Result<Entry> {
        let filter = Filter {
            positions: vec![position],
            ..Filter::default()
        };
        self.list(&filter, 1)
            .await?
            .pop()
            .ok_or_else(|| anyhow!("{} has no dead letter at {position}", self.topic))
    }

    /// Sends every dead letter the filter chooses back to its source topic,
    /// with its original key and payload bytes, and waits until the brokers
    /// have each. `progress` hears of every step.
    pub async fn replay(
        &self,
        filter: &Filter,
        options: ReplayOptions,
        mut progress: impl FnMut(ReplayEvent<'_>),
    ) -> Result<ReplayReport> {
        let producer: FutureProducer = self
            .client
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                self.produce_timeout.as_millis().to_string(),
            )
            .set("message.max.bytes", self.max_message_bytes.to_string())
            .create()
            .context("creating the Kafka producer for the replay")?;
        let mut report = ReplayReport::default();
        let mut in_flight = FuturesUnordered::new();
        let scanned = self
            .scan(filter, async |entry, (scanned, total)| {
                progress(ReplayEvent::Scanned { scanned, total });
                let Some(entry) = entry else {
                    return Ok(true);
                };
                report.matched += 1;
                if matches!(entry.payload, Payload::Undecodable(_)) && !options.include_undecodable
                {
                    report.skipped_undecodable += 1;
                    progress(ReplayEvent::Skipped(
                        &entry,
                        "its payload decodes as no known record",
                    ));
                    return Ok(true);
                }
                report.replayed += 1;
                progress(ReplayEvent::Replayed(&entry));
                if options.dry_run {
                    return Ok(true);
                }
                in_flight.push(send_back(&producer, entry, self.produce_timeout));
                if in_flight.len() >= REPLAY_WINDOW
                    && let Some(sent) = in_flight.next().await
                {
                    sent?;
                }
                Ok(true)
            })
            .await;
        // Whatever stopped the scan, wait for what is in flight, so the
        // report and any error say what reached the brokers.
        while let Some(sent) = in_flight.next().await {
            sent?;
        }
        report.scanned = scanned?;
        progress(ReplayEvent::Scanned {
            scanned: report.scanned,
            total: report.scanned,
        });
        Ok(report)
    }

    /// Reads every partition of the dead-letter topic from its low to its
    /// high watermark as of now, handing each record to `each` (the entry
    /// when the filter chooses it, else `None`) with (records read, records
    /// to read), until `each` answers `false`. Returns the number of
    /// records read.
    async fn scan(
        &self,
        filter: &Filter,
        mut each: impl AsyncFnMut(Option<Entry>, (u64, u64)) -> Result<bool>,
    ) -> Result<u64> {
        let consumer: StreamConsumer = self
            .client
            .clone()
            // Assigned partitions, never a group member: reading dead
            // letters must not move any group's offsets.
            .set("group.id", format!("tidings-dlq-{}", Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()
            .context("creating a Kafka consumer for the dead-letter topic")?;
        let metadata = consumer
            .fetch_metadata(Some(&self.topic), METADATA_TIMEOUT)
            .with_context(|| format!("reading the metadata of {}", self.topic))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .filter(|p| {
                filter.positions.is_empty() || filter.positions.iter().any(|q| q.partition == *p)
            })
            .collect();
        if partitions.is_empty() && filter.positions.is_empty() {
            bail!(
                "{} does not exist; `tidings init` creates it (is kafka.topic_prefix `{}` right?)",
                self.topic,
                self.prefix
            );
        }
        // Per partition: where to start and the offset to read up to.
        let mut ranges: HashMap<i32, (i64, i64)> = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for p in partitions {
            let (low, high) =
                tidings_kafka::watermarks(&consumer, &self.topic, p, METADATA_TIMEOUT)
                    .with_context(|| format!("reading the watermarks of {}[{p}]", self.topic))?;
            // `show` needs one record only: start there.
            let start = filter
                .positions
                .iter()
                .filter(|q| q.partition == p)
                .map(|q| q.offset)
                .min()
                .map_or(low, |o| o.max(low));
            if high > start {
                ranges.insert(p, (start, high));
                assignment
                    .add_partition_offset(&self.topic, p, Offset::Offset(start))
                    .context("building the partition assignment")?;
            }
        }
        let total: u64 = ranges.values().map(|(s, h)| (h - s) as u64).sum();
        if ranges.is_empty() {
            return Ok(0);
        }
        consumer
            .assign(&assignment)
            .with_context(|| format!("assigning the partitions of {}", self.topic))?;
        let mut scanned = 0u64;
        let mut last_record = Instant::now();
        while !ranges.is_empty() {
            let wait = STALL_LIMIT.saturating_sub(last_record.elapsed());
            let message = match tokio::time::timeout(wait, consumer.recv()).await {
                Err(_) => bail!(
                    "reading {} stalled: no record for {STALL_LIMIT:?} with {} of {total} read (partitions left: {:?}); running the command again may help",
                    self.topic,
                    scanned,
                    ranges.keys().collect::<Vec<_>>()
                ),
                Ok(Err(e)) => {
                    return Err(e).with_context(|| {
                        format!("reading {}; running the command again may help", self.topic)
                    });
                }
                Ok(Ok(m)) => m.detach(),
            };
            last_record = Instant::now();
            let Some(&(_, high)) = ranges.get(&message.partition()) else {
                continue;
            };
            if message.offset() >= high {
                continue;
            }
            if message.offset() + 1 >= high {
                ranges.remove(&message.partition());
            }
            scanned += 1;
            let entry = Some(self.entry(&message)?).filter(|e| filter.matches(&self.prefix, e));
            if !each(entry, (scanned, total)).await? {
                break;
            }
        }
        Ok(scanned)
    }

    fn entry(&self, message: &OwnedMessage) -> Result<Entry> {
        let position = Position {
            partition: message.partition(),
            offset: message.offset(),
        };
        let letter = self
            .codec
            .decode::<DeadLetter>(message.payload().unwrap_or_default())
            .with_context(|| {
                format!(
                    "{}[{position}] is not a DeadLetter record; is {} the dead-letter topic?",
                    self.topic, self.topic
                )
            })?;
        let payload = Payload::decode(&self.codec, &letter.payload);
        Ok(Entry {
            position,
            letter,
            payload,
        })
    }
}

/// Produces `entry`'s original key and payload to its source topic, marked
/// as a record that may repeat (a stage may have handled part of it before
/// it was dead-lettered: a sender checks its ledgers for it).
async fn send_back(producer: &FutureProducer, entry: Entry, timeout: Duration) -> Result<()> {
    let letter = &entry.letter;
    let mut record = FutureRecord::<[u8], [u8]>::to(&letter.source_topic)
        .payload(&letter.payload)
        .headers(maybe_repeat_headers());
    if let Some(key) = &letter.key {
        record = record.key(key.as_slice());
    }
    producer
        .send(record, Timeout::After(timeout))
        .await
        .map(|_| ())
        .map_err(|(e, _)| {
            anyhow!(
                "sending dead letter {} back to {} failed: {e}; running the replay again is safe (replayed records keep their ids)",
                entry.position,
                letter.source_topic
            )
        })
}

/// Unix milliseconds as RFC 3339 UTC, e.g. `2026-05-01T12:00:00.250Z`.
pub fn format_millis(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || format!("{ms}ms"),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// A point in time for `--since`/`--until`: RFC 3339
/// (`2026-05-01T12:00:00Z`), Unix milliseconds, or a time ago (`90s`,
/// `30m`, `2h`, `7d`).
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64> {
    let text = text.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let last = text.chars().last();
    let unit_ms = match last {
        Some('s') => 1_000,
        Some('m') => 60_000,
        Some('h') => 3_600_000,
        Some('d') => 86_400_000,
        _ => 0,
    };
    let number = &text[..text.len() - last.map_or(0, char::len_utf8)];
    match number.parse::<i64>().ok() {
        Some(n) if unit_ms > 0 && n >= 0 => Ok(now_ms.saturating_sub(n.saturating_mul(unit_ms))),
        _ => bail!(
            "`{text}` is not a time: expected RFC 3339 (2026-05-01T12:00:00Z), Unix milliseconds, or a time ago (90s, 30m, 2h, 7d)"
        ),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `tidings dlq ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first per partition: position, time,
    /// stage, source topic[partition]@offset, notification id, reason.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Print at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line (as `show` prints them).
        #[arg(long)]
        json: bool,
    },
    /// Print one dead letter in full, its payload decoded as JSON.
    Show {
        /// PARTITION:OFFSET on the dead-letter topic, as `list` prints it.
        position: Position,
    },
    /// Send the chosen dead letters back to the topics they came from, with
    /// their original key and payload, once the cause is fixed. Replayed
    /// records keep their ids: dedupe and the sent-ledger keep anything
    /// from going out twice.
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// Only these positions (PARTITION:OFFSET); repeatable.
        #[arg(long = "position")]
        positions: Vec<Position>,
        /// List what would be sent; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also replay payloads that decode as no known record (skipped by
        /// default: they would only be dead-lettered again).
        #[arg(long)]
        include_undecodable: bool,
        /// Replay with no filter at all: every dead letter.
        #[arg(long)]
        all: bool,
    },
}

/// The filters `list` and `replay` share.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Source topic: full name or the part after the prefix (deliver.sms).
    #[arg(long)]
    pub topic: Option<String>,
    /// Dead-lettered at or after: RFC 3339, Unix ms, or ago (30m, 2h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Dead-lettered before: RFC 3339, Unix ms, or ago (30m, 2h, 7d).
    #[arg(long)]
    pub until: Option<String>,
    /// Notification id (post id for feed records) in the payload.
    #[arg(long = "notification", alias = "id")]
    pub id: Option<String>,
    /// The stage that gave up (enricher, sender.sms, feed-writer, ...).
    #[arg(long)]
    pub stage: Option<String>,
}

impl FilterArgs {
    fn filter(&self, positions: Vec<Position>) -> Result<Filter> {
        let now = tidings_kafka::now_millis();
        let time = |t: &Option<String>| t.as_deref().map(|t| parse_time(t, now)).transpose();
        Ok(Filter {
            source_topic: self.topic.clone(),
            since_ms: time(&self.since)?,
            until_ms: time(&self.until)?,
            id: self.id.clone(),
            stage: self.stage.clone(),
            positions,
        })
    }

    fn is_empty(&self) -> bool {
        self.topic.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.id.is_none()
            && self.stage.is_none()
    }
}

/// Runs one `tidings dlq` command against the Kafka of `config`.
pub async fn run(config: &Config, command: DlqCommand) -> Result<()> {
    // Check the arguments before connecting: a typo fails at once.
    let filter = match &command {
        DlqCommand::List { filter, .. } => Some(filter.filter(vec![])?),
        DlqCommand::Replay {
            filter,
            positions,
            all,
            ..
        } => {
            if filter.is_empty() && positions.is_empty() && !all {
                bail!(
                    "`tidings dlq replay` needs a filter (--topic, --since, --until, --notification, --stage or --position), or --all to replay every dead letter"
                );
            }
            Some(filter.filter(positions.clone())?)
        }
        DlqCommand::Show { .. } => None,
    };
    let dead = DeadLetters::connect(config).await?;
    match command {
        DlqCommand::List { limit, json, .. } => {
            let entries = dead.list(&filter.unwrap_or_default(), limit).await?;
            for entry in &entries {
                if json {
                    println!("{}", entry.to_json());
                } else {
                    println!("{}", entry.summary());
                }
            }
            if !json {
                eprintln!(
                    "{} dead letter(s) on {}{}",
                    entries.len(),
                    dead.topic(),
                    if entries.len() == limit {
                        " (--limit reached)"
                    } else {
                        ""
                    }
                );
            }
        }
        DlqCommand::Show { position } => {
            let entry = dead.show(position).await?;
            let text = serde_json::to_string_pretty(&entry.to_json())
                .context("printing the dead letter as JSON")?;
            println!("{text}");
        }
        DlqCommand::Replay {
            dry_run,
            include_undecodable,
            ..
        } => {
            let options = ReplayOptions {
                dry_run,
                include_undecodable,
            };
            let report = replay_with_progress(&dead, &filter.unwrap_or_default(), options).await?;
            println!(
                "{} {} of {} matching dead letter(s) ({} read, {} skipped as undecodable)",
                if dry_run { "would replay" } else { "replayed" },
                report.replayed,
                report.matched,
                report.scanned,
                report.skipped_undecodable
            );
        }
    }
    Ok(())
}

/// A replay with a progress bar on a terminal, and a progress line every
/// 10,000 dead letters read otherwise (logs of a job, say).
async fn replay_with_progress(
    dead: &DeadLetters,
    filter: &Filter,
    options: ReplayOptions,
) -> Result<ReplayReport> {
    let (bar, terminal) = crate::progress::bar(
        0,
        "{bar:40} {pos}/{len} dead letters read, {msg} [{elapsed}, eta {eta}]",
    );
    let mut replayed = 0u64;
    let report = dead
        .replay(filter, options, |event| match event {
            ReplayEvent::Scanned { scanned, total } => {
                bar.set_length(total);
                bar.set_position(scanned);
                if !terminal && scanned % 10_000 == 0 {
                    eprintln!("{scanned}/{total} dead letters read, {replayed} replayed");
                }
            }
            ReplayEvent::Replayed(entry) => {
                replayed += 1;
                bar.set_message(format!("{replayed} replayed"));
                if options.dry_run {
                    bar.suspend(|| println!("would replay {}", entry.summary()));
                }
            }
            ReplayEvent::Skipped(entry, why) => {
                bar.suspend(|| eprintln!("skipped {}: {why}", entry.position));
            }
        })
        .await;
    bar.finish_and_clear();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_bad_ones_say_the_form() {
        let p: Position = "2:17".parse().unwrap();
        assert_eq!(
            p,
            Position {
                partition: 2,
                offset: 17
            }
        );
        assert_eq!(p.to_string(), "2:17");
        for bad in ["", "2", "2:", "x:1", "1:y", "1:2:3"] {
            let err = bad.parse::<Position>().unwrap_err().to_string();
            assert!(err.contains("PARTITION:OFFSET"), "{bad}: {err}");
        }
    }

    #[test]
    fn times_are_rfc3339_millis_or_ago() {
        let now = 1_800_000_000_000;
        assert_eq!(
            parse_time("2026-05-01T12:00:00Z", now).unwrap(),
            1_777_636_800_000
        );
        assert_eq!(parse_time("1700000000000", now).unwrap(), 1_700_000_000_000);
        assert_eq!(parse_time("90s", now).unwrap(), now - 90_000);
        assert_eq!(parse_time("2h", now).unwrap(), now - 7_200_000);
        assert_eq!(parse_time("7d", now).unwrap(), now - 7 * 86_400_000);
        for bad in ["", "h", "-2h", "2w", "yesterday", "ℌ"] {
            assert!(parse_time(bad, now).is_err(), "{bad}");
        }
        assert_eq!(format_millis(1_777_636_800_250), "2026-05-01T12:00:00.250Z");
    }

    fn letter(source_topic: &str, payload: Vec<u8>) -> DeadLetter {
        DeadLetter {
            source_topic: source_topic.into(),
            source_partition: 1,
            source_offset: 42,
            key: Some(b"u-1".to_vec()),
            payload,
            stage: "sender.sms".into(),
            reason: "rejected".into(),
            retriable: false,
            attempts: 1,
            failed_at: 1_000,
        }
    }

    #[test]
    fn payloads_decode_to_their_notification_id_and_filters_match() {
        let codec = AvroCodec::local();
        let request = NotificationRequest {
            notification_id: "n-1".into(),
            event_id: "e".into(),
            app_key: "a".into(),
            user_id: "u-1".into(),
            channels: vec![],
            category: None,
            template: None,
            content: None,
            send_at: None,
            expires_at: None,
            priority: Default::default(),
            collapse_id: None,
            data: Default::default(),
            accepted_at: 0,
        };
        let payload = Payload::decode(&codec, &codec.encode(&request).unwrap());
        assert_eq!(payload.id(), Some("n-1"));
        assert!(matches!(&payload, Payload::Decoded { record, json, .. }
                if *record == "tidings.v1.NotificationRequest" && json["user_id"] == "u-1"));
        let garbage = Payload::decode(&codec, b"not avro at all");
        assert!(matches!(&garbage, Payload::Undecodable(why) if why.contains("magic byte")));

        let entry = Entry {
            position: Position {
                partition: 0,
                offset: 3,
            },
            letter: letter("p.notify.requests", codec.encode(&request).unwrap()),
            payload,
        };
        let yes = |f: Filter| assert!(f.matches("p", &entry), "{f:?}");
        let no = |f: Filter| assert!(!f.matches("p", &entry), "{f:?}");
        yes(Filter::default());
        yes(Filter {
            source_topic: Some("notify.requests".into()),
            ..Filter::default()
        });
        yes(Filter {
            source_topic: Some("p.notify.requests".into()),
            since_ms: Some(1_000),
            until_ms: Some(1_001),
            id: Some("n-1".into()),
            stage: Some("sender.sms".into()),
            positions: vec![entry.position],
        });
        no(Filter {
            source_topic: Some("deliver.sms".into()),
            ..Filter::default()
        });
        no(Filter {
            since_ms: Some(1_001),
            ..Filter::default()
        });
        no(Filter {
            until_ms: Some(1_000),
            ..Filter::default()
        });
        no(Filter {
            id: Some("n-2".into()),
            ..Filter::default()
        });
        no(Filter {
            positions: vec![Position {
                partition: 0,
                offset: 4,
            }],
            ..Filter::default()
        });
        let json = entry.to_json();
        assert_eq!(json["position"], "0:3");
        assert_eq!(json["key"], "u-1");
        assert_eq!(json["payload"]["id"], "n-1");
        assert!(entry.summary().contains("n-1"), "{}", entry.summary());
    }
}
