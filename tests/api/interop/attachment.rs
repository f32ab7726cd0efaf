//! Attachments between libsignal clients, as `examples/attachment.rs` sends one: sealed as
//! Signal's apps seal them, uploaded with TUS (resumed after an interruption), the pointer in a
//! Double Ratchet message, and opened by the receiver to the same bytes.

use rand::Rng as _;
use signal_server::client::Client as Http;

use super::client::attachments::cipher::{self, OpenError, Pointer};
use super::client::Client;
use super::{start_server, user, Must};

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0; n];
    rand::rng().fill(&mut bytes[..]);
    bytes
}

fn http_of(base: &str, user: &Client) -> Http {
    Http::new(base).unwrap().with_token(&user.token)
}

#[tokio::test]
async fn an_attachment_travels_sealed_and_opens_to_the_same_bytes() {
    let (_dir, server, api) = start_server().await;
    let mut alice = user(&api, "alice", 2, 2, Some(500)).await;
    let mut bob = user(&api, "bob", 2, 2, Some(500)).await;
    alice.start_session("bob").await.must("session");

    let plaintext = random_bytes(3 * 1024 * 1024 + 123);
    let sent = alice
        .send_attachment("bob", &plaintext, 256 * 1024)
        .await
        .must("send the attachment");
    let padded = cipher::padded_size(plaintext.len() as u64) as usize;
    assert_eq!(
        sent.blob_len,
        16 + (padded / 16 + 1) * 16 + 32,
        "IV, CBC, MAC"
    );

    // bob reads the message, decrypts the pointer and opens the blob.
    let queue = bob.queued().await.must("bob's queue");
    assert_eq!(queue.len(), 1);
    let (received, pointer) = bob.receive_pointer(&queue[0]).await.must("pointer");
    assert_eq!(received.sender, "alice");
    assert_eq!(pointer, sent.pointer);
    assert_eq!(bob.fetch_attachment(&pointer).await.must("open"), plaintext);

    // What the server holds is the blob, not the file; a range is a slice of it.
    let bob_http = http_of(&server.base, &bob);
    let blob = bob_http.download(&pointer.id).await.unwrap();
    assert_eq!(blob.len(), sent.blob_len);
    assert!(!blob.windows(64).any(|w| w == &plaintext[..64]));
    let range = bob_http
        .download_range(&pointer.id, 16, 16 + 99)
        .await
        .unwrap();
    assert_eq!(range, &blob[16..116]);

    // A pointer naming another blob (or a changed one) is refused before decryption.
    let other = alice
        .send_attachment("bob", b"another file", 1024)
        .await
        .must("second attachment");
    let swapped = Pointer {
        id: other.pointer.id.clone(),
        ..pointer.clone()
    };
    let refused = bob.fetch_attachment(&swapped).await;
    let message = refused.expect_err("a swapped blob is refused").to_string();
    assert!(
        message.contains(&OpenError::DigestMismatch.to_string()),
        "{message}"
    );

    // Only alice deletes it; then bob's pointer answers 404, what apps show as expired.
    let stranger = bob_http.delete_upload(&pointer.id).await;
    assert_eq!(
        stranger.unwrap_err().status_code(),
        Some((404, "no_such_attachment"))
    );
    http_of(&server.base, &alice)
        .delete_upload(&pointer.id)
        .await
        .unwrap();
    let gone = bob.fetch_attachment(&pointer).await.expect_err("deleted");
    assert!(gone.to_string().contains("no_such_attachment"), "{gone}");
    drop(server);
}

#[tokio::test]
async fn an_upload_interrupted_half_way_is_resumed_by_a_new_client() {
    let (_dir, server, api) = start_server().await;
    let mut alice = user(&api, "alice", 1, 1, Some(500)).await;
    let mut bob = user(&api, "bob", 1, 1, Some(500)).await;
    alice.start_session("bob").await.must("session");
    let plaintext = random_bytes(1024 * 1024);
    let sealed = cipher::seal(&plaintext);
    let len = sealed.blob.len() as u64;

    // Creation-with-upload of the first chunk, as Signal's apps upload, and one PATCH; then the
    // first client is gone.
    let first = http_of(&server.base, &alice);
    let upload = first
        .create_upload_with(&sealed.blob[..200_000], len)
        .await
        .unwrap();
    assert_eq!(upload.offset, 200_000);
    let held = first
        .patch_upload(&upload.id, 200_000, &sealed.blob[200_000..500_000], true)
        .await
        .unwrap();
    assert_eq!(held, 500_000);
    drop(first);

    let second = http_of(&server.base, &alice);
    assert_eq!(second.upload_offset(&upload.id).await.unwrap(), (held, len));
    second
        .resume_upload(&upload.id, &sealed.blob, 128 * 1024)
        .await
        .unwrap();
    let pointer = sealed.pointer(&upload.id);
    alice.send_pointer("bob", &pointer).await.must("send");

    let queue = bob.queued().await.must("queue");
    let (_, got) = bob.receive_pointer(&queue[0]).await.must("pointer");
    assert_eq!(bob.fetch_attachment(&got).await.must("open"), plaintext);
    drop(server);
}
