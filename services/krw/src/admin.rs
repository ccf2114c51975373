//! Admin operations as plain functions; the NATS request/reply wiring lives elsewhere.

use events::{Krw, SagaId, UserId};
use runtime::{Handled, Records, Store, TxResult};

use crate::decide::{decide_deposit, DepositState};
use crate::records::{account_key, deposit_key, saga_key, Account, TOTALS_KEY};

/// Deposits `amount` KRW into `user`'s available balance, creating the account if needed.
///
/// Journals `deposit` (external -> `user:<id>:available`), adds to `totals`, and emits
/// `krw.deposited` (saga id = `deposit_id`, caused by the deposit id itself). Idempotent by
/// `deposit_id`: repeating the same deposit returns `Ignored` and changes nothing. A refused
/// deposit returns `DeadLetter` with reason `deposit_id_conflict` (the id was used for another
/// user, amount or an exchange) or `invalid_deposit` (zero, or past the KRW ceiling), and
/// writes nothing; the admin wiring turns that into an error reply.
pub fn deposit<R: Records>(
    r: &R,
    deposit_id: SagaId,
    user: &UserId,
    amount: Krw,
    actor: &str,
    now_ms: u64,
) -> TxResult<Handled> {
    let before = DepositState {
        deposit: r.get(&deposit_key(deposit_id))?,
        saga_exists: r.get_raw(&saga_key(deposit_id))?.is_some(),
        account: r.get(&account_key(user))?,
        totals: r.get(TOTALS_KEY)?.unwrap_or_default(),
    };
    decide_deposit(&before, deposit_id, user, amount, actor, now_ms).apply(
        r,
        &deposit_id.to_string(),
        now_ms,
    )
}

/// A user's KRW account, or `None` if nothing was ever deposited for them.
pub fn balance(store: &Store, user: &UserId) -> runtime::Result<Option<Account>> {
    store.get(&account_key(user))
}
