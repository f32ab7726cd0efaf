//! Request bodies, read by the handler after authentication so that the order of checks is
//! 401 → device → body. Bodies are capped: a `Content-Length` over the limit is refused before
//! reading, and a chunked body is read only up to the limit.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use serde_json::Value;
use warp::hyper::body::Bytes;
use warp::Buf;

use crate::error::ApiError;

type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, warp::Error>> + Send>>;

pub struct Body {
    length: Option<u64>,
    chunks: Chunks,
}

impl Body {
    pub fn new<S, B>(length: Option<u64>, stream: S) -> Body
    where
        S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
        B: Buf,
    {
        let chunks = stream.map(|chunk| chunk.map(|mut b| b.copy_to_bytes(b.remaining())));
        Body {
            length,
            chunks: Box::pin(chunks),
        }
    }

    /// The whole body, if it is at most `limit` bytes.
    pub async fn bytes(mut self, limit: u64) -> Result<Vec<u8>, ApiError> {
        if self.length.is_some_and(|n| n > limit) {
            return Err(ApiError::PayloadTooLarge);
        }
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
