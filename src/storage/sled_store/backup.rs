//! Backup and restore in a portable format: JSON lines, one record per line, binary values in
//! base64. A backup is taken while the server runs and sees every tree at one instant (writers are
//! held at the gate while the records are read); derived data (indexes, counts, slots) is not
//! written but rebuilt on restore, so the format does not depend on this version's key layouts.
//! This module holds the format and the writer; `restore` reads it back, all or nothing,
//! checking each record (`restore_checks`, `restore_rules`).
//!
//! Version 2 added linked devices: a device record says whether it is linked (absent: the
//! account's primary), and a key or message record names its device by id (absent: the
//! primary). A version 1 file is a version 2 file without either, so a restore reads both.
//! Records come in the order a restore needs: users, then each user's devices (the primary
//! first, then linked devices by id), then keys and messages device by device in that order.
//!
//! Version 3 added attachments: one record per upload (its owner, length, durable offset and
//! times), after every other record. A record is not its blob: the blob store (a directory or a
//! bucket) is backed up on its own, after this file, so that every record's bytes are there. A
//! version 2 file is a version 3 file without attachment records, so a restore reads it.

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::linked::LinkedDevice;
use super::{decode, keys, SledStore, StoreError};
use crate::attachments::encode_id;
use crate::crypto::b64;
use crate::models::{Device, Message, SignedPreKey, User};
use crate::storage::attachments::Upload;

pub const FORMAT: &str = "signal-server-backup";
pub const VERSION: u32 = 3;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KeyRecord {
    pub key_id: u32,
    pub public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UserRecord {
    pub id: u64,
    pub username: String,
    pub email: String,
    pub password_hash: String,
    pub token_version: u32,
}

/// A device; its id is the one in its address.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeviceRecord {
    pub user: u64,
    /// A linked device; absent (false) for the account's primary.
    #[serde(default, skip_serializing_if = "is_false")]
    pub linked: bool,
    pub address: String,
    pub registration_id: u32,
    pub identity_key: String,
    pub signed_pre_key: KeyRecord,
    pub last_resort_kyber_pre_key: Option<KeyRecord>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MessageRecord {
    pub recipient: u64,
    /// The recipient's device; absent for the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<u32>,
    pub id: u64,
    pub sender_address: String,
    pub sender_registration_id: u32,
    pub content: String,
    pub recipient_address: String,
    pub timestamp: u64,
}

/// An upload's record (since version 3); times are ms since the epoch.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AttachmentRecord {
    /// base64url without padding, as in its path (`attachments::encode_id`).
    pub id: String,
    pub owner: u64,
    pub length: u64,
    /// Bytes durably in the blob store.
    pub offset: u64,
    pub created: u64,
    pub expires: u64,
    /// Absent while unfinished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<u64>,
}

/// One line of a backup: `{"type": "<variant>", ...its fields}`.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub(crate) enum Record {
    Header {
        format: String,
        version: u32,
    },
    User(UserRecord),
    Device(DeviceRecord),
    /// A one-time prekey of device `device` of `user` (absent: the primary).
    PreKey {
        user: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<u32>,
        key: KeyRecord,
    },
    KyberPreKey {
        user: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<u32>,
        key: KeyRecord,
    },
    Message(MessageRecord),
    Invite {
        hash: String,
        created: u64,
    },
    ResetToken {
        hash: String,
        user: u64,
        expires: u64,
        version: u32,
    },
    Attachment(AttachmentRecord),
    /// Counts of what came before, checked on restore: a cut-off file is refused.
    End {
        records: u64,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl DeviceRecord {
    pub(crate) fn of(user: u64, d: &Device, linked: bool) -> DeviceRecord {
        DeviceRecord {
            user,
            linked,
            address: d.address.clone(),
            registration_id: d.registration_id,
            identity_key: b64::encode(&d.identity_key),
            signed_pre_key: key_out(&d.signed_prekey),
            last_resort_kyber_pre_key: d.last_resort_kyber.as_ref().map(key_out),
        }
    }
}

impl AttachmentRecord {
    pub(crate) fn of(u: &Upload) -> AttachmentRecord {
        AttachmentRecord {
            id: encode_id(&u.id),
            owner: u.owner,
            length: u.length,
            offset: u.offset,
            created: u.created_ms,
            expires: u.expires_ms,
            completed: u.completed_ms,
        }
    }
}

impl MessageRecord {
    /// A message queued for `device` of `recipient` (`None`: the primary).
    pub(crate) fn of(recipient: u64, device: Option<u32>, m: Message) -> MessageRecord {
        MessageRecord {
            recipient,
            device,
            id: m.id,
            sender_address: m.sender_address,
            sender_registration_id: m.sender_registration_id,
            content: m.content,
            recipient_address: m.recipient_address,
            timestamp: m.timestamp,
        }
    }
}

/// What a backup or restore carried (`devices` counts linked devices too).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct BackupSummary {
    pub users: u64,
    pub devices: u64,
    pub prekeys: u64,
    pub kyber_prekeys: u64,
    pub messages: u64,
    pub invites: u64,
    pub reset_tokens: u64,
    pub attachments: u64,
}

