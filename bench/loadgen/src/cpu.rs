//! CPU use in the measured window, from /proc (Linux): the server's (`--server-pid`), the
//! generator's own, and the whole machine's busy time.

use std::sync::OnceLock;
use std::time::Instant;

/// `USER_HZ`, the unit of the CPU times in /proc (100 on every usual Linux).
const CLOCK_TICKS: f64 = 100.0;

/// The server's pid (`--server-pid`).
pub static SERVER_PID: OnceLock<Option<u32>> = OnceLock::new();

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

/// (when, the server's ticks, the generator's ticks, the machine's busy ticks).
pub type Sample = (Instant, Option<u64>, Option<u64>, Option<u64>);

pub fn now() -> Sample {
    let server = SERVER_PID
        .get()
        .copied()
        .flatten()
        .and_then(|p| cpu_ticks(&p.to_string()));
    (Instant::now(), server, cpu_ticks("self"), machine_ticks())
}

pub async fn at(when: Instant) -> Sample {
    tokio::time::sleep_until(when.into()).await;
    now()
}

/// `server_cpu_pct=… loadgen_cpu_pct=… machine_cpu_pct=…` between two samples (% of one core).
pub fn note(from: Sample, to: Sample) -> String {
    let secs = (to.0 - from.0).as_secs_f64();
    let pct = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if secs > 0.0 => {
            format!("{:.0}", (b - a) as f64 / CLOCK_TICKS / secs * 100.0)
        }
        _ => "-".to_string(),
    };
    format!(
        "server_cpu_pct={} loadgen_cpu_pct={} machine_cpu_pct={}",
        pct(from.1, to.1),
        pct(from.2, to.2),
        pct(from.3, to.3)
    )
}
