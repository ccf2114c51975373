//! fx-trade's self-check: order records against the fill/cancel journal.

use runtime::{JournalEntry, Store};
use serde::Serialize;

use crate::order::{OrderRecord, OrderState, ORDER_PREFIX};

/// The result of [`audit`]: counts, and every disagreement in words.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TradeAudit {
    /// True when `failures` is empty.
    pub ok: bool,
    /// Order records (one per saga fx-trade answered).
    pub orders: usize,
    /// Orders currently filled (waiting for fx-usd's word, or done).
    pub filled: usize,
    /// Orders that never filled for the user (an execution found after a venue_unavailable,
    /// booked and reversed at once, counts here and in the fill and cancel entries).
    pub failed: usize,
    /// Fills that were reversed.
    pub cancelled: usize,
    /// `fill` journal entries.
    pub fill_entries: usize,
    /// `cancel` journal entries.
    pub cancel_entries: usize,
    /// What is wrong, one sentence each.
    pub failures: Vec<String>,
}

/// Checks that every fill and cancel in the order records is journaled exactly as recorded,
/// and that the journal holds nothing the records do not explain. Records that do not decode
/// are reported as failures, not errors, so one bad record does not hide the rest.
pub fn audit(store: &Store) -> runtime::Result<TradeAudit> {
    let mut a = TradeAudit::default();
    // One walk (`Store::by_saga`) over two streams sorted by saga id: the journal, in the order
    // of its own keys `<saga_id>:<op>` (one saga's entries adjacent), and the order records
    // `order:<saga_id>`. Only the current saga's entries are held. Each part of the report
    // collects its sentences separately and they are joined in the order of the checks.
    let mut entry_failures = Vec::new();
    let mut record_failures = Vec::new();
    let mut unexplained = 0;
    for group in store.by_saga::<String, serde_json::Value, 1>([ORDER_PREFIX])? {
        let group = group?;
        // Compared as text, as the record's key names it: every key names a saga.
        let saga = group.saga.expect("every key names a saga as text");
        let [record] = group.records;

        // This saga's fill and cancel entries; of two claiming one op, the last one counts.
        let mut fill_entry: Option<JournalEntry> = None;
        let mut cancel_entry: Option<JournalEntry> = None;
        for e in group.entries {
            match e.op.as_str() {
                "fill" => {
                    a.fill_entries += 1;
                    fill_entry = Some(e);
                }
                "cancel" => {
                    a.cancel_entries += 1;
                    cancel_entry = Some(e);
                }
                other => entry_failures.push(format!(
                    "journal entry {} has operation {other:?}; fx-trade only journals fill and cancel",
                    e.key()
                )),
            }
        }
        let entries = usize::from(fill_entry.is_some()) + usize::from(cancel_entry.is_some());

        let Some((key, raw)) = record else {
            unexplained += entries;
            continue;
        };
        a.orders += 1;
        let record: OrderRecord = match serde_json::from_value(raw) {
            Ok(r) => r,
            Err(e) => {
                record_failures.push(format!("record {key} does not decode as an order: {e}"));
                unexplained += entries;
                continue;
            }
        };
        check_order(
            &mut a,
            &mut record_failures,
            &saga,
            &record,
            fill_entry.as_ref(),
            cancel_entry.as_ref(),
        );
    }
    a.failures.append(&mut entry_failures);
    a.failures.append(&mut record_failures);
    if unexplained > 0 {
        a.failures.push(format!(
            "{unexplained} journal entries belong to no order record"
        ));
    }
    a.ok = a.failures.is_empty();
    Ok(a)
}

/// One order record against its fill and cancel entries.
fn check_order(
    a: &mut TradeAudit,
    failures: &mut Vec<String>,
    saga: &str,
    record: &OrderRecord,
    fill_entry: Option<&JournalEntry>,
    cancel_entry: Option<&JournalEntry>,
) {
    let (fill, cancelled) = match &record.state {
        OrderState::Filled(f) => {
            a.filled += 1;
            (Some(f), false)
        }
        OrderState::Cancelled { fill, .. } => {
            a.cancelled += 1;
            (Some(fill), true)
        }
        // An execution found after a venue_unavailable was booked and reversed at once.
        OrderState::Failed { reversed, .. } => {
            a.failed += 1;
            (reversed.as_ref(), reversed.is_some())
        }
    };
    match (fill, fill_entry) {
        (Some(f), Some(e)) if e.amount != f.usd_amount.amount() => failures.push(format!(
            "saga {saga}: the order filled {} USD but the journal's fill says {}",
            f.usd_amount, e.amount
        )),
        (Some(f), None) => failures.push(format!(
            "saga {saga}: the order filled {} USD but the journal has no fill entry",
            f.usd_amount
        )),
        (None, Some(e)) => failures.push(format!(
            "saga {saga}: the order never filled but the journal has a fill of {} USD",
            e.amount
        )),
        _ => {}
    }
    match (cancelled, cancel_entry) {
        (true, None) => failures.push(format!(
            "saga {saga}: the order was cancelled but the journal has no cancel entry"
        )),
        (false, Some(_)) => failures.push(format!(
            "saga {saga}: the journal has a cancel entry but the order is not cancelled"
        )),
        (true, Some(e)) if fill.is_some_and(|f| e.amount != f.usd_amount.amount()) => failures
            .push(format!(
                "saga {saga}: the order reversed {} USD but the journal's cancel says {}",
                fill.map(|f| f.usd_amount).unwrap_or_default(),
                e.amount
            )),
        _ => {}
    }
}
