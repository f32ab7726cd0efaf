//! Running the app: background sweepers, the admin socket, and `run`, the one entry point that
//! production and tests share.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::app::App;
use crate::storage::pg_store::Incoming;
use crate::storage::Storage;

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, closes live
/// sockets, lets requests in flight finish (up to `--shutdown-timeout`) and flushes storage.
pub async fn run(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let sweeper = tokio::spawn(sweep(app.clone()));
    let relay = relay_signals(&app);
    // Totals for `stats` and `/metrics` are counted once, now, rather than on a first request.
    let counter = app.clone();
    tokio::spawn(async move { counter.storage.count_totals().await });
    let metrics = match app.config.metrics_listen {
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(listener) => {
                log::info!(
                    "metrics on http://{}/metrics",
                    listener.local_addr().unwrap_or(addr)
                );
                Some(tokio::spawn(serve_metrics(listener, app.clone())))
            }
            Err(e) => {
                log::error!("cannot listen for metrics on {addr}: {e}");
                None
            }
        },
        None => None,
    };
    let admin = tokio::spawn(crate::admin::serve(
        app.clone(),
        app.config.data_dir.join(crate::admin::SOCKET),
    ));
    let hub_app = app.clone();
    let stopping: Arc<OnceLock<Instant>> = Arc::default();
    let stop_started = stopping.clone();
    let shutdown = async move {
        shutdown.await;
        let _ = stop_started.set(Instant::now());
        log::info!("shutting down");
        hub_app.hub.close_all();
    };
    let limits = crate::net::Limits::from_config(&app.config);
    log::info!("at most {} open connections", limits.max_connections);
    let per_ip = crate::net::per_ip::PerIp::new(
        app.config.max_connections_per_ip,
        app.config.trusted_proxy.clone(),
        app.metrics.refused_connections.clone(),
    );
    let api = crate::routes::api(app.clone());
    crate::net::serve(listener, api, limits, per_ip, shutdown).await;
    sweeper.abort();
    relay.iter().for_each(|task| task.abort());
    admin.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    let _ = std::fs::remove_file(app.config.data_dir.join(crate::admin::SOCKET));
    if let Err(e) = app.storage.close(flush_time(&app, &stopping)).await {
        log::error!("final flush failed: {e}");
    }
}

/// What is left of the stop's deadline (`--shutdown-timeout`, counted from the signal) for the
/// final flush, and at least a second: a flush stuck on a full disk must not hold the stop, and
/// requests that used up the deadline must not fail a healthy flush.
fn flush_time(app: &App, stopping: &OnceLock<Instant>) -> Duration {
    let deadline = Duration::from_secs(app.config.shutdown_timeout);
    let used = stopping.get().map_or(Duration::ZERO, Instant::elapsed);
    deadline.saturating_sub(used).max(Duration::from_secs(1))
}

/// With several instances (PostgreSQL), connects the hub to the others: its signals go out,
/// theirs come in (see `hub`). Nothing to do on sled.
fn relay_signals(app: &App) -> Vec<tokio::task::JoinHandle<()>> {
    let Storage::Postgres(pg) = &app.storage else {
        return Vec::new();
    };
    let (outgoing, signals) = tokio::sync::mpsc::channel(crate::hub::SIGNAL_BUFFER);
    app.hub.connect_remote(outgoing);
    let here = app.clone();
    pg.relay_signals(signals, move |incoming| match incoming {
        Incoming::Signal(signal) => here.hub.apply(signal),
        Incoming::Resync => here.hub.resync_all(),
    })
    .into()
}

