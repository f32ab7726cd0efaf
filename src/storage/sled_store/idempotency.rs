//! Idempotency records (see `storage::idempotency`): kept under the sending device's slot, so a
//! device linked later under a reused id starts with none, and written in the transaction that
//! writes the send's messages. A second tree orders them by time for the sweep.
//!
//! Both trees are new in layout version 2, without a version bump: a build that does not know
//! them ignores them and misreads nothing (it only stores no records while it runs).

use super::totals::Count;
use super::{encode, keys, SledStore, StoreError};
use crate::models::{DeviceRef, Message, Outgoing};
use crate::storage::idempotency::{Remember, Remembered, SendKey, Sent, SWEEP_LIMIT};

/// A keyed send under way: its record's key in the `idempotency` tree, and what to store.
pub(super) struct Keyed<'a> {
    pub record_key: Vec<u8>,
    pub remember: &'a Remember<'a>,
}

/// `created ms (u64 BE) ‖ body hash (32) ‖ status (u16 BE) ‖ answer body`.
pub(super) fn encode_record(r: &Remembered) -> Vec<u8> {
    let mut v = Vec::with_capacity(42 + r.body.len());
    v.extend_from_slice(&r.created_ms.to_be_bytes());
    v.extend_from_slice(&r.body_hash);
    v.extend_from_slice(&r.status.to_be_bytes());
    v.extend_from_slice(&r.body);
    v
}

pub(super) fn decode_record(v: &[u8]) -> Result<Remembered, StoreError> {
    let bad = || StoreError::Corrupt("an idempotency record is too short".into());
    let created_ms = keys::decode_u64(v).ok_or_else(bad)?;
    let body_hash: [u8; 32] = v
        .get(8..40)
        .ok_or_else(bad)?
        .try_into()
        .map_err(|_| bad())?;
    let status: [u8; 2] = v
        .get(40..42)
        .ok_or_else(bad)?
        .try_into()
        .map_err(|_| bad())?;
    Ok(Remembered {
        created_ms,
        body_hash,
        status: u16::from_be_bytes(status),
        body: v[42..].to_vec(),
    })
}

/// Whether `v` is a whole record (for `fsck`).
pub(super) fn is_record(v: &[u8]) -> bool {
    decode_record(v).is_ok()
}

impl SledStore {
    /// The record key of `key`; `NoUser` when the sending device is gone (its token with it).
    fn record_key(&self, key: &SendKey) -> Result<Vec<u8>, StoreError> {
        let slot = self.slot(key.sender)?.ok_or(StoreError::NoUser)?;
        Ok(keys::idempotency(slot, key.route, &key.key))
    }

    /// The record under `key`; on disk when returned (the send that wrote it may have failed
    /// its flush, and an answer sent again must be as durable as the first).
    pub async fn remembered(&self, key: &SendKey) -> Result<Option<Remembered>, StoreError> {
        let Some(slot) = self.slot(key.sender)? else {
            return Ok(None);
        };
        let found = self
            .idempotency
            .get(keys::idempotency(slot, key.route, &key.key))?;
        let Some(v) = found else {
            return Ok(None);
        };
        self.sync().await?;
        Ok(Some(decode_record(&v)?))
    }

    /// `enqueue` with the send's record in the same transaction (see `Storage::enqueue_once`).
    pub async fn enqueue_once(
        &self,
        recipient: DeviceRef,
        mut message: Message,
        cap: u32,
        remember: &Remember<'_>,
    ) -> Result<Sent<Message>, StoreError> {
        let _writing = self.writing().await?;
        let keyed = Keyed {
            record_key: self.record_key(remember.key)?,
            remember,
        };
        let found = self.enqueue_keyed_locked(recipient, &mut message, cap, &keyed)?;
        // Also for a record found: the send that wrote it may not have been flushed yet.
        self.sync().await?;
        Ok(match found {
            Some(found) => Sent::Answered(found),
            None => Sent::Queued(message.clone(), remember.record(&[message])),
        })
    }

