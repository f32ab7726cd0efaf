//! One device per account: a long conversation over the WebSocket and REST, and a bundle's
//! one-time keys running out down to the last-resort Kyber key.

use super::client::{self, Client};
use super::{drained, same, start_server, user, Must};
use libsignal_protocol_syft::{CiphertextMessageType, GenericSignedPreKey as _, KyberPreKeyStore};
use serde_json::Value;

#[tokio::test]
async fn conversation_over_websocket_and_rest() {
    let (_dir, server, api) = start_server().await;
    let mut alice = user(&api, "alice", 3, 3, Some(500)).await;
    let mut bob = user(&api, "bob", 3, 3, Some(500)).await;
    assert_eq!(bob.prekey_counts().await.must("counts"), (3, 3));

    // The device as the server describes it.
    let (status, device) = api
        .call("GET", "/device/x", Some(&bob.token), None)
        .await
        .must("GET /device");
    assert_eq!(status, 200, "{device}");
    assert_eq!(device["registrationId"], bob.registration_id);
    assert_eq!(device["hasLastResortKyberPreKey"], true);

    let mut alice_ws = alice.connect().await.must("alice ws");
    let mut bob_ws = bob.connect().await.must("bob ws");
    assert!(alice_ws.backlog().await.must("backlog").is_empty());
    assert!(bob_ws.backlog().await.must("backlog").is_empty());

    // alice fetches bob's bundle (lowest one-time keys first) and runs PQXDH.
    let bundle = alice.start_session("bob").await.must("session with bob");
    assert_eq!(bundle["address"], "bob.1");
    assert_eq!(bundle["registrationId"], bob.registration_id);
    assert_eq!(bundle["preKey"]["keyId"], 1);
    assert_eq!(bundle["signedPreKey"]["keyId"], 1);
    assert_eq!(bundle["kyberPreKey"]["keyId"], 1);
    assert_eq!(bob.prekey_counts().await.must("counts"), (2, 2));

    // First message: a PreKey message, pushed live to bob.
    let (kind, stored) = alice.send("bob", "hello bob").await.must("send");
    assert_eq!(kind, CiphertextMessageType::PreKey);
    assert_eq!(stored["senderAddress"], "alice.1");
    assert_eq!(stored["recipientAddress"], "bob.1");
    assert_eq!(stored["senderRegistrationID"], alice.registration_id);
    let content: Value = serde_json::from_str(stored["content"].as_str().unwrap()).unwrap();
    assert_eq!(content["type"], 3);
    assert_eq!(content["registrationId"], bob.registration_id);
    assert!(
        !stored["content"].as_str().unwrap().contains("hello"),
        "the server must only see ciphertext"
    );
    let message = bob_ws.next_message().await.must("bob receives");
    assert_eq!(message, stored, "the live frame is the stored message");
    let got = bob.decrypt(&message).await.must("bob decrypts");
    same(&got, &alice, CiphertextMessageType::PreKey, "hello bob");
    bob_ws.ack(&[got.id]).await.must("ack");
    // bob's libsignal store used (and dropped) one-time prekey 1.
    assert!(!bob.store.all_pre_key_ids().any(|id| u32::from(*id) == 1));
    assert!(bob.store.all_pre_key_ids().any(|id| u32::from(*id) == 2));

    // bob's reply is a plain Double Ratchet message.
    let (kind, _) = bob.send("alice", "hi alice").await.must("reply");
    assert_eq!(kind, CiphertextMessageType::Whisper);
    let got = alice
        .decrypt(&alice_ws.next_message().await.must("alice receives"))
        .await
        .must("alice decrypts");
    same(&got, &bob, CiphertextMessageType::Whisper, "hi alice");
    alice_ws.ack(&[got.id]).await.must("ack");

    // Many more, in bursts and crossing each other: 40+ each way.
    let mut sent_ab = 1;
    let mut sent_ba = 1;
    let mut last_id = got.id;
    for round in 0..16 {
        let a_texts: Vec<String> = (0..(round % 3 + 1))
            .map(|i| format!("a->b round {round} #{i} {}", "x".repeat(round * 37)))
            .collect();
        let b_texts: Vec<String> = (0..(round % 2 + 2))
            .map(|i| format!("b->a round {round} #{i} ünïcødé ✓"))
            .collect();
        // Both send before either reads: the ratchets cross.
        for t in &a_texts {
            let (kind, stored) = alice.send("bob", t).await.must("alice sends");
            assert_eq!(kind, CiphertextMessageType::Whisper);
            let id = stored["id"].as_u64().unwrap();
            assert!(id > last_id, "message ids only grow");
            last_id = id;
        }
        for t in &b_texts {
            bob.send("alice", t).await.must("bob sends");
        }
        let mut ids = Vec::new();
        for t in &a_texts {
            let got = bob
                .decrypt(&bob_ws.next_message().await.must("bob receives"))
                .await
                .must("bob decrypts");
            same(&got, &alice, CiphertextMessageType::Whisper, t);
            ids.push(got.id);
        }
        bob_ws.ack(&ids).await.must("ack");
        let mut ids = Vec::new();
        for t in &b_texts {
            let got = alice
                .decrypt(&alice_ws.next_message().await.must("alice receives"))
                .await
                .must("alice decrypts");
            same(&got, &bob, CiphertextMessageType::Whisper, t);
            ids.push(got.id);
        }
        alice_ws.ack(&ids).await.must("ack");
        sent_ab += a_texts.len();
        sent_ba += b_texts.len();
    }

    // bob goes offline: messages queue up and he reads them over REST, then deletes them.
    drained(&bob).await;
    bob_ws.close().await.must("close");
    let texts: Vec<String> = (0..5).map(|i| format!("while you were out #{i}")).collect();
    for t in &texts {
        alice.send("bob", t).await.must("alice sends");
    }
    sent_ab += texts.len();
    let queue = bob.queued().await.must("GET /messages");
    assert_eq!(
        queue.len(),
        texts.len(),
        "only the unread messages are queued"
    );
    let mut ids = Vec::new();
    for (message, t) in queue.iter().zip(&texts) {
        let got = bob.decrypt(message).await.must("bob decrypts");
        same(&got, &alice, CiphertextMessageType::Whisper, t);
        ids.push(got.id);
    }
    bob.delete_messages(&ids).await.must("DELETE /messages");
    assert!(bob.queued().await.must("queue").is_empty());

    // Back online: nothing left in the backlog, and the session goes on.
    let mut bob_ws = bob.connect().await.must("bob reconnects");
    assert!(bob_ws.backlog().await.must("backlog").is_empty());
    bob.send("alice", "back").await.must("bob sends");
    let got = alice
        .decrypt(&alice_ws.next_message().await.must("alice receives"))
        .await
        .must("alice decrypts");
    same(&got, &bob, CiphertextMessageType::Whisper, "back");
    alice_ws.ack(&[got.id]).await.must("ack");
    sent_ba += 1;

    assert!(sent_ab >= 30 && sent_ba >= 30, "{sent_ab} / {sent_ba}");
    drained(&alice).await;
    drained(&bob).await;
    // No other one-time prekey was used.
    assert_eq!(bob.prekey_counts().await.must("counts"), (2, 2));
    assert_eq!(alice.prekey_counts().await.must("counts"), (3, 3));
    let _ = (alice_ws.close().await, bob_ws.close().await);
    drop(server);
}

