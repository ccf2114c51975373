//! The events themselves: one flat JSON object each, past tense, with `saga_id` and `user_id`.

use serde::{Deserialize, Serialize};

use crate::{DecodeError, EventKind, Krw, Rate, SagaId, Subject, Usd, UserId};

/// Largest event body accepted, in bytes. Real events are a few hundred bytes; the cap keeps a
/// hostile publisher from making every consumer parse megabytes.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;

/// Longest human message carried in an event, in characters.
pub const MAX_MESSAGE_CHARS: usize = 500;

/// A user's request to exchange KRW for USD. Published on `fx.exchange.requested.<user_id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRequested {
    /// The saga's id, chosen by the requester; a retry must reuse it.
    pub saga_id: SagaId,
    /// Who exchanges; must equal the subject's user token.
    pub user_id: UserId,
    /// KRW to sell, whole won, positive.
    pub krw_amount: Krw,
    /// Slippage guard: fail rather than fill for less USD than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_usd_amount: Option<Usd>,
}

/// Why fx-krw refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The request body could not be read (bad JSON, bad amount, missing field).
    InvalidRequest,
    /// The subject's user differs from the body's `user_id`.
    UserMismatch,
    /// No KRW account exists for the user (nothing was ever deposited).
    UnknownUser,
    /// Available KRW is less than the amount.
    InsufficientFunds,
    /// Below `FX_MIN_KRW`.
    BelowMinimum,
    /// Above `FX_MAX_KRW_PER_TX`.
    AboveTransactionLimit,
    /// Would take the user's day total above `FX_MAX_KRW_PER_USER_DAY`.
    AboveDailyLimit,
}

/// fx-krw refused the request; the saga ends here with nothing moved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KrwRejected {
    pub saga_id: SagaId,
    pub user_id: UserId,
    /// Machine-readable reason.
    pub reason: RejectReason,
    /// What went wrong and what to do, for a person.
    pub message: String,
}

/// fx-krw moved the amount from the user's available to held KRW (TCC try).
/// The amounts of the saga are these, not those of the first request seen on the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KrwHeld {
    pub saga_id: SagaId,
    pub user_id: UserId,
    pub krw_amount: Krw,
    /// The request's slippage guard, so fx-trade decides from this event alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_usd_amount: Option<Usd>,
    /// When an unpinned hold expires, in milliseconds since the Unix epoch.
    pub hold_expires_at_ms: u64,
}

/// fx-krw debited the held KRW to the house (TCC confirm). Terminal for a completed saga.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KrwCommitted {
    pub saga_id: SagaId,
    pub user_id: UserId,
    pub krw_amount: Krw,
}

/// Why a hold was released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    /// fx-trade said trade.failed.
    TradeFailed,
    /// fx-trade reversed the order (trade.cancelled).
    TradeCancelled,
    /// The hold saw no fill before `hold_expires_at_ms` plus the grace period.
    Expired,
    /// An operator cancelled the saga before the pivot (`fxctl saga cancel`); the
    /// `krw.intervened` beside it names who and why.
    Operator,
}

/// fx-krw gave the held KRW back to the user (TCC cancel).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KrwReleased {
    pub saga_id: SagaId,
    pub user_id: UserId,
    pub krw_amount: Krw,
    pub reason: ReleaseReason,
}

/// An operator deposited KRW. `saga_id` is the deposit's own id (an admin operation is a
/// one-step saga), which makes the deposit idempotent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KrwDeposited {
    pub saga_id: SagaId,
    pub user_id: UserId,
    pub krw_amount: Krw,
    /// Who asked for the deposit (the admin identity), for the audit trail.
    pub actor: String,
}

/// fx-trade bought `usd_amount` for `krw_amount` at `rate` (the pivot of the saga).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeFilled {
    pub saga_id: SagaId,
    pub user_id: UserId,
    pub krw_amount: Krw,
    pub usd_amount: Usd,
    /// KRW per USD.
    pub rate: Rate,
}

