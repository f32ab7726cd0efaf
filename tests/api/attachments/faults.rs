//! Bodies that go wrong: two PATCHes racing for one upload, a connection cut mid-body, a full
//! disk mid-upload. Nothing acknowledged is lost, nothing refused is kept, bytes never mix, and
//! the client resumes from what HEAD says to an exact copy.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

/// Starts a PATCH over raw TCP announcing `length` body bytes and sends `first` of them; the
/// connection, for the test to go on with (or cut).
async fn start_patch(
    s: &TestServer,
    token: &str,
    path: &str,
    offset: u64,
    length: usize,
    first: &[u8],
) -> TcpStream {
    let mut stream = TcpStream::connect(addr(s)).await.expect("connect");
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nTus-Resumable: 1.0.0\r\n\
         Upload-Offset: {offset}\r\nContent-Type: {OCTETS}\r\nContent-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(first).await.expect("body");
    stream.flush().await.expect("flush");
    stream
}

/// Reads an answer's status line from a raw connection.
async fn status_of(stream: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(RAW_BOUND, stream.read(&mut buf))
        .await
        .expect("an answer within the bound")
        .expect("read");
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Polls HEAD until `done` holds for the offset (a cut request finishes in the background).
async fn offset_when(s: &TestServer, token: &str, path: &str, done: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + RAW_BOUND;
    loop {
        let offset = offset_of(s, token, path).await;
        if done(offset) {
            return offset;
        }
        assert!(Instant::now() < deadline, "offset stayed at {offset}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn of_two_patches_at_one_offset_one_wins_and_the_bytes_never_mix() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let len = 10 << 20;
    let mine = bytes(len, 10);
    let theirs = bytes(len, 11);
    let path = create(&s, &alice.token, len as u64).await;

    // The first sends past its first durable step (8 MiB) and holds on: once HEAD shows that
    // step, the first surely holds the upload.
    let sent = 9 << 20;
    let mut first = start_patch(&s, &alice.token, &path, 0, len, &mine[..sent]).await;
    let held = offset_when(&s, &alice.token, &path, |o| o > 0).await;
    // A second PATCH at that very offset while the first is still sending: refused, and none
    // of it kept.
    let second = patch(&s, &alice.token, &path, held, &theirs[held as usize..]).await;
    second.refused(409, "offset_mismatch", "a PATCH racing another");
    first.write_all(&mine[sent..]).await.unwrap();
    assert!(
        status_of(&mut first).await.contains("204"),
        "the first PATCH failed"
    );
    assert!(
        download(&s, &alice.token, &path).await.body == mine,
        "bytes of the two mixed"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_body_cut_off_keeps_what_arrived_and_the_upload_resumes_to_an_exact_copy() {
    let s = TestServer::start().await;
    let alice = s.user("alice").await;
    let data = bytes(1_000_000, 12);
    let path = create(&s, &alice.token, data.len() as u64).await;

    let cut = start_patch(&s, &alice.token, &path, 0, data.len(), &data[..300_000]).await;
    // Wait until the server has read it all, then hang up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(cut);
    let offset = offset_when(&s, &alice.token, &path, |o| o > 0).await;
    assert!(offset <= 300_000, "more kept than sent: {offset}");
    // The cut request gave its lease back: the client resumes at once.
    let a = patch(&s, &alice.token, &path, offset, &data[offset as usize..]).await;
    assert_eq!(
        a.status,
        StatusCode::NO_CONTENT,
        "resume: {}",
        String::from_utf8_lossy(&a.body)
    );
    assert!(
        download(&s, &alice.token, &path).await.body == data,
        "the resumed upload differs"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_full_disk_mid_upload_answers_507_keeps_what_was_acknowledged_and_resumes() {
    let tmpfs = match crate::faults::Tmpfs::mount("24m") {
        Ok(t) => t,
        Err(why) => {
            eprintln!("SKIPPED a_full_disk_mid_upload_answers_507_…: {why}");
            return;
        }
    };
    let dir = tmpfs.path().join("blobs");
    let dir_flag = dir.display().to_string();
    // No room kept for the database: the disk itself refuses the write.
    let flags = [
        "--no-rate-limit",
        "--attachments-dir",
        &dir_flag,
        "--reserve-mb",
        "0",
    ];
    let s = TestServer::start_with(&flags).await;
    if s.app.config.attachments_s3.is_some() {
        eprintln!("SKIPPED a_full_disk_…: the blobs are in S3");
        return;
    }
    let alice = s.user("alice").await;
    let chunk = 2 << 20;
    let data = bytes(12 << 20, 13);
    let path = create(&s, &alice.token, data.len() as u64).await;
    let filler = tmpfs.fill(5 << 20);
    // Two chunks fit, the third does not.
    for at in [0, chunk] {
        let a = patch(&s, &alice.token, &path, at as u64, &data[at..at + chunk]).await;
        assert_eq!(a.status, StatusCode::NO_CONTENT);
    }
    let mut full = None;
    for at in (2 * chunk..data.len()).step_by(chunk) {
        let a = patch(&s, &alice.token, &path, at as u64, &data[at..at + chunk]).await;
        if a.status != StatusCode::NO_CONTENT {
            a.refused(507, "insufficient_storage", "a PATCH on a full disk");
            full = Some(at as u64);
            break;
        }
    }
    let full = full.expect("the disk never filled");
    assert_eq!(
        offset_of(&s, &alice.token, &path).await,
        full,
        "acknowledged bytes lost"
    );
    std::fs::remove_file(filler).unwrap();
    let a = patch(&s, &alice.token, &path, full, &data[full as usize..]).await;
    assert_eq!(
        a.status,
        StatusCode::NO_CONTENT,
        "resume: {}",
        String::from_utf8_lossy(&a.body)
    );
    assert!(download(&s, &alice.token, &path).await.body == data);
    s.stop().await;
}

#[tokio::test]
async fn uploads_leave_the_room_the_database_keeps_free() {
    let tmpfs = match crate::faults::Tmpfs::mount("16m") {
        Ok(t) => t,
        Err(why) => {
            eprintln!("SKIPPED uploads_leave_the_room_the_database_keeps_free: {why}");
            return;
        }
    };
    let dir_flag = tmpfs.path().join("blobs").display().to_string();
    // 2 MiB kept free: of 16 MiB, about 14 go to uploads.
    let flags = [
        "--no-rate-limit",
        "--attachments-dir",
        &dir_flag,
        "--reserve-mb",
        "1",
    ];
    let s = TestServer::start_with(&flags).await;
    if s.app.config.attachments_s3.is_some() {
        eprintln!("SKIPPED uploads_leave_the_room_…: the blobs are in S3");
        return;
    }
    let alice = s.user("alice").await;
    let data = bytes(15 << 20, 14);
    let path = create(&s, &alice.token, data.len() as u64).await;
    let mut at = 0;
    let refused = loop {
        let a = patch(
            &s,
            &alice.token,
            &path,
            at as u64,
            &data[at..at + (1 << 20)],
        )
        .await;
        if a.status != StatusCode::NO_CONTENT {
            break a;
        }
        at += 1 << 20;
        assert!(at < data.len(), "the whole upload went through");
    };
    refused.refused(507, "insufficient_storage", "an upload into the kept room");
    assert_eq!(offset_of(&s, &alice.token, &path).await, at as u64);
    let free = free_bytes(tmpfs.path());
    assert!(free >= 2 << 20, "only {free} bytes left free");
    s.stop().await;
}

fn free_bytes(dir: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("df --output=avail")
}
