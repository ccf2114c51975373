//! fx-trade: buys USD for held KRW at a market venue, the pivot of the exchange saga.
//!
//! Consumes krw.held, krw.released and usd.credit_failed; emits trade.filled, trade.failed
//! and trade.cancelled. The pieces:
//!
//! - [`Venue`] and [`SimulatedVenue`]: the market, idempotent by client order id (the saga id),
//!   taking limit orders (the slippage guard) and answering lookups of earlier executions.
//! - [`CircuitBreaker`]: closed / open / half-open around the venue, driven by `now_ms`.
//! - `TradeService`'s `prepare`: the one place the venue is called, before the transaction,
//!   and only for a saga without a record: an order while the hold is outside the safety
//!   margin, a lookup when it is too late to order (hold inside the margin, or released).
//! - [`decide`]: the pure decision `(order, event, quote, now_ms, config) -> Decision`, the
//!   runtime's one decision shape ([`runtime::Decision`]) with the order record as its writes.
//! - [`apply`]: the thin adapter over [`Records`]: load, decide, apply; [`TradeService`] is the
//!   [`Participant`] the runtime (and the simulation) drives, and its [`Intervene`] the
//!   operator's `reemit`.
//!
//! State: one record per saga, `order:<saga_id>` ([`OrderRecord`]). Journal (accounts of
//! `runtime::ledger`): `fill` (USD `venue` -> `house`), `cancel` (`house` -> `position`),
//! `reverse` (`position` -> `venue`) and `fx_pnl` (KRW, between `position` and `fx_pnl`), so
//! audits can count fills and reversals.

mod audit;
mod breaker;
mod config;
mod decide;
mod http_venue;
mod reconcile;
pub mod server;
mod venue;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use events::InterventionAction;
use events::{Event, EventKind, KrwHeld, SagaId, Usd, UserId};
use futures::future::BoxFuture;
use runtime::intervention::{wrong_service, Intervene, InterventionRequest, Refusal};
use runtime::{Handled, Participant, ReadRecords, Records, TxResult};

pub use audit::{audit, audit_with_progress, TradeAudit, TradeFigures, TRADE_OPS};
pub use breaker::{Admission, BreakerConfig, BreakerState, CircuitBreaker};
pub use config::TradeConfig;
pub use decide::{
    decide, hold_expiring, order_key, reemit_events, Decision, Fill, OrderRecord, OrderState,
    OrderWrite, Quote, Reversal, ORDER_PREFIX, REVERSAL_RETRY_MAX_MS,
};
pub use http_venue::HttpVenue;
pub use reconcile::{combine, reconcile, report, ReconcileError, VenueReconciliation};
pub use venue::{
    limit_fill, limit_sale, Book, ClientOrderId, Execution, Market, MemoryBook, OrderOutcome,
    OrderSide, Side, SimulatedVenue, Venue, VenueConfig, VenueError, VenueOrder,
};

/// The event kinds fx-trade consumes.
pub const CONSUMES: &[EventKind] = &[
    EventKind::KrwHeld,
    EventKind::KrwReleased,
    EventKind::UsdCreditFailed,
    // Its own: a cancelled fill is reversed at the venue after the user was made whole.
    EventKind::TradeCancelled,
];

