//! fx-krw's state records and their keys in the store's `state` tree.
//!
//! | key | record |
//! |---|---|
//! | `acct:<user_id>` | [`Account`]: available, held, and the daily-limit counter |
//! | `saga:<saga_id>` | [`SagaRecord`]: the hold (or rejection, or tombstone) of one saga |
//! | `exp:<expires_at_ms, 20 digits>:<saga_id>` | expiry index: the saga id of an unpinned open hold |
//! | `dep:<deposit_id>` | [`DepositRecord`]: an admin deposit, for idempotency |
//! | `house` | [`House`]: KRW the house received from committed exchanges |
//! | `totals` | [`Totals`]: Σ deposits, so conservation is checkable from records alone |
//!
//! Every record is JSON with money as strings (the `events` money types), so an operator can
//! read the store with any JSON tool.

use events::{Krw, RejectReason, ReleaseReason, SagaId, Usd, UserId};
use runtime::ledger;
use serde::{Deserialize, Serialize};

/// Prefix of account records.
pub const ACCOUNT_PREFIX: &str = "acct:";
/// Prefix of per-saga records.
pub const SAGA_PREFIX: &str = "saga:";
/// Prefix of the expiry index; keys sort by expiry time because the time is zero-padded.
pub const EXPIRY_PREFIX: &str = "exp:";
/// Prefix of deposit records.
pub const DEPOSIT_PREFIX: &str = "dep:";
/// Key of the house record.
pub const HOUSE_KEY: &str = "house";
/// Key of the totals record.
pub const TOTALS_KEY: &str = "totals";

/// Milliseconds in a UTC day; the daily limit resets at 00:00 UTC.
pub const DAY_MS: u64 = 86_400_000;

/// `acct:<user_id>`.
pub fn account_key(user: &UserId) -> String {
    [ACCOUNT_PREFIX, user.as_str()].concat()
}

/// `saga:<saga_id>`.
pub fn saga_key(saga_id: SagaId) -> String {
    saga_id.between(SAGA_PREFIX, &[])
}

/// `dep:<deposit_id>`.
pub fn deposit_key(deposit_id: SagaId) -> String {
    deposit_id.between(DEPOSIT_PREFIX, &[])
}

/// `exp:<expires_at_ms zero-padded to 20 digits>:<saga_id>`. Twenty digits hold any `u64`, so
/// lexicographic key order is expiry order and a sweeper can stop at the first future key.
pub fn expiry_key(expires_at_ms: u64, saga_id: SagaId) -> String {
    format!("{EXPIRY_PREFIX}{expires_at_ms:020}:{saga_id}")
}

/// The (expires_at_ms, saga_id) of an expiry index key, or `None` if it is not one.
pub fn parse_expiry_key(key: &str) -> Option<(u64, SagaId)> {
    let rest = key.strip_prefix(EXPIRY_PREFIX)?;
    let (at, saga) = rest.split_once(':')?;
    if at.len() != 20 {
        return None;
    }
    Some((at.parse().ok()?, SagaId::parse(saga).ok()?))
}

/// True when an index entry expiring at `expires_at_ms` is due at `now_ms` with `grace_ms`:
/// the hold is released once `expires_at + grace` has been reached.
pub fn expiry_due(expires_at_ms: u64, grace_ms: u64, now_ms: u64) -> bool {
    now_ms >= expires_at_ms.saturating_add(grace_ms)
}

/// Journal account of a user's available KRW, `user:<id>:available`.
pub fn available_account(user: &UserId) -> ledger::Account {
    ledger::Account::Available(user.clone())
}

/// Journal account of a user's held KRW, `user:<id>:held`.
pub fn held_account(user: &UserId) -> ledger::Account {
    ledger::Account::Held(user.clone())
}

/// The UTC day number (days since the Unix epoch) of `now_ms`.
pub fn day_of(now_ms: u64) -> u64 {
    now_ms / DAY_MS
}

/// A user's KRW account (`acct:<user_id>`). It exists once anything was deposited; a request
/// from a user without one is rejected as `unknown_user`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// KRW the user may exchange.
    pub available: Krw,
    /// KRW under open holds.
    pub held: Krw,
    /// The UTC day `day_total` counts (days since the Unix epoch).
    pub day: u64,
    /// KRW held on `day` by holds that were not released since (committed or still open): what
    /// the daily limit is measured against.
    pub day_total: Krw,
}

impl Account {
    /// An empty account (created by the first deposit).
    pub fn empty() -> Account {
        Account {
            available: Krw::ZERO,
            held: Krw::ZERO,
            day: 0,
            day_total: Krw::ZERO,
        }
    }

    /// What counts against the daily limit on `day`: nothing yet if the counter is from an
    /// earlier day.
    pub fn total_on(&self, day: u64) -> Krw {
        if self.day == day {
            self.day_total
        } else {
            Krw::ZERO
        }
    }
}

/// The house's KRW (`house`): what users paid for committed exchanges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct House {
    /// KRW received by the house.
    pub krw: Krw,
}

/// Running totals (`totals`) that make conservation checkable:
/// Σ available + Σ held + house == deposits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Σ of every KRW deposit ever made.
    pub deposits: Krw,
}

