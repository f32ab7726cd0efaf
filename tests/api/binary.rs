//! The built binary as an operator runs it: flags and environment, the data-dir lock, graceful
//! shutdown on SIGTERM, and durability across `kill -9` (nothing acknowledged is lost, no
//! one-time prekey is handed out twice).
//!
//! Every test spawns `signal-server` as a child process on a temp data dir with
//! `--listen 127.0.0.1:0`, learns the port from the `listening on http://…` log line, and talks
//! to it over real HTTP. Children are killed when their guard drops, pass or fail.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::{TestUser, PASSWORD};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use signal_server::crypto::KeyPair;
use tokio::sync::{mpsc, Notify};

const BIN: &str = env!("CARGO_BIN_EXE_signal-server");
/// Upper bound for a start (first start creates the database) or an exit; never a timing check.
const BOUND: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The child process
// ---------------------------------------------------------------------------------------------

/// A command for the binary with a clean environment: no inherited `SIGNAL_SERVER_*`, logging at
/// info without colour, no stdin.
fn bare_command() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SIGNAL_SERVER_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "info")
        .env("RUST_LOG_STYLE", "never")
        .stdin(Stdio::null());
    cmd
}

/// The usual test flags on `data_dir`.
fn server_command(data_dir: &Path) -> Command {
    let mut cmd = bare_command();
    cmd.arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(["--pbkdf2-iterations", "1000"])
        .arg("--no-rate-limit");
    cmd
}

/// A running server. Dropping it kills the process (SIGKILL) and reaps it.
struct Server {
    child: Child,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Spawns `cmd` and waits (bounded) for the `listening on http://` line.
    async fn start(mut cmd: Command) -> Server {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn signal-server");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        {
            // Keeps draining stderr for the life of the process, so logging never blocks it.
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let mut server = Server {
            child,
            base: String::new(),
            log,
        };
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(line)) => {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or_default();
                        server.base = format!("http://{addr}");
                        return server;
                    }
                }
                Ok(None) => panic!(
                    "signal-server exited before listening ({:?}):\n{}",
                    server.child.try_wait(),
                    server.logs()
                ),
                Err(_) => panic!(
                    "no `listening on http://` line within {BOUND:?}:\n{}",
                    server.logs()
                ),
            }
        }
    }

    async fn on(data_dir: &Path) -> Server {
        Server::start(server_command(data_dir)).await
    }

    fn http(&self) -> Http {
        Http::new(&self.base)
    }

    fn ws_url(&self, path: &str) -> String {
        format!("{}{}", self.base.replacen("http", "ws", 1), path)
    }

    fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// `kill -9`, and reaps the process.
    fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// Waits (bounded) for the process to exit on its own.
    async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "signal-server did not exit within {BOUND:?}:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion (bounded; killed and reported otherwise): status, stdout, stderr.
