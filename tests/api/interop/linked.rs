//! Accounts with several devices, with real libsignal sessions: alice has a phone (the primary)
//! and a linked desktop sharing her identity key, bob has a phone. A sender holds one session
//! per device of its peer (libsignal address = username and device id), made from the peer's v2
//! bundle, and sends one ciphertext per device in one request; the server refuses a send whose
//! device list is out of date (409 `mismatched_devices`, 410 `stale_devices`) and the sender
//! recovers.

use libsignal_protocol_syft::CiphertextMessageType::{PreKey, Whisper};
use serde_json::Value;
use signal_server::client::Refusal;

use super::client::{self, Client, Received};
use super::{drained, same, start_server, user, Must};

/// A desktop linked to `phone`'s account (its identity key pair, keys of its own).
async fn linked_desktop(phone: &Client) -> Client {
    let mut desktop = phone.new_install().must("new install");
    desktop
        .link(1..=3, 1..=3, Some(500))
        .await
        .must("link the desktop");
    desktop
}

/// The one message queued for device `c`, as the server lists it and decrypted; then deleted.
async fn read_one(c: &mut Client) -> (Value, Received) {
    let queue = c.queued().await.must("queue");
    assert_eq!(queue.len(), 1, "{}.{}: {queue:?}", c.username, c.device_id);
    let got = c.decrypt(&queue[0]).await.must("decrypt");
    c.delete_messages(&[got.id]).await.must("delete");
    (queue[0].clone(), got)
}

/// A send the server must refuse: its refusal.
async fn refused_send(c: &mut Client, to: &str, text: &str) -> Refusal {
    match c.send_all(to, text).await {
        Ok(sent) => panic!("{text:?}: expected a refusal, got {sent:?}"),
        Err(e) => client::refusal(&e)
            .unwrap_or_else(|| panic!("{text:?}: {e}"))
            .clone(),
    }
}

fn device_ids(devices: impl IntoIterator<Item = u32>) -> Vec<u32> {
    devices.into_iter().collect()
}

