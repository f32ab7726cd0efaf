//! Where attachment bytes live: a directory (the default, `<data-dir>/attachments`) or an
//! S3-compatible object store. Both are written the same way, by one writer per upload at a
//! time (the record's lease, see `storage::attachments`): `writer` from the upload's durable
//! offset, `write` as the body arrives, `sync` to make what was written durable (only then may
//! the record's offset move), `discard` to drop what was written since the last `sync`.
//! Bytes past a record's offset are never read: a crash leaves at most such bytes behind, and
//! the next writer starts over from the offset.

use warp::hyper::body::Bytes;

pub use super::blob_io::{BlobError, ByteStream};
use super::dir::{DirBlobs, DirWriter};
use super::s3::{S3Blobs, S3Writer};
use crate::storage::attachments::AttachmentId;

pub enum Blobs {
    Dir(DirBlobs),
    S3(S3Blobs),
}

impl Blobs {
    /// A writer of `id` going on from `offset` (its record's durable offset; anything after
    /// it from an earlier writer is dropped).
    pub async fn writer(&self, id: &AttachmentId, offset: u64) -> Result<BlobWriter, BlobError> {
        match self {
            Blobs::Dir(d) => d.writer(id, offset).await.map(BlobWriter::Dir),
            Blobs::S3(s) => s.writer(id, offset).await.map(BlobWriter::S3),
        }
    }

    /// Bytes `start..end` of a blob whose record says they are durable.
    pub async fn read(
        &self,
        id: &AttachmentId,
        start: u64,
        end: u64,
    ) -> Result<ByteStream, BlobError> {
        match self {
            Blobs::Dir(d) => d.read(id, start, end).await,
            Blobs::S3(s) => s.read(id, start, end).await,
        }
    }

    /// Removes a blob (nothing if there is none).
    pub async fn delete(&self, id: &AttachmentId) -> Result<(), BlobError> {
        match self {
            Blobs::Dir(d) => d.delete(id).await,
            Blobs::S3(s) => s.delete(id).await,
        }
    }

    /// The ids of every blob there is (for the sweep of blobs left without a record, and fsck).
    pub async fn ids(&self) -> Result<Vec<AttachmentId>, BlobError> {
        match self {
            Blobs::Dir(d) => d.ids().await,
            Blobs::S3(s) => s.ids().await,
        }
    }

    /// How many bytes of the blob of `id` can be read from its start (`None`: there is no blob),
    /// for fsck, which finds a blob shorter than its record's offset. Bytes past the offset are
    /// a stopped writer's, never read and overwritten by the next writer.
    pub async fn len(&self, id: &AttachmentId) -> Result<Option<u64>, BlobError> {
        match self {
            Blobs::Dir(d) => d.len(id).await,
            Blobs::S3(s) => s.len(id).await,
        }
    }

    /// The most a writer holds in memory (its buffer).
    pub fn writer_memory(&self) -> usize {
        match self {
            Blobs::Dir(_) => super::dir::BUFFER,
            Blobs::S3(s) => s.segment_bytes(),
        }
    }

    /// Where the blobs are, for the start log (never a credential).
    pub fn describe(&self) -> String {
        match self {
            Blobs::Dir(d) => d.describe(),
            Blobs::S3(s) => s.describe(),
        }
    }
}

pub enum BlobWriter {
    Dir(DirWriter),
    S3(S3Writer),
}

impl BlobWriter {
    pub async fn write(&mut self, bytes: Bytes) -> Result<(), BlobError> {
        match self {
            BlobWriter::Dir(w) => w.write(bytes).await,
            BlobWriter::S3(w) => w.write(bytes).await,
        }
    }

    /// Makes everything written so far durable; returns the offset it reaches.
    pub async fn sync(&mut self) -> Result<u64, BlobError> {
        match self {
            BlobWriter::Dir(w) => w.sync().await,
            BlobWriter::S3(w) => w.sync().await,
        }
    }

    /// Drops what was written since the last `sync` (or since the start).
    pub async fn discard(&mut self) -> Result<(), BlobError> {
        match self {
            BlobWriter::Dir(w) => w.discard().await,
            BlobWriter::S3(w) => w.discard().await,
        }
    }
}
