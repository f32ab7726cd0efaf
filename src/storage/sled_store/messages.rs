//! Message queues: one per device (kept under its slot, see `linked`), in id order (ids only
//! grow, so that is arrival order).

use std::collections::HashMap;

use sled::Transactional;

use super::idempotency::{decode_record, encode_record, Keyed};
use super::totals::Count;
use super::{decode, encode, keys, SledStore, StoreError};
use crate::models::{DeviceRef, Message, Outgoing};
use crate::storage::check_devices;
use crate::storage::idempotency::Remembered;

/// What deleting one message id did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotOwner,
    NotFound,
}

/// A message as `write_queued` writes it: id, index value, key in the queue, encoded record.
pub(super) type Queued = (u64, [u8; 16], [u8; 16], Vec<u8>);

impl SledStore {
    /// Queues a message for a device unless its queue holds `cap` messages already. The
    /// message id is assigned here; the message is on disk when this returns.
    pub async fn enqueue(
        &self,
        recipient: DeviceRef,
        mut message: Message,
        cap: u32,
    ) -> Result<Message, StoreError> {
        let _writing = self.writing().await?;
        self.enqueue_locked(recipient, &mut message, cap)?;
        self.sync().await?;
        Ok(message)
    }

    /// Checks the device and writes the message under the recipient's lock: a device delete
    /// clears the queue under the same lock, so it cannot run between the check and the write
    /// and leave a message behind that no device will ever fetch (nor one counted in no queue).
    fn enqueue_locked(
        &self,
        recipient: DeviceRef,
        message: &mut Message,
        cap: u32,
    ) -> Result<(), StoreError> {
        let _user = self.user_lock(recipient.user);
        let slot = self.slot_of(recipient)?;
        self.take_place(slot, cap)?;
        let written = (|| {
            message.id = self.next_id()?;
            // Index first: a crash between the two leaves an index entry without a message,
            // which reads as "no such message", never a message that cannot be deleted.
            self.message_index.insert(
                message.id.to_be_bytes(),
                &keys::index_value(slot, message.timestamp),
            )?;
            self.messages
                .insert(keys::message(slot, message.id), encode(&*message))?;
            self.count(Count::QueuedMessages, 1);
            Ok(())
        })();
        if let Err(e) = written {
            self.adjust_queue_len(slot, -1);
            return Err(e);
        }
        Ok(())
    }

    /// Queues one message per device of an account, all or none (see `Storage::enqueue_all`).
    pub async fn enqueue_all(
        &self,
        recipient: u64,
        skip: Option<u32>,
        outgoing: Vec<Outgoing>,
        cap: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let _writing = self.writing().await?;
        let (messages, _) = self.enqueue_all_locked(recipient, skip, outgoing, cap, None)?;
        self.sync().await?;
        Ok(messages)
    }

    /// Checks and writes a send to every device of an account under its lock; with `keyed`,
    /// stores its record too, unless one is there already (returned, and nothing written).
    pub(super) fn enqueue_all_locked(
        &self,
        recipient: u64,
        skip: Option<u32>,
        outgoing: Vec<Outgoing>,
        cap: u32,
        keyed: Option<&Keyed>,
    ) -> Result<(Vec<Message>, Option<Remembered>), StoreError> {
        let _user = self.user_lock(recipient);
        let (devices, slots): (Vec<_>, Vec<_>) = self.device_slots(recipient)?.into_iter().unzip();
        if devices.is_empty() {
            return Err(StoreError::NoDevice);
        }
        check_devices(&devices, skip, &outgoing).map_err(StoreError::DevicesChanged)?;
        // Every device named exists (checked above).
        let targets: Vec<usize> = outgoing
            .iter()
            .filter_map(|o| devices.iter().position(|d| d.id() == o.device))
            .collect();
        let mut taken = Vec::with_capacity(targets.len());
        let release = |taken: &[u64]| taken.iter().for_each(|s| self.adjust_queue_len(*s, -1));
        for &t in &targets {
            if let Err(e) = self.take_place(slots[t], cap) {
                release(&taken);
                return Err(e);
            }
            taken.push(slots[t]);
        }
        let written = self.write_all(outgoing, &targets, &devices, &slots, keyed);
        if !matches!(written, Ok((_, None))) {
            release(&taken);
        }
        written
    }

