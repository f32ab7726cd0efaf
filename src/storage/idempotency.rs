//! Idempotent sends, the storage side: a send made with an `Idempotency-Key` stores its answer
//! in the same step (sled transaction, PostgreSQL transaction) as its messages, so that a
//! repeat finds either both or neither. The verbs here are the contract's; each backend keeps
//! its records in its own `idempotency` module.
//!
//! A record is never replaced: the first send to commit under a key wins, and a send that finds
//! one (before it starts, or at its commit, when another instance got there first) writes
//! nothing and returns the stored record instead (`Sent::Answered`).

use super::{Storage, StoreError};
use crate::models::{DeviceRef, Message, Outgoing};

/// How long records are kept at least; the sweep removes older ones.
pub const KEEP_MS: u64 = 24 * 60 * 60 * 1000;

/// Records one sweep removes at most (the next sweep goes on).
pub const SWEEP_LIMIT: usize = 10_000;

/// What a key is scoped to: the sending device, the route, and the client's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SendKey {
    pub sender: DeviceRef,
    /// `ROUTE_SEND` or `ROUTE_SEND_ALL`.
    pub route: u8,
    /// 1 to 64 printable ASCII characters (checked by the API).
    pub key: String,
}

/// `POST /messages/<regId>`.
pub const ROUTE_SEND: u8 = 1;
/// `POST /v2/messages/<regId>`.
pub const ROUTE_SEND_ALL: u8 = 2;

/// A stored answer: what the first request under a key was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    /// ms since the epoch.
    pub created_ms: u64,
    /// SHA-256 of the request's raw body.
    pub body_hash: [u8; 32],
    pub status: u16,
    pub body: Vec<u8>,
}

/// The answer of a send, made from the messages it queued (ids filled in); called inside the
/// backend's transaction, possibly more than once, so it must not have side effects.
pub type AnswerFn<'a> = &'a (dyn Fn(&[Message]) -> (u16, Vec<u8>) + Send + Sync);

/// What a keyed send stores beside its messages.
pub struct Remember<'a> {
    pub key: &'a SendKey,
    pub body_hash: [u8; 32],
    pub created_ms: u64,
    pub answer: AnswerFn<'a>,
}

impl Remember<'_> {
    /// The record this send stores, for the messages it queued.
    pub fn record(&self, queued: &[Message]) -> Remembered {
        let (status, body) = (self.answer)(queued);
        Remembered {
            created_ms: self.created_ms,
            body_hash: self.body_hash,
            status,
            body,
        }
    }
}

/// The outcome of a keyed send.
#[derive(Debug)]
pub enum Sent<T> {
    /// Queued now, with the record stored beside.
    Queued(T, Remembered),
    /// A record under the key was there already: nothing was written.
    Answered(Remembered),
}

impl Storage {
    /// The record stored under `key`, if any.
    pub async fn remembered(&self, key: &SendKey) -> Result<Option<Remembered>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.remembered(key).await),
            Storage::Postgres(p) => Box::pin(p.remembered(key)).await,
        }
    }

    /// `enqueue`, storing `remember`'s record in the same step; writes nothing if a record
    /// under the key is there (`Sent::Answered`).
    pub async fn enqueue_once(
        &self,
        recipient: DeviceRef,
        message: Message,
        cap: u32,
        remember: &Remember<'_>,
    ) -> Result<Sent<Message>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.enqueue_once(recipient, message, cap, remember).await),
            Storage::Postgres(p) => {
                Box::pin(p.enqueue_once(recipient, message, cap, remember)).await
            }
        }
    }

    /// `enqueue_all`, storing `remember`'s record in the same step; writes nothing if a record
    /// under the key is there (`Sent::Answered`).
    pub async fn enqueue_all_once(
        &self,
        recipient: u64,
        skip: Option<u32>,
        outgoing: Vec<Outgoing>,
        cap: u32,
        remember: &Remember<'_>,
    ) -> Result<Sent<Vec<Message>>, StoreError> {
        match self {
            Storage::Sled(s) => {
                let sent = s.enqueue_all_once(recipient, skip, outgoing, cap, remember);
                s.watched(sent.await)
            }
            Storage::Postgres(p) => {
                Box::pin(p.enqueue_all_once(recipient, skip, outgoing, cap, remember)).await
            }
        }
    }

    /// Removes up to `SWEEP_LIMIT` records made before `cutoff_ms`; tells how many.
    pub async fn sweep_idempotency(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.sweep_idempotency(cutoff_ms).await),
            Storage::Postgres(p) => Box::pin(p.sweep_idempotency(cutoff_ms)).await,
        }
    }
}

