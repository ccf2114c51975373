//! The service's sled store: per-saga and per-account state, the journal, the outbox and the
//! inbox, written together: one sled transaction per run of a batch, in which each handled
//! event commits or rolls back as a whole.
//!
//! Durability rule ("publish only what is durable"): nothing leaves the process until the sled
//! write that produced it is flushed and fsynced (sled's flush alone does not survive a power
//! cut: see [`crate::durable`]). `Store::flush` is the group-commit point: it reads the outbox
//! tail under the write lock, flushes, and only then raises the watermark up to which the relay
//! may publish. The caller acks consumed messages after the same flush.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use events::{Event, SagaId};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;
use tokio::sync::watch;

use crate::durable::{self, DataFiles, SyncError};
use crate::ledger::{Account, Currency, Line, Op};
use crate::{Result, RuntimeError};

/// Result inside a store transaction; `?` works on sled errors and on `abort(..)`.
pub type TxResult<T> = std::result::Result<T, ConflictableTransactionError<RuntimeError>>;

/// Aborts the current transaction with `err` (it is rolled back and returned by `transact`).
pub fn abort<T>(err: RuntimeError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(err))
}

/// What an aborted unit of a transaction returns to its caller: the abort's error, or the
/// store's own failure.
pub fn aborted(e: ConflictableTransactionError<RuntimeError>) -> RuntimeError {
    match e {
        ConflictableTransactionError::Abort(e) => e,
        ConflictableTransactionError::Storage(e) => RuntimeError::Store(e),
        other => RuntimeError::StoreFailed(format!("{other:?}")),
    }
}

/// One double-entry journal line: `amount` of `currency` leaves `debit` and enters `credit`.
/// Keyed by `(saga_id, op)`, so a second entry for one operation is refused (invariant 4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The saga (or admin operation) this entry belongs to.
    pub saga_id: SagaId,
    /// The operation, stored as its name: `hold`, `commit`, `credit`, ... (see [`Op`]).
    pub op: Op,
    /// `KRW` or `USD`.
    pub currency: Currency,
    /// The account the amount leaves, stored as its name: `user:alice:available`, `external`,
    /// ... (see [`Account`]).
    pub debit: Account,
    /// The account the amount enters.
    pub credit: Account,
    /// Positive amount at the currency's scale.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// When it was written (ms since the Unix epoch).
    pub at_ms: u64,
    /// Who asked for it, for admin operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

impl JournalEntry {
    /// The journal key: `<saga_id>:<op>`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.saga_id, self.op)
    }
}

/// An event waiting in the outbox for the relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// `fx.<domain>.<event>.<user_id>`.
    pub subject: String,
    /// The deterministic event id (`Nats-Msg-Id`).
    pub event_id: String,
    /// The saga id (`Fx-Saga-Id`, and the trace id).
    pub saga_id: SagaId,
    /// The id of the event that caused this one (`Fx-Causation-Id`).
    pub causation_id: String,
    /// The JSON body, encoded once when the event was decided.
    pub payload: String,
    /// When it was appended (ms since the Unix epoch), for the oldest-entry-age metric.
    pub created_at_ms: u64,
}

/// Most events in one outbox record (about 12 KiB). sled writes a log message over a quarter
/// of its 512 KiB segment as a file of its own, and a full 256-message batch would make a
/// record of about 190 KiB; at 16 the outbox still costs one write per 16 events.
const OUTBOX_RECORD_MAX_ENTRIES: usize = 16;

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
}

/// Allocations at or above this many bytes get their own mapping from glibc's malloc, returned
/// to the system when freed.
const MMAP_THRESHOLD_BYTES: i32 = 256 * 1024;

/// Fixes glibc's mmap threshold (process-wide, once). By default glibc raises the threshold
/// each time a mapped chunk is freed, after which large short-lived buffers (sled's 512 KiB IO
/// buffers, one per log segment) come from a heap that does not shrink: fx-trade's resident
/// memory after 100,000 sagas was 74 MiB with the default and 45 MiB with 256 KiB, at the same
/// throughput (docs/benchmarks.md). Nothing to do with other allocators.
fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator parameters; M_MMAP_THRESHOLD takes a byte
            // count up to 32 MiB on 64-bit glibc, which this is.
            unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) };
        });
    }
}

/// A request for a flush: where to send its outcome.
type FlushRequest = tokio::sync::oneshot::Sender<FlushOutcome>;

/// How a flush ended. Cloned to every request that one flush served.
type FlushOutcome = std::result::Result<(), FlushFailure>;

#[derive(Clone, Debug)]
enum FlushFailure {
    Store(sled::Error),
    Sync(SyncError),
}

impl From<FlushFailure> for RuntimeError {
    fn from(f: FlushFailure) -> RuntimeError {
        match f {
            FlushFailure::Store(e) => RuntimeError::Store(e),
            FlushFailure::Sync(e) => RuntimeError::Sync(e),
        }
    }
}

