//! A power-loss test filesystem, in the spirit of Jepsen's LazyFS.
//!
//! [`LazyFs`] mounts a FUSE passthrough view of a real backing directory. Reads, directory
//! listings and metadata go through to the backing directory, but **every file-data write is
//! held in memory until that file is fsynced**. [`LazyFs::power_cut`] drops every unsynced
//! write and remounts: what a program finds afterwards is what a machine would find after
//! losing power, if its disk kept exactly what had been fsynced.
//!
//! # The model, and why
//!
//! - **File data is lazy.** `write`, and size changes through `setattr` (truncate, `set_len`)
//!   or `fallocate` (mode 0), go to a per-inode overlay: 4 KiB pages, the file's logical size,
//!   and the lowest size the file was truncated to since its last sync (the *floor*). Reads
//!   merge the backing file with the overlay: a page in the overlay wins; elsewhere backing
//!   bytes are visible only below the floor, so a shrink-then-grow reads zeros rather than
//!   resurrected backing bytes. `getattr` reports the overlay's size. This is the part of a
//!   real disk that loses data: the page cache.
//! - **`fsync` and `fdatasync` persist.** FUSE `fsync` (datasync or not) applies the inode's
//!   overlay to the backing file in order (truncate to the floor, write the pages, set the
//!   length), fsyncs the backing file and clears the overlay. `fsync` is implemented on
//!   purpose: a FUSE filesystem that answers `ENOSYS` makes the kernel treat every later
//!   fsync as a success, which would hide exactly the bugs this exists to find. `flush`
//!   (called on every `close`) and `release` do **not** persist: closing a file is not a
//!   durability point. `fsyncdir` succeeds (metadata is already in the backing directory).
//! - **Metadata is immediate**, as in LazyFS's default: create, mknod, mkdir, unlink, rmdir,
//!   rename, chmod, chown and utimens go straight to the backing directory. After a cut, a
//!   created file exists but holds only what was fsynced. That is the state that exposes a
//!   program which creates a file (a config, a snapshot renamed into place) and never
//!   fsyncs it.
//! - **Overlays follow the inode, not the path**: a rename keeps the unsynced data attached
//!   to the renamed file, and an unlinked-but-open file keeps working through its open backing
//!   handle (its data is dropped on the last close, as nothing can reach it any more).
//! - The kernel never holds dirty data of its own: the filesystem does not ask for FUSE's
//!   writeback cache, so every `write(2)` reaches the overlay at once. Entry and attribute
//!   TTLs are zero, so the kernel never serves a stale size. Reads may be cached by the
//!   kernel within one mount (page cache, invalidated on every open); a power cut unmounts
//!   and mounts afresh, so nothing read after a cut comes from before it.
//!
//! # What it does not simulate
//!
//! - Metadata loss: a rename, create or unlink is durable at once, even without an fsync of
//!   the directory. (A real filesystem may lose them; ext4's `auto_da_alloc` and journal
//!   make the model's behaviour common in practice.)
//! - Torn or reordered writes within an fsync: an fsync applies all of a file's overlay or,
//!   if the cut comes first, none of it. No partial pages, no sector tearing, no bit rot.
//! - `sync_file_range(2)` is invisible to FUSE: the kernel answers it from its own (clean)
//!   page cache, so it persists nothing here. On a real disk it writes data but not the
//!   file size or any metadata; programs that rely on it for durability are not durable.
//! - `sync(2)`/`syncfs(2)` reach no FUSE server, so they persist nothing either.
//! - Hard links, symlinks and extended attributes are not supported (not needed by
//!   nats-server or sled). Locks (`flock`, `fcntl`) are handled by the kernel locally.
//! - One request at a time (single-threaded FUSE session, one lock over all state).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackgroundSession, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType,
    Filesystem, FopenFlags, Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// Overlay page size.
const PAGE: u64 = 4096;

/// Entry and attribute TTL: zero, so the kernel asks again every time and never serves a
/// stale size.
const TTL: Duration = Duration::ZERO;

/// How long a mount may take to show up at the mountpoint.
const MOUNT_DEADLINE: Duration = Duration::from_secs(10);

