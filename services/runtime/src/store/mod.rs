//! The service's sled store: per-saga and per-account state, the journal, the outbox and the
//! inbox, written together: one sled transaction per run of a batch, in which each handled
//! event commits or rolls back as a whole.
//!
//! Durability rule ("publish only what is durable"): nothing leaves the process until the sled
//! write that produced it is flushed and fsynced (sled's flush alone does not survive a power
//! cut: see [`crate::durable`]). `Store::flush` is the group-commit point: it reads the outbox
//! tail under the write lock, flushes, and only then raises the watermark up to which the relay
//! may publish. The caller acks consumed messages after the same flush.
//!
//! One file per concern: [`journal`] (the journal line), [`records`] (what service code sees),
//! [`tx`] (the sled transaction), [`outbox`] (the outbox records the relay reads), [`flush`]
//! (the group-commit flush and its thread), [`walk`] (journal reads and the by-saga merge the
//! audits use), [`footprint`] (where the bytes go, for measurements), [`malloc`] (glibc
//! tuning); this file holds the [`Store`] itself: opening it,
//! plain reads, inbox pruning.

mod flush;
mod footprint;
mod journal;
mod malloc;
mod outbox;
mod records;
mod tx;
mod walk;

#[cfg(test)]
mod fixtures;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::durable::{self, DataFiles};
use crate::{Result, RuntimeError};

use flush::{flush_durably, Flusher};
use footprint::Written;
pub use footprint::{Footprint, TreeFootprint};
pub use journal::JournalEntry;
use malloc::fixed_mmap_threshold;
pub use outbox::{outbox_entry, OutboxEntry};
use records::decode;
pub use records::{abort, aborted, ReadRecords, Records, TxResult};
pub use tx::Tx;
pub use walk::{SagaGroup, SagaKey};

/// The store of one service.
pub struct Store {
    state: sled::Tree,
    journal: sled::Tree,
    outbox: sled::Tree,
    inbox: sled::Tree,
    /// Serializes write transactions against the outbox-tail read in `flush`, so that every
    /// outbox key at or below a published watermark belongs to a committed transaction.
    write_lock: Mutex<()>,
    /// Highest outbox key known to be flushed; the relay publishes up to it and no further.
    watermark: watch::Sender<u64>,
    flusher: Flusher,
    /// Write transactions committed since the store opened: an audit compares it before and
    /// after its walk to tell whether the store changed under it.
    commits: std::sync::atomic::AtomicU64,
    /// Inserts committed per tree since the store opened (see [`Store::footprint`]).
    written: Written,
    /// The store's directory on disk (`None` for a temporary store).
    dir: Option<PathBuf>,
}

impl Store {
    /// sled's default cache for a service store, in MiB (`FX_STORE_CACHE_MIB`). Measured with
    /// scripts/bench.sh (100,000 sagas, then the audit that reads the whole store): fx-krw
    /// 143 MiB resident with 32, 105 with 16, 83 with 8, at the same throughput — the working set
    /// is the recent sagas, and the OS page cache holds the rest.
    pub const DEFAULT_CACHE_MIB: u64 = 8;

    /// Opens (or creates) the store in `dir` with the default cache.
    pub fn open(dir: &Path) -> Result<Store> {
        Store::open_with_cache(dir, Store::DEFAULT_CACHE_MIB)
    }

    /// Opens (or creates) the store in `dir` with `cache_mib` MiB of sled cache, fsyncs what sled
    /// created, and flushes once so that whatever survived a crash is publishable.
    pub fn open_with_cache(dir: &Path, cache_mib: u64) -> Result<Store> {
        fixed_mmap_threshold();
        durable::create_dir_all(dir).map_err(|e| RuntimeError::Config {
            var: "FX_DATA_DIR",
            message: format!("cannot create {}: {e}", dir.display()),
        })?;
        let config = sled::Config::new()
            // Durability comes from our explicit flushes, each followed by an fdatasync. sled's
            // periodic flusher stays on because it is also the only thing that reclaims log
            // segments (sled's GC); what it flushes on its own (outbox removals, inbox
            // pruning) is safe to lose.
            .flush_every_ms(Some(1000))
            // sled's resident memory settles near twice this (its accounting counts on-disk
            // sizes); the working set is the recent sagas, so a small cache costs no throughput
            // (see DEFAULT_CACHE_MIB).
            .cache_capacity(cache_mib.saturating_mul(1024 * 1024));
        // No `mode`: sled 0.34.7 reads it nowhere.
        let path = dir.join("sled");
        let db = durable::open(config, &path).map_err(|e| match e {
            durable::OpenError::Store(e) => RuntimeError::Store(e),
            durable::OpenError::Sync(e) => RuntimeError::Sync(e),
        })?;
        Store::from_db(db, Some(DataFiles::open(&path)?), Some(path))
    }

