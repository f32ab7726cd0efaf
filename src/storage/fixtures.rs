//! Records for the storage unit tests of both backends (the keys are the right size, not real
//! keys), and the accounts several of them start from.

use super::attachments::{Advance, Lease, Upload, UploadLimits};
use super::{RestoreLimits, Storage};
use crate::models::{Device, DeviceRef, Message, Outgoing, PreKey, SignedPreKey};

/// Device 1 (the primary of `device("<name>.1")`) of `user`.
pub fn primary(user: u64) -> DeviceRef {
    DeviceRef { user, device: 1 }
}

pub fn device(address: &str) -> Device {
    Device {
        address: address.into(),
        registration_id: 7,
        identity_key: vec![5; 33],
        signed_prekey: SignedPreKey {
            key_id: 1,
            public_key: vec![5; 33],
            signature: vec![0; 64],
        },
        last_resort_kyber: None,
    }
}

pub fn ec(ids: impl IntoIterator<Item = u32>) -> Vec<PreKey> {
    ids.into_iter()
        .map(|key_id| PreKey {
            key_id,
            public_key: vec![5; 33],
        })
        .collect()
}

pub fn message(content: &str, timestamp: u64) -> Message {
    Message {
        id: 0,
        sender_address: "s.1".into(),
        sender_registration_id: 3,
        content: content.into(),
        recipient_address: "r.1".into(),
        timestamp,
    }
}

/// A password hash in the stored format (never checked by the storage tests).
pub const HASH: &str = "pbkdf2_sha256$1000$c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// The limits of a restore in the storage tests (a queue of 10).
pub fn limits() -> RestoreLimits {
    RestoreLimits {
        max_message_bytes: 65_536,
        max_prekeys: 100,
        max_queued_messages: 10,
        max_devices: 6,
        max_attachment_bytes: 1 << 20,
        uploads: UploadLimits {
            max_unfinished: 3,
            quota_bytes: 4 << 20,
        },
    }
}

/// A Kyber prekey of the right size and type byte.
pub fn kyber(key_id: u32) -> SignedPreKey {
    let mut public_key = vec![8u8; 1569];
    public_key[1] = 0;
    SignedPreKey {
        key_id,
        public_key,
        signature: vec![1; 64],
    }
}

/// Device `device` of `user`.
pub fn at(user: u64, device: u32) -> DeviceRef {
    DeviceRef { user, device }
}

/// Alice (user 1: primary `alice.1` with registrationId 7, linked devices 2 and 3 with
/// registrationIds 12 and 11, device 2 linked after device 3, so that on sled its slot is above
/// device 3's) and bob (user 2, a primary), one-time keys on every device and messages for each:
/// sent to all of alice's devices (opaque content) and to bob's one device (the old way). Made
/// through the verbs of `Storage`, on either store.
pub async fn linked_accounts(s: &Storage) {
    for name in ["alice", "bob"] {
        s.create_user(name, &format!("{name}@x.org"), HASH.into(), None)
            .await
            .unwrap();
    }
    let first = Device {
        last_resort_kyber: Some(kyber(900)),
        ..device("alice.1")
    };
    s.create_device(1, &first, &ec(1..=3), &[kyber(1)])
        .await
        .unwrap();
    s.create_device(2, &device("bob.1"), &ec(1..=2), &[])
        .await
        .unwrap();
    for registration_id in [10, 11, 12] {
        let linked = Device {
            registration_id,
            last_resort_kyber: Some(kyber(901)),
            ..device("alice.9")
        };
        s.link_device(1, &linked, &ec(1..=2), &[kyber(5)], 6)
            .await
            .unwrap();
        if registration_id == 11 {
            s.unlink_device(at(1, 2)).await.unwrap();
        }
    }
    let all: Vec<Outgoing> = [(1, 7), (2, 12), (3, 11)]
        .into_iter()
        .map(|(device, registration_id)| Outgoing {
            device,
            registration_id,
            message: message("opaque, not JSON", 6),
        })
        .collect();
    s.enqueue_all(1, None, all, 10).await.unwrap();
    s.enqueue(primary(2), old_style("bob.1"), 10).await.unwrap();
    s.pop_prekeys(at(1, 3)).await.unwrap();
}

/// A message as `POST /messages` queues it for `address`: its content carries registrationId 7.
pub fn old_style(address: &str) -> Message {
    Message {
        recipient_address: address.into(),
        ..message(r#"{"registrationId":7}"#, 5)
    }
}

/// An upload of `owner`, id `[seed; 16]`, of `length` bytes of which `written` are in (all of
/// them: complete), made through the verbs of `Storage` as the API makes one; as stored.
pub async fn upload(s: &Storage, owner: u64, seed: u8, length: u64, written: u64) -> Upload {
    let now = crate::auth::now_millis();
    let upload = Upload {
        id: [seed; 16],
        owner,
        length,
        offset: 0,
        created_ms: now,
        expires_ms: now + 86_400_000,
        completed_ms: None,
    };
    let roomy = UploadLimits {
        max_unfinished: 100,
        quota_bytes: u64::MAX,
    };
    s.create_upload(&upload, roomy).await.unwrap().unwrap();
    if written > 0 {
        let lease = Lease {
            holder: u64::from(seed),
            until_ms: now + 60_000,
        };
        s.claim_upload(&upload.id, owner, 0, lease, now)
            .await
            .unwrap()
            .unwrap();
        let step = Advance {
            id: upload.id,
            lease,
            from: 0,
            to: written,
            now_ms: now + 1,
            expires_ms: now + 30 * 86_400_000,
            release: true,
        };
        s.advance_upload(step).await.unwrap().unwrap();
    }
    s.upload(&upload.id).await.unwrap().unwrap()
}
