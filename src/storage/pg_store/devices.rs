//! Devices: the primary (created with `POST /device`) and the linked ones, each created
//! together with its first keys and removed with all of them and its queue (by cascade).
//!
//! The account lock: links, unlinks and deletes of an account's devices first lock its user row
//! (`FOR NO KEY UPDATE`: it does not conflict with the key-share locks that inserting a device
//! takes, nor with sends, which lock device rows), so they run one after the other on every
//! instance and each sees the devices the one before it left. Device rows, where a verb locks
//! several, are locked in `device_id` order (`lock_devices`): after the account lock, never
//! before it.

use tokio_postgres::Row;

use super::Cached;

use super::{db_id, device_id, keys, to_u32, PgStore};
use crate::models::{Device, DeviceRef, PreKey, SignedPreKey};
use crate::storage::{check_link, linked_address, Stock, StoreError};

/// The columns `device` reads, from `devices d` joined with its last-resort Kyber key `k`.
pub(super) const DEVICE_COLUMNS: &str = "d.address, d.registration_id, d.identity_key, \
     d.signed_prekey_id, d.signed_prekey, d.signed_prekey_signature, k.key_id, k.public_key, \
     k.signature";

/// `devices d` with its last-resort Kyber key, if it has one.
pub(super) const DEVICE_FROM: &str = "devices d LEFT JOIN kyber_prekeys k ON k.last_resort \
     AND (k.user_id, k.device_id) = (d.user_id, d.device_id)";

impl PgStore {
    /// The account's primary device.
    pub async fn device(&self, user_id: u64) -> Result<Option<Device>, StoreError> {
        self.timed(async {
            let row = self
                .client()
                .await?
                .fetch_opt(
                    &format!(
                        "SELECT {DEVICE_COLUMNS} FROM {DEVICE_FROM} \
                         WHERE d.user_id = $1 AND d.is_primary"
                    ),
                    &[&db_id(user_id)],
                )
                .await?;
            row.as_ref().map(device).transpose()
        })
        .await
    }

    /// The device's stamp (see `Storage::device_stamp`): its row's incarnation.
    pub async fn device_stamp(&self, at: DeviceRef) -> Result<Option<u64>, StoreError> {
        self.timed(async {
            let row = self
                .client()
                .await?
                .fetch_opt(
                    "SELECT incarnation FROM devices WHERE user_id = $1 AND device_id = $2",
                    &[&db_id(at.user), &device_id(at.device)],
                )
                .await?;
            Ok(row.map(|r| r.get::<_, i64>(0) as u64))
        })
        .await
    }

    /// Every device of the account: the primary first, then the linked ones by id.
    pub async fn devices(&self, user_id: u64) -> Result<Vec<Device>, StoreError> {
        self.timed(async {
            let rows = self
                .client()
                .await?
                .fetch_all(
                    &format!(
                        "SELECT {DEVICE_COLUMNS} FROM {DEVICE_FROM} WHERE d.user_id = $1 \
                         ORDER BY d.is_primary DESC, d.device_id"
                    ),
                    &[&db_id(user_id)],
                )
                .await?;
            rows.iter().map(device).collect()
        })
        .await
    }

    /// Creates the account's primary device (its id is the one in its address) with its first
    /// one-time keys, all or nothing: `NoUser` when the user is gone, `DeviceExists` when it
    /// has a primary (the unique indexes decide between two concurrent creates).
    pub async fn create_device(
        &self,
        user_id: u64,
        device: &Device,
        prekeys: &[PreKey],
        kyber: &[SignedPreKey],
    ) -> Result<(), StoreError> {
        self.retrying(move || async move {
            let mut client = self.client().await?;
            let tx = super::begin(&mut client).await?;
            let at = device.of(user_id);
            insert(&tx, at, device, true).await?;
            keys::upsert_prekeys_of(&tx, at, prekeys).await?;
            keys::upsert_kyber_of(&tx, at, kyber, false).await?;
            super::commit(tx).await?;
            Ok(())
        })
        .await
    }

    /// Links a device to the account under the account lock: `check_link` against the devices
    /// it has then, the lowest free id, the primary's name in its address; stored with its
    /// first one-time keys, all or nothing. Returns it as stored.
    pub async fn link_device(
        &self,
        user_id: u64,
        device: &Device,
        prekeys: &[PreKey],
        kyber: &[SignedPreKey],
        max_devices: u32,
    ) -> Result<Device, StoreError> {
        self.retrying(move || async move {
            let mut client = self.client().await?;
            let tx = super::begin(&mut client).await?;
            let user = db_id(user_id);
            lock_account(&tx, user).await?;
            let mut devices = lock_devices(&tx, user).await?;
            // Primary first, as `check_link` expects.
            devices.sort_by_key(|(_, primary)| !*primary);
            let devices: Vec<Device> = devices.into_iter().map(|(d, _)| d).collect();
            let id = check_link(&devices, device, max_devices)?;
            let linked = Device {
                address: linked_address(&devices[0].address, id),
                ..device.clone()
            };
            let at = DeviceRef {
                user: user_id,
                device: id,
            };
            insert(&tx, at, &linked, false).await?;
            keys::upsert_prekeys_of(&tx, at, prekeys).await?;
            keys::upsert_kyber_of(&tx, at, kyber, false).await?;
            super::commit(tx).await?;
            Ok(linked)
        })
        .await
    }

