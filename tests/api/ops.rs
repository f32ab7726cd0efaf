//! Operations: backups taken under load and restored, operator commands against a live server,
//! invite-only and closed registration, the per-IP limit of anonymous routes behind (and not
//! behind) a trusted proxy, and the Prometheus metrics endpoint, in-process and in the binary.
//!
//! Operator commands always run through the real binary (`signal-server --data-dir DIR ...`),
//! which reaches a running server over `<data-dir>/admin.sock` or opens a stopped data dir
//! itself. Tests that run the binary against an in-process server use a multi-thread runtime and
//! wait for the child off the runtime threads, so the server keeps answering meanwhile.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::{message_text, TestServer, TestUser, PASSWORD};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use signal_server::Config;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const BIN: &str = env!("CARGO_BIN_EXE_signal-server");
/// Upper bound for any wait (a child process, a lock being released, a log line); never a
/// timing check.
const BOUND: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// The binary as an operator runs it
// ---------------------------------------------------------------------------------------------

/// What an operator command printed, and whether it succeeded.
#[derive(Debug)]
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

/// The binary with a clean environment: no inherited `SIGNAL_SERVER_*`, plain info logs.
fn bare_command() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SIGNAL_SERVER_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "info").env("RUST_LOG_STYLE", "never");
    cmd
}

