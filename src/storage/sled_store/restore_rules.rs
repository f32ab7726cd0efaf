//! A restore's checks that need what came before (uniqueness, the users and devices a record
//! names, counts per device and queue, the header and end records), then the write of a record
//! that passed them and `restore_checks`. A record that names a user comes after that user's
//! record, and one that names a device after that device's, as `backup` writes them, so every
//! check is a lookup in the database being built; only per-device counts (and the devices of
//! the user read last) are kept in memory.
//!
//! A linked device is checked as `POST /v2/devices` checks it, against the devices restored
//! before it: its user's primary comes first, its id is in 2..=127 and no other device's of the
//! account, its registrationId too, and its identity key is the account's.
//!
//! An attachment's record names its owner, a user restored before it; the limits on what one
//! account may hold (unfinished uploads, bytes) apply as at the upload's creation.
//!
//! The rules are the same whatever store is being filled: the store only answers lookups and
//! takes writes (`RestoreTarget`: sled's trees in `restore`, a PostgreSQL transaction in
//! `pg_store`).

use std::collections::HashMap;

use super::backup::{
    AttachmentRecord, BackupSummary, DeviceRecord, KeyRecord, MessageRecord, Record, UserRecord,
    FORMAT, VERSION,
};
use super::restore_checks::{
    attachment_in, bad, check_id, check_linked, device_in, message_in, names_a_linked_device,
    prekey_in, token_hash, user_in, whose,
};
use super::{ResetGrant, StoreError};
use crate::attachments::encode_id;
use crate::models::{Device, DeviceRef, Message, SignedPreKey, User};
use crate::requests::{self, KeyKind};
use crate::storage::attachments::{AttachmentId, Upload, UploadLimits};

/// The store a restore fills: lookups of what was restored so far, and the writes of records
/// that passed every check. Usernames and emails are looked up lowercased.
pub(crate) trait RestoreTarget {
    async fn user(&mut self, id: u64) -> Result<Option<User>, StoreError>;
    async fn username_taken(&mut self, lowercased: &str) -> Result<bool, StoreError>;
    async fn email_taken(&mut self, lowercased: &str) -> Result<bool, StoreError>;
    async fn put_user(&mut self, user: &User) -> Result<(), StoreError>;
    /// Every device of `user` restored so far, the primary first.
    async fn devices(&mut self, user: u64) -> Result<Vec<Device>, StoreError>;
    /// A device: the account's primary when `linked` is `None`; a linked device otherwise, with
    /// a fresh id (above every id restored before it, and no user's) that the store may keep
    /// its keys and queue under (sled's slot).
    async fn put_device(
        &mut self,
        user: u64,
        device: &Device,
        linked: Option<u64>,
    ) -> Result<(), StoreError>;
    /// A one-time prekey (`signature` empty for EC keys) of a restored device.
    async fn has_prekey(
        &mut self,
        device: DeviceRef,
        kind: KeyKind,
        id: u32,
    ) -> Result<bool, StoreError>;
    async fn put_prekey(
        &mut self,
        device: DeviceRef,
        kind: KeyKind,
        key: &SignedPreKey,
    ) -> Result<(), StoreError>;
    async fn has_message(&mut self, id: u64) -> Result<bool, StoreError>;
    async fn put_message(
        &mut self,
        recipient: DeviceRef,
        message: &Message,
    ) -> Result<(), StoreError>;
    async fn has_invite(&mut self, hash: &[u8]) -> Result<bool, StoreError>;
    async fn put_invite(&mut self, hash: &[u8], created: u64) -> Result<(), StoreError>;
    async fn has_reset_token(&mut self, hash: &[u8]) -> Result<bool, StoreError>;
    async fn put_reset_token(&mut self, hash: &[u8], grant: &ResetGrant) -> Result<(), StoreError>;
    async fn has_upload(&mut self, id: &AttachmentId) -> Result<bool, StoreError>;
    /// An upload's record, with whatever the store derives from it (sled's indexes and usage).
    async fn put_upload(&mut self, upload: &Upload) -> Result<(), StoreError>;
}

/// The server's limits that a restore applies as the API would.
#[derive(Debug, Clone)]
pub struct RestoreLimits {
    pub max_message_bytes: usize,
    pub max_prekeys: u32,
    pub max_queued_messages: u32,
    /// Devices per account, the primary included (`--max-devices`).
    pub max_devices: u32,
    /// The largest upload (`--max-attachment-bytes`).
    pub max_attachment_bytes: u64,
    /// What one account may hold (`--attachment-quota`, `attachments::MAX_UNFINISHED`).
    pub uploads: UploadLimits,
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
    /// The largest id restored, referred to or handed to a linked device; new ids start above.
    max_id: u64,
    /// The first id handed to a linked device: a user with this id or above would share it.
    first_fresh: Option<u64>,
    /// The header's version (0 before the header).
    version: u32,
    ended: bool,
    /// device → one-time (EC, Kyber) prekeys restored so far.
    stock: HashMap<DeviceRef, (u32, u32)>,
    /// device → messages queued so far.
    queues: HashMap<DeviceRef, u32>,
    /// owner → (unfinished uploads, bytes of all uploads) so far.
    usage: HashMap<u64, (u32, u64)>,
    /// The devices of the user whose records were read last: a user's records come together.
    devices: Option<(u64, Vec<Device>)>,
}