    /// Writes the messages of `enqueue_all` in one transaction: a crash keeps all or none.
    fn write_all(
        &self,
        outgoing: Vec<Outgoing>,
        targets: &[usize],
        devices: &[crate::models::Device],
        slots: &[u64],
        keyed: Option<&Keyed>,
    ) -> Result<(Vec<Message>, Option<Remembered>), StoreError> {
        let mut messages = Vec::with_capacity(outgoing.len());
        let mut records = Vec::with_capacity(outgoing.len());
        for (o, &t) in outgoing.into_iter().zip(targets) {
            let mut m = o.message;
            m.id = self.next_id()?;
            m.recipient_address.clone_from(&devices[t].address);
            let index = keys::index_value(slots[t], m.timestamp);
            records.push((m.id, index, keys::message(slots[t], m.id), encode(&m)));
            messages.push(m);
        }
        let keyed = keyed.map(|k| (k, k.remember.record(&messages)));
        let found = self.write_queued(&records, keyed.as_ref().map(|(k, r)| (*k, r)))?;
        if found.is_none() {
            self.count(Count::QueuedMessages, messages.len() as i64);
        }
        Ok((messages, found))
    }

    /// Writes queued messages (id, index value, key, record) in one transaction, with a keyed
    /// send's record unless one is under its key already: that one is returned, and nothing is
    /// written.
    pub(super) fn write_queued(
        &self,
        records: &[Queued],
        keyed: Option<(&Keyed, &Remembered)>,
    ) -> Result<Option<Remembered>, StoreError> {
        let trees = (
            &self.messages,
            &self.message_index,
            &self.idempotency,
            &self.idempotency_times,
        );
        let found = trees.transaction(|(queue, index, remembered, times)| {
            if let Some((keyed, record)) = keyed {
                if let Some(found) = remembered.get(&keyed.record_key)? {
                    return Ok(Some(found));
                }
                remembered.insert(keyed.record_key.as_slice(), encode_record(record))?;
                times.insert(
                    keys::idempotency_time(record.created_ms, &keyed.record_key),
                    &[],
                )?;
            }
            for (id, value, key, record) in records {
                index.insert(&id.to_be_bytes(), value)?;
                queue.insert(key, record.as_slice())?;
            }
            Ok(None)
        })?;
        found.map(|v| decode_record(&v)).transpose()
    }

    /// Takes one place in the queue under `recipient` (a slot), or fails with `QueueFull`.
    pub(super) fn take_place(&self, recipient: u64, cap: u32) -> Result<(), StoreError> {
        let mut lens = self.lock_lens();
        let len = match lens.get(&recipient) {
            Some(len) => *len,
            None => self.count_queue(recipient)?,
        };
        if len >= cap {
            lens.insert(recipient, len);
            return Err(StoreError::QueueFull);
        }
        lens.insert(recipient, len + 1);
        Ok(())
    }

    pub(super) fn adjust_queue_len(&self, recipient: u64, delta: i64) {
        let mut lens = self.lock_lens();
        if let Some(len) = lens.get_mut(&recipient) {
            *len = (i64::from(*len) + delta).max(0) as u32;
        }
    }

