//! The ledger every service journals into, typed: [`Currency`], [`Account`] and [`Op`], each
//! written as the exact strings the journal has always held (`KRW`, `user:alice:available`,
//! `fx_pnl`, ...), so every stored entry reads unchanged and the admin interface's JSON keeps
//! its strings.
//!
//! Also what the three audits share: [`Line`], a stored entry read leniently (one that does not
//! read as a typed entry becomes a failure sentence, not an error that hides the rest), the
//! [`Replay`] of a journal into balances per account and currency (checked arithmetic, per-op
//! counts, each entry's shape checked against its op), and the report shape [`AuditReport`]
//! every audit answers with. Each service adds only its domain checks (records against the
//! journal) on top.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use events::{SagaId, UserId};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::JournalEntry;

/// Why a journal string is not a currency, an account or an op.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} {text:?} is not one the ledger knows")]
pub struct UnknownName {
    /// `currency`, `account` or `op`.
    pub what: &'static str,
    /// The text found.
    pub text: String,
}

/// Display, FromStr and serde as the string, for a type with a fixed table of names.
macro_rules! named {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The journal's string for it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, UnknownName> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    _ => Err(UnknownName { what: $what, text: s.to_owned() }),
                }
            }
        }

        string_serde!($ty);
    };
}

/// serde as the type's Display / FromStr string.
macro_rules! string_serde {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<str>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A currency the exchange books.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Currency {
    /// Korean won, scale 0.
    Krw,
    /// US dollars, scale 2.
    Usd,
}

named!(Currency, "currency", { Krw => "KRW", Usd => "USD" });

/// An operation: what a journal entry records. The journal is keyed by (saga, op), so each op
/// happens at most once per saga (invariant 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// Money from outside: KRW `external` -> a user's available (fx-krw's admin deposit); USD
    /// `external` -> the house (the float) or a user (fx-usd's admin deposit).
    Deposit,
    /// fx-krw, TCC try: KRW available -> held, one user.
    Hold,
    /// fx-krw, TCC confirm: KRW held -> the house.
    Commit,
    /// fx-krw, TCC cancel (expiry, failure, operator): KRW held -> available, one user.
    Release,
    /// fx-trade: USD bought at the venue, `venue` -> `house`.
    Fill,
    /// fx-trade: a compensated fill's USD, `house` -> `position`.
    Cancel,
    /// fx-trade: the position sold back, USD `position` -> `venue`.
    Reverse,
    /// fx-trade: the reversal's FX gain (KRW `position` -> `fx_pnl`) or loss (the other way).
    FxPnl,
    /// fx-usd: USD the house -> a user, for a fill.
    Credit,
    /// fx-usd: USD a user -> the house, for a cancelled fill.
    Debit,
}

named!(Op, "op", {
    Deposit => "deposit",
    Hold => "hold",
    Commit => "commit",
    Release => "release",
    Fill => "fill",
    Cancel => "cancel",
    Reverse => "reverse",
    FxPnl => "fx_pnl",
    Credit => "credit",
    Debit => "debit",
});

/// A journal account.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Account {
    /// `external`: the outside world money is deposited from; it only gives, so its balance is
    /// minus everything deposited.
    External,
    /// `house`: fx-krw's committed KRW, fx-usd's float, fx-trade's USD bought for users.
    House,
    /// `venue`: fx-trade's counterparty, which sells USD for fills and buys the reversals.
    Venue,
    /// `position`: fx-trade's open USD of cancelled fills (and the KRW side of their P&L).
    Position,
    /// `fx_pnl`: fx-trade's FX gains and losses on reversals, KRW.
    FxPnl,
    /// `user:<id>:available`: a user's spendable KRW (fx-krw).
    Available(UserId),
    /// `user:<id>:held`: a user's KRW held for open sagas (fx-krw).
    Held(UserId),
    /// `user:<id>`: a user's USD (fx-usd).
    User(UserId),
}

impl Account {
    /// The user whose money it is, if any.
    pub fn user(&self) -> Option<&UserId> {
        match self {
            Account::Available(u) | Account::Held(u) | Account::User(u) => Some(u),
            _ => None,
        }
    }

