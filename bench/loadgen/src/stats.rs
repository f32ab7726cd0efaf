//! What a run measured: latencies (HdrHistogram, microseconds, 3 significant digits), counts,
//! statuses, and the `RESULT ...` line that bench/run.sh reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Latencies above an hour are recorded as an hour (nothing we drive comes near).
const MAX_MICROS: u64 = 3_600_000_000;

/// Results of one connection, or merged ones.
#[derive(Clone)]
pub struct Stats {
    pub hist: Histogram<u64>,
    pub count: u64,
    pub non2xx: u64,
    pub errors: u64,
    pub with_prekey: u64,
    /// 2xx answers over the whole run, warmup and stragglers included.
    pub ok_all: u64,
    pub last_done: Option<Instant>,
    /// CPU use of the server and the generator in the window (set by `run_jobs`).
    pub cpu_note: String,
    pub statuses: HashMap<u16, u64>,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            hist: Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("histogram bounds"),
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

    pub fn record(&mut self, latency: Duration) {
        self.record_micros(latency.as_micros() as u64);
    }

    pub fn record_micros(&mut self, micros: u64) {
        self.hist.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    pub fn merge(&mut self, o: &Stats) {
        self.hist
            .add(&o.hist)
            .expect("histograms of the same bounds");
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
pub struct Window {
    pub start: Instant,
    pub end: Instant,
    pub total: Option<Arc<(AtomicU64, u64)>>,
}

impl Window {
    pub fn new(warmup: f64, seconds: f64, total: Option<u64>) -> Window {
        let start = Instant::now() + Duration::from_secs_f64(warmup);
        Window {
            start,
            end: start + Duration::from_secs_f64(seconds),
            total: total.map(|n| Arc::new((AtomicU64::new(0), n))),
        }
    }

    /// Whether another request may start.
    pub fn go(&self) -> bool {
        if Instant::now() >= self.end {
            return false;
        }
        match &self.total {
            Some(t) => t.0.fetch_add(1, Ordering::Relaxed) < t.1,
            None => true,
        }
    }

    pub fn counts(&self, done: Instant) -> bool {
        done >= self.start && done <= self.end
    }
}

/// Prints `RESULT scenario=<name> rps=… p50_ms=… …`.
pub fn report(name: &str, stats: &Stats, window: &Window, extra: &str) {
    let elapsed = match (&window.total, stats.last_done) {
        (Some(_), Some(last)) => (last - window.start).as_secs_f64().max(1e-9),
        _ => (window.end - window.start).as_secs_f64(),
    };
    let ms = |q: f64| stats.hist.value_at_quantile(q) as f64 / 1000.0;
    let mut statuses: Vec<_> = stats.statuses.iter().collect();
    statuses.sort();
    let statuses: Vec<String> = statuses.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    let statuses = if statuses.is_empty() {
        "-".to_string()
    } else {
        statuses.join(",")
    };
    let mut line = format!(
        "RESULT scenario={name} rps={:.1} p50_ms={:.3} p99_ms={:.3} p999_ms={:.3} non2xx={} \
         requests={} errors={} max_ms={:.3} seconds={elapsed:.2} statuses={statuses}",
        stats.count as f64 / elapsed,
        ms(0.50),
        ms(0.99),
        ms(0.999),
        stats.non2xx,
        stats.count,
        stats.errors,
        stats.hist.max() as f64 / 1000.0,
    );
    for part in [extra, &stats.cpu_note] {
        if !part.is_empty() {
            line.push(' ');
            line.push_str(part);
        }
    }
    println!("{line}");
}