fn run_to_exit(mut cmd: Command) -> (ExitStatus, String, String) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn signal-server");
    let mut out_pipe = child.stdout.take().expect("stdout");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
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
            panic!(
                "process did not exit within {BOUND:?}; stderr:\n{}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

// ---------------------------------------------------------------------------------------------
// A small HTTP client for the external process
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Http {
    base: String,
    client: reqwest::Client,
}

impl Http {
    fn new(base: &str) -> Http {
        Http {
            base: base.to_string(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
        }
    }

    /// Any request; `Err` when no complete answer arrived (connection refused or reset).
    async fn try_call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), reqwest::Error> {
        let mut req = self.client.request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{}", self.base, path),
        );
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await?;
        let status = res.status();
        let text = res.text().await?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        Ok((status, value))
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        self.try_call(method, path, token, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call("GET", path, Some(token), None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", path, Some(token), Some(&body)).await
    }

    async fn register(&self, username: &str) -> u64 {
        let (status, body) = self
            .call(
                "POST",
                "/auth/users",
                None,
                Some(&json!({"username": username, "password": PASSWORD})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "register {username}: {body}");
        body["id"].as_u64().expect("id")
    }

    async fn login(&self, username: &str) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/auth/jwt/create",
                None,
                Some(&json!({"username": username, "password": PASSWORD})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login {username}: {body}");
        body["token"].as_str().expect("token").to_string()
    }

    async fn user(&self, username: &str) -> TestUser {
        let id = self.register(username).await;
        let token = self.login(username).await;
        TestUser {
            username: username.to_string(),
            id,
            token,
            reg_id: 0,
            identity: KeyPair::generate(),
        }
    }

    /// A user whose device has `prekeys` EC and `kyber` Kyber one-time keys (ids 1..=n) and,
    /// when `last_resort`, a last-resort Kyber key with id 999999.
    async fn user_with_device(
        &self,
        username: &str,
        reg_id: u32,
        prekeys: u32,
        kyber: u32,
        last_resort: bool,
    ) -> TestUser {
        let mut user = self.user(username).await;
        user.reg_id = reg_id;
        let body = user.device_body(1, prekeys, kyber, last_resort);
        let (status, res) = self
            .post(&format!("/device/{reg_id}"), &user.token, body)
            .await;
        assert_eq!(status, StatusCode::CREATED, "create device: {res}");
        user
    }
}

#[cfg(unix)]
fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown and restart
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_survives_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::on(dir.path()).await;
    let http = server.http();
    let id = http.register("Grace").await;
    let token = http.login("grace").await;
    let (status, me) = http.get("/auth/users/me", &token).await;
    assert_eq!(status, StatusCode::OK, "{me}");

    let secret_path = dir.path().join("jwt_secret");
    assert!(secret_path.is_file(), "no jwt_secret in the data dir");
    #[cfg(unix)]
    assert_eq!(file_mode(&secret_path), 0o600, "jwt_secret mode");
    let secret = std::fs::read(&secret_path).unwrap();

    // The client still holds an idle keep-alive connection: shutdown must not wait on it.
    server.sigterm();
    let status = server.wait_exit().await;
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM exit: {status}\n{}",
        server.logs()
    );
    drop(server);

    let server = Server::on(dir.path()).await;
    let http = server.http();
    assert_eq!(
        std::fs::read(&secret_path).unwrap(),
        secret,
        "the JWT secret changed across a restart"
    );
    let (status, me) = http.get("/auth/users/me", &token).await;
    assert_eq!(status, StatusCode::OK, "old token after restart: {me}");
    assert_eq!(me["username"], "Grace");
    assert_eq!(me["id"], id);
    let token2 = http.login("GRACE").await;
    let (status, me) = http.get("/auth/users/me", &token2).await;
    assert_eq!(status, StatusCode::OK, "new token after restart: {me}");
    assert_eq!(me["id"], id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_process_on_same_data_dir_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::on(dir.path()).await;

    let (status, _, stderr) = run_to_exit(server_command(dir.path()));
    assert!(
        status.code().is_some_and(|c| c != 0),
        "second process on a locked data dir: {status}\nstderr:\n{stderr}"
    );
    assert!(
        stderr.contains("in use"),
        "stderr does not say the data dir is in use:\n{stderr}"
    );
    assert!(
        stderr.contains(&dir.path().display().to_string()),
        "stderr does not name the data dir:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // The first server is unharmed.
    let http = server.http();
    let (status, body) = http.call("GET", "/health", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    http.register("still_serving").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_open_websocket_still_exits() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::on(dir.path()).await;
    let http = server.http();
    let user = http.user_with_device("wsuser", 4444, 0, 0, false).await;

    let mut req = server
        .ws_url("/messages/4444/ws")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", user.token).parse().unwrap(),
    );
    let (mut ws, _) = tokio::time::timeout(BOUND, tokio_tungstenite::connect_async(req))
        .await
        .expect("WebSocket connect timed out")
        .expect("WebSocket connect");
    // The session is live once the (empty) backlog has been sent.
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no queue_empty frame")
            .expect("socket ended before queue_empty")
            .expect("WebSocket error");
        if let Message::Text(text) = &frame {
            let v: Value = serde_json::from_str(text.as_str()).expect("JSON frame");
            if v["type"] == "queue_empty" {
                break;
            }
        }
    }

    server.sigterm();
    let status = server.wait_exit().await;
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM with an open WebSocket: {status}\n{}",
        server.logs()
    );
    // The client sees its socket end (a close frame, an error or the end of the stream).
    let ended = tokio::time::timeout(BOUND, async {
        while let Some(Ok(frame)) = ws.next().await {
            if frame.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "WebSocket still open after the server exited"
    );
    let _ = ws.close(None).await;
}

// ---------------------------------------------------------------------------------------------
// Durability across kill -9
// ---------------------------------------------------------------------------------------------

/// What a bundle handed out: the one-time EC prekey id and the Kyber key id, if any.
#[derive(Debug, Clone, Copy)]
struct Pop {
    ec: Option<u64>,
    kyber: Option<u64>,
}

fn pop_of(bundle: &Value) -> Pop {
    Pop {
        ec: bundle["preKey"]["keyId"].as_u64(),
        kyber: bundle["kyberPreKey"]["keyId"].as_u64(),
    }
}

const LAST_RESORT: u64 = 999_999;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_server_hands_out_no_prekey_twice() {
    const EC: u64 = 100;
    const KYBER: u64 = 20;
    const TASKS: usize = 8;
    /// Kill once this many bundles were answered: before the 20 Kyber keys run out, so both
    /// kinds of key cross the crash.
    const KILL_AFTER: usize = 12;

    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::on(dir.path()).await;
    let http = server.http();
    let alice = http
        .user_with_device("alice", 1111, EC as u32, KYBER as u32, true)
        .await;
    let bob = http.user_with_device("bob", 2222, 0, 0, false).await;
    let path = "/prekeybundle/alice/2222";

    let before: Arc<Mutex<Vec<Pop>>> = Arc::default();
    let unanswered = Arc::new(AtomicUsize::new(0));
    let unexpected: Arc<Mutex<Vec<String>>> = Arc::default();
    let enough = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (http, token) = (http.clone(), bob.token.clone());
        let (before, unanswered, unexpected, enough) = (
            before.clone(),
            unanswered.clone(),
            unexpected.clone(),
            enough.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                match http.try_call("GET", path, Some(&token), None).await {
                    Ok((StatusCode::OK, bundle)) => {
                        let pop = pop_of(&bundle);
                        let mut seen = before.lock().unwrap();
                        seen.push(pop);
                        if seen.len() == KILL_AFTER {
                            enough.notify_one();
                        }
                        if pop.ec.is_none() {
                            break;
                        }
                    }
                    Ok((status, body)) => {
                        unexpected.lock().unwrap().push(format!("{status} {body}"));
                        break;
                    }
                    // The server is gone; whatever this request did is unknown.
                    Err(_) => {
                        unanswered.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
            }
        }));
    }
    tokio::time::timeout(BOUND, enough.notified())
        .await
        .expect("bundles were not answered");
    server.sigkill();
    for t in tasks {
        t.await.expect("pop task");
    }
    drop(server);
    let unexpected = unexpected.lock().unwrap().clone();
    assert!(
        unexpected.is_empty(),
        "bundle answers other than 200: {unexpected:?}"
    );
    let before = before.lock().unwrap().clone();
    let unanswered = unanswered.load(Ordering::SeqCst);
    assert!(before.len() >= KILL_AFTER);

    let server = Server::on(dir.path()).await;
    let http = server.http();
    let (status, stock) = http.get("/prekeys/1111", &alice.token).await;
    assert_eq!(status, StatusCode::OK, "{stock}");
    let ec_left = stock["preKeyCount"].as_u64().expect("preKeyCount");
    let kyber_left = stock["kyberPreKeyCount"]
        .as_u64()
        .expect("kyberPreKeyCount");

    eprintln!(
        "prekeys: {} bundles before the crash, {unanswered} unanswered; \
         after restart {ec_left} EC and {kyber_left} Kyber left",
        before.len()
    );

    let mut after = Vec::new();
    for _ in 0..=EC + 1 {
        let (status, bundle) = http.get(path, &bob.token).await;
        assert_eq!(status, StatusCode::OK, "bundle after restart: {bundle}");
        let pop = pop_of(&bundle);
        assert!(
            pop.kyber.is_some(),
            "no Kyber key although the last-resort key is stored: {bundle}"
        );
        if pop.ec.is_none() {
            break;
        }
        after.push(pop);
    }

    for (kind, total, pick) in [
        ("EC", EC, (|p: &Pop| p.ec) as fn(&Pop) -> Option<u64>),
        ("Kyber", KYBER, |p: &Pop| {
            p.kyber.filter(|&id| id != LAST_RESORT)
        }),
    ] {
        let ids_before: Vec<u64> = before.iter().filter_map(pick).collect();
        let ids_after: Vec<u64> = after.iter().filter_map(pick).collect();
        let set_before: BTreeSet<u64> = ids_before.iter().copied().collect();
        let set_after: BTreeSet<u64> = ids_after.iter().copied().collect();
        assert_eq!(
            set_before.len(),
            ids_before.len(),
            "{kind} prekey handed out twice before the crash: {ids_before:?}"
        );
        assert_eq!(
            set_after.len(),
            ids_after.len(),
            "{kind} prekey handed out twice after the crash: {ids_after:?}"
        );
        let twice: Vec<_> = set_before.intersection(&set_after).collect();
        assert!(
            twice.is_empty(),
            "{kind} prekeys handed out both before and after the crash: {twice:?}"
        );
        assert!(
            set_before
                .union(&set_after)
                .all(|id| (1..=total).contains(id)),
            "{kind} ids outside 1..={total}: {set_before:?} {set_after:?}"
        );
        assert!(
            ids_after.windows(2).all(|w| w[0] < w[1]),
            "{kind} prekeys after restart not lowest keyId first: {ids_after:?}"
        );
        let left = if kind == "EC" { ec_left } else { kyber_left };
        assert_eq!(
            ids_after.len() as u64,
            left,
            "{kind}: GET /prekeys reported {left} left after restart, bundles handed out {ids_after:?}"
        );
        // Every key is accounted for: seen before, handed out after, or taken by a request whose
        // answer the crash swallowed (at most one key of each kind per unanswered request).
        let missing: Vec<u64> = (1..=total)
            .filter(|id| !set_before.contains(id) && !set_after.contains(id))
            .collect();
        assert!(
            missing.len() <= unanswered,
            "{kind} prekeys lost in the crash: {missing:?} ({unanswered} requests unanswered)"
        );
    }

    // Empty now; the last-resort key stays.
    let (status, stock) = http.get("/prekeys/1111", &alice.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stock["preKeyCount"], 0, "{stock}");
    assert_eq!(stock["kyberPreKeyCount"], 0, "{stock}");
    let (status, bundle) = http.get(path, &bob.token).await;
    assert_eq!(status, StatusCode::OK);
    assert!(bundle.get("preKey").is_none(), "{bundle}");
    assert_eq!(bundle["kyberPreKey"]["keyId"], LAST_RESORT, "{bundle}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_server_loses_no_acknowledged_message() {
    const SENDERS: usize = 2;
    const TASKS: usize = 16;
    const KILL_AFTER: usize = 400;
    const RECIPIENT_REG: u32 = 3333;

    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::on(dir.path()).await;
    let http = server.http();
    let carol = http
        .user_with_device("carol", RECIPIENT_REG, 0, 0, false)
        .await;
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        senders.push(
            http.user_with_device(&format!("sender{i}"), 5000 + i as u32, 0, 0, false)
                .await,
        );
    }

    // id → the 201 body.
    let acked: Arc<Mutex<HashMap<u64, Value>>> = Arc::default();
    let unexpected: Arc<Mutex<Vec<String>>> = Arc::default();
    let enough = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let sender = &senders[t % SENDERS];
        let path = format!("/messages/{}", sender.reg_id);
        let (http, token) = (http.clone(), sender.token.clone());
        let (acked, unexpected, enough) = (acked.clone(), unexpected.clone(), enough.clone());
        tasks.push(tokio::spawn(async move {
            for seq in 0u64.. {
                let text = crate::helpers::message_text(
                    RECIPIENT_REG,
                    &format!("task {t} message {seq} ünï"),
                );
                let body = json!({"recipient": "carol", "message": text});
                match http
                    .try_call("POST", &path, Some(&token), Some(&body))
                    .await
                {
                    Ok((StatusCode::CREATED, created)) => {
                        if created["content"] != text.as_str() {
                            unexpected
                                .lock()
                                .unwrap()
                                .push(format!("201 content differs: {created}"));
                            break;
                        }
                        let id = created["id"].as_u64().expect("id");
                        let mut acked = acked.lock().unwrap();
                        if let Some(old) = acked.insert(id, created) {
                            unexpected
                                .lock()
                                .unwrap()
                                .push(format!("id {id} acknowledged twice: {old}"));
                        }
                        if acked.len() == KILL_AFTER {
                            enough.notify_one();
                        }
                    }
                    Ok((status, body)) => {
                        unexpected.lock().unwrap().push(format!("{status} {body}"));
                        break;
                    }
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::timeout(BOUND * 4, enough.notified())
        .await
        .expect("messages were not acknowledged");
    server.sigkill();
    for t in tasks {
        t.await.expect("send task");
    }
    drop(server);
    let unexpected = unexpected.lock().unwrap().clone();
    assert!(unexpected.is_empty(), "unexpected answers: {unexpected:?}");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= KILL_AFTER);

    let server = Server::on(dir.path()).await;
    let http = server.http();
    let path = format!("/messages/{RECIPIENT_REG}");
    let mut queued: HashMap<u64, Value> = HashMap::new();
    for _ in 0..100 {
        let (status, page) = http.get(&format!("{path}?limit=250"), &carol.token).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let page = page.as_array().expect("array").clone();
        if page.is_empty() {
            break;
        }
        let ids: Vec<u64> = page.iter().map(|m| m["id"].as_u64().expect("id")).collect();
        for m in page {
            let id = m["id"].as_u64().unwrap();
            assert!(
                queued.insert(id, m).is_none(),
                "message {id} listed twice (after it was deleted)"
            );
        }
        let (status, outcome) = http
            .call("DELETE", &path, Some(&carol.token), Some(&json!(ids)))
            .await;
        assert_eq!(status, StatusCode::OK, "{outcome}");
        assert!(
            outcome
                .as_array()
                .is_some_and(|o| o.len() == ids.len() && o.iter().all(|s| s == "success")),
            "{outcome}"
        );
    }

    eprintln!(
        "messages: {} acknowledged before the crash, {} queued after restart",
        acked.len(),
        queued.len()
    );
    let mut lost = Vec::new();
    for (id, created) in &acked {
        match queued.get(id) {
            None => lost.push(*id),
            Some(stored) => assert_eq!(
                stored, created,
                "message {id} after the crash differs from its 201"
            ),
        }
    }
    lost.sort();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost in the crash: {lost:?}",
        lost.len(),
        acked.len()
    );

    // Message ids are never reused, across crashes too.
    let sender = &senders[0];
    let (status, created) = http
        .post(
            &format!("/messages/{}", sender.reg_id),
            &sender.token,
            json!({"recipient": "carol", "message": crate::helpers::message_text(RECIPIENT_REG, "after")}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_u64().expect("id");
    assert!(
        !acked.contains_key(&id) && !queued.contains_key(&id),
        "message id {id} reused after the crash"
    );
}

// ---------------------------------------------------------------------------------------------
// Command line and environment
// ---------------------------------------------------------------------------------------------

/// The option fields of `Config` in src/config.rs (not skipped, flattened or subcommand fields),
/// as flags (`--data-dir`) and env names (`SIGNAL_SERVER_DATA_DIR`).
fn config_fields() -> Vec<(String, String)> {
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/config.rs"))
        .expect("read src/config.rs");
    let start = source.find("pub struct Config {").expect("struct Config");
    let body = &source[start + "pub struct Config {".len()..];
    let body = &body[..body.find("\n}").expect("end of struct Config")];
    let mut fields = Vec::new();
    let mut attributes = String::new();
    for line in body.lines().map(str::trim) {
        if let Some(field) = line.strip_prefix("pub ").and_then(|l| l.split(':').next()) {
            let field = field.trim();
            let is_ident = !field.is_empty()
                && field
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            let not_a_flag = ["skip", "flatten", "subcommand"]
                .iter()
                .any(|a| attributes.contains(a));
            if is_ident && !not_a_flag {
                fields.push((
                    format!("--{}", field.replace('_', "-")),
                    format!("SIGNAL_SERVER_{}", field.to_ascii_uppercase()),
                ));
            }
            attributes.clear();
        } else if !line.starts_with("///") {
            attributes.push_str(line);
        }
    }
    assert!(
        fields.len() >= 10,
        "could not read src/config.rs: {fields:?}"
    );
    fields
}

#[test]
fn help_lists_every_option_with_env_var() {
    let fields = config_fields();
    let flags: HashSet<&str> = fields.iter().map(|(f, _)| f.as_str()).collect();
    // The options the contract names must exist at all.
    for required in [
        "--data-dir",
        "--listen",
        "--pbkdf2-iterations",
        "--no-rate-limit",
        "--max-prekeys",
        "--max-message-bytes",
        "--max-queued-messages",
        "--max-body-bytes",
        "--token-ttl",
        "--refresh-max-age",
        "--jwt-secret",
        "--trusted-proxy",
        "--smtp-url",
        "--smtp-from",
        "--public-url",
    ] {
        assert!(flags.contains(required), "src/config.rs has no {required}");
    }

    let mut cmd = bare_command();
    cmd.arg("--help")
        .env("SIGNAL_SERVER_JWT_SECRET", "do-not-print-this-secret-value")
        .env("SIGNAL_SERVER_SMTP_URL", "smtp://user:hunter2pass@mail:25");
    let (status, help, stderr) = run_to_exit(cmd);
    assert!(status.success(), "--help: {status}\n{stderr}");
    for (flag, env) in &fields {
        assert!(help.contains(flag.as_str()), "--help lacks {flag}:\n{help}");
        assert!(
            help.contains(env.as_str()),
            "--help lacks the env var {env} of {flag}:\n{help}"
        );
    }
    assert!(
        !help.contains("do-not-print-this-secret-value") && !help.contains("hunter2pass"),
        "--help prints secret values from the environment:\n{help}"
    );

    let (status, version, stderr) = run_to_exit({
        let mut cmd = bare_command();
        cmd.arg("--version");
        cmd
    });
    assert!(status.success(), "--version: {status}\n{stderr}");
    assert!(
        version.contains("signal-server") && version.contains(env!("CARGO_PKG_VERSION")),
        "--version printed {version:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_vars_configure_the_server() {
    // The working directory: if the env data dir were ignored, `./data` would land here.
    let cwd = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = bare_command();
    cmd.current_dir(cwd.path())
        .env("SIGNAL_SERVER_DATA_DIR", dir.path())
        .env("SIGNAL_SERVER_LISTEN", "127.0.0.1:0")
        .env("SIGNAL_SERVER_PBKDF2_ITERATIONS", "1000")
        .env("SIGNAL_SERVER_NO_RATE_LIMIT", "true")
        .env("SIGNAL_SERVER_MAX_PREKEYS", "5");
    let mut server = Server::start(cmd).await;
    assert!(
        server.base.starts_with("http://127.0.0.1:") && !server.base.ends_with(":8000"),
        "SIGNAL_SERVER_LISTEN ignored: {}",
        server.base
    );
    let http = server.http();
    let user = http.user_with_device("envuser", 77, 0, 0, false).await;
    // 3 + 3 one-time prekeys exceed SIGNAL_SERVER_MAX_PREKEYS=5 (the default cap is 100).
    let (status, body) = http
        .post(
            "/prekeys/77",
            &user.token,
            crate::helpers::ec_prekeys(1..=3),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = http
        .post(
            "/prekeys/77",
            &user.token,
            crate::helpers::ec_prekeys(4..=6),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "reached_max_prekeys", "{body}");
    let (status, body) = http
        .post(
            "/prekeys/77",
            &user.token,
            crate::helpers::ec_prekeys(4..=5),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    assert!(
        dir.path().join("jwt_secret").is_file(),
        "nothing written to SIGNAL_SERVER_DATA_DIR"
    );
    assert!(
        !cwd.path().join("data").exists(),
        "the server used ./data despite SIGNAL_SERVER_DATA_DIR"
    );
    server.sigterm();
    assert_eq!(
        server.wait_exit().await.code(),
        Some(0),
        "{}",
        server.logs()
    );
    drop(server);

    // A flag wins over its env var.
    let flag_dir = tempfile::tempdir().unwrap();
    let env_dir = tempfile::tempdir().unwrap();
    let mut cmd = server_command(flag_dir.path());
    cmd.current_dir(cwd.path())
        .env("SIGNAL_SERVER_DATA_DIR", env_dir.path())
        .env("SIGNAL_SERVER_LISTEN", "127.0.0.1:1");
    let server = Server::start(cmd).await;
    server.http().register("flagwins").await;
    assert!(flag_dir.path().join("jwt_secret").is_file());
    assert!(
        std::fs::read_dir(env_dir.path()).unwrap().next().is_none(),
        "the env data dir was used although --data-dir was given"
    );
}
