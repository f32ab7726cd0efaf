//! Typed request bodies, parsed from JSON with every rule of the API checked: shapes, ranges,
//! key encodings and signatures. Handlers only ever see these types.

use std::collections::HashSet;

use serde_json::Value;

use crate::crypto::{self, b64};
use crate::error::{ApiError, FieldError, FieldErrors};
use crate::models::{PreKey, SignedPreKey};
use crate::validate::{self, messages, Fields};

mod linked;
pub use linked::{DeviceMessage, SendAll};

pub const MAX_REGISTRATION_ID: u64 = 999_999;
pub const MAX_KEY_ID: u64 = 16_777_215;
pub const MAX_USERNAME_CHARS: usize = 150;
/// Most items in one key upload.
pub const MAX_UPLOAD_ITEMS: usize = 100;
/// Most ids in one DELETE /messages.
pub const MAX_DELETE_IDS: usize = 1000;

pub struct Register<'a> {
    pub username: &'a str,
    pub password: &'a str,
    pub email: &'a str,
    /// An invite token, for servers with `--registration invite`.
    pub invite: Option<&'a str>,
}

impl<'a> Register<'a> {
    pub fn parse(value: &'a Value) -> Result<Register<'a>, ApiError> {
        let mut f = Fields::new(validate::object(value)?);
        let username = f.string("username", true);
        if let Some(u) = username {
            if let Err(e) = check_username(u) {
                f.fail("username", e);
            }
        }
        let password = f.string("password", true);
        let email = f.string("email", false).unwrap_or("");
        if let Err(e) = check_email(email) {
            f.fail("email", e);
        }
        let invite = f.string("invite", false);
        f.finish()?;
        Ok(Register {
            username: username.unwrap_or_default(),
            password: password.unwrap_or_default(),
            email,
            invite,
        })
    }
}

pub fn check_username(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("This field may not be blank.");
    }
    if name.chars().count() > MAX_USERNAME_CHARS {
        return Err("Ensure this field has no more than 150 characters.");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"@.+-_".contains(&b))
    {
        return Err("Enter a valid username. This value may contain only letters, numbers, and @/./+/-/_ characters.");
    }
    Ok(())
}

/// An email is optional (empty), else at most 254 bytes and a valid address, without the
/// characters `validate::is_unsafe_char` refuses (the address parser lets some through).
pub fn check_email(email: &str) -> Result<(), &'static str> {
    if email.chars().any(validate::is_unsafe_char) {
        return Err(validate::UNSAFE_TEXT);
    }
    if !email.is_empty() && (email.len() > 254 || email.parse::<lettre::Address>().is_err()) {
        return Err("Enter a valid email address.");
    }
    Ok(())
}

/// The named string fields of a small account body, all required.
pub fn strings<'a, const N: usize>(
    value: &'a Value,
    names: [&str; N],
) -> Result<[&'a str; N], ApiError> {
    let mut f = Fields::new(validate::object(value)?);
    let values = names.map(|n| f.string(n, true));
    f.finish()?;
    Ok(values.map(Option::unwrap_or_default))
}

/// The optional `deviceId` of a login: the device the token is to be bound to.
pub fn login_device(value: &Value) -> Result<Option<u32>, ApiError> {
    let mut f = Fields::new(validate::object(value)?);
    let device = match f.get("deviceId") {
        None | Some(Value::Null) => None,
        Some(_) => f.int("deviceId", u64::from(u32::MAX)),
    };
    f.finish()?;
    Ok(device.map(|d| d as u32))
}

/// One `{keyId, publicKey}` one-time EC prekey.
fn prekey(value: &Value) -> Result<PreKey, FieldErrors> {
    let mut f = Fields::of(value)?;
    let key_id = f.int("keyId", MAX_KEY_ID);
    let public_key = key_field(&mut f, "publicKey", KeyKind::Ec);
    f.finish_nested()?;
    Ok(PreKey {
        key_id: key_id.unwrap_or_default() as u32,
        public_key: public_key.unwrap_or_default(),
    })
}

#[derive(Clone, Copy)]
pub enum KeyKind {
    Ec,
    Kyber,
}

