//! What a restore checks in each record of a backup (the rules the API applies to what clients
//! send, from `requests`, plus ids and counts), and the writes of a record that passed. A record
//! that names a user comes after that user's record, as `backup` writes them, so every check is
//! a lookup in the database being built; only per-user counts are kept in memory.

use std::collections::HashMap;

use super::backup::{BackupSummary, KeyRecord, Record, FORMAT, VERSION};
use super::restore::{RestoreLimits, ID_CEILING};
use super::{encode, keys, Storage, StoreError};
use crate::crypto::{b64, SIGNATURE_LEN};
use crate::models::{Device, Message, SignedPreKey, User};
use crate::requests::{self, KeyKind, MAX_KEY_ID, MAX_REGISTRATION_ID};

/// The length of an invite's or reset token's hash (SHA-256).
const TOKEN_HASH_LEN: usize = 32;
/// Most PBKDF2 iterations of a restored password hash: a login runs them all, so a crafted
/// count near 2^32 would hold a hashing slot for hours. 16 times today's default.
const MAX_HASH_ITERATIONS: u32 = 10_000_000;

/// The state of a restore between records.
pub(super) struct Restoring<'a> {
    db: &'a Storage,
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

fn bad<T>(message: String) -> Result<T, StoreError> {
    Err(StoreError::Corrupt(message))
}

