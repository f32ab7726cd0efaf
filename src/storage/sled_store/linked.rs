//! The devices of an account beyond the primary, and where each device's keys and queue live.
//!
//! A device's keys and queue are kept under its *slot*: the user id for the primary (the layout
//! of version 1, unchanged), a fresh id for each linked device. A device id reused after an
//! unlink gets a new slot, so nothing of the earlier device can come back under it.

use serde::{Deserialize, Serialize};
use sled::Transactional;

use super::totals::Count;
use super::{abort, decode, decode_tx, encode, keys, SledStore, StoreError};
use crate::models::{Device, DeviceRef, PreKey, SignedPreKey};
use crate::storage::{check_link, linked_address};

/// A linked device as stored.
#[derive(Serialize, Deserialize)]
pub(super) struct LinkedDevice {
    pub slot: u64,
    pub device: Device,
}

impl SledStore {
    /// Every device of the account with its slot: the primary first, then linked ones by id.
    pub(super) fn device_slots(&self, user_id: u64) -> Result<Vec<(Device, u64)>, StoreError> {
        let mut all = Vec::new();
        if let Some(primary) = self.device(user_id)? {
            all.push((primary, user_id));
        }
        for entry in self.linked_devices.scan_prefix(keys::user(user_id)) {
            let linked: LinkedDevice = decode(&entry?.1)?;
            all.push((linked.device, linked.slot));
        }
        Ok(all)
    }

    pub fn devices(&self, user_id: u64) -> Result<Vec<Device>, StoreError> {
        Ok(self
            .device_slots(user_id)?
            .into_iter()
            .map(|(d, _)| d)
            .collect())
    }

    /// The slot of a device, if the account has it.
    pub(super) fn slot(&self, device: DeviceRef) -> Result<Option<u64>, StoreError> {
        if self.primary_id(device.user)? == Some(device.device) {
            return Ok(Some(device.user));
        }
        match self
            .linked_devices
            .get(keys::linked(device.user, device.device))?
        {
            Some(v) => Ok(Some(decode::<LinkedDevice>(&v)?.slot)),
            None => Ok(None),
        }
    }

    /// The device's stamp (see `Storage::device_stamp`): a linked device's slot, new at every
    /// link; the primary's slot is its user id at every creation, so its registrationId goes in.
    pub fn device_stamp(&self, device: DeviceRef) -> Result<Option<u64>, StoreError> {
        // Linked first: a bound token is most often a linked device's, and no linked device
        // has the primary's id, so the primary's record is decoded only for the primary.
        if let Some(v) = self
            .linked_devices
            .get(keys::linked(device.user, device.device))?
        {
            return Ok(Some(decode::<LinkedDevice>(&v)?.slot));
        }
        Ok(self
            .device(device.user)?
            .filter(|primary| primary.id() == device.device)
            .map(|primary| device.user ^ (u64::from(primary.registration_id) << 40)))
    }

    /// The slot of a device the caller needs to exist.
    pub(super) fn slot_of(&self, device: DeviceRef) -> Result<u64, StoreError> {
        self.slot(device)?.ok_or(StoreError::NoDevice)
    }

    /// The primary's device id, from its record's first field (the address) alone: every
    /// per-device verb asks, so the rest of the record is not decoded.
    fn primary_id(&self, user_id: u64) -> Result<Option<u32>, StoreError> {
        match self.devices.get(keys::user(user_id))? {
            Some(v) => {
                let address: String = decode(&v)?;
                Ok(Some(
                    crate::models::address_device_id(&address).unwrap_or(0),
                ))
            }
            None => Ok(None),
        }
    }

    /// Links a device (see `Storage::link_device`).
    pub async fn link_device(
        &self,
        user_id: u64,
        device: &Device,
        prekeys: &[PreKey],
        kyber: &[SignedPreKey],
        max_devices: u32,
    ) -> Result<Device, StoreError> {
        let _writing = self.writing().await?;
        let linked = {
            // Serialised with the account's other links, unlinks and deletes: the check below
            // still holds when the device is written.
            let _user = self.user_lock(user_id);
            self.link_locked(user_id, device, prekeys, kyber, max_devices)?
        };
        self.sync().await?;
        Ok(linked)
    }

