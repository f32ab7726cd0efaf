//! `GET /v2/prekeybundle/<username>/<regId>`: one entry per device, each taking its own one-time
//! keys once; one's own account without the asking device; the errors and the rate limit of the
//! old bundle. And the old bundle of a multi-device account: the primary's only.

use std::collections::BTreeSet;

use super::*;
use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use signal_server::crypto::b64;

/// `GET /v2/prekeybundle/<target>/<requester's regId><slash>`: the answer as it came.
async fn bundles(
    s: &TestServer,
    requester: &TestUser,
    target: &str,
    slash: &str,
) -> (StatusCode, Value) {
    let path = format!("/v2/prekeybundle/{target}/{}{slash}", requester.reg_id);
    s.get(&path, &requester.token).await
}

/// A `bundles` that must answer 200: its `devices`, by deviceId.
async fn devices_of(s: &TestServer, requester: &TestUser, target: &str) -> Vec<Value> {
    let (status, body) = bundles(s, requester, target, "").await;
    assert_eq!(status, StatusCode::OK, "v2 bundle of {target}: {body}");
    let mut devices = body["devices"].as_array().expect("devices").clone();
    devices.sort_by_key(|d| d["deviceId"].as_u64());
    devices
}

/// The object keys of `v`.
fn keys(v: &Value) -> BTreeSet<&str> {
    let object = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    object.keys().map(String::as_str).collect()
}

/// The `keyId` at `field` of a device's entry (`None` when it is left out).
fn key_id(device: &Value, field: &str) -> Option<u64> {
    device
        .get(field)
        .map(|k| k["keyId"].as_u64().expect("keyId"))
}

#[tokio::test]
async fn a_v2_bundle_has_one_entry_per_device_each_with_its_own_keys() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("Alice", 11, 2, 1).await;
    s.link_device(&alice, 12, 1, 0).await;
    let mut body = alice.link_body(13, 0, 0);
    body.last_resort_kyber_pre_key = None;
    s.client_of(&alice)
        .link_device(&body)
        .await
        .expect("link 13");
    let bob = s.user_with_device("bob", 22, 0, 0).await;

    let (status, b) = bundles(&s, &bob, "alice", "").await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(keys(&b), BTreeSet::from(["identityKey", "devices"]), "{b}");
    assert_eq!(b["identityKey"], b64::encode(&alice.identity.public));
    let mut devices = b["devices"].as_array().expect("devices").clone();
    devices.sort_by_key(|d| d["deviceId"].as_u64());
    let always = ["deviceId", "registrationId", "signedPreKey"];
    // (deviceId, registrationId, the optional keys given, preKey's and kyberPreKey's keyId)
    let shapes = [
        (1, 11, vec!["preKey", "kyberPreKey"], (Some(1), Some(1))),
        (
            2,
            12,
            vec!["preKey", "kyberPreKey"],
            (Some(1), Some(999_999)),
        ),
        (3, 13, vec![], (None, None)),
    ];
    assert_eq!(devices.len(), 3, "{devices:?}");
    for (d, (id, reg_id, extra, key_ids)) in devices.iter().zip(shapes) {
        let want: BTreeSet<&str> = always.iter().copied().chain(extra).collect();
        assert_eq!(keys(d), want, "device {id}: {d}");
        assert_eq!(
            (&d["deviceId"], &d["registrationId"]),
            (&json!(id), &json!(reg_id))
        );
        assert_eq!(
            (key_id(d, "preKey"), key_id(d, "kyberPreKey")),
            key_ids,
            "device {id}"
        );
        let signed = &d["signedPreKey"];
        assert_eq!(
            keys(signed),
            BTreeSet::from(["keyId", "publicKey", "signature"])
        );
        assert_eq!(b64d(&signed["publicKey"]).len(), 33, "device {id}");
        if let Some(pre) = d.get("preKey") {
            assert_eq!(
                keys(pre),
                BTreeSet::from(["keyId", "publicKey"]),
                "device {id}"
            );
        }
    }
    // The name is matched case-insensitively, with and without the slash, as the old bundle's.
    let (status, again) = bundles(&s, &bob, "ALICE", "/").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        again["devices"].as_array().map(Vec::len),
        Some(3),
        "{again}"
    );
    assert_eq!(
        counts(&s, &alice).await,
        (0, 0),
        "the primary's 2 EC and 1 Kyber keys are out"
    );
    assert_eq!(
        counts(&s, &alice.device(12)).await,
        (0, 0),
        "device 2's one EC key is out"
    );
}

#[tokio::test]
async fn each_device_hands_out_its_lowest_keys_once_then_its_last_resort_key() {
    let s = TestServer::start().await;
    let [alice, second] = alice_with_two(&s, 2, 1).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let last_resort = Some(999_999);
    let per_fetch = [
        (Some(1), Some(1)),
        (Some(2), last_resort),
        (None, last_resort),
    ];
    for (i, want) in per_fetch.into_iter().enumerate() {
        let devices = devices_of(&s, &bob, "alice").await;
        assert_eq!(device_ids(&devices), [1, 2]);
        let got: Vec<_> = devices
            .iter()
            .map(|d| (key_id(d, "preKey"), key_id(d, "kyberPreKey")))
            .collect();
        assert_eq!(
            got,
            [want, want],
            "fetch {}: (preKey, kyberPreKey) per device",
            i + 1
        );
    }
    assert_eq!(counts(&s, &alice).await, (0, 0));
    assert_eq!(counts(&s, &second).await, (0, 0));
}

