//! linked: one account, two devices, and a message that reaches both.
//!
//! alice has a phone and links a desktop to her account: the desktop gets her identity key pair
//! (from the phone, over the client's own channel; here, in memory) and keys of its own. bob
//! fetches alice's bundle, one entry per device, starts a libsignal session (PQXDH) with each,
//! and sends one ciphertext per device in a single request. Both devices receive theirs live
//! and decrypt it; the desktop answers, and bob decrypts the answer.
//!
//! ```sh
//! cargo run --release -- --data-dir ./data                                     # terminal 1
//! cargo run --release --example linked --features interop -- --server http://127.0.0.1:8000
//! ```
//!
//! The server URL is `--server URL`, or the first argument, or `SIGNAL_SERVER_URL`, or
//! `http://127.0.0.1:8000`. Like `chat`, it needs the `interop` feature (libsignal).

#[path = "support/libsignal_client.rs"]
mod client;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("linked failed: {e}");
        std::process::exit(1);
    }
}

async fn run() -> client::Result<()> {
    use client::{Api, Client};

    const PASSWORD: &str = "tangerine-Voyage-42";
    let api = Api::new(&server_url());
    println!("server: {}", api.base);
    let ok = reqwest::StatusCode::OK;
    api.expect(ok, "GET", "/health", None, None)
        .await
        .map_err(|e| format!("is the server running at {}? {e}", api.base))?;

    // alice's phone is her primary device; her desktop is linked to it.
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let mut phone = Client::register(&api, &format!("alice_{tag}"), PASSWORD).await?;
    phone.create_device(1..=5, 1..=5, Some(1000)).await?;
    let mut desktop = phone.new_install()?;
    desktop.link(1..=5, 1..=5, Some(1000)).await?;
    let alice = phone.username.clone();
    for d in phone.devices().await? {
        let reg = d.info.registration_id;
        println!("{alice}: device {} (registrationId {reg})", d.device_id);
    }
    let mut bob = Client::register(&api, &format!("bob_{tag}"), PASSWORD).await?;
    bob.create_device(1..=5, 1..=5, Some(1000)).await?;

    // Both of alice's devices go online.
    let mut phone_ws = phone.connect().await?;
    let mut desktop_ws = desktop.connect().await?;
    phone_ws.backlog().await?;
    desktop_ws.backlog().await?;

    // bob: one bundle per device of alice, a session with each, one send for all of them.
    let bundles = bob.start_sessions(&alice).await?;
    println!(
        "{}: fetched {alice}'s bundle: {} devices",
        bob.username,
        bundles.devices.len()
    );
    let text = "Hi Alice, wherever you are reading this.";
    let (_, sent) = bob.send_all(&alice, text).await?;
    println!(
        "{} -> {alice}: {} ciphertexts, one per device",
        bob.username,
        sent.messages.len()
    );
    for (device, ws) in [(&mut phone, &mut phone_ws), (&mut desktop, &mut desktop_ws)] {
        let got = device.decrypt(&ws.next_message().await?).await?;
        ws.ack(&[got.id]).await?;
        println!("{alice} device {}: {:?}", device.device_id, got.text);
        if got.text != text {
            return Err("decrypted something else".into());
        }
    }

    // The desktop answers bob's one device.
    desktop
        .send_all(&bob.username, "Got it on my desktop.")
        .await?;
    let queue = bob.queued().await?;
    let got = bob
        .decrypt(queue.first().ok_or("no answer for bob")?)
        .await?;
    bob.delete_messages(&[got.id]).await?;
    println!(
        "{} got from {}: {:?}",
        bob.username, queue[0]["senderAddress"], got.text
    );

    // Clean up: deleting an account removes all its devices.
    phone_ws.close().await?;
    desktop_ws.close().await?;
    for user in [&phone, &bob] {
        let body = serde_json::json!({"current_password": PASSWORD});
        let no_content = reqwest::StatusCode::NO_CONTENT;
        api.expect(
            no_content,
            "DELETE",
            "/auth/users/me",
            Some(&user.token),
            Some(&body),
        )
        .await?;
    }
    println!("deleted both accounts; done");
    Ok(())
}

/// `--server URL`, or the first argument, or `SIGNAL_SERVER_URL`, or the default.
fn server_url() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let given = match args.as_slice() {
        [flag, url] if flag == "--server" => Some(url.clone()),
        [url] => Some(url.clone()),
        _ => None,
    };
    given
        .or_else(|| std::env::var("SIGNAL_SERVER_URL").ok())
        .unwrap_or_else(|| "http://127.0.0.1:8000".to_string())
}
