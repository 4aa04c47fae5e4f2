//! Group commit for the senders' per-delivery writes: many concurrent
//! deliveries each need one small write done before they go on (the intent
//! mark before the provider call, the sent mark after it), and one store
//! call per delivery would multiply the sender's store load. A
//! [`GroupCommit`] collects what is submitted within a few milliseconds (or
//! up to a group size) and writes it in one call; every caller waits for the
//! call that carried its item.
//!
//! The queue is bounded: when the store is slower than the submissions,
//! `submit` waits for room instead of growing memory.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use tidings_store::StoreError;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::debug;

/// How items are grouped.
#[derive(Debug, Clone, Copy)]
pub struct GroupOptions {
    /// How long the first item of a group waits for others.
    pub window: Duration,
    /// The most items one write carries.
    pub max_group: usize,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self {
            window: Duration::from_millis(3),
            max_group: 256,
        }
    }
}

/// Group writes running at once.
const WRITES_IN_FLIGHT: usize = 4;

/// Why a group's write failed; shared by every item of the group.
pub type GroupError = Arc<StoreError>;

/// Writes one group; the writer's task calls it once per group.
pub type WriteGroup<T> =
    Box<dyn Fn(Vec<T>) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>> + Send>;

struct Pending<T> {
    item: T,
    done: oneshot::Sender<Result<(), GroupError>>,
}

/// Writes items in groups, from a task of its own.
pub struct GroupCommit<T> {
    /// For errors and logs, e.g. `sender.sent`.
    what: &'static str,
    queue: mpsc::Sender<Pending<T>>,
}

impl<T: Send + 'static> GroupCommit<T> {
    /// Starts the writer's task on the current Tokio runtime; it ends when
    /// the `GroupCommit` is dropped.
    pub fn start(what: &'static str, options: GroupOptions, write: WriteGroup<T>) -> Self {
        let max_group = options.max_group.max(1);
        let (queue, rx) = mpsc::channel(max_group * 4);
        tokio::spawn(write_groups(what, options.window, max_group, write, rx));
        Self { what, queue }
    }

    /// Submits `item` and returns once the write that carried it is done.
    pub async fn submit(&self, item: T) -> Result<(), GroupError> {
        self.enqueue(item).await?.written().await
    }

    /// Queues `item` (waiting only for room in the queue) and returns a
    /// [`Written`] to wait on later: for a write the caller must see done
    /// before some later point (the end of its batch), not before it can go
    /// on.
    pub async fn enqueue(&self, item: T) -> Result<Written, GroupError> {
        let (done, result) = oneshot::channel();
        self.queue
            .send(Pending { item, done })
            .await
            .map_err(|_| writer_gone(self.what))?;
        Ok(Written {
            what: self.what,
            result,
        })
    }
}

/// An item queued by [`GroupCommit::enqueue`]: resolves once the write that
/// carried it is done.
pub struct Written {
    what: &'static str,
    result: oneshot::Receiver<Result<(), GroupError>>,
}

impl Written {
    pub async fn written(self) -> Result<(), GroupError> {
        self.result.await.map_err(|_| writer_gone(self.what))?
    }
}

fn writer_gone(what: &'static str) -> GroupError {
    Arc::new(StoreError::Backend {
        op: "group commit",
        key: what.into(),
        retriable: true,
        source: "the group writer has stopped".into(),
    })
}

