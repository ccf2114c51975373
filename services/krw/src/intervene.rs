//! fx-krw's side of an operator's intervention on one saga, as pure decisions over the saga's
//! records (the same [`State`] the event decisions read):
//!
//! | saga at fx-krw          | cancel                                   | reemit                    |
//! |-------------------------|------------------------------------------|---------------------------|
//! | none                    | refused `unknown_saga`                   | refused `unknown_saga`    |
//! | events, no request      | refused `no_hold`                        | refused `nothing_to_reemit` |
//! | held, not pinned        | released (`operator`), journal `release` | krw.held                  |
//! | held, pinned by a fill  | refused `pinned` (after the pivot)       | krw.held                  |
//! | released by an operator | `already_done`                           | krw.released              |
//! | committed / released / rejected | refused `finished`               | its last word             |
//!
//! A re-emitted event is rebuilt from the records with the id of the original (consumers
//! drop what they had; see docs/events.md for the broker's duplicate window). krw.rejected's
//! human message is not kept, so its re-emit says so; its reason is the original's.

use events::{
    Event, EventKind, InterventionAction, KrwCommitted, KrwHeld, KrwRejected, KrwReleased,
    ReleaseReason, SagaId,
};
use runtime::intervention::{intervened, reasons, Refusal};
use runtime::Handled;

use crate::decide::{release, snake, Decision, Draft, State};
use crate::records::{SagaRecord, SagaStatus};
use crate::KrwError;

fn unknown(saga_id: SagaId) -> Refusal {
    Refusal::new(
        reasons::UNKNOWN_SAGA,
        format!("fx-krw has no record of saga {saga_id}; check the id (and the user's partition)"),
    )
}

/// `fxctl saga cancel`: releases an open hold that no fill has pinned, now, with reason
/// `operator`; fx-trade and fx-usd then compensate as after an expiry. `Ignored` when an
/// operator already cancelled it (idempotent); a refusal when the state does not allow it.
pub fn decide_cancel(
    state: &State,
    saga_id: SagaId,
    actor: &str,
    reason: &str,
    now_ms: u64,
) -> Result<Result<Decision, Refusal>, KrwError> {
    let Some(saga) = &state.saga else {
        return Ok(Err(unknown(saga_id)));
    };
    let refuse = |code, message: String| Ok(Err(Refusal::new(code, message)));
    match saga.status {
        SagaStatus::Released {
            reason: ReleaseReason::Operator,
        } => Ok(Ok(Decision::ignored())),
        SagaStatus::NoRequest => refuse(
            reasons::NO_HOLD,
            format!("fx-krw has seen events of saga {saga_id} but no request: nothing is held"),
        ),
        SagaStatus::Held if saga.pinned => refuse(
            reasons::PINNED,
            format!(
                "saga {saga_id} is past the pivot: a trade.filled pinned its hold, so it ends \
                 through fx-usd's answer. If that answer never comes, use `fxctl saga \
                 refuse-credit`"
            ),
        ),
        SagaStatus::Held => {
            let mut d = Draft::unchanged(state, Handled::Applied);
            release(&mut d, saga_id, ReleaseReason::Operator, now_ms)?;
            d.events.push(intervened(
                EventKind::KrwIntervened,
                saga_id,
                &saga.user,
                InterventionAction::Cancel,
                actor,
                reason,
                &d.events,
            ));
            Ok(Ok(d.finish(state, saga_id)))
        }
        SagaStatus::Committed | SagaStatus::Released { .. } | SagaStatus::Rejected { .. } => {
            refuse(
                reasons::FINISHED,
                format!(
                    "saga {saga_id} already ended at fx-krw ({}); there is no hold to release",
                    status_words(saga)
                ),
            )
        }
    }
}

/// `fxctl saga reemit` at fx-krw: its last word for the saga, rebuilt from the record, then
/// the `krw.intervened` record. Changes no record.
pub fn decide_reemit(
    state: &State,
    saga_id: SagaId,
    actor: &str,
    reason: &str,
) -> Result<Vec<Event>, Refusal> {
    let Some(saga) = &state.saga else {
        return Err(unknown(saga_id));
    };
    let user_id = saga.user.clone();
    let amount = saga.request.as_ref().map(|r| r.krw_amount);
    let last = match (saga.status, amount) {
        (SagaStatus::Held, Some(krw_amount)) => Event::KrwHeld(KrwHeld {
            saga_id,
            user_id: user_id.clone(),
            krw_amount,
            min_usd_amount: saga.request.as_ref().and_then(|r| r.min_usd_amount),
            hold_expires_at_ms: saga.expires_at_ms.unwrap_or_default(),
        }),
        (SagaStatus::Committed, Some(krw_amount)) => Event::KrwCommitted(KrwCommitted {
            saga_id,
            user_id: user_id.clone(),
            krw_amount,
        }),
        (SagaStatus::Released { reason }, Some(krw_amount)) => Event::KrwReleased(KrwReleased {
            saga_id,
            user_id: user_id.clone(),
            krw_amount,
            reason,
        }),
        (SagaStatus::Rejected { reason }, _) => Event::KrwRejected(KrwRejected {
            saga_id,
            user_id: user_id.clone(),
            reason,
            message: "re-emitted by an operator; fx-krw keeps the reason, not the original \
                      message"
                .into(),
        }),
        _ => {
            return Err(Refusal::new(
                reasons::NOTHING_TO_REEMIT,
                format!("fx-krw has said nothing of its own for saga {saga_id} yet"),
            ))
        }
    };
    let record = intervened(
        EventKind::KrwIntervened,
        saga_id,
        &user_id,
        InterventionAction::Reemit,
        actor,
        reason,
        std::slice::from_ref(&last),
    );
    Ok(vec![last, record])
}