/// Why fx-trade did not fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TradeFailReason {
    /// The fill would give less than `min_usd_amount`.
    RateMoved,
    /// The venue is down or the circuit breaker is open.
    VenueUnavailable,
    /// The hold expires too soon to fill safely.
    HoldExpiring,
    /// fx-krw released the hold before fx-trade saw it (reordering).
    HoldReleased,
    /// fx-usd refused the credit (an operator's `refuse-credit`) before fx-trade filled: the
    /// saga is never filled.
    CreditRefused,
}

/// fx-trade will not fill this saga.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeFailed {
    pub saga_id: SagaId,
    pub user_id: UserId,
    pub reason: TradeFailReason,
    pub message: String,
}

/// Why fx-trade reversed a fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// fx-usd could not credit (usd.credit_failed).
    CreditFailed,
    /// fx-krw released the hold after the fill (expiry raced the fill).
    HoldReleased,
}

/// fx-trade reversed a filled order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeCancelled {
    pub saga_id: SagaId,
    pub user_id: UserId,
    pub krw_amount: Krw,
    pub usd_amount: Usd,
    pub reason: CancelReason,
}

/// fx-trade's reversal of a cancelled fill executed at the venue: the house sold the fill's
/// USD back. The house's FX gain or loss on the saga is `krw_amount - fill_krw_amount`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeReversed {
    pub saga_id: SagaId,
    pub user_id: UserId,
    /// USD sold back (the fill's USD).
    pub usd_amount: Usd,
    /// KRW the sale brought.
    pub krw_amount: Krw,
    /// The reversal's rate, KRW per USD.
    pub rate: Rate,
    /// KRW the original fill cost.
    pub fill_krw_amount: Krw,
}

/// fx-usd credited the user's USD account from the house float.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsdCredited {
    pub saga_id: SagaId,
    pub user_id: UserId,
    pub usd_amount: Usd,
}

/// Why fx-usd did not credit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditFailReason {
    /// The user's USD account is frozen.
    AccountFrozen,
    /// The house float cannot cover the credit.
    InsufficientLiquidity,
    /// trade.cancelled arrived before trade.filled; the later fill is ignored.
    OrderCancelled,
    /// An operator refused the credit (`fxctl saga refuse-credit`); the `usd.intervened`
    /// beside it names who and why.
    Operator,
}

/// fx-usd will not credit this saga.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsdCreditFailed {
    pub saga_id: SagaId,
    pub user_id: UserId,
    pub reason: CreditFailReason,
    pub message: String,
}

/// fx-usd took a credit back after the order was reversed (always succeeds, even when frozen).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsdDebited {
    pub saga_id: SagaId,
    pub user_id: UserId,
    pub usd_amount: Usd,
}

/// An operator deposited USD (a user's account, or the house float at start-up).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsdDeposited {
    pub saga_id: SagaId,
    pub user_id: UserId,
    pub usd_amount: Usd,
    pub actor: String,
}

/// An operator froze a user's USD account: credits are refused (`usd.credit_failed`
/// `account_frozen`) until it is unfrozen; compensating debits still go through. `saga_id` is
/// the admin operation's own id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsdFrozen {
    pub saga_id: SagaId,
    pub user_id: UserId,
    /// Who froze it, for the audit trail.
    pub actor: String,
}

/// An operator lifted a freeze. `saga_id` is the admin operation's own id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsdUnfrozen {
    pub saga_id: SagaId,
    pub user_id: UserId,
    /// Who unfroze it.
    pub actor: String,
}

/// What an operator did to one saga.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterventionAction {
    /// The service republished its last word for the saga from its records, same event ids.
    Reemit,
    /// fx-krw released an unpinned hold (before the pivot).
    Cancel,
    /// fx-usd answered a fill it had not credited with usd.credit_failed(operator).
    RefuseCredit,
}

impl InterventionAction {
    /// Every action.
    pub const ALL: [InterventionAction; 3] = [
        InterventionAction::Reemit,
        InterventionAction::Cancel,
        InterventionAction::RefuseCredit,
    ];

    /// The wire name: `reemit`, `cancel`, `refuse_credit`.
    pub fn as_str(self) -> &'static str {
        match self {
            InterventionAction::Reemit => "reemit",
            InterventionAction::Cancel => "cancel",
            InterventionAction::RefuseCredit => "refuse_credit",
        }
    }
}

