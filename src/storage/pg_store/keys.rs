//! One-time prekeys, per device: uploads under a per-device cap (checked under the device
//! lock), and the pop that hands each key out once (one statement per pop, on the primary key).

use std::collections::BTreeMap;

use super::Cached;

use super::{db_id, device_id, to_u32, PgStore};
use crate::models::{DeviceRef, Popped, PreKey, SignedPreKey};
use crate::storage::StoreError;

impl PgStore {
    /// Stores one-time EC prekeys (a stored keyId is replaced). Fails with `TooManyPrekeys`,
    /// storing nothing, if the stock would exceed `cap`. Returns the new stock.
    pub async fn add_prekeys(
        &self,
        at: DeviceRef,
        new: &[PreKey],
        cap: u32,
    ) -> Result<u32, StoreError> {
        let ids: Vec<u32> = new.iter().map(|k| k.key_id).collect();
        let ids = &ids;
        self.retrying(move || async move {
            let mut client = self.client().await?;
            let tx = super::begin(&mut client).await?;
            let count = check_cap(&tx, at, "prekeys WHERE", ids, cap).await?;
            upsert_prekeys_of(&tx, at, new).await?;
            super::commit(tx).await?;
            Ok(count)
        })
        .await
    }

    /// Stores one-time Kyber prekeys and/or replaces the last-resort Kyber prekey; the cap
    /// counts the one-time ones.
    pub async fn add_kyber_prekeys(
        &self,
        at: DeviceRef,
        new: &[SignedPreKey],
        last_resort: Option<&SignedPreKey>,
        cap: u32,
    ) -> Result<u32, StoreError> {
        let ids: Vec<u32> = new.iter().map(|k| k.key_id).collect();
        let ids = &ids;
        self.retrying(move || async move {
            let mut client = self.client().await?;
            let tx = super::begin(&mut client).await?;
            let table = "kyber_prekeys WHERE NOT last_resort AND";
            let count = check_cap(&tx, at, table, ids, cap).await?;
            upsert_kyber_of(&tx, at, new, false).await?;
            if let Some(key) = last_resort {
                upsert_kyber_of(&tx, at, std::slice::from_ref(key), true).await?;
            }
            super::commit(tx).await?;
            Ok(count)
        })
        .await
    }

    /// Takes the lowest-keyId one-time EC prekey and one-time Kyber prekey of a device, each at
    /// most once ever (committed when it returns). The last-resort Kyber key is never taken.
    ///
    /// One statement (`POP`) takes both. Each `DELETE` names one row by its primary key,
    /// chosen by a sub-select that skips rows other takers hold, so concurrent takers (on any
    /// instance) get different keys without waiting for each other. A kind can come back empty
    /// while keys of it are still stored but all held by other takers (or by an upload
    /// replacing them); then the statement runs again for that kind, until a key is had or
    /// none is left (`POP_ROUNDS` at most).
    pub async fn pop_prekeys(&self, at: DeviceRef) -> Result<Popped, StoreError> {
        self.timed(async {
            let client = self.client().await?;
            let (user, device) = (db_id(at.user), device_id(at.device));
            let mut popped = Popped::default();
            for round in 0..POP_ROUNDS {
                if round > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                let want = (popped.prekey.is_none(), popped.kyber.is_none());
                let row = client
                    .fetch_one(POP, &[&user, &device, &want.0, &want.1])
                    .await?;
                if let Some(id) = row.get::<_, Option<i64>>(0) {
                    popped.prekey = Some(PreKey {
                        key_id: to_u32(id, "key id")?,
                        public_key: row.get(1),
                    });
                }
                if let Some(id) = row.get::<_, Option<i64>>(2) {
                    popped.kyber = Some(SignedPreKey {
                        key_id: to_u32(id, "key id")?,
                        public_key: row.get(3),
                        signature: row.get(4),
                    });
                }
                // Held by others: stored (seen by this statement's snapshot) yet not taken.
                let ec_held = popped.prekey.is_none() && row.get::<_, bool>(5);
                let kyber_held = popped.kyber.is_none() && row.get::<_, bool>(6);
                if !ec_held && !kyber_held {
                    break;
                }
            }
            Ok(popped)
        })
        .await
    }
}

/// How often `pop_prekeys` looks again for a kind whose keys were all held by other takers.
const POP_ROUNDS: usize = 20;

/// Takes the lowest EC (if `$3`) and Kyber (if `$4`) one-time prekey of a device; also tells
/// whether any of each kind is stored (as of the statement's start).
const POP: &str = "\
    WITH ec AS (DELETE FROM prekeys WHERE $3 AND (user_id, device_id, key_id) = \
      (SELECT user_id, device_id, key_id FROM prekeys \
       WHERE user_id = $1 AND device_id = $2 \
       ORDER BY key_id LIMIT 1 FOR UPDATE SKIP LOCKED) \
      RETURNING key_id, public_key), \
    ky AS (DELETE FROM kyber_prekeys WHERE $4 AND (user_id, device_id, last_resort, key_id) = \
      (SELECT user_id, device_id, last_resort, key_id FROM kyber_prekeys \
       WHERE user_id = $1 AND device_id = $2 AND NOT last_resort \
       ORDER BY key_id LIMIT 1 FOR UPDATE SKIP LOCKED) \
      RETURNING key_id, public_key, signature) \
    SELECT ec.key_id, ec.public_key, ky.key_id, ky.public_key, ky.signature, \
      EXISTS (SELECT 1 FROM prekeys WHERE user_id = $1 AND device_id = $2), \
      EXISTS (SELECT 1 FROM kyber_prekeys \
              WHERE user_id = $1 AND device_id = $2 AND NOT last_resort) \
    FROM (SELECT) AS one LEFT JOIN ec ON true LEFT JOIN ky ON true";

