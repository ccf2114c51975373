//! The power-loss filesystem ([`LazyFs`]): what survives a cut and what does not.
//!
//! Each test mounts a lazy view of one temp dir at another and works through the mountpoint
//! with std::fs. Without FUSE (no /dev/fuse, no fusermount3, no permission to mount) every
//! test prints why and returns: it is skipped, never faked.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use tempfile::TempDir;
use testkit::{LazyFs, Loss};

/// A backing dir, a mountpoint and the mount. Field order matters: the mount is dropped
/// (unmounted) before the dirs are removed.
struct Fixture {
    fs: LazyFs,
    backing: TempDir,
    _mnt: TempDir,
}

impl Fixture {
    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.fs.mountpoint().join(rel)
    }
}

/// The fixture, or None (after printing why) when FUSE cannot be used here.
fn mount() -> Option<Fixture> {
    if let Err(why) = LazyFs::available() {
        eprintln!("skipped: {why}");
        return None;
    }
    let backing = tempfile::tempdir().expect("backing dir");
    let mnt = tempfile::tempdir().expect("mountpoint");
    let fs = LazyFs::mount(backing.path(), mnt.path()).expect("mount lazyfs");
    Some(Fixture {
        fs,
        backing,
        _mnt: mnt,
    })
}

fn len(p: &Path) -> u64 {
    fs::metadata(p).expect("stat").len()
}

#[test]
fn unsynced_write_is_readable_then_lost_on_cut() {
    let Some(mut fx) = mount() else { return };
    let p = fx.path("data");
    fs::write(&p, b"hello, lazy world").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"hello, lazy world");
    assert_eq!(len(&p), 17);
    // The backing file exists (create is metadata) but holds nothing yet.
    assert_eq!(len(&fx.backing.path().join("data")), 0);

    fx.fs.power_cut().unwrap();
    assert!(p.exists(), "a created file survives the cut");
    assert_eq!(len(&p), 0);
    assert_eq!(fs::read(&p).unwrap(), b"");
}

#[test]
fn synced_write_survives_and_later_append_does_not() {
    let Some(mut fx) = mount() else { return };
    for (name, data_only) in [("all", false), ("data", true)] {
        let p = fx.path(name);
        let mut f = File::create(&p).unwrap();
        f.write_all(b"durable ").unwrap();
        if data_only {
            f.sync_data().unwrap();
        } else {
            f.sync_all().unwrap();
        }
        f.write_all(b"and not").unwrap();
        drop(f);
        assert_eq!(fs::read(&p).unwrap(), b"durable and not");
    }
    fx.fs.power_cut().unwrap();
    for name in ["all", "data"] {
        assert_eq!(fs::read(fx.path(name)).unwrap(), b"durable ", "{name}");
    }
}

#[test]
fn a_zeroing_cut_keeps_the_new_lengths_with_zeros_past_what_was_synced() {
    let Some(mut fx) = mount() else { return };
    // A log: a synced prefix, then an overwrite inside it and an append, neither synced.
    let log = fx.path("log");
    let mut f = File::create(&log).unwrap();
    f.write_all(b"synced!!").unwrap();
    f.sync_data().unwrap();
    f.write_all_at(b"XX", 0).unwrap();
    f.write_all(b"appended").unwrap();
    drop(f);
    // A config written once and never fsynced, as sled writes its `conf`.
    let conf = fx.path("conf");
    fs::write(&conf, b"segment size + crc").unwrap();

    fx.fs.power_cut_losing(Loss::Zeroed).unwrap();
    // The synced bytes are kept (the overwrite is lost); what the file grew by is zeros.
    let mut want = b"synced!!".to_vec();
    want.extend([0u8; 8]);
    assert_eq!(fs::read(&log).unwrap(), want);
    assert_eq!(fs::read(&conf).unwrap(), vec![0u8; 18], "a config of zeros");
    assert_eq!(fx.fs.unsynced_bytes(), 0);
}

#[test]
fn hole_reads_zeros_before_and_after_sync() {
    let Some(mut fx) = mount() else { return };
    let p = fx.path("holey");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(b"tail", 10_000).unwrap();
    let mut want = vec![0u8; 10_004];
    want[..4].copy_from_slice(b"head");
    want[10_000..].copy_from_slice(b"tail");
    assert_eq!(fs::read(&p).unwrap(), want);
    f.sync_all().unwrap();
    assert_eq!(fs::read(&p).unwrap(), want);
    drop(f);
    fx.fs.power_cut().unwrap();
    assert_eq!(fs::read(&p).unwrap(), want);
}

#[test]
fn truncate_then_grow_reads_zeros_and_unsynced_truncate_is_undone() {
    let Some(mut fx) = mount() else { return };
    let p = fx.path("t");
    let big: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8 + 1).collect();
    {
        let mut f = File::create(&p).unwrap();
        f.write_all(&big).unwrap();
        f.sync_all().unwrap();
    }
    let mut want = big[..5_000].to_vec();
    want.resize(20_000, 0);
    {
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(5_000).unwrap();
        f.set_len(20_000).unwrap();
        // The grown part is zeros, not the old backing bytes.
        assert_eq!(fs::read(&p).unwrap(), want);
        f.sync_all().unwrap();
    }
    fx.fs.power_cut().unwrap();
    assert_eq!(fs::read(&p).unwrap(), want);

    // An unsynced shrink is undone by the cut.
    {
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(100).unwrap();
        assert_eq!(len(&p), 100);
    }
    fx.fs.power_cut().unwrap();
    assert_eq!(len(&p), 20_000);
    assert_eq!(fs::read(&p).unwrap(), want);
}

