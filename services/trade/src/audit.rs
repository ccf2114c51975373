//! fx-trade's self-check: order records against the fill/cancel journal.

use std::collections::BTreeMap;

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
    let mut entries: BTreeMap<(String, String), JournalEntry> = BTreeMap::new();
    for e in store.journal_iter() {
        let e = e?;
        match e.op.as_str() {
            "fill" => a.fill_entries += 1,
            "cancel" => a.cancel_entries += 1,
            other => {
                a.failures.push(format!(
                    "journal entry {} has operation {other:?}; fx-trade only journals fill and cancel",
                    e.key()
                ));
                continue;
            }
        }
        entries.insert((e.saga_id.to_string(), e.op.clone()), e);
    }
    let mut explained = 0;
    for (key, raw) in store.scan::<serde_json::Value>(ORDER_PREFIX)? {
        a.orders += 1;
        let saga = key.trim_start_matches(ORDER_PREFIX).to_owned();
        let record: OrderRecord = match serde_json::from_value(raw) {
            Ok(r) => r,
            Err(e) => {
                a.failures
                    .push(format!("record {key} does not decode as an order: {e}"));
                continue;
            }
        };
        let fill_entry = entries.get(&(saga.clone(), "fill".into()));
        let cancel_entry = entries.get(&(saga.clone(), "cancel".into()));
        explained += usize::from(fill_entry.is_some()) + usize::from(cancel_entry.is_some());
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
            (Some(f), Some(e)) if e.amount != f.usd_amount.amount() => a.failures.push(format!(
                "saga {saga}: the order filled {} USD but the journal's fill says {}",
                f.usd_amount, e.amount
            )),
            (Some(f), None) => a.failures.push(format!(
                "saga {saga}: the order filled {} USD but the journal has no fill entry",
                f.usd_amount
            )),
            (None, Some(e)) => a.failures.push(format!(
                "saga {saga}: the order never filled but the journal has a fill of {} USD",
                e.amount
            )),
            _ => {}
        }
        match (cancelled, cancel_entry) {
            (true, None) => a.failures.push(format!(
                "saga {saga}: the order was cancelled but the journal has no cancel entry"
            )),
            (false, Some(_)) => a.failures.push(format!(
                "saga {saga}: the journal has a cancel entry but the order is not cancelled"
            )),
            (true, Some(e)) if fill.is_some_and(|f| e.amount != f.usd_amount.amount()) => {
                a.failures.push(format!(
                    "saga {saga}: the order reversed {} USD but the journal's cancel says {}",
                    fill.map(|f| f.usd_amount).unwrap_or_default(),
                    e.amount
                ))
            }
            _ => {}
        }
    }
    if explained < entries.len() {
        a.failures.push(format!(
            "{} journal entries belong to no order record",
            entries.len() - explained
        ));
    }
    a.ok = a.failures.is_empty();
    Ok(a)
}
