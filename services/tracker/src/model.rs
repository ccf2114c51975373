//! The read model: the projection of every saga, in memory where it is hot, in sled always.
//!
//! Memory holds every non-terminal saga (they are what STUCK is evaluated over and what events
//! still arrive for), the last `retain` sagas to finish, the aggregates and the ids of
//! INCONSISTENT sagas. Older terminal sagas are read from sled on demand. One writer (the
//! consumer) applies batches; HTTP handlers read concurrently.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use bytes::Bytes;
use events::{Event, EventKind, SagaId, UserId};
use runtime::Clock;
use rust_decimal::Decimal;
use tokio::sync::watch;

use crate::projection::{apply, is_admin, kind_index, reason_index, SagaRecord, SagaState};
use crate::stats::{Aggregates, Minutes, ReversalTotals, StatsView};
use crate::store::{Index, Persisted, Store, WriteBatch};
use crate::TrackerError;

/// Most sagas a listing returns in one page.
pub const MAX_PAGE: usize = 500;

/// One message of the `FX` stream, as the consumer hands it over.
#[derive(Clone, Debug)]
pub struct StreamMessage {
    /// Stream sequence.
    pub seq: u64,
    /// Stream timestamp, ms since the Unix epoch.
    pub at_ms: u64,
    /// The subject it was published on.
    pub subject: String,
    /// The body.
    pub payload: Bytes,
}

/// A saga that reached a terminal state in a batch (for metrics).
#[derive(Clone, Copy, Debug)]
pub struct Finished {
    /// COMPLETED, REJECTED or COMPENSATED.
    pub state: SagaState,
    /// First event to terminal event, ms.
    pub duration_ms: u64,
    /// First failure to COMPENSATED, ms (compensated sagas only).
    pub compensation_ms: Option<u64>,
}

/// What one batch did, for metrics (recorded outside the lock).
#[derive(Clone, Debug, Default)]
pub struct BatchReport {
    /// Messages in the batch.
    pub messages: usize,
    /// Events per kind, indexed like `EventKind::ALL`.
    pub kinds: [u64; EventKind::ALL.len()],
    /// Undecodable messages by `DecodeError::reason()`.
    pub undecodable: Vec<&'static str>,
    /// Duplicate events.
    pub duplicates: u64,
    /// Sagas that finished.
    pub finished: Vec<Finished>,
    /// The last stream sequence of the batch.
    pub last_seq: u64,
}

struct Slot {
    rec: SagaRecord,
    /// What sled holds for this saga (`None`: not yet written).
    persisted: Option<Persisted>,
    dirty: bool,
}

#[derive(Default)]
struct Inner {
    sagas: HashMap<SagaId, Slot>,
    /// Sagas in the order they finished, for eviction past `retain`. May hold ids that were
    /// evicted already or left the terminal state; eviction checks.
    finished_order: VecDeque<SagaId>,
    /// INCONSISTENT sagas by first sequence (ids only: they are rare, and shown on top).
    inconsistent: BTreeMap<u64, SagaId>,
    agg: Aggregates,
    /// Finished sagas per minute of the last hour (the dashboard's charts).
    minutes: Minutes,
    last_seq: u64,
    dirty: Vec<SagaId>,
}

/// A flag a search selects by (`/api/sagas?flag=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    /// Not terminal and no event for longer than `FX_STUCK_AFTER_MS` (at the clock's now).
    Stuck,
    /// A sequence the choreography cannot produce.
    Inconsistent,
    /// trade.cancelled and no trade.reversed yet.
    ReversalPending,
}

impl Flag {
    /// Every flag, as `/api/sagas?flag=` names them.
    pub const ALL: [Flag; 3] = [Flag::Stuck, Flag::Inconsistent, Flag::ReversalPending];

    /// `stuck`, `inconsistent`, `reversal_pending`.
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::Stuck => "stuck",
            Flag::Inconsistent => "inconsistent",
            Flag::ReversalPending => "reversal_pending",
        }
    }

    /// Parses a flag name, case-insensitively.
    pub fn parse(s: &str) -> Option<Flag> {
        Flag::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// A search (`/api/sagas`): every filter given must hold.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Only sagas in this state.
    pub state: Option<SagaState>,
    /// Only this user's sagas.
    pub user: Option<UserId>,
    /// Only sagas that failed or were rejected for this reason code (e.g. `account_frozen`).
    pub reason: Option<&'static str>,
    /// Only sagas with this flag.
    pub flag: Option<Flag>,
    /// Only sagas that started at or after this stream time, ms.
    pub from_ms: Option<u64>,
    /// Only sagas that started at or before this stream time, ms.
    pub to_ms: Option<u64>,
    /// Only sagas of at least this many KRW.
    pub min_krw: Option<Decimal>,
    /// Only sagas of at most this many KRW.
    pub max_krw: Option<Decimal>,
    /// Page size (capped at [`MAX_PAGE`]).
    pub limit: usize,
    /// Continue below this first sequence (from a previous page's `next_cursor`).
    pub cursor: Option<u64>,
}

