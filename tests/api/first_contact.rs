//! docs/API.md's "First contact, step by step", replayed against a real server: every request of
//! the walk-through, in its order, with real keys and signatures, and the answers it shows. The
//! test also reads the walk-through's request lines from the doc and checks they are exactly the
//! requests made here, so the doc and the server cannot drift apart unnoticed.

use crate::helpers::{ec_prekeys, kyber_prekeys, signed_ec, signed_kyber, TestServer, PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};
use signal_server::crypto::{b64, KeyPair};

/// The `METHOD /path` lines of the walk-through's request blocks, in order.
fn documented_requests() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/API.md"))
        .expect("read docs/API.md");
    let section = doc
        .split("## First contact, step by step")
        .nth(1)
        .expect("docs/API.md has the walk-through");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter(|l| {
            ["GET /", "POST /", "DELETE /"]
                .iter()
                .any(|m| l.starts_with(m))
        })
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

/// The server, and the requests made so far.
struct Replay {
    s: TestServer,
    made: Vec<String>,
}

impl Replay {
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        want: StatusCode,
    ) -> Value {
        self.made.push(format!("{method} {path}"));
        let (status, answer) = self.s.call(method, path, token, body.as_ref()).await;
        assert_eq!(status, want, "{method} {path}: {answer}");
        answer
    }

    async fn account(&mut self, name: &str) -> (u64, String) {
        let creds = json!({"username": name, "password": PASSWORD});
        let user = self
            .call(
                "POST",
                "/auth/users",
                None,
                Some(creds.clone()),
                StatusCode::CREATED,
            )
            .await;
        assert_eq!(
            user,
            json!({"email": "", "username": name, "id": user["id"]})
        );
        let token = self
            .call(
                "POST",
                "/auth/jwt/create",
                None,
                Some(creds),
                StatusCode::OK,
            )
            .await;
        (
            user["id"].as_u64().unwrap(),
            token["token"].as_str().unwrap().to_string(),
        )
    }

    async fn device(&mut self, name: &str, reg_id: u32, identity: &KeyPair, token: &str) {
        let body = json!({
            "address": format!("{name}.1"),
            "identityKey": b64::encode(&identity.public),
            "registrationId": reg_id,
            "preKeys": ec_prekeys(1..=100),
            "signedPreKey": signed_ec(identity, 1),
            "kyberPreKeys": kyber_prekeys(identity, 1..=100),
            "lastResortKyberPreKey": signed_kyber(identity, 1000),
        });
        let answer = self
            .call(
                "POST",
                "/device/",
                Some(token),
                Some(body),
                StatusCode::CREATED,
            )
            .await;
        assert_eq!(answer["code"], "device_created");
    }

    /// `GET path`, answered 200.
    async fn get(&mut self, path: &str, token: &str) -> Value {
        self.call("GET", path, Some(token), None, StatusCode::OK)
            .await
    }

    /// An upload answered 200 with `code`.
    async fn store(&mut self, token: &str, path: &str, body: Value, code: &str) {
        let stored = self
            .call("POST", path, Some(token), Some(body), StatusCode::OK)
            .await;
        assert_eq!(stored["code"], code, "POST {path}");
    }

    /// `POST /messages/<reg_id>`, answered 201 with the queued message.
    async fn send(&mut self, token: &str, reg_id: u32, recipient: &str, message: &str) -> Value {
        let path = format!("/messages/{reg_id}");
        let body = json!({"recipient": recipient, "message": message});
        self.call("POST", &path, Some(token), Some(body), StatusCode::CREATED)
            .await
    }

    /// The recipient reads its queue, exactly `sent`, and deletes that message.
    async fn read_and_delete(&mut self, token: &str, reg_id: u32, sent: &Value) {
        let path = format!("/messages/{reg_id}");
        assert_eq!(self.get(&path, token).await, json!([sent]));
        let ids = Some(json!([sent["id"]]));
        let deleted = self
            .call("DELETE", &path, Some(token), ids, StatusCode::OK)
            .await;
        assert_eq!(deleted, json!(["success"]));
    }
}

/// What a client puts in `message`: the envelope of docs/API.md.
fn envelope(registration_id: u32, kind: u8, ciphertext: &[u8]) -> String {
    json!({"registrationId": registration_id, "type": kind, "body": b64::encode(ciphertext)})
        .to_string()
}

