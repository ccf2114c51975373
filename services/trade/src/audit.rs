//! fx-trade's self-check: order records against the fill/cancel/reverse/fx_pnl journal, on
//! top of the shared journal replay (`runtime::ledger`).

use runtime::ledger::{Account, AuditReport, Op, Replay};
use runtime::{JournalEntry, Store};
use serde::Serialize;

use events::Usd;
use rust_decimal::Decimal;

use crate::decide::{Fill, OrderRecord, OrderState, ORDER_PREFIX};
use crate::reconcile::VenueReconciliation;

/// fx-trade's own figures in its audit report: its order records, and the venue part.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TradeFigures {
    /// Order records (one per saga fx-trade answered).
    pub orders: usize,
    /// Orders currently filled (waiting for fx-usd's word, or done).
    pub filled: usize,
    /// Orders that never filled for the user (an execution found after a venue_unavailable,
    /// booked and reversed at once, counts here and in the fill and cancel entries).
    pub failed: usize,
    /// Fills that were cancelled for the user.
    pub cancelled: usize,
    /// Cancelled fills whose reversal the venue has not confirmed yet: the house holds their
    /// USD (`position_usd`).
    pub reversals_pending: usize,
    /// Reversals booked (sales of a cancelled fill's USD back at the venue).
    pub reversed: usize,
    /// The house's open USD position: cancelled fills not yet sold back.
    pub position_usd: Decimal,
    /// The house's FX gain (positive) or loss (negative) on booked reversals, in KRW, as the
    /// records say; the `fx_pnl` entries sum to the same.
    pub pnl_krw: Decimal,
    /// The books against the venue's executions ([`crate::reconcile`]); `None` until
    /// [`crate::combine`] adds it, or (with `venue_error`) when the venue did not answer.
    pub venue: Option<VenueReconciliation>,
    /// Why the venue part is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub venue_error: Option<String>,
}

/// The result of [`audit`] (the books) and of [`crate::report`] (the books and the venue): the
/// shared report shape with fx-trade's figures.
pub type TradeAudit = AuditReport<TradeFigures>;

/// The operations fx-trade journals.
pub const TRADE_OPS: &[Op] = &[Op::Fill, Op::Cancel, Op::Reverse, Op::FxPnl];

/// One saga's journal entries, by operation.
#[derive(Default)]
struct SagaEntries {
    fill: Option<JournalEntry>,
    cancel: Option<JournalEntry>,
    reverse: Option<JournalEntry>,
    pnl: Option<JournalEntry>,
}

impl SagaEntries {
    fn count(&self) -> usize {
        [&self.fill, &self.cancel, &self.reverse, &self.pnl]
            .iter()
            .filter(|e| e.is_some())
            .count()
    }

    /// The signed P&L the `fx_pnl` entry books: a gain is credited to fx_pnl.
    fn pnl(&self) -> Decimal {
        match &self.pnl {
            Some(e) if e.credit == Account::FxPnl => e.amount,
            Some(e) => -e.amount,
            None => Decimal::ZERO,
        }
    }
}

/// Checks that every fill, cancel and reversal in the order records is journaled exactly as
/// recorded, and that the journal holds nothing the records do not explain. Records that do
/// not decode are reported as failures, not errors, so one bad record does not hide the rest.
pub fn audit(store: &Store) -> runtime::Result<TradeAudit> {
    audit_with_progress(store, &runtime::admin::Progress::default())
}

