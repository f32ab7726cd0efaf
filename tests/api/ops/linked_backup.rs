//! A multi-device account through `signal-server backup` and `restore`: the file carries the
//! linked device (marked linked, its keys and queue naming it by id), and a server on the
//! restored data dir serves that device's queue and keys as before, with new ids above the old.

use std::path::Path;

use super::restore_summary;
use crate::helpers::{fresh_data_dir, operator_ok, stop_closed, TestServer, TestUser, PASSWORD};
use serde_json::{json, Value};
use signal_server::client::{Client, DeviceMessage, LinkDevice, PreKey, SignedPreKey};

/// The registrationId of alice's linked device.
const LINKED_REG: u32 = 17;

/// A device linked to `user`'s account: 4 EC and 2 Kyber one-time keys, a last-resort key.
fn linked_device(user: &TestUser) -> LinkDevice {
    LinkDevice {
        identity_key: user.identity.public.to_vec(),
        registration_id: LINKED_REG,
        pre_keys: (1..=4).map(PreKey::generate).collect(),
        signed_pre_key: SignedPreKey::generate_ec(&user.identity, 1),
        kyber_pre_keys: (1..=2)
            .map(|id| SignedPreKey::random_kyber(&user.identity, id))
            .collect(),
        last_resort_kyber_pre_key: Some(SignedPreKey::random_kyber(&user.identity, 999_999)),
    }
}

/// `from` sends one ciphertext to each of alice's two devices; answers the ids they got.
async fn send_to_both(client: &Client, from: &TestUser, alice: &TestUser, text: &str) -> Vec<u64> {
    let to = |device_id, registration_id| DeviceMessage {
        device_id,
        registration_id,
        content: format!("{text} for device {device_id}"),
    };
    let sent = client
        .send_all(
            from.reg_id,
            &alice.username,
            &[to(1, alice.reg_id), to(2, LINKED_REG)],
        )
        .await
        .expect("send to both devices");
    sent.messages.iter().map(|m| m.id).collect()
}

/// The records of a backup file.
fn records(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file).expect("read the backup");
    let records = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"));
    records.collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_server_serves_the_linked_devices_queue_and_keys() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 7, 3, 2).await;
    let bob = s.user_with_device("bob", 8, 1, 1).await;
    let linked = s
        .client_of(&alice)
        .link_device(&linked_device(&alice))
        .await;
    assert_eq!(linked.expect("link").device_id, 2);
    let before = send_to_both(&s.client_of(&bob), &bob, &alice, "before").await;
    // One bundle popped before the backup: the linked device's key 1 is gone for good.
    let popped = s
        .client_of(&bob)
        .bundles("alice", bob.reg_id)
        .await
        .expect("bundles");
    assert_eq!(
        popped.devices[1].pre_key.as_ref().map(|k| k.key_id),
        Some(1)
    );

    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("backup.jsonl");
    let file_arg = file.display().to_string();
    operator_ok(s.dir.path(), &["backup", &file_arg], None).await;
    stop_closed(s).await;
    let records = records(&file);
    assert_eq!(records[0]["version"], 3, "{}", records[0]);
    let device = records.iter().find(|r| r["address"] == "alice.2");
    assert_eq!(device.expect("the linked device's record")["linked"], true);
    let keys_of_2 = records
        .iter()
        .filter(|r| r["type"] == "preKey" && r["device"] == 2);
    assert_eq!(
        keys_of_2.count(),
        3,
        "the linked device's EC keys after the pop"
    );

    let fresh = fresh_data_dir().await;
    let run = operator_ok(fresh.path(), &["restore", &file_arg], None).await;
    let summary = restore_summary(&run);
    assert_eq!(
        (summary["devices"].clone(), summary["messages"].clone()),
        (json!(3), json!(2))
    );

    let r = TestServer::start_in(fresh).await;
    let token = r.login("alice", PASSWORD).await;
    let alice_now = r.client().with_token(&token);
    let listed: Vec<u32> = alice_now
        .devices()
        .await
        .expect("devices")
        .iter()
        .map(|d| d.device_id)
        .collect();
    assert_eq!(listed, [1, 2]);
    // `<regId>` 17 names the linked device: its own queue and stock came back.
    let queue = alice_now
        .fetch(LINKED_REG, None)
        .await
        .expect("queue of device 2");
    assert_eq!(queue.len(), 1, "{queue:?}");
    assert_eq!(
        (queue[0].id, queue[0].content.as_str()),
        (before[1], "before for device 2")
    );
    assert_eq!(queue[0].recipient_address, "alice.2");
    let stock = alice_now
        .stock(LINKED_REG)
        .await
        .expect("stock of device 2");
    assert_eq!((stock.pre_key_count, stock.kyber_pre_key_count), (3, 1));
    let primary = alice_now
        .fetch(alice.reg_id, None)
        .await
        .expect("queue of device 1");
    assert_eq!(
        primary.iter().map(|m| m.id).collect::<Vec<_>>(),
        [before[0]]
    );

    // Bob's next bundle hands out the linked device's next keys, not the popped ones.
    let bob_now = r.client().with_token(&r.login("bob", PASSWORD).await);
    let bundles = bob_now
        .bundles("alice", bob.reg_id)
        .await
        .expect("bundles after");
    let second = &bundles.devices[1];
    assert_eq!((second.device_id, second.registration_id), (2, LINKED_REG));
    assert_eq!(second.pre_key.as_ref().map(|k| k.key_id), Some(2));
    assert_eq!(second.kyber_pre_key.as_ref().map(|k| k.key_id), Some(2));
    // Sends reach both devices again, with ids above every restored one.
    let after = send_to_both(&bob_now, &bob, &alice, "after").await;
    assert!(
        after.iter().all(|id| id > &before[1]),
        "{after:?} {before:?}"
    );
    let queue = alice_now
        .fetch(LINKED_REG, None)
        .await
        .expect("queue of device 2");
    assert_eq!(queue.len(), 2);
    stop_closed(r).await;
}