#[tokio::test]
async fn a_v2_bundle_of_ones_own_account_leaves_out_the_asking_device() {
    let s = TestServer::start().await;
    // A single-device account asking for itself: no entry, and still a 200.
    let bob = s.user_with_device("bob", 22, 1, 1).await;
    let (status, own) = bundles(&s, &bob, "bob", "").await;
    assert_eq!(
        (status, &own["devices"]),
        (StatusCode::OK, &json!([])),
        "{own}"
    );
    assert_eq!(counts(&s, &bob).await, (1, 1));
    let [alice, second, third] = alice_with_three(&s, 1, 1).await;
    assert_eq!(device_ids(&devices_of(&s, &second, "alice").await), [1, 3]);
    assert_eq!(
        counts(&s, &second).await,
        (1, 1),
        "the asking device's keys stay"
    );
    assert_eq!(counts(&s, &alice).await, (0, 0));
    assert_eq!(device_ids(&devices_of(&s, &alice, "alice").await), [2, 3]);
    assert_eq!(counts(&s, &third).await, (0, 0));
    // The typed client reads the same shape.
    let b = s
        .client_of(&third)
        .bundles("alice", 13)
        .await
        .expect("bundles");
    let ids: Vec<u32> = b.devices.iter().map(|d| d.device_id).collect();
    assert_eq!(
        (b.identity_key, ids.len()),
        (alice.identity.public.to_vec(), 2)
    );
    assert!(!ids.contains(&3), "{ids:?}");
}

#[tokio::test]
async fn v2_bundle_errors_are_those_of_the_old_bundle() {
    let s = TestServer::start().await;
    let [_alice, second] = alice_with_two(&s, 3, 3).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let nodev = user_for(&s, "nodev", 33).await;
    let bad = StatusCode::BAD_REQUEST;
    let cases = [
        (
            &nodev,
            "alice",
            bad,
            "no_device",
            "a caller without a device",
        ),
        (&bob, "nobody", bad, "no_recipient", "an unknown user"),
        (
            &bob,
            "NoDev",
            bad,
            "no_device",
            "a recipient without a device",
        ),
    ];
    for slash in SLASHES {
        for (requester, target, status, code, what) in cases {
            let answer = bundles(&s, requester, target, slash).await;
            assert_error(&answer, status, code, what);
            if target == "NoDev" {
                assert_eq!(
                    answer.1["message"],
                    "Recipient has not yet registered a device"
                );
            }
        }
        let path = format!("/v2/prekeybundle/alice/21{slash}");
        let answer = s.get(&path, &bob.token).await;
        assert_error(
            &answer,
            StatusCode::FORBIDDEN,
            "device_changed",
            "a regId not bob's",
        );
        let answer = s.send("GET", &path, None, None).await;
        assert_401(&answer, "no token");
    }
    assert_eq!(
        counts(&s, &second).await,
        (3, 3),
        "a refused bundle took keys"
    );
}

#[tokio::test]
async fn a_v2_bundle_counts_as_one_fetch_for_the_rate_limit() {
    let s = TestServer::start_with(&[]).await;
    let [alice, second, third] = alice_with_three(&s, 20, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    // Ten fetches of three devices each: the budget of ten fetches, not of three.
    for i in 0..10 {
        let (status, body) = bundles(&s, &bob, "alice", SLASHES[i % 2]).await;
        assert_eq!(status, StatusCode::OK, "fetch {}: {body}", i + 1);
    }
    let answer = s
        .send("GET", "/v2/prekeybundle/alice/22", bearer(&bob.token), None)
        .await;
    assert_throttled(&answer, "the 11th fetch");
    for device in [&alice, &second, &third] {
        assert_eq!(counts(&s, device).await, (10, 0), "regId {}", device.reg_id);
    }
}

#[tokio::test]
async fn the_old_bundle_of_a_multi_device_account_is_the_primarys() {
    let s = TestServer::start().await;
    let [alice, second] = alice_with_two(&s, 2, 2).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    for (i, slash) in SLASHES.iter().enumerate() {
        let b = bundle_ok(&s, &bob, "alice", slash).await;
        assert_eq!(
            (&b["address"], &b["registrationId"]),
            (&json!("alice.1"), &json!(11)),
            "{b}"
        );
        assert_eq!(b["preKey"]["keyId"], i + 1);
        assert_eq!(b["kyberPreKey"]["keyId"], i + 1);
    }
    assert_eq!(counts(&s, &alice).await, (0, 0));
    assert_eq!(counts(&s, &second).await, (2, 2), "device 2 gave nothing");
    let (status, b) = bundle(&s, &bob, "alice", "").await;
    assert_eq!((status, b.get("preKey")), (StatusCode::OK, None), "{b}");
    assert_eq!(
        b["kyberPreKey"]["keyId"], 999_999,
        "the primary's last-resort key"
    );
}
