//! fx-usd's pure decision for one event of one saga.
//!
//! | credit record | event            | result                                                |
//! |---------------|------------------|-------------------------------------------------------|
//! | none          | trade.filled     | credited, or credit_failed(account_frozen / insufficient_liquidity) |
//! | none          | trade.cancelled  | credit_failed(order_cancelled): the tombstone, final word |
//! | credited      | trade.cancelled  | debited (always: a freeze never blocks a compensation) |
//!
//! Anything else is a duplicate or a late word with nothing to do: `Ignored`.

use events::{
    CreditFailReason, Event, SagaId, TradeCancelled, TradeFilled, UsdCreditFailed, UsdCredited,
    UsdDebited, UserId,
};
use runtime::ledger::{Account, Currency, Op};
use runtime::{Decision, Handled, JournalEntry, Records, TxResult, Writes};

use crate::model::{
    account_key, credit_key, user_account, CreditRecord, CreditState, HouseAccount, UsdAccount,
    HOUSE_KEY,
};

/// What `decide` reads: the saga's record, the account of the saga's user, the house float.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsdState {
    /// `credit:<saga_id>`.
    pub credit: Option<CreditRecord>,
    /// `acct:<user_id>` of the saga's user (the credited user once there is a record).
    pub account: Option<UsdAccount>,
    /// `house` (zero when never seeded).
    pub house: HouseAccount,
}

/// fx-usd's record writes: each record a decision changed, with its key's part.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsdWrites {
    /// New `credit:<saga_id>`.
    pub credit: Option<(SagaId, CreditRecord)>,
    /// New `acct:<user_id>` of the saga's user.
    pub account: Option<(UserId, UsdAccount)>,
    /// New house float.
    pub house: Option<HouseAccount>,
}

impl Writes for UsdWrites {
    fn write<R: Records>(&self, records: &R) -> TxResult<()> {
        if let Some((saga_id, credit)) = &self.credit {
            records.put(&credit_key(*saga_id), credit)?;
        }
        if let Some((user, account)) = &self.account {
            records.put(&account_key(user), account)?;
        }
        if let Some(house) = &self.house {
            records.put(HOUSE_KEY, house)?;
        }
        Ok(())
    }
}

/// What `decide` wants written, journaled and emitted, all in one transaction.
pub type UsdDecision = Decision<UsdWrites>;

/// The stored state contradicts what a decision needs (e.g. a credited user holds less than
/// the credit to take back). A bug or a corrupted store: abort rather than go negative.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("broken invariant: {0}")]
pub struct BrokenInvariant(pub String);

/// The pure decision of fx-usd.
pub fn decide(
    state: &UsdState,
    event: &Event,
    now_ms: u64,
) -> Result<UsdDecision, BrokenInvariant> {
    match (state.credit.as_ref().map(|c| &c.state), event) {
        (None, Event::TradeFilled(f)) => Ok(credit(state, f, now_ms)),
        (None, Event::TradeCancelled(c)) => Ok(tombstone(c, now_ms)),
        (
            Some(CreditState::Credited {
                usd_amount,
                credited_at_ms,
            }),
            Event::TradeCancelled(c),
        ) => {
            let user = state
                .credit
                .as_ref()
                .map(|r| r.user_id.clone())
                .unwrap_or_else(|| c.user_id.clone());
            debit(state, c, &user, *usd_amount, *credited_at_ms, now_ms)
        }
        // - trade.filled again, or after the tombstone / a failure / a debit: already answered;
        // - trade.cancelled after credit_failed: nothing was credited, nothing to undo;
        // - trade.cancelled after the debit: a duplicate.
        _ => Ok(Decision::ignored()),
    }
}

fn credit(state: &UsdState, f: &TradeFilled, now_ms: u64) -> UsdDecision {
    let account = state
        .account
        .clone()
        .unwrap_or_else(|| UsdAccount::open(now_ms));
    if account.frozen {
        return failed(
            f,
            CreditFailReason::AccountFrozen,
            format!(
                "the USD account of {} is frozen; credits are blocked until an operator \
                 unfreezes it",
                f.user_id
            ),
            now_ms,
        );
    }
    let house_after = state.house.usd.checked_sub(f.usd_amount);
    let user_after = account.usd.checked_add(f.usd_amount);
    let (Some(house_after), Some(user_after)) = (house_after, user_after) else {
        let message = if house_after.is_none() {
            format!(
                "the house float holds {} USD, less than the {} USD to credit",
                state.house.usd, f.usd_amount
            )
        } else {
            // Past the USD ceiling of the contract: not a liquidity problem of the house, but
            // equally a credit that cannot be made, so it is refused the same way.
            format!(
                "crediting {} USD would take the account of {} past the largest USD amount",
                f.usd_amount, f.user_id
            )
        };
        return failed(f, CreditFailReason::InsufficientLiquidity, message, now_ms);
    };
    let user = user_account(&f.user_id);
    UsdDecision {
        handled: Handled::Applied,
        writes: UsdWrites {
            credit: Some((
                f.saga_id,
                CreditRecord {
                    user_id: f.user_id.clone(),
                    state: CreditState::Credited {
                        usd_amount: f.usd_amount,
                        credited_at_ms: now_ms,
                    },
                    updated_at_ms: now_ms,
                },
            )),
            account: Some((
                f.user_id.clone(),
                UsdAccount {
                    usd: user_after,
                    ..account
                },
            )),
            house: Some(HouseAccount { usd: house_after }),
        },
        events: vec![Event::UsdCredited(UsdCredited {
            saga_id: f.saga_id,
            user_id: f.user_id.clone(),
            usd_amount: f.usd_amount,
        })],
        journal: vec![JournalEntry::new(
            f.saga_id,
            Op::Credit,
            Currency::Usd,
            (Account::House, user),
            f.usd_amount.amount(),
            now_ms,
        )],
    }
}

