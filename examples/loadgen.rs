//! Load generator for any server speaking the API of docs/API.md.
//!
//! Setup (users, devices, keys) goes through reqwest; the measured hot loop is a minimal
//! HTTP/1.1 keep-alive client on a tokio `TcpStream` per connection: pre-serialised request
//! bytes, the status line and headers read, then a `Content-Length` (or chunked) body. Each
//! connection is one task sending requests back to back (no pipelining). Latencies go into a
//! small log-bucket histogram (about 0.8% relative precision) per connection, merged at the end.
//!
//! Output: `INFO ...` lines while it works, then one line per measured series:
//! `RESULT scenario=... rps=... p50_ms=... p99_ms=... p999_ms=... non2xx=... [key=value ...]`.
//!
//! ```sh
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8000 --scenario fetch
//! ```
//!
//! Scenarios:
//! - `fetch`: GET /messages/<own regId> on an empty queue (one user per connection, up to
//!   `--users`).
//! - `send`: POST /messages/<regId>; connection i sends as user i%U to user (i+1)%U, so U
//!   recipients share the load. Nothing is deleted while it runs: start the server with a
//!   `--max-queued-messages` above what one recipient gets (429 `queue_full` answers are counted
//!   as non-2xx). `--total N` stops after N requests (to queue exactly N messages) and `--drain`
//!   then empties every queue with GET ?limit=1000 + DELETE (reported as `scenario=drain`).
//! - `bundle`: GET /prekeybundle/<target>/<regId>; `--targets` users each stocked with
//!   `--prekeys-per-target` one-time EC and Kyber prekeys (the server's `--max-prekeys` must allow
//!   that many) and a last-resort Kyber key. Each one-time key is handed out once: when the stock
//!   runs out answers are still 200 without `preKey`, so by default the run stops after as many
//!   requests as there are EC keys (`--past-stock` goes on); `with_prekey=` counts the answers
//!   that had one.
//! - `login`: POST /auth/jwt/create for `--login-users` users, plus `--side-connections` paced
//!   GET /messages/<regId> requests (`--side-rate` per second in total) measured separately as
//!   `scenario=login_side`. The time of one hash is measured first with sequential logins on the
//!   idle server; `ceiling_rps` = cores / that time.
//! - `ws`: `--ws-clients` K users hold a WebSocket on /messages/<regId>/ws and ack every message;
//!   N connections POST messages to them in turn. `scenario=ws` is the delivery latency (POST
//!   sent → frame received, same clock) and the delivery rate; `scenario=ws_send` the POSTs.
//! - `health`: GET /health.
//!
//! With `--no-setup` (for `examples/baseline.rs`), `fetch` uses `--token` and regId 1 and nothing
//! is created. With `--server-pid`, each result also gives the CPU use of the server, of the
//! generator and of the whole machine in the measured window (from /proc, % of one core).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{json, Value};
use signal_server::crypto::{b64, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as Frame;

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Fetch,
    Send,
    Bundle,
    Login,
    Ws,
    Health,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Fetch => "fetch",
            Scenario::Send => "send",
            Scenario::Bundle => "bundle",
            Scenario::Login => "login",
            Scenario::Ws => "ws",
            Scenario::Health => "health",
        }
    }
}

#[derive(Parser, Debug, Clone)]
#[command(about = "HTTP/1.1 keep-alive load generator for the signal-server API")]
struct Opts {
    /// Base URL of the server (http only, no path).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Concurrent keep-alive connections, each sending requests back to back.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    #[arg(long, value_enum, default_value_t = Scenario::Fetch)]
    scenario: Scenario,
    /// WebSocket clients for `ws`.
    #[arg(long, default_value_t = 64)]
    ws_clients: usize,
    /// Seconds of load before the measured window (not recorded).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Worker threads of the generator's runtime (default: the number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Users for `fetch` and `send` (default: min(connections, 64)).
    #[arg(long)]
    users: Option<usize>,
    /// Target users for `bundle`.
    #[arg(long, default_value_t = 64)]
    targets: usize,
    /// One-time EC prekeys (and as many one-time Kyber prekeys) per `bundle` target.
    #[arg(long, default_value_t = 100)]
    prekeys_per_target: u32,
    /// Stock `bundle` targets with EC one-time prekeys only (Kyber: the last-resort key).
    #[arg(long)]
    no_kyber: bool,
    /// `bundle`: keep going when the stock is used up (by default the run stops after as many
    /// requests as there are one-time EC prekeys, warmup included).
    #[arg(long)]
    past_stock: bool,
    /// Size of the padding in each message's content, in bytes.
    #[arg(long, default_value_t = 256)]
    message_bytes: usize,
    /// Stop after this many requests in all (with --warmup 0: exactly this many are measured).
    #[arg(long)]
    total: Option<u64>,
    /// `send`: after the run, empty every recipient's queue (GET ?limit=1000 + DELETE).
    #[arg(long)]
    drain: bool,
    /// `login`: connections making paced GET /messages requests during the login storm.
    #[arg(long, default_value_t = 4)]
    side_connections: usize,
    /// `login`: side requests per second, in total.
    #[arg(long, default_value_t = 200.0)]
    side_rate: f64,
    /// `login`: users the login connections take turns with.
    #[arg(long, default_value_t = 8)]
    login_users: usize,
    /// `login`: cores of the server for the ceiling (default: cores of this machine).
    #[arg(long)]
    server_cores: Option<usize>,
    /// Create nothing (for a server without the account API, such as examples/baseline.rs).
    #[arg(long)]
    no_setup: bool,
    /// Token for `--no-setup`.
    #[arg(long, default_value = "bench-token")]
    token: String,
    /// Pid of the server (same machine), to report its CPU use in the measured window.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Password of the users the generator creates.
    #[arg(long, default_value = "tangerine-Voyage-42")]
    password: String,
}

