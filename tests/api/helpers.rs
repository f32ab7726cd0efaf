//! Test harness shared by the integration tests: the real server (`signal_server::run`) on
//! 127.0.0.1:0 with a sled data dir in a temp folder, a small HTTP client, and real key material
//! (X25519 keys with XEdDSA signatures, Kyber-sized keys signed the same way).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use signal_server::crypto::{b64, KeyPair};
use signal_server::{App, Config};
use tokio::sync::oneshot;

pub const PASSWORD: &str = "tangerine-Voyage-42";

pub struct TestServer {
    pub base: String,
    pub app: App,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// A server with fast hashing and no rate limits.
    pub async fn start() -> TestServer {
        TestServer::start_with(&["--no-rate-limit"]).await
    }

    /// A server with extra command-line flags (e.g. `["--max-prekeys", "5"]`).
    pub async fn start_with(flags: &[&str]) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args = vec![
            "signal-server".to_string(),
            "--data-dir".into(),
            dir.path().display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--pbkdf2-iterations".into(),
            "1000".into(),
        ];
        args.extend(flags.iter().map(|s| s.to_string()));
        let config = <Config as clap::Parser>::parse_from(args);
        TestServer::start_config(config, dir).await
    }

    pub async fn start_config(config: Config, dir: tempfile::TempDir) -> TestServer {
        let app = App::open(config).expect("app");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(signal_server::run(listener, app.clone(), async {
            let _ = rx.await;
        }));
        TestServer {
            base: format!("http://{addr}"),
            app,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
            shutdown: Some(tx),
            handle: Some(handle),
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("{}{}", self.base.replacen("http", "ws", 1), path)
    }

    /// Any request; the body is sent as JSON when given. Answers status and JSON body
    /// (`Value::Null` for an empty body).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            self.url(path),
        );
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        answer(req).await
    }

    /// A raw body (not necessarily JSON).
    pub async fn call_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                self.url(path),
            )
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        answer(req).await
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call("GET", path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", path, Some(token), Some(&body)).await
    }

    pub async fn delete(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call("DELETE", path, Some(token), Some(&body)).await
    }

    /// Registers `username` (password `PASSWORD`) and logs in.
    pub async fn user(&self, username: &str) -> TestUser {
        let (status, body) = self
            .call(
                "POST",
                "/auth/users",
                None,
                Some(&json!({"username": username, "password": PASSWORD})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "register {username}: {body}");
        let token = self.login(username, PASSWORD).await;
        TestUser {
            username: username.to_string(),
            id: body["id"].as_u64().unwrap(),
            token,
            reg_id: 0,
            identity: KeyPair::generate(),
        }
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/auth/jwt/create",
                None,
                Some(&json!({"username": username, "password": password})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login {username}: {body}");
        body["token"].as_str().unwrap().to_string()
    }

    /// Registers a user and creates their device with `prekeys` EC and `kyber` Kyber one-time
    /// keys (ids 1..=n) and a last-resort Kyber key.
    pub async fn user_with_device(
        &self,
        username: &str,
        reg_id: u32,
        prekeys: u32,
        kyber: u32,
    ) -> TestUser {
        let mut user = self.user(username).await;
        user.reg_id = reg_id;
        let body = user.device_body(1, prekeys, kyber, true);
        let (status, res) = self
            .post(&format!("/device/{reg_id}"), &user.token, body)
            .await;
        assert_eq!(status, StatusCode::CREATED, "create device: {res}");
        user
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
        self.dir
    }
}

/// Sends a request; its status and JSON body (`Value::Null` for an empty body).
async fn answer(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let res = req.send().await.expect("request");
    let status = res.status();
    let text = res.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    };
    (status, value)
}

pub struct TestUser {
    pub username: String,
    pub id: u64,
    pub token: String,
    pub reg_id: u32,
    pub identity: KeyPair,
}

impl TestUser {
    /// A device registration body with real, correctly signed keys.
    pub fn device_body(
        &self,
        device_id: u32,
        prekeys: u32,
        kyber: u32,
        last_resort: bool,
    ) -> Value {
        let mut body = json!({
            "address": format!("{}.{device_id}", self.username),
            "identityKey": b64::encode(&self.identity.public),
            "registrationId": self.reg_id,
            "preKeys": ec_prekeys(1..=prekeys),
            "signedPreKey": signed_ec(&self.identity, 1),
            "kyberPreKeys": kyber_prekeys(&self.identity, 1..=kyber),
        });
        if last_resort {
            body["lastResortKyberPreKey"] = signed_kyber(&self.identity, 999_999);
        }
        body
    }
}

