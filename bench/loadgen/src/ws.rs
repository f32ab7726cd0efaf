//! `ws`: `--ws-clients` K users hold a WebSocket (typed client sessions) and ack every message;
//! N connections POST messages to them in turn. `scenario=ws` is the delivery latency (POST sent
//! → frame received, one clock) and rate; `scenario=ws_send` the POSTs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use signal_server::client::{Frame, QueuedMessage, WsAuth};

use crate::http1::request;
use crate::jobs::{run_jobs, Job};
use crate::setup::{Api, User};
use crate::stats::{report, Stats, Window};
use crate::{now_us, padding, send_body, Opts};

/// What one WebSocket client saw.
struct Client {
    stats: Stats,
    received: u64,
    disconnected: bool,
}

impl Default for Client {
    fn default() -> Client {
        Client {
            stats: Stats::new(),
            received: 0,
            disconnected: false,
        }
    }
}

impl Client {
    /// Counts a delivered message and, inside the window, its latency from the send time the
    /// sender wrote into it (`t`, microseconds on the shared clock).
    fn received(&mut self, message: &QueuedMessage, window: Option<&Window>) {
        let now = now_us();
        let done = Instant::now();
        self.received += 1;
        let sent = serde_json::from_str::<Value>(&message.content)
            .ok()
            .and_then(|c| c["t"].as_u64());
        if let (Some(sent), Some(w)) = (sent, window) {
            if w.counts(done) {
                self.stats.count += 1;
                self.stats.last_done = Some(done);
                self.stats.record_micros(now.saturating_sub(sent));
            }
        }
    }
}

pub async fn ws(opts: Opts, addr: SocketAddr, api: Arc<Api>) {
    let k = opts.ws_clients.max(1);
    let users = api.users(k, "ws", true, 0, 0).await;
    let window_cell: Arc<OnceLock<Window>> = Arc::new(OnceLock::new());
    let stop_ws = Arc::new(AtomicBool::new(false));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(k);
    let clients: Vec<_> = users
        .iter()
        .map(|u| {
            let me = api.client.with_token(&u.token);
            let reg_id = u.reg_id;
            let (window_cell, ready_tx, stop_ws) =
                (window_cell.clone(), ready_tx.clone(), stop_ws.clone());
            tokio::spawn(async move {
                let session = me.connect(reg_id, WsAuth::Header).await;
                let mut session = session.unwrap_or_else(|e| panic!("ws connect: {e}"));
                let mut client = Client::default();
                loop {
                    let frame = tokio::select! {
                        f = session.next() => f,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {
                            if stop_ws.load(Ordering::Relaxed) { break; }
                            continue;
                        }
                    };
                    let Ok(Some(frame)) = frame else {
                        if !stop_ws.load(Ordering::Relaxed) {
                            eprintln!(
                                "INFO ws: a client was disconnected by the server: {frame:?}"
                            );
                            client.disconnected = true;
                        }
                        break;
                    };
                    match frame {
                        Frame::QueueEmpty => {
                            let _ = ready_tx.send(()).await;
                        }
                        Frame::Message { message } => {
                            client.received(&message, window_cell.get());
                            if session.ack(&[message.id]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = session.close().await;
                (client.stats, client.received, client.disconnected)
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
    let window = Window::new(opts.warmup, opts.seconds, opts.total);
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
