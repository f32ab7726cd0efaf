//! The `signal-server` binary: configuration, logging, the data-dir lock, then `server::run`
//! until SIGTERM or Ctrl-C.

use clap::Parser;
use signal_server::{datadir, server, App, Config};

#[tokio::main]
async fn main() {
    signal_server::datadir::private_umask();
    let mut config = Config::parse();
    init_logging();
    if let Some(command) = config.command.take() {
        if let Err(e) = signal_server::admin::run_cli(config, command).await {
            fail(&e);
        }
        return;
    }
    let stop = shutdown_signal();
    log::info!("signal-server {} starting", env!("CARGO_PKG_VERSION"));
    let _lock = datadir::lock(&config.data_dir).unwrap_or_else(|e| fail(&e));
    let listen = config.listen;
    let app = App::open(config).await.unwrap_or_else(|e| fail(&e));
    server::exit_on_storage_failure(&app);
    signal_server::reserve::keep(&app).await;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .unwrap_or_else(|e| fail(&format!("cannot listen on {listen}: {e}")));
    let addr = listener.local_addr().unwrap_or(listen);
    log::info!("listening on http://{addr}");
    log::info!("{}", app.config.summary(addr));
    server::notify_systemd("READY=1");
    let storage = app.storage.clone();
    server::run(listener, app, async {
        stop.await;
        server::notify_systemd("STOPPING=1");
    })
    .await;
    // A final flush that failed or ran out of time: not a clean stop (for the supervisor).
    if let Some(reason) = storage.failure() {
        log::error!("exiting with status 1 after a storage failure: {reason}");
        std::process::exit(1);
    }
    log::info!("stopped");
}

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
}

fn fail(message: &dyn std::fmt::Display) -> ! {
    eprintln!("signal-server: {message}");
    std::process::exit(1);
}

/// Ctrl-C or SIGTERM. The handlers are installed when this is called, not when the future is
/// first polled: a SIGTERM right after the "listening" line must stop the server gracefully, not
/// kill it with the signal's default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