    fn lock_lens(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u32>> {
        self.queue_lens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a queue from the tree (once per recipient after a start).
    fn count_queue(&self, recipient: u64) -> Result<u32, StoreError> {
        super::count_prefix(&self.messages, recipient)
    }

    /// The oldest `limit` queued messages of `recipient` with an id above `after`.
    pub fn messages(
        &self,
        recipient: DeviceRef,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.messages_page(recipient, after, limit, usize::MAX)
    }

    /// Like `messages`, but the page also ends before the message that would take its stored
    /// size over `max_bytes` (it always holds at least one message), so that one page of large
    /// messages is not held in memory whole.
    pub fn messages_page(
        &self,
        recipient: DeviceRef,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let Some(recipient) = self.slot(recipient)? else {
            return Ok(Vec::new());
        };
        let start = keys::message(recipient, after.saturating_add(1));
        let end = keys::message(recipient, u64::MAX);
        let mut page = Vec::new();
        let mut bytes = 0usize;
        for entry in self.messages.range(start..=end).take(limit) {
            let (_, value) = entry?;
            bytes = bytes.saturating_add(value.len());
            if bytes > max_bytes && !page.is_empty() {
                break;
            }
            page.push(decode(&value)?);
        }
        Ok(page)
    }

    /// Ids of `recipient`'s queue after `after` (see `Storage::queued_ids`): keys only.
    pub fn queued_ids(
        &self,
        recipient: DeviceRef,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let Some(slot) = self.slot(recipient)? else {
            return Ok(Vec::new());
        };
        let start = keys::message(slot, after.saturating_add(1));
        let end = keys::message(slot, u64::MAX);
        let mut ids = Vec::new();
        for key in self.messages.range(start..=end).keys().take(limit) {
            let key = key?;
            let id: [u8; 8] = key[8..]
                .try_into()
                .map_err(|_| StoreError::Corrupt("a message key of the wrong length".into()))?;
            ids.push(u64::from_be_bytes(id));
        }
        Ok(ids)
    }

    /// One queued message of `recipient`, if it is still there.
    pub fn message(&self, recipient: DeviceRef, id: u64) -> Result<Option<Message>, StoreError> {
        let Some(recipient) = self.slot(recipient)? else {
            return Ok(None);
        };
        match self.messages.get(keys::message(recipient, id))? {
            Some(value) => Ok(Some(decode(&value)?)),
            None => Ok(None),
        }
    }

    /// Deletes the given messages of `recipient`, reporting per id; durable when it returns.
    pub async fn delete_messages(
        &self,
        recipient: DeviceRef,
        ids: &[u64],
    ) -> Result<Vec<DeleteOutcome>, StoreError> {
        let _writing = self.writing().await?;
        // A device that is gone has no queue: nothing of it can be deleted.
        let recipient = self.slot(recipient)?.unwrap_or(0);
        let mut outcomes = Vec::with_capacity(ids.len());
        for &id in ids {
            outcomes.push(self.remove_message(recipient, id)?);
        }
        if outcomes.contains(&DeleteOutcome::Deleted) {
            self.sync().await?;
        }
        Ok(outcomes)
    }

    /// Removes one message of `recipient`; tells apart another user's message and none at all.
    fn remove_message(&self, recipient: u64, id: u64) -> Result<DeleteOutcome, StoreError> {
        if self
            .messages
            .remove(keys::message(recipient, id))?
            .is_some()
        {
            self.message_index.remove(id.to_be_bytes())?;
            self.adjust_queue_len(recipient, -1);
            self.count(Count::QueuedMessages, -1);
            return Ok(DeleteOutcome::Deleted);
        }
        match self.message_index.get(id.to_be_bytes())? {
            Some(v) if keys::decode_u64(&v) != Some(recipient) => Ok(DeleteOutcome::NotOwner),
            Some(_) => {
                // An index entry whose message is gone (a crash between the two writes).
                self.message_index.remove(id.to_be_bytes())?;
                Ok(DeleteOutcome::NotFound)
            }
            None => Ok(DeleteOutcome::NotFound),
        }
    }

    /// Removes every message queued under `recipient` (a slot).
    pub(super) fn clear_queue(&self, recipient: u64) -> Result<(), StoreError> {
        for k in self.messages.scan_prefix(keys::user(recipient)).keys() {
            let k = k?;
            if let Some(id) = keys::message_id(&k) {
                self.message_index.remove(id.to_be_bytes())?;
            }
            if self.messages.remove(k)?.is_some() {
                self.count(Count::QueuedMessages, -1);
            }
        }
        self.lock_lens().remove(&recipient);
        Ok(())
    }

    /// Deletes messages queued before `cutoff_ms`. Ids grow with time, so the sweep walks the
    /// index from the oldest id and stops at the first message that is young enough.
    pub async fn sweep_expired(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        let _writing = self.writing().await?;
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

    pub fn queue_len(&self, recipient: DeviceRef) -> Result<u32, StoreError> {
        let Some(recipient) = self.slot(recipient)? else {
            return Ok(0);
        };
        if let Some(len) = self.lock_lens().get(&recipient) {
            return Ok(*len);
        }
        self.count_queue(recipient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fixtures::primary;

    async fn with_device(s: &SledStore, user: u64) {
        let name = format!("u{user}");
        let created = s.create_user(&name, "", "h".into(), None).await.unwrap();
        assert_eq!(created.id, user, "a fresh database numbers users from 1");
        let d = crate::storage::fixtures::device(&format!("u{user}.1"));
        s.create_device(user, &d, &[], &[]).await.unwrap();
    }

    fn msg(content: &str, timestamp: u64) -> Message {
        crate::storage::fixtures::message(content, timestamp)
    }

    #[tokio::test]
    async fn queue_is_oldest_first_and_capped() {
        let (_dir, s) = super::super::temp();
        with_device(&s, 1).await;
        let a = s.enqueue(primary(1), msg("a", 1), 2).await.unwrap();
        let b = s.enqueue(primary(1), msg("b", 2), 2).await.unwrap();
        assert!(a.id < b.id);
        assert!(matches!(
            s.enqueue(primary(1), msg("c", 3), 2).await,
            Err(StoreError::QueueFull)
        ));
        let got = s.messages(primary(1), 0, 10).unwrap();
        assert_eq!(
            got.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(s.messages(primary(1), a.id, 10).unwrap(), vec![b]);
    }

    #[tokio::test]
    async fn a_page_stops_at_its_byte_budget_but_holds_at_least_one_message() {
        let (_dir, s) = super::super::temp();
        with_device(&s, 1).await;
        for _ in 0..5 {
            s.enqueue(primary(1), msg(&"x".repeat(1000), 1), 10)
                .await
                .unwrap();
        }
        assert_eq!(s.messages_page(primary(1), 0, 10, 2500).unwrap().len(), 2);
        assert_eq!(s.messages_page(primary(1), 0, 10, 10).unwrap().len(), 1);
        assert_eq!(
            s.messages_page(primary(1), 0, 3, usize::MAX).unwrap().len(),
            3
        );
        let first = &s.messages(primary(1), 0, 1).unwrap()[0];
        assert_eq!(
            s.message(primary(1), first.id).unwrap().as_ref(),
            Some(first)
        );
        assert_eq!(s.message(primary(2), first.id).unwrap(), None);
        let ids: Vec<u64> = s
            .messages(primary(1), 0, 10)
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(s.queued_ids(primary(1), 0, 10).unwrap(), ids);
        assert_eq!(s.queued_ids(primary(1), ids[1], 2).unwrap(), ids[2..4]);
        assert!(s.queued_ids(primary(2), 0, 10).unwrap().is_empty());
    }

    #[tokio::test]
    async fn only_the_recipient_deletes() {
        let (_dir, s) = super::super::temp();
        with_device(&s, 1).await;
        with_device(&s, 2).await;
        let m = s.enqueue(primary(1), msg("x", 1), 10).await.unwrap();
        let out = s
            .delete_messages(primary(2), &[m.id, 999_999])
            .await
            .unwrap();
        assert_eq!(out, [DeleteOutcome::NotOwner, DeleteOutcome::NotFound]);
        assert_eq!(
            s.delete_messages(primary(1), &[m.id]).await.unwrap(),
            [DeleteOutcome::Deleted]
        );
        assert_eq!(s.queue_len(primary(1)).unwrap(), 0);
    }

    #[tokio::test]
    async fn sweep_removes_only_expired_messages() {
        let (_dir, s) = super::super::temp();
        with_device(&s, 1).await;
        s.enqueue(primary(1), msg("old", 10), 10).await.unwrap();
        s.enqueue(primary(1), msg("new", 1000), 10).await.unwrap();
        assert_eq!(s.sweep_expired(500).await.unwrap(), 1);
        assert_eq!(s.messages(primary(1), 0, 10).unwrap()[0].content, "new");
        assert_eq!(s.queue_len(primary(1)).unwrap(), 1);
    }
}
