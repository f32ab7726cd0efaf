//! Restore, all or nothing: a backup is loaded into a fresh database beside the data dir's own
//! (`db.restoring`), every record checked with the API's rules (`restore_rules`), and the new
//! database is renamed into place only once the whole file is in and on disk. A restore that
//! fails, or is killed, leaves the data dir's database as it was; its half-built copy is under a
//! name the server never opens and the next restore removes first.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use super::backup::{BackupSummary, Record};
use super::linked::LinkedDevice;
use super::restore_rules::{RestoreLimits, RestoreTarget, Restoring};
use super::{encode, keys, ResetGrant, SledStore, StorageOptions, StoreError};
use crate::models::{Device, DeviceRef, Message, SignedPreKey, User};
use crate::requests::KeyKind;
use crate::storage::attachments::{AttachmentId, Upload};

/// Restores `input` into the database directory `db`, which must not exist or hold no records.
pub async fn restore_dir(
    db: &Path,
    input: &mut (dyn BufRead + Send),
    limits: &RestoreLimits,
    options: &StorageOptions,
) -> Result<BackupSummary, StoreError> {
    if db.exists() && SledStore::open(db, options)?.has_records()? {
        return Err(StoreError::Corrupt(format!(
            "restore needs an empty data dir, and {} holds records",
            db.display()
        )));
    }
    let building = building_path(db);
    remove_dir(&building)?;
    create_private_dir(&building)?;
    let result = match fill(&building, input, limits, options).await {
        Ok(sum) => move_into_place(&building, db).map(|()| sum),
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    result
}

/// `<db>.restoring`: on the same file system as `db`, so the final rename is atomic.
fn building_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".restoring");
    db.with_file_name(name)
}

/// Loads and flushes the new database; it is closed when this returns.
async fn fill(
    dir: &Path,
    input: &mut (dyn BufRead + Send),
    limits: &RestoreLimits,
    options: &StorageOptions,
) -> Result<BackupSummary, StoreError> {
    let storage = SledStore::open(dir, options)?;
    let sum = storage.restore(input, limits).await?;
    storage.flush()?;
    Ok(sum)
}

/// Replaces `db` (checked to hold no records) by `building`, and syncs the directory entry.
fn move_into_place(building: &Path, db: &Path) -> Result<(), StoreError> {
    remove_dir(db)?;
    std::fs::rename(building, db).map_err(|e| io_error("moving the restored database", e))?;
    if let Some(parent) = db.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("syncing the data dir", e))?;
    }
    Ok(())
}

fn remove_dir(dir: &Path) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_error(&format!("removing {}", dir.display()), e))
        }
        _ => Ok(()),
    }
}

/// The database holds password hashes and message bodies: its owner only, whatever the umask.
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| io_error(&format!("creating {}", dir.display()), e))
}

fn io_error(doing: &str, e: std::io::Error) -> StoreError {
    StoreError::Io {
        doing: doing.to_string(),
        source: e,
    }
}

