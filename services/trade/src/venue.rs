//! The market venue fx-trade trades with, and a simulated one.
//!
//! An order is a side effect outside our store, so it is made idempotent the way real venues
//! allow: every order carries a client order id derived from the saga ([`ClientOrderId::buy`],
//! [`ClientOrderId::reversal`]). If fx-trade crashes after the venue executed but before the
//! fill was durable, the redelivered event asks again with the same id and gets the same
//! execution back instead of a second order.
//!
//! Three more properties keep every execution booked: an order is a *limit* order, so the
//! venue itself refuses to execute below the request's `min_usd_amount` (fx-trade never has to
//! turn down an execution that already happened); [`Venue::execution`] looks an earlier order
//! up without placing one, so a redelivery that may no longer order (the hold runs short) can
//! still find, and book, what a lost delivery executed; and [`Venue::executions`] lists every
//! execution in the venue's own order, so reconciliation can check that each one is booked.
//!
//! The market itself (a seeded random walk, failure draws and the limit rule) is
//! [`Market`]; its executions are kept by a [`Book`]. [`SimulatedVenue`] keeps its book in
//! memory for tests and the simulation; the `fx-venue` process keeps the same market's book
//! in its own store, behind HTTP.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use events::{Krw, Rate, SagaId, Usd, UserId};
use futures::future::BoxFuture;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runtime::RuntimeError;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The id a client gives an order so that the venue recognises a repeat: text of 1 to
/// [`ClientOrderId::MAX_LEN`] characters from `[A-Za-z0-9._:-]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientOrderId(String);

impl ClientOrderId {
    /// Longest id accepted (real venues allow 32 to 64 characters).
    pub const MAX_LEN: usize = 64;

    /// The buy of a saga: the saga id itself.
    pub fn buy(saga_id: SagaId) -> ClientOrderId {
        ClientOrderId(saga_id.to_string())
    }

    /// The reversal of a saga's buy: `<saga_id>.reversal`.
    pub fn reversal(saga_id: SagaId) -> ClientOrderId {
        ClientOrderId(format!("{saga_id}.reversal"))
    }

    /// Checks an id from outside (the HTTP API).
    pub fn parse(text: &str) -> Result<ClientOrderId, String> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
        if text.is_empty() || text.len() > Self::MAX_LEN || !text.chars().all(ok_char) {
            return Err(format!(
                "client order id {text:?} must be 1 to {} characters of A-Z a-z 0-9 . _ : -",
                Self::MAX_LEN
            ));
        }
        Ok(ClientOrderId(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClientOrderId {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        ClientOrderId::parse(&text)
    }
}

impl From<ClientOrderId> for String {
    fn from(id: ClientOrderId) -> String {
        id.0
    }
}

impl fmt::Display for ClientOrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which way an order trades, with its amount and its limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "side", rename_all = "snake_case")]
pub enum OrderSide {
    /// Spend `krw_amount` KRW on USD, but only for at least `min_usd_amount` (the request's
    /// slippage guard). With or without a minimum, an order that would buy nothing (rounds to
    /// 0.00 USD) never executes.
    Buy {
        /// KRW sold.
        krw_amount: Krw,
        /// The limit: the least USD the order may execute for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_usd_amount: Option<Usd>,
    },
    /// Sell `usd_amount` USD for KRW: a reversal of a buy. Executes at the market unless
    /// `min_krw_amount` is set; one that would bring nothing (rounds to 0 KRW) never executes.
    Sell {
        /// USD sold.
        usd_amount: Usd,
        /// The limit: the least KRW the order may execute for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_krw_amount: Option<Krw>,
    },
}

impl OrderSide {
    /// The KRW and USD of an execution at `rate`, if the limit allows it there.
    pub fn fill_at(&self, rate: Rate) -> Option<(Krw, Usd)> {
        match self {
            OrderSide::Buy {
                krw_amount,
                min_usd_amount,
            } => limit_fill(rate, *krw_amount, *min_usd_amount).map(|usd| (*krw_amount, usd)),
            OrderSide::Sell {
                usd_amount,
                min_krw_amount,
            } => limit_sale(rate, *usd_amount, *min_krw_amount).map(|krw| (krw, *usd_amount)),
        }
    }