#[tokio::test]
async fn a_send_reaches_every_device_and_a_linked_device_replies_and_syncs() {
    let (_dir, server, api) = start_server().await;
    let mut phone = user(&api, "alice", 3, 3, Some(500)).await;
    let mut desktop = linked_desktop(&phone).await;
    assert_eq!(u32::from(desktop.device_id), 2, "the lowest free id");
    assert_ne!(desktop.registration_id, phone.registration_id);
    let identity = phone.identity.identity_key().serialize().to_vec();
    let listed = phone.devices().await.must("GET /v2/devices");
    let listed: Vec<(u32, u32, bool)> = listed
        .iter()
        .map(|d| {
            let i = &d.info;
            (d.device_id, i.registration_id, i.identity_key == identity)
        })
        .collect();
    assert_eq!(
        listed,
        [
            (1, phone.registration_id, true),
            (2, desktop.registration_id, true)
        ]
    );
    let mut bob = user(&api, "bob", 3, 3, Some(500)).await;

    // bob gets a bundle per device of alice (each with that device's lowest one-time keys) and
    // runs PQXDH with each.
    let bundles = bob
        .start_sessions("alice")
        .await
        .must("sessions with alice");
    assert_eq!(bundles.identity_key, identity);
    let got: Vec<_> = bundles
        .devices
        .iter()
        .map(|d| {
            let kyber = d.kyber_pre_key.as_ref().map(|k| k.key_id);
            (
                d.device_id,
                d.registration_id,
                d.pre_key.as_ref().map(|k| k.key_id),
                kyber,
            )
        })
        .collect();
    let (p, d) = (phone.registration_id, desktop.registration_id);
    assert_eq!(got, [(1, p, Some(1), Some(1)), (2, d, Some(1), Some(1))]);
    for device in [&phone, &desktop] {
        assert_eq!(device.prekey_counts().await.must("counts"), (2, 2));
    }

    // One send, a ciphertext per device: the desktop gets its copy live, the phone over REST.
    let mut desktop_ws = desktop.connect().await.must("desktop online");
    assert!(desktop_ws.backlog().await.must("backlog").is_empty());
    let text = "hello, both of you";
    let (kinds, sent) = bob.send_all("alice", text).await.must("send to both");
    assert_eq!(kinds, [(1, PreKey), (2, PreKey)]);
    assert_eq!(
        device_ids(sent.messages.iter().map(|m| m.device_id)),
        [1, 2]
    );
    let live = desktop_ws.next_message().await.must("the desktop receives");
    assert_eq!(live["id"], sent.messages[1].id);
    assert_eq!(live["senderAddress"], "bob.1");
    assert_eq!(live["recipientAddress"], "alice.2");
    let got = desktop.decrypt(&live).await.must("the desktop decrypts");
    same(&got, &bob, PreKey, text);
    desktop_ws.ack(&[got.id]).await.must("ack");
    let (stored, got) = read_one(&mut phone).await;
    assert_eq!(stored["id"], sent.messages[0].id);
    assert_eq!(stored["recipientAddress"], "alice.1");
    same(&got, &bob, PreKey, text);
    // Each device used its own one-time prekey 1.
    for device in [&phone, &desktop] {
        assert!(!device.store.all_pre_key_ids().any(|id| u32::from(*id) == 1));
    }

    // The desktop replies to bob's one device, in the session bob's PreKey message started.
    assert_eq!(desktop.known_devices("bob"), [1]);
    let text = "hi bob, from my desktop";
    let (kinds, _) = desktop.send_all("bob", text).await.must("the reply");
    assert_eq!(kinds, [(1, Whisper)]);
    let (stored, got) = read_one(&mut bob).await;
    assert_eq!(stored["senderAddress"], "alice.2");
    assert_eq!(stored["senderRegistrationID"], desktop.registration_id);
    same(&got, &desktop, Whisper, text);

    // The sync copy: alice's v2 bundle, asked for by the desktop, holds only the phone (with its
    // next one-time key), and a send to alice's own account names only the phone.
    let own = desktop.start_sessions("alice").await.must("own account");
    assert_eq!(device_ids(own.devices.iter().map(|d| d.device_id)), [1]);
    assert_eq!(own.devices[0].pre_key.as_ref().map(|k| k.key_id), Some(2));
    let text = "sync: I said hi to bob";
    let (kinds, sent) = desktop.send_all("alice", text).await.must("sync copy");
    assert_eq!(kinds, [(1, PreKey)]);
    let (stored, got) = read_one(&mut phone).await;
    assert_eq!(stored["id"], sent.messages[0].id);
    assert_eq!(stored["senderAddress"], "alice.2");
    same(&got, &desktop, PreKey, text);
    drained(&desktop).await;

    // Sessions are per device: the desktop answered bob, the phone has not.
    let (kinds, _) = bob.send_all("alice", "and again").await.must("send again");
    assert_eq!(kinds, [(1, PreKey), (2, Whisper)]);
    let live = desktop_ws.next_message().await.must("the desktop receives");
    let got = desktop.decrypt(&live).await.must("the desktop decrypts");
    same(&got, &bob, Whisper, "and again");
    desktop_ws.ack(&[got.id]).await.must("ack");
    let (_, got) = read_one(&mut phone).await;
    same(&got, &bob, PreKey, "and again");
    drained(&desktop).await;
    desktop_ws.close().await.must("close");
    drop(server);
}

