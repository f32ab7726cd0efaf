//! A typed client for this server's HTTP API (feature `client`): one method per route, typed
//! requests and answers, refusals as a typed [`Error`], and [`Client::raw`] for requests the
//! typed methods would never send (hostile-input tests). Used by the examples, the load
//! generator and the tests; the server binary links none of it.
//!
//! Routes are grouped as in `docs/API.md`: `accounts`, `devices`, `keys`, `messages`, `ws`,
//! `attachments`.

mod accounts;
mod attachments;
mod devices;
mod error;
mod keys;
mod messages;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
pub use reqwest::{Method, StatusCode};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use accounts::{NewUser, Token, UserInfo};
pub use attachments::{Upload, TUS_VERSION};
pub use devices::{DeviceInfo, LinkDevice, Linked, ListedDevice, NewDevice};
pub use error::{Error, Refusal};
pub use keys::{Bundle, Bundles, Counts, DeviceBundle, KyberUpload, PreKey, SignedPreKey, Stored};
pub use messages::{Deleted, DeviceMessage, QueuedMessage, SentAll, SentTo};
pub use ws::{Frame, Session, WsAuth};

/// Called before each request (`status` is `None`) and after each answer (with its status and
/// body), so a demo can print the conversation. Never sees the `Authorization` header.
pub type Trace = Arc<dyn Fn(&Method, &str, Option<StatusCode>, &[u8]) + Send + Sync>;

/// A connection to one server, optionally carrying a token. Cheap to clone: clones share the
/// connection pool.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
    /// How many times a 429 with a `Retry-After` of at most `MAX_RETRY_WAIT` is waited out.
    retries: u32,
    trace: Option<Trace>,
}

/// Longer waits than this are handed back to the caller as a refusal rather than slept through.
const MAX_RETRY_WAIT: u64 = 30;

