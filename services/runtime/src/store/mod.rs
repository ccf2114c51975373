//! The service's sled store: per-saga and per-account state, the journal, the outbox and the
//! inbox. A group commit writes all of a run's effects as one log record (one sled write;
//! see [`log`]), and keeps its writes in memory, read before the trees, until a background
//! checkpoint writes them into the `state`, `journal` and `inbox` trees (see [`overlay`]).
//!
//! Durability rule ("publish only what is durable"): nothing leaves the process until the sled
//! write that produced it is flushed and fsynced (sled's flush alone does not survive a power
//! cut: see [`crate::durable`]). `Store::flush` is the group-commit point: it reads the last
//! log id under the write lock, flushes, and only then raises the watermark up to which the
//! relay may publish. The caller acks consumed messages after the same flush. Recovery replays
//! the log records not yet trimmed over the trees (see [`Store::open`]).
//!
//! One file per concern: [`journal`] (the journal line), [`records`] (what service code sees),
//! [`tx`] (the group commit), [`log`] (the log record), [`overlay`] (state in memory, the
//! checkpoint and the trim), [`outbox`] (the events the relay reads), [`flush`] (the
//! group-commit flush and its thread), [`walk`] (journal reads and the by-saga merge the audits
//! use), [`footprint`] (where the bytes go, for measurements), [`malloc`] (glibc tuning); this
//! file holds the [`Store`] itself: opening and recovering it, plain reads, inbox pruning.

mod flush;
mod footprint;
mod journal;
mod log;
mod malloc;
mod outbox;
mod overlay;
mod records;
mod tx;
mod walk;

#[cfg(test)]
mod fixtures;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::durable::{self, DataFiles};
use crate::{Result, RuntimeError};

use flush::{flush_durably, Checkpoints, Flusher};
pub use footprint::{Footprint, TreeFootprint};
pub use journal::JournalEntry;
use log::Space;
use malloc::fixed_mmap_threshold;
pub use outbox::{outbox_entry, OutboxEntry};
use overlay::Shared;
pub use overlay::CHECKPOINT_ENTRIES;
use records::decode;
pub use records::{abort, aborted, ReadRecords, Records, TxResult};
pub use tx::Tx;
pub use walk::{SagaGroup, SagaKey};

/// How a store is opened (the runtime's `FX_STORE_CACHE_MIB` and `FX_CHECKPOINT_ENTRIES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// sled's cache, in MiB.
    pub cache_mib: u64,
    /// Writes held in memory at which a flush starts the background checkpoint.
    pub checkpoint_entries: usize,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            cache_mib: Store::DEFAULT_CACHE_MIB,
            checkpoint_entries: CHECKPOINT_ENTRIES,
        }
    }
}

/// The store of one service.
pub struct Store {
    /// The trees, the state in memory, the outbox and the counters, shared with the background
    /// checkpoint.
    shared: Arc<Shared>,
    /// Highest log id known to be flushed; the relay publishes up to it and no further.
    watermark: watch::Sender<u64>,
    flusher: Flusher,
    checkpoints: Checkpoints,
    /// The store's directory on disk (`None` for a temporary store).
    dir: Option<PathBuf>,
}

impl Store {
    /// sled's default cache for a service store, in MiB (`FX_STORE_CACHE_MIB`). Measured with
    /// scripts/bench.sh (100,000 sagas, then the audit that reads the whole store): fx-krw
    /// 143 MiB resident with 32, 105 with 16, 83 with 8, at the same throughput — the working set
    /// is the recent sagas, and the OS page cache holds the rest.
    pub const DEFAULT_CACHE_MIB: u64 = 8;

    /// Opens (or creates) the store in `dir` with the default options.
    pub fn open(dir: &Path) -> Result<Store> {
        Store::open_with(dir, StoreOptions::default())
    }

    /// Opens (or creates) the store in `dir`, fsyncs what sled created, and flushes once so
    /// that whatever survived a crash is publishable.
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Store> {
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
            .cache_capacity(options.cache_mib.saturating_mul(1024 * 1024));
        // No `mode`: sled 0.34.7 reads it nowhere.
        let path = dir.join("sled");
        let db = durable::open(config, &path).map_err(|e| match e {
            durable::OpenError::Store(e) => RuntimeError::Store(e),
            durable::OpenError::Sync(e) => RuntimeError::Sync(e),
        })?;
        Store::from_db(db, Some(DataFiles::open(&path)?), Some(path), options)
    }

