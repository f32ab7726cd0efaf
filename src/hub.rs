//! Live delivery: which device has an open WebSocket, and a channel to push to it. A newer
//! connection for the same device replaces the older one; a connection that cannot keep up is
//! dropped (its client reconnects and gets the backlog from the queue, where nothing was deleted).
//!
//! A push carries only the message id: the session reads the message from the queue when it
//! sends it, so a connection that stops reading holds a few bytes per push, not the messages.
//! Closing a connection is dropping its entry here: the session watches for that even while it
//! waits on a slow socket.
//!
//! With several instances (PostgreSQL), what happens here is also sent to the others as a
//! `Signal` (a hint: the message is committed before it is signalled, and sessions re-read their
//! queue every `RESYNC_EVERY`, so a lost signal delays a message, never loses it), and the
//! others' signals are applied here: a message queued there, a device or account deleted there,
//! a newer connection of the same device opened there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use crate::models::DeviceRef;
use crate::principals::Principals;

/// Pushes a connection may hold before it counts as too slow.
const PUSH_BUFFER: usize = 1024;

/// Signals waiting to be sent to the other instances; beyond this they are dropped (hints only).
pub const SIGNAL_BUFFER: usize = 4096;

/// How often a session re-reads its queue when other instances may have queued messages whose
/// signal was lost.
pub const RESYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Why the server closed a socket: its close frame's code and reason, so a client can tell them
/// apart (docs/API.md, "Live delivery").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A newer connection of the same device, here or on another instance.
    Replaced,
    /// The device was unlinked or deleted, or the account deleted.
    DeviceRemoved,
    /// The password was changed or reset: the socket's token is revoked.
    TokenRevoked,
    /// The socket's token expired.
    TokenExpired,
    /// The client did not take its messages fast enough.
    TooSlow,
    /// The server is shutting down.
    Shutdown,
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Replaced => 4000,
            CloseReason::DeviceRemoved => 4001,
            CloseReason::TokenRevoked => 4002,
            CloseReason::TokenExpired => 4003,
            CloseReason::TooSlow => 4008,
            CloseReason::Shutdown => 1001,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Replaced => "replaced",
            CloseReason::DeviceRemoved => "device_removed",
            CloseReason::TokenRevoked => "token_revoked",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::TooSlow => "too_slow",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// What one instance tells the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Message `id` was queued for `device`.
    Queued { device: DeviceRef, id: u64 },
    /// A device was unlinked (`device: Some`), or every device of the account deleted: close
    /// their connections.
    Close { user: u64, device: Option<u32> },
    /// `device` opened a connection at `at_ms` (wall clock): close older ones.
    Opened { device: DeviceRef, at_ms: u64 },
    /// The account's token version is now `version` (password changed or reset): close the
    /// sockets opened with another.
    Revoked { user: u64, version: u32 },
}

/// What the hub keeps of a connection; dropping it closes the connection.
struct Entry {
    conn: u64,
    /// Wall-clock registration time (ms), to tell an older connection from a newer one elsewhere.
    at_ms: u64,
    pushes: mpsc::Sender<u64>,
    /// The token version the connection was opened with.
    version: u32,
    close: watch::Sender<Option<CloseReason>>,
    /// Closed (its sender dropped) when the connection's session has ended.
    ended: watch::Receiver<()>,
}

impl Entry {
    /// Closes the connection, telling its session why.
    fn close(self, reason: CloseReason) {
        self.close.send_replace(Some(reason));
    }
}

pub struct Hub {
    conns: Mutex<HashMap<DeviceRef, Entry>>,
    next_conn: AtomicU64,
    open: Arc<AtomicUsize>,
    /// Where signals for the other instances go, when there are others.
    remote: std::sync::OnceLock<mpsc::Sender<Signal>>,
    /// Bumped to make every session re-read its queue (signals from others may have been lost).
    resync: watch::Sender<()>,
    /// The accounts callers are checked against: forgotten whenever what authorized them may
    /// have gone (the same events that close sockets), here or on another instance.
    pub principals: Principals,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub {
            conns: Mutex::default(),
            next_conn: AtomicU64::default(),
            open: Arc::default(),
            remote: std::sync::OnceLock::new(),
            resync: watch::Sender::new(()),
            principals: Principals::default(),
        }
    }
}

/// A registered connection, as its session sees it.
pub struct Registration {
    pub conn: u64,
    /// Ids of messages queued since registering.
    pub pushes: mpsc::Receiver<u64>,
    /// Changes (to the reason) or fails once the hub has let go of the connection: replaced by
    /// a newer one, too slow, device deleted, token revoked or shutdown.
    pub closed: watch::Receiver<Option<CloseReason>>,
    /// Changes when every session should re-read its queue.
    pub resync: watch::Receiver<()>,
    /// Held for as long as the session runs: a newer connection of the same device waits for
    /// it to be dropped (the older session's acks applied) before it reads the queue.
    pub running: watch::Sender<()>,
    /// The replaced connection's `running`, to wait for.
    pub replaced: Option<watch::Receiver<()>>,
}