fn key_field(f: &mut Fields, name: &str, kind: KeyKind) -> Option<Vec<u8>> {
    let text = f.string(name, true)?;
    let (type_byte, what) = match kind {
        KeyKind::Ec => (crypto::EC_KEY_TYPE, "a 33-byte Curve25519 public key"),
        KeyKind::Kyber => (crypto::KYBER_KEY_TYPE, "a 1569-byte Kyber public key"),
    };
    match b64::decode(text) {
        Some(bytes) if has_key_shape(&bytes, kind) => Some(bytes),
        Some(_) => {
            f.fail(
                name,
                format!("Must be {what} (type byte 0x{type_byte:02x})."),
            );
            None
        }
        None => {
            f.fail(name, "Must be standard base64.");
            None
        }
    }
}

/// Whether `bytes` is a serialized public key of `kind`: its length and type byte.
pub fn has_key_shape(bytes: &[u8], kind: KeyKind) -> bool {
    let (len, type_byte) = match kind {
        KeyKind::Ec => (crypto::EC_KEY_LEN, crypto::EC_KEY_TYPE),
        KeyKind::Kyber => (crypto::KYBER_KEY_LEN, crypto::KYBER_KEY_TYPE),
    };
    bytes.len() == len && bytes.first() == Some(&type_byte)
}

/// A `{keyId, publicKey, signature}`, the signature checked against `identity` when known.
fn signed_prekey(
    value: &Value,
    kind: KeyKind,
    identity: Option<&[u8]>,
) -> Result<SignedPreKey, FieldErrors> {
    let mut f = Fields::of(value)?;
    let key_id = f.int("keyId", MAX_KEY_ID);
    let public_key = key_field(&mut f, "publicKey", kind);
    let signature = match f.string("signature", true).map(b64::decode) {
        Some(Some(sig)) if sig.len() == crypto::SIGNATURE_LEN => Some(sig),
        Some(_) => {
            f.fail(
                "signature",
                "Must be a 64-byte signature in standard base64.",
            );
            None
        }
        None => None,
    };
    if let (Some(identity), Some(key), Some(sig)) = (identity, &public_key, &signature) {
        if !crypto::verify_signature(identity, key, sig) {
            f.fail(
                "signature",
                "The signature does not verify against the identity key.",
            );
        }
    }
    f.finish_nested()?;
    Ok(SignedPreKey {
        key_id: key_id.unwrap_or_default() as u32,
        public_key: public_key.unwrap_or_default(),
        signature: signature.unwrap_or_default(),
    })
}

/// A list of items of one kind: at most `max` items (and 100 per upload), unique key ids.
fn key_list<T>(
    f: &mut Fields,
    name: &str,
    items: &[Value],
    max: usize,
    parse: impl Fn(&Value) -> Result<T, FieldErrors>,
    key_id: impl Fn(&T) -> u32,
) -> Vec<T> {
    let max = max.min(MAX_UPLOAD_ITEMS);
    if items.len() > max {
        f.fail(
            name,
            format!("Ensure this list has no more than {max} items."),
        );
        return Vec::new();
    }
    let mut out = Vec::with_capacity(items.len());
    let mut errors = FieldErrors::new();
    let mut seen = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        match parse(item) {
            Ok(k) if !seen.insert(key_id(&k)) => {
                errors.insert(
                    i.to_string(),
                    FieldError::Nested(messages("keyId", "Duplicate keyId in this upload.")),
                );
            }
            Ok(k) => out.push(k),
            Err(e) => {
                errors.insert(i.to_string(), FieldError::Nested(e));
            }
        }
    }
    if !errors.is_empty() {
        f.nest(name, errors);
    }
    out
}

fn optional_list<'a>(f: &mut Fields<'a>, name: &str) -> Option<&'a [Value]> {
    match f.get(name) {
        None => None,
        Some(Value::Array(items)) => Some(items),
        Some(_) => {
            f.fail(name, "Expected a list of items.");
            None
        }
    }
}

pub struct NewDevice {
    pub username: String,
    pub device_id: u32,
    pub identity_key: Vec<u8>,
    pub registration_id: u32,
    pub prekeys: Vec<PreKey>,
    pub signed_prekey: SignedPreKey,
    pub kyber_prekeys: Vec<SignedPreKey>,
    pub last_resort_kyber: Option<SignedPreKey>,
}

impl NewDevice {
    /// Parses a device registration; `max_prekeys` caps each one-time list.
    pub fn parse(value: &Value, max_prekeys: usize) -> Result<NewDevice, ApiError> {
        NewDevice::parse_with(value, max_prekeys, true)
    }

