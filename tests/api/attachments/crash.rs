//! `kill -9` of the built binary mid-upload: after the restart HEAD reports at least the offset
//! acknowledged before the crash and at most what was sent, and resuming from it gives an exact
//! copy.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::*;

#[tokio::test]
async fn a_server_killed_mid_upload_keeps_what_it_acknowledged_and_the_upload_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Binary::start(dir.path(), &[]).await;
    let api = server.api();
    server.register("alice").await;
    let token = server.login("alice").await;
    let data = bytes(24 << 20, 20);
    let path = create(&api, &token, data.len() as u64).await;

    // One PATCH of everything, sent up to 18 MiB: the server makes it durable every 8 MiB.
    let sent = 18 << 20;
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nTus-Resumable: 1.0.0\r\n\
         Upload-Offset: 0\r\nContent-Type: {OCTETS}\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&data[..sent]).await.unwrap();
    stream.flush().await.unwrap();
    let deadline = Instant::now() + BINARY_BOUND;
    let acknowledged = loop {
        let offset = offset_of(&api, &token, &path).await;
        if offset >= 16 << 20 {
            break offset;
        }
        assert!(Instant::now() < deadline, "the offset stayed at {offset}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    server.sigkill();
    drop(stream);

    let server = Binary::start(dir.path(), &[]).await;
    let api = server.api();
    let token = server.login("alice").await;
    let offset = offset_of(&api, &token, &path).await;
    assert!(
        offset >= acknowledged,
        "acknowledged {acknowledged}, after the crash {offset}"
    );
    assert!(offset <= sent as u64, "more than was sent: {offset}");
    let a = patch(&api, &token, &path, offset, &data[offset as usize..]).await;
    assert_eq!(
        a.status,
        StatusCode::NO_CONTENT,
        "resume: {}",
        String::from_utf8_lossy(&a.body)
    );
    let got = download(&api, &token, &path).await;
    assert!(
        got.body == data,
        "the resumed upload differs from the original"
    );
}
