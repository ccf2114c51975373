//! A compact binary encoding of [`SagaRecord`] for sled.
//!
//! Hand-written rather than JSON because the tracker writes one record per touched saga per
//! batch during a replay of millions of events: varints and deltas keep a completed saga near
//! 150 bytes and encoding well under a microsecond. The first byte is a format version so a
//! later layout can read old records (or refuse them, which makes the tracker rebuild).
//!
//! Versions: 1 is the original layout; 2 appends the reversal (trade.reversed's terms) as an
//! option; 3 stores the seen-set in four bytes instead of two (the intervention kinds are bits
//! 16 to 18). A version-1 record reads as one with no reversal recorded; versions 1 and 2 read
//! their two-byte set into the wider one.

use std::str::FromStr;

use events::{EventKind, Krw, Rate, SagaId, Usd, UserId};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::projection::{
    kind_index, FailureReason, KindSet, Reversal, SagaRecord, SagaState, TimelineEntry,
    REASON_CODES, UNKNOWN_REASON,
};

/// The layout written by [`encode`].
const VERSION: u8 = 3;
/// The layout before the seen-set was widened to 32 bits; still read.
const VERSION_2: u8 = 2;
/// The layout before the reversal was kept; still read.
const VERSION_1: u8 = 1;

/// Why stored bytes did not decode.
#[derive(Debug, thiserror::Error)]
#[error("stored saga record does not decode: {0}")]
pub struct CodecError(pub String);

fn err<T>(what: &str) -> Result<T, CodecError> {
    Err(CodecError(what.to_owned()))
}

/// Appends `v` as a LEB128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_delta(out: &mut Vec<u8>, base: u64, v: u64) {
    // Zigzag: deltas are usually small and positive, but a simulation may apply out of order.
    let d = v.wrapping_sub(base) as i64;
    put_varint(out, ((d << 1) ^ (d >> 63)) as u64);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_opt<T>(out: &mut Vec<u8>, v: Option<T>, f: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            f(out, v);
        }
    }
}

