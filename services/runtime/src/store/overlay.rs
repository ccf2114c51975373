//! State served from memory: the writes of the log records not yet checkpointed, read before
//! the trees, and the checkpoint that moves them into the trees so that the log can be trimmed.
//!
//! Two generations: `active` takes every group commit; a checkpoint swaps it into `frozen`
//! (under the write lock, so between two groups), writes `frozen` into the trees without
//! holding any lock the consumer needs, and then drops it. A read looks in `active`, then in
//! `frozen`, then in the trees (a key that names a saga in that saga's bundle: see
//! [`super::bundle`]): a key only ever moves in that direction (active → frozen → tree, and
//! `frozen` is dropped only after the trees hold it), so a read never misses a committed
//! write. The checkpoint is the only writer of bundles while the store runs (inbox pruning
//! takes its lock), so a bundle's read, merge and write back needs no other lock.
//!
//! Trimming: a log record goes once both are true: its writes are in the trees and durable
//! (a checkpoint that covered it, then a flush), and its events are published. Both advance
//! in log order, so the log is always a contiguous tail, and replaying that tail in order over
//! the trees rebuilds exactly what memory held (see [`super::Store::open`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::bundle::{self, bundled, BundleId, BundleWrite};
use super::footprint::{Tally, TreeIndex, Written};
use super::log::{log_id, log_key, LogRecord, Space, Writes};
use super::OutboxEntry;
use crate::{FaultAction, FaultHook, FaultPoint, Result, RuntimeError};

/// Entries held in `active` at which a flush starts a checkpoint in the background, by
/// default (`FX_CHECKPOINT_ENTRIES`). Larger means fewer tree writes (a saga's record
/// rewritten at each stage is checkpointed once when all its stages fall into one window) and
/// more memory and replay at restart; measured with `store_bench` (docs/benchmarks.md).
pub const CHECKPOINT_ENTRIES: usize = 16_384;

/// Most writes in one sled batch of a checkpoint. sled's `apply_batch` holds a lock that every
/// other write waits for (the group commit's log insert too) for the whole batch; a checkpoint
/// in one batch of 16,384 entries held the consumer up by ~100 ms. It need not be atomic: the
/// log is replayed over whatever part of it reached the trees.
const CHECKPOINT_BATCH_ENTRIES: usize = 256;

/// The writes not yet in the trees.
#[derive(Default)]
pub(super) struct Overlay {
    pub(super) active: Writes,
    pub(super) frozen: Arc<Writes>,
}

impl Overlay {
    /// What memory says of `key`: `Some(None)` when it is removed, `None` when memory does not
    /// know (read the tree).
    pub(super) fn get(&self, space: Space, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.active
            .get(space, key)
            .or_else(|| self.frozen.get(space, key))
            .map(|v| v.cloned())
    }

    /// Every write memory holds to `space` under `prefix`, the newest per key, in key order.
    pub(super) fn prefixed(&self, space: Space, prefix: &[u8]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut out: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for writes in [&*self.frozen, &self.active] {
            let range = writes.space(space).range(prefix.to_vec()..);
            for (k, v) in range.take_while(|(k, _)| k.starts_with(prefix)) {
                out.insert(k.clone(), v.clone());
            }
        }
        out.into_iter().collect()
    }
}

