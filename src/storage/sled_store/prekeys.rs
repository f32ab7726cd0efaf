//! One-time prekeys: uploads under a per-device cap, and the pop that hands each key out once.

use super::totals::Count;
use super::{count_prefix, decode, encode, keys, SledStore, StoreError};
use crate::models::{DeviceRef, Popped, PreKey, SignedPreKey};

impl SledStore {
    /// Stores one-time EC prekeys (a stored keyId is replaced). Fails with `TooManyPrekeys`,
    /// storing nothing, if the stock would exceed `cap`. Returns the new stock.
    pub async fn add_prekeys(
        &self,
        device: DeviceRef,
        new: &[PreKey],
        cap: u32,
    ) -> Result<u32, StoreError> {
        let _writing = self.writing().await?;
        let records = |slot| {
            new.iter()
                .map(|k| (keys::prekey(slot, k.key_id), k.public_key.clone()))
                .collect()
        };
        let tree = (&self.prekeys, Count::Prekeys);
        let count = self.add_keys(device, tree, records, cap, None)?;
        self.sync().await?;
        Ok(count)
    }

    /// Stores one-time Kyber prekeys and/or replaces the last-resort Kyber prekey.
    pub async fn add_kyber_prekeys(
        &self,
        device: DeviceRef,
        new: &[SignedPreKey],
        last_resort: Option<&SignedPreKey>,
        cap: u32,
    ) -> Result<u32, StoreError> {
        let _writing = self.writing().await?;
        let records = |slot| {
            new.iter()
                .map(|k| (keys::prekey(slot, k.key_id), encode(k)))
                .collect()
        };
        let tree = (&self.kyber_prekeys, Count::KyberPrekeys);
        let count = self.add_keys(device, tree, records, cap, last_resort)?;
        self.sync().await?;
        Ok(count)
    }

    /// Checks the cap and writes the keys in one batch; uploads of one user are serialised by a
    /// striped lock (pops only lower the stock, so they need not wait).
    fn add_keys(
        &self,
        device: DeviceRef,
        (tree, which): (&sled::Tree, Count),
        records: impl Fn(u64) -> Vec<([u8; 12], Vec<u8>)>,
        cap: u32,
        last_resort: Option<&SignedPreKey>,
    ) -> Result<u32, StoreError> {
        let _upload = self.user_lock(device.user);
        let slot = self.slot_of(device)?;
        let records = records(slot);
        let before = count_prefix(tree, slot)?;
        let mut count = before;
        for (k, _) in &records {
            if !tree.contains_key(k)? {
                count += 1;
            }
        }
        if count > cap {
            return Err(StoreError::TooManyPrekeys);
        }
        let mut batch = sled::Batch::default();
        for (k, v) in &records {
            batch.insert(k.as_slice(), v.as_slice());
        }
        tree.apply_batch(batch)?;
        // Exact unless a pop takes a key this upload replaces in the same instant (the total
        // is then one low until the next start); pops do not wait for uploads.
        self.count(which, i64::from(count) - i64::from(before));
        if let Some(key) = last_resort {
            self.update_device(device, |d| d.last_resort_kyber = Some(key.clone()))?;
        }
        Ok(count)
    }

    /// Takes the lowest-keyId one-time EC prekey and one-time Kyber prekey of a device, each at
    /// most once ever, and returns once the removal is on disk. The last-resort Kyber key is not
    /// taken here (it lives in the device record).
    pub async fn pop_prekeys(&self, device: DeviceRef) -> Result<Popped, StoreError> {
        let _writing = self.writing().await?;
        let Some(slot) = self.slot(device)? else {
            return Ok(Popped::default());
        };
        let ec = pop_lowest(&self.prekeys, slot)?;
        self.count(Count::Prekeys, -i64::from(ec.is_some()));
        let kyber = pop_lowest(&self.kyber_prekeys, slot)?;
        self.count(Count::KyberPrekeys, -i64::from(kyber.is_some()));
        let popped = Popped {
            prekey: ec.map(|(id, v)| PreKey {
                key_id: id,
                public_key: v.to_vec(),
            }),
            kyber: kyber.map(|(_, v)| decode::<SignedPreKey>(&v)).transpose()?,
        };
        if popped.prekey.is_some() || popped.kyber.is_some() {
            self.sync().await?;
        }
        Ok(popped)
    }

    /// One-time prekeys in stock under a slot: `(EC, Kyber)`.
    pub(super) fn prekey_counts(&self, slot: u64) -> Result<(u32, u32), StoreError> {
        Ok((
            count_prefix(&self.prekeys, slot)?,
            count_prefix(&self.kyber_prekeys, slot)?,
        ))
    }
}

/// Removes and returns the lowest key under `slot` in `tree`: a compare-and-swap loop, so that
/// of several concurrent takers exactly one gets each key.
fn pop_lowest(tree: &sled::Tree, slot: u64) -> Result<Option<(u32, sled::IVec)>, StoreError> {
    loop {
        let Some((k, v)) = tree.scan_prefix(keys::user(slot)).next().transpose()? else {
            return Ok(None);
        };
        if tree.compare_and_swap(&k, Some(&v), None::<&[u8]>)?.is_ok() {
            return Ok(Some((keys::prekey_id(&k).unwrap_or_default(), v)));
        }
        // Another taker removed (or an upload replaced) that key first: look again.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Device;

    use crate::storage::fixtures::{device as fixture, ec, primary};

    fn device() -> Device {
        fixture("a.1")
    }

    #[tokio::test]
    async fn uploads_over_the_cap_store_nothing() {
        let (_dir, s) = super::super::temp();
        let user = s.create_user("a", "", "h".into(), None).await.unwrap();
        assert_eq!(user.id, 1, "a fresh database numbers users from 1");
        s.create_device(1, &device(), &ec(0..5), &[]).await.unwrap();
        assert!(matches!(
            s.add_prekeys(primary(1), &ec(10..20), 10).await,
            Err(StoreError::TooManyPrekeys)
        ));
        assert_eq!(s.stock(primary(1)).unwrap().prekeys, 5);
        // Replacing stored ids does not count twice.
        assert_eq!(s.add_prekeys(primary(1), &ec(0..10), 10).await.unwrap(), 10);
    }

    #[tokio::test]
    async fn concurrent_pops_hand_each_key_out_once() {
        let (_dir, s) = super::super::temp();
        let user = s.create_user("a", "", "h".into(), None).await.unwrap();
        assert_eq!(user.id, 1, "a fresh database numbers users from 1");
        s.create_device(1, &device(), &ec(1..=50), &[])
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..5 {
                    if let Some(k) = s.pop_prekeys(primary(1)).await.unwrap().prekey {
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
        assert_eq!(s.stock(primary(1)).unwrap().prekeys, 0);
    }
}