/// Exits the process with status 1 shortly after storage fails. A graceful stop could hang
/// (requests in flight may be blocked in sled, and its final flush may never return), and
/// sled's recovery at the next start keeps everything a flush confirmed, so exiting loses
/// nothing acknowledged. Runs on a thread of its own so that it works with every runtime
/// thread blocked; the short grace lets the 503s already decided reach their clients. The disk
/// reserve is deleted at once, so that the next start has room to open and drain the database;
/// and again before exiting, in case a retry of `reserve::keep` was making it meanwhile.
pub fn exit_on_storage_failure(app: &App) {
    let storage = app.storage.clone();
    let reserve = crate::reserve::Reserve::of(app);
    let watch = move || {
        let runtime = tokio::runtime::Builder::new_current_thread().build()?;
        let reason = runtime.block_on(storage.failed());
        log::error!("exiting with status 1 after a storage failure: {reason}");
        notify_systemd("STATUS=storage failed; exiting");
        let release = || reserve.as_ref().is_some_and(|r| r.release());
        if release() {
            log::warn!("deleted the disk reserve, so that the next start has room to drain");
        }
        std::thread::sleep(Duration::from_secs(1));
        release();
        std::process::exit(1)
    };
    let spawned = std::thread::Builder::new()
        .name("fail-stop".into())
        .spawn(move || -> std::io::Result<()> { watch() });
    if let Err(e) = spawned {
        log::error!("cannot watch storage for failures: {e}");
    }
}

/// Serves `GET /metrics` on its own listener, with the API's timeouts and a small cap of its own:
/// file descriptors are shared, so idle scrapers must not use up the API's.
pub async fn serve_metrics(listener: TcpListener, app: App) {
    let limits = crate::net::Limits {
        max_connections: METRICS_CONNECTIONS,
        ..crate::net::Limits::from_config(&app.config)
    };
    let api = crate::routes::metrics(app);
    let per_ip = crate::net::per_ip::PerIp::off();
    crate::net::serve(listener, api, limits, per_ip, std::future::pending()).await;
}

/// Open connections the metrics address allows (a scraper or two).
const METRICS_CONNECTIONS: usize = 16;

/// Background upkeep: expired messages, reset tokens, idempotency records and attachments (a
/// bounded number per round), idle rate-limit keys.
async fn sweep(app: App) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    let mut rounds: u64 = 0;
    loop {
        tick.tick().await;
        let now_ms = crate::auth::now_millis();
        let cutoff = now_ms.saturating_sub(app.config.message_ttl.saturating_mul(1000));
        match app.storage.sweep_expired(cutoff).await {
            Ok(0) => {}
            Ok(n) => log::info!("deleted {n} expired messages"),
            Err(e) => log::error!("message sweep failed: {e}"),
        }
        if let Err(e) = app.storage.sweep_reset_tokens(now_ms / 1000).await {
            log::error!("reset token sweep failed: {e}");
        }
        let kept = now_ms.saturating_sub(crate::storage::idempotency::KEEP_MS);
        match app.storage.sweep_idempotency(kept).await {
            Ok(0) => {}
            Ok(n) => log::debug!("deleted {n} idempotency records older than a day"),
            Err(e) => log::error!("idempotency sweep failed: {e}"),
        }
        app.limits.sweep();
        // Blobs without a record are looked for once an hour (a listing of the blob store).
        let leftovers = rounds.is_multiple_of(60);
        rounds += 1;
        crate::attachments::sweep::round(&app, leftovers).await;
        match app.storage.attachment_totals().await {
            Ok(totals) => app.metrics.attachment_totals(totals),
            Err(e) => log::error!("counting attachments failed: {e}"),
        }
    }
}

/// Tells systemd (a `Type=notify` unit) our state, e.g. `READY=1`; does nothing elsewhere.
pub fn notify_systemd(state: &str) {
    #[cfg(target_os = "linux")]
    {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return;
        };
        let path = path.to_string_lossy().into_owned();
        let addr = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
            None => SocketAddr::from_pathname(&path),
        };
        let sent = UnixDatagram::unbound()
            .and_then(|s| addr.and_then(|a| s.send_to_addr(state.as_bytes(), &a)));
        if let Err(e) = sent {
            log::warn!("could not notify systemd: {e}");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = state;
}
