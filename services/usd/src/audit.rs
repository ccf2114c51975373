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

use runtime::Store;

use crate::model::{
    CreditRecord, CreditState, ACCOUNT_PREFIX, CREDIT_PREFIX, EXTERNAL_ACCOUNT, HOUSE_ACCOUNT,
    HOUSE_KEY, TOTALS_KEY,
};

/// The result of [`audit`]. Serializes to JSON for the admin interface and the test harness.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UsdAudit {
    /// True when `failures` is empty.
    pub ok: bool,
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
    /// Journal entries by operation (`credit`, `debit`, `deposit`).
    pub journal: BTreeMap<String, usize>,
    /// What is wrong, one sentence each.
    pub failures: Vec<String>,
}

/// Sums without panicking: a corrupted record may hold anything, and the audit must report it.
fn add(a: Decimal, b: Decimal) -> Decimal {
    a.checked_add(b).unwrap_or(Decimal::MAX)
}

fn sub(a: Decimal, b: Decimal) -> Decimal {
    a.checked_sub(b).unwrap_or(Decimal::MIN)
}

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
/// 3. every balance (users, house, Σ deposits from `external`) equals a replay of the journal;
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
    let mut a = UsdAudit::default();
    let mut read = |key: &str, raw: &Value, field: &str| -> Decimal {
        match money(raw, field) {
            Ok(v) => {
                if v.is_sign_negative() && !v.is_zero() {
                    a.failures.push(format!("{key} has a negative balance {v}"));
                }
                v
            }
            Err(e) => {
                a.failures.push(format!("{key} {e}"));
                Decimal::ZERO
            }
        }
    };

    // Balances as stored, per user: bounded by the number of users (a few hundred in the
    // benchmark), not of sagas, and needed for the replay below.
    let mut stored: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut frozen = 0;
    for item in store.scan_iter::<Value>(ACCOUNT_PREFIX) {
        let (key, raw) = item?;
        let user = key.trim_start_matches(ACCOUNT_PREFIX);
        let v = read(&key, &raw, "usd");
        if raw.get("frozen").and_then(Value::as_bool) == Some(true) {
            frozen += 1;
        }
        stored.insert(format!("user:{user}"), v);
        a.users += 1;
    }
    let house = match store.get::<Value>(HOUSE_KEY)? {
        Some(raw) => read(HOUSE_KEY, &raw, "usd"),
        None => Decimal::ZERO,
    };
    let deposits = match store.get::<Value>(TOTALS_KEY)? {
        Some(raw) => read(TOTALS_KEY, &raw, "deposits"),
        None => Decimal::ZERO,
    };
    a.frozen = frozen;
    a.user_total = stored.values().fold(Decimal::ZERO, |s, v| add(s, *v));
    a.house = house;
    a.deposits = deposits;

    // 1. Conservation.
    let held = add(a.user_total, house);
    if held != deposits {
        a.failures.push(format!(
            "conservation broken: users {} + house {house} = {held} USD, but deposits total \
             {deposits} USD (difference {})",
            a.user_total,
            sub(held, deposits)
        ));
    }

    // 3 and 4 in one walk (`Store::by_saga`) over two streams sorted by saga id: the journal,
    // in the order of its own keys `<saga_id>:<op>` (one saga's entries adjacent), and the
    // credit records `credit:<saga_id>`. Only the current saga's entries are held; the replay
    // is per journal account (users, the house, `external`), so bounded by users. Each part of
    // the report collects its sentences separately and they are joined in the order of the
    // checks.
    let mut replay: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut entry_failures = Vec::new();
    let mut record_failures = Vec::new();
    let mut unexplained_failures = Vec::new();
    for group in store.by_saga::<String, Value, 1>([CREDIT_PREFIX])? {
        progress.add(1);
        let group = group?;
        // Compared as text, as the record's key names it: every key names a saga.
        let saga = group.saga.expect("every key names a saga as text");
        let [record] = group.records;

        // 3. This saga's entries into the replay; (op, amount), the last entry of an op wins.
        let mut journaled: Vec<(String, Decimal)> = Vec::new();
        for e in group.entries {
            *a.journal.entry(e.op.clone()).or_default() += 1;
            if e.currency != "USD" {
                entry_failures.push(format!(
                    "journal entry {} is in {}; fx-usd only books USD",
                    e.key(),
                    e.currency
                ));
                continue;
            }
            if e.amount <= Decimal::ZERO {
                entry_failures.push(format!(
                    "journal entry {} has a non-positive amount {}",
                    e.key(),
                    e.amount
                ));
            }
            let d = replay.entry(e.debit.clone()).or_default();
            *d = sub(*d, e.amount);
            let c = replay.entry(e.credit.clone()).or_default();
            *c = add(*c, e.amount);
            match journaled.iter_mut().find(|(op, _)| *op == e.op) {
                Some(slot) => slot.1 = e.amount,
                None => journaled.push((e.op, e.amount)),
            }
        }
        let found = |op: &str| journaled.iter().find(|(o, _)| o == op).map(|(_, v)| *v);

        // 4. Its credit record against those entries.
        let mut explained = false;
        if let Some((key, raw)) = record {
            a.sagas += 1;
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
            for op in ["credit", "debit"] {
                if found(op).is_some() {
                    unexplained_failures.push(format!(
                        "saga {saga}: the journal has a {op} but there is no credit record"
                    ));
                }
            }
        }
    }
    a.failures.append(&mut entry_failures);
    let replayed_deposits = -replay.remove(EXTERNAL_ACCOUNT).unwrap_or_default();
    if replayed_deposits != deposits {
        a.failures.push(format!(
            "deposits total {deposits} USD, but the journal's deposits sum to {replayed_deposits} USD"
        ));
    }
    let replayed_house = replay.remove(HOUSE_ACCOUNT).unwrap_or_default();
    if replayed_house != house {
        a.failures.push(format!(
            "the house float holds {house} USD, but the journal replays to {replayed_house} USD"
        ));
    }
    let names: BTreeSet<String> = stored.keys().chain(replay.keys()).cloned().collect();
    for name in names {
        let have = stored.get(&name).copied();
        let want = replay.get(&name).copied().unwrap_or_default();
        match have {
            _ if !name.starts_with("user:") => a.failures.push(format!(
                "the journal books {want} USD to an unknown account {name:?}"
            )),
            None if want.is_zero() => {}
            None => a.failures.push(format!(
                "the journal replays {name} to {want} USD, but there is no account record"
            )),
            Some(have) if have != want => a.failures.push(format!(
                "{name} holds {have} USD, but the journal replays to {want} USD"
            )),
            Some(_) => {}
        }
    }
    a.failures.append(&mut record_failures);
    a.failures.append(&mut unexplained_failures);

    a.ok = a.failures.is_empty();
    Ok(a)
}

/// 4 for one saga: its credit record against its journal entries (`found(op)` is the amount of
/// its `op` entry, if any).
fn check_record(
    failures: &mut Vec<String>,
    saga: &str,
    record: &CreditRecord,
    found: impl Fn(&str) -> Option<Decimal>,
) {
    let (credited, debited) = match record.state {
        CreditState::Credited { usd_amount, .. } => (Some(usd_amount), None),
        CreditState::Debited { usd_amount, .. } => (Some(usd_amount), Some(usd_amount)),
        CreditState::Failed { .. } => (None, None),
    };
    for (op, expected) in [("credit", credited), ("debit", debited)] {
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
