//! Operator actions on fx-usd's records: the house float, deposits, freezes, balances.
//!
//! Each write runs inside the caller's transaction (`store.transact(|tx| deposit(&*tx, ..))`);
//! the NATS admin request/reply wiring lives elsewhere. Refusals of bad input are returned as
//! [`AdminOutcome::Refused`] with words for the operator, not as errors, and write nothing.

use events::{Event, SagaId, Usd, UsdDeposited, UsdFrozen, UsdUnfrozen, UserId};
use runtime::ledger::{Account, Currency, Op};
use runtime::{JournalEntry, Records, Store, TxResult};
use serde::Serialize;

use crate::model::{
    account_key, deposit_key, house_float_deposit_id, user_account, DepositRecord, HouseAccount,
    Totals, UsdAccount, HOUSE_KEY, TOTALS_KEY,
};

/// What an admin action did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AdminOutcome {
    /// The change was made.
    Done,
    /// The same request was already carried out (idempotent repeat); nothing changed.
    AlreadyDone,
    /// The request was refused; nothing changed.
    Refused {
        /// Why, and what to do instead.
        reason: String,
    },
}

fn refused(reason: String) -> TxResult<AdminOutcome> {
    Ok(AdminOutcome::Refused { reason })
}

/// Adds `amount` to `Σ deposits`; `None` past the USD ceiling.
fn add_to_totals<R: Records>(r: &R, amount: Usd) -> TxResult<Option<Totals>> {
    let totals: Totals = r.get(TOTALS_KEY)?.unwrap_or_default();
    Ok(totals
        .deposits
        .checked_add(amount)
        .map(|deposits| Totals { deposits }))
}

/// Deposits the house float once: `amount` from `external` into `house`, under the fixed id
/// [`house_float_deposit_id`]. Run at every start; after the first it is `AlreadyDone`, even
/// if `FX_USD_HOUSE_FLOAT` changed since (top-ups are a separate, deliberate operation).
pub fn seed_house_float<R: Records>(r: &R, amount: Usd, now_ms: u64) -> TxResult<AdminOutcome> {
    let id = house_float_deposit_id();
    if r.get::<DepositRecord>(&deposit_key(id))?.is_some() {
        return Ok(AdminOutcome::AlreadyDone);
    }
    if !amount.is_positive() {
        return refused("the house float must be greater than zero".into());
    }
    let house: HouseAccount = r.get(HOUSE_KEY)?.unwrap_or_default();
    let (Some(usd), Some(totals)) = (house.usd.checked_add(amount), add_to_totals(r, amount)?)
    else {
        return refused(format!("{amount} USD would exceed the largest USD amount"));
    };
    r.put(HOUSE_KEY, &HouseAccount { usd })?;
    r.put(TOTALS_KEY, &totals)?;
    r.put(
        &deposit_key(id),
        &DepositRecord {
            user_id: None,
            usd_amount: amount,
            actor: "startup".into(),
            at_ms: now_ms,
        },
    )?;
    r.journal(
        &JournalEntry::new(
            id,
            Op::Deposit,
            Currency::Usd,
            (Account::External, Account::House),
            amount.amount(),
            now_ms,
        )
        .by("startup"),
    )?;
    // No event: the house is not a user, and `fx.usd.deposited.<user>` would make a user named
    // "house" indistinguishable from it. The journal and totals carry the float.
    Ok(AdminOutcome::Done)
}

