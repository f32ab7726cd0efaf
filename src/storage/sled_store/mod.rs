//! The sled store (the default, in the data dir): the only module that knows sled. One `Clone`
//! struct owns every tree; its methods are the storage contract's verbs (see `storage`).
//!
//! Atomicity:
//! - Invariants that span trees on rare paths (a username and its user record, a device with its
//!   first keys) are written in one sled `transaction`. Transaction closures may run more than
//!   once, so they have no side effects outside the transaction.
//! - Hot paths avoid transactions: every sled transaction (and `apply_batch`) takes one global
//!   lock, which serialised all writers. A prekey pop is a compare-and-swap loop: scan for the
//!   lowest key, remove it only if it is still there, else scan again; a key is handed out by the
//!   one taker whose remove succeeded. A message is written index entry first, then the message,
//!   so a crash in between leaves at most an index entry without a message (read as "no such
//!   message" and cleaned up), never a message that cannot be found or deleted.
//! - Counts: prekey stock is counted from the tree (at most the cap per device); queue lengths
//!   are kept in memory, counted from the tree on first use after a start; totals over the
//!   whole database are counted once per process and then kept by the verbs (`totals`).
//!
//! Durability: sled writes to disk on its own only every 500 ms. Every verb whose result is
//! acknowledged to a client awaits `Committer::wait` before returning, which shares one
//! `fsync` between all writers that arrived while the previous flush ran (group commit). A
//! flush that fails or stalls, or any I/O error of sled's, fails storage for good: writes are
//! refused from then on and the binary exits for its supervisor to restart it (fail-stop, see
//! `commit`).

mod attachments;
mod backup;
mod commit;
mod devices;
mod fsck;
mod idempotency;
pub mod keys;
mod linked;
mod messages;
mod prekeys;
mod restore;
mod restore_checks;
mod restore_rules;
mod totals;
mod users;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::StoreError;
pub use backup::BackupSummary;
/// The backup format and the restore's rules, shared with the PostgreSQL store.
pub(crate) use backup::{
    key_out, AttachmentRecord, DeviceRecord, MessageRecord, Record, UserRecord, Writer,
};
use commit::Committer;
pub use devices::Stock;
pub use fsck::FsckReport;
pub use messages::DeleteOutcome;
pub(crate) use restore::read_backup;
pub use restore::restore_dir;
pub use restore_checks::ID_CEILING;
pub use restore_rules::RestoreLimits;
pub(crate) use restore_rules::RestoreTarget;
pub use totals::Totals;
pub use users::ResetGrant;

/// The on-disk layout version; bump it when a record or key layout changes. Version 2 added
/// linked devices (the `linked_devices` tree); a version 1 database is version 2 with none, so
/// opening one only writes the new number (and a build that knows only version 1 then refuses
/// the data dir instead of ignoring linked devices). The idempotency and attachment trees came later
/// without a bump: a build that ignores them reads everything else right.
const SCHEMA_VERSION: u32 = 2;

