//! `idle-ws`: `--sockets` users (one device each: a device has one live connection) each open a
//! WebSocket on /messages/<regId>/ws, `--connections` at a time, and keep it idle (reading, so
//! the server's pings are answered) for `--hold` seconds once all are open. For the server's
//! memory per idle connection (bench/memory.sh): with `--server-pid`, the result gives its VmRSS
//! once the users exist but before any socket (`server_rss_before_kb`), and its VmRSS and VmHWM
//! at the end of the hold.
//!
//! `scenario=idle-ws`: the opening, one "request" per socket (connect, upgrade, until
//! `queue_empty`): rps = sockets opened per second, latencies of one opening; `open=` counts the
//! sockets still open at the end of the hold.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signal_server::client::{Error, Frame, WsAuth};
use tokio::sync::{watch, Semaphore};

use crate::setup::Api;
use crate::stats::{report, Stats, Window};
use crate::Opts;

/// `VmRSS` and `VmHWM` of a process in KiB, from /proc/<pid>/status.
fn memory_kb(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

pub async fn idle_ws(opts: Opts, api: Arc<Api>) {
    let n = opts.sockets.max(1);
    let users = api.users(n, "iw", true, 0, 0).await;
    // The server with its users and devices, before any socket.
    let before = opts.server_pid.and_then(memory_kb);
    let opening = Arc::new(Semaphore::new(opts.connections.max(1)));
    let open = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel::<Stats>(n);
    // Every socket counts: the window only dates the rate (first start → last opening).
    let window = Window::new(0.0, 86_400.0, Some(n as u64));
    let tasks: Vec<_> = users
        .into_iter()
        .map(|u| {
            let me = api.client.with_token(&u.token);
            let (opening, open, opened_tx) = (opening.clone(), open.clone(), opened_tx.clone());
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut stats = Stats::new();
                let permit = opening.acquire_owned().await.expect("semaphore");
                let t0 = Instant::now();
                let session = match me.connect(u.reg_id, WsAuth::Header).await {
                    Ok(mut s) => match s.next().await {
                        Ok(Some(Frame::QueueEmpty)) => Some(s),
                        other => {
                            eprintln!("INFO idle-ws: no queue_empty first: {other:?}");
                            stats.errors += 1;
                            None
                        }
                    },
                    Err(Error::Refused(r)) => {
                        stats.non2xx += 1;
                        *stats.statuses.entry(r.status).or_default() += 1;
                        None
                    }
                    Err(e) => {
                        eprintln!("INFO idle-ws: connect: {e}");
                        stats.errors += 1;
                        None
                    }
                };
                drop(permit);
                let Some(mut session) = session else {
                    let _ = opened_tx.send(stats).await;
                    return;
                };
                let done = Instant::now();
                stats.record(done - t0);
                stats.count = 1;
                stats.ok_all = 1;
                stats.last_done = Some(done);
                *stats.statuses.entry(101).or_default() += 1;
                open.fetch_add(1, Ordering::Relaxed);
                let _ = opened_tx.send(stats).await;
                drop(opened_tx);
                // Idle: read (answering pings) until told to stop or closed by the server.
                loop {
                    tokio::select! {
                        frame = session.next() => match frame {
                            Ok(Some(_)) => continue,
                            _ => {
                                open.fetch_sub(1, Ordering::Relaxed);
                                return;
                            }
                        },
                        _ = stop.changed() => break,
                    }
                }
                let _ = tokio::time::timeout(Duration::from_secs(5), session.close()).await;
            })
        })
        .collect();
    drop(opened_tx);
    let mut stats = Stats::new();
    for _ in 0..n {
        match opened_rx.recv().await {
            Some(s) => stats.merge(&s),
            None => break,
        }
    }
    eprintln!(
        "INFO idle-ws: {} of {n} sockets open; holding them idle for {} s",
        open.load(Ordering::Relaxed),
        opts.hold
    );
    tokio::time::sleep(Duration::from_secs_f64(opts.hold)).await;
    let still_open = open.load(Ordering::Relaxed);
    let memory = opts.server_pid.and_then(memory_kb);
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let memory = match (before, memory) {
        (Some((rss0, _)), Some((rss, hwm))) => {
            format!(" server_rss_before_kb={rss0} server_rss_kb={rss} server_hwm_kb={hwm}")
        }
        _ => String::new(),
    };
    report(
        "idle-ws",
        &stats,
        &window,
        &format!("sockets={n} open={still_open} hold_s={}{memory}", opts.hold),
    );
}