/// Handles one event of one saga inside a transaction: loads `order:<saga_id>`, decides, and
/// applies the decision (causation id = the consumed event's id).
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
    let order: Option<OrderRecord> = records.get(&order_key(event.saga_id()))?;
    decide(order.as_ref(), event, quote, now_ms, config).apply(records, &event.id(), now_ms)
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

    /// The venue it trades with (reconciliation reads its executions).
    pub fn venue(&self) -> Arc<dyn Venue> {
        self.venue.clone()
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

    /// Asks the venue about `held`, through the breaker. While the hold is outside the safety
    /// margin this places the limit order (or gets back the execution an earlier delivery
    /// made); inside it, it is too late to order, so it only looks for such an execution.
    pub async fn quote(&self, held: &KrwHeld, now_ms: u64) -> Quote {
        if hold_expiring(
            held.hold_expires_at_ms,
            now_ms,
            self.config.hold_safety_margin_ms,
        ) {
            // A delivery whose fill was lost in a crash may have executed: that execution
            // must still be booked, so ask rather than assume there is none.
            return self.lookup(held.saga_id, now_ms).await;
        }
        // A limit order: the venue itself refuses to execute below the slippage guard, so a
        // refusal never leaves an execution for fx-trade to turn down.
        let order = VenueOrder::buy(
            held.saga_id,
            held.user_id.clone(),
            held.krw_amount,
            held.min_usd_amount,
        );
        match self
            .call(held.saga_id, now_ms, "order", || self.venue.order(&order))
            .await
        {
            Ok(OrderOutcome::Executed(e)) => Quote::Rate(e.rate),
            Ok(OrderOutcome::LimitNotMet { rate }) => Quote::LimitNotMet { rate },
            Err(unavailable) => unavailable,
        }
    }

    /// Asks the venue, through the breaker, whether an order for `saga_id` executed. Places
    /// nothing: [`Quote::Rate`] if one did, [`Quote::NoExecution`] if none did.
    pub async fn lookup(&self, saga_id: SagaId, now_ms: u64) -> Quote {
        match self.find(saga_id, now_ms).await {
            Ok(Some(e)) => Quote::Rate(e.rate),
            Ok(None) => Quote::NoExecution,
            Err(unavailable) => unavailable,
        }
    }

    /// The execution of the saga's buy, through the breaker.
    async fn find(&self, saga_id: SagaId, now_ms: u64) -> Result<Option<Execution>, Quote> {
        let id = ClientOrderId::buy(saga_id);
        self.call(saga_id, now_ms, "lookup", || self.venue.execution(&id))
            .await
    }

    /// Sells a cancelled fill's `usd` back at the venue (or gets back the sale an earlier
    /// attempt made): [`Quote::Reversal`] once the venue confirms it.
    pub async fn reverse(&self, saga_id: SagaId, user_id: &UserId, usd: Usd, now_ms: u64) -> Quote {
        let order = VenueOrder::reversal(saga_id, user_id.clone(), usd);
        match self
            .call(saga_id, now_ms, "reversal", || self.venue.order(&order))
            .await
        {
            Ok(OrderOutcome::Executed(e)) => Quote::Reversal(e),
            Ok(OrderOutcome::LimitNotMet { rate }) => Quote::LimitNotMet { rate },
            Err(unavailable) => unavailable,
        }
    }

    /// The lookup that verifies an unverified venue_unavailable: an execution found is
    /// reversed at once ([`Quote::Reversed`]); nothing found is [`Quote::NoExecution`].
    async fn verify(&self, saga_id: SagaId, user_id: &UserId, now_ms: u64) -> Quote {
        let fill = match self.find(saga_id, now_ms).await {
            Ok(Some(fill)) => fill,
            Ok(None) => return Quote::NoExecution,
            Err(unavailable) => return unavailable,
        };
        match self
            .reverse(saga_id, user_id, fill.usd_amount, now_ms)
            .await
        {
            Quote::Reversal(reversal) => Quote::Reversed { fill, reversal },
            other => other,
        }
    }

    /// One venue call through the breaker: refused while it is open, and its outcome booked
    /// on it (an answer, whatever it says, is a success). A failure comes back as the
    /// [`Quote::Unavailable`] to decide on.
    async fn call<'a, T>(
        &'a self,
        saga_id: SagaId,
        now_ms: u64,
        what: &'static str,
        call: impl FnOnce() -> BoxFuture<'a, Result<T, VenueError>>,
    ) -> Result<T, Quote> {
        let admission = self.breaker().admit(now_ms);
        if let Admission::Rejected { retry_in_ms } = admission {
            metrics::counter!("fx_trade_venue_calls_total", "call" => what, "outcome" => "rejected")
                .increment(1);
            self.report_breaker(now_ms);
            return Err(Quote::Unavailable {
                reason: "circuit breaker open".into(),
                retry_in_ms,
            });
        }
        let result = self.with_deadline(call()).await;
        // The outcome is booked at the time the call was admitted: the breaker takes no clock,
        // and the venue's latency is small against the open period.
        let outcome = match result {
            Ok(answer) => {
                self.breaker().record_success();
                metrics::counter!("fx_trade_venue_calls_total", "call" => what, "outcome" => "ok")
                    .increment(1);
                Ok(answer)
            }
            Err(e) => {
                // If this failure opened the breaker, the next attempt waits for the probe.
                let retry_in_ms = {
                    let mut breaker = self.breaker();
                    breaker.record_failure(now_ms);
                    breaker.retry_in_ms(now_ms)
                };
                let outcome = match e {
                    VenueError::Timeout { .. } => "timeout",
                    _ => "failed",
                };
                metrics::counter!("fx_trade_venue_calls_total", "call" => what, "outcome" => outcome)
                    .increment(1);
                tracing::warn!(%saga_id, call = what, error = %e, probe = admission == Admission::Probe, "venue call failed");
                Err(Quote::Unavailable {
                    reason: e.to_string(),
                    retry_in_ms,
                })
            }
        };
        self.report_breaker(now_ms);
        outcome
    }

    /// Bounds a venue call by `venue_timeout_ms`: past it the call is dropped and its outcome
    /// is unknown ([`VenueError::Timeout`]). Without a tokio runtime (the deterministic
    /// simulation drives prepare with a plain executor and a venue without latency) there is
    /// no timer, and the call runs to its answer.
    async fn with_deadline<T>(
        &self,
        call: BoxFuture<'_, Result<T, VenueError>>,
    ) -> Result<T, VenueError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return call.await;
        }
        let after_ms = self.config.venue_timeout_ms;
        match tokio::time::timeout(std::time::Duration::from_millis(after_ms), call).await {
            Ok(answer) => answer,
            Err(_) => Err(VenueError::Timeout { after_ms }),
        }
    }

    fn report_breaker(&self, now_ms: u64) {
        let state = self.breaker_state(now_ms);
        metrics::gauge!("fx_trade_breaker_state").set(state.as_gauge());
    }
}