pub(crate) fn key_out(k: &SignedPreKey) -> KeyRecord {
    KeyRecord {
        key_id: k.key_id,
        public_key: b64::encode(&k.public_key),
        signature: Some(b64::encode(&k.signature)),
    }
}

/// Writes records, one a line, counting them for the end record.
pub(crate) struct Writer<'a> {
    out: &'a mut (dyn Write + Send),
    records: u64,
}

impl<'a> Writer<'a> {
    /// A writer to `out` that has written the header.
    pub(crate) fn start(out: &'a mut (dyn Write + Send)) -> Result<Writer<'a>, StoreError> {
        let mut w = Writer { out, records: 0 };
        w.put(&Record::Header {
            format: FORMAT.into(),
            version: VERSION,
        })?;
        Ok(w)
    }

    /// Writes the end record, which counts every record before it.
    pub(crate) fn end(mut self) -> Result<(), StoreError> {
        let records = self.records;
        self.put(&Record::End { records })
    }

    pub(crate) fn put(&mut self, r: &Record) -> Result<(), StoreError> {
        let line = serde_json::to_string(r).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        writeln!(self.out, "{line}").map_err(|source| StoreError::Io {
            doing: "writing the backup".into(),
            source,
        })?;
        self.records += 1;
        Ok(())
    }
}

/// A device a backup carries, and the slot its keys and queue are kept under.
struct Kept {
    user: u64,
    device: Device,
    linked: bool,
    slot: u64,
}

impl Kept {
    /// How its keys and messages name it: by id if linked, by nothing if the primary.
    fn named(&self) -> Option<u32> {
        self.linked.then(|| self.device.id())
    }
}

type Visit<'v> = &'v mut dyn FnMut(&Kept) -> Result<(), StoreError>;

impl SledStore {
    /// Writes every record to `out`. Writers wait while the trees are read.
    pub async fn backup(&self, out: &mut (dyn Write + Send)) -> Result<BackupSummary, StoreError> {
        let _exclusive = self.gate.write().await;
        let mut w = Writer::start(out)?;
        let sum = BackupSummary {
            users: self.back_up_users(&mut w)?,
            devices: self.back_up_devices(&mut w)?,
            prekeys: self.back_up_prekeys(&mut w)?,
            kyber_prekeys: self.back_up_kyber_prekeys(&mut w)?,
            messages: self.back_up_messages(&mut w)?,
            invites: self.back_up_invites(&mut w)?,
            reset_tokens: self.back_up_reset_tokens(&mut w)?,
            attachments: self.back_up_attachments(&mut w)?,
        };
        w.end()?;
        Ok(sum)
    }

    fn back_up_users(&self, w: &mut Writer) -> Result<u64, StoreError> {
        let mut n = 0;
        for entry in self.users.iter() {
            let u: User = decode(&entry?.1)?;
            w.put(&Record::User(UserRecord {
                id: u.id,
                username: u.username,
                email: u.email,
                password_hash: u.password_hash,
                token_version: u.token_version,
            }))?;
            n += 1;
        }
        Ok(n)
    }