    /// Whether its balance in `currency` must stay at or above zero. The outside world
    /// (`external`, `venue`) only gives or only takes; fx-trade's KRW `position` and `fx_pnl`
    /// carry gains and losses of either sign.
    pub fn never_negative(&self, currency: Currency) -> bool {
        match self {
            Account::External | Account::Venue => false,
            Account::Position | Account::FxPnl => currency != Currency::Krw,
            _ => true,
        }
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Account::External => f.write_str("external"),
            Account::House => f.write_str("house"),
            Account::Venue => f.write_str("venue"),
            Account::Position => f.write_str("position"),
            Account::FxPnl => f.write_str("fx_pnl"),
            Account::Available(u) => write!(f, "user:{u}:available"),
            Account::Held(u) => write!(f, "user:{u}:held"),
            Account::User(u) => write!(f, "user:{u}"),
        }
    }
}

impl FromStr for Account {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, UnknownName> {
        let unknown = || UnknownName {
            what: "account",
            text: s.to_owned(),
        };
        Ok(match s {
            "external" => Account::External,
            "house" => Account::House,
            "venue" => Account::Venue,
            "position" => Account::Position,
            "fx_pnl" => Account::FxPnl,
            _ => {
                // A user id has no `:`, so the suffix after the id is unambiguous.
                let rest = s.strip_prefix("user:").ok_or_else(unknown)?;
                let (id, make): (&str, fn(UserId) -> Account) = match rest.split_once(':') {
                    None => (rest, Account::User),
                    Some((id, "available")) => (id, Account::Available),
                    Some((id, "held")) => (id, Account::Held),
                    Some(_) => return Err(unknown()),
                };
                make(UserId::parse(id).map_err(|_| unknown())?)
            }
        })
    }
}

string_serde!(Account);

impl JournalEntry {
    /// An entry without an actor: `amount` of `currency` leaves `debit` and enters `credit`.
    pub fn new(
        saga_id: SagaId,
        op: Op,
        currency: Currency,
        (debit, credit): (Account, Account),
        amount: Decimal,
        at_ms: u64,
    ) -> JournalEntry {
        JournalEntry {
            saga_id,
            op,
            currency,
            debit,
            credit,
            amount,
            at_ms,
            actor: None,
        }
    }

    /// The same entry, asked for by `actor` (admin operations).
    pub fn by(self, actor: impl Into<String>) -> JournalEntry {
        JournalEntry {
            actor: Some(actor.into()),
            ..self
        }
    }

    /// The user the entry moves money for, if its currency and accounts are what its op moves
    /// between (one user at most per entry); otherwise why not, as a sentence.
    pub fn shape(&self) -> Result<Option<&UserId>, String> {
        use Account as A;
        use Currency::{Krw, Usd};
        let shape = match (self.op, self.currency, &self.debit, &self.credit) {
            (Op::Deposit, Krw, A::External, A::Available(u)) => Some(Some(u)),
            (Op::Deposit, Usd, A::External, A::User(u)) => Some(Some(u)),
            (Op::Deposit, Usd, A::External, A::House) => Some(None),
            (Op::Hold, Krw, A::Available(u), A::Held(v)) if u == v => Some(Some(u)),
            (Op::Commit, Krw, A::Held(u), A::House) => Some(Some(u)),
            (Op::Release, Krw, A::Held(u), A::Available(v)) if u == v => Some(Some(u)),
            (Op::Fill, Usd, A::Venue, A::House) => Some(None),
            (Op::Cancel, Usd, A::House, A::Position) => Some(None),
            (Op::Reverse, Usd, A::Position, A::Venue) => Some(None),
            (Op::FxPnl, Krw, A::Position, A::FxPnl) | (Op::FxPnl, Krw, A::FxPnl, A::Position) => {
                Some(None)
            }
            (Op::Credit, Usd, A::House, A::User(u)) => Some(Some(u)),
            (Op::Debit, Usd, A::User(u), A::House) => Some(Some(u)),
            _ => None,
        };
        shape.ok_or_else(|| {
            format!(
                "journal {} moves {} {} from {} to {}, which is not what a {} does",
                self.key(),
                self.amount,
                self.currency,
                self.debit,
                self.credit,
                self.op
            )
        })
    }
}

/// One journal entry as stored, read leniently: its saga and op as written, and the typed
/// entry or, when a field is not one the ledger knows, why not. The store's audit walk yields
/// these, so one unknown op or account is a failure sentence and the walk goes on. A value that
/// is not an entry's JSON at all (or names no saga) stays an error, as it always was: nothing
/// can be said about where it belongs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The saga, as written.
    pub saga_id: SagaId,
    /// The op, as written.
    pub op: String,
    /// The entry, or why it does not read as one.
    pub entry: Result<JournalEntry, String>,
}

