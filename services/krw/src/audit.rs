//! The KRW audit: checks DESIGN.md's invariants 1, 2 and 4 against fx-krw's own store, and
//! that records, journal and expiry index tell the same story. Every failure is a sentence an
//! operator can act on.

use std::collections::{BTreeMap, BTreeSet};

use events::{SagaId, UserId};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use runtime::Store;

use crate::decide::ops;
use crate::records::{
    available_account, held_account, parse_expiry_key, DepositRecord, SagaRecord, SagaStatus,
    ACCOUNT_PREFIX, DEPOSIT_PREFIX, EXPIRY_PREFIX, EXTERNAL_ACCOUNT, HOUSE_ACCOUNT, HOUSE_KEY,
    SAGA_PREFIX, TOTALS_KEY,
};

/// Sums over the store, in KRW.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditTotals {
    /// Σ available over user accounts.
    #[serde(with = "rust_decimal::serde::str")]
    pub available: Decimal,
    /// Σ held over user accounts.
    #[serde(with = "rust_decimal::serde::str")]
    pub held: Decimal,
    /// The house's KRW.
    #[serde(with = "rust_decimal::serde::str")]
    pub house: Decimal,
    /// Σ deposits (the `totals` record).
    #[serde(with = "rust_decimal::serde::str")]
    pub deposits: Decimal,
    /// User accounts.
    pub accounts: usize,
    /// Saga records (holds, rejections, tombstones).
    pub sagas: usize,
    /// Holds still open.
    pub open_holds: usize,
    /// Journal entries.
    pub journal_entries: usize,
}

/// The result of [`audit`]: one boolean per invariant, and every failure in words.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KrwAudit {
    /// True when every check passed.
    pub ok: bool,
    /// What the checks summed.
    pub totals: AuditTotals,
    /// Invariant 1: Σ available + Σ held + house == Σ deposits.
    pub conservation: bool,
    /// Invariant 2: no balance in records or in the journal replay is negative.
    pub no_negative_balance: bool,
    /// Replaying the journal from zero gives every account's balance, the house, and
    /// (negated, at `external`) Σ deposits.
    pub journal_matches_balances: bool,
    /// Invariant 4: one entry per (saga, op), each well-formed, and per saga a sane set of
    /// operations (a commit or a release only after a hold, never both, same amount).
    pub one_entry_per_saga_op: bool,
    /// Every saga record agrees with its journal entries and the expiry index, and each
    /// account's held balance is the sum of its open holds.
    pub holds_consistent: bool,
    /// Every deposit record has its journal entry and the other way round.
    pub deposits_consistent: bool,
    /// Every record decodes.
    pub records_readable: bool,
    /// Every failed check, as a sentence starting with the check's name.
    pub failures: Vec<String>,
}

#[derive(Clone, Copy)]
enum Check {
    Conservation,
    NoNegative,
    Journal,
    OneEntry,
    Holds,
    Deposits,
    Readable,
}

impl KrwAudit {
    fn fail(&mut self, check: Check, message: String) {
        let (flag, name) = match check {
            Check::Conservation => (&mut self.conservation, "conservation"),
            Check::NoNegative => (&mut self.no_negative_balance, "no negative balance"),
            Check::Journal => (&mut self.journal_matches_balances, "journal replay"),
            Check::OneEntry => (&mut self.one_entry_per_saga_op, "one entry per saga and op"),
            Check::Holds => (&mut self.holds_consistent, "holds"),
            Check::Deposits => (&mut self.deposits_consistent, "deposits"),
            Check::Readable => (&mut self.records_readable, "records"),
        };
        *flag = false;
        self.failures.push(format!("{name}: {message}"));
    }
}

/// A balance record read leniently (plain decimals), so that a negative or otherwise corrupt
/// balance is reported instead of failing the whole audit.
#[derive(Deserialize)]
struct LooseAccount {
    #[serde(with = "rust_decimal::serde::str")]
    available: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    held: Decimal,
}

