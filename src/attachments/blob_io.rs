//! What every blob store answers with: its errors, and a blob's bytes as a stream.

use std::pin::Pin;

use futures_util::Stream;
use warp::hyper::body::Bytes;

/// A blob's bytes, streamed.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send + Sync>>;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The disk (or the object store) has no room: the client may resume later.
    #[error("no space left: {0}")]
    Full(String),
    #[error("{0}")]
    Io(String),
}

impl From<std::io::Error> for BlobError {
    fn from(e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            BlobError::Full(e.to_string())
        } else {
            BlobError::Io(e.to_string())
        }
    }
}
