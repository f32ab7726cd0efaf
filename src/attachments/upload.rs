//! Writing a request body into an upload (`PATCH`, and `POST` with a first chunk): claim the
//! upload's lease at the client's offset, stream the body into the blob store, and move the
//! record's offset only to bytes the blob store has made durable: every `SYNC_EVERY` bytes,
//! and at the end. A body cut off keeps what arrived. With `Upload-Checksum` nothing of the
//! body counts until all of it arrived and matched; a body going past `Upload-Length` keeps
//! nothing. The lease is renewed while the body lasts, and nothing is written once it could
//! have run out, so a stalled request that lost its upload to a newer one never writes again.

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::blobs::{BlobError, BlobWriter};
use crate::app::App;
use crate::auth::now_millis;
use crate::body::Chunks;
use crate::error::ApiError;
use crate::storage::attachments::{Advance, AttachmentId, Lease, Upload, UploadRefused};

/// Bytes written between two durable steps of a long body.
const SYNC_EVERY: u64 = 8 << 20;
/// How long a lease runs; it is renewed when less than half is left.
const LEASE_MS: u64 = 60_000;

/// One body to write.
pub struct Patch {
    pub id: AttachmentId,
    pub owner: u64,
    /// `Upload-Offset`.
    pub offset: u64,
    /// The SHA-256 `Upload-Checksum` names, if any.
    pub checksum: Option<[u8; 32]>,
    /// `Content-Length`, if given.
    pub length: Option<u64>,
}

/// What a body left.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    /// The upload's durable offset now.
    pub offset: u64,
    /// The body was cut off before its end (what arrived is kept).
    pub cut: bool,
}

pub fn refused(r: UploadRefused) -> ApiError {
    match r {
        UploadRefused::NoSuchUpload => ApiError::NoSuchAttachment,
        UploadRefused::Complete => ApiError::UploadComplete,
        UploadRefused::OffsetMismatch(_) | UploadRefused::LeaseLost => ApiError::OffsetMismatch,
        UploadRefused::TooManyUnfinished => ApiError::Throttled {
            retry_after_secs: 60,
        },
        UploadRefused::Quota => ApiError::AttachmentQuota,
    }
}

fn blob_error(e: BlobError) -> ApiError {
    match e {
        BlobError::Full(why) => {
            log::warn!("attachment refused: {why}");
            ApiError::InsufficientStorage
        }
        BlobError::Io(why) => ApiError::Internal(format!("blob store: {why}")),
    }
}

/// Writes `body` into the upload; returns the offset reached (durable). Runs to its end even if
/// the client hangs up (the caller detaches it), so the lease is always given back.
pub async fn write(app: App, patch: Patch, body: Chunks) -> Result<Written, ApiError> {
    // The writer's buffer counts against the budget every body being read shares.
    let _share = app.bodies.hold(app.blobs.writer_memory())?;
    let now = now_millis();
    let mut lease = Lease {
        holder: rand::random(),
        until_ms: now + LEASE_MS,
    };
    let upload = app
        .storage
        .claim_upload(&patch.id, patch.owner, patch.offset, lease, now)
        .await?
        .map_err(refused)?;
    let mut writing = Writing {
        app: &app,
        upload,
        lease: &mut lease,
        durable: patch.offset,
    };
    let result = writing.run(&patch, body).await;
    let holder = writing.lease.holder;
    // Gives the lease back, unless the upload completed (that freed it) or another took it.
    if let Err(e) = app.storage.release_upload(&patch.id, holder).await {
        log::warn!("an attachment lease was not given back (it runs out by itself): {e}");
    }
    result
}

struct Writing<'a> {
    app: &'a App,
    upload: Upload,
    lease: &'a mut Lease,
    /// The record's offset.
    durable: u64,
}

enum Stop {
    /// Keep what arrived and is synced.
    Keep,
    /// Drop this request's bytes and answer this.
    Drop(ApiError),
    /// The lease is gone: touch nothing more.
    Lost(ApiError),
}

