//! `POST /v2/devices`, `GET /v2/devices` and `DELETE /v2/devices/<deviceId>`: which devices may
//! be linked and which id they get, the list, unlinking, and the old `DELETE /device/` removing
//! every device; a refused link or unlink changes nothing.

use super::*;
use crate::helpers::*;
use crate::messages::{queue, send};
use reqwest::StatusCode;
use serde_json::{json, Value};
use signal_server::client::SignedPreKey;
use signal_server::crypto::{b64, KeyPair};

/// `POST /v2/devices<slash>` as `user` with `body`: the answer as it came.
async fn link(s: &TestServer, user: &TestUser, slash: &str, body: &Value) -> (StatusCode, Value) {
    let path = format!("/v2/devices{slash}");
    s.call("POST", &path, Some(&user.token), Some(body)).await
}

/// The body of a link of a device with `reg_id` to `user`'s account, as JSON to alter.
fn link_json(user: &TestUser, reg_id: u32) -> Value {
    serde_json::to_value(user.link_body(reg_id, 2, 1)).expect("link JSON")
}

/// A link refused with `status` and `code` leaves `user`'s account with the devices `ids` and
/// no device with `reg_id`.
async fn assert_link_refused(
    s: &TestServer,
    user: &TestUser,
    body: &Value,
    (status, code): (StatusCode, &str),
    ids: &[u64],
    what: &str,
) {
    let answer = link(s, user, "", body).await;
    assert_error(&answer, status, code, what);
    let list = listed(s, user).await;
    assert_eq!(device_ids(&list), ids, "{what}: the devices");
    let reg_id = &body["registrationId"];
    let stored = list.iter().any(|d| &d["registrationId"] == reg_id);
    assert!(!stored, "{what}: a device with regId {reg_id} was stored");
}

#[tokio::test]
async fn a_link_answers_201_with_the_lowest_free_device_id_and_its_address() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("AliceD", 11, 0, 0).await;
    for (i, slash) in ["", "/", ""].iter().enumerate() {
        let reg_id = 12 + i as u32;
        let answer = link(&s, &alice, slash, &link_json(&alice, reg_id)).await;
        let id = i + 2;
        assert_eq!(
            answer.0,
            StatusCode::CREATED,
            "link {reg_id}{slash}: {}",
            answer.1
        );
        let mut body = answer.1;
        let token = body["token"].take();
        assert!(
            token.as_str().is_some_and(|t| t.len() > 20),
            "a token: {token}"
        );
        assert_eq!(
            body,
            json!({"deviceId": id, "address": format!("AliceD.{id}"), "token": null})
        );
    }
    // An `address` in the body is ignored: the server picks the id.
    let mut addressed = link_json(&alice, 15);
    addressed["address"] = json!("mallory.9");
    let answer = link(&s, &alice, "", &addressed).await;
    assert_eq!(answer.0, StatusCode::CREATED, "{}", answer.1);
    assert_eq!(
        (&answer.1["deviceId"], &answer.1["address"]),
        (&json!(5), &json!("AliceD.5"))
    );
    assert_eq!(listed_ids(&s, &alice).await, [1, 2, 3, 4, 5]);
    let anonymous = s.send("GET", "/v2/devices", None, None).await;
    assert_401(&anonymous, "GET /v2/devices without a token");
}

#[tokio::test]
async fn an_unlinked_id_is_given_again_and_the_new_device_holds_nothing_of_the_old_one() {
    let s = TestServer::start().await;
    let [alice, second, third] = alice_with_three(&s, 3, 2).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let messages = vec![to(1, 11, "one"), to(2, 12, "two"), to(3, 13, "three")];
    sent_v2(&s, &bob, "alice", messages).await;
    s.client_of(&alice)
        .unlink_device(2)
        .await
        .expect("unlink 2");
    assert_eq!(listed_ids(&s, &alice).await, [1, 3]);

    // The new device 2 has no one-time keys, no last-resort key and no queue of the old one.
    let mut body = alice.link_body(42, 0, 0);
    body.last_resort_kyber_pre_key = None;
    let linked = s.client_of(&alice).link_device(&body).await.expect("link");
    assert_eq!(linked.device_id, 2);
    let new = alice.device(42);
    assert_eq!(counts(&s, &new).await, (0, 0));
    assert!(queue(&s, &new).await.is_empty(), "the old device's queue");
    let list = listed(&s, &alice).await;
    assert_eq!(list[1]["deviceId"], 2);
    assert_eq!(list[1]["registrationId"], 42);
    assert_eq!(list[1]["hasLastResortKyberPreKey"], false);
    let bundles = s
        .client_of(&bob)
        .bundles("alice", 22)
        .await
        .expect("bundles");
    let two = bundles
        .devices
        .iter()
        .find(|d| d.device_id == 2)
        .expect("device 2");
    assert_eq!(
        (two.registration_id, &two.pre_key, &two.kyber_pre_key),
        (42, &None, &None)
    );
    // The old registrationId no longer names a device of the account.
    // The old registrationId no longer names a device of the account, and the unlinked
    // device's own token died with it.
    let answer = s.get("/messages/12", &alice.token).await;
    assert_error(
        &answer,
        StatusCode::FORBIDDEN,
        "device_changed",
        "the unlinked regId",
    );
    let answer = s.get("/messages/42", &second.token).await;
    assert_error(
        &answer,
        StatusCode::UNAUTHORIZED,
        "not_authenticated",
        "the unlinked device's token",
    );
    assert_eq!(queue(&s, &third).await.len(), 1, "device 3 keeps its queue");
}

