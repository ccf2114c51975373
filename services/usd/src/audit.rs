//! fx-usd's audit: invariants 1, 2 and 4 checked against the store, failures in words.
//!
//! Reads the records as raw JSON and parses money itself, so a corrupted record (a negative or
//! unreadable balance) becomes a failure sentence instead of an error that hides everything
//! else.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;

use runtime::ledger::{saturating_add, Account, AuditReport, Currency, Op, Replay};
use runtime::Store;

use crate::model::{
    CreditRecord, CreditState, ACCOUNT_PREFIX, CREDIT_PREFIX, HOUSE_KEY, TOTALS_KEY,
};

/// fx-usd's own figures in its audit report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UsdFigures {
    /// User accounts.
    pub users: usize,
    /// Of which frozen.
    pub frozen: usize,
    /// Σ user balances.
    #[serde(with = "rust_decimal::serde::str")]
    pub user_total: Decimal,
    /// The house float.
    #[serde(with = "rust_decimal::serde::str")]
    pub house: Decimal,
    /// Σ deposits (house float included).
    #[serde(with = "rust_decimal::serde::str")]
    pub deposits: Decimal,
    /// Per-saga records.
    pub sagas: usize,
}

/// The result of [`audit`]: the shared report shape with fx-usd's figures. Serializes to JSON
/// for the admin interface and the test harness.
pub type UsdAudit = AuditReport<UsdFigures>;

/// The operations fx-usd journals.
pub const USD_OPS: &[Op] = &[Op::Deposit, Op::Credit, Op::Debit];

/// Reads the money field `usd` or `deposits` of a raw record.
fn money(record: &Value, field: &str) -> Result<Decimal, String> {
    let text = record
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("has no {field} amount as a string"))?;
    Decimal::from_str(text).map_err(|e| format!("has an unreadable {field} amount {text:?}: {e}"))
}

/// Checks, in one pass over the store:
/// 1. conservation: Σ user + house == Σ deposits;
/// 2. no negative balance;
/// 3. every balance (users, house, Σ deposits from `external`) equals a replay of the journal
///    (the shared [`Replay`], which also checks each entry's shape);
/// 4. every per-saga record agrees with the journal (credited -> one credit; debited -> one
///    credit and one debit; failed -> none), and no credit or debit lacks a record.
pub fn audit(store: &Store) -> runtime::Result<UsdAudit> {
    audit_with_progress(store, &runtime::admin::Progress::default())
}

/// [`audit`], counting each saga checked on `progress` (the admin endpoint reports it while a
/// long audit runs).
pub fn audit_with_progress(
    store: &Store,
    progress: &runtime::admin::Progress,
) -> runtime::Result<UsdAudit> {
    let mut f = UsdFigures::default();
    let mut failures = Vec::new();
    let stored = read_balances(store, &mut f, &mut failures)?;
    check_conservation(&f, &mut failures);
    let (mut replay, mut record_failures) = walk_sagas(store, progress, &mut f)?;
    failures.append(&mut replay.take_failures());
    failures.extend(replay.negative_balances());
    check_replay(&replay, &f, &stored, &mut failures);
    failures.append(&mut record_failures);
    Ok(AuditReport::new(replay.counts().clone(), f, failures))
}

/// The balances as stored, per journal account name (`user:<id>`): bounded by the number of
/// users, not of sagas, and needed to compare with the replay. Negative or unreadable
/// amounts are failures.
fn read_balances(
    store: &Store,
    f: &mut UsdFigures,
    failures: &mut Vec<String>,
) -> runtime::Result<BTreeMap<String, Decimal>> {
    let mut read = |key: &str, raw: &Value, field: &str| -> Decimal {
        match money(raw, field) {
            Ok(v) => {
                if v.is_sign_negative() && !v.is_zero() {
                    failures.push(format!("{key} has a negative balance {v}"));
                }
                v
            }
            Err(e) => {
                failures.push(format!("{key} {e}"));
                Decimal::ZERO
            }
        }
    };
    let mut stored = BTreeMap::new();
    for item in store.scan_iter::<Value>(ACCOUNT_PREFIX) {
        let (key, raw) = item?;
        let user = key.trim_start_matches(ACCOUNT_PREFIX);
        let v = read(&key, &raw, "usd");
        if raw.get("frozen").and_then(Value::as_bool) == Some(true) {
            f.frozen += 1;
        }
        stored.insert(format!("user:{user}"), v);
        f.users += 1;
    }
    if let Some(raw) = store.get::<Value>(HOUSE_KEY)? {
        f.house = read(HOUSE_KEY, &raw, "usd");
    }
    if let Some(raw) = store.get::<Value>(TOTALS_KEY)? {
        f.deposits = read(TOTALS_KEY, &raw, "deposits");
    }
    f.user_total = stored
        .values()
        .fold(Decimal::ZERO, |s, v| saturating_add(s, *v));
    Ok(stored)
}

/// Check 1, Σ user + house == Σ deposits.
fn check_conservation(f: &UsdFigures, failures: &mut Vec<String>) {
    let held = saturating_add(f.user_total, f.house);
    if held != f.deposits {
        failures.push(format!(
            "conservation broken: users {} + house {} = {held} USD, but deposits total \
             {} USD (difference {})",
            f.user_total,
            f.house,
            f.deposits,
            held.checked_sub(f.deposits).unwrap_or(Decimal::MIN)
        ));
    }
}