#[test]
fn rename_keeps_what_was_synced() {
    let Some(mut fx) = mount() else { return };
    // Synced, then renamed into place: survives under the new name.
    {
        let mut f = File::create(fx.path("a.tmp")).unwrap();
        f.write_all(b"config a").unwrap();
        f.sync_all().unwrap();
    }
    fs::rename(fx.path("a.tmp"), fx.path("a")).unwrap();
    // Not synced, renamed into place: the name survives (metadata), the data does not.
    fs::write(fx.path("b.tmp"), b"config b").unwrap();
    fs::rename(fx.path("b.tmp"), fx.path("b")).unwrap();
    assert_eq!(fs::read(fx.path("b")).unwrap(), b"config b");
    // Over an existing (synced) file: the old content is gone at once (metadata), and the
    // new content was synced after the rename, through the new name.
    {
        let mut f = File::create(fx.path("c")).unwrap();
        f.write_all(b"old c").unwrap();
        f.sync_all().unwrap();
    }
    let mut f = File::create(fx.path("c.tmp")).unwrap();
    f.write_all(b"new c").unwrap();
    fs::rename(fx.path("c.tmp"), fx.path("c")).unwrap();
    assert_eq!(fs::read(fx.path("c")).unwrap(), b"new c");
    // The open handle still reaches the renamed inode's unsynced data.
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(
        fx.fs.unsynced_bytes(),
        b"config b".len() as u64,
        "only b is unsynced"
    );

    fx.fs.power_cut().unwrap();
    assert_eq!(fs::read(fx.path("a")).unwrap(), b"config a");
    assert!(!fx.path("a.tmp").exists());
    assert!(fx.path("b").exists());
    assert_eq!(len(&fx.path("b")), 0);
    assert!(!fx.path("b.tmp").exists());
    assert_eq!(fs::read(fx.path("c")).unwrap(), b"new c");
}