#[tokio::test]
async fn the_documented_first_contact_runs_as_written() {
    let mut r = Replay {
        s: TestServer::start().await,
        made: Vec::new(),
    };
    // 1. Accounts.
    let (alice_id, a) = r.account("alice").await;
    let (bob_id, b) = r.account("bob").await;
    assert_eq!((alice_id, bob_id), (1, 2), "the ids the walk-through shows");
    // 2. Devices.
    let (alice_key, bob_key) = (KeyPair::generate(), KeyPair::generate());
    r.device("alice", 1717, &alice_key, &a).await;
    r.device("bob", 4242, &bob_key, &b).await;
    // 3. The bundle: one-time prekey 1 of each kind, signatures by bob's identity key.
    let bundle = r.get("/prekeybundle/bob/1717", &a).await;
    assert_eq!(bundle["address"], "bob.1");
    assert_eq!(bundle["registrationId"], 4242);
    assert_eq!(bundle["identityKey"], b64::encode(&bob_key.public));
    assert_eq!(bundle["preKey"]["keyId"], 1);
    assert_eq!(bundle["kyberPreKey"]["keyId"], 1);
    for key in ["signedPreKey", "kyberPreKey"] {
        let public = b64::decode(bundle[key]["publicKey"].as_str().unwrap()).unwrap();
        let signature = b64::decode(bundle[key]["signature"].as_str().unwrap()).unwrap();
        assert!(signal_server::crypto::verify_signature(
            &bob_key.public,
            &public,
            &signature
        ));
    }
    // 4. The first message: a PreKey message (type 3) to bob's registrationId.
    let first = envelope(4242, 3, b"prekey message bytes");
    let sent = r.send(&a, 1717, "bob", &first).await;
    assert_eq!(sent["senderAddress"], "alice.1");
    assert_eq!(sent["senderRegistrationID"], 1717);
    assert_eq!(sent["recipientAddress"], "bob.1");
    assert_eq!(sent["content"], first.as_str());
    let first_id = sent["id"].clone();
    // 5. bob reads and deletes it.
    r.read_and_delete(&b, 4242, &sent).await;
    // 6. The reply: a SignalMessage (type 2), no bundle needed.
    let reply = envelope(1717, 2, b"signal message bytes");
    let sent = r.send(&b, 4242, "alice", &reply).await;
    assert_eq!(sent["senderAddress"], "bob.1");
    let reply_id = sent["id"].clone();
    // 7. alice reads and deletes it.
    r.read_and_delete(&a, 1717, &sent).await;
    // The ids the walk-through shows are sled's (one id sequence for users and messages).
    if !crate::helpers::on_postgres() {
        assert_eq!((first_id, reply_id), (json!(3), json!(4)), "the ids shown");
    }
    // 8. Top-up.
    let stock = r.get("/prekeys/4242", &b).await;
    assert_eq!(stock, json!({"preKeyCount": 99, "kyberPreKeyCount": 99}));
    let ec = json!({"preKeys": ec_prekeys([101])});
    r.store(&b, "/prekeys/4242", ec, "prekeys_stored").await;
    let kyber = json!({"kyberPreKeys": kyber_prekeys(&bob_key, [101])});
    r.store(&b, "/kyberprekeys/4242", kyber, "kyber_prekeys_stored")
        .await;
    // 9. Rotation, then the next bundle shows the new signed prekey.
    let signed = signed_ec(&bob_key, 2);
    r.store(&b, "/signedprekey/4242", signed, "signed_prekey_stored")
        .await;
    let last_resort = json!({"lastResortKyberPreKey": signed_kyber(&bob_key, 1001)});
    r.store(
        &b,
        "/kyberprekeys/4242",
        last_resort,
        "kyber_prekeys_stored",
    )
    .await;
    let bundle = r.get("/prekeybundle/bob/1717", &a).await;
    assert_eq!(bundle["preKey"]["keyId"], 2);
    assert_eq!(bundle["signedPreKey"]["keyId"], 2);
    assert_eq!(bundle["kyberPreKey"]["keyId"], 2);

    assert_eq!(
        r.made,
        documented_requests(),
        "docs/API.md's walk-through lists other requests than the ones that ran"
    );
}