/// Under the device lock: the stock after adding `ids` (stored ones are replaced, not added),
/// or `TooManyPrekeys` if that is over `cap`. `from` is the table and the start of a
/// condition (`"prekeys WHERE"`).
async fn check_cap(
    tx: &impl Cached,
    at: DeviceRef,
    from: &str,
    ids: &[u32],
    cap: u32,
) -> Result<u32, StoreError> {
    lock_device(tx, at).await?;
    let mut ids: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
    ids.sort_unstable();
    ids.dedup();
    let row = tx
        .fetch_one(
            &format!(
                "SELECT count(*), count(*) FILTER (WHERE key_id = ANY($3)) FROM {from} \
                 user_id = $1 AND device_id = $2"
            ),
            &[&db_id(at.user), &device_id(at.device), &ids],
        )
        .await?;
    let (stored, replaced): (i64, i64) = (row.get(0), row.get(1));
    let count = stored + ids.len() as i64 - replaced;
    if count > i64::from(cap) {
        return Err(StoreError::TooManyPrekeys);
    }
    Ok(count as u32)
}

/// Writes EC prekeys of a device, replacing stored ones with the same id (the last of a
/// repeated id wins, as in the sled store).
pub(super) async fn upsert_prekeys_of(
    tx: &impl Cached,
    at: DeviceRef,
    keys: &[PreKey],
) -> Result<(), StoreError> {
    let unique: BTreeMap<u32, &PreKey> = keys.iter().map(|k| (k.key_id, k)).collect();
    if unique.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = unique.keys().map(|&id| i64::from(id)).collect();
    let public: Vec<&[u8]> = unique.values().map(|k| k.public_key.as_slice()).collect();
    tx.exec(
        "INSERT INTO prekeys (user_id, device_id, key_id, public_key) \
         SELECT $1, $2, k.id, k.public FROM unnest($3::bigint[], $4::bytea[]) AS k(id, public) \
         ON CONFLICT (user_id, device_id, key_id) DO UPDATE SET public_key = excluded.public_key",
        &[&db_id(at.user), &device_id(at.device), &ids, &public],
    )
    .await?;
    Ok(())
}

/// Writes one-time Kyber prekeys, or (`last_resort`) replaces the device's last-resort one.
pub(super) async fn upsert_kyber_of(
    tx: &impl Cached,
    at: DeviceRef,
    keys: &[SignedPreKey],
    last_resort: bool,
) -> Result<(), StoreError> {
    let unique: BTreeMap<u32, &SignedPreKey> = keys.iter().map(|k| (k.key_id, k)).collect();
    if unique.is_empty() {
        return Ok(());
    }
    let (user_id, device) = (db_id(at.user), device_id(at.device));
    if last_resort {
        tx.exec(
            "DELETE FROM kyber_prekeys WHERE user_id = $1 AND device_id = $2 AND last_resort",
            &[&user_id, &device],
        )
        .await?;
    }
    let ids: Vec<i64> = unique.keys().map(|&id| i64::from(id)).collect();
    let public: Vec<&[u8]> = unique.values().map(|k| k.public_key.as_slice()).collect();
    let signatures: Vec<&[u8]> = unique.values().map(|k| k.signature.as_slice()).collect();
    tx.exec(
        "INSERT INTO kyber_prekeys (user_id, device_id, last_resort, key_id, public_key, signature) \
         SELECT $1, $2, $3, k.id, k.public, k.signature \
         FROM unnest($4::bigint[], $5::bytea[], $6::bytea[]) AS k(id, public, signature) \
         ON CONFLICT (user_id, device_id, last_resort, key_id) \
         DO UPDATE SET public_key = excluded.public_key, signature = excluded.signature",
        &[&user_id, &device, &last_resort, &ids, &public, &signatures],
    )
    .await?;
    Ok(())
}

/// One-time keys in stock for a device: `(EC, Kyber)`.
pub(super) async fn counts(client: &impl Cached, at: DeviceRef) -> Result<(u32, u32), StoreError> {
    let row = client
        .fetch_one(
            "SELECT (SELECT count(*) FROM prekeys WHERE user_id = $1 AND device_id = $2), \
             (SELECT count(*) FROM kyber_prekeys \
              WHERE user_id = $1 AND device_id = $2 AND NOT last_resort)",
            &[&db_id(at.user), &device_id(at.device)],
        )
        .await?;
    let n = |i: usize| u32::try_from(row.get::<_, i64>(i)).unwrap_or(u32::MAX);
    Ok((n(0), n(1)))
}

/// Locks one device row until the transaction ends, so that uploads and sends of one device
/// are checked and written one at a time across every instance; `NoDevice` without it.
/// `FOR NO KEY UPDATE`: it does not wait for (nor block) rows inserted under the device.
pub(super) async fn lock_device(tx: &impl Cached, at: DeviceRef) -> Result<(), StoreError> {
    tx.fetch_opt(
        "SELECT 1 FROM devices WHERE user_id = $1 AND device_id = $2 FOR NO KEY UPDATE",
        &[&db_id(at.user), &device_id(at.device)],
    )
    .await?
    .ok_or(StoreError::NoDevice)
    .map(drop)
}
