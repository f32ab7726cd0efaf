//! Devices: created together with their first keys, removed with all of them (by cascade).

use tokio_postgres::Row;

use super::Cached;

use super::{db_id, keys, to_u32, PgStore, PRIMARY};
use crate::models::{Device, PreKey, SignedPreKey};
use crate::storage::{Stock, StoreError};

impl PgStore {
    pub async fn device(&self, user_id: u64) -> Result<Option<Device>, StoreError> {
        self.timed(async {
            let row = self
                .client()
                .await?
                .fetch_opt(
                    "SELECT d.address, d.registration_id, d.identity_key, d.signed_prekey_id, \
                     d.signed_prekey, d.signed_prekey_signature, k.key_id, k.public_key, \
                     k.signature FROM devices d LEFT JOIN kyber_prekeys k ON k.last_resort \
                     AND (k.user_id, k.device_id) = (d.user_id, d.device_id) \
                     WHERE d.user_id = $1 AND d.device_id = $2",
                    &[&db_id(user_id), &PRIMARY],
                )
                .await?;
            row.as_ref().map(device).transpose()
        })
        .await
    }

    /// Creates the user's device with its first one-time keys, all or nothing: `NoUser` when
    /// the user is gone, `DeviceExists` when it has one (the primary key decides between two
    /// concurrent creates).
    pub async fn create_device(
        &self,
        user_id: u64,
        device: &Device,
        prekeys: &[PreKey],
        kyber: &[SignedPreKey],
    ) -> Result<(), StoreError> {
        self.retrying(move || async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let user = db_id(user_id);
            insert_device(&tx, user, device).await?;
            keys::upsert_prekeys(&tx, user, prekeys).await?;
            keys::upsert_kyber(&tx, user, kyber, false).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Removes the user's device, its keys and the messages queued for it.
    pub async fn delete_device(&self, user_id: u64) -> Result<(), StoreError> {
        self.retrying(move || async move {
            let n = self
                .client()
                .await?
                .exec(
                    "DELETE FROM devices WHERE user_id = $1 AND device_id = $2",
                    &[&db_id(user_id), &PRIMARY],
                )
                .await?;
            if n == 0 {
                return Err(StoreError::NoDevice);
            }
            Ok(())
        })
        .await
    }

    /// Replaces the signed prekey of the user's device.
    pub async fn set_signed_prekey(
        &self,
        user_id: u64,
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
                        &db_id(user_id),
                        &PRIMARY,
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

    /// The device's one-time keys in stock (zero for a user without a device).
    pub async fn stock(&self, user_id: u64) -> Result<Stock, StoreError> {
        self.timed(async {
            let client = self.client().await?;
            let (prekeys, kyber_prekeys) = keys::counts(&client, db_id(user_id)).await?;
            Ok(Stock {
                prekeys,
                kyber_prekeys,
            })
        })
        .await
    }
}

/// Writes the user's device (`DeviceExists` if it has one) with its last-resort Kyber key.
pub(super) async fn insert_device(
    tx: &impl Cached,
    user: i64,
    d: &Device,
) -> Result<(), StoreError> {
    let key = &d.signed_prekey;
    tx.exec(
        "INSERT INTO devices (user_id, device_id, address, registration_id, identity_key, \
         signed_prekey_id, signed_prekey, signed_prekey_signature) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &user,
            &PRIMARY,
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
        keys::upsert_kyber(tx, user, std::slice::from_ref(last_resort), true).await?;
    }
    Ok(())
}

pub(super) fn device(row: &Row) -> Result<Device, StoreError> {
    let last_resort = match row.get::<_, Option<i64>>(6) {
        Some(key_id) => Some(SignedPreKey {
            key_id: to_u32(key_id, "key id")?,
            public_key: row.get(7),
            signature: row.get(8),
        }),
        None => None,
    };
    Ok(Device {
        address: row.get(0),
        registration_id: to_u32(row.get(1), "registration id")?,
        identity_key: row.get(2),
        signed_prekey: SignedPreKey {
            key_id: to_u32(row.get(3), "key id")?,
            public_key: row.get(4),
            signature: row.get(5),
        },
        last_resort_kyber: last_resort,
    })
}
