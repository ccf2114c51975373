//! Reconciliation: fx-trade's books against the venue's own list of executions.
//!
//! The venue is the other side of every fill and reversal, and the one place where money moved
//! that no store of ours controls. [`reconcile`] pages through [`Venue::executions`] and checks,
//! for the users this instance owns:
//!
//! - every execution the venue reports is booked exactly once: a buy as its saga's fill, a sale
//!   as its saga's reversal, with the same rate and amounts;
//! - every fill and reversal fx-trade booked has its execution at the venue;
//! - the sums agree: USD bought and sold, and the FX gain or loss of the reversals.

use std::collections::HashMap;

use events::{Partitioning, SagaId};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::decide::{order_key, Fill, OrderRecord, OrderState, Reversal, ORDER_PREFIX};
use crate::venue::{Execution, Side, Venue, VenueError};

/// Executions asked for per page.
const PAGE: usize = 1_000;
/// Most failures listed; the counts stay exact beyond it.
const MAX_FAILURES: usize = 100;

/// The venue part of fx-trade's audit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VenueReconciliation {
    /// True when `failures` is empty.
    pub ok: bool,
    /// Executions the venue reported for this instance's users.
    pub executions: usize,
    /// Of them, buys (fills).
    pub buys: usize,
    /// Of them, sales (reversals).
    pub sells: usize,
    /// USD the venue sold the house, and the fills booked for it.
    pub bought_usd: Decimal,
    /// USD the house sold back at the venue, and the reversals booked for it.
    pub sold_usd: Decimal,
    /// KRW the sales brought less what their fills cost: the house's FX gain or loss as the
    /// venue's executions say it.
    pub pnl_krw: Decimal,
    /// The venue's last execution sequence number, as far as this audit read.
    pub last_seq: u64,
    /// Disagreements, one sentence each (at most 100; `failure_count` counts them all).
    pub failures: Vec<String>,
    /// How many disagreements there are.
    pub failure_count: usize,
    /// Fills and reversals booked before the venue's memory begins, which it cannot confirm
    /// (fx-trade's embedded venue forgets its executions when fx-trade restarts; see
    /// `Venue::history_from_ms`). While there are any, the books' P&L is not compared with
    /// the venue's.
    pub before_history: usize,
}

impl VenueReconciliation {
    fn fail(&mut self, sentence: String) {
        self.failure_count += 1;
        if self.failures.len() < MAX_FAILURES {
            self.failures.push(sentence);
        }
    }
}

