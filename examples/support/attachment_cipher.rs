//! Attachment encryption as Signal's clients do it (`AttachmentCipherOutputStream`,
//! `PaddingInputStream` in libsignal-service): the server only ever stores the blob.
//!
//! - a 64-byte key per attachment: an AES-256-CBC key ‖ an HMAC-SHA256 key;
//! - the plaintext zero-padded to `padded_size` so a blob's size says little about its content;
//! - blob = IV (16) ‖ AES-256-CBC with PKCS7 of the padded plaintext ‖ HMAC-SHA256 over IV and
//!   ciphertext (32);
//! - digest = SHA-256 of the whole blob, carried in the pointer so the receiver knows it got the
//!   blob the sender uploaded.
//!
//! The pointer (id, key, digest, unpadded size) travels inside an end-to-end-encrypted message.
//! Shared by `examples/attachment.rs` and `tests/api/interop/` (included with `#[path]`).
#![allow(dead_code)]

use std::fmt;

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

type Encryptor = cbc::Encryptor<aes::Aes256>;
type Decryptor = cbc::Decryptor<aes::Aes256>;
type HmacSha256 = Hmac<Sha256>;

pub const KEY_LEN: usize = 64;
const IV_LEN: usize = 16;
const MAC_LEN: usize = 32;
/// The smallest padded size: every attachment looks at least this big.
const MIN_PADDED: u64 = 541;

/// What the receiver needs to fetch and open an attachment (the JSON inside the message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    /// The server's attachment id (`/attachments/<id>`).
    pub id: String,
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    /// SHA-256 of the blob.
    #[serde(with = "b64")]
    pub digest: Vec<u8>,
    /// The plaintext's size before padding.
    pub size: u64,
}

/// An encrypted attachment, before upload.
pub struct Sealed {
    pub blob: Vec<u8>,
    pub key: [u8; KEY_LEN],
    pub digest: [u8; 32],
    pub size: u64,
}

impl Sealed {
    /// The pointer to this blob once the server gave it `id`.
    pub fn pointer(&self, id: &str) -> Pointer {
        Pointer {
            id: id.to_string(),
            key: self.key.to_vec(),
            digest: self.digest.to_vec(),
            size: self.size,
        }
    }
}

/// Why a downloaded blob was not opened.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenError {
    BadKey,
    TooShort(usize),
    /// The blob is not the one the pointer names.
    DigestMismatch,
    /// The blob was changed after encryption (or the key is wrong).
    MacMismatch,
    BadPadding,
    /// The pointer's size is larger than what the blob holds.
    SizeMismatch {
        size: u64,
        plaintext: usize,
    },
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::BadKey => write!(f, "the key is not {KEY_LEN} bytes"),
            OpenError::TooShort(n) => write!(f, "a blob of {n} bytes is too short"),
            OpenError::DigestMismatch => {
                write!(f, "the blob's SHA-256 is not the pointer's digest")
            }
            OpenError::MacMismatch => write!(f, "the blob's HMAC does not verify"),
            OpenError::BadPadding => write!(f, "the decrypted blob's PKCS7 padding is wrong"),
            OpenError::SizeMismatch { size, plaintext } => {
                write!(
                    f,
                    "the pointer says {size} bytes; the blob holds {plaintext}"
                )
            }
        }
    }
}

impl std::error::Error for OpenError {}

/// Signal's padded size: `max(541, floor(1.05^ceil(log_1.05(n))))`, never below `n` (the
/// float power can land a hair under an exact `n`).
pub fn padded_size(n: u64) -> u64 {
    let steps = ((n as f64).ln() / 1.05f64.ln()).ceil();
    let padded = 1.05f64.powf(steps).floor() as u64;
    padded.max(MIN_PADDED).max(n)
}

/// Encrypts `plaintext` under a fresh random key and IV.
pub fn seal(plaintext: &[u8]) -> Sealed {
    let key: [u8; KEY_LEN] = rand::random();
    let iv: [u8; IV_LEN] = rand::random();
    seal_with(plaintext, key, iv)
}

/// Encrypts `plaintext` under `key` with `iv` (for tests with fixed inputs).
pub fn seal_with(plaintext: &[u8], key: [u8; KEY_LEN], iv: [u8; IV_LEN]) -> Sealed {
    let (aes_key, mac_key) = key.split_at(32);
    let mut padded = plaintext.to_vec();
    padded.resize(padded_size(plaintext.len() as u64) as usize, 0);
    let ciphertext =
        Encryptor::new(aes_key.into(), &iv.into()).encrypt_padded_vec_mut::<Pkcs7>(&padded);
    let mut blob = Vec::with_capacity(IV_LEN + ciphertext.len() + MAC_LEN);
    blob.extend_from_slice(&iv);
    blob.extend_from_slice(&ciphertext);
    let mac = mac(mac_key, &blob).finalize().into_bytes();
    blob.extend_from_slice(&mac);
    Sealed {
        digest: Sha256::digest(&blob).into(),
        blob,
        key,
        size: plaintext.len() as u64,
    }
}

