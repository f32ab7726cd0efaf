//! Faults: a refused write changes nothing, a full disk never wedges the server and loses
//! nothing acknowledged, and a damaged database is reported, never spun on.
//!
//! The disk and corruption tests run the built binary (as an operator does) on a data dir of
//! their own; the disk-full test mounts a small tmpfs for it and skips, saying why, where
//! mounting is not allowed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::helpers::{
    deliver, message_ids, message_text, operator_run, Binary, TestServer, TestUser, BINARY_BOUND,
    PASSWORD,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Refused requests change nothing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_refused_second_device_create_keeps_queue_keys_and_device() {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 11, 3, 2).await;
    let mut bob = s.user_with_device("bob", 22, 1, 1).await;
    let sent = vec![
        deliver(&s, &alice, &bob, "one").await,
        deliver(&s, &alice, &bob, "two").await,
    ];
    let before = s.get(&format!("/device/{}", bob.reg_id), &bob.token).await;
    assert_eq!(before.0, StatusCode::OK, "{}", before.1);

    // A second create, with other keys and another registration id: refused.
    bob.reg_id = 33;
    let body = bob.device_body(2, 5, 5, true);
    bob.reg_id = 22;
    let (status, res) = s.post("/device/33", &bob.token, body).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{res}");
    assert_eq!(res["code"], "device_exists");

    let (status, queue) = s
        .get(&format!("/messages/{}", bob.reg_id), &bob.token)
        .await;
    assert_eq!(status, StatusCode::OK, "{queue}");
    assert_eq!(
        message_ids(&queue),
        sent,
        "the refused create touched the queue"
    );
    let after = s.get(&format!("/device/{}", bob.reg_id), &bob.token).await;
    assert_eq!(
        after, before,
        "the refused create touched the device or its keys"
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// A full disk
// ---------------------------------------------------------------------------------------------

/// A tmpfs mounted for one test, unmounted when dropped.
pub(crate) struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `16m`); `Err` says why not (not root, no permission).
    pub(crate) fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            return Err(format!("mount -t tmpfs failed: {}", why.trim()));
        }
        Ok(Tmpfs { dir })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file of `bytes` (real pages: tmpfs keeps written zeros), for the test to delete
    /// when it wants space back.
    fn filler(&self, name: &str, bytes: u64) -> PathBuf {
        let filler = self.path().join(name);
        std::fs::write(&filler, vec![0u8; bytes as usize]).expect("write filler");
        filler
    }

    /// Fills the disk with a file of its own until `leave` bytes are free.
    pub(crate) fn fill(&self, leave: u64) -> PathBuf {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.path())
            .output()
            .expect("df");
        let avail: u64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .expect("df --output=avail");
        self.filler("filler", avail.saturating_sub(leave))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

fn send_body(to: &TestUser, text: &str) -> Value {
    json!({"recipient": to.username, "message": message_text(to.reg_id, text)})
}

