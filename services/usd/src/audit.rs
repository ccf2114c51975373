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

    // Balances as stored.
    let mut stored: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut frozen = 0;
    let accounts = store.scan::<Value>(ACCOUNT_PREFIX)?;
    for (key, raw) in &accounts {
        let user = key.trim_start_matches(ACCOUNT_PREFIX);
        let v = read(key, raw, "usd");
        if raw.get("frozen").and_then(Value::as_bool) == Some(true) {
            frozen += 1;
        }
        stored.insert(format!("user:{user}"), v);
    }
    let house = match store.get::<Value>(HOUSE_KEY)? {
        Some(raw) => read(HOUSE_KEY, &raw, "usd"),
        None => Decimal::ZERO,
    };
    let deposits = match store.get::<Value>(TOTALS_KEY)? {
        Some(raw) => read(TOTALS_KEY, &raw, "deposits"),
        None => Decimal::ZERO,
    };
    a.users = accounts.len();
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

    // 3. Replay the journal.
    let mut replay: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut journaled: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    for e in store.journal_iter() {
        let e = e?;
        *a.journal.entry(e.op.clone()).or_default() += 1;
        if e.currency != "USD" {
            a.failures.push(format!(
                "journal entry {} is in {}; fx-usd only books USD",
                e.key(),
                e.currency
            ));
            continue;
        }
        if e.amount <= Decimal::ZERO {
            a.failures.push(format!(
                "journal entry {} has a non-positive amount {}",
                e.key(),
                e.amount
            ));
        }
        let d = replay.entry(e.debit.clone()).or_default();
        *d = sub(*d, e.amount);
        let c = replay.entry(e.credit.clone()).or_default();
        *c = add(*c, e.amount);
        journaled.insert((e.saga_id.to_string(), e.op.clone()), e.amount);
    }
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

    // 4. Per-saga records against their journal entries.
    let mut explained: BTreeSet<(String, String)> = BTreeSet::new();
    for item in store.scan_iter::<Value>(CREDIT_PREFIX) {
        let (key, raw) = item?;
        a.sagas += 1;
        let saga = key.trim_start_matches(CREDIT_PREFIX).to_owned();
        let record: CreditRecord = match serde_json::from_value(raw) {
            Ok(r) => r,
            Err(e) => {
                a.failures
                    .push(format!("{key} does not decode as a credit record: {e}"));
                continue;
            }
        };
        let (credited, debited) = match record.state {
            CreditState::Credited { usd_amount, .. } => (Some(usd_amount), None),
            CreditState::Debited { usd_amount, .. } => (Some(usd_amount), Some(usd_amount)),
            CreditState::Failed { .. } => (None, None),
        };
        for (op, expected) in [("credit", credited), ("debit", debited)] {
            let k = (saga.clone(), op.to_owned());
            let found = journaled.get(&k).copied();
            explained.insert(k);
            match (expected, found) {
                (Some(x), Some(f)) if x.amount() != f => a.failures.push(format!(
                    "saga {saga}: the record says {op} {x} USD, the journal says {f} USD"
                )),
                (Some(x), None) => a.failures.push(format!(
                    "saga {saga}: the record says {op} {x} USD, but the journal has no {op}"
                )),
                (None, Some(f)) => a.failures.push(format!(
                    "saga {saga}: the journal has a {op} of {f} USD the record does not explain"
                )),
                _ => {}
            }
        }
    }
    for (saga, op) in journaled.keys() {
        if (op == "credit" || op == "debit") && !explained.contains(&(saga.clone(), op.clone())) {
            a.failures.push(format!(
                "saga {saga}: the journal has a {op} but there is no credit record"
            ));
        }
    }

    a.ok = a.failures.is_empty();
    Ok(a)
}
