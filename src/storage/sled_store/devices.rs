//! The primary device: created together with its first keys, removed with all of them (and
//! every linked device, see `linked`).

use sled::Transactional;

use super::keys;
use super::totals::Count;
use super::{abort, decode, encode, SledStore, StoreError};
use crate::models::{Device, DeviceRef, PreKey, SignedPreKey};

/// A device's key stock, as `GET /device` and `GET /prekeys` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stock {
    pub prekeys: u32,
    pub kyber_prekeys: u32,
}

impl SledStore {
    pub fn device(&self, user_id: u64) -> Result<Option<Device>, StoreError> {
        match self.devices.get(keys::user(user_id))? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Creates the user's device with its first one-time keys, all or nothing.
    pub async fn create_device(
        &self,
        user_id: u64,
        device: &Device,
        prekeys: &[PreKey],
        kyber: &[SignedPreKey],
    ) -> Result<(), StoreError> {
        let _writing = self.writing().await?;
        {
            // Serialised with other creates and uploads of this user, so that the check below
            // still holds when the clean-up after it runs.
            let _user = self.user_lock(user_id);
            self.create_device_locked(user_id, device, prekeys, kyber)?;
        }
        self.sync().await
    }

    /// `create_device` under the user's lock: checks first, then clears and writes.
    fn create_device_locked(
        &self,
        user_id: u64,
        device: &Device,
        prekeys: &[PreKey],
        kyber: &[SignedPreKey],
    ) -> Result<(), StoreError> {
        let id = keys::user(user_id);
        // The user may have been deleted since their token was checked (the body arrives
        // later): `delete_user` removes the user record, then the device under this lock, so
        // a device written after that would belong to no one.
        if !self.users.contains_key(id)? {
            return Err(StoreError::NoUser);
        }
        // A refused create changes nothing: check before the clean-up below, which is not part
        // of the transaction (a transaction cannot scan).
        if self.devices.contains_key(id)? {
            return Err(StoreError::DeviceExists);
        }
        // Keys and messages left behind by an interrupted delete (or a send racing a delete) must
        // not come back with the new device. With no device, nothing else can be queued for this
        // user meanwhile (a send checks for the device).
        self.remove_all_linked(user_id)?;
        self.clear_idempotency(user_id)?;
        self.clear_queue(user_id)?;
        let stale_ec = self.prefix_keys(&self.prekeys, user_id)?;
        let stale_kyber = self.prefix_keys(&self.kyber_prekeys, user_id)?;
        let record = encode(device);
        let kyber_records: Vec<_> = kyber
            .iter()
            .map(|k| (keys::prekey(user_id, k.key_id), encode(k)))
            .collect();
        let tx = (&self.devices, &self.prekeys, &self.kyber_prekeys);
        // The change in key stock, counted from what the transaction really removed and added.
        let (ec_delta, kyber_delta) = tx.transaction(|(devices, ec, ky)| {
            if devices.get(id)?.is_some() {
                return abort(StoreError::DeviceExists);
            }
            let (mut ec_delta, mut kyber_delta) = (0i64, 0i64);
            for k in &stale_ec {
                ec_delta -= i64::from(ec.remove(k.as_ref())?.is_some());
            }
            for k in &stale_kyber {
                kyber_delta -= i64::from(ky.remove(k.as_ref())?.is_some());
            }
            for k in prekeys {
                let key = keys::prekey(user_id, k.key_id);
                ec_delta += i64::from(ec.insert(&key, k.public_key.as_slice())?.is_none());
            }
            for (k, v) in &kyber_records {
                kyber_delta += i64::from(ky.insert(k, v.as_slice())?.is_none());
            }
            devices.insert(&id, record.as_slice())?;
            Ok((ec_delta, kyber_delta))
        })?;
        self.count(Count::Devices, 1);
        self.count(Count::Prekeys, ec_delta);
        self.count(Count::KyberPrekeys, kyber_delta);
        Ok(())
    }

    /// Removes every device of the user with their keys and queued messages.
    pub async fn delete_device(&self, user_id: u64) -> Result<(), StoreError> {
        let _writing = self.writing().await?;
        if !self.remove_device_data(user_id)? {
            return Err(StoreError::NoDevice);
        }
        self.sync().await
    }

    /// Removes a user's devices (linked ones first, then the primary), keys and queued messages;
    /// tells whether a primary existed. Under the user's lock, like uploads and sends: one that
    /// checked for the device before this removal must not write its keys or message after the
    /// removal's scan.
    pub(super) fn remove_device_data(&self, user_id: u64) -> Result<bool, StoreError> {
        let _user = self.user_lock(user_id);
        self.remove_all_linked(user_id)?;
        let existed = self.devices.remove(keys::user(user_id))?.is_some();
        if existed {
            self.count(Count::Devices, -1);
        }
        self.clear_slot(user_id)?;
        Ok(existed)
    }

    /// Removes the keys, queued messages and idempotency records kept under a device's slot.
    pub(super) fn clear_slot(&self, slot: u64) -> Result<(), StoreError> {
        // Key by key, counting what `remove` returned: a pop racing this removal must not be
        // subtracted twice.
        for (tree, which) in [
            (&self.prekeys, Count::Prekeys),
            (&self.kyber_prekeys, Count::KyberPrekeys),
        ] {
            for k in self.prefix_keys(tree, slot)? {
                if tree.remove(k)?.is_some() {
                    self.count(which, -1);
                }
            }
        }
        self.clear_idempotency(slot)?;
        self.clear_queue(slot)
    }

    /// Replaces the signed prekey of a device.
    pub async fn set_signed_prekey(
        &self,
        device: DeviceRef,
        key: &SignedPreKey,
    ) -> Result<(), StoreError> {
        let _writing = self.writing().await?;
        self.update_device(device, |d| d.signed_prekey = key.clone())?;
        self.sync().await
    }

    /// A device's one-time keys in stock (none for a device the account does not have).
    pub fn stock(&self, device: DeviceRef) -> Result<Stock, StoreError> {
        let Some(slot) = self.slot(device)? else {
            return Ok(Stock {
                prekeys: 0,
                kyber_prekeys: 0,
            });
        };
        let (prekeys, kyber_prekeys) = self.prekey_counts(slot)?;
        Ok(Stock {
            prekeys,
            kyber_prekeys,
        })
    }

    fn prefix_keys(&self, tree: &sled::Tree, slot: u64) -> Result<Vec<sled::IVec>, StoreError> {
        tree.scan_prefix(keys::user(slot))
            .keys()
            .map(|k| k.map_err(StoreError::from))
            .collect()
    }
}