// ---------------------------------------------------------------------------------------------
// Histogram

/// Log-bucket histogram of microsecond values: exact below 2*SUB, then SUB buckets per power of
/// two (relative error under 1/SUB).
#[derive(Clone)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            counts: vec![0; ((65 - SUB_BITS as u64) * SUB) as usize],
            total: 0,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < 2 * SUB {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros();
        let shift = msb - SUB_BITS;
        ((shift as u64 + 1) * SUB + ((v >> shift) - SUB)) as usize
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> f64 {
        let i = i as u64;
        if i < 2 * SUB {
            return i as f64;
        }
        let shift = i / SUB - 1;
        let low = (i % SUB + SUB) << shift;
        low as f64 + ((1u64 << shift) as f64 - 1.0) / 2.0
    }

    fn record(&mut self, micros: u64) {
        self.counts[Histogram::index(micros)] += 1;
        self.total += 1;
        self.max = self.max.max(micros);
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The value at quantile `q` (0..=1), in microseconds.
    fn quantile(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Histogram::value(i).min(self.max as f64);
            }
        }
        self.max as f64
    }
}

// ---------------------------------------------------------------------------------------------
// Minimal HTTP/1.1 client

/// One keep-alive connection; reconnects after an error or `Connection: close`.
struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

struct Answer {
    status: u16,
    /// Body range in `Conn::buf` (raw chunk framing included for a chunked body).
    body: std::ops::Range<usize>,
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if hay.len() < needle.len() {
        return None;
    }
    (from..=hay.len() - needle.len()).find(|&i| &hay[i..i + needle.len()] == needle)
}

fn parse_usize(bytes: &[u8], radix: u32) -> Option<usize> {
    usize::from_str_radix(std::str::from_utf8(bytes).ok()?.trim(), radix).ok()
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            stream: None,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.reserve(16 * 1024);
        if stream.read_buf(buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by the server",
            ));
        }
        Ok(())
    }

    /// Sends one request and reads its answer.
    async fn roundtrip(&mut self, request: &[u8]) -> io::Result<Answer> {
        let result = self.roundtrip_inner(request).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn roundtrip_inner(&mut self, request: &[u8]) -> io::Result<Answer> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        let stream = self.stream.as_mut().expect("connected");
        stream.write_all(request).await?;
        let buf = &mut self.buf;
        buf.clear();
        let mut scanned = 0;
        let head_end = loop {
            if let Some(p) = find(buf, b"\r\n\r\n", scanned) {
                break p + 4;
            }
            scanned = buf.len().saturating_sub(3);
            Conn::fill(stream, buf).await?;
        };
        let head = &buf[..head_end];
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad HTTP answer");
        if head.len() < 12 || !head.starts_with(b"HTTP/1.") {
            return Err(bad());
        }
        let status = parse_usize(&head[9..12], 10).ok_or_else(bad)? as u16;
        let mut length = None;
        let mut chunked = false;
        let mut close = head.starts_with(b"HTTP/1.0");
        for line in head.split(|&b| b == b'\n').skip(1) {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], &line[colon + 1..]);
            if name.eq_ignore_ascii_case(b"content-length") {
                length = Some(parse_usize(value, 10).ok_or_else(bad)?);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = value
                    .to_ascii_lowercase()
                    .windows(7)
                    .any(|w| w == b"chunked");
            } else if name.eq_ignore_ascii_case(b"connection") {
                close = value.to_ascii_lowercase().windows(5).any(|w| w == b"close");
            }
        }
        let body_end = if status == 204 || status == 304 || status < 200 {
            head_end
        } else if chunked {
            let mut pos = head_end;
            loop {
                let line_end = loop {
                    if let Some(p) = find(buf, b"\r\n", pos) {
                        break p;
                    }
                    Conn::fill(stream, buf).await?;
                };
                let size_text = &buf[pos..line_end];
                let size_text = size_text.split(|&b| b == b';').next().unwrap_or(size_text);
                let size = parse_usize(size_text, 16).ok_or_else(bad)?;
                pos = line_end + 2;
                if size == 0 {
                    // No trailers from the servers we drive: the final CRLF.
                    while buf.len() < pos + 2 {
                        Conn::fill(stream, buf).await?;
                    }
                    break pos + 2;
                }
                while buf.len() < pos + size + 2 {
                    Conn::fill(stream, buf).await?;
                }
                pos += size + 2;
            }
        } else if let Some(n) = length {
            while buf.len() < head_end + n {
                Conn::fill(stream, buf).await?;
            }
            head_end + n
        } else {
            // Body until the server closes.
            loop {
                buf.reserve(16 * 1024);
                if stream.read_buf(buf).await? == 0 {
                    break;
                }
            }
            close = true;
            buf.len()
        };
        if close {
            self.stream = None;
        }
        Ok(Answer {
            status,
            body: head_end..body_end,
        })
    }

    fn body(&self, answer: &Answer) -> &[u8] {
        &self.buf[answer.body.clone()]
    }
}