#[test]
fn directories() {
    let Some(mut fx) = mount() else { return };
    fs::create_dir(fx.path("d")).unwrap();
    fs::create_dir_all(fx.path("d/e/f")).unwrap();
    fs::write(fx.path("d/x"), b"x").unwrap();
    fs::write(fx.path("d/e/y"), b"y").unwrap();
    File::open(fx.path("d/e/y")).unwrap().sync_all().unwrap();
    let mnt = fx.fs.mountpoint().to_path_buf();
    let names = |rel: &str| {
        let mut v: Vec<String> = fs::read_dir(mnt.join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("d"), ["e", "x"]);
    assert_eq!(names("d/e"), ["f", "y"]);

    // Renaming a directory carries what is under it, including unsynced data.
    fs::write(fx.path("d/e/f/z"), b"unsynced z").unwrap();
    fs::rename(fx.path("d/e"), fx.path("d/g")).unwrap();
    assert_eq!(fs::read(fx.path("d/g/f/z")).unwrap(), b"unsynced z");
    assert_eq!(fs::read(fx.path("d/g/y")).unwrap(), b"y");
    File::open(fx.path("d/g/f/z")).unwrap().sync_data().unwrap();

    fs::remove_file(fx.path("d/x")).unwrap();
    assert_eq!(names("d"), ["g"]);
    fs::create_dir(fx.path("d/empty")).unwrap();
    fs::remove_dir(fx.path("d/empty")).unwrap();
    assert!(fs::remove_dir(fx.path("d/g")).is_err(), "not empty");

    // `.` and `..` are listed too (read_dir hides them; ask the kernel directly).
    let raw = list_raw(&fx.path("d"));
    assert!(raw.contains(&".".to_string()) && raw.contains(&"..".to_string()));

    fx.fs.power_cut().unwrap();
    assert_eq!(names("d"), ["g"]);
    assert_eq!(fs::read(fx.path("d/g/f/z")).unwrap(), b"unsynced z");
    assert_eq!(fs::read(fx.path("d/g/y")).unwrap(), b"y");
    fs::remove_dir_all(fx.path("d")).unwrap();
    assert!(!fx.backing.path().join("d").exists());
}

/// Directory entry names as the kernel returns them, `.` and `..` included.
fn list_raw(dir: &Path) -> Vec<String> {
    use std::ffi::{CStr, CString};
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mut out = Vec::new();
    // SAFETY: a valid path; entries are read until readdir returns null, then closed.
    unsafe {
        let d = libc::opendir(c.as_ptr());
        assert!(!d.is_null());
        loop {
            let e = libc::readdir(d);
            if e.is_null() {
                break;
            }
            out.push(
                CStr::from_ptr((*e).d_name.as_ptr())
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        libc::closedir(d);
    }
    out
}

#[test]
fn unsynced_bytes_counts_writes_until_fsync() {
    let Some(fx) = mount() else { return };
    assert_eq!(fx.fs.unsynced_bytes(), 0);
    let mut f = File::create(fx.path("u")).unwrap();
    f.write_all(&[7u8; 1000]).unwrap();
    assert_eq!(fx.fs.unsynced_bytes(), 1000);
    f.write_all(&[8u8; 500]).unwrap();
    assert_eq!(fx.fs.unsynced_bytes(), 1500);
    // Closing is not syncing.
    drop(f);
    assert_eq!(fx.fs.unsynced_bytes(), 1500);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(fx.path("u"))
        .unwrap();
    f.sync_all().unwrap();
    assert_eq!(fx.fs.unsynced_bytes(), 0);
    let mut back = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), 1500);
    assert_eq!(len(&fx.backing.path().join("u")), 1500);
}

/// sled 0.34.7 on the lazy filesystem.
///
/// What sled does (read from its source, and seen here):
/// - `Db::flush` writes the log with `pwrite` and makes it "durable" with
///   `sync_file_range(2)`, not fsync. Through FUSE, sync_file_range never reaches the
///   filesystem (the kernel answers it from its own page cache, which holds no dirty data
///   here), so it persists nothing. On a real disk it would write the data but not the file
///   size or other metadata, so an append past the old end of `db` is not durable either.
/// - The `conf` file is written once, at creation, and never fsynced.
/// - The fsyncs sled does make: the background flusher's periodic `sync_all` of `db` (every
///   `flush_every_ms`, default 500 ms; switched off here so the outcome does not depend on
///   timing), a snapshot's `sync_all` before its rename, segment truncation, and `Log`'s
///   Drop, which fsyncs `db` on a clean close. A crashed process runs no Drop: the test
///   stands in for a kill -9 with `mem::forget(db)`, which runs none of sled's Drop code and
///   leaves its file open (so the cut falls back to a lazy unmount).
#[test]
fn sled_flush_alone_does_not_survive_a_cut_but_fsync_does() {
    let Some(mut fx) = mount() else { return };
    let open = |dir: &Path| {
        sled::Config::new()
            .path(dir)
            .flush_every_ms(None)
            .open()
            .expect("open sled")
    };
    let fill = |db: &sled::Db| {
        for i in 0..100u32 {
            db.insert(i.to_be_bytes(), vec![i as u8; 100]).unwrap();
        }
        db.flush().unwrap();
    };
    let all_there = |db: &sled::Db| {
        db.len() == 100
            && (0..100u32).all(|i| {
                db.get(i.to_be_bytes()).unwrap().as_deref() == Some(&vec![i as u8; 100][..])
            })
    };

    // 1. Insert, db.flush(), crash (no Drop), cut: everything is lost.
    let dir = fx.path("crashed");
    let db = open(&dir);
    fill(&db);
    assert!(
        fx.fs.unsynced_bytes() > 0,
        "sled's flush reached no fsync (it used sync_file_range)"
    );
    let conf_len = len(&dir.join("conf"));
    assert!(conf_len > 8, "sled wrote its conf ({conf_len} bytes)");
    std::mem::forget(db);
    fx.fs.power_cut().unwrap();
    // conf and db were created (metadata survives) but never fsynced: both are empty.
    assert_eq!(len(&dir.join("conf")), 0, "conf is empty after the cut");
    assert_eq!(len(&dir.join("db")), 0, "db is empty after the cut");
    // sled takes an empty conf for a new database: every insert is gone, silently.
    let db = open(&dir);
    assert_eq!(db.len(), 0, "every insert was lost");
    drop(db);

    // 2. Insert, db.flush(), clean close (Log's Drop fsyncs db, nothing fsyncs conf), cut.
    let dir = fx.path("closed");
    let db = open(&dir);
    fill(&db);
    drop(db);
    fx.fs.power_cut().unwrap();
    let (conf, db_len) = (len(&dir.join("conf")), len(&dir.join("db")));
    eprintln!("after a clean close and a cut: conf {conf} bytes, db {db_len} bytes");
    assert_eq!(conf, 0, "conf is never fsynced, even on a clean close");
    assert!(db_len > 0, "the clean close fsynced db");
    let db = open(&dir);
    eprintln!("reopened with an empty conf: {} keys", db.len());
    assert!(all_there(&db), "the log alone recovers every insert");
    drop(db);

    // 3. Insert, db.flush(), fdatasync db and fsync conf ourselves, crash, cut: all survive.
    let dir = fx.path("synced");
    let db = open(&dir);
    fill(&db);
    File::open(dir.join("db")).unwrap().sync_data().unwrap();
    File::open(dir.join("conf")).unwrap().sync_all().unwrap();
    std::mem::forget(db);
    fx.fs.power_cut().unwrap();
    assert!(len(&dir.join("conf")) > 8, "conf survived");
    let db = open(&dir);
    assert!(all_there(&db), "every insert survived the cut");
    drop(db);
}