#[tokio::test]
async fn a_link_with_another_identity_key_is_400_invalid_data_and_changes_nothing() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    // Keys signed by the key they come with, so only the identity is wrong.
    let mut stranger = alice.device(12);
    stranger.secret = rand::random();
    for (holder, what) in [
        (&stranger, "a new identity"),
        (&bob, "another account's identity"),
    ] {
        let body = serde_json::to_value(holder.link_body(12, 2, 1)).expect("JSON");
        let answer = link(&s, &alice, "", &body).await;
        assert_invalid(&answer, "identityKey", what);
        assert_eq!(listed_ids(&s, &alice).await, [1], "{what}");
    }
    let own = link(&s, &alice, "", &link_json(&alice, 12)).await;
    assert_eq!(own.0, StatusCode::CREATED, "{}", own.1);
}

#[tokio::test]
async fn a_link_whose_signatures_do_not_verify_is_400_invalid_data_and_changes_nothing() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let other = KeyPair::generate();
    let with = |field: &str, value: Value| {
        let mut body = link_json(&alice, 12);
        body[field] = value;
        body
    };
    let signed = &link_json(&alice, 12)["signedPreKey"];
    let mut flipped = signed.clone();
    flipped["signature"] = flip(&signed["signature"], 5, 0x01);
    let cases = [
        (
            with("signedPreKey", flipped),
            "signedPreKey",
            "a flipped signature",
        ),
        (
            with("signedPreKey", signed_ec(&other, 1)),
            "signedPreKey",
            "signed by another key",
        ),
        (
            with("kyberPreKeys", kyber_prekeys(&other, [1])),
            "kyberPreKeys",
            "a Kyber key signed by another key",
        ),
        (
            with("lastResortKyberPreKey", signed_kyber(&other, 999_999)),
            "lastResortKyberPreKey",
            "a last-resort key signed by another key",
        ),
    ];
    for (body, field, what) in cases {
        let answer = link(&s, &alice, "", &body).await;
        assert_invalid(&answer, field, what);
        assert_eq!(listed_ids(&s, &alice).await, [1], "{what}");
    }
}

#[tokio::test]
async fn a_link_with_bad_keys_or_a_bad_body_is_refused_and_changes_nothing() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let mut twice = link_json(&alice, 12);
    twice["preKeys"] = ec_prekeys([4, 4]);
    let mut short = link_json(&alice, 12);
    short["preKeys"][0]["publicKey"] = json!(key_with(32, 0x05));
    let mut kyber_type = link_json(&alice, 12);
    let wrong = key_bytes(1569, 0x05);
    kyber_type["kyberPreKeys"] = json!([signed_over(&alice.identity, 1, &wrong)]);
    let mut out_of_range = link_json(&alice, 1_000_000);
    out_of_range["registrationId"] = json!(1_000_000);
    let mut no_signed = link_json(&alice, 12);
    no_signed
        .as_object_mut()
        .expect("object")
        .remove("signedPreKey");
    let cases = [
        (twice, "preKeys", "a keyId twice"),
        (short, "preKeys", "a 32-byte prekey"),
        (
            kyber_type,
            "kyberPreKeys",
            "a Kyber key with the EC type byte",
        ),
        (out_of_range, "registrationId", "registrationId 1000000"),
        (no_signed, "signedPreKey", "no signed prekey"),
    ];
    for (body, field, what) in cases {
        assert_invalid(&link(&s, &alice, "", &body).await, field, what);
        assert_eq!(listed_ids(&s, &alice).await, [1], "{what}");
    }
    let list = link(&s, &alice, "", &json!([link_json(&alice, 12)])).await;
    assert_error(
        &list,
        StatusCode::FORBIDDEN,
        "incorrect_arguments",
        "a list",
    );
    let anonymous = s
        .call("POST", "/v2/devices", None, Some(&link_json(&alice, 12)))
        .await;
    assert_eq!(anonymous.0, StatusCode::UNAUTHORIZED, "{}", anonymous.1);
    assert_eq!(listed_ids(&s, &alice).await, [1]);
}