/// Runs `signal-server --data-dir DIR <args>` to its end (bounded), with `stdin` fed in.
fn run_blocking(dir: &Path, args: &[String], stdin: Option<String>) -> Run {
    let mut cmd = bare_command();
    cmd.arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn signal-server");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + BOUND;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("signal-server {args:?} did not finish within {BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        success: status.success(),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// Runs an operator command off the runtime threads (the in-process server must keep serving
/// the admin socket meanwhile).
async fn operator(dir: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    let dir = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let stdin = stdin.map(str::to_string);
    tokio::task::spawn_blocking(move || run_blocking(&dir, &args, stdin))
        .await
        .expect("operator command thread")
}

/// An operator command that must succeed.
async fn operator_ok(dir: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    let run = operator(dir, args, stdin).await;
    assert!(
        run.success,
        "signal-server {args:?} failed:\nstdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    run
}

fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A config like the harness's, on an existing data dir.
fn config_for(dir: &Path, flags: &[&str]) -> Config {
    let mut args = vec![
        "signal-server".to_string(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--pbkdf2-iterations".into(),
        "1000".into(),
    ];
    args.extend(flags.iter().map(|s| s.to_string()));
    <Config as clap::Parser>::parse_from(args)
}

/// Waits (bounded) until nothing in this process holds the database of `dir` open any more:
/// background tasks of a stopped in-process server drop their handles shortly after `stop()`.
async fn wait_until_closed(dir: &Path) {
    let path = dir.join("db").join("db");
    let deadline = Instant::now() + BOUND;
    loop {
        if let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            if f.try_lock().is_ok() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the database in {} is still open after {BOUND:?}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops an in-process server and waits until its database is closed.
async fn stop(s: TestServer) -> tempfile::TempDir {
    let dir = s.stop().await;
    wait_until_closed(dir.path()).await;
    dir
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------------------------

/// A successful send; answers the message id.
async fn send(s: &TestServer, from: &TestUser, to: &TestUser, body: &str) -> u64 {
    let (status, res) = s
        .post(
            &format!("/messages/{}", from.reg_id),
            &from.token,
            json!({"recipient": to.username, "message": message_text(to.reg_id, body)}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "send: {res}");
    res["id"].as_u64().expect("message id")
}

/// `requester` pops a bundle of `target`: the one-time EC and Kyber key ids handed out.
async fn pop_bundle(
    s: &TestServer,
    requester: &TestUser,
    target: &TestUser,
) -> (Option<u64>, Option<u64>) {
    let (status, bundle) = s
        .get(
            &format!("/prekeybundle/{}/{}", target.username, requester.reg_id),
            &requester.token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "bundle: {bundle}");
    let pre = bundle["preKey"]["keyId"].as_u64();
    // The last-resort Kyber key (id 999999 in the harness) is never removed.
    let kyber = bundle["kyberPreKey"]["keyId"]
        .as_u64()
        .filter(|id| *id != 999_999);
    (pre, kyber)
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "body: {body}");
    assert_eq!(body["code"], code, "body: {body}");
    assert!(body["message"].is_string(), "error without message: {body}");
}

async fn register(s: &TestServer, body: Value) -> (StatusCode, Value) {
    s.call("POST", "/auth/users", None, Some(&body)).await
}

async fn try_login(s: &TestServer, username: &str, password: &str) -> (StatusCode, Value) {
    s.call(
        "POST",
        "/auth/jwt/create",
        None,
        Some(&json!({"username": username, "password": password})),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Backup files
// ---------------------------------------------------------------------------------------------

/// The records of a backup, by kind.
#[derive(Default, Debug)]
struct Backup {
    lines: Vec<String>,
    users: BTreeMap<u64, String>,
    /// user id → registrationId
    devices: BTreeMap<u64, u64>,
    prekeys: BTreeMap<u64, BTreeSet<u64>>,
    kyber: BTreeMap<u64, BTreeSet<u64>>,
    /// recipient user id → message ids
    messages: BTreeMap<u64, BTreeSet<u64>>,
    invites: usize,
    reset_tokens: Vec<u64>,
}

impl Backup {
    fn read(path: &Path) -> Backup {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        assert!(lines.len() >= 2, "a backup has a header and an end: {text}");
        let mut b = Backup::default();
        for (n, line) in lines.iter().enumerate() {
            let r: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("line {} is not JSON ({e}): {line}", n + 1));
            let u = |field: &str| {
                r[field]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no integer {field}: {line}"))
            };
            let kind = r["type"].as_str().unwrap_or_default();
            match (n, kind) {
                (0, "header") => {
                    assert_eq!(r["format"], "signal-server-backup", "{line}");
                    assert_eq!(r["version"], 1, "{line}");
                }
                (0, _) => panic!("the first record is not the header: {line}"),
                (_, "header") => panic!("a second header at line {}", n + 1),
                (n, "end") => {
                    assert_eq!(n, lines.len() - 1, "records after the end record");
                    assert_eq!(u("records"), n as u64, "the end record's count: {line}");
                }
                (_, "user") => {
                    let name = r["username"].as_str().expect("username").to_string();
                    assert!(
                        b.users.insert(u("id"), name).is_none(),
                        "user twice: {line}"
                    );
                }
                (_, "device") => {
                    assert!(
                        b.devices.insert(u("user"), u("registrationId")).is_none(),
                        "two devices of one user: {line}"
                    );
                }
                (_, "preKey") => {
                    let id = r["key"]["keyId"].as_u64().expect("keyId");
                    assert!(b.prekeys.entry(u("user")).or_default().insert(id), "{line}");
                }
                (_, "kyberPreKey") => {
                    let id = r["key"]["keyId"].as_u64().expect("keyId");
                    assert!(b.kyber.entry(u("user")).or_default().insert(id), "{line}");
                }
                (_, "message") => {
                    assert!(
                        b.messages
                            .entry(u("recipient"))
                            .or_default()
                            .insert(u("id")),
                        "message twice: {line}"
                    );
                }
                (_, "invite") => b.invites += 1,
                (_, "resetToken") => b.reset_tokens.push(u("user")),
                (_, other) => panic!("unknown record type {other:?}: {line}"),
            }
        }
        assert_eq!(
            serde_json::from_str::<Value>(lines.last().unwrap()).unwrap()["type"],
            "end",
            "the backup is cut off"
        );
        b.lines = lines;
        b
    }

    fn user_id(&self, name: &str) -> u64 {
        *self
            .users
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .unwrap_or_else(|| panic!("no user record for {name}"))
            .0
    }

    fn max_id(&self) -> u64 {
        let users = self.users.keys().copied();
        let messages = self.messages.values().flatten().copied();
        users.chain(messages).max().unwrap_or(0)
    }

    /// Every record that names a user names one that has a user record (and keys a device).
    fn assert_consistent(&self) {
        for user in self.devices.keys().chain(&self.reset_tokens) {
            assert!(
                self.users.contains_key(user),
                "record of unknown user {user}"
            );
        }
        for (user, ids) in self.prekeys.iter().chain(&self.kyber) {
            assert!(
                self.users.contains_key(user),
                "prekeys of unknown user {user}"
            );
            assert!(
                self.devices.contains_key(user),
                "prekeys {ids:?} of user {user} who has no device"
            );
        }
        for (user, ids) in &self.messages {
            assert!(
                self.users.contains_key(user),
                "messages {ids:?} queued for unknown user {user}"
            );
            assert!(
                self.devices.contains_key(user),
                "messages {ids:?} queued for user {user} who has no device"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Backup under load, restore, backup again
// ---------------------------------------------------------------------------------------------

/// What the writers saw acknowledged, and whether that was before the backup started.
#[derive(Default)]
struct Seen {
    /// (message id, recipient user id)
    acked_before: Vec<(u64, u64)>,
    /// (target user id, EC key id or None, Kyber key id or None)
    popped_before: Vec<(u64, Option<u64>, Option<u64>)>,
    ops: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_during_writes_is_consistent_and_restores_to_identical_records() {
    let s = TestServer::start().await;
    let dir = s.dir.path().to_path_buf();
    let alice = s.user_with_device("alice", 101, 100, 20).await;
    let bob = s.user_with_device("bob", 202, 100, 20).await;
    let carol = s.user_with_device("carol", 303, 100, 20).await;
    let mut acked = Vec::new();
    for i in 0..4 {
        acked.push((send(&s, &alice, &bob, &format!("a{i}")).await, bob.id));
        acked.push((send(&s, &bob, &carol, &format!("b{i}")).await, carol.id));
        acked.push((send(&s, &carol, &alice, &format!("c{i}")).await, alice.id));
    }
    // A pop acknowledged before the backup: neither key may come back.
    let (pre, kyber) = pop_bundle(&s, &alice, &bob).await;
    assert_eq!((pre, kyber), (Some(1), Some(1)), "lowest keyIds first");
    let mut popped_before = vec![(bob.id, pre, kyber)];
    // An invite and a reset token, so that every record kind is in the backup.
    operator_ok(&dir, &["invites", "--count", "1"], None).await;
    operator_ok(&dir, &["users", "reset-token", "carol"], None).await;

    // Writers: sends, bundle pops and new registrations (with devices), until told to stop.
    let s = Arc::new(s);
    let users = Arc::new(vec![alice, bob, carol]);
    let stop_flag = Arc::new(AtomicBool::new(false));
    let backup_started = Arc::new(AtomicBool::new(false));
    let ops: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let mut writers = Vec::new();
    for kind in 0..3usize {
        let (s, users, stop_flag, started, ops) = (
            s.clone(),
            users.clone(),
            stop_flag.clone(),
            backup_started.clone(),
            ops.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut i = 0usize;
            while !stop_flag.load(Ordering::SeqCst) {
                match kind {
                    0 => {
                        let (from, to) = (&users[i % 3], &users[(i + 1) % 3]);
                        let id = send(&s, from, to, &format!("load {i}")).await;
                        if !started.load(Ordering::SeqCst) {
                            seen.acked_before.push((id, to.id));
                        }
                    }
                    1 => {
                        let (requester, target) = (&users[i % 3], &users[(i + 2) % 3]);
                        let (pre, kyber) = pop_bundle(&s, requester, target).await;
                        if !started.load(Ordering::SeqCst) {
                            seen.popped_before.push((target.id, pre, kyber));
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    _ => {
                        s.user_with_device(&format!("load{i}"), 5000 + i as u32, 3, 1)
                            .await;
                    }
                }
                i += 1;
                seen.ops += 1;
                ops[kind].fetch_add(1, Ordering::SeqCst);
            }
            seen
        }));
    }
    let wait_ops = |at_least: [usize; 3]| {
        let ops = ops.clone();
        async move {
            let deadline = Instant::now() + BOUND;
            while (0..3).any(|k| ops[k].load(Ordering::SeqCst) < at_least[k]) {
                assert!(Instant::now() < deadline, "the writers made no progress");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_ops([3, 3, 2]).await;

    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("backup.jsonl");
    let file_arg = file.display().to_string();
    backup_started.store(true, Ordering::SeqCst);
    let before: [usize; 3] = std::array::from_fn(|k| ops[k].load(Ordering::SeqCst));
    let run = operator_ok(&dir, &["backup", &file_arg], None).await;
    assert!(run.stderr.contains("backup written to"), "{}", run.stderr);
    // The writers keep going after the backup too, then stop.
    wait_ops([before[0] + 3, before[1] + 3, before[2] + 1]).await;
    stop_flag.store(true, Ordering::SeqCst);
    for w in writers {
        let seen = w.await.expect("a writer failed");
        assert!(seen.ops > 0);
        acked.extend(seen.acked_before);
        popped_before.extend(seen.popped_before);
    }

    assert_eq!(file_mode(&file), 0o600, "a backup holds password hashes");
    assert!(
        !file.with_extension("partial").exists(),
        "the temporary file is left behind"
    );
    let first = Backup::read(&file);
    first.assert_consistent();
    for name in ["alice", "bob", "carol"] {
        first.user_id(name);
    }
    assert!(first.invites >= 1, "the invite is missing");
    assert_eq!(
        first.reset_tokens,
        vec![users[2].id],
        "carol's reset token is missing"
    );
    // Everything acknowledged before the backup started is in it; nothing popped before is.
    for (id, recipient) in &acked {
        assert!(
            first
                .messages
                .get(recipient)
                .is_some_and(|ids| ids.contains(id)),
            "message {id} for user {recipient}, acknowledged before the backup, is missing"
        );
    }
    for (user, pre, kyber) in &popped_before {
        if let Some(id) = pre {
            assert!(
                !first.prekeys.get(user).is_some_and(|ids| ids.contains(id)),
                "prekey {id} of user {user} was handed out before the backup but is in it"
            );
        }
        if let Some(id) = kyber {
            assert!(
                !first.kyber.get(user).is_some_and(|ids| ids.contains(id)),
                "Kyber prekey {id} of user {user} was handed out before the backup but is in it"
            );
        }
    }

    let s = Arc::try_unwrap(s)
        .ok()
        .expect("the writers still hold the server");
    let users = Arc::try_unwrap(users).ok().expect("users still shared");
    stop(s).await;

    // Restore into a fresh data dir, then back it up again (both offline, by the binary).
    let fresh = tempfile::tempdir().expect("tempdir");
    let run = operator_ok(fresh.path(), &["restore", &file_arg], None).await;
    let summary: Value = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("restored "))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_else(|| panic!("no restore summary in {:?}", run.stdout));
    let count = |m: &BTreeMap<u64, BTreeSet<u64>>| m.values().map(BTreeSet::len).sum::<usize>();
    assert_eq!(
        summary,
        json!({
            "users": first.users.len(), "devices": first.devices.len(),
            "prekeys": count(&first.prekeys), "kyber_prekeys": count(&first.kyber),
            "messages": count(&first.messages), "invites": first.invites,
            "reset_tokens": first.reset_tokens.len(),
        })
    );
    let again = work.path().join("again.jsonl");
    operator_ok(
        fresh.path(),
        &["backup", &again.display().to_string()],
        None,
    )
    .await;
    assert_eq!(file_mode(&again), 0o600);
    let second = Backup::read(&again);
    for (n, (a, b)) in first.lines.iter().zip(&second.lines).enumerate() {
        assert_eq!(a, b, "record {} differs after a restore", n + 1);
    }
    assert_eq!(
        first.lines.len(),
        second.lines.len(),
        "record counts differ"
    );

    // A server on the restored dir reports the stock and queues the records say.
    let fresh_path = fresh.path().to_path_buf();
    let r = TestServer::start_config(config_for(&fresh_path, &["--no-rate-limit"]), fresh).await;
    for (user, reg_id) in &first.devices {
        let name = &first.users[user];
        let token = r.login(name, PASSWORD).await;
        let (status, stock) = r.get(&format!("/prekeys/{reg_id}"), &token).await;
        assert_eq!(status, StatusCode::OK, "{name}: {stock}");
        let want_pre = first.prekeys.get(user).map_or(0, BTreeSet::len);
        let want_kyber = first.kyber.get(user).map_or(0, BTreeSet::len);
        assert_eq!(
            (
                stock["preKeyCount"].as_u64(),
                stock["kyberPreKeyCount"].as_u64()
            ),
            (Some(want_pre as u64), Some(want_kyber as u64)),
            "stock of {name} after the restore"
        );
        let (status, queue) = r.get(&format!("/messages/{reg_id}"), &token).await;
        assert_eq!(status, StatusCode::OK, "{name}: {queue}");
        let ids: BTreeSet<u64> = queue
            .as_array()
            .expect("array")
            .iter()
            .map(|m| m["id"].as_u64().expect("id"))
            .collect();
        assert_eq!(
            ids,
            first.messages.get(user).cloned().unwrap_or_default(),
            "queue of {name} after the restore"
        );
    }
    // The next pop of bob's keys is one that was in the backup, and ids continue above.
    let mut bob = users.into_iter().nth(1).unwrap();
    bob.token = r.login("bob", PASSWORD).await;
    let newcomer = r.user("newcomer").await;
    assert!(
        newcomer.id > first.max_id(),
        "a new user id reuses an old one"
    );
    let (pre, _) = pop_bundle(&r, &bob, &bob).await;
    if let Some(id) = pre {
        assert!(
            first.prekeys[&bob.id].contains(&id),
            "prekey {id} of bob came back to life"
        );
    }
    let id = send(&r, &bob, &bob, "after restore").await;
    assert!(id > first.max_id(), "message id {id} reuses an old id");
    stop(r).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Operator commands against a live server
// ---------------------------------------------------------------------------------------------

/// `stats` as a map.
fn stats_of(run: &Run) -> HashMap<String, u64> {
    run.stdout
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('\t')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// `users list` rows as username → (id, email, device, queued).
fn users_of(run: &Run) -> HashMap<String, (u64, String, String, u64)> {
    let mut lines = run.stdout.lines();
    assert_eq!(
        lines.next(),
        Some("id\tusername\temail\tdevice\tqueued"),
        "{}",
        run.stdout
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 5, "row {l:?}");
            (
                f[1].to_string(),
                (
                    f[0].parse().expect("id"),
                    f[2].to_string(),
                    f[3].to_string(),
                    f[4].parse().expect("queued"),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_commands_act_on_a_live_server() {
    let s = TestServer::start().await;
    let dir = s.dir.path().to_path_buf();
    let alice = s.user_with_device("alice", 11, 5, 2).await;
    let bob = s.user_with_device("bob", 22, 3, 1).await;
    let carol = s.user("carol").await;
    send(&s, &alice, &bob, "one").await;
    send(&s, &alice, &bob, "two").await;

    let list = users_of(&operator_ok(&dir, &["users", "list"], None).await);
    assert_eq!(list.len(), 3, "{list:?}");
    assert_eq!(
        list["alice"],
        (alice.id, String::new(), "alice.1".into(), 0)
    );
    assert_eq!(list["bob"], (bob.id, String::new(), "bob.1".into(), 2));
    assert_eq!(list["carol"], (carol.id, String::new(), "-".into(), 0));

    let stats = stats_of(&operator_ok(&dir, &["stats"], None).await);
    let want: HashMap<String, u64> = [
        ("users", 3),
        ("devices", 2),
        ("queued_messages", 2),
        ("prekeys", 8),
        ("kyber_prekeys", 3),
        ("invites", 0),
        ("websocket_connections", 0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(stats, want);

    // users delete: the user, their device, keys and queue go; their token is dead at once.
    let run = operator_ok(&dir, &["users", "delete", "bob"], None).await;
    assert!(run.stdout.contains("deleted user bob"), "{}", run.stdout);
    let (status, body) = s.get("/auth/users/me", &bob.token).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "not_authenticated");
    let (status, body) = s
        .get(&format!("/prekeybundle/bob/{}", alice.reg_id), &alice.token)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "no_recipient");
    let run = operator(&dir, &["users", "delete", "nobody"], None).await;
    assert!(!run.success, "deleting an unknown user succeeded");
    assert!(
        run.stderr.contains("no user named nobody"),
        "{}",
        run.stderr
    );
    let stats = stats_of(&operator_ok(&dir, &["stats"], None).await);
    assert_eq!(
        (stats["users"], stats["devices"], stats["queued_messages"]),
        (2, 1, 0)
    );
    assert_eq!((stats["prekeys"], stats["kyber_prekeys"]), (5, 2));
    // A new bob does not revive the old bob's token.
    s.user("bob").await;
    let (status, _) = s.get("/auth/users/me", &bob.token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // invites --count 2: two distinct tokens, one a line.
    let run = operator_ok(&dir, &["invites", "--count", "2"], None).await;
    let tokens: Vec<&str> = run.stdout.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(tokens.len(), 2, "{}", run.stdout);
    assert_ne!(tokens[0], tokens[1]);
    assert!(tokens
        .iter()
        .all(|t| t.len() >= 16 && !t.contains(char::is_whitespace)));
    let stats = stats_of(&operator_ok(&dir, &["stats"], None).await);
    assert_eq!(stats["invites"], 2);

    // users set-password: a weak one is refused and changes nothing.
    let run = operator(
        &dir,
        &["users", "set-password", "alice"],
        Some("password\n"),
    )
    .await;
    assert!(!run.success, "a weak password was accepted: {}", run.stdout);
    let (status, _) = s.get("/auth/users/me", &alice.token).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a refused set-password revoked tokens"
    );
    // A good one revokes older tokens; the new password logs in, the old one does not.
    let new_password = "Marmalade-orbit-3117";
    let run = operator_ok(
        &dir,
        &["users", "set-password", "alice"],
        Some(&format!("{new_password}\n")),
    )
    .await;
    assert!(run.stdout.contains("alice"), "{}", run.stdout);
    let (status, body) = s.get("/auth/users/me", &alice.token).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "not_authenticated");
    let (status, body) = try_login(&s, "alice", PASSWORD).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_credentials",
    );
    let token = s.login("alice", new_password).await;
    let (status, me) = s.get("/auth/users/me", &token).await;
    assert_eq!(
        (status, me["id"].as_u64()),
        (StatusCode::OK, Some(alice.id))
    );

    // users reset-token: a uid and token that /auth/password/reset/confirm takes, once.
    let run = operator_ok(&dir, &["users", "reset-token", "alice"], None).await;
    let field = |name: &str| {
        run.stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {:?}", run.stdout))
    };
    let (uid, reset) = (field("uid:"), field("token:"));
    let reset_password = "Quartz-lantern-8812";
    let confirm = json!({"uid": uid, "token": reset, "new_password": reset_password});
    let (status, body) = s
        .call("POST", "/auth/password/reset/confirm", None, Some(&confirm))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = s
        .call("POST", "/auth/password/reset/confirm", None, Some(&confirm))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_token");
    let (status, _) = s.get("/auth/users/me", &token).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the reset kept old tokens"
    );
    s.login("alice", reset_password).await;

    // restore refuses a running server, and a data dir that is not empty.
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("b.jsonl");
    let file_arg = file.display().to_string();
    operator_ok(&dir, &["backup", &file_arg], None).await;
    let run = operator(&dir, &["restore", &file_arg], None).await;
    assert!(!run.success, "restore ran against a live server");
    assert!(
        run.stderr.contains("server is running"),
        "unclear message: {}",
        run.stderr
    );
    let users_before = operator_ok(&dir, &["users", "list"], None).await.stdout;
    let (status, _) = s.get("/auth/users/me", &alice.token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let dir_handle = stop(s).await;
    let run = operator(&dir, &["restore", &file_arg], None).await;
    assert!(!run.success, "restore into a non-empty data dir succeeded");
    assert!(
        run.stderr.contains("empty"),
        "unclear message: {}",
        run.stderr
    );
    let users_after = operator_ok(&dir, &["users", "list"], None).await.stdout;
    assert_eq!(
        users_before, users_after,
        "a refused restore changed the data"
    );
    drop(dir_handle);
}

// ---------------------------------------------------------------------------------------------
// 3. Invite-only and closed registration
// ---------------------------------------------------------------------------------------------

fn assert_invalid(status: StatusCode, body: &Value, field: &str) {
    assert_error(status, body, StatusCode::BAD_REQUEST, "invalid_data");
    assert!(
        body["errors"].get(field).is_some(),
        "errors do not name {field}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invite_only_registration_takes_each_invite_once() {
    let s = TestServer::start_with(&["--no-rate-limit", "--registration", "invite"]).await;
    let dir = s.dir.path().to_path_buf();
    let (status, body) = register(&s, json!({"username": "ann", "password": PASSWORD})).await;
    assert_invalid(status, &body, "invite");

    let run = operator_ok(&dir, &["invites", "--count", "1"], None).await;
    let invite = run
        .stdout
        .lines()
        .next()
        .expect("a token")
        .trim()
        .to_string();

    // A refused registration (weak password, name taken) does not use the invite up.
    let (status, body) = register(
        &s,
        json!({"username": "ann", "password": "12345678", "invite": invite}),
    )
    .await;
    assert_invalid(status, &body, "password");

    let (status, body) = register(
        &s,
        json!({"username": "ann", "password": PASSWORD, "invite": invite}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["username"], "ann");
    s.login("ann", PASSWORD).await;

    let (status, body) = register(
        &s,
        json!({"username": "ben", "password": PASSWORD, "invite": invite}),
    )
    .await;
    assert_invalid(status, &body, "invite");
    let (status, body) = register(
        &s,
        json!({"username": "ben", "password": PASSWORD, "invite": "not-an-invite-at-all"}),
    )
    .await;
    assert_invalid(status, &body, "invite");

    // A name already taken is refused without spending a fresh invite.
    let run = operator_ok(&dir, &["invites", "--count", "1"], None).await;
    let second = run
        .stdout
        .lines()
        .next()
        .expect("a token")
        .trim()
        .to_string();
    let (status, body) = register(
        &s,
        json!({"username": "ANN", "password": PASSWORD, "invite": second}),
    )
    .await;
    assert_invalid(status, &body, "username");
    let (status, body) = register(
        &s,
        json!({"username": "ben", "password": PASSWORD, "invite": second}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let stats = stats_of(&operator_ok(&dir, &["stats"], None).await);
    assert_eq!((stats["users"], stats["invites"]), (2, 0));
    stop(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closed_registration_refuses_new_accounts_but_existing_users_log_in() {
    let open = TestServer::start().await;
    let old = open.user_with_device("olduser", 7, 1, 0).await;
    let dir = stop(open).await;

    let path = dir.path().to_path_buf();
    let config = config_for(&path, &["--no-rate-limit", "--registration", "closed"]);
    let s = TestServer::start_config(config, dir).await;
    let (status, body) = register(&s, json!({"username": "newbie", "password": PASSWORD})).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "registration_closed");
    // Even with an invite, and even with a body that would otherwise be invalid.
    let run = operator_ok(&path, &["invites", "--count", "1"], None).await;
    let invite = run
        .stdout
        .lines()
        .next()
        .expect("a token")
        .trim()
        .to_string();
    let (status, body) = register(
        &s,
        json!({"username": "newbie", "password": PASSWORD, "invite": invite}),
    )
    .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "registration_closed");

    let token = s.login("OldUser", PASSWORD).await;
    let (status, me) = s.get("/auth/users/me", &token).await;
    assert_eq!((status, me["id"].as_u64()), (StatusCode::OK, Some(old.id)));
    // The token from before the restart still works too (the secret is kept in the data dir).
    let (status, _) = s.get(&format!("/device/{}", old.reg_id), &old.token).await;
    assert_eq!(status, StatusCode::OK);
    let list = users_of(&operator_ok(&path, &["users", "list"], None).await);
    assert_eq!(list.len(), 1, "{list:?}");
    stop(s).await;
}

// ---------------------------------------------------------------------------------------------
// 4. Per-IP limit of anonymous routes and X-Forwarded-For
// ---------------------------------------------------------------------------------------------

/// A failed login (an anonymous route), optionally with `X-Forwarded-For`: the status, and
/// whether a 429 carried `Retry-After`.
async fn anonymous_attempt(s: &TestServer, forwarded: Option<&str>) -> StatusCode {
    let mut req = s
        .http
        .post(s.url("/auth/jwt/create"))
        .json(&json!({"username": "nobody-here", "password": "Wrong-password-123"}));
    if let Some(f) = forwarded {
        req = req.header("x-forwarded-for", f);
    }
    let res = req.send().await.expect("request");
    let status = res.status();
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        assert!(
            retry.is_some_and(|r| r >= 1),
            "429 without Retry-After: {:?}",
            res.headers()
        );
        let body: Value = res.json().await.expect("JSON");
        assert_eq!(body["code"], "throttled", "{body}");
    } else {
        let body: Value = res.json().await.expect("JSON");
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_credentials",
        );
    }
    status
}

/// Uses up the burst of 20 (every one of them answered normally), then sends until refused.
/// Answers when the budget was seen empty.
async fn exhaust(s: &TestServer, forwarded: Option<&str>) -> Instant {
    for n in 0..20 {
        let status = anonymous_attempt(s, forwarded).await;
        assert_ne!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "attempt {} of the burst of 20 was throttled ({forwarded:?})",
            n + 1
        );
    }
    for _ in 0..100 {
        if anonymous_attempt(s, forwarded).await == StatusCode::TOO_MANY_REQUESTS {
            return Instant::now();
        }
    }
    panic!("120 attempts ({forwarded:?}) and never throttled");
}

/// At most this many requests may pass once a budget was seen empty at `empty` (one refill
/// every 6 s, plus one for a refill already under way): a bound that no slow machine breaks.
fn refills_since(empty: Instant) -> usize {
    empty.elapsed().as_secs() as usize / 6 + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_for_from_an_untrusted_peer_does_not_dodge_the_per_ip_limit() {
    let s = TestServer::start_with(&[]).await;
    let empty = exhaust(&s, None).await;
    let mut passed = 0;
    let tries = 12;
    for i in 0..tries {
        let forwarded = format!("10.1.{}.{}", i / 200, i % 200 + 1);
        if anonymous_attempt(&s, Some(&forwarded)).await != StatusCode::TOO_MANY_REQUESTS {
            passed += 1;
        }
    }
    // Registration and password reset share the budget.
    let (status, body) = register(&s, json!({"username": "late", "password": PASSWORD})).await;
    if status != StatusCode::TOO_MANY_REQUESTS {
        passed += 1;
    } else {
        assert_eq!(body["code"], "throttled");
    }
    let allowed = refills_since(empty);
    assert!(
        passed <= allowed,
        "{passed} of {} requests with spoofed X-Forwarded-For passed; at most {allowed} could \
         have refilled",
        tries + 1
    );
    stop(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_for_from_a_trusted_proxy_gives_each_client_its_own_budget() {
    let s = TestServer::start_with(&["--trusted-proxy", "127.0.0.1"]).await;
    let empty = exhaust(&s, Some("10.0.0.1")).await;
    // Another client behind the proxy, and the proxy itself, have their own budgets.
    assert_ne!(
        anonymous_attempt(&s, Some("10.0.0.2")).await,
        StatusCode::TOO_MANY_REQUESTS,
        "a new client behind the trusted proxy was throttled"
    );
    assert_ne!(
        anonymous_attempt(&s, None).await,
        StatusCode::TOO_MANY_REQUESTS,
        "the proxy's own address shares a client's budget"
    );
    // The hop the proxy appended counts, not what the client put in front of it.
    let mut passed = 0;
    let tries = 12;
    for i in 0..tries {
        let chain = format!("192.0.2.{}, 10.0.0.1", i + 1);
        if anonymous_attempt(&s, Some(&chain)).await != StatusCode::TOO_MANY_REQUESTS {
            passed += 1;
        }
    }
    let allowed = refills_since(empty);
    assert!(
        passed <= allowed,
        "{passed} of {tries} requests with a forged first hop passed; at most {allowed} could \
         have refilled"
    );
    stop(s).await;
}

// ---------------------------------------------------------------------------------------------
// 5. Metrics
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Exposition {
    samples: Vec<Sample>,
    /// family → type
    types: HashMap<String, String>,
    helps: HashMap<String, String>,
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        t if t
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')) =>
        {
            t.parse().ok()
        }
        _ => None,
    }
}

/// `{a="x",b="y"}` (escapes `\\`, `\"`, `\n`) → labels and the rest of the line.
fn parse_labels(line: &str, text: &str) -> (BTreeMap<String, String>, String) {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    assert_eq!(chars.next(), Some('{'));
    loop {
        if chars.peek() == Some(&'}') {
            chars.next();
            break;
        }
        let name: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        assert!(
            valid_label_name(&name),
            "bad label name {name:?} in {line:?}"
        );
        assert_eq!(chars.next(), Some('='), "{line:?}");
        assert_eq!(chars.next(), Some('"'), "unquoted label value in {line:?}");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        }
        assert!(
            labels.insert(name.clone(), value).is_none(),
            "label {name} twice in {line:?}"
        );
        match chars.next() {
            Some(',') => {}
            Some('}') => break,
            other => panic!("expected , or }} after a label, got {other:?} in {line:?}"),
        }
    }
    (labels, chars.collect())
}

/// The family a sample belongs to: histogram samples carry a suffix.
fn family_of(name: &str, types: &HashMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types
                .get(base)
                .is_some_and(|t| t == "histogram" || t == "summary")
            {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

/// Parses the Prometheus text format (0.0.4) strictly enough to catch a broken exposition:
/// well-formed HELP/TYPE lines, each at most once and before the family's samples, families
/// not interleaved, every sample `name{labels} value` with a float value.
fn parse_prometheus(text: &str) -> Exposition {
    assert!(
        text.ends_with('\n'),
        "the exposition does not end with a newline"
    );
    let mut e = Exposition::default();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            let keyword = parts.next().unwrap_or_default();
            if keyword != "HELP" && keyword != "TYPE" {
                continue;
            }
            let name = parts.next().unwrap_or_default().to_string();
            let rest = parts.next().unwrap_or_default().to_string();
            assert!(valid_metric_name(&name), "bad name in {line:?}");
            assert!(
                !e.samples
                    .iter()
                    .any(|s| family_of(&s.name, &e.types) == name),
                "{keyword} of {name} after its samples"
            );
            if keyword == "TYPE" {
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"]
                        .contains(&rest.as_str()),
                    "bad type in {line:?}"
                );
                assert!(
                    e.types.insert(name.clone(), rest).is_none(),
                    "TYPE of {name} twice"
                );
            } else {
                assert!(!rest.is_empty(), "empty HELP in {line:?}");
                assert!(
                    e.helps.insert(name.clone(), rest).is_none(),
                    "HELP of {name} twice"
                );
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let name = &line[..name_end];
        assert!(valid_metric_name(name), "bad metric name in {line:?}");
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(line, &line[name_end..])
        } else {
            (BTreeMap::new(), line[name_end..].to_string())
        };
        let rest = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before the value in {line:?}"));
        let mut fields = rest.split(' ');
        let value = fields
            .next()
            .and_then(parse_value)
            .unwrap_or_else(|| panic!("value is not a float in {line:?}"));
        if let Some(ts) = fields.next() {
            assert!(ts.parse::<i64>().is_ok(), "bad timestamp in {line:?}");
        }
        assert!(fields.next().is_none(), "trailing fields in {line:?}");
        let family = family_of(name, &e.types);
        assert!(
            e.types.contains_key(&family),
            "sample of {family} without a TYPE line"
        );
        if current.as_deref() != Some(family.as_str()) {
            if let Some(previous) = current.take() {
                finished.insert(previous);
            }
            assert!(
                !finished.contains(&family),
                "samples of {family} are not together"
            );
            current = Some(family);
        }
        e.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    e
}

impl Exposition {
    fn find<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the one sample of `name` with (at least) these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<&Sample> = self
            .find(name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(
            matching.len() <= 1,
            "several {name} {labels:?}: {matching:?}"
        );
        matching.first().map(|s| s.value)
    }

    fn gauge(&self, name: &str) -> f64 {
        assert_eq!(
            self.types.get(name).map(String::as_str),
            Some("gauge"),
            "{name} is not a gauge"
        );
        self.value(name, &[]).unwrap_or_else(|| panic!("no {name}"))
    }

    /// Histogram buckets per route: non-decreasing, ending in +Inf equal to `_count`.
    fn check_histograms(&self, family: &str) -> BTreeMap<String, f64> {
        assert_eq!(
            self.types.get(family).map(String::as_str),
            Some("histogram")
        );
        let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for s in self.find(&format!("{family}_bucket")) {
            let le = s.labels.get("le").expect("bucket without le");
            let bound = parse_value(le).unwrap_or_else(|| panic!("bad le {le:?}"));
            let route = s.labels.get("route").expect("route").clone();
            buckets.entry(route).or_default().push((bound, s.value));
        }
        assert!(!buckets.is_empty(), "no buckets of {family}");
        let mut counts = BTreeMap::new();
        for (route, mut series) in buckets {
            series.sort_by(|a, b| a.0.partial_cmp(&b.0).expect("le is a number"));
            for pair in series.windows(2) {
                assert!(pair[0].0 < pair[1].0, "le {} twice for {route}", pair[0].0);
                assert!(
                    pair[0].1 <= pair[1].1,
                    "buckets of {route} decrease: {series:?}"
                );
            }
            let (last_bound, last) = *series.last().unwrap();
            assert_eq!(last_bound, f64::INFINITY, "no +Inf bucket for {route}");
            let route_label = [("route", route.as_str())];
            let count = self
                .value(&format!("{family}_count"), &route_label)
                .unwrap_or_else(|| panic!("no _count for {route}"));
            let sum = self
                .value(&format!("{family}_sum"), &route_label)
                .unwrap_or_else(|| panic!("no _sum for {route}"));
            assert_eq!(last, count, "+Inf bucket != _count for {route}");
            assert!(sum >= 0.0, "negative _sum for {route}");
            counts.insert(route, count);
        }
        counts
    }
}

const ROUTE_TEMPLATES: &[&str] = &[
    "/health",
    "/auth/users",
    "/auth/users/me",
    "/auth/jwt/create",
    "/auth/jwt/refresh",
    "/auth/jwt/verify",
    "/auth/password",
    "/auth/password/reset",
    "/auth/password/reset/confirm",
    "/device/*",
    "/prekeys/:regId",
    "/kyberprekeys/:regId",
    "/signedprekey/:regId",
    "/prekeybundle/:username/:regId",
    "/messages/:regId",
    "/messages/:regId/ws",
    "other",
];

async fn scrape(http: &reqwest::Client, url: &str) -> Exposition {
    let res = http.get(url).send().await.expect("GET /metrics");
    assert_eq!(res.status(), StatusCode::OK);
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain"),
        "content-type {content_type:?}"
    );
    parse_prometheus(&res.text().await.expect("body"))
}

/// Per route, the sum of `signal_server_http_requests_total`.
fn requests_by_route(e: &Exposition) -> BTreeMap<String, f64> {
    let mut by_route = BTreeMap::new();
    for s in e.find("signal_server_http_requests_total") {
        *by_route.entry(s.labels["route"].clone()).or_insert(0.0) += s.value;
    }
    by_route
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_endpoint_serves_prometheus_text_with_route_templates_and_gauges() {
    let s = TestServer::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let metrics_url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let metrics = tokio::spawn(signal_server::server::serve_metrics(
        listener,
        s.app.clone(),
    ));

    // The public API does not serve it.
    let (status, body) = s.call("GET", "/metrics", None, None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    let alice = s.user_with_device("alicemetrics", 4111, 5, 3).await;
    let bob = s.user_with_device("bobmetrics", 4222, 4, 2).await;
    pop_bundle(&s, &alice, &bob).await;
    for i in 0..3 {
        send(&s, &alice, &bob, &format!("m{i}")).await;
    }
    send(&s, &bob, &alice, "back").await;
    for _ in 0..2 {
        let (status, _) = s
            .get(&format!("/messages/{}", bob.reg_id), &bob.token)
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = s
        .call(
            "GET",
            &format!("/nope/{}/{}", alice.username, alice.reg_id),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // One live WebSocket, registered once the backlog has been sent.
    let mut req = s
        .ws_url(&format!("/messages/{}/ws", alice.reg_id))
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", alice.token)).unwrap(),
    );
    let (mut ws, _) = tokio::time::timeout(BOUND, tokio_tungstenite::connect_async(req))
        .await
        .expect("WebSocket timed out")
        .expect("WebSocket upgrade");
    loop {
        let frame = tokio::time::timeout(BOUND, ws.next())
            .await
            .expect("no queue_empty")
            .expect("socket closed")
            .expect("socket error");
        if let Ok(text) = frame.to_text() {
            if serde_json::from_str::<Value>(text).is_ok_and(|v| v["type"] == "queue_empty") {
                break;
            }
        }
    }

    let e = scrape(&s.http, &metrics_url).await;
    assert_eq!(
        e.types
            .get("signal_server_http_requests_total")
            .map(String::as_str),
        Some("counter")
    );
    for sample in &e.samples {
        for (label, value) in &sample.labels {
            for raw in [
                alice.username.as_str(),
                bob.username.as_str(),
                "4111",
                "4222",
                "/nope",
            ] {
                assert!(
                    !value.contains(raw),
                    "raw {raw:?} in label {label}={value:?} of {}",
                    sample.name
                );
            }
            if label == "route" {
                assert!(
                    ROUTE_TEMPLATES.contains(&value.as_str()),
                    "route label {value:?} is not a template"
                );
            }
        }
    }
    let requests = |route: &str, method: &str, status: &str| {
        e.value(
            "signal_server_http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(requests("/messages/:regId", "POST", "201"), Some(4.0));
    assert_eq!(requests("/messages/:regId", "GET", "200"), Some(2.0));
    assert_eq!(
        requests("/prekeybundle/:username/:regId", "GET", "200"),
        Some(1.0)
    );
    assert_eq!(requests("/auth/users", "POST", "201"), Some(2.0));
    assert_eq!(requests("/auth/jwt/create", "POST", "200"), Some(2.0));
    assert_eq!(requests("/device/*", "POST", "201"), Some(2.0));
    assert_eq!(requests("other", "GET", "404"), Some(2.0));
    assert_eq!(requests("/messages/:regId/ws", "GET", "101"), Some(1.0));

    let counts = e.check_histograms("signal_server_http_request_duration_seconds");
    assert_eq!(
        counts,
        requests_by_route(&e),
        "histogram counts and request counters disagree"
    );

    assert_eq!(e.gauge("signal_server_users"), 2.0);
    assert_eq!(e.gauge("signal_server_devices"), 2.0);
    assert_eq!(e.gauge("signal_server_queued_messages"), 4.0);
    assert_eq!(e.gauge("signal_server_prekeys"), (5 + 4 - 1) as f64);
    assert_eq!(e.gauge("signal_server_kyber_prekeys"), (3 + 2 - 1) as f64);
    assert_eq!(e.gauge("signal_server_websocket_connections"), 1.0);
    for family in e.types.keys() {
        assert!(e.helps.contains_key(family), "{family} has no HELP");
    }

    // Gauges follow the data: the queue drains, the socket closes.
    let queued: Vec<u64> = {
        let (_, q) = s
            .get(&format!("/messages/{}", bob.reg_id), &bob.token)
            .await;
        q.as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_u64().unwrap())
            .collect()
    };
    let (status, _) = s
        .delete(
            &format!("/messages/{}", bob.reg_id),
            &bob.token,
            json!(queued),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    drop(ws);
    let deadline = Instant::now() + BOUND;
    loop {
        let e = scrape(&s.http, &metrics_url).await;
        assert_eq!(e.gauge("signal_server_queued_messages"), 1.0);
        if e.gauge("signal_server_websocket_connections") == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed WebSocket is still counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    metrics.abort();
    stop(s).await;
}

// ---------------------------------------------------------------------------------------------
// 6. The binary with --metrics-listen
// ---------------------------------------------------------------------------------------------

/// A server process, killed (and reaped) when dropped.
struct Process {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Process {
    fn spawn(mut cmd: Command) -> Process {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn signal-server");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Process {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// The first word after `marker` in a log line, waiting (bounded) for it.
    fn wait_for(&mut self, marker: &str) -> String {
        if let Some(found) = self
            .log
            .iter()
            .find_map(|l| l.split(marker).nth(1).map(str::to_string))
        {
            return found.split_whitespace().next().unwrap_or_default().into();
        }
        let deadline = Instant::now() + BOUND;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if let Some(rest) = line.split(marker).nth(1) {
                        return rest.split_whitespace().next().unwrap_or_default().into();
                    }
                }
                Err(e) => panic!(
                    "no {marker:?} line ({e:?}; exited: {:?}):\n{}",
                    self.child.try_wait(),
                    self.log.join("\n")
                ),
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_logs_its_metrics_address_and_serves_metrics_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = bare_command();
    cmd.arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(["--pbkdf2-iterations", "1000", "--no-rate-limit"]);
    let mut server = tokio::task::spawn_blocking(move || {
        let mut p = Process::spawn(cmd);
        p.wait_for("listening on http://");
        p.wait_for("metrics on http://");
        p
    })
    .await
    .expect("start");
    let api = format!("http://{}", server.wait_for("listening on http://"));
    let metrics_url = format!("http://{}", server.wait_for("metrics on http://"));
    assert!(
        metrics_url.ends_with("/metrics"),
        "the log line does not give the URL: {metrics_url}"
    );
    let metrics_port = metrics_url
        .trim_end_matches("/metrics")
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .expect("a port in the metrics URL");
    assert_ne!(metrics_port, 0, "the log shows port 0, not the real one");
    assert!(!api.ends_with(":0"), "the log shows port 0: {api}");

    let http = reqwest::Client::builder()
        .timeout(BOUND)
        .build()
        .expect("client");
    for _ in 0..3 {
        let res = http
            .get(format!("{api}/health"))
            .send()
            .await
            .expect("health");
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = http
        .get(format!("{api}/metrics"))
        .send()
        .await
        .expect("api");
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "/metrics on the public API"
    );

    let e = scrape(&http, &metrics_url).await;
    assert_eq!(
        e.value(
            "signal_server_http_requests_total",
            &[("route", "/health"), ("method", "GET"), ("status", "200")]
        ),
        Some(3.0)
    );
    e.check_histograms("signal_server_http_request_duration_seconds");
    assert_eq!(e.gauge("signal_server_users"), 0.0);
    assert_eq!(e.gauge("signal_server_websocket_connections"), 0.0);
    // The API is not served on the metrics address.
    let metrics_base = metrics_url.trim_end_matches("/metrics");
    let res = http
        .get(format!("{metrics_base}/health"))
        .send()
        .await
        .expect("metrics address");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    drop(server);
}
