//! fx-usd's side of an operator's intervention on one saga, as pure decisions over the saga's
//! credit record:
//!
//! | credit record            | refuse-credit                                   | reemit            |
//! |--------------------------|-------------------------------------------------|-------------------|
//! | none (no fill answered)  | failed(`operator`): usd.credit_failed           | refused `unknown_saga` |
//! | failed(`operator`)       | `already_done`                                  | usd.credit_failed |
//! | credited / failed / debited | refused `already_answered`                   | its last word     |
//!
//! With no record, fx-usd has not answered any fill of the saga (every trade.filled it reads
//! is answered at once), whether the fill was dead-lettered, lost, or not made yet: the
//! refusal is its final word, and a later trade.filled is ignored. fx-trade cancels and
//! reverses a fill it made, or, before any fill, says trade.failed(credit_refused) and never
//! asks the venue; fx-krw releases either way.

use events::{
    CreditFailReason, Event, EventKind, InterventionAction, SagaId, UsdCreditFailed, UsdCredited,
    UsdDebited, UserId,
};
use runtime::intervention::{intervened, reasons, Refusal};

use crate::model::{CreditRecord, CreditState};

/// The message of every usd.credit_failed(operator): fixed, so a re-emit is the original byte
/// for byte (who and why are in the usd.intervened beside it).
pub const OPERATOR_MESSAGE: &str =
    "an operator refused this credit; usd.intervened says who and why";

fn credit_failed(saga_id: SagaId, user_id: &UserId, reason: CreditFailReason) -> Event {
    let message = match reason {
        CreditFailReason::Operator => OPERATOR_MESSAGE.to_owned(),
        _ => "re-emitted by an operator; fx-usd keeps the reason, not the original message"
            .to_owned(),
    };
    Event::UsdCreditFailed(UsdCreditFailed {
        saga_id,
        user_id: user_id.clone(),
        reason,
        message,
    })
}

/// `fxctl saga refuse-credit`: the new credit record and the events (usd.credit_failed, then
/// usd.intervened); `Ok(None)` when an operator already refused it (idempotent).
pub fn decide_refuse_credit(
    record: Option<&CreditRecord>,
    saga_id: SagaId,
    user_id: &UserId,
    actor: &str,
    reason: &str,
    now_ms: u64,
) -> Result<Option<(CreditRecord, Vec<Event>)>, Refusal> {
    match record.map(|r| &r.state) {
        None => {
            let failed = credit_failed(saga_id, user_id, CreditFailReason::Operator);
            let record = intervened(
                EventKind::UsdIntervened,
                saga_id,
                user_id,
                InterventionAction::RefuseCredit,
                actor,
                reason,
                std::slice::from_ref(&failed),
            );
            Ok(Some((
                CreditRecord {
                    user_id: user_id.clone(),
                    state: CreditState::Failed {
                        reason: CreditFailReason::Operator,
                    },
                    updated_at_ms: now_ms,
                },
                vec![failed, record],
            )))
        }
        Some(CreditState::Failed {
            reason: CreditFailReason::Operator,
        }) => Ok(None),
        Some(state) => Err(Refusal::new(
            reasons::ALREADY_ANSWERED,
            format!(
                "fx-usd already answered saga {saga_id}: {}; the saga goes on from that answer",
                match state {
                    CreditState::Credited { usd_amount, .. } =>
                        format!("credited {usd_amount} USD"),
                    CreditState::Debited { usd_amount, .. } =>
                        format!("credited {usd_amount} USD and debited it back"),
                    CreditState::Failed { reason } => format!(
                        "credit_failed ({})",
                        serde_json::to_value(reason)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    ),
                }
            ),
        )),
    }
}

/// `fxctl saga reemit` at fx-usd: its last word, rebuilt from the record, then usd.intervened.
pub fn decide_reemit(
    record: Option<&CreditRecord>,
    saga_id: SagaId,
    actor: &str,
    reason: &str,
) -> Result<Vec<Event>, Refusal> {
    let Some(record) = record else {
        return Err(Refusal::new(
            reasons::UNKNOWN_SAGA,
            format!("fx-usd has no record of saga {saga_id}: it has not answered a fill of it"),
        ));
    };
    let user_id = &record.user_id;
    let last = match &record.state {
        CreditState::Credited { usd_amount, .. } => Event::UsdCredited(UsdCredited {
            saga_id,
            user_id: user_id.clone(),
            usd_amount: *usd_amount,
        }),
        CreditState::Failed { reason } => credit_failed(saga_id, user_id, *reason),
        CreditState::Debited { usd_amount, .. } => Event::UsdDebited(UsdDebited {
            saga_id,
            user_id: user_id.clone(),
            usd_amount: *usd_amount,
        }),
    };
    let record = intervened(
        EventKind::UsdIntervened,
        saga_id,
        user_id,
        InterventionAction::Reemit,
        actor,
        reason,
        std::slice::from_ref(&last),
    );
    Ok(vec![last, record])
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::Usd;

    fn saga() -> SagaId {
        SagaId::from(uuid::Uuid::from_u128(9))
    }

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    #[test]
    fn refuse_credit_answers_an_unanswered_fill_once_and_is_idempotent() {
        let (record, events) = decide_refuse_credit(None, saga(), &alice(), "admin", "why", 5)
            .unwrap()
            .expect("refused now");
        assert_eq!(
            record.state,
            CreditState::Failed {
                reason: CreditFailReason::Operator
            }
        );
        let [Event::UsdCreditFailed(cf), Event::UsdIntervened(i)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(cf.reason, CreditFailReason::Operator);
        assert_eq!(i.action, InterventionAction::RefuseCredit);
        assert_eq!(i.events, vec!["usd.credit_failed".to_owned()]);
        assert_eq!(
            decide_refuse_credit(Some(&record), saga(), &alice(), "admin", "again", 6),
            Ok(None)
        );
        // The re-emit is the original, byte for byte.
        let again = decide_reemit(Some(&record), saga(), "admin", "lost").unwrap();
        assert_eq!(again[0], events[0]);
        assert_eq!(again[0].to_json(), events[0].to_json());
    }

    #[test]
    fn refuse_credit_is_refused_once_fx_usd_answered() {
        let credited = CreditRecord {
            user_id: alice(),
            state: CreditState::Credited {
                usd_amount: Usd::parse("10.00").unwrap(),
                credited_at_ms: 1,
            },
            updated_at_ms: 1,
        };
        let frozen = CreditRecord {
            state: CreditState::Failed {
                reason: CreditFailReason::AccountFrozen,
            },
            ..credited.clone()
        };
        for r in [&credited, &frozen] {
            let refusal =
                decide_refuse_credit(Some(r), saga(), &alice(), "admin", "why", 5).unwrap_err();
            assert_eq!(refusal.code, reasons::ALREADY_ANSWERED);
        }
        let events = decide_reemit(Some(&credited), saga(), "admin", "lost").unwrap();
        assert_eq!(events[0].kind(), EventKind::UsdCredited);
        assert_eq!(
            decide_reemit(None, saga(), "admin", "lost")
                .unwrap_err()
                .code,
            reasons::UNKNOWN_SAGA
        );
    }
}
