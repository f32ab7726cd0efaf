//! The built binary, the one way the suite runs it: a server on a data dir the test chooses
//! (start, wait for a log line, call it, SIGTERM or kill -9 it), several instances of it on one
//! PostgreSQL database, and commands run to their end (operator commands, `--help`, a restore fed
//! on stdin).

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use signal_server::client::{self, Client};

use super::{TestUser, PASSWORD};

/// Upper bound for a start, an answer, a command or an exit of the binary; never a timing check.
pub const BINARY_BOUND: Duration = Duration::from_secs(60);

const BIN: &str = env!("CARGO_BIN_EXE_signal-server");

/// No inherited `SIGNAL_SERVER_*`, plain info logs, no stdin.
fn clean(mut cmd: Command) -> Command {
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

/// The binary with a clean environment and no arguments.
pub fn bare_command() -> Command {
    clean(Command::new(BIN))
}

/// The binary started by `sh` after `prelude` (`umask 022`, `ulimit -n 128`); arguments added to
/// the command go to the binary.
pub fn shell_command(prelude: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("{prelude} && exec \"$0\" \"$@\""))
        .arg(BIN);
    clean(cmd)
}

/// The binary on `data_dir` (`--data-dir` first).
pub fn binary_command(data_dir: &Path) -> Command {
    let mut cmd = bare_command();
    cmd.arg("--data-dir").arg(data_dir);
    // The same store as the in-process server that made this data dir, if one did.
    if let Some(url) = super::remembered_database(data_dir) {
        cmd.arg("--database-url").arg(url);
    }
    if let Some((url, endpoint)) = super::remembered_s3(data_dir) {
        cmd.arg("--attachments-s3").arg(url);
        cmd.arg("--attachments-s3-endpoint").arg(endpoint);
    }
    cmd
}

/// The test server's flags: port 0, fast hashing, no rate limits, then `extra`; and a disk
/// reserve of 1 MiB (a flag in `extra` overrides it), so that the reserve file is there as in
/// production without every start writing the default 64 MiB.
pub fn serve_flags<'a>(cmd: &'a mut Command, extra: &[&str]) -> &'a mut Command {
    cmd.env("SIGNAL_SERVER_RESERVE_MB", "1")
        .args(["--listen", "127.0.0.1:0", "--pbkdf2-iterations", "1000"])
        .arg("--no-rate-limit")
        .args(extra)
}

/// Writes a command's standard input; answers how many bytes it got in.
pub type Feed = Box<dyn FnOnce(ChildStdin) -> u64 + Send>;

/// A feed of `text`.
pub fn feed_text(text: &str) -> Feed {
    let text = text.to_string();
    Box::new(move |mut stdin| match stdin.write_all(text.as_bytes()) {
        Ok(()) => text.len() as u64,
        Err(_) => 0,
    })
}

/// A command run to its end.
#[derive(Debug)]
pub struct Run {
    /// `None`: killed after `BINARY_BOUND`.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    /// The largest VmHWM (peak resident set, kB) seen while it ran; 0 if never seen.
    pub peak_kb: u64,
    /// Bytes the feed got into standard input.
    pub fed: u64,
}

impl Run {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Asserts that the command succeeded.
    pub fn ok(self) -> Run {
        assert!(self.success(), "the command failed: {self:#?}");
        self
    }

    /// Asserts that the command failed (and finished); answers its stderr.
    pub fn err(self) -> String {
        assert!(
            self.status.is_some_and(|s| !s.success()),
            "the command succeeded or hung: {self:#?}"
        );
        self.stderr
    }
}

/// Runs `cmd` to its end, killed after `BINARY_BOUND`, with `feed` writing its stdin.
pub fn run(mut cmd: Command, feed: Option<Feed>) -> Run {
    if feed.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn signal-server");
    let feeder = feed.map(|f| {
        let stdin = child.stdin.take().expect("stdin");
        std::thread::spawn(move || f(stdin))
    });
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let out = read_all(Box::new(child.stdout.take().expect("stdout")));
    let err = read_all(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + BINARY_BOUND;
    let mut peak_kb = 0;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        peak_kb = peak_kb.max(proc_status_kb(child.id(), "VmHWM:"));
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        peak_kb,
        fed: feeder.map_or(0, |f| f.join().expect("feeder")),
    }
}

/// A `kB` field of `/proc/<pid>/status` (`VmHWM:`, `VmRSS:`); 0 when unreadable.
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `signal-server --data-dir DIR <args>`.
pub fn operator_command(data_dir: &Path, args: &[&str]) -> Command {
    let mut cmd = binary_command(data_dir);
    cmd.args(args);
    cmd
}

/// `signal-server --data-dir DIR <args>` to its end.
pub fn operator_run(data_dir: &Path, args: &[&str]) -> Run {
    run(operator_command(data_dir, args), None)
}

