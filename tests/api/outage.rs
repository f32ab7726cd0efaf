//! The database going away and coming back (PostgreSQL only): the server answers 503
//! `unavailable` instead of hanging, `/health` says so, and it recovers without a restart. The
//! database is reached through a relay the test cuts (every connection dropped, new ones
//! refused), as when PostgreSQL stops or the network to it fails.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use signal_server::Config;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::helpers::{database_for, on_postgres, TestServer, DATABASE_ENV};

/// Much longer than the server's 5 s database timeout: an answer within it is not a hang.
const ANSWER: Duration = Duration::from_secs(20);

/// A TCP relay to `target` that can be cut and restored.
pub struct Relay {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    pipes: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Relay {
    pub async fn to(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let open = Arc::new(AtomicBool::new(true));
        let pipes: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (is_open, kept) = (open.clone(), pipes.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !is_open.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                kept.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Relay {
            addr,
            open,
            pipes,
            accept,
        }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for pipe in self.pipes.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// The address `url` (postgres://user@HOST:PORT/db) names, and `url` with `addr` in its place.
pub fn through(url: &str, addr: SocketAddr) -> (SocketAddr, String) {
    let rest = url.split_once("://").expect("scheme").1;
    let authority = rest.split('/').next().expect("authority");
    let host_port = authority.rsplit('@').next().expect("host");
    let target = host_port
        .replace("localhost", "127.0.0.1")
        .parse()
        .expect("the test server's URL names an IP and a port");
    (target, url.replacen(host_port, &addr.to_string(), 1))
}

async fn status(http: &reqwest::Client, url: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let answer = request.send().await.expect("an answer, not a hang");
    let status = answer.status();
    (status, answer.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_database_outage_answers_503_and_the_server_recovers_without_a_restart() {
    if !on_postgres() {
        eprintln!("skipped: the outage test needs PostgreSQL ({DATABASE_ENV})");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let direct = database_for(dir.path()).await.expect("database");
    let (target, _) = through(&direct, "127.0.0.1:1".parse().expect("addr"));
    let relay = Relay::to(target).await;
    let (_, url) = through(&direct, relay.addr);
    let args = [
        "signal-server",
        "--data-dir",
        &dir.path().display().to_string(),
    ];
    let mut config = <Config as clap::Parser>::parse_from(args.iter().chain(&[
        "--pbkdf2-iterations",
        "1000",
        "--no-rate-limit",
    ]));
    config.database_url = Some(url);
    let s = TestServer::start_config(config, dir).await;
    let alice = s.user("alice").await;
    let http = reqwest::Client::builder()
        .timeout(ANSWER)
        .build()
        .expect("client");

    relay.cut();
    let (health, body) = status(&http, &s.url("/health"), None).await;
    assert_eq!(health, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unavailable");
    // The caller is known (cached); what it asks for needs the database.
    let (listed, body) = status(&http, &s.url("/v2/devices"), Some(&alice.token)).await;
    assert_eq!(listed, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "unavailable");

    relay.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (health, _) = status(&http, &s.url("/health"), None).await;
        if health == StatusCode::OK {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (me, body) = status(&http, &s.url("/auth/users/me"), Some(&alice.token)).await;
    assert_eq!(me, StatusCode::OK, "{body}");
    assert_eq!(body["username"], "alice");
}
