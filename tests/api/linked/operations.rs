//! Operator commands on multi-device accounts: `users list` names every device and sums their
//! queues, `stats` counts linked devices as devices, and a backup restores every device with its
//! keys and queue, and messages whose content is opaque.

use super::*;
use crate::helpers::*;
use crate::messages::queue;
use reqwest::StatusCode;
use serde_json::Value;

/// alice with three devices (regIds 11, 12, 13; one-time keys 3+2, 1+0, 0+4) and bob; bob's
/// send to every device of alice (each content the JSON envelope an old send would carry, so
/// that only the devices are new to a backup) and the old send to her primary are queued.
async fn alice_with_traffic(s: &TestServer) -> ([TestUser; 3], TestUser) {
    let alice = s.user_with_device("alice", 11, 3, 2).await;
    let (_, second) = s.link_device(&alice, 12, 1, 0).await;
    let (_, third) = s.link_device(&alice, 13, 0, 4).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let messages = [(1, 11), (2, 12), (3, 13)]
        .map(|(id, reg_id)| to(id, reg_id, &message_text(reg_id, "v2")))
        .into();
    sent_v2(s, &bob, "alice", messages).await;
    crate::messages::send(s, &bob, &alice, "old").await;
    ([alice, second, third], bob)
}

/// A backup of `s` (by `Storage::backup`) restored by the binary into a new data dir, and a
/// server on it.
async fn backed_up_and_restored(s: &TestServer) -> TestServer {
    let mut backup = Vec::new();
    s.app.storage.backup(&mut backup).await.expect("backup");
    let file = s.dir.path().join("backup.jsonl");
    std::fs::write(&file, backup).expect("write the backup");
    let restored = fresh_data_dir().await;
    let file = file.display().to_string();
    let run = operator(restored.path(), &["restore", &file], None).await;
    assert!(run.success(), "restore: {}", run.stderr);
    TestServer::start_in(restored).await
}

/// The `users list` row of `username`: its fields after the username (email, device, queued).
fn row<'a>(stdout: &'a str, username: &str) -> Vec<&'a str> {
    let line = stdout
        .lines()
        .find(|l| l.split('\t').nth(1) == Some(username));
    let line = line.unwrap_or_else(|| panic!("no row of {username} in {stdout}"));
    line.split('\t').skip(2).collect()
}

/// The value of `key` in the output of `stats`.
fn stat(stdout: &str, key: &str) -> u64 {
    let value = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}\t")));
    let value = value.unwrap_or_else(|| panic!("no {key} in {stdout}"));
    value.trim().parse().expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_list_and_stats_count_every_device_of_an_account() {
    let s = TestServer::start().await;
    let ([alice, ..], _bob) = alice_with_traffic(&s).await;
    let list = operator_ok(s.dir.path(), &["users", "list"], None).await;
    assert_eq!(
        row(&list.stdout, "alice"),
        ["", "alice.1,alice.2,alice.3", "4"]
    );
    assert_eq!(row(&list.stdout, "bob"), ["", "bob.1", "0"]);
    let stats = operator_ok(s.dir.path(), &["stats"], None).await.stdout;
    let got = ["devices", "queued_messages", "prekeys", "kyber_prekeys"].map(|k| stat(&stats, k));
    assert_eq!(
        got,
        [4, 4, 4, 6],
        "devices, messages, EC and Kyber keys: {stats}"
    );
    s.client_of(&alice)
        .unlink_device(3)
        .await
        .expect("unlink 3");
    let stats = operator_ok(s.dir.path(), &["stats"], None).await.stdout;
    let got = ["devices", "queued_messages", "prekeys", "kyber_prekeys"].map(|k| stat(&stats, k));
    assert_eq!(got, [3, 3, 4, 2], "after unlinking device 3: {stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_restores_every_device_with_its_keys_and_its_queue() {
    let s = TestServer::start().await;
    let (devices, _bob) = alice_with_traffic(&s).await;
    let listed_before = listed(&s, &devices[0]).await;
    let mut queues_before = Vec::new();
    for d in &devices {
        queues_before.push(queue(&s, d).await);
    }
    let r = backed_up_and_restored(&s).await;
    let token = r.login("alice", PASSWORD).await;
    let alice = TestUser {
        token,
        ..devices[0].device(11)
    };
    assert_eq!(
        listed(&r, &alice).await,
        listed_before,
        "the devices and their counts"
    );
    for (d, before) in devices.iter().zip(queues_before) {
        let d = alice.device(d.reg_id);
        assert_eq!(
            queue(&r, &d).await,
            before,
            "the queue of regId {}",
            d.reg_id
        );
    }
    // The restored devices work: device 2 pops its own key, and links go on from there.
    let (status, b) = r.get("/v2/prekeybundle/alice/13", &alice.token).await;
    assert_eq!(status, StatusCode::OK, "{b}");
    let second = b["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["deviceId"] == 2));
    assert_eq!(
        second.map(|d| d["preKey"]["keyId"].clone()),
        Some(Value::from(1))
    );
    assert_eq!(r.link_device(&alice, 14, 0, 0).await.0, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_restores_messages_whose_content_is_opaque() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    // A v2 content is opaque to the server: not JSON, or JSON without a registrationId.
    for content in ["not json", "{\"type\": 3}"] {
        sent_v2(&s, &bob, "alice", vec![to(1, 11, content)]).await;
    }
    let before = queue(&s, &alice).await;
    let r = backed_up_and_restored(&s).await;
    let token = r.login("alice", PASSWORD).await;
    let alice = TestUser {
        token,
        ..alice.device(11)
    };
    assert_eq!(queue(&r, &alice).await, before);
}
