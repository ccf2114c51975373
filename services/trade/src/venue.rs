//! The market venue fx-trade buys USD from, and a simulated one.
//!
//! An order is a side effect outside our store, so it is made idempotent the way real venues
//! allow: the saga id is the client order id. If fx-trade crashes after the venue executed but
//! before the fill was durable, the redelivered krw.held asks again with the same id and gets
//! the same execution back instead of a second order.
//!
//! Two more properties keep every execution booked (DESIGN.md, "a real venue order is a side
//! effect"): an order is a *limit* order, so the venue itself refuses to execute below the
//! request's `min_usd_amount` (fx-trade never has to turn down an execution that already
//! happened); and [`Venue::execution`] looks an earlier order up without placing one, so a
//! redelivery that may no longer order (the hold runs short) can still find, and book, what a
//! lost delivery executed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use events::{Krw, Rate, SagaId, Usd, UserId};
use futures::future::BoxFuture;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runtime::RuntimeError;
use rust_decimal::Decimal;

/// One limit order: sell `krw_amount` KRW for USD, but only for at least `min_usd_amount`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VenueOrder {
    /// The client order id: the saga id, so a repeated order is recognised by the venue.
    pub client_order_id: SagaId,
    /// Whose exchange this is (for the venue's own records).
    pub user_id: UserId,
    /// KRW sold.
    pub krw_amount: Krw,
    /// The limit: the least USD the order may execute for (the request's slippage guard). With
    /// or without it, an order that would buy nothing (rounds to 0.00 USD) never executes.
    pub min_usd_amount: Option<Usd>,
}

impl VenueOrder {
    /// The USD this order buys at `rate`, if that meets its limit (see [`limit_fill`]).
    pub fn fill_at(&self, rate: Rate) -> Option<Usd> {
        limit_fill(rate, self.krw_amount, self.min_usd_amount)
    }
}

/// The USD `krw` buys at `rate` (`Rate::usd_for`, rounded down to the cent) if it is more than
/// zero and at least `min`; `None` when a limit order at `rate` must not execute. The venue and
/// fx-trade's decision apply this one rule, so they cannot disagree about what a fill buys.
pub fn limit_fill(rate: Rate, krw: Krw, min: Option<Usd>) -> Option<Usd> {
    rate.usd_for(krw)
        .filter(|usd| usd.is_positive() && min.is_none_or(|m| *usd >= m))
}

/// What the venue did with an order it received and answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderOutcome {
    /// Executed at this rate, KRW per USD (or executed earlier under the same client order id).
    /// The house now holds the USD: fx-trade must book it as the saga's fill.
    Executed(Rate),
    /// Not executed: at `rate` the order's limit was not met. Nothing happened at the venue,
    /// and the venue answered, so this is not a failure for the breaker.
    LimitNotMet {
        /// The rate the order would have executed at.
        rate: Rate,
    },
}

/// Why the venue did not answer. Every variant counts as a failure for the breaker.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VenueError {
    /// The venue cannot be reached or is in maintenance.
    #[error("venue is down")]
    Down,
    /// The venue answered but did not execute (a transient error on its side, not a limit).
    #[error("venue refused the order: {0}")]
    Failed(String),
}

/// A market venue. Implementations must be idempotent by `client_order_id`: once an order
/// executed, the same id always yields that execution, and never a second one.
pub trait Venue: Send + Sync {
    /// Places the limit order, or returns the execution an earlier order with the same client
    /// order id already made. An error means nothing executed for this call.
    fn order<'a>(
        &'a self,
        order: &'a VenueOrder,
    ) -> BoxFuture<'a, Result<OrderOutcome, VenueError>>;

    /// The rate an earlier order with this client order id executed at, or `None` if none did.
    /// Places nothing, so fx-trade may ask when it is too late to order.
    fn execution(&self, client_order_id: SagaId)
        -> BoxFuture<'_, Result<Option<Rate>, VenueError>>;
}

/// Settings of [`SimulatedVenue`] (`FX_VENUE_*`).
#[derive(Clone, Debug, PartialEq)]
pub struct VenueConfig {
    /// `FX_VENUE_RATE` (default 1400): the starting rate, KRW per USD.
    pub rate: Rate,
    /// `FX_VENUE_VOLATILITY_BPS` (default 0 = flat): each new order moves the rate by a uniform
    /// random step of at most this many basis points, up or down.
    pub volatility_bps: u32,
    /// `FX_VENUE_SEED` (default 0): seed of the random walk and of failure draws.
    pub seed: u64,
    /// `FX_VENUE_LATENCY_MS` (default 0): simulated round trip of every order.
    pub latency_ms: u64,
    /// `FX_VENUE_FAILURE_RATE` (0..=1, default 0): probability that a new order fails (a
    /// transient refusal by the matching engine; lookups of executions are not affected, only
    /// by the venue being down).
    pub failure_rate: f64,
}

