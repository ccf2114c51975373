//! The tracker's sled store: records, indices and the last processed stream sequence.
//!
//! Everything lives in one sled tree under one-byte key prefixes, so that a batch of records,
//! their index entries, the aggregates and the last stream sequence are written by one atomic
//! `apply_batch`: after a crash the store is exactly as of some processed sequence, and the
//! tracker resumes from the message after it. Nothing here needs a flush for correctness:
//! losing the tail of the writes only means re-reading it from the stream. What a power cut
//! must not break is the store itself, so it is opened through `runtime::durable::open`.
//!
//! | key | value |
//! |---|---|
//! | `s` saga-uuid(16) | encoded [`SagaRecord`] |
//! | `o` first_seq(8, BE) | saga uuid: every saga, oldest to newest |
//! | `t` state(1) first_seq(8) | saga uuid: non-terminal sagas by state |
//! | `u` user 0x00 first_seq(8) | saga uuid: by user |
//! | `i` first_seq(8) | saga uuid: INCONSISTENT sagas |
//! | `r` first_seq(8) | saga uuid: sagas with a reversal pending (trade.cancelled, no trade.reversed) |
//! | `m` name | meta: `last_seq`, `aggregates` |

use std::path::Path;

use events::{SagaId, UserId};
use uuid::Uuid;

use crate::codec;
use crate::projection::{SagaRecord, SagaState};
use crate::stats::Aggregates;
use crate::TrackerError;

/// sled's page cache, in bytes: bounded so the process's memory does not grow with the store.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

const SAGA: u8 = b's';
const ORDER: u8 = b'o';
const STATE: u8 = b't';
const USER: u8 = b'u';
const INCONSISTENT: u8 = b'i';
const REVERSAL_PENDING: u8 = b'r';
const META_LAST_SEQ: &[u8] = b"mlast_seq";
const META_AGGREGATES: &[u8] = b"maggregates";

/// The on-disk side of the read model.
pub struct Store {
    db: sled::Db,
}

/// Which index a listing walks.
#[derive(Clone, Debug)]
pub enum Index {
    /// Every saga.
    All,
    /// Sagas in one non-terminal state.
    State(SagaState),
    /// One user's sagas.
    User(UserId),
    /// INCONSISTENT sagas.
    Inconsistent,
    /// Sagas with a reversal pending at the venue.
    ReversalPending,
}

impl Index {
    fn prefix(&self) -> Vec<u8> {
        match self {
            Index::All => vec![ORDER],
            Index::State(s) => vec![STATE, s.index() as u8],
            Index::User(u) => {
                let mut p = vec![USER];
                p.extend_from_slice(u.as_str().as_bytes());
                p.push(0);
                p
            }
            Index::Inconsistent => vec![INCONSISTENT],
            Index::ReversalPending => vec![REVERSAL_PENDING],
        }
    }
}

fn key(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn saga_key(id: SagaId) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = SAGA;
    k[1..].copy_from_slice(id.uuid().as_bytes());
    k
}

fn id_from(v: &[u8]) -> Result<SagaId, TrackerError> {
    let b: [u8; 16] = v.try_into().map_err(|_| TrackerError::Corrupt {
        key: "index".into(),
        message: format!("index value of {} bytes, want 16", v.len()),
    })?;
    Ok(SagaId::from(Uuid::from_bytes(b)))
}

/// What a persisted record was, so the next write knows which index entries to move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Persisted {
    /// The state in the `t` index.
    pub state: SagaState,
    /// Whether it is in the `i` index.
    pub inconsistent: bool,
    /// Whether it is in the `r` index.
    pub reversal_pending: bool,
}

impl Persisted {
    /// What writing `rec` puts in the indices.
    pub fn of(rec: &SagaRecord) -> Persisted {
        Persisted {
            state: rec.state,
            inconsistent: rec.is_inconsistent(),
            reversal_pending: rec.is_reversal_pending(),
        }
    }
}

/// Inserts or removes `key` so that it is present exactly when `now` is.
fn flip(batch: &mut sled::Batch, was: bool, now: bool, key: Vec<u8>, id: &[u8]) {
    match (was, now) {
        (false, true) => batch.insert(key, id),
        (true, false) => batch.remove(key),
        _ => {}
    }
}

/// One atomic write: records, index moves, meta.
#[derive(Default)]
pub struct WriteBatch {
    batch: sled::Batch,
    buf: Vec<u8>,
}

impl WriteBatch {
    /// Writes `rec` and moves its index entries from `before` (`None`: a new saga).
    pub fn put(&mut self, rec: &SagaRecord, before: Option<Persisted>) -> Persisted {
        self.buf.clear();
        codec::encode(rec, &mut self.buf);
        self.batch.insert(&saga_key(rec.saga_id)[..], &self.buf[..]);
        let uuid = rec.saga_id.uuid();
        let id = &uuid.as_bytes()[..];
        let seq = rec.first_seq;
        let now = Persisted::of(rec);
        if before.is_none() {
            self.batch.insert(key(&Index::All.prefix(), seq), id);
            self.batch
                .insert(key(&Index::User(rec.user_id.clone()).prefix(), seq), id);
        }
        // Only non-terminal sagas are indexed by state: they are what start-up loads into
        // memory, and during a replay most sagas start and finish within one batch, so they
        // never touch this index (a quarter fewer sled writes). Terminal states are listed by
        // walking the `o` index with a filter.
        if before.map(|b| b.state) != Some(now.state) {
            if let Some(b) = before.filter(|b| !b.state.is_terminal()) {
                self.batch.remove(key(&Index::State(b.state).prefix(), seq));
            }
            if !now.state.is_terminal() {
                self.batch
                    .insert(key(&Index::State(now.state).prefix(), seq), id);
            }
        }
        flip(
            &mut self.batch,
            before.is_some_and(|b| b.inconsistent),
            now.inconsistent,
            key(&Index::Inconsistent.prefix(), seq),
            id,
        );
        flip(
            &mut self.batch,
            before.is_some_and(|b| b.reversal_pending),
            now.reversal_pending,
            key(&Index::ReversalPending.prefix(), seq),
            id,
        );
        now
    }

