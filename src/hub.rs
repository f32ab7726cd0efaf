//! Live delivery: which device has an open WebSocket, and a channel to push to it. A newer
//! connection for the same user replaces the older one; a connection that cannot keep up is
//! dropped (its client reconnects and gets the backlog from the queue, where nothing was deleted).
//!
//! A push carries only the message id: the session reads the message from the queue when it
//! sends it, so a connection that stops reading holds a few bytes per push, not the messages.
//! Closing a connection is dropping its entry here: the session watches for that even while it
//! waits on a slow socket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

/// Pushes a connection may hold before it counts as too slow.
const PUSH_BUFFER: usize = 1024;

/// What the hub keeps of a connection; dropping it closes the connection.
struct Entry {
    conn: u64,
    pushes: mpsc::Sender<u64>,
    _close: watch::Sender<()>,
}

#[derive(Default)]
pub struct Hub {
    conns: Mutex<HashMap<u64, Entry>>,
    next_conn: AtomicU64,
    open: Arc<AtomicUsize>,
}

/// A registered connection, as its session sees it.
pub struct Registration {
    pub conn: u64,
    /// Ids of messages queued since registering.
    pub pushes: mpsc::Receiver<u64>,
    /// Its `changed()` fails once the hub has let go of the connection: replaced by a newer one,
    /// too slow, device deleted or shutdown.
    pub closed: watch::Receiver<()>,
}

/// Counts one open WebSocket for as long as it lives.
pub struct OpenSocket(Arc<AtomicUsize>);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Hub {
    /// Registers a connection for `user`, closing the one it replaces.
    pub fn register(&self, user: u64) -> Registration {
        let (pushes_tx, pushes) = mpsc::channel(PUSH_BUFFER);
        let (close, closed) = watch::channel(());
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            conn,
            pushes: pushes_tx,
            _close: close,
        };
        // The replaced entry drops here, which closes the older connection.
        self.lock().insert(user, entry);
        Registration {
            conn,
            pushes,
            closed,
        }
    }

    /// Removes `conn` if it is still the user's current connection.
    pub fn unregister(&self, user: u64, conn: u64) {
        let mut conns = self.lock();
        if conns.get(&user).is_some_and(|e| e.conn == conn) {
            conns.remove(&user);
        }
    }

    /// Tells the user's open connection, if any, that message `id` was queued.
    pub fn deliver(&self, user: u64, id: u64) {
        let mut conns = self.lock();
        if let Some(entry) = conns.get(&user) {
            if entry.pushes.try_send(id).is_err() {
                // Too slow or gone: dropping the entry closes that connection.
                conns.remove(&user);
            }
        }
    }

    /// Closes the user's connection (device or account deleted).
    pub fn close(&self, user: u64) {
        self.lock().remove(&user);
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self) {
        self.lock().clear();
    }

    /// Counts a WebSocket as open until the returned guard drops.
    pub fn open_socket(&self) -> OpenSocket {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenSocket(self.open.clone())
    }

    /// Open WebSockets, whether or not they are still registered for pushes.
    pub fn connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
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
        let mut first = hub.register(7);
        let mut second = hub.register(7);
        assert!(first.closed.changed().await.is_err());
        hub.unregister(7, first.conn); // stale: must not remove the newer one
        hub.deliver(7, 1);
        assert_eq!(second.pushes.recv().await, Some(1));
        hub.unregister(7, second.conn);
        assert!(second.closed.changed().await.is_err());
    }

    #[test]
    fn open_sockets_are_counted_until_dropped() {
        let hub = Hub::default();
        let a = hub.open_socket();
        let b = hub.open_socket();
        assert_eq!(hub.connections(), 2);
        drop(a);
        assert_eq!(hub.connections(), 1);
        drop(b);
        assert_eq!(hub.connections(), 0);
    }
}