/// Most event types an intervention lists in `events`.
pub const MAX_INTERVENTION_EVENTS: usize = 8;

/// An operator's intervention on one saga, recorded by the service that carried it out
/// (`fx.<domain>.intervened.<user_id>`). Its event id is `<saga_id>:<domain>.intervened.<action>`,
/// so each action is recorded once per saga and service (a repeat within the broker's duplicate
/// window is the same act).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intervened {
    pub saga_id: SagaId,
    pub user_id: UserId,
    /// What the operator asked for.
    pub action: InterventionAction,
    /// Who asked (the admin request's `Fx-Actor`), as deposits and freezes record it.
    pub actor: String,
    /// The operator's reason, in their words (`--reason`).
    pub reason: String,
    /// The events the action emitted or re-emitted, as `domain.event` type names, in order.
    #[serde(default)]
    pub events: Vec<String>,
}

/// Any event of the contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    ExchangeRequested(ExchangeRequested),
    KrwHeld(KrwHeld),
    KrwRejected(KrwRejected),
    KrwCommitted(KrwCommitted),
    KrwReleased(KrwReleased),
    KrwDeposited(KrwDeposited),
    TradeFilled(TradeFilled),
    TradeFailed(TradeFailed),
    TradeCancelled(TradeCancelled),
    TradeReversed(TradeReversed),
    UsdCredited(UsdCredited),
    UsdCreditFailed(UsdCreditFailed),
    UsdDebited(UsdDebited),
    UsdDeposited(UsdDeposited),
    UsdFrozen(UsdFrozen),
    UsdUnfrozen(UsdUnfrozen),
    KrwIntervened(Intervened),
    TradeIntervened(Intervened),
    UsdIntervened(Intervened),
}

/// Applies `$body` to the inner struct of any variant, bound as `$e`.
macro_rules! each {
    ($self:expr, $e:ident => $body:expr) => {
        match $self {
            Event::ExchangeRequested($e) => $body,
            Event::KrwHeld($e) => $body,
            Event::KrwRejected($e) => $body,
            Event::KrwCommitted($e) => $body,
            Event::KrwReleased($e) => $body,
            Event::KrwDeposited($e) => $body,
            Event::TradeFilled($e) => $body,
            Event::TradeFailed($e) => $body,
            Event::TradeCancelled($e) => $body,
            Event::TradeReversed($e) => $body,
            Event::UsdCredited($e) => $body,
            Event::UsdCreditFailed($e) => $body,
            Event::UsdDebited($e) => $body,
            Event::UsdDeposited($e) => $body,
            Event::UsdFrozen($e) => $body,
            Event::UsdUnfrozen($e) => $body,
            Event::KrwIntervened($e) => $body,
            Event::TradeIntervened($e) => $body,
            Event::UsdIntervened($e) => $body,
        }
    };
}

