//! The thin adapter: load records through [`Records`], call the pure decision, apply it
//! ([`runtime::Decision::apply`]: the changed records, the journal, the events). The runtime calls it inside its one transaction per event; the
//! simulation calls it with an in-memory `Records`.

use std::future::Future;

use events::{DecodeError, Event, EventKind, InterventionAction, RejectReason, SagaId, UserId};
use runtime::core::Storage;
use runtime::intervention::{wrong_service, Intervene, InterventionRequest, Refusal};
use runtime::{abort, Handled, Participant, ReadRecords, Records, TxResult};

use crate::decide::{decide, Decision, Input, InvalidRequest, KrwWrites, State};
use crate::records::{
    account_key, expiry_due, parse_expiry_key, saga_key, SagaRecord, EXPIRY_PREFIX, HOUSE_KEY,
};
use crate::KrwConfig;

/// Event kinds fx-krw consumes.
pub const CONSUMES: [EventKind; 5] = [
    EventKind::ExchangeRequested,
    EventKind::TradeFilled,
    EventKind::TradeFailed,
    EventKind::TradeCancelled,
    EventKind::UsdCredited,
];

/// fx-krw: KRW accounts, holds (TCC) and the KRW journal.
#[derive(Clone, Debug)]
pub struct KrwService {
    config: KrwConfig,
}

impl KrwService {
    /// A service with these limits and hold timings.
    pub fn new(config: KrwConfig) -> KrwService {
        KrwService { config }
    }

    /// The service's settings.
    pub fn config(&self) -> &KrwConfig {
        &self.config
    }

    /// Runs one decision inside the caller's transaction: loads the saga, its user's account
    /// and the house, decides, and applies the decision (which writes only what changed: a
    /// duplicate writes nothing). Emitted events carry `causation_id` as `Fx-Causation-Id`.
    pub fn apply<R: Records>(
        &self,
        r: &R,
        input: &Input<'_>,
        causation_id: &str,
        now_ms: u64,
    ) -> TxResult<Handled> {
        let before = load(r, input)?;
        match decide(&before, &self.config, input, now_ms) {
            Ok(d) => d.apply(r, causation_id, now_ms),
            Err(e) => abort(e.into()),
        }
    }

    /// The hold-expiry timer for one saga, run in a transaction of its own exactly like an
    /// event (DESIGN: a timer that read, then wrote outside the saga's transaction released a
    /// hold twice in the model). Releases an open, unpinned hold once `expires_at + grace` is
    /// reached (`krw.released` with reason `expired`, journal `release`); anything else is a
    /// no-op (`Ignored`), so sweeping a saga twice or late is harmless.
    pub fn expire<R: Records>(&self, r: &R, saga_id: SagaId, now_ms: u64) -> TxResult<Handled> {
        // The release answers the hold timing out, so the hold is its cause.
        let causation = saga_id.event_id(EventKind::KrwHeld);
        self.apply(r, &Input::Expire { saga_id }, &causation, now_ms)
    }

    /// Sagas whose expiry index entry is due at `now_ms` (expiry plus grace reached), oldest
    /// first, streamed from the index up to the first entry not yet due. Reading outside a
    /// transaction is safe: `expire` re-checks inside its own.
    pub fn due_expiries<V: ReadRecords>(
        &self,
        records: &V,
        now_ms: u64,
    ) -> runtime::Result<Vec<SagaId>> {
        let mut due = Vec::new();
        for key in records.keys_with_prefix(EXPIRY_PREFIX) {
            let key = key?;
            match parse_expiry_key(&key) {
                Some((at, saga_id)) if expiry_due(at, self.config.hold_grace_ms, now_ms) => {
                    due.push(saga_id)
                }
                // Keys are in expiry order: everything after this one is later still.
                Some(_) => break,
                None => tracing::warn!(key, "ignoring a malformed expiry index key"),
            }
        }
        Ok(due)
    }

    /// The timer's step: expires every due hold, one transaction per saga, over any store the
    /// core commits through (sled here, memory in the simulation). Returns the sagas whose
    /// hold it released. The caller flushes the store afterwards (the released events are
    /// published only after that flush, like any other).
    pub fn expire_due<S: Storage + ReadRecords>(
        &self,
        store: &S,
        now_ms: u64,
    ) -> runtime::Result<Vec<SagaId>> {
        let mut released = Vec::new();
        for saga_id in self.due_expiries(store, now_ms)? {
            if store.transact(|tx| self.expire(&*tx, saga_id, now_ms))? == Handled::Applied {
                released.push(saga_id);
            }
        }
        Ok(released)
    }
}

fn load<R: Records>(r: &R, input: &Input<'_>) -> TxResult<State> {
    load_saga(r, input.saga_id(), input.user())
}