impl VenueConfig {
    /// Steps of 50% or more could walk the rate to zero or below; no market moves like that.
    pub const MAX_VOLATILITY_BPS: u32 = 5_000;

    /// Refuses a failure rate outside 0..=1 and absurd volatility.
    pub fn validate(&self) -> runtime::Result<()> {
        if !(0.0..=1.0).contains(&self.failure_rate) {
            return Err(RuntimeError::Config {
                var: "FX_VENUE_FAILURE_RATE",
                message: format!("{} is not a probability between 0 and 1", self.failure_rate),
            });
        }
        if self.volatility_bps > Self::MAX_VOLATILITY_BPS {
            return Err(RuntimeError::Config {
                var: "FX_VENUE_VOLATILITY_BPS",
                message: format!(
                    "{} is above the maximum {}",
                    self.volatility_bps,
                    Self::MAX_VOLATILITY_BPS
                ),
            });
        }
        Ok(())
    }
}

impl Default for VenueConfig {
    fn default() -> Self {
        VenueConfig {
            rate: Rate::new(Decimal::from(1400)).expect("1400 is a positive rate"),
            volatility_bps: 0,
            seed: 0,
            latency_ms: 0,
            failure_rate: 0.0,
        }
    }
}

/// A deterministic simulated market: a seeded random walk, optional latency and failures, and
/// an order book keyed by client order id. Tests and the simulation steer it at run time.
pub struct SimulatedVenue {
    state: Mutex<SimState>,
}

struct SimState {
    rate: Rate,
    volatility_bps: u32,
    latency_ms: u64,
    failure_rate: f64,
    down: bool,
    rng: ChaCha8Rng,
    /// Executed orders by client order id: the venue's idempotency.
    orders: HashMap<SagaId, Rate>,
    /// Every order call that reached the venue, executed or not (for breaker tests).
    attempts: u64,
    /// Every execution lookup that reached the venue.
    lookups: u64,
}

impl SimulatedVenue {
    /// A venue as configured. Panics on an invalid config; call [`VenueConfig::validate`] first
    /// for values from outside.
    pub fn new(config: &VenueConfig) -> SimulatedVenue {
        config.validate().expect("valid venue config");
        SimulatedVenue {
            state: Mutex::new(SimState {
                rate: config.rate,
                volatility_bps: config.volatility_bps,
                latency_ms: config.latency_ms,
                failure_rate: config.failure_rate,
                down: false,
                rng: ChaCha8Rng::seed_from_u64(config.seed),
                orders: HashMap::new(),
                attempts: 0,
                lookups: 0,
            }),
        }
    }

