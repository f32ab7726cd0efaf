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
            Storage::Sled(s) => s.remembered(key),
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
            Storage::Sled(s) => s.enqueue_once(recipient, message, cap, remember).await,
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
                s.enqueue_all_once(recipient, skip, outgoing, cap, remember)
                    .await
            }
            Storage::Postgres(p) => {
                Box::pin(p.enqueue_all_once(recipient, skip, outgoing, cap, remember)).await
            }
        }
    }

    /// Removes up to `SWEEP_LIMIT` records made before `cutoff_ms`; tells how many.
    pub async fn sweep_idempotency(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        match self {
            Storage::Sled(s) => s.sweep_idempotency(cutoff_ms).await,
            Storage::Postgres(p) => Box::pin(p.sweep_idempotency(cutoff_ms)).await,
        }
    }
}
