//! Key material at the boundary: base64, public-key shapes, and XEdDSA signatures checked the way
//! libsignal checks them.

use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::Scalar;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// Serialized Curve25519 public key: type byte 0x05 and 32 bytes.
pub const EC_KEY_LEN: usize = 33;
pub const EC_KEY_TYPE: u8 = 0x05;
/// Serialized Kyber-1024 public key: type byte 0x08 and 1568 bytes.
pub const KYBER_KEY_LEN: usize = 1569;
pub const KYBER_KEY_TYPE: u8 = 0x08;
pub const SIGNATURE_LEN: usize = 64;

pub mod b64 {
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
    use base64::engine::DecodePaddingMode;
    use base64::Engine;

    /// Standard alphabet; padding optional on input.
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );

    pub fn encode(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }

    pub fn decode(text: &str) -> Option<Vec<u8>> {
        LENIENT.decode(text).ok()
    }
}

/// Checks an XEdDSA signature by the Curve25519 key `public_key` (33 bytes, type byte first) over
/// `message`. As in libsignal: the Edwards sign bit travels in the top bit of the signature's
/// last byte, and is cleared before the Ed25519 check.
pub fn verify_signature(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let (Some(key), Ok(sig)) = (
        public_key
            .get(1..33)
            .and_then(|k| <[u8; 32]>::try_from(k).ok()),
        <[u8; 64]>::try_from(signature),
    ) else {
        return false;
    };
    let Some(ed_point) = MontgomeryPoint(key).to_edwards((sig[63] & 0x80) >> 7) else {
        return false;
    };
    let cap_a = ed_point.compress();
    let cap_r: [u8; 32] = sig[..32].try_into().unwrap_or([0; 32]);
    let mut s: [u8; 32] = sig[32..].try_into().unwrap_or([0; 32]);
    s[31] &= 0x7f;
    if s[31] & 0xe0 != 0 {
        return false;
    }
    let Some(a) = CompressedEdwardsY(cap_a.to_bytes()).decompress() else {
        return false;
    };
    let h = challenge(&cap_r, cap_a.as_bytes(), message);
    let check = EdwardsPoint::vartime_double_scalar_mul_basepoint(
        &h,
        &-a,
        &Scalar::from_bytes_mod_order(s),
    );
    bool::from(check.compress().as_bytes().ct_eq(&cap_r))
}

fn challenge(cap_r: &[u8; 32], cap_a: &[u8; 32], message: &[u8]) -> Scalar {
    let mut hash = Sha512::new();
    hash.update(cap_r);
    hash.update(cap_a);
    hash.update(message);
    Scalar::from_bytes_mod_order_wide(&hash.finalize().into())
}

/// A Curve25519 key pair that signs with XEdDSA, as Signal clients do. The server never signs;
/// this is for tests, examples and the load generator, which need real key material.
pub struct KeyPair {
    secret: [u8; 32],
    /// Serialized public key (type byte 0x05 first).
    pub public: [u8; 33],
}

impl KeyPair {
    pub fn generate() -> KeyPair {
        KeyPair::from_secret(rand::random())
    }

    pub fn from_secret(mut secret: [u8; 32]) -> KeyPair {
        secret[0] &= 248;
        secret[31] &= 127;
        secret[31] |= 64;
        let point = &Scalar::from_bytes_mod_order(secret) * ED25519_BASEPOINT_TABLE;
        let mut public = [EC_KEY_TYPE; 33];
        public[1..].copy_from_slice(point.to_montgomery().as_bytes());
        KeyPair { secret, public }
    }

    /// XEdDSA signature over `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let a = Scalar::from_bytes_mod_order(self.secret);
        let cap_a = (&a * ED25519_BASEPOINT_TABLE).compress();
        let sign_bit = cap_a.as_bytes()[31] & 0x80;
        let nonce: [u8; 64] = {
            let mut n = [0u8; 64];
            n[..32].copy_from_slice(&rand::random::<[u8; 32]>());
            n[32..].copy_from_slice(&rand::random::<[u8; 32]>());
            n
        };
        let mut hash = Sha512::new();
        hash.update([0xfe; 32]);
        hash.update(self.secret);
        hash.update(message);
        hash.update(nonce);
        let r = Scalar::from_bytes_mod_order_wide(&hash.finalize().into());
        let cap_r = (&r * ED25519_BASEPOINT_TABLE).compress();
        let s = challenge(cap_r.as_bytes(), cap_a.as_bytes(), message) * a + r;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(cap_r.as_bytes());
        sig[32..].copy_from_slice(s.as_bytes());
        sig[63] = (sig[63] & 0x7f) | sign_bit;
        sig
    }

    /// The top bit of this key's signatures (the Edwards sign bit).
    pub fn sign_bit(&self) -> u8 {
        let a = Scalar::from_bytes_mod_order(self.secret);
        (&a * ED25519_BASEPOINT_TABLE).compress().as_bytes()[31] >> 7
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_for_both_sign_bits() {
        let mut seen = [false; 2];
        for _ in 0..64 {
            let id = KeyPair::generate();
            let spk = KeyPair::generate();
            let sig = id.sign(&spk.public);
            assert_eq!(sig[63] >> 7, id.sign_bit());
            assert!(verify_signature(&id.public, &spk.public, &sig));
            seen[id.sign_bit() as usize] = true;
        }
        assert_eq!(seen, [true, true]);
    }

    #[test]
    fn tampered_signatures_and_wrong_keys_fail() {
        let id = KeyPair::generate();
        let other = KeyPair::generate();
        let msg = KeyPair::generate().public;
        let sig = id.sign(&msg);
        assert!(!verify_signature(&other.public, &msg, &sig));
        let mut bad = sig;
        bad[5] ^= 1;
        assert!(!verify_signature(&id.public, &msg, &bad));
        let mut flipped = sig;
        flipped[63] ^= 0x80;
        assert!(!verify_signature(&id.public, &msg, &flipped));
        assert!(!verify_signature(&id.public, &msg[1..], &sig));
        assert!(!verify_signature(&id.public[..10], &msg, &sig));
    }

    #[test]
    fn base64_accepts_missing_padding_and_emits_padding() {
        assert_eq!(b64::decode("AQI").unwrap(), vec![1, 2]);
        assert_eq!(b64::decode("AQI=").unwrap(), vec![1, 2]);
        assert_eq!(b64::encode(&[1, 2]), "AQI=");
        assert!(b64::decode("A-I_").is_none());
    }
}