    fn link_locked(
        &self,
        user_id: u64,
        device: &Device,
        prekeys: &[PreKey],
        kyber: &[SignedPreKey],
        max_devices: u32,
    ) -> Result<Device, StoreError> {
        let devices = self.devices(user_id)?;
        let id = check_link(&devices, device, max_devices)?;
        let mut device = device.clone();
        device.address = linked_address(&devices[0].address, id);
        let slot = self.next_id()?;
        let record = encode(&LinkedDevice {
            slot,
            device: device.clone(),
        });
        let kyber_records: Vec<_> = kyber
            .iter()
            .map(|k| (keys::prekey(slot, k.key_id), encode(k)))
            .collect();
        let key = keys::linked(user_id, id);
        let tx = (&self.linked_devices, &self.prekeys, &self.kyber_prekeys);
        tx.transaction(|(linked, ec, ky)| {
            for k in prekeys {
                ec.insert(&keys::prekey(slot, k.key_id), k.public_key.as_slice())?;
            }
            for (k, v) in &kyber_records {
                ky.insert(k, v.as_slice())?;
            }
            linked.insert(&key, record.as_slice())?;
            Ok(())
        })?;
        // A fresh slot holds nothing else, and one upload has no duplicate key ids.
        self.count(Count::Devices, 1);
        self.count(Count::Prekeys, prekeys.len() as i64);
        self.count(Count::KyberPrekeys, kyber.len() as i64);
        Ok(device)
    }

    /// Unlinks a device (see `Storage::unlink_device`).
    pub async fn unlink_device(&self, device: DeviceRef) -> Result<(), StoreError> {
        let _writing = self.writing().await?;
        {
            let _user = self.user_lock(device.user);
            if self.primary_id(device.user)? == Some(device.device) {
                return Err(StoreError::PrimaryDevice);
            }
            let key = keys::linked(device.user, device.device);
            let Some(v) = self.linked_devices.get(key)? else {
                return Err(StoreError::NoSuchDevice);
            };
            self.remove_linked(&key, decode::<LinkedDevice>(&v)?.slot)?;
        }
        self.sync().await
    }

    /// Removes every linked device of the account; under the user's lock.
    pub(super) fn remove_all_linked(&self, user_id: u64) -> Result<(), StoreError> {
        for entry in self.linked_devices.scan_prefix(keys::user(user_id)) {
            let (key, v) = entry?;
            self.remove_linked(&key, decode::<LinkedDevice>(&v)?.slot)?;
        }
        Ok(())
    }

    /// Removes a linked device's keys and queue, then its record: an interrupted removal leaves
    /// the device (its unlink not acknowledged), never keys nobody can reach.
    fn remove_linked(&self, key: &[u8], slot: u64) -> Result<(), StoreError> {
        self.clear_slot(slot)?;
        if self.linked_devices.remove(key)?.is_some() {
            self.count(Count::Devices, -1);
        }
        Ok(())
    }