/// Deposits `amount` USD into `user`'s account (opened if new) and emits usd.deposited.
/// Idempotent by `deposit_id`: the same id with the same user and amount is `AlreadyDone`;
/// with anything else it is refused. A frozen account still takes deposits: a freeze blocks
/// exchange credits, not an operator's deliberate deposit.
pub fn deposit<R: Records>(
    r: &R,
    deposit_id: SagaId,
    user: &UserId,
    amount: Usd,
    actor: &str,
    now_ms: u64,
) -> TxResult<AdminOutcome> {
    if deposit_id == house_float_deposit_id() {
        return refused("the nil id is reserved for the house float; use a fresh UUID".into());
    }
    if !amount.is_positive() {
        return refused("a deposit must be greater than zero".into());
    }
    let key = deposit_key(deposit_id);
    if let Some(done) = r.get::<DepositRecord>(&key)? {
        return if done.user_id.as_ref() == Some(user) && done.usd_amount == amount {
            Ok(AdminOutcome::AlreadyDone)
        } else {
            let whom = done
                .user_id
                .map_or_else(|| "the house".to_owned(), |u| u.to_string());
            refused(format!(
                "deposit id {deposit_id} was already used for {} USD to {whom}; use a new id",
                done.usd_amount
            ))
        };
    }
    let account_key = account_key(user);
    let account: UsdAccount = r
        .get(&account_key)?
        .unwrap_or_else(|| UsdAccount::open(now_ms));
    let (Some(usd), Some(totals)) = (account.usd.checked_add(amount), add_to_totals(r, amount)?)
    else {
        return refused(format!(
            "{amount} USD would take a balance past the largest USD amount"
        ));
    };
    r.put(&account_key, &UsdAccount { usd, ..account })?;
    r.put(TOTALS_KEY, &totals)?;
    r.put(
        &key,
        &DepositRecord {
            user_id: Some(user.clone()),
            usd_amount: amount,
            actor: actor.to_owned(),
            at_ms: now_ms,
        },
    )?;
    r.journal(
        &JournalEntry::new(
            deposit_id,
            Op::Deposit,
            Currency::Usd,
            (Account::External, user_account(user)),
            amount.amount(),
            now_ms,
        )
        .by(actor),
    )?;
    let event = Event::UsdDeposited(UsdDeposited {
        saga_id: deposit_id,
        user_id: user.clone(),
        usd_amount: amount,
        actor: actor.to_owned(),
    });
    // An admin deposit is a one-step saga with no consumed event: it is its own cause.
    r.emit(&event, &event.id(), now_ms)?;
    Ok(AdminOutcome::Done)
}

fn set_frozen<R: Records>(
    r: &R,
    op_id: SagaId,
    user: &UserId,
    frozen: bool,
    actor: &str,
    now_ms: u64,
) -> TxResult<AdminOutcome> {
    let key = account_key(user);
    let account: Option<UsdAccount> = r.get(&key)?;
    if account.as_ref().is_some_and(|a| a.frozen) == frozen {
        return Ok(AdminOutcome::AlreadyDone);
    }
    // Freezing an unknown user opens an empty account, so a freeze can come before the first
    // credit and still block it.
    let account = account.unwrap_or_else(|| UsdAccount::open(now_ms));
    r.put(
        &key,
        &UsdAccount {
            frozen,
            frozen_changed_by: Some(actor.to_owned()),
            frozen_changed_at_ms: Some(now_ms),
            ..account
        },
    )?;
    // The stream is the audit trail: every admin operation is an event naming its actor.
    let actor: String = actor.chars().take(events::MAX_MESSAGE_CHARS).collect();
    let event = if frozen {
        Event::UsdFrozen(UsdFrozen {
            saga_id: op_id,
            user_id: user.clone(),
            actor,
        })
    } else {
        Event::UsdUnfrozen(UsdUnfrozen {
            saga_id: op_id,
            user_id: user.clone(),
            actor,
        })
    };
    r.emit(&event, &op_id.to_string(), now_ms)?;
    Ok(AdminOutcome::Done)
}

/// Freezes `user`'s account: later credits fail with `account_frozen`; compensating debits
/// still go through. Records who and when, and emits `usd.frozen` (no journal entry: no money
/// moves). `op_id` is the operation's id (the event's `saga_id`).
pub fn freeze<R: Records>(
    r: &R,
    op_id: SagaId,
    user: &UserId,
    actor: &str,
    now_ms: u64,
) -> TxResult<AdminOutcome> {
    set_frozen(r, op_id, user, true, actor, now_ms)
}

/// Lifts a freeze. Records who and when, and emits `usd.unfrozen`.
pub fn unfreeze<R: Records>(
    r: &R,
    op_id: SagaId,
    user: &UserId,
    actor: &str,
    now_ms: u64,
) -> TxResult<AdminOutcome> {
    set_frozen(r, op_id, user, false, actor, now_ms)
}

/// A user's account as stored (balance, freeze flag and who set it), if it exists.
pub fn balance(store: &Store, user: &UserId) -> runtime::Result<Option<UsdAccount>> {
    store.get(&account_key(user))
}

/// The house float's balance (zero before seeding).
pub fn house_balance(store: &Store) -> runtime::Result<Usd> {
    Ok(store
        .get::<HouseAccount>(HOUSE_KEY)?
        .unwrap_or_default()
        .usd)
}