/// What the store's parts share with the background checkpoint.
pub(super) struct Shared {
    pub(super) db: sled::Db,
    pub(super) state: sled::Tree,
    pub(super) journal: sled::Tree,
    pub(super) inbox: sled::Tree,
    /// One entry per saga: its records, journal lines and inbox marks (see [`super::bundle`]).
    pub(super) sagas: sled::Tree,
    pub(super) log: sled::Tree,
    /// `published`: the log id up to which every event is published (what a restart need not
    /// publish again); `layout`: `bundles` once the store keeps sagas in bundles;
    /// `bundle-heads`: [`Self::heads`].
    pub(super) meta: sled::Tree,
    /// The record kinds (`saga:`, `order:`) whose records bundles hold: a scan under a prefix
    /// of no such kind (`acct:`, `exp:`) need not read the bundles. Registered before the first
    /// bundle that holds one is written.
    heads: RwLock<BTreeSet<Vec<u8>>>,
    pub(super) overlay: RwLock<Overlay>,
    /// Serializes group commits, and the checkpoint's swap between them.
    pub(super) write_lock: Mutex<()>,
    /// One checkpoint at a time.
    checkpoint_lock: Mutex<()>,
    /// The last log id committed.
    pub(super) committed: AtomicU64,
    /// The last log id whose writes a checkpoint has put in the trees (not yet flushed).
    checkpointed: AtomicU64,
    /// The last log id whose writes a checkpoint has begun to put in the trees: some of them
    /// may be there (what an in-place crash must keep the log up to; see [`Self::crash_after`]).
    writing_through: AtomicU64,
    /// The last log id whose writes are durable in the trees.
    durable: AtomicU64,
    /// The log ids trimmed up to.
    trimmed: AtomicU64,
    /// Events not yet published, by the log id of their record.
    pub(super) outbox: Mutex<Outbox>,
    /// Group commits since the store opened (see [`super::Store::commits`]).
    pub(super) commits: AtomicU64,
    pub(super) written: Written,
    /// Entries in `active` at which a flush starts a checkpoint.
    pub(super) checkpoint_entries: usize,
    /// A test's fault hook (crash tests); [`crate::no_faults`] otherwise.
    faults: RwLock<FaultHook>,
    /// Where an injected crash stopped the store: from then on nothing reaches sled, as
    /// nothing would from a dead process.
    crashed: Mutex<Option<FaultPoint>>,
}

/// The events waiting for the relay.
#[derive(Default)]
pub(super) struct Outbox {
    pub(super) records: BTreeMap<u64, Vec<OutboxEntry>>,
    /// The highest log id the relay has removed.
    pub(super) max_removed: u64,
}

impl Outbox {
    /// Every event of every record up to this id is published.
    pub(super) fn published_through(&self) -> u64 {
        match self.records.keys().next() {
            Some(first) => first - 1,
            None => self.max_removed,
        }
    }
}

pub(super) const PUBLISHED: &[u8] = b"published";
pub(super) const LAYOUT: &[u8] = b"layout";
const BUNDLES: &[u8] = b"bundles";
const BUNDLE_HEADS: &[u8] = b"bundle-heads";

/// Bundled keys a migration moves per step (one batch into `sagas`, one out of the old tree).
const MIGRATION_CHUNK_ENTRIES: usize = 4096;

impl Shared {
    pub(super) fn new(db: &sled::Db, checkpoint_entries: usize) -> Result<Shared> {
        Ok(Shared {
            db: db.clone(),
            state: db.open_tree("state")?,
            journal: db.open_tree("journal")?,
            inbox: db.open_tree("inbox")?,
            sagas: db.open_tree("sagas")?,
            log: db.open_tree("log")?,
            meta: db.open_tree("meta")?,
            heads: RwLock::default(),
            overlay: RwLock::default(),
            write_lock: Mutex::new(()),
            checkpoint_lock: Mutex::new(()),
            committed: AtomicU64::new(0),
            checkpointed: AtomicU64::new(0),
            writing_through: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            trimmed: AtomicU64::new(0),
            outbox: Mutex::default(),
            commits: AtomicU64::new(0),
            written: Written::default(),
            checkpoint_entries,
            faults: RwLock::new(crate::no_faults()),
            crashed: Mutex::new(None),
        })
    }

    pub(super) fn set_faults(&self, faults: FaultHook) {
        *self
            .faults
            .write()
            .expect("fault hook lock is never poisoned") = faults;
    }

    /// Asks the fault hook about `point`: a crash there stops the store (see [`Self::alive`]).
    pub(super) fn fault(&self, point: FaultPoint) -> Result<()> {
        self.alive()?;
        let crash = (self
            .faults
            .read()
            .expect("fault hook lock is never poisoned"))(point);
        if crash == FaultAction::Crash {
            self.crashed
                .lock()
                .expect("crash lock is never poisoned")
                .get_or_insert(point);
            return Err(RuntimeError::Crashed(point));
        }
        Ok(())
    }

    /// `Err` once an injected crash stopped the store: every write path asks first.
    pub(super) fn alive(&self) -> Result<()> {
        match *self.crashed.lock().expect("crash lock is never poisoned") {
            Some(point) => Err(RuntimeError::Crashed(point)),
            None => Ok(()),
        }
    }

    pub(super) fn tree(&self, space: Space) -> &sled::Tree {
        match space {
            Space::State => &self.state,
            Space::Journal => &self.journal,
            Space::Inbox => &self.inbox,
        }
    }