    /// Parses a device to link (`POST /v2/devices`): the same body without `address` (the
    /// server picks the id; an address given is ignored).
    pub fn parse_linked(value: &Value, max_prekeys: usize) -> Result<NewDevice, ApiError> {
        NewDevice::parse_with(value, max_prekeys, false)
    }

    fn parse_with(
        value: &Value,
        max_prekeys: usize,
        with_address: bool,
    ) -> Result<NewDevice, ApiError> {
        let mut f = Fields::new(validate::object(value)?);
        let address = with_address
            .then(|| f.string("address", true))
            .flatten()
            .and_then(|a| match parse_address(a) {
                Some(parts) => Some(parts),
                None => {
                    f.fail(
                        "address",
                        "Must be <username>.<deviceId> with a device id from 1 to 127.",
                    );
                    None
                }
            });
        let identity_key = key_field(&mut f, "identityKey", KeyKind::Ec);
        let registration_id = f.int("registrationId", MAX_REGISTRATION_ID);
        let identity = identity_key.as_deref();
        let prekeys = match optional_list(&mut f, "preKeys") {
            Some(items) => key_list(&mut f, "preKeys", items, max_prekeys, prekey, |k| k.key_id),
            None => {
                if f.get("preKeys").is_none() {
                    f.fail("preKeys", validate::REQUIRED);
                }
                Vec::new()
            }
        };
        let signed = nested(&mut f, "signedPreKey", true, |v| {
            signed_prekey(v, KeyKind::Ec, identity)
        });
        let kyber_prekeys = match optional_list(&mut f, "kyberPreKeys") {
            Some(items) => key_list(
                &mut f,
                "kyberPreKeys",
                items,
                max_prekeys,
                |v| signed_prekey(v, KeyKind::Kyber, identity),
                |k| k.key_id,
            ),
            None => Vec::new(),
        };
        let last_resort_kyber = nested(&mut f, "lastResortKyberPreKey", false, |v| {
            signed_prekey(v, KeyKind::Kyber, identity)
        });
        f.finish()?;
        let (username, device_id) = address.unwrap_or_default();
        Ok(NewDevice {
            username,
            device_id,
            identity_key: identity_key.unwrap_or_default(),
            registration_id: registration_id.unwrap_or_default() as u32,
            prekeys,
            signed_prekey: signed
                .ok_or_else(|| ApiError::field("signedPreKey", validate::REQUIRED))?,
            kyber_prekeys,
            last_resort_kyber,
        })
    }
}

/// A nested object field parsed by `parse`, its errors nested under `name`.
fn nested<T>(
    f: &mut Fields,
    name: &str,
    required: bool,
    parse: impl Fn(&Value) -> Result<T, FieldErrors>,
) -> Option<T> {
    let Some(value) = f.get(name) else {
        if required {
            f.fail(name, validate::REQUIRED);
        }
        return None;
    };
    match parse(value) {
        Ok(v) => Some(v),
        Err(mut e) => {
            match e.remove("") {
                Some(FieldError::Messages(m)) => m.into_iter().for_each(|m| f.fail(name, m)),
                _ => f.nest(name, e),
            }
            None
        }
    }
}

/// `<username>.<deviceId>` → (username, deviceId in 1..=127).
pub fn parse_address(address: &str) -> Option<(String, u32)> {
    let (name, device) = address.rsplit_once('.')?;
    let device: u32 = device.parse().ok().filter(|d| (1..=127).contains(d))?;
    check_username(name).ok()?;
    Some((name.to_string(), device))
}

/// `POST /prekeys`: a bare list or `{"preKeys": [...]}`.
pub fn prekey_upload(value: &Value) -> Result<Vec<PreKey>, ApiError> {
    let items = match value {
        Value::Object(obj) if obj.contains_key("preKeys") => validate::list(&obj["preKeys"])
            .map_err(|_| ApiError::field("preKeys", "Expected a non-empty list of prekeys."))?,
        other => validate::list(other)?,
    };
    let obj = serde_json::Map::new();
    let mut f = Fields::new(&obj);
    // Over the per-device cap is `reached_max_prekeys` (checked by storage); here only the
    // per-upload limit applies.
    let keys = key_list(&mut f, "preKeys", items, MAX_UPLOAD_ITEMS, prekey, |k| {
        k.key_id
    });
    f.finish()?;
    Ok(keys)
}

