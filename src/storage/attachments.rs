//! Attachment records, the storage side: who owns an upload, how long it is, how far it is
//! durably written, when it expires. The bytes live in a blob store (`crate::attachments`); a
//! record is written before its blob and removed before it, so a blob without a record is left
//! over (a crash, a deletion) and the sweep removes it.
//!
//! One PATCH writes an upload at a time, on any instance: it takes a *lease* (`claim_upload`)
//! that names it as the writer until a deadline it renews, moves the offset only while it holds
//! it (`advance_upload`), and gives it back at the end. A second PATCH finds the lease held and
//! is refused; a writer whose lease another took finds its advance refused. Leases need not
//! survive a restart: sled keeps them in memory (one process), PostgreSQL in the row.

use super::{Storage, StoreError};

/// 16 random bytes, shown as base64url without padding.
pub type AttachmentId = [u8; 16];

/// One upload, unfinished (`completed_ms` is `None`) or complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub id: AttachmentId,
    pub owner: u64,
    /// `Upload-Length`: the blob's whole size.
    pub length: u64,
    /// Bytes durably in the blob store, from the start.
    pub offset: u64,
    /// ms since the epoch.
    pub created_ms: u64,
    /// When it is no longer served and the sweep removes it (ms since the epoch).
    pub expires_ms: u64,
    pub completed_ms: Option<u64>,
}

impl Upload {
    pub fn is_complete(&self) -> bool {
        self.completed_ms.is_some()
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_ms <= now_ms
    }
}

/// What one account may hold, checked with the creation in one step.
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    /// Unfinished uploads at a time.
    pub max_unfinished: u32,
    /// Bytes of all its uploads, unfinished ones at their full length.
    pub quota_bytes: u64,
}

/// A writer's hold on an upload (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Random, one per request.
    pub holder: u64,
    /// ms since the epoch; after it another request may take the upload.
    pub until_ms: u64,
}

/// A durable step of a write: the offset moves from `from` to `to` (the blob store has the
/// bytes), while `lease` is held; the lease is renewed to `lease.until_ms`. When `to` is the
/// upload's length it is complete from `now_ms`, and expires at `expires_ms`.
#[derive(Debug, Clone, Copy)]
pub struct Advance {
    pub id: AttachmentId,
    pub lease: Lease,
    pub from: u64,
    pub to: u64,
    pub now_ms: u64,
    /// The expiry of the complete attachment (used only when `to` completes it).
    pub expires_ms: u64,
    /// The request's last step: the lease is given back in the same write, so that the moment
    /// a client can see the new offset it can also write from it.
    pub release: bool,
}

/// Why an attachment verb refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadRefused {
    /// Unknown, expired, deleted, or another account's.
    #[error("no such attachment")]
    NoSuchUpload,
    #[error("the upload is complete")]
    Complete,
    /// The offset is not the upload's (it is `0`), or another request holds the lease.
    #[error("the upload is at offset {0}")]
    OffsetMismatch(u64),
    /// The account has `max_unfinished` unfinished uploads.
    #[error("the account has the most unfinished uploads allowed")]
    TooManyUnfinished,
    /// The account's uploads would go over `quota_bytes`.
    #[error("the account's attachment quota is used up")]
    Quota,
    /// The lease was lost (expired and taken, or the upload deleted or expired meanwhile).
    #[error("the upload's lease was lost")]
    LeaseLost,
}

/// The totals of `stats` and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachmentTotals {
    pub complete: u64,
    pub unfinished: u64,
    /// Bytes durably stored (offsets, complete ones at their length).
    pub bytes: u64,
}

impl Storage {
    /// Stores a new upload (offset 0) for `upload.owner`, checked against `limits` in the same
    /// step as the write: `TooManyUnfinished`, `Quota`, or `StoreError::NoUser` if the account is
    /// gone.
    pub async fn create_upload(
        &self,
        upload: &Upload,
        limits: UploadLimits,
    ) -> Result<Result<(), UploadRefused>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.create_upload(upload, limits).await),
            Storage::Postgres(p) => Box::pin(p.create_upload(upload, limits)).await,
        }
    }

    /// The record of `id`, whoever owns it, expired or not.
    pub async fn upload(&self, id: &AttachmentId) -> Result<Option<Upload>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.upload(id)),
            Storage::Postgres(p) => Box::pin(p.upload(id)).await,
        }
    }

    /// Takes the lease of `owner`'s unfinished, unexpired upload `id` at `offset`:
    /// `NoSuchUpload` (unknown, expired at `now_ms`, another's), `Complete`, or
    /// `OffsetMismatch` (another offset, or another holder's lease still running). Returns
    /// the record as claimed.
    pub async fn claim_upload(
        &self,
        id: &AttachmentId,
        owner: u64,
        offset: u64,
        lease: Lease,
        now_ms: u64,
    ) -> Result<Result<Upload, UploadRefused>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.claim_upload(id, owner, offset, lease, now_ms)),
            Storage::Postgres(p) => {
                Box::pin(p.claim_upload(id, owner, offset, lease, now_ms)).await
            }
        }
    }

    /// Moves the offset (see `Advance`), durably: `LeaseLost` if `step.lease.holder` does not
    /// hold the lease or the offset is not `step.from`. Returns the record as written.
    pub async fn advance_upload(
        &self,
        step: Advance,
    ) -> Result<Result<Upload, UploadRefused>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.advance_upload(step).await),
            Storage::Postgres(p) => Box::pin(p.advance_upload(step)).await,
        }
    }

    /// Gives the lease back (nothing if `holder` no longer holds it).
    pub async fn release_upload(&self, id: &AttachmentId, holder: u64) -> Result<(), StoreError> {
        match self {
            Storage::Sled(s) => {
                s.release_upload(id, holder);
                Ok(())
            }
            Storage::Postgres(p) => Box::pin(p.release_upload(id, holder)).await,
        }
    }

    /// Removes `owner`'s record of `id` (complete or not, expired or not), durably; `false` if
    /// there was none (`owner: None`: whoever owns it, for the sweep).
    pub async fn delete_upload(
        &self,
        id: &AttachmentId,
        owner: Option<u64>,
    ) -> Result<bool, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.delete_upload(id, owner).await),
            Storage::Postgres(p) => Box::pin(p.delete_upload(id, owner)).await,
        }
    }

    /// The ids of every upload of `owner` (for deleting an account's blobs).
    pub async fn uploads_of(&self, owner: u64) -> Result<Vec<AttachmentId>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.uploads_of(owner)),
            Storage::Postgres(p) => Box::pin(p.uploads_of(owner)).await,
        }
    }

    /// Up to `limit` uploads expired at `now_ms`, oldest expiry first (the sweep deletes them).
    pub async fn expired_uploads(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<Upload>, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.expired_uploads(now_ms, limit)),
            Storage::Postgres(p) => Box::pin(p.expired_uploads(now_ms, limit)).await,
        }
    }

    /// Counts of the attachment records (a scan on sled: operators and `/metrics` only).
    pub async fn attachment_totals(&self) -> Result<AttachmentTotals, StoreError> {
        match self {
            Storage::Sled(s) => s.watched(s.attachment_totals()),
            Storage::Postgres(p) => Box::pin(p.attachment_totals()).await,
        }
    }
}
