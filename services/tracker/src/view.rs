//! What the API says about a saga: the JSON shapes of `/api/sagas` and `/api/sagas/{id}`.

use serde::Serialize;

use crate::projection::SagaRecord;

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
            };
            prev = Some(e.at_ms);
            v
        })
        .collect()
}