/// `POST /kyberprekeys`: one-time keys and/or a last-resort key, signatures checked.
pub fn kyber_upload(
    value: &Value,
    identity: &[u8],
) -> Result<(Vec<SignedPreKey>, Option<SignedPreKey>), ApiError> {
    let mut f = Fields::new(validate::object(value)?);
    let keys = match optional_list(&mut f, "kyberPreKeys") {
        Some(items) => key_list(
            &mut f,
            "kyberPreKeys",
            items,
            MAX_UPLOAD_ITEMS,
            |v| signed_prekey(v, KeyKind::Kyber, Some(identity)),
            |k| k.key_id,
        ),
        None => Vec::new(),
    };
    let last_resort = nested(&mut f, "lastResortKyberPreKey", false, |v| {
        signed_prekey(v, KeyKind::Kyber, Some(identity))
    });
    if keys.is_empty()
        && last_resort.is_none()
        && !f.has_error("kyberPreKeys")
        && !f.has_error("lastResortKyberPreKey")
    {
        f.fail(
            "kyberPreKeys",
            "Give kyberPreKeys, lastResortKyberPreKey, or both.",
        );
    }
    f.finish()?;
    Ok((keys, last_resort))
}

/// `POST /signedprekey`: one signed EC prekey, signature checked against `identity`.
pub fn signed_prekey_upload(value: &Value, identity: &[u8]) -> Result<SignedPreKey, ApiError> {
    validate::object(value)?;
    signed_prekey(value, KeyKind::Ec, Some(identity)).map_err(ApiError::InvalidData)
}

pub struct Send<'a> {
    pub recipient: &'a str,
    pub message: &'a str,
    /// The `registrationId` inside `message`.
    pub registration_id: u64,
}

impl<'a> Send<'a> {
    pub fn parse(value: &'a Value, max_message_bytes: usize) -> Result<Send<'a>, ApiError> {
        let mut f = Fields::new(validate::object(value)?);
        let recipient = f.string("recipient", true);
        let message = f.string("message", true);
        let mut registration_id = None;
        if let Some(m) = message {
            if m.len() > max_message_bytes {
                f.fail(
                    "message",
                    format!("Ensure this field has no more than {max_message_bytes} bytes."),
                );
            } else {
                registration_id = inner_registration_id(m);
                if registration_id.is_none() {
                    f.fail(
                        "message",
                        "Must be the JSON text of an object with an integer registrationId.",
                    );
                }
            }
        }
        f.finish()?;
        Ok(Send {
            recipient: recipient.unwrap_or_default(),
            message: message.unwrap_or_default(),
            registration_id: registration_id.unwrap_or_default(),
        })
    }
}

/// The integer `registrationId` of a message's JSON text, which must be an object.
pub fn inner_registration_id(message: &str) -> Option<u64> {
    // An object, not an array: serde would read `[22]` into a struct too.
    serde_json::from_str::<Value>(message)
        .ok()?
        .as_object()?
        .get("registrationId")?
        .as_u64()
}

/// `DELETE /messages`: a bare list of 1..=1000 integer ids.
pub fn message_ids(value: &Value) -> Result<Vec<u64>, ApiError> {
    let items = validate::list(value)?;
    if items.len() > MAX_DELETE_IDS {
        return Err(ApiError::field(
            "ids",
            format!("Ensure this list has no more than {MAX_DELETE_IDS} items."),
        ));
    }
    let mut errors = FieldErrors::new();
    let ids: Vec<u64> = items
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let id = v.as_u64();
            if id.is_none() {
                errors.insert(
                    i.to_string(),
                    FieldError::Messages(vec!["A valid integer is required.".into()]),
                );
            }
            id
        })
        .collect();
    if errors.is_empty() {
        Ok(ids)
    } else {
        let mut nested = FieldErrors::new();
        nested.insert("ids".into(), FieldError::Nested(errors));
        Err(ApiError::InvalidData(nested))
    }
}

/// `?limit=N` of `GET /messages`: 1..=1000, default 1000.
pub fn limit(query: Option<&str>) -> Result<usize, ApiError> {
    let Some(raw) = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("limit=")))
    else {
        return Ok(MAX_DELETE_IDS);
    };
    match raw.parse::<usize>() {
        Ok(n) if (1..=MAX_DELETE_IDS).contains(&n) => Ok(n),
        _ => Err(ApiError::field(
            "limit",
            "Must be an integer from 1 to 1000.",
        )),
    }
}
