//! The venue itself: fx-trade's [`Market`] over the [`SledBook`], with group commit.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use events::Rate;
use rust_decimal::prelude::ToPrimitive;
use trade::{ClientOrderId, Execution, Market, OrderOutcome, VenueConfig, VenueOrder};

use crate::book::{BookReader, SledBook};
use crate::commit::GroupCommit;
use crate::error::{Result, VenueServerError};

/// Most executions one page of [`FxVenue::executions`] returns.
pub const MAX_PAGE: usize = 5_000;

/// sled's cache for the order book: the working set is the recent executions.
const CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// What became of an order, once the answer may be given (an execution is durable by then).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placed {
    /// A new execution.
    Executed(Execution),
    /// An earlier order with the same client order id executed: its execution, unchanged.
    Repeated(Execution),
    /// The limit was not met at `rate`; nothing executed.
    LimitNotMet(Rate),
    /// The simulated matching engine refused the order; nothing executed.
    Failed(String),
}

impl Placed {
    /// The `outcome` label of `fx_venue_orders_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Placed::Executed(_) => "executed",
            Placed::Repeated(_) => "repeated",
            Placed::LimitNotMet(_) => "limit_not_met",
            Placed::Failed(_) => "failed",
        }
    }
}

struct Exchange {
    market: Market,
    book: SledBook,
}

/// A liquidity provider: the simulated market, its order book in sled, and group commit.
pub struct FxVenue {
    exchange: Mutex<Exchange>,
    reader: BookReader,
    commit: GroupCommit,
    latency_ms: u64,
    dir: PathBuf,
}

impl FxVenue {
    /// Opens (or creates) the order book under `data_dir` and resumes the market.
    ///
    /// A restarted venue continues its walk from the rate of its last execution (the market's
    /// rate right after it), with the random generator seeded by `config.seed XOR last_seq`:
    /// the same book and settings always resume the same way, and a walk resumed after N
    /// executions does not replay the steps of the first run.
    pub fn open(data_dir: &Path, config: &VenueConfig) -> Result<FxVenue> {
        config.validate()?;
        // The recorder must exist before the first gauge is set, or that value is lost.
        runtime::telemetry::prometheus();
        let path = data_dir.join("sled");
        let sled_config = sled::Config::new()
            // Durability comes from the group commit's flushes, each followed by fdatasync;
            // sled's periodic flusher stays on because it also reclaims log segments.
            .flush_every_ms(Some(1000))
            .cache_capacity(CACHE_BYTES);
        let db = runtime::durable::open(sled_config, &path).map_err(|source| {
            VenueServerError::Open {
                dir: path.display().to_string(),
                source,
            }
        })?;
        let book = SledBook::open(&db)?;
        let reader = book.reader();
        let last = reader.last()?;
        let last_seq = last.as_ref().map_or(0, |e| e.seq);
        let resumed = VenueConfig {
            rate: last.as_ref().map_or(config.rate, |e| e.rate),
            seed: config.seed ^ last_seq,
            ..config.clone()
        };
        let market = Market::new(&resumed);
        let commit = GroupCommit::start(db, &path, last_seq)?;
        tracing::info!(dir = %data_dir.display(), last_seq, rate = %market.rate(), "order book open");
        let venue = FxVenue {
            exchange: Mutex::new(Exchange { market, book }),
            reader,
            commit,
            latency_ms: config.latency_ms,
            dir: data_dir.to_path_buf(),
        };
        venue.report(venue.rate(), last_seq);
        Ok(venue)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `FX_VENUE_LATENCY_MS`: how long every answer of the API is held back.
    pub fn latency_ms(&self) -> u64 {
        self.latency_ms
    }

    /// The market's current rate.
    pub fn rate(&self) -> Rate {
        self.lock().market.rate()
    }

    /// The highest sequence number in the book (durable or about to be).
    pub fn last_seq(&self) -> u64 {
        self.commit.last_written()
    }

    /// How many group-commit flushes ran since the venue opened.
    pub fn flushes(&self) -> u64 {
        self.commit.flushes()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Exchange> {
        // Market and book change in single steps under this lock; a panic elsewhere leaves
        // them consistent, so a poisoned lock is still good.
        self.exchange.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Places `order` (or finds the execution of an earlier one with its client order id) and
    /// returns once the answer is safe to give: an execution only once it is durable.
    pub async fn place(&self, order: &VenueOrder) -> Result<Placed> {
        let placed = {
            let mut exchange = self.lock();
            let Exchange { market, book } = &mut *exchange;
            let before = self.commit.last_written();
            let outcome = market.execute(book, order, now_ms())?;
            let placed = match outcome {
                Ok(OrderOutcome::Executed(e)) if e.seq > before => {
                    self.commit.written(e.seq);
                    Placed::Executed(e)
                }
                Ok(OrderOutcome::Executed(e)) => Placed::Repeated(e),
                Ok(OrderOutcome::LimitNotMet { rate }) => Placed::LimitNotMet(rate),
                Err(e) => Placed::Failed(e.to_string()),
            };
            self.report(market.rate(), self.commit.last_written());
            placed
        };
        metrics::counter!(
            "fx_venue_orders_total",
            "side" => order.side.side().as_str(),
            "outcome" => placed.outcome()
        )
        .increment(1);
        // A repeat waits too: the first order's answer may still be waiting for its flush.
        if let Placed::Executed(e) | Placed::Repeated(e) = &placed {
            self.commit.durable(e.seq).await?;
        }
        Ok(placed)
    }

    /// The execution of the order with this client order id, once it is durable.
    pub async fn lookup(&self, id: &ClientOrderId) -> Result<Option<Execution>> {
        let found = self.reader.get(id)?;
        if let Some(e) = &found {
            self.commit.durable(e.seq).await?;
        }
        Ok(found)
    }

    /// Up to `limit` (at most [`MAX_PAGE`]) executions after `after`, in sequence order, and
    /// the last sequence number: every execution listed, and every one up to that number, is
    /// durable.
    pub async fn executions(&self, after: u64, limit: usize) -> Result<(Vec<Execution>, u64)> {
        let last_seq = self.commit.last_written();
        self.commit.durable(last_seq).await?;
        let page = self.reader.since(after, last_seq, limit.min(MAX_PAGE))?;
        Ok((page, last_seq))
    }

    /// Stops the flush thread after a last flush (also done on drop).
    pub fn close(&self) {
        self.commit.stop();
    }

    fn report(&self, rate: Rate, last_seq: u64) {
        metrics::gauge!("fx_venue_executions").set(last_seq as f64);
        if let Some(rate) = rate.krw_per_usd().to_f64() {
            metrics::gauge!("fx_venue_rate_krw_per_usd").set(rate);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
