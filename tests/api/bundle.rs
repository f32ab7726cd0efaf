//! `GET /prekeybundle/<username>/<regId>`: the bundle's shape, one-time keys handed out lowest
//! keyId first and each once (under concurrency too), its errors and its rate limit.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::Value;
use signal_server::crypto::b64;

fn object_keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn keys_of(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn bundle_matches_the_username_case_insensitively_and_percent_decoded() {
    let s = TestServer::start().await;
    let target = s.user_with_device("a.b+c@d", 261, 12, 0).await;
    let peer = s.user_with_device("bundlepeer", 262, 0, 0).await;
    for (i, name) in [
        "a.b+c@d",
        "a%2Eb%2Bc%40d",
        "a%2eb%2bc%40d",
        "A.B+C@D",
        "A%2EB%2BC%40D",
        "a.b%2Bc%40D",
    ]
    .iter()
    .enumerate()
    {
        for slash in SLASHES {
            let b = bundle_ok(&s, &peer, name, slash).await;
            assert_eq!(b["address"], "a.b+c@d.1", "{name}{slash}: {b}");
            assert_eq!(b["registrationId"], 261);
            assert!(b.get("preKey").is_some(), "{name}{slash} #{i}: {b}");
        }
    }
    assert_eq!(counts(&s, &target).await, (0, 0));
    // A different name is someone else (or no one).
    for name in ["a.b+c", "a.b%20c@d"] {
        let answer = bundle(&s, &peer, name, "").await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "no_recipient", name);
    }
}

#[tokio::test]
async fn bundle_has_the_documented_shape() {
    let s = TestServer::start().await;
    let target = s.user_with_device("Shaped", 271, 1, 1).await;
    let peer = s.user_with_device("shapedpeer", 272, 0, 0).await;
    let b = bundle_ok(&s, &peer, "shaped", "/").await;
    // Every field; `preKey` only while one-time EC keys are left.
    let always = [
        "address",
        "identityKey",
        "registrationId",
        "signedPreKey",
        "kyberPreKey",
    ];
    let mut all = keys_of(&always);
    all.insert("preKey".to_string());
    assert_eq!(object_keys(&b), all, "{b}");
    assert_eq!(b["address"], "Shaped.1");
    assert_eq!(b["identityKey"], b64::encode(&target.identity.public));
    assert_eq!(b["registrationId"], 271);
    assert_eq!(object_keys(&b["preKey"]), keys_of(&["keyId", "publicKey"]));
    assert_eq!(b["preKey"]["keyId"], 1);
    assert_eq!(b64d(&b["preKey"]["publicKey"]).len(), 33);
    let three = keys_of(&["keyId", "publicKey", "signature"]);
    assert_eq!(object_keys(&b["signedPreKey"]), three);
    assert_eq!(object_keys(&b["kyberPreKey"]), three);
    assert_eq!(b["kyberPreKey"]["keyId"], 1);
    // The handed-out keys are what the device signed: verify with the identity key.
    for k in [&b["signedPreKey"], &b["kyberPreKey"]] {
        let key = b64d(&k["publicKey"]);
        let sig = b64d(&k["signature"]);
        assert!(
            signal_server::crypto::verify_signature(&target.identity.public, &key, &sig),
            "{k}"
        );
    }
    assert_eq!(b64d(&b["kyberPreKey"]["publicKey"]).len(), 1569);
    assert_eq!(b64d(&b["kyberPreKey"]["publicKey"])[0], 0x08);
    // Next: no one-time keys left; the last-resort key instead.
    let b = bundle_ok(&s, &peer, "shaped", "").await;
    assert_eq!(object_keys(&b), keys_of(&always), "{b}");
    assert_eq!(b["kyberPreKey"]["keyId"], 999_999);
}