/// The store's own flushing thread. Neither of the obvious ways to wait for a flush without
/// blocking the runtime is cheap here: sled's `flush_async` hands the flush to sled's thread
/// pool, which wakes every idle pool thread for each task it is given (and the flush gives it
/// a second one, the buffer write), and tokio's `spawn_blocking` starts threads that each grow
/// a malloc arena of their own (fx-trade's resident memory after 100,000 sagas: 45 MiB with
/// `flush_async`, 123 MiB with `spawn_blocking`). One long-lived thread, woken directly,
/// costs neither, and serves every request that queued during a flush with the next one.
///
/// A flush is sled's flush, then an fdatasync of its files ([`DataFiles::sync`]): sled's flush
/// alone does not survive a power cut. Once an fsync fails, every later flush fails too: after
/// a failed fsync the kernel may have dropped the pages it could not write, so a later success
/// would prove nothing.
struct Flusher {
    requests: Option<std::sync::mpsc::Sender<FlushRequest>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    /// `files`: the store's files on disk; `None` for a temporary store, which no crash
    /// outlives anyway.
    fn start(db: sled::Db, mut files: Option<DataFiles>) -> Result<Flusher> {
        let (requests, queue) = std::sync::mpsc::channel::<FlushRequest>();
        let thread = std::thread::Builder::new()
            .name("fx-store-flush".into())
            .spawn(move || {
                let mut failed: Option<FlushFailure> = None;
                // Every request queued before a flush starts is served by it; one that arrives
                // during it waits for the next, since its writes may not be in this one.
                while let Ok(first) = queue.recv() {
                    let waiting: Vec<FlushRequest> =
                        std::iter::once(first).chain(queue.try_iter()).collect();
                    let outcome = match &failed {
                        Some(f) => Err(f.clone()),
                        None => flush_durably(&db, files.as_mut()),
                    };
                    if let Err(FlushFailure::Sync(e)) = &outcome {
                        tracing::error!(error = %e, "the store cannot make writes durable");
                        failed = Some(FlushFailure::Sync(e.clone()));
                    }
                    for w in waiting {
                        let _ = w.send(outcome.clone());
                    }
                }
            })
            .map_err(|e| RuntimeError::FlushThread(format!("cannot start: {e}")))?;
        Ok(Flusher {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    async fn flush(&self) -> Result<()> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.requests
            .as_ref()
            .expect("requests live until drop")
            .send(done)
            .map_err(|_| RuntimeError::FlushThread("gone".into()))?;
        outcome
            .await
            .map_err(|_| RuntimeError::FlushThread("gone".into()))??;
        Ok(())
    }
}

/// sled's flush, then the fsyncs that make it durable.
fn flush_durably(db: &sled::Db, files: Option<&mut DataFiles>) -> FlushOutcome {
    db.flush().map_err(FlushFailure::Store)?;
    if let Some(files) = files {
        files.sync().map_err(FlushFailure::Sync)?;
    }
    Ok(())
}

impl Drop for Flusher {
    /// Ends the thread and waits for it, so that its handle on the database is gone when the
    /// store is (a restart in the same process reopens the same path).
    fn drop(&mut self) {
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
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
        Store::from_db(db, Some(DataFiles::open(&path)?))
    }

    /// A store in a temporary directory that sled deletes on drop (tests).
    pub fn temporary() -> Result<Store> {
        Store::from_db(sled::Config::new().temporary(true).open()?, None)
    }

    fn from_db(db: sled::Db, mut files: Option<DataFiles>) -> Result<Store> {
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
        };
        let tail = store.outbox_tail()?;
        store.watermark.send_replace(tail);
        Ok(store)
    }

    /// Runs `f` as one atomic transaction over state, journal, outbox and inbox. `f` may run
    /// more than once (on a conflict), so it must not have side effects outside `Tx`.
    pub fn transact<T>(&self, f: impl Fn(&mut Tx<'_>) -> TxResult<T>) -> Result<T> {
        self.transact_each(&[()], |tx, ()| f(tx))?
            .pop()
            .expect("one result per item")
    }

    /// Runs `f` once per item, in order, all inside one sled transaction: the group commit's
    /// unit of work. Each item sees what the items before it wrote, and rolls back alone: an
    /// item whose `f` aborts leaves no trace and gets its error in its slot of the result,
    /// while the others commit. The outbox entries of the items that succeeded become one
    /// outbox record.
    ///
    /// Why one transaction for many events: a sled transaction has a fixed cost (locks, a
    /// manifest in the log, a wake-up of sled's IO threads) that per-event transactions paid
    /// ~60 times per flush; measured with a store-only benchmark shaped like fx-krw's writes,
    /// 146 µs of CPU per event per-event against 32 µs batched with one outbox record.
    ///
    /// `Err` only for a storage failure, which fails every item. `f` may run more than once
    /// (on a conflict), so it must not have side effects outside `Tx`.
    pub fn transact_each<I, T>(
        &self,
        items: &[I],
        f: impl Fn(&mut Tx<'_>, &I) -> TxResult<T>,
    ) -> Result<Vec<Result<T>>> {
        let _guard = self
            .write_lock
            .lock()
            .expect("write lock is never poisoned");
        let result = (&self.state, &self.journal, &self.outbox, &self.inbox).transaction(
            |(state, journal, outbox, inbox)| {
                let trees = TxTrees {
                    state,
                    journal,
                    inbox,
                };
                let mut results = Vec::with_capacity(items.len());
                let mut appended = Vec::new();
                for item in items {
                    let mut tx = Tx {
                        trees: &trees,
                        pending: RefCell::default(),
                    };
                    match f(&mut tx, item) {
                        Ok(v) => {
                            tx.apply(&mut appended)?;
                            results.push(Ok(v));
                        }
                        Err(ConflictableTransactionError::Abort(e)) => results.push(Err(e)),
                        Err(other) => return Err(other),
                    }
                }
                for record in appended.chunks(OUTBOX_RECORD_MAX_ENTRIES) {
                    // generate_id starts at 0; shift by one so that watermark 0 means "nothing
                    // flushed".
                    let id = outbox.generate_id()? + 1;
                    let bytes = serde_json::to_vec(record).expect("outbox entries serialize");
                    outbox.insert(&outbox_key(id, record.len())[..], bytes)?;
                }
                Ok(results)
            },
        );
        match result {
            Ok(v) => {
                self.commits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(v)
            }
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(RuntimeError::Store(e)),
        }
    }

    /// Write transactions committed since the store opened. An audit walks trees one after
    /// another, not a snapshot: when this moved during its walk, a difference it reports may be
    /// a saga that was in flight.
    pub fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The group-commit point: makes every committed transaction durable, then lets the relay
    /// publish the outbox entries they appended. Returns the new watermark.
    pub async fn flush(&self) -> Result<u64> {
        let tail = {
            let _guard = self
                .write_lock
                .lock()
                .expect("write lock is never poisoned");
            self.outbox_tail()?
        };
        self.flusher.flush().await?;
        self.watermark.send_if_modified(|w| {
            if tail > *w {
                *w = tail;
                true
            } else {
                false
            }
        });
        Ok(tail)
    }

    /// A receiver of the flushed-outbox watermark (the relay waits on it).
    pub fn watermark(&self) -> watch::Receiver<u64> {
        self.watermark.subscribe()
    }

    fn outbox_tail(&self) -> Result<u64> {
        Ok(self
            .outbox
            .last()?
            .map(|(k, _)| outbox_key_id(&k))
            .unwrap_or(0))
    }

    /// Outbox entries of the records with keys at or below `up_to`, oldest first, each with its
    /// record's key: whole records, until at least `max` entries (at least one record).
    pub fn outbox_batch(&self, up_to: u64, max: usize) -> Result<Vec<(u64, OutboxEntry)>> {
        let mut out = Vec::new();
        for item in self.outbox.range(..=outbox_key(up_to, u32::MAX as usize)) {
            let (k, v) = item?;
            let key = outbox_key_id(&k);
            out.extend(decode_outbox(key, &v)?.into_iter().map(|e| (key, e)));
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Removes published records. Not flushed: if the removal is lost in a crash, the entries
    /// are published again with the same ids and deduplicated downstream.
    pub fn outbox_remove(&self, keys: &[u64]) -> Result<()> {
        let mut wanted: Vec<u64> = keys.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let mut batch = sled::Batch::default();
        for k in wanted {
            // A record's key carries its entry count; find it by its id.
            if let Some((key, _)) = self
                .outbox
                .range(k.to_be_bytes().to_vec()..=outbox_key(k, u32::MAX as usize).to_vec())
                .next()
                .transpose()?
            {
                batch.remove(key);
            }
        }
        self.outbox.apply_batch(batch)?;
        Ok(())
    }

    /// Entries waiting in the outbox, and the age in ms of the oldest (0 when empty). Counts
    /// from the keys alone, which carry each record's entry count.
    pub fn outbox_stats(&self, now_ms: u64) -> Result<(usize, u64)> {
        let mut depth = 0;
        for k in self.outbox.iter().keys() {
            depth += outbox_key_count(&k?);
        }
        let oldest = match self.outbox.first()? {
            Some((k, v)) => decode_outbox(outbox_key_id(&k), &v)?
                .first()
                .map_or(0, |e| now_ms.saturating_sub(e.created_at_ms)),
            None => 0,
        };
        Ok((depth, oldest))
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

    /// Every journal entry, in key order.
    pub fn journal_entries(&self) -> Result<Vec<JournalEntry>> {
        self.journal_iter().collect()
    }

    /// Every journal entry, in key order, decoded one at a time.
    pub fn journal_iter(&self) -> impl Iterator<Item = Result<JournalEntry>> + '_ {
        self.journal.iter().map(|item| {
            let (k, v) = item?;
            decode(&String::from_utf8_lossy(&k), &v)
        })
    }

    /// Every journal entry in the order of its own key `<saga_id>:<op>`, decoded one at a time,
    /// leniently: a [`Line`] says why an entry with a name the ledger does not know is no entry.
    /// Saga ids print at one fixed length, so one saga's entries are adjacent and sagas come in
    /// id order: an audit can walk the journal side by side with its per-saga records, holding
    /// one saga at a time.
    ///
    /// That is the stored order for every entry [`Tx`] wrote. An entry stored under a key that
    /// is not its own (only possible behind the store's back) is found by a first pass, which
    /// decodes only what does not start as its key says, and yielded where its own key sorts,
    /// so an audit still sees it next to the entries it may duplicate. Memory: the misfiled
    /// entries, none in a sound store.
    pub fn journal_iter_by_saga(&self) -> Result<impl Iterator<Item = Result<Line>> + '_> {
        let mut misfiled_keys = std::collections::BTreeSet::new();
        let mut misfiled = Vec::new();
        for item in self.journal.iter() {
            let (k, v) = item?;
            if starts_as_keyed(&k, &v) {
                continue;
            }
            let e: Line = decode(&String::from_utf8_lossy(&k), &v)?;
            if e.key().as_bytes() != &*k {
                misfiled.push((e.key(), e));
                misfiled_keys.insert(k);
            }
        }
        // Stable: entries claiming one key keep their stored order.
        misfiled.sort_by(|a, b| a.0.cmp(&b.0));
        let mut misfiled = misfiled.into_iter().peekable();
        let mut stored = self.journal.iter().filter_map(move |item| match item {
            Ok((k, _)) if misfiled_keys.contains(&k) => None,
            Ok((k, v)) => Some(decode::<Line>(&String::from_utf8_lossy(&k), &v)),
            Err(e) => Some(Err(e.into())),
        });
        let mut next_stored: Option<Result<Line>> = None;
        Ok(std::iter::from_fn(move || {
            if next_stored.is_none() {
                next_stored = stored.next();
            }
            let misfiled_first = match (&next_stored, misfiled.peek()) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(Ok(e)), Some((key, _))) => *key < e.key(),
                // An error ends the walk as soon as it is reached.
                (Some(Err(_)), Some(_)) => false,
            };
            if misfiled_first {
                misfiled.next().map(|(_, e)| Ok(e))
            } else {
                next_stored.take()
            }
        }))
    }

    /// The journal and the per-saga records under `prefixes` (`order:<saga_id>`, ...), walked
    /// side by side and yielded one saga at a time, in saga id order: each saga's journal
    /// entries (as [`Store::journal_iter_by_saga`] yields them) and its record under each
    /// prefix, if any.
    ///
    /// It exists so that audits hold one saga at a time: what they keep across sagas is per
    /// account, so their memory grows with users, not with sagas. `K` says how sagas are
    /// compared and how a record's key names one (see `SagaKey`). A record whose key names
    /// no saga is yielded alone, with `saga: None`, where its key sorts under its prefix.
    /// Read-only. The walk ends at the first error: a journal error before a record error,
    /// and the prefixes' errors in the order given.
    pub fn by_saga<'a, K: SagaKey, V: DeserializeOwned + 'a, const N: usize>(
        &'a self,
        prefixes: [&'a str; N],
    ) -> Result<impl Iterator<Item = Result<SagaGroup<K, V, N>>> + 'a> {
        let mut journal = self.journal_iter_by_saga()?.peekable();
        let mut records = prefixes.map(|p| self.scan_iter::<V>(p).peekable());
        let mut failed = false;
        Ok(std::iter::from_fn(move || {
            if failed {
                return None;
            }
            let step = (|| {
                let next_entry = match journal.peek() {
                    Some(Ok(e)) => Some(K::of_entry(e)),
                    Some(Err(_)) => return Err(take_err(&mut journal)),
                    None => None,
                };
                let mut heads: [Option<K>; N] = std::array::from_fn(|_| None);
                for (i, it) in records.iter_mut().enumerate() {
                    heads[i] = match it.peek() {
                        Some(Ok((key, _))) => match K::of_record(prefixes[i], key) {
                            Some(id) => Some(id),
                            None => {
                                let mut group = SagaGroup {
                                    saga: None,
                                    entries: Vec::new(),
                                    records: std::array::from_fn(|_| None),
                                };
                                group.records[i] = it.next().transpose()?;
                                return Ok(Some(group));
                            }
                        },
                        Some(Err(_)) => return Err(take_err(it)),
                        None => None,
                    };
                }
                let Some(saga) = next_entry
                    .iter()
                    .chain(heads.iter().flatten())
                    .min()
                    .cloned()
                else {
                    return Ok(None);
                };
                let mut entries = Vec::new();
                // An error stays in place, to end the walk on the next call.
                while let Some(Ok(e)) =
                    journal.next_if(|e| matches!(e, Ok(e) if K::of_entry(e) == saga))
                {
                    entries.push(e);
                }
                let mut group = SagaGroup {
                    saga: Some(saga),
                    entries,
                    records: std::array::from_fn(|_| None),
                };
                for (i, it) in records.iter_mut().enumerate() {
                    if heads[i] == group.saga {
                        group.records[i] = it.next().transpose()?;
                    }
                }
                Ok(Some(group))
            })();
            failed = step.is_err();
            step.transpose()
        }))
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

/// Read-only access to a service's committed records outside any transaction: what
/// [`crate::Participant::prepare`] sees before it calls the outside world (fx-trade reads
/// `order:<saga_id>` so that a saga it already answered never reaches the venue again).
///
/// Committed, not necessarily flushed: a record read here may still be lost in a crash, but then
/// the message that wrote it is redelivered and prepared again against what survived.
///
/// Deliberately not `Sync`-bound: `prepare` reads what it needs before its first `.await`, so
/// its future never holds the store (and never acts on a read taken before a slow venue call).
pub trait ReadRecords {
    /// Reads a raw state record.
    fn read_raw(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// Reads and decodes a state record.
    fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>>
    where
        Self: Sized,
    {
        self.read_raw(key)?.map(|v| decode(key, &v)).transpose()
    }

    /// The keys of the state records that start with `prefix`, in key order, streamed (a
    /// timer reads an index with it and stops at the first entry not yet due).
    fn keys_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = Result<String>> + 'a
    where
        Self: Sized;
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

/// What a service's event handling may read and write: the per-saga and per-account records,
/// the journal and the outbox. Implemented by the sled transaction ([`Tx`]) and by the
/// deterministic simulation's in-memory store, so both run the same service code.
pub trait Records {
    /// Reads a raw state record.
    fn get_raw(&self, key: &str) -> TxResult<Option<Vec<u8>>>;
    /// Writes a raw state record.
    fn put_raw(&self, key: &str, value: Vec<u8>) -> TxResult<()>;
    /// Deletes a state record (e.g. an expiry index entry).
    fn remove(&self, key: &str) -> TxResult<()>;
    /// Appends a journal entry; aborts with `JournalConflict` if (saga, op) already has one.
    fn journal(&self, entry: &JournalEntry) -> TxResult<()>;
    /// Appends an event to the outbox.
    fn emit(&self, event: &Event, causation_id: &str, now_ms: u64) -> TxResult<()>;

    /// A decision's ledger lines and events, in the order every service writes them: the
    /// journal first (a second line for one operation aborts the whole unit), then the events,
    /// each caused by `causation_id`.
    fn journal_and_emit(
        &self,
        journal: &[JournalEntry],
        events: &[Event],
        causation_id: &str,
        now_ms: u64,
    ) -> TxResult<()> {
        for entry in journal {
            self.journal(entry)?;
        }
        for event in events {
            self.emit(event, causation_id, now_ms)?;
        }
        Ok(())
    }

    /// Reads and decodes a state record.
    fn get<T: DeserializeOwned>(&self, key: &str) -> TxResult<Option<T>>
    where
        Self: Sized,
    {
        match self.get_raw(key)? {
            Some(v) => match decode(key, &v) {
                Ok(t) => Ok(Some(t)),
                Err(e) => abort(e),
            },
            None => Ok(None),
        }
    }

    /// Encodes and writes a state record.
    fn put<T: Serialize>(&self, key: &str, value: &T) -> TxResult<()>
    where
        Self: Sized,
    {
        self.put_raw(
            key,
            serde_json::to_vec(value).expect("state records serialize"),
        )
    }
}

/// Builds the outbox entry for an event (shared by the store and the simulation).
pub fn outbox_entry(event: &Event, causation_id: &str, now_ms: u64) -> OutboxEntry {
    OutboxEntry {
        subject: event.subject(),
        event_id: event.id(),
        saga_id: event.saga_id(),
        causation_id: causation_id.to_owned(),
        payload: String::from_utf8(event.to_json()).expect("JSON is UTF-8"),
        created_at_ms: now_ms,
    }
}

/// The trees of one sled transaction (the outbox is written once, at its end).
struct TxTrees<'a> {
    state: &'a TransactionalTree,
    journal: &'a TransactionalTree,
    inbox: &'a TransactionalTree,
}

impl<'a> TxTrees<'a> {
    fn tree(&self, space: Space) -> &'a TransactionalTree {
        match space {
            Space::State => self.state,
            Space::Journal => self.journal,
            Space::Inbox => self.inbox,
        }
    }
}

/// Which tree a pending write goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Space {
    State,
    Journal,
    Inbox,
}

/// One item's writes, held back until it succeeds (so that a failing item rolls back alone).
#[derive(Default)]
struct Pending {
    writes: BTreeMap<(Space, Vec<u8>), Option<Vec<u8>>>,
    outbox: Vec<OutboxEntry>,
}

/// The view of the store of one handled event (one item of [`Store::transact_each`]): it reads
/// what the transaction holds, its own writes first.
pub struct Tx<'a> {
    trees: &'a TxTrees<'a>,
    pending: RefCell<Pending>,
}

impl Tx<'_> {
    fn read(&self, space: Space, key: &[u8]) -> TxResult<Option<Vec<u8>>> {
        if let Some(v) = self.pending.borrow().writes.get(&(space, key.to_vec())) {
            return Ok(v.clone());
        }
        Ok(self.trees.tree(space).get(key)?.map(|v| v.to_vec()))
    }

    fn write(&self, space: Space, key: &[u8], value: Option<Vec<u8>>) {
        self.pending
            .borrow_mut()
            .writes
            .insert((space, key.to_vec()), value);
    }

    /// Writes the item's pending writes into the transaction, and its outbox entries to
    /// `appended`.
    fn apply(self, appended: &mut Vec<OutboxEntry>) -> TxResult<()> {
        let pending = self.pending.into_inner();
        for ((space, key), value) in pending.writes {
            let tree = self.trees.tree(space);
            match value {
                Some(v) => tree.insert(key, v)?,
                None => tree.remove(key)?,
            };
        }
        appended.extend(pending.outbox);
        Ok(())
    }
}

impl crate::core::MessageTx for Tx<'_> {
    fn seen(&self, event_id: &str) -> TxResult<bool> {
        Ok(self.read(Space::Inbox, event_id.as_bytes())?.is_some())
    }

