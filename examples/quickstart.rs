//! quickstart: a walk through signal-server's HTTP API, one step at a time.
//!
//! Start a server in one terminal and run this in another:
//!
//! ```sh
//! cargo run --release -- --data-dir ./data
//! cargo run --release --example quickstart
//! ```
//!
//! The server URL is `http://127.0.0.1:8000`; set `SIGNAL_SERVER_URL` or pass it as the first
//! argument to use another (`cargo run --release --example quickstart -- http://127.0.0.1:9000`).
//!
//! What it does: registers two users (alice_… and bob_…, random suffixes so it can run again),
//! logs both in, gives each a device with real public keys, lets alice fetch bob's prekey bundle,
//! send bob a message, and bob read and delete it. Every request and answer is printed. Any
//! unexpected answer stops it with a non-zero exit code.
//!
//! IMPORTANT: this demo does NO real encryption. The keys are real (X25519 keys, XEdDSA
//! signatures by the identity key, which the server checks) but nobody holds a session: the
//! "ciphertext" sent below is just base64 of a plain string, and the Kyber keys are random bytes
//! of the right size. The server cannot tell the difference, because it never decrypts anything.
//! For a real Signal session (PQXDH + Double Ratchet with libsignal) see `examples/chat.rs`:
//! `cargo run --release --example chat --features interop`.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use signal_server::crypto::{b64, KeyPair};

/// Any password that passes the server's strength check (8+ characters, not guessable, not
/// containing the username).
const PASSWORD: &str = "tangerine-Voyage-42";

/// Something went wrong: a message for the user.
type Error = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("\nquickstart FAILED: {e}");
        std::process::exit(1);
    }
}

/// The server and an HTTP client.
struct Server {
    base: String,
    http: reqwest::Client,
}

impl Server {
    /// Sends one request, prints it and its answer, and fails unless the status is `want`.
    /// Answers the JSON body (`Value::Null` when empty, as for 204).
    async fn call(
        &self,
        want: StatusCode,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, Error> {
        println!("  -> {method} {path}");
        let mut attempts = 0;
        let res = loop {
            let mut req = self.http.request(
                Method::from_bytes(method.as_bytes())?,
                format!("{}{path}", self.base),
            );
            if let Some(token) = token {
                // Every authenticated route takes `Authorization: Bearer <token>`.
                req = req.bearer_auth(token);
            }
            if let Some(body) = &body {
                req = req.json(body);
            }
            let res = req.send().await?;
            // With rate limits on (the default), too many requests from one place get 429
            // `throttled` and a `Retry-After` in seconds: wait that long and try again.
            let retry_after = (res.status() == StatusCode::TOO_MANY_REQUESTS)
                .then(|| res.headers().get(reqwest::header::RETRY_AFTER))
                .flatten()
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            match retry_after {
                Some(secs) if attempts < 3 && secs <= 30 => {
                    attempts += 1;
                    println!("  <- 429 throttled; waiting {secs} s as Retry-After says");
                    tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
                }
                _ => break res,
            }
        };
        let status = res.status();
        let text = res.text().await?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|_| format!("answer is not JSON: {text}"))?
        };
        println!("  <- {status} {}", shorten(&value));
        if status != want {
            return Err(format!("{method} {path}: expected {want}, got {status}: {value}").into());
        }
        Ok(value)
    }
}

/// A JSON value for printing, with long strings (keys, signatures) cut short.
fn shorten(value: &Value) -> String {
    fn cut(v: &Value) -> Value {
        match v {
            Value::String(s) if s.len() > 48 => {
                Value::String(format!("{}…({} chars)", &s[..24], s.len()))
            }
            Value::Array(items) => Value::Array(items.iter().map(cut).collect()),
            Value::Object(map) => {
                Value::Object(map.iter().map(|(k, v)| (k.clone(), cut(v))).collect())
            }
            other => other.clone(),
        }
    }
    if value.is_null() {
        "(empty body)".to_string()
    } else {
        cut(value).to_string()
    }
}

fn step(n: u32, text: &str) {
    println!("\n{n}. {text}");
}

fn check(ok: bool, what: &str) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(format!("unexpected answer: {what}").into())
    }
}

