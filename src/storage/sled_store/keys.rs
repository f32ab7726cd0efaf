//! Every key layout of every tree, in one place. Integers are big-endian so that sled's byte
//! order is numeric order, and every prefix is fixed-width so a prefix scan never spills into a
//! neighbouring user's keys.

/// `user id (u64 BE)`: 8 bytes.
pub fn user(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// `user id (u64 BE) ‖ device id (u32 BE)`: 12 bytes, a linked device's record.
pub fn linked(user_id: u64, device_id: u32) -> [u8; 12] {
    prekey(user_id, device_id)
}

/// `slot (u64 BE) ‖ key id (u32 BE)`: 12 bytes (a device's slot: see `LINKED_DEVICES`).
pub fn prekey(user_id: u64, key_id: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&user_id.to_be_bytes());
    k[8..].copy_from_slice(&key_id.to_be_bytes());
    k
}

/// `slot (u64 BE) ‖ message id (u64 BE)`: 16 bytes.
pub fn message(user_id: u64, message_id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&user_id.to_be_bytes());
    k[8..].copy_from_slice(&message_id.to_be_bytes());
    k
}

/// The id in the last 4 bytes of a prekey key.
pub fn prekey_id(key: &[u8]) -> Option<u32> {
    let tail: [u8; 4] = key.get(8..12)?.try_into().ok()?;
    Some(u32::from_be_bytes(tail))
}

/// The id in the last 8 bytes of a message key.
pub fn message_id(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(8..16)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

pub fn decode_u32(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?))
}

/// `recipient user id (u64 BE) ‖ timestamp ms (u64 BE)`: the value of a message-index entry.
pub fn index_value(user_id: u64, timestamp: u64) -> [u8; 16] {
    message(user_id, timestamp)
}

/// `user id (u64 BE) ‖ expiry s (u64 BE) ‖ token version (u32 BE)`: a reset grant's value.
pub fn reset_grant(user_id: u64, expires_at: u64, token_version: u32) -> [u8; 20] {
    let mut v = [0u8; 20];
    v[..8].copy_from_slice(&user_id.to_be_bytes());
    v[8..16].copy_from_slice(&expires_at.to_be_bytes());
    v[16..].copy_from_slice(&token_version.to_be_bytes());
    v
}

/// `slot (u64 BE) ‖ route (u8) ‖ key`: an idempotency record of the device kept under `slot`.
pub fn idempotency(slot: u64, route: u8, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.extend_from_slice(&slot.to_be_bytes());
    k.push(route);
    k.extend_from_slice(key.as_bytes());
    k
}

/// `created ms (u64 BE) ‖ record key`: a record's place in the sweep's order (oldest first).
pub fn idempotency_time(created_ms: u64, record: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + record.len());
    k.extend_from_slice(&created_ms.to_be_bytes());
    k.extend_from_slice(record);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prekey_keys_sort_numerically_within_a_user() {
        assert!(prekey(1, 2) < prekey(1, 256));
        assert!(prekey(1, 16_777_215) < prekey(2, 0));
        assert_eq!(prekey_id(&prekey(7, 300)), Some(300));
    }

    #[test]
    fn message_keys_sort_by_id_and_round_trip() {
        assert!(message(5, 9) < message(5, 10));
        assert!(message(5, u64::MAX) < message(6, 0));
        assert_eq!(message_id(&message(5, 1234)), Some(1234));
        assert!(message(5, 0).starts_with(&user(5)));
    }

    #[test]
    fn integers_decode_from_their_big_endian_bytes() {
        assert_eq!(decode_u64(&user(42)), Some(42));
        assert_eq!(decode_u32(&7u32.to_be_bytes()), Some(7));
        assert_eq!(decode_u64(&[1, 2]), None);
    }

    #[test]
    fn idempotency_keys_stay_under_their_slot_and_sort_by_time() {
        let record = idempotency(5, 2, "k-1");
        assert!(record.starts_with(&user(5)));
        assert_eq!(&record[8..], b"\x02k-1");
        assert!(idempotency(5, 2, "~") < idempotency(6, 1, ""));
        assert!(idempotency_time(9, &record) < idempotency_time(10, &idempotency(1, 1, "")));
        assert_eq!(decode_u64(&idempotency_time(9, &record)), Some(9));
        assert_eq!(&idempotency_time(9, &record)[8..], record.as_slice());
    }
}