    fn mark_seen(&self, event_id: &str, now_ms: u64) -> TxResult<()> {
        self.write(
            Space::Inbox,
            event_id.as_bytes(),
            Some(now_ms.to_be_bytes().to_vec()),
        );
        Ok(())
    }

    fn discard(&self) {
        *self.pending.borrow_mut() = Pending::default();
    }
}

impl Records for Tx<'_> {
    fn get_raw(&self, key: &str) -> TxResult<Option<Vec<u8>>> {
        self.read(Space::State, key.as_bytes())
    }

    fn put_raw(&self, key: &str, value: Vec<u8>) -> TxResult<()> {
        self.write(Space::State, key.as_bytes(), Some(value));
        Ok(())
    }

    fn remove(&self, key: &str) -> TxResult<()> {
        self.write(Space::State, key.as_bytes(), None);
        Ok(())
    }

    fn journal(&self, entry: &JournalEntry) -> TxResult<()> {
        let key = entry.key();
        if self.read(Space::Journal, key.as_bytes())?.is_some() {
            return abort(RuntimeError::JournalConflict { key });
        }
        let bytes = serde_json::to_vec(entry).expect("journal entries serialize");
        self.write(Space::Journal, key.as_bytes(), Some(bytes));
        Ok(())
    }

    fn emit(&self, event: &Event, causation_id: &str, now_ms: u64) -> TxResult<()> {
        self.pending
            .borrow_mut()
            .outbox
            .push(outbox_entry(event, causation_id, now_ms));
        Ok(())
    }
}

