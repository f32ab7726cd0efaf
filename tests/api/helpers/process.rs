//! The built binary on a data dir the test chooses: start, wait for a log line, call it, stop it,
//! and run operator commands.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use signal_server::crypto::KeyPair;

use super::{TestUser, PASSWORD};

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
