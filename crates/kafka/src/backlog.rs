//! What the embedded cluster holds that no one has read yet, so that it
//! never forgets it.
//!
//! librdkafka's mock broker keeps at most [`MOCK_PARTITION_BYTES`] and
//! [`MOCK_PARTITION_SETS`] message sets per partition and drops the oldest
//! beyond, read or not (`rdkafka_mock.c`; no setting changes it). A stage
//! that falls that far behind would find its next records gone: librdkafka
//! resets it to the new start and the records in between are lost without
//! an error (a 1,000,000-notification burst on `tidings bench` lost 40% of
//! them in the iOS sender's topic). So on the embedded cluster every
//! record produced and every record a stage takes is counted here per
//! partition, and what writes waits for room instead: a stage before
//! handing over a batch's outputs, the gateway before accepting a send.
//! The backlog of a partition is what was produced less what its slowest
//! consumer group took; a topic no stage reads (the dead letters) has none
//! and never waits, and is kept as far as the mock keeps it.
//!
//! Real brokers keep records by time (`retention.ms`), so there is nothing
//! to count: a [`KafkaCluster`](crate::KafkaCluster) of real brokers has no
//! `Backlog`.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bytes of message sets the mock broker keeps per partition.
pub const MOCK_PARTITION_BYTES: u64 = 5 << 20;
/// Message sets the mock broker keeps per partition (a set holds one
/// record or more).
pub const MOCK_PARTITION_SETS: u64 = 100_000;
/// Bytes counted per record beyond its key and value: the record's and its
/// set's framing and headers, so the count stays above what the mock
/// stores (LZ4 only shrinks it).
pub const RECORD_FRAMING_BYTES: u64 = 96;

/// How often a writer waiting for room looks again.
const LOOK_AGAIN: Duration = Duration::from_millis(10);

/// How much unread data a partition may hold before writers wait: a fifth
/// of what the mock keeps. Writers that never wait (the retry relays,
/// which must not wait on the channel topics their senders fill, or the
/// two would wait on each other) add at most their own topics' backlog on
/// top, three tiers of it, and a batch handed over after the look adds
/// one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marks {
    pub bytes: u64,
    pub records: u64,
}

impl Default for Marks {
    fn default() -> Self {
        Self {
            bytes: MOCK_PARTITION_BYTES / 5,
            records: MOCK_PARTITION_SETS / 5,
        }
    }
}

/// Bytes and records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub bytes: u64,
    pub records: u64,
}

impl Tally {
    fn add(&mut self, bytes: u64) {
        self.bytes += bytes;
        self.records += 1;
    }

    fn less(self, other: Tally) -> Tally {
        Tally {
            bytes: self.bytes.saturating_sub(other.bytes),
            records: self.records.saturating_sub(other.records),
        }
    }
}

/// The bytes a record of this key and value is counted as.
pub fn record_bytes(key: usize, value: usize) -> u64 {
    (key + value) as u64 + RECORD_FRAMING_BYTES
}

#[derive(Default)]
struct TopicLog {
    /// Produced, per partition.
    produced: Vec<Tally>,
    /// Taken by each consumer group reading the topic, per partition.
    taken: HashMap<String, Vec<Tally>>,
    gate: Arc<Gate>,
}

fn at(tallies: &mut Vec<Tally>, partition: i32) -> &mut Tally {
    let p = usize::try_from(partition).unwrap_or_default();
    if tallies.len() <= p {
        tallies.resize(p + 1, Tally::default());
    }
    &mut tallies[p]
}

impl TopicLog {
    /// The partition holding the most unread bytes, and what it holds.
    /// None while no group reads the topic.
    fn fullest(&self) -> Option<(i32, Tally)> {
        if self.taken.is_empty() {
            return None;
        }
        let mut fullest = (0, Tally::default());
        for (p, produced) in self.produced.iter().enumerate() {
            let slowest = self
                .taken
                .values()
                .map(|taken| taken.get(p).copied().unwrap_or_default())
                .min_by_key(|t| t.bytes)
                .unwrap_or_default();
            let unread = produced.less(slowest);
            if unread.bytes > fullest.1.bytes || unread.records > fullest.1.records {
                fullest = (p as i32, unread);
            }
        }
        Some(fullest)
    }
}

/// Per partition of every topic on the embedded cluster: what was produced
/// and what each consumer group took. Bounded by the topics and groups the
/// process itself creates.
#[derive(Default)]
pub struct Backlog {
    topics: Mutex<HashMap<String, TopicLog>>,
    marks: Marks,
}