impl From<RuntimeError> for ConflictableTransactionError<RuntimeError> {
    fn from(e: RuntimeError) -> Self {
        ConflictableTransactionError::Abort(e)
    }
}

/// One saga's share of a [`Store::by_saga`] walk.
#[derive(Clone, Debug, PartialEq)]
pub struct SagaGroup<K, V, const N: usize> {
    /// The saga; `None` for a record whose key names no saga (then it is the only record).
    pub saga: Option<K>,
    /// The saga's journal entries, in the order of their keys, each read leniently.
    pub entries: Vec<Line>,
    /// Per prefix, in the order given: the saga's record under it (key and value), if any.
    pub records: [Option<(String, V)>; N],
}

/// How [`Store::by_saga`] compares sagas and reads a saga from a record's key.
pub trait SagaKey: Ord + Clone {
    /// A journal entry's saga.
    fn of_entry(entry: &Line) -> Self;
    /// The saga `key`, a key under `prefix`, names; `None` if it names none.
    fn of_record(prefix: &str, key: &str) -> Option<Self>;
}

/// Sagas compared as text: an entry's printed id, a key with every leading `prefix` trimmed.
/// Every key names a saga.
impl SagaKey for String {
    fn of_entry(entry: &Line) -> Self {
        entry.saga_id.to_string()
    }

