//! The measured requests: hyper's HTTP/1.1 client connection on a tokio `TcpStream`, one per
//! simulated client, requests back to back (no pipelining), reconnecting after an error or a
//! server-side close. Requests are prepared once and only copied (cheap `Bytes`) per send.

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{HeaderMap, Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A prepared request.
#[derive(Clone)]
pub struct Prepared {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

/// The bytes-level shape of one request to `host`.
pub fn request(
    method: &str,
    path: &str,
    host: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Prepared {
    let mut headers = HeaderMap::new();
    headers.insert(HOST, HeaderValue::from_str(host).expect("host header"));
    headers.insert(USER_AGENT, HeaderValue::from_static("loadgen"));
    if let Some(t) = token {
        let value = HeaderValue::from_str(&format!("Bearer {t}")).expect("token header");
        headers.insert(AUTHORIZATION, value);
    }
    if body.is_some() {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    Prepared {
        method: Method::from_bytes(method.as_bytes()).expect("method"),
        uri: path.parse().expect("path"),
        headers,
        body: Bytes::copy_from_slice(body.unwrap_or_default()),
    }
}

/// An answer: its status and body.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// One keep-alive connection.
pub struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

fn io_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        Conn { addr, sender: None }
    }

    /// Sends one request and reads its whole answer.
    pub async fn roundtrip(&mut self, prepared: &Prepared) -> io::Result<Answer> {
        let result = self.roundtrip_inner(prepared).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn roundtrip_inner(&mut self, prepared: &Prepared) -> io::Result<Answer> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = Some(self.connect().await?);
        }
        let sender = self.sender.as_mut().expect("connected");
        sender.ready().await.map_err(io_error)?;
        let mut req = Request::new(Full::new(prepared.body.clone()));
        *req.method_mut() = prepared.method.clone();
        *req.uri_mut() = prepared.uri.clone();
        *req.headers_mut() = prepared.headers.clone();
        let res = sender.send_request(req).await.map_err(io_error)?;
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.map_err(io_error)?;
        Ok(Answer {
            status,
            body: body.to_bytes(),
        })
    }

    async fn connect(&self) -> io::Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io_error)?;
        // The connection's own task does the reading and writing; it ends with the connection.
        tokio::spawn(conn);
        Ok(sender)
    }
}
