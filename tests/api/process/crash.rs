//! Durability across `kill -9` of the built binary: nothing acknowledged is lost, no one-time
//! prekey is handed out twice, and no message id is reused.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::helpers::{message_text, Binary, BINARY_BOUND};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::Notify;

/// What a bundle handed out: the one-time EC prekey id and the Kyber key id, if any.
#[derive(Debug, Clone, Copy)]
struct Pop {
    ec: Option<u64>,
    kyber: Option<u64>,
}

fn pop_of(bundle: &Value) -> Pop {
    Pop {
        ec: bundle["preKey"]["keyId"].as_u64(),
        kyber: bundle["kyberPreKey"]["keyId"].as_u64(),
    }
}

const LAST_RESORT: u64 = 999_999;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_server_hands_out_no_prekey_twice() {
    const EC: u64 = 100;
    const KYBER: u64 = 20;
    const TASKS: usize = 8;
    /// Kill once this many bundles were answered: before the 20 Kyber keys run out, so both
    /// kinds of key cross the crash.
    const KILL_AFTER: usize = 12;

    let dir = tempfile::tempdir().unwrap();
    let mut server = Binary::start(dir.path(), &[]).await;
    let alice = server
        .user_with_device("alice", 1111, EC as u32, KYBER as u32)
        .await;
    let bob = server.user_with_device("bob", 2222, 0, 0).await;
    let path = "/prekeybundle/alice/2222";

    let before: Arc<Mutex<Vec<Pop>>> = Arc::default();
    let unanswered = Arc::new(AtomicUsize::new(0));
    let unexpected: Arc<Mutex<Vec<String>>> = Arc::default();
    let enough = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (api, token) = (server.api(), bob.token.clone());
        let (before, unanswered, unexpected, enough) = (
            before.clone(),
            unanswered.clone(),
            unexpected.clone(),
            enough.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                match api.try_call("GET", path, Some(&token), None).await {
                    Ok((StatusCode::OK, bundle)) => {
                        let pop = pop_of(&bundle);
                        let mut seen = before.lock().unwrap();
                        seen.push(pop);
                        if seen.len() == KILL_AFTER {
                            enough.notify_one();
                        }
                        if pop.ec.is_none() {
                            break;
                        }
                    }
                    Ok((status, body)) => {
                        unexpected.lock().unwrap().push(format!("{status} {body}"));
                        break;
                    }
                    // The server is gone; whatever this request did is unknown.
                    Err(_) => {
                        unanswered.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
            }
        }));
    }
    tokio::time::timeout(BINARY_BOUND, enough.notified())
        .await
        .expect("bundles were not answered");
    server.sigkill();
    for t in tasks {
        t.await.expect("pop task");
    }
    drop(server);
    let unexpected = unexpected.lock().unwrap().clone();
    assert!(
        unexpected.is_empty(),
        "bundle answers other than 200: {unexpected:?}"
    );
    let before = before.lock().unwrap().clone();
    let unanswered = unanswered.load(Ordering::SeqCst);
    assert!(before.len() >= KILL_AFTER);

    let server = Binary::start(dir.path(), &[]).await;
    let (status, stock) = server.get("/prekeys/1111", &alice.token).await;
    assert_eq!(status, StatusCode::OK, "{stock}");
    let ec_left = stock["preKeyCount"].as_u64().expect("preKeyCount");
    let kyber_left = stock["kyberPreKeyCount"]
        .as_u64()
        .expect("kyberPreKeyCount");

    eprintln!(
        "prekeys: {} bundles before the crash, {unanswered} unanswered; \
         after restart {ec_left} EC and {kyber_left} Kyber left",
        before.len()
    );

    let mut after = Vec::new();
    for _ in 0..=EC + 1 {
        let (status, bundle) = server.get(path, &bob.token).await;
        assert_eq!(status, StatusCode::OK, "bundle after restart: {bundle}");
        let pop = pop_of(&bundle);
        assert!(
            pop.kyber.is_some(),
            "no Kyber key although the last-resort key is stored: {bundle}"
        );
        if pop.ec.is_none() {
            break;
        }
        after.push(pop);
    }

    for (kind, total, pick) in [
        ("EC", EC, (|p: &Pop| p.ec) as fn(&Pop) -> Option<u64>),
        ("Kyber", KYBER, |p: &Pop| {
            p.kyber.filter(|&id| id != LAST_RESORT)
        }),
    ] {
        let ids_before: Vec<u64> = before.iter().filter_map(pick).collect();
        let ids_after: Vec<u64> = after.iter().filter_map(pick).collect();
        let set_before: BTreeSet<u64> = ids_before.iter().copied().collect();
        let set_after: BTreeSet<u64> = ids_after.iter().copied().collect();
        assert_eq!(
            set_before.len(),
            ids_before.len(),
            "{kind} prekey handed out twice before the crash: {ids_before:?}"
        );
        assert_eq!(
            set_after.len(),
            ids_after.len(),
            "{kind} prekey handed out twice after the crash: {ids_after:?}"
        );
        let twice: Vec<_> = set_before.intersection(&set_after).collect();
        assert!(
            twice.is_empty(),
            "{kind} prekeys handed out both before and after the crash: {twice:?}"
        );
        assert!(
            set_before
                .union(&set_after)
                .all(|id| (1..=total).contains(id)),
            "{kind} ids outside 1..={total}: {set_before:?} {set_after:?}"
        );
        assert!(
            ids_after.windows(2).all(|w| w[0] < w[1]),
            "{kind} prekeys after restart not lowest keyId first: {ids_after:?}"
        );
        let left = if kind == "EC" { ec_left } else { kyber_left };
        assert_eq!(
            ids_after.len() as u64,
            left,
            "{kind}: GET /prekeys reported {left} left after restart, bundles handed out {ids_after:?}"
        );
        // Every key is accounted for: seen before, handed out after, or taken by a request whose
        // answer the crash swallowed (at most one key of each kind per unanswered request).
        let missing: Vec<u64> = (1..=total)
            .filter(|id| !set_before.contains(id) && !set_after.contains(id))
            .collect();
        assert!(
            missing.len() <= unanswered,
            "{kind} prekeys lost in the crash: {missing:?} ({unanswered} requests unanswered)"
        );
    }

    // Empty now; the last-resort key stays.
    let (status, stock) = server.get("/prekeys/1111", &alice.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stock["preKeyCount"], 0, "{stock}");
    assert_eq!(stock["kyberPreKeyCount"], 0, "{stock}");
    let (status, bundle) = server.get(path, &bob.token).await;
    assert_eq!(status, StatusCode::OK);
    assert!(bundle.get("preKey").is_none(), "{bundle}");
    assert_eq!(bundle["kyberPreKey"]["keyId"], LAST_RESORT, "{bundle}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_server_loses_no_acknowledged_message() {
    const SENDERS: usize = 2;
    const TASKS: usize = 16;
    const KILL_AFTER: usize = 400;
    const RECIPIENT_REG: u32 = 3333;

    let dir = tempfile::tempdir().unwrap();
    let mut server = Binary::start(dir.path(), &[]).await;
    let carol = server.user_with_device("carol", RECIPIENT_REG, 0, 0).await;
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        senders.push(
            server
                .user_with_device(&format!("sender{i}"), 5000 + i as u32, 0, 0)
                .await,
        );
    }

    // id → the 201 body.
    let acked: Arc<Mutex<HashMap<u64, Value>>> = Arc::default();
    let unexpected: Arc<Mutex<Vec<String>>> = Arc::default();
    let enough = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let sender = &senders[t % SENDERS];
        let path = format!("/messages/{}", sender.reg_id);
        let (api, token) = (server.api(), sender.token.clone());
        let (acked, unexpected, enough) = (acked.clone(), unexpected.clone(), enough.clone());
        tasks.push(tokio::spawn(async move {
            for seq in 0u64.. {
                let text = message_text(RECIPIENT_REG, &format!("task {t} message {seq} ünï"));
                let body = json!({"recipient": "carol", "message": text});
                match api.try_call("POST", &path, Some(&token), Some(&body)).await {
                    Ok((StatusCode::CREATED, created)) => {
                        if created["content"] != text.as_str() {
                            unexpected
                                .lock()
                                .unwrap()
                                .push(format!("201 content differs: {created}"));
                            break;
                        }
                        let id = created["id"].as_u64().expect("id");
                        let mut acked = acked.lock().unwrap();
                        if let Some(old) = acked.insert(id, created) {
                            unexpected
                                .lock()
                                .unwrap()
                                .push(format!("id {id} acknowledged twice: {old}"));
                        }
                        if acked.len() == KILL_AFTER {
                            enough.notify_one();
                        }
                    }
                    Ok((status, body)) => {
                        unexpected.lock().unwrap().push(format!("{status} {body}"));
                        break;
                    }
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::timeout(BINARY_BOUND * 4, enough.notified())
        .await
        .expect("messages were not acknowledged");
    server.sigkill();
    for t in tasks {
        t.await.expect("send task");
    }
    drop(server);
    let unexpected = unexpected.lock().unwrap().clone();
    assert!(unexpected.is_empty(), "unexpected answers: {unexpected:?}");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= KILL_AFTER);

    let server = Binary::start(dir.path(), &[]).await;
    let path = format!("/messages/{RECIPIENT_REG}");
    let mut queued: HashMap<u64, Value> = HashMap::new();
    for _ in 0..100 {
        let (status, page) = server.get(&format!("{path}?limit=250"), &carol.token).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let page = page.as_array().expect("array").clone();
        if page.is_empty() {
            break;
        }
        let ids: Vec<u64> = page.iter().map(|m| m["id"].as_u64().expect("id")).collect();
        for m in page {
            let id = m["id"].as_u64().unwrap();
            assert!(
                queued.insert(id, m).is_none(),
                "message {id} listed twice (after it was deleted)"
            );
        }
        let (status, outcome) = server
            .call("DELETE", &path, Some(&carol.token), Some(&json!(ids)))
            .await;
        assert_eq!(status, StatusCode::OK, "{outcome}");
        assert!(
            outcome
                .as_array()
                .is_some_and(|o| o.len() == ids.len() && o.iter().all(|s| s == "success")),
            "{outcome}"
        );
    }

    eprintln!(
        "messages: {} acknowledged before the crash, {} queued after restart",
        acked.len(),
        queued.len()
    );
    let mut lost = Vec::new();
    for (id, created) in &acked {
        match queued.get(id) {
            None => lost.push(*id),
            Some(stored) => assert_eq!(
                stored, created,
                "message {id} after the crash differs from its 201"
            ),
        }
    }
    lost.sort();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost in the crash: {lost:?}",
        lost.len(),
        acked.len()
    );

    // Message ids are never reused, across crashes too.
    let sender = &senders[0];
    let (status, created) = server
        .post(
            &format!("/messages/{}", sender.reg_id),
            &sender.token,
            json!({"recipient": "carol", "message": message_text(RECIPIENT_REG, "after")}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_u64().expect("id");
    assert!(
        !acked.contains_key(&id) && !queued.contains_key(&id),
        "message id {id} reused after the crash"
    );
}
