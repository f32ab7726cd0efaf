//! Live delivery: which device has an open WebSocket, and a channel to push to it. A newer
//! connection for the same user replaces the older one; a connection that cannot keep up is
//! dropped (its client reconnects and gets the backlog from the queue, where nothing was deleted).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

/// Pushes a connection may hold before it counts as too slow.
const PUSH_BUFFER: usize = 1024;

#[derive(Debug, Clone)]
pub enum Push {
    /// A queued message: its id and its JSON text (the 201 shape).
    Message(u64, Arc<str>),
    /// Close the socket (replaced by a newer connection, device deleted, or shutdown).
    Close,
}

#[derive(Default)]
pub struct Hub {
    conns: Mutex<HashMap<u64, (u64, mpsc::Sender<Push>)>>,
    next_conn: AtomicU64,
}

impl Hub {
    /// Registers a connection for `user`, closing the one it replaces.
    pub fn register(&self, user: u64) -> (u64, mpsc::Receiver<Push>) {
        let (tx, rx) = mpsc::channel(PUSH_BUFFER);
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        if let Some((_, old)) = self.lock().insert(user, (conn, tx)) {
            let _ = old.try_send(Push::Close);
        }
        (conn, rx)
    }

    /// Removes `conn` if it is still the user's current connection.
    pub fn unregister(&self, user: u64, conn: u64) {
        let mut conns = self.lock();
        if conns.get(&user).is_some_and(|(c, _)| *c == conn) {
            conns.remove(&user);
        }
    }

    /// Hands a message to the user's open connection, if any.
    pub fn deliver(&self, user: u64, id: u64, json: Arc<str>) {
        let mut conns = self.lock();
        if let Some((_, tx)) = conns.get(&user) {
            if tx.try_send(Push::Message(id, json)).is_err() {
                // Too slow or gone: dropping the sender ends that connection.
                conns.remove(&user);
            }
        }
    }

    /// Closes the user's connection (device or account deleted).
    pub fn close(&self, user: u64) {
        if let Some((_, tx)) = self.lock().remove(&user) {
            let _ = tx.try_send(Push::Close);
        }
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self) {
        for (_, (_, tx)) in self.lock().drain() {
            let _ = tx.try_send(Push::Close);
        }
    }

    pub fn connections(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (u64, mpsc::Sender<Push>)>> {
        self.conns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_newer_connection_replaces_the_older() {
        let hub = Hub::default();
        let (c1, mut rx1) = hub.register(7);
        let (c2, mut rx2) = hub.register(7);
        assert!(matches!(rx1.recv().await, Some(Push::Close)));
        hub.unregister(7, c1); // stale: must not remove the newer one
        hub.deliver(7, 1, Arc::from("{}"));
        assert!(matches!(rx2.recv().await, Some(Push::Message(1, _))));
        hub.unregister(7, c2);
        assert_eq!(hub.connections(), 0);
    }
}
