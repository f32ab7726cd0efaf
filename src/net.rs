//! The accept loop of the API: our own instead of `warp::serve`, because warp's exposes no
//! timeouts and no connection cap. Each connection is served by hyper's HTTP/1.1 server with a
//! header-read timeout, over an [`idle::IdleStream`] (closed when nothing moves for the idle
//! timeout) that holds its [`Place`] under the connection caps until the socket is gone,
//! WebSockets included: one permit of the whole cap, and one of its client address's
//! ([`per_ip`]). At the whole cap the loop stops accepting (new connections wait in the kernel's
//! backlog) instead of failing `accept`, so the connections already open keep being served; a
//! connection over its address's cap is closed at once. Shutdown is graceful up to a deadline,
//! after which the remaining connections are dropped.
//!
//! HTTP/1.1 only: cleartext HTTP/2 (h2c) would let one connection carry hundreds of streams, each
//! with a body in flight, while every limit here counts connections. The proxies we ship speak
//! HTTP/1.1 to the server; a client that opens with the HTTP/2 preface is disconnected.

pub mod idle;
pub mod per_ip;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use warp::filters::BoxedFilter;
use warp::hyper::body::{Body, Frame, SizeHint};
use warp::hyper::server::conn::http1;
use warp::reply::Response;

use crate::config::Config;
use per_ip::{IpPlace, PerIp};

/// File descriptors kept free for the database, the admin and metrics sockets and logging.
const RESERVED_FDS: u64 = 64;

/// The TCP peer of a request, put into its extensions by the accept loop (warp's own
/// `warp::addr::remote` only works under `warp::serve`).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// The connection limits, from the configuration and the open-file limit.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read: Duration,
    pub idle: Duration,
    pub max_connections: usize,
    pub shutdown: Duration,
}

impl Limits {
    /// Raises the soft open-file limit to the hard one, then fits the connection cap under it.
    pub fn from_config(config: &Config) -> Limits {
        let fds = raise_fd_limit();
        let fit = if fds > 2 * RESERVED_FDS {
            fds - RESERVED_FDS
        } else {
            fds / 2
        };
        let fit = usize::try_from(fit.max(1)).unwrap_or(usize::MAX);
        let max_connections = match config.max_connections {
            0 => fit,
            n if n > fit => {
                log::warn!(
                    "--max-connections {n} is above what {fds} open files allow; using {fit}"
                );
                fit
            }
            n => n,
        };
        Limits {
            header_read: Duration::from_secs(config.header_read_timeout.max(1)),
            idle: Duration::from_secs(config.idle_timeout.max(1)),
            max_connections,
            shutdown: Duration::from_secs(config.shutdown_timeout),
        }
    }
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit (a refusal, e.g. under a system-call
/// filter, is fine) and answers the soft limit in force.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// What a connection holds until its socket is gone: its places under the connection caps.
pub struct Place {
    _cap: OwnedSemaphorePermit,
    _ip: IpPlace,
}

/// Serves `api` on `listener` until `shutdown` resolves; then stops accepting, lets the open
/// connections finish for at most `limits.shutdown` and drops the rest.
pub async fn serve(
    listener: TcpListener,
    api: BoxedFilter<(Response,)>,
    limits: Limits,
    per_ip: Arc<PerIp>,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // `true` once shutting down: each connection then finishes its request in flight and closes.
    let (stopping, stop) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener, &permits) => accepted,
        };
        let Some((stream, peer, permit)) = accepted else {
            continue;
        };
        let Some(ip_place) = per_ip.admit(peer.ip()) else {
            drop(stream);
            continue;
        };
        let place = Place {
            _cap: permit,
            _ip: ip_place,
        };
        let conn = Conn {
            api: api.clone(),
            limits,
            stop: stop.clone(),
        };
        tasks.spawn(conn.serve(stream, peer, place));
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stopping.send(true);
    let drained = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.shutdown, drained)
        .await
        .is_err()
    {
        log::warn!(
            "connections still open after {}s of shutdown; dropping them",
            limits.shutdown.as_secs()
        );
    }
    tasks.shutdown().await;
}