/// An operator command with `stdin` fed in, run off the runtime threads (an in-process server
/// must keep serving the admin socket meanwhile).
pub async fn operator(data_dir: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    let cmd = operator_command(data_dir, args);
    let feed = stdin.map(feed_text);
    tokio::task::spawn_blocking(move || run(cmd, feed))
        .await
        .expect("operator command thread")
}

/// An operator command that must succeed.
pub async fn operator_ok(data_dir: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    operator(data_dir, args, stdin).await.ok()
}

/// The permission bits of `path`.
pub fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The built binary serving a data dir, killed (SIGKILL) when dropped; its stderr is kept. Its
/// HTTP side (`BinaryApi`) is reached through it, or cloned off for concurrent tasks (`api()`).
pub struct Binary {
    pub child: Child,
    api: BinaryApi,
    log: Arc<Mutex<Vec<String>>>,
}

/// Raw JSON calls to a server process, cheap to clone (clones share the connection pool).
#[derive(Clone)]
pub struct BinaryApi {
    pub base: String,
    pub http: reqwest::Client,
}

impl std::ops::Deref for Binary {
    type Target = BinaryApi;

    fn deref(&self) -> &BinaryApi {
        &self.api
    }
}

impl Binary {
    /// The server on `data_dir` with the test flags and `extra`, listening. Unless `extra` names
    /// a blob store, its blobs are on the suite's S3 server if there is one, as an in-process
    /// server's are (so a `kill -9` test runs on S3 too).
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Binary {
        if !extra.iter().any(|f| f.starts_with("--attachments-")) {
            super::s3_for(data_dir);
        }
        let mut cmd = binary_command(data_dir);
        serve_flags(&mut cmd, extra);
        Binary::spawn(cmd).await
    }

