//! The storage contract: every verb the server, the WebSocket session and the operator commands
//! use, on one `Storage` value whatever keeps the data. Verbs take and return domain types, are
//! async, and are durable when they return `Ok` (sled: after the group-commit fsync; see
//! `sled_store`). Invariants (a key handed out once, caps, all-or-nothing writes) are the
//! backend's to keep, never the caller's. Every sled arm passes its result through
//! `SledStore::watched`, so that an I/O error of sled's, wherever it shows, fails storage.
//!
//! Enum dispatch rather than a trait object: the set of backends is closed, the calls stay
//! static, and each verb is one `match`. The PostgreSQL arms are boxed: their futures are some
//! KB (a pooled connection, a transaction, retries), and unboxed they would make every verb's
//! future, and every handler's, that large on sled too (measured: an enqueue's future 4.8 KB
//! instead of 0.4 KB).

pub mod attachments;
pub mod idempotency;
pub mod pg_store;
pub mod sled_store;

#[cfg(test)]
pub(crate) mod fixtures;

use std::io::Write;
use std::path::Path;

use crate::models::{
    Device, DeviceRef, Message, Outgoing, Popped, PreKey, SignedPreKey, User, LINKED_IDS,
};
use crate::models::{Member, Principal};
pub use pg_store::PgStore;
pub use sled_store::{
    holds_database, keys, restore_dir, BackupSummary, DeleteOutcome, FsckReport, ResetGrant,
    RestoreLimits, SledStore, Stock, StorageOptions, Totals, ID_CEILING,
};

/// A storage backend's own error, kept as the source of `StoreError::Db`.
pub type Source = Box<dyn std::error::Error + Send + Sync>;

/// Why a storage verb refused or failed. The messages are plain sentences for operators (the
/// admin commands and the binary print them); the API maps each to its answer in `error.rs`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a user with that username already exists")]
    UsernameTaken,
    #[error("a user with that email already exists")]
    EmailTaken,
    #[error("the user has a device already")]
    DeviceExists,
    #[error("the user has no device")]
    NoDevice,
    #[error("the account has the most devices allowed")]
    TooManyDevices,
    #[error("the account has no device with that id")]
    NoSuchDevice,
    #[error("the primary device cannot be unlinked")]
    PrimaryDevice,
    #[error("another device of the account has that registration id")]
    RegistrationIdTaken,
    #[error("the identity key is not the account's")]
    IdentityKeyMismatch,
    /// A send to several devices named another set of devices than the recipient has.
    #[error("the devices named are not the recipient's")]
    DevicesChanged(Mismatch),
    #[error("no such user")]
    NoUser,
    #[error("the device has the most prekeys allowed")]
    TooManyPrekeys,
    #[error("the device's message queue is full")]
    QueueFull,
    #[error("the invite is not valid or was used already")]
    InvalidInvite,
    #[error(
        "the database failed ({0}); check free disk space and that the data dir belongs to the \
         user running signal-server"
    )]
    Db(#[source] Source),
    /// Reading or writing a file beside the database (a backup, a restore's new database).
    #[error("{doing}: {source}")]
    Io {
        doing: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Corrupt(String),
    /// Storage has failed (an I/O error or a stalled flush); nothing was acknowledged.
    #[error("storage has failed ({0}); check free disk space, then restart signal-server")]
    Unavailable(String),
}

/// How a send's device list differs from the recipient's devices (`check_devices`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mismatch {
    /// Named with another registrationId than the device has (reinstalled).
    pub stale: Vec<u32>,
    /// Devices of the recipient the send left out.
    pub missing: Vec<u32>,
    /// Device ids the recipient does not have.
    pub extra: Vec<u32>,
}