    fn of_record(prefix: &str, key: &str) -> Option<Self> {
        Some(key.trim_start_matches(prefix).to_owned())
    }
}

/// Sagas compared as ids: a key names a saga if what follows its prefix parses as one.
impl SagaKey for SagaId {
    fn of_entry(entry: &Line) -> Self {
        entry.saga_id
    }

    fn of_record(prefix: &str, key: &str) -> Option<Self> {
        key.strip_prefix(prefix)
            .and_then(|id| SagaId::parse(id).ok())
    }
}

/// The error a peeked `Err` holds.
fn take_err<T>(it: &mut impl Iterator<Item = Result<T>>) -> RuntimeError {
    match it.next() {
        Some(Err(e)) => e,
        _ => unreachable!("called on a peeked error"),
    }
}

/// True when a journal value begins `{"saga_id":"<s>","op":"<o>"` for its key `<s>:<o>`, as
/// every entry [`Tx::journal`] writes does (serde writes the fields in declaration order). A
/// cheap test that the entry is stored under its own key; false says only "decode and see".
fn starts_as_keyed(key: &[u8], value: &[u8]) -> bool {
    let Some(colon) = key.iter().position(|&b| b == b':') else {
        return false;
    };
    let (saga, op) = (&key[..colon], &key[colon + 1..]);
    // Bytes that JSON writes as they are and that decode to themselves: a canonical (lowercase
    // hyphenated) saga id, and an op without quotes or escapes.
    if !saga
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b) || *b == b'-')
        || op.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20)
    {
        return false;
    }
    let rest = value.strip_prefix(b"{\"saga_id\":\"".as_slice());
    let rest = rest.and_then(|r| r.strip_prefix(saga));
    let rest = rest.and_then(|r| r.strip_prefix(b"\",\"op\":\"".as_slice()));
    let rest = rest.and_then(|r| r.strip_prefix(op));
    rest.is_some_and(|r| r.first() == Some(&b'"'))
}

