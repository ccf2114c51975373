//! What a sled store needs to survive a power cut, not only a process crash.
//!
//! A killed process loses nothing it wrote: the kernel's page cache outlives it. A power cut or
//! an OS crash keeps only what was fsynced, and sled 0.34.7 does not fsync where we need it:
//!
//! - its `flush` ends in `sync_file_range`, which writes the data file's pages but persists no
//!   metadata and promises nothing after a crash; `sync_all` runs only in sled's periodic
//!   flusher and in segment and snapshot upkeep;
//! - values too large for a log segment go to files of their own under `blobs/`, never fsynced;
//! - it writes its `conf` file once, at creation, and never fsyncs it: after a cut the file may
//!   be empty (sled rewrites it) or hold zeros (sled refuses to open, "corrupted").
//!
//! So a store opens through [`open`], which fsyncs what sled created, and every group commit
//! ends with [`DataFiles::sync`], which fdatasyncs the data file and any new blob after sled's
//! flush. fdatasync on any descriptor of a file flushes that file's pages and the metadata
//! needed to read them back (its size): Linux syncs the inode, whichever descriptor asks.
//!
//! Directories: a new entry is durable once its directory is fsynced. sled's own renames of
//! snapshot files are not followed by one; on ext4 (data=ordered, the default) the next
//! fdatasync commits the journal and those renames with it.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};

/// A file or directory could not be made durable: the disk failed, or is full. Not retried:
/// after a failed fsync Linux may already have dropped the dirty pages it could not write, so a
/// later fsync that succeeds proves nothing (PostgreSQL's "fsyncgate").
#[derive(Clone, Debug, thiserror::Error)]
#[error("cannot make {path} durable (fsync): {message}; check the disk, then restart the service")]
pub struct SyncError {
    /// The file or directory that failed.
    pub path: String,
    /// What the OS said.
    pub message: String,
}

impl SyncError {
    fn new(path: &Path, e: std::io::Error) -> SyncError {
        SyncError {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

/// fsyncs a file or directory by path.
pub fn sync_path(path: &Path) -> Result<(), SyncError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| SyncError::new(path, e))
}

/// fsyncs a blob file; `false` if it is gone. sled removes a blob once no page points at it
/// any more, on its own threads, so one listed a moment ago may be gone by its fsync: there is
/// nothing of it to keep. (fx-usd once died of that ENOENT after about 80,000 sagas at saturation.)
fn sync_blob(path: &Path) -> Result<bool, SyncError> {
    match File::open(path).and_then(|f| f.sync_all()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(SyncError::new(path, e)),
    }
}

/// Creates `dir` and any missing parents, durably: each directory that gained an entry is
/// fsynced, so the new directories are still there after a power cut.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at.to_path_buf());
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => break,
        }
    }
    std::fs::create_dir_all(dir)?;
    if missing.is_empty() {
        return Ok(());
    }
    // The deepest directory that existed gained the first new entry; each new one but the
    // last gained the next.
    let mut parents: Vec<&Path> = missing.iter().filter_map(|d| d.parent()).collect();
    parents.dedup();
    for p in parents {
        let p = if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        };
        File::open(p)?.sync_all()?;
    }
    Ok(())
}

/// How long an open waits for a store that was just closed in this process to let go of its
/// directory lock, in ms.
const LOCK_RELEASE_WAIT_MS: u64 = 2_000;

