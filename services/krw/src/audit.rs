//! The KRW audit: checks the money invariants 1, 2 and 4 (ARCHITECTURE.md) against fx-krw's own
//! store, and that records, journal and expiry index tell the same story. Every failure is a
//! sentence an operator can act on, starting with the name of the check it failed.
//!
//! The audit is a few named steps over the shared journal replay (`runtime::ledger`):
//! `read_balances` (the balances as recorded), `check_conservation` (invariant 1),
//! `read_expiry_index`, `walk_sagas` (the journal into the replay, each saga's operations
//! and its saga and deposit records, one saga at a time), `check_replay` (the replay against
//! the balances) and `check_holds` (held balances against open holds). Each step writes its
//! sentences into its own `Section`, and the report reads in the order of the sections.

use std::collections::{BTreeMap, BTreeSet};

use events::{SagaId, UserId};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use runtime::ledger::{self, saturating_add, AuditReport, Currency, Line, Op, Replay};
use runtime::{ReadRecords, Store};

use crate::records::{
    parse_expiry_key, saga_key, DepositRecord, SagaRecord, SagaStatus, ACCOUNT_PREFIX,
    DEPOSIT_PREFIX, EXPIRY_PREFIX, HOUSE_KEY, SAGA_PREFIX, TOTALS_KEY,
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
}

/// fx-krw's own figures in its audit report: what it summed, and one boolean per check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KrwFigures {
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
}

/// The result of [`audit`]: the shared report shape with fx-krw's figures.
pub type KrwAudit = AuditReport<KrwFigures>;

/// The operations fx-krw journals.
pub const KRW_OPS: &[Op] = &[Op::Deposit, Op::Hold, Op::Commit, Op::Release];

/// The checks, each with its flag in [`KrwFigures`] and the name its sentences start with.
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

/// Where a sentence goes in the report, in report order.
#[derive(Clone, Copy)]
enum Section {
    /// The balances as recorded, and conservation.
    Balances,
    /// Each journal entry (the shared replay's sentences, and duplicates).
    Entries,
    /// Each saga's set of operations.
    Ops,
    /// The replay against the balances.
    Replay,
    /// The expiry index's keys.
    Index,
    /// Saga records against journal and index.
    Sagas,
    /// Index entries of no saga, held balances against open holds.
    Holds,
    /// Deposit records that do not read.
    DepositRecords,
    /// Journal entries without a saga or deposit record.
    Orphans,
    /// Deposit records without a journal entry.
    Deposits,
}

const SECTIONS: usize = Section::Deposits as usize + 1;

/// The report being written: the figures, and the sentences per section.
struct Audit {
    figures: KrwFigures,
    sections: [Vec<String>; SECTIONS],
}

impl Audit {
    fn new() -> Audit {
        Audit {
            figures: KrwFigures {
                conservation: true,
                no_negative_balance: true,
                journal_matches_balances: true,
                one_entry_per_saga_op: true,
                holds_consistent: true,
                deposits_consistent: true,
                records_readable: true,
                ..KrwFigures::default()
            },
            sections: Default::default(),
        }
    }

    /// Records a failed check: its flag goes false, the sentence into `section`.
    fn fail(&mut self, section: Section, check: Check, message: String) {
        let f = &mut self.figures;
        let (flag, name) = match check {
            Check::Conservation => (&mut f.conservation, "conservation"),
            Check::NoNegative => (&mut f.no_negative_balance, "no negative balance"),
            Check::Journal => (&mut f.journal_matches_balances, "journal replay"),
            Check::OneEntry => (&mut f.one_entry_per_saga_op, "one entry per saga and op"),
            Check::Holds => (&mut f.holds_consistent, "holds"),
            Check::Deposits => (&mut f.deposits_consistent, "deposits"),
            Check::Readable => (&mut f.records_readable, "records"),
        };
        *flag = false;
        self.sections[section as usize].push(format!("{name}: {message}"));
    }

    /// Decodes a record, or says it does not decode.
    fn decode<T: DeserializeOwned>(
        &mut self,
        section: Section,
        key: &str,
        value: serde_json::Value,
    ) -> Option<T> {
        match serde_json::from_value(value) {
            Ok(t) => Some(t),
            Err(e) => {
                self.fail(
                    section,
                    Check::Readable,
                    format!("{key} does not decode: {e}"),
                );
                None
            }
        }
    }