    /// `buy` or `sell`.
    pub fn side(&self) -> Side {
        match self {
            OrderSide::Buy { .. } => Side::Buy,
            OrderSide::Sell { .. } => Side::Sell,
        }
    }
}

/// `buy` (USD for KRW) or `sell` (USD back for KRW).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The house bought USD.
    Buy,
    /// The house sold USD.
    Sell,
}

impl Side {
    /// `buy` or `sell`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }
}

/// One limit order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VenueOrder {
    /// Derived from the saga, so a repeated order is recognised by the venue.
    pub client_order_id: ClientOrderId,
    /// Whose exchange this is (for the venue's own records).
    pub user_id: UserId,
    /// Which way, how much, and the limit.
    #[serde(flatten)]
    pub side: OrderSide,
}

impl VenueOrder {
    /// The buy of a saga: spend `krw_amount`, for at least `min_usd_amount`.
    pub fn buy(
        saga_id: SagaId,
        user_id: UserId,
        krw_amount: Krw,
        min_usd_amount: Option<Usd>,
    ) -> VenueOrder {
        VenueOrder {
            client_order_id: ClientOrderId::buy(saga_id),
            user_id,
            side: OrderSide::Buy {
                krw_amount,
                min_usd_amount,
            },
        }
    }

    /// The reversal of a saga's fill: sell its `usd_amount` back at the market.
    pub fn reversal(saga_id: SagaId, user_id: UserId, usd_amount: Usd) -> VenueOrder {
        VenueOrder {
            client_order_id: ClientOrderId::reversal(saga_id),
            user_id,
            side: OrderSide::Sell {
                usd_amount,
                min_krw_amount: None,
            },
        }
    }
}

/// The USD `krw` buys at `rate` (`Rate::usd_for`, rounded down to the cent) if it is more than
/// zero and at least `min`; `None` when a limit order at `rate` must not execute. The venue and
/// fx-trade's decision apply this one rule, so they cannot disagree about what a fill buys.
pub fn limit_fill(rate: Rate, krw: Krw, min: Option<Usd>) -> Option<Usd> {
    rate.usd_for(krw)
        .filter(|usd| usd.is_positive() && min.is_none_or(|m| *usd >= m))
}

/// The KRW selling `usd` brings at `rate` (`Rate::krw_for`, rounded down to the won) if it is
/// more than zero and at least `min`.
pub fn limit_sale(rate: Rate, usd: Usd, min: Option<Krw>) -> Option<Krw> {
    rate.krw_for(usd)
        .filter(|krw| krw.is_positive() && min.is_none_or(|m| *krw >= m))
}

/// An order the venue executed: what a client books.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    /// The venue's sequence number of the execution, from 1, gapless: the cursor of
    /// [`Venue::executions`].
    pub seq: u64,
    /// The order's client order id.
    pub client_order_id: ClientOrderId,
    /// Whose exchange (as the order said).
    pub user_id: UserId,
    /// `buy` or `sell`.
    pub side: Side,
    /// KRW per USD.
    pub rate: Rate,
    /// KRW paid (buy) or received (sell).
    pub krw_amount: Krw,
    /// USD received (buy) or paid (sell).
    pub usd_amount: Usd,
    /// When the venue executed it, ms since the Unix epoch (0 from a venue without a clock).
    pub executed_at_ms: u64,
}

/// What the venue did with an order it received and answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderOutcome {
    /// Executed (now, or earlier under the same client order id). For a buy the house now
    /// holds the USD: fx-trade must book it as the saga's fill.
    Executed(Execution),
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
    /// The venue cannot be reached or is in maintenance: nothing was executed by this call.
    #[error("venue is down")]
    Down,
    /// The venue answered but did not execute (a transient error on its side, not a limit).
    #[error("venue refused the order: {0}")]
    Failed(String),
    /// No answer within the deadline. The order may or may not have executed: only a later
    /// order with the same client order id, or a lookup, can tell.
    #[error("no answer from the venue within {after_ms} ms; the outcome is unknown")]
    Timeout {
        /// The deadline that passed.
        after_ms: u64,
    },
    /// The venue answered something this client does not understand (a contract breach). For
    /// an order, the outcome is unknown.
    #[error("unexpected answer from the venue: {0}")]
    Protocol(String),
}