/// The bytes of one request.
fn request(
    method: &str,
    path: &str,
    host: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: loadgen\r\n");
    if let Some(t) = token {
        r.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    bytes
}

// ---------------------------------------------------------------------------------------------
// The measured loop

/// Per-connection results.
#[derive(Clone)]
struct Stats {
    hist: Histogram,
    count: u64,
    non2xx: u64,
    errors: u64,
    with_prekey: u64,
    /// 2xx answers over the whole run, warmup and stragglers included.
    ok_all: u64,
    last_done: Option<Instant>,
    /// CPU use of the server and the generator in the window (set by `run_jobs`).
    cpu_note: String,
    statuses: HashMap<u16, u64>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            hist: Histogram::new(),
            count: 0,
            non2xx: 0,
            errors: 0,
            with_prekey: 0,
            ok_all: 0,
            last_done: None,
            cpu_note: String::new(),
            statuses: HashMap::new(),
        }
    }

    fn merge(&mut self, o: &Stats) {
        self.hist.merge(&o.hist);
        self.count += o.count;
        self.non2xx += o.non2xx;
        self.errors += o.errors;
        self.with_prekey += o.with_prekey;
        self.ok_all += o.ok_all;
        self.last_done = match (self.last_done, o.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        for (k, v) in &o.statuses {
            *self.statuses.entry(*k).or_default() += v;
        }
    }
}

/// When the measured window starts and ends, and the optional request budget.
#[derive(Clone)]
struct Window {
    start: Instant,
    end: Instant,
    total: Option<Arc<(AtomicU64, u64)>>,
}

impl Window {
    fn new(opts: &Opts) -> Window {
        let start = Instant::now() + Duration::from_secs_f64(opts.warmup);
        Window {
            start,
            end: start + Duration::from_secs_f64(opts.seconds),
            total: opts.total.map(|n| Arc::new((AtomicU64::new(0), n))),
        }
    }

    /// Whether another request may start.
    fn go(&self) -> bool {
        if Instant::now() >= self.end {
            return false;
        }
        match &self.total {
            Some(t) => t.0.fetch_add(1, Ordering::Relaxed) < t.1,
            None => true,
        }
    }

    fn counts(&self, done: Instant) -> bool {
        done >= self.start && done <= self.end
    }
}

/// What a connection sends: its requests in turn, and what to look for in the answers.
struct Job {
    requests: Vec<Vec<u8>>,
    count_prekeys: bool,
    /// Builds each request instead (ws: a fresh timestamp in each message).
    make: Option<Box<dyn FnMut(u64) -> Vec<u8> + Send>>,
    /// Seconds between requests (paced side load); none: back to back.
    pace: Option<f64>,
}