    /// A store in a temporary directory that sled deletes on drop (tests).
    pub fn temporary() -> Result<Store> {
        Store::temporary_with(StoreOptions::default())
    }

    /// [`Store::temporary`] with these options (the simulation checkpoints when it chooses).
    pub fn temporary_with(options: StoreOptions) -> Result<Store> {
        Store::from_db(
            sled::Config::new().temporary(true).open()?,
            None,
            None,
            options,
        )
    }

    /// The deterministic simulation's crash, taken in place: the store becomes what a restart
    /// reads after the process died now. What was flushed survives; what was committed after
    /// the last flush is lost, but for the oldest `survivors` log records of it (sled may have
    /// written them before the crash) and what a checkpoint since wrote into the trees (which
    /// sled only keeps with everything written before it). Memory, the outbox and the
    /// watermark are rebuilt from the trees and the log, as [`Store::open`] rebuilds them.
    /// Returns how many log records (group commits, or parts of one) were lost.
    pub fn crash_in_place(&self, survivors: usize) -> Result<usize> {
        let lost = self
            .shared
            .crash_after(*self.watermark.borrow(), survivors)?;
        self.watermark
            .send_replace(self.shared.committed.load(Ordering::SeqCst));
        Ok(lost)
    }

    /// Recovery: makes whatever survived a crash durable, replays the log records not yet
    /// trimmed over the trees into memory (the state as the last durable group left it), and
    /// queues their events not yet published.
    fn from_db(
        db: sled::Db,
        mut files: Option<DataFiles>,
        dir: Option<PathBuf>,
        options: StoreOptions,
    ) -> Result<Store> {
        // Whatever survived a crash becomes durable before the relay may publish any of it.
        flush_durably(&db, files.as_mut()).map_err(RuntimeError::from)?;
        let shared = Arc::new(Shared::new(&db, options.checkpoint_entries)?);
        shared.recover()?;
        outbox::migrate_outbox(&shared, || {
            flush_durably(&db, files.as_mut()).map_err(RuntimeError::from)
        })?;
        let store = Store {
            checkpoints: Checkpoints::start(shared.clone())?,
            flusher: Flusher::start(db, files)?,
            watermark: watch::Sender::new(shared.committed.load(Ordering::SeqCst)),
            shared,
            dir,
        };
        Ok(store)
    }

    /// Installs a fault hook (crash tests): at each [`crate::FaultPoint`] of the store the hook
    /// may stop it, after which nothing more reaches sled.
    pub fn set_faults(&self, faults: crate::FaultHook) {
        self.shared.set_faults(faults);
    }

    /// Writes the state held in memory into the trees now (it happens in the background as
    /// memory fills; audits and measurements call it to read the trees whole).
    pub fn checkpoint(&self) -> Result<()> {
        self.shared.checkpoint()
    }

    /// Reads one state record outside a transaction (admin reads, audits).
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.shared
            .read(Space::State, key.as_bytes())?
            .map(|v| decode(key, &v))
            .transpose()
    }

    /// Every state record whose key starts with `prefix`, in key order.
    pub fn scan<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>> {
        self.scan_iter(prefix).collect()
    }

    /// Every state record whose key starts with `prefix`, in key order, decoded one at a time
    /// (audits walk the whole store without holding it in memory).
    pub fn scan_iter<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> impl Iterator<Item = Result<(String, T)>> + '_ {
        self.merged(Space::State, prefix.as_bytes()).map(|item| {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let value = decode(&key, &v)?;
            Ok((key, value))
        })
    }

    /// The committed entries of `space` under `prefix`, in key order: the tree's, with what
    /// memory holds over them (a newer value, or a removal).
    fn merged<'a>(
        &'a self,
        space: Space,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a {
        let mut memory = self
            .shared
            .overlay()
            .prefixed(space, prefix)
            .into_iter()
            .peekable();
        let mut tree = self.shared.tree(space).scan_prefix(prefix).peekable();
        std::iter::from_fn(move || loop {
            let tree_key = match tree.peek() {
                Some(Ok((k, _))) => Some(k.clone()),
                Some(Err(_)) => return tree.next().and_then(|r| r.err()).map(|e| Err(e.into())),
                None => None,
            };
            let memory_first = match (memory.peek(), &tree_key) {
                (None, None) => return None,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((mk, _)), Some(tk)) => {
                    if mk[..] == tk[..] {
                        // Memory is newer than the tree for this key.
                        tree.next();
                    }
                    mk[..] <= tk[..]
                }
            };
            if memory_first {
                match memory.next() {
                    Some((k, Some(v))) => return Some(Ok((k, v))),
                    _ => continue,
                }
            }
            return tree
                .next()
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into));
        })
    }

    /// Forgets consumed event ids seen before `before_ms`. Safe because each service's per-saga
    /// state turns a replayed event into a no-op; the inbox is only the fast first line.
    pub fn prune_inbox(&self, before_ms: u64) -> Result<usize> {
        self.checkpoint()?;
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.shared.inbox.iter() {
            let (k, v) = item?;
            if read_u64(&v) < before_ms {
                batch.remove(k);
                n += 1;
            }
        }
        self.shared.inbox.apply_batch(batch)?;
        Ok(n)
    }

    /// Number of remembered event ids (checkpoints first).
    pub fn inbox_len(&self) -> Result<usize> {
        self.checkpoint()?;
        Ok(self.shared.inbox.len())
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
        Ok(self.outbox_tail())
    }
}

