//! fx-usd: USD accounts, the house float and the USD journal.
//!
//! Consumes trade.filled and trade.cancelled; emits usd.credited, usd.credit_failed,
//! usd.debited (and usd.deposited for admin deposits). The pieces:
//!
//! - [`decide`]: the pure decision `(credit record, account, house, event, now) -> decision`.
//! - [`apply`]: the thin adapter over [`Records`] that loads, decides, writes, journals and
//!   emits; [`UsdService`] is the [`Participant`] the runtime (and the simulation) drives.
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

use events::{Event, EventKind};
use runtime::{abort, Handled, Participant, ReadRecords, Records, RuntimeError, TxResult};

pub use admin::{
    balance, deposit, freeze, house_balance, seed_house_float, unfreeze, AdminOutcome,
};
pub use audit::{audit, audit_with_progress, UsdAudit, UsdFigures, USD_OPS};
pub use config::UsdConfig;
pub use decide::{decide, BrokenInvariant, UsdDecision, UsdState};
pub use model::{
    account_key, credit_key, deposit_key, house_float_deposit_id, CreditRecord, CreditState,
    DepositRecord, HouseAccount, Totals, UsdAccount,
};

/// The event kinds fx-usd consumes.
pub const CONSUMES: &[EventKind] = &[EventKind::TradeFilled, EventKind::TradeCancelled];

/// Handles one event of one saga inside a transaction: loads `credit:<saga_id>`, the saga
/// user's `acct:<user_id>` and `house`, decides, writes, journals and emits (causation id =
/// the consumed event's id). A broken invariant aborts the transaction: nothing is written,
/// and the runtime treats it as a failed handling rather than going negative.
pub fn apply<R: Records>(records: &R, event: &Event, now_ms: u64) -> TxResult<Handled> {
    if !CONSUMES.contains(&event.kind()) {
        return Ok(Handled::Ignored);
    }
    let credit_key = credit_key(event.saga_id());
    let credit: Option<CreditRecord> = records.get(&credit_key)?;
    // Once credited, the account to touch is the one that was credited.
    let user = credit
        .as_ref()
        .map_or_else(|| event.user_id().clone(), |c| c.user_id.clone());
    let account_key = account_key(&user);
    let state = UsdState {
        credit,
        account: records.get(&account_key)?,
        house: records.get(model::HOUSE_KEY)?.unwrap_or_default(),
    };
    let decision = match decide(&state, event, now_ms) {
        Ok(d) => d,
        Err(e) => return abort(RuntimeError::Handler(e.to_string())),
    };
    if let Some(c) = &decision.credit {
        records.put(&credit_key, c)?;
    }
    if let Some(a) = &decision.account {
        records.put(&account_key, a)?;
    }
    if let Some(h) = &decision.house {
        records.put(model::HOUSE_KEY, h)?;
    }
    records.journal_and_emit(&decision.journal, &decision.events, &event.id(), now_ms)?;
    Ok(decision.handled)
}

/// An operator's `refuse_credit` or `reemit` of one saga (see [`intervene`]), in the caller's
/// transaction: decides from `credit:<saga_id>`, writes the record and emits (caused by the
/// intervention's own event id). A refusal writes nothing; `cancel` is fx-krw's.
pub fn intervene<R: Records>(
    records: &R,
    action: events::InterventionAction,
    req: &runtime::intervention::InterventionRequest,
    actor: &str,
    now_ms: u64,
) -> TxResult<Result<runtime::intervention::Verdict, runtime::intervention::Refusal>> {
    use events::InterventionAction as A;
    use runtime::intervention::{check_reason, reasons, Refusal, Verdict};
    if let Err(refusal) = check_reason(&req.reason) {
        return Ok(Err(refusal));
    }
    let key = credit_key(req.saga_id);
    let record: Option<CreditRecord> = records.get(&key)?;
    let cause = req
        .saga_id
        .intervention_id(EventKind::UsdIntervened, action);
    let events = match action {
        A::RefuseCredit => match intervene::decide_refuse_credit(
            record.as_ref(),
            req.saga_id,
            &req.user_id,
            actor,
            &req.reason,
            now_ms,
        ) {
            Ok(Some((record, events))) => {
                records.put(&key, &record)?;
                events
            }
            Ok(None) => return Ok(Ok(Verdict::AlreadyDone)),
            Err(refusal) => return Ok(Err(refusal)),
        },
        A::Reemit => {
            match intervene::decide_reemit(record.as_ref(), req.saga_id, actor, &req.reason) {
                Ok(events) => events,
                Err(refusal) => return Ok(Err(refusal)),
            }
        }
        A::Cancel => {
            return Ok(Err(Refusal::new(
                reasons::WRONG_SERVICE,
                "cancel is fx-krw's action, not fx-usd's",
            )))
        }
    };
    for e in &events {
        records.emit(e, &cause, now_ms)?;
    }
    Ok(Ok(Verdict::Done(events)))
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