/// What failed when mounting, cutting or unmounting.
#[derive(Debug, thiserror::Error)]
pub enum LazyFsError {
    /// FUSE cannot be used on this machine (no /dev/fuse, no fusermount3, probe failed).
    #[error("FUSE is not available: {0}")]
    Unavailable(String),
    /// The backing directory or mountpoint is unusable (missing, not a directory, nested).
    #[error("bad path {0}: {1}")]
    BadPath(PathBuf, String),
    /// The FUSE mount itself failed.
    #[error("mounting the lazy filesystem failed: {0}")]
    Mount(#[source] io::Error),
    /// The mount call returned but the mountpoint never showed the new filesystem.
    #[error("the mount at {0} did not become live within {1:?}")]
    NotLive(PathBuf, Duration),
    /// The power cut could not write what [`Loss::Zeroed`] leaves on the backing files.
    #[error("power cut: {0}")]
    Cut(#[source] io::Error),
    /// Unmounting failed, even lazily.
    #[error("unmounting {0} failed: {1}")]
    Unmount(PathBuf, #[source] io::Error),
}

/// What a power cut does to the writes no fsync covered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// They are gone: each file has its last synced content and length (LazyFS's default).
    Dropped,
    /// The file sizes reached the disk but the data did not: each file has its latest length,
    /// and what it grew by since its last fsync reads as zeros (ext4 with `data=writeback`,
    /// XFS). A file created, written once and never fsynced holds zeros instead of being
    /// empty: a reader that checks a checksum calls it corrupt.
    Zeroed,
}

/// A mounted lazy filesystem. Unmounts on Drop (dropping every unsynced write).
pub struct LazyFs {
    backing: PathBuf,
    mountpoint: PathBuf,
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
    /// The mount's st_dev: names its FUSE connection (for the abort after a lazy unmount).
    dev: u64,
}

impl std::fmt::Debug for LazyFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyFs")
            .field("backing", &self.backing)
            .field("mountpoint", &self.mountpoint)
            .field("unsynced_bytes", &self.unsynced_bytes())
            .finish()
    }
}

impl LazyFs {
    /// Ok(()) when FUSE can be used here (/dev/fuse present, fusermount3 on PATH or in
    /// /usr/bin, and a probe mount works), else Err(reason) for the test to print as its skip
    /// message. The probe runs once per process.
    pub fn available() -> Result<(), String> {
        static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
        PROBE.get_or_init(probe).clone()
    }

    /// Mounts a lazy view of `backing` (an existing dir) at `mountpoint` (an existing empty
    /// dir). Returns once the mount is live.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<LazyFs, LazyFsError> {
        let canon = |p: &Path| {
            let c = p
                .canonicalize()
                .map_err(|e| LazyFsError::BadPath(p.to_path_buf(), e.to_string()))?;
            if !c.is_dir() {
                return Err(LazyFsError::BadPath(c, "not a directory".into()));
            }
            Ok(c)
        };
        let backing = canon(backing)?;
        let mountpoint = canon(mountpoint)?;
        // The server must never go through its own mount (it would wait on itself).
        if backing.starts_with(&mountpoint) || mountpoint.starts_with(&backing) {
            return Err(LazyFsError::BadPath(
                mountpoint,
                format!("backing {} and mountpoint nest", backing.display()),
            ));
        }
        let mut fs = LazyFs {
            backing,
            mountpoint,
            state: Arc::new(Mutex::new(State::new(PathBuf::new()))),
            session: None,
            dev: 0,
        };
        fs.mount_now()?;
        Ok(fs)
    }

    /// Where the lazy view is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Bytes written and not yet fsynced, over all files (diagnostics; tests use it). Counts
    /// the bytes passed to `write` since each file's last fsync (a rewrite counts again);
    /// a pending truncate alone counts zero.
    pub fn unsynced_bytes(&self) -> u64 {
        lock(&self.state)
            .nodes
            .values()
            .filter_map(|n| n.overlay.as_ref())
            .map(|o| o.written)
            .sum()
    }

    /// The power cut: unmounts (dropping every unsynced write), then mounts again at the same
    /// mountpoint with empty overlays and fresh kernel caches. The caller has killed every
    /// process that had files open first; if the unmount is busy, falls back to a lazy
    /// unmount and aborts the old FUSE connection (whatever still holds a file of the old
    /// mount gets ENOTCONN from then on, and closing it never blocks).
    pub fn power_cut(&mut self) -> Result<(), LazyFsError> {
        self.unmount_now()?;
        self.mount_now()
    }

    /// A failing disk: while `fail` holds, every fsync and fdatasync answers EIO and persists
    /// nothing (until the next power cut, which mounts a healthy disk again).
    pub fn fail_fsyncs(&self, fail: bool) {
        lock(&self.state).fail_fsync = fail;
    }

    /// A power cut that loses the unsynced writes as `loss` says ([`LazyFs::power_cut`] is
    /// `Loss::Dropped`).
    pub fn power_cut_losing(&mut self, loss: Loss) -> Result<(), LazyFsError> {
        if loss == Loss::Zeroed {
            lock(&self.state)
                .zero_unsynced()
                .map_err(LazyFsError::Cut)?;
        }
        self.power_cut()
    }

    fn mount_now(&mut self) -> Result<(), LazyFsError> {
        let before = fs::metadata(&self.mountpoint)
            .map_err(|e| LazyFsError::BadPath(self.mountpoint.clone(), e.to_string()))?
            .dev();
        let state = Arc::new(Mutex::new(State::new(self.backing.clone())));
        let server = Server {
            state: Arc::clone(&state),
        };
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("lazyfs".into()),
            MountOption::Subtype("lazyfs".into()),
            MountOption::DefaultPermissions,
        ];
        let session =
            fuser::spawn_mount(server, &self.mountpoint, &config).map_err(LazyFsError::Mount)?;
        self.state = state;
        self.session = Some(session);
        // fuser answers the kernel's INIT before spawn_mount returns, so this normally passes
        // at once; it is the check that the mountpoint really shows the new filesystem.
        let deadline = Instant::now() + MOUNT_DEADLINE;
        loop {
            if let Ok(m) = fs::metadata(&self.mountpoint) {
                if m.dev() != before {
                    self.dev = m.dev();
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                let _ = self.unmount_now();
                return Err(LazyFsError::NotLive(
                    self.mountpoint.clone(),
                    MOUNT_DEADLINE,
                ));
            }
            // A poll with a deadline: the kernel has no notification for "mount is live".
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Drops every overlay (the server answers EIO from now on), then unmounts; a busy
    /// mount is detached lazily.
    fn unmount_now(&mut self) -> Result<(), LazyFsError> {
        lock(&self.state).kill();
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        match session.umount_and_join() {
            Ok(()) => Ok(()),
            Err(first) => {
                if !is_fuse_mounted(&self.mountpoint) {
                    return Ok(());
                }
                // Busy (a file still open somewhere): detach, then abort the connection.
                // Without the abort, a file left open by *this* process (a leaked fd, a
                // `mem::forget`) deadlocks its exit: closing it sends FLUSH to the server
                // thread, which exit has already stopped. Aborted, every request on the old
                // mount fails at once (ENOTCONN) and the old session thread ends.
                let c = cstring(&self.mountpoint)
                    .map_err(|e| LazyFsError::Unmount(self.mountpoint.clone(), e))?;
                // SAFETY: c is a valid NUL-terminated path.
                if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                    let e = io::Error::last_os_error();
                    return Err(LazyFsError::Unmount(
                        self.mountpoint.clone(),
                        io::Error::new(e.kind(), format!("{first}; lazy unmount: {e}")),
                    ));
                }
                abort_connection(self.dev).map_err(|e| {
                    LazyFsError::Unmount(
                        self.mountpoint.clone(),
                        io::Error::new(
                            e.kind(),
                            format!("{first}; detached, but aborting its FUSE connection: {e}"),
                        ),
                    )
                })
            }
        }
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_now() {
            eprintln!("lazyfs: {e}");
        }
    }
}