    /// A store in a temporary directory that sled deletes on drop (tests).
    pub fn temporary() -> Result<Store> {
        Store::from_db(sled::Config::new().temporary(true).open()?, None, None)
    }

    fn from_db(db: sled::Db, mut files: Option<DataFiles>, dir: Option<PathBuf>) -> Result<Store> {
        // Whatever survived a crash becomes durable before the relay may publish any of it.
        flush_durably(&db, files.as_mut()).map_err(RuntimeError::from)?;
        let store = Store {
            state: db.open_tree("state")?,
            journal: db.open_tree("journal")?,
            outbox: db.open_tree("outbox")?,
            inbox: db.open_tree("inbox")?,
            flusher: Flusher::start(db, files)?,
            write_lock: Mutex::new(()),
            watermark: watch::Sender::new(0),
            commits: std::sync::atomic::AtomicU64::new(0),
            written: Written::default(),
            dir,
        };
        let tail = store.outbox_tail()?;
        store.watermark.send_replace(tail);
        Ok(store)
    }

    /// Reads one state record outside a transaction (admin reads, audits).
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.state
            .get(key.as_bytes())?
            .map(|v| decode(key, &v))
            .transpose()
    }

    /// Every state record whose key starts with `prefix`, in key order.
    pub fn scan<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>> {
        let mut out = Vec::new();
        for item in self.state.scan_prefix(prefix.as_bytes()) {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let value = decode(&key, &v)?;
            out.push((key, value));
        }
        Ok(out)
    }

    /// Every state record whose key starts with `prefix`, in key order, decoded one at a time
    /// (audits walk the whole store without holding it in memory).
    pub fn scan_iter<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> impl Iterator<Item = Result<(String, T)>> + '_ {
        self.state.scan_prefix(prefix.as_bytes()).map(|item| {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let value = decode(&key, &v)?;
            Ok((key, value))
        })
    }

    /// Forgets consumed event ids seen before `before_ms`. Safe because each service's per-saga
    /// state turns a replayed event into a no-op; the inbox is only the fast first line.
    pub fn prune_inbox(&self, before_ms: u64) -> Result<usize> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.inbox.iter() {
            let (k, v) = item?;
            if read_u64(&v) < before_ms {
                batch.remove(k);
                n += 1;
            }
        }
        self.inbox.apply_batch(batch)?;
        Ok(n)
    }

    /// Number of remembered event ids.
    pub fn inbox_len(&self) -> usize {
        self.inbox.len()
    }
}

/// The core commits and relays through the sled store (see [`crate::core`]).
impl crate::core::Storage for Store {
    type Tx<'t> = Tx<'t>;

    fn transact_each<I, T>(
        &self,
        items: &[I],
        f: impl Fn(&mut Tx<'_>, &I) -> TxResult<T>,
    ) -> Result<Vec<Result<T>>> {
        Store::transact_each(self, items, f)
    }

    fn outbox_batch(&self, up_to: u64, max: usize) -> Result<Vec<(u64, OutboxEntry)>> {
        Store::outbox_batch(self, up_to, max)
    }

    fn outbox_remove(&self, keys: &[u64]) -> Result<()> {
        Store::outbox_remove(self, keys)
    }

    fn outbox_committed(&self) -> Result<u64> {
        self.outbox_tail()
    }
}

impl ReadRecords for Store {
    fn read_raw(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.state.get(key.as_bytes())?.map(|v| v.to_vec()))
    }

    fn keys_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = Result<String>> + 'a {
        self.state
            .scan_prefix(prefix.as_bytes())
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
    }
}

fn read_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[8 - n..].copy_from_slice(&b[b.len() - n..]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::MessageTx;

    #[test]
    fn pruning_forgets_only_old_event_ids() {
        let store = Store::temporary().unwrap();
        store.transact(|tx| tx.mark_seen("old", 10)).unwrap();
        store.transact(|tx| tx.mark_seen("new", 1000)).unwrap();
        assert_eq!(store.prune_inbox(500).unwrap(), 1);
        assert!(!store.transact(|tx| tx.seen("old")).unwrap());
        assert!(store.transact(|tx| tx.seen("new")).unwrap());
    }
}
