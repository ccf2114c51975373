//! What every service shares about an operator's intervention on one saga (`fxctl saga
//! <action> ID --reason TEXT`): the admin request's body, the refusal with its machine reason,
//! the `<domain>.intervened` record, and the reply. Each service decides the action itself,
//! with a pure function over its own records ([`Intervene`]); [`intervene`] is the one path
//! every caller (the admin endpoint, the simulation, tests) takes: it checks the operator's
//! reason, has the service decide, and applies the decision like any other
//! ([`Decision::apply`]).

use events::{Event, EventKind, Intervened, InterventionAction, SagaId, UserId, MAX_MESSAGE_CHARS};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::admin::{handler, AdminError, AdminHandler, AdminRequest};
use crate::{Clock, Decision, Handled, Participant, Records, Store, TxResult, Writes};

/// Admin endpoint of `reemit` (`fxadmin.<service>.saga_reemit`), on fx-krw, fx-trade, fx-usd.
pub const REEMIT_ENDPOINT: &str = "saga_reemit";
/// Admin endpoint of `cancel`, on fx-krw.
pub const CANCEL_ENDPOINT: &str = "saga_cancel";
/// Admin endpoint of `refuse-credit`, on fx-usd.
pub const REFUSE_CREDIT_ENDPOINT: &str = "saga_refuse_credit";

/// Refusal reasons (the machine part of a refused intervention).
pub mod reasons {
    /// The service has no record of the saga.
    pub const UNKNOWN_SAGA: &str = "unknown_saga";
    /// The service knows the saga but said nothing of its own for it yet.
    pub const NOTHING_TO_REEMIT: &str = "nothing_to_reemit";
    /// cancel: the hold is pinned by a fill (after the pivot).
    pub const PINNED: &str = "pinned";
    /// cancel: the saga already ended at fx-krw (committed, released or rejected).
    pub const FINISHED: &str = "finished";
    /// cancel: fx-krw has seen events of the saga but no request, so holds nothing.
    pub const NO_HOLD: &str = "no_hold";
    /// refuse-credit: fx-usd already answered the fill (credited, or refused for another reason).
    pub const ALREADY_ANSWERED: &str = "already_answered";
    /// The action is another service's.
    pub const WRONG_SERVICE: &str = "wrong_service";
    /// The request carries no reason, or one longer than an event may hold.
    pub const BAD_REASON: &str = "bad_reason";
}

/// The body of every intervention request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterventionRequest {
    /// The saga acted on.
    pub saga_id: SagaId,
    /// The saga's user: routes the request to its partition, and lets fx-usd answer a fill it
    /// never saw. A service that has a record of the saga uses its own.
    pub user_id: UserId,
    /// The operator's reason, recorded in the `<domain>.intervened` event.
    pub reason: String,
}

/// The saga's state does not allow the action: nothing was written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    /// The machine reason (see [`reasons`]).
    pub code: &'static str,
    /// What the operator reads: why, and what to do instead.
    pub message: String,
}

impl Refusal {
    /// A refusal with this reason and message.
    pub fn new(code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

impl From<Refusal> for AdminError {
    /// A 409 (the saga's state conflicts with the action), or 404 for an unknown saga, 400 for
    /// a bad reason; the message starts with the machine reason, `<reason>: <message>`.
    fn from(r: Refusal) -> AdminError {
        AdminError {
            code: match r.code {
                reasons::UNKNOWN_SAGA => 404,
                reasons::BAD_REASON | reasons::WRONG_SERVICE => 400,
                _ => 409,
            },
            message: r.to_string(),
        }
    }
}

/// Checks the operator's reason: present, and short enough for an event.
pub fn check_reason(reason: &str) -> Result<(), Refusal> {
    if reason.trim().is_empty() {
        return Err(Refusal::new(
            reasons::BAD_REASON,
            "an intervention needs a reason (--reason TEXT): it is recorded with your identity",
        ));
    }
    if reason.chars().count() > MAX_MESSAGE_CHARS {
        return Err(Refusal::new(
            reasons::BAD_REASON,
            format!("the reason is longer than {MAX_MESSAGE_CHARS} characters"),
        ));
    }
    Ok(())
}

/// What a carried-out intervention did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Done now: these events (the last one is the `<domain>.intervened` record) go to the
    /// outbox.
    Done(Vec<Event>),
    /// The same action was carried out before; nothing is emitted again.
    AlreadyDone,
}

/// The `<domain>.intervened` record (`kind` is one of the intervention kinds) of `action` on
/// `saga_id`, listing what `caused` emits.
pub fn intervened(
    kind: EventKind,
    saga_id: SagaId,
    user_id: &UserId,
    action: InterventionAction,
    actor: &str,
    reason: &str,
    caused: &[Event],
) -> Event {
    let actor: String = actor.chars().take(MAX_MESSAGE_CHARS).collect();
    let i = Intervened {
        saga_id,
        user_id: user_id.clone(),
        action,
        actor,
        reason: reason.to_owned(),
        events: caused
            .iter()
            .take(events::MAX_INTERVENTION_EVENTS)
            .map(|e| e.kind().type_name())
            .collect(),
    };
    match kind {
        EventKind::KrwIntervened => Event::KrwIntervened(i),
        EventKind::TradeIntervened => Event::TradeIntervened(i),
        EventKind::UsdIntervened => Event::UsdIntervened(i),
        other => panic!("{other} is not an intervention kind"),
    }
}

/// The admin reply of an intervention: `outcome` `done` (with the events emitted, by type) or
/// `already_done`.
pub fn reply(
    service: &str,
    saga_id: SagaId,
    action: InterventionAction,
    verdict: &Verdict,
) -> serde_json::Value {
    let (outcome, events): (&str, Vec<String>) = match verdict {
        Verdict::Done(events) => (
            "done",
            events.iter().map(|e| e.kind().type_name()).collect(),
        ),
        Verdict::AlreadyDone => ("already_done", Vec::new()),
    };
    serde_json::json!({
        "service": service,
        "saga_id": saga_id,
        "action": action.as_str(),
        "outcome": outcome,
        "events": events,
    })
}

/// The refusal of an action that is another service's (`service` is e.g. `krw`).
pub fn wrong_service(service: &str, action: InterventionAction) -> Refusal {
    Refusal::new(
        reasons::WRONG_SERVICE,
        format!("{} is not fx-{service}'s action", action.as_str()),
    )
}

/// A service's side of an operator's intervention on one saga.
pub trait Intervene: Participant {
    /// The service's record writes.
    type Writes: Writes;