#[tokio::test]
async fn an_unlinked_device_is_extra_and_a_reinstalled_phone_is_stale() {
    let (_dir, server, api) = start_server().await;
    let mut phone = user(&api, "alice", 3, 3, Some(500)).await;
    let mut desktop = linked_desktop(&phone).await;
    let mut bob = user(&api, "bob", 3, 3, Some(500)).await;
    bob.start_sessions("alice")
        .await
        .must("sessions with alice");
    bob.send_all("alice", "hello, both").await.must("send");
    for device in [&mut phone, &mut desktop] {
        let (_, got) = read_one(device).await;
        same(&got, &bob, PreKey, "hello, both");
    }

    // alice unlinks the desktop mid-conversation: its token (bound to it) dies with it.
    phone.unlink(2).await.must("unlink");
    let listed = phone.devices().await.must("GET /v2/devices");
    assert_eq!(device_ids(listed.iter().map(|d| d.device_id)), [1]);
    let e = desktop
        .queued()
        .await
        .expect_err("the unlinked desktop has no queue");
    let refusal = client::refusal(&e).unwrap_or_else(|| panic!("{e}"));
    assert_eq!(
        (refusal.status, refusal.code.as_str()),
        (401, "not_authenticated")
    );

    // bob still names both devices: 409, and nothing is queued for the phone either.
    let r = refused_send(&mut bob, "alice", "are you there?").await;
    assert_eq!(
        (r.status, r.code.as_str()),
        (409, "mismatched_devices"),
        "{r:?}"
    );
    assert_eq!(r.devices("extraDevices"), [2], "{r:?}");
    assert_eq!(r.devices("missingDevices"), device_ids([]), "{r:?}");
    assert!(
        phone.queued().await.must("queue").is_empty(),
        "all or nothing"
    );
    // bob drops that session and sends to the phone only.
    bob.forget("alice", 2).await.must("forget the desktop");
    assert_eq!(bob.known_devices("alice"), [1]);
    let (kinds, sent) = bob.send_all("alice", "are you there?").await.must("resend");
    assert_eq!(kinds, [(1, PreKey)], "the phone has not answered yet");
    let (stored, got) = read_one(&mut phone).await;
    assert_eq!(stored["id"], sent.messages[0].id);
    same(&got, &bob, PreKey, "are you there?");

    // alice reinstalls her phone: the old route removes every device of the account, and the
    // new primary (identity restored, store empty) has a new registrationId.
    phone.delete_devices().await.must("DELETE /device");
    let mut phone = phone.new_install().must("reinstall");
    phone
        .create_device(1..=3, 1..=3, Some(500))
        .await
        .must("the new phone");
    let new_registration_id = phone.registration_id;

    // bob's send still carries the old registrationId: 410, nothing queued.
    let r = refused_send(&mut bob, "alice", "still there?").await;
    assert_eq!((r.status, r.code.as_str()), (410, "stale_devices"), "{r:?}");
    assert_eq!(r.devices("staleDevices"), [1], "{r:?}");
    assert!(
        phone.queued().await.must("queue").is_empty(),
        "all or nothing"
    );
    // bob fetches the bundle again and builds a new session: the send goes through.
    let bundles = bob.start_sessions("alice").await.must("a new session");
    let got: Vec<(u32, u32)> = bundles
        .devices
        .iter()
        .map(|d| (d.device_id, d.registration_id))
        .collect();
    assert_eq!(got, [(1, new_registration_id)]);
    let (kinds, sent) = bob.send_all("alice", "still there?").await.must("send");
    assert_eq!(kinds, [(1, PreKey)]);
    let (stored, got) = read_one(&mut phone).await;
    assert_eq!(stored["id"], sent.messages[0].id);
    same(&got, &bob, PreKey, "still there?");

    // The new phone answers in the new session.
    let (kinds, _) = phone.send_all("bob", "yes, new phone").await.must("reply");
    assert_eq!(kinds, [(1, Whisper)]);
    let (stored, got) = read_one(&mut bob).await;
    assert_eq!(stored["senderRegistrationID"], new_registration_id);
    same(&got, &phone, Whisper, "yes, new phone");
    drop(server);
}

#[tokio::test]
async fn a_device_linked_later_is_missing_until_the_sender_fetches_again() {
    let (_dir, server, api) = start_server().await;
    let mut phone = user(&api, "alice", 3, 3, Some(500)).await;
    let mut bob = user(&api, "bob", 3, 3, Some(500)).await;
    let bundles = bob.start_sessions("alice").await.must("session with alice");
    assert_eq!(device_ids(bundles.devices.iter().map(|d| d.device_id)), [1]);
    let mut desktop = linked_desktop(&phone).await;

    // bob knows only the phone: 409 with the desktop missing, nothing queued.
    let r = refused_send(&mut bob, "alice", "hello").await;
    assert_eq!(
        (r.status, r.code.as_str()),
        (409, "mismatched_devices"),
        "{r:?}"
    );
    assert_eq!(r.devices("missingDevices"), [2], "{r:?}");
    assert_eq!(r.devices("extraDevices"), device_ids([]), "{r:?}");
    assert!(
        phone.queued().await.must("queue").is_empty(),
        "all or nothing"
    );

    // bob fetches again: the phone's next keys and the desktop's first ones.
    let bundles = bob
        .start_sessions("alice")
        .await
        .must("sessions with alice");
    let got: Vec<_> = bundles
        .devices
        .iter()
        .map(|d| (d.device_id, d.pre_key.as_ref().map(|k| k.key_id)))
        .collect();
    assert_eq!(got, [(1, Some(2)), (2, Some(1))]);
    let (kinds, _) = bob.send_all("alice", "hello").await.must("send to both");
    assert_eq!(kinds, [(1, PreKey), (2, PreKey)]);
    for device in [&mut phone, &mut desktop] {
        let (_, got) = read_one(device).await;
        same(&got, &bob, PreKey, "hello");
    }
    drop(server);
}