    /// A committed read: memory first, then the saga's bundle or the space's tree.
    pub(super) fn read(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.overlay().get(space, key) {
            return Ok(v);
        }
        match bundled(space, key) {
            Some((id, rest)) => match self.sagas.get(id)? {
                Some(b) => bundle::lookup(&id, &b, space, rest),
                None => Ok(None),
            },
            None => Ok(self.tree(space).get(key)?.map(|v| v.to_vec())),
        }
    }

    /// The stored entries of `space` under `prefix` (not memory), in key order: the space's
    /// tree and the bundles merged, the bundle's entry winning where both hold a key (only a
    /// write behind the store's back puts a bundled key in a tree).
    pub(super) fn stored<'a>(&'a self, space: Space, prefix: &[u8]) -> Box<KeyValues<'a>> {
        let tree = self.tree(space).scan_prefix(prefix).map(|r| {
            r.map(|(k, v)| (k.to_vec(), Some(v.to_vec())))
                .map_err(Into::into)
        });
        let bundles = self
            .bundled_entries(space, prefix)
            .map(|r| r.map(|(k, v)| (k, Some(v))));
        Box::new(newer_over(tree, bundles))
    }

    /// The bundles' entries of `space` under `prefix`, in key order. Journal lines and inbox
    /// marks begin with their saga id, so bundles in id order yield them in key order; so do
    /// one kind's records (`saga:<id>`). A state prefix that stops short of a kind's colon may
    /// match several kinds: those entries are gathered and sorted in memory (no service scans
    /// that way).
    fn bundled_entries<'a>(&'a self, space: Space, prefix: &[u8]) -> Box<Entries<'a>> {
        let all = {
            let prefix = prefix.to_vec();
            self.sagas.iter().flat_map(move |item| {
                let found = item.map_err(RuntimeError::from).and_then(|(k, v)| {
                    let id = bundle_id(&k)?;
                    bundle::entries(&id, &v, space, &prefix)
                });
                let out: Vec<Result<(Vec<u8>, Vec<u8>)>> = match found {
                    Ok(entries) => entries.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                };
                out
            })
        };
        if space != Space::State {
            return Box::new(all);
        }
        let heads = self.heads.read().expect("heads lock is never poisoned");
        match bundle::head_of(prefix) {
            Some(head) if heads.contains(head) => Box::new(all),
            Some(_) => Box::new(std::iter::empty()),
            None if !heads.iter().any(|h| h.starts_with(prefix)) => Box::new(std::iter::empty()),
            None => match all.collect::<Result<Vec<_>>>() {
                Ok(mut entries) => {
                    entries.sort();
                    Box::new(entries.into_iter().map(Ok))
                }
                Err(e) => Box::new(std::iter::once(Err(e))),
            },
        }
    }

    /// Record kinds newly held by bundles become known before a bundle holds one.
    fn register_heads(&self, new: BTreeSet<Vec<u8>>) -> Result<()> {
        let mut heads = self.heads.write().expect("heads lock is never poisoned");
        let before = heads.len();
        heads.extend(new);
        if heads.len() > before {
            let list: Vec<&serde_bytes::Bytes> =
                heads.iter().map(|h| serde_bytes::Bytes::new(h)).collect();
            let bytes = bincode::serialize(&list).expect("heads encode");
            self.meta.insert(BUNDLE_HEADS, bytes)?;
        }
        Ok(())
    }

    /// Loads the record kinds bundles hold (at open).
    fn load_heads(&self) -> Result<()> {
        if let Some(bytes) = self.meta.get(BUNDLE_HEADS)? {
            let list: Vec<serde_bytes::ByteBuf> =
                bincode::deserialize(&bytes).map_err(|e| RuntimeError::Corrupt {
                    key: "meta/bundle-heads".into(),
                    message: e.to_string(),
                })?;
            let mut heads = self.heads.write().expect("heads lock is never poisoned");
            heads.extend(list.into_iter().map(serde_bytes::ByteBuf::into_vec));
        }
        Ok(())
    }

    /// The kinds among `writes`' bundled state keys not known yet.
    fn new_heads<'w>(
        &self,
        writes: impl Iterator<Item = &'w BundleWrite<'w>>,
    ) -> BTreeSet<Vec<u8>> {
        let heads = self.heads.read().expect("heads lock is never poisoned");
        writes
            .filter(|(space, rest, _)| *space == Space::State && !heads.contains(*rest))
            .map(|(_, rest, _)| rest.to_vec())
            .collect()
    }

    /// Writes `writes` into their sagas' bundles: per saga, its bundle read, the writes taken
    /// over it, the bundle written back (or removed, once empty); one batch per chunk of sagas.
    fn write_bundles(
        &self,
        by_saga: &BTreeMap<BundleId, Vec<BundleWrite<'_>>>,
        tally: &mut Tally,
    ) -> Result<()> {
        self.register_heads(self.new_heads(by_saga.values().flatten()))?;
        let sagas: Vec<_> = by_saga.iter().collect();
        for chunk in sagas.chunks(CHECKPOINT_BATCH_ENTRIES) {
            let mut batch = sled::Batch::default();
            for (id, writes) in chunk {
                let old = self.sagas.get(id)?;
                match bundle::merge(id, old.as_deref(), writes)? {
                    Some(b) => {
                        tally.insert(TreeIndex::Sagas, id.len(), b.len());
                        batch.insert(&id[..], b);
                    }
                    None if old.is_some() => batch.remove(&id[..]),
                    None => {}
                }
            }
            self.sagas.apply_batch(batch)?;
        }
        Ok(())
    }

    /// Moves a store written before bundles into them (at open, before anything else writes):
    /// every bundled key of the state, journal and inbox trees goes into its saga's bundle,
    /// a chunk at a time, written into `sagas` before it is removed from its tree. A crash half
    /// way leaves keys in both places with the same value, and the next open carries on. Done
    /// once: `layout` in `meta` says so. Returns the entries moved.
    pub(super) fn migrate_to_bundles(&self) -> Result<usize> {
        self.load_heads()?;
        if self.meta.get(LAYOUT)?.as_deref() == Some(BUNDLES) {
            return Ok(0);
        }
        let mut moved = 0;
        for space in Space::ALL {
            let mut chunk: Vec<(sled::IVec, sled::IVec)> = Vec::new();
            for item in self.tree(space).iter() {
                let (k, v) = item?;
                if bundled(space, &k).is_some() {
                    chunk.push((k, v));
                }
                if chunk.len() == MIGRATION_CHUNK_ENTRIES {
                    moved += self.move_into_bundles(space, &mut chunk)?;
                }
            }
            moved += self.move_into_bundles(space, &mut chunk)?;
        }
        self.meta.insert(LAYOUT, BUNDLES)?;
        Ok(moved)
    }

    /// One step of [`Self::migrate_to_bundles`]: `chunk`'s entries (all bundled keys of
    /// `space`) written into their bundles, then removed from the tree; the chunk is emptied.
    fn move_into_bundles(
        &self,
        space: Space,
        chunk: &mut Vec<(sled::IVec, sled::IVec)>,
    ) -> Result<usize> {
        let mut by_saga: BTreeMap<BundleId, Vec<BundleWrite<'_>>> = BTreeMap::new();
        for (k, v) in chunk.iter() {
            let (id, rest) = bundled(space, k).expect("chosen as bundled");
            by_saga.entry(id).or_default().push((space, rest, Some(v)));
        }
        self.write_bundles(&by_saga, &mut Tally::default())?;
        let mut batch = sled::Batch::default();
        for (k, _) in chunk.iter() {
            batch.remove(k.clone());
        }
        self.tree(space).apply_batch(batch)?;
        let moved = chunk.len();
        chunk.clear();
        Ok(moved)
    }

    /// Forgets the inbox marks written before `before_ms`, in the inbox tree and in the
    /// bundles. A chunk of [`CHECKPOINT_BATCH_ENTRIES`] entries at a time, each its own sled
    /// batch (a batch holds up every other write, the group commit's too, until it is applied),
    /// and each chunk of bundles with the checkpoint lock held, since both rewrite bundles; a
    /// checkpoint waits for one chunk, not for the whole pass.
    pub(super) fn prune_inbox(&self, before_ms: u64) -> Result<usize> {
        self.checkpoint()?;
        let old = |v: &[u8]| super::read_u64(v) < before_ms;
        let mut n = 0;
        self.in_chunks(
            &self.inbox,
            || (),
            |k, v, batch| {
                if old(v) {
                    batch.remove(k);
                    n += 1;
                }
                Ok(())
            },
        )?;
        let one_checkpoint = || {
            self.checkpoint_lock
                .lock()
                .expect("checkpoint lock is never poisoned")
        };
        self.in_chunks(&self.sagas, one_checkpoint, |k, v, batch| {
            let id = bundle_id(k)?;
            let marks: Vec<BundleWrite<'_>> = bundle::decode(&id, v)?
                .into_iter()
                .filter(|(space, _, t)| *space == Space::Inbox && old(t))
                .map(|(space, rest, _)| (space, &rest[..], None))
                .collect();
            if !marks.is_empty() {
                n += marks.len();
                match bundle::merge(&id, Some(v), &marks)? {
                    Some(b) => batch.insert(k, b),
                    None => batch.remove(k),
                }
            }
            Ok(())
        })?;
        Ok(n)
    }

    /// Walks `tree` in chunks of [`CHECKPOINT_BATCH_ENTRIES`] entries: `each` sees every entry
    /// of a chunk and fills the chunk's batch, which is applied before `hold`'s guard, taken
    /// for the chunk's reads, is released.
    fn in_chunks<G>(
        &self,
        tree: &sled::Tree,
        hold: impl Fn() -> G,
        mut each: impl FnMut(&sled::IVec, &sled::IVec, &mut sled::Batch) -> Result<()>,
    ) -> Result<()> {
        let mut from: Vec<u8> = Vec::new();
        loop {
            let _held = hold();
            self.alive()?;
            let mut batch = sled::Batch::default();
            let (mut seen, mut more) = (0, false);
            for item in tree.range(from.clone()..) {
                let (k, v) = item?;
                if seen == CHECKPOINT_BATCH_ENTRIES {
                    (from, more) = (k.to_vec(), true);
                    break;
                }
                seen += 1;
                each(&k, &v, &mut batch)?;
            }
            tree.apply_batch(batch)?;
            if !more {
                return Ok(());
            }
        }
    }

    /// Inbox marks held in the trees (the inbox tree's and the bundles').
    pub(super) fn inbox_stored(&self) -> Result<usize> {
        let mut n = self.inbox.len();
        for item in self.sagas.iter() {
            let (k, v) = item?;
            let id = bundle_id(&k)?;
            n += bundle::decode(&id, &v)?
                .iter()
                .filter(|(space, _, _)| *space == Space::Inbox)
                .count();
        }
        Ok(n)
    }

    pub(super) fn overlay(&self) -> std::sync::RwLockReadGuard<'_, Overlay> {
        self.overlay.read().expect("overlay lock is never poisoned")
    }

    fn overlay_mut(&self) -> std::sync::RwLockWriteGuard<'_, Overlay> {
        self.overlay
            .write()
            .expect("overlay lock is never poisoned")
    }

    pub(super) fn lock_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock
            .lock()
            .expect("write lock is never poisoned")
    }

    pub(super) fn lock_outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().expect("outbox lock is never poisoned")
    }

    /// Entries in `active`: when a checkpoint is due.
    pub(super) fn active_len(&self) -> usize {
        self.overlay().active.len()
    }

    /// Writes a group's log records with one atomic sled batch, then takes their writes into
    /// memory and queues their events: memory is never ahead of the log.
    pub(super) fn append(&self, records: Vec<LogRecord>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let mut tally = Tally::default();
        let mut ids = Vec::with_capacity(records.len());
        for record in &records {
            // generate_id is monotonic across restarts (sled persists it); shifted by one so
            // that watermark 0 means "nothing flushed".
            let id = self.db.generate_id()? + 1;
            let bytes = record.encode();
            tally.insert(TreeIndex::Log, 8, bytes.len());
            batch.insert(&log_key(id)[..], bytes);
            ids.push(id);
        }
        self.fault(FaultPoint::BeforeLogWrite)?;
        self.log.apply_batch(batch)?;
        self.fault(FaultPoint::AfterLogWriteBeforeFlush)?;
        {
            let mut overlay = self.overlay_mut();
            let mut outbox = self.lock_outbox();
            for (id, record) in ids.iter().zip(records) {
                overlay.active.extend(record.writes);
                if !record.events.is_empty() {
                    outbox.records.insert(*id, record.events);
                }
            }
        }
        let last = *ids.last().expect("at least one record");
        self.committed.store(last, Ordering::SeqCst);
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.written.add(&tally);
        Ok(())
    }

    /// Writes what memory holds into the trees: swaps `active` out between two group commits,
    /// writes it with one batch per tree, then forgets it. Durable only after the next flush,
    /// which is when the log records it covers may be trimmed.
    pub(super) fn checkpoint(&self) -> Result<()> {
        let _one = self
            .checkpoint_lock
            .lock()
            .expect("checkpoint lock is never poisoned");
        self.alive()?;
        // A checkpoint that failed half way left its generation frozen: write it first.
        self.write_frozen()?;
        let through = {
            let _writes = self.lock_writes();
            let mut overlay = self.overlay_mut();
            overlay.frozen = Arc::new(std::mem::take(&mut overlay.active));
            self.committed.load(Ordering::SeqCst)
        };
        self.writing_through.fetch_max(through, Ordering::SeqCst);
        self.write_frozen()?;
        self.checkpointed.fetch_max(through, Ordering::SeqCst);
        Ok(())
    }

    /// Writes the frozen generation into the trees, then forgets it: the keys of no saga into
    /// their spaces' trees, then the sagas' bundles.
    fn write_frozen(&self) -> Result<()> {
        let frozen = self.overlay().frozen.clone();
        if frozen.is_empty() {
            return Ok(());
        }
        let mut tally = Tally::default();
        let mut by_saga: BTreeMap<BundleId, Vec<BundleWrite<'_>>> = BTreeMap::new();
        for space in Space::ALL {
            let mut plain = Vec::new();
            for (k, v) in frozen.space(space) {
                match bundled(space, k) {
                    Some((id, rest)) => {
                        by_saga
                            .entry(id)
                            .or_default()
                            .push((space, rest, v.as_deref()))
                    }
                    None => plain.push((k, v)),
                }
            }
            for chunk in plain.chunks(CHECKPOINT_BATCH_ENTRIES) {
                let mut batch = sled::Batch::default();
                for (k, v) in chunk {
                    match v {
                        Some(v) => {
                            tally.insert(tree_index(space), k.len(), v.len());
                            batch.insert(&k[..], &v[..]);
                        }
                        None => batch.remove(&k[..]),
                    }
                }
                self.tree(space).apply_batch(batch)?;
            }
        }
        // The trees are written, the bundles are not.
        self.fault(FaultPoint::DuringCheckpoint)?;
        self.write_bundles(&by_saga, &mut tally)?;
        self.written.add(&tally);
        self.overlay_mut().frozen = Arc::default();
        Ok(())
    }

    /// The checkpoint read before a flush began; once that flush is done, what it covered is
    /// durable.
    pub(super) fn checkpointed(&self) -> u64 {
        self.checkpointed.load(Ordering::SeqCst)
    }

    /// After a flush that began when `checkpointed` was the checkpoint: the trees hold the
    /// writes up to it durably; trims the log records that are also published.
    pub(super) fn flushed(&self, checkpointed: u64) -> Result<()> {
        self.durable.fetch_max(checkpointed, Ordering::SeqCst);
        self.trim()
    }

    /// Removes the log records that are checkpointed durably and published.
    fn trim(&self) -> Result<()> {
        let limit = self
            .durable
            .load(Ordering::SeqCst)
            .min(self.lock_outbox().published_through());
        if limit <= self.trimmed.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.fault(FaultPoint::BeforeTrim)?;
        let mut batch = sled::Batch::default();
        for key in self.log.range(..=log_key(limit)).keys() {
            batch.remove(key?);
        }
        self.log.apply_batch(batch)?;
        self.trimmed.fetch_max(limit, Ordering::SeqCst);
        Ok(())
    }

    /// A crash taken in place (the deterministic simulation's): the log records after
    /// `flushed` are lost, except those a checkpoint has begun to write into the trees since —
    /// sled keeps a prefix of its writes, so tree writes that survive mean the log records
    /// written before them did too — and memory is rebuilt from the trees and the log as a
    /// restart rebuilds it, by a process that has not crashed (an injected crash is forgotten).
    /// `survivors`: how many of the records that could be lost reached the disk anyway (sled
    /// may have written them before the crash; always the oldest, since what survives is a
    /// prefix). Returns how many log records were lost.
    pub(super) fn crash_after(&self, flushed: u64, survivors: usize) -> Result<usize> {
        let _writes = self.lock_writes();
        let keep = flushed.max(self.writing_through.load(Ordering::SeqCst));
        let mut batch = sled::Batch::default();
        let mut lost = 0;
        for key in self.log.range(log_key(keep + 1)..).keys().skip(survivors) {
            batch.remove(key?);
            lost += 1;
        }
        self.log.apply_batch(batch)?;
        *self.overlay_mut() = Overlay::default();
        *self.lock_outbox() = Outbox::default();
        *self.crashed.lock().expect("crash lock is never poisoned") = None;
        self.recover()?;
        Ok(lost)
    }

    /// Recovery: replays the log over the trees into memory, in order, and queues the events
    /// not yet published.
    pub(super) fn recover(&self) -> Result<()> {
        let published = self.meta.get(PUBLISHED)?.map_or(0, |v| super::read_u64(&v));
        let mut last = 0;
        let mut overlay = self.overlay_mut();
        let mut outbox = self.lock_outbox();
        outbox.max_removed = published;
        for item in self.log.iter() {
            let (k, v) = item?;
            let id = log_id(&k);
            let record = LogRecord::decode(id, &v)?;
            overlay.active.extend(record.writes);
            if id > published && !record.events.is_empty() {
                outbox.records.insert(id, record.events);
            }
            if last == 0 {
                self.trimmed.store(id - 1, Ordering::SeqCst);
            }
            last = id;
        }
        self.committed.store(last, Ordering::SeqCst);
        Ok(())
    }
}

