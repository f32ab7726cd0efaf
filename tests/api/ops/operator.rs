//! Operator commands: `users list/delete/set-password/reset-token`, `stats` and `invites`
//! against a live server; `users create` live and offline; commands that refuse a dir without
//! a database, take `--data-dir` after the subcommand and say what went wrong in a sentence; and
//! offline commands run as root that leave the files to the data dir's owner.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{
    assert_error, assert_plain, cli_err, cli_ok, data_dir, path, stats_of, try_login, users_of,
};
use crate::helpers::{
    deliver, files_under, operator, operator_ok, stop_closed, Binary, BinaryApi, TestServer,
    TestUser, PASSWORD,
};
use reqwest::StatusCode;
use serde_json::json;

/// The status of a login as `username` with `password`.
async fn login_status(server: &BinaryApi, username: &str, password: &str) -> StatusCode {
    let creds = json!({"username": username, "password": password});
    let (status, _) = server
        .call("POST", "/auth/jwt/create", None, Some(&creds))
        .await;
    status
}

/// A live server on its data dir: alice (device 11, 5 EC and 2 Kyber one-time keys), bob
/// (device 22, 3 and 1) with alice's two messages queued, and carol without a device.
struct Live {
    s: TestServer,
    dir: PathBuf,
    alice: TestUser,
    bob: TestUser,
    carol: TestUser,
}