impl ListQuery {
    /// Whether `rec` passes every filter at `now_ms` (the record is the truth; indexes only
    /// find candidates).
    pub fn matches(&self, rec: &SagaRecord, now_ms: u64, stuck_after_ms: u64) -> bool {
        let krw = rec.krw_amount().map(|k| k.amount());
        self.state.is_none_or(|s| s == rec.state)
            && self.user.as_ref().is_none_or(|u| *u == rec.user_id)
            && self
                .reason
                .is_none_or(|r| rec.failure.is_some_and(|f| f.code == r))
            && self.flag.is_none_or(|f| match f {
                Flag::Stuck => rec.is_stuck(now_ms, stuck_after_ms),
                Flag::Inconsistent => rec.is_inconsistent(),
                Flag::ReversalPending => rec.is_reversal_pending(),
            })
            && self.from_ms.is_none_or(|f| rec.started_at_ms >= f)
            && self.to_ms.is_none_or(|t| rec.started_at_ms <= t)
            && self.min_krw.is_none_or(|m| krw.is_some_and(|k| k >= m))
            && self.max_krw.is_none_or(|m| krw.is_some_and(|k| k <= m))
    }
}

/// A list of `(first_seq, saga id)` a search intersects: a store index, or (for STUCK, which is
/// evaluated against the clock and never stored) the candidates in memory, ascending.
enum Postings {
    Stored(Index),
    Memory(Vec<(u64, SagaId)>),
}

impl Postings {
    /// The newest entry at or below `at_most`.
    fn seek(&self, store: &Store, at_most: u64) -> Result<Option<(u64, SagaId)>, TrackerError> {
        match self {
            Postings::Stored(index) => store.seek(index, at_most),
            Postings::Memory(v) => {
                let n = v.partition_point(|(seq, _)| *seq <= at_most);
                Ok(n.checked_sub(1).map(|i| v[i]))
            }
        }
    }
}

/// The newest sequence at or below `at_most` that every list holds (a leapfrog join: each
/// list in turn seeks to the lowest candidate so far, until all agree).
fn intersect(
    store: &Store,
    lists: &[Postings],
    at_most: u64,
) -> Result<Option<(u64, SagaId)>, TrackerError> {
    let mut candidate = at_most;
    loop {
        let mut agreed = None;
        for list in lists {
            match list.seek(store, candidate)? {
                None => return Ok(None),
                Some((seq, id)) if seq == candidate => agreed = Some(id),
                Some((seq, _)) => {
                    candidate = seq;
                    agreed = None;
                    break;
                }
            }
        }
        if let Some(id) = agreed {
            return Ok(Some((candidate, id)));
        }
    }
}

/// One page of a listing, newest first.
#[derive(Clone, Debug)]
pub struct Page {
    /// The sagas.
    pub sagas: Vec<SagaRecord>,
    /// Pass as `cursor` to get the next page; `None` at the end.
    pub next_cursor: Option<u64>,
}

/// What [`ReadModel::waiting`] reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Waiting {
    /// Every non-terminal state, in [`SagaState::ALL`] order, with what waits in it.
    pub by_state: Vec<(SagaState, StateWaiting)>,
    /// The longest a saga now COMPENSATING has been compensating (since the event that started
    /// its compensation), ms; 0 when none is.
    pub oldest_compensating_ms: u64,
}

/// The sagas in one non-terminal state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateWaiting {
    /// How many are STUCK (no event for longer than `FX_STUCK_AFTER_MS`).
    pub stuck: u64,
    /// The longest time since one's last event, ms; 0 when the state is empty.
    pub oldest_idle_ms: u64,
}

/// The projection of every saga (see the module docs).
pub struct ReadModel {
    store: Store,
    inner: RwLock<Inner>,
    retain: usize,
    stuck_after_ms: u64,
    clock: Clock,
    processed: watch::Sender<u64>,
    stream_last_seq: AtomicU64,
}

