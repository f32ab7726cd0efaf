//! WebSockets: a raw socket to the caller's own live route (in-process or on the binary), its
//! backlog read up to `queue_empty`, the next frame of a live socket, its close or its silence,
//! the server's count of open sockets, and a handshake with a chosen `Origin`.

use std::time::Duration;

use serde_json::Value;

use super::{TestServer, TestUser};

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `user`'s live socket (`/messages/<regId>/ws`), token in the header.
pub async fn ws_open(s: &TestServer, user: &TestUser) -> Ws {
    ws_connect(
        &s.ws_url(&format!("/messages/{}/ws", user.reg_id)),
        &user.token,
    )
    .await
}

/// Opens the live socket at `url` (any server, the binary too) with `token` in the header.
pub async fn ws_connect(url: &str, token: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("WebSocket handshake timed out")
    .expect("WebSocket upgrade");
    ws
}

/// Reads a fresh socket's backlog up to `queue_empty` (bounded): the ids of its messages. The
/// session is live from then on.
pub async fn read_backlog(ws: &mut Ws) -> Vec<u64> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut ids = Vec::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("no queue_empty frame in time")
            .expect("socket ended before queue_empty")
            .expect("WebSocket error");
        let Message::Text(text) = frame else { continue };
        let v: Value = serde_json::from_str(&text).expect("JSON frame");
        match v["type"].as_str() {
            Some("message") => ids.push(v["message"]["id"].as_u64().expect("id")),
            Some("queue_empty") => return ids,
            other => panic!("unexpected frame {other:?}: {v}"),
        }
    }
}

/// Waits (bounded) until the server counts `want` open WebSockets; panics otherwise.
pub async fn wait_for_open_sockets(s: &TestServer, want: usize, bound: Duration) {
    let deadline = tokio::time::Instant::now() + bound;
    while s.app.hub.connections() != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server counts {} open WebSockets, not {want}, after {bound:?}",
            s.app.hub.connections()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens a WebSocket on `path` with the given `Origin` (none: like a non-browser client);
/// answers the handshake's HTTP status (101 when upgraded) and the JSON body of a refusal.
pub async fn ws_status(s: &TestServer, path: &str, origin: Option<&str>) -> (u16, Value) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = s.ws_url(path).into_client_request().expect("request");
    if let Some(origin) = origin {
        req.headers_mut()
            .insert("origin", origin.parse().expect("origin header"));
    }
    let handshake = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async(req),
    );
    match handshake.await.expect("WebSocket handshake timed out") {
        Ok((_socket, res)) => (res.status().as_u16(), Value::Null),
        Err(e) => refusal(e),
    }
}

/// The HTTP status and JSON body (null when none) of a refused upgrade.
pub fn refusal(e: tokio_tungstenite::tungstenite::Error) -> (u16, Value) {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(res) => {
            let body = res
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (res.status().as_u16(), body)
        }
        e => panic!("expected an HTTP refusal, got {e:?}"),
    }
}

/// The next text frame of a live socket, as JSON (pings and pongs skipped; bounded).
pub async fn next_frame(ws: &mut Ws) -> Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("no frame from the server in time")
            .expect("the socket ended")
            .expect("WebSocket error");
        match frame {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON frame"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame: {other:?}"),
        }
    }
}

/// Waits (bounded) until the server closes the socket; fails on any data frame before that.
pub async fn wait_closed(ws: &mut Ws) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), ws.next()).await;
        match next.expect("the server did not close the socket in time") {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => panic!("unexpected frame before the close: {other:?}"),
        }
    }
}

/// Waits (bounded) for the server to close the socket, skipping pings and any data frame, and
/// answers the close frame's code (`None` for a close without one, or a dropped connection).
pub async fn close_code(ws: &mut Ws) -> Option<u16> {
    close_code_within(ws, Duration::from_secs(60)).await
}

/// `close_code` within `bound`: a close that comes with the step that causes it, not with a
/// socket's periodic re-check (every 30 s).
pub async fn close_code_within(ws: &mut Ws, bound: Duration) -> Option<u16> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next()).await;
        match next.expect("the server did not close the socket in time") {
            None | Some(Err(_)) => return None,
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
        }
    }
}

/// Asserts that nothing but pings arrives on the socket for `wait`.
pub async fn assert_silent(ws: &mut Ws, wait: Duration) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => panic!("expected nothing on the socket, got {other:?}"),
        }
    }
}
