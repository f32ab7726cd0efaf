//! `login`: a storm of password logins (`POST /auth/jwt/create`), each a full hash on the
//! server, with a paced side load of `GET /messages` measured apart (`scenario=login_side`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::http1::request;
use crate::jobs::{connection, run_jobs, Job};
use crate::setup::Api;
use crate::stats::{report, Stats, Window};
use crate::Opts;

pub async fn login(opts: Opts, addr: SocketAddr, api: Arc<Api>) {
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
    let window = Window::new(opts.warmup, opts.seconds, opts.total);
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