fn status_words(saga: &SagaRecord) -> String {
    match saga.status {
        SagaStatus::Committed => "committed".into(),
        SagaStatus::Released { reason } => format!("released, {}", snake(&reason)),
        SagaStatus::Rejected { reason } => format!("rejected, {}", snake(&reason)),
        SagaStatus::Held => "held".into(),
        SagaStatus::NoRequest => "no request".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{decide, Input};
    use crate::records::{Account, House};
    use crate::KrwConfig;
    use events::{ExchangeRequested, Krw, UserId};

    const T0: u64 = 1_800_000_000_000;

    fn saga() -> SagaId {
        SagaId::from(uuid::Uuid::from_u128(7))
    }

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    fn step(state: &State, input: Input<'_>) -> State {
        let d = decide(state, &KrwConfig::default(), &input, T0).unwrap();
        state.after(&d.writes)
    }

    /// alice holds 300,000 of her 1,000,000 KRW for the saga.
    fn held() -> State {
        let start = State {
            saga: None,
            account: Some(Account {
                available: Krw::parse("1000000").unwrap(),
                ..Account::empty()
            }),
            house: House::default(),
        };
        let req = ExchangeRequested {
            saga_id: saga(),
            user_id: alice(),
            krw_amount: Krw::parse("300000").unwrap(),
            min_usd_amount: None,
        };
        step(&start, Input::Requested(&req))
    }

    fn cancel(state: &State) -> Result<Decision, Refusal> {
        decide_cancel(state, saga(), "admin", "customer called", T0 + 5).unwrap()
    }

    #[test]
    fn cancel_releases_an_unpinned_hold_for_the_operator_and_records_who_and_why() {
        let before = held();
        let d = cancel(&before).unwrap();
        assert_eq!(d.handled, Handled::Applied);
        let after = before.after(&d.writes);
        let account = after.account.as_ref().unwrap();
        assert_eq!(account.available, Krw::parse("1000000").unwrap());
        assert_eq!(account.held, Krw::ZERO);
        assert_eq!(
            after.saga.as_ref().unwrap().status,
            SagaStatus::Released {
                reason: ReleaseReason::Operator
            }
        );
        assert_eq!(d.journal.len(), 1);
        assert_eq!(d.journal[0].op, runtime::ledger::Op::Release);
        let [Event::KrwReleased(rel), Event::KrwIntervened(i)] = d.events.as_slice() else {
            panic!("{:?}", d.events)
        };
        assert_eq!(rel.reason, ReleaseReason::Operator);
        assert_eq!(i.action, InterventionAction::Cancel);
        assert_eq!(
            (i.actor.as_str(), i.reason.as_str()),
            ("admin", "customer called")
        );
        assert_eq!(i.events, vec!["krw.released".to_owned()]);
        assert_eq!(
            d.events[1].id(),
            format!("{}:krw.intervened.cancel", saga())
        );

        // Idempotent: a second cancel finds it done and changes nothing.
        assert_eq!(cancel(&after), Ok(Decision::ignored()));
    }

    #[test]
    fn cancel_is_refused_after_the_pivot_when_finished_and_for_unknown_sagas() {
        let pinned = step(
            &held(),
            Input::TradeFilled {
                saga_id: saga(),
                user: &alice(),
            },
        );
        assert_eq!(cancel(&pinned).unwrap_err().code, reasons::PINNED);
        let committed = step(
            &pinned,
            Input::UsdCredited {
                saga_id: saga(),
                user: &alice(),
            },
        );
        assert_eq!(cancel(&committed).unwrap_err().code, reasons::FINISHED);
        let failed = step(
            &held(),
            Input::TradeFailed {
                saga_id: saga(),
                user: &alice(),
            },
        );
        assert_eq!(cancel(&failed).unwrap_err().code, reasons::FINISHED);
        let nothing = State {
            saga: None,
            account: None,
            house: House::default(),
        };
        assert_eq!(cancel(&nothing).unwrap_err().code, reasons::UNKNOWN_SAGA);
        let tombstone = step(
            &nothing,
            Input::TradeFailed {
                saga_id: saga(),
                user: &alice(),
            },
        );
        assert_eq!(cancel(&tombstone).unwrap_err().code, reasons::NO_HOLD);
    }

    #[test]
    fn reemit_rebuilds_the_last_word_with_the_original_id_and_body() {
        let state = held();
        let original = decide(
            &State {
                saga: None,
                ..state.clone()
            },
            &KrwConfig::default(),
            &Input::Requested(&ExchangeRequested {
                saga_id: saga(),
                user_id: alice(),
                krw_amount: Krw::parse("300000").unwrap(),
                min_usd_amount: None,
            }),
            T0,
        )
        .unwrap();
        let events = decide_reemit(&state, saga(), "admin", "lost").unwrap();
        assert_eq!(events[0], original.events[0], "krw.held, byte for byte");
        assert_eq!(events[0].id(), original.events[0].id());
        assert_eq!(events[1].kind(), EventKind::KrwIntervened);

        let d = cancel(&state).unwrap();
        let events = decide_reemit(&state.after(&d.writes), saga(), "admin", "lost").unwrap();
        assert_eq!(events[0], d.events[0], "krw.released(operator)");

        let nothing = State {
            saga: None,
            account: None,
            house: House::default(),
        };
        assert_eq!(
            decide_reemit(&nothing, saga(), "admin", "x")
                .unwrap_err()
                .code,
            reasons::UNKNOWN_SAGA
        );
    }
}