/// Waits for a free place under the cap, then for a connection.
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let permit = permits.clone().acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, peer)) => Some((stream, peer, permit)),
        Err(e) => {
            // Out of file descriptors or a connection reset before we took it: wait a little
            // rather than spin; connections already open are served meanwhile.
            log::warn!("accept failed: {e}");
            tokio::time::sleep(Duration::from_millis(250)).await;
            None
        }
    }
}

/// What serving one connection needs.
struct Conn {
    api: BoxedFilter<(Response,)>,
    limits: Limits,
    stop: watch::Receiver<bool>,
}

impl Conn {
    async fn serve(self, stream: TcpStream, peer: SocketAddr, place: Place) {
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(idle::IdleStream::new(stream, self.limits.idle, place));
        let service = TowerToHyperService::new(WithPeer {
            inner: warp::service(self.api),
            peer: Peer(peer),
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read);
        let conn = builder.serve_connection(io, service).with_upgrades();
        let mut conn = std::pin::pin!(conn);
        // hyper-util's graceful watcher takes no HTTP/1 connection with upgrades, hence our own.
        let ended = tokio::select! {
            ended = conn.as_mut() => ended,
            () = stopping(self.stop) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = ended {
            log::debug!("connection from {peer} ended: {e}");
        }
    }
}

/// Resolves once the server is shutting down.
async fn stopping(mut stop: watch::Receiver<bool>) {
    // An error means the loop is gone, which is a shutdown too.
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Puts the [`Peer`] into every request's extensions before warp sees it, and says
/// `Connection: close` on an answer that leaves a large request body unread.
#[derive(Clone)]
struct WithPeer<S> {
    inner: S,
    peer: Peer,
}

impl<S, B, R> tower_service::Service<warp::http::Request<B>> for WithPeer<S>
where
    S: tower_service::Service<warp::http::Request<Tracked<B>>, Response = warp::http::Response<R>>,
    S::Future: Send + 'static,
    B: Body + Unpin,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: warp::http::Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.peer);
        // Small bodies arrive with the head and hyper drains them; keep those connections.
        let hint = req.body().size_hint();
        let large =
            !req.body().is_end_stream() && hint.exact().is_none_or(|n| n > DRAINED_BODY_BYTES);
        // Only a large body is tracked: no allocation for the common small request.
        let read = large.then(|| Arc::new(AtomicBool::new(false)));
        let body_read = read.clone();
        let answer = self.inner.call(req.map(|inner| Tracked { inner, read }));
        Box::pin(crate::round_trips::scope(async move {
            let mut res = answer.await?;
            if body_read.is_some_and(|read| !read.load(Ordering::Relaxed)) {
                close_after(&mut res);
            }
            Ok(res)
        }))
    }
}

/// Above this, a request body left unread may still be on its way when the answer is sent.
const DRAINED_BODY_BYTES: u64 = 16 * 1024;

/// A request body that records whether it was read to its end (when tracked at all).
pub struct Tracked<B> {
    inner: B,
    read: Option<Arc<AtomicBool>>,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let Some(read) = &self.read {
            if matches!(frame, Poll::Ready(None)) || self.inner.is_end_stream() {
                read.store(true, Ordering::Relaxed);
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An answer sent before the request body was read (a refusal: 401, 404, 413, ...; or a route
/// that takes no body). hyper then closes the connection when the unread rest is large, but
/// without saying so, and a keep-alive client that reuses it loses its next request.
/// `Connection: close` tells the client not to reuse it.
fn close_after<R>(res: &mut warp::http::Response<R>) {
    res.headers_mut().insert(
        warp::http::header::CONNECTION,
        warp::http::HeaderValue::from_static("close"),
    );
}
