//! Attachment records (see `storage::attachments`). PLACEHOLDER: replaced by the real
//! implementation before this lands.

use super::PgStore;
use crate::storage::attachments::{
    Advance, AttachmentId, AttachmentTotals, Lease, Upload, UploadLimits, UploadRefused,
};
use crate::storage::StoreError;

fn todo() -> StoreError {
    StoreError::Db("attachments are not on PostgreSQL yet".into())
}

impl PgStore {
    pub async fn create_upload(
        &self,
        _upload: &Upload,
        _limits: UploadLimits,
    ) -> Result<Result<(), UploadRefused>, StoreError> {
        Err(todo())
    }

    pub async fn upload(&self, _id: &AttachmentId) -> Result<Option<Upload>, StoreError> {
        Err(todo())
    }

    pub async fn claim_upload(
        &self,
        _id: &AttachmentId,
        _owner: u64,
        _offset: u64,
        _lease: Lease,
        _now_ms: u64,
    ) -> Result<Result<Upload, UploadRefused>, StoreError> {
        Err(todo())
    }

    pub async fn advance_upload(
        &self,
        _step: Advance,
    ) -> Result<Result<Upload, UploadRefused>, StoreError> {
        Err(todo())
    }

    pub async fn release_upload(&self, _id: &AttachmentId, _holder: u64) -> Result<(), StoreError> {
        Err(todo())
    }

    pub async fn delete_upload(
        &self,
        _id: &AttachmentId,
        _owner: Option<u64>,
    ) -> Result<bool, StoreError> {
        Err(todo())
    }

    pub async fn uploads_of(&self, _owner: u64) -> Result<Vec<AttachmentId>, StoreError> {
        Err(todo())
    }

    pub async fn expired_uploads(
        &self,
        _now_ms: u64,
        _limit: usize,
    ) -> Result<Vec<Upload>, StoreError> {
        Err(todo())
    }

    pub async fn attachment_totals(&self) -> Result<AttachmentTotals, StoreError> {
        Err(todo())
    }
}
