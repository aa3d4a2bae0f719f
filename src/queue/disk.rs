//! The data directory's filesystem: free space, the reserve file, and how SQLite reports a
//! full or broken disk. Pure helpers; the queue thread decides what to do with them.

use std::io::Write;
use std::path::Path;

use super::QueueError;

/// Space kept in `<data_dir>/reserve` while the disk has room. When the disk fills, the file is
/// deleted first: it gives SQLite room to grow the WAL, checkpoint it and delete acknowledged
/// or overwritten records, so the queue keeps working (and can shrink) on a full disk.
pub const RESERVE_BYTES: u64 = 8 * 1024 * 1024;
/// A disk-full episode ends once this much is free again (the reserve is then re-created and
/// still leaves room); hysteresis, so a disk at the edge does not flap between the two states.
pub const RESUME_FREE_BYTES: u64 = RESERVE_BYTES + 4 * 1024 * 1024;

pub const RESERVE_FILE: &str = "reserve";

/// Bytes an unprivileged process may still write on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs buffer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the buffer.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Writes the reserve file (real zeros, not a sparse file: it must hold blocks). Returns
/// false when the disk has no room for it (the partial file is removed).
pub fn create_reserve(data_dir: &Path) -> bool {
    let path = data_dir.join(RESERVE_FILE);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() >= RESERVE_BYTES) {
        return true;
    }
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&path)?;
        let chunk = vec![0u8; 1024 * 1024];
        for _ in 0..RESERVE_BYTES / chunk.len() as u64 {
            f.write_all(&chunk)?;
        }
        f.sync_all()
    };
    match write() {
        Ok(()) => true,
        Err(_) => {
            let _ = std::fs::remove_file(&path);
            false
        }
    }
}

/// Deletes the reserve file; true if there was one.
pub fn release_reserve(data_dir: &Path) -> bool {
    std::fs::remove_file(data_dir.join(RESERVE_FILE)).is_ok()
}

fn sqlite_code(e: &QueueError) -> Option<rusqlite::ErrorCode> {
    match e {
        QueueError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => Some(f.code),
        _ => None,
    }
}

/// SQLITE_FULL, or an I/O error while the filesystem has no room left (some writes, e.g. a
/// WAL or file extension, report ENOSPC as SQLITE_IOERR).
pub fn is_disk_full(e: &QueueError, data_dir: &Path) -> bool {
    match sqlite_code(e) {
        Some(rusqlite::ErrorCode::DiskFull) => true,
        Some(rusqlite::ErrorCode::SystemIoFailure) => {
            free_bytes(data_dir).is_some_and(|f| f < 1024 * 1024)
        }
        _ => false,
    }
}

/// The database file is damaged (SQLITE_CORRUPT, SQLITE_NOTADB, or a failed quick_check).
pub fn is_corruption(e: &QueueError) -> bool {
    matches!(e, QueueError::Corrupt(_))
        || matches!(
            sqlite_code(e),
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
        )
}

/// SQLite could not write or create the database (read-only file or filesystem).
pub fn is_read_only(e: &QueueError) -> bool {
    matches!(
        sqlite_code(e),
        Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen)
    )
}

/// An I/O error that means "this directory is not writable".
pub fn is_not_writable(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_is_created_released_and_real() {
        let dir = tempfile::tempdir().unwrap();
        assert!(create_reserve(dir.path()));
        let meta = std::fs::metadata(dir.path().join(RESERVE_FILE)).unwrap();
        assert_eq!(meta.len(), RESERVE_BYTES);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 >= RESERVE_BYTES, "not sparse");
        assert!(release_reserve(dir.path()));
        assert!(!release_reserve(dir.path()));
        assert!(free_bytes(dir.path()).is_some_and(|f| f > 0));
    }

    #[test]
    fn classifies_sqlite_errors() {
        let e = |code| {
            QueueError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                None,
            ))
        };
        let dir = tempfile::tempdir().unwrap();
        assert!(is_disk_full(&e(rusqlite::ffi::SQLITE_FULL), dir.path()));
        assert!(!is_disk_full(&e(rusqlite::ffi::SQLITE_IOERR), dir.path()));
        assert!(is_corruption(&e(rusqlite::ffi::SQLITE_CORRUPT)));
        assert!(is_corruption(&e(rusqlite::ffi::SQLITE_NOTADB)));
        assert!(is_corruption(&QueueError::Corrupt("x".into())));
        assert!(!is_corruption(&e(rusqlite::ffi::SQLITE_FULL)));
        assert!(is_read_only(&e(rusqlite::ffi::SQLITE_READONLY)));
    }
}