/// Why reconciliation could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The venue did not answer.
    #[error("the venue did not answer its list of executions: {0}")]
    Venue(#[from] VenueError),
    /// fx-trade's store could not be read.
    #[error("fx-trade's store: {0}")]
    Store(#[from] runtime::RuntimeError),
}

/// What the venue executed for one saga.
#[derive(Default)]
struct Seen {
    buy: Option<u64>,
    sell: Option<u64>,
}

/// Reconciles `store`'s order records with every execution at `venue`, for the users
/// `partitioning` owns. Reads the venue page by page and the store record by record.
pub async fn reconcile(
    store: &runtime::Store,
    venue: &dyn Venue,
    partitioning: Partitioning,
) -> Result<VenueReconciliation, ReconcileError> {
    let mut r = VenueReconciliation::default();
    let mut seen: HashMap<SagaId, Seen> = HashMap::new();
    let mut after = 0;
    loop {
        let page = venue.executions(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in page {
            if partitioning.owns(&e.user_id) {
                check_execution(store, &mut r, &mut seen, &e)?;
            }
        }
    }
    r.last_seq = after;
    // The other way round: every fill and reversal booked has its execution, as far back as
    // the venue remembers.
    let remembered = |at_ms: u64| venue.history_from_ms().is_none_or(|from| at_ms >= from);
    for item in store.scan_iter::<OrderRecord>(ORDER_PREFIX) {
        let (key, record) = item?;
        let Some(saga) = key
            .strip_prefix(ORDER_PREFIX)
            .and_then(|s| SagaId::parse(s).ok())
        else {
            continue;
        };
        let (fill, reversal) = booked(&record.state);
        let at_venue = seen.get(&saga);
        match fill {
            Some(f) if !remembered(f.filled_at_ms) => r.before_history += 1,
            Some(f) if at_venue.and_then(|s| s.buy).is_none() => r.fail(format!(
                "saga {saga}: fx-trade booked a fill of {} USD at {} that the venue never executed",
                f.usd_amount, f.rate
            )),
            _ => {}
        }
        match reversal {
            Some(rv) if !remembered(rv.reversed_at_ms) => r.before_history += 1,
            Some(rv) if at_venue.and_then(|s| s.sell).is_none() => r.fail(format!(
                "saga {saga}: fx-trade booked a reversal of {} USD at {} that the venue never executed",
                rv.usd_amount, rv.rate
            )),
            _ => {}
        }
    }
    r.ok = r.failure_count == 0;
    Ok(r)
}

/// The fill and the reversal a record says were booked.
fn booked(state: &OrderState) -> (Option<&Fill>, Option<&Reversal>) {
    match state {
        OrderState::Filled(f) => (Some(f), None),
        OrderState::Cancelled { fill, reversal, .. } => (Some(fill), reversal.as_ref()),
        OrderState::Failed {
            reversed, reversal, ..
        } => (reversed.as_ref(), reversal.as_ref()),
    }
}

/// One execution against the saga's record.
fn check_execution(
    store: &runtime::Store,
    r: &mut VenueReconciliation,
    seen: &mut HashMap<SagaId, Seen>,
    e: &Execution,
) -> Result<(), ReconcileError> {
    r.executions += 1;
    let id = e.client_order_id.as_str();
    let (saga, side) = match id.strip_suffix(".reversal") {
        Some(saga) => (SagaId::parse(saga).ok(), Side::Sell),
        None => (SagaId::parse(id).ok(), Side::Buy),
    };
    let Some(saga) = saga.filter(|_| side == e.side) else {
        r.fail(format!(
            "execution #{} ({} {} USD, client order id {id}) is not an order fx-trade places",
            e.seq,
            e.side.as_str(),
            e.usd_amount
        ));
        return Ok(());
    };
    let slot = seen.entry(saga).or_default();
    let earlier = match side {
        Side::Buy => slot.buy.replace(e.seq),
        Side::Sell => slot.sell.replace(e.seq),
    };
    if let Some(first) = earlier {
        r.fail(format!(
            "saga {saga}: the venue executed two {}s, #{first} and #{}; the client order id should have made the second a repeat",
            e.side.as_str(),
            e.seq
        ));
        return Ok(());
    }
    let record: Option<OrderRecord> = store.get(&order_key(saga))?;
    let (fill, reversal) = record
        .as_ref()
        .map(|o| booked(&o.state))
        .unwrap_or_default();
    match side {
        Side::Buy => {
            r.buys += 1;
            r.bought_usd += e.usd_amount.amount();
            match fill {
                Some(f)
                    if f.rate == e.rate
                        && f.usd_amount == e.usd_amount
                        && f.krw_amount == e.krw_amount => {}
                Some(f) => r.fail(format!(
                    "saga {saga}: the venue's buy #{} is {} KRW for {} USD at {}, but fx-trade booked {} KRW for {} USD at {}",
                    e.seq, e.krw_amount, e.usd_amount, e.rate, f.krw_amount, f.usd_amount, f.rate
                )),
                None => r.fail(format!(
                    "saga {saga}: the venue's buy #{} ({} USD at {}) is booked nowhere in fx-trade",
                    e.seq, e.usd_amount, e.rate
                )),
            }
        }
        Side::Sell => {
            r.sells += 1;
            r.sold_usd += e.usd_amount.amount();
            match (fill, reversal) {
                (Some(f), Some(rv))
                    if rv.rate == e.rate
                        && rv.usd_amount == e.usd_amount
                        && rv.krw_amount == e.krw_amount =>
                {
                    r.pnl_krw += e.krw_amount.amount() - f.krw_amount.amount();
                }
                (_, Some(rv)) => r.fail(format!(
                    "saga {saga}: the venue's sale #{} is {} USD for {} KRW at {}, but fx-trade booked {} USD for {} KRW at {}",
                    e.seq, e.usd_amount, e.krw_amount, e.rate, rv.usd_amount, rv.krw_amount, rv.rate
                )),
                (_, None) => r.fail(format!(
                    "saga {saga}: the venue's sale #{} ({} USD at {}) is not booked in fx-trade yet",
                    e.seq, e.usd_amount, e.rate
                )),
            }
        }
    }
    Ok(())
}

/// Audits the books, then reconciles them with the venue.
pub async fn report(
    store: &runtime::Store,
    venue: &dyn Venue,
    partitioning: Partitioning,
) -> runtime::Result<crate::TradeAudit> {
    let books = crate::audit(store)?;
    combine(books, reconcile(store, venue, partitioning).await)
}

/// fx-trade's whole audit: the report of its `books` ([`crate::audit`]) with the venue's
/// reconciliation ([`reconcile`]) in its `venue` part, or why that could not run in
/// `venue_error`; `ok` only when the books hold, the venue part ran and holds, and their P&L
/// agree.
pub fn combine(
    mut books: crate::TradeAudit,
    venue: Result<VenueReconciliation, ReconcileError>,
) -> runtime::Result<crate::TradeAudit> {
    let f = &mut books.figures;
    match venue {
        Ok(mut v) => {
            // Reversals the venue has forgotten are in the books' P&L but not in the venue's.
            if v.before_history == 0 && v.pnl_krw != f.pnl_krw {
                v.fail(format!(
                    "the venue's executions make an FX P&L of {} KRW but fx-trade's books say {} KRW",
                    v.pnl_krw, f.pnl_krw
                ));
                v.ok = false;
            }
            f.venue = Some(v);
        }
        Err(ReconcileError::Store(e)) => return Err(e),
        Err(e @ ReconcileError::Venue(_)) => f.venue_error = Some(e.to_string()),
    }
    books.ok = books.failures.is_empty() && f.venue.as_ref().is_some_and(|v| v.ok);
    Ok(books)
}
