//! The typed client's attachment calls (`signal_server::client`, TUS 1.0.0) against the real
//! server: each route through its method, refusals as typed values (HEAD's without a body
//! too), and `upload` carrying on after the connection drops mid-chunk.

use crate::helpers::{CuttingProxy, TestServer};
use rand::Rng as _;
use sha2::{Digest, Sha256};
use signal_server::client::{Client, Error};

const KIB: usize = 1024;

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0; n];
    rand::rng().fill(&mut bytes[..]);
    bytes
}

fn refusal<T: std::fmt::Debug>(result: Result<T, Error>) -> (u16, String) {
    let e = result.expect_err("a refusal");
    let (status, code) = e
        .status_code()
        .unwrap_or_else(|| panic!("not a refusal: {e}"));
    (status, code.to_string())
}

async fn two_users(server: &TestServer) -> (Client, Client) {
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    (server.client_of(&alice), server.client_of(&bob))
}

#[tokio::test]
async fn attachment_routes_through_the_typed_client() {
    let server = TestServer::start().await;
    let (alice, bob) = two_users(&server).await;
    let blob = random_bytes(300 * KIB + 7);
    let len = blob.len() as u64;

    // Creation with the first chunk, then PATCHes, each answered with the new offset.
    let upload = alice
        .create_upload_with(&blob[..100 * KIB], len)
        .await
        .unwrap();
    assert_eq!(upload.id.len(), 22, "{upload:?}");
    assert_eq!(upload.location, format!("/attachments/{}", upload.id));
    assert_eq!(upload.offset, 100 * KIB as u64);
    assert_eq!(
        alice.upload_offset(&upload.id).await.unwrap(),
        (upload.offset, len)
    );
    let offset = alice
        .patch_upload(&upload.id, upload.offset, &blob[100 * KIB..200 * KIB], true)
        .await
        .unwrap();
    assert_eq!(offset, 200 * KIB as u64);

    // A stale offset is refused (409) and changes nothing; so is a stranger's HEAD, as if the
    // upload did not exist (404 from a body-less answer: the code comes from the status).
    let stale = alice.patch_upload(&upload.id, 0, &blob[..KIB], false).await;
    assert_eq!(refusal(stale), (409, "offset_mismatch".into()));
    let head = bob.upload_offset(&upload.id).await;
    assert_eq!(refusal(head), (404, "no_such_attachment".into()));
    // Unfinished: nobody downloads it yet.
    assert_eq!(refusal(bob.download(&upload.id).await).0, 404);

    // A new client, as after a restart, finishes it from the server's offset.
    let again = Client::new(&server.base)
        .unwrap()
        .with_token(alice.token().unwrap());
    again
        .resume_upload(&upload.id, &blob, 64 * KIB)
        .await
        .unwrap();
    assert_eq!(again.upload_offset(&upload.id).await.unwrap(), (len, len));
    let done = again.patch_upload(&upload.id, len, b"x", false).await;
    assert_eq!(refusal(done), (409, "upload_complete".into()));

    // Any account downloads it, whole or by range; only the uploader deletes it.
    assert_eq!(bob.download(&upload.id).await.unwrap(), blob);
    let range = bob.download_range(&upload.id, 1000, 1999).await.unwrap();
    assert_eq!(range, &blob[1000..2000]);
    let tail = bob
        .download_range(&upload.id, len - 5, len - 1)
        .await
        .unwrap();
    assert_eq!(tail, &blob[blob.len() - 5..]);
    let past = bob.download_range(&upload.id, len, len + 10).await;
    assert_eq!(refusal(past), (416, "range_not_satisfiable".into()));
    assert_eq!(refusal(bob.delete_upload(&upload.id).await).0, 404);
    alice.delete_upload(&upload.id).await.unwrap();
    assert_eq!(
        refusal(bob.download(&upload.id).await),
        (404, "no_such_attachment".into())
    );

    // `upload` in one call, with a chunk size that does not divide the length.
    let id = alice.upload(&blob, 70 * KIB).await.unwrap();
    assert_eq!(bob.download(&id).await.unwrap(), blob);
    // An empty one is refused at creation (Upload-Length is 1 or more), not retried.
    assert_eq!(refusal(alice.upload(&[], 70 * KIB).await).0, 400);
}

#[tokio::test]
async fn an_upload_cut_off_mid_chunk_resumes_and_arrives_whole() {
    let server = TestServer::start().await;
    let (alice, bob) = two_users(&server).await;
    // Three connections in a row are dropped part way through a 256 KiB chunk; `upload` asks
    // the server's offset after each and goes on from there.
    let proxy = CuttingProxy::start(&server.base, 700 * KIB, 3).await;
    let through = Client::new(&proxy.base)
        .unwrap()
        .with_token(alice.token().unwrap());
    let blob = random_bytes(3 * 1024 * KIB + 11);
    let id = through.upload(&blob, 256 * KIB).await.unwrap();
    assert_eq!(proxy.cuts_left(), 0, "every planned cut happened");

    let got = bob.download(&id).await.unwrap();
    assert_eq!(got.len(), blob.len());
    assert_eq!(Sha256::digest(&got), Sha256::digest(&blob), "an exact copy");
}

#[tokio::test]
async fn an_upload_gives_up_when_every_connection_drops() {
    let server = TestServer::start().await;
    let (alice, _) = two_users(&server).await;
    let proxy = CuttingProxy::start(&server.base, 100 * KIB, usize::MAX).await;
    let through = Client::new(&proxy.base)
        .unwrap()
        .with_token(alice.token().unwrap());
    let result = through.upload(&random_bytes(1024 * KIB), 256 * KIB).await;
    assert!(matches!(result, Err(Error::Transport(_))), "{result:?}");
}
