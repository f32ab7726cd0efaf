//! attachment: an end-to-end-encrypted file sent through signal-server the way Signal's apps
//! send pictures and voice notes.
//!
//! alice and bob (two accounts, real libsignal keys, as in the chat example) run in this one
//! process and share nothing but the server:
//!
//!   1. alice seals the file: a random 64-byte key (AES-256-CBC ‖ HMAC-SHA256), the plaintext
//!      zero-padded to Signal's size buckets, blob = IV ‖ ciphertext ‖ MAC, and the blob's
//!      SHA-256 as its digest;
//!   2. she uploads the blob with TUS: the first chunk in the creating POST, PATCHes up to half
//!      way, then, as if the app had been killed, a new client asks the server's offset
//!      (HEAD) and sends the rest from there;
//!   3. she sends bob the pointer (id, key, digest, size) inside a Double Ratchet message;
//!   4. bob decrypts the message, downloads the blob, checks digest and MAC, decrypts it, strips
//!      the padding and gets the file back, byte for byte;
//!   5. alice deletes the attachment: bob's pointer now answers 404, what apps show as expired.
//!
//! Run a server, then this:
//!
//! ```sh
//! cargo run --release -- --data-dir ./data                        # terminal 1
//! cargo run --release --example attachment --features interop     # terminal 2 (needs protoc)
//! cargo run --release --example attachment --features interop -- --file photo.jpg
//! ```
//!
//! The server URL is `http://127.0.0.1:8000`, or `SIGNAL_SERVER_URL`, or the first argument,
//! as for the chat example. `--help` lists the flags.

#[path = "support/libsignal_client.rs"]
mod client;

use std::path::PathBuf;

use clap::Parser;
use client::attachments::cipher;
use client::{fail, Api, Client, Result};
use rand::Rng as _;
use reqwest::StatusCode;
use serde_json::json;
use sha2::{Digest, Sha256};
use signal_server::client as http;

const PASSWORD: &str = "tangerine-Voyage-42";

/// Sends a file from alice to bob as an encrypted attachment (TUS upload, resumed half way) and
/// checks bob gets it back unchanged.
#[derive(Parser)]
struct Args {
    /// The server.
    #[arg(env = "SIGNAL_SERVER_URL", default_value = "http://127.0.0.1:8000")]
    server: String,
    /// The file to send; without it, 5 MiB of random bytes.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Bytes per PATCH.
    #[arg(long, default_value_t = 1 << 20)]
    chunk_size: usize,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("attachment failed: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let api = Api::new(&args.server);
    println!("server: {}", api.base);
    api.expect(StatusCode::OK, "GET", "/health", None, None)
        .await
        .map_err(|e| format!("is the server running at {}? {e}", args.server))?;
    let plaintext = match &args.file {
        Some(path) => std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
        None => {
            let mut bytes = vec![0; 5 << 20];
            rand::rng().fill(&mut bytes[..]);
            bytes
        }
    };

    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let mut alice = Client::register(&api, &format!("alice_{tag}"), PASSWORD).await?;
    let mut bob = Client::register(&api, &format!("bob_{tag}"), PASSWORD).await?;
    for user in [&mut alice, &mut bob] {
        user.create_device(1..=2, 1..=2, Some(1000)).await?;
    }
    alice.start_session(&bob.username).await?;
    println!(
        "{} and {}: registered, keys uploaded, session started",
        alice.username, bob.username
    );

    // 1. Seal.
    let sealed = cipher::seal(&plaintext);
    println!(
        "\n{}: sealed {} bytes (padded to {}) into a blob of {} bytes; SHA-256 of the file {}",
        alice.username,
        plaintext.len(),
        cipher::padded_size(plaintext.len() as u64),
        sealed.blob.len(),
        hex8(&Sha256::digest(&plaintext))
    );

    // 2. Upload, interrupted half way and resumed by a new client.
    let id = upload_interrupted(&api, &alice.token, &sealed.blob, args.chunk_size.max(1)).await?;

    // 3. The pointer, end-to-end encrypted.
    let pointer = sealed.pointer(&id);
    let stored = alice.send_pointer(&bob.username, &pointer).await?;
    println!(
        "{} -> {}: the pointer in message #{} ({} bytes of ciphertext on the server)",
        alice.username,
        bob.username,
        stored["id"],
        stored["content"].as_str().unwrap_or_default().len()
    );

    // 4. bob reads his queue, decrypts the pointer, downloads and opens the blob.
    let queue = bob.queued().await?;
    let message = queue.first().ok_or("bob's queue is empty")?;
    let (received, got_pointer) = bob.receive_pointer(message).await?;
    bob.delete_messages(&[received.id]).await?;
    let bob_http = http::Client::new(&api.base)?.with_token(&bob.token);
    let iv = bob_http.download_range(&got_pointer.id, 0, 15).await?;
    println!(
        "{}: got the pointer from {}; the blob's IV (its first 16 bytes, by Range) starts {}",
        bob.username,
        received.sender,
        hex8(&iv)
    );
    let opened = bob.fetch_attachment(&got_pointer).await?;
    if opened != plaintext {
        return fail("bob's file differs from alice's");
    }
    println!(
        "{}: downloaded {} bytes, digest and MAC verified, decrypted to {} bytes, SHA-256 {}: \
         the same file",
        bob.username,
        sealed.blob.len(),
        opened.len(),
        hex8(&Sha256::digest(&opened))
    );

    // 5. alice deletes it; bob's pointer now answers 404.
    let alice_http = http::Client::new(&api.base)?.with_token(&alice.token);
    alice_http.delete_upload(&id).await?;
    match bob_http.download(&id).await {
        Err(e) if e.status_code() == Some((404, "no_such_attachment")) => {
            println!(
                "\n{}: deleted it; {} now gets {e}",
                alice.username, bob.username
            )
        }
        other => return fail(format!("a deleted attachment answered {other:?}")),
    }

    for user in [&alice, &bob] {
        let body = json!({"current_password": PASSWORD});
        api.expect(
            StatusCode::NO_CONTENT,
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

/// The creating POST carries the first chunk; PATCHes follow up to half the blob; then a new
/// client (nothing shared with the first but the id) resumes from the server's offset.
async fn upload_interrupted(api: &Api, token: &str, blob: &[u8], chunk: usize) -> Result<String> {
    let first = http::Client::new(&api.base)?.with_token(token);
    let len = blob.len() as u64;
    let upload = first
        .create_upload_with(&blob[..chunk.min(blob.len())], len)
        .await?;
    println!(
        "POST /attachments: created {} with the first {} bytes",
        upload.location, upload.offset
    );
    let mut offset = upload.offset;
    while offset < len / 2 {
        let end = blob.len().min(offset as usize + chunk);
        offset = first
            .patch_upload(&upload.id, offset, &blob[offset as usize..end], true)
            .await?;
        println!("PATCH: the server holds {offset} of {len} bytes");
    }
    drop(first);
    println!("(the app is killed here; a new one resumes)");

    let second = http::Client::new(&api.base)?.with_token(token);
    let (held, length) = second.upload_offset(&upload.id).await?;
    println!("HEAD: the server holds {held} of {length} bytes; sending the rest");
    second.resume_upload(&upload.id, blob, chunk).await?;
    let (held, _) = second.upload_offset(&upload.id).await?;
    println!("HEAD: {held} of {length} bytes; the upload is complete");
    Ok(upload.id)
}

/// The first 8 bytes as hex, enough to compare by eye.
fn hex8(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