    /// Removes a linked device with its keys and queue (by cascade): `NoSuchDevice`, or
    /// `PrimaryDevice` for the primary.
    pub async fn unlink_device(&self, at: DeviceRef) -> Result<(), StoreError> {
        self.retrying(move || async move {
            let mut client = self.client().await?;
            let tx = super::begin(&mut client).await?;
            let user = db_id(at.user);
            lock_account(&tx, user).await?;
            let id = device_id(at.device);
            let row = tx
                .fetch_opt(
                    "SELECT is_primary FROM devices WHERE user_id = $1 AND device_id = $2",
                    &[&user, &id],
                )
                .await?
                .ok_or(StoreError::NoSuchDevice)?;
            if row.get::<_, bool>(0) {
                return Err(StoreError::PrimaryDevice);
            }
            tx.exec(
                "DELETE FROM devices WHERE user_id = $1 AND device_id = $2",
                &[&user, &id],
            )
            .await?;
            super::commit(tx).await?;
            Ok(())
        })
        .await
    }

    /// Removes every device of the account, their keys and the messages queued for them.
    pub async fn delete_device(&self, user_id: u64) -> Result<(), StoreError> {
        self.retrying(move || async move {
            let mut client = self.client().await?;
            let tx = super::begin(&mut client).await?;
            let user = db_id(user_id);
            lock_account(&tx, user).await?;
            if lock_devices(&tx, user).await?.is_empty() {
                return Err(StoreError::NoDevice);
            }
            tx.exec("DELETE FROM devices WHERE user_id = $1", &[&user])
                .await?;
            super::commit(tx).await?;
            Ok(())
        })
        .await
    }

    /// Replaces the signed prekey of one device (`NoDevice` if it is gone).
    pub async fn set_signed_prekey(
        &self,
        at: DeviceRef,
        key: &SignedPreKey,
    ) -> Result<(), StoreError> {
        self.timed(async {
            let n = self
                .client()
                .await?
                .exec(
                    "UPDATE devices SET signed_prekey_id = $3, signed_prekey = $4, \
                     signed_prekey_signature = $5 WHERE user_id = $1 AND device_id = $2",
                    &[
                        &db_id(at.user),
                        &device_id(at.device),
                        &i64::from(key.key_id),
                        &key.public_key,
                        &key.signature,
                    ],
                )
                .await?;
            if n == 0 {
                return Err(StoreError::NoDevice);
            }
            Ok(())
        })
        .await
    }

    /// One device's one-time keys in stock (zero for a device that does not exist).
    pub async fn stock(&self, at: DeviceRef) -> Result<Stock, StoreError> {
        self.timed(async {
            let client = self.client().await?;
            let (prekeys, kyber_prekeys) = keys::counts(&client, at).await?;
            Ok(Stock {
                prekeys,
                kyber_prekeys,
            })
        })
        .await
    }
}

/// Takes the account lock (see the module doc) until the transaction ends. A user that is gone
/// has no devices: the verbs then find none.
pub(super) async fn lock_account(tx: &impl Cached, user: i64) -> Result<(), StoreError> {
    tx.fetch_opt(
        "SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE",
        &[&user],
    )
    .await?;
    Ok(())
}

/// Locks every device row of the account in `device_id` order (`FOR NO KEY UPDATE`, the lock a
/// queue's or a prekey stock's cap is checked under) until the transaction ends, and reads them
/// by id, each with whether it is the primary. A row deleted while this waited for it is left
/// out; one inserted meanwhile is not seen (a link or create serialised after this).
pub(super) async fn lock_devices(
    tx: &impl Cached,
    user: i64,
) -> Result<Vec<(Device, bool)>, StoreError> {
    let rows = tx
        .fetch_all(
            &format!(
                "SELECT {DEVICE_COLUMNS}, d.is_primary FROM {DEVICE_FROM} WHERE d.user_id = $1 \
                 ORDER BY d.device_id FOR NO KEY UPDATE OF d"
            ),
            &[&user],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((device(row)?, row.get::<_, bool>(9))))
        .collect()
}

/// Writes a device at `at` (`DeviceExists` if that id, or for a `primary` the account's
/// primary, is taken) with its last-resort Kyber key.
pub(super) async fn insert(
    tx: &impl Cached,
    at: DeviceRef,
    d: &Device,
    primary: bool,
) -> Result<(), StoreError> {
    let key = &d.signed_prekey;
    tx.exec(
        "INSERT INTO devices (user_id, device_id, is_primary, address, registration_id, \
         identity_key, signed_prekey_id, signed_prekey, signed_prekey_signature) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &db_id(at.user),
            &device_id(at.device),
            &primary,
            &d.address,
            &i64::from(d.registration_id),
            &d.identity_key,
            &i64::from(key.key_id),
            &key.public_key,
            &key.signature,
        ],
    )
    .await?;
    if let Some(last_resort) = &d.last_resort_kyber {
        keys::upsert_kyber_of(tx, at, std::slice::from_ref(last_resort), true).await?;
    }
    Ok(())
}

pub(super) fn device(row: &Row) -> Result<Device, StoreError> {
    device_at(row, 0)
}

/// A device from `DEVICE_COLUMNS`, the first of them at column `at`.
pub(super) fn device_at(row: &Row, at: usize) -> Result<Device, StoreError> {
    let last_resort = match row.get::<_, Option<i64>>(at + 6) {
        Some(key_id) => Some(SignedPreKey {
            key_id: to_u32(key_id, "key id")?,
            public_key: row.get(at + 7),
            signature: row.get(at + 8),
        }),
        None => None,
    };
    Ok(Device {
        address: row.get(at),
        registration_id: to_u32(row.get(at + 1), "registration id")?,
        identity_key: row.get(at + 2),
        signed_prekey: SignedPreKey {
            key_id: to_u32(row.get(at + 3), "key id")?,
            public_key: row.get(at + 4),
            signature: row.get(at + 5),
        },
        last_resort_kyber: last_resort,
    })
}