impl Line {
    /// The key the entry belongs under: `<saga_id>:<op>`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.saga_id, self.op)
    }
}

impl From<JournalEntry> for Line {
    fn from(e: JournalEntry) -> Line {
        Line {
            saga_id: e.saga_id,
            op: e.op.to_string(),
            entry: Ok(e),
        }
    }
}

/// The stored form with every name as text: what the journal held before the names were typed.
#[derive(Deserialize)]
struct StoredEntry {
    saga_id: SagaId,
    op: String,
    currency: String,
    debit: String,
    credit: String,
    #[serde(with = "rust_decimal::serde::str")]
    amount: Decimal,
    at_ms: u64,
    #[serde(default)]
    actor: Option<String>,
}

impl<'de> Deserialize<'de> for Line {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = StoredEntry::deserialize(d)?;
        let entry = (|| {
            Ok::<_, UnknownName>(JournalEntry {
                saga_id: s.saga_id,
                op: s.op.parse()?,
                currency: s.currency.parse()?,
                debit: s.debit.parse()?,
                credit: s.credit.parse()?,
                amount: s.amount,
                at_ms: s.at_ms,
                actor: s.actor,
            })
        })()
        .map_err(|e| format!("journal {}:{} does not read: {e}", s.saga_id, s.op));
        Ok(Line {
            saga_id: s.saga_id,
            op: s.op,
            entry,
        })
    }
}

/// What the shared walk counted in a journal, part of every audit report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalCounts {
    /// Entries read, including those that do not read as typed entries.
    pub entries: usize,
    /// Typed entries by op (`hold`, `fill`, `credit`, ...).
    pub by_op: BTreeMap<Op, usize>,
}

impl JournalCounts {
    /// How many entries of `op` were read.
    pub fn count(&self, op: Op) -> usize {
        self.by_op.get(&op).copied().unwrap_or_default()
    }
}

/// A journal replayed from zero: balances per account and currency, per-op counts, and what
/// could not be replayed, in words. Arithmetic is checked: an entry that would overflow a
/// balance is a failure and moves nothing.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    ops: &'static [Op],
    balances: BTreeMap<(Currency, Account), Decimal>,
    counts: JournalCounts,
    went_negative: Vec<String>,
    failures: Vec<String>,
}

impl Replay {
    /// A replay of a journal whose service journals `ops` (an entry of another op is a
    /// failure).
    pub fn new(ops: &'static [Op]) -> Replay {
        Replay {
            ops,
            ..Replay::default()
        }
    }

    /// Reads one stored line: counts it, checks it (it reads, its op is one of this journal's,
    /// its accounts are what its op moves between, its amount is positive) and applies it.
    /// Returns the typed entry, with the user it moves money for, unless it does not read.
    /// Failures go to [`Replay::take_failures`].
    pub fn read(&mut self, line: Line) -> Option<(JournalEntry, Option<UserId>)> {
        self.counts.entries += 1;
        let e = match line.entry {
            Ok(e) => e,
            Err(why) => {
                self.failures.push(why);
                return None;
            }
        };
        *self.counts.by_op.entry(e.op).or_default() += 1;
        if !self.ops.contains(&e.op) {
            let ops: Vec<&str> = self.ops.iter().map(|o| o.as_str()).collect();
            self.failures.push(format!(
                "journal {} is a {}; this service journals only {}",
                e.key(),
                e.op,
                ops.join(", ")
            ));
        }
        let user = match e.shape() {
            Ok(u) => u.cloned(),
            Err(why) => {
                self.failures.push(why);
                None
            }
        };
        if e.amount <= Decimal::ZERO {
            self.failures.push(format!(
                "journal {} has a non-positive amount {} {}",
                e.key(),
                e.amount,
                e.currency
            ));
        }
        if let Err(why) = self.apply(&e) {
            self.failures.push(why);
        }
        Some((e, user))
    }

