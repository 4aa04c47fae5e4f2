//! A steady load through the public gRPC API: `Send` at a fixed rate, each
//! with a unique `event_id` and a sequence number in the SMS text. Only
//! acknowledged sends count as accepted; a failed call is not retried (the
//! suite measures what the pipeline does with what it acknowledged).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tidings::client::Client;
use tidings_schemas::proto::v1 as pb;

use crate::provider::text_of;

/// What the load saw, by sequence number.
#[derive(Default)]
pub struct Acks {
    /// Acknowledged: notification id and when the answer came.
    pub accepted: BTreeMap<u64, (String, Instant)>,
    /// Refused or failed calls, by gRPC code (or `timeout`).
    pub refused: HashMap<String, u64>,
    /// Ticks skipped because too many calls were outstanding.
    pub skipped: u64,
}

pub struct Load {
    pub acks: Arc<Mutex<Acks>>,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Calls outstanding at most: a stalled gateway makes the load skip ticks
/// instead of piling up calls.
const OUTSTANDING: usize = 64;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

impl Load {
    pub fn new(first_seq: u64) -> Self {
        Self {
            acks: Arc::default(),
            next: Arc::new(AtomicU64::new(first_seq)),
            stop: Arc::new(AtomicBool::new(true)),
            task: None,
        }
    }

    /// The next sequence number the load will use.
    pub fn next_seq(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }

    /// Sends `rate` notifications per second to `users` in turn until
    /// [`Load::stop`].
    pub fn start(&mut self, client: Arc<Client>, run: String, users: Arc<Vec<String>>, rate: f64) {
        self.stop.store(false, Ordering::SeqCst);
        let (acks, next, stop) = (self.acks.clone(), self.next.clone(), self.stop.clone());
        let permits = Arc::new(tokio::sync::Semaphore::new(OUTSTANDING));
        self.task = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut calls = tokio::task::JoinSet::new();
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                while calls.try_join_next().is_some() {}
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    lock(&acks).skipped += 1;
                    continue;
                };
                let seq = next.fetch_add(1, Ordering::SeqCst);
                let user = users[(seq as usize) % users.len()].clone();
                let request = pb::SendRequest {
                    event_id: format!("chaos-{run}-{seq}"),
                    user_ids: vec![user],
                    channels: vec![pb::Channel::Sms as i32],
                    content: Some(pb::send_request::Content::Raw(pb::RawContent {
                        sms_text: text_of(&run, seq),
                        ..Default::default()
                    })),
                    ..Default::default()
                };
                let (client, acks) = (client.clone(), acks.clone());
                calls.spawn(async move {
                    let _permit = permit;
                    let answer = tokio::time::timeout(CALL_TIMEOUT, client.send(request)).await;
                    let mut acks = lock(&acks);
                    match answer {
                        Ok(Ok(r)) => match r.notification_ids.first() {
                            Some(id) => {
                                acks.accepted.insert(seq, (id.clone(), Instant::now()));
                            }
                            None => *acks.refused.entry("no id".into()).or_default() += 1,
                        },
                        Ok(Err(e)) => {
                            // Client errors read "<Code>: message".
                            let text = e.to_string();
                            let code = text.split(':').next().unwrap_or("error").to_owned();
                            *acks.refused.entry(code).or_default() += 1;
                        }
                        Err(_) => *acks.refused.entry("timeout".into()).or_default() += 1,
                    }
                });
            }
            // Wait for the calls already made: their answers decide what
            // was accepted.
            while calls.join_next().await.is_some() {}
        }));
    }

    /// Stops sending and waits for the outstanding calls.
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(CALL_TIMEOUT * 2, task).await;
        }
    }

    /// Accepted sequence numbers in `range`: notification id and when.
    pub fn accepted_in(&self, range: std::ops::Range<u64>) -> BTreeMap<u64, (String, Instant)> {
        lock(&self.acks)
            .accepted
            .range(range)
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    pub fn take_refused(&self) -> (HashMap<String, u64>, u64) {
        let mut acks = lock(&self.acks);
        let skipped = std::mem::take(&mut acks.skipped);
        (std::mem::take(&mut acks.refused), skipped)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
