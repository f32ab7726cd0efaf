//! Restores of crafted backups, by the real binary into a real data dir: every id and count is
//! checked and no id can wrap, the API's rules apply to every record, a line is never read whole
//! past its limit, and a restore is all or nothing (a failed or killed one leaves the data dir
//! as it was, and a retry works).
//!
//! On PostgreSQL (`SIGNAL_SERVER_TEST_DATABASE_URL`) every data dir a restore fills has a new
//! empty database of its own (`fresh_data_dir`), the restore goes into it (`--database-url`),
//! and "nothing behind" means that database holds no rows.
//!
//! Crafted backups start from a real one (a server with two users, devices, keys and a queued
//! message, backed up by `Storage::backup`), edited line by line; the end record's count is
//! recomputed unless a test is about it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::restore_summary;
use crate::attachments;
use crate::helpers::{
    database_rows, fresh_data_dir, message_text, on_postgres, operator_command, run, stop_closed,
    transaction_open, Feed, Run, TestServer, BINARY_BOUND, PASSWORD,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A restore into `dir` (`file`, or `-` with `feed` writing standard input), run to its end.
fn restore(dir: &Path, file: &str, feed: Option<Feed>) -> Run {
    run(operator_command(dir, &["restore", file]), feed)
}

/// Restores a backup file; answers the run.
fn restore_file(dir: &Path, file: &Path) -> Run {
    restore(dir, &file.display().to_string(), None)
}

/// A restore that must be refused, cleanly (no panic), naming `why`, and leave no database.
async fn assert_refused(dir: &Path, file: &Path, why: &str) {
    let run = restore_file(dir, file);
    assert!(
        !run.success(),
        "restore accepted a backup with {why}: {run:?}"
    );
    assert!(
        run.stderr.contains("restore refused") && !run.stderr.contains("panicked"),
        "restore of a backup with {why} did not refuse it clearly: {}",
        run.stderr
    );
    assert_no_database(dir).await;
}

/// The data dir holds no database and no half-restored one; on PostgreSQL its database holds
/// no rows either.
async fn assert_no_database(dir: &Path) {
    for name in ["db", "db.restoring"] {
        assert!(
            !dir.join(name).exists(),
            "{name} was left in the data dir by a failed restore"
        );
    }
    if on_postgres() {
        assert_eq!(
            database_rows(dir).await,
            0,
            "a failed restore left rows in the database"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Backups
// ---------------------------------------------------------------------------------------------

/// The records of a real backup without its end record: alice (id, device reg 7, 3 EC and 2
/// Kyber prekeys) with a message from bob queued and an attachment of 100 bytes, and bob
/// (device reg 8).
async fn real_records() -> Vec<Value> {
    let s = TestServer::start().await;
    let alice = s.user_with_device("alice", 7, 3, 2).await;
    let bob = s.user_with_device("bob", 8, 1, 1).await;
    attachments::upload(&s, &alice.token, &attachments::bytes(100, 1), 100).await;
    let (status, res) = s
        .post(
            "/messages/8",
            &bob.token,
            json!({"recipient": "alice", "message": message_text(alice.reg_id, "hi")}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "send: {res}");
    let mut out = Vec::new();
    s.app.storage.backup(&mut out).await.expect("backup");
    s.stop().await;
    let mut records: Vec<Value> = String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(records.pop().expect("end")["type"], "end");
    records
}

/// Writes `records` and an end record counting them to a file in `dir`.
fn write_backup(dir: &Path, name: &str, records: &[Value]) -> PathBuf {
    let mut lines: Vec<String> = records.iter().map(Value::to_string).collect();
    lines.push(json!({"type": "end", "records": records.len()}).to_string());
    write_lines(dir, name, &lines)
}

fn write_lines(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").expect("write backup");
    path
}

fn of_type<'a>(records: &'a mut [Value], kind: &str) -> impl Iterator<Item = &'a mut Value> {
    let kind = kind.to_string();
    records.iter_mut().filter(move |r| r["type"] == kind)
}

fn first_of<'a>(records: &'a mut [Value], kind: &str) -> &'a mut Value {
    of_type(records, kind)
        .next()
        .unwrap_or_else(|| panic!("no {kind} record"))
}

fn user_id(records: &[Value], name: &str) -> u64 {
    records
        .iter()
        .find(|r| r["type"] == "user" && r["username"] == name)
        .and_then(|r| r["id"].as_u64())
        .unwrap_or_else(|| panic!("no user {name}"))
}

/// Gives user `from` the id `to`, in their record and every record that names them.
fn renumber(records: &mut [Value], from: u64, to: u64) {
    for r in records.iter_mut() {
        for field in ["id", "user", "recipient", "owner"] {
            let is_user_field = field != "id" || r["type"] == "user";
            if is_user_field && r[field].as_u64() == Some(from) {
                r[field] = json!(to);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ids
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn ids_at_or_over_the_ceiling_are_refused_and_new_ids_continue_above_restored_ones() {
    let records = real_records().await;
    let work = fresh_data_dir().await;
    let alice = user_id(&records, "alice");
    for (id, name) in [
        (u64::MAX, "max"),
        (u64::MAX - 1, "max-1"),
        (1 << 62, "ceiling"),
    ] {
        let mut crafted = records.clone();
        renumber(&mut crafted, alice, id);
        let file = write_backup(work.path(), &format!("{name}.jsonl"), &crafted);
        let dir = fresh_data_dir().await;
        assert_refused(dir.path(), &file, &format!("user id {id}")).await;
    }
    let mut crafted = records.clone();
    first_of(&mut crafted, "message")["id"] = json!(0);
    let file = write_backup(work.path(), "zero.jsonl", &crafted);
    assert_refused(work.path(), &file, "message id 0").await;

    // The largest id allowed restores; the next registration gets an id above it, and the
    // restored user keeps her account and her queue.
    let top = (1u64 << 62) - 1;
    let mut crafted = records.clone();
    renumber(&mut crafted, alice, top);
    let file = write_backup(work.path(), "top.jsonl", &crafted);
    let dir = fresh_data_dir().await;
    restore_summary(&restore_file(dir.path(), &file));
    let s = TestServer::start_in(dir).await;
    let carol = s.user("carol").await;
    assert!(carol.id > top, "new id {} is not above {top}", carol.id);
    let token = s.login("alice", PASSWORD).await;
    let (status, me) = s.get("/auth/users/me", &token).await;
    assert_eq!((status, me["id"].as_u64()), (StatusCode::OK, Some(top)));
    let (status, queue) = s.get("/messages/7", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(queue.as_array().map(Vec::len), Some(1), "{queue}");
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// All or nothing
// ---------------------------------------------------------------------------------------------

/// Header, `n` users with alice's password hash (ids 1..=n), and nothing else.
fn many_users(records: &[Value], n: u64) -> Vec<Value> {
    let hash = records
        .iter()
        .find(|r| r["type"] == "user")
        .map(|r| r["passwordHash"].clone())
        .expect("a user");
    let mut out = vec![records[0].clone()];
    out.extend((1..=n).map(|id| {
        json!({"type": "user", "id": id, "username": format!("user{id}"), "email": "",
               "passwordHash": hash, "tokenVersion": 0})
    }));
    out
}

#[tokio::test]
async fn a_restore_that_fails_part_way_leaves_nothing_behind_and_a_retry_works() {
    let records = real_records().await;
    let work = tempfile::tempdir().expect("tempdir");
    let good = many_users(&records, 3000);
    let mut bad = good.clone();
    bad.push(
        json!({"type": "user", "id": 5000, "username": "not valid!", "email": "",
                    "passwordHash": good[1]["passwordHash"], "tokenVersion": 0}),
    );
    let bad = write_backup(work.path(), "bad.jsonl", &bad);
    let dir = fresh_data_dir().await;
    assert_refused(dir.path(), &bad, "a bad line after 3,000 users").await;
    let run = restore_file(dir.path(), &bad);
    assert!(
        run.stderr.contains("line 3002"),
        "the error does not name the bad line: {}",
        run.stderr
    );

    let good = write_backup(work.path(), "good.jsonl", &good);
    assert_eq!(
        restore_summary(&restore_file(dir.path(), &good))["users"],
        3000
    );
    let s = TestServer::start_in(dir).await;
    s.login("user3000", PASSWORD).await;
    s.stop().await;
}

#[tokio::test]
async fn a_database_without_records_is_replaced_by_the_restored_one() {
    let records = real_records().await;
    let work = tempfile::tempdir().expect("tempdir");
    let file = write_backup(work.path(), "real.jsonl", &records);
    // A server that started once and was never used leaves a database with no records.
    let dir = stop_closed(TestServer::start().await).await;
    assert_eq!(
        restore_summary(&restore_file(dir.path(), &file))["users"],
        2
    );
    let s = TestServer::start_in(dir).await;
    s.login("alice", PASSWORD).await;
    s.stop().await;
}

#[tokio::test]
async fn a_killed_restore_leaves_no_database_and_the_next_one_cleans_up() {
    let records = real_records().await;
    let lines: Vec<String> = many_users(&records, 2000)
        .iter()
        .map(Value::to_string)
        .collect();
    let dir = fresh_data_dir().await;
    let building = dir.path().join("db.restoring");
    let mut child = operator_command(dir.path(), &["restore", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all((lines.join("\n") + "\n").as_bytes())
        .expect("feed");
    // The users are in (the input stays open, so the restore waits for more); kill it.
    let deadline = Instant::now() + BINARY_BOUND;
    while !restore_under_way(dir.path()).await {
        assert!(Instant::now() < deadline, "no restore under way");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::thread::sleep(Duration::from_secs(1));
    child.kill().expect("kill");
    child.wait().expect("wait");
    drop(stdin);
    assert!(
        !dir.path().join("db").exists(),
        "a killed restore left a db"
    );
    if on_postgres() {
        assert_eq!(
            database_rows(dir.path()).await,
            0,
            "a killed restore left rows"
        );
    }

    let work = tempfile::tempdir().expect("tempdir");
    let file = write_backup(work.path(), "real.jsonl", &records);
    assert_eq!(
        restore_summary(&restore_file(dir.path(), &file))["users"],
        2
    );
    assert!(!building.exists(), "the next restore left db.restoring");
    let s = TestServer::start_in(dir).await;
    let leftover = s.app.storage.user_by_name("user1").await.expect("lookup");
    assert!(leftover.is_none(), "a user of the killed restore is served");
    s.login("alice", PASSWORD).await;
    s.stop().await;
}

/// Whether a restore into `dir` is writing: sled builds `db.restoring`; on PostgreSQL the
/// restore's transaction is open.
async fn restore_under_way(dir: &Path) -> bool {
    if on_postgres() {
        transaction_open(dir).await
    } else {
        dir.join("db.restoring").exists()
    }
}

// ---------------------------------------------------------------------------------------------
// The API's rules
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn usernames_and_emails_differing_only_in_case_are_refused() {
    let records = real_records().await;
    let work = fresh_data_dir().await;
    let mut crafted = records.clone();
    first_of(&mut crafted, "user")["email"] = json!("Alice@Example.org");
    let mut twin = first_of(&mut crafted, "user").clone();
    twin["id"] = json!(9000);
    twin["username"] = json!("ALICE");
    twin["email"] = json!("");
    let at = crafted
        .iter()
        .rposition(|r| r["type"] == "user")
        .expect("users")
        + 1;
    crafted.insert(at, twin.clone());
    let file = write_backup(work.path(), "name.jsonl", &crafted);
    assert_refused(work.path(), &file, "usernames alice and ALICE").await;

    crafted.remove(at);
    twin["username"] = json!("alice2");
    twin["email"] = json!("alice@EXAMPLE.org");
    crafted.insert(at, twin);
    let file = write_backup(work.path(), "email.jsonl", &crafted);
    assert_refused(work.path(), &file, "emails differing only in case").await;
}

#[tokio::test]
async fn a_line_over_the_limit_is_refused_without_being_read_whole() {
    let header = real_records().await[0].to_string();
    let dir = fresh_data_dir().await;
    const LINE: u64 = 100 << 20;
    let feed: Feed = Box::new(move |mut stdin| {
        let mut fed = 0u64;
        let start = format!("{header}\n{{\"type\":\"user\",\"id\":1,\"username\":\"");
        if stdin.write_all(start.as_bytes()).is_err() {
            return fed;
        }
        let chunk = vec![b'a'; 64 << 10];
        while fed < LINE {
            if stdin.write_all(&chunk).is_err() {
                return fed;
            }
            fed += chunk.len() as u64;
        }
        // The rest of the user record (a restore without a line limit accepts it) and the end.
        let end = "\",\"email\":\"\",\"passwordHash\":\"x\",\"tokenVersion\":0}\n\
                   {\"type\":\"end\",\"records\":2}\n";
        let _ = stdin.write_all(end.as_bytes());
        fed
    });
    let run = restore(dir.path(), "-", Some(feed));
    let fed = run.fed;
    assert!(!run.success(), "a 100 MB line was accepted: {}", run.stdout);
    assert!(
        run.stderr.contains("line 2") && run.stderr.contains("longer than"),
        "unclear refusal: {}",
        run.stderr
    );
    assert!(
        fed < LINE,
        "the restore read the whole 100 MB line before refusing it"
    );
    assert!(
        run.peak_kb < 80 << 10,
        "the restore held {} kB for a 100 MB line",
        run.peak_kb
    );
    assert_no_database(dir.path()).await;
}

/// One edit of a real backup that a restore must refuse.
struct Case {
    why: &'static str,
    edit: fn(&mut Vec<Value>),
}

fn kyber_b64(type_byte: u8) -> Value {
    let mut key = vec![type_byte];
    key.extend([1u8; 1568]);
    json!(signal_server::crypto::b64::encode(&key))
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            why: "a 32-byte identity key",
            edit: |r| {
                first_of(r, "device")["identityKey"] =
                    json!(signal_server::crypto::b64::encode(&[5u8; 32]))
            },
        },
        Case {
            why: "a 63-byte signature",
            edit: |r| {
                first_of(r, "device")["signedPreKey"]["signature"] =
                    json!(signal_server::crypto::b64::encode(&[1u8; 63]))
            },
        },
        Case {
            why: "a Kyber prekey with an EC type byte",
            edit: |r| first_of(r, "kyberPreKey")["key"]["publicKey"] = kyber_b64(0x05),
        },
        Case {
            why: "registrationId 1000000",
            edit: |r| first_of(r, "device")["registrationId"] = json!(1_000_000),
        },
        Case {
            why: "keyId 16777216",
            edit: |r| first_of(r, "preKey")["key"]["keyId"] = json!(16_777_216),
        },
        Case {
            why: "a device address naming another user",
            edit: |r| first_of(r, "device")["address"] = json!("mallory.1"),
        },
        Case {
            why: "device id 128",
            edit: |r| first_of(r, "device")["address"] = json!("alice.128"),
        },
        Case {
            why: "a prekey of an unknown user",
            edit: |r| first_of(r, "preKey")["user"] = json!(424_242),
        },
        Case {
            why: "a message for an unknown user",
            edit: |r| first_of(r, "message")["recipient"] = json!(424_242),
        },
        Case {
            why: "a version 1 message not addressed to its recipient's registrationId",
            edit: |r| {
                r[0]["version"] = json!(1);
                r.retain(|r| r["type"] != "attachment");
                first_of(r, "message")["content"] = json!(message_text(999, "hi"))
            },
        },
        Case {
            why: "a message over --max-message-bytes",
            edit: |r| {
                first_of(r, "message")["content"] = json!(message_text(7, &"x".repeat(70_000)))
            },
        },
        Case {
            why: "a message id twice",
            edit: |r| {
                let m = first_of(r, "message").clone();
                r.push(m)
            },
        },
        Case {
            why: "a user id twice",
            edit: |r| {
                let mut u = first_of(r, "user").clone();
                u["username"] = json!("someone");
                r.insert(1, u)
            },
        },
        Case {
            why: "an invalid email",
            edit: |r| first_of(r, "user")["email"] = json!("not an email"),
        },
        Case {
            why: "a password hash that is not one",
            edit: |r| first_of(r, "user")["passwordHash"] = json!("plain"),
        },
        Case {
            why: "a password hash of 4294967295 iterations",
            edit: |r| {
                let user = first_of(r, "user");
                let hash = user["passwordHash"].as_str().expect("hash").to_string();
                let parts: Vec<&str> = hash.split('$').collect();
                user["passwordHash"] = json!(format!(
                    "pbkdf2_sha256$4294967295${}${}",
                    parts[2], parts[3]
                ));
            },
        },
        Case {
            why: "101 one-time prekeys for one device",
            edit: |r| {
                let key = first_of(r, "preKey").clone();
                for id in 1000..1101 {
                    let mut k = key.clone();
                    k["key"]["keyId"] = json!(id);
                    r.push(k);
                }
            },
        },
        Case {
            why: "an attachment of an unknown user",
            edit: |r| first_of(r, "attachment")["owner"] = json!(424_242),
        },
        Case {
            why: "an attachment id twice",
            edit: |r| {
                let a = first_of(r, "attachment").clone();
                r.push(a)
            },
        },
        Case {
            why: "an attachment's offset past its length",
            edit: |r| first_of(r, "attachment")["offset"] = json!(101),
        },
        Case {
            why: "an attachment over --max-attachment-bytes",
            edit: |r| {
                let a = first_of(r, "attachment");
                a["length"] = json!(200 << 20);
                a["offset"] = json!(200 << 20);
            },
        },
        Case {
            why: "an attachment in a version 2 backup",
            edit: |r| r[0]["version"] = json!(2),
        },
        Case {
            why: "no header",
            edit: |r| {
                r.remove(0);
            },
        },
    ]
}

#[tokio::test]
async fn records_that_break_the_api_rules_are_refused() {
    let records = real_records().await;
    let work = fresh_data_dir().await;
    for (n, case) in cases().iter().enumerate() {
        let mut crafted = records.clone();
        (case.edit)(&mut crafted);
        let file = write_backup(work.path(), &format!("case{n}.jsonl"), &crafted);
        assert_refused(work.path(), &file, case.why).await;
    }
    // The end record's count is checked.
    let mut lines: Vec<String> = records.iter().map(Value::to_string).collect();
    lines.push(json!({"type": "end", "records": records.len() + 1}).to_string());
    let file = write_lines(work.path(), "count.jsonl", &lines);
    assert_refused(work.path(), &file, "a wrong end count").await;
    // The unedited backup restores (the cases above fail for their edit alone).
    let file = write_backup(work.path(), "real.jsonl", &records);
    restore_summary(&restore_file(work.path(), &file));
}
