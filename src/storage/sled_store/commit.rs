//! Group commit: one thread runs `fsync`s back to back; every writer that arrives while a flush
//! is running is answered by the next one, so durable writes cost a share of an fsync each.
//!
//! Fail-stop: after an I/O error sled's state is suspect (a flush retried once space is back
//! can block forever), so the first failed or stalled flush marks storage failed for good, as
//! does any other I/O error of sled's (`SledStore::watched`: a large value is written during its
//! insert, not by the flush).
//! From then on every write answers `Unavailable` at once, without touching sled, and the
//! failure is announced (`Health::failed`) so that the binary can log it and exit non-zero for
//! its supervisor to restart it; sled's recovery at the next start keeps everything a flush
//! confirmed, which is everything acknowledged.

use std::sync::{mpsc, Arc};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::StoreError;

type Waiter = oneshot::Sender<Result<(), String>>;

/// How long the committer sleeps with no writer before it checks the database on its own, so
/// that an I/O error of sled's background writes is noticed without a writer.
const IDLE_PROBE: Duration = Duration::from_secs(1);

/// Whether storage still works; once failed, failed until the process ends.
pub struct Health {
    failure: watch::Sender<Option<String>>,
}

impl Health {
    fn new() -> Health {
        Health {
            failure: watch::channel(None).0,
        }
    }

    /// Why storage failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Marks storage failed (the first reason wins) and logs it once.
    pub fn fail(&self, reason: String) {
        self.failure.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            log::error!("storage failed, refusing writes from now on: {reason}");
            *current = Some(reason);
            true
        });
    }

    /// Resolves with the reason once storage has failed.
    pub async fn failed(&self) -> String {
        let mut rx = self.failure.subscribe();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The sender lives in `self`, so it cannot be gone while we borrow it.
            Err(_) => std::future::pending().await,
        };
        reason
    }
}

pub struct Committer {
    queue: mpsc::Sender<Waiter>,
    health: Arc<Health>,
    /// Longest a writer waits for its flush; longer counts as a stalled disk.
    timeout: Duration,
}

impl Committer {
    pub fn start(db: sled::Db, timeout: Duration) -> Committer {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let health = Arc::new(Health::new());
        let thread_health = health.clone();
        std::thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || commit_loop(&db, &rx, &thread_health))
            .expect("spawn group-commit thread");
        Committer {
            queue: tx,
            health,
            timeout,
        }
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Fails fast once storage has failed.
    pub fn check(&self) -> Result<(), StoreError> {
        match self.health.failure() {
            Some(reason) => Err(StoreError::Unavailable(reason)),
            None => Ok(()),
        }
    }

    /// Waits until everything written before the call is on disk; a failed or stalled flush is
    /// `Unavailable` (the write may or may not be on disk, and was not acknowledged).
    pub async fn wait(&self) -> Result<(), StoreError> {
        self.wait_within(self.timeout).await
    }

    /// `wait` with another bound: the final flush of a stop gets what is left of the stop's
    /// deadline. A flush that outlasts it fails storage like any stalled flush.
    pub async fn wait_within(&self, timeout: Duration) -> Result<(), StoreError> {
        self.check()?;
        let (tx, rx) = oneshot::channel();
        let stopped = || self.fail("the group-commit thread stopped".into());
        if self.queue.send(tx).is_err() {
            return Err(stopped());
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(reason))) => Err(StoreError::Unavailable(reason)),
            Ok(Err(_)) => Err(stopped()),
            Err(_) => Err(self.fail(format!("a flush to disk did not finish within {timeout:?}"))),
        }
    }

    /// Marks storage failed for `reason` (the first reason wins); the error to return.
    pub fn fail(&self, reason: String) -> StoreError {
        self.health.fail(reason.clone());
        StoreError::Unavailable(reason)
    }
}

/// Ends when the last `SledStore` clone (and so the sender) is dropped.
fn commit_loop(db: &sled::Db, rx: &mpsc::Receiver<Waiter>, health: &Health) {
    loop {
        let first = match rx.recv_timeout(IDLE_PROBE) {
            Ok(first) => first,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if health.failure().is_none() {
                    // A failure is recorded by `flush` itself.
                    let _ = flush(db, health);
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        // Every waiter in `batch` wrote before it queued itself, and the queue was drained
        // before this flush started, so the flush covers all their writes. After a failure no
        // flush runs again: it could block forever.
        let result = match health.failure() {
            Some(reason) => Err(reason),
            None => flush(db, health),
        };
        for waiter in batch {
            let _ = waiter.send(result.clone());
        }
    }
}

fn flush(db: &sled::Db, health: &Health) -> Result<(), String> {
    db.flush().map(|_| ()).map_err(|e| {
        let reason = format!("flush to disk failed: {e}");
        health.fail(reason.clone());
        reason
    })
}
