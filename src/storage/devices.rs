//! Devices: one per user, created together with its first keys, removed with all of them.

use sled::Transactional;

use super::keys;
use super::{abort, decode, decode_tx, encode, Storage, StoreError};
use crate::models::{Device, PreKey, SignedPreKey};

/// A device's key stock, as `GET /device` and `GET /prekeys` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stock {
    pub prekeys: u32,
    pub kyber_prekeys: u32,
}

impl Storage {
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
        let _writing = self.writing().await;
        // Keys and messages left behind by an interrupted delete (or a send racing a delete) must
        // not come back with the new device: clear them in the same step.
        self.clear_queue(user_id)?;
        let stale_ec = self.prefix_keys(&self.prekeys, user_id)?;
        let stale_kyber = self.prefix_keys(&self.kyber_prekeys, user_id)?;
        let record = encode(device);
        let kyber_records: Vec<_> = kyber
            .iter()
            .map(|k| (keys::prekey(user_id, k.key_id), encode(k)))
            .collect();
        let id = keys::user(user_id);
        (&self.devices, &self.prekeys, &self.kyber_prekeys).transaction(|(devices, ec, ky)| {
            if devices.get(id)?.is_some() {
                return abort(StoreError::DeviceExists);
            }
            for k in &stale_ec {
                ec.remove(k.as_ref())?;
            }
            for k in &stale_kyber {
                ky.remove(k.as_ref())?;
            }
            for k in prekeys {
                ec.insert(&keys::prekey(user_id, k.key_id), k.public_key.as_slice())?;
            }
            for (k, v) in &kyber_records {
                ky.insert(k, v.as_slice())?;
            }
            devices.insert(&id, record.as_slice())?;
            Ok(())
        })?;
        self.sync().await
    }

    /// Removes the user's device, its keys and the messages queued for it.
    pub async fn delete_device(&self, user_id: u64) -> Result<(), StoreError> {
        let _writing = self.writing().await;
        if !self.remove_device_data(user_id)? {
            return Err(StoreError::NoDevice);
        }
        self.sync().await
    }

    /// Removes a user's device record, keys and queued messages; tells whether a device existed.
    pub(super) fn remove_device_data(&self, user_id: u64) -> Result<bool, StoreError> {
        let existed = self.devices.remove(keys::user(user_id))?.is_some();
        for tree in [&self.prekeys, &self.kyber_prekeys] {
            let mut batch = sled::Batch::default();
            for k in self.prefix_keys(tree, user_id)? {
                batch.remove(k);
            }
            tree.apply_batch(batch)?;
        }
        self.clear_queue(user_id)?;
        Ok(existed)
    }

    /// Replaces the signed prekey of the user's device.
    pub async fn set_signed_prekey(
        &self,
        user_id: u64,
        key: &SignedPreKey,
    ) -> Result<(), StoreError> {
        let _writing = self.writing().await;
        self.update_device(user_id, |d| d.signed_prekey = key.clone())?;
        self.sync().await
    }

    /// Applies `change` to the stored device in a transaction.
    pub(super) fn update_device(
        &self,
        user_id: u64,
        change: impl Fn(&mut Device),
    ) -> Result<Device, StoreError> {
        let id = keys::user(user_id);
        Ok(self.devices.transaction(|devices| {
            let Some(v) = devices.get(id)? else {
                return abort(StoreError::NoDevice);
            };
            let mut device: Device = decode_tx(&v)?;
            change(&mut device);
            devices.insert(&id, encode(&device))?;
            Ok(device)
        })?)
    }

    pub fn stock(&self, user_id: u64) -> Result<Stock, StoreError> {
        let (prekeys, kyber_prekeys) = self.prekey_counts(user_id)?;
        Ok(Stock {
            prekeys,
            kyber_prekeys,
        })
    }

    fn prefix_keys(&self, tree: &sled::Tree, user_id: u64) -> Result<Vec<sled::IVec>, StoreError> {
        tree.scan_prefix(keys::user(user_id))
            .keys()
            .map(|k| k.map_err(StoreError::from))
            .collect()
    }
}

/// Totals over the whole database, for `signal-server stats` and `/metrics`.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub users: u64,
    pub devices: u64,
    pub queued_messages: u64,
    pub prekeys: u64,
    pub kyber_prekeys: u64,
    pub invites: u64,
}

impl Storage {
    /// Totals over the whole database (counts every tree; for operators, not request paths).
    pub fn totals(&self) -> Result<Totals, StoreError> {
        Ok(Totals {
            users: self.users.len() as u64,
            devices: self.devices.len() as u64,
            invites: self.invites.len() as u64,
            prekeys: self.prekeys.len() as u64,
            kyber_prekeys: self.kyber_prekeys.len() as u64,
            queued_messages: self.messages.len() as u64,
        })
    }
}
