//! Multi-device accounts, as docs/API.md's "Multi-device accounts" describes them: linking,
//! listing and unlinking devices (`linking`), the `<regId>` routes acting on a linked device
//! (`routes`), bundles of every device and the old bundle on the primary (`bundles`), sends to
//! every device and the old send on the primary (`sending`), live delivery to each device
//! (`websocket`), the rules under concurrent requests (`concurrency`) and across `kill -9` of the
//! binary (`crash`), on several instances of one database (`instances`), and operator commands
//! and backups (`operations`). The helpers here are the calls every file of the area makes; a
//! linked device is a `TestUser` of its account (`TestUser::device`), so the helpers of other
//! areas act on it too.

mod bundles;
mod concurrency;
mod crash;
mod instances;
mod linking;
mod operations;
mod routes;
mod sending;
mod websocket;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{TestServer, TestUser};
use crate::messages::queue;

/// alice (primary regId 11) with a linked device 2 (regId 12), each with `prekeys` EC and
/// `kyber` Kyber one-time keys and a last-resort Kyber key; the primary and the linked device.
pub(crate) async fn alice_with_two(s: &TestServer, prekeys: u32, kyber: u32) -> [TestUser; 2] {
    let alice = s.user_with_device("alice", 11, prekeys, kyber).await;
    let (id, second) = s.link_device(&alice, 12, prekeys, kyber).await;
    assert_eq!(id, 2, "the first linked device");
    [alice, second]
}

/// alice as `alice_with_two`, with a third device (id 3, regId 13).
pub(crate) async fn alice_with_three(s: &TestServer, prekeys: u32, kyber: u32) -> [TestUser; 3] {
    let [alice, second] = alice_with_two(s, prekeys, kyber).await;
    let (id, third) = s.link_device(&alice, 13, prekeys, kyber).await;
    assert_eq!(id, 3, "the second linked device");
    [alice, second, third]
}

/// `GET /v2/devices` as `user`, which must answer 200 with a list.
pub(crate) async fn listed(s: &TestServer, user: &TestUser) -> Vec<Value> {
    let (status, body) = s.get("/v2/devices", &user.token).await;
    assert_eq!(status, StatusCode::OK, "GET /v2/devices: {body}");
    body.as_array().expect("a list of devices").clone()
}

/// The `deviceId`s of a device list (or of any list of objects with one).
pub(crate) fn device_ids(list: &[Value]) -> Vec<u64> {
    list.iter()
        .map(|d| d["deviceId"].as_u64().expect("deviceId"))
        .collect()
}

/// The devices of `user`'s account, by id, in the order `GET /v2/devices` lists them.
pub(crate) async fn listed_ids(s: &TestServer, user: &TestUser) -> Vec<u64> {
    device_ids(&listed(s, user).await)
}

/// One ciphertext of a `POST /v2/messages` body.
pub(crate) fn to(device_id: u32, registration_id: u32, content: &str) -> Value {
    json!({"deviceId": device_id, "registrationId": registration_id, "content": content})
}

/// `POST /v2/messages/<from's regId>` to `recipient` with `messages`: the answer as it came.
pub(crate) async fn send_v2(
    s: &TestServer,
    from: &TestUser,
    recipient: &str,
    messages: Vec<Value>,
) -> (StatusCode, Value) {
    let path = format!("/v2/messages/{}", from.reg_id);
    let body = json!({"recipient": recipient, "messages": messages});
    s.post(&path, &from.token, body).await
}

/// A `send_v2` that must answer 201: the answer's body.
pub(crate) async fn sent_v2(
    s: &TestServer,
    from: &TestUser,
    recipient: &str,
    messages: Vec<Value>,
) -> Value {
    let (status, body) = send_v2(s, from, recipient, messages).await;
    assert_eq!(status, StatusCode::CREATED, "POST /v2/messages: {body}");
    body
}

/// The id a 201 of `POST /v2/messages` gave the message for `device_id`.
pub(crate) fn id_for(sent: &Value, device_id: u32) -> u64 {
    let messages = sent["messages"].as_array().expect("messages");
    let entry = messages.iter().find(|m| m["deviceId"] == device_id);
    let entry = entry.unwrap_or_else(|| panic!("no message for device {device_id}: {sent}"));
    entry["id"].as_u64().expect("id")
}

/// Every one of `devices` has an empty queue.
pub(crate) async fn assert_queues_empty(s: &TestServer, devices: &[&TestUser], what: &str) {
    for d in devices {
        let q = queue(s, d).await;
        assert!(
            q.is_empty(),
            "{what}: the queue of regId {} holds {q:?}",
            d.reg_id
        );
    }
}

/// The `contents` of a queue, in order.
pub(crate) fn contents(queue: &[Value]) -> Vec<&str> {
    queue
        .iter()
        .map(|m| m["content"].as_str().expect("content"))
        .collect()
}