    /// Spawns `cmd` and waits (bounded) for its `listening on http://` line.
    pub async fn spawn(mut cmd: Command) -> Binary {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn signal-server");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        // Drains stderr for the life of the process, so that logging never blocks it.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                kept.lock().unwrap().push(line);
            }
        });
        // Built first, so that a failed start still kills and reaps the child (Drop).
        let http = reqwest::Client::builder().timeout(BINARY_BOUND).build();
        let mut server = Binary {
            child,
            api: BinaryApi {
                base: String::new(),
                http: http.expect("client"),
            },
            log,
        };
        let addr = server.wait_log("listening on http://").await;
        server.api.base = format!("http://{addr}");
        server
    }

    /// The word after `needle` in the first log line holding it (bounded wait).
    pub async fn wait_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + BINARY_BOUND;
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
            if exited.is_some() || Instant::now() > deadline {
                panic!("no {needle:?} in the log ({exited:?}):\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The HTTP side, for tasks that outlive a borrow of the process.
    pub fn api(&self) -> BinaryApi {
        self.api.clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM.
    pub fn sigterm(&self) {
        // SAFETY: a signal to our own child, which has not been reaped (Drop reaps it).
        let sent = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(sent, 0, "kill -TERM {}", self.child.id());
    }

    /// `kill -9`, and reaps the process.
    pub fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// Waits (bounded) for the process to exit on its own; `None` if it did not.
    pub async fn wait_exit(&mut self) -> Option<ExitStatus> {
        let deadline = Instant::now() + BINARY_BOUND;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// SIGTERM, then the exit status (panics, with the log, if it does not exit).
    pub async fn terminate(&mut self) -> ExitStatus {
        self.sigterm();
        let status = self.wait_exit().await;
        status.unwrap_or_else(|| panic!("no exit after SIGTERM:\n{}", self.logs()))
    }

    /// SIGTERM, a clean exit (status 0), and the whole log.
    pub async fn stop(mut self) -> String {
        let status = self.terminate().await;
        assert_eq!(status.code(), Some(0), "exit: {status}\n{}", self.logs());
        self.logs()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl BinaryApi {
    /// `host:port` of the API.
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr())
    }

    /// Any request, through the typed client's escape hatch; the status and body text. `Err`
    /// when no complete answer came (refused, reset or timed out after `BINARY_BOUND`).
    pub async fn try_call_text(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, String), client::Error> {
        let client = match token {
            Some(t) => self.client().with_token(t),
            None => self.client(),
        };
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let answer = client.request(method, path, body).await?;
        Ok((answer.status, String::from_utf8_lossy(&answer.body).into()))
    }

    /// Any request; its status and JSON body (`Null` when empty or not JSON).
    pub async fn try_call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), client::Error> {
        let (status, text) = self.try_call_text(method, path, token, body).await?;
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
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call("GET", path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", path, Some(token), Some(&body)).await
    }

    /// The typed client on this server.
    pub fn client(&self) -> Client {
        Client::with_http(&self.base, self.http.clone())
    }

    /// Registers `username` (password `PASSWORD`); the user id.
    pub async fn register(&self, username: &str) -> u64 {
        super::new_user(&self.client(), username).await.id
    }

    /// Logs `username` in with `PASSWORD`; the token.
    pub async fn login(&self, username: &str) -> String {
        super::login(&self.client(), username, PASSWORD).await
    }

    /// Registers `username`, logs in and creates a device with `prekeys` EC and `kyber` Kyber
    /// one-time keys (ids 1..=n) and a last-resort Kyber key (id 999999).
    pub async fn user_with_device(
        &self,
        username: &str,
        reg_id: u32,
        prekeys: u32,
        kyber: u32,
    ) -> TestUser {
        super::new_user_with_device(&self.client(), username, reg_id, prekeys, kyber).await
    }
}

/// Every file under `dir` (not dirs), recursively.
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
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

/// Instances of the binary as one server: each on a data dir of its own, all on one new
/// PostgreSQL database.
pub struct Instances {
    pub nodes: Vec<Binary>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Instances {
    /// Cuts every instance's listening connection (as a network fault would): signals sent
    /// until each reconnects are lost to it. Answers how many were cut.
    pub async fn cut_listeners(&self) -> u64 {
        super::terminate_sessions(self._dirs[0].path(), "LISTEN%").await
    }

    /// Cuts every connection of the instances to the database (their pools reconnect, their
    /// listeners a second later); answers how many were cut.
    pub async fn cut_connections(&self) -> u64 {
        super::terminate_sessions(self._dirs[0].path(), "%").await
    }

    /// Blocks of out-of-line message contents the database has read so far.
    pub async fn content_blocks_read(&self) -> i64 {
        super::content_blocks_read(self._dirs[0].path()).await
    }

    /// How many of the instances' listening connections are up.
    pub async fn listeners(&self) -> u64 {
        super::count_listeners(self._dirs[0].path()).await
    }
}

/// `n` instances with the test flags and `extra` on one new database; none on sled, with a line
/// saying the test was skipped (several instances need PostgreSQL).
pub async fn instances(n: usize, extra: &[&str]) -> Option<Instances> {
    if !super::on_postgres() {
        eprintln!("skipped: several instances need PostgreSQL");
        return None;
    }
    let dirs: Vec<_> = (0..n)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let url = super::database_for(dirs[0].path())
        .await
        .expect("database URL");
    for dir in &dirs[1..] {
        super::share_database(dir.path(), &url);
    }
    let mut nodes = Vec::new();
    for dir in &dirs {
        nodes.push(Binary::start(dir.path(), extra).await);
    }
    Some(Instances { nodes, _dirs: dirs })
}

/// One request a client of `hammer_then_kill` repeats: method, path and body.
pub type Repeated = (&'static str, String, Option<Value>);

/// `tasks` clients each repeat `request(task, seq)` with `token` against `server`, and the server
/// is killed (`SIGKILL`) once `kill_after` of them were answered `expected`. Returns those
/// answers with their (task, seq). Any other answer fails the test; a client whose request finds
/// the server gone stops (whether that request was carried out is unknown).
pub async fn hammer_then_kill(
    server: &mut Binary,
    token: &str,
    (tasks, kill_after): (usize, usize),
    expected: StatusCode,
    request: impl Fn(usize, u64) -> Repeated + Send + Sync + 'static,
) -> Vec<(usize, u64, Value)> {
    let request = Arc::new(request);
    let answered: Arc<Mutex<Vec<(usize, u64, Value)>>> = Arc::default();
    let unexpected: Arc<Mutex<Vec<String>>> = Arc::default();
    let enough = Arc::new(tokio::sync::Notify::new());
    let mut clients = Vec::new();
    for task in 0..tasks {
        let (api, token, request) = (server.api(), token.to_string(), request.clone());
        let (answered, unexpected, enough) = (answered.clone(), unexpected.clone(), enough.clone());
        clients.push(tokio::spawn(async move {
            for seq in 0.. {
                let (method, path, body) = request(task, seq);
                match api
                    .try_call(method, &path, Some(&token), body.as_ref())
                    .await
                {
                    Ok((status, answer)) if status == expected => {
                        let mut answered = answered.lock().unwrap();
                        answered.push((task, seq, answer));
                        if answered.len() == kill_after {
                            enough.notify_one();
                        }
                    }
                    Ok((status, answer)) => {
                        unexpected
                            .lock()
                            .unwrap()
                            .push(format!("{status} {answer}"));
                        break;
                    }
                    Err(_) => break,
                }
            }
        }));
    }
    let waited = tokio::time::timeout(BINARY_BOUND, enough.notified()).await;
    waited.expect("the requests were not answered in time");
    server.sigkill();
    for client in clients {
        client.await.expect("client task");
    }
    let unexpected = unexpected.lock().unwrap().clone();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    let answered = answered.lock().unwrap().clone();
    answered
}