    /// Applies `change` to a stored device (primary or linked) in a transaction.
    pub(super) fn update_device(
        &self,
        device: DeviceRef,
        change: impl Fn(&mut Device),
    ) -> Result<Device, StoreError> {
        let primary = keys::user(device.user);
        let changed = self.devices.transaction(|devices| {
            let Some(v) = devices.get(primary)? else {
                return abort(StoreError::NoDevice);
            };
            let mut d: Device = decode_tx(&v)?;
            if d.id() != device.device {
                return Ok(None);
            }
            change(&mut d);
            devices.insert(&primary, encode(&d))?;
            Ok(Some(d))
        })?;
        if let Some(d) = changed {
            return Ok(d);
        }
        let key = keys::linked(device.user, device.device);
        Ok(self.linked_devices.transaction(|linked| {
            let Some(v) = linked.get(key)? else {
                return abort(StoreError::NoDevice);
            };
            let mut record: LinkedDevice = decode_tx(&v)?;
            change(&mut record.device);
            linked.insert(&key, encode(&record))?;
            Ok(record.device)
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Message, Outgoing};
    use crate::storage::fixtures::{device, ec, message, primary};
    use crate::storage::Mismatch;

    /// User 1 with primary `a.1` (registrationId 7) and `n` linked devices (ids 11, 12, ...).
    async fn account(n: u32) -> (tempfile::TempDir, SledStore) {
        let (dir, s) = super::super::temp();
        s.create_user("a", "", "h".into(), None).await.unwrap();
        s.create_device(1, &device("a.1"), &[], &[]).await.unwrap();
        for i in 0..n {
            link(&s, 11 + i).await.unwrap();
        }
        (dir, s)
    }

    async fn link(s: &SledStore, registration_id: u32) -> Result<Device, StoreError> {
        let mut d = device("ignored.9");
        d.registration_id = registration_id;
        s.link_device(1, &d, &ec(1..=3), &[], 4).await
    }

    fn to(device: u32, registration_id: u32) -> Outgoing {
        Outgoing {
            device,
            registration_id,
            message: message("x", 1),
        }
    }

    fn dev(device: u32) -> DeviceRef {
        DeviceRef { user: 1, device }
    }

    #[tokio::test]
    async fn links_take_the_lowest_free_id_up_to_the_cap() {
        let (_dir, s) = account(2).await;
        let ids: Vec<u32> = s.devices(1).unwrap().iter().map(Device::id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(s.devices(1).unwrap()[2].address, "a.3");
        assert!(matches!(
            link(&s, 11).await,
            Err(StoreError::RegistrationIdTaken)
        ));
        link(&s, 20).await.unwrap();
        assert!(matches!(
            link(&s, 21).await,
            Err(StoreError::TooManyDevices)
        ));
        s.unlink_device(dev(2)).await.unwrap();
        assert_eq!(link(&s, 22).await.unwrap().id(), 2);
        let mut other = device("x.1");
        other.identity_key = vec![6; 33];
        let refused = s.link_device(1, &other, &[], &[], 9).await;
        assert!(matches!(refused, Err(StoreError::IdentityKeyMismatch)));
    }

    #[tokio::test]
    async fn an_unlinked_id_comes_back_empty_and_the_primary_stays() {
        let (_dir, s) = account(1).await;
        s.enqueue(dev(2), message("old", 1), 10).await.unwrap();
        s.pop_prekeys(dev(2)).await.unwrap();
        assert_eq!(s.stock(dev(2)).unwrap().prekeys, 2);
        assert!(matches!(
            s.unlink_device(dev(1)).await,
            Err(StoreError::PrimaryDevice)
        ));
        s.unlink_device(dev(2)).await.unwrap();
        assert!(matches!(
            s.unlink_device(dev(2)).await,
            Err(StoreError::NoSuchDevice)
        ));
        let mut d = device("a.1");
        d.registration_id = 30;
        s.link_device(1, &d, &[], &[], 4).await.unwrap();
        assert_eq!(s.stock(dev(2)).unwrap().prekeys, 0);
        assert!(s.messages(dev(2), 0, 10).unwrap().is_empty());
        assert_eq!(s.devices(1).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_send_to_every_device_is_all_or_nothing() {
        let (_dir, s) = account(1).await;
        let sent = s
            .enqueue_all(1, None, vec![to(2, 11), to(1, 7)], 2)
            .await
            .unwrap();
        assert_eq!(sent[0].recipient_address, "a.2");
        assert_eq!(s.messages(dev(1), 0, 10).unwrap()[0].id, sent[1].id);
        // Device 1's queue fills up: nothing reaches device 2 either.
        s.enqueue(dev(1), message("y", 1), 10).await.unwrap();
        let full = s.enqueue_all(1, None, vec![to(1, 7), to(2, 11)], 2).await;
        assert!(matches!(full, Err(StoreError::QueueFull)));
        assert_eq!(s.queue_len(dev(2)).unwrap(), 1);
        let stale = s.enqueue_all(1, None, vec![to(1, 7), to(2, 99)], 9).await;
        assert!(matches!(
            stale,
            Err(StoreError::DevicesChanged(Mismatch { ref stale, .. })) if stale == &[2]
        ));
        let missing = s.enqueue_all(1, None, vec![to(1, 7), to(5, 1)], 9).await;
        let want = Mismatch {
            stale: vec![],
            missing: vec![2],
            extra: vec![5],
        };
        assert!(matches!(missing, Err(StoreError::DevicesChanged(m)) if m == want));
        // Writing to one's own account leaves the sending device out.
        let own = s.enqueue_all(1, Some(2), vec![to(1, 7)], 9).await.unwrap();
        assert_eq!(own.len(), 1);
        assert_eq!(s.queue_len(dev(2)).unwrap(), 1);
    }

    #[tokio::test]
    async fn deleting_the_devices_removes_the_linked_ones_too() {
        let (_dir, s) = account(2).await;
        s.enqueue(dev(3), message("z", 1), 10).await.unwrap();
        s.delete_device(1).await.unwrap();
        assert!(s.devices(1).unwrap().is_empty());
        assert_eq!(s.linked_devices.len(), 0);
        assert_eq!(s.prekeys.len(), 0);
        assert_eq!(s.messages.len(), 0);
        let _: Vec<Message> = s.messages(dev(3), 0, 10).unwrap();
    }

    #[tokio::test]
    async fn per_device_verbs_act_on_that_device_only() {
        let (_dir, s) = account(1).await;
        let k = crate::models::SignedPreKey {
            key_id: 99,
            public_key: vec![5; 33],
            signature: vec![1; 64],
        };
        s.set_signed_prekey(dev(2), &k).await.unwrap();
        assert_eq!(s.devices(1).unwrap()[1].signed_prekey.key_id, 99);
        assert_eq!(s.device(1).unwrap().unwrap().signed_prekey.key_id, 1);
        s.add_prekeys(primary(1), &ec(1..=5), 10).await.unwrap();
        assert_eq!(s.stock(dev(1)).unwrap().prekeys, 5);
        assert_eq!(s.stock(dev(2)).unwrap().prekeys, 3);
        assert!(matches!(
            s.add_prekeys(dev(3), &ec(1..=1), 10).await,
            Err(StoreError::NoDevice)
        ));
    }
}