/// 3 and 4 in one walk (`Store::by_saga`) over two streams sorted by saga id: the journal, in
/// the order of its own keys `<saga_id>:<op>` (one saga's entries adjacent), into the replay,
/// and the credit records `credit:<saga_id>`, each against its saga's entries. Only the
/// current saga's entries are held. Returns the replay and the record failures (records that
/// do not agree, then journal entries no record explains).
fn walk_sagas(
    store: &Store,
    progress: &runtime::admin::Progress,
    f: &mut UsdFigures,
) -> runtime::Result<(Replay, Vec<String>)> {
    let mut replay = Replay::new(USD_OPS);
    let mut record_failures = Vec::new();
    let mut unexplained_failures = Vec::new();
    for group in store.by_saga::<String, Value, 1>([CREDIT_PREFIX])? {
        progress.add(1);
        let group = group?;
        // Compared as text, as the record's key names it: every key names a saga.
        let saga = group.saga.expect("every key names a saga as text");
        let [record] = group.records;

        // This saga's entries, (op, amount); the last entry of an op wins.
        let mut journaled: Vec<(Op, Decimal)> = Vec::new();
        for line in group.entries {
            let Some((e, _)) = replay.read(line) else {
                continue;
            };
            match journaled.iter_mut().find(|(op, _)| *op == e.op) {
                Some(slot) => slot.1 = e.amount,
                None => journaled.push((e.op, e.amount)),
            }
        }
        let found = |op: Op| journaled.iter().find(|(o, _)| *o == op).map(|(_, v)| *v);

        let mut explained = false;
        if let Some((key, raw)) = record {
            f.sagas += 1;
            match serde_json::from_value::<CreditRecord>(raw) {
                Ok(record) => {
                    explained = true;
                    check_record(&mut record_failures, &saga, &record, found);
                }
                Err(e) => {
                    record_failures.push(format!("{key} does not decode as a credit record: {e}"))
                }
            }
        }
        if !explained {
            for op in [Op::Credit, Op::Debit] {
                if found(op).is_some() {
                    unexplained_failures.push(format!(
                        "saga {saga}: the journal has a {op} but there is no credit record"
                    ));
                }
            }
        }
    }
    record_failures.append(&mut unexplained_failures);
    Ok((replay, record_failures))
}

/// Check 3, the replay against the balances: `external` is minus Σ deposits, the house is the
/// float, each user's account its record.
fn check_replay(
    replay: &Replay,
    f: &UsdFigures,
    stored: &BTreeMap<String, Decimal>,
    failures: &mut Vec<String>,
) {
    let replayed_deposits = -replay.balance(Currency::Usd, &Account::External);
    if replayed_deposits != f.deposits {
        failures.push(format!(
            "deposits total {} USD, but the journal's deposits sum to {replayed_deposits} USD",
            f.deposits
        ));
    }
    let replayed_house = replay.balance(Currency::Usd, &Account::House);
    if replayed_house != f.house {
        failures.push(format!(
            "the house float holds {} USD, but the journal replays to {replayed_house} USD",
            f.house
        ));
    }
    let replayed: BTreeMap<String, Decimal> = replay
        .balances(Currency::Usd)
        .filter(|(a, _)| !matches!(a, Account::External | Account::House))
        .map(|(a, b)| (a.to_string(), b))
        .collect();
    let names: BTreeSet<&String> = stored.keys().chain(replayed.keys()).collect();
    for name in names {
        let have = stored.get(name).copied();
        let want = replayed.get(name).copied().unwrap_or_default();
        match have {
            _ if !name.starts_with("user:") => failures.push(format!(
                "the journal books {want} USD to an unknown account {name:?}"
            )),
            None if want.is_zero() => {}
            None => failures.push(format!(
                "the journal replays {name} to {want} USD, but there is no account record"
            )),
            Some(have) if have != want => failures.push(format!(
                "{name} holds {have} USD, but the journal replays to {want} USD"
            )),
            Some(_) => {}
        }
    }
}

/// 4 for one saga: its credit record against its journal entries (`found(op)` is the amount of
/// its `op` entry, if any).
fn check_record(
    failures: &mut Vec<String>,
    saga: &str,
    record: &CreditRecord,
    found: impl Fn(Op) -> Option<Decimal>,
) {
    let (credited, debited) = match record.state {
        CreditState::Credited { usd_amount, .. } => (Some(usd_amount), None),
        CreditState::Debited { usd_amount, .. } => (Some(usd_amount), Some(usd_amount)),
        CreditState::Failed { .. } => (None, None),
    };
    for (op, expected) in [(Op::Credit, credited), (Op::Debit, debited)] {
        match (expected, found(op)) {
            (Some(x), Some(f)) if x.amount() != f => failures.push(format!(
                "saga {saga}: the record says {op} {x} USD, the journal says {f} USD"
            )),
            (Some(x), None) => failures.push(format!(
                "saga {saga}: the record says {op} {x} USD, but the journal has no {op}"
            )),
            (None, Some(f)) => failures.push(format!(
                "saga {saga}: the journal has a {op} of {f} USD the record does not explain"
            )),
            _ => {}
        }
    }
}
