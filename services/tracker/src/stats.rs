//! Aggregates over every saga: counts by state and a duration histogram for percentiles.
//!
//! They are kept incrementally (never recomputed by scanning sagas) and stored in sled in the
//! same atomic batch as the records and the last stream sequence, so after a restart they
//! agree with the records exactly, and a rebuild computes the same numbers.

use std::collections::BTreeMap;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::codec::{put_varint, CodecError, Reader};
use crate::projection::{ReversalStatus, SagaState};

/// Durations with 1% relative precision in bounded memory: values below 128 ms are exact,
/// larger ones fall in buckets of 128 per power of two (at most 7,296 buckets, stored sparse).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    buckets: BTreeMap<u32, u64>,
    count: u64,
}

impl Histogram {
    fn index(v: u64) -> u32 {
        if v < 128 {
            return v as u32;
        }
        let e = 63 - v.leading_zeros(); // >= 7
        let m = (v >> (e - 7)) & 0x7f;
        128 + (e - 7) * 128 + m as u32
    }

    /// The middle of bucket `idx`: what a percentile in that bucket reports.
    fn value(idx: u32) -> u64 {
        if idx < 128 {
            return u64::from(idx);
        }
        let e = (idx - 128) / 128 + 7;
        let m = u64::from((idx - 128) % 128);
        let lower = (128 + m) << (e - 7);
        lower + ((1u64 << (e - 7)) >> 1)
    }

    /// Counts one value.
    pub fn add(&mut self, v: u64) {
        *self.buckets.entry(Self::index(v)).or_default() += 1;
        self.count += 1;
    }

    /// Uncounts a value added before (a saga that left a terminal state).
    pub fn remove(&mut self, v: u64) {
        let idx = Self::index(v);
        if let Some(c) = self.buckets.get_mut(&idx) {
            *c -= 1;
            self.count -= 1;
            if *c == 0 {
                self.buckets.remove(&idx);
            }
        }
    }

    /// How many values are counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// `(value, count)` of every non-empty bucket, ascending (a bucket reports its middle).
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.buckets.iter().map(|(&i, &c)| (Self::value(i), c))
    }

    /// Adds every value counted in `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (&i, &c) in &other.buckets {
            *self.buckets.entry(i).or_default() += c;
            self.count += c;
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        put_varint(out, self.buckets.len() as u64);
        for (&i, &c) in &self.buckets {
            put_varint(out, u64::from(i));
            put_varint(out, c);
        }
    }

    fn decode_from(r: &mut Reader) -> Result<Histogram, CodecError> {
        let mut h = Histogram::default();
        let n = r.varint()?;
        for _ in 0..n {
            let i = u32::try_from(r.varint()?).map_err(|_| CodecError("bucket".into()))?;
            let c = r.varint()?;
            h.buckets.insert(i, c);
            h.count += c;
        }
        Ok(h)
    }

    /// The `p`-quantile (0 < p <= 1), or `None` when empty.
    pub fn quantile(&self, p: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((p * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (&idx, &c) in &self.buckets {
            seen += c;
            if seen >= rank {
                return Some(Self::value(idx));
            }
        }
        self.buckets.keys().last().map(|&i| Self::value(i))
    }
}

/// The house's reversals at the venue, over every saga: kept like the counts by state (a saga's
/// status before an event is removed, its status after is added).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReversalTotals {
    /// Sagas with trade.cancelled and no trade.reversed yet.
    pub pending: u64,
    /// Sagas with trade.reversed.
    pub done: u64,
    /// The house's FX gain (positive) or loss (negative) summed over reversed sagas, KRW.
    pub pnl_krw: Decimal,
}

impl ReversalTotals {
    /// Counts a saga's status.
    pub fn add(&mut self, status: ReversalStatus) {
        match status {
            ReversalStatus::None => {}
            ReversalStatus::Pending => self.pending += 1,
            ReversalStatus::Done { pnl_krw } => {
                self.done += 1;
                self.pnl_krw += pnl_krw.unwrap_or_default();
            }
        }
    }

    /// Uncounts a status counted before.
    pub fn remove(&mut self, status: ReversalStatus) {
        match status {
            ReversalStatus::None => {}
            ReversalStatus::Pending => self.pending -= 1,
            ReversalStatus::Done { pnl_krw } => {
                self.done -= 1;
                self.pnl_krw -= pnl_krw.unwrap_or_default();
            }
        }
    }

    /// A saga moved from `before` to `after`.
    pub fn update(&mut self, before: ReversalStatus, after: ReversalStatus) {
        if before != after {
            self.remove(before);
            self.add(after);
        }
    }
}

