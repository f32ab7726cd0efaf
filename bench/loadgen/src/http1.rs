//! The measured requests: a minimal HTTP/1.1 keep-alive client on a tokio `TcpStream` per
//! connection (`TCP_NODELAY`), requests serialised once, the status line and headers read, then
//! a `Content-Length` (or chunked) body; no pipelining; reconnects after an error or a
//! `Connection: close`.
//!
//! Why not hyper's client connection: measured against examples/baseline.rs (64 connections,
//! 4 s, 2 cores, three alternating runs), hyper's `conn::http1` with its connection task reached
//! 44-52k req/s where this loop reached 65-73k; at the ceiling the generator is the bottleneck,
//! and a slower one would understate the ceiling every ratio divides by.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The bytes of one request.
pub type Prepared = Vec<u8>;

/// One keep-alive connection; reconnects after an error or `Connection: close`.
pub struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

pub struct Answer {
    pub status: u16,
    /// Body range in `Conn::buf` (raw chunk framing included for a chunked body).
    pub body: std::ops::Range<usize>,
}

pub fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if hay.len() < needle.len() {
        return None;
    }
    (from..=hay.len() - needle.len()).find(|&i| &hay[i..i + needle.len()] == needle)
}

fn parse_usize(bytes: &[u8], radix: u32) -> Option<usize> {
    usize::from_str_radix(std::str::from_utf8(bytes).ok()?.trim(), radix).ok()
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            stream: None,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.reserve(16 * 1024);
        if stream.read_buf(buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by the server",
            ));
        }
        Ok(())
    }

    /// Sends one request and reads its answer.
    pub async fn roundtrip(&mut self, request: &[u8]) -> io::Result<Answer> {
        let result = self.roundtrip_inner(request).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn roundtrip_inner(&mut self, request: &[u8]) -> io::Result<Answer> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        let stream = self.stream.as_mut().expect("connected");
        stream.write_all(request).await?;
        let buf = &mut self.buf;
        buf.clear();
        let mut scanned = 0;
        let head_end = loop {
            if let Some(p) = find(buf, b"\r\n\r\n", scanned) {
                break p + 4;
            }
            scanned = buf.len().saturating_sub(3);
            Conn::fill(stream, buf).await?;
        };
        let head = &buf[..head_end];
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad HTTP answer");
        if head.len() < 12 || !head.starts_with(b"HTTP/1.") {
            return Err(bad());
        }
        let status = parse_usize(&head[9..12], 10).ok_or_else(bad)? as u16;
        let mut length = None;
        let mut chunked = false;
        let mut close = head.starts_with(b"HTTP/1.0");
        for line in head.split(|&b| b == b'\n').skip(1) {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], &line[colon + 1..]);
            if name.eq_ignore_ascii_case(b"content-length") {
                length = Some(parse_usize(value, 10).ok_or_else(bad)?);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = value
                    .to_ascii_lowercase()
                    .windows(7)
                    .any(|w| w == b"chunked");
            } else if name.eq_ignore_ascii_case(b"connection") {
                close = value.to_ascii_lowercase().windows(5).any(|w| w == b"close");
            }
        }
        let body_end = if status == 204 || status == 304 || status < 200 {
            head_end
        } else if chunked {
            let mut pos = head_end;
            loop {
                let line_end = loop {
                    if let Some(p) = find(buf, b"\r\n", pos) {
                        break p;
                    }
                    Conn::fill(stream, buf).await?;
                };
                let size_text = &buf[pos..line_end];
                let size_text = size_text.split(|&b| b == b';').next().unwrap_or(size_text);
                let size = parse_usize(size_text, 16).ok_or_else(bad)?;
                pos = line_end + 2;
                if size == 0 {
                    // No trailers from the servers we drive: the final CRLF.
                    while buf.len() < pos + 2 {
                        Conn::fill(stream, buf).await?;
                    }
                    break pos + 2;
                }
                while buf.len() < pos + size + 2 {
                    Conn::fill(stream, buf).await?;
                }
                pos += size + 2;
            }
        } else if let Some(n) = length {
            while buf.len() < head_end + n {
                Conn::fill(stream, buf).await?;
            }
            head_end + n
        } else {
            // Body until the server closes.
            loop {
                buf.reserve(16 * 1024);
                if stream.read_buf(buf).await? == 0 {
                    break;
                }
            }
            close = true;
            buf.len()
        };
        if close {
            self.stream = None;
        }
        Ok(Answer {
            status,
            body: head_end..body_end,
        })
    }

    pub fn body(&self, answer: &Answer) -> &[u8] {
        &self.buf[answer.body.clone()]
    }
}

/// The bytes of one request.
pub fn request(
    method: &str,
    path: &str,
    host: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: loadgen\r\n");
    if let Some(t) = token {
        r.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    bytes
}
