//! The service's sled store: per-saga and per-account state, the journal, the outbox and the
//! inbox. A group commit writes all of a run's effects as one log record (one sled write;
//! see [`log`]), and keeps its writes in memory, read before the trees, until a background
//! checkpoint writes them into the trees (see [`overlay`]): what names a saga into that saga's
//! bundle in the `sagas` tree, one entry per saga (see [`bundle`]), the rest into the `state`,
//! `journal` and `inbox` trees.
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
//! checkpoint and the trim), [`bundle`] (a saga's keys as one entry), [`outbox`] (the events
//! the relay reads), [`flush`] (the group-commit flush and its thread), [`walk`] (journal
//! reads and the by-saga merge the audits use), [`footprint`] (where the bytes go, for
//! measurements); this file holds the [`Store`] itself: opening and recovering it, plain
//! reads, inbox pruning.

mod bundle;
mod flush;
mod footprint;
mod journal;
mod log;
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
        if shared.migrate_to_bundles()? > 0 {
            flush_durably(&db, files.as_mut()).map_err(RuntimeError::from)?;
        }
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

    /// The committed entries of `space` under `prefix`, in key order: the stored ones (the
    /// tree's and the bundles'), with what memory holds over them (a newer value, or a
    /// removal).
    fn merged<'a>(
        &'a self,
        space: Space,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a {
        let memory = self.shared.overlay().prefixed(space, prefix);
        overlay::newer_over(
            self.shared.stored(space, prefix),
            memory.into_iter().map(Ok),
        )
        .filter_map(|item| match item {
            Ok((k, Some(v))) => Some(Ok((k, v))),
            Ok((_, None)) => None,
            Err(e) => Some(Err(e)),
        })
    }

    /// Forgets consumed event ids seen before `before_ms`. Safe because each service's per-saga
    /// state turns a replayed event into a no-op; the inbox is only the fast first line.
    pub fn prune_inbox(&self, before_ms: u64) -> Result<usize> {
        self.shared.prune_inbox(before_ms)
    }

    /// Number of remembered event ids (checkpoints first).
    pub fn inbox_len(&self) -> Result<usize> {
        self.checkpoint()?;
        self.shared.inbox_stored()
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
    use crate::ledger::Op;
    use crate::Records;
    use fixtures::entry;

    /// A store reopened after groups whose writes were never checkpointed (what a crash
    /// leaves: the log, no checkpoint) reads what they wrote, and publishes what was not yet
    /// published, once; after a checkpoint, a flush and the relay's removal, the log is empty
    /// and a second reopen reads the same from the trees.
    #[tokio::test]
    async fn a_reopened_store_replays_its_log_over_the_trees() {
        use events::SagaId;
        use fixtures::committed;

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
        let saga = events::SagaId::new_v7();
        // Event ids of a saga go into its bundle, beside its record; others into the inbox tree.
        let (old_in_bundle, new_in_bundle) = (
            saga.event_id(events::EventKind::TradeFilled),
            saga.event_id(events::EventKind::UsdCredited),
        );
        store
            .transact(|tx| {
                tx.mark_seen("old", 10)?;
                tx.mark_seen(&old_in_bundle, 10)?;
                tx.put(&saga.between("saga:", &[]), &1u32)
            })
            .unwrap();
        store
            .transact(|tx| {
                tx.mark_seen("new", 1000)?;
                tx.mark_seen(&new_in_bundle, 1000)
            })
            .unwrap();
        assert_eq!(store.inbox_len().unwrap(), 4);
        assert_eq!(store.shared.sagas.len(), 1, "one bundle");
        assert_eq!(store.prune_inbox(500).unwrap(), 2);
        assert_eq!(store.inbox_len().unwrap(), 2);
        for (id, seen) in [
            ("old", false),
            (&old_in_bundle, false),
            ("new", true),
            (&new_in_bundle, true),
        ] {
            assert_eq!(store.transact(|tx| tx.seen(id)).unwrap(), seen, "{id}");
        }
        assert_eq!(
            store.get::<u32>(&saga.between("saga:", &[])).unwrap(),
            Some(1),
            "the record in the bundle stays"
        );
        // A bundle left with nothing goes.
        store
            .transact(|tx| tx.remove(&saga.between("saga:", &[])))
            .unwrap();
        assert_eq!(store.prune_inbox(5000).unwrap(), 2);
        assert_eq!(store.shared.sagas.len(), 0);
    }

    /// Pruning walks the trees a chunk at a time, to the end: whole chunks (512 bundles, two
    /// of 256) and a part chunk (300 ids in the inbox tree), the old marks all gone, the new
    /// ones all kept.
    #[test]
    fn pruning_goes_through_every_chunk_and_stops_at_the_end() {
        let store = Store::temporary().unwrap();
        let sagas: Vec<events::SagaId> = (0..512u128)
            .map(|n| events::SagaId::from(uuid::Uuid::from_u128((n + 1) << 64)))
            .collect();
        store
            .transact(|tx| {
                for (i, saga) in sagas.iter().enumerate() {
                    let at = if i % 2 == 0 { 10 } else { 1000 };
                    tx.mark_seen(&saga.event_id(events::EventKind::TradeFilled), at)?;
                }
                for i in 0..300 {
                    tx.mark_seen(&format!("e{i}"), if i % 3 == 0 { 10 } else { 1000 })?;
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(store.inbox_len().unwrap(), 812);
        assert_eq!(store.prune_inbox(500).unwrap(), 256 + 100);
        assert_eq!(store.inbox_len().unwrap(), 256 + 200);
        assert_eq!(store.shared.sagas.len(), 256, "emptied bundles go");
        assert!(store
            .transact(|tx| tx.seen(&sagas[1].event_id(events::EventKind::TradeFilled)))
            .unwrap());
        assert!(!store
            .transact(|tx| tx.seen(&sagas[510].event_id(events::EventKind::TradeFilled)))
            .unwrap());
    }

    /// A store written before bundles (every key in its own tree, no `layout` mark) opens with
    /// its sagas' keys moved into bundles, and reads the same.
    #[tokio::test]
    async fn a_store_written_before_bundles_moves_into_them_when_it_opens_and_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let sagas: Vec<events::SagaId> = (1..=3u128)
            .map(|n| events::SagaId::from(uuid::Uuid::from_u128(n << 100)))
            .collect();
        {
            let store = Store::open(dir.path()).unwrap();
            let shared = &store.shared;
            for (i, saga) in sagas.iter().enumerate() {
                let line = entry(*saga, Op::Hold);
                shared
                    .journal
                    .insert(line.key(), serde_json::to_vec(&line).unwrap())
                    .unwrap();
                shared
                    .inbox
                    .insert(
                        saga.event_id(events::EventKind::TradeFilled),
                        &7u64.to_be_bytes(),
                    )
                    .unwrap();
                shared
                    .state
                    .insert(saga.between("saga:", &[]), serde_json::to_vec(&i).unwrap())
                    .unwrap();
            }
            shared.state.insert("acct:alice", b"5".to_vec()).unwrap();
            shared.inbox.insert("e1", &7u64.to_be_bytes()).unwrap();
            shared.meta.remove(super::overlay::LAYOUT).unwrap();
            store.flush().await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let shared = &store.shared;
        assert_eq!(shared.sagas.len(), 3, "one bundle per saga");
        assert_eq!(
            (shared.state.len(), shared.journal.len(), shared.inbox.len()),
            (1, 0, 1),
            "what names no saga stays where it was"
        );
        let records: Vec<(String, usize)> = store.scan("saga:").unwrap();
        let expected: Vec<(String, usize)> = sagas
            .iter()
            .enumerate()
            .map(|(i, s)| (s.between("saga:", &[]), i))
            .collect();
        assert_eq!(records, expected);
        assert_eq!(
            store.scan::<u32>("acct:").unwrap(),
            [("acct:alice".into(), 5)]
        );
        assert_eq!(store.journal_entries().unwrap().len(), 3);
        assert!(store
            .transact(|tx| tx.seen(&sagas[1].event_id(events::EventKind::TradeFilled)))
            .unwrap());
        assert_eq!(store.inbox_len().unwrap(), 4);
        // Done once: a second open finds the mark and moves nothing.
        assert_eq!(store.shared.migrate_to_bundles().unwrap(), 0);
    }

    /// A scan reads bundles only for the kinds they hold, and in key order whatever the prefix:
    /// one kind streams in saga order; a prefix short of a kind's colon sorts what it gathers.
    #[test]
    fn scans_see_bundled_records_in_key_order_with_memory_over_them() {
        let store = Store::temporary().unwrap();
        let (a, b) = (
            events::SagaId::from(uuid::Uuid::from_u128(1 << 100)),
            events::SagaId::from(uuid::Uuid::from_u128(2 << 100)),
        );
        store
            .transact(|tx| {
                tx.put(&b.between("saga:", &[]), &2u32)?;
                tx.put(&a.between("dep:", &[]), &10u32)?;
                tx.put("acct:alice", &5u32)?;
                tx.put("sa", &0u32)
            })
            .unwrap();
        store.checkpoint().unwrap();
        // In memory only, over and beside the bundles.
        store
            .transact(|tx| {
                tx.put(&a.between("saga:", &[]), &1u32)?;
                tx.remove(&a.between("dep:", &[]))
            })
            .unwrap();
        let keys = |prefix: &str| -> Vec<String> {
            store
                .scan::<u32>(prefix)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(
            keys("saga:"),
            [a.between("saga:", &[]), b.between("saga:", &[])]
        );
        assert_eq!(keys("dep:"), Vec::<String>::new(), "removed in memory");
        assert_eq!(keys("acct:"), ["acct:alice"]);
        assert_eq!(
            keys(""),
            [
                "acct:alice".to_string(),
                "sa".to_string(),
                a.between("saga:", &[]),
                b.between("saga:", &[])
            ]
        );
        store.checkpoint().unwrap();
        assert_eq!(
            keys("s"),
            [
                "sa".to_string(),
                a.between("saga:", &[]),
                b.between("saga:", &[])
            ]
        );
        assert_eq!(store.get::<u32>(&a.between("dep:", &[])).unwrap(), None);
    }
}