#[tokio::test]
async fn a_link_reusing_a_registration_id_of_the_account_is_400_invalid_data() {
    let s = TestServer::start().await;
    let [alice, _second] = alice_with_two(&s, 0, 0).await;
    s.user_with_device("bob", 22, 0, 0).await;
    for reg_id in [11, 12] {
        let answer = link(&s, &alice, "", &link_json(&alice, reg_id)).await;
        assert_invalid(&answer, "registrationId", format!("regId {reg_id}"));
        assert_eq!(listed_ids(&s, &alice).await, [1, 2], "regId {reg_id}");
    }
    // Unique within the account only: bob's registrationId is free for alice.
    let (id, _) = s.link_device(&alice, 22, 0, 0).await;
    assert_eq!(id, 3);
}

#[tokio::test]
async fn a_link_without_a_primary_is_400_no_device() {
    let s = TestServer::start().await;
    let nodev = user_for(&s, "nodev", 11).await;
    // The body is checked first: a bad signature is the body's error, even without a primary.
    let mut bad = link_json(&nodev, 12);
    bad["signedPreKey"]["signature"] = flip(&bad["signedPreKey"]["signature"], 5, 0x01);
    assert_invalid(
        &link(&s, &nodev, "", &bad).await,
        "signedPreKey",
        "a bad signature",
    );
    let answer = link(&s, &nodev, "", &link_json(&nodev, 12)).await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "no_device",
        "no primary yet",
    );
    assert_no_device(&s, &nodev, "after the refused link").await;
    assert_eq!(
        listed(&s, &nodev).await,
        Vec::<Value>::new(),
        "no device: an empty list"
    );
    // The primary is created by POST /device as before; its id, the one in its address, is
    // not given to a linked device.
    let created = s
        .client_of(&nodev)
        .create_device(&nodev.new_device(2, 0, 0, true))
        .await;
    created.expect("create the primary");
    assert_eq!(s.link_device(&nodev, 12, 0, 0).await.0, 3);
    assert_eq!(s.link_device(&nodev, 13, 0, 0).await.0, 4);
    assert_eq!(listed_ids(&s, &nodev).await, [2, 3, 4]);
}

#[tokio::test]
async fn links_beyond_max_devices_are_403_too_many_devices_and_change_nothing() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-devices", "3"]).await;
    let [alice, _, _] = alice_with_three(&s, 0, 0).await;
    let refused = (StatusCode::FORBIDDEN, "too_many_devices");
    let body = link_json(&alice, 14);
    assert_link_refused(&s, &alice, &body, refused, &[1, 2, 3], "a fourth device").await;
    // The identity key and the registrationId are checked before the room.
    let answer = link(&s, &alice, "", &link_json(&alice, 12)).await;
    assert_invalid(&answer, "registrationId", "a used regId on a full account");
    let mut stranger = alice.device(14);
    stranger.secret = rand::random();
    let answer = link(&s, &alice, "", &link_json(&stranger, 14)).await;
    assert_invalid(&answer, "identityKey", "another identity on a full account");
    s.client_of(&alice)
        .unlink_device(2)
        .await
        .expect("unlink 2");
    let (id, _) = s.link_device(&alice, 14, 0, 0).await;
    assert_eq!(id, 2, "room again, at the freed id");
    let body = link_json(&alice, 15);
    assert_link_refused(&s, &alice, &body, refused, &[1, 2, 3], "full again").await;
}

#[tokio::test]
async fn max_devices_1_turns_linking_off() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-devices", "1"]).await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    let refused = (StatusCode::FORBIDDEN, "too_many_devices");
    let body = link_json(&alice, 12);
    assert_link_refused(&s, &alice, &body, refused, &[1], "a second device").await;
}