/// An answer as it came: for [`Client::raw`].
#[derive(Debug)]
pub struct RawAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Client {
    /// A client for the server at `base` (`http://127.0.0.1:8000`; a trailing `/` is ignored),
    /// with a 30 s timeout per request and no retries.
    pub fn new(base: &str) -> Result<Client, Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(Error::transport)?;
        Ok(Client::with_http(base, http))
    }

    /// A client on a `reqwest::Client` built by the caller (pool sizes, timeouts).
    pub fn with_http(base: &str, http: reqwest::Client) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            http,
            token: None,
            retries: 0,
            trace: None,
        }
    }

    /// This client, sending `Authorization: Bearer <token>` on every request.
    pub fn with_token(&self, token: &str) -> Client {
        Client {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    /// This client, waiting out up to `retries` 429 answers that carry a short `Retry-After`.
    pub fn with_retries(&self, retries: u32) -> Client {
        Client {
            retries,
            ..self.clone()
        }
    }

    /// This client, reporting each request and answer to `trace`.
    pub fn with_trace(&self, trace: Trace) -> Client {
        Client {
            trace: Some(trace),
            ..self.clone()
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `GET /health`: `Ok` when the server answers 200.
    pub async fn health(&self) -> Result<(), Error> {
        self.call_empty(Method::GET, "/health", None::<&()>, StatusCode::OK)
            .await
    }

    /// Any request, sent as given (the client's token is added unless `headers` has an
    /// `Authorization`); the answer as it came, whatever its status. No retries.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<RawAnswer, Error> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(Error::transport)?;
            let value = HeaderValue::from_str(value).map_err(Error::transport)?;
            map.append(name, value);
        }
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .headers(map.clone())
            .body(body);
        if let (Some(token), false) = (&self.token, map.contains_key("authorization")) {
            req = req.bearer_auth(token);
        }
        let res = req.send().await.map_err(Error::transport)?;
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.bytes().await.map_err(Error::transport)?.to_vec();
        Ok(RawAnswer {
            status,
            headers,
            body,
        })
    }

    /// A request no typed method covers, with the client's token, a JSON body and its retries;
    /// the answer as it came, whatever its status.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<RawAnswer, Error> {
        self.exchange(method, path, body).await
    }

    /// Sends a request and decodes a `want` answer as `T`; any other status is an [`Error`].
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        want: StatusCode,
    ) -> Result<T, Error> {
        let answer = self.exchange(method, path, body).await?;
        decode(expect(answer, want)?)
    }

    /// As `call`, with an `Idempotency-Key` when `key` is given.
    async fn call_keyed<T: DeserializeOwned>(
        &self,
        (method, path): (Method, &str),
        body: &impl Serialize,
        want: StatusCode,
        key: Option<&str>,
    ) -> Result<T, Error> {
        let answer = self.exchange_keyed(method, path, Some(body), key).await?;
        decode(expect(answer, want)?)
    }

    /// As `call`, for answers without a body (204) or whose body is not needed.
    async fn call_empty(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        want: StatusCode,
    ) -> Result<(), Error> {
        let answer = self.exchange(method, path, body).await?;
        expect(answer, want).map(|_| ())
    }

    /// One request with a JSON body, retried on short `Retry-After`s as configured.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<RawAnswer, Error> {
        self.exchange_keyed(method, path, body, None).await
    }

    /// As `exchange`, with an `Idempotency-Key` when `key` is given (kept on the retries, so a
    /// retried send is queued once).
    async fn exchange_keyed(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        key: Option<&str>,
    ) -> Result<RawAnswer, Error> {
        let bytes = match body {
            Some(body) => serde_json::to_vec(body).map_err(Error::transport)?,
            None => Vec::new(),
        };
        let mut headers = Vec::with_capacity(2);
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        if let Some(key) = key {
            headers.push(("idempotency-key", key));
        }
        self.exchange_bytes(method, path, bytes, &headers).await
    }

    /// One request with `bytes` as the body and `headers`, retried on short `Retry-After`s as
    /// configured, reported to the trace.
    async fn exchange_bytes(
        &self,
        method: Method,
        path: &str,
        bytes: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<RawAnswer, Error> {
        let mut attempts = 0;
        loop {
            self.report(&method, path, None, &[]);
            let answer = self
                .raw(method.clone(), path, bytes.clone(), headers)
                .await?;
            self.report(&method, path, Some(answer.status), &answer.body);
            match retry_after(&answer) {
                Some(secs) if attempts < self.retries && secs <= MAX_RETRY_WAIT => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                }
                _ => return Ok(answer),
            }
        }
    }

    fn report(&self, method: &Method, path: &str, status: Option<StatusCode>, body: &[u8]) {
        if let Some(trace) = &self.trace {
            trace(method, path, status, body);
        }
    }
}

/// The body of a wanted answer, as `T`.
fn decode<T: DeserializeOwned>(answer: RawAnswer) -> Result<T, Error> {
    serde_json::from_slice(&answer.body).map_err(|e| Error::Decode {
        status: answer.status.as_u16(),
        detail: e.to_string(),
    })
}

/// The answer if it has the status `want`, else the refusal it carries.
fn expect(answer: RawAnswer, want: StatusCode) -> Result<RawAnswer, Error> {
    if answer.status == want {
        return Ok(answer);
    }
    let retry = retry_after(&answer);
    Err(Error::refused(answer.status.as_u16(), &answer.body, retry))
}

/// The `Retry-After` of a 429 or 503, in seconds.
fn retry_after(answer: &RawAnswer) -> Option<u64> {
    if !matches!(answer.status.as_u16(), 429 | 503) {
        return None;
    }
    answer.headers.get(RETRY_AFTER)?.to_str().ok()?.parse().ok()
}

/// `serde(with)` for byte strings travelling as standard base64 (padding optional on input).
pub(crate) mod base64_bytes {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    use crate::crypto::b64;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&b64::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        b64::decode(&text).ok_or_else(|| D::Error::custom("not base64"))
    }
}