    /// A flat venue at `rate` with no latency, failures or randomness.
    pub fn flat(rate: Rate) -> SimulatedVenue {
        SimulatedVenue::new(&VenueConfig {
            rate,
            ..VenueConfig::default()
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        // A panic while holding this lock can only come from a bug in this file; the state is
        // still usable, so recover rather than poison every later order.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the venue down (every order fails with [`VenueError::Down`]) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Changes the probability that a new order fails. Panics outside 0..=1.
    pub fn set_failure_rate(&self, failure_rate: f64) {
        assert!(
            (0.0..=1.0).contains(&failure_rate),
            "failure rate is a probability"
        );
        self.lock().failure_rate = failure_rate;
    }

    /// Moves the market to `rate` (the walk continues from there).
    pub fn set_rate(&self, rate: Rate) {
        self.lock().rate = rate;
    }

    /// Changes the simulated latency of later orders.
    pub fn set_latency_ms(&self, latency_ms: u64) {
        self.lock().latency_ms = latency_ms;
    }

    /// The current market rate (what the next new order would start its step from).
    pub fn rate(&self) -> Rate {
        self.lock().rate
    }

    /// How many distinct orders executed.
    pub fn orders_executed(&self) -> usize {
        self.lock().orders.len()
    }

    /// The rate an order executed at, if it did.
    pub fn executed_rate(&self, client_order_id: SagaId) -> Option<Rate> {
        self.lock().orders.get(&client_order_id).copied()
    }

    /// How many order calls reached the venue (executed, repeated, refused or failed).
    pub fn attempts(&self) -> u64 {
        self.lock().attempts
    }

    /// How many execution lookups reached the venue (answered or failed).
    pub fn lookups(&self) -> u64 {
        self.lock().lookups
    }

    /// The synchronous core of an order, after the simulated latency.
    fn execute(&self, order: &VenueOrder) -> Result<OrderOutcome, VenueError> {
        let mut s = self.lock();
        s.attempts += 1;
        if s.down {
            return Err(VenueError::Down);
        }
        // A repeated client order id is a lookup, not a new order: same execution, no new
        // random draw (so the walk stays the same whatever the redeliveries).
        if let Some(rate) = s.orders.get(&order.client_order_id) {
            return Ok(OrderOutcome::Executed(*rate));
        }
        if s.failure_rate > 0.0 {
            let p = s.failure_rate;
            if s.rng.gen_bool(p) {
                return Err(VenueError::Failed("simulated failure".into()));
            }
        }
        if s.volatility_bps > 0 {
            let bps = i64::from(s.volatility_bps);
            let step = s.rng.gen_range(-bps..=bps);
            // The step is bounded by MAX_VOLATILITY_BPS, so the product stays positive; if
            // rounding to the rate's scale ever reached zero, keep the previous rate.
            let next = Decimal::from(10_000 + step)
                .checked_div(Decimal::from(10_000))
                .and_then(|factor| s.rate.krw_per_usd().checked_mul(factor))
                .and_then(Rate::new);
            if let Some(next) = next {
                s.rate = next;
            }
        }
        // The market moved for this order whether or not it executes; a refused order leaves
        // no execution behind, so a later order with the same id is a new order.
        let rate = s.rate;
        if order.fill_at(rate).is_none() {
            return Ok(OrderOutcome::LimitNotMet { rate });
        }
        s.orders.insert(order.client_order_id, rate);
        Ok(OrderOutcome::Executed(rate))
    }

    /// The synchronous core of a lookup, after the simulated latency.
    fn lookup(&self, client_order_id: SagaId) -> Result<Option<Rate>, VenueError> {
        let mut s = self.lock();
        s.lookups += 1;
        if s.down {
            return Err(VenueError::Down);
        }
        Ok(s.orders.get(&client_order_id).copied())
    }

    async fn round_trip(&self) {
        let latency_ms = self.lock().latency_ms;
        // The only real delay in fx-trade: it stands for the venue's round trip. Zero
        // latency needs no timer, so the simulation can run without a tokio runtime.
        if latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(latency_ms)).await;
        }
    }
}

impl Venue for SimulatedVenue {
    fn order<'a>(
        &'a self,
        order: &'a VenueOrder,
    ) -> BoxFuture<'a, Result<OrderOutcome, VenueError>> {
        Box::pin(async move {
            self.round_trip().await;
            self.execute(order)
        })
    }

    fn execution(
        &self,
        client_order_id: SagaId,
    ) -> BoxFuture<'_, Result<Option<Rate>, VenueError>> {
        Box::pin(async move {
            self.round_trip().await;
            self.lookup(client_order_id)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    fn rate(r: i64) -> Rate {
        Rate::new(Decimal::from(r)).unwrap()
    }

    fn id(n: u128) -> SagaId {
        SagaId::from(uuid::Uuid::from_u128(n))
    }

    fn order(n: u128) -> VenueOrder {
        VenueOrder {
            client_order_id: id(n),
            user_id: UserId::parse("alice").unwrap(),
            krw_amount: Krw::parse("1500000").unwrap(),
            min_usd_amount: None,
        }
    }

    fn limit(n: u128, min: &str) -> VenueOrder {
        VenueOrder {
            min_usd_amount: Some(Usd::parse(min).unwrap()),
            ..order(n)
        }
    }

    /// The rate of an order that must execute.
    fn executed(v: &SimulatedVenue, o: &VenueOrder) -> Rate {
        match block_on(v.order(o)) {
            Ok(OrderOutcome::Executed(rate)) => rate,
            other => panic!("expected an execution, got {other:?}"),
        }
    }

    fn walking(seed: u64) -> SimulatedVenue {
        SimulatedVenue::new(&VenueConfig {
            volatility_bps: 50,
            seed,
            ..VenueConfig::default()
        })
    }

    #[test]
    fn flat_venue_fills_at_its_rate() {
        let v = SimulatedVenue::new(&VenueConfig::default());
        let rate = executed(&v, &order(1));
        assert_eq!(rate.to_string(), "1400");
        assert_eq!(v.orders_executed(), 1);
    }

    #[test]
    fn same_client_order_id_gets_the_same_execution() {
        let v = walking(7);
        let first = executed(&v, &order(1));
        let other = executed(&v, &order(2));
        let again = executed(&v, &order(1));
        assert_eq!(first, again);
        assert_ne!(first, other, "the walk moved between two distinct orders");
        assert_eq!(v.orders_executed(), 2);
        assert_eq!(v.attempts(), 3);
    }

    #[test]
    fn the_walk_is_reproducible_from_its_seed_and_stays_within_the_step() {
        let rates = |seed| {
            let v = walking(seed);
            (1..=20)
                .map(|n| executed(&v, &order(n)))
                .collect::<Vec<_>>()
        };
        assert_eq!(rates(3), rates(3));
        assert_ne!(rates(3), rates(4));
        let mut prev = Decimal::from(1400);
        for r in rates(3) {
            let step = (r.krw_per_usd() - prev).abs() / prev;
            assert!(step <= Decimal::new(50, 4), "step {step} above 50 bps");
            prev = r.krw_per_usd();
        }
    }

    #[test]
    fn tests_can_take_it_down_and_bring_it_back() {
        let v = SimulatedVenue::new(&VenueConfig::default());
        v.set_down(true);
        assert_eq!(block_on(v.order(&order(1))), Err(VenueError::Down));
        v.set_down(false);
        v.set_failure_rate(1.0);
        assert!(matches!(
            block_on(v.order(&order(1))),
            Err(VenueError::Failed(_))
        ));
        v.set_failure_rate(0.0);
        v.set_rate(Rate::new(Decimal::from(1300)).unwrap());
        assert_eq!(executed(&v, &order(1)).to_string(), "1300");
        assert_eq!(v.attempts(), 3);
    }

    #[test]
    fn a_limit_order_executes_only_when_its_minimum_is_met() {
        let v = SimulatedVenue::new(&VenueConfig::default());
        // 1,500,000 KRW at 1400 buys 1071.42 USD (rounded down to the cent).
        assert_eq!(
            block_on(v.order(&limit(1, "1071.43"))),
            Ok(OrderOutcome::LimitNotMet { rate: rate(1400) })
        );
        assert_eq!(
            v.orders_executed(),
            0,
            "a refused order leaves no execution"
        );
        assert_eq!(v.executed_rate(id(1)), None);
        // The same id is a new order once the market allows it.
        assert_eq!(executed(&v, &limit(1, "1071.42")), rate(1400));
        assert_eq!(v.executed_rate(id(1)), Some(rate(1400)));
        assert_eq!(v.attempts(), 2);
    }

    #[test]
    fn an_order_that_would_buy_nothing_never_executes_even_without_a_minimum() {
        let v = SimulatedVenue::flat(rate(1_000_000_000));
        assert_eq!(
            block_on(v.order(&order(1))),
            Ok(OrderOutcome::LimitNotMet {
                rate: rate(1_000_000_000)
            })
        );
        assert_eq!(v.orders_executed(), 0);
    }

    #[test]
    fn an_execution_once_made_is_returned_whatever_the_later_limit() {
        let v = SimulatedVenue::new(&VenueConfig::default());
        assert_eq!(executed(&v, &order(1)), rate(1400));
        v.set_rate(rate(1500));
        assert_eq!(
            block_on(v.order(&limit(1, "9999.00"))),
            Ok(OrderOutcome::Executed(rate(1400)))
        );
        assert_eq!(v.orders_executed(), 1);
    }

    #[test]
    fn a_lookup_finds_an_execution_and_never_places_one() {
        let v = SimulatedVenue::new(&VenueConfig::default());
        assert_eq!(block_on(v.execution(id(1))), Ok(None));
        assert_eq!(v.orders_executed(), 0, "a lookup placed an order");
        executed(&v, &order(1));
        v.set_rate(rate(1500));
        assert_eq!(block_on(v.execution(id(1))), Ok(Some(rate(1400))));
        // Transient order failures do not touch lookups; a venue that is down answers nothing.
        v.set_failure_rate(1.0);
        assert_eq!(block_on(v.execution(id(1))), Ok(Some(rate(1400))));
        v.set_down(true);
        assert_eq!(block_on(v.execution(id(1))), Err(VenueError::Down));
        assert_eq!((v.lookups(), v.attempts()), (4, 1));
    }

    #[test]
    fn config_refuses_a_failure_rate_that_is_not_a_probability() {
        let bad = VenueConfig {
            failure_rate: 1.5,
            ..VenueConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