/// Totals over every saga the tracker has seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Aggregates {
    /// Sagas per state, indexed like `SagaState::ALL`.
    pub by_state: [u64; 8],
    /// Durations (first event to terminal event, stream time) of terminal sagas.
    pub durations: Histogram,
    /// Saga events applied, duplicates included.
    pub events: u64,
    /// Events whose kind the saga had seen before.
    pub duplicates: u64,
    /// Messages on `fx.>` that did not decode (counted and skipped).
    pub undecodable: u64,
    /// krw.deposited events (admin; not sagas).
    pub krw_deposits: u64,
    /// usd.deposited events (admin; not sagas).
    pub usd_deposits: u64,
    /// Reversals pending and done, and the house's FX P&L.
    pub reversals: ReversalTotals,
}

/// Layout version of stored aggregates: 2 appends the reversal totals to 1.
const VERSION: u8 = 2;
/// The layout before reversals were counted; still read (see [`Aggregates::decode`]).
const VERSION_1: u8 = 1;

impl Aggregates {
    /// Sagas in `state`.
    pub fn count(&self, state: SagaState) -> u64 {
        self.by_state[state.index()]
    }

    /// Every saga.
    pub fn total(&self) -> u64 {
        self.by_state.iter().sum()
    }

    /// Sagas in a terminal state.
    pub fn terminal(&self) -> u64 {
        SagaState::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| self.count(*s))
            .sum()
    }

    /// `count(state) / terminal`, 0 when nothing has finished.
    pub fn rate(&self, state: SagaState) -> f64 {
        let t = self.terminal();
        if t == 0 {
            0.0
        } else {
            self.count(state) as f64 / t as f64
        }
    }

    /// Stored form.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_as(VERSION)
    }

    /// The form a tracker that did not count reversals stored (for upgrade tests).
    #[cfg(test)]
    pub(crate) fn encode_v1(&self) -> Vec<u8> {
        self.encode_as(VERSION_1)
    }

    fn encode_as(&self, version: u8) -> Vec<u8> {
        let mut out = vec![version];
        for c in self.by_state {
            put_varint(&mut out, c);
        }
        for c in [
            self.events,
            self.duplicates,
            self.undecodable,
            self.krw_deposits,
            self.usd_deposits,
        ] {
            put_varint(&mut out, c);
        }
        self.durations.encode_into(&mut out);
        if version == VERSION_1 {
            return out;
        }
        put_varint(&mut out, self.reversals.pending);
        put_varint(&mut out, self.reversals.done);
        let pnl = self.reversals.pnl_krw.to_string();
        put_varint(&mut out, pnl.len() as u64);
        out.extend_from_slice(pnl.as_bytes());
        out
    }

    /// Reads what [`Aggregates::encode`] wrote. The second value is false for aggregates stored
    /// before reversals were counted (version 1): their reversal totals are zero here and must
    /// be recounted from the records.
    pub fn decode(bytes: &[u8]) -> Result<(Aggregates, bool), CodecError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != VERSION && version != VERSION_1 {
            return Err(CodecError(format!("aggregates version {version}")));
        }
        let mut a = Aggregates::default();
        for c in a.by_state.iter_mut() {
            *c = r.varint()?;
        }
        a.events = r.varint()?;
        a.duplicates = r.varint()?;
        a.undecodable = r.varint()?;
        a.krw_deposits = r.varint()?;
        a.usd_deposits = r.varint()?;
        a.durations = Histogram::decode_from(&mut r)?;
        if version == VERSION_1 {
            return Ok((a, false));
        }
        a.reversals.pending = r.varint()?;
        a.reversals.done = r.varint()?;
        a.reversals.pnl_krw =
            Decimal::from_str(r.str()?).map_err(|e| CodecError(format!("fx P&L: {e}")))?;
        Ok((a, true))
    }
}

/// Minutes of stream time a [`Minutes`] series keeps: the charts show the last hour.
pub const MINUTES_KEPT: u64 = 60;
/// Milliseconds in a minute (the series' bucket width).
pub const MINUTE_MS: u64 = 60_000;

/// The sagas that finished in one minute of stream time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Minute {
    /// COMPLETED, REJECTED, COMPENSATED, in that order.
    pub outcomes: [u64; 3],
    /// Their durations.
    pub durations: Histogram,
}

impl Minute {
    /// Sagas that finished in the minute.
    pub fn total(&self) -> u64 {
        self.outcomes.iter().sum()
    }

    /// COMPENSATED / finished (0 when none finished).
    pub fn compensation_rate(&self) -> f64 {
        match self.total() {
            0 => 0.0,
            t => self.outcomes[2] as f64 / t as f64,
        }
    }
}