/// Counts one open WebSocket for as long as it lives.
pub struct OpenSocket(Arc<AtomicUsize>);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Hub {
    /// Registers a connection for `device`, opened with token version `version`, closing the
    /// one it replaces.
    pub fn register(&self, device: DeviceRef, version: u32) -> Registration {
        let (pushes_tx, pushes) = mpsc::channel(PUSH_BUFFER);
        let (close, closed) = watch::channel(None);
        let (running, ended) = watch::channel(());
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let entry = Entry {
            conn,
            at_ms,
            pushes: pushes_tx,
            version,
            close,
            ended,
        };
        let replaced = self.lock().insert(device, entry).map(|old| {
            let ended = old.ended.clone();
            old.close(CloseReason::Replaced);
            ended
        });
        self.signal(Signal::Opened { device, at_ms });
        Registration {
            conn,
            pushes,
            closed,
            resync: self.resync.subscribe(),
            running,
            replaced,
        }
    }

    /// Removes `conn` if it is still the device's current connection.
    pub fn unregister(&self, device: DeviceRef, conn: u64) {
        let mut conns = self.lock();
        if conns.get(&device).is_some_and(|e| e.conn == conn) {
            conns.remove(&device);
        }
    }

    /// Tells the device's open connection, if any (here or on another instance), that message
    /// `id` was queued.
    pub fn deliver(&self, device: DeviceRef, id: u64) {
        self.deliver_here(device, id);
        self.signal(Signal::Queued { device, id });
    }

    fn deliver_here(&self, device: DeviceRef, id: u64) {
        let mut conns = self.lock();
        if let Some(entry) = conns.get(&device) {
            if entry.pushes.try_send(id).is_err() {
                // Too slow or gone: removing the entry closes that connection.
                if let Some(entry) = conns.remove(&device) {
                    entry.close(CloseReason::TooSlow);
                }
            }
        }
    }

    /// Closes the connection of an unlinked device, here or on another instance.
    pub fn close(&self, device: DeviceRef) {
        self.close_here(device.user, Some(device.device));
        self.signal(Signal::Close {
            user: device.user,
            device: Some(device.device),
        });
    }

    /// Closes the connections of every device of an account (devices or account deleted).
    pub fn close_account(&self, user: u64) {
        self.close_here(user, None);
        self.signal(Signal::Close { user, device: None });
    }

    /// Closes the sockets of an account opened with a token version other than `version` (the
    /// password changed or was reset), here and on the other instances.
    pub fn revoke(&self, user: u64, version: u32) {
        self.revoke_here(user, version);
        self.signal(Signal::Revoked { user, version });
    }

    /// Forgets the account's cached callers and closes the sockets of its devices (`None`: all).
    fn close_here(&self, user: u64, device: Option<u32>) {
        self.principals.forget(user);
        self.close_where(CloseReason::DeviceRemoved, |d, _| {
            d.user == user && device.is_none_or(|id| id == d.device)
        });
    }

    /// Forgets the account's cached callers and closes its sockets opened with a token version
    /// other than `version`.
    fn revoke_here(&self, user: u64, version: u32) {
        self.principals.forget(user);
        self.close_where(CloseReason::TokenRevoked, |d, e| {
            d.user == user && e.version != version
        });
    }

    /// Closes, for `reason`, every connection `doomed` picks.
    fn close_where(&self, reason: CloseReason, doomed: impl Fn(&DeviceRef, &Entry) -> bool) {
        let mut conns = self.lock();
        let picked: Vec<DeviceRef> = conns
            .iter()
            .filter(|(d, e)| doomed(d, e))
            .map(|(d, _)| *d)
            .collect();
        for device in picked {
            if let Some(entry) = conns.remove(&device) {
                entry.close(reason);
            }
        }
    }

    /// Sends this hub's signals to `remote` from now on (several instances).
    pub fn connect_remote(&self, remote: mpsc::Sender<Signal>) {
        let _ = self.remote.set(remote);
    }

    /// Whether other instances may queue messages for this hub's connections.
    pub fn has_remote(&self) -> bool {
        self.remote.get().is_some()
    }

    /// Makes every session re-read its queue: signals from the others may have been lost (the
    /// listener reconnected).
    pub fn resync_all(&self) {
        self.principals.forget_all();
        self.resync.send_replace(());
    }

    /// Applies another instance's signal.
    pub fn apply(&self, signal: Signal) {
        match signal {
            Signal::Queued { device, id } => self.deliver_here(device, id),
            Signal::Close { user, device } => self.close_here(user, device),
            Signal::Opened { device, at_ms } => {
                let mut conns = self.lock();
                // Only an older connection: a newer one here may have raced the signal.
                if conns.get(&device).is_some_and(|e| e.at_ms <= at_ms) {
                    if let Some(entry) = conns.remove(&device) {
                        entry.close(CloseReason::Replaced);
                    }
                }
            }
            Signal::Revoked { user, version } => self.revoke_here(user, version),
        }
    }