/// An outbox record's key: its id (big-endian, so keys sort by id) and how many entries it
/// holds. Records written before records held several entries have an 8-byte key (one entry).
fn outbox_key(id: u64, entries: usize) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(&u32::try_from(entries).unwrap_or(u32::MAX).to_be_bytes());
    k
}

fn outbox_key_id(k: &[u8]) -> u64 {
    read_u64(&k[..k.len().min(8)])
}

fn outbox_key_count(k: &[u8]) -> usize {
    match k.get(8..12) {
        Some(n) => read_u64(n) as usize,
        None => 1,
    }
}

/// An outbox record: a JSON array of entries, or (written by earlier versions) one entry.
fn decode_outbox(key: u64, v: &[u8]) -> Result<Vec<OutboxEntry>> {
    let name = format!("outbox/{key}");
    if v.first() == Some(&b'[') {
        decode(&name, v)
    } else {
        Ok(vec![decode(&name, v)?])
    }
}

fn read_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[8 - n..].copy_from_slice(&b[b.len() - n..]);
    u64::from_be_bytes(a)
}

pub(crate) fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| RuntimeError::Corrupt {
        key: key.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::MessageTx;
    use events::{EventKind, Krw, KrwCommitted, UserId};
    use std::sync::Arc;

    fn committed(saga: SagaId) -> Event {
        Event::KrwCommitted(KrwCommitted {
            saga_id: saga,
            user_id: UserId::parse("alice").unwrap(),
            krw_amount: Krw::parse("100").unwrap(),
        })
    }

    fn entry(saga: SagaId, op: Op) -> JournalEntry {
        let alice = UserId::parse("alice").unwrap();
        JournalEntry::new(
            saga,
            op,
            Currency::Krw,
            (Account::Held(alice), Account::House),
            Decimal::from(100),
            1,
        )
    }

    #[tokio::test]
    async fn the_relay_sees_an_outbox_entry_only_after_its_flush() {
        let store = Store::temporary().unwrap();
        let saga = SagaId::new_v7();
        store
            .transact(|tx| tx.emit(&committed(saga), "cause", 5))
            .unwrap();
        let wm = *store.watermark().borrow();
        assert!(
            store.outbox_batch(wm, 10).unwrap().is_empty(),
            "unflushed entry is visible"
        );
        let wm = store.flush().await.unwrap();
        let batch = store.outbox_batch(wm, 10).unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].1.event_id, saga.event_id(EventKind::KrwCommitted));
        assert_eq!(batch[0].1.causation_id, "cause");
        store.outbox_remove(&[batch[0].0]).unwrap();
        assert_eq!(store.outbox_stats(10).unwrap(), (0, 0));
    }

    #[tokio::test]
    async fn a_batch_commits_its_good_items_and_rolls_back_a_failing_one_alone() {
        let store = Store::temporary().unwrap();
        let (a, b) = (SagaId::new_v7(), SagaId::new_v7());
        // Item 1 sees item 0's writes; item 2 duplicates item 0's journal entry and aborts,
        // taking its own writes and its event with it; item 3 commits after it.
        let results = store
            .transact_each(&[0, 1, 2, 3], |tx, i| {
                match i {
                    0 => {
                        tx.put("count", &1u32)?;
                        tx.journal(&entry(a, Op::Hold))?;
                        tx.emit(&committed(a), "c0", 1)?;
                        tx.mark_seen("e0", 1)?;
                    }
                    1 => {
                        let n: u32 = tx.get("count")?.expect("item 0's write is visible");
                        tx.put("count", &(n + 1))?;
                        assert!(tx.seen("e0")?);
                    }
                    2 => {
                        tx.put("count", &100u32)?;
                        tx.emit(&committed(b), "c2", 1)?;
                        tx.journal(&entry(a, Op::Hold))?;
                    }
                    _ => tx.emit(&committed(b), "c3", 1)?,
                }
                Ok(*i)
            })
            .unwrap();
        assert!(matches!(results[0], Ok(0)));
        assert!(matches!(results[1], Ok(1)));
        assert!(matches!(
            results[2],
            Err(RuntimeError::JournalConflict { .. })
        ));
        assert!(matches!(results[3], Ok(3)));
        assert_eq!(store.get::<u32>("count").unwrap(), Some(2));
        assert_eq!(store.journal_entries().unwrap().len(), 1);

        // One outbox record with the two surviving events, in order, released by the flush.
        let wm = store.flush().await.unwrap();
        let batch = store.outbox_batch(wm, 1).unwrap();
        let causes: Vec<&str> = batch.iter().map(|(_, e)| e.causation_id.as_str()).collect();
        assert_eq!(causes, ["c0", "c3"]);
        assert_eq!(batch[0].0, batch[1].0, "one record");
        assert_eq!(store.outbox_stats(1).unwrap(), (2, 0));
        store.outbox_remove(&[batch[0].0]).unwrap();
        assert_eq!(store.outbox_stats(1).unwrap(), (0, 0));
    }

    #[tokio::test]
    async fn concurrent_flushes_all_return_and_a_dropped_store_reopens_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let saga = SagaId::new_v7();
        let flushes: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store.transact(|tx| tx.put(&format!("k{i}"), &i)).unwrap();
                    store.flush().await.unwrap()
                })
            })
            .collect();
        for f in flushes {
            f.await.unwrap();
        }
        store
            .transact(|tx| tx.emit(&committed(saga), "c", 1))
            .unwrap();
        let wm = store.flush().await.unwrap();
        assert_eq!(store.outbox_batch(wm, 10).unwrap().len(), 1);
        // The flush thread holds the database too; dropping the store ends it, so the same
        // path opens again straight away (as a restart in one process does).
        drop(store);
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(again.get::<i32>("k7").unwrap(), Some(7));
        assert_eq!(again.outbox_stats(1).unwrap().0, 1);
    }

    #[tokio::test]
    async fn a_large_batch_is_split_into_outbox_records_in_order() {
        let store = Store::temporary().unwrap();
        let n = OUTBOX_RECORD_MAX_ENTRIES + 4;
        let items: Vec<usize> = (0..n).collect();
        store
            .transact_each(&items, |tx, i| {
                tx.emit(&committed(SagaId::new_v7()), &i.to_string(), 1)
            })
            .unwrap();
        let wm = store.flush().await.unwrap();
        let all = store.outbox_batch(wm, usize::MAX).unwrap();
        let causes: Vec<String> = all.iter().map(|(_, e)| e.causation_id.clone()).collect();
        let want: Vec<String> = items.iter().map(|i| i.to_string()).collect();
        assert_eq!(causes, want);
        let mut keys: Vec<u64> = all.iter().map(|(k, _)| *k).collect();
        keys.dedup();
        assert_eq!(
            keys.len(),
            2,
            "{OUTBOX_RECORD_MAX_ENTRIES} entries, then the rest"
        );
        // A window stops after the record that reaches `max`.
        assert_eq!(
            store.outbox_batch(wm, 1).unwrap().len(),
            OUTBOX_RECORD_MAX_ENTRIES
        );
        assert_eq!(store.outbox_stats(1).unwrap().0, n);
    }

    #[test]
    fn an_outbox_record_of_an_earlier_version_still_reads_and_goes() {
        let store = Store::temporary().unwrap();
        let saga = SagaId::new_v7();
        let old = outbox_entry(&committed(saga), "old", 7);
        // Before records held several entries: an 8-byte key and one JSON object.
        let id = store
            .outbox
            .transaction(|t| Ok::<_, ConflictableTransactionError<()>>(t.generate_id()?))
            .unwrap()
            + 1;
        store
            .outbox
            .insert(id.to_be_bytes(), serde_json::to_vec(&old).unwrap())
            .unwrap();
        store
            .transact(|tx| tx.emit(&committed(saga), "new", 8))
            .unwrap();
        let all = store.outbox_batch(u64::MAX, 10).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].0, &all[0].1), (id, &old));
        assert_eq!(all[1].1.causation_id, "new");
        assert_eq!(store.outbox_stats(10).unwrap(), (2, 3));
        assert_eq!(store.outbox_tail().unwrap(), all[1].0);
        store.outbox_remove(&[id]).unwrap();
        assert_eq!(store.outbox_stats(10).unwrap().0, 1);
    }

    #[test]
    fn a_second_journal_entry_for_one_operation_rolls_the_transaction_back() {
        let store = Store::temporary().unwrap();
        let saga = SagaId::new_v7();
        store
            .transact(|tx| tx.journal(&entry(saga, Op::Commit)))
            .unwrap();
        let err = store
            .transact(|tx| {
                tx.put("touched", &true)?;
                tx.journal(&entry(saga, Op::Commit))
            })
            .unwrap_err();
        assert!(matches!(err, RuntimeError::JournalConflict { .. }), "{err}");
        assert_eq!(
            store.get::<bool>("touched").unwrap(),
            None,
            "not rolled back"
        );
        assert_eq!(store.journal_entries().unwrap().len(), 1);
    }

    #[test]
    fn the_journal_by_saga_puts_an_entry_stored_under_another_key_where_its_own_key_sorts() {
        let store = Store::temporary().unwrap();
        let (a, b, c) = (
            SagaId::from(uuid::Uuid::from_u128(1)),
            SagaId::from(uuid::Uuid::from_u128(2)),
            SagaId::from(uuid::Uuid::from_u128(3)),
        );
        store
            .transact(|tx| {
                tx.journal(&entry(a, Op::Commit))?;
                tx.journal(&entry(b, Op::Commit))?;
                tx.journal(&entry(c, Op::Commit))
            })
            .unwrap();
        // Behind the store's back: a second `a:commit`, stored under c's key space.
        let stray = entry(a, Op::Commit);
        let stray_key = format!("{c}:hold");
        store
            .journal
            .insert(stray_key.as_bytes(), serde_json::to_vec(&stray).unwrap())
            .unwrap();
        let keys: Vec<String> = store
            .journal_iter_by_saga()
            .unwrap()
            .map(|e| e.unwrap().key())
            .collect();
        assert_eq!(
            keys,
            [
                format!("{a}:commit"),
                format!("{a}:commit"),
                format!("{b}:commit"),
                format!("{c}:commit"),
            ]
        );
        // A sound journal reads as stored.
        store.journal.remove(stray_key.as_bytes()).unwrap();
        let all: Vec<JournalEntry> = store
            .journal_iter_by_saga()
            .unwrap()
            .map(|line| line.unwrap().entry.unwrap())
            .collect();
        assert_eq!(all, store.journal_entries().unwrap());
    }

    #[test]
    fn an_entry_with_a_name_the_ledger_does_not_know_reaches_the_walk_as_a_line_that_says_so() {
        let store = Store::temporary().unwrap();
        let (a, b) = (
            SagaId::from(uuid::Uuid::from_u128(1)),
            SagaId::from(uuid::Uuid::from_u128(2)),
        );
        store
            .transact(|tx| tx.journal(&entry(b, Op::Hold)))
            .unwrap();
        // Behind the store's back: an op no version ever wrote.
        let mut odd = serde_json::to_value(entry(a, Op::Hold)).unwrap();
        odd["op"] = "bogus".into();
        let key = format!("{a}:bogus");
        store
            .journal
            .insert(key.as_bytes(), serde_json::to_vec(&odd).unwrap())
            .unwrap();
        let groups: Vec<SagaGroup<SagaId, u32, 1>> =
            store.by_saga(["r:"]).unwrap().map(Result::unwrap).collect();
        assert_eq!(groups.len(), 2);
        let line = &groups[0].entries[0];
        assert_eq!((line.key(), line.saga_id), (key.clone(), a));
        assert_eq!(
            line.entry,
            Err(format!(
                "journal {key} does not read: op \"bogus\" is not one the ledger knows"
            ))
        );
        assert_eq!(groups[1].entries[0].entry, Ok(entry(b, Op::Hold)));
    }

    #[test]
    fn by_saga_yields_each_saga_with_its_entries_and_records_in_id_order() {
        let store = Store::temporary().unwrap();
        let id = |n: u128| SagaId::from(uuid::Uuid::from_u128(n << 124));
        let (a, b, c, d) = (id(1), id(2), id(3), id(5));
        store
            .transact(|tx| {
                tx.journal(&entry(c, Op::Commit))?;
                tx.journal(&entry(a, Op::Hold))?;
                tx.journal(&entry(a, Op::Commit))?;
                tx.put(&format!("r:{a}"), &1u32)?;
                tx.put(&format!("r:{d}"), &4u32)?;
                tx.put("r:4", &9u32)?; // names no saga id; sorts between a and d
                tx.put(&format!("q:{b}"), &2u32)
            })
            .unwrap();
        let rec = |k: String, v: u32| Some((k, v));

        // Compared as ids: the key that names none comes alone, where it sorts under `r:`.
        let groups: Vec<SagaGroup<SagaId, u32, 2>> = store
            .by_saga(["r:", "q:"])
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let summary: Vec<_> = groups
            .iter()
            .map(|g| {
                let ops: Vec<&str> = g.entries.iter().map(|e| e.op.as_str()).collect();
                (g.saga, ops, g.records.clone())
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    Some(a),
                    vec!["commit", "hold"],
                    [rec(format!("r:{a}"), 1), None]
                ),
                (None, vec![], [rec("r:4".into(), 9), None]),
                (Some(b), vec![], [None, rec(format!("q:{b}"), 2)]),
                (Some(c), vec!["commit"], [None, None]),
                (Some(d), vec![], [rec(format!("r:{d}"), 4), None]),
            ]
        );

        // Compared as text: every key names a saga, sorted with the rest.
        let sagas: Vec<String> = store
            .by_saga::<String, u32, 1>(["r:"])
            .unwrap()
            .map(|g| g.unwrap().saga.unwrap())
            .collect();
        assert_eq!(
            sagas,
            [a.to_string(), c.to_string(), "4".into(), d.to_string()]
        );
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
