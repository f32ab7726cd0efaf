//! Idempotent sends, the API side: the `Idempotency-Key` header of the two send routes, the
//! per-instance map of keyed sends in flight (a repeat meanwhile is 409 `request_in_progress`),
//! and what a repeat is answered. Storing the answer with the messages, and the race between
//! instances, are the store's (`storage::idempotency`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use sha2::{Digest, Sha256};
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;

use crate::body::Body;
use crate::error::ApiError;
use crate::models::DeviceRef;
use crate::storage::idempotency::{Remembered, SendKey};
use crate::storage::Storage;

/// The header's name, as errors name it.
pub const HEADER: &str = "Idempotency-Key";
/// The longest key taken.
pub const MAX_LEN: usize = 64;

/// The key of a request, if it has one: 1 to 64 printable ASCII characters, else 400
/// `invalid_data` naming the header.
pub fn parse(value: Option<&HeaderValue>) -> Result<Option<String>, ApiError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_LEN || !bytes.iter().all(|b| (0x20..0x7f).contains(b))
    {
        return Err(ApiError::field(
            HEADER,
            format!("Must be 1 to {MAX_LEN} printable ASCII characters."),
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// The keyed sends this instance is running.
#[derive(Default)]
pub struct InFlight(Mutex<HashSet<SendKey>>);

impl InFlight {
    /// Marks `key` in flight until the claim is dropped; `None` if it is already.
    fn claim(self: &Arc<Self>, key: SendKey) -> Option<Claim> {
        let fresh = self.lock().insert(key.clone());
        fresh.then(|| Claim {
            map: self.clone(),
            key,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<SendKey>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A key in flight; dropping it ends that.
pub struct Claim {
    map: Arc<InFlight>,
    key: SendKey,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.map.lock().remove(&self.key);
    }
}

/// A keyed send that runs: its claim, held until its work ends (past a client's hang-up), and
/// what its record is stored with.
pub struct Keyed {
    claim: Claim,
    pub body_hash: [u8; 32],
    pub created_ms: u64,
}

impl Keyed {
    pub fn key(&self) -> &SendKey {
        &self.claim.key
    }
}

/// How a send starts.
pub enum Begun {
    /// Answered already (stored, or refused as a repeat): nothing to do.
    Answered(Response),
    /// To be run: its body's JSON, and its key if it has one.
    Run(Value, Option<Keyed>),
}

/// Reads a send's body (at most `max_body` bytes) after its `Idempotency-Key` header (400 if
/// malformed). With a key, from `sender` on `route`: 409 while a send with it runs here
/// (`in_flight`), the stored answer (or 422, for another body) when one is stored.
pub async fn begin(
    (in_flight, storage, max_body): (&Arc<InFlight>, &Storage, u64),
    sender: DeviceRef,
    route: u8,
    header: Option<&HeaderValue>,
    body: Body,
) -> Result<Begun, ApiError> {
    let key = parse(header)?;
    let body = body.bytes(max_body).await?;
    let Some(key) = key else {
        return Ok(Begun::Run(json(&body)?, None));
    };
    let key = SendKey { sender, route, key };
    let body_hash: [u8; 32] = Sha256::digest(&body).into();
    let claim = in_flight.claim(key).ok_or(ApiError::RequestInProgress)?;
    if let Some(found) = storage.remembered(&claim.key).await? {
        return replay(&found, &body_hash).map(Begun::Answered);
    }
    let keyed = Keyed {
        claim,
        body_hash,
        created_ms: crate::auth::now_millis(),
    };
    Ok(Begun::Run(json(&body)?, Some(keyed)))
}

/// The body's JSON, read after the key's checks (a repeat with another body is 422 even when
/// that body is not JSON).
fn json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|_| ApiError::MalformedJson)
}

/// A stored answer, for a repeat with the body hashed to `body_hash`: 422 for another body.
pub fn replay(found: &Remembered, body_hash: &[u8; 32]) -> Result<Response, ApiError> {
    if found.body_hash != *body_hash {
        return Err(ApiError::IdempotencyKeyReused);
    }
    log::debug!("a repeated send answered from its stored answer");
    Ok(response(found.status, found.body.clone()))
}

/// A JSON answer from its status and body bytes (as stored).
pub fn response(status: u16, body: Vec<u8>) -> Response {
    let mut res = Response::new(body.into());
    *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(v: &[u8]) -> HeaderValue {
        HeaderValue::from_bytes(v).unwrap()
    }

    #[test]
    fn a_key_is_1_to_64_printable_ascii_characters() {
        assert_eq!(parse(None).unwrap(), None);
        assert_eq!(
            parse(Some(&header(b"a b~!"))).unwrap().as_deref(),
            Some("a b~!")
        );
        let longest = "k".repeat(64);
        assert_eq!(
            parse(Some(&header(longest.as_bytes()))).unwrap(),
            Some(longest)
        );
        for bad in [&b""[..], &[b'k'; 65], b"a\tb", b"caf\xc3\xa9"] {
            assert!(
                matches!(parse(Some(&header(bad))), Err(ApiError::InvalidData(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_key_is_in_flight_until_its_claim_is_dropped() {
        let map = Arc::new(InFlight::default());
        let key = SendKey {
            sender: DeviceRef { user: 1, device: 1 },
            route: 1,
            key: "k".into(),
        };
        let claim = map.claim(key.clone()).expect("free");
        assert!(map.claim(key.clone()).is_none());
        let other_route = SendKey {
            route: 2,
            ..key.clone()
        };
        assert!(map.claim(other_route).is_some());
        drop(claim);
        assert!(map.claim(key).is_some());
    }
}