    /// Adds `rec` to the reversal-pending index (the one-time recount of a store written before
    /// that index existed).
    pub fn index_reversal_pending(&mut self, rec: &SagaRecord) {
        self.batch.insert(
            key(&Index::ReversalPending.prefix(), rec.first_seq),
            &rec.saga_id.uuid().as_bytes()[..],
        );
    }

    /// Records the last processed stream sequence and the aggregates as of it.
    pub fn meta(&mut self, last_seq: u64, agg: &Aggregates) {
        self.batch
            .insert(META_LAST_SEQ, &last_seq.to_be_bytes()[..]);
        self.batch.insert(META_AGGREGATES, agg.encode());
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, TrackerError> {
        // Opened durably (conf and directories fsynced) so that a power cut leaves a store
        // sled can reopen; its writes need no fsync (see the module comment).
        let config = sled::Config::new().cache_capacity(SLED_CACHE_BYTES);
        let db = runtime::durable::open(config, dir).map_err(|e| match e {
            runtime::durable::OpenError::Store(e) => TrackerError::Store(e),
            runtime::durable::OpenError::Sync(e) => TrackerError::DataDir {
                path: e.path,
                message: e.message,
            },
        })?;
        Ok(Store { db })
    }

    /// The last processed stream sequence (0: nothing yet).
    pub fn last_seq(&self) -> Result<u64, TrackerError> {
        Ok(match self.db.get(META_LAST_SEQ)? {
            Some(v) => {
                u64::from_be_bytes(v.as_ref().try_into().map_err(|_| TrackerError::Corrupt {
                    key: "last_seq".into(),
                    message: "not 8 bytes".into(),
                })?)
            }
            None => 0,
        })
    }

    /// The stored aggregates (zero on an empty store), and whether they count reversals: false
    /// for a store written before they did, whose reversal totals and `r` index must be
    /// recounted from the records.
    pub fn aggregates(&self) -> Result<(Aggregates, bool), TrackerError> {
        match self.db.get(META_AGGREGATES)? {
            Some(v) => Aggregates::decode(&v).map_err(|e| TrackerError::Corrupt {
                key: "aggregates".into(),
                message: e.to_string(),
            }),
            None => Ok((Aggregates::default(), true)),
        }
    }

    /// One saga's record.
    pub fn get(&self, id: SagaId) -> Result<Option<SagaRecord>, TrackerError> {
        self.db
            .get(saga_key(id))?
            .map(|v| {
                codec::decode(&v).map_err(|e| TrackerError::Corrupt {
                    key: format!("saga {id}"),
                    message: e.to_string(),
                })
            })
            .transpose()
    }

    /// Applies a batch atomically.
    pub fn write(&self, batch: WriteBatch) -> Result<(), TrackerError> {
        self.db.apply_batch(batch.batch)?;
        Ok(())
    }

    /// Flushes to disk (at shutdown, so a clean restart re-reads nothing).
    pub async fn flush(&self) -> Result<(), TrackerError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// `(first_seq, saga id)` of `index`, newest first, starting below `before` (exclusive),
    /// at most `max` entries.
    pub fn scan(
        &self,
        index: &Index,
        before: Option<u64>,
        max: usize,
    ) -> Result<Vec<(u64, SagaId)>, TrackerError> {
        let prefix = index.prefix();
        let end = key(&prefix, before.unwrap_or(u64::MAX));
        let mut out = Vec::new();
        for item in self.db.range(prefix.clone()..end).rev().take(max) {
            let (k, v) = item?;
            let seq = u64::from_be_bytes(k[k.len() - 8..].try_into().expect("8 bytes"));
            out.push((seq, id_from(&v)?));
        }
        // u64::MAX itself is excluded by the range; no real stream reaches it.
        Ok(out)
    }

    /// Every stored record (tests and rebuild comparisons; reads the whole store).
    pub fn all(&self) -> Result<Vec<SagaRecord>, TrackerError> {
        let mut out = Vec::new();
        self.for_each(|rec| out.push(rec))?;
        Ok(out)
    }

    /// Calls `f` with every stored record, one at a time (reads the whole store).
    pub fn for_each(&self, mut f: impl FnMut(SagaRecord)) -> Result<(), TrackerError> {
        for item in self.db.scan_prefix([SAGA]) {
            let (k, v) = item?;
            f(codec::decode(&v).map_err(|e| TrackerError::Corrupt {
                key: format!("{k:?}"),
                message: e.to_string(),
            })?);
        }
        Ok(())
    }

    /// Bytes sled reports on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Makes the store look as a tracker that did not count reversals left it: version-1
    /// aggregates and no `r` index (for the upgrade test).
    #[cfg(test)]
    pub(crate) fn forget_reversals(&self) -> Result<(), TrackerError> {
        let (agg, _) = self.aggregates()?;
        self.db.insert(META_AGGREGATES, agg.encode_v1())?;
        for item in self.db.scan_prefix([REVERSAL_PENDING]) {
            self.db.remove(item?.0)?;
        }
        Ok(())
    }
}