/// Aborts the FUSE connection of the filesystem whose st_dev is `dev`, through fusectl
/// (`/sys/fs/fuse/connections/<dev>/abort`). Where fusectl is not mounted there, mounts it
/// on a private temp dir for the moment (it is one kernel-wide instance either way).
fn abort_connection(dev: u64) -> io::Result<()> {
    // fusectl names a connection by the kernel's dev_t: (major << 20) | minor.
    let id = (u64::from(libc::major(dev)) << 20) | u64::from(libc::minor(dev));
    let abort = |root: &Path| fs::write(root.join(id.to_string()).join("abort"), b"1");
    if abort(Path::new("/sys/fs/fuse/connections")).is_ok() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let target = cstring(dir.path())?;
    // SAFETY: valid NUL-terminated strings; no mount data.
    let rc = unsafe {
        libc::mount(
            c"fusectl".as_ptr(),
            target.as_ptr(),
            c"fusectl".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let res = abort(dir.path());
    // SAFETY: the path we just mounted on.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    res
}

/// Whether `path` is the root of a mount of this filesystem type (fuse.lazyfs).
fn is_fuse_mounted(path: &Path) -> bool {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let want = path.to_string_lossy();
    mounts.lines().any(|l| {
        let mut f = l.split(' ');
        let (_src, dst, ty) = (f.next(), f.next(), f.next());
        // /proc/self/mounts escapes spaces as \040; our temp paths have none.
        dst == Some(&*want) && ty.is_some_and(|t| t.starts_with("fuse"))
    })
}

fn probe() -> Result<(), String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse does not exist".into());
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").exists()));
    if !on_path && !Path::new("/usr/bin/fusermount3").exists() {
        return Err(
            "fusermount3 is not on PATH nor in /usr/bin (Debian: apt-get install fuse3)".into(),
        );
    }
    let backing = tempfile::tempdir().map_err(|e| format!("probe tempdir: {e}"))?;
    let mnt = tempfile::tempdir().map_err(|e| format!("probe tempdir: {e}"))?;
    let fs = LazyFs::mount(backing.path(), mnt.path()).map_err(|e| format!("probe mount: {e}"))?;
    let file = fs.mountpoint().join("probe");
    fs::write(&file, b"probe").map_err(|e| format!("probe write: {e}"))?;
    let back = fs::read(&file).map_err(|e| format!("probe read: {e}"))?;
    if back != b"probe" {
        return Err(format!("probe read back {back:?}"));
    }
    drop(fs);
    Ok(())
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn last_err() -> Errno {
    Errno::from(io::Error::last_os_error())
}

/// Reads `buf.len()` bytes at `off`, or fewer at end of file; the rest of `buf` is zeroed.
fn pread_full(file: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[done..].fill(0);
    Ok(done)
}

/// Unsynced data of one file.
struct Overlay {
    /// Page index -> page content. Bytes at or past `size` are always zero.
    pages: BTreeMap<u64, Box<[u8]>>,
    /// Logical size.
    size: u64,
    /// Backing bytes at or past this offset are dead (truncated away since the last sync);
    /// never above the backing length, never above `size`.
    floor: u64,
    /// Backing length when the overlay started.
    base_len: u64,
    /// Bytes passed to write since the last sync.
    written: u64,
}

impl Overlay {
    fn new(base_len: u64) -> Self {
        Overlay {
            pages: BTreeMap::new(),
            size: base_len,
            floor: base_len,
            base_len,
            written: 0,
        }
    }

    /// The underlying (non-overlay) content of `[off, off + buf.len())`.
    fn fill_from_backing(&self, file: &File, off: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        if off < self.floor {
            let n = (self.floor - off).min(buf.len() as u64) as usize;
            pread_full(file, &mut buf[..n], off)?;
        }
        Ok(())
    }

    fn read(&self, file: &File, off: u64, len: u64) -> io::Result<Vec<u8>> {
        if off >= self.size {
            return Ok(Vec::new());
        }
        let end = self.size.min(off.saturating_add(len));
        let mut out = vec![0u8; (end - off) as usize];
        let mut pos = off;
        while pos < end {
            let idx = pos / PAGE;
            let at = (pos - off) as usize;
            if let Some(page) = self.pages.get(&idx) {
                let in_page = (pos - idx * PAGE) as usize;
                let n = ((PAGE as usize) - in_page).min((end - pos) as usize);
                out[at..at + n].copy_from_slice(&page[in_page..in_page + n]);
                pos += n as u64;
            } else {
                // A run of pages not in the overlay: one read from the backing file.
                let next = self
                    .pages
                    .range(idx + 1..)
                    .next()
                    .map_or(u64::MAX, |(&i, _)| i * PAGE);
                let run_end = end.min(next);
                let n = (run_end - pos) as usize;
                self.fill_from_backing(file, pos, &mut out[at..at + n])?;
                pos = run_end;
            }
        }
        Ok(out)
    }

    fn write(&mut self, file: &File, off: u64, data: &[u8]) -> io::Result<()> {
        let end = off + data.len() as u64;
        let mut pos = off;
        while pos < end {
            let idx = pos / PAGE;
            let in_page = (pos - idx * PAGE) as usize;
            let n = ((PAGE as usize) - in_page).min((end - pos) as usize);
            if !self.pages.contains_key(&idx) {
                let mut page = vec![0u8; PAGE as usize].into_boxed_slice();
                if n < PAGE as usize {
                    self.fill_from_backing(file, idx * PAGE, &mut page)?;
                }
                self.pages.insert(idx, page);
            }
            let page = self.pages.get_mut(&idx).expect("page just inserted");
            let from = (pos - off) as usize;
            page[in_page..in_page + n].copy_from_slice(&data[from..from + n]);
            pos += n as u64;
        }
        self.size = self.size.max(end);
        self.written += data.len() as u64;
        Ok(())
    }

    fn set_size(&mut self, size: u64) {
        if size < self.size {
            drop(self.pages.split_off(&size.div_ceil(PAGE)));
            let in_page = (size % PAGE) as usize;
            if in_page != 0 {
                if let Some(page) = self.pages.get_mut(&(size / PAGE)) {
                    page[in_page..].fill(0);
                }
            }
            self.floor = self.floor.min(size);
        }
        self.size = size;
    }

    /// Writes the overlay into the backing file (not synced yet).
    fn apply(&self, file: &File) -> io::Result<()> {
        if self.floor < self.base_len {
            file.set_len(self.floor)?;
        }
        for (&idx, page) in &self.pages {
            let start = idx * PAGE;
            if start >= self.size {
                break;
            }
            let n = (self.size - start).min(PAGE) as usize;
            file.write_all_at(&page[..n], start)?;
        }
        if file.metadata()?.len() != self.size {
            file.set_len(self.size)?;
        }
        Ok(())
    }
}

/// One inode the kernel knows about (or that still has unsynced data).
struct Node {
    /// Relative to the backing root ("" for the root); None once unlinked.
    path: Option<PathBuf>,
    kind: FileType,
    /// Kernel lookup count.
    lookups: u64,
    /// Open file handles.
    opens: u64,
    /// The backing file while open (regular files).
    file: Option<File>,
    /// Whether `file` was opened for writing.
    writable: bool,
    overlay: Option<Overlay>,
}

struct State {
    backing: PathBuf,
    nodes: HashMap<u64, Node>,
    by_path: HashMap<PathBuf, u64>,
    next_ino: u64,
    next_fh: u64,
    /// Directory handle -> (ino, kind, name) snapshot, taken at opendir and at offset 0.
    dirs: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    /// Set by the power cut: every request fails with EIO.
    dead: bool,
    /// Set by [`LazyFs::fail_fsyncs`]: every fsync answers EIO and persists nothing (a failing
    /// disk).
    fail_fsync: bool,
}

type Res<T> = Result<T, Errno>;

impl State {
    fn new(backing: PathBuf) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            1,
            Node {
                path: Some(PathBuf::new()),
                kind: FileType::Directory,
                lookups: 1,
                opens: 0,
                file: None,
                writable: false,
                overlay: None,
            },
        );
        let mut by_path = HashMap::new();
        by_path.insert(PathBuf::new(), 1);
        State {
            backing,
            nodes,
            by_path,
            next_ino: 2,
            next_fh: 1,
            dirs: HashMap::new(),
            dead: false,
            fail_fsync: false,
        }
    }

    /// The power cut: forget everything unsynced, close every backing handle.
    /// For [`Loss::Zeroed`]: gives each reachable file's backing file its unsynced length,
    /// the bytes past its synced length being zeros (what a journal that committed the size
    /// but not the data leaves). Bytes overwritten inside the synced length keep their synced
    /// content, as with `Loss::Dropped`. Unlinked files are gone anyway.
    fn zero_unsynced(&self) -> io::Result<()> {
        for node in self.nodes.values() {
            let (Some(rel), Some(o)) = (&node.path, &node.overlay) else {
                continue;
            };
            let file = OpenOptions::new()
                .write(true)
                .open(self.backing.join(rel))?;
            if o.floor < o.base_len {
                file.set_len(o.floor)?;
            }
            file.set_len(o.size)?;
            file.sync_all()?;
        }
        Ok(())
    }

    fn kill(&mut self) {
        self.dead = true;
        self.nodes.clear();
        self.by_path.clear();
        self.dirs.clear();
    }

    fn alive(&self) -> Res<()> {
        if self.dead {
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }

    fn node(&self, ino: INodeNo) -> Res<&Node> {
        self.nodes.get(&ino.0).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: INodeNo) -> Res<&mut Node> {
        self.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)
    }

    fn rel(&self, ino: INodeNo) -> Res<PathBuf> {
        self.node(ino)?.path.clone().ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Res<PathBuf> {
        Ok(self.rel(parent)?.join(name))
    }

    fn full(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.backing.clone()
        } else {
            self.backing.join(rel)
        }
    }

    fn next_fh(&mut self) -> u64 {
        self.next_fh += 1;
        self.next_fh
    }

    /// The node for `rel`, made if new, with one more kernel lookup.
    fn remember(&mut self, rel: PathBuf, kind: FileType) -> u64 {
        let ino = match self.by_path.get(&rel) {
            Some(&ino) => ino,
            None => {
                let ino = self.next_ino;
                self.next_ino += 1;
                self.by_path.insert(rel.clone(), ino);
                self.nodes.insert(
                    ino,
                    Node {
                        path: Some(rel),
                        kind,
                        lookups: 0,
                        opens: 0,
                        file: None,
                        writable: false,
                        overlay: None,
                    },
                );
                ino
            }
        };
        self.nodes.get_mut(&ino).expect("node exists").lookups += 1;
        ino
    }

    /// Drops a node nobody can reach any more. A linked node with unsynced data stays, so
    /// that the next lookup finds its overlay.
    fn maybe_drop(&mut self, ino: u64) {
        if ino == 1 {
            return;
        }
        let Some(n) = self.nodes.get(&ino) else {
            return;
        };
        if n.lookups == 0 && n.opens == 0 && (n.path.is_none() || n.overlay.is_none()) {
            let n = self.nodes.remove(&ino).expect("node exists");
            if let Some(p) = n.path {
                if self.by_path.get(&p) == Some(&ino) {
                    self.by_path.remove(&p);
                }
            }
        }
    }

    fn attr(&self, ino: u64) -> Res<FileAttr> {
        let n = self.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        let md = match (&n.file, &n.path) {
            (Some(f), _) => f.metadata(),
            (None, Some(p)) => fs::symlink_metadata(self.full(p)),
            (None, None) => return Err(Errno::ENOENT),
        }
        .map_err(Errno::from)?;
        Ok(file_attr(ino, &md, n.overlay.as_ref()))
    }

    /// Paths that have nodes: `rel` alone, or (`tree`) `rel` and everything under it. Only
    /// a directory rename needs the tree, which costs a scan of every known path.
    fn subtree(&self, rel: &Path, tree: bool) -> Vec<PathBuf> {
        if !tree {
            return self
                .by_path
                .get_key_value(rel)
                .map(|(k, _)| k.clone())
                .into_iter()
                .collect();
        }
        self.by_path
            .keys()
            .filter(|k| k.starts_with(rel))
            .cloned()
            .collect()
    }

    /// `rel` no longer has a name (a file, or an empty directory: nothing under it).
    fn detach(&mut self, rel: &Path) {
        for p in self.subtree(rel, false) {
            let ino = self.by_path.remove(&p).expect("listed path");
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.path = None;
                if n.opens == 0 {
                    n.overlay = None;
                }
            }
            self.maybe_drop(ino);
        }
    }

    /// Moves the name `from` (and, for a directory, the names under it) to `to`.
    fn move_tree(&mut self, from: &Path, to: &Path, tree: bool) {
        let moved: Vec<(PathBuf, u64)> = self
            .subtree(from, tree)
            .into_iter()
            .map(|p| {
                let ino = self.by_path.remove(&p).expect("listed path");
                (p, ino)
            })
            .collect();
        for (p, ino) in moved {
            let rest = p.strip_prefix(from).expect("under from");
            let new = if rest.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(rest)
            };
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.path = Some(new.clone());
            }
            self.by_path.insert(new, ino);
        }
    }

    /// Makes sure a regular file node has an open backing handle.
    fn open_backing(&mut self, ino: INodeNo, acc: i32) -> Res<()> {
        let full = {
            let n = self.node(ino)?;
            if n.file.is_some() {
                return Ok(());
            }
            self.full(n.path.as_ref().ok_or(Errno::ENOENT)?)
        };
        let (file, writable) = match OpenOptions::new().read(true).write(true).open(&full) {
            Ok(f) => (f, true),
            // Read-only opens of a file root cannot write (e.g. ETXTBSY): read only.
            Err(_) if acc == libc::O_RDONLY => (File::open(&full).map_err(Errno::from)?, false),
            Err(e) => return Err(e.into()),
        };
        let n = self.node_mut(ino)?;
        n.file = Some(file);
        n.writable = writable;
        Ok(())
    }

    fn overlay_mut(&mut self, ino: INodeNo) -> Res<&mut Overlay> {
        let base = {
            let n = self.node(ino)?;
            if n.overlay.is_none() {
                match (&n.file, &n.path) {
                    (Some(f), _) => f.metadata().map_err(Errno::from)?.len(),
                    (None, Some(p)) => fs::symlink_metadata(self.full(p))
                        .map_err(Errno::from)?
                        .len(),
                    (None, None) => return Err(Errno::ENOENT),
                }
            } else {
                0
            }
        };
        Ok(self
            .node_mut(ino)?
            .overlay
            .get_or_insert_with(|| Overlay::new(base)))
    }

    fn fsync(&mut self, ino: INodeNo, datasync: bool) -> Res<()> {
        if self.fail_fsync {
            return Err(Errno::EIO);
        }
        let n = self.node(ino)?;
        let reopened;
        let file = match (&n.file, n.writable, &n.path) {
            (Some(f), true, _) => f,
            (_, _, Some(p)) => {
                reopened = OpenOptions::new()
                    .write(true)
                    .open(self.full(p))
                    .map_err(Errno::from)?;
                &reopened
            }
            (Some(f), false, None) => f,
            (None, _, None) => return Err(Errno::ENOENT),
        };
        if let Some(o) = &n.overlay {
            o.apply(file).map_err(Errno::from)?;
        }
        if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        }
        .map_err(Errno::from)?;
        self.node_mut(ino)?.overlay = None;
        Ok(())
    }

    fn list_dir(&self, ino: INodeNo) -> Res<Vec<(u64, FileType, OsString)>> {
        let rel = self.rel(ino)?;
        let parent = match rel.parent() {
            Some(p) => self.by_path.get(p).copied().unwrap_or(1),
            None => 1,
        };
        let mut out = vec![
            (ino.0, FileType::Directory, OsString::from(".")),
            (parent, FileType::Directory, OsString::from("..")),
        ];
        for e in fs::read_dir(self.full(&rel)).map_err(Errno::from)? {
            let e = e.map_err(Errno::from)?;
            let kind = e
                .file_type()
                .ok()
                .and_then(FileType::from_std)
                .unwrap_or(FileType::RegularFile);
            let name = e.file_name();
            let known = self.by_path.get(&rel.join(&name)).copied();
            let d_ino = std::os::unix::fs::DirEntryExt::ino(&e).max(2);
            out.push((known.unwrap_or(d_ino), kind, name));
        }
        Ok(out)
    }
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs as u64)
    }
}

fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn file_attr(ino: u64, md: &fs::Metadata, overlay: Option<&Overlay>) -> FileAttr {
    let (size, blocks) = match overlay {
        Some(o) => (o.size, o.size.div_ceil(512).max(md.blocks())),
        None => (md.size(), md.blocks()),
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks,
        atime: system_time(md.atime(), md.atime_nsec()),
        mtime: system_time(md.mtime(), md.mtime_nsec()),
        ctime: system_time(md.ctime(), md.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: kind_of(md.mode()),
        perm: (md.mode() & 0o7777) as u16,
        nlink: md.nlink() as u32,
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev() as u32,
        blksize: PAGE as u32,
        flags: 0,
    }
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            }
        }
    }
}

/// Gives a newly made file or directory to the caller, as a kernel filesystem would.
fn chown_to_caller(path: &Path, req: &Request) {
    // SAFETY: geteuid and getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if req.uid() != uid || req.gid() != gid {
        let _ = std::os::unix::fs::lchown(path, Some(req.uid()), Some(req.gid()));
    }
}

/// The FUSE side: every request takes the one lock over [`State`].
struct Server {
    state: Arc<Mutex<State>>,
}

impl Server {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> Res<T>) -> Res<T> {
        let mut st = lock(&self.state);
        st.alive()?;
        f(&mut st)
    }

    /// mknod and mkdir: creates `name` in the backing directory with `create` (which says what
    /// it made), gives it to the caller, and answers with its new entry.
    fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEntry,
        create: impl FnOnce(&Path) -> Res<FileType>,
    ) {
        let res = self.with(|st| {
            let rel = st.child(parent, name)?;
            let full = st.full(&rel);
            let kind = create(&full)?;
            chown_to_caller(&full, req);
            let ino = st.remember(rel, kind);
            st.attr(ino)
        });
        match res {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    /// unlink and rmdir: removes `name` from the backing directory with `remove`, then forgets
    /// its path (an open file keeps its inode and overlay).
    fn remove(
        &self,
        parent: INodeNo,
        name: &OsStr,
        remove: fn(&Path) -> io::Result<()>,
        reply: ReplyEmpty,
    ) {
        match self.with(|st| {
            let rel = st.child(parent, name)?;
            remove(&st.full(&rel)).map_err(Errno::from)?;
            st.detach(&rel);
            Ok(())
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for Server {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.with(|st| {
            let rel = st.child(parent, name)?;
            let md = fs::symlink_metadata(st.full(&rel)).map_err(Errno::from)?;
            let ino = st.remember(rel, kind_of(md.mode()));
            let n = st.nodes.get(&ino).expect("remembered");
            Ok(file_attr(ino, &md, n.overlay.as_ref()))
        }) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut st = lock(&self.state);
        if st.dead {
            return;
        }
        if let Some(n) = st.nodes.get_mut(&ino.0) {
            n.lookups = n.lookups.saturating_sub(nlookup);
        }
        st.maybe_drop(ino.0);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(|st| st.attr(ino.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let res = self.with(|st| {
            let n = st.node(ino)?;
            let full = n.path.as_ref().map(|p| st.full(p));
            // Metadata: straight to the backing file (through the open handle if unlinked).
            if let Some(mode) = mode {
                let perm = fs::Permissions::from_mode(mode & 0o7777);
                match (&n.file, &full) {
                    (Some(f), _) => f.set_permissions(perm),
                    (None, Some(p)) => fs::set_permissions(p, perm),
                    (None, None) => return Err(Errno::ENOENT),
                }
                .map_err(Errno::from)?;
            }
            if uid.is_some() || gid.is_some() {
                match (&n.file, &full) {
                    (Some(f), _) => std::os::unix::fs::fchown(f, uid, gid),
                    (None, Some(p)) => std::os::unix::fs::lchown(p, uid, gid),
                    (None, None) => return Err(Errno::ENOENT),
                }
                .map_err(Errno::from)?;
            }
            if atime.is_some() || mtime.is_some() {
                let times = [timespec(atime), timespec(mtime)];
                let rc = match (&n.file, &full) {
                    // SAFETY: a valid fd and a two-element timespec array.
                    (Some(f), _) => unsafe {
                        libc::futimens(std::os::fd::AsRawFd::as_raw_fd(f), times.as_ptr())
                    },
                    (None, Some(p)) => {
                        let c = cstring(p).map_err(Errno::from)?;
                        // SAFETY: a valid path and a two-element timespec array.
                        unsafe {
                            libc::utimensat(
                                libc::AT_FDCWD,
                                c.as_ptr(),
                                times.as_ptr(),
                                libc::AT_SYMLINK_NOFOLLOW,
                            )
                        }
                    }
                    (None, None) => return Err(Errno::ENOENT),
                };
                if rc != 0 {
                    return Err(last_err());
                }
            }
            // Data: the size change is lazy.
            if let Some(size) = size {
                if n.kind == FileType::Directory {
                    return Err(Errno::EISDIR);
                }
                st.overlay_mut(ino)?.set_size(size);
            }
            st.attr(ino.0)
        });
        match res {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let perm = mode & !umask & 0o7777;
        self.make(req, parent, name, reply, |full| {
            if mode & libc::S_IFMT == libc::S_IFREG || mode & libc::S_IFMT == 0 {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(perm)
                    .open(full)
                    .map_err(Errno::from)?;
            } else {
                let c = cstring(full).map_err(Errno::from)?;
                // SAFETY: a valid path.
                if unsafe { libc::mknod(c.as_ptr(), (mode & libc::S_IFMT) | perm, rdev.into()) }
                    != 0
                {
                    return Err(last_err());
                }
            }
            let md = fs::symlink_metadata(full).map_err(Errno::from)?;
            Ok(kind_of(md.mode()))
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.make(req, parent, name, reply, |full| {
            fs::DirBuilder::new()
                .mode(mode & !umask & 0o7777)
                .create(full)
                .map_err(Errno::from)?;
            Ok(FileType::Directory)
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, |p| fs::remove_file(p), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, |p| fs::remove_dir(p), reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.with(|st| {
            let from = st.child(parent, name)?;
            let to = st.child(newparent, newname)?;
            if flags.is_empty() {
                fs::rename(st.full(&from), st.full(&to)).map_err(Errno::from)?;
            } else {
                let (a, b) = (
                    cstring(&st.full(&from)).map_err(Errno::from)?,
                    cstring(&st.full(&to)).map_err(Errno::from)?,
                );
                // SAFETY: valid paths; renameat2 with the kernel's own flags.
                let rc = unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        flags.bits(),
                    )
                };
                if rc != 0 {
                    return Err(last_err());
                }
            }
            if from == to {
                return Ok(());
            }
            if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                // Not a real path: a key no file name can produce.
                let tmp = PathBuf::from(format!("\0lazyfs-exchange-{}", st.next_fh()));
                st.move_tree(&to, &tmp, true);
                st.move_tree(&from, &to, true);
                st.move_tree(&tmp, &from, true);
            } else {
                // What was at `to` is gone: a file, or an empty directory.
                st.detach(&to);
                let is_dir = fs::symlink_metadata(st.full(&to)).is_ok_and(|m| m.is_dir());
                st.move_tree(&from, &to, is_dir);
            }
            Ok(())
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|st| {
            if st.node(ino)?.kind == FileType::Directory {
                return Err(Errno::EISDIR);
            }
            st.open_backing(ino, flags.0 & libc::O_ACCMODE)?;
            st.node_mut(ino)?.opens += 1;
            if flags.0 & libc::O_TRUNC != 0 {
                st.overlay_mut(ino)?.set_size(0);
            }
            Ok(st.next_fh())
        }) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.with(|st| {
            let n = st.node(ino)?;
            let file = n.file.as_ref().ok_or(Errno::EBADF)?;
            match &n.overlay {
                Some(o) => o.read(file, offset, u64::from(size)).map_err(Errno::from),
                None => {
                    let mut buf = vec![0u8; size as usize];
                    let got = pread_full(file, &mut buf, offset).map_err(Errno::from)?;
                    buf.truncate(got);
                    Ok(buf)
                }
            }
        }) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.with(|st| {
            st.overlay_mut(ino)?;
            let n = st.node_mut(ino)?;
            let file = n.file.as_ref().ok_or(Errno::EBADF)?;
            let o = n.overlay.as_mut().expect("overlay made above");
            o.write(file, offset, data).map_err(Errno::from)
        }) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) is not a durability point: nothing is persisted here.
        match self.with(|_| Ok(())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Nothing is persisted here either; the overlay stays with the inode.
        let mut st = lock(&self.state);
        if !st.dead {
            if let Some(n) = st.nodes.get_mut(&ino.0) {
                n.opens = n.opens.saturating_sub(1);
                if n.opens == 0 {
                    n.file = None;
                    if n.path.is_none() {
                        n.overlay = None;
                    }
                }
            }
            st.maybe_drop(ino.0);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.with(|st| st.fsync(ino, datasync)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|st| {
            let list = st.list_dir(ino)?;
            let fh = st.next_fh();
            st.dirs.insert(fh, list);
            Ok(fh)
        }) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let res = self.with(|st| {
            if offset == 0 {
                // A (re)start from the beginning sees the directory as it is now.
                let list = st.list_dir(ino)?;
                st.dirs.insert(fh.0, list);
            }
            let list = st.dirs.get(&fh.0).ok_or(Errno::EBADF)?;
            for (i, (ino, kind, name)) in list.iter().enumerate().skip(offset as usize) {
                if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                    break;
                }
            }
            Ok(())
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.state).dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Metadata already went to the backing directory.
        match self.with(|_| Ok(())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.with(|st| {
            let c = cstring(&st.backing).map_err(Errno::from)?;
            // SAFETY: zeroed statvfs is a valid out-parameter; c is a valid path.
            let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
            if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
                return Err(last_err());
            }
            Ok(s)
        }) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.with(|st| {
            let n = st.node(ino)?;
            let Some(p) = &n.path else {
                return if n.file.is_some() {
                    Ok(())
                } else {
                    Err(Errno::ENOENT)
                };
            };
            let c = cstring(&st.full(p)).map_err(Errno::from)?;
            // SAFETY: a valid path.
            if unsafe { libc::access(c.as_ptr(), mask.bits()) } != 0 {
                return Err(last_err());
            }
            Ok(())
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let res = self.with(|st| {
            let rel = st.child(parent, name)?;
            let full = st.full(&rel);
            let existed = fs::symlink_metadata(&full).is_ok();
            let mut opts = OpenOptions::new();
            opts.read(true)
                .write(true)
                .create(true)
                .mode(mode & !umask & 0o7777);
            if flags & libc::O_EXCL != 0 {
                opts.create_new(true);
            }
            // Never O_TRUNC on the backing file: a truncate is data, kept in the overlay.
            let file = opts.open(&full).map_err(Errno::from)?;
            if !existed {
                chown_to_caller(&full, req);
            }
            let ino = st.remember(rel, FileType::RegularFile);
            let n = st.nodes.get_mut(&ino).expect("remembered");
            if n.file.is_none() || !n.writable {
                n.file = Some(file);
                n.writable = true;
            }
            n.opens += 1;
            if existed && flags & libc::O_TRUNC != 0 {
                st.overlay_mut(INodeNo(ino))?.set_size(0);
            }
            let attr = st.attr(ino)?;
            Ok((attr, st.next_fh()))
        });
        match res {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.with(|st| {
            if mode != 0 {
                return Err(Errno::EOPNOTSUPP);
            }
            let o = st.overlay_mut(ino)?;
            let end = offset.saturating_add(length);
            if end > o.size {
                o.set_size(end);
            }
            Ok(())
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