/// A stream of entries in key order, `None` for a removal.
pub(super) type KeyValues<'a> = dyn Iterator<Item = Result<(Vec<u8>, Option<Vec<u8>>)>> + 'a;
type Entries<'a> = dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a;

/// Two streams in key order as one, `newer`'s entry winning where both hold a key. An error
/// is yielded as soon as it heads either stream.
pub(super) fn newer_over<'a>(
    older: impl Iterator<Item = Result<(Vec<u8>, Option<Vec<u8>>)>> + 'a,
    newer: impl Iterator<Item = Result<(Vec<u8>, Option<Vec<u8>>)>> + 'a,
) -> impl Iterator<Item = Result<(Vec<u8>, Option<Vec<u8>>)>> + 'a {
    let mut older = older.peekable();
    let mut newer = newer.peekable();
    std::iter::from_fn(move || {
        if matches!(older.peek(), Some(Err(_))) {
            return older.next();
        }
        if matches!(newer.peek(), Some(Err(_))) {
            return newer.next();
        }
        let order = match (older.peek(), newer.peek()) {
            (None, None) => return None,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(Ok((o, _))), Some(Ok((n, _)))) => o.cmp(n),
            _ => unreachable!("errors are taken above"),
        };
        match order {
            std::cmp::Ordering::Less => older.next(),
            std::cmp::Ordering::Equal => {
                older.next();
                newer.next()
            }
            std::cmp::Ordering::Greater => newer.next(),
        }
    })
}