    fn signal(&self, signal: Signal) {
        if let Some(remote) = self.remote.get() {
            // A full buffer (the database is slow or down) drops the hint; sessions re-read.
            let _ = remote.try_send(signal);
        }
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self) {
        for (_, entry) in self.lock().drain() {
            entry.close(CloseReason::Shutdown);
        }
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceRef, Entry>> {
        self.conns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D7: DeviceRef = DeviceRef { user: 7, device: 1 };

    #[tokio::test]
    async fn a_newer_connection_replaces_the_older() {
        let hub = Hub::default();
        let mut first = hub.register(D7, 0);
        let mut second = hub.register(D7, 0);
        assert!(first.closed.changed().await.is_ok());
        hub.unregister(D7, first.conn); // stale: must not remove the newer one
        hub.deliver(D7, 1);
        assert_eq!(second.pushes.recv().await, Some(1));
        hub.unregister(D7, second.conn);
        assert!(second.closed.changed().await.is_err());
    }

    #[tokio::test]
    async fn signals_go_out_and_others_apply_here() {
        let hub = Hub::default();
        let (tx, mut out) = mpsc::channel(SIGNAL_BUFFER);
        hub.connect_remote(tx);
        let mut reg = hub.register(D7, 0);
        assert!(matches!(
            out.recv().await,
            Some(Signal::Opened { device: D7, .. })
        ));
        hub.apply(Signal::Queued { device: D7, id: 9 });
        assert_eq!(reg.pushes.recv().await, Some(9));
        hub.deliver(D7, 10);
        assert_eq!(
            out.recv().await,
            Some(Signal::Queued { device: D7, id: 10 })
        );
        // A connection opened elsewhere before this one does not close it; a later one does.
        hub.apply(Signal::Opened {
            device: D7,
            at_ms: 0,
        });
        assert_eq!(reg.pushes.recv().await, Some(10));
        hub.apply(Signal::Opened {
            device: D7,
            at_ms: u64::MAX,
        });
        assert!(reg.closed.changed().await.is_ok());
    }

    #[tokio::test]
    async fn a_newer_connection_can_wait_for_the_replaced_session_to_end() {
        let hub = Hub::default();
        let first = hub.register(D7, 0);
        assert!(first.replaced.is_none());
        let second = hub.register(D7, 0);
        let mut replaced = second.replaced.expect("the first connection");
        assert!(replaced.has_changed().is_ok(), "still running");
        drop(first.running);
        assert!(replaced.changed().await.is_err(), "ended");
    }

    #[tokio::test]
    async fn closing_a_device_leaves_the_account_s_other_devices_connected() {
        let hub = Hub::default();
        let d8 = DeviceRef { user: 7, device: 2 };
        let other = DeviceRef { user: 8, device: 1 };
        let (mut a, mut b, mut c) = (
            hub.register(D7, 0),
            hub.register(d8, 0),
            hub.register(other, 0),
        );
        hub.close(d8);
        assert!(b.closed.changed().await.is_ok());
        hub.deliver(D7, 1);
        assert_eq!(a.pushes.recv().await, Some(1));
        hub.apply(Signal::Close {
            user: 7,
            device: None,
        });
        assert!(a.closed.changed().await.is_ok());
        hub.deliver(other, 2);
        assert_eq!(c.pushes.recv().await, Some(2));
    }

    #[tokio::test]
    async fn a_revocation_closes_the_older_tokens_sockets_and_says_why() {
        let hub = Hub::default();
        let d8 = DeviceRef { user: 7, device: 2 };
        let other = DeviceRef { user: 8, device: 1 };
        let (mut old, mut new, mut c) = (
            hub.register(D7, 3),
            hub.register(d8, 4),
            hub.register(other, 3),
        );
        hub.revoke(7, 4);
        assert!(old.closed.changed().await.is_ok());
        assert_eq!(*old.closed.borrow(), Some(CloseReason::TokenRevoked));
        hub.deliver(d8, 1);
        assert_eq!(
            new.pushes.recv().await,
            Some(1),
            "opened with the new version"
        );
        hub.apply(Signal::Revoked {
            user: 7,
            version: 5,
        });
        assert!(new.closed.changed().await.is_ok());
        assert_eq!(*new.closed.borrow(), Some(CloseReason::TokenRevoked));
        hub.deliver(other, 2);
        assert_eq!(c.pushes.recv().await, Some(2), "another account");
        let mut replacing = hub.register(other, 3);
        assert!(c.closed.changed().await.is_ok());
        assert_eq!(*c.closed.borrow(), Some(CloseReason::Replaced));
        hub.close(other);
        assert!(replacing.closed.changed().await.is_ok());
        assert_eq!(*replacing.closed.borrow(), Some(CloseReason::DeviceRemoved));
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