/// A PreKey message from `from` to bob, read from bob's queue and decrypted; bob replies and
/// `from` decrypts the reply.
async fn round_trip(from: &mut Client, bob: &mut Client, text: &str) {
    let (kind, _) = from.send(&bob.username, text).await.must("send");
    assert_eq!(kind, CiphertextMessageType::PreKey);
    let queue = bob.queued().await.must("bob's queue");
    assert_eq!(queue.len(), 1, "{queue:?}");
    let got = bob.decrypt(&queue[0]).await.must("bob decrypts");
    same(&got, from, CiphertextMessageType::PreKey, text);
    bob.delete_messages(&[got.id]).await.must("delete");

    let reply = format!("re: {text}");
    bob.send(&from.username, &reply).await.must("bob replies");
    let queue = from.queued().await.must("queue");
    assert_eq!(queue.len(), 1, "{queue:?}");
    let got = from.decrypt(&queue[0]).await.must("decrypt reply");
    same(&got, bob, CiphertextMessageType::Whisper, &reply);
    from.delete_messages(&[got.id]).await.must("delete");

    // And the session keeps going.
    from.send(&bob.username, "again").await.must("send again");
    let queue = bob.queued().await.must("bob's queue");
    let got = bob.decrypt(&queue[0]).await.must("bob decrypts");
    same(&got, from, CiphertextMessageType::Whisper, "again");
    bob.delete_messages(&[got.id]).await.must("delete");
}