/// A `sagas` tree key as a bundle id.
pub(super) fn bundle_id(key: &[u8]) -> Result<BundleId> {
    key.try_into().map_err(|_| RuntimeError::Corrupt {
        key: format!("sagas/{}", String::from_utf8_lossy(key)),
        message: format!("a bundle key is 16 bytes, not {}", key.len()),
    })
}

fn tree_index(space: Space) -> TreeIndex {
    match space {
        Space::State => TreeIndex::State,
        Space::Journal => TreeIndex::Journal,
        Space::Inbox => TreeIndex::Inbox,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::MessageTx;
    use crate::ledger::Op;
    use crate::store::fixtures::{committed, entry};
    use crate::store::Store;
    use crate::{Records, RuntimeError};
    use events::SagaId;

    /// What every crash point leaves must read the same after a reopen: the log is replayed
    /// over whatever part of a checkpoint or a trim reached the trees.
    fn assert_recovered(store: &Store, saga: SagaId) {
        assert_eq!(store.get::<u32>("n").unwrap(), Some(3));
        assert_eq!(store.get::<u32>("gone").unwrap(), None);
        assert!(store.transact(|tx| tx.seen("e2")).unwrap());
        assert!(matches!(
            store.transact(|tx| tx.journal(&entry(saga, Op::Commit))),
            Err(RuntimeError::JournalConflict { .. })
        ));
        let ops: Vec<Op> = store
            .journal_entries()
            .unwrap()
            .iter()
            .map(|e| e.op)
            .collect();
        assert_eq!(ops.len(), 2, "{ops:?}");
    }

    /// Three groups: n = 1 with a hold line, then n = 2, then n = 3 with a commit line, an
    /// inbox mark, a removal and an event.
    fn commit_three(store: &Store, saga: SagaId) {
        store
            .transact(|tx| {
                tx.put("n", &1u32)?;
                tx.put("gone", &1u32)?;
                tx.journal(&entry(saga, Op::Hold))
            })
            .unwrap();
        store.transact(|tx| tx.put("n", &2u32)).unwrap();
        store
            .transact(|tx| {
                tx.put("n", &3u32)?;
                tx.remove("gone")?;
                tx.mark_seen("e2", 1)?;
                tx.journal(&entry(saga, Op::Commit))?;
                tx.emit(&committed(saga), "c", 1)
            })
            .unwrap();
    }

    #[tokio::test]
    async fn a_crash_at_each_step_of_the_store_loses_nothing_and_applies_nothing_twice() {
        let saga = SagaId::new_v7();
        // (name, what happens before the process dies)
        type Step = fn(&Store) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>;
        let steps: [(&str, Step); 5] = [
            // After the log write, before the flush (the process dies; sled's own state on
            // close is what a crash after the write leaves).
            ("after the log write", |_| Box::pin(async {})),
            ("during a checkpoint", |s| {
                Box::pin(async move {
                    s.flush().await.unwrap();
                    s.set_faults(crate::crash_at(FaultPoint::DuringCheckpoint));
                    assert!(matches!(
                        s.checkpoint(),
                        Err(RuntimeError::Crashed(FaultPoint::DuringCheckpoint))
                    ));
                    assert!(s.flush().await.is_err(), "a crashed store flushes nothing");
                })
            }),
            ("before the trim", |s| {
                Box::pin(async move {
                    // The first two records have no events, so they are published already.
                    s.checkpoint().unwrap();
                    s.set_faults(crate::crash_at(FaultPoint::BeforeTrim));
                    assert!(matches!(
                        s.flush().await,
                        Err(RuntimeError::Crashed(FaultPoint::BeforeTrim))
                    ));
                    assert_eq!(s.footprint().unwrap().log.entries, 3, "nothing trimmed");
                })
            }),
            ("after a checkpoint, before the trim", |s| {
                Box::pin(async move {
                    s.checkpoint().unwrap();
                    s.flush().await.unwrap();
                })
            }),
            ("after the trim", |s| {
                Box::pin(async move {
                    s.checkpoint().unwrap();
                    let wm = s.flush().await.unwrap();
                    let keys: Vec<u64> = s
                        .outbox_batch(wm, 10)
                        .unwrap()
                        .iter()
                        .map(|(k, _)| *k)
                        .collect();
                    s.outbox_remove(&keys).unwrap();
                    s.flush().await.unwrap();
                    assert!(s.footprint().unwrap().log.entries < 3, "something trimmed");
                })
            }),
        ];
        for (name, step) in steps {
            let dir = tempfile::tempdir().unwrap();
            {
                let store = Store::open(dir.path()).unwrap();
                commit_three(&store, saga);
                step(&store).await;
            }
            let store = Store::open(dir.path()).unwrap();
            assert_recovered(&store, saga);
            // The event is published at most once more, and only if it was not before.
            let wm = store.flush().await.unwrap();
            let waiting = store.outbox_batch(wm, 10).unwrap().len();
            assert_eq!(waiting, usize::from(name != "after the trim"), "{name}");
            // And a second reopen, after a full checkpoint, reads the same from the trees.
            store.checkpoint().unwrap();
            store.flush().await.unwrap();
            drop(store);
            assert_recovered(&Store::open(dir.path()).unwrap(), saga);
        }
    }

    #[test]
    fn the_log_is_trimmed_only_up_to_the_first_unpublished_record() {
        let store = Store::temporary().unwrap();
        let saga = SagaId::new_v7();
        for i in 0..3 {
            store
                .transact(|tx| tx.emit(&committed(saga), &i.to_string(), 1))
                .unwrap();
        }
        store.checkpoint().unwrap();
        let ids: Vec<u64> = store
            .outbox_batch(u64::MAX, 10)
            .unwrap()
            .iter()
            .map(|(k, _)| *k)
            .collect();
        // The middle one published first: nothing may go before the first one does.
        store.outbox_remove(&ids[1..2]).unwrap();
        store.shared.flushed(store.shared.checkpointed()).unwrap();
        assert_eq!(store.shared.log.len(), 3);
        store.outbox_remove(&ids[0..1]).unwrap();
        store.shared.flushed(store.shared.checkpointed()).unwrap();
        assert_eq!(
            store.shared.log.len(),
            1,
            "the first two go, the third waits"
        );
    }
}
