//! Attachments: encrypted blobs uploaded over TUS 1.0.0 (`handlers::attachments`), their bytes
//! in a blob store (`blobs`: a directory or S3), their records in storage
//! (`storage::attachments`). `upload` streams a request body into the blob store under the
//! upload's lease; `sweep` removes what expired and blobs left without a record; `fsck` checks
//! records and blobs against each other for the operator.

mod blob_io;
pub mod blobs;
mod dir;
pub mod fsck;
mod ids;
mod s3;
pub mod sweep;
pub mod upload;

use crate::config::Config;
use crate::storage::attachments::UploadLimits;
pub use blobs::{BlobError, Blobs};
pub use ids::{encode_id, new_id, parse_id};

/// Unfinished uploads one account may have at a time.
pub const MAX_UNFINISHED: u32 = 10;
/// How long an unfinished upload is kept after its creation.
pub const UNFINISHED_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// What one account may hold (`--attachment-quota`, `MAX_UNFINISHED`).
pub fn limits(config: &Config) -> UploadLimits {
    UploadLimits {
        max_unfinished: MAX_UNFINISHED,
        quota_bytes: config.attachment_quota,
    }
}

/// The blob store the configuration names: `--attachments-s3` (checked by one request), else
/// `--attachments-dir`, else `attachments` in the data dir.
pub async fn open_blobs(config: &Config) -> Result<Blobs, String> {
    let endpoint = config.attachments_s3_endpoint.as_deref();
    let Some(url) = &config.attachments_s3 else {
        if endpoint.is_some() {
            return Err("--attachments-s3-endpoint needs --attachments-s3".into());
        }
        return open_dir(config);
    };
    if config.attachments_dir.is_some() {
        return Err("--attachments-dir and --attachments-s3 name two blob stores: give one".into());
    }
    let settings = s3::Settings::new(url, endpoint, |name| std::env::var(name).ok())?;
    s3::S3Blobs::open(&settings).await.map(Blobs::S3)
}

/// The directory store. Uploads leave twice `--reserve-mb` free on its disk (they are refused as
/// if it were full before that), so that attachments never fill the database's disk.
fn open_dir(config: &Config) -> Result<Blobs, String> {
    let dir = config
        .attachments_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("attachments"));
    // Twice the database's disk reserve stays free for it (`--reserve-mb`), whether or not the
    // blobs share its disk.
    let keep_free = config.reserve_mb.saturating_mul(2 << 20);
    dir::DirBlobs::open(&dir, keep_free)
        .map(Blobs::Dir)
        .map_err(|e| format!("attachments directory {}: {e}", dir.display()))
}