impl<'a, T: RestoreTarget> Restoring<'a, T> {
    pub fn new(db: T, limits: &'a RestoreLimits) -> Restoring<'a, T> {
        Restoring {
            db,
            limits,
            sum: BackupSummary::default(),
            records: 0,
            max_id: 0,
            first_fresh: None,
            version: 0,
            ended: false,
            stock: HashMap::new(),
            queues: HashMap::new(),
            usage: HashMap::new(),
            devices: None,
        }
    }

    /// Checks one record and writes it; the first record must be the header, the last the end.
    pub async fn take(&mut self, record: Record) -> Result<(), StoreError> {
        if self.ended {
            return bad("a record after the end record".into());
        }
        match (&record, self.version) {
            (Record::Header { .. }, 0) => {}
            (Record::Header { .. }, _) => return bad("a second header".into()),
            (_, 0) => return bad("the first record is not the backup's header".into()),
            (r, 1) if names_a_linked_device(r) => {
                return bad(
                    "a version 1 backup with a linked device (that came with version 2)".into(),
                )
            }
            (Record::Attachment(_), v) if v < 3 => {
                return bad(format!(
                    "a version {v} backup with an attachment (that came with version 3)"
                ))
            }
            _ => {}
        }
        match record {
            Record::Header { format, version } => self.header(&format, version)?,
            Record::End { records } => self.end(records)?,
            Record::User(u) => self.user(u).await?,
            Record::Device(d) => self.device(d).await?,
            Record::PreKey { user, device, key } => {
                self.prekey(user, device, key, KeyKind::Ec).await?
            }
            Record::KyberPreKey { user, device, key } => {
                self.prekey(user, device, key, KeyKind::Kyber).await?
            }
            Record::Message(m) => self.message(m).await?,
            Record::Invite { hash, created } => self.invite(&hash, created).await?,
            Record::ResetToken {
                hash,
                user,
                expires,
                version,
            } => self.reset_token(&hash, user, expires, version).await?,
            Record::Attachment(a) => self.attachment(a).await?,
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
        self.version = version;
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
        if let Some(first) = self.first_fresh.filter(|first| id >= *first) {
            return bad(format!(
                "user {id} comes after a linked device, which was given id {first} (a backup \
                 lists every user before the devices)"
            ));
        }
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
        let linked = r.linked;
        let (user, device) = device_in(r)?;
        let Some(owner) = self.db.user(user).await? else {
            return bad(format!("a device of unknown user {user}"));
        };
        let id = match requests::parse_address(&device.address) {
            Some((name, id)) if name.eq_ignore_ascii_case(&owner.username) => id,
            _ => {
                return bad(format!(
                    "device of user {user}: the address is not <their username>.<1 to 127>"
                ))
            }
        };
        let max_devices = self.limits.max_devices;
        let devices = self.devices_of(user).await?;
        if linked {
            check_linked(user, id, &device, devices)?;
            if devices.len() >= max_devices as usize {
                return bad(format!(
                    "user {user} has more than {max_devices} devices (--max-devices)"
                ));
            }
        } else if !devices.is_empty() {
            return bad(format!("a second primary device of user {user}"));
        }
        let fresh = linked.then(|| self.fresh_id());
        self.db.put_device(user, &device, fresh).await?;
        if let Some((_, devices)) = &mut self.devices {
            devices.push(device);
        }
        self.sum.devices += 1;
        Ok(())
    }

    /// An id above every id so far, for a linked device's records (see `RestoreTarget`).
    fn fresh_id(&mut self) -> u64 {
        self.max_id += 1;
        self.first_fresh.get_or_insert(self.max_id);
        self.max_id
    }

    /// The devices of `user` restored so far, the primary first (cached for the user's next
    /// records; `device` keeps the cache up to date).
    async fn devices_of(&mut self, user: u64) -> Result<&[Device], StoreError> {
        if self.devices.as_ref().map(|(u, _)| *u) != Some(user) {
            let devices = self.db.devices(user).await?;
            self.devices = Some((user, devices));
        }
        Ok(self.devices.as_ref().map_or(&[], |(_, d)| d.as_slice()))
    }

    /// The device a key or message names (`device` absent: the primary), if restored.
    async fn named(
        &mut self,
        user: u64,
        device: Option<u32>,
    ) -> Result<Option<&Device>, StoreError> {
        let devices = self.devices_of(user).await?;
        Ok(match device {
            None => devices.first(),
            Some(id) => devices.iter().find(|d| d.id() == id),
        })
    }

    /// A one-time prekey, at most `--max-prekeys` of each kind per device.
    async fn prekey(
        &mut self,
        user: u64,
        device: Option<u32>,
        key: KeyRecord,
        kind: KeyKind,
    ) -> Result<(), StoreError> {
        let what = match kind {
            KeyKind::Ec => "one-time prekey",
            KeyKind::Kyber => "one-time Kyber prekey",
        };
        let Some(to) = self.named(user, device).await?.map(|d| d.of(user)) else {
            return bad(format!(
                "a {what} of {}, which was not restored",
                whose(user, device)
            ));
        };
        let key = prekey_in(what, key, kind)?;
        let id = key.key_id;
        if self.db.has_prekey(to, kind, id).await? {
            return bad(format!("{what} {id} of {to} twice"));
        }
        let stock = self.stock.entry(to).or_default();
        let count = match kind {
            KeyKind::Ec => &mut stock.0,
            KeyKind::Kyber => &mut stock.1,
        };
        *count += 1;
        if *count > self.limits.max_prekeys {
            return bad(format!(
                "{to} has more than {} {what}s (--max-prekeys)",
                self.limits.max_prekeys
            ));
        }
        self.db.put_prekey(to, kind, &key).await?;
        match kind {
            KeyKind::Ec => self.sum.prekeys += 1,
            KeyKind::Kyber => self.sum.kyber_prekeys += 1,
        }
        Ok(())
    }

    /// A queued message, checked as the API checks a send: to the recipient's device (its
    /// address; in version 1, its registrationId inside the content), within the size and
    /// queue limits. Since version 2 the content of a send to every device is opaque (the
    /// registrationId beside it was checked instead), so it is not read.
    async fn message(&mut self, r: MessageRecord) -> Result<(), StoreError> {
        let named = r.device;
        let (recipient, m) = message_in(r, self.limits.max_message_bytes)?;
        let id = m.id;
        let Some(device) = self.named(recipient, named).await? else {
            return bad(format!(
                "message {id} for {}, which was not restored",
                whose(recipient, named)
            ));
        };
        let to = device.of(recipient);
        if m.recipient_address != device.address {
            return bad(format!(
                "message {id}: recipientAddress is not the address of its recipient's device"
            ));
        }
        let registration_id = Some(u64::from(device.registration_id));
        if self.version == 1 && requests::inner_registration_id(&m.content) != registration_id {
            return bad(format!(
                "message {id}: the content is not a JSON object with the registrationId of \
                 its recipient's device"
            ));
        }
        if self.db.has_message(id).await? {
            return bad(format!("message id {id} twice"));
        }
        let queued = self.queues.entry(to).or_default();
        *queued += 1;
        if *queued > self.limits.max_queued_messages {
            return bad(format!(
                "more than {} messages queued for {to} (--max-queued-messages)",
                self.limits.max_queued_messages
            ));
        }
        self.db.put_message(to, &m).await?;
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

    /// An upload's record, of a restored account (a backup leaves out those of deleted ones, so
    /// one without its owner was edited: refused, not left out, for its blob would then be
    /// swept as left over), within the limits the creation was checked against: the account's
    /// unfinished uploads and its bytes, unfinished ones at their full length.
    async fn attachment(&mut self, r: AttachmentRecord) -> Result<(), StoreError> {
        let upload = attachment_in(r, self.limits.max_attachment_bytes)?;
        let (id, owner) = (encode_id(&upload.id), upload.owner);
        if self.db.user(owner).await?.is_none() {
            return bad(format!(
                "attachment {id} of user {owner}, who was not restored"
            ));
        }
        if self.db.has_upload(&upload.id).await? {
            return bad(format!("attachment {id} twice"));
        }
        let limits = self.limits.uploads;
        let (unfinished, bytes) = self.usage.entry(owner).or_default();
        *unfinished += u32::from(!upload.is_complete());
        if *unfinished > limits.max_unfinished {
            return bad(format!(
                "user {owner} has more than {} unfinished uploads",
                limits.max_unfinished
            ));
        }
        *bytes = bytes.saturating_add(upload.length);
        if *bytes > limits.quota_bytes {
            return bad(format!(
                "the attachments of user {owner} take more than {} bytes (--attachment-quota)",
                limits.quota_bytes
            ));
        }
        self.db.put_upload(&upload).await?;
        self.sum.attachments += 1;
        Ok(())
    }
}