/// One-time EC prekeys with the given ids.
pub fn ec_prekeys(ids: impl IntoIterator<Item = u32>) -> Value {
    Value::Array(
        ids.into_iter()
            .map(|id| json!({"keyId": id, "publicKey": b64::encode(&KeyPair::generate().public)}))
            .collect(),
    )
}

/// A signed EC prekey, signed by `identity`.
pub fn signed_ec(identity: &KeyPair, key_id: u32) -> Value {
    let key = KeyPair::generate().public;
    json!({"keyId": key_id, "publicKey": b64::encode(&key), "signature": b64::encode(&identity.sign(&key))})
}

/// A Kyber-sized public key (type byte 0x08 + 1568 random bytes).
pub fn kyber_key() -> Vec<u8> {
    let mut key = vec![0x08u8];
    key.extend((0..1568).map(|_| rand::random::<u8>()));
    key
}

/// A Kyber prekey signed by `identity`.
pub fn signed_kyber(identity: &KeyPair, key_id: u32) -> Value {
    let key = kyber_key();
    json!({"keyId": key_id, "publicKey": b64::encode(&key), "signature": b64::encode(&identity.sign(&key))})
}

pub fn kyber_prekeys(identity: &KeyPair, ids: impl IntoIterator<Item = u32>) -> Value {
    Value::Array(
        ids.into_iter()
            .map(|id| signed_kyber(identity, id))
            .collect(),
    )
}

/// The JSON text of a message addressed to a device with `registration_id`.
pub fn message_text(registration_id: u32, body: &str) -> String {
    json!({"registrationId": registration_id, "type": 1, "body": body}).to_string()
}

// ---------------------------------------------------------------------------------------------
// Faults (tests/faults.rs): the built binary on a data dir the test chooses
// ---------------------------------------------------------------------------------------------

/// Upper bound for a start, an answer or an exit of the binary; never a timing check.
pub const BINARY_BOUND: Duration = Duration::from_secs(30);

/// The binary with a clean environment (no inherited `SIGNAL_SERVER_*`), logging at info.
pub fn binary_command(data_dir: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_signal-server"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SIGNAL_SERVER_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "info")
        .env("RUST_LOG_STYLE", "never")
        .stdin(std::process::Stdio::null())
        .arg("--data-dir")
        .arg(data_dir);
    cmd
}

/// Runs an operator command on `data_dir` to its end, killed after `BINARY_BOUND`: its status
/// (`None` if it had to be killed), stdout and stderr.
pub fn operator_run(
    data_dir: &std::path::Path,
    args: &[&str],
) -> (Option<std::process::ExitStatus>, String, String) {
    use std::io::Read;
    let mut child = binary_command(data_dir)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn signal-server");
    let mut pipes = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let (mut o, mut e) = (String::new(), String::new());
        let _ = pipes.0.read_to_string(&mut o);
        let _ = pipes.1.read_to_string(&mut e);
        (o, e)
    });
    let deadline = std::time::Instant::now() + BINARY_BOUND;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = out.join().unwrap_or_default();
    (status, stdout, stderr)
}