async fn live() -> Live {
    let s = TestServer::start().await;
    let dir = s.dir.path().to_path_buf();
    let alice = s.user_with_device("alice", 11, 5, 2).await;
    let bob = s.user_with_device("bob", 22, 3, 1).await;
    let carol = s.user("carol").await;
    deliver(&s, &alice, &bob, "one").await;
    deliver(&s, &alice, &bob, "two").await;
    Live {
        s,
        dir,
        alice,
        bob,
        carol,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_list_and_stats_count_a_live_servers_records() {
    let Live {
        dir,
        alice,
        bob,
        carol,
        s: _server,
    } = live().await;
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
        ("attachments", 0),
        ("attachment_uploads_in_progress", 0),
        ("attachment_bytes", 0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(stats, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_delete_takes_the_device_keys_and_queue_and_kills_the_token_at_once() {
    let Live {
        s, dir, alice, bob, ..
    } = live().await;
    let run = operator_ok(&dir, &["users", "delete", "bob"], None).await;
    assert!(run.stdout.contains("deleted user bob"), "{}", run.stdout);
    let (status, body) = s.get("/auth/users/me", &bob.token).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "not_authenticated");
    let (status, body) = s
        .get(&format!("/prekeybundle/bob/{}", alice.reg_id), &alice.token)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "no_recipient");
    let run = operator(&dir, &["users", "delete", "nobody"], None).await;
    assert!(!run.success(), "deleting an unknown user succeeded");
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invites_prints_distinct_tokens_one_a_line() {
    let Live {
        s: _server, dir, ..
    } = live().await;
    let run = operator_ok(&dir, &["invites", "--count", "2"], None).await;
    let tokens: Vec<&str> = run.stdout.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(tokens.len(), 2, "{}", run.stdout);
    assert_ne!(tokens[0], tokens[1]);
    assert!(tokens
        .iter()
        .all(|t| t.len() >= 16 && !t.contains(char::is_whitespace)));
    let stats = stats_of(&operator_ok(&dir, &["stats"], None).await);
    assert_eq!(stats["invites"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn set_password_refuses_a_weak_one_and_a_good_one_revokes_older_tokens() {
    let Live { s, dir, alice, .. } = live().await;
    let args = ["users", "set-password", "alice"];
    let run = operator(&dir, &args, Some("password\n")).await;
    assert!(
        !run.success(),
        "a weak password was accepted: {}",
        run.stdout
    );
    let (status, _) = s.get("/auth/users/me", &alice.token).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a refused set-password revoked tokens"
    );
    // A good one revokes older tokens; the new password logs in, the old one does not.
    let new_password = "Marmalade-orbit-3117";
    let run = operator_ok(&dir, &args, Some(&format!("{new_password}\n"))).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reset_token_prints_a_uid_and_token_that_confirm_takes_once() {
    let Live { s, dir, alice, .. } = live().await;
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
    let (status, _) = s.get("/auth/users/me", &alice.token).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the reset kept old tokens"
    );
    s.login("alice", reset_password).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restore_refuses_a_live_server_and_a_data_dir_that_is_not_empty() {
    let Live { s, dir, .. } = live().await;
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("b.jsonl");
    let file_arg = file.display().to_string();
    operator_ok(&dir, &["backup", &file_arg], None).await;
    let run = operator(&dir, &["restore", &file_arg], None).await;
    assert!(!run.success(), "restore ran against a live server");
    assert!(
        run.stderr.contains("server is running"),
        "unclear message: {}",
        run.stderr
    );
    let users_before = operator_ok(&dir, &["users", "list"], None).await.stdout;
    let dir_handle = stop_closed(s).await;
    let run = operator(&dir, &["restore", &file_arg], None).await;
    assert!(
        !run.success(),
        "restore into a non-empty data dir succeeded"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_create_works_live_and_offline_with_closed_registration() {
    let dir = data_dir().await;
    let d = path(dir.path());
    let server = Binary::start(dir.path(), &["--registration", "closed"]).await;
    let eve = json!({"username": "eve", "password": PASSWORD});
    let (status, _) = server.call("POST", "/auth/users", None, Some(&eve)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Live, through the admin socket; --data-dir after the subcommand.
    let out = cli_ok(
        &[
            "users",
            "create",
            "alice",
            "--email",
            "a@x.org",
            "--data-dir",
            d,
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(out.contains("created user alice"), "{out}");
    assert!(
        !out.contains(PASSWORD),
        "the given password was echoed: {out}"
    );
    assert_eq!(
        login_status(&server, "alice", PASSWORD).await,
        StatusCode::OK
    );

    // Nothing on stdin: a password is generated and printed once.
    let out = cli_ok(&["--data-dir", d, "users", "create", "bob"], None);
    let generated = out
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .unwrap_or_else(|| panic!("no generated password in {out:?}"));
    assert_eq!(
        login_status(&server, "bob", generated).await,
        StatusCode::OK
    );

    // The API's rules: unique name and email, strong password, valid username.
    let err = cli_err(
        &["users", "create", "ALICE", "--data-dir", d],
        Some("x-Long-Unusual-77\n"),
    );
    assert_plain(&err);
    assert!(err.contains("username already exists"), "{err}");
    let err = cli_err(
        &[
            "users",
            "create",
            "carol",
            "--email",
            "A@x.org",
            "--data-dir",
            d,
        ],
        Some("x-Long-Unusual-77\n"),
    );
    assert!(err.contains("email already exists"), "{err}");
    let err = cli_err(
        &["users", "create", "carol", "--data-dir", d],
        Some("password\n"),
    );
    assert_plain(&err);
    assert!(err.contains("password:"), "{err}");
    let err = cli_err(
        &["users", "create", "no spaces", "--data-dir", d],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(err.contains("username:"), "{err}");
    let err = cli_err(
        &[
            "users",
            "create",
            "carol",
            "--email",
            "c\u{2028}c@x.org",
            "--data-dir",
            d,
        ],
        Some("x-Long-Unusual-77\n"),
    );
    assert!(err.contains("email:"), "{err}");
    assert_eq!(
        login_status(&server, "carol", "x-Long-Unusual-77").await,
        StatusCode::BAD_REQUEST
    );

    // Offline, with the server stopped; then the server knows the account.
    server.stop().await;
    let out = cli_ok(
        &["users", "create", "carol", "--data-dir", d],
        Some("x-Long-Unusual-77\n"),
    );
    assert!(out.contains("created user carol"), "{out}");
    let list = cli_ok(&["users", "list", "--data-dir", d], None);
    for name in ["alice", "bob", "carol"] {
        assert!(list.contains(name), "{list}");
    }
    let server = Binary::start(dir.path(), &["--registration", "closed"]).await;
    assert_eq!(
        login_status(&server, "carol", "x-Long-Unusual-77").await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn operator_commands_refuse_a_dir_without_a_database_and_create_nothing() {
    let empty = tempfile::tempdir().unwrap();
    let missing = empty.path().join("typo");
    for dir in [empty.path(), missing.as_path()] {
        for args in [
            &["users", "list"][..],
            &["stats"],
            &["invites", "--count", "2"],
            &["backup", "-"],
        ] {
            let mut all = vec!["--data-dir", path(dir)];
            all.extend_from_slice(args);
            let err = cli_err(&all, None);
            assert_plain(&err);
            assert!(err.contains("holds no signal-server database"), "{err}");
            assert!(err.contains("--data-dir"), "{err}");
        }
    }
    assert!(
        !missing.exists(),
        "an operator command created {}",
        missing.display()
    );
    let left: Vec<_> = std::fs::read_dir(empty.path()).unwrap().collect();
    assert!(left.is_empty(), "an operator command left {left:?}");
}

#[tokio::test]
async fn data_dir_is_accepted_after_the_subcommand() {
    let dir = data_dir().await;
    let d = path(dir.path());
    for args in [
        &["stats", "--data-dir", d][..],
        &["users", "list", "--data-dir", d],
        &["users", "--data-dir", d, "list"],
        &["--data-dir", d, "stats"],
    ] {
        let out = cli_ok(args, None);
        assert!(
            out.contains("users") || out.contains("username"),
            "{args:?}: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_errors_are_plain_sentences() {
    let dir = tempfile::tempdir().unwrap();
    let d = path(dir.path());
    let server = Binary::start(dir.path(), &[]).await;
    let dora = json!({"username": "dora", "password": PASSWORD});
    let (status, _) = server.call("POST", "/auth/users", None, Some(&dora)).await;
    assert_eq!(status, StatusCode::CREATED);
    server.stop().await;
    let err = cli_err(&["--data-dir", d, "users", "delete", "nobody"], None);
    assert_plain(&err);
    // A weak password: the rule, said as a sentence (was a JSON object).
    let err = cli_err(
        &["--data-dir", d, "users", "set-password", "dora"],
        Some("dora\n"),
    );
    assert_plain(&err);
    assert!(err.contains("password: "), "{err}");
    // A database sled cannot read: said as a sentence (was `Db("...")`).
    std::fs::write(dir.path().join("db").join("conf"), b"\xff\xfe not a config").unwrap();
    let err = cli_err(&["--data-dir", d, "stats"], None);
    assert_plain(&err);
    assert!(err.contains("cannot open the database"), "{err}");
}

/// Run as root (as the guide says) on a data dir that belongs to the service's user, an offline
/// command must not leave files the service cannot open.
#[tokio::test]
async fn offline_command_as_root_keeps_files_owned_by_the_data_dir_owner() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    // As under a `DynamicUser=` unit: the dir inside a parent only root may enter
    // (/var/lib/private, 0700), reached through a symlink (/var/lib/signal-server).
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let dir = private.path().join("signal-server");
    Binary::start(&dir, &[]).await.stop().await;
    let nobody = 65534;
    chown_all(&dir, nobody);
    let link = tempfile::tempdir().unwrap();
    let linked = link.path().join("signal-server");
    std::os::unix::fs::symlink(&dir, &linked).unwrap();
    let d = path(&linked);
    cli_ok(&["--data-dir", d, "stats"], None);
    assert_owned_by(&dir, nobody);
    let password = format!("{PASSWORD}\n");
    cli_ok(
        &["--data-dir", d, "users", "create", "grace"],
        Some(&password),
    );
    assert_owned_by(&dir, nobody);
    // A file it cannot write as that user: the error says what to do instead.
    let target = private.path().join("b.jsonl");
    let err = cli_err(&["--data-dir", d, "backup", path(&target)], None);
    assert_plain(&err);
    assert!(err.contains("backup - > FILE"), "{err}");
}

fn assert_owned_by(dir: &Path, owner: u32) {
    for f in files_under(dir) {
        let uid = std::fs::metadata(&f).unwrap().uid();
        assert_eq!(uid, owner, "{} belongs to uid {uid}", f.display());
    }
}

fn chown_all(dir: &Path, id: u32) {
    std::os::unix::fs::chown(dir, Some(id), Some(id)).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            chown_all(&p, id);
        } else {
            std::os::unix::fs::chown(&p, Some(id), Some(id)).unwrap();
        }
    }
}
