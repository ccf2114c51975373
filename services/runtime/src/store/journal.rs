//! The journal's line, [`JournalEntry`]: every balance change a service makes is one of these,
//! written in the same transaction as the state it changes (see [`super::Records::journal`]).
//! Its own file because the entry is the ledger's unit, read back by the audits (see
//! [`super::walk`]) and built by every service's decisions.

use events::SagaId;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::ledger::{Account, Currency, Op};

/// One double-entry journal line: `amount` of `currency` leaves `debit` and enters `credit`.
/// Keyed by `(saga_id, op)`, so a second entry for one operation is refused (invariant 4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The saga (or admin operation) this entry belongs to.
    pub saga_id: SagaId,
    /// The operation, stored as its name: `hold`, `commit`, `credit`, ... (see [`Op`]).
    pub op: Op,
    /// `KRW` or `USD`.
    pub currency: Currency,
    /// The account the amount leaves, stored as its name: `user:alice:available`, `external`,
    /// ... (see [`Account`]).
    pub debit: Account,
    /// The account the amount enters.
    pub credit: Account,
    /// Positive amount at the currency's scale.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// When it was written (ms since the Unix epoch).
    pub at_ms: u64,
    /// Who asked for it, for admin operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

impl JournalEntry {
    /// The journal key: `<saga_id>:<op>`.
    pub fn key(&self) -> String {
        self.saga_id.between("", &[":", self.op.as_str()])
    }
}
