//! Message queues: one per recipient, in id order (ids only grow, so that is arrival order).

use sled::Transactional;

use super::keys::{self, Counter};
use super::{abort, decode, encode, tx_counter, Storage, StoreError};
use crate::models::Message;

/// What deleting one message id did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotOwner,
    NotFound,
}

impl Storage {
    /// Queues a message for `recipient` unless their queue holds `cap` messages already. The
    /// message id is assigned here; the message is on disk when this returns.
    pub async fn enqueue(
        &self,
        recipient: u64,
        mut message: Message,
        cap: u32,
    ) -> Result<Message, StoreError> {
        let _writing = self.writing().await;
        message.id = self.next_id()?;
        let key = keys::message(recipient, message.id);
        let index_key = message.id.to_be_bytes();
        let index_value = keys::index_value(recipient, message.timestamp);
        let counter_key = keys::counter(recipient, Counter::Queue);
        let record = encode(&message);
        (
            &self.messages,
            &self.message_index,
            &self.counters,
            &self.devices,
        )
            .transaction(|(messages, index, counters, devices)| {
                if devices.get(keys::user(recipient))?.is_none() {
                    return abort(StoreError::NoDevice);
                }
                let len = tx_counter(counters, &counter_key)?;
                if len >= cap {
                    return abort(StoreError::QueueFull);
                }
                messages.insert(&key, record.as_slice())?;
                index.insert(&index_key, &index_value)?;
                counters.insert(&counter_key, &(len + 1).to_be_bytes())?;
                Ok(())
            })?;
        self.sync().await?;
        Ok(message)
    }

    /// The oldest `limit` queued messages of `recipient` with an id above `after`.
    pub fn messages(
        &self,
        recipient: u64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let start = keys::message(recipient, after.saturating_add(1));
        let end = keys::message(recipient, u64::MAX);
        self.messages
            .range(start..=end)
            .take(limit)
            .map(|entry| decode(&entry?.1))
            .collect()
    }

    /// Deletes the given messages of `recipient`, reporting per id; durable when it returns.
    pub async fn delete_messages(
        &self,
        recipient: u64,
        ids: &[u64],
    ) -> Result<Vec<DeleteOutcome>, StoreError> {
        let _writing = self.writing().await;
        let mut outcomes = Vec::with_capacity(ids.len());
        let mut any = false;
        for &id in ids {
            let outcome = match self.message_index.get(id.to_be_bytes())? {
                None => DeleteOutcome::NotFound,
                Some(v) if keys::decode_u64(&v) != Some(recipient) => DeleteOutcome::NotOwner,
                Some(_) => self.remove_message(recipient, id)?,
            };
            any |= outcome == DeleteOutcome::Deleted;
            outcomes.push(outcome);
        }
        if any {
            self.sync().await?;
        }
        Ok(outcomes)
    }

    fn remove_message(&self, recipient: u64, id: u64) -> Result<DeleteOutcome, StoreError> {
        let key = keys::message(recipient, id);
        let counter_key = keys::counter(recipient, Counter::Queue);
        Ok(
            (&self.messages, &self.message_index, &self.counters).transaction(
                |(messages, index, counters)| {
                    index.remove(&id.to_be_bytes())?;
                    if messages.remove(&key)?.is_none() {
                        return Ok(DeleteOutcome::NotFound);
                    }
                    let len = tx_counter(counters, &counter_key)?;
                    counters.insert(&counter_key, &len.saturating_sub(1).to_be_bytes())?;
                    Ok(DeleteOutcome::Deleted)
                },
            )?,
        )
    }

    /// Removes every message queued for `recipient`.
    pub(super) fn clear_queue(&self, recipient: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let mut index_batch = sled::Batch::default();
        for k in self.messages.scan_prefix(keys::user(recipient)).keys() {
            let k = k?;
            if let Some(id) = keys::message_id(&k) {
                index_batch.remove(&id.to_be_bytes());
            }
            batch.remove(k);
        }
        self.messages.apply_batch(batch)?;
        self.message_index.apply_batch(index_batch)?;
        Ok(())
    }

    /// Deletes messages queued before `cutoff_ms`. Ids grow with time, so the sweep walks the
    /// index from the oldest id and stops at the first message that is young enough.
    pub async fn sweep_expired(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        let _writing = self.writing().await;
        let mut removed = 0;
        for entry in self.message_index.iter() {
            let (k, v) = entry?;
            let (Some(id), Some(recipient)) = (keys::decode_u64(&k), keys::decode_u64(&v)) else {
                continue;
            };
            let timestamp = v.get(8..16).and_then(keys::decode_u64).unwrap_or(0);
            if timestamp >= cutoff_ms {
                break;
            }
            if self.remove_message(recipient, id)? == DeleteOutcome::Deleted {
                removed += 1;
            }
        }
        if removed > 0 {
            self.sync().await?;
        }
        Ok(removed)
    }

    pub fn queue_len(&self, recipient: u64) -> Result<u32, StoreError> {
        self.counter(recipient, Counter::Queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Device, SignedPreKey};

    async fn with_device(s: &Storage, user: u64) {
        let spk = SignedPreKey {
            key_id: 1,
            public_key: vec![5; 33],
            signature: vec![0; 64],
        };
        let d = Device {
            address: format!("u{user}.1"),
            registration_id: 1,
            identity_key: vec![5; 33],
            signed_prekey: spk,
            last_resort_kyber: None,
        };
        s.create_device(user, &d, &[], &[]).await.unwrap();
    }

    fn msg(content: &str, timestamp: u64) -> Message {
        Message {
            id: 0,
            sender_address: "s.1".into(),
            sender_registration_id: 3,
            content: content.into(),
            recipient_address: "r.1".into(),
            timestamp,
        }
    }

    #[tokio::test]
    async fn queue_is_oldest_first_and_capped() {
        let (_dir, s) = super::super::temp();
        with_device(&s, 1).await;
        let a = s.enqueue(1, msg("a", 1), 2).await.unwrap();
        let b = s.enqueue(1, msg("b", 2), 2).await.unwrap();
        assert!(a.id < b.id);
        assert!(matches!(
            s.enqueue(1, msg("c", 3), 2).await,
            Err(StoreError::QueueFull)
        ));
        let got = s.messages(1, 0, 10).unwrap();
        assert_eq!(
            got.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(s.messages(1, a.id, 10).unwrap(), vec![b]);
    }

    #[tokio::test]
    async fn only_the_recipient_deletes() {
        let (_dir, s) = super::super::temp();
        with_device(&s, 1).await;
        with_device(&s, 2).await;
        let m = s.enqueue(1, msg("x", 1), 10).await.unwrap();
        let out = s.delete_messages(2, &[m.id, 999_999]).await.unwrap();
        assert_eq!(out, [DeleteOutcome::NotOwner, DeleteOutcome::NotFound]);
        assert_eq!(
            s.delete_messages(1, &[m.id]).await.unwrap(),
            [DeleteOutcome::Deleted]
        );
        assert_eq!(s.queue_len(1).unwrap(), 0);
    }

    #[tokio::test]
    async fn sweep_removes_only_expired_messages() {
        let (_dir, s) = super::super::temp();
        with_device(&s, 1).await;
        s.enqueue(1, msg("old", 10), 10).await.unwrap();
        s.enqueue(1, msg("new", 1000), 10).await.unwrap();
        assert_eq!(s.sweep_expired(500).await.unwrap(), 1);
        assert_eq!(s.messages(1, 0, 10).unwrap()[0].content, "new");
        assert_eq!(s.queue_len(1).unwrap(), 1);
    }
}