/// A cursor over stored bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, CodecError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or(CodecError("truncated".into()))?;
        self.buf = rest;
        Ok(b)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return err("truncated");
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn varint(&mut self) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        err("varint too long")
    }

    fn delta(&mut self, base: u64) -> Result<u64, CodecError> {
        let z = self.varint()?;
        let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
        Ok(base.wrapping_add(d as u64))
    }

    pub(crate) fn str(&mut self) -> Result<&'a str, CodecError> {
        let n = self.varint()? as usize;
        std::str::from_utf8(self.bytes(n)?).map_err(|_| CodecError("bad utf-8".into()))
    }

    fn opt<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, CodecError>,
    ) -> Result<Option<T>, CodecError> {
        match self.u8()? {
            0 => Ok(None),
            1 => f(self).map(Some),
            _ => err("bad option tag"),
        }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

fn kind_from(code: u8) -> Result<EventKind, CodecError> {
    EventKind::ALL
        .get(code as usize)
        .copied()
        .ok_or(CodecError(format!("unknown event kind code {code}")))
}

fn krw(r: &mut Reader) -> Result<Krw, CodecError> {
    Krw::parse(r.str()?).map_err(|e| CodecError(e.to_string()))
}

fn usd(r: &mut Reader) -> Result<Usd, CodecError> {
    Usd::parse(r.str()?).map_err(|e| CodecError(e.to_string()))
}

fn read_rate(r: &mut Reader) -> Result<Rate, CodecError> {
    let d = Decimal::from_str(r.str()?).map_err(|e| CodecError(e.to_string()))?;
    Rate::new(d).ok_or(CodecError("rate not positive".into()))
}

fn put_kind(out: &mut Vec<u8>, kind: EventKind) {
    out.push(kind_index(kind) as u8);
}

/// Encodes a record (see the module docs for why not JSON).
pub fn encode(rec: &SagaRecord, out: &mut Vec<u8>) {
    out.push(VERSION);
    out.extend_from_slice(rec.saga_id.uuid().as_bytes());
    put_str(out, rec.user_id.as_str());
    out.push(rec.state.index() as u8);
    out.extend_from_slice(&rec.seen.0.to_le_bytes());
    put_opt(out, rec.requested_krw, |o, v| put_str(o, &v.to_string()));
    put_opt(out, rec.min_usd_amount, |o, v| put_str(o, &v.to_string()));
    put_opt(out, rec.held_krw, |o, v| put_str(o, &v.to_string()));
    put_opt(out, rec.filled_usd, |o, v| put_str(o, &v.to_string()));
    put_opt(out, rec.rate, |o, v| put_str(o, &v.to_string()));
    put_opt(out, rec.krw_witness, |o, (v, k)| {
        put_kind(o, k);
        put_str(o, &v.to_string());
    });
    put_opt(out, rec.usd_witness, |o, (v, k)| {
        put_kind(o, k);
        put_str(o, &v.to_string());
    });
    put_opt(out, rec.failure, |o, f| {
        put_kind(o, f.kind);
        let code = REASON_CODES
            .iter()
            .position(|c| *c == f.code)
            .unwrap_or(UNKNOWN_REASON);
        o.push(code as u8);
    });
    put_varint(out, rec.started_at_ms);
    put_delta(out, rec.started_at_ms, rec.last_event_at_ms);
    put_opt(out, rec.finished_at_ms, |o, v| {
        put_delta(o, rec.started_at_ms, v)
    });
    put_opt(out, rec.compensation_started_at_ms, |o, v| {
        put_delta(o, rec.started_at_ms, v)
    });
    put_varint(out, rec.first_seq);
    put_delta(out, rec.first_seq, rec.last_seq);
    put_varint(out, u64::from(rec.event_count));
    put_varint(out, rec.notes.len() as u64);
    for n in &rec.notes {
        put_str(out, n);
    }
    put_varint(out, rec.timeline.len() as u64);
    let (mut seq, mut at) = (rec.first_seq, rec.started_at_ms);
    for e in &rec.timeline {
        out.push(kind_index(e.kind) as u8 | if e.foreign_user { 0x80 } else { 0 });
        put_delta(out, seq, e.seq);
        put_delta(out, at, e.at_ms);
        (seq, at) = (e.seq, e.at_ms);
    }
    put_varint(out, rec.foreign_users.len() as u64);
    for (s, u) in &rec.foreign_users {
        put_varint(out, *s);
        put_str(out, u.as_str());
    }
    put_varint(out, u64::from(rec.timeline_dropped));
    put_opt(out, rec.reversal.as_deref(), |o, v| {
        put_str(o, &v.usd_amount.to_string());
        put_str(o, &v.krw_amount.to_string());
        put_str(o, &v.rate.to_string());
        put_str(o, &v.fill_krw_amount.to_string());
    });
}

/// Decodes what [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<SagaRecord, CodecError> {
    let mut r = Reader::new(bytes);
    let version = r.u8()?;
    if ![VERSION_1, VERSION_2, VERSION].contains(&version) {
        return err(&format!(
            "format version {version}, this build reads {VERSION_1} to {VERSION}"
        ));
    }
    let id: [u8; 16] = r.bytes(16)?.try_into().expect("16 bytes");
    let saga_id = SagaId::from(Uuid::from_bytes(id));
    let user_id = UserId::parse(r.str()?).map_err(|e| CodecError(e.to_string()))?;
    let state = SagaState::from_index(r.u8()? as usize).ok_or(CodecError("bad state".into()))?;
    let seen = if version == VERSION {
        KindSet(u32::from_le_bytes(r.bytes(4)?.try_into().expect("4 bytes")))
    } else {
        KindSet(u32::from(u16::from_le_bytes(
            r.bytes(2)?.try_into().expect("2 bytes"),
        )))
    };
    let requested_krw = r.opt(krw)?;
    let min_usd_amount = r.opt(usd)?;
    let held_krw = r.opt(krw)?;
    let filled_usd = r.opt(usd)?;
    let rate = r.opt(read_rate)?;
    let krw_witness = r.opt(|r| {
        let k = kind_from(r.u8()?)?;
        Ok((krw(r)?, k))
    })?;
    let usd_witness = r.opt(|r| {
        let k = kind_from(r.u8()?)?;
        Ok((usd(r)?, k))
    })?;
    let failure = r.opt(|r| {
        let kind = kind_from(r.u8()?)?;
        let code = *REASON_CODES
            .get(r.u8()? as usize)
            .ok_or(CodecError("bad reason code".into()))?;
        Ok(FailureReason { kind, code })
    })?;
    let started_at_ms = r.varint()?;
    let last_event_at_ms = r.delta(started_at_ms)?;
    let finished_at_ms = r.opt(|r| r.delta(started_at_ms))?;
    let compensation_started_at_ms = r.opt(|r| r.delta(started_at_ms))?;
    let first_seq = r.varint()?;
    let last_seq = r.delta(first_seq)?;
    let event_count = u32::try_from(r.varint()?).map_err(|_| CodecError("count".into()))?;
    let n = r.varint()? as usize;
    let mut notes = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        notes.push(r.str()?.to_owned());
    }
    let n = r.varint()? as usize;
    let mut timeline = Vec::with_capacity(n.min(1024));
    let (mut seq, mut at) = (first_seq, started_at_ms);
    for _ in 0..n {
        let b = r.u8()?;
        seq = r.delta(seq)?;
        at = r.delta(at)?;
        timeline.push(TimelineEntry {
            seq,
            at_ms: at,
            kind: kind_from(b & 0x7f)?,
            foreign_user: b & 0x80 != 0,
        });
    }
    let n = r.varint()? as usize;
    let mut foreign_users = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let s = r.varint()?;
        let u = UserId::parse(r.str()?).map_err(|e| CodecError(e.to_string()))?;
        foreign_users.push((s, u));
    }
    let timeline_dropped = u32::try_from(r.varint()?).map_err(|_| CodecError("count".into()))?;
    let reversal = if version == VERSION_1 {
        None
    } else {
        r.opt(|r| {
            Ok(Box::new(Reversal {
                usd_amount: usd(r)?,
                krw_amount: krw(r)?,
                rate: read_rate(r)?,
                fill_krw_amount: krw(r)?,
            }))
        })?
    };
    if !r.is_empty() {
        return err("trailing bytes");
    }
    Ok(SagaRecord {
        saga_id,
        user_id,
        state,
        seen,
        requested_krw,
        min_usd_amount,
        held_krw,
        filled_usd,
        rate,
        krw_witness,
        usd_witness,
        failure,
        started_at_ms,
        last_event_at_ms,
        finished_at_ms,
        compensation_started_at_ms,
        first_seq,
        last_seq,
        event_count,
        notes,
        timeline,
        foreign_users,
        timeline_dropped,
        reversal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::apply;
    use events::*;

    #[test]
    fn records_round_trip_compactly() {
        let saga = SagaId::parse("0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11").unwrap();
        let alice = UserId::parse("alice").unwrap();
        let mut rec = SagaRecord::new(saga, alice.clone());
        let at = 1_795_660_800_000;
        let events = [
            Event::ExchangeRequested(ExchangeRequested {
                saga_id: saga,
                user_id: alice.clone(),
                krw_amount: Krw::parse("1500000").unwrap(),
                min_usd_amount: Some(Usd::parse("1000").unwrap()),
            }),
            Event::KrwHeld(KrwHeld {
                saga_id: saga,
                user_id: alice.clone(),
                krw_amount: Krw::parse("1500000").unwrap(),
                min_usd_amount: Some(Usd::parse("1000").unwrap()),
                hold_expires_at_ms: at + 30_000,
            }),
            Event::TradeFilled(TradeFilled {
                saga_id: saga,
                user_id: UserId::parse("mallory").unwrap(),
                krw_amount: Krw::parse("1500000").unwrap(),
                usd_amount: Usd::parse("1071.42").unwrap(),
                rate: serde_json::from_str("\"1400.5\"").unwrap(),
            }),
            Event::UsdCreditFailed(UsdCreditFailed {
                saga_id: saga,
                user_id: alice.clone(),
                reason: CreditFailReason::AccountFrozen,
                message: "frozen".into(),
            }),
        ];
        for (i, e) in events.iter().enumerate() {
            apply(&mut rec, e, 1000 + 3 * i as u64, at + 7 * i as u64);
        }
        let mut buf = Vec::new();
        encode(&rec, &mut buf);
        assert_eq!(decode(&buf).unwrap(), rec);
        assert!(buf.len() < 400, "{} bytes", buf.len());
        assert!(decode(&buf[..buf.len() - 1]).is_err());

        // A version-2 record (stored before the seen-set was widened) is this layout with a
        // two-byte set: it still reads, with the same set.
        let seen_at = 1 + 16 + 1 + rec.user_id.as_str().len() + 1;
        assert_eq!(&buf[seen_at..seen_at + 4], &rec.seen.0.to_le_bytes());
        let mut v2 = buf.clone();
        v2.drain(seen_at + 2..seen_at + 4);
        v2[0] = 2;
        assert_eq!(decode(&v2).unwrap(), rec);

        // A version-1 record (stored before reversals were kept) is the version-2 layout
        // without the trailing reversal option: it still reads, with no reversal.
        let mut v1 = v2.clone();
        assert_eq!(
            v1.pop(),
            Some(0),
            "no reversal: the option's None tag ends the record"
        );
        v1[0] = 1;
        assert_eq!(decode(&v1).unwrap(), rec);

        // A reversal round-trips.
        apply(
            &mut rec,
            &Event::TradeReversed(TradeReversed {
                saga_id: saga,
                user_id: alice.clone(),
                usd_amount: Usd::parse("1071.42").unwrap(),
                krw_amount: Krw::parse("1553559").unwrap(),
                rate: serde_json::from_str("\"1450\"").unwrap(),
                fill_krw_amount: Krw::parse("1500000").unwrap(),
            }),
            2000,
            at + 100,
        );
        assert!(rec.reversal.is_some());
        buf.clear();
        encode(&rec, &mut buf);
        assert_eq!(decode(&buf).unwrap(), rec);

        // An intervention (a kind past bit 15) round-trips, on the timeline and in the set,
        // and changes no state.
        let state = rec.state;
        apply(
            &mut rec,
            &Event::UsdIntervened(Intervened {
                saga_id: saga,
                user_id: alice.clone(),
                action: InterventionAction::Reemit,
                actor: "admin".into(),
                reason: "lost on node 2".into(),
                events: vec!["usd.credit_failed".into()],
            }),
            2001,
            at + 101,
        );
        assert!(rec.seen.contains(EventKind::UsdIntervened));
        assert_eq!(rec.state, state);
        assert_eq!(rec.timeline.last().unwrap().kind, EventKind::UsdIntervened);
        buf.clear();
        encode(&rec, &mut buf);
        assert_eq!(decode(&buf).unwrap(), rec);
    }
}
