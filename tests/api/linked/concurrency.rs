//! The multi-device rules under concurrent requests: each one-time key of each device handed out
//! once by racing v2 bundles, the device cap and unique registrationIds under racing links, and
//! all-or-nothing sends racing each other and an unlink.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::*;
use crate::helpers::*;
use crate::messages::queue;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::Barrier;

/// Runs `n` tasks of `task(i)` started together; their results, in order.
async fn race<T, F>(n: usize, task: impl Fn(usize) -> F) -> Vec<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(n));
    let mut handles = Vec::new();
    for i in 0..n {
        let (barrier, work) = (barrier.clone(), task(i));
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            work.await
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_v2_bundles_hand_out_each_key_of_each_device_once() {
    const KEYS: u32 = 30;
    const REQUESTERS: usize = 10;
    const FETCHES: usize = 5;
    let s = Arc::new(TestServer::start().await);
    let [alice, second] = alice_with_two(&s, KEYS, KEYS).await;
    let mut requesters = Vec::new();
    for i in 0..REQUESTERS {
        let name = format!("fan{i}");
        requesters.push(Arc::new(
            s.user_with_device(&name, 100 + i as u32, 0, 0).await,
        ));
    }
    let answers = race(REQUESTERS, |i| {
        let (s, r) = (s.clone(), requesters[i].clone());
        async move {
            let mut got = Vec::new();
            for _ in 0..FETCHES {
                let path = format!("/v2/prekeybundle/alice/{}", r.reg_id);
                let (status, b) = s.get(&path, &r.token).await;
                assert_eq!(status, StatusCode::OK, "{b}");
                got.extend(b["devices"].as_array().expect("devices").clone());
            }
            got
        }
    })
    .await;
    let entries: Vec<Value> = answers.into_iter().flatten().collect();
    assert_eq!(
        entries.len(),
        REQUESTERS * FETCHES * 2,
        "an entry per device per fetch"
    );
    for device in [1, 2] {
        let of_device = entries.iter().filter(|e| e["deviceId"] == device);
        let (mut pre, mut kyber) = (Vec::new(), Vec::new());
        for e in of_device {
            pre.extend(e.get("preKey").map(|k| k["keyId"].as_u64().expect("keyId")));
            let k = e["kyberPreKey"]["keyId"]
                .as_u64()
                .expect("a Kyber key, at least the last resort");
            kyber.extend((k != 999_999).then_some(k));
        }
        pre.sort();
        kyber.sort();
        let all: Vec<u64> = (1..=u64::from(KEYS)).collect();
        assert_eq!(pre, all, "device {device}: each EC key exactly once");
        assert_eq!(kyber, all, "device {device}: each Kyber key exactly once");
    }
    assert_eq!(counts(&s, &alice).await, (0, 0));
    assert_eq!(counts(&s, &second).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_links_stop_at_the_device_cap_with_distinct_lowest_ids() {
    let s = Arc::new(TestServer::start_with(&["--no-rate-limit", "--max-devices", "4"]).await);
    let alice = Arc::new(s.user_with_device("alice", 11, 0, 0).await);
    let outcomes = race(8, |i| {
        let (s, alice) = (s.clone(), alice.clone());
        async move {
            let body = alice.link_body(100 + i as u32, 1, 1);
            let linked = s.client_of(&alice).link_device(&body).await;
            (
                100 + i as u64,
                linked.map_err(|e| e.status_code().map(|(s, c)| (s, c.to_string()))),
            )
        }
    })
    .await;
    let mut won = Vec::new();
    for (reg_id, outcome) in outcomes {
        match outcome {
            Ok(linked) => won.push((u64::from(linked.device_id), reg_id)),
            Err(refusal) => assert_eq!(
                refusal,
                Some((403, "too_many_devices".into())),
                "regId {reg_id}"
            ),
        }
    }
    won.sort();
    let ids: Vec<u64> = won.iter().map(|w| w.0).collect();
    assert_eq!(ids, [2, 3, 4], "three links fit beside the primary");
    let list = listed(&s, &alice).await;
    let listed: Vec<(u64, u64)> = list
        .iter()
        .map(|d| {
            (
                d["deviceId"].as_u64().unwrap(),
                d["registrationId"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed[1..],
        won[..],
        "the list holds the links that were answered 201"
    );
    for (id, reg_id) in won {
        assert_eq!(
            counts(&s, &alice.device(reg_id as u32)).await,
            (1, 1),
            "device {id}'s keys"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_links_of_one_registration_id_link_it_once() {
    let s = Arc::new(TestServer::start().await);
    let alice = Arc::new(s.user_with_device("alice", 11, 0, 0).await);
    let outcomes = race(5, |_| {
        let (s, alice) = (s.clone(), alice.clone());
        async move {
            let body = serde_json::to_value(alice.link_body(50, 0, 0)).expect("JSON");
            s.post("/v2/devices", &alice.token, body).await
        }
    })
    .await;
    let mut created = 0;
    for answer in &outcomes {
        if answer.0 == StatusCode::CREATED {
            created += 1;
        } else {
            assert_invalid(answer, "registrationId", "a racing link of the same regId");
        }
    }
    assert_eq!(created, 1, "{outcomes:?}");
    assert_eq!(listed_ids(&s, &alice).await, [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_v2_sends_fill_every_device_queue_alike() {
    let s =
        Arc::new(TestServer::start_with(&["--no-rate-limit", "--max-queued-messages", "10"]).await);
    let [alice, second] = alice_with_two(&s, 0, 0).await;
    let bob = Arc::new(s.user_with_device("bob", 22, 0, 0).await);
    let outcomes = race(30, |i| {
        let (s, bob) = (s.clone(), bob.clone());
        async move {
            let content = format!("m{i}");
            let answer = send_v2(
                &s,
                &bob,
                "alice",
                vec![to(1, 11, &content), to(2, 12, &content)],
            )
            .await;
            (content, answer)
        }
    })
    .await;
    let mut accepted = BTreeSet::new();
    for (content, answer) in outcomes {
        match answer.0 {
            StatusCode::CREATED => assert!(accepted.insert(content)),
            _ => assert_error(
                &answer,
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                &content,
            ),
        }
    }
    assert_eq!(accepted.len(), 10, "the cap, exactly");
    for device in [&alice, &second] {
        let q = queue(&s, device).await;
        let got: BTreeSet<String> = contents(&q).into_iter().map(String::from).collect();
        assert_eq!(
            got, accepted,
            "regId {}: the accepted sends, all of them",
            device.reg_id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sends_racing_an_unlink_are_all_or_nothing() {
    let s = Arc::new(TestServer::start().await);
    let [alice, _second] = alice_with_two(&s, 0, 0).await;
    let bob = Arc::new(s.user_with_device("bob", 22, 0, 0).await);
    let alice = Arc::new(alice);
    let outcomes = race(21, |i| {
        let (s, bob, alice) = (s.clone(), bob.clone(), alice.clone());
        async move {
            if i == 10 {
                s.client_of(&alice).unlink_device(2).await.expect("unlink");
                return None;
            }
            let content = format!("m{i}");
            let answer = send_v2(
                &s,
                &bob,
                "alice",
                vec![to(1, 11, &content), to(2, 12, &content)],
            )
            .await;
            Some((content, answer))
        }
    })
    .await;
    let mut accepted = BTreeSet::new();
    for (content, answer) in outcomes.into_iter().flatten() {
        match answer.0 {
            StatusCode::CREATED => assert!(accepted.insert(content)),
            _ => {
                assert_error(
                    &answer,
                    StatusCode::CONFLICT,
                    "mismatched_devices",
                    &content,
                );
                assert_eq!(
                    answer.1["extraDevices"],
                    serde_json::json!([2]),
                    "{content}"
                );
            }
        }
    }
    // A refused send stored nothing on the primary either.
    let got: BTreeSet<String> = contents(&queue(&s, &alice).await)
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(got, accepted);
    assert_eq!(listed_ids(&s, &alice).await, [1]);
}
