//! Multi-device writes across `kill -9` of the built binary: after a restart each send to every
//! device is in every device's queue or in none, every acknowledged one is there, and so is
//! every acknowledged link and unlink; no one-time key of any device is handed out twice.

use std::collections::BTreeSet;

use super::to;
use crate::helpers::{fresh_data_dir, hammer_then_kill, link_device, Binary};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_server_keeps_each_v2_send_in_every_queue_or_in_none() {
    const TASKS: usize = 6;
    /// Kill once this many sends were acknowledged, with the others still under way.
    const KILL_AFTER: usize = 40;
    let dir = fresh_data_dir().await;
    let mut server = Binary::start(dir.path(), &[]).await;
    let alice = server.user_with_device("alice", 11, 0, 0).await;
    for reg_id in [12, 13] {
        link_device(&server.client(), &alice, reg_id, 0, 0).await;
    }
    let bob = server.user_with_device("bob", 22, 0, 0).await;

    let content = |t: usize, i: u64| format!("t{t}-{i}");
    let acked = hammer_then_kill(
        &mut server,
        &bob.token,
        (TASKS, KILL_AFTER),
        StatusCode::CREATED,
        move |t, i| {
            let messages: Vec<Value> = [(1, 11), (2, 12), (3, 13)]
                .map(|(device, reg_id)| to(device, reg_id, &content(t, i)))
                .into();
            let body = json!({"recipient": "alice", "messages": messages});
            ("POST", "/v2/messages/22".into(), Some(body))
        },
    )
    .await;
    let acked: BTreeSet<String> = acked.iter().map(|(t, i, _)| content(*t, *i)).collect();

    let server = Binary::start(dir.path(), &[]).await;
    let mut queues = Vec::new();
    let mut ids = BTreeSet::new();
    for reg_id in [11, 12, 13] {
        let path = format!("/messages/{reg_id}?limit=1000");
        let (status, queue) = server.get(&path, &alice.token).await;
        assert_eq!(status, StatusCode::OK, "{queue}");
        let queue = queue.as_array().expect("a list").clone();
        let contents: BTreeSet<String> = queue
            .iter()
            .map(|m| m["content"].as_str().expect("content").to_string())
            .collect();
        assert_eq!(
            contents.len(),
            queue.len(),
            "regId {reg_id}: a send queued twice"
        );
        for m in &queue {
            assert!(
                ids.insert(m["id"].as_u64().expect("id")),
                "an id used twice: {m}"
            );
        }
        queues.push(contents);
    }
    assert!(acked.is_subset(&queues[0]), "an acknowledged send was lost");
    assert_eq!(queues[0], queues[1], "devices 1 and 2 hold other sends");
    assert_eq!(queues[0], queues[2], "devices 1 and 3 hold other sends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn links_and_unlinks_answered_before_a_kill_are_kept() {
    let dir = fresh_data_dir().await;
    let mut server = Binary::start(dir.path(), &[]).await;
    let alice = server.user_with_device("alice", 11, 0, 0).await;
    for (reg_id, keys) in [(12, 2), (13, 0), (14, 3)] {
        link_device(&server.client(), &alice, reg_id, keys, keys).await;
    }
    let unlinked = server
        .client()
        .with_token(&alice.token)
        .unlink_device(3)
        .await;
    unlinked.expect("unlink 3");
    // Killed right after the answers: what they acknowledged must be on disk.
    server.sigkill();

    let server = Binary::start(dir.path(), &[]).await;
    let devices = server.client().with_token(&alice.token).devices().await;
    let devices = devices.expect("the devices after the restart");
    let kept: Vec<(u32, u32, u32)> = devices
        .iter()
        .map(|d| (d.device_id, d.info.registration_id, d.info.pre_key_count))
        .collect();
    assert_eq!(kept, [(1, 11, 0), (2, 12, 2), (4, 14, 3)]);
}

/// The one-time keys a v2 bundle handed out: (deviceId, "ec" or "kyber", keyId).
fn handed_out(bundle: &Value) -> Vec<(u64, &'static str, u64)> {
    let mut keys = Vec::new();
    for d in bundle["devices"].as_array().expect("devices") {
        let device = d["deviceId"].as_u64().expect("deviceId");
        if let Some(id) = d["preKey"]["keyId"].as_u64() {
            keys.push((device, "ec", id));
        }
        // The last-resort Kyber key (999999 in the harness) is handed out again and again.
        if let Some(id) = d["kyberPreKey"]["keyId"]
            .as_u64()
            .filter(|id| *id != 999_999)
        {
            keys.push((device, "kyber", id));
        }
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_server_hands_out_no_key_of_any_device_twice() {
    const KEYS: u32 = 40;
    const TASKS: usize = 6;
    /// Kill once this many bundles were answered, long before the keys run out.
    const KILL_AFTER: usize = 12;
    let dir = fresh_data_dir().await;
    let mut server = Binary::start(dir.path(), &[]).await;
    let alice = server.user_with_device("alice", 11, KEYS, KEYS).await;
    link_device(&server.client(), &alice, 12, KEYS, KEYS).await;
    let bob = server.user_with_device("bob", 22, 0, 0).await;
    let path = "/v2/prekeybundle/alice/22";

    let before = hammer_then_kill(
        &mut server,
        &bob.token,
        (TASKS, KILL_AFTER),
        StatusCode::OK,
        |_, _| ("GET", path.to_string(), None),
    )
    .await;

    let server = Binary::start(dir.path(), &[]).await;
    let mut after = Vec::new();
    for _ in 0..=KEYS {
        let (status, bundle) = server.get(path, &bob.token).await;
        assert_eq!(status, StatusCode::OK, "{bundle}");
        after.extend(handed_out(&bundle));
    }
    let before: Vec<_> = before.iter().flat_map(|(_, _, b)| handed_out(b)).collect();
    let mut seen = BTreeSet::new();
    for key in before.iter().chain(&after) {
        assert!(
            seen.insert(*key),
            "{key:?} handed out twice (before the kill: {})",
            before.contains(key)
        );
    }
    assert!(
        before.len() >= KILL_AFTER * 4,
        "every answer before the kill had 4 keys"
    );
}
