//! Producing Avro records durably: acks=all with the idempotent producer, and
//! a send that returns only once the brokers have the record. Records are
//! bounded by `kafka.max_message_bytes`, the producer's `message.max.bytes`
//! and the `max.message.bytes` of the topics `tidings init` creates.
//!
//! A stage hands a whole batch's outputs over at once and needs to know
//! when all of them are acknowledged and which failed, not each record's
//! offset; so a batch shares one counter of records still awaited
//! ([`Acks`]), and librdkafka's delivery reports count it down and wake the
//! batch's task once, at the last. rdkafka's `FutureProducer` gives every
//! record a channel and a future of its own instead, which cost a
//! measurable share of the pipeline's CPU (docs/benchmarks.md, session 20);
//! a single send still gets its own channel ([`Awaiting::One`]).

use std::{
    future::poll_fn,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::Poll,
    time::{Duration, Instant},
};

use futures::task::AtomicWaker;
use rdkafka::{
    ClientContext, Message,
    error::{KafkaError as RdKafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer},
};
use tidings_config::KafkaConfig;
use tidings_schemas::{AvroCodec, AvroRecord, Label};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::{
    KafkaCluster, KafkaError,
    backlog::{Backlog, Marks, NoRoom, record_bytes},
    handling::{Handling, maybe_repeat_headers},
};

/// How long a send waits before trying again when librdkafka's local queue
/// (`queue.buffering.max.messages`) is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(10);

/// Bytes of `kafka.max_message_bytes` kept for what Kafka adds around a
/// record's key and value (record, batch and request headers), so that a
/// record under [`AvroProducer::max_record_bytes`] fits whatever librdkafka
/// and the broker count.
pub const RECORD_OVERHEAD_BYTES: usize = 512;

/// One encoded record, ready to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    /// [`Handling::MaybeRepeat`] goes out as the [`MAYBE_REPEAT_HEADER`].
    pub handling: Handling,
    /// The record's own [`Label`] ([`AvroRecord::label`]), a header too.
    pub label: Option<Label>,
}

impl OutRecord {
    /// Key and value bytes, what [`AvroProducer::max_record_bytes`] bounds.
    pub fn size(&self) -> usize {
        self.key.len() + self.payload.len()
    }
}

/// Where a produced record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// A producer of Avro records in the Confluent wire format. Cheap to clone.
#[derive(Clone)]
pub struct AvroProducer {
    producer: Arc<ThreadedProducer<DeliveryReports>>,
    /// On the embedded cluster, what its brokers hold unread.
    backlog: Option<Arc<Backlog>>,
    codec: AvroCodec,
    timeout: Duration,
    max_message_bytes: usize,
}