/// [`audit`], counting each saga checked on `progress` (the admin endpoint reports it while a
/// long audit runs).
pub fn audit_with_progress(
    store: &Store,
    progress: &runtime::admin::Progress,
) -> runtime::Result<TradeAudit> {
    let mut f = TradeFigures::default();
    // One walk (`Store::by_saga`) over two streams sorted by saga id: the journal, in the order
    // of its own keys `<saga_id>:<op>` (one saga's entries adjacent), into the shared replay,
    // and the order records `order:<saga_id>`. Only the current saga's entries are held. Each
    // part of the report collects its sentences separately and they are joined in the order of
    // the checks.
    let mut replay = Replay::new(TRADE_OPS);
    let mut record_failures = Vec::new();
    let mut unexplained = 0;
    let mut journal_pnl = Decimal::ZERO;
    for group in store.by_saga::<String, serde_json::Value, 1>([ORDER_PREFIX])? {
        progress.add(1);
        let group = group?;
        // Compared as text, as the record's key names it: every key names a saga.
        let saga = group.saga.expect("every key names a saga as text");
        let [record] = group.records;
        let entries = saga_entries(&mut replay, group.entries);
        journal_pnl += entries.pnl();

        let Some((key, raw)) = record else {
            unexplained += entries.count();
            continue;
        };
        f.orders += 1;
        let record: OrderRecord = match serde_json::from_value(raw) {
            Ok(r) => r,
            Err(e) => {
                record_failures.push(format!("record {key} does not decode as an order: {e}"));
                unexplained += entries.count();
                continue;
            }
        };
        check_order(&mut f, &mut record_failures, &saga, &record, &entries);
    }
    if journal_pnl != f.pnl_krw {
        record_failures.push(format!(
            "the fx_pnl entries sum to {journal_pnl} KRW but the reversals recorded make {} KRW",
            f.pnl_krw
        ));
    }
    let mut failures = replay.take_failures();
    failures.extend(replay.negative_balances());
    failures.append(&mut record_failures);
    if unexplained > 0 {
        failures.push(format!(
            "{unexplained} journal entries belong to no order record"
        ));
    }
    Ok(AuditReport::new(replay.counts().clone(), f, failures))
}

/// One saga's entries into the replay, and by operation; of two claiming one op, the last one
/// counts.
fn saga_entries(replay: &mut Replay, lines: Vec<runtime::ledger::Line>) -> SagaEntries {
    let mut entries = SagaEntries::default();
    for line in lines {
        let Some((e, _)) = replay.read(line) else {
            continue;
        };
        let slot = match e.op {
            Op::Fill => &mut entries.fill,
            Op::Cancel => &mut entries.cancel,
            Op::Reverse => &mut entries.reverse,
            Op::FxPnl => &mut entries.pnl,
            // Not fx-trade's: the replay said so.
            _ => continue,
        };
        *slot = Some(e);
    }
    entries
}

/// One USD entry against what the record says it must be (`None`: no entry allowed).
fn check_usd(
    failures: &mut Vec<String>,
    saga: &str,
    what: &str,
    expected: Option<Usd>,
    entry: Option<&JournalEntry>,
) {
    match (expected, entry) {
        (Some(usd), Some(e)) if e.amount != usd.amount() => failures.push(format!(
            "saga {saga}: the order's {what} is {usd} USD but the journal's says {}",
            e.amount
        )),
        (Some(usd), None) => failures.push(format!(
            "saga {saga}: the order's {what} is {usd} USD but the journal has no {what} entry"
        )),
        (None, Some(e)) => failures.push(format!(
            "saga {saga}: the journal has a {what} of {} USD the order does not have",
            e.amount
        )),
        _ => {}
    }
}

/// One order record against its entries.
fn check_order(
    a: &mut TradeFigures,
    failures: &mut Vec<String>,
    saga: &str,
    record: &OrderRecord,
    entries: &SagaEntries,
) {
    let (fill, cancelled, reversal) = match &record.state {
        OrderState::Filled(f) => {
            a.filled += 1;
            (Some(f), false, None)
        }
        OrderState::Cancelled { fill, reversal, .. } => {
            a.cancelled += 1;
            (Some(fill), true, reversal.as_ref())
        }
        // An execution found after a venue_unavailable was booked and reversed at once.
        OrderState::Failed {
            reversed, reversal, ..
        } => {
            a.failed += 1;
            (reversed.as_ref(), reversed.is_some(), reversal.as_ref())
        }
    };
    let usd = |f: Option<&Fill>| f.map(|f| f.usd_amount);
    check_usd(failures, saga, "fill", usd(fill), entries.fill.as_ref());
    check_usd(
        failures,
        saga,
        "cancel",
        usd(fill.filter(|_| cancelled)),
        entries.cancel.as_ref(),
    );
    check_usd(
        failures,
        saga,
        "reverse",
        reversal.map(|r| r.usd_amount),
        entries.reverse.as_ref(),
    );
    match (fill, reversal) {
        (Some(fill), Some(r)) => {
            a.reversed += 1;
            a.pnl_krw += r.pnl_krw(fill);
            if entries.pnl() != r.pnl_krw(fill) {
                failures.push(format!(
                    "saga {saga}: the reversal made {} KRW against the fill's {} KRW, but the journal's fx_pnl says {}",
                    r.krw_amount,
                    fill.krw_amount,
                    entries.pnl()
                ));
            }
        }
        (Some(fill), None) if cancelled => {
            a.reversals_pending += 1;
            a.position_usd += fill.usd_amount.amount();
        }
        _ => {}
    }
}