/// A stand-in for a Kyber-1024 public key: the type byte 0x08 and 1568 random bytes. The server
/// checks only its size, type byte and signature; a real client uploads a real Kyber key
/// (chat.rs does).
fn fake_kyber_key() -> Vec<u8> {
    let mut key = vec![0x08u8];
    key.extend((0..1568).map(|_| rand::random::<u8>()));
    key
}

/// The body of `POST /device/...`: the identity key and the prekeys, every signed key signed by
/// the identity key with XEdDSA (as libsignal does; the server verifies each signature).
fn device_body(username: &str, registration_id: u32, identity: &KeyPair) -> Value {
    // The signed prekey: a medium-term X25519 key, signed by the identity key.
    let signed = KeyPair::generate();
    // One-time prekeys: each one is handed out to at most one other user, then gone.
    let one_time: Vec<Value> = (1..=3)
        .map(|id| json!({"keyId": id, "publicKey": b64::encode(&KeyPair::generate().public)}))
        .collect();
    // Kyber prekeys (for PQXDH): one-time ones, and a last-resort one that is never removed.
    let kyber = |id: u32| {
        let key = fake_kyber_key();
        json!({"keyId": id, "publicKey": b64::encode(&key), "signature": b64::encode(&identity.sign(&key))})
    };
    json!({
        // `<username>.<deviceId>`: one device per user; device ids are 1..=127.
        "address": format!("{username}.1"),
        // Public keys are 33 bytes: the type byte 0x05 and the X25519 key, in base64.
        "identityKey": b64::encode(&identity.public),
        "registrationId": registration_id,
        "preKeys": one_time,
        "signedPreKey": {
            "keyId": 1,
            "publicKey": b64::encode(&signed.public),
            "signature": b64::encode(&identity.sign(&signed.public)),
        },
        "kyberPreKeys": [kyber(1), kyber(2)],
        "lastResortKyberPreKey": kyber(100),
    })
}

