//! Load generator for any server speaking the API of docs/API.md.
//!
//! Setup (users, devices, keys), draining and the WebSocket clients go through the typed client
//! (`signal_server::client`); the measured hot loop is a minimal HTTP/1.1 keep-alive client
//! (`http1`, kept because it measured faster than hyper's, see there) on a tokio `TcpStream`
//! per connection. Each connection is one task sending requests back to back (no pipelining).
//! Latencies go into an HdrHistogram (3 significant digits) per connection, merged at the end.
//!
//! Output: `INFO ...` lines while it works, then one line per measured series:
//! `RESULT scenario=... rps=... p50_ms=... p99_ms=... p999_ms=... non2xx=... [key=value ...]`.
//!
//! ```sh
//! cargo run --release -p loadgen -- --url http://127.0.0.1:8000 --scenario fetch
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
//! - `idle-ws`: `--sockets` users each open a WebSocket (`--connections` openings at a time) and
//!   keep it idle for `--hold` seconds; with `--server-pid` the result gives the server's VmRSS
//!   and VmHWM at the end of the hold (bench/memory.sh).
//!
//! With `--no-setup` (for `examples/baseline.rs`), `fetch` uses `--token` and regId 1 and nothing
//! is created. With `--server-pid`, each result also gives the CPU use of the server, of the
//! generator and of the whole machine in the measured window (from /proc, % of one core).

mod cpu;
mod drain;
mod http1;
mod idle;
mod jobs;
mod login;
mod setup;
mod stats;
mod ws;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use clap::{Parser, ValueEnum};
use rand::Rng;
use serde_json::json;

use http1::request;
use jobs::{run_jobs, Job};
use setup::{Api, User};
use stats::{report, Window};

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Fetch,
    Send,
    Bundle,
    Login,
    Ws,
    Health,
    IdleWs,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fetch => "fetch",
            Scenario::Send => "send",
            Scenario::Bundle => "bundle",
            Scenario::Login => "login",
            Scenario::Ws => "ws",
            Scenario::Health => "health",
            Scenario::IdleWs => "idle-ws",
        }
    }
}

#[derive(Parser, Debug, Clone)]
#[command(about = "HTTP/1.1 keep-alive load generator for the signal-server API")]
pub struct Opts {
    /// Base URL of the server (http only, no path).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Concurrent keep-alive connections, each sending requests back to back.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    #[arg(long, value_enum, default_value_t = Scenario::Fetch)]
    pub scenario: Scenario,
    /// WebSocket clients for `ws`.
    #[arg(long, default_value_t = 64)]
    pub ws_clients: usize,
    /// Seconds of load before the measured window (not recorded).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// WebSockets `idle-ws` opens (one user each).
    #[arg(long, default_value_t = 10_000)]
    pub sockets: usize,
    /// Seconds `idle-ws` keeps its sockets open once all are open.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Worker threads of the generator's runtime (default: the number of cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Users for `fetch` and `send` (default: min(connections, 64)).
    #[arg(long)]
    pub users: Option<usize>,
    /// Target users for `bundle`.
    #[arg(long, default_value_t = 64)]
    pub targets: usize,
    /// One-time EC prekeys (and as many one-time Kyber prekeys) per `bundle` target.
    #[arg(long, default_value_t = 100)]
    pub prekeys_per_target: u32,
    /// Stock `bundle` targets with EC one-time prekeys only (Kyber: the last-resort key).
    #[arg(long)]
    pub no_kyber: bool,
    /// `bundle`: keep going when the stock is used up (by default the run stops after as many
    /// requests as there are one-time EC prekeys, warmup included).
    #[arg(long)]
    pub past_stock: bool,
    /// Size of the padding in each message's content, in bytes.
    #[arg(long, default_value_t = 256)]
    pub message_bytes: usize,
    /// Stop after this many requests in all (with --warmup 0: exactly this many are measured).
    #[arg(long)]
    pub total: Option<u64>,
    /// `send`: after the run, empty every recipient's queue (GET ?limit=1000 + DELETE).
    #[arg(long)]
    pub drain: bool,
    /// `login`: connections making paced GET /messages requests during the login storm.
    #[arg(long, default_value_t = 4)]
    pub side_connections: usize,
    /// `login`: side requests per second, in total.
    #[arg(long, default_value_t = 200.0)]
    pub side_rate: f64,
    /// `login`: users the login connections take turns with.
    #[arg(long, default_value_t = 8)]
    pub login_users: usize,
    /// `login`: cores of the server for the ceiling (default: cores of this machine).
    #[arg(long)]
    pub server_cores: Option<usize>,
    /// Create nothing (for a server without the account API, such as examples/baseline.rs).
    #[arg(long)]
    pub no_setup: bool,
    /// Token for `--no-setup`.
    #[arg(long, default_value = "bench-token")]
    pub token: String,
    /// Pid of the server (same machine), to report its CPU use in the measured window.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Password of the users the generator creates.
    #[arg(long, default_value = "tangerine-Voyage-42")]
    pub password: String,
}

