//! Backup and restore in a portable format: JSON lines, one record per line, binary values in
//! base64. A backup is taken while the server runs and sees every tree at one instant (writers are
//! held at the gate while the records are read); derived data (indexes, counts) is not written
//! but rebuilt on restore, so the format does not depend on this version's key layouts. This
//! module holds the format and the writer; `restore` reads it back, all or nothing, checking each
//! record (`restore_checks`, `restore_rules`).

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::keys;
use super::{decode, SledStore, StoreError};
use crate::crypto::b64;
use crate::models::{Device, Message, SignedPreKey, User};

pub const FORMAT: &str = "signal-server-backup";
pub const VERSION: u32 = 1;

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

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeviceRecord {
    pub user: u64,
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
    pub id: u64,
    pub sender_address: String,
    pub sender_registration_id: u32,
    pub content: String,
    pub recipient_address: String,
    pub timestamp: u64,
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
    PreKey {
        user: u64,
        key: KeyRecord,
    },
    KyberPreKey {
        user: u64,
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
    /// Counts of what came before, checked on restore: a cut-off file is refused.
    End {
        records: u64,
    },
}

/// What a backup or restore carried.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct BackupSummary {
    pub users: u64,
    pub devices: u64,
    pub prekeys: u64,
    pub kyber_prekeys: u64,
    pub messages: u64,
    pub invites: u64,
    pub reset_tokens: u64,
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

fn user_of(key: &[u8]) -> u64 {
    keys::decode_u64(key).unwrap_or(0)
}

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

    fn back_up_devices(&self, w: &mut Writer) -> Result<u64, StoreError> {
        let mut n = 0;
        for entry in self.devices.iter() {
            let (k, v) = entry?;
            if !self.kept(user_of(&k), false)? {
                continue;
            }
            let d: Device = decode(&v)?;
            w.put(&Record::Device(DeviceRecord {
                user: user_of(&k),
                address: d.address,
                registration_id: d.registration_id,
                identity_key: b64::encode(&d.identity_key),
                signed_pre_key: key_out(&d.signed_prekey),
                last_resort_kyber_pre_key: d.last_resort_kyber.as_ref().map(key_out),
            }))?;
            n += 1;
        }
        Ok(n)
    }

    fn back_up_prekeys(&self, w: &mut Writer) -> Result<u64, StoreError> {
        let mut n = 0;
        for entry in self.prekeys.iter() {
            let (k, v) = entry?;
            if !self.kept(user_of(&k), true)? {
                continue;
            }
            let key = KeyRecord {
                key_id: keys::prekey_id(&k).unwrap_or(0),
                public_key: b64::encode(&v),
                signature: None,
            };
            w.put(&Record::PreKey {
                user: user_of(&k),
                key,
            })?;
            n += 1;
        }
        Ok(n)
    }

    fn back_up_kyber_prekeys(&self, w: &mut Writer) -> Result<u64, StoreError> {
        let mut n = 0;
        for entry in self.kyber_prekeys.iter() {
            let (k, v) = entry?;
            if !self.kept(user_of(&k), true)? {
                continue;
            }
            let key: SignedPreKey = decode(&v)?;
            w.put(&Record::KyberPreKey {
                user: user_of(&k),
                key: key_out(&key),
            })?;
            n += 1;
        }
        Ok(n)
    }

    fn back_up_messages(&self, w: &mut Writer) -> Result<u64, StoreError> {
        let mut n = 0;
        for entry in self.messages.iter() {
            let (k, v) = entry?;
            if !self.kept(user_of(&k), true)? {
                continue;
            }
            let m: Message = decode(&v)?;
            w.put(&Record::Message(MessageRecord {
                recipient: user_of(&k),
                id: m.id,
                sender_address: m.sender_address,
                sender_registration_id: m.sender_registration_id,
                content: m.content,
                recipient_address: m.recipient_address,
                timestamp: m.timestamp,
            }))?;
            n += 1;
        }
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

    fn back_up_reset_tokens(&self, w: &mut Writer) -> Result<u64, StoreError> {
        let mut n = 0;
        for entry in self.reset_tokens.iter() {
            let (k, v) = entry?;
            let field =
                |r: std::ops::Range<usize>| v.get(r).and_then(keys::decode_u64).unwrap_or(0);
            if !self.kept(field(0..8), false)? {
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

    /// Whether records of `user` belong in a backup. Left out: what an interrupted delete left
    /// behind (keys or messages of a removed device, anything of a removed account) and reset
    /// grants of deleted accounts, none of which a client can reach; a restore refuses records
    /// of unknown users, so every backup this writes can be restored.
    fn kept(&self, user: u64, needs_device: bool) -> Result<bool, StoreError> {
        let key = keys::user(user);
        Ok(self.users.contains_key(key)? && (!needs_device || self.devices.contains_key(key)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::PreKey;
    use crate::storage::fixtures::primary;
    use crate::storage::RestoreLimits;

    const HASH: &str = "pbkdf2_sha256$1000$c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    fn limits() -> RestoreLimits {
        RestoreLimits {
            max_message_bytes: 65_536,
            max_prekeys: 100,
            max_queued_messages: 10,
        }
    }

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
}