/// Checks a send's ciphertexts against the recipient's `devices` (without `skip`, the sending
/// device when an account writes to itself): every device once, with its registrationId (a
/// device named twice counts as extra; the API refuses that earlier, as invalid data). Stale
/// registration ids are reported first: a client fixes those before its device list.
pub fn check_devices(
    devices: &[Device],
    skip: Option<u32>,
    outgoing: &[Outgoing],
) -> Result<(), Mismatch> {
    let expected: Vec<&Device> = devices.iter().filter(|d| Some(d.id()) != skip).collect();
    let mut mismatch = Mismatch::default();
    for (i, o) in outgoing.iter().enumerate() {
        let named_before = outgoing[..i].iter().any(|p| p.device == o.device);
        match expected.iter().find(|d| d.id() == o.device) {
            // A device named twice would get two copies: the second is one too many.
            _ if named_before => mismatch.extra.push(o.device),
            Some(d) if d.registration_id != o.registration_id => mismatch.stale.push(o.device),
            Some(_) => {}
            None => mismatch.extra.push(o.device),
        }
    }
    if !mismatch.stale.is_empty() {
        mismatch.missing.clear();
        mismatch.extra.clear();
        return Err(mismatch);
    }
    mismatch.missing = expected
        .iter()
        .map(|d| d.id())
        .filter(|id| !outgoing.iter().any(|o| o.device == *id))
        .collect();
    if mismatch.missing.is_empty() && mismatch.extra.is_empty() {
        Ok(())
    } else {
        Err(mismatch)
    }
}

/// The id a newly linked device gets: the lowest in `LINKED_IDS` no device of the account has.
pub fn free_device_id(devices: &[Device]) -> Option<u32> {
    LINKED_IDS
        .into_iter()
        .find(|id| devices.iter().all(|d| d.id() != *id))
}

/// Checks a device to link against the account's `devices` (the primary first), in the order
/// the API reports: a primary, the identity key, a free registrationId, then room.
pub fn check_link(devices: &[Device], new: &Device, max_devices: u32) -> Result<u32, StoreError> {
    let primary = devices.first().ok_or(StoreError::NoDevice)?;
    if primary.identity_key != new.identity_key {
        return Err(StoreError::IdentityKeyMismatch);
    }
    if devices
        .iter()
        .any(|d| d.registration_id == new.registration_id)
    {
        return Err(StoreError::RegistrationIdTaken);
    }
    if devices.len() >= max_devices as usize {
        return Err(StoreError::TooManyDevices);
    }
    free_device_id(devices).ok_or(StoreError::TooManyDevices)
}

/// `Storage::recipient` on sled.
fn recipient_of(
    s: &SledStore,
    username: &str,
) -> Result<Option<(User, Option<Device>)>, StoreError> {
    let Some(user) = s.user_by_name(username)? else {
        return Ok(None);
    };
    let device = s.device(user.id)?;
    Ok(Some((user, device)))
}

/// `Storage::principal` on sled: the user, its devices, and their stamps.
fn principal_of(s: &SledStore, user_id: u64) -> Result<Option<Principal>, StoreError> {
    let Some(user) = s.user(user_id)? else {
        return Ok(None);
    };
    let mut devices = Vec::new();
    for d in s.devices(user_id)? {
        // A device unlinked between the two reads is left out.
        if let Some(stamp) = s.device_stamp(d.of(user_id))? {
            devices.push(std::sync::Arc::new(Member {
                address: d.address,
                registration_id: d.registration_id,
                identity_key: d.identity_key,
                stamp,
            }));
        }
    }
    Ok(Some(Principal { user, devices }))
}

/// The address of device `id` of the account whose primary has `primary_address`.
pub fn linked_address(primary_address: &str, id: u32) -> String {
    let name = primary_address
        .rsplit_once('.')
        .map_or(primary_address, |(name, _)| name);
    format!("{name}.{id}")
}

#[derive(Clone)]
pub enum Storage {
    /// The default: a sled database in the data dir, one process.
    Sled(SledStore),
    /// PostgreSQL: any number of processes on one database.
    Postgres(PgStore),
}

impl Storage {
    /// Opens (or creates) the sled database in `dir`.
    pub fn open_sled(dir: &Path, options: &StorageOptions) -> Result<Storage, StoreError> {
        SledStore::open(dir, options).map(Storage::Sled)
    }

    // ---- users ----

    pub async fn create_user(
        &self,
        username: &str,
        email: &str,
        password_hash: String,
        invite: Option<&[u8]>,
    ) -> Result<User, StoreError> {
        match self {
            Storage::Sled(s) => {
                s.watched(s.create_user(username, email, password_hash, invite).await)
            }
            Storage::Postgres(p) => {
                Box::pin(p.create_user(username, email, password_hash, invite)).await
            }
        }
    }

