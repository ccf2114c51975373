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

/// Opens sled at `path` (created durably if missing), then fsyncs what sled wrote outside its
/// log: `conf`, the data file, `blobs/` and the directory itself. A store whose flushes must be
/// durable opens [`DataFiles`] next.
pub fn open(config: sled::Config, path: &Path) -> Result<sled::Db, OpenError> {
    if let Some(parent) = path.parent() {
        create_dir_all(parent).map_err(|e| OpenError::Sync(SyncError::new(parent, e)))?;
    }
    let db = config.path(path).open()?;
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
            sync_path(&blob)?;
            files.synced_blobs.insert(name);
        }
        Ok(files)
    }

    /// Makes everything sled has flushed durable: new blob files (and their directory), then
    /// the data file. Call after `sled::Db::flush` returns.
    pub fn sync(&mut self) -> Result<(), SyncError> {
        let new = self.new_blobs()?;
        if !new.is_empty() {
            for (name, blob) in new {
                sync_path(&blob)?;
                self.synced_blobs.insert(name);
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
