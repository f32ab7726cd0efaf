//! A restore's checks that need what came before (uniqueness, the users and devices a record
//! names, counts per device and queue, the header and end records), then the write of a record
//! that passed them and `restore_checks`. A record that names a user comes after that user's
//! record, as `backup` writes them, so every check is a lookup in the database being built; only
//! per-user counts are kept in memory.
//!
//! The rules are the same whatever store is being filled: the store only answers lookups and
//! takes writes (`RestoreTarget`; sled's trees here, a PostgreSQL transaction in `pg_store`).

use std::collections::HashMap;

use super::backup::{
    BackupSummary, DeviceRecord, KeyRecord, MessageRecord, Record, UserRecord, FORMAT, VERSION,
};
use super::restore_checks::{bad, check_id, device_in, message_in, prekey_in, token_hash, user_in};
use super::{encode, keys, ResetGrant, SledStore, StoreError};
use crate::models::{Device, Message, SignedPreKey, User};
use crate::requests::{self, KeyKind};

/// The store a restore fills: lookups of what was restored so far, and the writes of records
/// that passed every check. Usernames and emails are looked up lowercased.
pub(crate) trait RestoreTarget {
    async fn user(&mut self, id: u64) -> Result<Option<User>, StoreError>;
    async fn username_taken(&mut self, lowercased: &str) -> Result<bool, StoreError>;
    async fn email_taken(&mut self, lowercased: &str) -> Result<bool, StoreError>;
    async fn put_user(&mut self, user: &User) -> Result<(), StoreError>;
    async fn device(&mut self, user: u64) -> Result<Option<Device>, StoreError>;
    async fn put_device(&mut self, user: u64, device: &Device) -> Result<(), StoreError>;
    /// A one-time prekey (`signature` empty for EC keys).
    async fn has_prekey(&mut self, user: u64, kind: KeyKind, id: u32) -> Result<bool, StoreError>;
    async fn put_prekey(
        &mut self,
        user: u64,
        kind: KeyKind,
        key: &SignedPreKey,
    ) -> Result<(), StoreError>;
    async fn has_message(&mut self, id: u64) -> Result<bool, StoreError>;
    async fn put_message(&mut self, recipient: u64, message: &Message) -> Result<(), StoreError>;
    async fn has_invite(&mut self, hash: &[u8]) -> Result<bool, StoreError>;
    async fn put_invite(&mut self, hash: &[u8], created: u64) -> Result<(), StoreError>;
    async fn has_reset_token(&mut self, hash: &[u8]) -> Result<bool, StoreError>;
    async fn put_reset_token(&mut self, hash: &[u8], grant: &ResetGrant) -> Result<(), StoreError>;
}

/// The server's limits that a restore applies as the API would.
#[derive(Debug, Clone)]
pub struct RestoreLimits {
    pub max_message_bytes: usize,
    pub max_prekeys: u32,
    pub max_queued_messages: u32,
}

impl RestoreLimits {
    /// The longest line a backup of this server can hold: a message whose content is all
    /// control characters (six bytes each once escaped in JSON), plus the other fields.
    pub fn max_line_bytes(&self) -> usize {
        self.max_message_bytes
            .saturating_mul(6)
            .saturating_add(16 << 10)
    }
}

/// The state of a restore between records.
pub(crate) struct Restoring<'a, T: RestoreTarget> {
    db: T,
    limits: &'a RestoreLimits,
    sum: BackupSummary,
    /// Records so far, the header included: what the end record must say.
    records: u64,
    /// The largest id restored or referred to; new ids start above it.
    max_id: u64,
    header: bool,
    ended: bool,
    /// user id → one-time (EC, Kyber) prekeys restored so far.
    stock: HashMap<u64, (u32, u32)>,
    /// user id → messages queued so far.
    queues: HashMap<u64, u32>,
}