fn failed(f: &TradeFilled, reason: CreditFailReason, message: String, now_ms: u64) -> UsdDecision {
    UsdDecision {
        handled: Handled::Applied,
        writes: UsdWrites {
            credit: Some((f.saga_id, failed_record(&f.user_id, reason, now_ms))),
            ..UsdWrites::default()
        },
        events: vec![Event::UsdCreditFailed(UsdCreditFailed {
            saga_id: f.saga_id,
            user_id: f.user_id.clone(),
            reason,
            message,
        })],
        ..Decision::ignored()
    }
}

/// The record of a credit fx-usd refused.
fn failed_record(user_id: &UserId, reason: CreditFailReason, now_ms: u64) -> CreditRecord {
    CreditRecord {
        user_id: user_id.clone(),
        state: CreditState::Failed { reason },
        updated_at_ms: now_ms,
    }
}

/// trade.cancelled before trade.filled: remember it so the later fill is ignored, and say the
/// final word now (ARCHITECTURE.md, "The rules the services keep": final words).
fn tombstone(c: &TradeCancelled, now_ms: u64) -> UsdDecision {
    let reason = CreditFailReason::OrderCancelled;
    UsdDecision {
        handled: Handled::Applied,
        writes: UsdWrites {
            credit: Some((c.saga_id, failed_record(&c.user_id, reason, now_ms))),
            ..UsdWrites::default()
        },
        events: vec![Event::UsdCreditFailed(UsdCreditFailed {
            saga_id: c.saga_id,
            user_id: c.user_id.clone(),
            reason,
            message: "the order was cancelled before fx-usd saw the fill; nothing will be \
                      credited"
                .into(),
        })],
        ..Decision::ignored()
    }
}

