//! `GET /messages/<regId>/ws`: live delivery, one typed frame at a time.

use futures_util::{SinkExt, StreamExt};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, http::HeaderValue, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{Client, Error, QueuedMessage};

/// Escaped in `?token=`: everything but RFC 3986's unreserved characters.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Where the token travels when connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsAuth {
    /// `Authorization: Bearer <token>`.
    Header,
    /// `?token=<token>`, as browsers must.
    Query,
}

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Frame {
    /// A queued or new message; it stays queued until acknowledged.
    Message { message: QueuedMessage },
    /// Every message queued before the connection has been sent.
    QueueEmpty,
}

/// An open live-delivery connection.
pub struct Session {
    ws: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
}

impl Client {
    /// Opens the caller's live-delivery connection. A refusal before the upgrade (401, 400, 403)
    /// comes back as [`Error::Refused`] with the server's JSON error.
    pub async fn connect(&self, reg_id: u32, auth: WsAuth) -> Result<Session, Error> {
        let ws_base = self
            .base
            .replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1);
        let token = self.token.as_deref().unwrap_or_default();
        let url = match auth {
            WsAuth::Query => {
                // A JWT is all unreserved characters and goes as it is; anything else a caller
                // put in the token is escaped so that it stays one query value.
                let token = percent_encoding::utf8_percent_encode(token, QUERY_VALUE);
                format!("{ws_base}/messages/{reg_id}/ws?token={token}")
            }
            WsAuth::Header => format!("{ws_base}/messages/{reg_id}/ws"),
        };
        let mut request = url.into_client_request().map_err(Error::transport)?;
        if auth == WsAuth::Header {
            let value = HeaderValue::from_str(&format!("Bearer {token}"));
            let value = value.map_err(Error::transport)?;
            request.headers_mut().insert("authorization", value);
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => Ok(Session { ws }),
            Err(tungstenite::Error::Http(res)) => {
                let retry = res.headers().get("retry-after");
                let retry = retry.and_then(|v| v.to_str().ok()?.parse().ok());
                let body = res.body().as_deref().unwrap_or_default();
                Err(Error::refused(res.status().as_u16(), body, retry))
            }
            Err(e) => Err(Error::transport(e)),
        }
    }
}

impl Session {
    /// The next frame; `Ok(None)` once the server has closed the connection. Pings are answered
    /// by the library while reading.
    pub async fn next(&mut self) -> Result<Option<Frame>, Error> {
        while let Some(frame) = self.ws.next().await {
            match frame.map_err(Error::transport)? {
                Message::Text(text) => {
                    let frame = serde_json::from_str(text.as_str());
                    return frame.map(Some).map_err(|e| Error::Decode {
                        status: 101,
                        detail: e.to_string(),
                    });
                }
                Message::Close(_) => return Ok(None),
                _ => continue,
            }
        }
        Ok(None)
    }

    /// Acknowledges (deletes) messages; the server does not reply.
    pub async fn ack(&mut self, ids: &[u64]) -> Result<(), Error> {
        let text = json!({"type": "ack", "ids": ids}).to_string();
        self.ws
            .send(Message::text(text))
            .await
            .map_err(Error::transport)
    }

    /// Sends any text frame (for tests of what the server does with frames it does not expect).
    pub async fn send_text(&mut self, text: &str) -> Result<(), Error> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(Error::transport)
    }

    /// Closes the connection politely.
    pub async fn close(mut self) -> Result<(), Error> {
        self.ws.close(None).await.map_err(Error::transport)
    }
}