    /// Like `enqueue_locked`, but the message, its index entry and the record in one
    /// transaction (a single send is otherwise written without one; see `sled_store`).
    fn enqueue_keyed_locked(
        &self,
        recipient: DeviceRef,
        message: &mut Message,
        cap: u32,
        keyed: &Keyed,
    ) -> Result<Option<Remembered>, StoreError> {
        let _user = self.user_lock(recipient.user);
        if let Some(found) = self.idempotency.get(&keyed.record_key)? {
            return Ok(Some(decode_record(&found)?));
        }
        let slot = self.slot_of(recipient)?;
        self.take_place(slot, cap)?;
        let written = (|| {
            message.id = self.next_id()?;
            let record = keyed.remember.record(std::slice::from_ref(message));
            let entry = (
                message.id,
                keys::index_value(slot, message.timestamp),
                keys::message(slot, message.id),
                encode(&*message),
            );
            self.write_queued(&[entry], Some((keyed, &record)))
        })();
        match &written {
            Ok(None) => self.count(Count::QueuedMessages, 1),
            _ => self.adjust_queue_len(slot, -1),
        }
        written
    }

    /// `enqueue_all` with the send's record in the same transaction.
    pub async fn enqueue_all_once(
        &self,
        recipient: u64,
        skip: Option<u32>,
        outgoing: Vec<Outgoing>,
        cap: u32,
        remember: &Remember<'_>,
    ) -> Result<Sent<Vec<Message>>, StoreError> {
        let _writing = self.writing().await?;
        let keyed = Keyed {
            record_key: self.record_key(remember.key)?,
            remember,
        };
        if let Some(found) = self.idempotency.get(&keyed.record_key)? {
            self.sync().await?;
            return Ok(Sent::Answered(decode_record(&found)?));
        }
        let (messages, found) =
            self.enqueue_all_locked(recipient, skip, outgoing, cap, Some(&keyed))?;
        self.sync().await?;
        Ok(match found {
            Some(found) => Sent::Answered(found),
            None => {
                let record = remember.record(&messages);
                Sent::Queued(messages, record)
            }
        })
    }

    /// Removes up to `SWEEP_LIMIT` records made before `cutoff_ms`, oldest first.
    pub async fn sweep_idempotency(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        let _writing = self.writing().await?;
        let mut removed = 0;
        for entry in self.idempotency_times.iter().keys().take(SWEEP_LIMIT) {
            let time_key = entry?;
            let created = keys::decode_u64(&time_key).unwrap_or(0);
            if created >= cutoff_ms {
                break;
            }
            let record_key = &time_key[8..];
            // The record may be gone (its device was) or newer under the same key (the slot's
            // device deleted and made again): only the one made at this time goes.
            let same = self
                .idempotency
                .get(record_key)?
                .is_some_and(|v| keys::decode_u64(&v) == Some(created));
            if same {
                self.idempotency.remove(record_key)?;
                removed += 1;
            }
            self.idempotency_times.remove(&time_key)?;
        }
        if removed > 0 {
            self.sync().await?;
        }
        Ok(removed)
    }

    /// Removes the records of the device kept under `slot` (the sweep drops their time entries).
    pub(super) fn clear_idempotency(&self, slot: u64) -> Result<(), StoreError> {
        for k in self.idempotency.scan_prefix(keys::user(slot)).keys() {
            self.idempotency.remove(k?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::idempotency::conformance;
    use crate::storage::Storage;

    #[tokio::test]
    async fn a_keyed_send_is_stored_once() {
        let (_dir, s) = super::super::temp();
        conformance::a_keyed_send_is_stored_once(&Storage::Sled(s)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_keyed_sends_queue_one() {
        let (_dir, s) = super::super::temp();
        conformance::racing_keyed_sends_queue_one(&[Storage::Sled(s)]).await;
    }

    #[test]
    fn a_record_round_trips_and_a_short_one_is_corrupt() {
        let r = Remembered {
            created_ms: 7,
            body_hash: [3; 32],
            status: 201,
            body: b"{}".to_vec(),
        };
        assert_eq!(decode_record(&encode_record(&r)).unwrap(), r);
        assert!(is_record(&encode_record(&r)));
        assert!(!is_record(&encode_record(&r)[..41]));
    }
}