impl AvroProducer {
    pub fn new(
        cluster: &KafkaCluster,
        config: &KafkaConfig,
        codec: AvroCodec,
    ) -> Result<Self, KafkaError> {
        let mut c = cluster.client_config(config);
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "1000000")
            .set("message.timeout.ms", config.produce_timeout_ms.to_string())
            .set("message.max.bytes", config.max_message_bytes.to_string());
        let backlog = cluster.backlog();
        let producer = c
            .create_with_context(DeliveryReports {
                backlog: backlog.clone(),
            })
            .map_err(|e| KafkaError::client("producer", e))?;
        Ok(Self {
            producer: Arc::new(producer),
            backlog,
            codec,
            timeout: Duration::from_millis(config.produce_timeout_ms),
            max_message_bytes: config.max_message_bytes,
        })
    }

    /// The largest key plus value this producer sends: `kafka.max_message_bytes`
    /// less [`RECORD_OVERHEAD_BYTES`]. A larger record can never be produced,
    /// however often it is retried.
    pub fn max_record_bytes(&self) -> usize {
        self.max_message_bytes.saturating_sub(RECORD_OVERHEAD_BYTES)
    }

    pub fn codec(&self) -> &AvroCodec {
        &self.codec
    }

    /// Waits, on the embedded cluster, until `topic` has room for `adding`
    /// more bytes (see [`crate::backlog`]); at once on real brokers. At most
    /// until `deadline` if given, no longer than `stop`; `waiting` hears
    /// the first refusal.
    pub async fn room_for(
        &self,
        topic: &str,
        adding: u64,
        deadline: Option<tokio::time::Instant>,
        stop: &CancellationToken,
        waiting: impl FnMut(&NoRoom),
    ) -> Result<(), NoRoom> {
        match &self.backlog {
            Some(backlog) => backlog.room(topic, adding, deadline, stop, waiting).await,
            None => Ok(()),
        }
    }

    /// Whether writes wait for room: only on the embedded cluster.
    pub fn counts_backlog(&self) -> bool {
        self.backlog.is_some()
    }

    /// How much may wait unread per partition before writers wait, on the
    /// embedded cluster.
    pub fn backlog_marks(&self) -> Option<Marks> {
        self.backlog.as_ref().map(|b| b.marks())
    }

    /// How long a produce may take (`kafka.produce_timeout_ms`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Encodes a record for `topic`.
    pub fn encode<T: AvroRecord>(
        &self,
        topic: &str,
        key: &str,
        record: &T,
    ) -> Result<OutRecord, KafkaError> {
        let payload = self
            .codec
            .encode(record)
            .map_err(|source| KafkaError::Encode {
                topic: topic.to_owned(),
                source,
            })?;
        Ok(OutRecord {
            topic: topic.to_owned(),
            key: key.to_owned(),
            payload,
            handling: Handling::First,
            label: record.label(),
        })
    }

    /// Produces one record and waits until every in-sync replica has it.
    pub async fn send<T: AvroRecord>(
        &self,
        topic: &str,
        key: &str,
        record: &T,
    ) -> Result<Delivered, KafkaError> {
        let out = self.encode(topic, key, record)?;
        self.send_raw(&out).await
    }

    /// Produces already-encoded records and waits until the brokers have
    /// them all; the first failure, if any. Records with the same key keep
    /// their order (idempotent producer).
    pub async fn send_all(&self, records: &[OutRecord]) -> Result<(), KafkaError> {
        let handover = self.enqueue_all(records);
        self.acknowledged(handover, records)
            .await
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    /// Hands `records` to the producer now, in order, as far as its local
    /// queue has room; [`Self::acknowledged`] hands over the rest and waits
    /// for them all. Records enqueued one after another keep their order,
    /// so a caller can enqueue a batch's outputs and go on to the next
    /// batch while the brokers acknowledge them.
    pub fn enqueue_all(&self, records: &[OutRecord]) -> Handover {
        let acks = Arc::new(Acks::new(records.len()));
        let handed = self.hand_over(records, 0, &acks);
        Handover { acks, handed }
    }

    /// Each record's outcome, in order, once the brokers acknowledged or
    /// refused every one of `records`, the same records given to
    /// [`Self::enqueue_all`] for `handover`. What did not fit the local
    /// queue then is handed over as room frees, for at most the produce
    /// timeout.
    pub async fn acknowledged(
        &self,
        handover: Handover,
        records: &[OutRecord],
    ) -> Vec<Result<(), KafkaError>> {
        let Handover { acks, mut handed } = handover;
        let started = Instant::now();
        while handed < records.len() {
            if started.elapsed() >= self.timeout {
                // Never handed over: failed here, as librdkafka fails a
                // record at its message timeout.
                for i in handed..records.len() {
                    acks.fail(
                        i,
                        RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                    );
                }
                break;
            }
            tokio::time::sleep(QUEUE_FULL_WAIT).await;
            handed = self.hand_over(records, handed, &acks);
        }
        poll_fn(|cx| acks.poll_done(cx)).await;
        acks.outcomes(records)
    }

    /// Hands `records[from..]` over until the local queue is full; returns
    /// how far it got. A record refused for another reason is failed in
    /// `acks` at once.
    fn hand_over(&self, records: &[OutRecord], from: usize, acks: &Arc<Acks>) -> usize {
        for (i, record) in records.iter().enumerate().skip(from) {
            let awaiting = Box::new(Awaiting::InBatch(Arc::clone(acks), i));
            match self.producer.send(base_record(record, awaiting)) {
                Ok(()) => {}
                Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return i;
                }
                Err((e, _)) => acks.fail(i, e),
            }
        }
        records.len()
    }

    /// Produces one record and waits until every in-sync replica has it;
    /// where it landed.
    pub async fn send_raw(&self, record: &OutRecord) -> Result<Delivered, KafkaError> {
        let started = Instant::now();
        loop {
            let (tx, rx) = oneshot::channel();
            match self
                .producer
                .send(base_record(record, Box::new(Awaiting::One(tx))))
            {
                Ok(()) => {
                    return match rx.await {
                        Ok(result) => result,
                        // Reports are sent before the producer goes away.
                        Err(_) => Err(RdKafkaError::Canceled),
                    }
                    .map_err(|source| produce_error(&record.topic, source));
                }
                Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if started.elapsed() < self.timeout =>
                {
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                }
                Err((e, _)) => return Err(produce_error(&record.topic, e)),
            }
        }
    }

    /// The end (high watermark) of `topic`'s `partition` now: the offset
    /// its next record will get. Asks the partition's leader, on a blocking
    /// thread.
    pub async fn end_offset(&self, topic: &str, partition: i32) -> Result<i64, KafkaError> {
        let producer = self.producer.clone();
        let topic = topic.to_owned();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_watermarks(&topic, partition, timeout)
                .map(|(_, end)| end)
        })
        .await
        // Only a panic in librdkafka's call ends the thread early.
        .map_err(|_| KafkaError::Consume(RdKafkaError::Canceled))?
        .map_err(KafkaError::Consume)
    }

    /// Waits for in-flight records, e.g. before shutdown.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

