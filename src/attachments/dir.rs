//! Blobs as files in a directory: `<root>/<first two characters of the id>/<id>`. A writer
//! appends with positioned writes from a buffer of `BUFFER` bytes (off the async threads), and
//! `sync` is `fdatasync` (plus the directories' `fsync` the first time, so a new file's name is
//! durable too). A new writer cuts the file back to its record's offset.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::stream;
use warp::hyper::body::Bytes;

use super::blob_io::{BlobError, ByteStream};
use super::ids::{encode_id, parse_id};
use crate::storage::attachments::AttachmentId;

/// Bytes a writer collects before writing them out.
pub(super) const BUFFER: usize = 1 << 20;
/// Bytes a download reads at a time.
const READ_CHUNK: usize = 256 << 10;

pub struct DirBlobs {
    root: PathBuf,
    /// Bytes of the filesystem no upload may take (room the database keeps when it shares the
    /// disk): a write that would leave less is refused as if the disk were full.
    keep_free: u64,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, BlobError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(BlobError::from),
        Err(e) => Err(BlobError::Io(format!("a blob task failed: {e}"))),
    }
}

impl DirBlobs {
    /// The store in `root`, made (owner-only) if missing.
    pub fn open(root: &Path, keep_free: u64) -> std::io::Result<DirBlobs> {
        std::fs::create_dir_all(root)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(DirBlobs {
            root: root.to_path_buf(),
            keep_free,
        })
    }

    fn path(&self, id: &AttachmentId) -> PathBuf {
        let name = encode_id(id);
        self.root.join(&name[..2]).join(name)
    }

    pub async fn writer(&self, id: &AttachmentId, offset: u64) -> Result<DirWriter, BlobError> {
        let path = self.path(id);
        let root = self.root.clone();
        let (file, fresh) = blocking(move || {
            let shard = path.parent().unwrap_or(&root);
            let fresh_shard = !shard.exists();
            if fresh_shard {
                std::fs::create_dir_all(shard)?;
            }
            let fresh = !path.exists();
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            if file.metadata()?.len() < offset {
                return Err(std::io::Error::other(format!(
                    "{} is shorter than its record's offset {offset}",
                    path.display()
                )));
            }
            file.set_len(offset)?;
            let dirs = match (fresh, fresh_shard) {
                (false, _) => vec![],
                (true, false) => vec![shard.to_path_buf()],
                (true, true) => vec![shard.to_path_buf(), root],
            };
            Ok((file, dirs))
        })
        .await?;
        Ok(DirWriter {
            root: self.root.clone(),
            keep_free: self.keep_free,
            file: Arc::new(file),
            unsynced_dirs: fresh,
            buf: Vec::with_capacity(BUFFER),
            flushed: offset,
            synced: offset,
        })
    }

    pub async fn read(
        &self,
        id: &AttachmentId,
        start: u64,
        end: u64,
    ) -> Result<ByteStream, BlobError> {
        let path = self.path(id);
        let file = Arc::new(blocking(move || File::open(path)).await?);
        let chunks = stream::unfold(start, move |at| {
            let file = file.clone();
            async move {
                if at >= end {
                    return None;
                }
                let len = (end - at).min(READ_CHUNK as u64) as usize;
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len];
                    file.read_exact_at(&mut buf, at).map(|()| Bytes::from(buf))
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                match read {
                    Ok(bytes) => Some((Ok(bytes), at + len as u64)),
                    // Ends the stream after the error.
                    Err(e) => Some((Err(e), end)),
                }
            }
        });
        Ok(Box::pin(chunks))
    }

    pub async fn delete(&self, id: &AttachmentId) -> Result<(), BlobError> {
        let path = self.path(id);
        blocking(move || match std::fs::remove_file(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        })
        .await
    }

    pub async fn len(&self, id: &AttachmentId) -> Result<Option<u64>, BlobError> {
        let path = self.path(id);
        blocking(move || match std::fs::metadata(path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    pub async fn ids(&self) -> Result<Vec<AttachmentId>, BlobError> {
        let root = self.root.clone();
        blocking(move || {
            let mut ids = Vec::new();
            for shard in std::fs::read_dir(root)? {
                let shard = shard?;
                if !shard.file_type()?.is_dir() {
                    continue;
                }
                for file in std::fs::read_dir(shard.path())? {
                    let name = file?.file_name();
                    if let Some(id) = name.to_str().and_then(parse_id) {
                        ids.push(id);
                    }
                }
            }
            Ok(ids)
        })
        .await
    }

    pub fn describe(&self) -> String {
        format!("attachments in {}", self.root.display())
    }
}

pub struct DirWriter {
    root: PathBuf,
    keep_free: u64,
    file: Arc<File>,
    /// Directories to `fsync` at the first `sync` (a new file's, a new shard's).
    unsynced_dirs: Vec<PathBuf>,
    buf: Vec<u8>,
    /// Bytes in the file (before `buf`).
    flushed: u64,
    synced: u64,
}

impl DirWriter {
    pub async fn write(&mut self, bytes: Bytes) -> Result<(), BlobError> {
        self.buf.extend_from_slice(&bytes);
        if self.buf.len() >= BUFFER {
            self.write_out().await?;
        }
        Ok(())
    }

    async fn write_out(&mut self) -> Result<(), BlobError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let (file, at) = (self.file.clone(), self.flushed);
        let (root, keep_free) = (self.root.clone(), self.keep_free);
        let buf = blocking(move || {
            if keep_free > 0 {
                let free = crate::datadir::free_bytes(&root)?;
                if free < keep_free.saturating_add(buf.len() as u64) {
                    return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
                }
            }
            file.write_all_at(&buf, at).map(|()| buf)
        })
        .await;
        let buf = match buf {
            Ok(buf) => buf,
            Err(e) => {
                self.buf = Vec::with_capacity(BUFFER);
                return Err(e);
            }
        };
        self.flushed += buf.len() as u64;
        self.buf = buf;
        self.buf.clear();
        Ok(())
    }

    pub async fn sync(&mut self) -> Result<u64, BlobError> {
        self.write_out().await?;
        let file = self.file.clone();
        let dirs = self.unsynced_dirs.clone();
        blocking(move || {
            file.sync_data()?;
            for dir in dirs {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await?;
        self.unsynced_dirs.clear();
        self.synced = self.flushed;
        Ok(self.synced)
    }

    pub async fn discard(&mut self) -> Result<(), BlobError> {
        self.buf.clear();
        self.flushed = self.synced;
        let (file, at) = (self.file.clone(), self.synced);
        blocking(move || file.set_len(at)).await
    }
}
