//! Request bodies, read by the handler after authentication so that the order of checks is
//! 401 → device → body. Bodies are capped: a `Content-Length` over the limit is refused before
//! reading, and a chunked body is read only up to the limit. Reading one has a deadline
//! (`--body-timeout`), so that a body trickled in a byte at a time cannot hold its connection and
//! its memory for as long as the idle timeout keeps being reset. And all bodies being buffered
//! share one budget of bytes (`--body-buffer-bytes`): a body that would go beyond it is refused
//! with 503 `unavailable` (retry shortly) instead of growing the server's memory. A body takes
//! its share before it is read (its `Content-Length`, or chunk by chunk when chunked) and gives
//! it back once parsed; for the common small body that is one atomic operation.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use warp::hyper::body::Bytes;
use warp::Buf;

use crate::config::Config;
use crate::error::ApiError;

/// A body's chunks as they arrive.
pub type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, warp::Error>> + Send>>;

/// What every body is read under.
#[derive(Clone)]
pub struct BodyLimits {
    /// How long reading one body may take.
    timeout: Duration,
    /// Bytes all bodies being buffered may still take, one permit a byte.
    budget: Arc<Semaphore>,
    /// The budget's size.
    capacity: usize,
}

impl BodyLimits {
    pub fn from_config(config: &Config) -> BodyLimits {
        // Never below one body of the largest size, or such a body could never be read.
        let bytes = config.body_buffer_bytes.max(config.max_body_bytes);
        let bytes = usize::try_from(bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        BodyLimits {
            timeout: Duration::from_secs(config.body_timeout.max(1)),
            budget: Arc::new(Semaphore::new(bytes)),
            capacity: bytes,
        }
    }

    /// A share of the budget for a buffer of `bytes` that is not a body read whole (an
    /// attachment writer's), at most the whole budget so that one can always run; 503
    /// `unavailable` when it has not that much left. Given back when dropped.
    pub fn hold(&self, bytes: usize) -> Result<OwnedSemaphorePermit, ApiError> {
        self.take(bytes.min(self.capacity))
    }

    /// `bytes` more of the budget, or 503 `unavailable` when it has not that much left.
    fn take(&self, bytes: usize) -> Result<OwnedSemaphorePermit, ApiError> {
        let n = u32::try_from(bytes).map_err(|_| ApiError::PayloadTooLarge)?;
        self.budget.clone().try_acquire_many_owned(n).map_err(|_| {
            log::debug!("request body of {bytes} bytes refused: the body buffer budget is spent");
            ApiError::Unavailable
        })
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

    /// `Content-Length`, if the client sent one.
    pub fn length(&self) -> Option<u64> {
        self.length
    }

    /// The chunks as they arrive, neither buffered nor capped (attachment uploads, which stream
    /// them to the blob store and check their length themselves).
    pub fn into_chunks(self) -> Chunks {
        self.chunks
    }

    /// The whole body, if it is at most `limit` bytes and arrives within the body timeout.
    pub async fn bytes(self, limit: u64) -> Result<Vec<u8>, ApiError> {
        self.buffered(limit).await.map(|(bytes, _share)| bytes)
    }

    /// The body parsed as JSON; `malformed_json` if it is not JSON.
    pub async fn json(self, limit: u64) -> Result<Value, ApiError> {
        let (bytes, _share) = self.buffered(limit).await?;
        serde_json::from_slice(&bytes).map_err(|_| ApiError::MalformedJson)
    }

    /// The whole body with its share of the budget, which the caller holds while it uses them.
    async fn buffered(mut self, limit: u64) -> Result<(Vec<u8>, OwnedSemaphorePermit), ApiError> {
        let length = match self.length {
            Some(n) if n > limit => return Err(ApiError::PayloadTooLarge),
            Some(n) => usize::try_from(n).map_err(|_| ApiError::PayloadTooLarge)?,
            None => 0,
        };
        let mut share = self.limits.take(length)?;
        let timeout = self.limits.timeout;
        match tokio::time::timeout(timeout, self.read(limit, length, &mut share)).await {
            Ok(bytes) => Ok((bytes?, share)),
            Err(_) => Err(ApiError::RequestTimeout),
        }
    }

    /// Reads the chunks, taking more of the budget as they go beyond `share` (chunked bodies).
    async fn read(
        &mut self,
        limit: u64,
        length: usize,
        share: &mut OwnedSemaphorePermit,
    ) -> Result<Vec<u8>, ApiError> {
        let mut out = Vec::with_capacity(length);
        while let Some(chunk) = self.chunks.next().await {
            let chunk = chunk.map_err(|_| ApiError::MalformedJson)?;
            let total = out.len() + chunk.len();
            if total as u64 > limit {
                return Err(ApiError::PayloadTooLarge);
            }
            if total > share.num_permits() {
                share.merge(self.limits.take(total - share.num_permits())?);
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}