    /// Its `<domain>.intervened` kind: what an intervention emits is caused by
    /// `saga_id.intervention_id(INTERVENED, action)`.
    const INTERVENED: EventKind;

    /// Decides `action` on `req.saga_id` from the service's records, read through `records`
    /// inside the caller's transaction. `Applied` when it acts now (its events end with the
    /// `<domain>.intervened` record), `Ignored` when the same action was carried out before;
    /// a refusal when the saga's state does not allow it. Writes nothing itself: the reason is
    /// checked and the decision applied by [`intervene`].
    fn intervene<R: Records>(
        &self,
        records: &R,
        action: InterventionAction,
        req: &InterventionRequest,
        actor: &str,
        now_ms: u64,
    ) -> TxResult<Result<Decision<Self::Writes>, Refusal>>;
}

/// Carries out an operator's intervention at `service`, inside the caller's transaction:
/// refuses a missing or over-long reason, has the service decide, and applies the decision
/// (caused by the intervention's own event id). A refusal writes nothing.
pub fn intervene<S: Intervene, R: Records>(
    service: &S,
    records: &R,
    action: InterventionAction,
    req: &InterventionRequest,
    actor: &str,
    now_ms: u64,
) -> TxResult<Result<Verdict, Refusal>> {
    if let Err(refusal) = check_reason(&req.reason) {
        return Ok(Err(refusal));
    }
    let decision = match service.intervene(records, action, req, actor, now_ms)? {
        Ok(d) => d,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let cause = req.saga_id.intervention_id(S::INTERVENED, action);
    Ok(Ok(match decision.apply(records, &cause, now_ms)? {
        Handled::Applied => Verdict::Done(decision.events),
        // An intervention is either carried out now or was before: nothing else applies.
        _ => Verdict::AlreadyDone,
    }))
}

/// The admin handler of one intervention on `service`: reads the request, carries it out
/// through [`intervene`] in one transaction, and answers with [`reply`] (which
/// [`crate::admin::serve_admin`] sends once the store has flushed, so the relay may publish
/// what it emitted); a refusal is an error reply whose message starts with its machine reason.
pub fn endpoint<S: Intervene>(
    service: Arc<S>,
    store: Arc<Store>,
    clock: Clock,
    action: InterventionAction,
) -> AdminHandler {
    handler(move |req: AdminRequest| {
        let (service, store, clock) = (service.clone(), store.clone(), clock.clone());
        async move {
            let body: InterventionRequest = req.json()?;
            let verdict = store
                .transact(|tx| intervene(&*service, &*tx, action, &body, &req.actor, clock()))
                .map_err(AdminError::internal)??;
            Ok(reply(service.name(), body.saga_id, action, &verdict))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_required_and_bounded() {
        assert_eq!(check_reason("  ").unwrap_err().code, reasons::BAD_REASON);
        assert!(check_reason(&"x".repeat(MAX_MESSAGE_CHARS + 1)).is_err());
        assert!(check_reason("customer called").is_ok());
    }

    #[test]
    fn a_refusal_keeps_its_machine_reason_in_the_admin_error() {
        let e = AdminError::from(Refusal::new(reasons::PINNED, "past the pivot"));
        assert_eq!(
            (e.code, e.message.as_str()),
            (409, "pinned: past the pivot")
        );
        assert_eq!(
            AdminError::from(Refusal::new(reasons::UNKNOWN_SAGA, "no")).code,
            404
        );
    }
}
