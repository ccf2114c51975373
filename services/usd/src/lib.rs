//! fx-usd: USD accounts, the house float and the USD journal.
//!
//! Consumes trade.filled and trade.cancelled; emits usd.credited, usd.credit_failed,
//! usd.debited (and usd.deposited for admin deposits). The pieces:
//!
//! - [`decide`]: the pure decision `(credit record, account, house, event, now) -> decision`,
//!   the runtime's one decision shape ([`runtime::Decision`]) with [`UsdWrites`] as its writes.
//! - [`apply`]: the thin adapter over [`Records`]: load, decide, apply; [`UsdService`] is the
//!   [`Participant`] the runtime (and the simulation) drives, and its [`Intervene`] the
//!   operator's `refuse_credit` and `reemit`.
//! - Admin: [`seed_house_float`], [`deposit`], [`freeze`], [`unfreeze`], [`balance`], and
//!   [`audit`] for the invariants.
//!
//! Key layout and journal accounts: see [`model`].

mod admin;
mod audit;
mod config;
mod decide;
pub mod intervene;
pub mod model;
pub mod server;

#[cfg(test)]
mod tests;

use events::{Event, EventKind, InterventionAction};
use runtime::intervention::{wrong_service, Intervene, InterventionRequest, Refusal};
use runtime::{abort, Handled, Participant, ReadRecords, Records, RuntimeError, TxResult};

pub use admin::{
    balance, deposit, freeze, house_balance, seed_house_float, unfreeze, AdminOutcome,
};
pub use audit::{audit, audit_with_progress, UsdAudit, UsdFigures, USD_OPS};
pub use config::UsdConfig;
pub use decide::{decide, BrokenInvariant, UsdDecision, UsdState, UsdWrites};
pub use model::{
    account_key, credit_key, deposit_key, house_float_deposit_id, CreditRecord, CreditState,
    DepositRecord, HouseAccount, Totals, UsdAccount,
};

/// The event kinds fx-usd consumes.
pub const CONSUMES: &[EventKind] = &[EventKind::TradeFilled, EventKind::TradeCancelled];

/// Handles one event of one saga inside a transaction: loads `credit:<saga_id>`, the saga
/// user's `acct:<user_id>` and `house`, decides, and applies the decision (causation id = the
/// consumed event's id). A broken invariant aborts the transaction: nothing is written, and
/// the runtime treats it as a failed handling rather than going negative.
pub fn apply<R: Records>(records: &R, event: &Event, now_ms: u64) -> TxResult<Handled> {
    if !CONSUMES.contains(&event.kind()) {
        return Ok(Handled::Ignored);
    }
    let credit: Option<CreditRecord> = records.get(&credit_key(event.saga_id()))?;
    // Once credited, the account to touch is the one that was credited.
    let user = credit
        .as_ref()
        .map_or_else(|| event.user_id().clone(), |c| c.user_id.clone());
    let state = UsdState {
        credit,
        account: records.get(&account_key(&user))?,
        house: records.get(model::HOUSE_KEY)?.unwrap_or_default(),
    };
    match decide(&state, event, now_ms) {
        Ok(d) => d.apply(records, &event.id(), now_ms),
        Err(e) => abort(RuntimeError::Handler(e.to_string())),
    }
}

/// The fx-usd participant.
#[derive(Clone, Debug, Default)]
pub struct UsdService {
    config: UsdConfig,
}

impl UsdService {
    /// A service with these settings.
    pub fn new(config: UsdConfig) -> UsdService {
        UsdService { config }
    }

    /// The settings the service runs with.
    pub fn config(&self) -> &UsdConfig {
        &self.config
    }
}

impl Participant for UsdService {
    type Prepared = ();

    fn name(&self) -> &'static str {
        "usd"
    }

    fn consumes(&self) -> &'static [EventKind] {
        CONSUMES
    }

    fn prepare<V: ReadRecords>(
        &self,
        _records: &V,
        _event: &Event,
        _now_ms: u64,
    ) -> impl std::future::Future<Output = ()> + Send {
        // fx-usd decides from its own records alone, inside the transaction.
        std::future::ready(())
    }

    fn handle<R: Records>(
        &self,
        records: &R,
        event: &Event,
        _prepared: &(),
        now_ms: u64,
    ) -> TxResult<Handled> {
        apply(records, event, now_ms)
    }
}

impl Intervene for UsdService {
    type Writes = UsdWrites;
    const INTERVENED: EventKind = EventKind::UsdIntervened;

    /// `refuse_credit` or `reemit` (see [`intervene`]), decided from `credit:<saga_id>`;
    /// `cancel` is fx-krw's.
    fn intervene<R: Records>(
        &self,
        records: &R,
        action: InterventionAction,
        req: &InterventionRequest,
        actor: &str,
        now_ms: u64,
    ) -> TxResult<Result<UsdDecision, Refusal>> {
        let record: Option<CreditRecord> = records.get(&credit_key(req.saga_id))?;
        let (saga_id, reason) = (req.saga_id, req.reason.as_str());
        Ok(match action {
            InterventionAction::RefuseCredit => intervene::decide_refuse_credit(
                record.as_ref(),
                saga_id,
                &req.user_id,
                actor,
                reason,
                now_ms,
            )
            .map(|refused| match refused {
                Some((record, events)) => UsdDecision {
                    writes: UsdWrites {
                        credit: Some((saga_id, record)),
                        ..UsdWrites::default()
                    },
                    ..UsdDecision::emitting(events)
                },
                // An operator refused it before: nothing to do again.
                None => UsdDecision::ignored(),
            }),
            InterventionAction::Reemit => {
                intervene::decide_reemit(record.as_ref(), saga_id, actor, reason)
                    .map(UsdDecision::emitting)
            }
            InterventionAction::Cancel => Err(wrong_service(self.name(), action)),
        })
    }
}