#[derive(Deserialize)]
struct LooseHouse {
    #[serde(with = "rust_decimal::serde::str")]
    krw: Decimal,
}

#[derive(Deserialize)]
struct LooseTotals {
    #[serde(with = "rust_decimal::serde::str")]
    deposits: Decimal,
}

/// One saga's journal operations: op -> (amount, user). A sorted vector rather than a map:
/// the audit keeps one per saga in memory, and a saga has at most three operations.
#[derive(Default)]
struct SagaOps(Vec<(String, (Decimal, Option<String>))>);

impl SagaOps {
    /// Adds an operation; returns the one it replaces, if the op was already there.
    fn insert(
        &mut self,
        op: String,
        v: (Decimal, Option<String>),
    ) -> Option<(Decimal, Option<String>)> {
        match self.0.binary_search_by(|(o, _)| o.as_str().cmp(&op)) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, v)),
            Err(i) => {
                self.0.insert(i, (op, v));
                None
            }
        }
    }

    fn get(&self, op: &str) -> Option<&(Decimal, Option<String>)> {
        self.0
            .binary_search_by(|(o, _)| o.as_str().cmp(op))
            .ok()
            .map(|i| &self.0[i].1)
    }

    fn contains_key(&self, op: &str) -> bool {
        self.get(op).is_some()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(o, _)| o)
    }

    fn values(&self) -> impl Iterator<Item = &(Decimal, Option<String>)> {
        self.0.iter().map(|(_, v)| v)
    }
}

impl std::fmt::Debug for SagaOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(o, v)| (o, v)))
            .finish()
    }
}

fn add(a: Decimal, b: Decimal) -> Decimal {
    // Balances are capped at 10^15 KRW each; Decimal holds 7.9 * 10^28, so only an absurd
    // number of corrupt records could overflow. Saturate rather than panic mid-audit.
    a.checked_add(b).unwrap_or(Decimal::MAX)
}