impl<'a, T: RestoreTarget> Restoring<'a, T> {
    pub fn new(db: T, limits: &'a RestoreLimits) -> Restoring<'a, T> {
        Restoring {
            db,
            limits,
            sum: BackupSummary::default(),
            records: 0,
            max_id: 0,
            header: false,
            ended: false,
            stock: HashMap::new(),
            queues: HashMap::new(),
        }
    }

    /// Checks one record and writes it; the first record must be the header, the last the end.
    pub async fn take(&mut self, record: Record) -> Result<(), StoreError> {
        if self.ended {
            return bad("a record after the end record".into());
        }
        match (&record, self.header) {
            (Record::Header { .. }, true) => return bad("a second header".into()),
            (Record::Header { .. }, false) => {}
            (_, false) => return bad("the first record is not the backup's header".into()),
            _ => {}
        }
        match record {
            Record::Header { format, version } => self.header(&format, version)?,
            Record::End { records } => self.end(records)?,
            Record::User(u) => self.user(u).await?,
            Record::Device(d) => self.device(d).await?,
            Record::PreKey { user, key } => self.prekey(user, key, KeyKind::Ec).await?,
            Record::KyberPreKey { user, key } => self.prekey(user, key, KeyKind::Kyber).await?,
            Record::Message(m) => self.message(m).await?,
            Record::Invite { hash, created } => self.invite(&hash, created).await?,
            Record::ResetToken {
                hash,
                user,
                expires,
                version,
            } => self.reset_token(&hash, user, expires, version).await?,
        }
        self.records += 1;
        Ok(())
    }

    /// What was restored, and the largest id in it; refuses a backup without its end record.
    pub fn finish(self) -> Result<(BackupSummary, u64), StoreError> {
        if !self.ended {
            return bad("the backup is cut off (no end record)".into());
        }
        Ok((self.sum, self.max_id))
    }

    fn header(&mut self, format: &str, version: u32) -> Result<(), StoreError> {
        if format != FORMAT || version == 0 || version > VERSION {
            return bad(format!(
                "not a backup this version reads: {format} v{version}"
            ));
        }
        self.header = true;
        Ok(())
    }

    fn end(&mut self, expected: u64) -> Result<(), StoreError> {
        if expected != self.records {
            return bad(format!(
                "the backup has {} records, its end record says {expected}",
                self.records
            ));
        }
        self.ended = true;
        Ok(())
    }

    async fn user(&mut self, r: UserRecord) -> Result<(), StoreError> {
        let user = user_in(r)?;
        let id = user.id;
        let name = user.username.to_lowercase();
        let email = user.email.to_lowercase();
        if self.db.user(id).await?.is_some() {
            return bad(format!("user id {id} twice"));
        }
        if self.db.username_taken(&name).await? {
            return bad(format!(
                "user {id}: username {} is an earlier user's (usernames are unique \
                 case-insensitively)",
                user.username
            ));
        }
        if !email.is_empty() && self.db.email_taken(&email).await? {
            return bad(format!(
                "user {id}: email is an earlier user's (emails are unique case-insensitively)"
            ));
        }
        self.db.put_user(&user).await?;
        self.sum.users += 1;
        self.max_id = self.max_id.max(id);
        Ok(())
    }

    async fn device(&mut self, r: DeviceRecord) -> Result<(), StoreError> {
        let (user, device) = device_in(r)?;
        let Some(owner) = self.db.user(user).await? else {
            return bad(format!("a device of unknown user {user}"));
        };
        if self.db.device(user).await?.is_some() {
            return bad(format!("a second device of user {user}"));
        }
        match requests::parse_address(&device.address) {
            Some((name, _)) if name.eq_ignore_ascii_case(&owner.username) => {}
            _ => {
                return bad(format!(
                    "device of user {user}: the address is not <their username>.<1 to 127>"
                ))
            }
        }
        self.db.put_device(user, &device).await?;
        self.sum.devices += 1;
        Ok(())
    }

    /// A one-time prekey, at most `--max-prekeys` of each kind per device.
    async fn prekey(&mut self, user: u64, key: KeyRecord, kind: KeyKind) -> Result<(), StoreError> {
        let what = match kind {
            KeyKind::Ec => "one-time prekey",
            KeyKind::Kyber => "one-time Kyber prekey",
        };
        if self.db.device(user).await?.is_none() {
            return bad(format!("a {what} of user {user}, who has no device"));
        }
        let key = prekey_in(what, key, kind)?;
        let id = key.key_id;
        if self.db.has_prekey(user, kind, id).await? {
            return bad(format!("{what} {id} of user {user} twice"));
        }
        let stock = self.stock.entry(user).or_default();
        let count = match kind {
            KeyKind::Ec => &mut stock.0,
            KeyKind::Kyber => &mut stock.1,
        };
        *count += 1;
        if *count > self.limits.max_prekeys {
            return bad(format!(
                "user {user} has more than {} {what}s (--max-prekeys)",
                self.limits.max_prekeys
            ));
        }
        self.db.put_prekey(user, kind, &key).await?;
        match kind {
            KeyKind::Ec => self.sum.prekeys += 1,
            KeyKind::Kyber => self.sum.kyber_prekeys += 1,
        }
        Ok(())
    }

    /// A queued message, checked as `POST /messages` checks it: to the recipient's device (its
    /// address, and its registrationId inside the content), within the size and queue limits.
    async fn message(&mut self, r: MessageRecord) -> Result<(), StoreError> {
        let (recipient, m) = message_in(r, self.limits.max_message_bytes)?;
        let id = m.id;
        let Some(device) = self.db.device(recipient).await? else {
            return bad(format!(
                "message {id} for user {recipient}, who has no device"
            ));
        };
        if m.recipient_address != device.address {
            return bad(format!(
                "message {id}: recipientAddress is not the address of its recipient's device"
            ));
        }
        if requests::inner_registration_id(&m.content) != Some(u64::from(device.registration_id)) {
            return bad(format!(
                "message {id}: the content is not a JSON object with the registrationId of \
                 its recipient's device"
            ));
        }
        if self.db.has_message(id).await? {
            return bad(format!("message id {id} twice"));
        }
        let queued = self.queues.entry(recipient).or_default();
        *queued += 1;
        if *queued > self.limits.max_queued_messages {
            return bad(format!(
                "more than {} messages queued for user {recipient} (--max-queued-messages)",
                self.limits.max_queued_messages
            ));
        }
        self.db.put_message(recipient, &m).await?;
        self.sum.messages += 1;
        self.max_id = self.max_id.max(id);
        Ok(())
    }

    async fn invite(&mut self, hash: &str, created: u64) -> Result<(), StoreError> {
        let hash = token_hash("invite", hash)?;
        if self.db.has_invite(&hash).await? {
            return bad("an invite twice".into());
        }
        self.db.put_invite(&hash, created).await?;
        self.sum.invites += 1;
        Ok(())
    }

    /// A pending password reset. One of an account deleted since it was issued can never be used
    /// (ids are not handed out again: new ids start above it), so it is left out, not refused.
    async fn reset_token(
        &mut self,
        hash: &str,
        user: u64,
        expires: u64,
        version: u32,
    ) -> Result<(), StoreError> {
        check_id("reset token's user id", user)?;
        let hash = token_hash("reset token", hash)?;
        if self.db.has_reset_token(&hash).await? {
            return bad("a reset token twice".into());
        }
        self.max_id = self.max_id.max(user);
        if self.db.user(user).await?.is_none() {
            return Ok(());
        }
        let grant = ResetGrant {
            user_id: user,
            token_version: version,
            expires_at: expires,
        };
        self.db.put_reset_token(&hash, &grant).await?;
        self.sum.reset_tokens += 1;
        Ok(())
    }
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

    async fn device(&mut self, user: u64) -> Result<Option<Device>, StoreError> {
        SledStore::device(self, user)
    }

    async fn put_device(&mut self, user: u64, device: &Device) -> Result<(), StoreError> {
        self.devices.insert(keys::user(user), encode(device))?;
        Ok(())
    }

    async fn has_prekey(&mut self, user: u64, kind: KeyKind, id: u32) -> Result<bool, StoreError> {
        let tree = match kind {
            KeyKind::Ec => &self.prekeys,
            KeyKind::Kyber => &self.kyber_prekeys,
        };
        Ok(tree.contains_key(keys::prekey(user, id))?)
    }

    async fn put_prekey(
        &mut self,
        user: u64,
        kind: KeyKind,
        key: &SignedPreKey,
    ) -> Result<(), StoreError> {
        let k = keys::prekey(user, key.key_id);
        match kind {
            KeyKind::Ec => self.prekeys.insert(k, key.public_key.as_slice())?,
            KeyKind::Kyber => self.kyber_prekeys.insert(k, encode(key))?,
        };
        Ok(())
    }

    async fn has_message(&mut self, id: u64) -> Result<bool, StoreError> {
        Ok(self.message_index.contains_key(id.to_be_bytes())?)
    }

    async fn put_message(&mut self, recipient: u64, m: &Message) -> Result<(), StoreError> {
        self.message_index.insert(
            m.id.to_be_bytes(),
            &keys::index_value(recipient, m.timestamp),
        )?;
        self.messages
            .insert(keys::message(recipient, m.id), encode(m))?;
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
}