/// The built binary serving a data dir, killed (SIGKILL) when dropped; its stderr is kept.
pub struct Binary {
    pub child: std::process::Child,
    pub base: String,
    pub http: reqwest::Client,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Binary {
    /// Starts the server on `data_dir` (port 0, fast hashing, no rate limits, `extra` flags)
    /// and waits (bounded) for its `listening on http://` line.
    pub async fn start(data_dir: &std::path::Path, extra: &[&str]) -> Binary {
        let mut child = binary_command(data_dir)
            .args(["--listen", "127.0.0.1:0", "--pbkdf2-iterations", "1000"])
            .arg("--no-rate-limit")
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn signal-server");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        // Drains stderr for the life of the process, so that logging never blocks it.
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                kept.lock().unwrap().push(line);
            }
        });
        let mut server = Binary {
            child,
            base: String::new(),
            http: reqwest::Client::builder()
                .timeout(BINARY_BOUND)
                .build()
                .expect("client"),
            log,
        };
        let addr = server.wait_log("listening on http://").await;
        server.base = format!("http://{addr}");
        server
    }

    /// The word after `needle` in the first log line holding it (bounded wait).
    pub async fn wait_log(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + BINARY_BOUND;
        loop {
            let found = self.log.lock().unwrap().iter().find_map(|line| {
                let rest = line.split(needle).nth(1)?;
                Some(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                )
            });
            if let Some(word) = found {
                return word;
            }
            let exited = self.child.try_wait().expect("try_wait");
            if exited.is_some() || std::time::Instant::now() > deadline {
                panic!("no {needle:?} in the log ({exited:?}):\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Any request; `Err` when no complete answer came (refused, reset or timed out).
    pub async fn try_call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), reqwest::Error> {
        let mut req = self.http.request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", self.base),
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
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// A request that must be answered.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        self.try_call(method, path, token, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.logs()))
    }

    /// Registers `username`, logs in and creates a device with `prekeys` one-time EC keys.
    pub async fn user_with_device(&self, username: &str, reg_id: u32, prekeys: u32) -> TestUser {
        let creds = json!({"username": username, "password": PASSWORD});
        let (status, body) = self.call("POST", "/auth/users", None, Some(&creds)).await;
        assert_eq!(status, StatusCode::CREATED, "register {username}: {body}");
        let id = body["id"].as_u64().unwrap();
        let (status, body) = self
            .call("POST", "/auth/jwt/create", None, Some(&creds))
            .await;
        assert_eq!(status, StatusCode::OK, "login {username}: {body}");
        let user = TestUser {
            username: username.to_string(),
            id,
            token: body["token"].as_str().unwrap().to_string(),
            reg_id,
            identity: KeyPair::generate(),
        };
        let device = user.device_body(1, prekeys, 0, false);
        let path = format!("/device/{reg_id}");
        let (status, body) = self
            .call("POST", &path, Some(&user.token), Some(&device))
            .await;
        assert_eq!(status, StatusCode::CREATED, "device of {username}: {body}");
        user
    }

    /// SIGTERM.
    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -TERM {pid}");
    }

    /// Waits (bounded) for the process to exit on its own; `None` if it did not.
    pub async fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + BINARY_BOUND;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Connections (tests/connections.rs): a raw WebSocket to the caller's own live route, and the
// server's count of open sockets.

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `user`'s live socket (`/messages/<regId>/ws`), token in the header.
pub async fn ws_open(s: &TestServer, user: &TestUser) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = s
        .ws_url(&format!("/messages/{}/ws", user.reg_id))
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", user.token).parse().expect("header"),
    );
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("WebSocket handshake timed out")
    .expect("WebSocket upgrade");
    ws
}

/// Waits (bounded) until the server counts `want` open WebSockets; panics otherwise.
pub async fn wait_for_open_sockets(s: &TestServer, want: usize, bound: Duration) {
    let deadline = tokio::time::Instant::now() + bound;
    while s.app.hub.connections() != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server counts {} open WebSockets, not {want}, after {bound:?}",
            s.app.hub.connections()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Browsers (CORS)
// ---------------------------------------------------------------------------------------------

/// Opens a WebSocket on `path` with the given `Origin` (none: like a non-browser client);
/// answers the handshake's HTTP status (101 when upgraded) and the JSON body of a refusal.
pub async fn ws_status(s: &TestServer, path: &str, origin: Option<&str>) -> (u16, Value) {
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Error};
    let mut req = s.ws_url(path).into_client_request().expect("request");
    if let Some(origin) = origin {
        req.headers_mut()
            .insert("origin", origin.parse().expect("origin header"));
    }
    let handshake = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async(req),
    );
    match handshake.await.expect("WebSocket handshake timed out") {
        Ok((_socket, res)) => (res.status().as_u16(), Value::Null),
        Err(Error::Http(res)) => {
            let body = res
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (res.status().as_u16(), body)
        }
        Err(e) => panic!("WebSocket handshake failed: {e:?}"),
    }
}

// ---- backup and restore ----

impl TestServer {
    /// A server (fast hashing, no rate limits) on an existing data dir, e.g. a restored one.
    pub async fn start_in(dir: tempfile::TempDir) -> TestServer {
        let args = [
            "signal-server",
            "--data-dir",
            &dir.path().display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--pbkdf2-iterations",
            "1000",
            "--no-rate-limit",
        ]
        .map(str::to_string);
        let config = <Config as clap::Parser>::parse_from(args);
        TestServer::start_config(config, dir).await
    }
}