impl<'a> Restoring<'a> {
    pub fn new(db: &'a Storage, limits: &'a RestoreLimits) -> Restoring<'a> {
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
    pub fn take(&mut self, record: Record) -> Result<(), StoreError> {
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
            Record::User {
                id,
                username,
                email,
                password_hash,
                token_version,
            } => self.user(User {
                id,
                username,
                email,
                password_hash,
                token_version,
            })?,
            Record::Device {
                user,
                address,
                registration_id,
                identity_key,
                signed_pre_key,
                last_resort_kyber_pre_key,
            } => {
                let device = Device {
                    address,
                    registration_id,
                    identity_key: base64("identity key", &identity_key)?,
                    signed_prekey: key_in("signed prekey", signed_pre_key)?,
                    last_resort_kyber: last_resort_kyber_pre_key
                        .map(|k| key_in("last-resort Kyber prekey", k))
                        .transpose()?,
                };
                self.device(user, device)?
            }
            Record::PreKey { user, key } => self.prekey(user, key, KeyKind::Ec)?,
            Record::KyberPreKey { user, key } => self.prekey(user, key, KeyKind::Kyber)?,
            Record::Message {
                recipient,
                id,
                sender_address,
                sender_registration_id,
                content,
                recipient_address,
                timestamp,
            } => self.message(
                recipient,
                Message {
                    id,
                    sender_address,
                    sender_registration_id,
                    content,
                    recipient_address,
                    timestamp,
                },
            )?,
            Record::Invite { hash, created } => self.invite(&hash, created)?,
            Record::ResetToken {
                hash,
                user,
                expires,
                version,
            } => self.reset_token(&hash, user, expires, version)?,
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

    fn user(&mut self, user: User) -> Result<(), StoreError> {
        let id = user.id;
        check_id("user id", id)?;
        if let Err(e) = requests::check_username(&user.username) {
            return bad(format!("user {id}: username: {e}"));
        }
        if let Err(e) = requests::check_email(&user.email) {
            return bad(format!("user {id}: email: {e}"));
        }
        if !is_password_hash(&user.password_hash) {
            return bad(format!(
                "user {id}: not a pbkdf2_sha256 password hash of 1 to {MAX_HASH_ITERATIONS} \
                 iterations"
            ));
        }
        let key = keys::user(id);
        let name = user.username.to_lowercase();
        let email = user.email.to_lowercase();
        if self.db.users.contains_key(key)? {
            return bad(format!("user id {id} twice"));
        }
        if self.db.usernames.contains_key(name.as_bytes())? {
            return bad(format!(
                "user {id}: username {} is an earlier user's (usernames are unique \
                 case-insensitively)",
                user.username
            ));
        }
        if !email.is_empty() && self.db.emails.contains_key(email.as_bytes())? {
            return bad(format!(
                "user {id}: email is an earlier user's (emails are unique case-insensitively)"
            ));
        }
        self.db.usernames.insert(name.as_bytes(), &key)?;
        if !email.is_empty() {
            self.db.emails.insert(email.as_bytes(), &key)?;
        }
        self.db.users.insert(key, encode(&user))?;
        self.sum.users += 1;
        self.max_id = self.max_id.max(id);
        Ok(())
    }

    fn device(&mut self, user: u64, device: Device) -> Result<(), StoreError> {
        let Some(owner) = self.db.user(user)? else {
            return bad(format!("a device of unknown user {user}"));
        };
        if self.db.devices.contains_key(keys::user(user))? {
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
        check_max(
            "registrationId",
            device.registration_id,
            MAX_REGISTRATION_ID,
        )?;
        check_key("identity key", &device.identity_key, KeyKind::Ec)?;
        check_signed("signed prekey", &device.signed_prekey, KeyKind::Ec)?;
        if let Some(key) = &device.last_resort_kyber {
            check_signed("last-resort Kyber prekey", key, KeyKind::Kyber)?;
        }
        self.db.devices.insert(keys::user(user), encode(&device))?;
        self.sum.devices += 1;
        Ok(())
    }

    /// A one-time prekey: EC keys carry no signature, Kyber keys a 64-byte one.
    fn prekey(&mut self, user: u64, key: KeyRecord, kind: KeyKind) -> Result<(), StoreError> {
        let (what, tree) = match kind {
            KeyKind::Ec => ("one-time prekey", &self.db.prekeys),
            KeyKind::Kyber => ("one-time Kyber prekey", &self.db.kyber_prekeys),
        };
        if !self.db.devices.contains_key(keys::user(user))? {
            return bad(format!("a {what} of user {user}, who has no device"));
        }
        let id = key.key_id;
        if matches!(kind, KeyKind::Ec) && key.signature.is_some() {
            return bad(format!("{what} {id} of user {user} has a signature"));
        }
        let key = key_in(what, key)?;
        match kind {
            KeyKind::Ec => {
                check_max(what, key.key_id, MAX_KEY_ID)?;
                check_key(what, &key.public_key, kind)?;
            }
            KeyKind::Kyber => check_signed(what, &key, kind)?,
        }
        let k = keys::prekey(user, id);
        if tree.contains_key(k)? {
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
        match kind {
            KeyKind::Ec => {
                tree.insert(k, key.public_key)?;
                self.sum.prekeys += 1;
            }
            KeyKind::Kyber => {
                tree.insert(k, encode(&key))?;
                self.sum.kyber_prekeys += 1;
            }
        }
        Ok(())
    }

    /// A queued message, checked as `POST /messages` checks it: to the recipient's device (its
    /// address, and its registrationId inside the content), within the size and queue limits.
    fn message(&mut self, recipient: u64, m: Message) -> Result<(), StoreError> {
        let id = m.id;
        check_id("message id", id)?;
        let Some(device) = self.db.device(recipient)? else {
            return bad(format!(
                "message {id} for user {recipient}, who has no device"
            ));
        };
        if m.recipient_address != device.address {
            return bad(format!(
                "message {id}: recipientAddress is not the address of its recipient's device"
            ));
        }
        if requests::parse_address(&m.sender_address).is_none() {
            return bad(format!(
                "message {id}: senderAddress is not <username>.<1 to 127>"
            ));
        }
        check_max(
            "senderRegistrationId",
            m.sender_registration_id,
            MAX_REGISTRATION_ID,
        )?;
        if m.content.len() > self.limits.max_message_bytes {
            return bad(format!(
                "message {id}: content over {} bytes (--max-message-bytes)",
                self.limits.max_message_bytes
            ));
        }
        if requests::inner_registration_id(&m.content) != Some(u64::from(device.registration_id)) {
            return bad(format!(
                "message {id}: the content is not a JSON object with the registrationId of \
                 its recipient's device"
            ));
        }
        if self.db.message_index.contains_key(id.to_be_bytes())? {
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
        self.db
            .message_index
            .insert(id.to_be_bytes(), &keys::index_value(recipient, m.timestamp))?;
        self.db
            .messages
            .insert(keys::message(recipient, id), encode(&m))?;
        self.sum.messages += 1;
        self.max_id = self.max_id.max(id);
        Ok(())
    }

    fn invite(&mut self, hash: &str, created: u64) -> Result<(), StoreError> {
        let hash = token_hash("invite", hash)?;
        if self.db.invites.contains_key(&hash)? {
            return bad("an invite twice".into());
        }
        self.db.invites.insert(hash, &created.to_be_bytes())?;
        self.sum.invites += 1;
        Ok(())
    }

    /// A pending password reset. One of an account deleted since it was issued can never be used
    /// (ids are not handed out again: new ids start above it), so it is left out, not refused.
    fn reset_token(
        &mut self,
        hash: &str,
        user: u64,
        expires: u64,
        version: u32,
    ) -> Result<(), StoreError> {
        check_id("reset token's user id", user)?;
        let hash = token_hash("reset token", hash)?;
        if self.db.reset_tokens.contains_key(&hash)? {
            return bad("a reset token twice".into());
        }
        self.max_id = self.max_id.max(user);
        if !self.db.users.contains_key(keys::user(user))? {
            return Ok(());
        }
        self.db
            .reset_tokens
            .insert(hash, &keys::reset_grant(user, expires, version))?;
        self.sum.reset_tokens += 1;
        Ok(())
    }
}

/// Ids are at least 1 (0 is never handed out) and below `ID_CEILING`.
fn check_id(what: &str, id: u64) -> Result<(), StoreError> {
    if id == 0 || id >= ID_CEILING {
        return bad(format!("{what} {id} is not between 1 and 2^62 - 1"));
    }
    Ok(())
}

fn check_max(what: &str, value: u32, max: u64) -> Result<(), StoreError> {
    if u64::from(value) > max {
        return bad(format!("{what} {value} is over {max}"));
    }
    Ok(())
}

fn check_key(what: &str, key: &[u8], kind: KeyKind) -> Result<(), StoreError> {
    if !requests::has_key_shape(key, kind) {
        let shape = match kind {
            KeyKind::Ec => "a 33-byte Curve25519 key (type byte 0x05)",
            KeyKind::Kyber => "a 1569-byte Kyber key (type byte 0x08)",
        };
        return bad(format!("{what}: not {shape}"));
    }
    Ok(())
}

/// A signed key's id, shape and 64-byte signature (not verified: the API did at upload, and a
/// restore of a large server would spend minutes on it).
fn check_signed(what: &str, key: &SignedPreKey, kind: KeyKind) -> Result<(), StoreError> {
    check_max(what, key.key_id, MAX_KEY_ID)?;
    check_key(what, &key.public_key, kind)?;
    if key.signature.len() != SIGNATURE_LEN {
        return bad(format!("{what} {}: not a 64-byte signature", key.key_id));
    }
    Ok(())
}

fn base64(what: &str, text: &str) -> Result<Vec<u8>, StoreError> {
    b64::decode(text).ok_or_else(|| StoreError::Corrupt(format!("{what}: not base64")))
}

fn key_in(what: &str, k: KeyRecord) -> Result<SignedPreKey, StoreError> {
    Ok(SignedPreKey {
        key_id: k.key_id,
        public_key: base64(what, &k.public_key)?,
        signature: match k.signature {
            Some(s) => base64(what, &s)?,
            None => Vec::new(),
        },
    })
}

fn token_hash(what: &str, text: &str) -> Result<Vec<u8>, StoreError> {
    let hash = base64(what, text)?;
    if hash.len() != TOKEN_HASH_LEN {
        return bad(format!("{what}: not a 32-byte hash"));
    }
    Ok(hash)
}

/// `pbkdf2_sha256$<iterations>$<salt>$<32-byte hash in base64>`, as `password` writes them.
fn is_password_hash(text: &str) -> bool {
    let parts: Vec<&str> = text.split('$').collect();
    matches!(parts.as_slice(), ["pbkdf2_sha256", iterations, salt, hash]
        if iterations.parse::<u32>().is_ok_and(|n| (1..=MAX_HASH_ITERATIONS).contains(&n))
            && !salt.is_empty()
            && b64::decode(hash).is_some_and(|h| h.len() == 32))
}
