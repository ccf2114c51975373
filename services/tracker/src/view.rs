//! What the API says about a saga: the JSON shapes of `/api/sagas` and `/api/sagas/{id}`.

use events::EventKind;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::projection::{ReversalStatus, SagaRecord};

/// One saga as JSON. Money and rates are strings (never floats), times are ms since the Unix
/// epoch (stream time), absent values are `null`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SagaView {
    /// The saga's UUID.
    pub saga_id: String,
    /// REQUESTED, KRW_HELD, ORDER_PLACED, USD_CREDITED, COMPLETED, REJECTED, COMPENSATING or
    /// COMPENSATED.
    pub state: &'static str,
    /// The saga's user.
    pub user_id: String,
    /// KRW of krw.held (the saga's amount), or of the request before the hold.
    pub krw_amount: Option<String>,
    /// USD of trade.filled.
    pub usd_amount: Option<String>,
    /// KRW per USD of trade.filled.
    pub rate: Option<String>,
    /// KRW of the first exchange.requested seen (may differ from `krw_amount`).
    pub requested_krw_amount: Option<String>,
    /// The slippage guard.
    pub min_usd_amount: Option<String>,
    /// Why it failed or was rejected, e.g. `trade.failed: rate_moved`.
    pub failure_reason: Option<String>,
    /// No event for longer than the threshold while not terminal.
    pub stuck: bool,
    /// Why it is stuck and what it waits for.
    pub stuck_reason: Option<String>,
    /// A sequence the choreography cannot produce.
    pub inconsistent: bool,
    /// One sentence per inconsistency.
    pub inconsistent_reasons: Vec<String>,
    /// trade.cancelled seen and trade.reversed not yet: the house still holds the fill's USD.
    pub reversal_pending: bool,
    /// The house's reversal of the fill at the venue; `null` when there is none to make.
    pub reversal: Option<ReversalView>,
    /// Stream time of the first event.
    pub started_at: u64,
    /// Stream time of the terminal event.
    pub finished_at: Option<u64>,
    /// `finished_at - started_at`.
    pub duration_ms: Option<u64>,
    /// Stream time of the latest event.
    pub last_event_at: u64,
    /// Stream sequence of the first event (the listing cursor is made of these).
    pub first_seq: u64,
    /// Stream sequence of the latest event.
    pub last_seq: u64,
    /// Events applied, duplicates included.
    pub event_count: u32,
    /// The timeline (only in `/api/sagas/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<EventView>>,
    /// Timeline entries not kept (past the per-saga cap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_dropped: Option<u32>,
}

/// A saga's reversal as JSON: `pending` after trade.cancelled, `reversed` after trade.reversed.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ReversalView {
    /// `pending` or `reversed`.
    pub status: &'static str,
    /// USD to sell back (pending) or sold (reversed).
    pub usd_amount: Option<String>,
    /// KRW the sale brought (`null` while pending).
    pub krw_amount: Option<String>,
    /// The sale's rate, KRW per USD (`null` while pending).
    pub rate: Option<String>,
    /// KRW the fill cost.
    pub fill_krw_amount: Option<String>,
    /// The house's FX gain (positive) or loss (negative), KRW (`null` while pending).
    pub fx_pnl_krw: Option<String>,
    /// Stream time of trade.reversed.
    pub reversed_at: Option<u64>,
    /// The same in words, as the saga page says it.
    pub summary: String,
}

impl ReversalView {
    /// The reversal of `rec`, `None` when it has none to make.
    pub fn of(rec: &SagaRecord) -> Option<ReversalView> {
        let status = rec.reversal_status();
        let summary = reversal_summary(rec)?;
        let r = rec.reversal.as_deref();
        Some(ReversalView {
            status: if status == ReversalStatus::Pending {
                "pending"
            } else {
                "reversed"
            },
            usd_amount: r
                .map(|r| r.usd_amount)
                .or(rec.usd_amount())
                .map(|u| u.to_string()),
            krw_amount: r.map(|r| r.krw_amount.to_string()),
            rate: r.map(|r| r.rate.to_string()),
            fill_krw_amount: r
                .map(|r| r.fill_krw_amount)
                .or(rec.krw_amount())
                .map(|k| k.to_string()),
            fx_pnl_krw: r.map(|r| r.pnl_krw().to_string()),
            reversed_at: rec
                .timeline
                .iter()
                .find(|e| e.kind == EventKind::TradeReversed)
                .map(|e| e.at_ms),
            summary,
        })
    }
}

