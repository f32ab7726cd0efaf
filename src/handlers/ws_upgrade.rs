//! The WebSocket upgrade, with small buffers. warp's `Ws` leaves tungstenite's read buffer at its
//! default, 128 KiB, which the first read zero-fills whole: every open socket, idle or not, held
//! about 132 KiB (10k sockets, 1.3 GB). warp has no setting for it, so this is its upgrade with
//! our own `WebSocketConfig`: the request is checked by `warp::ws()` as before (the same
//! refusals), the 101 is the same, and the socket is tokio-tungstenite's stream over hyper's
//! upgraded connection, as warp builds it.

use std::future::Future;

use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use warp::http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, UPGRADE};
use warp::http::{HeaderValue, StatusCode};
use warp::hyper::upgrade::{OnUpgrade, Upgraded};
use warp::reply::Response;
use warp::{Filter, Rejection};

pub use tokio_tungstenite::tungstenite::Message as Frame;

/// An open socket, after the 101.
pub type WebSocket = WebSocketStream<TokioIo<Upgraded>>;

/// Bytes read from a socket at once, and all an idle one holds for reading. A larger frame
/// still arrives whole (the buffer grows to hold it, up to the frame limit), in more reads.
pub const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Each frame is written out as it is sent (the session flushes every frame anyway).
pub const WRITE_BUFFER_BYTES: usize = 0;

/// The buffers of every socket, and tungstenite's default limits until the handler sets its own.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
}

/// An upgrade request that passed `warp::ws()`'s checks: what the 101 and the socket need.
pub struct Ws {
    key: HeaderValue,
    on_upgrade: Option<OnUpgrade>,
    config: WebSocketConfig,
}

/// `warp::ws()`, answering our `Ws`. hyper's upgrade handle is cloned out of the request first:
/// warp's filter takes it, and its `Ws` is dropped unused.
pub fn ws() -> impl Filter<Extract = (Ws,), Error = Rejection> + Clone {
    warp::ext::optional::<OnUpgrade>()
        .and(warp::ws())
        .and(warp::header::value("sec-websocket-key"))
        .map(|on_upgrade, _checked: warp::ws::Ws, key| Ws {
            key,
            on_upgrade,
            config: config(),
        })
}

impl Ws {
    /// The largest message a client may send, in bytes.
    pub fn max_message_size(mut self, max: usize) -> Self {
        self.config.max_message_size = Some(max);
        self
    }

    /// The largest frame a client may send, in bytes.
    pub fn max_frame_size(mut self, max: usize) -> Self {
        self.config.max_frame_size = Some(max);
        self
    }

    /// The 101, and `session` run on the socket once hyper hands the connection over.
    pub fn on_upgrade<F, U>(self, session: F) -> Response
    where
        F: FnOnce(WebSocket) -> U + Send + 'static,
        U: Future<Output = ()> + Send + 'static,
    {
        match self.on_upgrade {
            Some(on_upgrade) => {
                let config = self.config;
                tokio::spawn(async move {
                    match on_upgrade.await {
                        Ok(upgraded) => {
                            let io = TokioIo::new(upgraded);
                            let socket =
                                WebSocketStream::from_raw_socket(io, Role::Server, Some(config));
                            session(socket.await).await;
                        }
                        Err(e) => log::debug!("websocket upgrade failed: {e}"),
                    }
                });
            }
            None => log::debug!("websocket upgrade without hyper's upgrade handle"),
        }
        let accept = derive_accept_key(self.key.as_bytes());
        let mut res = Response::default();
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = res.headers_mut();
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_read_and_write_through_small_buffers() {
        let config = config();
        assert_eq!(config.read_buffer_size, 4 * 1024);
        assert_eq!(config.write_buffer_size, 0);
        // tungstenite panics on a write buffer cap not above the write buffer.
        assert!(config.max_write_buffer_size > config.write_buffer_size);
    }

    #[test]
    fn the_handler_sets_the_limits_and_the_101_answers_the_key() {
        let ws = Ws {
            key: HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
            on_upgrade: None,
            config: config(),
        }
        .max_message_size(1000)
        .max_frame_size(900);
        assert_eq!(ws.config.max_message_size, Some(1000));
        assert_eq!(ws.config.max_frame_size, Some(900));
        assert_eq!(ws.config.read_buffer_size, READ_BUFFER_BYTES);
        // The key and answer of RFC 6455's example.
        let res = ws.on_upgrade(|_| async {});
        assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            res.headers()[SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(res.headers()[UPGRADE], "websocket");
        assert_eq!(res.headers()[CONNECTION], "upgrade");
    }
}
