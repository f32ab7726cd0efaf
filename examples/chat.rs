//! chat: a real end-to-end-encrypted Signal conversation through signal-server.
//!
//! Two clients, alice and bob, run in this one process. Each has its own account, its own device
//! and its own libsignal store (identity key, prekeys, sessions). They never share anything but
//! the server:
//!
//!   1. both register, log in and upload real libsignal public keys (identity key, signed EC
//!      prekey, one-time EC prekeys, one-time Kyber-1024 prekeys and a last-resort Kyber key,
//!      every signed key signed by the identity key);
//!   2. both open the live WebSocket `GET /messages/<regId>/ws`;
//!   3. alice fetches bob's prekey bundle and starts a session with PQXDH (X3DH + Kyber);
//!   4. they talk: every line is encrypted with the Double Ratchet by the sender, stored by the
//!      server (which only ever sees ciphertext), pushed live to the recipient, decrypted there
//!      and acknowledged (which deletes it from the server).
//!
//! Run a server, then this:
//!
//! ```sh
//! cargo run --release -- --data-dir ./data          # terminal 1
//! cargo run --release --example chat --features interop   # terminal 2 (needs protoc)
//! ```
//!
//! The server URL is `http://127.0.0.1:8000`, or `SIGNAL_SERVER_URL`, or the first argument.
//! The `interop` feature pulls in libsignal (`libsignal-protocol-syft`, AGPL-3.0, needs `protoc`
//! to build); the server binary never links it.

#[path = "support/libsignal_client.rs"]
mod client;

use client::{Api, Client, Result};
use libsignal_protocol_syft::CiphertextMessageType;
use reqwest::StatusCode;
use serde_json::json;

const PASSWORD: &str = "tangerine-Voyage-42";

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("chat failed: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<()> {
    let base = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("SIGNAL_SERVER_URL").ok())
        .unwrap_or_else(|| "http://127.0.0.1:8000".to_string());
    let api = Api::new(&base);
    println!("server: {}", api.base);
    api.expect(StatusCode::OK, "GET", "/health", None, None)
        .await
        .map_err(|e| format!("is the server running at {base}? {e}"))?;

    // 1. Two accounts with real libsignal keys. Names are random so the example can run again
    //    against the same server.
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let mut alice = Client::register(&api, &format!("alice_{tag}"), PASSWORD).await?;
    let mut bob = Client::register(&api, &format!("bob_{tag}"), PASSWORD).await?;
    for user in [&mut alice, &mut bob] {
        let up = user.create_device(1..=5, 1..=5, Some(1000)).await?;
        println!(
            "{}: device created (registrationId {}), uploaded signed prekey {}, one-time EC \
             prekeys {:?}, one-time Kyber prekeys {:?}, last-resort Kyber prekey {:?}",
            user.username,
            user.registration_id,
            up.signed_pre_key_id,
            up.pre_key_ids,
            up.kyber_pre_key_ids,
            up.last_resort_kyber_id
                .map_or("none".to_string(), |id| id.to_string())
        );
    }

    // 2. Both go online. The server first sends whatever is queued, then `queue_empty`.
    let mut alice_ws = alice.connect().await?;
    let mut bob_ws = bob.connect().await?;
    for (name, ws) in [
        (&alice.username, &mut alice_ws),
        (&bob.username, &mut bob_ws),
    ] {
        let backlog = ws.backlog().await?;
        println!("{name}: online over WebSocket, {} queued", backlog.len());
    }

    // 3. alice fetches bob's bundle (which uses up one of his one-time prekeys on the server)
    //    and runs PQXDH locally. bob is not involved yet.
    let bundle = alice.start_session(&bob.username).await?;
    println!(
        "{}: fetched {}'s bundle (signed prekey {}, one-time prekey {}, Kyber prekey {}) and \
         started a session",
        alice.username,
        bob.username,
        bundle["signedPreKey"]["keyId"],
        bundle["preKey"]["keyId"],
        bundle["kyberPreKey"]["keyId"]
    );
    let (ec, kyber) = bob.prekey_counts().await?;
    println!(
        "{}: the server now holds {ec} one-time EC and {kyber} one-time Kyber prekeys",
        bob.username
    );

    // 4. The conversation. alice's first message is a PreKey message (it carries what bob needs
    //    to build the same session); after bob's first reply both sides send plain Double
    //    Ratchet ("Whisper") messages.
    let script: [(bool, &str); 6] = [
        (true, "Hi Bob! This is end-to-end encrypted."),
        (false, "Hi Alice. The server only sees ciphertext."),
        (
            true,
            "PQXDH: X3DH plus a Kyber-1024 key, so it is post-quantum too.",
        ),
        (false, "And every message moves the Double Ratchet forward."),
        (true, "Lovely. Talk soon!"),
        (false, "Bye!"),
    ];
    for (from_alice, text) in script {
        let (sender, receiver, receiver_ws) = if from_alice {
            (&mut alice, &mut bob, &mut bob_ws)
        } else {
            (&mut bob, &mut alice, &mut alice_ws)
        };
        let peer = receiver.username.clone();
        let (kind, stored) = sender.send(&peer, text).await?;
        let content = stored["content"].as_str().unwrap_or_default();
        println!(
            "\n{} -> {}: {} message #{} ({} bytes of JSON on the server: {}…)",
            sender.username,
            peer,
            kind_name(kind),
            stored["id"],
            content.len(),
            content.chars().take(60).collect::<String>()
        );
        // Pushed live: no polling.
        let message = receiver_ws.next_message().await?;
        let got = receiver.decrypt(&message).await?;
        if got.text != text || got.sender != sender.username {
            return Err(format!("decrypted {got:?}, expected {text:?}").into());
        }
        receiver_ws.ack(&[got.id]).await?;
        println!(
            "{} decrypted #{} from {}: {:?} (acknowledged, so the server deletes it)",
            receiver.username, got.id, got.sender, got.text
        );
    }

    // Nothing is left on the server once everything is acknowledged.
    for user in [&alice, &bob] {
        let mut left = 0;
        for _ in 0..50 {
            left = user.queued().await?.len();
            if left == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if left != 0 {
            return Err(format!("{}: {left} messages still queued", user.username).into());
        }
    }
    println!("\nboth queues are empty");

    // Clean up: close the sockets and delete both accounts (their devices and keys go too).
    alice_ws.close().await?;
    bob_ws.close().await?;
    for user in [&alice, &bob] {
        api.expect(
            StatusCode::NO_CONTENT,
            "DELETE",
            "/auth/users/me",
            Some(&user.token),
            Some(&json!({"current_password": PASSWORD})),
        )
        .await?;
    }
    println!("deleted both accounts; done");
    Ok(())
}

fn kind_name(kind: CiphertextMessageType) -> &'static str {
    match kind {
        CiphertextMessageType::PreKey => "PreKey",
        CiphertextMessageType::Whisper => "Whisper (Double Ratchet)",
        CiphertextMessageType::SenderKey => "SenderKey",
        CiphertextMessageType::Plaintext => "Plaintext",
    }
}
