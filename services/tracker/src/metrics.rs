//! The tracker's Prometheus metrics (all prefixed `fx_tracker_`), in one place so dashboards,
//! alerts and docs can rely on the names.
//!
//! Counters and histograms count what *this process* processed: a tracker that rebuilds
//! from the stream counts the whole history once more. Gauges are set from the read model and
//! are the same after a rebuild; so is `fx_tracker_reversals_total`, a counter whose value is
//! set from the read model (reversals only ever grow).

use events::EventKind;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use rust_decimal::prelude::ToPrimitive;

use crate::model::{BatchReport, ReadModel};
use crate::projection::SagaState;

/// Metric names.
pub mod names {
    /// Gauge: sagas per `state`.
    pub const SAGAS: &str = "fx_tracker_sagas";
    /// Counter: successful steps per event `kind` (krw.held, trade.filled, usd.credited,
    /// krw.committed, exchange.requested).
    pub const STEP_SUCCESS: &str = "fx_tracker_step_success_total";
    /// Counter: failed steps per event `kind` (krw.rejected, trade.failed, usd.credit_failed).
    pub const STEP_FAILURE: &str = "fx_tracker_step_failure_total";
    /// Counter: compensation steps per event `kind` (krw.released, trade.cancelled, usd.debited).
    pub const COMPENSATION_STEPS: &str = "fx_tracker_compensation_steps_total";
    /// Counter: every decoded event per `kind` (admin deposits included).
    pub const EVENTS: &str = "fx_tracker_events_total";
    /// Counter: messages that did not decode, per `reason`.
    pub const UNDECODABLE: &str = "fx_tracker_undecodable_total";
    /// Counter: duplicate events (a kind seen twice in one saga).
    pub const DUPLICATES: &str = "fx_tracker_duplicate_events_total";
    /// Gauge: COMPENSATED / terminal sagas.
    pub const COMPENSATION_RATE: &str = "fx_tracker_compensation_rate";
    /// Histogram: seconds from a saga's first failure to COMPENSATED (stream time).
    pub const COMPENSATION_LATENCY: &str = "fx_tracker_compensation_latency_seconds";
    /// Histogram: seconds from a saga's first event to its terminal event, per `outcome`.
    pub const SAGA_DURATION: &str = "fx_tracker_saga_duration_seconds";
    /// Gauge: sagas STUCK now (no event for longer than `FX_STUCK_AFTER_MS`), per
    /// non-terminal `state`.
    pub const STUCK: &str = "fx_tracker_stuck_sagas";
    /// Gauge: per non-terminal `state`, the longest time since a saga in it saw an event,
    /// seconds (0 when none is in it): what STUCK alerts with a threshold per state compare.
    pub const OLDEST_IDLE: &str = "fx_tracker_oldest_idle_seconds";
    /// Gauge: the longest a saga now COMPENSATING has been compensating, seconds.
    pub const OLDEST_COMPENSATING: &str = "fx_tracker_oldest_compensating_seconds";
    /// Gauge: messages in `FX_DLQ` (the dead letters kept).
    pub const DLQ_MESSAGES: &str = "fx_tracker_dlq_messages";
    /// Gauge: sagas INCONSISTENT.
    pub const INCONSISTENT: &str = "fx_tracker_inconsistent_sagas";
    /// Gauge: last stream sequence processed.
    pub const LAST_SEQ: &str = "fx_tracker_last_processed_seq";
    /// Gauge: the stream's last sequence minus the last processed one.
    pub const LAG: &str = "fx_tracker_lag_messages";
    /// Gauge: sagas held in memory.
    pub const RESIDENT: &str = "fx_tracker_resident_sagas";
    /// Gauge: sagas whose fill the house still has to sell back at the venue (trade.cancelled,
    /// no trade.reversed yet).
    pub const REVERSALS_PENDING: &str = "fx_tracker_reversals_pending";
    /// Counter (set from the read model): sagas whose fill the house sold back (trade.reversed).
    pub const REVERSALS: &str = "fx_tracker_reversals_total";
    /// Gauge: the house's FX gain (positive) or loss (negative) over reversed sagas, KRW.
    pub const FX_PNL_KRW: &str = "fx_tracker_fx_pnl_krw";
}

/// Whether a kind is a success, a failure or a compensation step (`None`: admin, and an
/// operator's intervention record).
fn step_class(kind: EventKind) -> Option<&'static str> {
    match kind {
        EventKind::ExchangeRequested
        | EventKind::KrwHeld
        | EventKind::TradeFilled
        | EventKind::UsdCredited
        | EventKind::KrwCommitted => Some(names::STEP_SUCCESS),
        EventKind::KrwRejected | EventKind::TradeFailed | EventKind::UsdCreditFailed => {
            Some(names::STEP_FAILURE)
        }
        EventKind::KrwReleased
        | EventKind::TradeCancelled
        | EventKind::TradeReversed
        | EventKind::UsdDebited => Some(names::COMPENSATION_STEPS),
        EventKind::KrwDeposited
        | EventKind::UsdDeposited
        | EventKind::UsdFrozen
        | EventKind::UsdUnfrozen
        | EventKind::KrwIntervened
        | EventKind::TradeIntervened
        | EventKind::UsdIntervened => None,
    }
}

