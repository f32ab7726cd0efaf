//! A restore's checks of one record on its own: the rules the API applies to what clients send
//! (from `requests`), id ranges and the shapes of keys, hashes and password hashes, while the
//! record is turned into the domain type storage keeps; and a linked device against the
//! account's devices before it.

use super::backup::{AttachmentRecord, DeviceRecord, KeyRecord, MessageRecord, Record, UserRecord};
use super::StoreError;
use crate::attachments::parse_id;
use crate::crypto::{b64, SIGNATURE_LEN};
use crate::models::LINKED_IDS;
use crate::models::{Device, Message, SignedPreKey, User};
use crate::requests::{self, KeyKind, MAX_KEY_ID, MAX_REGISTRATION_ID};
use crate::storage::attachments::Upload;

/// Every id in a backup (users, messages) is below this: new ids continue above the largest
/// restored one, and 2^62 leaves 3 · 2^62 ids for them, so no id can wrap.
pub const ID_CEILING: u64 = 1 << 62;

/// The length of an invite's or reset token's hash (SHA-256).
const TOKEN_HASH_LEN: usize = 32;
/// Most PBKDF2 iterations of a restored password hash: a login runs them all, so a crafted
/// count near 2^32 would hold a hashing slot for hours. 16 times today's default.
const MAX_HASH_ITERATIONS: u32 = 10_000_000;

pub(super) fn bad<T>(message: String) -> Result<T, StoreError> {
    Err(StoreError::Corrupt(message))
}

/// A user record as registration would accept it (username, email) with a valid id and hash.
pub(super) fn user_in(r: UserRecord) -> Result<User, StoreError> {
    let id = r.id;
    check_id("user id", id)?;
    if let Err(e) = requests::check_username(&r.username) {
        return bad(format!("user {id}: username: {e}"));
    }
    if let Err(e) = requests::check_email(&r.email) {
        return bad(format!("user {id}: email: {e}"));
    }
    if !is_password_hash(&r.password_hash) {
        return bad(format!(
            "user {id}: not a pbkdf2_sha256 password hash of 1 to {MAX_HASH_ITERATIONS} \
             iterations"
        ));
    }
    Ok(User {
        id,
        username: r.username,
        email: r.email,
        password_hash: r.password_hash,
        token_version: r.token_version,
    })
}

/// A device record as `POST /device` would accept it (its keys' shapes, not signatures); the
/// address is checked against its user by the caller. Answers the user id and the device.
pub(super) fn device_in(r: DeviceRecord) -> Result<(u64, Device), StoreError> {
    let device = Device {
        address: r.address,
        registration_id: r.registration_id,
        identity_key: base64("identity key", &r.identity_key)?,
        signed_prekey: key_in("signed prekey", r.signed_pre_key)?,
        last_resort_kyber: r
            .last_resort_kyber_pre_key
            .map(|k| key_in("last-resort Kyber prekey", k))
            .transpose()?,
    };
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
    Ok((r.user, device))
}

/// A one-time prekey: EC keys carry no signature, Kyber keys a 64-byte one.
pub(super) fn prekey_in(
    what: &str,
    key: KeyRecord,
    kind: KeyKind,
) -> Result<SignedPreKey, StoreError> {
    if matches!(kind, KeyKind::Ec) && key.signature.is_some() {
        return bad(format!("{what} {} has a signature", key.key_id));
    }
    let key = key_in(what, key)?;
    match kind {
        KeyKind::Ec => {
            check_max(what, key.key_id, MAX_KEY_ID)?;
            check_key(what, &key.public_key, kind)?;
        }
        KeyKind::Kyber => check_signed(what, &key, kind)?,
    }
    Ok(key)
}

/// A message as `POST /messages` would accept it, but for what depends on its recipient's
/// device (checked by the caller). Answers the recipient's user id and the message.
pub(super) fn message_in(r: MessageRecord, max_bytes: usize) -> Result<(u64, Message), StoreError> {
    let id = r.id;
    check_id("message id", id)?;
    if requests::parse_address(&r.sender_address).is_none() {
        return bad(format!(
            "message {id}: senderAddress is not <username>.<1 to 127>"
        ));
    }
    check_max(
        "senderRegistrationId",
        r.sender_registration_id,
        MAX_REGISTRATION_ID,
    )?;
    if r.content.len() > max_bytes {
        return bad(format!(
            "message {id}: content over {max_bytes} bytes (--max-message-bytes)"
        ));
    }
    let message = Message {
        id,
        sender_address: r.sender_address,
        sender_registration_id: r.sender_registration_id,
        content: r.content,
        recipient_address: r.recipient_address,
        timestamp: r.timestamp,
    };
    Ok((r.recipient, message))
}