    /// Applies one entry: `amount` leaves `debit` and enters `credit`. Nothing changes when
    /// either side would overflow. Remembers the first time an account that must never be
    /// negative went below zero (meaningful when entries come in commit order).
    pub fn apply(&mut self, e: &JournalEntry) -> Result<(), String> {
        let debit = self.balance(e.currency, &e.debit).checked_sub(e.amount);
        let credit = self.balance(e.currency, &e.credit).checked_add(e.amount);
        let (Some(debit), Some(credit)) = (debit, credit) else {
            return Err(format!(
                "journal {} overflows the replay of {} or {} ({} {})",
                e.key(),
                e.debit,
                e.credit,
                e.amount,
                e.currency
            ));
        };
        let was_negative = self.balance(e.currency, &e.debit) < Decimal::ZERO;
        self.balances.insert((e.currency, e.debit.clone()), debit);
        self.balances.insert((e.currency, e.credit.clone()), credit);
        if debit < Decimal::ZERO && !was_negative && e.debit.never_negative(e.currency) {
            self.went_negative.push(format!(
                "journal account {} went to {debit} {} at {} ({} of saga {})",
                e.debit,
                e.currency,
                e.key(),
                e.op,
                e.saga_id
            ));
        }
        Ok(())
    }

    /// The replayed balance of `account` in `currency` (zero if never moved).
    pub fn balance(&self, currency: Currency, account: &Account) -> Decimal {
        self.balances
            .get(&(currency, account.clone()))
            .copied()
            .unwrap_or_default()
    }

    /// Every account moved in `currency`, with its balance, in account order.
    pub fn balances(&self, currency: Currency) -> impl Iterator<Item = (&Account, Decimal)> {
        self.balances
            .iter()
            .filter(move |((c, _), _)| *c == currency)
            .map(|((_, a), b)| (a, *b))
    }

    /// The users with an account in the replay.
    pub fn users(&self) -> std::collections::BTreeSet<&UserId> {
        self.balances.keys().filter_map(|(_, a)| a.user()).collect()
    }

    /// Sentences for every account that must never be negative and ends below zero.
    pub fn negative_balances(&self) -> Vec<String> {
        self.balances
            .iter()
            .filter(|((c, a), b)| a.never_negative(*c) && **b < Decimal::ZERO)
            .map(|((c, a), b)| format!("the journal leaves {a} at {b} {c}"))
            .collect()
    }

    /// Sentences for each account that must never be negative and went below zero at some
    /// entry, the first time it did. Only meaningful for a replay in commit order (the
    /// simulation's log): an audit reads the journal in key order, where a hold may come
    /// before the deposit it spends.
    pub fn went_negative(&self) -> &[String] {
        &self.went_negative
    }

    /// What was counted.
    pub fn counts(&self) -> &JournalCounts {
        &self.counts
    }

    /// The failures found so far, in the order found; the replay keeps none of them.
    pub fn take_failures(&mut self) -> Vec<String> {
        std::mem::take(&mut self.failures)
    }
}

/// Replays `entries` (in the order given) into a [`Replay`] of a journal of `ops`.
pub fn replay<'a>(
    ops: &'static [Op],
    entries: impl IntoIterator<Item = &'a JournalEntry>,
) -> Replay {
    let mut r = Replay::new(ops);
    for e in entries {
        r.read(e.clone().into());
    }
    r
}

/// Every audit's report: whether it holds, what the journal walk counted, the service's own
/// figures (flattened into the same JSON object), every failure in words, and whether the store
/// changed while the audit walked it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport<F> {
    /// True when every check passed (`failures` is empty).
    pub ok: bool,
    /// What the journal walk counted.
    pub journal: JournalCounts,
    /// The service's own figures.
    #[serde(flatten)]
    pub figures: F,
    /// Every failed check, as a sentence an operator can act on.
    pub failures: Vec<String>,
    /// The store committed something during the walk: a difference found may be a saga that
    /// was in flight (set by the admin endpoint, see [`crate::admin::walk_store`]).
    #[serde(default)]
    pub store_changed_during_audit: bool,
}

impl<F> AuditReport<F> {
    /// The report of a finished walk: `ok` when nothing failed.
    pub fn new(journal: JournalCounts, figures: F, failures: Vec<String>) -> AuditReport<F> {
        AuditReport {
            ok: failures.is_empty(),
            journal,
            figures,
            failures,
            store_changed_during_audit: false,
        }
    }
}