async fn run() -> Result<(), Error> {
    let base = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("SIGNAL_SERVER_URL").ok())
        .unwrap_or_else(|| "http://127.0.0.1:8000".to_string());
    let server = Server {
        base: base.trim_end_matches('/').to_string(),
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?,
    };
    println!("signal-server quickstart against {}", server.base);

    step(0, "Is the server up? (no token needed)");
    server
        .call(StatusCode::OK, "GET", "/health", None, None)
        .await
        .map_err(|e| {
            format!("{e}\n(is the server running? `cargo run --release -- --data-dir ./data`)")
        })?;

    step(1, "Register two users");
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let alice = format!("alice_{tag}");
    let bob = format!("bob_{tag}");
    for name in [&alice, &bob] {
        let user = server
            .call(
                StatusCode::CREATED,
                "POST",
                "/auth/users",
                None,
                Some(json!({"username": name, "password": PASSWORD})),
            )
            .await?;
        check(user["username"] == json!(name), "registered username")?;
    }

    step(2, "Log in: each gets a JWT for the Authorization header");
    let mut tokens = Vec::new();
    for name in [&alice, &bob] {
        let answer = server
            .call(
                StatusCode::OK,
                "POST",
                "/auth/jwt/create",
                None,
                Some(json!({"username": name, "password": PASSWORD})),
            )
            .await?;
        let token = answer["token"].as_str().ok_or("no token in the answer")?;
        tokens.push(token.to_string());
    }
    let (alice_token, bob_token) = (&tokens[0], &tokens[1]);
    let me = server
        .call(
            StatusCode::OK,
            "GET",
            "/auth/users/me",
            Some(alice_token),
            None,
        )
        .await?;
    check(me["username"] == json!(alice), "GET /auth/users/me")?;

    step(
        3,
        "Create a device for each: identity key, signed prekey, one-time prekeys, Kyber prekeys",
    );
    // The registrationId names the device in later paths (`/messages/<regId>`, ...).
    let alice_reg: u32 = rand::random_range(1..=16380);
    let bob_reg: u32 = rand::random_range(1..=16380);
    let (alice_identity, bob_identity) = (KeyPair::generate(), KeyPair::generate());
    for (name, token, reg, identity) in [
        (&alice, alice_token, alice_reg, &alice_identity),
        (&bob, bob_token, bob_reg, &bob_identity),
    ] {
        let answer = server
            .call(
                StatusCode::CREATED,
                "POST",
                &format!("/device/{reg}"),
                Some(token),
                Some(device_body(name, reg, identity)),
            )
            .await?;
        check(answer["code"] == "device_created", "device_created")?;
    }
    let counts = server
        .call(
            StatusCode::OK,
            "GET",
            &format!("/prekeys/{bob_reg}"),
            Some(bob_token),
            None,
        )
        .await?;
    check(
        counts == json!({"preKeyCount": 3, "kyberPreKeyCount": 2}),
        "bob's prekey counts",
    )?;

    step(
        4,
        "alice fetches bob's prekey bundle (this uses up one of bob's one-time prekeys)",
    );
    // The path names whose bundle (bob) and the caller's own registrationId (alice's).
    let bundle = server
        .call(
            StatusCode::OK,
            "GET",
            &format!("/prekeybundle/{bob}/{alice_reg}"),
            Some(alice_token),
            None,
        )
        .await?;
    check(bundle["registrationId"] == bob_reg, "bundle registrationId")?;
    check(
        bundle["identityKey"] == json!(b64::encode(&bob_identity.public)),
        "bundle identityKey",
    )?;
    check(bundle["preKey"]["keyId"] == 1, "bundle one-time prekey id")?;
    check(
        bundle["kyberPreKey"]["keyId"] == 1,
        "bundle Kyber prekey id",
    )?;
    let counts = server
        .call(
            StatusCode::OK,
            "GET",
            &format!("/prekeys/{bob_reg}"),
            Some(bob_token),
            None,
        )
        .await?;
    check(
        counts == json!({"preKeyCount": 2, "kyberPreKeyCount": 1}),
        "bob's counts after the bundle",
    )?;
    // A real client would now run PQXDH with this bundle and encrypt with the resulting session.
    // We don't: see chat.rs for that.

    step(5, "alice sends bob a message");
    // `message` is a string: the JSON text of an object whose `registrationId` must be the
    // recipient device's (so a sender notices when the recipient's device changed). The server
    // stores it verbatim. Here the "ciphertext" is plain text in base64: NOT encrypted.
    let text = "Hello Bob! (not encrypted: this is only the quickstart)";
    let inner = json!({"registrationId": bob_reg, "type": 3, "body": b64::encode(text.as_bytes())});
    let sent = server
        .call(
            StatusCode::CREATED,
            "POST",
            &format!("/messages/{alice_reg}"),
            Some(alice_token),
            Some(json!({"recipient": bob, "message": inner.to_string()})),
        )
        .await?;
    let id = sent["id"].as_u64().ok_or("no message id")?;
    check(
        sent["senderAddress"] == format!("{alice}.1"),
        "senderAddress",
    )?;
    check(
        sent["recipientAddress"] == format!("{bob}.1"),
        "recipientAddress",
    )?;

    step(6, "bob reads his queue (reading deletes nothing)");
    let queue = server
        .call(
            StatusCode::OK,
            "GET",
            &format!("/messages/{bob_reg}"),
            Some(bob_token),
            None,
        )
        .await?;
    let queue = queue.as_array().ok_or("the queue is not a list")?;
    check(
        queue.len() == 1 && queue[0]["id"] == id,
        "one queued message",
    )?;
    let content: Value = serde_json::from_str(queue[0]["content"].as_str().ok_or("no content")?)?;
    let body = b64::decode(content["body"].as_str().ok_or("no body")?).ok_or("bad base64")?;
    check(body == text.as_bytes(), "message body")?;
    println!(
        "  bob got message {id} from {}: {:?}",
        queue[0]["senderAddress"],
        String::from_utf8_lossy(&body)
    );

    step(7, "bob deletes it (only the recipient can)");
    let deleted = server
        .call(
            StatusCode::OK,
            "DELETE",
            &format!("/messages/{bob_reg}"),
            Some(bob_token),
            Some(json!([id])),
        )
        .await?;
    check(deleted == json!(["success"]), "delete answer")?;
    let queue = server
        .call(
            StatusCode::OK,
            "GET",
            &format!("/messages/{bob_reg}"),
            Some(bob_token),
            None,
        )
        .await?;
    check(queue == json!([]), "empty queue after delete")?;

    println!("\nDone: {alice} and {bob} stay on the server. For real end-to-end encryption run");
    println!("`cargo run --release --example chat --features interop`.");
    Ok(())
}