#[tokio::test]
async fn an_account_holds_six_devices_by_default() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 0, 0).await;
    for reg_id in 12..=16 {
        s.link_device(&alice, reg_id, 0, 0).await;
    }
    assert_eq!(listed_ids(&s, &alice).await, [1, 2, 3, 4, 5, 6]);
    let refused = (StatusCode::FORBIDDEN, "too_many_devices");
    let body = link_json(&alice, 17);
    assert_link_refused(&s, &alice, &body, refused, &[1, 2, 3, 4, 5, 6], "a seventh").await;
}

#[tokio::test]
async fn the_list_shows_the_primary_first_then_each_linked_device_with_its_counts() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 3, 2).await;
    s.link_device(&alice, 12, 5, 0).await;
    let mut body = alice.link_body(13, 0, 4);
    body.last_resort_kyber_pre_key = None;
    body.signed_pre_key = SignedPreKey::generate_ec(&alice.identity, 7);
    s.client_of(&alice)
        .link_device(&body)
        .await
        .expect("link 13");

    let list = listed(&s, &alice).await;
    let identity = b64::encode(&alice.identity.public);
    let expected = [
        (1, 11, 1, 3, 2, true),
        (2, 12, 1, 5, 0, true),
        (3, 13, 7, 0, 4, false),
    ];
    assert_eq!(list.len(), expected.len(), "{list:?}");
    for (entry, (id, reg_id, signed, pre, kyber, last_resort)) in list.iter().zip(expected) {
        let want = json!({
            "deviceId": id, "address": format!("alice.{id}"), "registrationId": reg_id,
            "identityKey": identity, "signedPreKeyId": signed, "preKeyCount": pre,
            "kyberPreKeyCount": kyber, "hasLastResortKyberPreKey": last_resort,
        });
        assert_eq!(entry, &want, "device {id}");
    }
    // The primary's entry is `GET /device/` plus its id; the typed client reads the same list.
    let mut primary = device_info(&s, &alice).await;
    primary["deviceId"] = json!(1);
    assert_eq!(list[0], primary);
    let typed = s.client_of(&alice).devices().await.expect("devices");
    let typed: Vec<(u32, u32)> = typed
        .iter()
        .map(|d| (d.device_id, d.info.registration_id))
        .collect();
    assert_eq!(typed, [(1, 11), (2, 12), (3, 13)]);
    let (status, slash) = s.get("/v2/devices/", &alice.token).await;
    assert_eq!((status, slash), (StatusCode::OK, Value::Array(list)));
}

#[tokio::test]
async fn unlinking_answers_204_and_removes_the_device_its_keys_and_its_queue() {
    let s = TestServer::start().await;
    let [alice, second, third] = alice_with_three(&s, 2, 1).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let messages = vec![to(1, 11, "one"), to(2, 12, "two"), to(3, 13, "three")];
    sent_v2(&s, &bob, "alice", messages).await;
    let from_second = send(&s, &second, &bob, "sent by device 2").await;
    for (id, slash) in [(2, ""), (3, "/")] {
        let path = format!("/v2/devices/{id}{slash}");
        let (status, body) = s.call("DELETE", &path, Some(&alice.token), None).await;
        assert_eq!(
            (status, body),
            (StatusCode::NO_CONTENT, Value::Null),
            "{path}"
        );
    }
    assert_eq!(listed_ids(&s, &alice).await, [1]);
    for gone in [&second, &third] {
        let path = format!("/prekeys/{}", gone.reg_id);
        let answer = s.get(&path, &alice.token).await;
        assert_error(&answer, StatusCode::FORBIDDEN, "device_changed", &path);
        let answer = s.get(&path, &gone.token).await;
        assert_error(
            &answer,
            StatusCode::UNAUTHORIZED,
            "not_authenticated",
            "the unlinked device's token",
        );
    }
    let bundles = s
        .client_of(&bob)
        .bundles("alice", 22)
        .await
        .expect("bundles");
    let ids: Vec<u32> = bundles.devices.iter().map(|d| d.device_id).collect();
    assert_eq!(ids, [1], "the bundle of the unlinked devices");
    assert_eq!(
        contents(&queue(&s, &alice).await),
        ["one"],
        "the primary keeps its queue"
    );
    assert_eq!(counts(&s, &alice).await, (1, 0), "and its keys");
    let kept = queue(&s, &bob).await;
    assert_eq!(
        kept,
        vec![from_second],
        "what device 2 sent stays queued for bob"
    );
}

