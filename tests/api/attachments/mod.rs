//! Attachments over TUS 1.0.0 (docs/API.md, "Attachments"): the protocol and its refusals
//! (`protocol`), who may do what (`access`), limits (`limits`), bodies cut off, racing or
//! refused by a full disk (`faults`), a crash mid-upload (`crash`), and `fsck` and `stats`
//! (`operations`). Every test runs on the store and blob store the suite is pointed at (sled or
//! PostgreSQL; a directory or S3).

mod access;
mod crash;
mod faults;
mod instances;
mod limits;
mod operations;
mod protocol;

use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::helpers::*;

/// A server to talk to: in-process or the built binary.
pub trait Endpoint {
    fn url(&self, path: &str) -> String;
    fn http(&self) -> &reqwest::Client;
}

impl Endpoint for TestServer {
    fn url(&self, path: &str) -> String {
        TestServer::url(self, path)
    }
    fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

impl Endpoint for BinaryApi {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
    fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// An answer of an attachment route: status, headers, raw body.
pub struct Tus {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Tus {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn offset(&self) -> u64 {
        self.header("upload-offset")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Upload-Offset in {:?}", self.headers))
    }

    /// The JSON error code of a refusal.
    pub fn code(&self) -> String {
        let v: Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON ({}): {:?}", self.status, self.body));
        v["code"].as_str().unwrap_or_default().to_string()
    }

    /// Asserts a refusal with its status and code (and, as on every attachment answer,
    /// `Tus-Resumable`).
    pub fn refused(&self, status: u16, code: &str, what: &str) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{what}: {:?}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.code(), code, "{what}");
        assert_eq!(self.header("tus-resumable"), Some("1.0.0"), "{what}");
    }
}

/// A request to an attachment route with `Tus-Resumable: 1.0.0`, the token and `headers`.
pub async fn tus(
    s: &impl Endpoint,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, String)],
    body: Option<Vec<u8>>,
) -> Tus {
    let mut req = s
        .http()
        .request(method.parse().expect("method"), s.url(path))
        .header("tus-resumable", "1.0.0");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let res = req.send().await.expect("request");
    Tus {
        status: res.status(),
        headers: res.headers().clone(),
        body: res.bytes().await.expect("body").to_vec(),
    }
}

pub const OCTETS: &str = "application/offset+octet-stream";

/// Creates an upload of `length`; its path (`/attachments/<id>`).
pub async fn create(s: &impl Endpoint, token: &str, length: u64) -> String {
    let a = tus(
        s,
        "POST",
        "/attachments",
        Some(token),
        &[("upload-length", length.to_string())],
        None,
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::CREATED,
        "{:?}",
        String::from_utf8_lossy(&a.body)
    );
    a.header("location").expect("Location").to_string()
}

/// PATCHes `bytes` at `offset`.
pub async fn patch(s: &impl Endpoint, token: &str, path: &str, offset: u64, bytes: &[u8]) -> Tus {
    let headers = [
        ("upload-offset", offset.to_string()),
        ("content-type", OCTETS.to_string()),
    ];
    tus(
        s,
        "PATCH",
        path,
        Some(token),
        &headers,
        Some(bytes.to_vec()),
    )
    .await
}

/// The upload's offset, from HEAD.
pub async fn offset_of(s: &impl Endpoint, token: &str, path: &str) -> u64 {
    let a = tus(s, "HEAD", path, Some(token), &[], None).await;
    assert_eq!(a.status, StatusCode::OK, "HEAD {path}");
    a.offset()
}

/// Uploads `bytes` in chunks of `chunk`; the attachment's path.
pub async fn upload(s: &impl Endpoint, token: &str, bytes: &[u8], chunk: usize) -> String {
    let path = create(s, token, bytes.len() as u64).await;
    let mut at = 0;
    for part in bytes.chunks(chunk) {
        let a = patch(s, token, &path, at as u64, part).await;
        assert_eq!(
            a.status,
            StatusCode::NO_CONTENT,
            "PATCH at {at}: {}",
            a.code()
        );
        at += part.len();
        assert_eq!(a.offset(), at as u64);
    }
    path
}

/// GET of a whole attachment: status and bytes.
pub async fn download(s: &impl Endpoint, token: &str, path: &str) -> Tus {
    tus(s, "GET", path, Some(token), &[], None).await
}

/// Bytes that differ everywhere (a counter through SHA-256), so a misplaced chunk shows.
pub fn bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = Sha256::digest([seed]);
    while out.len() < len {
        out.extend_from_slice(&block);
        block = Sha256::digest(block);
    }
    out.truncate(len);
    out
}

/// The `/attachments/<id>` path's id.
pub fn id_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or_default()
}