/// `"schema_version"` → u32 BE.
const META: &str = "meta";
/// user id → bincode `User`.
const USERS: &str = "users";
/// lower-case username → user id.
const USERNAMES: &str = "usernames";
/// lower-case email → user id.
const EMAILS: &str = "emails";
/// user id → bincode `Device`: the account's primary device.
const DEVICES: &str = "devices";
/// user id ‖ device id (u32 BE) → bincode `linked::LinkedDevice`: the other devices, each with
/// the slot its keys and queue are kept under.
const LINKED_DEVICES: &str = "linked_devices";
/// slot ‖ key id → 33-byte public key. A device's slot is its user id for the primary (so
/// version 1 data needs no rewrite), a fresh id for a linked device (so a reused device id
/// starts empty).
const PREKEYS: &str = "prekeys";
/// slot ‖ key id → bincode `SignedPreKey`.
const KYBER_PREKEYS: &str = "kyber_prekeys";
/// slot ‖ message id → bincode `Message`.
const MESSAGES: &str = "messages";
/// message id → slot ‖ timestamp: ownership on delete, and the expiry sweep.
const MESSAGE_INDEX: &str = "message_index";
/// sha256(reset token) → user id ‖ expiry (s) ‖ token version.
const RESET_TOKENS: &str = "reset_tokens";
/// sha256(invite token) → creation time (s, u64 BE).
const INVITES: &str = "invites";
/// sender's slot ‖ route (u8) ‖ Idempotency-Key → created ms (u64 BE) ‖ sha256(body) ‖
/// status (u16 BE) ‖ answer body: the answers of keyed sends (see `idempotency`).
const IDEMPOTENCY: &str = "idempotency";
/// created ms (u64 BE) ‖ `IDEMPOTENCY` key → empty: the records by age, for the sweep.
const IDEMPOTENCY_TIMES: &str = "idempotency_times";
/// attachment id (16) → the upload's record (see `attachments`).
const ATTACHMENTS: &str = "attachments";
/// owner ‖ attachment id → empty: an account's uploads.
const ATTACHMENT_OWNERS: &str = "attachment_owners";
/// expires ms (u64 BE) ‖ attachment id → empty: the uploads by expiry, for the sweep.
const ATTACHMENT_EXPIRY: &str = "attachment_expiry";
/// owner → unfinished uploads (u32 BE) ‖ bytes (u64 BE): what the limits check.
const ATTACHMENT_USAGE: &str = "attachment_usage";

/// Whether `dir` holds a sled database (the server creates one on its first start): operator
/// commands refuse a dir without one instead of creating an empty database there.
pub fn holds_database(dir: &Path) -> bool {
    dir.join("conf").is_file() && dir.join("db").is_file()
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            // The disk failed us (full, gone). Storage fails for good with it (`Storage`
            // passes every sled result through `SledStore::watched`); the client may retry
            // once the server is back.
            sled::Error::Io(e) => StoreError::Unavailable(format!("I/O error: {e}")),
            sled::Error::Corruption { .. } => StoreError::Corrupt(e.to_string()),
            e => StoreError::Db(Box::new(e)),
        }
    }
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => e.into(),
        }
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

/// Settings of the sled database.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// sled's page cache, in bytes.
    pub cache_capacity: u64,
    /// Longest a write waits for its flush before storage counts as failed.
    pub flush_timeout: std::time::Duration,
}

impl StorageOptions {
    /// The sled settings of the server's flags (`--cache-mb`, `--flush-timeout`).
    pub fn of(config: &crate::config::Config) -> StorageOptions {
        StorageOptions {
            cache_capacity: config.cache_mb.saturating_mul(1 << 20),
            flush_timeout: std::time::Duration::from_secs(config.flush_timeout),
        }
    }
}

#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    users: sled::Tree,
    usernames: sled::Tree,
    emails: sled::Tree,
    devices: sled::Tree,
    linked_devices: sled::Tree,
    prekeys: sled::Tree,
    kyber_prekeys: sled::Tree,
    messages: sled::Tree,
    message_index: sled::Tree,
    reset_tokens: sled::Tree,
    invites: sled::Tree,
    idempotency: sled::Tree,
    idempotency_times: sled::Tree,
    /// Attachment records, their indexes and leases (see `attachments`).
    attachments: Arc<attachments::Trees>,
    meta: sled::Tree,
    committer: Arc<Committer>,
    /// Writers hold it shared; a backup holds it exclusively, so that it sees every tree at the
    /// same instant. Async, so a backup never blocks a runtime thread.
    gate: Arc<tokio::sync::RwLock<()>>,
    /// Queue length per recipient, counted from the tree on first use after start and kept
    /// up to date by enqueue and delete: the cap check needs no scan and no transaction.
    queue_lens: Arc<std::sync::Mutex<HashMap<u64, u32>>>,
    /// Serialises key uploads, device creation and deletion, and the device check and write of
    /// a send, per user (striped), so that two uploads cannot both pass the cap, a refused
    /// create cannot clean up after an accepted one, and nothing is written for a device (or
    /// user) that a delete has already cleared.
    upload_locks: Arc<Vec<std::sync::Mutex<()>>>,
    /// Added to sled's id generator: after an import, new ids start above every imported one.
    id_offset: Arc<std::sync::atomic::AtomicU64>,
    /// Totals for `stats` and `/metrics`, kept by the write verbs (see `totals`).
    counters: Arc<totals::Counters>,
}