/// Finished sagas per minute of stream time (by the terminal event's time), the last
/// [`MINUTES_KEPT`] minutes up to the newest one seen: what the dashboard's charts draw.
/// Bounded: at most [`MINUTES_KEPT`] minutes, each a [`Histogram`] of bounded size. Kept
/// like the aggregates (a saga that leaves a terminal state is uncounted) and stored beside
/// them, so a restart and a rebuild draw the same charts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Minutes {
    minutes: BTreeMap<u64, Minute>,
}

fn outcome_index(state: SagaState) -> Option<usize> {
    match state {
        SagaState::Completed => Some(0),
        SagaState::Rejected => Some(1),
        SagaState::Compensated => Some(2),
        _ => None,
    }
}

/// Layout version of a stored [`Minutes`].
const MINUTES_VERSION: u8 = 1;

impl Minutes {
    /// Counts a saga that finished in `state` at `finished_at_ms` after `duration_ms`.
    pub fn add(&mut self, state: SagaState, finished_at_ms: u64, duration_ms: u64) {
        let Some(o) = outcome_index(state) else {
            return;
        };
        let minute = finished_at_ms / MINUTE_MS;
        let newest = self.minutes.keys().next_back().copied().unwrap_or(minute);
        if minute + MINUTES_KEPT <= newest {
            return; // older than what is kept
        }
        let m = self.minutes.entry(minute).or_default();
        m.outcomes[o] += 1;
        m.durations.add(duration_ms);
        let newest = newest.max(minute);
        while let Some((&oldest, _)) = self.minutes.first_key_value() {
            if oldest + MINUTES_KEPT > newest {
                break;
            }
            self.minutes.remove(&oldest);
        }
    }

    /// Uncounts a saga counted by [`Minutes::add`] (one that left its terminal state).
    pub fn remove(&mut self, state: SagaState, finished_at_ms: u64, duration_ms: u64) {
        let Some(o) = outcome_index(state) else {
            return;
        };
        let minute = finished_at_ms / MINUTE_MS;
        if let Some(m) = self.minutes.get_mut(&minute) {
            m.outcomes[o] = m.outcomes[o].saturating_sub(1);
            m.durations.remove(duration_ms);
        }
    }

    /// The minutes `(minute since the epoch, what finished in it)` of the hour ending with the
    /// minute of `now_ms`, oldest first, every one of the [`MINUTES_KEPT`] present (empty
    /// when nothing finished in it).
    pub fn last_hour(&self, now_ms: u64) -> Vec<(u64, Minute)> {
        let now = now_ms / MINUTE_MS;
        (now + 1 - MINUTES_KEPT.min(now + 1)..=now)
            .map(|m| (m, self.minutes.get(&m).cloned().unwrap_or_default()))
            .collect()
    }

    /// Stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![MINUTES_VERSION];
        put_varint(&mut out, self.minutes.len() as u64);
        for (&minute, m) in &self.minutes {
            put_varint(&mut out, minute);
            for c in m.outcomes {
                put_varint(&mut out, c);
            }
            m.durations.encode_into(&mut out);
        }
        out
    }

    /// Reads what [`Minutes::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Minutes, CodecError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != MINUTES_VERSION {
            return Err(CodecError(format!("minutes version {version}")));
        }
        let mut out = Minutes::default();
        for _ in 0..r.varint()? {
            let minute = r.varint()?;
            let mut m = Minute::default();
            for c in m.outcomes.iter_mut() {
                *c = r.varint()?;
            }
            m.durations = Histogram::decode_from(&mut r)?;
            out.minutes.insert(minute, m);
        }
        Ok(out)
    }
}

