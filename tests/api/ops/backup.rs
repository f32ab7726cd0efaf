//! Backups: taken by the binary while writers keep going, consistent (every record names a
//! user that exists), holding everything acknowledged before it started, restored into a fresh
//! data dir to byte-identical records; and a backup file that is never overwritten unless
//! forced, and private whatever the mode of a leftover.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{assert_plain, cli_err, cli_ok, copy_dir, data_dir, path, pop_bundle, restore_summary};
use crate::attachments;
use crate::helpers::{
    bare_command, deliver, file_mode, fresh_data_dir, operator_ok, run, stop_closed, TestServer,
    BINARY_BOUND, PASSWORD,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

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
    /// owner user id → attachment ids
    attachments: BTreeMap<u64, BTreeSet<String>>,
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
                    assert_eq!(r["version"], 3, "{line}");
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
                (_, "attachment") => {
                    let id = r["id"].as_str().expect("id").to_string();
                    assert!(
                        b.attachments.entry(u("owner")).or_default().insert(id),
                        "attachment twice: {line}"
                    );
                }
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
        let owners = self.attachments.keys();
        for user in self.devices.keys().chain(&self.reset_tokens).chain(owners) {
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
        acked.push((deliver(&s, &alice, &bob, &format!("a{i}")).await, bob.id));
        acked.push((deliver(&s, &bob, &carol, &format!("b{i}")).await, carol.id));
        acked.push((
            deliver(&s, &carol, &alice, &format!("c{i}")).await,
            alice.id,
        ));
    }
    // A pop acknowledged before the backup: neither key may come back.
    let (pre, kyber) = pop_bundle(&s, &alice, &bob).await;
    assert_eq!((pre, kyber), (Some(1), Some(1)), "lowest keyIds first");
    let mut popped_before = vec![(bob.id, pre, kyber)];
    // An invite, a reset token and attachments, so that every record kind is in the backup.
    operator_ok(&dir, &["invites", "--count", "1"], None).await;
    operator_ok(&dir, &["users", "reset-token", "carol"], None).await;
    let picture = attachments::bytes(3000, 1);
    let sent = attachments::upload(&s, &carol.token, &picture, 1000).await;
    let under_way = attachments::create(&s, &alice.token, 5000).await;
    attachments::patch(&s, &alice.token, &under_way, 0, &picture[..1000]).await;

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
                        let id = deliver(&*s, from, to, &format!("load {i}")).await;
                        if !started.load(Ordering::SeqCst) {
                            seen.acked_before.push((id, to.id));
                        }
                    }
                    1 => {
                        let (requester, target) = (&users[i % 3], &users[(i + 2) % 3]);
                        let (pre, kyber) = pop_bundle(&*s, requester, target).await;
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
            let deadline = Instant::now() + BINARY_BOUND;
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
        first.attachments.values().map(BTreeSet::len).sum::<usize>(),
        2,
        "{:?}",
        first.attachments
    );
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
    // The blob store is copied after the backup, so that every record's bytes are in the copy.
    let blobs = work.path().join("blobs");
    copy_dir(&s.dir.path().join("attachments"), &blobs);
    stop_closed(s).await;

    // Restore into a fresh data dir, then back it up again (both offline, by the binary).
    let fresh = fresh_data_dir().await;
    let run = operator_ok(fresh.path(), &["restore", &file_arg], None).await;
    let summary = restore_summary(&run);
    fn count<T>(m: &BTreeMap<u64, BTreeSet<T>>) -> usize {
        m.values().map(BTreeSet::len).sum()
    }
    assert_eq!(
        summary,
        json!({
            "users": first.users.len(), "devices": first.devices.len(),
            "prekeys": count(&first.prekeys), "kyber_prekeys": count(&first.kyber),
            "messages": count(&first.messages), "invites": first.invites,
            "reset_tokens": first.reset_tokens.len(),
            "attachments": count(&first.attachments),
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

    // A server on the restored dir (with the blobs copied back) reports the stock and queues
    // the records say, and serves the attachments.
    copy_dir(&blobs, &fresh.path().join("attachments"));
    let r = TestServer::start_in(fresh).await;
    let carol = r.login("carol", PASSWORD).await;
    let got = attachments::download(&r, &carol, &sent).await;
    assert_eq!((got.status, got.body), (StatusCode::OK, picture));
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
    let id = deliver(&r, &bob, &bob, "after restore").await;
    assert!(id > first.max_id(), "message id {id} reuses an old id");
    stop_closed(r).await;
}

#[tokio::test]
async fn backup_refuses_to_overwrite_unless_forced_and_is_private() {
    let dir = data_dir().await;
    let d = path(dir.path());
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("b.jsonl");
    std::fs::write(&file, "keep me").unwrap();
    let err = cli_err(&["--data-dir", d, "backup", path(&file)], None);
    assert_plain(&err);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

    // A leftover temp file readable by all must not pass its mode on to the backup.
    let partial = file.with_extension("partial");
    std::fs::write(&partial, "old").unwrap();
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    cli_ok(&["--data-dir", d, "backup", "--force", path(&file)], None);
    assert_ne!(std::fs::read_to_string(&file).unwrap(), "keep me");
    assert_eq!(file_mode(&file), 0o600);
    assert!(!partial.exists());

    // Relative to where the operator stands, also when --force is not needed.
    let fresh = out_dir.path().join("fresh.jsonl");
    let mut cmd = bare_command();
    cmd.current_dir(out_dir.path())
        .args(["backup", "fresh.jsonl", "--data-dir", d]);
    run(cmd, None).ok();
    assert_eq!(file_mode(&fresh), 0o600);
}
