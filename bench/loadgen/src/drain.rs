//! `send --drain`: empties every user's queue after the run (GET ?limit=1000, then DELETE of
//! those ids, until empty), through the typed client; reported as `scenario=drain`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::setup::{Api, User};
use crate::stats::{report, Stats, Window};

pub async fn drain(api: &Api, users: &[User], parallel: usize) {
    let t = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let users = Arc::new(users.to_vec());
    let handles: Vec<_> = (0..parallel.min(users.len()))
        .map(|_| {
            let (next, users, client) = (next.clone(), users.clone(), api.client.clone());
            tokio::spawn(async move {
                let mut stats = Stats::new();
                let mut messages = 0u64;
                while let Some(u) = users.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let me = client.with_token(&u.token);
                    loop {
                        let t0 = Instant::now();
                        let fetched = me.fetch(u.reg_id, Some(1000)).await;
                        stats.record(t0.elapsed());
                        stats.count += 1;
                        let ids: Vec<u64> = match fetched {
                            Ok(queue) => queue.iter().map(|m| m.id).collect(),
                            Err(_) => {
                                stats.non2xx += 1;
                                break;
                            }
                        };
                        if ids.is_empty() {
                            break;
                        }
                        messages += ids.len() as u64;
                        let t0 = Instant::now();
                        let deleted = me.delete_messages(u.reg_id, &ids).await;
                        stats.record(t0.elapsed());
                        stats.count += 1;
                        if deleted.is_err() {
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
    let rate = messages as f64 / secs;
    let extra = format!("messages={messages} messages_per_s={rate:.1}");
    report("drain", &all, &window, &extra);
}