/// A market venue. Implementations must be idempotent by `client_order_id`: once an order
/// executed, the same id always yields that execution, and never a second one.
pub trait Venue: Send + Sync {
    /// Places the limit order, or returns the execution an earlier order with the same client
    /// order id already made. [`VenueError::Down`] and [`VenueError::Failed`] mean nothing
    /// executed for this call; after [`VenueError::Timeout`] or [`VenueError::Protocol`] the
    /// outcome is unknown. fx-trade treats every error alike: it asks again under the same
    /// client order id, or looks the order up, before it says anything final.
    fn order<'a>(
        &'a self,
        order: &'a VenueOrder,
    ) -> BoxFuture<'a, Result<OrderOutcome, VenueError>>;

    /// The execution of an earlier order with this client order id, or `None` if none
    /// executed. Places nothing, so fx-trade may ask when it is too late to order.
    fn execution<'a>(
        &'a self,
        client_order_id: &'a ClientOrderId,
    ) -> BoxFuture<'a, Result<Option<Execution>, VenueError>>;

    /// Up to `limit` executions with a sequence number above `after_seq`, in sequence order
    /// (reconciliation pages through them all).
    fn executions(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Execution>, VenueError>>;

    /// When this venue's memory of executions begins (ms since the Unix epoch, fx-trade's
    /// clock), if it does not keep them all. A real venue, and fx-venue with its own store,
    /// keep every execution: `None`. fx-trade's embedded venue lives in fx-trade's memory and
    /// forgets its executions when fx-trade restarts, so reconciliation cannot confirm a fill
    /// or reversal booked before this and counts it apart instead of calling it unexecuted.
    fn history_from_ms(&self) -> Option<u64> {
        None
    }
}

/// Settings of the simulated market (`FX_VENUE_*`), in fx-trade's embedded venue and fx-venue.
#[derive(Clone, Debug, PartialEq)]
pub struct VenueConfig {
    /// `FX_VENUE_RATE` (default 1400): the starting rate, KRW per USD.
    pub rate: Rate,
    /// `FX_VENUE_VOLATILITY_BPS` (default 0 = flat): each new order moves the rate by a uniform
    /// random step of at most this many basis points, up or down.
    pub volatility_bps: u32,
    /// `FX_VENUE_SEED` (default 0): seed of the random walk and of failure draws.
    pub seed: u64,
    /// `FX_VENUE_LATENCY_MS` (default 0): simulated round trip of every call.
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