/// Reads the whole KRW store and checks it. Fails (`Err`) only when the store cannot be read;
/// a record that does not decode is a failure in the report, not an error. A journal entry
/// that does not decode is an error, since nothing can be replayed around it.
pub fn audit(store: &Store) -> runtime::Result<KrwAudit> {
    let mut a = KrwAudit {
        ok: false,
        conservation: true,
        no_negative_balance: true,
        journal_matches_balances: true,
        one_entry_per_saga_op: true,
        holds_consistent: true,
        deposits_consistent: true,
        records_readable: true,
        ..KrwAudit::default()
    };

    // Balances as recorded.
    let mut accounts: BTreeMap<String, LooseAccount> = BTreeMap::new();
    for (key, value) in store.scan::<serde_json::Value>(ACCOUNT_PREFIX)? {
        let user = key[ACCOUNT_PREFIX.len()..].to_owned();
        let Some(acct) = decode::<LooseAccount>(&mut a, &key, value.clone()) else {
            continue;
        };
        // The strict form refuses negatives; report those under their own check.
        if acct.available < Decimal::ZERO || acct.held < Decimal::ZERO {
            a.fail(
                Check::NoNegative,
                format!(
                    "{key} has available {} KRW and held {} KRW; balances are never negative",
                    acct.available, acct.held
                ),
            );
        } else {
            decode::<crate::Account>(&mut a, &key, value);
        }
        a.totals.available = add(a.totals.available, acct.available);
        a.totals.held = add(a.totals.held, acct.held);
        accounts.insert(user, acct);
    }
    a.totals.accounts = accounts.len();
    let house =
        read_single::<LooseHouse>(&mut a, store, HOUSE_KEY)?.map_or(Decimal::ZERO, |h| h.krw);
    let deposits = read_single::<LooseTotals>(&mut a, store, TOTALS_KEY)?
        .map_or(Decimal::ZERO, |t| t.deposits);
    a.totals.house = house;
    a.totals.deposits = deposits;
    if house < Decimal::ZERO {
        a.fail(Check::NoNegative, format!("the house has {house} KRW"));
    }

    // Invariant 1.
    let sum = add(add(a.totals.available, a.totals.held), house);
    if sum != deposits {
        a.fail(
            Check::Conservation,
            format!(
                "available {} + held {} + house {house} = {sum} KRW, but deposits total \
                 {deposits} KRW (off by {} KRW); the records created or lost money",
                a.totals.available,
                a.totals.held,
                sum.checked_sub(deposits).unwrap_or_default()
            ),
        );
    }

    // Replay the journal from zero, checking each entry's shape on the way.
    let mut replay: BTreeMap<String, Decimal> = BTreeMap::new();
    // saga -> op -> (amount, user)
    let mut by_saga: BTreeMap<SagaId, SagaOps> = BTreeMap::new();
    for e in store.journal_iter() {
        let e = e?;
        a.totals.journal_entries += 1;
        let key = e.key();
        if e.currency != "KRW" || e.amount <= Decimal::ZERO {
            a.fail(
                Check::OneEntry,
                format!(
                    "journal {key} moves {} {}; fx-krw journals positive KRW only",
                    e.amount, e.currency
                ),
            );
        }
        let user = journal_user(&e);
        if user.is_none() {
            a.fail(
                Check::OneEntry,
                format!(
                    "journal {key} moves {} -> {}, which is not what a {:?} does",
                    e.debit, e.credit, e.op
                ),
            );
        }
        let debit = replay.entry(e.debit.clone()).or_default();
        *debit = debit.checked_sub(e.amount).unwrap_or(Decimal::MIN);
        let credit = replay.entry(e.credit.clone()).or_default();
        *credit = add(*credit, e.amount);
        // The journal is keyed by (saga, op), so a second entry claiming the same pair is
        // one whose stored key does not match its content.
        if by_saga
            .entry(e.saga_id)
            .or_default()
            .insert(e.op, (e.amount, user))
            .is_some()
        {
            a.fail(
                Check::OneEntry,
                format!("two journal entries claim {key}; an effect happened twice"),
            );
        }
    }
    for (saga, saga_ops) in &by_saga {
        let has = |op: &str| saga_ops.contains_key(op);
        if has(ops::COMMIT) && has(ops::RELEASE) {
            a.fail(
                Check::OneEntry,
                format!("saga {saga} was both committed and released"),
            );
        }
        if (has(ops::COMMIT) || has(ops::RELEASE)) && !has(ops::HOLD) {
            a.fail(
                Check::OneEntry,
                format!("saga {saga} was committed or released without a hold"),
            );
        }
        if has(ops::DEPOSIT) && saga_ops.len() > 1 {
            a.fail(
                Check::OneEntry,
                format!("deposit id {saga} also has exchange entries"),
            );
        }
        let amounts: BTreeSet<_> = saga_ops.values().map(|(amount, _)| *amount).collect();
        let users: BTreeSet<_> = saga_ops.values().map(|(_, u)| u).collect();
        if amounts.len() > 1 || users.len() > 1 {
            a.fail(
                Check::OneEntry,
                format!("saga {saga}'s entries disagree on amount or user: {saga_ops:?}"),
            );
        }
    }

    // Replay versus records.
    for (account, balance) in &replay {
        if account != EXTERNAL_ACCOUNT && *balance < Decimal::ZERO {
            a.fail(
                Check::NoNegative,
                format!("the journal leaves {account} at {balance} KRW"),
            );
        }
    }
    let replayed = |name: &str| replay.get(name).copied().unwrap_or_default();
    let mut journal_users: BTreeSet<String> = replay
        .keys()
        .filter_map(|k| k.strip_prefix("user:"))
        .filter_map(|k| k.rsplit_once(':').map(|(u, _)| u.to_owned()))
        .collect();
    for (user, acct) in &accounts {
        journal_users.remove(user);
        let Ok(uid) = UserId::parse(user) else {
            a.fail(
                Check::Readable,
                format!("account key acct:{user} is not a user id"),
            );
            continue;
        };
        for (what, recorded, journal) in [
            (
                "available",
                acct.available,
                replayed(&available_account(&uid)),
            ),
            ("held", acct.held, replayed(&held_account(&uid))),
        ] {
            if recorded != journal {
                a.fail(
                    Check::Journal,
                    format!(
                        "acct:{user} records {recorded} KRW {what}, the journal gives {journal} KRW"
                    ),
                );
            }
        }
    }
    for user in journal_users {
        a.fail(
            Check::Journal,
            format!("the journal moves KRW for {user}, who has no account record"),
        );
    }
    if replayed(HOUSE_ACCOUNT) != house {
        a.fail(
            Check::Journal,
            format!(
                "the house records {house} KRW, the journal gives {} KRW",
                replayed(HOUSE_ACCOUNT)
            ),
        );
    }
    // `external` only ever gives, so its balance is minus everything deposited.
    let journal_deposits = Decimal::ZERO
        .checked_sub(replayed(EXTERNAL_ACCOUNT))
        .unwrap_or_default();
    if journal_deposits != deposits {
        a.fail(
            Check::Journal,
            format!("totals record {deposits} KRW of deposits, the journal {journal_deposits} KRW"),
        );
    }

    // Saga records versus journal, expiry index and held balances.
    let mut index: BTreeMap<SagaId, BTreeSet<String>> = BTreeMap::new();
    for (key, _) in store.scan::<serde_json::Value>(EXPIRY_PREFIX)? {
        match parse_expiry_key(&key) {
            Some((_, saga)) => {
                index.entry(saga).or_default().insert(key);
            }
            None => a.fail(Check::Holds, format!("{key} is not an expiry index key")),
        }
    }
    let mut open_by_user: BTreeMap<String, Decimal> = BTreeMap::new();
    for item in store.scan_iter::<serde_json::Value>(SAGA_PREFIX) {
        let (key, value) = item?;
        a.totals.sagas += 1;
        let Ok(saga_id) = SagaId::parse(&key[SAGA_PREFIX.len()..]) else {
            a.fail(Check::Readable, format!("{key} does not name a saga id"));
            continue;
        };
        let Some(rec) = decode::<SagaRecord>(&mut a, &key, value) else {
            continue;
        };
        let saga_ops = by_saga.remove(&saga_id).unwrap_or_default();
        let found: BTreeSet<&str> = saga_ops.keys().map(String::as_str).collect();
        let expected: BTreeSet<&str> = match rec.status {
            SagaStatus::NoRequest | SagaStatus::Rejected { .. } => BTreeSet::new(),
            SagaStatus::Held => [ops::HOLD].into(),
            SagaStatus::Committed => [ops::HOLD, ops::COMMIT].into(),
            SagaStatus::Released { .. } => [ops::HOLD, ops::RELEASE].into(),
        };
        if found != expected {
            a.fail(
                Check::Holds,
                format!(
                    "saga {saga_id} is {:?} but its journal has {found:?} (expected {expected:?})",
                    rec.status
                ),
            );
        }
        if let (Some(amount), Some((journaled, _))) = (rec.hold_amount(), saga_ops.get(ops::HOLD)) {
            if amount.amount() != *journaled {
                a.fail(
                    Check::Holds,
                    format!(
                        "saga {saga_id} holds {amount} KRW but the journal held {journaled} KRW"
                    ),
                );
            }
        }
        let want: BTreeSet<String> = rec.expiry_index_key(saga_id).into_iter().collect();
        let have = index.remove(&saga_id).unwrap_or_default();
        if want != have {
            a.fail(
                Check::Holds,
                format!(
                    "saga {saga_id} ({:?}, pinned {}) needs expiry index {want:?} but has {have:?}",
                    rec.status, rec.pinned
                ),
            );
        }
        if rec.status == SagaStatus::Held {
            a.totals.open_holds += 1;
            if let Some(amount) = rec.hold_amount() {
                let sum = open_by_user.entry(rec.user.to_string()).or_default();
                *sum = add(*sum, amount.amount());
            }
        }
    }
    for (saga, keys) in index {
        a.fail(
            Check::Holds,
            format!("expiry index {keys:?} points at saga {saga}, which has no record"),
        );
    }
    for (user, acct) in &accounts {
        let open = open_by_user.remove(user).unwrap_or_default();
        if acct.held != open {
            a.fail(
                Check::Holds,
                format!(
                    "acct:{user} holds {} KRW but its open holds sum to {open} KRW",
                    acct.held
                ),
            );
        }
    }
    for (user, open) in open_by_user {
        a.fail(
            Check::Holds,
            format!("{user} has open holds of {open} KRW but no account record"),
        );
    }

    // Whatever is left in by_saga has no saga record: only deposits may be like that.
    let mut deposit_records = BTreeMap::new();
    for (key, value) in store.scan::<serde_json::Value>(DEPOSIT_PREFIX)? {
        let Ok(id) = SagaId::parse(&key[DEPOSIT_PREFIX.len()..]) else {
            a.fail(Check::Readable, format!("{key} does not name a deposit id"));
            continue;
        };
        if let Some(rec) = decode::<DepositRecord>(&mut a, &key, value) {
            deposit_records.insert(id, rec);
        }
    }
    for (id, saga_ops) in by_saga {
        match (saga_ops.get(ops::DEPOSIT), deposit_records.remove(&id)) {
            (Some((amount, user)), Some(rec)) => {
                if rec.krw_amount.amount() != *amount || user.as_deref() != Some(rec.user.as_str())
                {
                    a.fail(
                        Check::Deposits,
                        format!(
                            "deposit {id} records {} KRW to {}, the journal {amount} KRW to {}",
                            rec.krw_amount,
                            rec.user,
                            user.as_deref().unwrap_or("?")
                        ),
                    );
                }
            }
            (Some(_), None) => a.fail(
                Check::Deposits,
                format!("journal has deposit {id} but there is no dep:{id} record"),
            ),
            (None, _) => a.fail(
                Check::Holds,
                format!(
                    "journal has {:?} for saga {id}, which has no saga record",
                    saga_ops.keys().collect::<Vec<_>>()
                ),
            ),
        }
    }
    for id in deposit_records.keys() {
        a.fail(
            Check::Deposits,
            format!("dep:{id} has no journal entry; the deposit never reached a balance"),
        );
    }

    a.ok = a.failures.is_empty();
    Ok(a)
}

