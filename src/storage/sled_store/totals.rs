//! Totals over the whole database for `signal-server stats` and `/metrics`, without a scan per
//! request: every tree is counted once per process (writers held off meanwhile, so no write is
//! counted twice or missed), then the write verbs keep the counts up to date.
//!
//! The count stops at the first record it cannot read: sled's iterator returns the same error
//! forever, so counting past it (as `Tree::len` does) would spin. A damaged database then has
//! no totals until it is repaired, and says so (`signal-server fsck` names the damage).

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

use super::{SledStore, StoreError};

/// What the write verbs count.
#[derive(Debug, Clone, Copy)]
pub(super) enum Count {
    Users,
    Devices,
    QueuedMessages,
    Prekeys,
    KyberPrekeys,
    Invites,
}

/// Totals over the whole database.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub users: u64,
    pub devices: u64,
    pub queued_messages: u64,
    pub prekeys: u64,
    pub kyber_prekeys: u64,
    pub invites: u64,
}

/// The counts, and whether (and how) the first count ended.
#[derive(Default)]
pub(super) struct Counters {
    counts: [AtomicI64; 6],
    counted: tokio::sync::OnceCell<Result<(), String>>,
}

impl SledStore {
    /// Adds `delta` to a total; called by a write verb, while it holds the write gate, once its
    /// write has succeeded.
    pub(super) fn count(&self, which: Count, delta: i64) {
        if delta != 0 {
            self.counters.counts[which as usize].fetch_add(delta, Relaxed);
        }
    }

    /// Counts every tree, the first time it is called in this process; later calls return the
    /// first one's outcome at once. Writers wait while it runs.
    pub async fn count_totals(&self) -> Result<(), StoreError> {
        let outcome = self
            .counters
            .counted
            .get_or_init(|| async {
                let _exclusive = self.gate.write().await;
                let this = self.clone();
                tokio::task::spawn_blocking(move || this.count_trees())
                    .await
                    .unwrap_or_else(|e| Err(format!("the count stopped: {e}")))
            })
            .await;
        outcome.clone().map_err(StoreError::Corrupt)
    }

    /// The totals, once `count_totals` has run; an error if it has not, or met damage.
    pub fn totals(&self) -> Result<Totals, StoreError> {
        match self.counters.counted.get() {
            Some(Ok(())) => {
                let get =
                    |which: Count| self.counters.counts[which as usize].load(Relaxed).max(0) as u64;
                Ok(Totals {
                    users: get(Count::Users),
                    devices: get(Count::Devices),
                    queued_messages: get(Count::QueuedMessages),
                    prekeys: get(Count::Prekeys),
                    kyber_prekeys: get(Count::KyberPrekeys),
                    invites: get(Count::Invites),
                })
            }
            Some(Err(e)) => Err(StoreError::Corrupt(e.clone())),
            None => Err(StoreError::Db("the totals are still being counted".into())),
        }
    }

    fn count_trees(&self) -> Result<(), String> {
        // Linked devices are devices too: the two trees add up to one count.
        let trees = [
            (Count::Users, &self.users, super::USERS),
            (Count::Devices, &self.devices, super::DEVICES),
            (Count::Devices, &self.linked_devices, super::LINKED_DEVICES),
            (Count::QueuedMessages, &self.messages, super::MESSAGES),
            (Count::Prekeys, &self.prekeys, super::PREKEYS),
            (
                Count::KyberPrekeys,
                &self.kyber_prekeys,
                super::KYBER_PREKEYS,
            ),
            (Count::Invites, &self.invites, super::INVITES),
        ];
        for count in &self.counters.counts {
            count.store(0, Relaxed);
        }
        for (which, tree, name) in trees {
            let n = super::count_keys(tree.iter()).map_err(|e| {
                let why = format!("tree {name} cannot be read ({e}); run `signal-server fsck`");
                log::error!("counting the database: {why}");
                why
            })?;
            self.count(which, i64::try_from(n).unwrap_or(i64::MAX));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Device, DeviceRef, Message};
    use crate::storage::fixtures;

    fn device() -> Device {
        fixtures::device("a.1")
    }

    fn message() -> Message {
        fixtures::message("x", 1)
    }

    #[tokio::test]
    async fn kept_totals_match_a_recount_after_every_kind_of_write() {
        let (_dir, s) = super::super::temp();
        s.count_totals().await.unwrap();
        s.create_invite(b"inv", 1).await.unwrap();
        s.create_invite(b"inv2", 1).await.unwrap();
        let a = s
            .create_user("a", "", "h".into(), Some(b"inv"))
            .await
            .unwrap();
        let b = s.create_user("b", "", "h".into(), None).await.unwrap();
        let c = s.create_user("c", "", "h".into(), None).await.unwrap();
        for u in [a.id, b.id, c.id] {
            s.create_device(u, &device(), &fixtures::ec(0..5), &[])
                .await
                .unwrap();
        }
        assert!(s
            .create_device(a.id, &device(), &fixtures::ec(0..9), &[])
            .await
            .is_err());
        s.add_prekeys(fixtures::primary(a.id), &fixtures::ec(3..8), 100)
            .await
            .unwrap();
        s.pop_prekeys(fixtures::primary(b.id)).await.unwrap();
        let m = s
            .enqueue(fixtures::primary(a.id), message(), 10)
            .await
            .unwrap();
        for _ in 0..3 {
            s.enqueue(fixtures::primary(b.id), message(), 10)
                .await
                .unwrap();
            s.enqueue(fixtures::primary(c.id), message(), 10)
                .await
                .unwrap();
        }
        s.delete_messages(fixtures::primary(a.id), &[m.id, 12345])
            .await
            .unwrap();
        s.delete_device(b.id).await.unwrap();
        s.delete_user(c.id).await.unwrap();

        let kept = s.totals().unwrap();
        s.count_trees().unwrap();
        assert_eq!(kept, s.totals().unwrap());
        let want = Totals {
            users: 2,
            devices: 1,
            queued_messages: 0,
            prekeys: 8,
            kyber_prekeys: 0,
            invites: 1,
        };
        assert_eq!(kept, want);
    }

    #[tokio::test]
    async fn linked_devices_count_as_devices_kept_and_recounted() {
        let (_dir, s) = super::super::temp();
        s.count_totals().await.unwrap();
        let a = s.create_user("a", "", "h".into(), None).await.unwrap();
        s.create_device(a.id, &device(), &fixtures::ec(0..2), &[])
            .await
            .unwrap();
        for registration_id in [11, 12] {
            let linked = Device {
                registration_id,
                ..device()
            };
            s.link_device(a.id, &linked, &fixtures::ec(0..3), &[], 6)
                .await
                .unwrap();
        }
        let third = DeviceRef {
            user: a.id,
            device: 3,
        };
        s.enqueue(third, message(), 10).await.unwrap();
        s.unlink_device(DeviceRef { device: 2, ..third })
            .await
            .unwrap();
        let kept = s.totals().unwrap();
        s.count_trees().unwrap();
        assert_eq!(kept, s.totals().unwrap());
        let counts = (kept.devices, kept.prekeys, kept.queued_messages);
        assert_eq!(counts, (2, 5, 1));
        s.delete_device(a.id).await.unwrap();
        s.count_trees().unwrap();
        assert_eq!(s.totals().unwrap().devices, 0);
    }
}