    /// Visits every device a backup carries, in the backup's order: by user, the primary first,
    /// then the linked devices by id. Left out: what an interrupted delete left behind (a
    /// device of a removed account, a linked device without its primary, keys and messages
    /// under a slot no device has), none of which a client can reach; a restore refuses such
    /// records, so every backup this writes can be restored.
    fn each_device(&self, visit: Visit) -> Result<(), StoreError> {
        for entry in self.devices.iter() {
            let (k, v) = entry?;
            if !self.users.contains_key(&k)? {
                continue;
            }
            let user = keys::decode_u64(&k).unwrap_or(0);
            let primary = Kept {
                user,
                device: decode(&v)?,
                linked: false,
                slot: user,
            };
            visit(&primary)?;
            for entry in self.linked_devices.scan_prefix(&k) {
                let linked: LinkedDevice = decode(&entry?.1)?;
                visit(&Kept {
                    user,
                    device: linked.device,
                    linked: true,
                    slot: linked.slot,
                })?;
            }
        }
        Ok(())
    }

    fn back_up_devices(&self, w: &mut Writer) -> Result<u64, StoreError> {
        let mut n = 0;
        self.each_device(&mut |d| {
            w.put(&Record::Device(DeviceRecord::of(
                d.user, &d.device, d.linked,
            )))?;
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }

    fn back_up_prekeys(&self, w: &mut Writer) -> Result<u64, StoreError> {
        let mut n = 0;
        self.each_device(&mut |d| {
            for entry in self.prekeys.scan_prefix(keys::user(d.slot)) {
                let (k, v) = entry?;
                let key = KeyRecord {
                    key_id: keys::prekey_id(&k).unwrap_or(0),
                    public_key: b64::encode(&v),
                    signature: None,
                };
                w.put(&Record::PreKey {
                    user: d.user,
                    device: d.named(),
                    key,
                })?;
                n += 1;
            }
            Ok(())
        })?;
        Ok(n)
    }

    fn back_up_kyber_prekeys(&self, w: &mut Writer) -> Result<u64, StoreError> {
        let mut n = 0;
        self.each_device(&mut |d| {
            for entry in self.kyber_prekeys.scan_prefix(keys::user(d.slot)) {
                let key: SignedPreKey = decode(&entry?.1)?;
                w.put(&Record::KyberPreKey {
                    user: d.user,
                    device: d.named(),
                    key: key_out(&key),
                })?;
                n += 1;
            }
            Ok(())
        })?;
        Ok(n)
    }

    fn back_up_messages(&self, w: &mut Writer) -> Result<u64, StoreError> {
        let mut n = 0;
        self.each_device(&mut |d| {
            for entry in self.messages.scan_prefix(keys::user(d.slot)) {
                let m: Message = decode(&entry?.1)?;
                w.put(&Record::Message(MessageRecord::of(d.user, d.named(), m)))?;
                n += 1;
            }
            Ok(())
        })?;
        Ok(n)
    }

    fn back_up_invites(&self, w: &mut Writer) -> Result<u64, StoreError> {
        let mut n = 0;
        for entry in self.invites.iter() {
            let (k, v) = entry?;
            w.put(&Record::Invite {
                hash: b64::encode(&k),
                created: keys::decode_u64(&v).unwrap_or(0),
            })?;
            n += 1;
        }
        Ok(n)
    }

    /// Pending resets, but for those of deleted accounts (which can never be used).
    fn back_up_reset_tokens(&self, w: &mut Writer) -> Result<u64, StoreError> {
        let mut n = 0;
        for entry in self.reset_tokens.iter() {
            let (k, v) = entry?;
            let field =
                |r: std::ops::Range<usize>| v.get(r).and_then(keys::decode_u64).unwrap_or(0);
            if !self.users.contains_key(keys::user(field(0..8)))? {
                continue;
            }
            w.put(&Record::ResetToken {
                hash: b64::encode(&k),
                user: field(0..8),
                expires: field(8..16),
                version: v.get(16..20).and_then(keys::decode_u32).unwrap_or(0),
            })?;
            n += 1;
        }
        Ok(n)
    }

    /// Upload records by id, but for those an interrupted account deletion left behind.
    fn back_up_attachments(&self, w: &mut Writer) -> Result<u64, StoreError> {
        let mut n = 0;
        for entry in self.attachments.records.iter() {
            let (k, v) = entry?;
            let upload = super::attachments::decode(&k, &v)?;
            if !self.users.contains_key(keys::user(upload.owner))? {
                continue;
            }
            w.put(&Record::Attachment(AttachmentRecord::of(&upload)))?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::models::{DeviceRef, PreKey};
    use crate::storage::fixtures::{limits, linked_accounts, old_style, primary, upload, HASH};
    use crate::storage::Storage;

    #[tokio::test]
    async fn a_restored_backup_backs_up_to_the_same_records_and_ids_continue_above() {
        let (_dir, a) = super::super::temp();
        let u = a
            .create_user("Alice", "a@x.org", HASH.into(), None)
            .await
            .unwrap();
        let spk = SignedPreKey {
            key_id: 1,
            public_key: vec![5; 33],
            signature: vec![1; 64],
        };
        let mut kyber = vec![8u8; 1569];
        kyber[1] = 0;
        let kyber = SignedPreKey {
            key_id: 2,
            public_key: kyber,
            signature: vec![1; 64],
        };
        let device = Device {
            address: "Alice.1".into(),
            registration_id: 9,
            identity_key: vec![5; 33],
            signed_prekey: spk.clone(),
            last_resort_kyber: Some(kyber.clone()),
        };
        let pks: Vec<PreKey> = (1..=3)
            .map(|i| PreKey {
                key_id: i,
                public_key: vec![5; 33],
            })
            .collect();
        a.create_device(u.id, &device, &pks, std::slice::from_ref(&kyber))
            .await
            .unwrap();
        let m = Message {
            id: 0,
            sender_address: "Alice.1".into(),
            sender_registration_id: 9,
            content: r#"{"registrationId":9}"#.into(),
            recipient_address: "Alice.1".into(),
            timestamp: 5,
        };
        let m = a.enqueue(primary(u.id), m, 10).await.unwrap();
        a.pop_prekeys(primary(u.id)).await.unwrap();
        let mut first = Vec::new();
        let sum = a.backup(&mut first).await.unwrap();
        assert_eq!(
            (
                sum.users,
                sum.devices,
                sum.prekeys,
                sum.kyber_prekeys,
                sum.messages
            ),
            (1, 1, 2, 0, 1)
        );

        let (_dir2, b) = super::super::temp();
        let restored = b.restore(&mut first.as_slice(), &limits()).await.unwrap();
        assert_eq!(restored, sum);
        let mut second = Vec::new();
        b.backup(&mut second).await.unwrap();
        assert_eq!(
            String::from_utf8(first).unwrap(),
            String::from_utf8(second).unwrap()
        );
        assert_eq!(b.stock(primary(u.id)).unwrap().prekeys, 2);
        assert_eq!(b.user_by_name("alice").unwrap().unwrap().id, u.id);
        let later = b.create_user("bob", "", "h".into(), None).await.unwrap();
        assert!(later.id > m.id);
    }

    #[tokio::test]
    async fn a_cut_off_backup_is_refused() {
        let (_dir, a) = super::super::temp();
        a.create_user("x", "", HASH.into(), None).await.unwrap();
        let mut out = Vec::new();
        a.backup(&mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let cut: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        let (_dir2, b) = super::super::temp();
        assert!(b.restore(&mut cut.as_bytes(), &limits()).await.is_err());
    }

    #[tokio::test]
    async fn leftovers_of_deleted_accounts_are_not_backed_up() {
        let (_dir, a) = super::super::temp();
        let u = a.create_user("gone", "", HASH.into(), None).await.unwrap();
        let grant = crate::storage::ResetGrant {
            user_id: u.id,
            token_version: 0,
            expires_at: u64::MAX,
        };
        a.put_reset_token(&[7; 32], &grant).await.unwrap();
        upload(&Storage::Sled(a.clone()), u.id, 1, 10, 10).await;
        a.delete_user(u.id).await.unwrap();
        let mut out = Vec::new();
        let sum = a.backup(&mut out).await.unwrap();
        assert_eq!(sum, BackupSummary::default());
        let (_dir2, b) = super::super::temp();
        assert_eq!(
            b.restore(&mut out.as_slice(), &limits()).await.unwrap(),
            sum
        );
    }

    /// Device `id` of user 1 (alice).
    fn alice(id: u32) -> DeviceRef {
        DeviceRef {
            user: 1,
            device: id,
        }
    }

    /// `fixtures::linked_accounts` on sled, with one more message the old way, to alice's primary.
    pub(in crate::storage::sled_store) async fn linked_store() -> (tempfile::TempDir, SledStore) {
        let (dir, s) = super::super::temp();
        linked_accounts(&Storage::Sled(s.clone())).await;
        s.enqueue(primary(1), old_style("alice.1"), 10)
            .await
            .unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn linked_devices_come_back_with_their_keys_and_queues_and_ids_continue_above() {
        let (_dir, a) = linked_store().await;
        let mut first = Vec::new();
        let sum = a.backup(&mut first).await.unwrap();
        let counts = |s: &BackupSummary| (s.devices, s.prekeys, s.kyber_prekeys, s.messages);
        assert_eq!(counts(&sum), (4, 8, 2, 5));
        let text = String::from_utf8(first).unwrap();
        // Devices by their ids, primaries first; never a slot.
        let devices: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(r#""type":"device""#))
            .collect();
        assert!(devices[0].contains("alice.1") && !devices[0].contains("linked"));
        assert!(devices[1].contains(r#""linked":true"#) && devices[1].contains("alice.2"));
        assert!(text.contains(r#""device":3"#) && !text.contains("slot"));

        let (_dir2, b) = super::super::temp();
        let restored = b.restore(&mut text.as_bytes(), &limits()).await.unwrap();
        assert_eq!(restored, sum);
        let mut second = Vec::new();
        b.backup(&mut second).await.unwrap();
        assert_eq!(text, String::from_utf8(second).unwrap());
        for (id, prekeys, queued) in [(1, 3, 2), (2, 2, 1), (3, 1, 1)] {
            assert_eq!(b.stock(alice(id)).unwrap().prekeys, prekeys, "device {id}");
            assert_eq!(b.messages(alice(id), 0, 10).unwrap().len(), queued);
        }
        let registration_ids: Vec<u32> = b
            .devices(1)
            .unwrap()
            .iter()
            .map(|d| d.registration_id)
            .collect();
        assert_eq!(registration_ids, [7, 12, 11]);
        let popped = b.pop_prekeys(alice(2)).await.unwrap();
        assert_eq!(popped.prekey.map(|k| k.key_id), Some(1));

        // Each linked device has a slot of its own, no user's; new ids come above them all.
        let slots = [b.slot_of(alice(2)).unwrap(), b.slot_of(alice(3)).unwrap()];
        assert!(
            slots[0] != slots[1] && slots.iter().all(|s| *s > 2),
            "{slots:?}"
        );
        let carol = b.create_user("carol", "", HASH.into(), None).await.unwrap();
        assert!(
            slots.iter().all(|s| carol.id > *s),
            "{} {slots:?}",
            carol.id
        );
        let newest = b.messages(alice(1), 0, 10).unwrap().last().unwrap().id;
        assert!(carol.id > newest);
    }

    #[tokio::test]
    async fn a_version_1_backup_restores_and_its_messages_are_checked_as_version_1_did() {
        let (_dir, a) = linked_store().await;
        a.delete_device(1).await.unwrap();
        let mut out = Vec::new();
        let sum = a.backup(&mut out).await.unwrap();
        // Without linked devices, version 2 writes the records version 1 wrote.
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("linked") && !text.contains(r#""device":"#));
        let v1 = text.replace(r#""version":3"#, r#""version":1"#);
        let (_dir2, b) = super::super::temp();
        assert_eq!(b.restore(&mut v1.as_bytes(), &limits()).await.unwrap(), sum);
        assert_eq!(b.devices(2).unwrap().len(), 1);
        assert_eq!(b.stock(primary(2)).unwrap().prekeys, 2);
        assert_eq!(b.messages(primary(2), 0, 10).unwrap().len(), 1);

        // Version 1 held only sends to one device, whose content names its registrationId.
        let other = v1.replace(r#"{\"registrationId\":7}"#, r#"{\"registrationId\":8}"#);
        assert_ne!(other, v1);
        let (_dir3, c) = super::super::temp();
        let err = c
            .restore(&mut other.as_bytes(), &limits())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("registrationId"), "{err}");
        let v2 = other.replace(r#""version":1"#, r#""version":2"#);
        let (_dir4, d) = super::super::temp();
        d.restore(&mut v2.as_bytes(), &limits()).await.unwrap();
    }
}