/// Checks a downloaded blob against the pointer (digest, then MAC), decrypts it and strips
/// the padding: the original plaintext.
pub fn open(blob: &[u8], pointer: &Pointer) -> Result<Vec<u8>, OpenError> {
    if pointer.key.len() != KEY_LEN {
        return Err(OpenError::BadKey);
    }
    if blob.len() < IV_LEN + 16 + MAC_LEN {
        return Err(OpenError::TooShort(blob.len()));
    }
    if Sha256::digest(blob)[..] != pointer.digest[..] {
        return Err(OpenError::DigestMismatch);
    }
    let (aes_key, mac_key) = pointer.key.split_at(32);
    let (signed, their_mac) = blob.split_at(blob.len() - MAC_LEN);
    mac(mac_key, signed)
        .verify_slice(their_mac)
        .map_err(|_| OpenError::MacMismatch)?;
    let (iv, ciphertext) = signed.split_at(IV_LEN);
    let mut plaintext = Decryptor::new(aes_key.into(), iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
        .map_err(|_| OpenError::BadPadding)?;
    let size = usize::try_from(pointer.size).unwrap_or(usize::MAX);
    if size > plaintext.len() {
        return Err(OpenError::SizeMismatch {
            size: pointer.size,
            plaintext: plaintext.len(),
        });
    }
    plaintext.truncate(size);
    Ok(plaintext)
}

fn mac(key: &[u8], data: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac
}

/// `serde(with)` for bytes as standard base64.
mod b64 {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine as _;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        B64.decode(text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_sizes_follow_signal_buckets() {
        assert_eq!(padded_size(0), 541);
        assert_eq!(padded_size(1), 541);
        assert_eq!(padded_size(541), 541);
        assert_eq!(padded_size(542), 568);
        assert_eq!(padded_size(1000), 1020);
        assert_eq!(padded_size(1 << 20), 1_093_831);
        assert_eq!(padded_size(5 << 20), 5_472_642);
        for n in [1u64, 600, 4096, 100_000, 5 << 20] {
            let p = padded_size(n);
            assert!(
                p >= n && p <= (n as f64 * 1.05) as u64 + MIN_PADDED,
                "{n} -> {p}"
            );
        }
    }

    #[test]
    fn sealed_blobs_open_to_the_plaintext() {
        for n in [0usize, 1, 15, 16, 541, 542, 5000, 70_001] {
            let plaintext: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            let sealed = seal(&plaintext);
            let padded = padded_size(n as u64) as usize;
            // IV ‖ CBC of the padded plaintext plus 1..=16 bytes of PKCS7 ‖ MAC.
            assert_eq!(sealed.blob.len(), IV_LEN + (padded / 16 + 1) * 16 + MAC_LEN);
            assert_eq!(sealed.digest[..], Sha256::digest(&sealed.blob)[..]);
            let pointer = sealed.pointer("id");
            assert_eq!(
                open(&sealed.blob, &pointer).unwrap(),
                plaintext,
                "{n} bytes"
            );
        }
    }

    /// The digest of a blob made independently (`openssl enc -aes-256-cbc` of "hello" padded
    /// with zeros to 541 bytes, then HMAC-SHA256 and SHA-256 in Python).
    #[test]
    fn a_known_blob_matches_an_independent_implementation() {
        let sealed = seal_with(b"hello", [7; KEY_LEN], [9; IV_LEN]);
        assert_eq!(sealed.blob.len(), 16 + 544 + 32);
        assert_eq!(&sealed.blob[..IV_LEN], &[9; IV_LEN]);
        let hex: String = sealed.digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "0b4aeb8f44efe93782764c4565eaa32ff1162e7fcca2e79cb6246f5dc8bae52a"
        );
    }

    #[test]
    fn tampering_and_wrong_pointers_are_caught() {
        let sealed = seal(b"a picture");
        let pointer = sealed.pointer("id");
        let mut blob = sealed.blob.clone();
        blob[40] ^= 1;
        assert_eq!(open(&blob, &pointer), Err(OpenError::DigestMismatch));
        // The digest matches a changed blob only if the sender's pointer was changed too: the
        // MAC still catches it.
        let forged = Pointer {
            digest: Sha256::digest(&blob).to_vec(),
            ..pointer.clone()
        };
        assert_eq!(open(&blob, &forged), Err(OpenError::MacMismatch));
        let mut wrong_key = pointer.clone();
        wrong_key.key[40] ^= 1;
        assert_eq!(open(&sealed.blob, &wrong_key), Err(OpenError::MacMismatch));
        let too_big = Pointer {
            size: 10_000,
            ..pointer.clone()
        };
        assert!(matches!(
            open(&sealed.blob, &too_big),
            Err(OpenError::SizeMismatch { .. })
        ));
        assert_eq!(open(&blob[..40], &pointer), Err(OpenError::TooShort(40)));
    }

    #[test]
    fn pointers_travel_as_json() {
        let pointer = seal(b"x").pointer("AAAAAAAAAAAAAAAAAAAAAA");
        let text = serde_json::to_string(&pointer).unwrap();
        assert!(text.contains("\"id\":\"AAAAAAAAAAAAAAAAAAAAAA\""), "{text}");
        assert_eq!(serde_json::from_str::<Pointer>(&text).unwrap(), pointer);
    }
}