    /// Reads `FX_VENUE_RATE`, `_VOLATILITY_BPS`, `_SEED`, `_LATENCY_MS` and `_FAILURE_RATE`.
    pub fn from_env() -> runtime::Result<VenueConfig> {
        let rate: Decimal = runtime::env_parse("FX_VENUE_RATE", Decimal::from(1400))?;
        let rate = Rate::new(rate).ok_or_else(|| RuntimeError::Config {
            var: "FX_VENUE_RATE",
            message: format!("{rate} is not a positive rate (KRW per USD, e.g. 1400)"),
        })?;
        let config = VenueConfig {
            rate,
            volatility_bps: runtime::env_parse("FX_VENUE_VOLATILITY_BPS", 0)?,
            seed: runtime::env_parse("FX_VENUE_SEED", 0)?,
            latency_ms: runtime::env_parse("FX_VENUE_LATENCY_MS", 0)?,
            failure_rate: runtime::env_parse("FX_VENUE_FAILURE_RATE", 0.0)?,
        };
        config.validate()?;
        Ok(config)
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

/// Where a venue keeps its executions: in memory ([`SimulatedVenue`]) or in a store (fx-venue).
pub trait Book {
    /// Why the book could not be read or written.
    type Error;
    /// The execution of an earlier order with this id.
    fn get(&self, client_order_id: &ClientOrderId) -> Result<Option<Execution>, Self::Error>;
    /// The sequence number of the last execution (0 when there is none).
    fn last_seq(&self) -> Result<u64, Self::Error>;
    /// Keeps a new execution (its `seq` is `last_seq() + 1`).
    fn insert(&mut self, execution: &Execution) -> Result<(), Self::Error>;
}

/// The simulated market: a seeded random walk, failure draws and the limit rule. Deterministic
/// in its seed and the order of the new orders it sees.
pub struct Market {
    rate: Rate,
    volatility_bps: u32,
    failure_rate: f64,
    rng: ChaCha8Rng,
}

impl Market {
    /// A market as configured (validate the config first).
    pub fn new(config: &VenueConfig) -> Market {
        Market {
            rate: config.rate,
            volatility_bps: config.volatility_bps,
            failure_rate: config.failure_rate,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
        }
    }

    /// The current rate (what the next new order starts its step from).
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Moves the market to `rate`; the walk continues from there.
    pub fn set_rate(&mut self, rate: Rate) {
        self.rate = rate;
    }

    /// Changes the probability that a new order fails. Panics outside 0..=1.
    pub fn set_failure_rate(&mut self, failure_rate: f64) {
        assert!(
            (0.0..=1.0).contains(&failure_rate),
            "failure rate is a probability"
        );
        self.failure_rate = failure_rate;
    }

    /// Executes `order` against `book`: a repeated client order id gets its execution back
    /// (no new draw, so the walk stays the same whatever the retries); a new order may fail
    /// (a draw), moves the market one step, and executes if its limit allows at the new rate.
    pub fn execute<B: Book>(
        &mut self,
        book: &mut B,
        order: &VenueOrder,
        now_ms: u64,
    ) -> Result<Result<OrderOutcome, VenueError>, B::Error> {
        if let Some(done) = book.get(&order.client_order_id)? {
            return Ok(Ok(OrderOutcome::Executed(done)));
        }
        if self.failure_rate > 0.0 && self.rng.gen_bool(self.failure_rate) {
            return Ok(Err(VenueError::Failed("simulated failure".into())));
        }
        if self.volatility_bps > 0 {
            let bps = i64::from(self.volatility_bps);
            let step = self.rng.gen_range(-bps..=bps);
            // The step is bounded by MAX_VOLATILITY_BPS, so the product stays positive; if
            // rounding to the rate's scale ever reached zero, keep the previous rate.
            let next = Decimal::from(10_000 + step)
                .checked_div(Decimal::from(10_000))
                .and_then(|factor| self.rate.krw_per_usd().checked_mul(factor))
                .and_then(Rate::new);
            if let Some(next) = next {
                self.rate = next;
            }
        }
        // The market moved for this order whether or not it executes; a refused order leaves
        // no execution behind, so a later order with the same id is a new order.
        let rate = self.rate;
        let Some((krw_amount, usd_amount)) = order.side.fill_at(rate) else {
            return Ok(Ok(OrderOutcome::LimitNotMet { rate }));
        };
        let execution = Execution {
            seq: book.last_seq()? + 1,
            client_order_id: order.client_order_id.clone(),
            user_id: order.user_id.clone(),
            side: order.side.side(),
            rate,
            krw_amount,
            usd_amount,
            executed_at_ms: now_ms,
        };
        book.insert(&execution)?;
        Ok(Ok(OrderOutcome::Executed(execution)))
    }
}

/// A [`Book`] in memory, compact: the embedded venue of a long run holds one row per execution
/// for the life of the process (about 100 bytes each, against 280 for whole [`Execution`]s
/// keyed by their text ids: fx-trade's resident memory grew by that much per saga). The ids
/// fx-trade derives from a saga are kept as the saga's 16 bytes; any other id as text.
#[derive(Default)]
pub struct MemoryBook {
    /// Buy and sale of each saga-derived id, as row indices.
    by_saga: HashMap<SagaId, [Option<u32>; 2]>,
    /// Rows of ids not derived from a saga (orders placed by hand in tests).
    by_text: HashMap<ClientOrderId, u32>,
    /// Executions in sequence order (row `i` has sequence number `i + 1`).
    rows: Vec<Row>,
    /// Each user once; rows refer to them by index.
    users: Vec<UserId>,
    user_index: HashMap<UserId, u32>,
    texts: Vec<ClientOrderId>,
}

/// One execution of a [`MemoryBook`].
struct Row {
    id: RowId,
    user: u32,
    side: Side,
    rate: Rate,
    krw_amount: Krw,
    usd_amount: Usd,
    executed_at_ms: u64,
}

enum RowId {
    Saga(SagaId),
    Text(u32),
}

impl MemoryBook {
    /// The saga an id is derived from, when it is exactly the buy's or the reversal's id.
    fn saga_of(id: &ClientOrderId, side: Side) -> Option<SagaId> {
        let text = id.as_str();
        let saga = match side {
            Side::Buy => text,
            Side::Sell => text.strip_suffix(".reversal")?,
        };
        SagaId::parse(saga).ok().filter(|s| match side {
            Side::Buy => ClientOrderId::buy(*s) == *id,
            Side::Sell => ClientOrderId::reversal(*s) == *id,
        })
    }

    fn slot(side: Side) -> usize {
        match side {
            Side::Buy => 0,
            Side::Sell => 1,
        }
    }

    fn row_of(&self, id: &ClientOrderId) -> Option<usize> {
        for side in [Side::Buy, Side::Sell] {
            let found =
                Self::saga_of(id, side).and_then(|saga| self.by_saga.get(&saga)?[Self::slot(side)]);
            if let Some(i) = found {
                return Some(i as usize);
            }
        }
        // A saga-shaped id on the other side (a sale under a buy's id) is kept as text.
        self.by_text.get(id).map(|&i| i as usize)
    }

    fn execution(&self, i: usize) -> Execution {
        let r = &self.rows[i];
        Execution {
            seq: i as u64 + 1,
            client_order_id: match r.id {
                RowId::Saga(saga) => match r.side {
                    Side::Buy => ClientOrderId::buy(saga),
                    Side::Sell => ClientOrderId::reversal(saga),
                },
                RowId::Text(t) => self.texts[t as usize].clone(),
            },
            user_id: self.users[r.user as usize].clone(),
            side: r.side,
            rate: r.rate,
            krw_amount: r.krw_amount,
            usd_amount: r.usd_amount,
            executed_at_ms: r.executed_at_ms,
        }
    }

    fn since(&self, after_seq: u64, limit: usize) -> Vec<Execution> {
        let from = usize::try_from(after_seq).unwrap_or(usize::MAX);
        (from..self.rows.len().min(from.saturating_add(limit)))
            .map(|i| self.execution(i))
            .collect()
    }

    fn count(&self, side: Side) -> usize {
        self.rows.iter().filter(|r| r.side == side).count()
    }
}

impl Book for MemoryBook {
    type Error = std::convert::Infallible;

    fn get(&self, id: &ClientOrderId) -> Result<Option<Execution>, Self::Error> {
        Ok(self.row_of(id).map(|i| self.execution(i)))
    }

    fn last_seq(&self) -> Result<u64, Self::Error> {
        Ok(self.rows.len() as u64)
    }

    fn insert(&mut self, e: &Execution) -> Result<(), Self::Error> {
        let row = u32::try_from(self.rows.len()).expect("fewer than 4 billion executions");
        let id = match Self::saga_of(&e.client_order_id, e.side) {
            Some(saga) => {
                self.by_saga.entry(saga).or_default()[Self::slot(e.side)] = Some(row);
                RowId::Saga(saga)
            }
            None => {
                self.by_text.insert(e.client_order_id.clone(), row);
                self.texts.push(e.client_order_id.clone());
                RowId::Text(self.texts.len() as u32 - 1)
            }
        };
        let user = match self.user_index.get(&e.user_id) {
            Some(&u) => u,
            None => {
                self.users.push(e.user_id.clone());
                let u = self.users.len() as u32 - 1;
                self.user_index.insert(e.user_id.clone(), u);
                u
            }
        };
        self.rows.push(Row {
            id,
            user,
            side: e.side,
            rate: e.rate,
            krw_amount: e.krw_amount,
            usd_amount: e.usd_amount,
            executed_at_ms: e.executed_at_ms,
        });
        Ok(())
    }
}

/// A deterministic simulated venue in memory: a [`Market`], a [`MemoryBook`], optional latency
/// and failures. Tests and the simulation steer it at run time.
pub struct SimulatedVenue {
    state: Mutex<SimState>,
    /// See [`Venue::history_from_ms`]; `None` unless [`SimulatedVenue::remembering_from`].
    history_from_ms: Option<u64>,
}

struct SimState {
    market: Market,
    book: MemoryBook,
    latency_ms: u64,
    down: bool,
    /// Orders execute, but the answer never arrives in time (a hung call, seen as a timeout).
    answers_late: bool,
    /// Every order call that reached the venue, executed or not (for breaker tests).
    attempts: u64,
    /// Every execution lookup that reached the venue.
    lookups: u64,
    /// Calls answered after the deadline (`answers_late`).
    late_answers: u64,
    /// Orders of this user never answer (a hung connection), until it is cleared.
    hangs_for: Option<UserId>,
    /// Order calls hanging right now.
    hung: usize,
    /// Order calls that ever hung.
    hung_ever: u64,
}

/// Counts a hung call while it waits; dropped when the caller gives up on it.
struct HungCall<'a>(&'a SimulatedVenue);

impl Drop for HungCall<'_> {
    fn drop(&mut self) {
        self.0.lock().hung -= 1;
    }
}

