//! Who the callers are, kept per instance: an account's user record and its devices as their
//! own requests need them, so that an authenticated request costs no storage read for its
//! caller (on PostgreSQL, no round trip).
//!
//! What is cached can only go stale in two ways, and both are covered:
//! - **Something went away or was revoked** (a device unlinked or deleted, the account deleted,
//!   the password changed): every such write goes through the hub (`Hub::close`,
//!   `close_account`, `revoke`), on this instance after its commit and on the others through
//!   their signals, and the hub forgets the account here. Signals can be lost (the listening
//!   connection dropped): the hub then forgets everything (`resync_all`), and no entry is used
//!   longer than `TTL` in any case.
//! - **Something new appeared** (a device linked or created, a token of a newer version): a
//!   caller the cached entry does not account for makes the entry be read again once, before
//!   the request is refused.
//!
//! An entry read while the account was being forgotten is not kept (the `epoch` check), so a
//! read that raced a revocation cannot put the old state back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::models::Principal;
use crate::storage::{Storage, StoreError};

/// The longest an entry is used without reading the account again.
pub const TTL: Duration = Duration::from_secs(5);

const SHARDS: usize = 16;
/// Accounts per shard; a full shard is emptied (memory stays bounded, ~300 bytes an entry).
const SHARD_ENTRIES: usize = 4096;

struct Entry {
    principal: Arc<Principal>,
    read_at: Instant,
}

pub struct Principals {
    shards: Vec<Mutex<HashMap<u64, Entry>>>,
    /// Moves on every forget: a read that began before it is not cached.
    epoch: AtomicU64,
}

impl Default for Principals {
    fn default() -> Principals {
        Principals {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            epoch: AtomicU64::new(0),
        }
    }
}

impl Principals {
    /// The cached account, if it was read less than `TTL` ago.
    fn get(&self, user: u64) -> Option<Arc<Principal>> {
        let shard = self.shard(user);
        let entry = shard.get(&user)?;
        (entry.read_at.elapsed() < TTL).then(|| entry.principal.clone())
    }

    /// The account, from the cache unless `fresh`; read from `storage` (and kept) otherwise.
    /// `None`: no such account.
    pub async fn load(
        &self,
        storage: &Storage,
        user: u64,
        fresh: bool,
    ) -> Result<Option<Arc<Principal>>, StoreError> {
        if !fresh {
            if let Some(found) = self.get(user) {
                return Ok(Some(found));
            }
        }
        let epoch = self.epoch();
        let Some(principal) = storage.principal(user).await? else {
            return Ok(None);
        };
        let principal = Arc::new(principal);
        self.put(epoch, principal.clone());
        Ok(Some(principal))
    }

    /// Where a read of the accounts begins: pass it to `put`.
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Keeps `principal`, read since `epoch`, unless an account was forgotten meanwhile.
    fn put(&self, epoch: u64, principal: Arc<Principal>) {
        let user = principal.user.id;
        let mut shard = self.shard(user);
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if shard.len() >= SHARD_ENTRIES {
            shard.clear();
        }
        let read_at = Instant::now();
        shard.insert(user, Entry { principal, read_at });
    }

    /// Forgets an account (a device of it went, it went, or its tokens were revoked).
    pub fn forget(&self, user: u64) {
        let mut shard = self.shard(user);
        shard.remove(&user);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Forgets every account (signals from other instances may have been missed).
    pub fn forget_all(&self) {
        for shard in &self.shards {
            let mut shard = lock(shard);
            shard.clear();
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn shard(&self, user: u64) -> MutexGuard<'_, HashMap<u64, Entry>> {
        lock(&self.shards[(user % SHARDS as u64) as usize])
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