/// A writer waiting for room was stopped before there was any.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoRoom {
    #[error(
        "the embedded Kafka's topic {topic} holds {bytes} unread bytes in {records} records on partition {partition}, at most {mark_bytes} bytes or {mark_records} records may wait (its readers are behind)"
    )]
    Full {
        topic: String,
        partition: i32,
        bytes: u64,
        records: u64,
        mark_bytes: u64,
        mark_records: u64,
    },
    #[error("stopped while waiting for room")]
    Stopped,
}

impl Backlog {
    pub fn new(marks: Marks) -> Self {
        Self {
            topics: Mutex::default(),
            marks,
        }
    }

    pub fn marks(&self) -> Marks {
        self.marks
    }

    fn topics(&self) -> std::sync::MutexGuard<'_, HashMap<String, TopicLog>> {
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Consumer group `group` reads `topics` from now on (from their start:
    /// the embedded cluster begins empty with the process).
    pub fn register(&self, group: &str, topics: &[String]) {
        let mut logs = self.topics();
        for topic in topics {
            logs.entry(topic.clone())
                .or_default()
                .taken
                .entry(group.to_owned())
                .or_default();
        }
    }

    /// The brokers acknowledged a record of `bytes` ([`record_bytes`]).
    pub fn produced(&self, topic: &str, partition: i32, bytes: u64) {
        let mut logs = self.topics();
        let log = match logs.get_mut(topic) {
            Some(log) => log,
            None => logs.entry(topic.to_owned()).or_default(),
        };
        at(&mut log.produced, partition).add(bytes);
    }

    /// Consumer group `group` took a record of `bytes` from librdkafka.
    pub fn taken(&self, group: &str, topic: &str, partition: i32, bytes: u64) {
        let mut logs = self.topics();
        if let Some(taken) = logs.get_mut(topic).and_then(|log| log.taken.get_mut(group)) {
            at(taken, partition).add(bytes);
        }
    }

    /// The partition of `topic` holding the most unread data, and what it
    /// holds; None if no group reads `topic`.
    pub fn fullest(&self, topic: &str) -> Option<(i32, Tally)> {
        self.topics().get(topic)?.fullest()
    }

    /// Whether `adding` more bytes to `topic` keeps every partition under
    /// the marks; else why not. An empty partition always has room, so a
    /// write larger than the marks goes through alone.
    pub fn check(&self, topic: &str, adding: u64) -> Result<(), NoRoom> {
        let Some((partition, unread)) = self.fullest(topic) else {
            return Ok(());
        };
        if unread.records == 0
            || (unread.bytes + adding <= self.marks.bytes && unread.records < self.marks.records)
        {
            return Ok(());
        }
        Err(NoRoom::Full {
            topic: topic.to_owned(),
            partition,
            bytes: unread.bytes,
            records: unread.records,
            mark_bytes: self.marks.bytes,
            mark_records: self.marks.records,
        })
    }

    /// Waits until `topic` has room for `adding` bytes ([`Self::check`]),
    /// at most until `deadline` if given, and no longer than `stop`. A
    /// writer that finds no room hands the refusal to `waiting` (to log and
    /// count it) before it waits; one that finds others waiting queues
    /// behind them without a look. Writers waiting on one topic take turns, first come first
    /// served, and only the first looks again every [`LOOK_AGAIN`]: a
    /// gateway call of 500 items waits as one writer, not 500 polling.
    pub async fn room(
        &self,
        topic: &str,
        adding: u64,
        deadline: Option<Instant>,
        stop: &CancellationToken,
        mut waiting: impl FnMut(&NoRoom),
    ) -> Result<(), NoRoom> {
        let gate = self.gate(topic);
        // Nobody queued: a look, and on if there is room.
        if gate.queued.load(Ordering::Acquire) == 0 {
            match self.check(topic, adding) {
                Ok(()) => return Ok(()),
                Err(full) if deadline.is_some_and(|d| Instant::now() >= d) => return Err(full),
                Err(full) => waiting(&full),
            }
        }
        gate.queued.fetch_add(1, Ordering::AcqRel);
        let queued = Queued(&gate.queued);
        let until = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(until);
        let turn = tokio::select! {
            turn = gate.turn.lock() => turn,
            _ = stop.cancelled() => return Err(NoRoom::Stopped),
            _ = &mut until => return self.check(topic, adding),
        };
        loop {
            let full = match self.check(topic, adding) {
                Ok(()) => {
                    drop(queued);
                    drop(turn);
                    return Ok(());
                }
                Err(full) => full,
            };
            tokio::select! {
                _ = stop.cancelled() => return Err(NoRoom::Stopped),
                _ = &mut until => return Err(full),
                _ = tokio::time::sleep(LOOK_AGAIN) => {}
            }
        }
    }

    /// The queue of writers waiting for room in `topic`.
    fn gate(&self, topic: &str) -> Arc<Gate> {
        let mut logs = self.topics();
        let log = match logs.get_mut(topic) {
            Some(log) => log,
            None => logs.entry(topic.to_owned()).or_default(),
        };
        log.gate.clone()
    }
}

/// Writers waiting for room in one topic: how many, and whose turn it is
/// to look.
#[derive(Default)]
struct Gate {
    queued: AtomicUsize,
    turn: tokio::sync::Mutex<()>,
}

/// One writer counted in [`Gate::queued`] until dropped.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Backlog {
        Backlog::new(Marks {
            bytes: 1000,
            records: 10,
        })
    }

    #[test]
    fn a_topic_no_group_reads_always_has_room() {
        let b = small();
        for _ in 0..100 {
            b.produced("dead", 0, 500);
        }
        assert_eq!(b.fullest("dead"), None);
        assert_eq!(b.check("dead", 10_000), Ok(()));
        assert_eq!(b.check("never-seen", 10_000), Ok(()));
    }

    #[test]
    fn the_slowest_group_and_the_fullest_partition_decide() {
        let b = small();
        b.register("fast", &["t".into()]);
        b.register("slow", &["t".into()]);
        for _ in 0..4 {
            b.produced("t", 1, 200);
            b.taken("fast", "t", 1, 200);
        }
        b.produced("t", 0, 100);
        b.taken("slow", "t", 1, 200);
        // Partition 1: 800 produced, the slow group took 200.
        assert_eq!(
            b.fullest("t"),
            Some((
                1,
                Tally {
                    bytes: 600,
                    records: 3
                }
            ))
        );
        assert_eq!(b.check("t", 400), Ok(()));
        let Err(NoRoom::Full {
            partition, bytes, ..
        }) = b.check("t", 401)
        else {
            panic!("over the byte mark");
        };
        assert_eq!((partition, bytes), (1, 600));
        // The slow group catches up: room again.
        for _ in 0..3 {
            b.taken("slow", "t", 1, 200);
        }
        assert_eq!(b.check("t", 900), Ok(()));
    }

    #[test]
    fn the_record_mark_holds_small_records_back_and_an_empty_partition_takes_anything() {
        let b = small();
        b.register("g", &["t".into()]);
        assert_eq!(
            b.check("t", 1_000_000),
            Ok(()),
            "empty: a large write goes alone"
        );
        for _ in 0..10 {
            b.produced("t", 2, 1);
        }
        assert!(matches!(
            b.check("t", 0),
            Err(NoRoom::Full { records: 10, .. })
        ));
        b.taken("g", "t", 2, 1);
        assert_eq!(b.check("t", 0), Ok(()));
    }

    #[tokio::test]
    async fn a_writer_waits_until_the_readers_catch_up_or_its_deadline() {
        let b = std::sync::Arc::new(small());
        b.register("g", &["t".into()]);
        for _ in 0..10 {
            b.produced("t", 0, 100);
        }
        let stop = CancellationToken::new();
        let mut refused = 0;
        let deadline = Some(Instant::now());
        assert!(matches!(
            b.room("t", 0, deadline, &stop, |_| refused += 1).await,
            Err(NoRoom::Full { .. })
        ));
        assert_eq!(
            refused, 0,
            "a deadline already past refuses without waiting"
        );

        let reader = {
            let b = b.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                b.taken("g", "t", 0, 100);
            })
        };
        b.room("t", 0, None, &stop, |_| refused += 1)
            .await
            .expect("room once a record is taken");
        assert_eq!(refused, 1);
        reader.await.unwrap();

        for _ in 0..5 {
            b.produced("t", 0, 100);
        }
        stop.cancel();
        assert_eq!(
            b.room("t", 0, None, &stop, |_| {}).await,
            Err(NoRoom::Stopped)
        );
    }

    #[tokio::test]
    async fn writers_queued_on_a_full_topic_all_go_on_once_there_is_room() {
        let b = std::sync::Arc::new(small());
        b.register("g", &["t".into()]);
        for _ in 0..10 {
            b.produced("t", 0, 10);
        }
        let refusals = std::sync::Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..50)
            .map(|_| {
                let (b, refusals) = (b.clone(), refusals.clone());
                tokio::spawn(async move {
                    b.room("t", 0, None, &CancellationToken::new(), |_| {
                        refusals.fetch_add(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        while b.gate("t").queued.load(Ordering::SeqCst) < 50 {
            tokio::task::yield_now().await;
        }
        assert!(writers.iter().all(|w| !w.is_finished()));
        b.taken("g", "t", 0, 10);
        for w in writers {
            assert_eq!(w.await.unwrap(), Ok(()));
        }
        assert_eq!(b.gate("t").queued.load(Ordering::SeqCst), 0);
        assert!((1..=50).contains(&refusals.load(Ordering::SeqCst)));
    }
}