    fn finish(self, journal: ledger::JournalCounts) -> KrwAudit {
        AuditReport::new(journal, self.figures, self.sections.concat())
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

/// Balances as recorded, per user (the key's text after `acct:`): bounded by the number of
/// users (a few hundred in the benchmark), not of sagas.
type Accounts = BTreeMap<String, LooseAccount>;

/// One saga's journal operations: op -> (amount, user).
type SagaOps = BTreeMap<Op, (Decimal, Option<UserId>)>;

/// Reads the whole KRW store and checks it. Fails (`Err`) only when the store cannot be read;
/// a record that does not decode, or a journal entry with a name the ledger does not know, is
/// a failure in the report, not an error. A journal entry that is not an entry's JSON at all is
/// an error, since nothing can be replayed around it.
pub fn audit(store: &Store) -> runtime::Result<KrwAudit> {
    audit_with_progress(store, &runtime::admin::Progress::default())
}

/// [`audit`], counting each saga checked on `progress` (the admin endpoint reports it while a
/// long audit runs).
pub fn audit_with_progress(
    store: &Store,
    progress: &runtime::admin::Progress,
) -> runtime::Result<KrwAudit> {
    let mut a = Audit::new();
    let accounts = read_balances(&mut a, store)?;
    check_conservation(&mut a);
    let mut stray_index = read_expiry_index(&mut a, store)?;
    let (replay, open_by_user) = walk_sagas(&mut a, store, progress, &mut stray_index)?;
    check_replay(&mut a, &replay, &accounts);
    check_holds(&mut a, &accounts, stray_index, open_by_user);
    Ok(a.finish(replay.counts().clone()))
}

/// The user accounts, the house and the totals as recorded, into the figures; a negative or
/// unreadable balance is a failure.
fn read_balances(a: &mut Audit, store: &Store) -> runtime::Result<Accounts> {
    let mut accounts = Accounts::new();
    for item in store.scan_iter::<serde_json::Value>(ACCOUNT_PREFIX) {
        let (key, value) = item?;
        let user = key[ACCOUNT_PREFIX.len()..].to_owned();
        let Some(acct) = a.decode::<LooseAccount>(Section::Balances, &key, value.clone()) else {
            continue;
        };
        // The strict form refuses negatives; report those under their own check.
        if acct.available < Decimal::ZERO || acct.held < Decimal::ZERO {
            a.fail(
                Section::Balances,
                Check::NoNegative,
                format!(
                    "{key} has available {} KRW and held {} KRW; balances are never negative",
                    acct.available, acct.held
                ),
            );
        } else {
            a.decode::<crate::Account>(Section::Balances, &key, value);
        }
        let t = &mut a.figures.totals;
        t.available = saturating_add(t.available, acct.available);
        t.held = saturating_add(t.held, acct.held);
        accounts.insert(user, acct);
    }
    a.figures.totals.accounts = accounts.len();
    let house = read_single::<LooseHouse>(a, store, HOUSE_KEY)?.map_or(Decimal::ZERO, |h| h.krw);
    let deposits =
        read_single::<LooseTotals>(a, store, TOTALS_KEY)?.map_or(Decimal::ZERO, |t| t.deposits);
    a.figures.totals.house = house;
    a.figures.totals.deposits = deposits;
    if house < Decimal::ZERO {
        a.fail(
            Section::Balances,
            Check::NoNegative,
            format!("the house has {house} KRW"),
        );
    }
    Ok(accounts)
}

/// Invariant 1: Σ available + Σ held + house == Σ deposits.
fn check_conservation(a: &mut Audit) {
    let t = &a.figures.totals;
    let sum = saturating_add(saturating_add(t.available, t.held), t.house);
    if sum != t.deposits {
        let message = format!(
            "available {} + held {} + house {} = {sum} KRW, but deposits total {} KRW (off by \
             {} KRW); the records created or lost money",
            t.available,
            t.held,
            t.house,
            t.deposits,
            sum.checked_sub(t.deposits).unwrap_or_default()
        );
        a.fail(Section::Balances, Check::Conservation, message);
    }
}

/// The expiry index, checked against saga records by lookups. Returns the entries that are not
/// what their saga's record wants (none in a sound store), per saga, to be reported with that
/// saga or as pointing at no record.
fn read_expiry_index(
    a: &mut Audit,
    store: &Store,
) -> runtime::Result<BTreeMap<SagaId, BTreeSet<String>>> {
    let mut stray: BTreeMap<SagaId, BTreeSet<String>> = BTreeMap::new();
    for item in store.scan_iter::<serde_json::Value>(EXPIRY_PREFIX) {
        let (key, _) = item?;
        let Some((_, saga)) = parse_expiry_key(&key) else {
            a.fail(
                Section::Index,
                Check::Holds,
                format!("{key} is not an expiry index key"),
            );
            continue;
        };
        let wanted = store
            .get::<serde_json::Value>(&saga_key(saga))?
            .and_then(|v| serde_json::from_value::<SagaRecord>(v).ok())
            .and_then(|rec| rec.expiry_index_key(saga));
        if wanted.as_ref() != Some(&key) {
            stray.entry(saga).or_default().insert(key);
        }
    }
    Ok(stray)
}

/// One walk (`Store::by_saga`) over three streams sorted by saga id: the journal (in the order
/// of its own keys `<saga_id>:<op>`, so one saga's entries are adjacent) into the shared
/// replay, the saga records `saga:<id>` and the deposit records `dep:<id>`. Only the current
/// saga's operations are held; the replay is per journal account and the open holds per user,
/// so both are bounded by users, not sagas. Returns the replay and Σ open holds per user.
fn walk_sagas(
    a: &mut Audit,
    store: &Store,
    progress: &runtime::admin::Progress,
    stray_index: &mut BTreeMap<SagaId, BTreeSet<String>>,
) -> runtime::Result<(Replay, BTreeMap<String, Decimal>)> {
    let mut replay = Replay::new(KRW_OPS);
    let mut open_by_user: BTreeMap<String, Decimal> = BTreeMap::new();
    for group in store.by_saga::<SagaId, serde_json::Value, 2>([SAGA_PREFIX, DEPOSIT_PREFIX])? {
        progress.add(1);
        let group = group?;
        let [saga_record, deposit_record] = group.records;
        let Some(saga) = group.saga else {
            // A record whose key names no saga, reported where its key sorts.
            if let Some((key, _)) = saga_record {
                a.figures.totals.sagas += 1;
                a.fail(
                    Section::Sagas,
                    Check::Readable,
                    format!("{key} does not name a saga id"),
                );
            }
            if let Some((key, _)) = deposit_record {
                a.fail(
                    Section::DepositRecords,
                    Check::Readable,
                    format!("{key} does not name a deposit id"),
                );
            }
            continue;
        };
        let journaled = !group.entries.is_empty();
        let saga_ops = read_saga_entries(a, &mut replay, group.entries);
        if journaled {
            check_saga_ops(a, saga, &saga_ops);
        }

        // Its saga record, against the journal, the expiry index and the held balances.
        let mut recorded = false;
        if let Some((key, value)) = saga_record {
            a.figures.totals.sagas += 1;
            if let Some(rec) = a.decode::<SagaRecord>(Section::Sagas, &key, value) {
                recorded = true;
                let stray = stray_index.remove(&saga).unwrap_or_default();
                check_saga_record(a, store, saga, &rec, &saga_ops, stray)?;
                if rec.status == SagaStatus::Held {
                    a.figures.totals.open_holds += 1;
                    if let Some(amount) = rec.hold_amount() {
                        let sum = open_by_user.entry(rec.user.to_string()).or_default();
                        *sum = saturating_add(*sum, amount.amount());
                    }
                }
            }
        }

        // Its deposit record. Journal entries without a saga record must be a deposit.
        let mut deposit = None;
        if let Some((key, value)) = deposit_record {
            deposit = a.decode::<DepositRecord>(Section::DepositRecords, &key, value);
        }
        if journaled && !recorded {
            check_orphan(a, saga, &saga_ops, deposit.take());
        }
        if deposit.is_some() {
            a.fail(
                Section::Deposits,
                Check::Deposits,
                format!("dep:{saga} has no journal entry; the deposit never reached a balance"),
            );
        }
    }
    Ok((replay, open_by_user))
}

/// One saga's journal entries into the replay, and its operations. The journal is keyed by
/// (saga, op), so a second entry claiming the same pair is one whose stored key does not match
/// its content.
fn read_saga_entries(a: &mut Audit, replay: &mut Replay, lines: Vec<Line>) -> SagaOps {
    let mut saga_ops = SagaOps::new();
    for line in lines {
        let read = replay.read(line);
        // What the replay found wrong with the entry (unreadable, not fx-krw's, ill-formed).
        for words in replay.take_failures() {
            a.fail(Section::Entries, Check::OneEntry, words);
        }
        let Some((e, user)) = read else {
            continue;
        };
        if saga_ops.insert(e.op, (e.amount, user)).is_some() {
            a.fail(
                Section::Entries,
                Check::OneEntry,
                format!(
                    "two journal entries claim {}; an effect happened twice",
                    e.key()
                ),
            );
        }
    }
    saga_ops
}

/// The names of a saga's operations, for sentences.
fn op_names(saga_ops: &SagaOps) -> Vec<&'static str> {
    saga_ops.keys().map(|op| op.as_str()).collect()
}

/// Invariant 4 for one saga's journal operations.
fn check_saga_ops(a: &mut Audit, saga: SagaId, saga_ops: &SagaOps) {
    let has = |op: Op| saga_ops.contains_key(&op);
    let mut fail = |message: String| a.fail(Section::Ops, Check::OneEntry, message);
    if has(Op::Commit) && has(Op::Release) {
        fail(format!("saga {saga} was both committed and released"));
    }
    if (has(Op::Commit) || has(Op::Release)) && !has(Op::Hold) {
        fail(format!(
            "saga {saga} was committed or released without a hold"
        ));
    }
    if has(Op::Deposit) && saga_ops.len() > 1 {
        fail(format!("deposit id {saga} also has exchange entries"));
    }
    let amounts: BTreeSet<_> = saga_ops.values().map(|(amount, _)| *amount).collect();
    let users: BTreeSet<_> = saga_ops.values().map(|(_, u)| u).collect();
    if amounts.len() > 1 || users.len() > 1 {
        let described: Vec<String> = saga_ops
            .iter()
            .map(|(op, (amount, user))| {
                let user = user.as_ref().map_or("?".into(), |u| u.to_string());
                format!("{op} {amount} KRW of {user}")
            })
            .collect();
        fail(format!(
            "saga {saga}'s entries disagree on amount or user: {}",
            described.join(", ")
        ));
    }
}

/// One saga record against its journal operations and the expiry index. `stray` are the index
/// keys naming this saga that its record does not want.
fn check_saga_record(
    a: &mut Audit,
    store: &Store,
    saga_id: SagaId,
    rec: &SagaRecord,
    saga_ops: &SagaOps,
    stray: BTreeSet<String>,
) -> runtime::Result<()> {
    let found: BTreeSet<&str> = op_names(saga_ops).into_iter().collect();
    let expected: BTreeSet<&str> = match rec.status {
        SagaStatus::NoRequest | SagaStatus::Rejected { .. } => BTreeSet::new(),
        SagaStatus::Held => ["hold"].into(),
        SagaStatus::Committed => ["hold", "commit"].into(),
        SagaStatus::Released { .. } => ["hold", "release"].into(),
    };
    if found != expected {
        a.fail(
            Section::Sagas,
            Check::Holds,
            format!(
                "saga {saga_id} is {:?} but its journal has {found:?} (expected {expected:?})",
                rec.status
            ),
        );
    }
    if let (Some(amount), Some((journaled, _))) = (rec.hold_amount(), saga_ops.get(&Op::Hold)) {
        if amount.amount() != *journaled {
            a.fail(
                Section::Sagas,
                Check::Holds,
                format!("saga {saga_id} holds {amount} KRW but the journal held {journaled} KRW"),
            );
        }
    }
    let want: BTreeSet<String> = rec.expiry_index_key(saga_id).into_iter().collect();
    // The index keys naming this saga: the one the record wants, if present, and the strays.
    let mut have = stray;
    for key in &want {
        if store.read_raw(key)?.is_some() {
            have.insert(key.clone());
        }
    }
    if want != have {
        a.fail(
            Section::Sagas,
            Check::Holds,
            format!(
                "saga {saga_id} ({:?}, pinned {}) needs expiry index {want:?} but has {have:?}",
                rec.status, rec.pinned
            ),
        );
    }
    Ok(())
}

/// Journal entries of a saga without a saga record: they must be a deposit, with its record.
fn check_orphan(a: &mut Audit, saga: SagaId, saga_ops: &SagaOps, deposit: Option<DepositRecord>) {
    match (saga_ops.get(&Op::Deposit), deposit) {
        (Some((amount, user)), Some(rec)) => {
            if rec.krw_amount.amount() != *amount || user.as_ref() != Some(&rec.user) {
                a.fail(
                    Section::Orphans,
                    Check::Deposits,
                    format!(
                        "deposit {saga} records {} KRW to {}, the journal {amount} KRW to {}",
                        rec.krw_amount,
                        rec.user,
                        user.as_ref().map_or("?".into(), |u| u.to_string())
                    ),
                );
            }
        }
        (Some(_), None) => a.fail(
            Section::Orphans,
            Check::Deposits,
            format!("journal has deposit {saga} but there is no dep:{saga} record"),
        ),
        (None, _) => a.fail(
            Section::Orphans,
            Check::Holds,
            format!(
                "journal has {:?} for saga {saga}, which has no saga record",
                op_names(saga_ops)
            ),
        ),
    }
}

/// The replay against the balances as recorded: each user's available and held, the house,
/// and `external`, which only ever gives, so its balance is minus everything deposited.
fn check_replay(a: &mut Audit, replay: &Replay, accounts: &Accounts) {
    for words in replay.negative_balances() {
        a.fail(Section::Replay, Check::NoNegative, words);
    }
    let replayed = |account: &ledger::Account| replay.balance(Currency::Krw, account);
    let mut journal_users: BTreeSet<String> =
        replay.users().into_iter().map(|u| u.to_string()).collect();
    for (user, acct) in accounts {
        journal_users.remove(user);
        let Ok(uid) = UserId::parse(user) else {
            a.fail(
                Section::Replay,
                Check::Readable,
                format!("account key acct:{user} is not a user id"),
            );
            continue;
        };
        for (what, recorded, journal) in [
            (
                "available",
                acct.available,
                replayed(&ledger::Account::Available(uid.clone())),
            ),
            ("held", acct.held, replayed(&ledger::Account::Held(uid))),
        ] {
            if recorded != journal {
                a.fail(
                    Section::Replay,
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
            Section::Replay,
            Check::Journal,
            format!("the journal moves KRW for {user}, who has no account record"),
        );
    }
    let t = &a.figures.totals;
    let (house, deposits) = (t.house, t.deposits);
    let journal_house = replayed(&ledger::Account::House);
    if journal_house != house {
        a.fail(
            Section::Replay,
            Check::Journal,
            format!("the house records {house} KRW, the journal gives {journal_house} KRW"),
        );
    }
    let journal_deposits = Decimal::ZERO
        .checked_sub(replayed(&ledger::Account::External))
        .unwrap_or_default();
    if journal_deposits != deposits {
        a.fail(
            Section::Replay,
            Check::Journal,
            format!("totals record {deposits} KRW of deposits, the journal {journal_deposits} KRW"),
        );
    }
}

/// Index entries that point at no saga record, and each account's held balance against the
/// sum of its open holds.
fn check_holds(
    a: &mut Audit,
    accounts: &Accounts,
    stray_index: BTreeMap<SagaId, BTreeSet<String>>,
    mut open_by_user: BTreeMap<String, Decimal>,
) {
    for (saga, keys) in stray_index {
        a.fail(
            Section::Holds,
            Check::Holds,
            format!("expiry index {keys:?} points at saga {saga}, which has no record"),
        );
    }
    for (user, acct) in accounts {
        let open = open_by_user.remove(user).unwrap_or_default();
        if acct.held != open {
            a.fail(
                Section::Holds,
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
            Section::Holds,
            Check::Holds,
            format!("{user} has open holds of {open} KRW but no account record"),
        );
    }
}

fn read_single<T: DeserializeOwned>(
    a: &mut Audit,
    store: &Store,
    key: &str,
) -> runtime::Result<Option<T>> {
    Ok(match store.get::<serde_json::Value>(key)? {
        Some(v) => a.decode(Section::Balances, key, v),
        None => None,
    })
}

#[cfg(test)]
mod tests {
    use events::{Event, ExchangeRequested, Krw, SagaId, Usd, UsdCredited, UserId};
    use runtime::{Participant, Records, Store};

    use crate::records::{deposit_key, expiry_key, saga_key};
    use crate::{audit, deposit, KrwConfig, KrwService};

    const T0: u64 = 1_800_000_000_000;

    fn sid(n: u128) -> SagaId {
        SagaId::from(uuid::Uuid::from_u128(n))
    }

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn krw(s: &str) -> Krw {
        Krw::parse(s).unwrap()
    }

    /// Alice deposited (id 100), committed saga 1 and holds saga 7 (open, unpinned).
    fn store() -> Store {
        let store = Store::temporary().unwrap();
        let svc = KrwService::new(KrwConfig::default());
        store
            .transact(|tx| deposit(tx, sid(100), &user("alice"), krw("5000000"), "ops", T0))
            .unwrap();
        let handle = |e: &Event| {
            store.transact(|tx| svc.handle(tx, e, &(), T0)).unwrap();
        };
        let request = |n: u128, amount: &str| {
            Event::ExchangeRequested(ExchangeRequested {
                saga_id: sid(n),
                user_id: user("alice"),
                krw_amount: krw(amount),
                min_usd_amount: None,
            })
        };
        handle(&request(1, "1000000"));
        handle(&Event::UsdCredited(UsdCredited {
            saga_id: sid(1),
            user_id: user("alice"),
            usd_amount: Usd::parse("714.28").unwrap(),
        }));
        handle(&request(7, "100000"));
        let report = audit(&store).unwrap();
        assert!(report.ok, "{:#?}", report.failures);
        store
    }

    fn failures(store: &Store) -> Vec<String> {
        let report = audit(store).unwrap();
        assert!(!report.ok);
        report.failures
    }

    #[test]
    fn the_expiry_index_must_be_exactly_the_open_unpinned_holds() {
        // A missing index entry.
        let s = store();
        let key = expiry_key(T0 + 30_000, sid(7));
        assert!(s.get::<serde_json::Value>(&key).unwrap().is_some(), "{key}");
        s.transact(|tx| tx.remove(&key)).unwrap();
        assert_eq!(
            failures(&s),
            [format!(
                "holds: saga {} (Held, pinned false) needs expiry index {{\"{key}\"}} but has {{}}",
                sid(7)
            )]
        );

        // Entries for a committed saga, a second one for the open hold, one for no saga, and
        // one that is not an index key.
        let s = store();
        s.transact(|tx| {
            tx.put_raw(&expiry_key(5, sid(1)), b"null".to_vec())?;
            tx.put_raw(&expiry_key(5, sid(7)), b"null".to_vec())?;
            tx.put_raw(&expiry_key(6, sid(99)), b"null".to_vec())?;
            tx.put_raw("exp:bad", b"null".to_vec())
        })
        .unwrap();
        assert_eq!(
            failures(&s),
            [
                "holds: exp:bad is not an expiry index key".to_owned(),
                format!(
                    "holds: saga {} (Committed, pinned false) needs expiry index {{}} but has {{\"{}\"}}",
                    sid(1),
                    expiry_key(5, sid(1))
                ),
                format!(
                    "holds: saga {} (Held, pinned false) needs expiry index {{\"{key}\"}} but has {{\"{}\", \"{key}\"}}",
                    sid(7),
                    expiry_key(5, sid(7))
                ),
                format!(
                    "holds: expiry index {{\"{}\"}} points at saga {}, which has no record",
                    expiry_key(6, sid(99)),
                    sid(99)
                ),
            ]
        );
    }

    #[test]
    fn journal_entries_and_deposits_need_their_records() {
        // An open hold's saga record is lost: its index entry, its held balance and its journal
        // entry point at nothing.
        let s = store();
        s.transact(|tx| tx.remove(&saga_key(sid(7)))).unwrap();
        let key = expiry_key(T0 + 30_000, sid(7));
        assert_eq!(
            failures(&s),
            [
                format!(
                    "holds: expiry index {{\"{key}\"}} points at saga {}, which has no record",
                    sid(7)
                ),
                "holds: acct:alice holds 100000 KRW but its open holds sum to 0 KRW".to_owned(),
                format!(
                    "holds: journal has [\"hold\"] for saga {}, which has no saga record",
                    sid(7)
                ),
            ]
        );

        // A deposit record without its journal entry, one that does not decode, and a journal
        // deposit without its record.
        let s = store();
        let dep: serde_json::Value = s.get(&deposit_key(sid(100))).unwrap().unwrap();
        s.transact(|tx| {
            tx.put(&deposit_key(sid(55)), &dep)?;
            tx.put_raw(&deposit_key(sid(56)), b"{}".to_vec())?;
            tx.remove(&deposit_key(sid(100)))
        })
        .unwrap();
        let words = failures(&s);
        assert_eq!(words.len(), 3, "{words:#?}");
        assert!(words[0].starts_with(&format!("records: dep:{} does not decode", sid(56))));
        assert_eq!(
            words[1..],
            [
                format!(
                    "deposits: journal has deposit {} but there is no dep:{} record",
                    sid(100),
                    sid(100)
                ),
                format!(
                    "deposits: dep:{} has no journal entry; the deposit never reached a balance",
                    sid(55)
                ),
            ]
        );
    }
}