impl Writing<'_> {
    async fn run(&mut self, patch: &Patch, mut body: Chunks) -> Result<Written, ApiError> {
        let room = self.upload.length - self.upload.offset;
        if patch.length.is_some_and(|l| l > room) {
            return Err(ApiError::PayloadTooLarge);
        }
        let mut writer = self
            .app
            .blobs
            .writer(&patch.id, self.upload.offset)
            .await
            .map_err(blob_error)?;
        let mut hasher = patch.checksum.map(|_| Sha256::new());
        let mut received = 0u64;
        let mut cut = false;
        let stop = loop {
            let bytes = match body.next().await {
                None => break Stop::Keep,
                Some(Ok(bytes)) => bytes,
                Some(Err(e)) => {
                    log::debug!("an attachment body was cut off: {e}");
                    cut = true;
                    break if hasher.is_some() {
                        Stop::Drop(ApiError::RequestTimeout)
                    } else {
                        Stop::Keep
                    };
                }
            };
            received += bytes.len() as u64;
            if received > room {
                break Stop::Drop(ApiError::PayloadTooLarge);
            }
            if let Err(e) = self.renew().await {
                break Stop::Lost(e);
            }
            if let Some(h) = hasher.as_mut() {
                h.update(&bytes);
            }
            if let Err(e) = writer.write(bytes).await {
                break Stop::Drop(blob_error(e));
            }
            let unsynced = self.upload.offset + received - self.durable;
            if hasher.is_none() && unsynced >= SYNC_EVERY {
                if let Err(e) = self.step(&mut writer, false).await {
                    break e;
                }
            }
        };
        let digest: Option<[u8; 32]> = hasher.map(|h| h.finalize().into());
        let stop = match stop {
            Stop::Keep if digest != patch.checksum => Stop::Drop(ApiError::ChecksumMismatch),
            stop => stop,
        };
        match stop {
            Stop::Keep => match self.step(&mut writer, true).await {
                Ok(()) | Err(Stop::Keep) => Ok(Written {
                    offset: self.durable,
                    cut,
                }),
                Err(Stop::Drop(e) | Stop::Lost(e)) => Err(e),
            },
            Stop::Drop(e) => {
                // Cutting the blob back is a write too: not once the lease may be another's.
                if self.renew().await.is_err() {
                    return Err(e);
                }
                if let Err(d) = writer.discard().await {
                    log::warn!("dropping an attachment's unsynced bytes failed: {d}");
                }
                Err(e)
            }
            Stop::Lost(e) => Err(e),
        }
    }

    /// Makes what was written durable and moves the record's offset to it.
    /// `last`: the request's last step, which gives the lease back with the offset.
    async fn step(&mut self, writer: &mut BlobWriter, last: bool) -> Result<(), Stop> {
        // The buffered bytes are written now: only while the lease surely holds.
        self.renew().await.map_err(Stop::Lost)?;
        let to = writer.sync().await.map_err(|e| Stop::Drop(blob_error(e)))?;
        if to == self.durable {
            // Nothing new (the body ended right after a step, or was empty).
            return Ok(());
        }
        let now = now_millis();
        self.lease.until_ms = now + LEASE_MS;
        let advanced = self
            .app
            .storage
            .advance_upload(Advance {
                id: self.upload.id,
                lease: *self.lease,
                from: self.durable,
                to,
                now_ms: now,
                expires_ms: now.saturating_add(self.app.config.attachment_ttl.saturating_mul(1000)),
                release: last,
            })
            .await
            .map_err(|e| Stop::Lost(e.into()))?
            .map_err(|r| Stop::Lost(refused(r)))?;
        self.durable = advanced.offset;
        Ok(())
    }

    /// Renews the lease when less than half of it is left (the offset stays).
    async fn renew(&mut self) -> Result<(), ApiError> {
        let now = now_millis();
        if now + LEASE_MS / 2 < self.lease.until_ms {
            return Ok(());
        }
        self.lease.until_ms = now + LEASE_MS;
        self.app
            .storage
            .advance_upload(Advance {
                id: self.upload.id,
                lease: *self.lease,
                from: self.durable,
                to: self.durable,
                now_ms: now,
                expires_ms: 0,
                release: false,
            })
            .await?
            .map_err(refused)
            .map(drop)
    }
}