/// Sends messages of about `size` bytes until the server refuses: the ids it acknowledged, and
/// how it refused (`None` when the connection failed).
async fn send_until_refused(
    server: &Binary,
    from: &TestUser,
    to: &TestUser,
    size: usize,
) -> (Vec<u64>, Option<(StatusCode, Value)>) {
    let path = format!("/messages/{}", from.reg_id);
    let padding = "x".repeat(size);
    let mut acked = Vec::new();
    for i in 0..5000 {
        let body = send_body(to, &format!("{i} {padding}"));
        let sent = Instant::now();
        match server
            .try_call("POST", &path, Some(&from.token), Some(&body))
            .await
        {
            Ok((StatusCode::CREATED, m)) => acked.push(m["id"].as_u64().expect("id")),
            Ok(refused) => return (acked, Some(refused)),
            Err(e) => {
                let hung = sent.elapsed() >= BINARY_BOUND;
                assert!(!hung, "a send hung: {e}\n{}", server.logs());
                return (acked, None);
            }
        }
    }
    panic!("5000 sends did not fill the disk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_server_and_loses_nothing_acknowledged() {
    let disk = match Tmpfs::mount("16m") {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED a_full_disk_stops_the_server_and_loses_nothing_acknowledged: {why}");
            return;
        }
    };
    let data = disk.path().join("data");
    let mut server = Binary::start(&data, &[]).await;
    let alice = server.user_with_device("alice", 11, 0, 0).await;
    let bob = server.user_with_device("bob", 22, 0, 0).await;
    let filler = disk.fill(1 << 20);

    let acked = fill_until_stopped(&mut server, &alice, &bob, 4000).await;
    assert!(!acked.is_empty(), "no send fitted in the space left");
    drop(server);

    // Space is back: the restarted server has every acknowledged message and takes new ones.
    std::fs::remove_file(filler).expect("remove filler");
    let server = Binary::start(&data, &[]).await;
    let path = format!("/messages/{}?limit=1000", bob.reg_id);
    let (status, queue) = server.call("GET", &path, Some(&bob.token), None).await;
    assert_eq!(status, StatusCode::OK, "{queue}");
    let stored = message_ids(&queue);
    let lost: Vec<_> = acked.iter().filter(|id| !stored.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged, then lost: {lost:?}");
    let body = send_body(&bob, "after");
    let path = format!("/messages/{}", alice.reg_id);
    let (status, res) = server
        .call("POST", &path, Some(&alice.token), Some(&body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
}

/// Sends messages of `size` bytes until the server refuses, then checks that it failed stop: a
/// refusal is a 503 `unavailable`, `/health` answers 503 (or the process is gone already), the
/// process exits with status 1 by itself, and the log has the reason at ERROR. The ids it
/// acknowledged.
async fn fill_until_stopped(
    server: &mut Binary,
    from: &TestUser,
    to: &TestUser,
    size: usize,
) -> Vec<u64> {
    let (acked, refused) = send_until_refused(server, from, to, size).await;
    if let Some((status, body)) = refused {
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
            "a write on a full disk: {body}"
        );
    }
    // /health answers (503 until the process is gone), it never hangs.
    let asked = Instant::now();
    match server.try_call("GET", "/health", None, None).await {
        Ok((status, body)) => assert_eq!(
            (status, body),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "unavailable"})
            )
        ),
        Err(e) => assert!(asked.elapsed() < BINARY_BOUND, "/health hung: {e}"),
    }
    let status = server.wait_exit().await;
    let status = status.unwrap_or_else(|| panic!("no exit after the failure:\n{}", server.logs()));
    assert_eq!(status.code(), Some(1), "{}", server.logs());
    let logs = server.logs();
    let failed = logs
        .lines()
        .any(|l| l.contains(" ERROR ") && l.contains("storage failed"));
    assert!(failed, "no ERROR line with the reason:\n{logs}");
    acked
}