async fn write_groups<T: Send + 'static>(
    what: &'static str,
    window: Duration,
    max_group: usize,
    write: WriteGroup<T>,
    mut rx: mpsc::Receiver<Pending<T>>,
) {
    // Groups are collected while earlier ones are written: a slow write
    // (the store busy with other stages' calls) no longer holds everything
    // queued behind it. The marks are sets, so their order does not matter.
    let writing = Arc::new(Semaphore::new(WRITES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        let deadline = tokio::time::Instant::now() + window;
        while group.len() < max_group {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => group.push(p),
                Ok(None) | Err(_) => break,
            }
        }
        let Ok(permit) = writing.clone().acquire_owned().await else {
            return;
        };
        let (items, waiters): (Vec<T>, Vec<_>) =
            group.into_iter().map(|p| (p.item, p.done)).unzip();
        let size = items.len();
        let written = write(items);
        tokio::spawn(async move {
            let result = written.await.map_err(Arc::new);
            drop(permit);
            debug!(what, size, ok = result.is_ok(), "group written");
            for done in waiters {
                // A caller that stopped waiting needs no answer.
                let _ = done.send(result.clone());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    };

    use super::*;

    /// Records each write; fails every write while `failing` is set.
    #[derive(Default)]
    struct Recorder {
        writes: Mutex<Vec<Vec<u32>>>,
        failing: AtomicBool,
    }

    fn writer(rec: &Arc<Recorder>, window_ms: u64, max_group: usize) -> Arc<GroupCommit<u32>> {
        let rec = rec.clone();
        Arc::new(GroupCommit::start(
            "test",
            GroupOptions {
                window: Duration::from_millis(window_ms),
                max_group,
            },
            Box::new(move |items| {
                let rec = rec.clone();
                Box::pin(async move {
                    rec.writes.lock().unwrap().push(items);
                    if rec.failing.load(Ordering::SeqCst) {
                        return Err(StoreError::Backend {
                            op: "write",
                            key: "test".into(),
                            retriable: true,
                            source: "store down".into(),
                        });
                    }
                    Ok(())
                })
            }),
        ))
    }

    async fn submit_all(w: &Arc<GroupCommit<u32>>, n: u32) -> Vec<Result<(), GroupError>> {
        let submits = (0..n).map(|i| {
            let w = w.clone();
            tokio::spawn(async move { w.submit(i).await })
        });
        futures::future::join_all(submits)
            .await
            .into_iter()
            .map(|r| r.expect("submit task"))
            .collect()
    }

    #[tokio::test]
    async fn concurrent_items_share_writes_and_each_is_written_once() {
        let rec = Arc::new(Recorder::default());
        let w = writer(&rec, 20, 1_000);
        assert!(submit_all(&w, 100).await.iter().all(Result::is_ok));
        let writes = rec.writes.lock().unwrap().clone();
        // 100 items submitted at once fit in a 20 ms window: a few writes,
        // never one per item.
        assert!(writes.len() <= 5, "{} writes for 100 items", writes.len());
        let mut all = writes.concat();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_group_never_exceeds_its_size() {
        let rec = Arc::new(Recorder::default());
        let w = writer(&rec, 50, 8);
        assert!(submit_all(&w, 40).await.iter().all(Result::is_ok));
        let writes = rec.writes.lock().unwrap().clone();
        assert!(writes.iter().all(|g| g.len() <= 8), "{writes:?}");
        assert_eq!(writes.concat().len(), 40);
    }

    #[tokio::test]
    async fn a_lone_item_waits_only_for_the_window() {
        let rec = Arc::new(Recorder::default());
        let w = writer(&rec, 5, 256);
        let started = tokio::time::Instant::now();
        w.submit(7).await.expect("written");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(*rec.writes.lock().unwrap(), vec![vec![7]]);
    }

    #[tokio::test]
    async fn a_failed_write_fails_its_whole_group_and_the_next_group_recovers() {
        let rec = Arc::new(Recorder::default());
        rec.failing.store(true, Ordering::SeqCst);
        let w = writer(&rec, 20, 1_000);
        let results = submit_all(&w, 10).await;
        assert!(
            results
                .iter()
                .all(|r| r.as_ref().is_err_and(|e| e.is_retriable())),
            "{results:?}"
        );
        rec.failing.store(false, Ordering::SeqCst);
        assert!(w.submit(99).await.is_ok());
    }
}
