//! The measured loop: connections sending their requests back to back (or paced) within a
//! window, each keeping its own `Stats`, merged at the end.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::cpu;
use crate::http1::{find, Conn, Prepared};
use crate::stats::{Stats, Window};

/// What a connection sends: its requests in turn, and what to look for in the answers.
pub struct Job {
    pub requests: Vec<Prepared>,
    pub count_prekeys: bool,
    /// Builds each request instead (ws: a fresh timestamp in each message).
    pub make: Option<Box<dyn FnMut(u64) -> Prepared + Send>>,
    /// Seconds between requests (paced side load); none: back to back.
    pub pace: Option<f64>,
}

impl Job {
    /// The same requests over and over, back to back.
    pub fn simple(requests: Vec<Prepared>) -> Job {
        Job {
            requests,
            count_prekeys: false,
            make: None,
            pace: None,
        }
    }
}

pub async fn connection(addr: SocketAddr, mut job: Job, window: Window) -> Stats {
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
        let req = match &mut job.make {
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
                let ok = (200..300).contains(&answer.status);
                stats.ok_all += ok as u64;
                if window.counts(done) || window.total.is_some() && done >= window.start {
                    stats.count += 1;
                    stats.last_done = Some(done);
                    stats.record(done - t0);
                    *stats.statuses.entry(answer.status).or_default() += 1;
                    stats.non2xx += !ok as u64;
                    if job.count_prekeys && has_prekey(conn.body(&answer)) {
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

/// Whether a bundle answer carries a one-time EC prekey.
fn has_prekey(body: &[u8]) -> bool {
    find(body, b"\"preKey\"", 0).is_some()
}

/// Runs every job on its own connection; the merged stats, with the CPU use in the window.
pub async fn run_jobs(addr: SocketAddr, jobs: Vec<Job>, window: &Window) -> Stats {
    let probe = tokio::spawn(cpu::at(window.start));
    let handles: Vec<_> = jobs
        .into_iter()
        .map(|job| tokio::spawn(connection(addr, job, window.clone())))
        .collect();
    let mut all = Stats::new();
    for h in handles {
        all.merge(&h.await.expect("connection task"));
    }
    if probe.is_finished() {
        if let Ok(start) = probe.await {
            all.cpu_note = cpu::note(start, cpu::now());
        }
    } else {
        probe.abort();
    }
    all
}