/// Registers every metric at zero so `/metrics` lists them all from the start.
pub fn describe() {
    for kind in EventKind::ALL {
        let label = kind.type_name();
        counter!(names::EVENTS, "kind" => label.clone()).increment(0);
        if let Some(name) = step_class(kind) {
            counter!(name, "kind" => label).increment(0);
        }
    }
    counter!(names::DUPLICATES).increment(0);
    counter!(names::UNDECODABLE, "reason" => "none").increment(0);
    for state in SagaState::ALL.into_iter().filter(|s| s.is_terminal()) {
        // Registering makes the exporter list the histogram before its first sample.
        let _ = histogram!(names::SAGA_DURATION, "outcome" => state.as_str());
    }
    let _ = histogram!(names::COMPENSATION_LATENCY);
    describe_gauge!(names::SAGAS, "Sagas per state.");
    describe_counter!(names::STEP_SUCCESS, "Successful saga steps per event kind.");
    describe_counter!(names::STEP_FAILURE, "Failed saga steps per event kind.");
    describe_counter!(
        names::COMPENSATION_STEPS,
        "Compensation steps per event kind."
    );
    describe_counter!(names::EVENTS, "Decoded events per kind.");
    describe_counter!(
        names::UNDECODABLE,
        "Messages that did not decode, per reason."
    );
    describe_counter!(
        names::DUPLICATES,
        "Events whose kind the saga had already seen."
    );
    describe_gauge!(
        names::COMPENSATION_RATE,
        "COMPENSATED sagas over terminal sagas."
    );
    describe_histogram!(
        names::COMPENSATION_LATENCY,
        Unit::Seconds,
        "First failure to COMPENSATED, stream time."
    );
    describe_histogram!(
        names::SAGA_DURATION,
        Unit::Seconds,
        "First event to terminal event, stream time."
    );
    describe_gauge!(names::STUCK, "Sagas STUCK now, per non-terminal state.");
    describe_gauge!(
        names::OLDEST_IDLE,
        Unit::Seconds,
        "Per non-terminal state, the longest time since a saga in it saw an event."
    );
    describe_gauge!(
        names::OLDEST_COMPENSATING,
        Unit::Seconds,
        "The longest a saga now COMPENSATING has been compensating."
    );
    describe_gauge!(names::DLQ_MESSAGES, "Messages in FX_DLQ.");
    describe_gauge!(names::INCONSISTENT, "Sagas INCONSISTENT.");
    describe_gauge!(names::LAST_SEQ, "Last FX stream sequence processed.");
    describe_gauge!(
        names::LAG,
        "FX stream last sequence minus the last processed one."
    );
    describe_gauge!(names::RESIDENT, "Sagas held in memory.");
    gauge!(names::REVERSALS_PENDING).set(0.0);
    counter!(names::REVERSALS).absolute(0);
    gauge!(names::FX_PNL_KRW).set(0.0);
    describe_gauge!(
        names::REVERSALS_PENDING,
        "Sagas whose fill the house has yet to sell back at the venue (trade.cancelled, no trade.reversed)."
    );
    describe_counter!(
        names::REVERSALS,
        "Sagas whose fill the house sold back at the venue (trade.reversed)."
    );
    describe_gauge!(
        names::FX_PNL_KRW,
        "The house's FX gain (positive) or loss (negative) over reversed sagas, KRW."
    );
}

/// Records what one batch did.
pub fn record_batch(report: &BatchReport) {
    for (i, &n) in report.kinds.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let kind = EventKind::ALL[i];
        let label = kind.type_name();
        counter!(names::EVENTS, "kind" => label.clone()).increment(n);
        if let Some(name) = step_class(kind) {
            counter!(name, "kind" => label).increment(n);
        }
    }
    for reason in &report.undecodable {
        counter!(names::UNDECODABLE, "reason" => *reason).increment(1);
    }
    if report.duplicates > 0 {
        counter!(names::DUPLICATES).increment(report.duplicates);
    }
    for f in &report.finished {
        histogram!(names::SAGA_DURATION, "outcome" => f.state.as_str())
            .record(f.duration_ms as f64 / 1000.0);
        if let Some(c) = f.compensation_ms {
            histogram!(names::COMPENSATION_LATENCY).record(c as f64 / 1000.0);
        }
    }
}

/// Sets the FX_DLQ depth (from the stream's info, on the periodic tick).
pub fn set_dlq_messages(messages: u64) {
    gauge!(names::DLQ_MESSAGES).set(messages as f64);
}

/// Sets the gauges from the model (after each batch and on the periodic tick).
pub fn set_gauges(model: &ReadModel) {
    let stats = model.stats();
    for state in SagaState::ALL {
        gauge!(names::SAGAS, "state" => state.as_str()).set(stats.by_state[state.as_str()] as f64);
    }
    gauge!(names::COMPENSATION_RATE).set(stats.compensation_rate);
    let waiting = model.waiting();
    for (state, w) in &waiting.by_state {
        gauge!(names::STUCK, "state" => state.as_str()).set(w.stuck as f64);
        gauge!(names::OLDEST_IDLE, "state" => state.as_str()).set(w.oldest_idle_ms as f64 / 1000.0);
    }
    gauge!(names::OLDEST_COMPENSATING).set(waiting.oldest_compensating_ms as f64 / 1000.0);
    gauge!(names::INCONSISTENT).set(stats.inconsistent as f64);
    gauge!(names::LAST_SEQ).set(stats.last_seq as f64);
    gauge!(names::LAG).set(stats.lag as f64);
    gauge!(names::RESIDENT).set(model.resident() as f64);
    gauge!(names::REVERSALS_PENDING).set(stats.reversals_pending as f64);
    counter!(names::REVERSALS).absolute(stats.reversals_total);
    // The one float of the P&L: Prometheus samples are floats. Amounts stay Decimal elsewhere.
    gauge!(names::FX_PNL_KRW).set(stats.fx_pnl_krw.to_f64().unwrap_or(f64::NAN));
}