    pub async fn user(&self, id: u64) -> Result<Option<User>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.user(id)),
            Storage::Postgres(p) => Box::pin(p.user(id)).await,
        }
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.user_by_name(username)),
            Storage::Postgres(p) => Box::pin(p.user_by_name(username)).await,
        }
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.user_by_email(email)),
            Storage::Postgres(p) => Box::pin(p.user_by_email(email)).await,
        }
    }

    /// Up to `limit` users with ids above `after`, by id.
    pub async fn users_page(&self, after: u64, limit: usize) -> Result<Vec<User>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.users_page(after, limit)),
            Storage::Postgres(p) => Box::pin(p.users_page(after, limit)).await,
        }
    }

    pub async fn set_password(
        &self,
        user_id: u64,
        password_hash: String,
    ) -> Result<User, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.set_password(user_id, password_hash).await),
            Storage::Postgres(p) => Box::pin(p.set_password(user_id, password_hash)).await,
        }
    }

    /// Removes the account with its devices, keys, queues and attachment records (the blob
    /// store keeps the blobs until they are deleted or swept as left over).
    pub async fn delete_user(&self, user_id: u64) -> Result<(), StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.delete_user(user_id).await),
            Storage::Postgres(p) => Box::pin(p.delete_user(user_id)).await,
        }
    }

    pub async fn put_reset_token(
        &self,
        token_hash: &[u8],
        grant: &ResetGrant,
    ) -> Result<(), StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.put_reset_token(token_hash, grant).await),
            Storage::Postgres(p) => Box::pin(p.put_reset_token(token_hash, grant)).await,
        }
    }

    pub async fn take_reset_token(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<ResetGrant>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.take_reset_token(token_hash).await),
            Storage::Postgres(p) => Box::pin(p.take_reset_token(token_hash)).await,
        }
    }

    pub async fn reset_grant(&self, token_hash: &[u8]) -> Result<Option<ResetGrant>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.reset_grant(token_hash)),
            Storage::Postgres(p) => Box::pin(p.reset_grant(token_hash)).await,
        }
    }

    pub async fn sweep_reset_tokens(&self, now: u64) -> Result<usize, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.sweep_reset_tokens(now).await),
            Storage::Postgres(p) => Box::pin(p.sweep_reset_tokens(now)).await,
        }
    }

    pub async fn create_invite(
        &self,
        token_hash: &[u8],
        created_at: u64,
    ) -> Result<(), StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.create_invite(token_hash, created_at).await),
            Storage::Postgres(p) => Box::pin(p.create_invite(token_hash, created_at)).await,
        }
    }

    // ---- devices and keys ----

    /// The account's primary device (the one `POST /device` created).
    pub async fn device(&self, user_id: u64) -> Result<Option<Device>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.device(user_id)),
            Storage::Postgres(p) => Box::pin(p.device(user_id)).await,
        }
    }

    /// Every device of the account: the primary first, then the linked ones by id; empty when
    /// it has none.
    pub async fn devices(&self, user_id: u64) -> Result<Vec<Device>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.devices(user_id)),
            Storage::Postgres(p) => Box::pin(p.devices(user_id)).await,
        }
    }

    /// The account with what its devices' own requests need (the primary first), read at one
    /// moment: what `principals` caches. On PostgreSQL one statement.
    pub async fn principal(&self, user_id: u64) -> Result<Option<Principal>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(principal_of(s, user_id)),
            Storage::Postgres(p) => Box::pin(p.principal(user_id)).await,
        }
    }

    /// A recipient by username (any case) with its primary device, if it has one. On
    /// PostgreSQL one statement.
    pub async fn recipient(
        &self,
        username: &str,
    ) -> Result<Option<(User, Option<Device>)>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(recipient_of(s, username)),
            Storage::Postgres(p) => Box::pin(p.recipient(username)).await,
        }
    }

    /// What tells this device from an earlier one that had the same id (unlinked, or the
    /// primary deleted and created again): equal only for the same device. `None` when the
    /// account has no device with that id. Tokens bound to a device and open sockets keep it.
    pub async fn device_stamp(&self, device: DeviceRef) -> Result<Option<u64>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.device_stamp(device)),
            Storage::Postgres(p) => Box::pin(p.device_stamp(device)).await,
        }
    }

    /// Creates the account's primary device (its id is the one in its address) with its first
    /// one-time keys, all or nothing: `DeviceExists` if the account has one, `NoUser` if the
    /// account is gone.
    pub async fn create_device(
        &self,
        user_id: u64,
        device: &Device,
        prekeys: &[PreKey],
        kyber: &[SignedPreKey],
    ) -> Result<(), StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.create_device(user_id, device, prekeys, kyber).await),
            Storage::Postgres(p) => {
                Box::pin(p.create_device(user_id, device, prekeys, kyber)).await
            }
        }
    }

    /// Links a device to the account (`device.address` is ignored): checked by `check_link`
    /// against the devices the account has at that moment (concurrent links and deletes are
    /// serialised), given the lowest free id with nothing left under it from an earlier device,
    /// and stored with its first one-time keys, all or nothing. Returns it as stored.
    pub async fn link_device(
        &self,
        user_id: u64,
        device: &Device,
        prekeys: &[PreKey],
        kyber: &[SignedPreKey],
        max_devices: u32,
    ) -> Result<Device, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(
                s.link_device(user_id, device, prekeys, kyber, max_devices)
                    .await,
            ),
            Storage::Postgres(p) => {
                Box::pin(p.link_device(user_id, device, prekeys, kyber, max_devices)).await
            }
        }
    }

    /// Removes a linked device, its keys and its queue: `NoSuchDevice`, or `PrimaryDevice` for
    /// the primary.
    pub async fn unlink_device(&self, device: DeviceRef) -> Result<(), StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.unlink_device(device).await),
            Storage::Postgres(p) => Box::pin(p.unlink_device(device)).await,
        }
    }

    /// Removes every device of the account with their keys and queues (`NoDevice` if none).
    pub async fn delete_device(&self, user_id: u64) -> Result<(), StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.delete_device(user_id).await),
            Storage::Postgres(p) => Box::pin(p.delete_device(user_id)).await,
        }
    }

    pub async fn set_signed_prekey(
        &self,
        device: DeviceRef,
        key: &SignedPreKey,
    ) -> Result<(), StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.set_signed_prekey(device, key).await),
            Storage::Postgres(p) => Box::pin(p.set_signed_prekey(device, key)).await,
        }
    }

    pub async fn stock(&self, device: DeviceRef) -> Result<Stock, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.stock(device)),
            Storage::Postgres(p) => Box::pin(p.stock(device)).await,
        }
    }

    pub async fn add_prekeys(
        &self,
        device: DeviceRef,
        new: &[PreKey],
        cap: u32,
    ) -> Result<u32, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.add_prekeys(device, new, cap).await),
            Storage::Postgres(p) => Box::pin(p.add_prekeys(device, new, cap)).await,
        }
    }

    pub async fn add_kyber_prekeys(
        &self,
        device: DeviceRef,
        new: &[SignedPreKey],
        last_resort: Option<&SignedPreKey>,
        cap: u32,
    ) -> Result<u32, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.add_kyber_prekeys(device, new, last_resort, cap).await),
            Storage::Postgres(p) => {
                Box::pin(p.add_kyber_prekeys(device, new, last_resort, cap)).await
            }
        }
    }

    pub async fn pop_prekeys(&self, device: DeviceRef) -> Result<Popped, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.pop_prekeys(device).await),
            Storage::Postgres(p) => Box::pin(p.pop_prekeys(device)).await,
        }
    }

    // ---- messages ----

    /// Queues a message for one device (`NoDevice` if it is gone, `QueueFull` at `cap`).
    pub async fn enqueue(
        &self,
        recipient: DeviceRef,
        message: Message,
        cap: u32,
    ) -> Result<Message, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.enqueue(recipient, message, cap).await),
            Storage::Postgres(p) => Box::pin(p.enqueue(recipient, message, cap)).await,
        }
    }

    /// Queues one message per device of account `recipient`, all or none: first
    /// `check_devices` against the devices it has at that moment (without `skip`;
    /// `DevicesChanged`), then each queue's `cap` (`QueueFull`). Fills in each message's id and
    /// recipient address; returns them in the order given.
    pub async fn enqueue_all(
        &self,
        recipient: u64,
        skip: Option<u32>,
        outgoing: Vec<Outgoing>,
        cap: u32,
    ) -> Result<Vec<Message>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.enqueue_all(recipient, skip, outgoing, cap).await),
            Storage::Postgres(p) => Box::pin(p.enqueue_all(recipient, skip, outgoing, cap)).await,
        }
    }

    pub async fn messages(
        &self,
        recipient: DeviceRef,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.messages(recipient, after, limit)),
            Storage::Postgres(p) => Box::pin(p.messages(recipient, after, limit)).await,
        }
    }

    pub async fn messages_page(
        &self,
        recipient: DeviceRef,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.messages_page(recipient, after, limit, max_bytes)),
            Storage::Postgres(p) => {
                Box::pin(p.messages_page(recipient, after, limit, max_bytes)).await
            }
        }
    }

    /// The ids of `recipient`'s queued messages after `after`, oldest first, at most `limit`:
    /// what a socket re-reading its queue needs, without the messages themselves.
    pub async fn queued_ids(
        &self,
        recipient: DeviceRef,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        match self {
            Storage::Sled(s) => s.queued_ids(recipient, after, limit),
            Storage::Postgres(p) => Box::pin(p.queued_ids(recipient, after, limit)).await,
        }
    }

    pub async fn message(
        &self,
        recipient: DeviceRef,
        id: u64,
    ) -> Result<Option<Message>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.message(recipient, id)),
            Storage::Postgres(p) => Box::pin(p.message(recipient, id)).await,
        }
    }

    /// Deletes messages of one device's queue; another queue's message is `NotOwner`.
    pub async fn delete_messages(
        &self,
        recipient: DeviceRef,
        ids: &[u64],
    ) -> Result<Vec<DeleteOutcome>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.delete_messages(recipient, ids).await),
            Storage::Postgres(p) => Box::pin(p.delete_messages(recipient, ids)).await,
        }
    }

    pub async fn sweep_expired(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.sweep_expired(cutoff_ms).await),
            Storage::Postgres(p) => Box::pin(p.sweep_expired(cutoff_ms)).await,
        }
    }

    pub async fn queue_len(&self, recipient: DeviceRef) -> Result<u32, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.queue_len(recipient)),
            Storage::Postgres(p) => Box::pin(p.queue_len(recipient)).await,
        }
    }

    // ---- operations ----

    /// Counts the totals if this backend keeps them (sled counts once per process).
    pub async fn count_totals(&self) -> Result<(), StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.count_totals().await),
            Storage::Postgres(_) => Ok(()),
        }
    }

    pub async fn totals(&self) -> Result<Totals, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.totals()),
            Storage::Postgres(p) => Box::pin(p.totals()).await,
        }
    }

    /// Writes every record in the backup format (one instant of the whole store).
    pub async fn backup(&self, out: &mut (dyn Write + Send)) -> Result<BackupSummary, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.backup(out).await),
            Storage::Postgres(p) => p.backup(out).await,
        }
    }

    /// Reads every record and reports damage (operators only: a full scan).
    pub async fn fsck(&self) -> Result<FsckReport, StoreError> {
        match self {
            Storage::Sled(s) => {
                let s = s.clone();
                tokio::task::spawn_blocking(move || s.fsck())
                    .await
                    .map_err(|e| StoreError::Db(Box::new(e)))
            }
            // PostgreSQL checks its own pages; what can be checked from here is that it answers.
            Storage::Postgres(p) => Box::pin(p.health()).await.map(|()| FsckReport {
                lines: vec!["PostgreSQL answers; check its pages with its own tools \
                             (amcheck, pg_checksums)"
                    .into()],
                damaged: false,
            }),
        }
    }

    /// `Ok` while storage can take writes; the reason it cannot otherwise (for `/health`; on
    /// PostgreSQL an answer of the database less than a second old is reused).
    pub async fn health(&self) -> Result<(), StoreError> {
        match self {
            Storage::Sled(s) => match s.failure() {
                None => Ok(()),
                Some(reason) => Err(StoreError::Unavailable(reason)),
            },
            Storage::Postgres(p) => Box::pin(p.recent_health()).await,
        }
    }

    /// Why storage has failed for good, if it has (sled's fail-stop); never on PostgreSQL.
    pub fn failure(&self) -> Option<String> {
        match self {
            Storage::Sled(s) => s.failure(),
            Storage::Postgres(_) => None,
        }
    }

    /// Resolves with the reason once storage has failed for good (sled's fail-stop: the binary
    /// then exits for its supervisor to restart it); never for a backend that recovers.
    pub async fn failed(&self) -> String {
        match self {
            Storage::Sled(s) => s.failed().await,
            // A database outage passes (503s meanwhile); the process stays up.
            Storage::Postgres(_) => std::future::pending().await,
        }
    }

    /// Writes out what is pending before the process exits (sled: a final flush), waiting at
    /// most `within`: a flush stuck on a full or stalled disk fails storage instead.
    pub async fn close(&self, within: std::time::Duration) -> Result<(), StoreError> {
        match self {
            Storage::Sled(s) => s.close(within).await,
            // Every acknowledged write is committed already.
            Storage::Postgres(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every handler's future holds the futures of the verbs it awaits: an unboxed PostgreSQL
    /// arm (some KB) would make the sled path carry that size too.
    #[tokio::test]
    async fn the_verbs_futures_stay_small() {
        let (_dir, sled) = sled_store::temp();
        let s = Storage::Sled(sled);
        let message = fixtures::message("x", 1);
        let one = DeviceRef { user: 1, device: 1 };
        let sizes = [
            std::mem::size_of_val(&s.enqueue(one, message, 10)),
            std::mem::size_of_val(&s.pop_prekeys(one)),
            std::mem::size_of_val(&s.device(1)),
            std::mem::size_of_val(&s.user_by_name("a")),
            std::mem::size_of_val(&s.messages_page(one, 0, 10, 1000)),
        ];
        assert!(sizes.iter().all(|&n| n <= 1024), "{sizes:?}");
    }

    fn to(device: u32, registration_id: u32) -> Outgoing {
        Outgoing {
            device,
            registration_id,
            message: fixtures::message("x", 1),
        }
    }

    #[test]
    fn a_send_names_every_expected_device_once_with_its_registration_id() {
        let mut linked = fixtures::device("a.2");
        linked.registration_id = 8;
        let devices = [fixtures::device("a.1"), linked];
        assert_eq!(check_devices(&devices, None, &[to(2, 8), to(1, 7)]), Ok(()));
        assert_eq!(check_devices(&devices, Some(2), &[to(1, 7)]), Ok(()));
        let stale = check_devices(&devices, None, &[to(1, 7), to(2, 9), to(4, 1)]);
        assert_eq!(stale.unwrap_err().stale, [2], "stale first, alone");
        let mismatch = check_devices(&devices, Some(1), &[to(1, 7), to(3, 1)]).unwrap_err();
        assert_eq!((mismatch.missing, mismatch.extra), (vec![2], vec![1, 3]));
        let twice = check_devices(&devices, None, &[to(1, 7), to(2, 8), to(2, 8)]);
        assert_eq!(twice.unwrap_err().extra, [2]);
    }

    #[test]
    fn a_link_needs_a_primary_its_identity_a_free_registration_id_and_room() {
        let primary = fixtures::device("a.3");
        let mut new = fixtures::device("");
        new.registration_id = 9;
        assert!(matches!(
            check_link(&[], &new, 6),
            Err(StoreError::NoDevice)
        ));
        assert_eq!(
            check_link(std::slice::from_ref(&primary), &new, 6).unwrap(),
            2
        );
        let mut two = fixtures::device("a.2");
        two.registration_id = 10;
        let both = [primary.clone(), two];
        assert_eq!(check_link(&both, &new, 6).unwrap(), 4, "3 is the primary's");
        assert!(matches!(
            check_link(&both, &new, 2),
            Err(StoreError::TooManyDevices)
        ));
        new.registration_id = 10;
        assert!(matches!(
            check_link(&both, &new, 6),
            Err(StoreError::RegistrationIdTaken)
        ));
        new.identity_key = vec![6; 33];
        assert!(matches!(
            check_link(&both, &new, 6),
            Err(StoreError::IdentityKeyMismatch)
        ));
        assert_eq!(linked_address("Alice.b.1", 4), "Alice.b.4");
    }
}
