//! fx-usd's records and their keys.
//!
//! | key                | record            | what                                           |
//! |--------------------|-------------------|------------------------------------------------|
//! | `acct:<user_id>`   | [`UsdAccount`]    | a user's USD balance and freeze flag           |
//! | `house`            | [`HouseAccount`]  | the house float credits are paid from          |
//! | `totals`           | [`Totals`]        | Σ deposits (the right side of conservation)    |
//! | `credit:<saga_id>` | [`CreditRecord`]  | one per saga: fx-usd's lasting dedup           |
//! | `deposit:<id>`     | [`DepositRecord`] | one per admin deposit id: its idempotency      |
//!
//! Journal accounts: `user:<user_id>`, `house`, `external` (where deposits come from).

use events::{CreditFailReason, SagaId, Usd, UserId};
use runtime::ledger::Account;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Prefix of user account records.
pub const ACCOUNT_PREFIX: &str = "acct:";
/// Key of the house float record.
pub const HOUSE_KEY: &str = "house";
/// Key of the deposit totals record.
pub const TOTALS_KEY: &str = "totals";
/// Prefix of per-saga credit records.
pub const CREDIT_PREFIX: &str = "credit:";
/// Prefix of admin deposit records.
pub const DEPOSIT_PREFIX: &str = "deposit:";

/// The id of the one house float deposit: the nil UUID. Fixed, so seeding at every start is
/// idempotent across restarts; user deposits may not use it.
pub fn house_float_deposit_id() -> SagaId {
    SagaId::from(Uuid::nil())
}

/// `acct:<user_id>`.
pub fn account_key(user: &UserId) -> String {
    [ACCOUNT_PREFIX, user.as_str()].concat()
}

/// `credit:<saga_id>`.
pub fn credit_key(saga_id: SagaId) -> String {
    saga_id.between(CREDIT_PREFIX, &[])
}

/// `deposit:<id>`.
pub fn deposit_key(id: SagaId) -> String {
    id.between(DEPOSIT_PREFIX, &[])
}

/// The journal account of a user's USD: `user:<user_id>`.
pub fn user_account(user: &UserId) -> Account {
    Account::User(user.clone())
}

/// A user's USD account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsdAccount {
    /// The balance.
    pub usd: Usd,
    /// A frozen account takes no credits; compensating debits still go through.
    pub frozen: bool,
    /// Who last froze or unfroze the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_changed_by: Option<String>,
    /// When the account was last frozen or unfrozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_changed_at_ms: Option<u64>,
    /// When the account was opened (first credit, deposit or freeze).
    pub opened_at_ms: u64,
}

impl UsdAccount {
    /// An empty, unfrozen account.
    pub fn open(now_ms: u64) -> UsdAccount {
        UsdAccount {
            usd: Usd::ZERO,
            frozen: false,
            frozen_changed_by: None,
            frozen_changed_at_ms: None,
            opened_at_ms: now_ms,
        }
    }
}

/// The house float: USD the service pays credits from and takes debits back into.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HouseAccount {
    /// The balance.
    pub usd: Usd,
}

/// Running totals kept for the conservation check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Σ every USD deposit (house float included).
    pub deposits: Usd,
}

/// Where a saga stands at fx-usd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditState {
    /// usd.credited was emitted.
    Credited {
        /// What was credited (and what a debit takes back).
        usd_amount: Usd,
        /// When.
        credited_at_ms: u64,
    },
    /// usd.credit_failed was emitted; nothing moved. `order_cancelled` is the tombstone of
    /// a trade.cancelled that came before trade.filled.
    Failed {
        /// The reason announced.
        reason: CreditFailReason,
    },
    /// usd.debited was emitted after a credit: terminal, net zero.
    Debited {
        /// What was credited and taken back.
        usd_amount: Usd,
        /// When it was credited.
        credited_at_ms: u64,
        /// When it was debited.
        debited_at_ms: u64,
    },
}

/// The record `credit:<saga_id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditRecord {
    /// Whose saga.
    pub user_id: UserId,
    /// Where it stands.
    pub state: CreditState,
    /// When the state last changed.
    pub updated_at_ms: u64,
}

/// The record `deposit:<id>`: what an admin deposit id was used for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepositRecord {
    /// `None` for the house float.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// The amount.
    pub usd_amount: Usd,
    /// Who asked.
    pub actor: String,
    /// When.
    pub at_ms: u64,
}
