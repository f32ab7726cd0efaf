//! The disk reserve (`--reserve-mb`): a file of real blocks in the data dir that the server gives
//! back to the filesystem when storage fails. A full disk stops the server (fail-stop, see
//! `storage`); the space the reserve frees is what lets the next start open the database (sled
//! writes as it recovers) and take the deletes that drain the queues, before anyone has cleaned
//! up. It is made again, at a start or later, only once twice its size is free, so that making
//! it never fills the disk it is there to rescue.
//!
//! Only the binary keeps a reserve (`keep`, from `main`); servers in tests and operator commands
//! do not.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::app::App;

/// The reserve's file in the data dir.
pub const FILE: &str = "reserve";
/// The file while it is written: a crash or a full disk leaves no reserve that looks whole.
const PARTIAL: &str = "reserve.partial";
/// How often a missing reserve is tried again.
const RETRY: Duration = Duration::from_secs(60);

/// The reserve of one data dir.
pub struct Reserve {
    dir: PathBuf,
    bytes: u64,
}

impl Reserve {
    /// A reserve of `mib` MiB in `dir`; `None` for 0 (no reserve).
    pub fn new(dir: &Path, mib: u64) -> Option<Reserve> {
        (mib > 0).then(|| Reserve {
            dir: dir.to_path_buf(),
            bytes: mib.saturating_mul(1 << 20),
        })
    }

    /// The server's reserve: in its data dir, with sled only (PostgreSQL keeps its own disk).
    pub fn of(app: &App) -> Option<Reserve> {
        if app.config.database_url.is_some() {
            return None;
        }
        Reserve::new(&app.config.data_dir, app.config.reserve_mb)
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Whether the reserve is there, whole.
    pub fn held(&self) -> bool {
        std::fs::metadata(self.path()).is_ok_and(|m| m.len() == self.bytes)
    }

    /// Makes the reserve unless it is there. `Ok(false)`: less than twice its size is free, so
    /// it was not made (a reserve of another size, from an earlier `--reserve-mb`, is deleted).
    pub fn make(&self) -> std::io::Result<bool> {
        if self.held() {
            return Ok(true);
        }
        remove(&self.path())?;
        if crate::datadir::free_bytes(&self.dir)? < self.bytes.saturating_mul(2) {
            return Ok(false);
        }
        let partial = self.dir.join(PARTIAL);
        let written = write_blocks(&partial, self.bytes)
            .and_then(|()| std::fs::rename(&partial, self.path()))
            .and_then(|()| std::fs::File::open(&self.dir)?.sync_all());
        if let Err(e) = written {
            let _ = remove(&partial);
            return Err(e);
        }
        Ok(true)
    }

    /// Gives the reserve back to the filesystem; whether there was one.
    pub fn release(&self) -> bool {
        let _ = remove(&self.dir.join(PARTIAL));
        let held = self.path().exists();
        match remove(&self.path()) {
            Ok(()) => held,
            Err(e) => {
                log::error!("cannot delete the disk reserve: {e}");
                false
            }
        }
    }
}

/// Makes the reserve at start, saying whether it could, then every minute while it is missing
/// and storage works (space freed, queues drained).
pub async fn keep(app: &App) {
    let Some(reserve) = Reserve::of(app) else {
        return;
    };
    let reserve = Arc::new(reserve);
    let mib = app.config.reserve_mb;
    if !attempt(&reserve, mib).await {
        log::warn!(
            "running without the {mib} MiB disk reserve: less than {} MiB free in {}; if the disk \
             fills now, free space before restarting",
            mib.saturating_mul(2),
            app.config.data_dir.display()
        );
    }
    let storage = app.storage.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RETRY);
        tick.tick().await;
        loop {
            tick.tick().await;
            if storage.failure().is_some() {
                return;
            }
            if !reserve.held() {
                attempt(&reserve, mib).await;
            }
        }
    });
}

/// One try at making the reserve (off the runtime threads: it writes MiBs); whether it is there.
async fn attempt(reserve: &Arc<Reserve>, mib: u64) -> bool {
    let r = reserve.clone();
    let made = tokio::task::spawn_blocking(move || r.make()).await;
    match made {
        Ok(Ok(true)) => {
            log::info!("disk reserve: {mib} MiB in {}", reserve.path().display());
            true
        }
        Ok(Ok(false)) => false,
        Ok(Err(e)) => {
            log::warn!("cannot make the disk reserve: {e}");
            false
        }
        Err(e) => {
            log::warn!("cannot make the disk reserve: {e}");
            false
        }
    }
}

/// Writes `bytes` of data that no filesystem can compress or share away, then syncs it: zeros
/// cost nothing on a filesystem that compresses (ZFS, btrfs), and would free nothing when deleted.
fn write_blocks(path: &Path, bytes: u64) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(std::process::id());
    let mut left = bytes;
    while left > 0 {
        for word in chunk.chunks_exact_mut(8) {
            // xorshift64: cheap, and never the same block twice.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

/// Removes `path`; a file that is not there is not an error.
fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_is_made_whole_once_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = Reserve::new(dir.path(), 1).unwrap();
        assert!(!reserve.held());
        assert!(reserve.make().unwrap());
        assert!(reserve.held());
        assert_eq!(std::fs::metadata(reserve.path()).unwrap().len(), 1 << 20);
        assert!(!dir.path().join(PARTIAL).exists());
        assert!(reserve.make().unwrap());
        assert!(reserve.release());
        assert!(!reserve.path().exists());
        assert!(!reserve.release());
    }

    #[test]
    fn a_reserve_of_another_size_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"short").unwrap();
        let reserve = Reserve::new(dir.path(), 1).unwrap();
        assert!(!reserve.held());
        assert!(reserve.make().unwrap());
        assert!(reserve.held());
    }

    #[test]
    fn no_reserve_when_it_would_take_half_the_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let free_mib = crate::datadir::free_bytes(dir.path()).unwrap() >> 20;
        let reserve = Reserve::new(dir.path(), free_mib / 2 + 1).unwrap();
        assert!(!reserve.make().unwrap());
        assert!(!reserve.path().exists());
        assert!(Reserve::new(dir.path(), 0).is_none());
    }
}
