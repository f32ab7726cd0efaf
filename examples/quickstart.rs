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

use std::sync::Arc;

use serde_json::{json, Value};
use signal_server::client::{Client, Deleted, NewDevice, NewUser, PreKey, SignedPreKey};
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

/// A client that prints every request and answer. With rate limits on (the default), too many
/// requests from one place get 429 `throttled` and a `Retry-After` in seconds: the client waits
/// that long and tries again, up to 3 times.
fn client(base: &str) -> Result<Client, Error> {
    let trace = Arc::new(
        |method: &signal_server::client::Method,
         path: &str,
         status: Option<signal_server::client::StatusCode>,
         body: &[u8]| {
            match status {
                None => println!("  -> {method} {path}"),
                Some(status) => {
                    let value = serde_json::from_slice(body).unwrap_or(Value::Null);
                    println!("  <- {status} {}", shorten(&value));
                }
            }
        },
    );
    Ok(Client::new(base)?.with_retries(3).with_trace(trace))
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

/// The body of `POST /device/...`: the identity key and the prekeys, every signed key signed by
/// the identity key with XEdDSA (as libsignal does; the server verifies each signature).
fn device_body(username: &str, registration_id: u32, identity: &KeyPair) -> NewDevice {
    // Kyber prekeys (for PQXDH): one-time ones, and a last-resort one that is never removed.
    // These are stand-ins: the type byte 0x08 and 1568 random bytes. The server checks only
    // their size, type byte and signature; a real client uploads a real Kyber key (chat.rs
    // does).
    let kyber = |id: u32| SignedPreKey::random_kyber(identity, id);
    NewDevice {
        // `<username>.<deviceId>`: one device per user; device ids are 1..=127.
        address: format!("{username}.1"),
        // Public keys are 33 bytes: the type byte 0x05 and the X25519 key (base64 on the wire).
        identity_key: identity.public.to_vec(),
        registration_id,
        // One-time prekeys: each one is handed out to at most one other user, then gone.
        pre_keys: (1..=3).map(PreKey::generate).collect(),
        // The signed prekey: a medium-term X25519 key, signed by the identity key.
        signed_pre_key: SignedPreKey::generate_ec(identity, 1),
        kyber_pre_keys: vec![kyber(1), kyber(2)],
        last_resort_kyber_pre_key: Some(kyber(100)),
    }
}

async fn run() -> Result<(), Error> {
    let base = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("SIGNAL_SERVER_URL").ok())
        .unwrap_or_else(|| "http://127.0.0.1:8000".to_string());
    let server = client(&base)?;
    println!("signal-server quickstart against {}", server.base());

    step(0, "Is the server up? (no token needed)");
    server.health().await.map_err(|e| {
        format!("{e}\n(is the server running? `cargo run --release -- --data-dir ./data`)")
    })?;

    step(1, "Register two users");
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let alice = format!("alice_{tag}");
    let bob = format!("bob_{tag}");
    for name in [&alice, &bob] {
        let new = NewUser {
            username: name.clone(),
            password: PASSWORD.into(),
            ..NewUser::default()
        };
        let user = server.register(&new).await?;
        check(&user.username == name, "registered username")?;
    }

    step(2, "Log in: each gets a JWT for the Authorization header");
    // Every authenticated route takes `Authorization: Bearer <token>`: `with_token` adds it.
    let alice_api = server.with_token(&server.login(&alice, PASSWORD).await?);
    let bob_api = server.with_token(&server.login(&bob, PASSWORD).await?);
    let me = alice_api.me().await?;
    check(me.username == alice, "GET /auth/users/me")?;

    step(
        3,
        "Create a device for each: identity key, signed prekey, one-time prekeys, Kyber prekeys",
    );
    // The registrationId names the device in later paths (`/messages/<regId>`, ...).
    let alice_reg: u32 = rand::random_range(1..=16380);
    let bob_reg: u32 = rand::random_range(1..=16380);
    let (alice_identity, bob_identity) = (KeyPair::generate(), KeyPair::generate());
    for (name, api, reg, identity) in [
        (&alice, &alice_api, alice_reg, &alice_identity),
        (&bob, &bob_api, bob_reg, &bob_identity),
    ] {
        let answer = api.create_device(&device_body(name, reg, identity)).await?;
        check(answer.code == "device_created", "device_created")?;
    }
    let counts = bob_api.stock(bob_reg).await?;
    check(
        (counts.pre_key_count, counts.kyber_pre_key_count) == (3, 2),
        "bob's prekey counts",
    )?;

    step(
        4,
        "alice fetches bob's prekey bundle (this uses up one of bob's one-time prekeys)",
    );
    // The path names whose bundle (bob) and the caller's own registrationId (alice's).
    let bundle = alice_api.bundle(&bob, alice_reg).await?;
    check(bundle.registration_id == bob_reg, "bundle registrationId")?;
    check(
        bundle.identity_key == bob_identity.public,
        "bundle identityKey",
    )?;
    check(
        bundle.pre_key.map(|k| k.key_id) == Some(1),
        "bundle one-time prekey id",
    )?;
    check(
        bundle.kyber_pre_key.map(|k| k.key_id) == Some(1),
        "bundle Kyber prekey id",
    )?;
    let counts = bob_api.stock(bob_reg).await?;
    check(
        (counts.pre_key_count, counts.kyber_pre_key_count) == (2, 1),
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
    let sent = alice_api.send(alice_reg, &bob, &inner.to_string()).await?;
    let id = sent.id;
    check(sent.sender_address == format!("{alice}.1"), "senderAddress")?;
    check(
        sent.recipient_address == format!("{bob}.1"),
        "recipientAddress",
    )?;

    step(6, "bob reads his queue (reading deletes nothing)");
    let queue = bob_api.fetch(bob_reg, None).await?;
    check(queue.len() == 1 && queue[0].id == id, "one queued message")?;
    let content: Value = serde_json::from_str(&queue[0].content)?;
    let body = b64::decode(content["body"].as_str().ok_or("no body")?).ok_or("bad base64")?;
    check(body == text.as_bytes(), "message body")?;
    println!(
        "  bob got message {id} from {:?}: {:?}",
        queue[0].sender_address,
        String::from_utf8_lossy(&body)
    );

    step(7, "bob deletes it (only the recipient can)");
    let deleted = bob_api.delete_messages(bob_reg, &[id]).await?;
    check(deleted == [Deleted::Success], "delete answer")?;
    let queue = bob_api.fetch(bob_reg, None).await?;
    check(queue.is_empty(), "empty queue after delete")?;

    println!("\nDone: {alice} and {bob} stay on the server. For real end-to-end encryption run");
    println!("`cargo run --release --example chat --features interop`.");
    Ok(())
}