/// Adds without panicking, saturating: a corrupted record may hold anything, and an audit
/// summing it must still report it.
pub fn saturating_add(a: Decimal, b: Decimal) -> Decimal {
    a.checked_add(b).unwrap_or(if b.is_sign_negative() {
        Decimal::MIN
    } else {
        Decimal::MAX
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn sid(n: u128) -> SagaId {
        SagaId::from(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn every_name_round_trips_to_the_journal_string_it_always_was() {
        let currencies: Vec<String> = Currency::ALL.iter().map(|c| c.to_string()).collect();
        assert_eq!(currencies, ["KRW", "USD"]);
        let ops: Vec<String> = Op::ALL.iter().map(|o| o.to_string()).collect();
        assert_eq!(
            ops,
            [
                "deposit", "hold", "commit", "release", "fill", "cancel", "reverse", "fx_pnl",
                "credit", "debit"
            ]
        );
        let accounts = [
            (Account::External, "external"),
            (Account::House, "house"),
            (Account::Venue, "venue"),
            (Account::Position, "position"),
            (Account::FxPnl, "fx_pnl"),
            (Account::Available(user("alice")), "user:alice:available"),
            (Account::Held(user("a_b-9")), "user:a_b-9:held"),
            (Account::User(user("bob")), "user:bob"),
        ];
        for (account, text) in &accounts {
            assert_eq!(account.to_string(), *text);
            assert_eq!(text.parse::<Account>().as_ref(), Ok(account));
            let json = serde_json::to_string(account).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(&serde_json::from_str::<Account>(&json).unwrap(), account);
        }
        for c in Currency::ALL {
            assert_eq!(c.to_string().parse::<Currency>(), Ok(*c));
            let json = serde_json::to_string(c).unwrap();
            assert_eq!(serde_json::from_str::<Currency>(&json).unwrap(), *c);
        }
        for o in Op::ALL {
            assert_eq!(o.to_string().parse::<Op>(), Ok(*o));
            let json = serde_json::to_string(o).unwrap();
            assert_eq!(serde_json::from_str::<Op>(&json).unwrap(), *o);
        }
        for bad in [
            "user:",
            "user:a:b",
            "user:a:held:x",
            "user:a b",
            "House",
            "",
            "user:a:",
        ] {
            assert!(bad.parse::<Account>().is_err(), "{bad}");
        }
        assert!("krw".parse::<Currency>().is_err());
        assert!("Hold".parse::<Op>().is_err());
    }

    #[test]
    fn an_entry_stored_by_earlier_versions_reads_unchanged_and_writes_the_same_bytes() {
        let stored = format!(
            r#"{{"saga_id":"{}","op":"hold","currency":"KRW","debit":"user:alice:available","credit":"user:alice:held","amount":"1000","at_ms":7}}"#,
            sid(1)
        );
        let e: JournalEntry = serde_json::from_str(&stored).unwrap();
        assert_eq!(
            e,
            JournalEntry::new(
                sid(1),
                Op::Hold,
                Currency::Krw,
                (
                    Account::Available(user("alice")),
                    Account::Held(user("alice"))
                ),
                Decimal::from(1000),
                7
            )
        );
        assert_eq!(serde_json::to_string(&e).unwrap(), stored);
        let line: Line = serde_json::from_str(&stored).unwrap();
        assert_eq!(line.entry, Ok(e));
    }

    #[test]
    fn an_unknown_name_is_a_failure_sentence_and_the_replay_goes_on() {
        let stored = |op: &str, currency: &str, debit: &str| {
            format!(
                r#"{{"saga_id":"{}","op":"{op}","currency":"{currency}","debit":"{debit}","credit":"house","amount":"5","at_ms":1}}"#,
                sid(2)
            )
        };
        let mut r = Replay::new(&[Op::Commit]);
        for (op, currency, debit) in [
            ("bogus", "KRW", "user:alice:held"),
            ("commit", "EUR", "user:alice:held"),
            ("commit", "KRW", "user:alice:pocket"),
            ("commit", "KRW", "user:alice:held"),
        ] {
            let line: Line = serde_json::from_str(&stored(op, currency, debit)).unwrap();
            r.read(line);
        }
        assert_eq!(
            r.take_failures(),
            [
                format!(
                    "journal {}:bogus does not read: op \"bogus\" is not one the ledger knows",
                    sid(2)
                ),
                format!(
                    "journal {}:commit does not read: currency \"EUR\" is not one the ledger knows",
                    sid(2)
                ),
                format!(
                    "journal {}:commit does not read: account \"user:alice:pocket\" is not one the ledger knows",
                    sid(2)
                ),
            ]
        );
        assert_eq!(r.counts().entries, 4);
        assert_eq!(r.counts().count(Op::Commit), 1);
        assert_eq!(r.balance(Currency::Krw, &Account::House), Decimal::from(5));
        // Not JSON of an entry at all: an error, as it always was.
        assert!(serde_json::from_str::<Line>("{\"op\":\"x\"}").is_err());
    }

    #[test]
    fn the_replay_sums_per_account_and_currency_and_checks_each_entry() {
        let alice = user("alice");
        let e = |n, op, currency, sides, amount: i64| {
            JournalEntry::new(sid(n), op, currency, sides, Decimal::from(amount), 1)
        };
        use Account as A;
        use Currency::{Krw, Usd};
        let log = [
            e(
                1,
                Op::Deposit,
                Krw,
                (A::External, A::Available(alice.clone())),
                100,
            ),
            e(
                2,
                Op::Hold,
                Krw,
                (A::Available(alice.clone()), A::Held(alice.clone())),
                30,
            ),
            e(2, Op::Commit, Krw, (A::Held(alice.clone()), A::House), 30),
            e(3, Op::Fill, Usd, (A::Venue, A::House), 7),
            // Wrong shape: a hold from one user's available to another's held.
            e(
                4,
                Op::Hold,
                Krw,
                (A::Available(alice.clone()), A::Held(user("bob"))),
                1,
            ),
            e(5, Op::Commit, Krw, (A::Held(alice.clone()), A::House), 0),
        ];
        let mut r = replay(&[Op::Deposit, Op::Hold, Op::Commit, Op::Release], &log);
        assert_eq!(r.balance(Krw, &A::External), Decimal::from(-100));
        assert_eq!(
            r.balance(Krw, &A::Available(alice.clone())),
            Decimal::from(69)
        );
        assert_eq!(r.balance(Krw, &A::Held(alice.clone())), Decimal::ZERO);
        assert_eq!(r.balance(Krw, &A::House), Decimal::from(30));
        assert_eq!(r.balance(Usd, &A::House), Decimal::from(7));
        assert_eq!(r.counts().count(Op::Hold), 2);
        assert_eq!(r.counts().entries, 6);
        let words = r.take_failures();
        assert_eq!(words.len(), 3, "{words:#?}");
        assert!(words[0]
            .contains("is a fill; this service journals only deposit, hold, commit, release"));
        assert!(
            words[1].ends_with("which is not what a hold does"),
            "{}",
            words[1]
        );
        assert!(
            words[2].contains("non-positive amount 0 KRW"),
            "{}",
            words[2]
        );
        // bob's held is fine, but nothing is negative at the end except the outside world.
        assert!(r.negative_balances().is_empty());
        // In commit order, an account that dips below zero is named the first time.
        let mut r = replay(
            &[Op::Hold],
            &[e(
                9,
                Op::Hold,
                Krw,
                (A::Available(alice.clone()), A::Held(alice.clone())),
                5,
            )],
        );
        assert_eq!(r.went_negative().len(), 1);
        assert_eq!(
            r.negative_balances(),
            ["the journal leaves user:alice:available at -5 KRW"]
        );
        assert!(r.take_failures().is_empty());
    }

    #[test]
    fn an_overflow_is_a_failure_not_a_panic_and_moves_nothing() {
        use Account as A;
        let big = |n| {
            JournalEntry::new(
                sid(n),
                Op::Fill,
                Currency::Usd,
                (A::Venue, A::House),
                Decimal::MAX,
                1,
            )
        };
        let mut r = replay(&[Op::Fill], &[big(1), big(2)]);
        assert_eq!(r.balance(Currency::Usd, &A::House), Decimal::MAX);
        let words = r.take_failures();
        assert_eq!(words.len(), 1, "{words:#?}");
        assert!(
            words[0].starts_with(&format!("journal {}:fill overflows", sid(2))),
            "{}",
            words[0]
        );
        assert_eq!(saturating_add(Decimal::MAX, Decimal::ONE), Decimal::MAX);
        assert_eq!(saturating_add(Decimal::MIN, -Decimal::ONE), Decimal::MIN);
    }

    #[test]
    fn the_report_is_one_json_object_with_the_services_figures_beside_the_shared_fields() {
        #[derive(Serialize, Default)]
        struct Figures {
            orders: usize,
        }
        let mut counts = JournalCounts::default();
        counts.by_op.insert(Op::FxPnl, 2);
        let report = AuditReport::new(counts, Figures { orders: 3 }, vec!["x".into()]);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "ok": false,
                "journal": {"entries": 0, "by_op": {"fx_pnl": 2}},
                "orders": 3,
                "failures": ["x"],
                "store_changed_during_audit": false,
            })
        );
        let json = crate::admin::audit_json(report, true).unwrap();
        assert_eq!(json[crate::admin::CHANGED_DURING_AUDIT], true);
    }
}
