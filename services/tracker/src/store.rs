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
//! | `t` state(1) first_seq(8) | saga uuid: sagas by state (every state) |
//! | `u` user 0x00 first_seq(8) | saga uuid: by user |
//! | `f` reason(1) first_seq(8) | saga uuid: by failure reason (its position in the reason codes) |
//! | `a` started_at(8) first_seq(8) | saga uuid: by start time (stream time, ms) |
//! | `i` first_seq(8) | saga uuid: INCONSISTENT sagas |
//! | `r` first_seq(8) | saga uuid: sagas with a reversal pending (trade.cancelled, no trade.reversed) |
//! | `m` name | meta: `last_seq`, `aggregates`, `minutes`, `indexes` (the index layout version) |
//!
//! Every index but `a` is ordered by the saga's first stream sequence, so a search intersects
//! them by seeking (see `model::ReadModel::list`): newest first, whatever the filters.

use std::path::Path;

use events::{SagaId, UserId};
use uuid::Uuid;

use crate::codec;
use crate::projection::{reason_index, SagaRecord, SagaState};
use crate::stats::{Aggregates, Minutes};
use crate::TrackerError;

/// sled's page cache, in bytes: bounded so the process's memory does not grow with the store.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

const SAGA: u8 = b's';
const ORDER: u8 = b'o';
const STATE: u8 = b't';
const USER: u8 = b'u';
const INCONSISTENT: u8 = b'i';
const REVERSAL_PENDING: u8 = b'r';
const REASON: u8 = b'f';
const STARTED: u8 = b'a';
const META_LAST_SEQ: &[u8] = b"mlast_seq";
const META_AGGREGATES: &[u8] = b"maggregates";
const META_INDEXES: &[u8] = b"mindexes";
const META_MINUTES: &[u8] = b"mminutes";
/// Layout of the indices: 2 indexes terminal states in `t` and adds `f` and `a`. A store
/// written before (no `mindexes`) is reindexed once on open ([`Store::indexes_current`]).
const INDEX_VERSION: u8 = 2;

/// The on-disk side of the read model.
pub struct Store {
    db: sled::Db,
}

/// Which index a listing walks.
#[derive(Clone, Debug)]
pub enum Index {
    /// Every saga.
    All,
    /// Sagas in one state.
    State(SagaState),
    /// Sagas that failed (or were rejected) for one reason: its position in the reason codes.
    Reason(u8),
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
            Index::Reason(code) => vec![REASON, *code],
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
    /// Its entry in the `f` index.
    pub reason: Option<u8>,
}

impl Persisted {
    /// What writing `rec` puts in the indices.
    pub fn of(rec: &SagaRecord) -> Persisted {
        Persisted {
            state: rec.state,
            inconsistent: rec.is_inconsistent(),
            reversal_pending: rec.is_reversal_pending(),
            reason: rec.failure.map(|f| reason_index(f.code)),
        }
    }
}

