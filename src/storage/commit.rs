//! Group commit: one thread runs `fsync`s back to back; every writer that arrives while a flush
//! is running is answered by the next one, so durable writes cost a share of an fsync each.

use std::sync::mpsc;

use tokio::sync::oneshot;

use super::StoreError;

type Waiter = oneshot::Sender<Result<(), String>>;

pub struct Committer {
    queue: mpsc::Sender<Waiter>,
}

impl Committer {
    pub fn start(db: sled::Db) -> Committer {
        let (tx, rx) = mpsc::channel::<Waiter>();
        std::thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || {
                // Ends when the last `Storage` clone (and so the sender) is dropped.
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    // Every waiter in `batch` wrote before it queued itself, and the queue was
                    // drained before this flush started, so the flush covers all their writes.
                    let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
                    for waiter in batch {
                        let _ = waiter.send(result.clone());
                    }
                }
            })
            .expect("spawn group-commit thread");
        Committer { queue: tx }
    }

    pub async fn wait(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(tx)
            .map_err(|_| StoreError::Db("group commit thread stopped".into()))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Db(format!("flush: {e}"))),
            Err(_) => Err(StoreError::Db("group commit thread stopped".into())),
        }
    }
}
