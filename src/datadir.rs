//! The data dir on disk: created private (0700), tightened when an older version or a loose
//! umask left it readable by others, and, for operator commands, checked to hold a database and
//! opened as its owner so that a command run as root leaves no root-owned files behind; and the
//! lock that keeps a second process off it.

use std::path::{Path, PathBuf};

use crate::failure::{Failure, Result};

/// Creates `dir` (mode 0700) if missing; an existing dir that others may read is made 0700,
/// because it holds password hashes and queued messages.
pub fn prepare(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| format!("cannot create the data dir {}: {e}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)
            .map_err(|e| format!("cannot read the data dir {}: {e}", dir.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("cannot make the data dir {} private: {e}", dir.display()))?;
            log::warn!(
                "data dir {} was readable by other users (mode {:o}); made it 0700",
                dir.display(),
                mode & 0o777
            );
        }
    }
    Ok(())
}

/// Refuses a data dir without a signal-server database: a mistyped `--data-dir` must not
/// silently get an empty database.
pub fn require_database(dir: &Path) -> Result<()> {
    if crate::storage::holds_database(&dir.join("db")) {
        return Ok(());
    }
    Err(format!(
        "{} holds no signal-server database. Check --data-dir (the server's own, e.g. \
         /var/lib/signal-server); a database is created only by starting the server.",
        dir.display()
    )
    .into())
}

/// When running as root on a data dir that belongs to another user (the service's), becomes
/// that user for good, so that every file the command creates stays the service's. Answers the
/// path to use from then on: on Linux the dir is opened first and reached through
/// `/proc/self/fd/N`, because a `DynamicUser=` unit's dir sits under `/var/lib/private` (0700
/// root), which its owner cannot traverse. Elsewhere, and when not root, answers `dir`.
pub fn become_owner(dir: &Path) -> Result<PathBuf> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(dir.to_path_buf());
        }
        let meta = std::fs::metadata(dir)
            .map_err(|e| format!("cannot read the data dir {}: {e}", dir.display()))?;
        if meta.uid() == 0 {
            return Ok(dir.to_path_buf());
        }
        let path = held_open(dir)?;
        switch_user(meta.uid(), meta.gid()).map_err(|e| {
            format!(
                "cannot switch to uid {} (the owner of {}): {e}; run the command as that user",
                meta.uid(),
                dir.display()
            )
        })?;
        eprintln!(
            "running as uid {} gid {}, the owner of {}",
            meta.uid(),
            meta.gid(),
            dir.display()
        );
        Ok(path)
    }
    #[cfg(not(unix))]
    Ok(dir.to_path_buf())
}

/// A path to `dir` that works whoever we become: its descriptor, open for the rest of the
/// process, under `/proc/self/fd` (which needs no search permission on `dir`'s parents).
#[cfg(target_os = "linux")]
fn held_open(dir: &Path) -> Result<PathBuf> {
    use std::os::fd::IntoRawFd;
    let fd = std::fs::File::open(dir)
        .map_err(|e| format!("cannot open the data dir {}: {e}", dir.display()))?
        .into_raw_fd();
    Ok(PathBuf::from(format!("/proc/self/fd/{fd}")))
}

#[cfg(all(unix, not(target_os = "linux")))]
fn held_open(dir: &Path) -> Result<PathBuf> {
    Ok(dir.to_path_buf())
}

/// Drops root for `uid`/`gid` in every thread (glibc applies set*id process-wide), groups first
/// because afterwards we may no longer change them.
#[cfg(unix)]
fn switch_user(uid: u32, gid: u32) -> std::io::Result<()> {
    // SAFETY: plain system calls on integers; a null list with length 0 clears the groups.
    let ok = unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setgid(gid) == 0
            && libc::setuid(uid) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The process umask for the binary: whatever the caller's umask, everything the server writes
/// (database, JWT secret, backups, admin socket) is for its owner only.
pub fn private_umask() {
    #[cfg(unix)]
    // SAFETY: umask cannot fail and only affects files created afterwards.
    unsafe {
        libc::umask(0o077);
    }
}

/// Takes an exclusive lock on the data dir, held as long as the returned file lives: a second
/// server on the same data dir fails at once instead of corrupting it.
pub fn lock(dir: &Path) -> Result<std::fs::File> {
    prepare(dir)?;
    let path = dir.join("LOCK");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(&path).map_err(|e| {
        format!(
            "cannot open {}: {e}; the data dir must belong to the user running signal-server",
            path.display()
        )
    })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "data dir {} is in use by another signal-server process",
            dir.display()
        )
        .into()),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Failure::io(format!("cannot lock {}", path.display()), e))
        }
    }
}

/// Bytes an unprivileged writer may still use on the filesystem of `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `path` is a valid C string and `stat` a plain struct statvfs fills in.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The field types differ between platforms (u32 on some 32-bit ones).
    #[allow(clippy::useless_conversion)]
    let (blocks, size) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
    Ok(blocks.saturating_mul(size))
}