impl SledStore {
    /// Whether any tree holds a record (derived indexes follow their records).
    fn has_records(&self) -> Result<bool, StoreError> {
        for tree in [
            &self.users,
            &self.devices,
            &self.linked_devices,
            &self.prekeys,
            &self.kyber_prekeys,
            &self.messages,
            &self.invites,
            &self.reset_tokens,
            &self.attachments.records,
        ] {
            if tree.first()?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Loads a backup into this empty database, rebuilding the indexes, so that new ids start
    /// above every restored one. The first bad line ends it with an error naming that line.
    pub(super) async fn restore(
        &self,
        input: &mut (dyn BufRead + Send),
        limits: &RestoreLimits,
    ) -> Result<BackupSummary, StoreError> {
        let _exclusive = self.gate.write().await;
        if self.has_records()? {
            return Err(StoreError::Corrupt(
                "restore needs an empty database".into(),
            ));
        }
        let (sum, max_id) = read_backup(input, limits, self).await?;
        self.meta.insert("id_offset", &(max_id + 1).to_be_bytes())?;
        self.id_offset
            .store(max_id + 1, std::sync::atomic::Ordering::Relaxed);
        Ok(sum)
    }
}

/// Reads a backup into `target`, every record checked (`Restoring`); answers what was restored
/// and the largest id in it. The first bad line ends it with an error naming that line.
pub(crate) async fn read_backup<T: RestoreTarget>(
    input: &mut (dyn BufRead + Send),
    limits: &RestoreLimits,
    target: T,
) -> Result<(BackupSummary, u64), StoreError> {
    let mut lines = Lines::new(input, limits.max_line_bytes());
    let mut restoring = Restoring::new(target, limits);
    while let Some((n, line)) = lines.next()? {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record: Record = serde_json::from_slice(line)
            .map_err(|e| StoreError::Corrupt(format!("line {n}: {e}")))?;
        restoring.take(record).await.map_err(|e| match e {
            StoreError::Corrupt(why) => StoreError::Corrupt(format!("line {n}: {why}")),
            other => other,
        })?;
    }
    restoring.finish()
}

/// The sled store as a restore fills it: its trees and their indexes.
impl RestoreTarget for &SledStore {
    async fn user(&mut self, id: u64) -> Result<Option<User>, StoreError> {
        SledStore::user(self, id)
    }

    async fn username_taken(&mut self, lowercased: &str) -> Result<bool, StoreError> {
        Ok(self.usernames.contains_key(lowercased.as_bytes())?)
    }

    async fn email_taken(&mut self, lowercased: &str) -> Result<bool, StoreError> {
        Ok(self.emails.contains_key(lowercased.as_bytes())?)
    }

    async fn put_user(&mut self, user: &User) -> Result<(), StoreError> {
        let key = keys::user(user.id);
        self.usernames
            .insert(user.username.to_lowercase().as_bytes(), &key)?;
        if !user.email.is_empty() {
            self.emails
                .insert(user.email.to_lowercase().as_bytes(), &key)?;
        }
        self.users.insert(key, encode(user))?;
        Ok(())
    }

    async fn devices(&mut self, user: u64) -> Result<Vec<Device>, StoreError> {
        SledStore::devices(self, user)
    }

    async fn put_device(
        &mut self,
        user: u64,
        device: &Device,
        linked: Option<u64>,
    ) -> Result<(), StoreError> {
        match linked {
            None => self.devices.insert(keys::user(user), encode(device))?,
            Some(slot) => {
                let record = LinkedDevice {
                    slot,
                    device: device.clone(),
                };
                let key = keys::linked(user, device.id());
                self.linked_devices.insert(key, encode(&record))?
            }
        };
        Ok(())
    }

    async fn has_prekey(
        &mut self,
        device: DeviceRef,
        kind: KeyKind,
        id: u32,
    ) -> Result<bool, StoreError> {
        let tree = match kind {
            KeyKind::Ec => &self.prekeys,
            KeyKind::Kyber => &self.kyber_prekeys,
        };
        Ok(tree.contains_key(keys::prekey(self.slot_of(device)?, id))?)
    }

    async fn put_prekey(
        &mut self,
        device: DeviceRef,
        kind: KeyKind,
        key: &SignedPreKey,
    ) -> Result<(), StoreError> {
        let k = keys::prekey(self.slot_of(device)?, key.key_id);
        match kind {
            KeyKind::Ec => self.prekeys.insert(k, key.public_key.as_slice())?,
            KeyKind::Kyber => self.kyber_prekeys.insert(k, encode(key))?,
        };
        Ok(())
    }

    async fn has_message(&mut self, id: u64) -> Result<bool, StoreError> {
        Ok(self.message_index.contains_key(id.to_be_bytes())?)
    }

    async fn put_message(&mut self, recipient: DeviceRef, m: &Message) -> Result<(), StoreError> {
        let slot = self.slot_of(recipient)?;
        self.message_index
            .insert(m.id.to_be_bytes(), &keys::index_value(slot, m.timestamp))?;
        self.messages.insert(keys::message(slot, m.id), encode(m))?;
        Ok(())
    }

    async fn has_invite(&mut self, hash: &[u8]) -> Result<bool, StoreError> {
        Ok(self.invites.contains_key(hash)?)
    }

    async fn put_invite(&mut self, hash: &[u8], created: u64) -> Result<(), StoreError> {
        self.invites.insert(hash, &created.to_be_bytes())?;
        Ok(())
    }

    async fn has_reset_token(&mut self, hash: &[u8]) -> Result<bool, StoreError> {
        Ok(self.reset_tokens.contains_key(hash)?)
    }

    async fn put_reset_token(&mut self, hash: &[u8], grant: &ResetGrant) -> Result<(), StoreError> {
        let value = keys::reset_grant(grant.user_id, grant.expires_at, grant.token_version);
        self.reset_tokens.insert(hash, &value)?;
        Ok(())
    }

    async fn has_upload(&mut self, id: &AttachmentId) -> Result<bool, StoreError> {
        Ok(self.attachments.records.contains_key(id)?)
    }

    async fn put_upload(&mut self, upload: &Upload) -> Result<(), StoreError> {
        self.put_upload_record(upload)
    }
}

/// Lines of at most `max` bytes, read without ever holding more than `max + 1` bytes of one:
/// a huge line is refused after its first `max + 1` bytes, not read whole into memory.
struct Lines<'a> {
    input: &'a mut (dyn BufRead + Send),
    max: usize,
    buf: Vec<u8>,
    number: u64,
}

impl<'a> Lines<'a> {
    fn new(input: &'a mut (dyn BufRead + Send), max: usize) -> Lines<'a> {
        Lines {
            input,
            max,
            buf: Vec::new(),
            number: 0,
        }
    }

    /// The next line (its number, its bytes without the line end); `None` at the end.
    fn next(&mut self) -> Result<Option<(u64, &[u8])>, StoreError> {
        self.buf.clear();
        self.number += 1;
        let limit = u64::try_from(self.max)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let read = (&mut *self.input)
            .take(limit)
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| io_error("reading the backup", e))?;
        if read == 0 {
            return Ok(None);
        }
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        } else if self.buf.len() > self.max {
            return Err(StoreError::Corrupt(format!(
                "line {}: longer than {} bytes, the most a record of this server takes \
                 (see --max-message-bytes)",
                self.number, self.max
            )));
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        Ok(Some((self.number, &self.buf)))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::attachments::encode_id;
    use crate::storage::fixtures::limits;
    use crate::storage::sled_store::attachments::tests::store_with_uploads;
    use crate::storage::sled_store::backup::tests::linked_store;

    /// A multi-device backup (`linked_store`) as records, without its end record.
    async fn records() -> Vec<Value> {
        let (_dir, s) = linked_store().await;
        records_of(&s).await
    }

    /// `s`'s backup as records, without its end record.
    async fn records_of(s: &SledStore) -> Vec<Value> {
        let mut out = Vec::new();
        s.backup(&mut out).await.unwrap();
        let mut records: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        records.pop();
        records
    }

    /// `records` and an end record that counts them, as a file's text.
    fn text(records: &[Value]) -> String {
        let end = json!({"type": "end", "records": records.len()});
        let lines: Vec<String> = records.iter().chain([&end]).map(Value::to_string).collect();
        lines.join("\n") + "\n"
    }

    /// An edit of a backup's records.
    type Edit = fn(&mut Vec<Value>);

    /// The record of device `address`.
    fn device<'a>(records: &'a mut [Value], address: &str) -> &'a mut Value {
        let found = records.iter_mut().find(|r| r["address"] == address);
        found.unwrap()
    }