async fn connection(addr: SocketAddr, mut job: Job, window: Window) -> Stats {
    let mut conn = Conn::new(addr);
    let mut stats = Stats::new();
    let mut n: u64 = 0;
    let mut next = Instant::now();
    while window.go() {
        if let Some(pace) = job.pace {
            tokio::time::sleep_until(next.into()).await;
            next = (next + Duration::from_secs_f64(pace)).max(Instant::now());
        }
        let made;
        let req: &[u8] = match &mut job.make {
            Some(make) => {
                made = make(n);
                &made
            }
            None => &job.requests[(n as usize) % job.requests.len()],
        };
        n += 1;
        let t0 = Instant::now();
        match conn.roundtrip(req).await {
            Ok(answer) => {
                let done = Instant::now();
                if (200..300).contains(&answer.status) {
                    stats.ok_all += 1;
                }
                if window.counts(done) || window.total.is_some() && done >= window.start {
                    stats.count += 1;
                    stats.last_done = Some(done);
                    stats.hist.record((done - t0).as_micros() as u64);
                    *stats.statuses.entry(answer.status).or_default() += 1;
                    if !(200..300).contains(&answer.status) {
                        stats.non2xx += 1;
                    }
                    if job.count_prekeys && find(conn.body(&answer), b"\"preKey\"", 0).is_some() {
                        stats.with_prekey += 1;
                    }
                }
            }
            Err(e) => {
                if stats.errors == 0 {
                    eprintln!("INFO connection error: {e}");
                }
                stats.errors += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    stats
}

async fn run_jobs(addr: SocketAddr, jobs: Vec<Job>, window: &Window) -> Stats {
    let probe = tokio::spawn(cpu_at(window.start));
    let handles: Vec<_> = jobs
        .into_iter()
        .map(|job| tokio::spawn(connection(addr, job, window.clone())))
        .collect();
    let mut all = Stats::new();
    for h in handles {
        all.merge(&h.await.expect("connection task"));
    }
    if probe.is_finished() {
        if let Ok((t0, server0, own0, machine0)) = probe.await {
            let (t1, server1, own1, machine1) = cpu_now();
            let secs = (t1 - t0).as_secs_f64();
            let pct = |a: Option<u64>, b: Option<u64>| match (a, b) {
                (Some(a), Some(b)) if secs > 0.0 => {
                    format!("{:.0}", (b - a) as f64 / CLOCK_TICKS / secs * 100.0)
                }
                _ => "-".to_string(),
            };
            all.cpu_note = format!(
                "server_cpu_pct={} loadgen_cpu_pct={} machine_cpu_pct={}",
                pct(server0, server1),
                pct(own0, own1),
                pct(machine0, machine1)
            );
        }
    } else {
        probe.abort();
    }
    all
}

/// `USER_HZ`, the unit of the CPU times in /proc (100 on every usual Linux).
const CLOCK_TICKS: f64 = 100.0;

/// The server's pid, for its CPU use in the measured window (`--server-pid`).
static SERVER_PID: OnceLock<Option<u32>> = OnceLock::new();

/// User + system CPU ticks of a process, from /proc/<pid>/stat.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Busy CPU ticks of the whole machine (all cores, everything but idle and iowait), from
/// /proc/stat: what is neither the server nor the generator is other load (or the kernel's
/// loopback work, softirq, which no process is charged for).
fn machine_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .take(8)
        .filter_map(|f| f.parse().ok())
        .collect();
    (v.len() == 8).then(|| v.iter().sum::<u64>() - v[3] - v[4])
}

type CpuSample = (Instant, Option<u64>, Option<u64>, Option<u64>);

/// (now, the server's CPU ticks, the generator's CPU ticks, the machine's busy ticks).
fn cpu_now() -> CpuSample {
    let server = SERVER_PID
        .get()
        .copied()
        .flatten()
        .and_then(|p| cpu_ticks(&p.to_string()));
    (Instant::now(), server, cpu_ticks("self"), machine_ticks())
}

async fn cpu_at(when: Instant) -> CpuSample {
    tokio::time::sleep_until(when.into()).await;
    cpu_now()
}

fn report(name: &str, stats: &Stats, window: &Window, extra: &str) {
    let elapsed = match (&window.total, stats.last_done) {
        (Some(_), Some(last)) => (last - window.start).as_secs_f64().max(1e-9),
        _ => (window.end - window.start).as_secs_f64(),
    };
    let ms = |q: f64| stats.hist.quantile(q) / 1000.0;
    let mut statuses: Vec<_> = stats.statuses.iter().collect();
    statuses.sort();
    let statuses: Vec<String> = statuses.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    println!(
        "RESULT scenario={name} rps={:.1} p50_ms={:.3} p99_ms={:.3} p999_ms={:.3} non2xx={} \
         requests={} errors={} max_ms={:.3} seconds={:.2} statuses={}{}{}{}{}",
        stats.count as f64 / elapsed,
        ms(0.50),
        ms(0.99),
        ms(0.999),
        stats.non2xx,
        stats.count,
        stats.errors,
        stats.hist.max as f64 / 1000.0,
        elapsed,
        if statuses.is_empty() {
            "-".to_string()
        } else {
            statuses.join(",")
        },
        if extra.is_empty() { "" } else { " " },
        extra,
        if stats.cpu_note.is_empty() { "" } else { " " },
        stats.cpu_note
    );
}

// ---------------------------------------------------------------------------------------------
// Setup over reqwest

struct Api {
    http: reqwest::Client,
    base: String,
    host: String,
    password: String,
}

#[derive(Clone)]
struct User {
    name: String,
    token: String,
    reg_id: u32,
}

fn unique_name(prefix: &str) -> String {
    static RUN: OnceLock<String> = OnceLock::new();
    static N: AtomicUsize = AtomicUsize::new(0);
    let run = RUN.get_or_init(|| format!("{:08x}", rand::random::<u32>()));
    format!("{prefix}{run}x{}", N.fetch_add(1, Ordering::Relaxed))
}

fn kyber_key() -> Vec<u8> {
    let mut key = vec![0u8; 1569];
    rand::rng().fill(&mut key[1..]);
    key[0] = 0x08;
    key
}

fn signed(identity: &KeyPair, key_id: u32, key: &[u8]) -> Value {
    json!({"keyId": key_id, "publicKey": b64::encode(key), "signature": b64::encode(&identity.sign(key))})
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn expect(&self, what: &str, (status, body): (u16, Value), want: u16) -> Value {
        if status != want {
            eprintln!("setup failed: {what}: {status} {body}");
            std::process::exit(2);
        }
        body
    }

    async fn login(&self, name: &str) -> String {
        let body = json!({"username": name, "password": self.password});
        let res = self
            .call(reqwest::Method::POST, "/auth/jwt/create", None, &body)
            .await;
        self.expect("login", res, 200)["token"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Registers a user, logs in, and (with `device`) creates a device with `prekeys` one-time
    /// EC prekeys and `kyber` one-time Kyber prekeys (uploaded 100 at a time) and a last-resort
    /// Kyber key.
    async fn user(&self, prefix: &str, device: bool, prekeys: u32, kyber: u32) -> User {
        let name = unique_name(prefix);
        let body = json!({"username": name, "password": self.password});
        let res = self
            .call(reqwest::Method::POST, "/auth/users", None, &body)
            .await;
        self.expect("register", res, 201);
        let token = self.login(&name).await;
        let reg_id = rand::rng().random_range(1..=999_999u32);
        let user = User {
            name,
            token,
            reg_id,
        };
        if !device {
            return user;
        }
        let name = user.name.clone();
        let bodies = tokio::task::spawn_blocking(move || {
            let identity = KeyPair::generate();
            let ec = |ids: std::ops::RangeInclusive<u32>| -> Value {
                ids.map(|id| json!({"keyId": id, "publicKey": b64::encode(&KeyPair::generate().public)}))
                    .collect()
            };
            let spk = KeyPair::generate().public;
            let mut bodies = vec![json!({
                "address": format!("{name}.1"),
                "identityKey": b64::encode(&identity.public),
                "registrationId": reg_id,
                "preKeys": ec(1..=prekeys.min(100)),
                "signedPreKey": signed(&identity, 1, &spk),
                "lastResortKyberPreKey": signed(&identity, 16_000_000, &kyber_key()),
            })];
            let mut first = 101;
            while first <= prekeys {
                let last = (first + 99).min(prekeys);
                bodies.push(json!({"preKeys": ec(first..=last)}));
                first = last + 1;
            }
            let mut first = 1;
            while first <= kyber {
                let last = (first + 99).min(kyber);
                let keys: Vec<Value> = (first..=last)
                    .map(|id| signed(&identity, id, &kyber_key()))
                    .collect();
                bodies.push(json!({"kyberPreKeys": keys}));
                first = last + 1;
            }
            bodies
        })
        .await
        .expect("key generation");
        for (i, body) in bodies.iter().enumerate() {
            let (path, want) = if i == 0 {
                (format!("/device/{reg_id}"), 201)
            } else if body.get("preKeys").is_some() {
                (format!("/prekeys/{reg_id}"), 200)
            } else {
                (format!("/kyberprekeys/{reg_id}"), 200)
            };
            let res = self
                .call(reqwest::Method::POST, &path, Some(&user.token), body)
                .await;
            self.expect(&path, res, want);
        }
        user
    }

    /// `n` users made `parallel` at a time.
    async fn users(
        self: &Arc<Self>,
        n: usize,
        prefix: &'static str,
        device: bool,
        prekeys: u32,
        kyber: u32,
    ) -> Vec<User> {
        let t = Instant::now();
        let permits = Arc::new(tokio::sync::Semaphore::new(8));
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let api = self.clone();
                let permits = permits.clone();
                tokio::spawn(async move {
                    let _p = permits.acquire().await.expect("semaphore");
                    api.user(prefix, device, prekeys, kyber).await
                })
            })
            .collect();
        let mut users = Vec::with_capacity(n);
        for h in handles {
            users.push(h.await.expect("setup task"));
        }
        eprintln!(
            "INFO setup: {n} users ({prekeys} EC + {kyber} Kyber one-time prekeys each) in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        users
    }
}

fn message_text(reg_id: u32, pad: &str, t: Option<u64>) -> String {
    match t {
        Some(t) => format!(r#"{{"registrationId":{reg_id},"type":1,"t":{t},"body":"{pad}"}}"#),
        None => format!(r#"{{"registrationId":{reg_id},"type":1,"body":"{pad}"}}"#),
    }
}

fn send_body(recipient: &User, pad: &str, t: Option<u64>) -> Vec<u8> {
    json!({"recipient": recipient.name, "message": message_text(recipient.reg_id, pad, t)})
        .to_string()
        .into_bytes()
}

fn padding(n: usize) -> String {
    let mut bytes = vec![0u8; n * 3 / 4 + 1];
    rand::rng().fill(&mut bytes[..]);
    let mut s = b64::encode(&bytes);
    s.truncate(n);
    s
}

/// Microseconds since the first call (one clock for senders and WebSocket clients).
fn now_us() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_micros() as u64
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async fn run(opts: Opts) {
    let url = opts.url.trim_end_matches('/');
    let host = url
        .strip_prefix("http://")
        .unwrap_or_else(|| {
            eprintln!("--url must start with http://");
            std::process::exit(2)
        })
        .to_string();
    let addr = tokio::net::lookup_host(&host)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| {
            eprintln!("cannot resolve {host}");
            std::process::exit(2)
        });
    let api = Arc::new(Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("http client"),
        base: url.to_string(),
        host: host.clone(),
        password: opts.password.clone(),
    });
    let conns = opts.connections.max(1);
    let n_users = opts.users.unwrap_or(conns.min(64)).max(1);
    let get = |path: &str, token: Option<&str>| request("GET", path, &api.host, token, None);
    eprintln!(
        "INFO scenario={} url={url} connections={conns} seconds={} warmup={}",
        opts.scenario.name(),
        opts.seconds,
        opts.warmup
    );
    let simple = |reqs: Vec<Vec<u8>>| Job {
        requests: reqs,
        count_prekeys: false,
        make: None,
        pace: None,
    };
    match opts.scenario {
        Scenario::Health => {
            let jobs = (0..conns)
                .map(|_| simple(vec![get("/health", None)]))
                .collect();
            let window = Window::new(&opts);
            let stats = run_jobs(addr, jobs, &window).await;
            report("health", &stats, &window, "");
        }
        Scenario::Fetch => {
            let users = if opts.no_setup {
                vec![User {
                    name: String::new(),
                    token: opts.token.clone(),
                    reg_id: 1,
                }]
            } else {
                api.users(n_users, "fe", true, 0, 0).await
            };
            let jobs = (0..conns)
                .map(|i| {
                    let u = &users[i % users.len()];
                    simple(vec![get(
                        &format!("/messages/{}", u.reg_id),
                        Some(&u.token),
                    )])
                })
                .collect();
            let window = Window::new(&opts);
            let stats = run_jobs(addr, jobs, &window).await;
            report("fetch", &stats, &window, "");
        }
        Scenario::Send => {
            let users = api.users(n_users, "se", true, 0, 0).await;
            let pad = padding(opts.message_bytes);
            let jobs = (0..conns)
                .map(|i| {
                    let from = &users[i % users.len()];
                    let to = &users[(i + 1) % users.len()];
                    let body = send_body(to, &pad, None);
                    simple(vec![request(
                        "POST",
                        &format!("/messages/{}", from.reg_id),
                        &api.host,
                        Some(&from.token),
                        Some(&body),
                    )])
                })
                .collect();
            let window = Window::new(&opts);
            let stats = run_jobs(addr, jobs, &window).await;
            report("send", &stats, &window, &format!("users={}", users.len()));
            if opts.drain {
                drain(addr, &api.host, &users, conns).await;
            }
        }
        Scenario::Bundle => {
            let kyber = if opts.no_kyber {
                0
            } else {
                opts.prekeys_per_target
            };
            let targets = api
                .users(
                    opts.targets.max(2),
                    "bu",
                    true,
                    opts.prekeys_per_target,
                    kyber,
                )
                .await;
            let t = targets.len();
            let jobs = (0..conns)
                .map(|i| {
                    let me = &targets[i % t];
                    // Every target in turn (but never oneself), from a different start per
                    // connection.
                    let reqs = (1..t)
                        .map(|k| {
                            let target = &targets[(i + k) % t];
                            get(
                                &format!("/prekeybundle/{}/{}", target.name, me.reg_id),
                                Some(&me.token),
                            )
                        })
                        .collect();
                    Job {
                        requests: reqs,
                        count_prekeys: true,
                        make: None,
                        pace: None,
                    }
                })
                .collect();
            // Stop when the stock is used up (so every measured answer popped a key), unless
            // told otherwise.
            let stock = t as u64 * opts.prekeys_per_target as u64;
            let mut o = opts.clone();
            if o.total.is_none() && !o.past_stock {
                o.total = Some(stock);
            }
            let window = Window::new(&o);
            let stats = run_jobs(addr, jobs, &window).await;
            report(
                "bundle",
                &stats,
                &window,
                &format!("with_prekey={} stock={}", stats.with_prekey, stock),
            );
        }
        Scenario::Login => login(opts.clone(), addr, api.clone()).await,
        Scenario::Ws => ws(opts.clone(), addr, api.clone()).await,
    }
}

/// Empties every user's queue: GET ?limit=1000 then DELETE those ids, until empty.
async fn drain(addr: SocketAddr, host: &str, users: &[User], parallel: usize) {
    let t = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let users = Arc::new(users.to_vec());
    let handles: Vec<_> = (0..parallel.min(users.len()))
        .map(|_| {
            let (next, users, host) = (next.clone(), users.clone(), host.to_string());
            tokio::spawn(async move {
                let mut conn = Conn::new(addr);
                let mut stats = Stats::new();
                let mut messages = 0u64;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(u) = users.get(i) else { break };
                    let path = format!("/messages/{}", u.reg_id);
                    let get = request(
                        "GET",
                        &format!("{path}?limit=1000"),
                        &host,
                        Some(&u.token),
                        None,
                    );
                    loop {
                        let t0 = Instant::now();
                        let answer = conn.roundtrip(&get).await.expect("drain GET");
                        stats.hist.record(t0.elapsed().as_micros() as u64);
                        stats.count += 1;
                        let list: Value =
                            serde_json::from_slice(conn.body(&answer)).unwrap_or(Value::Null);
                        let ids: Vec<u64> = list
                            .as_array()
                            .map(|a| a.iter().filter_map(|m| m["id"].as_u64()).collect())
                            .unwrap_or_default();
                        if answer.status != 200 {
                            stats.non2xx += 1;
                        }
                        if ids.is_empty() {
                            break;
                        }
                        messages += ids.len() as u64;
                        let body = serde_json::to_vec(&ids).expect("ids");
                        let del = request("DELETE", &path, &host, Some(&u.token), Some(&body));
                        let t0 = Instant::now();
                        let answer = conn.roundtrip(&del).await.expect("drain DELETE");
                        stats.hist.record(t0.elapsed().as_micros() as u64);
                        stats.count += 1;
                        if answer.status != 200 {
                            stats.non2xx += 1;
                            break;
                        }
                    }
                }
                (stats, messages)
            })
        })
        .collect();
    let mut all = Stats::new();
    let mut messages = 0;
    for h in handles {
        let (s, m) = h.await.expect("drain task");
        all.merge(&s);
        messages += m;
    }
    let secs = t.elapsed().as_secs_f64();
    let window = Window {
        start: t,
        end: t + Duration::from_secs_f64(secs),
        total: None,
    };
    report(
        "drain",
        &all,
        &window,
        &format!(
            "messages={messages} messages_per_s={:.1}",
            messages as f64 / secs
        ),
    );
}

async fn login(opts: Opts, addr: SocketAddr, api: Arc<Api>) {
    // One user with a device for the side load; the rest need only an account.
    let mut users = api.users(1, "lo", true, 0, 0).await;
    users.extend(
        api.users(opts.login_users.saturating_sub(1), "lo", false, 0, 0)
            .await,
    );
    // The time of one hash: sequential logins on the idle server, the fastest.
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        api.login(&users[0].name).await;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let cores = opts
        .server_cores
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let ceiling = cores as f64 / best;
    eprintln!(
        "INFO login: one login alone {:.1} ms, ceiling {cores} cores / hash = {ceiling:.2}/s",
        best * 1000.0
    );
    let mut jobs: Vec<Job> = (0..opts.connections.max(1))
        .map(|i| {
            let reqs = (0..users.len())
                .map(|k| {
                    let u = &users[(i + k) % users.len()];
                    let body = json!({"username": u.name, "password": api.password}).to_string();
                    request(
                        "POST",
                        "/auth/jwt/create",
                        &api.host,
                        None,
                        Some(body.as_bytes()),
                    )
                })
                .collect();
            Job {
                requests: reqs,
                count_prekeys: false,
                make: None,
                pace: None,
            }
        })
        .collect();
    let side = opts.side_connections;
    let side_user = &users[0];
    let side_req = request(
        "GET",
        &format!("/messages/{}", side_user.reg_id),
        &api.host,
        Some(&side_user.token),
        None,
    );
    let window = Window::new(&opts);
    let side_handles: Vec<_> = (0..side)
        .map(|_| {
            let job = Job {
                requests: vec![side_req.clone()],
                count_prekeys: false,
                make: None,
                pace: Some(side as f64 / opts.side_rate.max(0.001)),
            };
            tokio::spawn(connection(addr, job, window.clone()))
        })
        .collect();
    let stats = run_jobs(addr, std::mem::take(&mut jobs), &window).await;
    let mut side_stats = Stats::new();
    for h in side_handles {
        side_stats.merge(&h.await.expect("side task"));
    }
    let rps = stats.count as f64 / (window.end - window.start).as_secs_f64();
    report(
        "login",
        &stats,
        &window,
        &format!(
            "hash_ms={:.1} ceiling_rps={ceiling:.2} of_ceiling={:.2}",
            best * 1000.0,
            rps / ceiling
        ),
    );
    report(
        "login_side",
        &side_stats,
        &window,
        &format!("rate={}", opts.side_rate),
    );
}

async fn ws(opts: Opts, addr: SocketAddr, api: Arc<Api>) {
    let k = opts.ws_clients.max(1);
    let users = api.users(k, "ws", true, 0, 0).await;
    let ws_base = format!("ws://{}", api.host);
    let window_cell: Arc<OnceLock<Window>> = Arc::new(OnceLock::new());
    let stop_ws = Arc::new(AtomicBool::new(false));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(k);
    let clients: Vec<_> = users
        .iter()
        .map(|u| {
            let mut req = format!("{ws_base}/messages/{}/ws", u.reg_id)
                .into_client_request()
                .expect("ws request");
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {}", u.token).parse().expect("header"),
            );
            let (window_cell, ready_tx, stop_ws) =
                (window_cell.clone(), ready_tx.clone(), stop_ws.clone());
            tokio::spawn(async move {
                let (socket, _) = tokio_tungstenite::connect_async(req)
                    .await
                    .unwrap_or_else(|e| panic!("ws connect: {e}"));
                let (mut tx, mut rx) = socket.split();
                let mut stats = Stats::new();
                let mut received = 0u64;
                let mut disconnected = false;
                loop {
                    let frame = tokio::select! {
                        f = rx.next() => f,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {
                            if stop_ws.load(Ordering::Relaxed) { break; }
                            continue;
                        }
                    };
                    let Some(Ok(frame)) = frame else {
                        if !stop_ws.load(Ordering::Relaxed) {
                            eprintln!(
                                "INFO ws: a client was disconnected by the server: {frame:?}"
                            );
                            disconnected = true;
                        }
                        break;
                    };
                    let Frame::Text(text) = frame else { continue };
                    let now = now_us();
                    let done = Instant::now();
                    let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                    match v["type"].as_str() {
                        Some("queue_empty") => {
                            let _ = ready_tx.send(()).await;
                        }
                        Some("message") => {
                            received += 1;
                            let m = &v["message"];
                            let content = m["content"].as_str().unwrap_or("");
                            let sent = serde_json::from_str::<Value>(content)
                                .ok()
                                .and_then(|c| c["t"].as_u64());
                            if let (Some(sent), Some(w)) = (sent, window_cell.get()) {
                                if w.counts(done) {
                                    stats.count += 1;
                                    stats.last_done = Some(done);
                                    stats.hist.record(now.saturating_sub(sent));
                                }
                            }
                            if let Some(id) = m["id"].as_u64() {
                                let ack = format!(r#"{{"type":"ack","ids":[{id}]}}"#);
                                if tx.send(Frame::text(ack)).await.is_err() {
                                    break;
                                }
                            }
                        }
                        _ => {}
                    }
                }
                let _ = tx.close().await;
                (stats, received, disconnected)
            })
        })
        .collect();
    drop(ready_tx);
    for _ in 0..k {
        if ready_rx.recv().await.is_none() {
            eprintln!("a WebSocket client ended before queue_empty");
            std::process::exit(2);
        }
    }
    eprintln!("INFO ws: {k} WebSocket clients connected and idle");
    let pad = padding(opts.message_bytes);
    let window = Window::new(&opts);
    let _ = window_cell.set(window.clone());
    let jobs = (0..opts.connections.max(1))
        .map(|i| {
            let from = users[i % k].clone();
            let recipients: Vec<User> = (0..k).map(|j| users[(i + 1 + j) % k].clone()).collect();
            let (host, pad) = (api.host.clone(), pad.clone());
            let path = format!("/messages/{}", from.reg_id);
            Job {
                requests: Vec::new(),
                count_prekeys: false,
                make: Some(Box::new(move |n| {
                    let to = &recipients[n as usize % recipients.len()];
                    let body = send_body(to, &pad, Some(now_us()));
                    request("POST", &path, &host, Some(&from.token), Some(&body))
                })),
                pace: None,
            }
        })
        .collect();
    let send_stats = run_jobs(addr, jobs, &window).await;
    // Let the last messages arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_ws.store(true, Ordering::Relaxed);
    let mut stats = Stats::new();
    let mut received = 0;
    let mut disconnected = 0;
    for c in clients {
        let (s, r, d) = c.await.expect("ws client");
        stats.merge(&s);
        received += r;
        disconnected += d as u32;
    }
    let sent = send_stats.ok_all;
    report(
        "ws",
        &stats,
        &window,
        &format!("clients={k} posted={sent} received={received} disconnected={disconnected}"),
    );
    report("ws_send", &send_stats, &window, "");
}

fn main() {
    let opts = Opts::parse();
    let threads = opts
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let _ = now_us();
    let _ = SERVER_PID.set(opts.server_pid);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(opts));
}