#[tokio::test]
async fn one_time_prekeys_run_out_then_last_resort_kyber() {
    const LAST_RESORT: u32 = 16_000_000;
    let (_dir, server, api) = start_server().await;
    let mut bob = user(&api, "bob", 2, 2, Some(LAST_RESORT)).await;
    assert_eq!(bob.prekey_counts().await.must("counts"), (2, 2));

    // Two users use up bob's two one-time EC and two one-time Kyber prekeys, lowest id first.
    for (i, name) in ["carol", "dave"].into_iter().enumerate() {
        let mut peer = user(&api, name, 1, 1, Some(1000)).await;
        let bundle = peer.start_session("bob").await.must("session");
        let id = i as u32 + 1;
        assert_eq!(bundle["preKey"]["keyId"], id, "{name}");
        assert_eq!(bundle["kyberPreKey"]["keyId"], id, "{name}");
        let left = 2 - id as u64;
        assert_eq!(bob.prekey_counts().await.must("counts"), (left, left));
        round_trip(&mut peer, &mut bob, &format!("hello from {name}")).await;
    }

    // Nothing one-time is left: the bundle has no EC one-time key and the last-resort Kyber
    // key, and the session still works. Twice, from two users: the last-resort key stays.
    for name in ["eve", "frank"] {
        let mut peer = user(&api, name, 1, 1, Some(1000)).await;
        let bundle = peer.start_session("bob").await.must("session");
        assert!(bundle.get("preKey").is_none(), "{bundle}");
        assert_eq!(bundle["kyberPreKey"]["keyId"], LAST_RESORT, "{name}");
        let stored = bob
            .store
            .get_kyber_pre_key(LAST_RESORT.into())
            .await
            .expect("bob keeps his last-resort key");
        let public = client::unb64(&bundle["kyberPreKey"]["publicKey"], "publicKey").must("key");
        assert_eq!(&*stored.public_key().unwrap().serialize(), &public[..]);
        assert_eq!(bob.prekey_counts().await.must("counts"), (0, 0));
        round_trip(&mut peer, &mut bob, &format!("hello from {name}")).await;
    }

    // bob tops up; the next newcomer gets fresh one-time keys again.
    bob.upload_pre_keys(10..=11).await.must("upload prekeys");
    bob.upload_kyber_pre_keys(20..=21)
        .await
        .must("upload Kyber prekeys");
    assert_eq!(bob.prekey_counts().await.must("counts"), (2, 2));
    let mut grace = user(&api, "grace", 1, 1, None).await;
    let bundle = grace.start_session("bob").await.must("session");
    assert_eq!(bundle["preKey"]["keyId"], 10);
    assert_eq!(bundle["kyberPreKey"]["keyId"], 20);
    assert_eq!(bob.prekey_counts().await.must("counts"), (1, 1));
    round_trip(&mut grace, &mut bob, "hello from grace").await;

    drop(server);
}