/// Large enough that a leaf page of a few of them is over sled's blob threshold (a quarter of its
/// 512 KiB segment): the page goes to a file of its own, written during the insert, so a full
/// disk shows there rather than in the next flush.
const LARGE_MESSAGE: usize = 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filled_by_large_messages_stops_the_server_and_drains_after_a_restart() {
    let name = "a_disk_filled_by_large_messages_stops_the_server_and_drains_after_a_restart";
    let disk = match Tmpfs::mount("40m") {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED {name}: {why}");
            return;
        }
    };
    // Written before the start, so that the test decides when (some) space comes back.
    let filler = disk.filler("filler", 2 << 20);
    let data = disk.path().join("data");
    let flags = ["--reserve-mb", "8"];
    let mut server = Binary::start(&data, &flags).await;
    assert!(data.join("reserve").is_file(), "{}", server.logs());
    let alice = server.user_with_device("alice", 11, 0, 0).await;
    let bob = server.user_with_device("bob", 22, 0, 0).await;

    let acked = fill_until_stopped(&mut server, &alice, &bob, LARGE_MESSAGE).await;
    assert!(!acked.is_empty(), "no send fitted in the space left");
    assert!(!data.join("reserve").exists(), "{}", server.logs());
    drop(server);

    // A little space is back: the restarted server serves every acknowledged message, and the
    // queue drains.
    std::fs::remove_file(filler).expect("remove filler");
    let server = Binary::start(&data, &flags).await;
    let stored = drain(&server, &bob).await;
    let lost: Vec<_> = acked.iter().filter(|id| !stored.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged, then lost: {lost:?}");
    let (status, body) = server.call("GET", "/health", None, None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    server.stop().await;
}

/// The same failure without a full disk (and so where mounting is not allowed): a file in the
/// place of sled's `blobs/` dir makes it refuse the large pages, as a full disk does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_the_disk_refuses_stops_the_server_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = Binary::start(&data, &[]).await;
    let alice = server.user_with_device("alice", 11, 0, 0).await;
    let bob = server.user_with_device("bob", 22, 0, 0).await;
    let path = format!("/messages/{}", alice.reg_id);
    let body = send_body(&bob, &"x".repeat(LARGE_MESSAGE));
    let mut acked = Vec::new();
    for _ in 0..5 {
        let (status, m) = server
            .call("POST", &path, Some(&alice.token), Some(&body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{m}");
        acked.push(m["id"].as_u64().expect("id"));
    }
    // Moved aside, not deleted: the pages written so far are in there.
    let blobs = data.join("db").join("blobs");
    let aside = data.join("db").join("blobs.aside");
    std::fs::rename(&blobs, &aside).expect("move blobs aside");
    std::fs::write(&blobs, b"not a directory").expect("write blobs file");

    acked.extend(fill_until_stopped(&mut server, &alice, &bob, LARGE_MESSAGE).await);
    drop(server);

    std::fs::remove_file(&blobs).expect("remove blobs file");
    std::fs::rename(&aside, &blobs).expect("move blobs back");
    let server = Binary::start(&data, &[]).await;
    let stored = drain(&server, &bob).await;
    let lost: Vec<_> = acked.iter().filter(|id| !stored.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged, then lost: {lost:?}");
    server.stop().await;
}

/// Fetches and deletes `user`'s queue page by page until it is empty; the ids it held.
async fn drain(server: &Binary, user: &TestUser) -> Vec<u64> {
    let path = format!("/messages/{}", user.reg_id);
    let mut seen = Vec::new();
    loop {
        let (status, page) = server.call("GET", &path, Some(&user.token), None).await;
        assert_eq!(status, StatusCode::OK, "{page}\n{}", server.logs());
        let ids = message_ids(&page);
        if ids.is_empty() {
            return seen;
        }
        let (status, res) = server
            .call("DELETE", &path, Some(&user.token), Some(&json!(ids)))
            .await;
        assert_eq!(status, StatusCode::OK, "{res}\n{}", server.logs());
        assert_eq!(res, json!(vec!["success"; ids.len()]), "{}", server.logs());
        seen.extend(ids);
    }
}

// ---------------------------------------------------------------------------------------------
// A damaged database
// ---------------------------------------------------------------------------------------------

/// Registers `n` users named `user0000`, `user0001`, ...
async fn register_many(server: &Binary, n: usize) {
    for i in 0..n {
        let creds = json!({"username": format!("user{i:04}"), "password": PASSWORD});
        let (status, body) = server.call("POST", "/auth/users", None, Some(&creds)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

/// Overwrites 2 KB of `file` around the newest copy of `username`'s account record (its
/// username, an empty email, then the password hash), so that the damage hits a page in use.
fn damage_record_of(file: &Path, username: &str) {
    let mut bytes = std::fs::read(file).expect("read db");
    let name = username.as_bytes();
    let at = (0..bytes.len().saturating_sub(name.len() + 15))
        .rev()
        .find(|&i| {
            bytes[i..].starts_with(name)
                && bytes[i + name.len()] == 0
                && bytes[i + name.len() + 2..].starts_with(b"pbkdf2_sha256")
        })
        .unwrap_or_else(|| panic!("no record of {username} in {}", file.display()));
    let start = at.saturating_sub(1024);
    let end = (start + 2048).min(bytes.len());
    bytes[start..end].fill(0x5a);
    std::fs::write(file, bytes).expect("write db");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_is_reported_and_never_spun_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Binary::start(&data, &[]).await;
    register_many(&server, 1500).await;
    server.stop().await;

    // A clean database passes (and sled leaves a snapshot, so that the damage below is met
    // when a page is read, not while the log is replayed at start).
    let out = operator_run(&data, &["fsck"]).ok().stdout;
    assert!(out.contains("users\tok, 1500 records"), "{out}");

    damage_record_of(&data.join("db").join("db"), "user0700");
    let mut server = Binary::start(&data, &["--metrics-listen", "127.0.0.1:0"]).await;
    let metrics = format!("http://{}", server.wait_log("metrics on http://").await);

    // stats answers (here: that the totals cannot be counted, and what to run).
    let err = operator_run(&data, &["stats"]).err();
    assert!(err.contains("fsck"), "{err}");
    // /metrics answers, without the totals it cannot count.
    let res = server
        .http
        .get(&metrics)
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.expect("metrics text");
    assert!(!text.contains("\nsignal_server_users "), "{text}");
    // The server still serves, and stops on SIGTERM.
    let (status, body) = server.call("GET", "/health", None, None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    server.terminate().await;
    drop(server);

    // fsck names the damage and exits non-zero.
    let err = operator_run(&data, &["fsck"]).err();
    assert!(err.contains("users\tDAMAGED"), "{err}");
    assert!(err.contains("usernames\tok, 1500 records"), "{err}");
}