fn load_saga<R: Records>(r: &R, saga_id: SagaId, named: Option<&UserId>) -> TxResult<State> {
    let saga: Option<SagaRecord> = r.get(&saga_key(saga_id))?;
    // Money of a saga moves on the account of the user who holds it, whoever the event names.
    let user = saga.as_ref().map(|s| &s.user).or(named);
    let account = match user {
        Some(u) => r.get(&account_key(u))?,
        None => None,
    };
    Ok(State {
        saga,
        account,
        house: r.get(HOUSE_KEY)?.unwrap_or_default(),
    })
}

/// FNV-1a (64 bit) of subject and body: a stable fingerprint of an unreadable request. Not a
/// security boundary; it only tells a redelivery from a different request on the same saga.
fn digest(subject: &str, payload: &[u8]) -> String {
    let h = events::fnv::fnv1a_64(subject.bytes().chain([0xff]).chain(payload.iter().copied()));
    format!("fnv1a64:{h:016x}")
}

impl Participant for KrwService {
    type Prepared = ();

    fn name(&self) -> &'static str {
        "krw"
    }

    fn consumes(&self) -> &'static [EventKind] {
        &CONSUMES
    }

    fn prepare<V: ReadRecords>(
        &self,
        _records: &V,
        _event: &Event,
        _now_ms: u64,
    ) -> impl Future<Output = ()> + Send {
        // fx-krw decides from its own records alone: nothing to fetch before the transaction.
        std::future::ready(())
    }

    fn handle<R: Records>(
        &self,
        records: &R,
        event: &Event,
        _prepared: &(),
        now_ms: u64,
    ) -> TxResult<Handled> {
        let input = match event {
            Event::ExchangeRequested(e) => Input::Requested(e),
            Event::TradeFilled(e) => Input::TradeFilled {
                saga_id: e.saga_id,
                user: &e.user_id,
            },
            Event::TradeFailed(e) => Input::TradeFailed {
                saga_id: e.saga_id,
                user: &e.user_id,
            },
            Event::TradeCancelled(e) => Input::TradeCancelled {
                saga_id: e.saga_id,
                user: &e.user_id,
            },
            Event::UsdCredited(e) => Input::UsdCredited {
                saga_id: e.saga_id,
                user: &e.user_id,
            },
            // Not ours to react to (the consumer's filter should not deliver these).
            _ => return Ok(Handled::Ignored),
        };
        self.apply(records, &input, &event.id(), now_ms)
    }

    /// A request that names its saga and user but does not decode is answered with
    /// `krw.rejected` (`invalid_request`, or `user_mismatch`), so the requester learns why;
    /// if that saga id is already in use, it is a conflict and goes to the dead-letter stream.
    /// Anything less readable is dead-lettered as usual.
    fn undecodable<R: Records>(
        &self,
        records: &R,
        subject: &str,
        payload: &[u8],
        error: &DecodeError,
        now_ms: u64,
    ) -> TxResult<Handled> {
        let Some((saga_id, user)) = events::salvage_request_ids(subject, payload) else {
            return Ok(Handled::DeadLetter {
                reason: error.reason(),
                message: error.to_string(),
            });
        };
        let reason = match error {
            DecodeError::UserMismatch { .. } => RejectReason::UserMismatch,
            _ => RejectReason::InvalidRequest,
        };
        let invalid = InvalidRequest {
            saga_id,
            user,
            reason,
            message: error.to_string(),
            digest: digest(subject, payload),
        };
        let causation = saga_id.event_id(EventKind::ExchangeRequested);
        self.apply(
            records,
            &Input::InvalidRequest(&invalid),
            &causation,
            now_ms,
        )
    }
}

impl Intervene for KrwService {
    type Writes = KrwWrites;
    const INTERVENED: EventKind = EventKind::KrwIntervened;

    /// An operator's `cancel` or `reemit` of one saga (see [`crate::intervene`]), decided from
    /// the saga's records like an event; `refuse_credit` is fx-usd's.
    fn intervene<R: Records>(
        &self,
        r: &R,
        action: InterventionAction,
        req: &InterventionRequest,
        actor: &str,
        now_ms: u64,
    ) -> TxResult<Result<Decision, Refusal>> {
        let saga_id = req.saga_id;
        let before = load_saga(r, saga_id, Some(&req.user_id))?;
        let decided = match action {
            InterventionAction::Cancel => {
                crate::intervene::decide_cancel(&before, saga_id, actor, &req.reason, now_ms)
            }
            InterventionAction::Reemit => {
                Ok(
                    crate::intervene::decide_reemit(&before, saga_id, actor, &req.reason)
                        .map(Decision::emitting),
                )
            }
            InterventionAction::RefuseCredit => Ok(Err(wrong_service(self.name(), action))),
        };
        match decided {
            Ok(d) => Ok(d),
            Err(e) => abort(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::digest;

    #[test]
    fn digest_is_stable_and_separates_subject_from_body() {
        assert_eq!(digest("a", b"b"), digest("a", b"b"));
        assert_ne!(digest("a", b"bc"), digest("ab", b"c"));
        // Pinned value: a stored digest must keep matching after an upgrade.
        assert_eq!(digest("", b""), "fnv1a64:af64724c8602eb6e");
    }
}
