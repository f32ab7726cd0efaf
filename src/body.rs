//! Request bodies, read by the handler after authentication so that the order of checks is
//! 401 → device → body. Bodies are capped: a `Content-Length` over the limit is refused before
//! reading, and a chunked body is read only up to the limit. Reading one has a deadline
//! (`--body-timeout`), so that a body trickled in a byte at a time cannot hold its connection and
//! its memory for as long as the idle timeout keeps being reset.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde_json::Value;
use warp::hyper::body::Bytes;
use warp::Buf;

use crate::config::Config;
use crate::error::ApiError;

type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, warp::Error>> + Send>>;

/// What every body is read under.
#[derive(Clone)]
pub struct BodyLimits {
    /// How long reading one body may take.
    timeout: Duration,
}

impl BodyLimits {
    pub fn from_config(config: &Config) -> BodyLimits {
        BodyLimits {
            timeout: Duration::from_secs(config.body_timeout.max(1)),
        }
    }
}

pub struct Body {
    length: Option<u64>,
    chunks: Chunks,
    limits: BodyLimits,
}

impl Body {
    pub fn new<S, B>(length: Option<u64>, stream: S, limits: BodyLimits) -> Body
    where
        S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
        B: Buf,
    {
        let chunks = stream.map(|chunk| chunk.map(|mut b| b.copy_to_bytes(b.remaining())));
        Body {
            length,
            chunks: Box::pin(chunks),
            limits,
        }
    }

    /// The whole body, if it is at most `limit` bytes and arrives within the body timeout.
    pub async fn bytes(mut self, limit: u64) -> Result<Vec<u8>, ApiError> {
        if self.length.is_some_and(|n| n > limit) {
            return Err(ApiError::PayloadTooLarge);
        }
        let timeout = self.limits.timeout;
        tokio::time::timeout(timeout, self.read(limit))
            .await
            .unwrap_or(Err(ApiError::RequestTimeout))
    }

    async fn read(&mut self, limit: u64) -> Result<Vec<u8>, ApiError> {
        let mut out = Vec::with_capacity(self.length.unwrap_or(0) as usize);
        while let Some(chunk) = self.chunks.next().await {
            let chunk = chunk.map_err(|_| ApiError::MalformedJson)?;
            if (out.len() + chunk.len()) as u64 > limit {
                return Err(ApiError::PayloadTooLarge);
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// The body parsed as JSON; `malformed_json` if it is not JSON.
    pub async fn json(self, limit: u64) -> Result<Value, ApiError> {
        let bytes = self.bytes(limit).await?;
        serde_json::from_slice(&bytes).map_err(|_| ApiError::MalformedJson)
    }
}