/// An upload's record as the server writes them: an id of its one spelling, a length from 1 to
/// `max_length` (`--max-attachment-bytes`), an offset within it that is the length exactly when
/// the upload is complete, and times a PostgreSQL `bigint` holds (sled reads a completion time
/// of 0 as "unfinished", so it is refused too). Its owner and limits are checked by the caller.
pub(super) fn attachment_in(r: AttachmentRecord, max_length: u64) -> Result<Upload, StoreError> {
    let Some(id) = parse_id(&r.id) else {
        return bad("an attachment whose id is not 22 characters of base64url".into());
    };
    let name = r.id;
    if r.length == 0 || r.length > max_length {
        return bad(format!(
            "attachment {name}: length {} is not between 1 and {max_length} \
             (--max-attachment-bytes)",
            r.length
        ));
    }
    if r.offset > r.length {
        return bad(format!(
            "attachment {name}: offset {} is past its length {}",
            r.offset, r.length
        ));
    }
    match r.completed {
        Some(_) if r.offset != r.length => {
            return bad(format!(
                "attachment {name}: complete, but its offset {} is not its length {}",
                r.offset, r.length
            ))
        }
        None if r.offset == r.length => {
            return bad(format!(
                "attachment {name}: all {} bytes are in, but it is not complete",
                r.length
            ))
        }
        _ => {}
    }
    let times = [Some(r.created), Some(r.expires), r.completed];
    if times
        .into_iter()
        .flatten()
        .any(|t| t == 0 || t > i64::MAX as u64)
    {
        return bad(format!(
            "attachment {name}: a time is not between 1 and 2^63 - 1 ms"
        ));
    }
    Ok(Upload {
        id,
        owner: r.owner,
        length: r.length,
        offset: r.offset,
        created_ms: r.created,
        expires_ms: r.expires,
        completed_ms: r.completed,
    })
}

/// Checks a linked device `id` of `user` against the devices restored before it, as
/// `POST /v2/devices` checks one (`check_link`), but for the id, which the backup names.
pub(super) fn check_linked(
    user: u64,
    id: u32,
    new: &Device,
    devices: &[Device],
) -> Result<(), StoreError> {
    let Some(primary) = devices.first() else {
        return bad(format!(
            "linked device {id} of user {user} before (or without) the user's primary device"
        ));
    };
    if !LINKED_IDS.contains(&id) {
        return bad(format!(
            "linked device {id} of user {user}: a linked device's id is 2 to 127"
        ));
    }
    if devices.iter().any(|d| d.id() == id) {
        return bad(format!("device {id} of user {user} twice"));
    }
    if new.identity_key != primary.identity_key {
        return bad(format!(
            "linked device {id} of user {user}: the identity key is not the account's"
        ));
    }
    if devices
        .iter()
        .any(|d| d.registration_id == new.registration_id)
    {
        return bad(format!(
            "linked device {id} of user {user}: registrationId {} is another device's of the \
             account",
            new.registration_id
        ));
    }
    Ok(())
}

/// The device a key or message record names, in words.
pub(super) fn whose(user: u64, device: Option<u32>) -> String {
    match device {
        None => format!("the primary device of user {user}"),
        Some(id) => format!("device {id} of user {user}"),
    }
}

/// Whether a record names a linked device (which a version 1 backup cannot hold).
pub(super) fn names_a_linked_device(r: &Record) -> bool {
    match r {
        Record::Device(d) => d.linked,
        Record::PreKey { device, .. } | Record::KyberPreKey { device, .. } => device.is_some(),
        Record::Message(m) => m.device.is_some(),
        _ => false,
    }
}

/// Ids are at least 1 (0 is never handed out) and below `ID_CEILING`.
pub(super) fn check_id(what: &str, id: u64) -> Result<(), StoreError> {
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

pub(super) fn token_hash(what: &str, text: &str) -> Result<Vec<u8>, StoreError> {
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