/// The user an entry moves money for, if its accounts are what its op should move between.
fn journal_user(e: &runtime::JournalEntry) -> Option<String> {
    let user_of = |account: &str, side: &str| {
        account
            .strip_prefix("user:")?
            .strip_suffix(side)
            .map(str::to_owned)
    };
    let (user, other) = match e.op.as_str() {
        ops::DEPOSIT if e.debit == EXTERNAL_ACCOUNT => (user_of(&e.credit, ":available")?, None),
        ops::HOLD => (
            user_of(&e.debit, ":available")?,
            Some(user_of(&e.credit, ":held")?),
        ),
        ops::COMMIT if e.credit == HOUSE_ACCOUNT => (user_of(&e.debit, ":held")?, None),
        ops::RELEASE => (
            user_of(&e.debit, ":held")?,
            Some(user_of(&e.credit, ":available")?),
        ),
        _ => return None,
    };
    match other {
        Some(o) if o != user => None,
        _ => Some(user),
    }
}

fn decode<T: DeserializeOwned>(a: &mut KrwAudit, key: &str, value: serde_json::Value) -> Option<T> {
    match serde_json::from_value(value) {
        Ok(t) => Some(t),
        Err(e) => {
            a.fail(Check::Readable, format!("{key} does not decode: {e}"));
            None
        }
    }
}

fn read_single<T: DeserializeOwned>(
    a: &mut KrwAudit,
    store: &Store,
    key: &str,
) -> runtime::Result<Option<T>> {
    Ok(match store.get::<serde_json::Value>(key)? {
        Some(v) => decode(a, key, v),
        None => None,
    })
}