impl SledStore {
    /// Opens (or creates) the database in `dir`, checking the schema version.
    pub fn open(dir: &Path, options: &StorageOptions) -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_capacity)
            .open()?;
        let meta = db.open_tree(META)?;
        check_layout(&db, &meta)?;
        let id_offset = meta
            .get("id_offset")?
            .and_then(|v| keys::decode_u64(&v))
            .unwrap_or(0);
        Ok(SledStore {
            users: db.open_tree(USERS)?,
            usernames: db.open_tree(USERNAMES)?,
            emails: db.open_tree(EMAILS)?,
            devices: db.open_tree(DEVICES)?,
            linked_devices: db.open_tree(LINKED_DEVICES)?,
            prekeys: db.open_tree(PREKEYS)?,
            kyber_prekeys: db.open_tree(KYBER_PREKEYS)?,
            messages: db.open_tree(MESSAGES)?,
            message_index: db.open_tree(MESSAGE_INDEX)?,
            reset_tokens: db.open_tree(RESET_TOKENS)?,
            invites: db.open_tree(INVITES)?,
            idempotency: db.open_tree(IDEMPOTENCY)?,
            idempotency_times: db.open_tree(IDEMPOTENCY_TIMES)?,
            attachments: Arc::new(attachments::Trees {
                records: db.open_tree(ATTACHMENTS)?,
                owners: db.open_tree(ATTACHMENT_OWNERS)?,
                expiry: db.open_tree(ATTACHMENT_EXPIRY)?,
                usage: db.open_tree(ATTACHMENT_USAGE)?,
                leases: std::sync::Mutex::default(),
            }),
            meta,
            gate: Arc::new(tokio::sync::RwLock::new(())),
            queue_lens: Arc::default(),
            upload_locks: Arc::new((0..64).map(|_| std::sync::Mutex::new(())).collect()),
            id_offset: Arc::new(id_offset.into()),
            counters: Arc::default(),
            committer: Arc::new(Committer::start(db.clone(), options.flush_timeout)),
            db,
        })
    }

    /// Waits until everything written so far is on disk (shared with concurrent writers).
    async fn sync(&self) -> Result<(), StoreError> {
        self.committer.wait().await
    }

    /// Flushes synchronously; used at shutdown. Not after a failure: that flush could block
    /// forever, and sled's recovery keeps everything an earlier flush confirmed.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.committer.check()?;
        self.db.flush()?;
        Ok(())
    }

    /// Waits (at most `within`) until everything written so far is on disk; used at shutdown.
    /// A flush stuck on a full or stalled disk fails storage instead of holding the stop.
    pub async fn close(&self, within: std::time::Duration) -> Result<(), StoreError> {
        self.committer.wait_within(within).await
    }

    /// Passes a verb's result through, failing storage for good on `Unavailable`: an I/O
    /// error of sled's is as final as a failed flush. A value over sled's blob threshold (a
    /// large message) is written to a file of its own during the insert, so a full disk shows
    /// there, not in the next flush; and the insert that failed leaves a log buffer behind
    /// that never reaches disk, so every later flush would wait for it forever.
    pub fn watched<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match result {
            Err(StoreError::Unavailable(reason)) => Err(self.committer.fail(reason)),
            other => other,
        }
    }

    /// Why storage failed (an I/O error or a stalled flush), if it did; for `/health`.
    pub fn failure(&self) -> Option<String> {
        self.committer.health().failure()
    }

    /// Resolves with the reason once storage has failed (the binary then exits non-zero).
    pub async fn failed(&self) -> String {
        self.committer.health().failed().await
    }

    /// A fresh id, never handed out before, even across crashes. An id that would wrap is an
    /// error: a wrapped id could be one handed out before (restores keep ids below `ID_CEILING`,
    /// so this cannot happen on a restored database either).
    fn next_id(&self) -> Result<u64, StoreError> {
        let offset = self.id_offset.load(std::sync::atomic::Ordering::Relaxed);
        // sled's ids start at 0; keep 0 free so that no record has id 0.
        self.db
            .generate_id()?
            .checked_add(1)
            .and_then(|id| id.checked_add(offset))
            .ok_or_else(|| StoreError::Db("no ids left: the next id would wrap".into()))
    }

    /// The per-user lock (striped) of uploads and device creation; never held across an await.
    fn user_lock(&self, user_id: u64) -> std::sync::MutexGuard<'_, ()> {
        let stripe = &self.upload_locks[(user_id % self.upload_locks.len() as u64) as usize];
        stripe
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Held by every write verb (shared), so a backup (exclusive) sees one instant. Refuses at
    /// once when storage has failed, before anything is written.
    async fn writing(&self) -> Result<tokio::sync::RwLockReadGuard<'_, ()>, StoreError> {
        self.committer.check()?;
        Ok(self.gate.read().await)
    }
}