fn started_key(at_ms: u64, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(STARTED);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
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
            self.batch.insert(started_key(rec.started_at_ms, seq), id);
        }
        // Every state is indexed, terminal ones too: a search by state must find 30
        // COMPENSATED sagas behind a million COMPLETED ones without walking them.
        if before.map(|b| b.state) != Some(now.state) {
            if let Some(b) = before {
                self.batch.remove(key(&Index::State(b.state).prefix(), seq));
            }
            self.batch
                .insert(key(&Index::State(now.state).prefix(), seq), id);
        }
        if before.and_then(|b| b.reason) != now.reason {
            if let Some(r) = before.and_then(|b| b.reason) {
                self.batch.remove(key(&Index::Reason(r).prefix(), seq));
            }
            if let Some(r) = now.reason {
                self.batch.insert(key(&Index::Reason(r).prefix(), seq), id);
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

    /// Adds what index layout 2 added for `rec` (terminal states in `t`, `f`, `a`): the
    /// one-time reindex of a store written before.
    pub fn index_v2(&mut self, rec: &SagaRecord) {
        let uuid = rec.saga_id.uuid();
        let id = &uuid.as_bytes()[..];
        let now = Persisted::of(rec);
        self.batch
            .insert(key(&Index::State(now.state).prefix(), rec.first_seq), id);
        if let Some(r) = now.reason {
            self.batch
                .insert(key(&Index::Reason(r).prefix(), rec.first_seq), id);
        }
        self.batch
            .insert(started_key(rec.started_at_ms, rec.first_seq), id);
    }

    /// Records the per-minute series as of the batch.
    pub fn minutes(&mut self, minutes: &Minutes) {
        self.batch.insert(META_MINUTES, minutes.encode());
    }

    /// Records the last processed stream sequence and the aggregates as of it.
    pub fn meta(&mut self, last_seq: u64, agg: &Aggregates) {
        self.batch.insert(META_INDEXES, &[INDEX_VERSION][..]);
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

    /// Whether the indices are of the current layout: true for an empty store (the first
    /// write stamps it) and for one written by this version; false for an older one, which
    /// [`crate::model::ReadModel::open`] reindexes.
    pub fn indexes_current(&self) -> Result<bool, TrackerError> {
        Ok(match self.db.get(META_INDEXES)? {
            Some(v) => v.as_ref() == [INDEX_VERSION],
            None => self.db.get(META_LAST_SEQ)?.is_none(),
        })
    }

    /// The newest entry of `index` at or below `at_most` (a first sequence): one seek.
    pub fn seek(&self, index: &Index, at_most: u64) -> Result<Option<(u64, SagaId)>, TrackerError> {
        let prefix = index.prefix();
        match self
            .db
            .range(prefix.clone()..=key(&prefix, at_most))
            .next_back()
        {
            Some(item) => {
                let (k, v) = item?;
                let seq = u64::from_be_bytes(k[k.len() - 8..].try_into().expect("8 bytes"));
                Ok(Some((seq, id_from(&v)?)))
            }
            None => Ok(None),
        }
    }

    /// The first sequences between which the sagas started from `from_ms` to `to_ms`
    /// (inclusive) lie: `(lowest, highest)`, `None` when no saga started in that range. Exact
    /// when start times grow with first sequences, as the stream's timestamps do; a caller
    /// still checks each record's start time.
    pub fn seq_window(
        &self,
        from_ms: Option<u64>,
        to_ms: Option<u64>,
    ) -> Result<Option<(u64, u64)>, TrackerError> {
        let from = started_key(from_ms.unwrap_or(0), 0);
        let to = started_key(to_ms.unwrap_or(u64::MAX), u64::MAX);
        let seq_of = |item: Option<sled::Result<(sled::IVec, sled::IVec)>>| -> Result<Option<u64>, TrackerError> {
            match item {
                Some(item) => {
                    let (k, _) = item?;
                    Ok(Some(u64::from_be_bytes(k[9..17].try_into().expect("8 bytes"))))
                }
                None => Ok(None),
            }
        };
        let lo = if from_ms.is_some() {
            seq_of(self.db.range(from.clone()..=to.clone()).next())?
        } else {
            Some(0)
        };
        let hi = if to_ms.is_some() {
            seq_of(self.db.range(from..=to).next_back())?
        } else {
            Some(u64::MAX)
        };
        Ok(lo.zip(hi).filter(|(lo, hi)| lo <= hi))
    }

    /// The stored per-minute series (empty on an empty store, and on one written before the
    /// charts: they fill as sagas finish).
    pub fn minutes(&self) -> Result<Minutes, TrackerError> {
        match self.db.get(META_MINUTES)? {
            Some(v) => Minutes::decode(&v).map_err(|e| TrackerError::Corrupt {
                key: "minutes".into(),
                message: e.to_string(),
            }),
            None => Ok(Minutes::default()),
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

    /// Makes the store look as a tracker before search left it: no terminal states in `t`, no
    /// `f` or `a` index, no layout stamp (for the upgrade test).
    #[cfg(test)]
    pub(crate) fn forget_index_v2(&self) -> Result<(), TrackerError> {
        self.db.remove(META_INDEXES)?;
        let terminal = SagaState::ALL.into_iter().filter(|s| s.is_terminal());
        let prefixes: Vec<Vec<u8>> = terminal
            .map(|s| Index::State(s).prefix())
            .chain([vec![REASON], vec![STARTED]])
            .collect();
        for p in prefixes {
            for item in self.db.scan_prefix(p) {
                self.db.remove(item?.0)?;
            }
        }
        Ok(())
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