/// An admin deposit (`dep:<deposit_id>`), kept so that a repeated deposit is a no-op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepositRecord {
    /// Whose account received it.
    pub user: UserId,
    /// How much.
    pub krw_amount: Krw,
    /// Who asked for it (the admin identity).
    pub actor: String,
    /// When it was made (ms since the Unix epoch).
    pub at_ms: u64,
}

/// What identifies a request's body: a second request for the same saga is a duplicate when
/// this is equal, a conflict otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFingerprint {
    /// The requesting user.
    pub user: UserId,
    /// KRW to sell; the hold's amount when accepted.
    pub krw_amount: Krw,
    /// The slippage guard, passed on in krw.held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_usd_amount: Option<Usd>,
}

/// Where a saga stands at fx-krw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SagaStatus {
    /// No request seen yet: the record only remembers events that arrived early (tombstones),
    /// so that the request, when it comes, ends the way the in-order saga would have.
    NoRequest,
    /// The request was refused with `krw.rejected`; terminal.
    Rejected {
        /// Why, as announced in krw.rejected.
        reason: RejectReason,
    },
    /// KRW is held (`krw.held` emitted).
    Held,
    /// The hold went to the house (`krw.committed`); terminal.
    Committed,
    /// The hold went back to the user (`krw.released`); terminal.
    Released {
        /// Why, as announced in krw.released.
        reason: ReleaseReason,
    },
}

/// Which of the other participants' events fx-krw has seen for a saga. Kept after the saga
/// ends, so a redelivered event is recognized forever (DESIGN: per-saga state is the lasting
/// dedup), and before the request arrives, as tombstones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// trade.filled (pins the hold).
    #[serde(default)]
    pub trade_filled: bool,
    /// trade.failed (releases the hold).
    #[serde(default)]
    pub trade_failed: bool,
    /// trade.cancelled (releases the hold).
    #[serde(default)]
    pub trade_cancelled: bool,
    /// usd.credited (commits the hold).
    #[serde(default)]
    pub usd_credited: bool,
}

/// One saga at fx-krw (`saga:<saga_id>`): the request it accepted, its hold and what it saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaRecord {
    /// The saga's user: of the request, or of the first early event for a tombstone.
    pub user: UserId,
    /// The request this saga accepted or rejected; `None` for a tombstone or an unreadable
    /// request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestFingerprint>,
    /// For a request rejected because it did not decode: a digest of its subject and body, so
    /// that a redelivery of the same bytes is a no-op and anything else is a conflict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_request_digest: Option<String>,
    /// Where the saga stands.
    pub status: SagaStatus,
    /// When the hold expires (unless pinned); set once the hold is taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// The UTC day the hold counted against the daily limit, so a release gives it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_day: Option<u64>,
    /// Set by trade.filled: a pinned hold never expires (the fill is the pivot).
    #[serde(default)]
    pub pinned: bool,
    /// Events seen from fx-trade and fx-usd.
    #[serde(default)]
    pub seen: Seen,
    /// When the record was created (ms since the Unix epoch).
    pub created_at_ms: u64,
}

impl SagaRecord {
    /// A record with nothing decided yet (a tombstone in the making).
    pub fn new(user: UserId, now_ms: u64) -> SagaRecord {
        SagaRecord {
            user,
            request: None,
            invalid_request_digest: None,
            status: SagaStatus::NoRequest,
            expires_at_ms: None,
            hold_day: None,
            pinned: false,
            seen: Seen::default(),
            created_at_ms: now_ms,
        }
    }

    /// True while the hold is open and can still expire.
    pub fn expirable(&self) -> bool {
        self.status == SagaStatus::Held && !self.pinned
    }

    /// The expiry index key this record needs, if any: exactly the open, unpinned holds have
    /// one. The adapter derives index writes from this, so the index cannot drift from records.
    pub fn expiry_index_key(&self, saga_id: SagaId) -> Option<String> {
        match (self.expirable(), self.expires_at_ms) {
            (true, Some(at)) => Some(expiry_key(at, saga_id)),
            _ => None,
        }
    }

    /// The held amount, for a saga that took a hold.
    pub fn hold_amount(&self) -> Option<Krw> {
        match self.status {
            SagaStatus::Held | SagaStatus::Committed | SagaStatus::Released { .. } => {
                self.request.as_ref().map(|r| r.krw_amount)
            }
            SagaStatus::NoRequest | SagaStatus::Rejected { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_keys_sort_by_time_and_round_trip() {
        let saga = SagaId::parse("0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11").unwrap();
        let early = expiry_key(9_000, saga);
        let late = expiry_key(10_000, saga);
        assert!(early < late, "zero padding keeps time order");
        assert_eq!(
            early,
            "exp:00000000000000009000:0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11"
        );
        assert_eq!(parse_expiry_key(&early), Some((9_000, saga)));
        assert_eq!(
            parse_expiry_key(&expiry_key(u64::MAX, saga)).unwrap().0,
            u64::MAX
        );
        assert_eq!(parse_expiry_key("exp:12:x"), None);
        assert_eq!(parse_expiry_key("saga:x"), None);
    }

    #[test]
    fn due_means_expiry_plus_grace_reached() {
        assert!(!expiry_due(1_000, 500, 1_499));
        assert!(expiry_due(1_000, 500, 1_500));
        assert!(
            expiry_due(u64::MAX, 500, u64::MAX),
            "no overflow at the end of time"
        );
    }
}