impl ReadModel {
    /// Opens the store in `data_dir` and loads what memory keeps: non-terminal sagas, the
    /// inconsistent index, aggregates and the last sequence. An empty dir starts from zero, and
    /// the consumer then rebuilds everything from the stream.
    pub fn open(
        data_dir: &std::path::Path,
        retain: usize,
        stuck_after_ms: u64,
        clock: Clock,
    ) -> Result<ReadModel, TrackerError> {
        let store = Store::open(data_dir)?;
        let (agg, reversals_counted) = store.aggregates()?;
        let mut inner = Inner {
            last_seq: store.last_seq()?,
            agg,
            minutes: store.minutes()?,
            ..Inner::default()
        };
        if !reversals_counted {
            inner.agg.reversals = recount_reversals(&store, inner.last_seq, &inner.agg)?;
        }
        if !store.indexes_current()? {
            reindex(&store, inner.last_seq, &inner.agg)?;
        }
        for state in SagaState::ALL.into_iter().filter(|s| !s.is_terminal()) {
            for (_, id) in store.scan(&Index::State(state), None, usize::MAX)? {
                if let Some(rec) = store.get(id)? {
                    let persisted = Some(Persisted::of(&rec));
                    inner.sagas.insert(
                        id,
                        Slot {
                            rec,
                            persisted,
                            dirty: false,
                        },
                    );
                }
            }
        }
        for (seq, id) in store.scan(&Index::Inconsistent, None, usize::MAX)? {
            inner.inconsistent.insert(seq, id);
        }
        let (processed, _) = watch::channel(inner.last_seq);
        Ok(ReadModel {
            store,
            inner: RwLock::new(inner),
            retain,
            stuck_after_ms,
            clock,
            processed,
            stream_last_seq: AtomicU64::new(0),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock is a bug that already crashed a task; the data is
        // still the last consistent batch, so reading on is better than cascading panics.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Decodes, projects and stores one batch of stream messages (in stream order), then
    /// announces the new last sequence. Undecodable messages are counted and skipped.
    pub fn ingest(&self, batch: &[StreamMessage]) -> Result<BatchReport, TrackerError> {
        let mut report = BatchReport {
            messages: batch.len(),
            ..BatchReport::default()
        };
        let Some(last) = batch.last() else {
            return Ok(report);
        };
        // Decode before taking the lock: it is most of the CPU work and needs no shared state.
        let decoded: Vec<(u64, u64, Result<Event, events::DecodeError>)> = batch
            .iter()
            .map(|m| (m.seq, m.at_ms, Event::decode(&m.subject, &m.payload)))
            .collect();

        let mut write = WriteBatch::default();
        {
            let mut inner = self.write();
            let inner = &mut *inner;
            for (seq, at_ms, event) in decoded {
                if seq <= inner.last_seq {
                    // Already projected (a consumer restarted from an older sequence).
                    continue;
                }
                inner.last_seq = seq;
                match event {
                    Err(e) => {
                        tracing::warn!(seq, reason = e.reason(), error = %e, "skipping an undecodable message");
                        inner.agg.undecodable += 1;
                        report.undecodable.push(e.reason());
                    }
                    Ok(event) => {
                        report.kinds[kind_index(event.kind())] += 1;
                        self.project(inner, &event, seq, at_ms, &mut report)?;
                    }
                }
            }
            for id in std::mem::take(&mut inner.dirty) {
                let slot = inner.sagas.get_mut(&id).expect("dirty sagas are in memory");
                slot.persisted = Some(write.put(&slot.rec, slot.persisted));
                slot.dirty = false;
            }
            write.meta(inner.last_seq, &inner.agg);
            write.minutes(&inner.minutes);
            report.last_seq = inner.last_seq;
        }
        self.store.write(write)?;
        {
            let mut inner = self.write();
            let inner = &mut *inner;
            while inner.finished_order.len() > self.retain {
                let id = inner.finished_order.pop_front().expect("len > retain >= 0");
                if inner.sagas.get(&id).is_some_and(|s| s.rec.is_terminal()) {
                    inner.sagas.remove(&id);
                }
            }
        }
        debug_assert!(report.last_seq >= last.seq);
        self.processed.send_replace(report.last_seq);
        Ok(report)
    }

    fn project(
        &self,
        inner: &mut Inner,
        event: &Event,
        seq: u64,
        at_ms: u64,
        report: &mut BatchReport,
    ) -> Result<(), TrackerError> {
        if is_admin(event.kind()) {
            match event.kind() {
                EventKind::KrwDeposited => inner.agg.krw_deposits += 1,
                EventKind::UsdDeposited => inner.agg.usd_deposits += 1,
                // Freezes are on the stream as the audit trail; the tracker has nothing to add.
                _ => {}
            }
            return Ok(());
        }
        let id = event.saga_id();
        let mut reloaded = false;
        let slot = match inner.sagas.entry(id) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                // New, or a late event for a terminal saga that was evicted: then bring it
                // back to apply it.
                let slot = match self.store.get(id)? {
                    Some(rec) => {
                        reloaded = true;
                        let persisted = Some(Persisted::of(&rec));
                        Slot {
                            rec,
                            persisted,
                            dirty: false,
                        }
                    }
                    None => Slot {
                        rec: SagaRecord::new(id, event.user_id().clone()),
                        persisted: None,
                        dirty: false,
                    },
                };
                v.insert(slot)
            }
        };
        let duration_before = slot.rec.duration_ms();
        let finished_before = slot.rec.finished_at_ms.map(|f| (slot.rec.state, f));
        let was_inconsistent = slot.rec.is_inconsistent();
        let reversal_before = slot.rec.reversal_status();
        let applied = apply(&mut slot.rec, event, seq, at_ms);
        let rec = &mut slot.rec;
        inner
            .agg
            .reversals
            .update(reversal_before, rec.reversal_status());
        inner.agg.events += 1;
        if applied.duplicate {
            inner.agg.duplicates += 1;
            report.duplicates += 1;
        }
        if applied.previous != Some(applied.state) {
            if let Some(p) = applied.previous {
                inner.agg.by_state[p.index()] -= 1;
            }
            inner.agg.by_state[applied.state.index()] += 1;
        }
        if applied.became_terminal() {
            let duration_ms = rec.duration_ms().unwrap_or(0);
            inner.agg.durations.add(duration_ms);
            if let Some(f) = rec.finished_at_ms {
                inner.minutes.add(applied.state, f, duration_ms);
            }
            report.finished.push(Finished {
                state: applied.state,
                duration_ms,
                compensation_ms: (applied.state == SagaState::Compensated)
                    .then(|| {
                        rec.compensation_started_at_ms
                            .map(|c| rec.finished_at_ms.unwrap_or(c).saturating_sub(c))
                    })
                    .flatten(),
            });
        }
        if applied.left_terminal() {
            if let Some(d) = duration_before {
                inner.agg.durations.remove(d);
                if let Some((state, f)) = finished_before {
                    inner.minutes.remove(state, f, d);
                }
            }
        }
        if rec.is_terminal() && (applied.became_terminal() || reloaded) {
            inner.finished_order.push_back(id);
        }
        if !rec.timeline.is_empty() && rec.is_terminal() {
            // Terminal records rarely grow again: give back the Vec's spare room.
            rec.timeline.shrink_to_fit();
        }
        let inconsistent = rec.is_inconsistent();
        if inconsistent != was_inconsistent {
            if inconsistent {
                inner.inconsistent.insert(rec.first_seq, id);
            } else {
                inner.inconsistent.remove(&rec.first_seq);
            }
        }
        if !slot.dirty {
            slot.dirty = true;
            inner.dirty.push(id);
        }
        Ok(())
    }

    /// The last stream sequence projected and stored.
    pub fn last_seq(&self) -> u64 {
        *self.processed.borrow()
    }

    /// Waits until the model has processed stream sequence `seq`, or `deadline` passes
    /// (returns false then). For tests and tools: no polling, no sleeping.
    pub async fn wait_for_seq(&self, seq: u64, deadline: Duration) -> bool {
        let mut rx = self.processed.subscribe();
        tokio::time::timeout(deadline, rx.wait_for(|s| *s >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// A receiver of the last processed sequence.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.processed.subscribe()
    }

    /// Records the stream's last sequence (asked periodically), for lag.
    pub fn set_stream_last_seq(&self, seq: u64) {
        self.stream_last_seq.store(seq, Ordering::Relaxed);
    }

    /// The stream's last sequence when last asked, and never less than what was processed
    /// (the stream had at least that many; between two asks the answer is stale).
    pub fn stream_last_seq(&self) -> u64 {
        self.stream_last_seq
            .load(Ordering::Relaxed)
            .max(self.last_seq())
    }

    /// Processed sequences behind the stream's end.
    pub fn lag(&self) -> u64 {
        self.stream_last_seq().saturating_sub(self.last_seq())
    }

    /// The injected clock's now, ms.
    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// The STUCK threshold.
    pub fn stuck_after_ms(&self) -> u64 {
        self.stuck_after_ms
    }

    /// One saga, from memory or sled.
    pub fn get(&self, id: SagaId) -> Result<Option<SagaRecord>, TrackerError> {
        if let Some(slot) = self.read().sagas.get(&id) {
            return Ok(Some(slot.rec.clone()));
        }
        self.store.get(id)
    }

    /// A page of the sagas that match `q`, newest (by first event) first: full whenever
    /// enough sagas match, however old. The indexed filters (state, user, reason, flag, time
    /// range) are intersected by seeking in the store's indexes, so a page reads about as
    /// many records as it returns; the amount filters are checked on those records.
    pub fn list(&self, q: &ListQuery) -> Result<Page, TrackerError> {
        let limit = q.limit.clamp(1, MAX_PAGE);
        let mut lists = Vec::new();
        if let Some(s) = q.state {
            lists.push(Postings::Stored(Index::State(s)));
        }
        if let Some(u) = &q.user {
            lists.push(Postings::Stored(Index::User(u.clone())));
        }
        if let Some(r) = q.reason {
            lists.push(Postings::Stored(Index::Reason(reason_index(r))));
        }
        match q.flag {
            Some(Flag::Inconsistent) => lists.push(Postings::Stored(Index::Inconsistent)),
            Some(Flag::ReversalPending) => lists.push(Postings::Stored(Index::ReversalPending)),
            Some(Flag::Stuck) => lists.push(Postings::Memory(self.stuck_postings())),
            None => {}
        }
        if lists.is_empty() {
            lists.push(Postings::Stored(Index::All));
        }
        let Some((lowest, highest)) = self.store.seq_window(q.from_ms, q.to_ms)? else {
            return Ok(Page {
                sagas: Vec::new(),
                next_cursor: None,
            });
        };
        let now = self.now_ms();
        let mut at_most = match q.cursor {
            Some(0) => {
                return Ok(Page {
                    sagas: Vec::new(),
                    next_cursor: None,
                })
            }
            Some(c) => highest.min(c - 1),
            None => highest,
        };
        let mut sagas = Vec::new();
        while let Some((seq, id)) = intersect(&self.store, &lists, at_most)? {
            if seq < lowest {
                break;
            }
            if let Some(rec) = self.get(id)? {
                if q.matches(&rec, now, self.stuck_after_ms) {
                    sagas.push(rec);
                    if sagas.len() == limit {
                        return Ok(Page {
                            sagas,
                            next_cursor: Some(seq),
                        });
                    }
                }
            }
            let Some(below) = seq.checked_sub(1) else {
                break;
            };
            at_most = below;
        }
        Ok(Page {
            sagas,
            next_cursor: None,
        })
    }

    /// `(first_seq, id)` of the sagas STUCK now, ascending (they are all in memory: only
    /// non-terminal sagas can be stuck, and memory holds every one).
    fn stuck_postings(&self) -> Vec<(u64, SagaId)> {
        let now = self.now_ms();
        let inner = self.read();
        let mut v: Vec<(u64, SagaId)> = inner
            .sagas
            .values()
            .filter(|s| s.rec.is_stuck(now, self.stuck_after_ms))
            .map(|s| (s.rec.first_seq, s.rec.saga_id))
            .collect();
        v.sort_unstable();
        v
    }

    /// Non-terminal sagas STUCK now, longest idle first, at most `limit`; and how many in all.
    pub fn stuck(&self, limit: usize) -> (Vec<SagaRecord>, u64) {
        let now = self.now_ms();
        let inner = self.read();
        let mut stuck: Vec<&SagaRecord> = inner
            .sagas
            .values()
            .map(|s| &s.rec)
            .filter(|r| r.is_stuck(now, self.stuck_after_ms))
            .collect();
        let total = stuck.len() as u64;
        stuck.sort_by_key(|r| (r.last_event_at_ms, r.first_seq));
        (stuck.into_iter().take(limit).cloned().collect(), total)
    }

    /// How long the sagas that are not over have waited, at the clock's now: per non-terminal
    /// state, how many are STUCK and the longest time since one's last event; and the longest
    /// a COMPENSATING saga has been compensating. What the alerts with per-state thresholds
    /// read (`fx_tracker_oldest_idle_seconds`, `fx_tracker_oldest_compensating_seconds`).
    pub fn waiting(&self) -> Waiting {
        let now = self.now_ms();
        let mut w = Waiting {
            by_state: SagaState::ALL
                .into_iter()
                .filter(|s| !s.is_terminal())
                .map(|s| (s, StateWaiting::default()))
                .collect(),
            oldest_compensating_ms: 0,
        };
        let inner = self.read();
        for r in inner.sagas.values().map(|s| &s.rec) {
            let Some((_, sw)) = w.by_state.iter_mut().find(|(s, _)| *s == r.state) else {
                continue;
            };
            let idle = now.saturating_sub(r.last_event_at_ms);
            sw.oldest_idle_ms = sw.oldest_idle_ms.max(idle);
            if r.is_stuck(now, self.stuck_after_ms) {
                sw.stuck += 1;
            }
            if r.state == SagaState::Compensating {
                let since = r.compensation_started_at_ms.unwrap_or(r.last_event_at_ms);
                w.oldest_compensating_ms = w.oldest_compensating_ms.max(now.saturating_sub(since));
            }
        }
        w
    }

    /// INCONSISTENT sagas, newest first, at most `limit`; and how many in all.
    pub fn inconsistent(&self, limit: usize) -> Result<(Vec<SagaRecord>, u64), TrackerError> {
        let (ids, total): (Vec<SagaId>, u64) = {
            let inner = self.read();
            (
                inner
                    .inconsistent
                    .values()
                    .rev()
                    .take(limit)
                    .copied()
                    .collect(),
                inner.inconsistent.len() as u64,
            )
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = self.get(id)? {
                out.push(r);
            }
        }
        Ok((out, total))
    }

    /// The aggregates as of the last batch.
    pub fn aggregates(&self) -> Aggregates {
        self.read().agg.clone()
    }

    /// Finished sagas per minute of the last hour, as of the last batch.
    pub fn minutes(&self) -> Minutes {
        self.read().minutes.clone()
    }

    /// The `/api/stats` document.
    pub fn stats(&self) -> StatsView {
        let (agg, inconsistent) = {
            let inner = self.read();
            (inner.agg.clone(), inner.inconsistent.len() as u64)
        };
        let (_, stuck) = self.stuck(0);
        let last_seq = self.last_seq();
        let stream_last_seq = self.stream_last_seq();
        StatsView {
            by_state: SagaState::ALL
                .iter()
                .map(|s| (s.as_str(), agg.count(*s)))
                .collect(),
            total: agg.total(),
            terminal: agg.terminal(),
            success_rate: agg.rate(SagaState::Completed),
            compensation_rate: agg.rate(SagaState::Compensated),
            rejection_rate: agg.rate(SagaState::Rejected),
            p50_ms: agg.durations.quantile(0.50),
            p95_ms: agg.durations.quantile(0.95),
            p99_ms: agg.durations.quantile(0.99),
            stuck,
            inconsistent,
            last_seq,
            stream_last_seq,
            lag: stream_last_seq.saturating_sub(last_seq),
            events: agg.events,
            duplicates: agg.duplicates,
            undecodable: agg.undecodable,
            krw_deposits: agg.krw_deposits,
            usd_deposits: agg.usd_deposits,
            reversals_pending: agg.reversals.pending,
            reversals_total: agg.reversals.done,
            fx_pnl_krw: agg.reversals.pnl_krw,
        }
    }

    /// Every stored record, sorted by saga id (reads the whole store: for tests and audits).
    pub fn all_records(&self) -> Result<Vec<SagaRecord>, TrackerError> {
        let mut all = self.store.all()?;
        all.sort_by_key(|r| r.saga_id);
        Ok(all)
    }

    /// Sagas held in memory now (non-terminal plus up to `retain` terminal).
    pub fn resident(&self) -> usize {
        self.read().sagas.len()
    }

    /// Flushes the store (graceful shutdown).
    pub async fn flush(&self) -> Result<(), TrackerError> {
        self.store.flush().await
    }

    /// Bytes sled reports on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.store.size_on_disk()
    }
}

/// Counts the reversals of every stored record and fills the `r` index, for a store written
/// before the tracker counted reversals (once: the new totals are stored right away).
fn recount_reversals(
    store: &Store,
    last_seq: u64,
    agg: &Aggregates,
) -> Result<ReversalTotals, TrackerError> {
    let mut totals = ReversalTotals::default();
    let mut write = WriteBatch::default();
    store.for_each(|rec| {
        totals.add(rec.reversal_status());
        if rec.is_reversal_pending() {
            write.index_reversal_pending(&rec);
        }
    })?;
    tracing::info!(
        pending = totals.pending,
        done = totals.done,
        fx_pnl_krw = %totals.pnl_krw,
        "counted the reversals of a store written before reversals were counted"
    );
    write.meta(
        last_seq,
        &Aggregates {
            reversals: totals.clone(),
            ..agg.clone()
        },
    );
    store.write(write)?;
    Ok(totals)
}

/// Adds the index entries a store written before index layout 2 lacks (terminal states,
/// reasons, start times), once: a scan of every record, then the layout is stamped.
fn reindex(store: &Store, last_seq: u64, agg: &Aggregates) -> Result<(), TrackerError> {
    let mut write = WriteBatch::default();
    let mut n = 0u64;
    store.for_each(|rec| {
        write.index_v2(&rec);
        n += 1;
    })?;
    write.meta(last_seq, agg);
    store.write(write)?;
    tracing::info!(
        sagas = n,
        "indexed every saga by state, reason and start time (a store written before search)"
    );
    Ok(())
}

/// A shared read model.
pub type SharedModel = Arc<ReadModel>;

#[cfg(test)]
mod tests {
    use super::*;
    use events::*;

    fn saga(user: &str) -> (SagaId, UserId) {
        (SagaId::new_v7(), UserId::parse(user).unwrap())
    }

    /// Stream messages of `events`, sequences from 1, stream times from 1000 ms, 1 ms apart.
    fn stream_messages<'a>(events: impl Iterator<Item = &'a Event>) -> Vec<StreamMessage> {
        events
            .enumerate()
            .map(|(i, e)| StreamMessage {
                seq: i as u64 + 1,
                at_ms: 1000 + i as u64,
                subject: e.subject(),
                payload: e.to_json().into(),
            })
            .collect()
    }

    /// A filled saga whose credit failed and which fx-trade cancelled for the user.
    fn cancelled(id: SagaId, user: &UserId) -> Vec<Event> {
        let (krw, usd) = (
            Krw::parse("1500000").unwrap(),
            Usd::parse("1071.42").unwrap(),
        );
        vec![
            Event::KrwHeld(KrwHeld {
                saga_id: id,
                user_id: user.clone(),
                krw_amount: krw,
                min_usd_amount: None,
                hold_expires_at_ms: 10_000,
            }),
            Event::TradeFilled(TradeFilled {
                saga_id: id,
                user_id: user.clone(),
                krw_amount: krw,
                usd_amount: usd,
                rate: Rate::new(1400.into()).unwrap(),
            }),
            Event::TradeCancelled(TradeCancelled {
                saga_id: id,
                user_id: user.clone(),
                krw_amount: krw,
                usd_amount: usd,
                reason: CancelReason::CreditFailed,
            }),
        ]
    }

    #[test]
    fn a_store_from_before_reversals_were_counted_is_recounted_once_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let clock: Clock = Arc::new(|| 0);
        let open = || ReadModel::open(dir.path(), 1, 60_000, clock.clone()).unwrap();
        let (pending, alice) = saga("alice");
        let (done, bob) = saga("bob");
        let mut events = cancelled(pending, &alice);
        events.extend(cancelled(done, &bob));
        let rate = Rate::new(1450.into()).unwrap();
        events.push(Event::TradeReversed(TradeReversed {
            saga_id: done,
            user_id: bob,
            usd_amount: Usd::parse("1071.42").unwrap(),
            krw_amount: rate.krw_for(Usd::parse("1071.42").unwrap()).unwrap(),
            rate,
            fill_krw_amount: Krw::parse("1500000").unwrap(),
        }));
        let batch = stream_messages(events.iter());
        let model = open();
        model.ingest(&batch).unwrap();
        let want = model.stats();
        assert_eq!(
            (want.reversals_pending, want.reversals_total),
            (1, 1),
            "{want:?}"
        );
        assert_eq!(want.fx_pnl_krw, rust_decimal::Decimal::from(53_559));
        model.store.forget_reversals().unwrap();
        drop(model);

        let pending_listing = |m: &ReadModel| -> Vec<SagaId> {
            m.list(&ListQuery {
                flag: Some(Flag::ReversalPending),
                limit: 10,
                ..ListQuery::default()
            })
            .unwrap()
            .sagas
            .iter()
            .map(|r| r.saga_id)
            .collect()
        };
        let model = open();
        assert_eq!(model.stats(), want);
        assert_eq!(pending_listing(&model), [pending]);
        // The recount was stored: the next start reads the totals as they are.
        assert!(model.store.aggregates().unwrap().1);
        drop(model);
        let model = open();
        assert_eq!(model.stats(), want);
        assert_eq!(pending_listing(&model), [pending]);
    }