impl Event {
    /// Which kind of event this is.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::ExchangeRequested(_) => EventKind::ExchangeRequested,
            Event::KrwHeld(_) => EventKind::KrwHeld,
            Event::KrwRejected(_) => EventKind::KrwRejected,
            Event::KrwCommitted(_) => EventKind::KrwCommitted,
            Event::KrwReleased(_) => EventKind::KrwReleased,
            Event::KrwDeposited(_) => EventKind::KrwDeposited,
            Event::TradeFilled(_) => EventKind::TradeFilled,
            Event::TradeFailed(_) => EventKind::TradeFailed,
            Event::TradeCancelled(_) => EventKind::TradeCancelled,
            Event::TradeReversed(_) => EventKind::TradeReversed,
            Event::UsdCredited(_) => EventKind::UsdCredited,
            Event::UsdCreditFailed(_) => EventKind::UsdCreditFailed,
            Event::UsdDebited(_) => EventKind::UsdDebited,
            Event::UsdDeposited(_) => EventKind::UsdDeposited,
            Event::UsdFrozen(_) => EventKind::UsdFrozen,
            Event::UsdUnfrozen(_) => EventKind::UsdUnfrozen,
            Event::KrwIntervened(_) => EventKind::KrwIntervened,
            Event::TradeIntervened(_) => EventKind::TradeIntervened,
            Event::UsdIntervened(_) => EventKind::UsdIntervened,
        }
    }

    /// The saga this event belongs to.
    pub fn saga_id(&self) -> SagaId {
        each!(self, e => e.saga_id)
    }

    /// The user this event is about (the subject's last token).
    pub fn user_id(&self) -> &UserId {
        each!(self, e => &e.user_id)
    }

    /// `fx.<domain>.<event>.<user_id>`.
    pub fn subject(&self) -> String {
        self.kind().subject(self.user_id())
    }

    /// The deterministic event id `<saga_id>:<domain>.<event>` (the `Nats-Msg-Id`); an
    /// intervention's is `<saga_id>:<domain>.intervened.<action>`.
    pub fn id(&self) -> String {
        match self.intervention() {
            Some(i) => self.saga_id().intervention_id(self.kind(), i.action),
            None => self.saga_id().event_id(self.kind()),
        }
    }

    /// The intervention this event records, for `<domain>.intervened`.
    pub fn intervention(&self) -> Option<&Intervened> {
        match self {
            Event::KrwIntervened(i) | Event::TradeIntervened(i) | Event::UsdIntervened(i) => {
                Some(i)
            }
            _ => None,
        }
    }

    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail: no maps with non-string keys, no I/O.
        each!(self, e => serde_json::to_vec(e).expect("event serializes"))
    }

    /// Decodes and validates an event from its subject and body.
    ///
    /// Checks, in order: payload size, subject shape, JSON shape of the subject's kind (money as
    /// strings, valid ids), that the body's `user_id` equals the subject's, and that amounts are
    /// positive where zero is meaningless.
    pub fn decode(subject: &str, payload: &[u8]) -> Result<Event, DecodeError> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(DecodeError::TooLarge {
                bytes: payload.len(),
                max_bytes: MAX_PAYLOAD_BYTES,
            });
        }
        let parsed = Subject::parse(subject)?;
        let kind = parsed.kind;
        fn body<'a, T: Deserialize<'a>>(kind: EventKind, p: &'a [u8]) -> Result<T, DecodeError> {
            serde_json::from_slice(p).map_err(|e| DecodeError::Body {
                kind,
                message: e.to_string(),
            })
        }
        let event = match kind {
            EventKind::ExchangeRequested => Event::ExchangeRequested(body(kind, payload)?),
            EventKind::KrwHeld => Event::KrwHeld(body(kind, payload)?),
            EventKind::KrwRejected => Event::KrwRejected(body(kind, payload)?),
            EventKind::KrwCommitted => Event::KrwCommitted(body(kind, payload)?),
            EventKind::KrwReleased => Event::KrwReleased(body(kind, payload)?),
            EventKind::KrwDeposited => Event::KrwDeposited(body(kind, payload)?),
            EventKind::TradeFilled => Event::TradeFilled(body(kind, payload)?),
            EventKind::TradeFailed => Event::TradeFailed(body(kind, payload)?),
            EventKind::TradeCancelled => Event::TradeCancelled(body(kind, payload)?),
            EventKind::TradeReversed => Event::TradeReversed(body(kind, payload)?),
            EventKind::UsdCredited => Event::UsdCredited(body(kind, payload)?),
            EventKind::UsdCreditFailed => Event::UsdCreditFailed(body(kind, payload)?),
            EventKind::UsdDebited => Event::UsdDebited(body(kind, payload)?),
            EventKind::UsdDeposited => Event::UsdDeposited(body(kind, payload)?),
            EventKind::UsdFrozen => Event::UsdFrozen(body(kind, payload)?),
            EventKind::UsdUnfrozen => Event::UsdUnfrozen(body(kind, payload)?),
            EventKind::KrwIntervened => Event::KrwIntervened(body(kind, payload)?),
            EventKind::TradeIntervened => Event::TradeIntervened(body(kind, payload)?),
            EventKind::UsdIntervened => Event::UsdIntervened(body(kind, payload)?),
        };
        if event.user_id() != &parsed.user {
            return Err(DecodeError::UserMismatch {
                subject_user: parsed.user.to_string(),
                body_user: event.user_id().to_string(),
            });
        }
        event.validate()?;
        Ok(event)
    }

    /// Rules JSON shape cannot express: amounts that must be positive, bounded messages.
    fn validate(&self) -> Result<(), DecodeError> {
        let positive_krw = |field: &'static str, v: Krw| {
            if v.is_positive() {
                Ok(())
            } else {
                Err(DecodeError::Invalid {
                    field,
                    message: format!("{field} must be greater than zero"),
                })
            }
        };
        let positive_usd = |field: &'static str, v: Usd| {
            if v.is_positive() {
                Ok(())
            } else {
                Err(DecodeError::Invalid {
                    field,
                    message: format!("{field} must be greater than zero"),
                })
            }
        };
        let message = |m: &str| {
            if m.chars().count() <= MAX_MESSAGE_CHARS {
                Ok(())
            } else {
                Err(DecodeError::Invalid {
                    field: "message",
                    message: format!("message is longer than {MAX_MESSAGE_CHARS} characters"),
                })
            }
        };
        match self {
            Event::ExchangeRequested(e) => {
                positive_krw("krw_amount", e.krw_amount)?;
                if let Some(m) = e.min_usd_amount {
                    positive_usd("min_usd_amount", m)?;
                }
                Ok(())
            }
            Event::KrwHeld(e) => positive_krw("krw_amount", e.krw_amount),
            Event::KrwCommitted(e) => positive_krw("krw_amount", e.krw_amount),
            Event::KrwReleased(e) => positive_krw("krw_amount", e.krw_amount),
            Event::KrwDeposited(e) => {
                message(&e.actor)?;
                positive_krw("krw_amount", e.krw_amount)
            }
            Event::TradeFilled(e) => {
                positive_krw("krw_amount", e.krw_amount)?;
                positive_usd("usd_amount", e.usd_amount)
            }
            Event::TradeCancelled(e) => {
                positive_krw("krw_amount", e.krw_amount)?;
                positive_usd("usd_amount", e.usd_amount)
            }
            Event::TradeReversed(e) => {
                positive_krw("krw_amount", e.krw_amount)?;
                positive_krw("fill_krw_amount", e.fill_krw_amount)?;
                positive_usd("usd_amount", e.usd_amount)
            }
            Event::UsdCredited(e) => positive_usd("usd_amount", e.usd_amount),
            Event::UsdDebited(e) => positive_usd("usd_amount", e.usd_amount),
            Event::UsdDeposited(e) => {
                message(&e.actor)?;
                positive_usd("usd_amount", e.usd_amount)
            }
            Event::KrwRejected(e) => message(&e.message),
            Event::TradeFailed(e) => message(&e.message),
            Event::UsdCreditFailed(e) => message(&e.message),
            Event::UsdFrozen(e) => message(&e.actor),
            Event::UsdUnfrozen(e) => message(&e.actor),
            Event::KrwIntervened(e) | Event::TradeIntervened(e) | Event::UsdIntervened(e) => {
                message(&e.actor)?;
                message(&e.reason)?;
                if e.reason.trim().is_empty() {
                    return Err(DecodeError::Invalid {
                        field: "reason",
                        message: "an intervention needs the operator's reason".into(),
                    });
                }
                if e.events.len() > MAX_INTERVENTION_EVENTS
                    || e.events
                        .iter()
                        .any(|t| EventKind::from_type_name(t).is_none())
                {
                    return Err(DecodeError::Invalid {
                        field: "events",
                        message: format!(
                            "events lists at most {MAX_INTERVENTION_EVENTS} event types of the \
                             contract, e.g. \"krw.released\""
                        ),
                    });
                }
                Ok(())
            }
        }
    }
}

/// From a request that failed to decode, the saga id and user to address a `krw.rejected` to.
///
/// A request whose subject names a valid user and whose body carries a valid `saga_id` deserves
/// an answer on the user's own subject; anything less readable goes to the dead-letter stream.
pub fn salvage_request_ids(subject: &str, payload: &[u8]) -> Option<(SagaId, UserId)> {
    let parsed = Subject::parse(subject).ok()?;
    if parsed.kind != EventKind::ExchangeRequested || payload.len() > MAX_PAYLOAD_BYTES {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let saga = SagaId::parse(value.get("saga_id")?.as_str()?).ok()?;
    Some((saga, parsed.user))
}