/// What `prepare` asks the venue, decided from the saga's record before any await.
enum Ask<'a> {
    /// Place the buy (or look up, inside the hold's safety margin).
    Order(&'a KrwHeld),
    /// Look up whether a buy executed.
    Lookup,
    /// Look up, and reverse what is found.
    Verify(UserId),
    /// Sell a cancelled fill's USD back.
    Reverse(UserId, Usd),
    /// The record answers the event already.
    Nothing,
}

impl Participant for TradeService {
    type Prepared = Quote;

    fn name(&self) -> &'static str {
        "trade"
    }

    fn consumes(&self) -> &'static [EventKind] {
        CONSUMES
    }

    fn prepare_concurrency(&self) -> usize {
        self.config.venue_max_inflight
    }

    /// The venue is asked only when the saga's record does not answer the event already: a
    /// saga fx-trade has filled, failed or tombstoned never reaches the venue again (a
    /// krw.held after the tombstone must not execute an order nobody will book), except for
    /// the lookup that verifies an unverified venue_unavailable. The record is read before any
    /// await, so the future holds nothing of the store.
    fn prepare<V: ReadRecords>(
        &self,
        records: &V,
        event: &Event,
        now_ms: u64,
    ) -> impl Future<Output = Quote> + Send {
        let saga_id = event.saga_id();
        let record = match event {
            Event::KrwHeld(_) | Event::KrwReleased(_) | Event::TradeCancelled(_) => {
                match records.read::<OrderRecord>(&order_key(saga_id)) {
                    Ok(record) => Ok(record),
                    Err(e) => {
                        // Without the record the venue must not be called; decide retries
                        // (or the transaction's own read fails and the message is nak'ed).
                        tracing::warn!(%saga_id, error = %e, "cannot read the order record before the venue call");
                        Err(())
                    }
                }
            }
            _ => Err(()),
        };
        let ask = match (event, record) {
            (Event::KrwHeld(held), Ok(None)) => Ask::Order(held),
            // The hold is gone, so ordering is out of the question; what matters is whether a
            // delivery of krw.held whose fill was lost executed one.
            (Event::KrwReleased(_), Ok(None)) => Ask::Lookup,
            // A venue_unavailable said without the venue's word: the release that follows it
            // finds out whether a lost delivery executed, and reverses what it finds.
            (Event::KrwReleased(_), Ok(Some(order))) if order.state.unverified() => {
                Ask::Verify(order.user_id)
            }
            (
                Event::TradeCancelled(_),
                Ok(Some(OrderRecord {
                    user_id,
                    state:
                        OrderState::Cancelled {
                            fill,
                            reversal: None,
                            ..
                        },
                    ..
                })),
            ) => Ask::Reverse(user_id, fill.usd_amount),
            _ => Ask::Nothing,
        };
        async move {
            match ask {
                Ask::Order(held) => self.quote(held, now_ms).await,
                Ask::Lookup => self.lookup(saga_id, now_ms).await,
                Ask::Verify(user) => self.verify(saga_id, &user, now_ms).await,
                Ask::Reverse(user, usd) => self.reverse(saga_id, &user, usd, now_ms).await,
                Ask::Nothing => Quote::NotNeeded,
            }
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

impl Intervene for TradeService {
    type Writes = Option<OrderWrite>;
    const INTERVENED: EventKind = EventKind::TradeIntervened;

    /// `reemit` only: fx-trade's last word from `order:<saga_id>` (see [`reemit_events`]),
    /// then trade.intervened. Changes no record; `cancel` and `refuse_credit` are fx-krw's and
    /// fx-usd's.
    fn intervene<R: Records>(
        &self,
        records: &R,
        action: InterventionAction,
        req: &InterventionRequest,
        actor: &str,
        _now_ms: u64,
    ) -> TxResult<Result<Decision, Refusal>> {
        if action != InterventionAction::Reemit {
            return Ok(Err(wrong_service(self.name(), action)));
        }
        let order = records.get::<OrderRecord>(&order_key(req.saga_id))?;
        Ok(decide::decide_reemit(order.as_ref(), req, actor))
    }
}
