//! Restore, all or nothing: a backup is loaded into a fresh database beside the data dir's own
//! (`db.restoring`), every record checked with the API's rules (`restore_rules`), and the new
//! database is renamed into place only once the whole file is in and on disk. A restore that
//! fails, or is killed, leaves the data dir's database as it was; its half-built copy is under a
//! name the server never opens and the next restore removes first.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use super::backup::{BackupSummary, Record};
use super::restore_rules::{RestoreLimits, RestoreTarget, Restoring};
use super::{SledStore, StorageOptions, StoreError};

/// Restores `input` into the database directory `db`, which must not exist or hold no records.
pub async fn restore_dir(
    db: &Path,
    input: &mut (dyn BufRead + Send),
    limits: &RestoreLimits,
    options: &StorageOptions,
) -> Result<BackupSummary, StoreError> {
    if db.exists() && SledStore::open(db, options)?.has_records()? {
        return Err(StoreError::Corrupt(format!(
            "restore needs an empty data dir, and {} holds records",
            db.display()
        )));
    }
    let building = building_path(db);
    remove_dir(&building)?;
    create_private_dir(&building)?;
    let result = match fill(&building, input, limits, options).await {
        Ok(sum) => move_into_place(&building, db).map(|()| sum),
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    result
}

/// `<db>.restoring`: on the same file system as `db`, so the final rename is atomic.
fn building_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".restoring");
    db.with_file_name(name)
}

/// Loads and flushes the new database; it is closed when this returns.
async fn fill(
    dir: &Path,
    input: &mut (dyn BufRead + Send),
    limits: &RestoreLimits,
    options: &StorageOptions,
) -> Result<BackupSummary, StoreError> {
    let storage = SledStore::open(dir, options)?;
    let sum = storage.restore(input, limits).await?;
    storage.flush()?;
    Ok(sum)
}

/// Replaces `db` (checked to hold no records) by `building`, and syncs the directory entry.
fn move_into_place(building: &Path, db: &Path) -> Result<(), StoreError> {
    remove_dir(db)?;
    std::fs::rename(building, db).map_err(|e| io_error("moving the restored database", e))?;
    if let Some(parent) = db.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("syncing the data dir", e))?;
    }
    Ok(())
}

fn remove_dir(dir: &Path) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_error(&format!("removing {}", dir.display()), e))
        }
        _ => Ok(()),
    }
}

/// The database holds password hashes and message bodies: its owner only, whatever the umask.
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| io_error(&format!("creating {}", dir.display()), e))
}

fn io_error(doing: &str, e: std::io::Error) -> StoreError {
    StoreError::Io {
        doing: doing.to_string(),
        source: e,
    }
}

impl SledStore {
    /// Whether any tree holds a record (derived indexes follow their records).
    fn has_records(&self) -> Result<bool, StoreError> {
        for tree in [
            &self.users,
            &self.devices,
            &self.prekeys,
            &self.kyber_prekeys,
            &self.messages,
            &self.invites,
            &self.reset_tokens,
        ] {
            if tree.first()?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Loads a backup into this empty database, rebuilding the indexes, so that new ids start
    /// above every restored one. The first bad line ends it with an error naming that line.
    pub(super) async fn restore(
        &self,
        input: &mut (dyn BufRead + Send),
        limits: &RestoreLimits,
    ) -> Result<BackupSummary, StoreError> {
        let _exclusive = self.gate.write().await;
        if self.has_records()? {
            return Err(StoreError::Corrupt(
                "restore needs an empty database".into(),
            ));
        }
        let (sum, max_id) = read_backup(input, limits, self).await?;
        self.meta.insert("id_offset", &(max_id + 1).to_be_bytes())?;
        self.id_offset
            .store(max_id + 1, std::sync::atomic::Ordering::Relaxed);
        Ok(sum)
    }
}

/// Reads a backup into `target`, every record checked (`Restoring`); answers what was restored
/// and the largest id in it. The first bad line ends it with an error naming that line.
pub(crate) async fn read_backup<T: RestoreTarget>(
    input: &mut (dyn BufRead + Send),
    limits: &RestoreLimits,
    target: T,
) -> Result<(BackupSummary, u64), StoreError> {
    let mut lines = Lines::new(input, limits.max_line_bytes());
    let mut restoring = Restoring::new(target, limits);
    while let Some((n, line)) = lines.next()? {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record: Record = serde_json::from_slice(line)
            .map_err(|e| StoreError::Corrupt(format!("line {n}: {e}")))?;
        restoring.take(record).await.map_err(|e| match e {
            StoreError::Corrupt(why) => StoreError::Corrupt(format!("line {n}: {why}")),
            other => other,
        })?;
    }
    restoring.finish()
}

/// Lines of at most `max` bytes, read without ever holding more than `max + 1` bytes of one:
/// a huge line is refused after its first `max + 1` bytes, not read whole into memory.
struct Lines<'a> {
    input: &'a mut (dyn BufRead + Send),
    max: usize,
    buf: Vec<u8>,
    number: u64,
}

impl<'a> Lines<'a> {
    fn new(input: &'a mut (dyn BufRead + Send), max: usize) -> Lines<'a> {
        Lines {
            input,
            max,
            buf: Vec::new(),
            number: 0,
        }
    }

    /// The next line (its number, its bytes without the line end); `None` at the end.
    fn next(&mut self) -> Result<Option<(u64, &[u8])>, StoreError> {
        self.buf.clear();
        self.number += 1;
        let limit = u64::try_from(self.max)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let read = (&mut *self.input)
            .take(limit)
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| io_error("reading the backup", e))?;
        if read == 0 {
            return Ok(None);
        }
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        } else if self.buf.len() > self.max {
            return Err(StoreError::Corrupt(format!(
                "line {}: longer than {} bytes, the most a record of this server takes \
                 (see --max-message-bytes)",
                self.number, self.max
            )));
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        Ok(Some((self.number, &self.buf)))
    }
}
