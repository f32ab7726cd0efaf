//! One-time prekeys: uploads under a per-device cap, and the pop that hands each key out once.

use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::keys::{self, Counter};
use super::{abort, decode, decode_tx, encode, tx_counter, Storage, StoreError};
use crate::models::{Device, Popped, PreKey, SignedPreKey};

impl Storage {
    /// Stores one-time EC prekeys (a stored keyId is replaced). Fails with `TooManyPrekeys`,
    /// storing nothing, if the stock would exceed `cap`. Returns the new stock.
    pub async fn add_prekeys(
        &self,
        user_id: u64,
        new: &[PreKey],
        cap: u32,
    ) -> Result<u32, StoreError> {
        let _writing = self.writing().await;
        let records: Vec<_> = new
            .iter()
            .map(|k| (keys::prekey(user_id, k.key_id), k.public_key.clone()))
            .collect();
        let count = self.add_keys(
            user_id,
            &self.prekeys,
            Counter::PreKeys,
            &records,
            cap,
            None,
        )?;
        self.sync().await?;
        Ok(count)
    }

    /// Stores one-time Kyber prekeys and/or replaces the last-resort Kyber prekey, all or nothing.
    pub async fn add_kyber_prekeys(
        &self,
        user_id: u64,
        new: &[SignedPreKey],
        last_resort: Option<&SignedPreKey>,
        cap: u32,
    ) -> Result<u32, StoreError> {
        let _writing = self.writing().await;
        let records: Vec<_> = new
            .iter()
            .map(|k| (keys::prekey(user_id, k.key_id), encode(k)))
            .collect();
        let count = self.add_keys(
            user_id,
            &self.kyber_prekeys,
            Counter::KyberPreKeys,
            &records,
            cap,
            last_resort,
        )?;
        self.sync().await?;
        Ok(count)
    }

    fn add_keys(
        &self,
        user_id: u64,
        tree: &sled::Tree,
        which: Counter,
        records: &[([u8; 12], Vec<u8>)],
        cap: u32,
        last_resort: Option<&SignedPreKey>,
    ) -> Result<u32, StoreError> {
        let id = keys::user(user_id);
        let counter_key = keys::counter(user_id, which);
        Ok(
            (&self.devices, tree, &self.counters).transaction(|(devices, keys_tx, counters)| {
                let Some(device) = devices.get(id)? else {
                    return abort(StoreError::NoDevice);
                };
                let mut count = tx_counter(counters, &counter_key)?;
                for (k, v) in records {
                    if keys_tx.insert(k, v.as_slice())?.is_none() {
                        count += 1;
                    }
                }
                if count > cap {
                    return abort(StoreError::TooManyPrekeys);
                }
                counters.insert(&counter_key, &count.to_be_bytes())?;
                if let Some(key) = last_resort {
                    let mut device: Device = decode_tx(&device)?;
                    device.last_resort_kyber = Some(key.clone());
                    devices.insert(&id, encode(&device))?;
                }
                Ok(count)
            })?,
        )
    }

    /// Takes the lowest-keyId one-time EC prekey and one-time Kyber prekey of a user, each at most
    /// once ever, and returns once the removal is on disk. The last-resort Kyber key is not taken
    /// here (it lives in the device record).
    pub async fn pop_prekeys(&self, user_id: u64) -> Result<Popped, StoreError> {
        let _writing = self.writing().await;
        let ec_counter = keys::counter(user_id, Counter::PreKeys);
        let ky_counter = keys::counter(user_id, Counter::KyberPreKeys);
        loop {
            let ec = self
                .prekeys
                .scan_prefix(keys::user(user_id))
                .next()
                .transpose()?;
            let ky = self
                .kyber_prekeys
                .scan_prefix(keys::user(user_id))
                .next()
                .transpose()?;
            if ec.is_none() && ky.is_none() {
                return Ok(Popped::default());
            }
            let result = (&self.prekeys, &self.kyber_prekeys, &self.counters).transaction(
                |(ec_tx, ky_tx, counters)| {
                    let mut popped = Popped::default();
                    if let Some((k, _)) = &ec {
                        let Some(v) = ec_tx.remove(k)? else {
                            return Err(ConflictableTransactionError::Abort(None));
                        };
                        let key_id = keys::prekey_id(k).unwrap_or_default();
                        popped.prekey = Some(PreKey {
                            key_id,
                            public_key: v.to_vec(),
                        });
                        decrement(counters, &ec_counter)?;
                    }
                    if let Some((k, _)) = &ky {
                        let Some(v) = ky_tx.remove(k)? else {
                            return Err(ConflictableTransactionError::Abort(None));
                        };
                        let key: SignedPreKey =
                            decode(&v).map_err(|e| ConflictableTransactionError::Abort(Some(e)))?;
                        popped.kyber = Some(key);
                        decrement(counters, &ky_counter)?;
                    }
                    Ok(popped)
                },
            );
            match result {
                Ok(popped) => {
                    self.sync().await?;
                    return Ok(popped);
                }
                // Another taker removed the key we scanned: scan again.
                Err(sled::transaction::TransactionError::Abort(None)) => continue,
                Err(sled::transaction::TransactionError::Abort(Some(e))) => return Err(e),
                Err(sled::transaction::TransactionError::Storage(e)) => return Err(e.into()),
            }
        }
    }
}

fn decrement(
    counters: &sled::transaction::TransactionalTree,
    key: &[u8],
) -> Result<(), ConflictableTransactionError<Option<StoreError>>> {
    let count = counters
        .get(key)?
        .and_then(|v| keys::decode_u32(&v))
        .unwrap_or(0);
    counters.insert(key, &count.saturating_sub(1).to_be_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Device;

    fn device() -> Device {
        let spk = SignedPreKey {
            key_id: 1,
            public_key: vec![5; 33],
            signature: vec![0; 64],
        };
        Device {
            address: "a.1".into(),
            registration_id: 7,
            identity_key: vec![5; 33],
            signed_prekey: spk,
            last_resort_kyber: None,
        }
    }

    fn ec(ids: impl IntoIterator<Item = u32>) -> Vec<PreKey> {
        ids.into_iter()
            .map(|key_id| PreKey {
                key_id,
                public_key: vec![5; 33],
            })
            .collect()
    }

    #[tokio::test]
    async fn uploads_over_the_cap_store_nothing() {
        let (_dir, s) = super::super::temp();
        s.create_device(1, &device(), &ec(0..5), &[]).await.unwrap();
        assert!(matches!(
            s.add_prekeys(1, &ec(10..20), 10).await,
            Err(StoreError::TooManyPrekeys)
        ));
        assert_eq!(s.stock(1).unwrap().prekeys, 5);
        // Replacing stored ids does not count twice.
        assert_eq!(s.add_prekeys(1, &ec(0..10), 10).await.unwrap(), 10);
    }

    #[tokio::test]
    async fn concurrent_pops_hand_each_key_out_once() {
        let (_dir, s) = super::super::temp();
        s.create_device(1, &device(), &ec(1..=50), &[])
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..5 {
                    if let Some(k) = s.pop_prekeys(1).await.unwrap().prekey {
                        got.push(k.key_id);
                    }
                }
                got
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        assert_eq!(all, (1..=50).collect::<Vec<_>>());
        assert_eq!(s.stock(1).unwrap().prekeys, 0);
    }
}