/// Takes a credit back. Never refused for a freeze (ARCHITECTURE.md, "The rules the services keep": a freeze blocks
/// credits, never a compensating debit). The amount is what was credited, not what the
/// cancel says: this undoes our own effect.
fn debit(
    state: &UsdState,
    c: &TradeCancelled,
    user: &UserId,
    usd_amount: events::Usd,
    credited_at_ms: u64,
    now_ms: u64,
) -> Result<UsdDecision, BrokenInvariant> {
    let Some(account) = state.account.clone() else {
        return Err(BrokenInvariant(format!(
            "saga {} credited {usd_amount} USD to {user}, whose account record is missing",
            c.saga_id
        )));
    };
    let Some(user_after) = account.usd.checked_sub(usd_amount) else {
        return Err(BrokenInvariant(format!(
            "saga {} credited {usd_amount} USD to {user}, who now holds only {} USD; \
             refusing to go negative",
            c.saga_id, account.usd
        )));
    };
    let Some(house_after) = state.house.usd.checked_add(usd_amount) else {
        return Err(BrokenInvariant(format!(
            "returning {usd_amount} USD would take the house float past the largest amount"
        )));
    };
    Ok(UsdDecision {
        handled: Handled::Applied,
        writes: UsdWrites {
            credit: Some((
                c.saga_id,
                CreditRecord {
                    user_id: user.clone(),
                    state: CreditState::Debited {
                        usd_amount,
                        credited_at_ms,
                        debited_at_ms: now_ms,
                    },
                    updated_at_ms: now_ms,
                },
            )),
            account: Some((
                user.clone(),
                UsdAccount {
                    usd: user_after,
                    ..account
                },
            )),
            house: Some(HouseAccount { usd: house_after }),
        },
        events: vec![Event::UsdDebited(UsdDebited {
            saga_id: c.saga_id,
            user_id: user.clone(),
            usd_amount,
        })],
        journal: vec![JournalEntry::new(
            c.saga_id,
            Op::Debit,
            Currency::Usd,
            (user_account(user), Account::House),
            usd_amount.amount(),
            now_ms,
        )],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::{CancelReason, Krw, Rate, SagaId, Usd};
    use rust_decimal::Decimal;

    const NOW: u64 = 1_000_000;

    fn saga() -> SagaId {
        SagaId::parse("0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11").unwrap()
    }

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    fn usd(s: &str) -> Usd {
        Usd::parse(s).unwrap()
    }

    fn filled() -> Event {
        Event::TradeFilled(TradeFilled {
            saga_id: saga(),
            user_id: alice(),
            krw_amount: Krw::parse("1500000").unwrap(),
            usd_amount: usd("1071.42"),
            rate: Rate::new(Decimal::from(1400)).unwrap(),
        })
    }

    fn cancelled() -> Event {
        Event::TradeCancelled(TradeCancelled {
            saga_id: saga(),
            user_id: alice(),
            krw_amount: Krw::parse("1500000").unwrap(),
            usd_amount: usd("1071.42"),
            reason: CancelReason::HoldReleased,
        })
    }

    fn state(account: Option<UsdAccount>, house: &str) -> UsdState {
        UsdState {
            credit: None,
            account,
            house: HouseAccount { usd: usd(house) },
        }
    }

    fn frozen(balance: &str) -> UsdAccount {
        UsdAccount {
            usd: usd(balance),
            frozen: true,
            ..UsdAccount::open(0)
        }
    }

    fn fail_reason(d: &UsdDecision) -> CreditFailReason {
        match d.events.as_slice() {
            [Event::UsdCreditFailed(f)] => f.reason,
            other => panic!("expected one usd.credit_failed, got {other:?}"),
        }
    }

    #[test]
    fn given_an_unknown_user_when_filled_then_an_account_is_opened_and_credited() {
        let d = decide(&state(None, "5000.00"), &filled(), NOW).unwrap();
        assert_eq!(d.handled, Handled::Applied);
        assert_eq!(d.writes.account.unwrap().1.usd, usd("1071.42"));
        assert_eq!(d.writes.house.unwrap().usd, usd("3928.58"));
        assert!(matches!(d.events.as_slice(), [Event::UsdCredited(_)]));
        assert_eq!(d.journal[0].op.to_string(), "credit");
        assert_eq!(d.journal[0].credit.to_string(), "user:alice");
    }

    #[test]
    fn given_a_frozen_account_when_filled_then_credit_failed_and_nothing_moves() {
        let d = decide(&state(Some(frozen("1.00")), "5000.00"), &filled(), NOW).unwrap();
        assert_eq!(fail_reason(&d), CreditFailReason::AccountFrozen);
        assert!(d.writes.account.is_none() && d.writes.house.is_none() && d.journal.is_empty());
    }

    #[test]
    fn given_a_thin_house_float_when_filled_then_insufficient_liquidity() {
        let d = decide(&state(None, "1071.41"), &filled(), NOW).unwrap();
        assert_eq!(fail_reason(&d), CreditFailReason::InsufficientLiquidity);
        assert!(d.journal.is_empty());
    }

    #[test]
    fn given_a_credit_when_cancelled_then_debited_even_if_frozen_since() {
        let credited = decide(&state(None, "5000.00"), &filled(), NOW).unwrap();
        let mut account = credited.writes.account.unwrap().1;
        account.frozen = true;
        let s = UsdState {
            credit: credited.writes.credit.map(|(_, c)| c),
            account: Some(account),
            house: credited.writes.house.unwrap(),
        };
        let d = decide(&s, &cancelled(), NOW + 1).unwrap();
        assert!(matches!(d.events.as_slice(), [Event::UsdDebited(_)]));
        assert_eq!(d.writes.account.unwrap().1.usd, Usd::ZERO);
        assert_eq!(d.writes.house.unwrap().usd, usd("5000.00"));
        assert_eq!(d.journal[0].op.to_string(), "debit");
    }

    #[test]
    fn given_a_credit_when_the_user_holds_less_then_abort_instead_of_going_negative() {
        let credited = decide(&state(None, "5000.00"), &filled(), NOW).unwrap();
        let s = UsdState {
            credit: credited.writes.credit.map(|(_, c)| c),
            account: Some(UsdAccount {
                usd: usd("10.00"),
                ..UsdAccount::open(0)
            }),
            house: credited.writes.house.unwrap(),
        };
        let err = decide(&s, &cancelled(), NOW + 1).unwrap_err();
        assert!(err.0.contains("holds only 10.00 USD"), "{err}");
    }

    #[test]
    fn given_no_record_when_cancelled_then_tombstone_and_the_later_fill_is_ignored() {
        let d = decide(&state(None, "5000.00"), &cancelled(), NOW).unwrap();
        assert_eq!(fail_reason(&d), CreditFailReason::OrderCancelled);
        let s = UsdState {
            credit: d.writes.credit.map(|(_, c)| c),
            ..state(None, "5000.00")
        };
        assert_eq!(decide(&s, &filled(), NOW).unwrap(), Decision::ignored());
    }

    #[test]
    fn given_a_credit_failure_when_cancelled_then_nothing_to_undo() {
        let d = decide(&state(Some(frozen("0")), "5000.00"), &filled(), NOW).unwrap();
        let s = UsdState {
            credit: d.writes.credit.map(|(_, c)| c),
            ..state(Some(frozen("0")), "5000.00")
        };
        assert_eq!(decide(&s, &cancelled(), NOW).unwrap(), Decision::ignored());
    }
}
