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
    log::info!("signal-server {} starting", env!("CARGO_PKG_VERSION"));
    let _lock = datadir::lock(&config.data_dir).unwrap_or_else(|e| fail(&e));
    let listen = config.listen;
    let app = App::open(config).await.unwrap_or_else(|e| fail(&e));
    server::exit_on_storage_failure(&app);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .unwrap_or_else(|e| fail(&format!("cannot listen on {listen}: {e}")));
    let addr = listener.local_addr().unwrap_or(listen);
    log::info!("listening on http://{addr}");
    server::notify_systemd("READY=1");
    server::run(listener, app, async {
        shutdown_signal().await;
        server::notify_systemd("STOPPING=1");
    })
    .await;
    log::info!("stopped");
}

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
}

fn fail(message: &dyn std::fmt::Display) -> ! {
    eprintln!("signal-server: {message}");
    std::process::exit(1);
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