    async fn restore_into(dir: &Path, text: &str) -> Result<BackupSummary, StoreError> {
        restore_with(dir, text, &limits()).await
    }

    async fn restore_with(
        dir: &Path,
        text: &str,
        limits: &RestoreLimits,
    ) -> Result<BackupSummary, StoreError> {
        let options = StorageOptions {
            cache_capacity: 8 << 20,
            flush_timeout: std::time::Duration::from_secs(30),
        };
        restore_dir(&dir.join("db"), &mut text.as_bytes(), limits, &options).await
    }

    #[tokio::test]
    async fn an_account_over_max_devices_is_refused_and_nothing_is_left_behind() {
        let data = tempfile::tempdir().unwrap();
        let two = RestoreLimits {
            max_devices: 2,
            ..limits()
        };
        let err = restore_with(data.path(), &text(&records().await), &two)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("more than 2 devices"), "{err}");
        for name in ["db", "db.restoring"] {
            assert!(!data.path().join(name).exists(), "{name} was left behind");
        }
    }

    #[tokio::test]
    async fn a_linked_device_without_its_primary_is_refused_and_nothing_is_left_behind() {
        let good = records().await;
        let mut crafted = good.clone();
        crafted.retain(|r| r["address"] != "alice.1");
        let data = tempfile::tempdir().unwrap();
        let err = restore_into(data.path(), &text(&crafted))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("without) the user's primary"),
            "{err}"
        );
        for name in ["db", "db.restoring"] {
            assert!(!data.path().join(name).exists(), "{name} was left behind");
        }
        let sum = restore_into(data.path(), &text(&good)).await.unwrap();
        assert_eq!(sum.devices, 4);
    }

    #[tokio::test]
    async fn linked_devices_are_checked_as_linking_checks_them() {
        let good = records().await;
        let cases: [(&str, Edit); 7] = [
            ("a linked device's id is 2 to 127", |r| {
                device(r, "alice.3")["address"] = json!("alice.1")
            }),
            ("device 2 of user 1 twice", |r| {
                let mut again = device(r, "alice.3").clone();
                again["address"] = json!("alice.2");
                again["registrationId"] = json!(99);
                r.insert(5, again)
            }),
            ("registrationId 7 is another device's", |r| {
                device(r, "alice.3")["registrationId"] = json!(7)
            }),
            ("the identity key is not the account's", |r| {
                let mut other = [6u8; 33];
                other[0] = 5;
                let other = crate::crypto::b64::encode(&other);
                device(r, "alice.3")["identityKey"] = json!(other)
            }),
            ("a second primary device of user 1", |r| {
                device(r, "alice.3")
                    .as_object_mut()
                    .unwrap()
                    .remove("linked");
            }),
            ("device 9 of user 1, which was not restored", |r| {
                let key = r.iter_mut().find(|r| r["device"] == 3).unwrap();
                key["device"] = json!(9)
            }),
            ("recipientAddress is not the address", |r| {
                let m = r.iter_mut().find(|r| r["recipientAddress"] == "alice.3");
                m.unwrap()["device"] = json!(2)
            }),
        ];
        for (why, edit) in cases {
            let mut crafted = good.clone();
            edit(&mut crafted);
            let (_dir, s) = crate::storage::sled_store::temp();
            let err = s.restore(&mut text(&crafted).as_bytes(), &limits()).await;
            let err = err.expect_err(why).to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
    }

    #[tokio::test]
    async fn a_version_2_backup_restores_and_may_not_hold_attachments() {
        let (_dir, a) = store_with_uploads().await;
        let mut out = Vec::new();
        a.backup(&mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let v2 = text.replace(r#""version":3"#, r#""version":2"#);
        let (_dir2, b) = super::super::temp();
        let err = b.restore(&mut v2.as_bytes(), &limits()).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("a version 2 backup with an attachment"),
            "{err}"
        );
        // Without them, it is what version 2 wrote.
        let lines: Vec<&str> = v2
            .lines()
            .filter(|l| !l.contains(r#""type":"attachment""#))
            .collect();
        let end = format!(r#"{{"type":"end","records":{}}}"#, lines.len() - 1);
        let v2 = lines[..lines.len() - 1].join("\n") + "\n" + &end + "\n";
        let (_dir3, c) = super::super::temp();
        let sum = c.restore(&mut v2.as_bytes(), &limits()).await.unwrap();
        assert_eq!((sum.devices, sum.attachments), (4, 0));
    }

    /// The record of attachment `[seed; 16]`.
    fn attachment(records: &mut [Value], seed: u8) -> &mut Value {
        let id = encode_id(&[seed; 16]);
        records.iter_mut().find(|r| r["id"] == id.as_str()).unwrap()
    }

    /// Copies of attachment `[seed; 16]`'s record under the ids `[n; 16]` for `n` in `seeds`.
    fn copies(records: &mut Vec<Value>, seed: u8, seeds: std::ops::Range<u8>) {
        let model = attachment(records, seed).clone();
        for n in seeds {
            let mut copy = model.clone();
            copy["id"] = json!(encode_id(&[n; 16]));
            records.push(copy);
        }
    }

    #[tokio::test]
    async fn attachments_are_checked_as_the_server_checks_uploads() {
        let (_dir, s) = store_with_uploads().await;
        let good = records_of(&s).await;
        // `limits()`: 1 MiB at most, 3 unfinished uploads and 4 MiB per account.
        let cases: [(&str, Edit); 11] = [
            ("not 22 characters of base64url", |r| {
                attachment(r, 1)["id"] = json!("AAAA")
            }),
            ("of user 9, who was not restored", |r| {
                attachment(r, 3)["owner"] = json!(9)
            }),
            ("twice", |r| copies(r, 1, 1..2)),
            ("offset 1001 is past its length 1000", |r| {
                attachment(r, 2)["offset"] = json!(1001)
            }),
            ("complete, but its offset 999 is not its length 1000", |r| {
                attachment(r, 1)["offset"] = json!(999)
            }),
            ("all 1000 bytes are in, but it is not complete", |r| {
                attachment(r, 2)["offset"] = json!(1000)
            }),
            ("length 1048577 is not between 1 and 1048576", |r| {
                attachment(r, 2)["length"] = json!((1 << 20) + 1)
            }),
            ("a time is not between 1 and 2^63 - 1 ms", |r| {
                attachment(r, 1)["completed"] = json!(0)
            }),
            ("user 1 has more than 3 unfinished uploads", |r| {
                copies(r, 2, 10..13)
            }),
            (
                "the attachments of user 2 take more than 4194304 bytes",
                |r| {
                    let bob = attachment(r, 3);
                    bob["length"] = json!(1 << 20);
                    bob["offset"] = json!(1 << 20);
                    bob["completed"] = bob["created"].clone();
                    copies(r, 3, 10..14)
                },
            ),
            ("a version 2 backup with an attachment", |r| {
                r[0]["version"] = json!(2)
            }),
        ];
        for (why, edit) in cases {
            let mut crafted = good.clone();
            edit(&mut crafted);
            let (_dir, s) = crate::storage::sled_store::temp();
            let err = s.restore(&mut text(&crafted).as_bytes(), &limits()).await;
            let err = err.expect_err(why).to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
        // Up to the limits, they restore; a refused one leaves no database behind.
        let mut full = good.clone();
        copies(&mut full, 2, 10..12);
        let data = tempfile::tempdir().unwrap();
        let sum = restore_into(data.path(), &text(&full)).await.unwrap();
        assert_eq!(sum.attachments, 5);
        let mut crafted = good.clone();
        attachment(&mut crafted, 3)["owner"] = json!(9);
        let data = tempfile::tempdir().unwrap();
        let err = restore_into(data.path(), &text(&crafted)).await;
        assert!(err.unwrap_err().to_string().contains("not restored"));
        for name in ["db", "db.restoring"] {
            assert!(!data.path().join(name).exists(), "{name} was left behind");
        }
    }
}