pub fn message_text(reg_id: u32, pad: &str, t: Option<u64>) -> String {
    match t {
        Some(t) => format!(r#"{{"registrationId":{reg_id},"type":1,"t":{t},"body":"{pad}"}}"#),
        None => format!(r#"{{"registrationId":{reg_id},"type":1,"body":"{pad}"}}"#),
    }
}

pub fn send_body(recipient: &User, pad: &str, t: Option<u64>) -> Vec<u8> {
    json!({"recipient": recipient.name, "message": message_text(recipient.reg_id, pad, t)})
        .to_string()
        .into_bytes()
}

pub fn padding(n: usize) -> String {
    let mut bytes = vec![0u8; n * 3 / 4 + 1];
    rand::rng().fill(&mut bytes[..]);
    let mut s = signal_server::crypto::b64::encode(&bytes);
    s.truncate(n);
    s
}

/// Microseconds since the first call (one clock for senders and WebSocket clients).
pub fn now_us() -> u64 {
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
    let api = Arc::new(Api::new(url, &host, &opts.password));
    let conns = opts.connections.max(1);
    let n_users = opts.users.unwrap_or(conns.min(64)).max(1);
    let get = |path: &str, token: Option<&str>| request("GET", path, &api.host, token, None);
    eprintln!(
        "INFO scenario={} url={url} connections={conns} seconds={} warmup={}",
        opts.scenario.name(),
        opts.seconds,
        opts.warmup
    );
    let simple = Job::simple;
    match opts.scenario {
        Scenario::Health => {
            let jobs = (0..conns)
                .map(|_| simple(vec![get("/health", None)]))
                .collect();
            let window = Window::new(opts.warmup, opts.seconds, opts.total);
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
            let window = Window::new(opts.warmup, opts.seconds, opts.total);
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
            let window = Window::new(opts.warmup, opts.seconds, opts.total);
            let stats = run_jobs(addr, jobs, &window).await;
            report("send", &stats, &window, &format!("users={}", users.len()));
            if opts.drain {
                drain::drain(&api, &users, conns).await;
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
            let window = Window::new(o.warmup, o.seconds, o.total);
            let stats = run_jobs(addr, jobs, &window).await;
            report(
                "bundle",
                &stats,
                &window,
                &format!("with_prekey={} stock={}", stats.with_prekey, stock),
            );
        }
        Scenario::Login => login::login(opts.clone(), addr, api.clone()).await,
        Scenario::Ws => ws::ws(opts.clone(), addr, api.clone()).await,
        Scenario::IdleWs => idle::idle_ws(opts.clone(), api.clone()).await,
    }
}

fn main() {
    let opts = Opts::parse();
    let threads = opts
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let _ = now_us();
    let _ = cpu::SERVER_PID.set(opts.server_pid);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(opts));
}
