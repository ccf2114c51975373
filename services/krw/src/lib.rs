//! fx-krw: KRW accounts, holds (TCC try/confirm/cancel) and the KRW double-entry journal.
//!
//! - [`decide`]: the pure rules, `(records, input, now) -> Decision`, the runtime's one
//!   decision shape ([`runtime::Decision`]) with the changed records ([`KrwWrites`]) as its
//!   writes.
//! - [`KrwService`]: the [`runtime::Participant`] (and the adapter the simulation calls) that
//!   loads records through [`runtime::Records`], decides, and applies the decision inside the
//!   caller's one transaction; plus the hold-expiry timer ([`KrwService::expire`],
//!   [`KrwService::due_expiries`]) and the operator's interventions
//!   ([`runtime::intervention::Intervene`]).
//! - [`deposit`], [`balance`], [`audit`]: admin operations.
//! - [`records`]: the state records and their key layout.
//!
//! Journal accounts: `user:<id>:available`, `user:<id>:held`, `house`, `external` (where
//! deposits come from). Operations, one entry each per saga: `deposit` (external -> available),
//! `hold` (available -> held), `commit` (held -> house), `release` (held -> available).

mod admin;
mod audit;
mod config;
pub mod decide;
mod error;
pub mod intervene;
pub mod records;
pub mod server;
mod service;

pub use admin::{balance, deposit};
pub use audit::{audit, audit_with_progress, AuditTotals, KrwAudit, KrwFigures, KRW_OPS};
pub use config::KrwConfig;
pub use decide::{
    decide, decide_deposit, Decision, DepositDecision, DepositState, DepositWrites, Input,
    InvalidRequest, KrwWrites, SagaWrite, State,
};
pub use error::KrwError;
pub use records::{
    expiry_due, expiry_key, parse_expiry_key, Account, DepositRecord, House, RequestFingerprint,
    SagaRecord, SagaStatus, Seen, Totals, EXPIRY_PREFIX,
};
pub use service::{KrwService, CONSUMES};

#[cfg(test)]
mod tests;