/// `record` as librdkafka takes it, with a header if it may repeat and one
/// for its label.
fn base_record<'a>(
    record: &'a OutRecord,
    awaiting: Box<Awaiting>,
) -> BaseRecord<'a, String, [u8], Box<Awaiting>> {
    let base = BaseRecord::with_opaque_to(&record.topic, awaiting)
        .key(&record.key)
        .payload(record.payload.as_slice());
    let marked = match record.handling {
        Handling::First => None,
        Handling::MaybeRepeat => Some(maybe_repeat_headers()),
    };
    let headers: Option<OwnedHeaders> = match record.label {
        Some((key, value)) => Some(marked.unwrap_or_default().insert(Header {
            key,
            value: Some(value),
        })),
        None => marked,
    };
    match headers {
        Some(headers) => base.headers(headers),
        None => base,
    }
}

fn produce_error(topic: &str, source: RdKafkaError) -> KafkaError {
    KafkaError::Produce {
        topic: topic.to_owned(),
        source,
    }
}

/// A batch handed to the producer by [`AvroProducer::enqueue_all`]: how
/// far it got, and the count its delivery reports go to.
#[must_use = "a batch's records are awaited with AvroProducer::acknowledged"]
pub struct Handover {
    acks: Arc<Acks>,
    handed: usize,
}

/// Who awaits a record's delivery report.
enum Awaiting {
    /// A single send, alone.
    One(oneshot::Sender<Result<Delivered, RdKafkaError>>),
    /// The record at this index of a batch handed over together.
    InBatch(Arc<Acks>, usize),
}

/// The records of one batch still awaited, the failures so far, and the
/// task to wake when none is left.
struct Acks {
    remaining: AtomicUsize,
    failed: Mutex<Vec<(usize, RdKafkaError)>>,
    waker: AtomicWaker,
}

impl Acks {
    fn new(records: usize) -> Self {
        Self {
            remaining: AtomicUsize::new(records),
            failed: Mutex::new(Vec::new()),
            waker: AtomicWaker::new(),
        }
    }

    fn done(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.waker.wake();
        }
    }

    fn fail(&self, index: usize, error: RdKafkaError) {
        self.failed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((index, error));
        self.done();
    }

    fn poll_done(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.remaining.load(Ordering::Acquire) == 0 {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.remaining.load(Ordering::Acquire) == 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Each record's outcome, in order, once none is awaited.
    fn outcomes(&self, records: &[OutRecord]) -> Vec<Result<(), KafkaError>> {
        let mut outcomes: Vec<Result<(), KafkaError>> = records.iter().map(|_| Ok(())).collect();
        let failed = std::mem::take(
            &mut *self
                .failed
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for (i, source) in failed {
            outcomes[i] = Err(produce_error(&records[i].topic, source));
        }
        outcomes
    }
}

/// The producer's context: routes each delivery report to whoever awaits
/// it, and counts what the embedded brokers now hold. Runs on the
/// producer's polling thread.
struct DeliveryReports {
    backlog: Option<Arc<Backlog>>,
}

impl ClientContext for DeliveryReports {}

impl ProducerContext for DeliveryReports {
    type DeliveryOpaque = Box<Awaiting>;

    fn delivery(&self, result: &DeliveryResult<'_>, awaiting: Box<Awaiting>) {
        if let (Some(backlog), Ok(m)) = (&self.backlog, result) {
            backlog.produced(
                m.topic(),
                m.partition(),
                record_bytes(m.key_len(), m.payload_len()),
            );
        }
        match *awaiting {
            Awaiting::One(tx) => {
                let _ = tx.send(match result {
                    Ok(m) => Ok(Delivered {
                        partition: m.partition(),
                        offset: m.offset(),
                    }),
                    Err((e, _)) => Err(e.clone()),
                });
            }
            Awaiting::InBatch(acks, i) => match result {
                Ok(_) => acks.done(),
                Err((e, _)) => acks.fail(i, e.clone()),
            },
        }
    }
}
