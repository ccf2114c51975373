//! The market venue fx-trade buys USD from, and a simulated one.
//!
//! An order is a side effect outside our store, so it is made idempotent the way real venues
//! allow: the saga id is the client order id. If fx-trade crashes after the venue executed but
//! before the fill was durable, the redelivered krw.held asks again with the same id and gets
//! the same execution back instead of a second order.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use events::{Krw, Rate, SagaId, UserId};
use futures::future::BoxFuture;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runtime::RuntimeError;
use rust_decimal::Decimal;

/// One market order: sell `krw_amount` KRW for USD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VenueOrder {
    /// The client order id: the saga id, so a repeated order is recognised by the venue.
    pub client_order_id: SagaId,
    /// Whose exchange this is (for the venue's own records).
    pub user_id: UserId,
    /// KRW sold.
    pub krw_amount: Krw,
}

/// Why the venue did not execute an order. Every variant counts as a failure for the breaker.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VenueError {
    /// The venue cannot be reached or is in maintenance.
    #[error("venue is down")]
    Down,
    /// The venue answered but did not execute (a transient error on its side).
    #[error("venue refused the order: {0}")]
    Failed(String),
}

/// A market venue. Implementations must be idempotent by `client_order_id`: the same id always
/// yields the same execution.
pub trait Venue: Send + Sync {
    /// Places (or looks up) the order and returns the executed rate, KRW per USD.
    fn order<'a>(&'a self, order: &'a VenueOrder) -> BoxFuture<'a, Result<Rate, VenueError>>;
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
    /// `FX_VENUE_FAILURE_RATE` (0..=1, default 0): probability that a new order fails.
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
    /// Every call that reached the venue, executed or not (for breaker tests).
    attempts: u64,
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

    /// How many order calls reached the venue (executed, repeated or failed).
    pub fn attempts(&self) -> u64 {
        self.lock().attempts
    }

    /// The synchronous core of an order, after the simulated latency.
    fn execute(&self, order: &VenueOrder) -> Result<Rate, VenueError> {
        let mut s = self.lock();
        s.attempts += 1;
        if s.down {
            return Err(VenueError::Down);
        }
        // A repeated client order id is a lookup, not a new order: same execution, no new
        // random draw (so the walk stays the same whatever the redeliveries).
        if let Some(rate) = s.orders.get(&order.client_order_id) {
            return Ok(*rate);
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
        let rate = s.rate;
        s.orders.insert(order.client_order_id, rate);
        Ok(rate)
    }
}

impl Venue for SimulatedVenue {
    fn order<'a>(&'a self, order: &'a VenueOrder) -> BoxFuture<'a, Result<Rate, VenueError>> {
        Box::pin(async move {
            let latency_ms = self.lock().latency_ms;
            // The only real delay in fx-trade: it stands for the venue's round trip. Zero
            // latency needs no timer, so the simulation can run without a tokio runtime.
            if latency_ms > 0 {
                tokio::time::sleep(Duration::from_millis(latency_ms)).await;
            }
            self.execute(order)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    fn order(n: u128) -> VenueOrder {
        VenueOrder {
            client_order_id: SagaId::from(uuid::Uuid::from_u128(n)),
            user_id: UserId::parse("alice").unwrap(),
            krw_amount: Krw::parse("1500000").unwrap(),
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
        let rate = block_on(v.order(&order(1))).unwrap();
        assert_eq!(rate.to_string(), "1400");
        assert_eq!(v.orders_executed(), 1);
    }

    #[test]
    fn same_client_order_id_gets_the_same_execution() {
        let v = walking(7);
        let first = block_on(v.order(&order(1))).unwrap();
        let other = block_on(v.order(&order(2))).unwrap();
        let again = block_on(v.order(&order(1))).unwrap();
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
                .map(|n| block_on(v.order(&order(n))).unwrap())
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
        assert_eq!(block_on(v.order(&order(1))).unwrap().to_string(), "1300");
        assert_eq!(v.attempts(), 3);
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