impl SimulatedVenue {
    /// A venue as configured. Panics on an invalid config; call [`VenueConfig::validate`] first
    /// for values from outside.
    pub fn new(config: &VenueConfig) -> SimulatedVenue {
        config.validate().expect("valid venue config");
        SimulatedVenue {
            state: Mutex::new(SimState {
                market: Market::new(config),
                book: MemoryBook::default(),
                latency_ms: config.latency_ms,
                down: false,
                answers_late: false,
                attempts: 0,
                lookups: 0,
                late_answers: 0,
                hangs_for: None,
                hung: 0,
                hung_ever: 0,
            }),
            history_from_ms: None,
        }
    }

    /// This venue as fx-trade embeds it: its executions begin at `now_ms`, when the process
    /// started (earlier ones were forgotten with the process that made them; see
    /// [`Venue::history_from_ms`]).
    pub fn remembering_from(mut self, now_ms: u64) -> SimulatedVenue {
        self.history_from_ms = Some(now_ms);
        self
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

    /// Takes the venue down (every call fails with [`VenueError::Down`]) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Makes every call do its work at the venue but answer after the caller's deadline
    /// ([`VenueError::Timeout`]): an order executes, and the caller does not learn it.
    pub fn set_answers_late(&self, late: bool) {
        self.lock().answers_late = late;
    }

    /// Changes the probability that a new order fails. Panics outside 0..=1.
    pub fn set_failure_rate(&self, failure_rate: f64) {
        self.lock().market.set_failure_rate(failure_rate);
    }

    /// Makes every order of `user` hang, unanswered and unexecuted, until the caller's deadline
    /// drops it (a hung connection); `None` answers everyone again. Needs a tokio runtime.
    pub fn set_hangs_for(&self, user: Option<UserId>) {
        self.lock().hangs_for = user;
    }

    /// Order calls hanging right now, and calls that ever hung (see
    /// [`SimulatedVenue::set_hangs_for`]).
    pub fn hung_calls(&self) -> (usize, u64) {
        let s = self.lock();
        (s.hung, s.hung_ever)
    }

    /// Moves the market to `rate` (the walk continues from there).
    pub fn set_rate(&self, rate: Rate) {
        self.lock().market.set_rate(rate);
    }

    /// Changes the simulated latency of later calls.
    pub fn set_latency_ms(&self, latency_ms: u64) {
        self.lock().latency_ms = latency_ms;
    }

    /// The current market rate (what the next new order would start its step from).
    pub fn rate(&self) -> Rate {
        self.lock().market.rate()
    }

    /// How many distinct buy orders executed.
    pub fn orders_executed(&self) -> usize {
        self.count(Side::Buy)
    }

    /// How many distinct reversals (sell orders) executed.
    pub fn reversals_executed(&self) -> usize {
        self.count(Side::Sell)
    }

    fn count(&self, side: Side) -> usize {
        self.lock().book.count(side)
    }

    /// The rate a saga's buy executed at, if it did.
    pub fn executed_rate(&self, saga_id: SagaId) -> Option<Rate> {
        self.executed(&ClientOrderId::buy(saga_id)).map(|e| e.rate)
    }

    /// The execution of an order, if it executed.
    pub fn executed(&self, client_order_id: &ClientOrderId) -> Option<Execution> {
        let Ok(found) = self.lock().book.get(client_order_id);
        found
    }

    /// Every execution, in sequence order.
    pub fn all_executions(&self) -> Vec<Execution> {
        let s = self.lock();
        s.book.since(0, usize::MAX)
    }

    /// How many order calls reached the venue (executed, repeated, refused or failed).
    pub fn attempts(&self) -> u64 {
        self.lock().attempts
    }

    /// How many calls answered after the deadline (see [`SimulatedVenue::set_answers_late`]).
    pub fn late_answers(&self) -> u64 {
        self.lock().late_answers
    }

    /// How many execution lookups reached the venue (answered or failed).
    pub fn lookups(&self) -> u64 {
        self.lock().lookups
    }

    /// The synchronous core of an order, after the simulated latency.
    fn place(&self, order: &VenueOrder) -> Result<OrderOutcome, VenueError> {
        let mut s = self.lock();
        s.attempts += 1;
        if s.down {
            return Err(VenueError::Down);
        }
        let SimState { market, book, .. } = &mut *s;
        let Ok(outcome) = market.execute(book, order, 0);
        if s.answers_late {
            s.late_answers += 1;
            return Err(VenueError::Timeout { after_ms: 0 });
        }
        outcome
    }

    /// The synchronous core of a lookup, after the simulated latency.
    fn lookup(&self, client_order_id: &ClientOrderId) -> Result<Option<Execution>, VenueError> {
        let mut s = self.lock();
        s.lookups += 1;
        if s.down {
            return Err(VenueError::Down);
        }
        if s.answers_late {
            s.late_answers += 1;
            return Err(VenueError::Timeout { after_ms: 0 });
        }
        let Ok(found) = s.book.get(client_order_id);
        Ok(found)
    }

    async fn round_trip(&self) {
        let latency_ms = self.lock().latency_ms;
        // The only real delay in fx-trade's embedded venue: it stands for the venue's round
        // trip. Zero latency needs no timer, so the simulation can run without a tokio runtime.
        if latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(latency_ms)).await;
        }
    }
}

