//! A self-hoster's first day with the built binary: `users create` (live, offline, closed
//! registration), operator commands that refuse a dir without a database, `--data-dir` after the
//! subcommand, plain-sentence errors, `backup` that will not overwrite, file modes whatever the
//! umask, commands run as root leaving no root-owned files, host names in `--listen`, a checked
//! `--public-url`, and the access log.
//!
//! Every server here is the real binary on a temp data dir (`--listen 127.0.0.1:0`, port from
//! its `listening on` line); operator commands are the binary too. Children are killed on drop.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_signal-server");
const PASSWORD: &str = "tangerine-Voyage-42";
/// Upper bound of any wait (a start, an exit, a command); never a timing check.
const BOUND: Duration = Duration::from_secs(60);

/// The binary with a clean environment (no inherited `SIGNAL_SERVER_*`), plain info logs.
fn bin() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SIGNAL_SERVER_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "info").env("RUST_LOG_STYLE", "never");
    cmd
}

/// Runs `signal-server <args>` to its end (bounded), feeding `stdin` (none: /dev/null).
fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = bin();
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn signal-server");
    if let Some(text) = stdin {
        let _ = child.stdin.take().unwrap().write_all(text.as_bytes());
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    rx.recv_timeout(BOUND)
        .unwrap_or_else(|_| panic!("signal-server {args:?} did not finish within {BOUND:?}"))
        .expect("wait for signal-server")
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// A command that must succeed; answers its stdout.
fn run_ok(args: &[&str], stdin: Option<&str>) -> String {
    let out = run(args, stdin);
    assert!(
        out.status.success(),
        "signal-server {args:?} failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A command that must fail; answers its stderr.
fn run_err(args: &[&str], stdin: Option<&str>) -> String {
    let out = run(args, stdin);
    assert!(
        !out.status.success(),
        "signal-server {args:?} succeeded:\n{}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

/// An operator-facing error is a sentence: no Rust debug strings, no JSON.
fn assert_plain(stderr: &str) {
    for debug in ["Corrupt(", "Db(", "Some(", "{\"", "Os {"] {
        assert!(!stderr.contains(debug), "debug text in {stderr:?}");
    }
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("signal-server: "), "{stderr:?}");
}

/// The real server. Dropping it kills the process.
struct Server {
    child: Child,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// `signal-server --data-dir DIR --listen 127.0.0.1:0 <extra>`, up and listening.
    fn start(dir: &Path, extra: &[&str]) -> Server {
        let mut cmd = bin();
        cmd.arg("--data-dir").arg(dir);
        Server::spawn(cmd.args(["--listen", "127.0.0.1:0"]).args(extra))
    }

    fn spawn(cmd: &mut Command) -> Server {
        let mut child = cmd
            .args(["--pbkdf2-iterations", "1000", "--no-rate-limit"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn signal-server");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        // Built first, so that a failed start still kills and reaps the child (Drop).
        let mut server = Server {
            child,
            base: String::new(),
            log,
        };
        let deadline = Instant::now() + BOUND;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        server.base = format!("http://{}", rest.trim());
                        return server;
                    }
                }
                Err(_) => panic!("no `listening on` line:\n{}", server.logs()),
            }
        }
    }

    fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    fn stop(mut self) -> String {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + BOUND;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "no exit:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
        self.logs()
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, String) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = reqwest::Client::new().request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.timeout(BOUND).send().await.expect("request");
        (res.status(), res.text().await.unwrap_or_default())
    }

    async fn login(&self, username: &str, password: &str) -> StatusCode {
        let body = json!({"username": username, "password": password});
        self.call("POST", "/auth/jwt/create", Some(body)).await.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A data dir holding a database, made the way an operator makes one: by starting the server.
fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    Server::start(dir.path(), &[]).stop();
    dir
}

fn path(dir: &Path) -> &str {
    dir.to_str().unwrap()
}

/// Every file under `dir` (not dirs), recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

// ---------------------------------------------------------------------------------------------
// users create
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_create_works_live_and_offline_with_closed_registration() {
    let dir = data_dir();
    let d = path(dir.path());
    let server = Server::start(dir.path(), &["--registration", "closed"]);
    let (status, _) = server
        .call(
            "POST",
            "/auth/users",
            Some(json!({"username": "eve", "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Live, through the admin socket; --data-dir after the subcommand.
    let out = run_ok(
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
    assert_eq!(server.login("alice", PASSWORD).await, StatusCode::OK);

    // Nothing on stdin: a password is generated and printed once.
    let out = run_ok(&["--data-dir", d, "users", "create", "bob"], None);
    let generated = out
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .unwrap_or_else(|| panic!("no generated password in {out:?}"));
    assert_eq!(server.login("bob", generated).await, StatusCode::OK);

    // The API's rules: unique name and email, strong password, valid username.
    let err = run_err(
        &["users", "create", "ALICE", "--data-dir", d],
        Some("x-Long-Unusual-77\n"),
    );
    assert_plain(&err);
    assert!(err.contains("username already exists"), "{err}");
    let err = run_err(
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
    let err = run_err(
        &["users", "create", "carol", "--data-dir", d],
        Some("password\n"),
    );
    assert_plain(&err);
    assert!(err.contains("password:"), "{err}");
    let err = run_err(
        &["users", "create", "no spaces", "--data-dir", d],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(err.contains("username:"), "{err}");
    assert_eq!(
        server.login("carol", "x-Long-Unusual-77").await,
        StatusCode::BAD_REQUEST
    );

    // Offline, with the server stopped; then the server knows the account.
    server.stop();
    let out = run_ok(
        &["users", "create", "carol", "--data-dir", d],
        Some("x-Long-Unusual-77\n"),
    );
    assert!(out.contains("created user carol"), "{out}");
    let list = run_ok(&["users", "list", "--data-dir", d], None);
    for name in ["alice", "bob", "carol"] {
        assert!(list.contains(name), "{list}");
    }
    let server = Server::start(dir.path(), &["--registration", "closed"]);
    assert_eq!(
        server.login("carol", "x-Long-Unusual-77").await,
        StatusCode::OK
    );
}

// ---------------------------------------------------------------------------------------------
// The data dir of operator commands
// ---------------------------------------------------------------------------------------------

#[test]
fn operator_commands_refuse_a_dir_without_a_database_and_create_nothing() {
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
            let err = run_err(&all, None);
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

#[test]
fn data_dir_is_accepted_after_the_subcommand() {
    let dir = data_dir();
    let d = path(dir.path());
    for args in [
        &["stats", "--data-dir", d][..],
        &["users", "list", "--data-dir", d],
        &["users", "--data-dir", d, "list"],
        &["--data-dir", d, "stats"],
    ] {
        let out = run_ok(args, None);
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
    let server = Server::start(dir.path(), &[]);
    let dora = json!({"username": "dora", "password": PASSWORD});
    let (status, _) = server.call("POST", "/auth/users", Some(dora)).await;
    assert_eq!(status, StatusCode::CREATED);
    server.stop();
    let err = run_err(&["--data-dir", d, "users", "delete", "nobody"], None);
    assert_plain(&err);
    // A weak password: the rule, said as a sentence (was a JSON object).
    let err = run_err(
        &["--data-dir", d, "users", "set-password", "dora"],
        Some("dora\n"),
    );
    assert_plain(&err);
    assert!(err.contains("password: "), "{err}");
    // A database sled cannot read: said as a sentence (was `Db("...")`).
    std::fs::write(dir.path().join("db").join("conf"), b"\xff\xfe not a config").unwrap();
    let err = run_err(&["--data-dir", d, "stats"], None);
    assert_plain(&err);
    assert!(err.contains("cannot open the database"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// backup
// ---------------------------------------------------------------------------------------------

#[test]
fn backup_refuses_to_overwrite_unless_forced_and_is_private() {
    let dir = data_dir();
    let d = path(dir.path());
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("b.jsonl");
    std::fs::write(&file, "keep me").unwrap();
    let err = run_err(&["--data-dir", d, "backup", path(&file)], None);
    assert_plain(&err);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

    // A leftover temp file readable by all must not pass its mode on to the backup.
    let partial = file.with_extension("partial");
    std::fs::write(&partial, "old").unwrap();
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    run_ok(&["--data-dir", d, "backup", "--force", path(&file)], None);
    assert_ne!(std::fs::read_to_string(&file).unwrap(), "keep me");
    assert_eq!(mode(&file), 0o600);
    assert!(!partial.exists());

    // Relative to where the operator stands, also when --force is not needed.
    let fresh = out_dir.path().join("fresh.jsonl");
    let mut cmd = bin();
    let out = cmd
        .current_dir(out_dir.path())
        .args(["backup", "fresh.jsonl", "--data-dir", d])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(mode(&fresh), 0o600);
}

// ---------------------------------------------------------------------------------------------
// File modes and ownership
// ---------------------------------------------------------------------------------------------

/// Run as root (as the guide says) on a data dir that belongs to the service's user, an offline
/// command must not leave files the service cannot open.
#[test]
fn offline_command_as_root_keeps_files_owned_by_the_data_dir_owner() {
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
    Server::start(&dir, &[]).stop();
    let nobody = 65534;
    chown_all(&dir, nobody);
    let link = tempfile::tempdir().unwrap();
    let linked = link.path().join("signal-server");
    std::os::unix::fs::symlink(&dir, &linked).unwrap();
    let d = path(&linked);
    run_ok(&["--data-dir", d, "stats"], None);
    assert_owned_by(&dir, nobody);
    let password = format!("{PASSWORD}\n");
    run_ok(
        &["--data-dir", d, "users", "create", "grace"],
        Some(&password),
    );
    assert_owned_by(&dir, nobody);
    // A file it cannot write as that user: the error says what to do instead.
    let target = private.path().join("b.jsonl");
    let err = run_err(&["--data-dir", d, "backup", path(&target)], None);
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

// ---------------------------------------------------------------------------------------------
// The first requests: GET /, HEAD /health, the access log
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_head_health_and_an_access_line_per_request_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    // Answers that went well are logged at debug (refusals at info, on by default).
    let mut cmd = bin();
    cmd.env("RUST_LOG", "info,signal_server::access=debug")
        .arg("--data-dir")
        .arg(dir.path());
    let server =
        Server::spawn(cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]));
    let (status, body) = server.call("GET", "/", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let about: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(about["name"], "signal-server");
    assert_eq!(about["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        about["docs"].as_str().is_some_and(|d| d.contains("API.md")),
        "{about}"
    );
    assert_eq!(body.lines().count(), 1);

    let (status, body) = server.call("HEAD", "/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());

    let secret = "Secret-Password-Never-Logged-91";
    let (status, _) = server
        .call(
            "POST",
            "/auth/users",
            Some(json!({"username": "frank", "password": secret})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        server
            .login("frank", "Wrong-Password-Never-Logged-92")
            .await,
        StatusCode::BAD_REQUEST
    );
    let (status, _) = server
        .call("GET", "/prekeybundle/frank/987654321", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server.call("GET", "/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The version and the `/` route in /metrics.
    let metrics = scrape(&server).await;
    let version = env!("CARGO_PKG_VERSION");
    let build_info = format!("signal_server_build_info{{version=\"{version}\"}} 1");
    assert!(metrics.lines().any(|l| l == build_info), "{metrics}");
    let root = r#"signal_server_http_requests_total{route="/",method="GET",status="200"} 1"#;
    assert!(metrics.lines().any(|l| l == root), "{metrics}");

    let logs = server.stop();
    assert!(
        logs.contains(&format!(
            "signal-server {} starting",
            env!("CARGO_PKG_VERSION")
        )),
        "{logs}"
    );
    let access: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("signal_server::access"))
        .collect();
    for want in [
        "GET / 200",
        "HEAD /health 200",
        "POST /auth/users 201",
        "POST /auth/jwt/create 400",
        "GET /prekeybundle/:username/:regId 401",
        "GET other 404",
    ] {
        let line = access
            .iter()
            .find(|l| l.contains(want))
            .unwrap_or_else(|| panic!("no access line `{want}` in\n{logs}"));
        assert!(line.ends_with(" from 127.0.0.1"), "{line}");
    }
    for secret in [
        secret,
        "Wrong-Password-Never-Logged-92",
        "frank",
        "987654321",
    ] {
        assert!(!logs.contains(secret), "{secret} in the log:\n{logs}");
    }
}

/// The metrics text, from the address the server logs (`metrics on http://…/metrics`).
async fn scrape(server: &Server) -> String {
    let deadline = Instant::now() + BOUND;
    let url = loop {
        let logs = server.logs();
        if let Some(rest) = logs.split("metrics on http://").nth(1) {
            break format!("http://{}", rest.split_whitespace().next().unwrap());
        }
        assert!(Instant::now() < deadline, "no metrics address:\n{logs}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let res = reqwest::Client::new().get(url).timeout(BOUND).send().await;
    res.expect("scrape").text().await.expect("metrics text")
}