#[tokio::test]
async fn unlinking_an_unknown_device_is_404_and_the_primary_403_primary_device() {
    let s = TestServer::start().await;
    let [alice, _second] = alice_with_two(&s, 0, 0).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    s.link_device(&bob, 23, 0, 0).await;
    s.link_device(&bob, 24, 0, 0).await;
    // Device 3 exists in bob's account only: alice cannot reach it.
    for id in [3, 4, 5, 127] {
        let answer = s
            .call(
                "DELETE",
                &format!("/v2/devices/{id}"),
                Some(&alice.token),
                None,
            )
            .await;
        assert_error(
            &answer,
            StatusCode::NOT_FOUND,
            "no_such_device",
            format!("device {id}"),
        );
    }
    for path in ["/v2/devices/1", "/v2/devices/1/"] {
        let answer = s.call("DELETE", path, Some(&alice.token), None).await;
        assert_error(&answer, StatusCode::FORBIDDEN, "primary_device", path);
    }
    for id in ["0", "128", "x"] {
        let (status, body) = s
            .call(
                "DELETE",
                &format!("/v2/devices/{id}"),
                Some(&alice.token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "device {id}: {body}");
    }
    s.client_of(&alice)
        .unlink_device(2)
        .await
        .expect("unlink 2");
    let again = s
        .client_of(&alice)
        .unlink_device(2)
        .await
        .expect_err("unlink 2 twice");
    assert_eq!(again.status_code(), Some((404, "no_such_device")));
    assert_eq!(listed_ids(&s, &alice).await, [1]);
    assert_eq!(listed_ids(&s, &bob).await, [1, 2, 3]);
}

#[tokio::test]
async fn the_old_device_delete_removes_every_device_of_the_account() {
    let s = TestServer::start().await;
    let [alice, second, _third] = alice_with_three(&s, 1, 1).await;
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let (status, _) = s.call("DELETE", "/device/", Some(&alice.token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_no_device(&s, &alice, "after DELETE /device/").await;
    assert_eq!(listed(&s, &alice).await, Vec::<Value>::new());
    let answer = s.get("/messages/12", &alice.token).await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "no_device",
        "the linked regId",
    );
    let answer = s.get("/messages/12", &second.token).await;
    assert_error(
        &answer,
        StatusCode::UNAUTHORIZED,
        "not_authenticated",
        "the linked device's own token",
    );
    let answer = s.get("/v2/prekeybundle/alice/22", &bob.token).await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "no_device",
        "alice's bundles",
    );
    // A new primary starts a new account's worth of devices: the linked ones do not come back.
    let primary = alice.new_device(1, 0, 0, true);
    s.client_of(&alice)
        .create_device(&primary)
        .await
        .expect("new primary");
    assert_eq!(listed_ids(&s, &alice).await, [1]);
    let (id, again) = s.link_device(&alice, 12, 0, 0).await;
    assert_eq!(id, 2);
    assert_eq!(
        counts(&s, &again).await,
        (0, 0),
        "nothing of the old device 2"
    );
    let answer = s.get("/prekeys/12", &second.token).await;
    assert_error(
        &answer,
        StatusCode::UNAUTHORIZED,
        "not_authenticated",
        "the old device 2's token, its id and registrationId given again",
    );
    let m = send(&s, &bob, &alice, "to the new primary").await;
    assert_eq!(queue(&s, &alice).await, vec![m]);
}

#[tokio::test]
async fn a_primary_with_another_id_is_listed_first_and_its_id_is_never_linked() {
    let s = TestServer::start().await;
    let alice = user_for(&s, "alice", 11).await;
    let primary = alice.new_device(5, 0, 0, true);
    s.client_of(&alice)
        .create_device(&primary)
        .await
        .expect("primary 5");
    let mut ids = Vec::new();
    for reg_id in 12..=16 {
        ids.push(s.link_device(&alice, reg_id, 1, 0).await.0);
    }
    assert_eq!(ids, [2, 3, 4, 6, 7]);
    assert_eq!(listed_ids(&s, &alice).await, [5, 2, 3, 4, 6, 7]);
    // The v2 bundle lists the devices in the same order.
    let bob = s.user_with_device("bob", 22, 0, 0).await;
    let (status, b) = s.get("/v2/prekeybundle/alice/22", &bob.token).await;
    assert_eq!(status, StatusCode::OK, "{b}");
    let devices = b["devices"].as_array().expect("devices");
    assert_eq!(device_ids(devices), [5, 2, 3, 4, 6, 7]);
    let answer = s
        .call("DELETE", "/v2/devices/5", Some(&alice.token), None)
        .await;
    assert_error(
        &answer,
        StatusCode::FORBIDDEN,
        "primary_device",
        "the primary, id 5",
    );
}