/// `FX gain 53559 KRW`, `FX loss 12 KRW`, `FX gain or loss 0 KRW`.
pub fn pnl_words(pnl_krw: Decimal) -> String {
    if pnl_krw > Decimal::ZERO {
        format!("FX gain {pnl_krw} KRW")
    } else if pnl_krw < Decimal::ZERO {
        format!("FX loss {} KRW", -pnl_krw)
    } else {
        "FX gain or loss 0 KRW".to_owned()
    }
}

/// What a person reads about a saga's reversal; `None` when it has none to make.
pub fn reversal_summary(rec: &SagaRecord) -> Option<String> {
    match (rec.reversal_status(), rec.reversal.as_deref()) {
        (ReversalStatus::None, _) => None,
        (ReversalStatus::Pending, _) => Some(format!(
            "reversal pending at the venue: the house holds {} USD until fx-trade sells it back",
            rec.usd_amount()
                .map_or_else(|| "the fill's".to_owned(), |u| u.to_string())
        )),
        (ReversalStatus::Done { .. }, Some(r)) => Some(format!(
            "reversed at the venue: sold {} USD for {} KRW at {} (the fill cost {} KRW); {}",
            r.usd_amount,
            r.krw_amount,
            r.rate,
            r.fill_krw_amount,
            pnl_words(r.pnl_krw())
        )),
        (ReversalStatus::Done { .. }, None) => Some(
            "reversed at the venue (terms not recorded by the tracker version that stored it)"
                .to_owned(),
        ),
    }
}

/// One timeline entry as JSON.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EventView {
    /// `domain.event`, e.g. `krw.held`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `fx.<domain>.<event>.<user_id>`.
    pub subject: String,
    /// Stream sequence (fetch the body with a JetStream direct get).
    pub seq: u64,
    /// Stream time, ms since the Unix epoch.
    pub at: u64,
    /// ms since the previous entry (`null` for the first).
    pub since_previous_ms: Option<u64>,
    /// For an operator's intervention (`<domain>.intervened`): its body, read back from the
    /// stream (`action`, `actor`, `reason`, `events`). Absent for other events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intervention: Option<serde_json::Value>,
}

impl SagaView {
    /// The view of `rec` at `now_ms`; `with_events` adds the timeline.
    pub fn of(rec: &SagaRecord, now_ms: u64, stuck_after_ms: u64, with_events: bool) -> SagaView {
        let stuck_reason = rec.stuck_reason(now_ms, stuck_after_ms);
        let inconsistent_reasons = rec.inconsistencies();
        SagaView {
            saga_id: rec.saga_id.to_string(),
            state: rec.state.as_str(),
            user_id: rec.user_id.to_string(),
            krw_amount: rec.krw_amount().map(|v| v.to_string()),
            usd_amount: rec.usd_amount().map(|v| v.to_string()),
            rate: rec.rate.map(|v| v.to_string()),
            requested_krw_amount: rec.requested_krw.map(|v| v.to_string()),
            min_usd_amount: rec.min_usd_amount.map(|v| v.to_string()),
            failure_reason: rec.failure.map(|f| f.to_string()),
            stuck: stuck_reason.is_some(),
            stuck_reason,
            inconsistent: !inconsistent_reasons.is_empty(),
            inconsistent_reasons,
            reversal_pending: rec.is_reversal_pending(),
            reversal: ReversalView::of(rec),
            started_at: rec.started_at_ms,
            finished_at: rec.finished_at_ms,
            duration_ms: rec.duration_ms(),
            last_event_at: rec.last_event_at_ms,
            first_seq: rec.first_seq,
            last_seq: rec.last_seq,
            event_count: rec.event_count,
            events: with_events.then(|| events_of(rec)),
            events_dropped: with_events.then_some(rec.timeline_dropped),
        }
    }
}

/// The timeline of `rec` as views.
pub fn events_of(rec: &SagaRecord) -> Vec<EventView> {
    let mut prev: Option<u64> = None;
    rec.timeline
        .iter()
        .map(|e| {
            let v = EventView {
                kind: e.kind.type_name(),
                subject: rec.subject_of(e),
                seq: e.seq,
                at: e.at_ms,
                since_previous_ms: prev.map(|p| e.at_ms.saturating_sub(p)),
                intervention: None,
            };
            prev = Some(e.at_ms);
            v
        })
        .collect()
}