impl Venue for SimulatedVenue {
    fn history_from_ms(&self) -> Option<u64> {
        self.history_from_ms
    }

    fn order<'a>(
        &'a self,
        order: &'a VenueOrder,
    ) -> BoxFuture<'a, Result<OrderOutcome, VenueError>> {
        Box::pin(async move {
            self.round_trip().await;
            let hangs = {
                let mut s = self.lock();
                let hangs = s.hangs_for.as_ref() == Some(&order.user_id);
                s.hung += usize::from(hangs);
                s.hung_ever += u64::from(hangs);
                hangs
            };
            if hangs {
                let _counted = HungCall(self);
                std::future::pending::<()>().await;
            }
            self.place(order)
        })
    }

    fn execution<'a>(
        &'a self,
        client_order_id: &'a ClientOrderId,
    ) -> BoxFuture<'a, Result<Option<Execution>, VenueError>> {
        Box::pin(async move {
            self.round_trip().await;
            self.lookup(client_order_id)
        })
    }

    fn executions(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Execution>, VenueError>> {
        Box::pin(async move {
            self.round_trip().await;
            let s = self.lock();
            if s.down {
                return Err(VenueError::Down);
            }
            Ok(s.book.since(after_seq, limit))
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

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    fn order(n: u128) -> VenueOrder {
        VenueOrder::buy(id(n), alice(), Krw::parse("1500000").unwrap(), None)
    }

    fn limit(n: u128, min: &str) -> VenueOrder {
        VenueOrder::buy(
            id(n),
            alice(),
            Krw::parse("1500000").unwrap(),
            Some(Usd::parse(min).unwrap()),
        )
    }

    fn lookup(v: &SimulatedVenue, n: u128) -> Result<Option<Rate>, VenueError> {
        block_on(v.execution(&ClientOrderId::buy(id(n)))).map(|e| e.map(|e| e.rate))
    }

    /// The rate of an order that must execute.
    fn executed(v: &SimulatedVenue, o: &VenueOrder) -> Rate {
        match block_on(v.order(o)) {
            Ok(OrderOutcome::Executed(e)) => e.rate,
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
        assert!(matches!(
            block_on(v.order(&limit(1, "9999.00"))),
            Ok(OrderOutcome::Executed(e)) if e.rate == rate(1400) && e.seq == 1
        ));
        assert_eq!(v.orders_executed(), 1);
    }

    #[test]
    fn a_lookup_finds_an_execution_and_never_places_one() {
        let v = SimulatedVenue::new(&VenueConfig::default());
        assert_eq!(lookup(&v, 1), Ok(None));
        assert_eq!(v.orders_executed(), 0, "a lookup placed an order");
        executed(&v, &order(1));
        v.set_rate(rate(1500));
        assert_eq!(lookup(&v, 1), Ok(Some(rate(1400))));
        // Transient order failures do not touch lookups; a venue that is down answers nothing.
        v.set_failure_rate(1.0);
        assert_eq!(lookup(&v, 1), Ok(Some(rate(1400))));
        v.set_down(true);
        assert_eq!(lookup(&v, 1), Err(VenueError::Down));
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

    #[test]
    fn a_reversal_sells_the_usd_back_under_its_own_id_and_both_are_listed_in_order() {
        let v = SimulatedVenue::new(&VenueConfig::default());
        executed(&v, &order(1));
        v.set_rate(rate(1450));
        let usd = Usd::parse("1071.42").unwrap();
        let back = match block_on(v.order(&VenueOrder::reversal(id(1), alice(), usd))) {
            Ok(OrderOutcome::Executed(e)) => e,
            other => panic!("expected the reversal to execute, got {other:?}"),
        };
        // 1071.42 USD at 1450 = 1,553,559 KRW: the house gained 53,559 KRW on the move.
        assert_eq!(back.krw_amount.to_string(), "1553559");
        assert_eq!((back.side, back.seq), (Side::Sell, 2));
        assert_eq!(back.client_order_id.as_str(), format!("{}.reversal", id(1)));
        // Repeating the reversal gets the same execution, however the market moved since.
        v.set_rate(rate(1300));
        assert!(matches!(
            block_on(v.order(&VenueOrder::reversal(id(1), alice(), usd))),
            Ok(OrderOutcome::Executed(e)) if e == back
        ));
        assert_eq!((v.orders_executed(), v.reversals_executed()), (1, 1));
        let all = block_on(v.executions(0, 10)).unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(block_on(v.executions(1, 10)).unwrap(), [back]);
        assert!(block_on(v.executions(2, 10)).unwrap().is_empty());
    }

    #[test]
    fn a_late_answer_leaves_the_execution_behind_for_a_lookup() {
        let v = SimulatedVenue::new(&VenueConfig::default());
        v.set_answers_late(true);
        assert!(matches!(
            block_on(v.order(&order(1))),
            Err(VenueError::Timeout { .. })
        ));
        v.set_answers_late(false);
        assert_eq!(lookup(&v, 1), Ok(Some(rate(1400))));
    }

    #[test]
    fn client_order_ids_from_outside_are_checked() {
        assert!(ClientOrderId::parse("abc-1.reversal").is_ok());
        assert!(ClientOrderId::parse("").is_err());
        assert!(ClientOrderId::parse("has space").is_err());
        assert!(ClientOrderId::parse(&"x".repeat(65)).is_err());
        let json = serde_json::to_string(&order(1)).unwrap();
        assert!(json.contains(r#""side":"buy""#), "{json}");
        let back: VenueOrder = serde_json::from_str(&json).unwrap();
        assert_eq!(back, order(1));
    }

    #[test]
    fn the_memory_book_gives_back_every_execution_whole_whatever_its_id() {
        let v = SimulatedVenue::new(&VenueConfig::default());
        let manual = VenueOrder {
            client_order_id: ClientOrderId::parse("manual-1").unwrap(),
            user_id: UserId::parse("bob").unwrap(),
            side: OrderSide::Buy {
                krw_amount: Krw::parse("14000").unwrap(),
                min_usd_amount: None,
            },
        };
        // Not a saga's id, though it parses like one once ".reversal" is cut: kept as text.
        let odd = VenueOrder {
            client_order_id: ClientOrderId::parse(&format!("{}.reversal", id(9))).unwrap(),
            ..manual.clone()
        };
        let placed: Vec<Execution> = [
            order(1),
            manual,
            VenueOrder::reversal(id(1), alice(), Usd::parse("1071.42").unwrap()),
            odd,
        ]
        .iter()
        .map(|o| match block_on(v.order(o)) {
            Ok(OrderOutcome::Executed(e)) => e,
            other => panic!("expected an execution, got {other:?}"),
        })
        .collect();
        assert_eq!(block_on(v.executions(0, 10)).unwrap(), placed);
        for e in &placed {
            assert_eq!(v.executed(&e.client_order_id).as_ref(), Some(e));
        }
        assert_eq!(placed[1].user_id.as_str(), "bob");
        assert_eq!((v.orders_executed(), v.reversals_executed()), (3, 1));
        assert_eq!(v.executed(&ClientOrderId::buy(id(2))), None);
    }
}