/// Opens `config`, retrying while the directory's lock is still held by a handle of this
/// process that was just dropped: sled 0.34's `Db` drop signals its flusher thread but does not
/// wait for it, and the thread holds the `flock` until it exits (sled issue #1289). A restart
/// in the same process (the crash tests, a rebuilt tracker) would otherwise fail at random. A
/// lock held by another live process outlasts the bounded backoff, and its error is returned.
fn open_when_unlocked(config: &sled::Config) -> sled::Result<sled::Db> {
    let policy = backoff::ExponentialBackoff {
        initial_interval: std::time::Duration::from_millis(5),
        max_interval: std::time::Duration::from_millis(100),
        max_elapsed_time: Some(std::time::Duration::from_millis(LOCK_RELEASE_WAIT_MS)),
        ..backoff::ExponentialBackoff::default()
    };
    backoff::retry(policy, || {
        config.open().map_err(|e| {
            let locked = matches!(&e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"));
            if locked {
                backoff::Error::transient(e)
            } else {
                backoff::Error::permanent(e)
            }
        })
    })
    .map_err(|e| match e {
        backoff::Error::Permanent(e) | backoff::Error::Transient { err: e, .. } => e,
    })
}

/// Opens sled at `path` (created durably if missing), then fsyncs what sled wrote outside its
/// log: `conf`, the data file, `blobs/` and the directory itself. A store whose flushes must be
/// durable opens [`DataFiles`] next.
pub fn open(config: sled::Config, path: &Path) -> Result<sled::Db, OpenError> {
    if let Some(parent) = path.parent() {
        create_dir_all(parent).map_err(|e| OpenError::Sync(SyncError::new(parent, e)))?;
    }
    let db = open_when_unlocked(&config.path(path))?;
    for p in [
        path.join("conf"),
        path.join("db"),
        path.join("blobs"),
        path.to_path_buf(),
    ] {
        sync_path(&p)?;
    }
    if let Some(parent) = path.parent() {
        sync_path(parent)?;
    }
    Ok(db)
}

/// Why [`open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// sled refused to open the store (corrupt, locked by another process, bad settings).
    #[error("sled: {0}")]
    Store(#[from] sled::Error),
    /// What sled created could not be fsynced.
    #[error(transparent)]
    Sync(#[from] SyncError),
}

/// The files of one sled store that a group commit fsyncs after sled's flush.
pub struct DataFiles {
    /// `<store>/db`, sled's log and pages, kept open: fdatasync through it.
    db: File,
    db_path: PathBuf,
    /// `<store>/blobs`: values too large for a log segment, one file each.
    blobs: PathBuf,
    /// Blob files already fsynced (blobs are written once and never changed).
    synced_blobs: HashSet<OsString>,
}

impl DataFiles {
    /// Opens the data file of the sled store at `path`, and fsyncs the blob files present now.
    pub fn open(path: &Path) -> Result<DataFiles, SyncError> {
        let db_path = path.join("db");
        let db = File::open(&db_path).map_err(|e| SyncError::new(&db_path, e))?;
        let blobs = path.join("blobs");
        let mut files = DataFiles {
            db,
            db_path,
            blobs,
            synced_blobs: HashSet::new(),
        };
        let present = files.new_blobs()?;
        for (name, blob) in present {
            if sync_blob(&blob)? {
                files.synced_blobs.insert(name);
            }
        }
        Ok(files)
    }

    /// Makes everything sled has flushed durable: new blob files (and their directory), then
    /// the data file. Call after `sled::Db::flush` returns.
    pub fn sync(&mut self) -> Result<(), SyncError> {
        let new = self.new_blobs()?;
        if !new.is_empty() {
            for (name, blob) in new {
                if sync_blob(&blob)? {
                    self.synced_blobs.insert(name);
                }
            }
            sync_path(&self.blobs)?;
            // Blobs sled has removed since are forgotten, so the set stays as small as the dir.
            let present: HashSet<OsString> = std::fs::read_dir(&self.blobs)
                .map_err(|e| SyncError::new(&self.blobs, e))?
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect();
            self.synced_blobs.retain(|n| present.contains(n));
        }
        self.db
            .sync_data()
            .map_err(|e| SyncError::new(&self.db_path, e))
    }

    /// Blob files not fsynced yet. sled writes a blob before the log entry that points at it,
    /// so every blob a flushed entry needs is listed here by the time the flush returns.
    fn new_blobs(&self) -> Result<Vec<(OsString, PathBuf)>, SyncError> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(SyncError::new(&self.blobs, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| SyncError::new(&self.blobs, e))?;
            let name = entry.file_name();
            if !self.synced_blobs.contains(&name) {
                out.push((name, entry.path()));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_gone_before_its_fsync_is_skipped_and_any_other_failure_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("42");
        std::fs::write(&blob, b"page").unwrap();
        assert!(sync_blob(&blob).unwrap(), "a present blob is synced");
        std::fs::remove_file(&blob).unwrap();
        assert!(!sync_blob(&blob).unwrap(), "a removed blob is skipped");
        // A path through a file is not "gone": it is an error the flush must report.
        let through_file = dir.path().join("file");
        std::fs::write(&through_file, b"x").unwrap();
        assert!(sync_blob(&through_file.join("43")).is_err());
    }

    #[test]
    fn a_store_reopens_while_its_dropped_handle_lets_go_and_a_live_one_still_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        // Dropped and reopened at once, many times: sled's flusher may still hold the lock.
        for i in 0..20u8 {
            let db = open(sled::Config::new(), &path).unwrap();
            db.insert([i], &[i]).unwrap();
            db.flush().unwrap();
        }
        let db = open(sled::Config::new(), &path).unwrap();
        assert_eq!(db.len(), 20, "every reopen saw the writes before it");
        // A handle that stays open keeps the store: the second open gives up with the error.
        let err = open(sled::Config::new(), &path).unwrap_err();
        assert!(err.to_string().contains("could not acquire lock"), "{err}");
    }

    #[test]
    fn create_dir_all_makes_every_missing_level_and_accepts_an_existing_one() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all(&deep).unwrap();
    }

    #[test]
    fn open_creates_the_store_and_sync_covers_a_blob() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("svc/sled");
        let db = open(sled::Config::new(), &path).unwrap();
        let mut files = DataFiles::open(&path).unwrap();
        assert!(
            path.join("conf").metadata().unwrap().len() > 8,
            "conf written"
        );
        // A value over a quarter of a segment goes to a blob file of its own.
        db.insert("big", vec![7u8; 300 * 1024]).unwrap();
        db.flush().unwrap();
        files.sync().unwrap();
        assert_eq!(files.synced_blobs.len(), 1, "the new blob was fsynced");
        files.sync().unwrap();
        assert_eq!(files.synced_blobs.len(), 1);
    }
}