/// The `/api/stats` document.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StatsView {
    /// Sagas per state; every state is present.
    pub by_state: BTreeMap<&'static str, u64>,
    /// Every saga seen.
    pub total: u64,
    /// Sagas in COMPLETED, REJECTED or COMPENSATED.
    pub terminal: u64,
    /// COMPLETED / terminal (0 when none finished).
    pub success_rate: f64,
    /// COMPENSATED / terminal.
    pub compensation_rate: f64,
    /// REJECTED / terminal.
    pub rejection_rate: f64,
    /// Median duration of terminal sagas in ms (stream time), `null` when none.
    pub p50_ms: Option<u64>,
    /// 95th percentile.
    pub p95_ms: Option<u64>,
    /// 99th percentile.
    pub p99_ms: Option<u64>,
    /// Sagas STUCK now.
    pub stuck: u64,
    /// Sagas INCONSISTENT.
    pub inconsistent: u64,
    /// The last stream sequence processed.
    pub last_seq: u64,
    /// The stream's last sequence when last asked (0 before the first ask).
    pub stream_last_seq: u64,
    /// `stream_last_seq - last_seq`.
    pub lag: u64,
    /// Saga events applied.
    pub events: u64,
    /// Duplicate events seen.
    pub duplicates: u64,
    /// Messages that did not decode.
    pub undecodable: u64,
    /// krw.deposited events.
    pub krw_deposits: u64,
    /// usd.deposited events.
    pub usd_deposits: u64,
    /// Sagas whose fill the house still has to sell back at the venue (trade.cancelled, no
    /// trade.reversed yet).
    pub reversals_pending: u64,
    /// Sagas whose fill the house has sold back (trade.reversed).
    pub reversals_total: u64,
    /// The house's FX gain (positive) or loss (negative) over reversed sagas, KRW; a decimal
    /// string in JSON like every amount.
    #[serde(with = "rust_decimal::serde::str")]
    pub fx_pnl_krw: Decimal,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_exact_below_128_and_within_one_percent_above() {
        let mut h = Histogram::default();
        for v in 1..=100 {
            h.add(v);
        }
        assert_eq!(h.quantile(0.5), Some(50));
        assert_eq!(h.quantile(0.99), Some(99));
        let mut h = Histogram::default();
        for v in [1_000u64, 60_000, 3_600_000, 123_456_789] {
            h.add(v);
            let q = h.quantile(1.0).unwrap();
            let err = (q as f64 - v as f64).abs() / v as f64;
            assert!(err < 0.01, "{v} -> {q}");
        }
        h.remove(123_456_789);
        assert_eq!(h.count(), 3);
        assert!(h.quantile(1.0).unwrap() < 3_700_000);
    }

    #[test]
    fn aggregates_round_trip() {
        let mut a = Aggregates::default();
        a.by_state[4] = 7;
        a.events = 35;
        a.undecodable = 2;
        a.durations.add(250);
        a.durations.add(90_000);
        a.reversals.pending = 3;
        a.reversals.done = 2;
        a.reversals.pnl_krw = Decimal::from(-1234);
        assert_eq!(Aggregates::decode(&a.encode()).unwrap(), (a.clone(), true));
        assert_eq!(a.rate(SagaState::Completed), 1.0);

        // Version 1 is version 2 without the reversal totals: read, flagged for a recount.
        let (old, counted) = Aggregates::decode(&a.encode_v1()).unwrap();
        assert!(!counted);
        assert_eq!(old.reversals, ReversalTotals::default());
        assert_eq!(old.events, a.events);
        assert_eq!(old.durations, a.durations);
    }

    #[test]
    fn minutes_keep_the_last_hour_and_round_trip() {
        let mut m = Minutes::default();
        let t0 = 1_000 * MINUTE_MS;
        m.add(SagaState::Completed, t0 + 5, 200);
        m.add(SagaState::Compensated, t0 + 59_999, 900);
        m.add(SagaState::KrwHeld, t0, 1); // not an outcome: ignored
        m.add(SagaState::Rejected, t0 + 3 * MINUTE_MS, 10);
        let hour = m.last_hour(t0 + 3 * MINUTE_MS);
        assert_eq!(hour.len() as u64, MINUTES_KEPT);
        let (minute, first) = &hour[hour.len() - 4];
        assert_eq!((*minute, first.outcomes), (1_000, [1, 0, 1]));
        assert_eq!(first.compensation_rate(), 0.5);
        assert_eq!(hour.last().unwrap().1.outcomes, [0, 1, 0]);
        assert_eq!(Minutes::decode(&m.encode()).unwrap(), m);
        m.remove(SagaState::Compensated, t0 + 59_999, 900);
        assert_eq!(m.last_hour(t0).last().unwrap().1.outcomes, [1, 0, 0]);
        // An hour later, minute 1000 is gone, and a saga finishing then is not counted.
        m.add(SagaState::Completed, t0 + 63 * MINUTE_MS, 5);
        assert!(
            m.minutes.keys().all(|&k| k > 1_000 + 3),
            "{:?}",
            m.minutes.keys()
        );
        m.add(SagaState::Completed, t0, 5);
        assert!(!m.minutes.contains_key(&1_000));
    }

    #[test]
    fn reversal_totals_follow_a_saga_from_pending_to_done() {
        let mut t = ReversalTotals::default();
        let gain = ReversalStatus::Done {
            pnl_krw: Some(Decimal::from(53_559)),
        };
        t.update(ReversalStatus::None, ReversalStatus::Pending);
        t.update(ReversalStatus::Pending, ReversalStatus::Pending);
        assert_eq!((t.pending, t.done), (1, 0));
        t.update(ReversalStatus::Pending, gain);
        t.update(
            ReversalStatus::None,
            ReversalStatus::Done {
                pnl_krw: Some(Decimal::from(-12)),
            },
        );
        assert_eq!((t.pending, t.done), (0, 2));
        assert_eq!(t.pnl_krw, Decimal::from(53_547));
    }
}
