//! Several instances as one server: three processes of the built binary on one PostgreSQL
//! database. Runs when the suite runs on PostgreSQL (`SIGNAL_SERVER_TEST_DATABASE_URL`); on sled
//! each test says it was skipped.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::helpers::{
    database_for, ec_prekeys, instances, message_text, on_postgres, read_backlog, share_database,
    ws_connect, Binary, BinaryApi, TestUser, Ws, DATABASE_ENV,
};

/// Longer than any signal takes, far shorter than the 30 s re-read that would hide a lost one.
const LIVE: Duration = Duration::from_secs(10);

async fn send(api: &BinaryApi, from: &TestUser, to: &str, body: &str) -> (StatusCode, Value) {
    let message = json!({"recipient": to, "message": message_text(4242, body)});
    api.post(&format!("/messages/{}", from.reg_id), &from.token, message)
        .await
}

/// The next message frame's id, within `LIVE`; none when the socket closed first.
async fn next_message(ws: &mut Ws) -> Option<u64> {
    loop {
        let frame = tokio::time::timeout(LIVE, ws.next())
            .await
            .expect("no frame in time");
        match frame {
            Some(Ok(Frame::Text(text))) => {
                let v: Value = serde_json::from_str(&text).expect("JSON frame");
                if v["type"] == "message" {
                    return v["message"]["id"].as_u64();
                }
            }
            Some(Ok(Frame::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// Waits (bounded) until `done`.
async fn wait_until(done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reached in time"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether the socket is closed by the server within `LIVE`.
async fn closed(ws: &mut Ws) -> bool {
    let ended = tokio::time::timeout(LIVE, async {
        loop {
            match ws.next().await {
                Some(Ok(Frame::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    });
    ended.await.is_ok()
}

#[tokio::test]
async fn a_token_from_one_instance_works_on_the_others() {
    let Some(c) = instances(3, &[]).await else {
        return;
    };
    c.nodes[0].register("alice").await;
    let token = c.nodes[1].login("alice").await;
    for node in &c.nodes {
        let (status, me) = node.get("/auth/users/me", &token).await;
        assert_eq!(status, StatusCode::OK, "{me}");
        assert_eq!(me["username"], "alice");
    }
}

#[tokio::test]
async fn each_prekey_is_handed_out_once_across_instances_even_when_one_is_killed() {
    let Some(mut c) = instances(3, &[]).await else {
        return;
    };
    let bob = c.nodes[0].user_with_device("bob", 4242, 100, 0).await;
    let alice = c.nodes[1].user_with_device("alice", 1717, 0, 0).await;
    let token = alice.token.clone();
    // 32 clients spread over the three instances, 400 bundles in all; the third instance is
    // killed once 100 have been answered, and its clients move to the first.
    let apis: Vec<BinaryApi> = c.nodes.iter().map(|n| n.api()).collect();
    let answered = Arc::new(AtomicUsize::new(0));
    let fetch = |api: BinaryApi,
                 fallback: BinaryApi,
                 token: String,
                 n,
                 answered: Arc<AtomicUsize>| async move {
        let mut keys = Vec::new();
        for _ in 0..n {
            let path = "/prekeybundle/bob/1717";
            let answer = match api.try_call("GET", path, Some(&token), None).await {
                Ok(answer) => answer,
                Err(_) => fallback.call("GET", path, Some(&token), None).await,
            };
            assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
            answered.fetch_add(1, Ordering::Relaxed);
            if let Some(id) = answer.1["preKey"]["keyId"].as_u64() {
                keys.push(id);
            }
        }
        keys
    };
    let mut tasks = Vec::new();
    for client in 0..32 {
        let (api, n) = (apis[client % 3].clone(), if client < 16 { 13 } else { 12 });
        let answered = answered.clone();
        tasks.push(tokio::spawn(fetch(
            api,
            apis[0].clone(),
            token.clone(),
            n,
            answered,
        )));
    }
    wait_until(|| answered.load(Ordering::Relaxed) >= 100).await;
    c.nodes[2].sigkill();
    let mut handed = Vec::new();
    for task in tasks {
        handed.extend(task.await.expect("client"));
    }
    let unique: HashSet<u64> = handed.iter().copied().collect();
    assert_eq!(unique.len(), handed.len(), "a key handed out twice");
    // What no answer carried (a request cut by the kill) may be gone, never handed out twice;
    // every key is accounted for: handed out, or still in stock.
    let (_, stock) = c.nodes[0].get("/prekeys/4242", &bob.token).await;
    let left = stock["preKeyCount"].as_u64().expect("count");
    assert!(
        handed.len() as u64 + left <= 100,
        "{} + {left}",
        handed.len()
    );
    assert!(
        handed.len() >= 100 - left as usize - 12,
        "too many keys lost"
    );
}

#[tokio::test]
async fn a_message_sent_through_one_instance_arrives_live_on_another_once() {
    let Some(c) = instances(3, &[]).await else {
        return;
    };
    let bob = c.nodes[0].user_with_device("bob", 4242, 0, 0).await;
    let alice = c.nodes[1].user_with_device("alice", 1717, 0, 0).await;
    let mut ws = ws_connect(&c.nodes[2].ws_url("/messages/4242/ws"), &bob.token).await;
    assert!(read_backlog(&mut ws).await.is_empty());
    for (i, node) in c.nodes.iter().enumerate() {
        let (status, sent) = send(node, &alice, "bob", &format!("hi {i}")).await;
        assert_eq!(status, StatusCode::CREATED, "{sent}");
        let id = sent["id"].as_u64().expect("id");
        assert_eq!(next_message(&mut ws).await, Some(id), "via instance {i}");
    }
    // Once: nothing more comes (a second copy would arrive at once with the first).
    let more = tokio::time::timeout(Duration::from_secs(2), ws.next()).await;
    assert!(
        !matches!(more, Ok(Some(Ok(Frame::Text(_))))),
        "a copy: {more:?}"
    );
}

#[tokio::test]
async fn a_newer_socket_on_one_instance_closes_the_older_on_another() {
    let Some(c) = instances(2, &[]).await else {
        return;
    };
    let bob = c.nodes[0].user_with_device("bob", 4242, 0, 0).await;
    let alice = c.nodes[0].user_with_device("alice", 1717, 0, 0).await;
    let mut older = ws_connect(&c.nodes[0].ws_url("/messages/4242/ws"), &bob.token).await;
    read_backlog(&mut older).await;
    let mut newer = ws_connect(&c.nodes[1].ws_url("/messages/4242/ws"), &bob.token).await;
    read_backlog(&mut newer).await;
    assert!(closed(&mut older).await, "the older socket stayed open");
    let (_, sent) = send(&c.nodes[0], &alice, "bob", "to the newer one").await;
    assert_eq!(next_message(&mut newer).await, sent["id"].as_u64());
}

#[tokio::test]
async fn deleting_a_device_on_one_instance_closes_its_socket_on_another() {
    let Some(c) = instances(2, &[]).await else {
        return;
    };
    let bob = c.nodes[0].user_with_device("bob", 4242, 0, 0).await;
    let mut ws = ws_connect(&c.nodes[0].ws_url("/messages/4242/ws"), &bob.token).await;
    read_backlog(&mut ws).await;
    let (status, body) = c.nodes[1]
        .call("DELETE", "/device", Some(&bob.token), None)
        .await;
    assert!(status.is_success(), "{status} {body}");
    assert!(closed(&mut ws).await, "the socket stayed open");
}

#[tokio::test]
async fn the_queue_cap_is_exact_under_sends_on_every_instance() {
    let Some(c) = instances(3, &["--max-queued-messages", "50"]).await else {
        return;
    };
    c.nodes[0].user_with_device("bob", 4242, 0, 0).await;
    let alice = c.nodes[1].user_with_device("alice", 1717, 0, 0).await;
    let mut tasks = Vec::new();
    for i in 0..90 {
        let api = c.nodes[i % 3].api();
        let alice = TestUser {
            identity: signal_server::crypto::KeyPair::generate(),
            username: alice.username.clone(),
            token: alice.token.clone(),
            ..alice
        };
        tasks.push(tokio::spawn(async move {
            send(&api, &alice, "bob", &format!("m{i}")).await.0
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        match task.await.expect("send") {
            StatusCode::CREATED => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(accepted, 50, "the cap is --max-queued-messages 50");
}

#[tokio::test]
async fn the_prekey_cap_is_exact_under_uploads_on_every_instance() {
    let Some(c) = instances(3, &["--max-prekeys", "50"]).await else {
        return;
    };
    let bob = c.nodes[0].user_with_device("bob", 4242, 0, 0).await;
    // 30 uploads of 5 new keys each (distinct ids), spread over the instances: 10 fit.
    let mut tasks = Vec::new();
    for i in 0..30u32 {
        let (api, token) = (c.nodes[i as usize % 3].api(), bob.token.clone());
        let keys = ec_prekeys(i * 5 + 1..=i * 5 + 5);
        tasks.push(tokio::spawn(async move {
            let body = json!({ "preKeys": keys });
            api.post("/prekeys/4242", &token, body).await
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        match task.await.expect("upload") {
            (StatusCode::OK, _) => accepted += 1,
            (StatusCode::BAD_REQUEST, body) => assert_eq!(body["code"], "reached_max_prekeys"),
            (status, body) => panic!("unexpected {status} {body}"),
        }
    }
    assert_eq!(accepted, 10, "the cap is --max-prekeys 50, uploads of 5");
    let (_, stock) = c.nodes[2].get("/prekeys/4242", &bob.token).await;
    assert_eq!(stock["preKeyCount"], 50);
}

#[tokio::test]
async fn killing_an_instance_mid_send_loses_no_acknowledged_message() {
    let Some(mut c) = instances(2, &[]).await else {
        return;
    };
    let bob = c.nodes[0].user_with_device("bob", 4242, 0, 0).await;
    let alice = c.nodes[0].user_with_device("alice", 1717, 0, 0).await;
    let doomed = c.nodes[1].api();
    let sender = TestUser {
        identity: signal_server::crypto::KeyPair::generate(),
        username: alice.username.clone(),
        token: alice.token.clone(),
        ..alice
    };
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    let sending = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        for i in 0..100_000 {
            let message =
                json!({"recipient": "bob", "message": message_text(4242, &format!("m{i}"))});
            match doomed
                .try_call(
                    "POST",
                    "/messages/1717",
                    Some(&sender.token),
                    Some(&message),
                )
                .await
            {
                Ok((StatusCode::CREATED, sent)) => {
                    acknowledged.push(sent["id"].as_u64().expect("id"));
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                Ok((status, body)) => panic!("{status} {body}"),
                Err(_) => break,
            }
        }
        acknowledged
    });
    wait_until(|| count.load(Ordering::Relaxed) >= 50).await;
    c.nodes[1].sigkill();
    let acknowledged = sending.await.expect("sender");
    assert!(
        acknowledged.len() < 100_000,
        "the kill came after the last send"
    );
    let (_, queue) = c.nodes[0]
        .get("/messages/4242?limit=1000", &bob.token)
        .await;
    let stored: HashSet<u64> = crate::helpers::message_ids(&queue).into_iter().collect();
    for id in &acknowledged {
        assert!(stored.contains(id), "acknowledged message {id} is missing");
    }
}

#[tokio::test]
async fn instances_ride_out_a_database_outage_and_deliver_live_after_it() {
    use crate::outage::{through, Relay};
    if !on_postgres() {
        eprintln!("skipped: several instances need PostgreSQL ({DATABASE_ENV})");
        return;
    }
    // Three instances reach the database through a relay that the test cuts and restores.
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let direct = database_for(dirs[0].path()).await.expect("database URL");
    let (target, _) = through(&direct, "127.0.0.1:1".parse().expect("addr"));
    let relay = Relay::to(target).await;
    let (_, url) = through(&direct, relay.addr);
    let mut nodes = Vec::new();
    for dir in &dirs {
        share_database(dir.path(), &url);
        nodes.push(Binary::start(dir.path(), &[]).await);
    }
    let bob = nodes[0].user_with_device("bob", 4242, 0, 0).await;
    let alice = nodes[1].user_with_device("alice", 1717, 0, 0).await;

    relay.cut();
    for node in &nodes {
        // Bob may be known to an instance (cached); his devices need the database.
        let (status, body) = node.get("/v2/devices", &bob.token).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["code"], "unavailable");
    }
    relay.restore();
    for node in &nodes {
        wait_for_health(node).await;
    }
    // The listeners are back too: a message sent through one arrives live on another.
    let mut ws = ws_connect(&nodes[2].ws_url("/messages/4242/ws"), &bob.token).await;
    assert!(read_backlog(&mut ws).await.is_empty());
    let (status, sent) = send(&nodes[0], &alice, "bob", "after the outage").await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    assert_eq!(next_message(&mut ws).await, sent["id"].as_u64());
}

/// Waits (bounded) until the instance answers `/health` with 200.
async fn wait_for_health(node: &BinaryApi) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((StatusCode::OK, _)) = node.try_call("GET", "/health", None, None).await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A socket's re-read of its queue (here forced by cutting the listening connection, after
/// which every session re-reads) reads ids, not the queue: an idle socket over 9 MB of queued
/// messages used to pull all of them from the database at every re-read. Counted by the
/// database: the blocks of the messages' out-of-line contents (TOAST) it read.
#[tokio::test]
async fn a_resync_reads_the_queue_s_ids_not_its_messages() {
    let Some(c) = instances(1, &[]).await else {
        return;
    };
    let node = &c.nodes[0];
    let alice = node.user_with_device("alice", 11, 0, 0).await;
    let bob = node.user_with_device("bob", 4242, 0, 0).await;
    for _ in 0..150 {
        // Random, so that it is stored out of line, not compressed into the row.
        let bytes: Vec<u8> = (0..45_000).map(|_| rand::random::<u8>()).collect();
        let big = signal_server::crypto::b64::encode(&bytes);
        let (status, body) = send(node, &alice, "bob", &big).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let mut ws = ws_connect(&node.ws_url("/messages/4242/ws"), &bob.token).await;
    assert_eq!(read_backlog(&mut ws).await.len(), 150);
    // A session's statistics reach the others when it ends (or up to 10 s later): every cut
    // of the instance's connections counts what they did so far, and makes it re-read.
    let settled = || async {
        assert!(c.cut_connections().await >= 1, "the instance is connected");
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.content_blocks_read().await
    };
    let before = settled().await;
    assert!(before > 0, "the backlog read the contents");
    for round in 0..3 {
        if round > 0 {
            assert!(c.cut_connections().await >= 1, "the instance is connected");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // Until it listens again (a second after the cut) and has re-read.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while c.listeners().await == 0 {
            assert!(tokio::time::Instant::now() < deadline, "listening again");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let read = settled().await - before;
    assert!(
        read < before / 10,
        "three re-reads read {read} blocks of contents; the backlog, {before}"
    );
    // Nothing was sent twice meanwhile.
    let next = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(
        !matches!(next, Ok(Some(Ok(Frame::Text(_))))),
        "a message again: {next:?}"
    );
}