impl ReadRecords for Store {
    fn read_raw(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.shared.read(Space::State, key.as_bytes())
    }

    fn keys_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = Result<String>> + 'a {
        self.merged(Space::State, prefix.as_bytes())
            .map(|item| Ok(String::from_utf8_lossy(&item?.0).into_owned()))
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

    /// A store reopened after groups whose writes were never checkpointed (what a crash
    /// leaves: the log, no checkpoint) reads what they wrote, and publishes what was not yet
    /// published, once; after a checkpoint, a flush and the relay's removal, the log is empty
    /// and a second reopen reads the same from the trees.
    #[tokio::test]
    async fn a_reopened_store_replays_its_log_over_the_trees() {
        use crate::ledger::Op;
        use crate::Records;
        use events::SagaId;
        use fixtures::{committed, entry};

        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (SagaId::new_v7(), SagaId::new_v7());
        {
            let store = Store::open(dir.path()).unwrap();
            // Checkpointed, then overwritten and removed in memory only.
            store.transact(|tx| tx.put("kept", &1u32)).unwrap();
            store.transact(|tx| tx.put("gone", &1u32)).unwrap();
            store.checkpoint().unwrap();
            store
                .transact(|tx| {
                    tx.put("kept", &2u32)?;
                    tx.remove("gone")?;
                    tx.journal(&entry(a, Op::Hold))?;
                    tx.mark_seen("e1", 5)?;
                    tx.emit(&committed(a), "published", 1)
                })
                .unwrap();
            store
                .transact(|tx| tx.emit(&committed(b), "waiting", 2))
                .unwrap();
            let wm = store.flush().await.unwrap();
            let first = store.outbox_batch(wm, 1).unwrap();
            assert_eq!(first[0].1.causation_id, "published");
            store.outbox_remove(&[first[0].0]).unwrap();
        }
        let reopened = |store: &Store| {
            assert_eq!(store.get::<u32>("kept").unwrap(), Some(2));
            assert_eq!(store.get::<u32>("gone").unwrap(), None);
            let keys: Vec<String> = store
                .scan::<u32>("")
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            assert_eq!(keys, ["kept"]);
            assert!(store.transact(|tx| tx.seen("e1")).unwrap());
            // A second line for the same operation is still refused.
            assert!(matches!(
                store.transact(|tx| tx.journal(&entry(a, Op::Hold))),
                Err(RuntimeError::JournalConflict { .. })
            ));
        };
        let store = Store::open(dir.path()).unwrap();
        reopened(&store);
        let wm = store.flush().await.unwrap();
        let waiting = store.outbox_batch(wm, 10).unwrap();
        let causes: Vec<&str> = waiting
            .iter()
            .map(|(_, e)| e.causation_id.as_str())
            .collect();
        assert_eq!(
            causes,
            ["waiting"],
            "the published event is not published again"
        );
        store.outbox_remove(&[waiting[0].0]).unwrap();
        store.checkpoint().unwrap();
        store.flush().await.unwrap();
        store.flush().await.unwrap();
        assert_eq!(
            store.footprint().unwrap().log.entries,
            0,
            "the log is trimmed"
        );
        assert_eq!(store.journal_entries().unwrap().len(), 1);
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        reopened(&store);
        assert_eq!(store.outbox_stats(0).unwrap().0, 0);
    }

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