#[tokio::test]
async fn bundle_hands_out_the_lowest_key_id_first_and_each_one_time_key_once() {
    let s = TestServer::start().await;
    let target = user_for(&s, "orderly", 281).await;
    let peer = s.user_with_device("orderlypeer", 282, 0, 0).await;
    let mut body = target.device_body(1, 0, 0, true);
    // Out of order, and ids whose byte order differs from their numeric order.
    let ec_ids = [70_000u32, 5, 256, 2, 16_777_215, 0];
    let ky_ids = [300u32, 4, 65_536, 1];
    body["preKeys"] = ec_prekeys(ec_ids);
    body["kyberPreKeys"] = kyber_prekeys(&target.identity, ky_ids);
    let last_resort = body["lastResortKyberPreKey"].clone();
    let (status, res) = create(&s, &target, "/device/", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    // Later uploads join the same order.
    let (status, res) = s.post("/prekeys/281", &target.token, ec_prekeys([3])).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let (status, res) = upload_kyber(&s, &target, "/kyberprekeys/281", [2]).await;
    assert_eq!(status, StatusCode::OK, "{res}");

    let mut want_ec: Vec<u64> = ec_ids.iter().map(|&i| i as u64).chain([3]).collect();
    want_ec.sort();
    let mut want_ky: Vec<u64> = ky_ids.iter().map(|&i| i as u64).chain([2]).collect();
    want_ky.sort();
    let mut got_ec = Vec::new();
    let mut got_ky = Vec::new();
    for round in 0..10 {
        let b = bundle_ok(&s, &peer, "orderly", SLASHES[round % 2]).await;
        if let Some(id) = b["preKey"]["keyId"].as_u64() {
            got_ec.push(id);
        } else {
            assert!(b.get("preKey").is_none(), "{b}");
        }
        let k = &b["kyberPreKey"];
        if got_ky.len() < want_ky.len() {
            got_ky.push(k["keyId"].as_u64().unwrap());
        } else {
            // Out of one-time Kyber keys: the last-resort key, every time.
            assert_eq!(k, &last_resort, "round {round}");
        }
        let expected = (
            (want_ec.len() - got_ec.len()) as u64,
            (want_ky.len() - got_ky.len()) as u64,
        );
        assert_eq!(counts(&s, &target).await, expected, "round {round}");
    }
    assert_eq!(got_ec, want_ec, "EC keys not lowest-first or not once each");
    assert_eq!(
        got_ky, want_ky,
        "Kyber keys not lowest-first or not once each"
    );
    assert_eq!(
        device_info(&s, &target).await["hasLastResortKyberPreKey"],
        true
    );
}

#[tokio::test]
async fn bundle_omits_pre_key_when_none_left_and_kyber_pre_key_when_neither_exists() {
    let s = TestServer::start().await;
    let target = user_for(&s, "sparse", 291).await;
    let peer = s.user_with_device("sparsepeer", 292, 0, 0).await;
    let (status, res) = create(&s, &target, "/device/", &target.device_body(1, 1, 0, false)).await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    let b = bundle_ok(&s, &peer, "sparse", "").await;
    assert_eq!(b["preKey"]["keyId"], 1, "{b}");
    assert!(b.get("kyberPreKey").is_none(), "{b}");
    for slash in SLASHES {
        let b = bundle_ok(&s, &peer, "sparse", slash).await;
        assert!(b.get("preKey").is_none(), "{b}");
        assert!(b.get("kyberPreKey").is_none(), "{b}");
        assert_eq!(b["signedPreKey"]["keyId"], 1, "{b}");
        assert_eq!(b["registrationId"], 291);
    }
}

#[tokio::test]
async fn bundle_errors_are_no_device_device_changed_and_no_recipient() {
    let s = TestServer::start().await;
    let target = s.user_with_device("wanted", 301, 5, 5).await;
    let caller = s.user_with_device("seeker", 302, 0, 0).await;
    let deviceless_caller = user_for(&s, "seekerless", 303).await;
    let _deviceless_target = s.user("unready").await;
    let bad = StatusCode::BAD_REQUEST;
    let cases = [
        (
            &deviceless_caller,
            "wanted",
            bad,
            "no_device",
            "caller without device",
        ),
        (&caller, "nosuchuser", bad, "no_recipient", "unknown user"),
        (
            &caller,
            "unready",
            bad,
            "no_device",
            "recipient without device",
        ),
        (&caller, "UNREADY", bad, "no_device", "UNREADY"),
    ];
    for slash in SLASHES {
        for (requester, name, status, code, what) in cases {
            let answer = bundle(&s, requester, name, slash).await;
            assert_error(&answer, status, code, what);
            if name.eq_ignore_ascii_case("unready") {
                let message = &answer.1["message"];
                assert_eq!(message, "Recipient has not yet registered a device");
            }
        }
        let path = format!("/prekeybundle/wanted/301{slash}");
        let answer = s.get(&path, &caller.token).await;
        assert_error(
            &answer,
            StatusCode::FORBIDDEN,
            "device_changed",
            "wrong regId",
        );
    }
    assert_eq!(
        counts(&s, &target).await,
        (5, 5),
        "a refused bundle took keys"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_bundle_requests_hand_out_each_prekey_exactly_once() {
    const REQUESTERS: usize = 32;
    const TOTAL: usize = 400;
    let s = Arc::new(TestServer::start().await);
    let target = s.user_with_device("popular", 311, 100, 0).await;
    let mut requesters = Vec::new();
    for i in 0..REQUESTERS {
        requesters.push(Arc::new(
            s.user_with_device(&format!("fan{i}"), 1000 + i as u32, 0, 0)
                .await,
        ));
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(REQUESTERS));
    let mut tasks = Vec::new();
    for (i, r) in requesters.iter().enumerate() {
        let (s, r, barrier) = (s.clone(), r.clone(), barrier.clone());
        let n = TOTAL / REQUESTERS + usize::from(i < TOTAL % REQUESTERS);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut got = Vec::new();
            let mut empty = 0usize;
            for j in 0..n {
                let (status, b) = bundle(&s, &r, "popular", SLASHES[(i + j) % 2]).await;
                assert_eq!(status, StatusCode::OK, "{b}");
                assert_eq!(b["registrationId"], 311);
                match b.get("preKey") {
                    Some(k) => got.push(k["keyId"].as_u64().expect("keyId")),
                    None => empty += 1,
                }
            }
            (got, empty)
        }));
    }
    let mut all = Vec::new();
    let mut empty = 0;
    for t in tasks {
        let (got, e) = t.await.expect("requester task");
        all.extend(got);
        empty += e;
    }
    all.sort();
    assert_eq!(
        all,
        (1..=100).collect::<Vec<u64>>(),
        "each key exactly once"
    );
    assert_eq!(empty, TOTAL - 100, "answers without a preKey");
    assert_eq!(counts(&s, &target).await, (0, 0));
}

#[tokio::test]
async fn eleventh_bundle_fetch_by_one_requester_for_one_target_is_throttled_with_retry_after() {
    let s = TestServer::start_with(&[]).await;
    let target = s.user_with_device("limited", 331, 20, 0).await;
    let a = s.user_with_device("eager", 332, 0, 0).await;
    let b = s.user_with_device("patient", 333, 0, 0).await;
    for i in 0..10 {
        let (status, res) = bundle(&s, &a, "limited", SLASHES[i % 2]).await;
        assert_eq!(status, StatusCode::OK, "fetch {}: {res}", i + 1);
    }
    for slash in SLASHES {
        let path = format!("/prekeybundle/limited/332{slash}");
        let answer = s.send("GET", &path, bearer(&a.token), None).await;
        assert_throttled(&answer, format!("11th fetch{slash}"));
    }
    // Another requester has its own budget.
    let (status, res) = bundle(&s, &b, "limited", "").await;
    assert_eq!(status, StatusCode::OK, "{res}");
    // Throttled fetches took no key: 10 + 1 were handed out.
    assert_eq!(counts(&s, &target).await, (9, 0));
}
