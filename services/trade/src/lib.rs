//! fx-trade: buys USD for held KRW at a market venue, the pivot of the exchange saga.
//!
//! Consumes krw.held, krw.released and usd.credit_failed; emits trade.filled, trade.failed
//! and trade.cancelled. The pieces:
//!
//! - [`Venue`] and [`SimulatedVenue`]: the market, idempotent by client order id (the saga id).
//! - [`CircuitBreaker`]: closed / open / half-open around the venue, driven by `now_ms`.
//! - [`decide`]: the pure decision `(order, event, quote, now_ms, config) -> Decision`.
//! - [`apply`]: the thin adapter over [`Records`] that loads, decides, writes, journals and
//!   emits; [`TradeService`] is the [`Participant`] the runtime (and the simulation) drives.
//!
//! State: one record per saga, `order:<saga_id>` ([`OrderRecord`]). Journal: `fill` and
//! `cancel` entries (USD, `venue` <-> `house`), so audits can count fills and reversals.

mod audit;
mod breaker;
mod config;
mod order;
pub mod server;
mod venue;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, MutexGuard};

use events::{Event, EventKind, KrwHeld};
use runtime::{Handled, Participant, Records, TxResult};

pub use audit::{audit, TradeAudit};
pub use breaker::{Admission, BreakerConfig, BreakerState, CircuitBreaker};
pub use config::TradeConfig;
pub use order::{
    decide, hold_expiring, order_key, Decision, Fill, OrderRecord, OrderState, Quote,
    HOUSE_ACCOUNT, ORDER_PREFIX, VENUE_ACCOUNT,
};
pub use venue::{SimulatedVenue, Venue, VenueConfig, VenueError, VenueOrder};

/// The event kinds fx-trade consumes.
pub const CONSUMES: &[EventKind] = &[
    EventKind::KrwHeld,
    EventKind::KrwReleased,
    EventKind::UsdCreditFailed,
];

/// Handles one event of one saga inside a transaction: loads `order:<saga_id>`, decides,
/// writes the record, journals and emits (causation id = the consumed event's id).
///
/// Deterministic in its inputs, so it may run twice on a transaction conflict and the
/// simulation can call it with its in-memory [`Records`].
pub fn apply<R: Records>(
    records: &R,
    event: &Event,
    quote: &Quote,
    now_ms: u64,
    config: &TradeConfig,
) -> TxResult<Handled> {
    if !CONSUMES.contains(&event.kind()) {
        return Ok(Handled::Ignored);
    }
    let key = order_key(event.saga_id());
    let order: Option<OrderRecord> = records.get(&key)?;
    let decision = decide(order.as_ref(), event, quote, now_ms, config);
    if let Some(order) = &decision.order {
        records.put(&key, order)?;
    }
    for entry in &decision.journal {
        records.journal(entry)?;
    }
    let cause = event.id();
    for e in &decision.events {
        records.emit(e, &cause, now_ms)?;
    }
    Ok(decision.handled)
}

/// The fx-trade participant: config, an injected venue and the breaker around it.
pub struct TradeService {
    config: TradeConfig,
    venue: Arc<dyn Venue>,
    breaker: Mutex<CircuitBreaker>,
}

impl TradeService {
    /// A service ordering from `venue` (a [`SimulatedVenue`] in the binary and in tests).
    pub fn new(config: TradeConfig, venue: Arc<dyn Venue>) -> TradeService {
        let breaker = CircuitBreaker::new(config.breaker.clone());
        TradeService {
            config,
            venue,
            breaker: Mutex::new(breaker),
        }
    }

    /// The settings the service runs with.
    pub fn config(&self) -> &TradeConfig {
        &self.config
    }

    fn breaker(&self) -> MutexGuard<'_, CircuitBreaker> {
        // The breaker is plain data updated in single statements; a panic elsewhere while
        // holding it cannot leave it half-changed, so a poisoned lock is still good.
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The breaker's state at `now_ms` (for metrics and `/readyz`-style reports).
    pub fn breaker_state(&self, now_ms: u64) -> BreakerState {
        self.breaker().state(now_ms)
    }

    /// Asks the venue for a fill of `held`, through the breaker. Skips the venue when the hold
    /// already expires within the safety margin (the decision will fail it as hold_expiring).
    pub async fn quote(&self, held: &KrwHeld, now_ms: u64) -> Quote {
        if hold_expiring(
            held.hold_expires_at_ms,
            now_ms,
            self.config.hold_safety_margin_ms,
        ) {
            return Quote::NotNeeded;
        }
        let admission = self.breaker().admit(now_ms);
        if let Admission::Rejected { retry_in_ms } = admission {
            metrics::counter!("fx_trade_venue_calls_total", "outcome" => "rejected").increment(1);
            self.report_breaker(now_ms);
            return Quote::Unavailable {
                reason: "circuit breaker open".into(),
                retry_in_ms,
            };
        }
        let order = VenueOrder {
            client_order_id: held.saga_id,
            user_id: held.user_id.clone(),
            krw_amount: held.krw_amount,
        };
        let result = self.venue.order(&order).await;
        // The outcome is booked at the time the call was admitted: the breaker takes no clock,
        // and the venue's latency is small against the open period.
        let quote = match result {
            Ok(rate) => {
                self.breaker().record_success();
                metrics::counter!("fx_trade_venue_calls_total", "outcome" => "ok").increment(1);
                Quote::Rate(rate)
            }
            Err(e) => {
                // If this failure opened the breaker, the next attempt waits for the probe.
                let retry_in_ms = {
                    let mut breaker = self.breaker();
                    breaker.record_failure(now_ms);
                    breaker.retry_in_ms(now_ms)
                };
                metrics::counter!("fx_trade_venue_calls_total", "outcome" => "failed").increment(1);
                tracing::warn!(saga_id = %held.saga_id, error = %e, probe = admission == Admission::Probe, "venue order failed");
                Quote::Unavailable {
                    reason: e.to_string(),
                    retry_in_ms,
                }
            }
        };
        self.report_breaker(now_ms);
        quote
    }

    fn report_breaker(&self, now_ms: u64) {
        let state = self.breaker_state(now_ms);
        metrics::gauge!("fx_trade_breaker_state").set(state.as_gauge());
    }
}

impl Participant for TradeService {
    type Prepared = Quote;

    fn name(&self) -> &'static str {
        "trade"
    }

    fn consumes(&self) -> &'static [EventKind] {
        CONSUMES
    }

    /// Only krw.held needs the venue; every other event is decided from the record alone.
    async fn prepare(&self, event: &Event, now_ms: u64) -> Quote {
        match event {
            Event::KrwHeld(held) => self.quote(held, now_ms).await,
            _ => Quote::NotNeeded,
        }
    }

    fn handle<R: Records>(
        &self,
        records: &R,
        event: &Event,
        prepared: &Quote,
        now_ms: u64,
    ) -> TxResult<Handled> {
        apply(records, event, prepared, now_ms, &self.config)
    }
}