    #[test]
    fn a_store_from_before_search_is_reindexed_once_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let clock: Clock = Arc::new(|| 0);
        let open = || ReadModel::open(dir.path(), 1, 60_000, clock.clone()).unwrap();
        let (id, alice) = saga("alice");
        let batch = stream_messages(
            cancelled(id, &alice)
                .iter()
                .chain(
                    [Event::UsdCreditFailed(UsdCreditFailed {
                        saga_id: id,
                        user_id: alice.clone(),
                        reason: CreditFailReason::AccountFrozen,
                        message: "frozen".into(),
                    })]
                    .iter(),
                )
                .chain(
                    [Event::KrwReleased(KrwReleased {
                        saga_id: id,
                        user_id: alice.clone(),
                        krw_amount: Krw::parse("1500000").unwrap(),
                        reason: ReleaseReason::TradeCancelled,
                    })]
                    .iter(),
                ),
        );
        let found = |m: &ReadModel, q: ListQuery| -> Vec<SagaId> {
            m.list(&ListQuery { limit: 10, ..q })
                .unwrap()
                .sagas
                .iter()
                .map(|r| r.saga_id)
                .collect()
        };
        let queries = || {
            [
                ListQuery {
                    state: Some(SagaState::Compensated),
                    ..ListQuery::default()
                },
                ListQuery {
                    reason: Some("credit_failed"),
                    ..ListQuery::default()
                },
                ListQuery {
                    from_ms: Some(1000),
                    to_ms: Some(1000),
                    ..ListQuery::default()
                },
            ]
        };
        let model = open();
        model.ingest(&batch).unwrap();
        assert_eq!(
            model.get(id).unwrap().unwrap().state,
            SagaState::Compensated
        );
        for q in queries() {
            assert_eq!(found(&model, q.clone()), [id], "{q:?}");
        }
        model.store.forget_index_v2().unwrap();
        for q in queries() {
            assert!(found(&model, q.clone()).is_empty(), "forgotten: {q:?}");
        }
        drop(model);
        let model = open();
        for q in queries() {
            assert_eq!(found(&model, q.clone()), [id], "reindexed: {q:?}");
        }
        assert!(model.store.indexes_current().unwrap());
    }

    #[test]
    fn waiting_reports_per_state_the_stuck_the_longest_idle_and_the_longest_compensating() {
        let dir = tempfile::tempdir().unwrap();
        let now = Arc::new(AtomicU64::new(0));
        let clock: Clock = {
            let now = now.clone();
            Arc::new(move || now.load(Ordering::Relaxed))
        };
        let model = ReadModel::open(dir.path(), 10, 60_000, clock).unwrap();
        let (held, alice) = saga("alice");
        let (compensating, bob) = saga("bob");
        // alice's saga is held at t=1000; bob's is filled, then cancelled at t=5000.
        let mut timed: Vec<(u64, Event)> = vec![(1000, cancelled(held, &alice).remove(0))];
        for (at, e) in [1000, 2000, 5000]
            .into_iter()
            .zip(cancelled(compensating, &bob))
        {
            timed.push((at, e));
        }
        let batch: Vec<StreamMessage> = timed
            .iter()
            .enumerate()
            .map(|(i, (at, e))| StreamMessage {
                seq: i as u64 + 1,
                at_ms: *at,
                subject: e.subject(),
                payload: e.to_json().into(),
            })
            .collect();
        model.ingest(&batch).unwrap();
        let state_of = |id| model.get(id).unwrap().unwrap().state;
        assert_eq!(state_of(held), SagaState::KrwHeld);
        assert_eq!(state_of(compensating), SagaState::Compensating);

        now.store(62_000, Ordering::Relaxed);
        let w = model.waiting();
        let of = |state| w.by_state.iter().find(|(s, _)| *s == state).unwrap().1;
        assert_eq!(
            w.by_state.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [
                SagaState::Requested,
                SagaState::KrwHeld,
                SagaState::OrderPlaced,
                SagaState::UsdCredited,
                SagaState::Compensating
            ],
            "every non-terminal state, and only those"
        );
        assert_eq!(
            of(SagaState::KrwHeld),
            StateWaiting {
                stuck: 1,
                oldest_idle_ms: 61_000
            },
            "idle past the 60 s threshold: STUCK"
        );
        assert_eq!(
            of(SagaState::Compensating),
            StateWaiting {
                stuck: 0,
                oldest_idle_ms: 57_000
            }
        );
        assert_eq!(of(SagaState::Requested), StateWaiting::default());
        let started = model
            .get(compensating)
            .unwrap()
            .unwrap()
            .compensation_started_at_ms
            .unwrap();
        assert_eq!(w.oldest_compensating_ms, 62_000 - started);
    }
}