/// Checks the data dir's layout version, and moves an older layout to this one.
fn check_layout(db: &sled::Db, meta: &sled::Tree) -> Result<(), StoreError> {
    let found = meta.get("schema_version")?;
    match found.as_deref().map(keys::decode_u32) {
        // A new database, or version 1 (the same layout without linked devices).
        None | Some(Some(1)) => {
            meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
            db.flush()?;
        }
        Some(Some(SCHEMA_VERSION)) => {}
        Some(v) => {
            return Err(StoreError::Corrupt(format!(
                "the data dir has database layout version {}, this build reads versions 1 \
                 to {SCHEMA_VERSION}; run the signal-server version that wrote it",
                v.map_or("(unreadable)".into(), |v| v.to_string())
            )))
        }
    }
    Ok(())
}

/// Keys of an iteration, stopping at the first read error (never `Tree::len`, which spins
/// forever on a damaged page).
fn count_keys(iter: sled::Iter) -> Result<u64, sled::Error> {
    let mut n = 0;
    for key in iter.keys() {
        key?;
        n += 1;
    }
    Ok(n)
}

/// Keys of one user in a prefix-keyed tree (prekeys, queued messages).
fn count_prefix(tree: &sled::Tree, user_id: u64) -> Result<u32, StoreError> {
    let n = count_keys(tree.scan_prefix(keys::user(user_id)))?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding plain structs into a Vec cannot fail.
    bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode_tx<T: DeserializeOwned>(bytes: &[u8]) -> TxResult<T> {
    decode(bytes).map_err(ConflictableTransactionError::Abort)
}

#[cfg(test)]
pub(crate) fn temp() -> (tempfile::TempDir, SledStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = SledStore::open(
        dir.path(),
        &StorageOptions {
            cache_capacity: 8 << 20,
            flush_timeout: std::time::Duration::from_secs(30),
        },
    )
    .expect("open");
    (dir, storage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_database_opens_as_version_2_and_a_newer_one_is_refused() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let meta = db.open_tree(META).unwrap();
        meta.insert("schema_version", &1u32.to_be_bytes()).unwrap();
        check_layout(&db, &meta).unwrap();
        let version = meta.get("schema_version").unwrap().unwrap();
        assert_eq!(keys::decode_u32(&version), Some(SCHEMA_VERSION));
        check_layout(&db, &meta).unwrap();
        meta.insert("schema_version", &3u32.to_be_bytes()).unwrap();
        assert!(matches!(
            check_layout(&db, &meta),
            Err(StoreError::Corrupt(_))
        ));
    }

    /// Runs the test `name` of this module again, alone in a process of its own, and checks
    /// that it passed; `false` in that process, where the test then does its work. A sled left
    /// stuck on purpose keeps sled's I/O threads, which every database of a process shares,
    /// waiting, and the other tests of the process would hang on them.
    fn in_own_process(name: &str) -> bool {
        use std::io::Read;
        const CHILD: &str = "SIGNAL_SERVER_STUCK_SLED_TEST";
        if std::env::var_os(CHILD).is_some() {
            return false;
        }
        let module = module_path!().split_once("::").map_or("", |(_, m)| m);
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([&format!("{module}::{name}"), "--exact", "--test-threads=1"])
            .env(CHILD, "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut out = String::new();
        let stdout = child.stdout.take().map(|mut o| o.read_to_string(&mut out));
        assert!(
            status.is_some_and(|s| s.success()),
            "{name}: {status:?}\n{out}"
        );
        // A name that matches no test passes too: check that it ran.
        assert!(
            stdout.is_some() && out.contains("1 passed"),
            "{name}: {out}"
        );
        true
    }

    /// A store whose next flush never finishes: sled writes a page over its blob threshold to a
    /// file of its own in `blobs/`; with a file in that directory's place the write fails, and
    /// the log buffer the insert had reserved never reaches disk, so every later flush waits
    /// for it. The insert's result, not passed through `watched`.
    fn stuck_store() -> (tempfile::TempDir, SledStore, Result<(), StoreError>) {
        let (dir, s) = temp();
        let blobs = dir.path().join("blobs");
        std::fs::remove_dir_all(&blobs).unwrap();
        std::fs::write(&blobs, b"not a directory").unwrap();
        let large = s.messages.insert("large", vec![7u8; 1 << 20]);
        (dir, s, large.map(drop).map_err(StoreError::from))
    }

    #[tokio::test]
    async fn a_stuck_flush_does_not_hold_the_close_and_fails_storage() {
        if in_own_process("a_stuck_flush_does_not_hold_the_close_and_fails_storage") {
            return;
        }
        let (_dir, s, large) = stuck_store();
        assert!(large.is_err());
        assert!(s.failure().is_none());

        let bound = std::time::Duration::from_millis(200);
        let closed = tokio::time::timeout(bound * 50, s.close(bound)).await;
        let closed = closed.expect("the close waited for the stuck flush");
        assert!(
            matches!(closed, Err(StoreError::Unavailable(_))),
            "{closed:?}"
        );
        assert!(s.failure().is_some());
        // Dropping the last handle of a tree flushes it, which would wait forever here.
        std::mem::forget(s);
    }

    #[tokio::test]
    async fn a_large_value_the_disk_refuses_fails_storage() {
        if in_own_process("a_large_value_the_disk_refuses_fails_storage") {
            return;
        }
        let (_dir, s, large) = stuck_store();
        let refused = s.watched(large);
        assert!(matches!(refused, Err(StoreError::Unavailable(_))));
        assert!(s.failure().is_some());
        // Refused at once from now on, without touching sled.
        assert!(matches!(s.writing().await, Err(StoreError::Unavailable(_))));
        std::mem::forget(s);
    }

    #[tokio::test]
    async fn an_id_that_would_wrap_is_an_error_not_an_old_id_again() {
        let (_dir, s) = temp();
        s.id_offset
            .store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
        assert!(matches!(
            s.create_user("late", "", "h".into(), None).await,
            Err(StoreError::Db(_))
        ));
        assert!(s.user_by_name("late").unwrap().is_none());
    }
}