/// The contract's tests, run on both backends (`sled_store::idempotency`, `pg_store::tests`).
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;
    use crate::storage::fixtures::{device, message, primary};

    /// A user `name` with a primary device (registrationId 7); its id.
    async fn user(s: &Storage, name: &str) -> u64 {
        let id = s.create_user(name, "", "h".into(), None).await.unwrap().id;
        let d = device(&format!("{name}.1"));
        s.create_device(id, &d, &[], &[]).await.unwrap();
        id
    }

    /// 201 and the ids queued, comma-separated.
    fn ids(queued: &[Message]) -> (u16, Vec<u8>) {
        let ids: Vec<String> = queued.iter().map(|m| m.id.to_string()).collect();
        (201, ids.join(",").into_bytes())
    }

    fn key(sender: u64, route: u8, key: &str) -> SendKey {
        SendKey {
            sender: primary(sender),
            route,
            key: key.into(),
        }
    }

    fn remember<'a>(key: &'a SendKey, hash: u8, created_ms: u64) -> Remember<'a> {
        Remember {
            key,
            body_hash: [hash; 32],
            created_ms,
            answer: &ids,
        }
    }

    /// A keyed send stores its answer with its messages; a repeat under the key writes nothing
    /// and gets that record (whatever its body); a route is a key space of its own; a refused
    /// send stores nothing; the sweep takes old records only; a device's records go with it.
    pub async fn a_keyed_send_is_stored_once(s: &Storage) {
        let (a, b) = (user(s, "a").await, user(s, "b").await);
        let one = key(a, ROUTE_SEND, "k");
        let r = remember(&one, 1, 1000);
        let sent = s.enqueue_once(primary(b), message("x", 1), 10, &r).await;
        let Sent::Queued(m, record) = sent.unwrap() else {
            panic!("a first send is queued");
        };
        assert_eq!((record.status, record.body.clone()), ids(&[m]));
        assert_eq!(s.remembered(&one).await.unwrap().as_ref(), Some(&record));
        let r = remember(&one, 2, 2000);
        let again = s.enqueue_once(primary(b), message("y", 2), 10, &r).await;
        assert!(matches!(again.unwrap(), Sent::Answered(r) if r == record));
        assert_eq!(s.queue_len(primary(b)).await.unwrap(), 1);

        let all = key(a, ROUTE_SEND_ALL, "k");
        let outgoing = || {
            vec![Outgoing {
                device: 1,
                registration_id: 7,
                message: message("z", 3),
            }]
        };
        let r = remember(&all, 1, 5000);
        let sent = s.enqueue_all_once(b, None, outgoing(), 10, &r).await;
        let Sent::Queued(queued, all_record) = sent.unwrap() else {
            panic!("the other route's key is another send");
        };
        assert_eq!(all_record.body, ids(&queued).1);
        let r = remember(&all, 1, 6000);
        let again = s.enqueue_all_once(b, None, outgoing(), 10, &r).await;
        assert!(matches!(again.unwrap(), Sent::Answered(r) if r == all_record));
        assert_eq!(s.queue_len(primary(b)).await.unwrap(), 2);

        let full = key(a, ROUTE_SEND, "full");
        let r = remember(&full, 1, 1);
        let refused = s.enqueue_once(primary(b), message("f", 4), 2, &r).await;
        assert!(matches!(refused, Err(StoreError::QueueFull)));
        assert_eq!(s.remembered(&full).await.unwrap(), None);

        assert_eq!(s.sweep_idempotency(1000).await.unwrap(), 0, "not before");
        assert_eq!(s.sweep_idempotency(1001).await.unwrap(), 1);
        assert_eq!(s.remembered(&one).await.unwrap(), None);
        assert!(s.remembered(&all).await.unwrap().is_some());
        s.delete_device(a).await.unwrap();
        assert_eq!(
            s.remembered(&all).await.unwrap(),
            None,
            "gone with its device"
        );
    }

    /// Keyed sends under one key racing on `stores` (handles on one database): one is queued,
    /// every other is answered with its record.
    pub async fn racing_keyed_sends_queue_one(stores: &[Storage]) {
        let (a, b) = (user(&stores[0], "a").await, user(&stores[0], "b").await);
        let mut tasks = Vec::new();
        for i in 0..8 {
            let s = stores[i % stores.len()].clone();
            tasks.push(tokio::spawn(async move {
                let k = key(a, ROUTE_SEND, "raced");
                let r = remember(&k, 1, 1000);
                s.enqueue_once(primary(b), message("x", 1), 100, &r).await
            }));
        }
        let mut queued = Vec::new();
        let mut answered = Vec::new();
        for task in tasks {
            match task.await.unwrap().unwrap() {
                Sent::Queued(_, r) => queued.push(r),
                Sent::Answered(r) => answered.push(r),
            }
        }
        assert_eq!(queued.len(), 1, "{answered:?}");
        assert!(answered.iter().all(|r| *r == queued[0]));
        assert_eq!(stores[0].queue_len(primary(b)).await.unwrap(), 1);
    }
}
