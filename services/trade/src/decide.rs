//! fx-trade's per-saga order record and its pure decision function.
//!
//! `decide(order, event, quote, now_ms, config)` is the whole of fx-trade's logic: no IO, no
//! clock, no randomness. The venue was already asked (in `prepare`) and its answer is the
//! `quote`; the adapter in `lib.rs` loads the record, calls `decide`, and applies the
//! [`Decision`] (`runtime::Decision::apply`).
//!
//! The rule that keeps the venue's side booked: a [`Quote::Rate`] means the venue *executed*
//! this saga's order, so the answer is always a fill, whatever else holds; fx-trade says a
//! final word without a fill only when the venue has said it executed nothing for the saga
//! ([`Quote::LimitNotMet`], [`Quote::NoExecution`]), or when the venue stays unreachable until
//! the hold runs out (trade.failed(venue_unavailable)). That last word is *unverified*: the
//! krw.released that always follows it asks the venue again, as long as it takes, and books
//! and reverses an execution a lost delivery made.
//!
//! Transitions per saga (anything not listed is a duplicate or a late word: `Ignored`):
//!
//! | record | event             | quote                | result                                 |
//! |--------|-------------------|----------------------|----------------------------------------|
//! | none   | krw.held          | Rate                 | filled (even inside the safety margin) |
//! | none   | krw.held          | LimitNotMet          | failed(rate_moved)                     |
//! | none   | krw.held          | NoExecution          | failed(hold_expiring)                  |
//! | none   | krw.held          | Unavailable          | retry while the hold outlives the delay, else failed(venue_unavailable) |
//! | none   | krw.released      | NoExecution          | failed(hold_released): the tombstone, announced now |
//! | none   | krw.released      | Rate                 | filled and cancelled(hold_released) at once |
//! | none   | krw.released      | Unavailable          | retry (the hold is already released)   |
//! | none   | krw.held/released | NotNeeded            | retry (prepare did not learn what the venue holds) |
//! | filled | krw.released      | any                  | cancelled(hold_released)               |
//! | filled | usd.credit_failed | any                  | cancelled(credit_failed)               |
//! | failed(venue_unavailable), unverified | krw.released | NoExecution | verified, no event |
//! | failed(venue_unavailable), unverified | krw.released | Reversed | the execution booked and reversed (journal fill, cancel, reverse, fx_pnl), trade.reversed |
//! | failed(venue_unavailable), unverified | krw.released | Unavailable | retry (no deadline) |
//! | cancelled, reversal pending | trade.cancelled | Reversal | reversal booked (journal reverse, fx_pnl), trade.reversed |
//! | cancelled, reversal pending | trade.cancelled | Unavailable | retry with backoff (no deadline) |
//!
//! A reversal is a real order: the fill's USD sold back at the venue under the client order id
//! `<saga_id>.reversal`. The user never waits for it: trade.cancelled is said at once (the user
//! is made whole by fx-krw and fx-usd), the fill's USD moves to the house's open `position`,
//! and fx-trade, consuming its own trade.cancelled, sells it until the venue confirms. The KRW
//! the sale brought against the KRW the fill cost is the house's FX gain or loss, journaled
//! as `fx_pnl`.

use events::{
    CancelReason, CreditFailReason, Event, EventKind, InterventionAction, Krw, KrwHeld,
    KrwReleased, Rate, SagaId, TradeCancelled, TradeFailReason, TradeFailed, TradeFilled,
    TradeReversed, Usd, UserId,
};
use runtime::intervention::{intervened, reasons, InterventionRequest, Refusal};
use runtime::ledger::{Account, Currency, Op};
use runtime::{Handled, JournalEntry, Records, TxResult, Writes};
use serde::{Deserialize, Serialize};

use crate::venue::{limit_fill, Execution};
use crate::TradeConfig;
use rust_decimal::Decimal;

/// The state key of a saga's order: `order:<saga_id>`.
pub fn order_key(saga_id: SagaId) -> String {
    saga_id.between("order:", &[])
}

/// Prefix of every order record, for scans.
pub const ORDER_PREFIX: &str = "order:";

/// Longest wait between two attempts of a reversal the venue has not confirmed.
pub const REVERSAL_RETRY_MAX_MS: u64 = 60_000;

/// What the venue said in `prepare`, handed to `decide`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Quote {
    /// The venue was not asked: the event never needs it (usd.credit_failed), or the saga's
    /// record already answers it (`order:<saga_id>` exists: filled, failed or tombstoned).
    NotNeeded,
    /// The venue executed this saga's order at this rate (KRW per USD): just now, or in an
    /// earlier delivery whose fill was lost. The house holds the USD; it must be booked.
    Rate(Rate),
    /// The venue refused the limit order: at `rate` the KRW would buy less than
    /// `min_usd_amount` (or nothing). Nothing executed.
    LimitNotMet {
        /// The rate the order would have executed at, for the trade.failed message.
        rate: Rate,
    },
    /// It was too late to order (the hold expires within the safety margin, or it was
    /// released), and the venue confirmed it holds no execution for this saga.
    NoExecution,
    /// The reversal of this saga's fill executed at the venue (now, or in an earlier attempt).
    Reversal(Execution),
    /// A lookup found an execution nobody had booked (`fill`), and it was reversed at once.
    Reversed {
        /// The buy the lookup found.
        fill: Execution,
        /// The sale that reversed it.
        reversal: Execution,
    },
    /// The venue failed or the breaker refused the call.
    Unavailable {
        /// What went wrong, for the trade.failed message and logs.
        reason: String,
        /// When a new attempt could succeed at the earliest (the breaker's remaining open
        /// time; 0 when the venue itself failed).
        retry_in_ms: u64,
    },
}

/// An execution at the venue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fill {
    /// KRW sold (the amount of krw.held).
    pub krw_amount: Krw,
    /// USD bought: `rate.usd_for(krw_amount)`.
    pub usd_amount: Usd,
    /// KRW per USD.
    pub rate: Rate,
    /// When the fill was decided.
    pub filled_at_ms: u64,
}

/// A fill's USD sold back at the venue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reversal {
    /// USD sold (the fill's).
    pub usd_amount: Usd,
    /// KRW the sale brought.
    pub krw_amount: Krw,
    /// KRW per USD.
    pub rate: Rate,
    /// When fx-trade booked it.
    pub reversed_at_ms: u64,
}

impl Reversal {
    fn from_execution(e: &Execution, now_ms: u64) -> Reversal {
        Reversal {
            usd_amount: e.usd_amount,
            krw_amount: e.krw_amount,
            rate: e.rate,
            reversed_at_ms: now_ms,
        }
    }

    /// The house's FX gain (positive) or loss (negative) in KRW: what the sale brought less
    /// what the fill cost.
    pub fn pnl_krw(&self, fill: &Fill) -> Decimal {
        self.krw_amount.amount() - fill.krw_amount.amount()
    }
}

/// Where a saga's order stands. Every state is final for the events that reached it: a
/// later duplicate changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    /// trade.filled was emitted; the fill can still be reversed once.
    Filled(Fill),
    /// trade.failed was emitted; this saga never fills. `hold_released` is the tombstone of a
    /// krw.released that came before krw.held.
    Failed {
        /// The reason announced in trade.failed.
        reason: TradeFailReason,
        /// The failure was said without the venue's word on whether an earlier delivery (whose
        /// fill was lost in a crash) executed: venue_unavailable. The krw.released that always
        /// follows asks the venue and clears this; until then the saga's venue side is open.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unverified: bool,
        /// What that lookup found: an execution nobody had booked, now booked and reversed at
        /// once (journal `fill`, `cancel`, `reverse`, `fx_pnl`; trade.reversed, no other event:
        /// the user's saga already ended).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reversed: Option<Fill>,
        /// The sale that reversed `reversed`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reversal: Option<Reversal>,
    },
    /// trade.cancelled was emitted after a fill: the user is made whole, and the house holds
    /// the fill's USD until `reversal` is booked.
    Cancelled {
        /// The cancelled fill.
        fill: Fill,
        /// The reason announced in trade.cancelled.
        reason: CancelReason,
        /// The sale of the fill's USD back at the venue; `None` while it is pending.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reversal: Option<Reversal>,
    },
}

impl OrderState {
    /// True while a cancelled fill's USD waits to be sold back at the venue.
    pub fn reversal_pending(&self) -> bool {
        matches!(self, OrderState::Cancelled { reversal: None, .. })
    }

    /// True while fx-trade does not know whether the venue executed an order for this saga
    /// (see [`OrderState::Failed`]'s `unverified`): the next krw.released asks the venue.
    pub fn unverified(&self) -> bool {
        matches!(
            self,
            OrderState::Failed {
                unverified: true,
                ..
            }
        )
    }
}

/// The record `order:<saga_id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    /// Whose saga.
    pub user_id: UserId,
    /// Where the order stands.
    pub state: OrderState,
    /// When the state last changed.
    pub updated_at_ms: u64,
}

/// fx-trade's record write: the saga's new order record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderWrite {
    /// The saga (the record's key is `order:<saga_id>`).
    pub saga_id: SagaId,
    /// The record after the decision.
    pub order: OrderRecord,
}

impl Writes for OrderWrite {
    fn write<R: Records>(&self, records: &R) -> TxResult<()> {
        records.put(&order_key(self.saga_id), &self.order)
    }
}

/// What `decide` wants done (`writes` is `None` when the record does not change); the adapter
/// applies it in one transaction.
pub type Decision = runtime::Decision<Option<OrderWrite>>;

fn applied(order: OrderRecord, event: Event, journal: Option<JournalEntry>) -> Decision {
    Decision {
        handled: Handled::Applied,
        writes: Some(OrderWrite {
            saga_id: event.saga_id(),
            order,
        }),
        events: vec![event],
        journal: journal.into_iter().collect(),
    }
}

/// True when a hold expiring at `expires_at_ms` is too close to expiry to fill at `now_ms`.
pub fn hold_expiring(expires_at_ms: u64, now_ms: u64, margin_ms: u64) -> bool {
    expires_at_ms <= now_ms.saturating_add(margin_ms)
}

/// The pure decision of fx-trade for one event of one saga.
pub fn decide(
    order: Option<&OrderRecord>,
    event: &Event,
    quote: &Quote,
    now_ms: u64,
    config: &TradeConfig,
) -> Decision {
    match (order.map(|o| &o.state), event) {
        (None, Event::KrwHeld(held)) => decide_held(held, quote, now_ms, config),
        (None, Event::KrwReleased(rel)) => decide_released(rel, quote, now_ms, config),
        (
            Some(
                state @ OrderState::Failed {
                    reason: failed_reason,
                    ..
                },
            ),
            Event::KrwReleased(rel),
        ) if state.unverified() => verify(
            *failed_reason,
            order.map(|o| &o.user_id).unwrap_or(&rel.user_id),
            rel,
            quote,
            now_ms,
            config,
        ),
        (Some(OrderState::Filled(fill)), Event::KrwReleased(rel)) => cancel(
            rel.saga_id,
            order.map(|o| &o.user_id).unwrap_or(&rel.user_id),
            fill,
            CancelReason::HoldReleased,
            now_ms,
        ),
        // fx-usd refused the credit (an operator's refuse-credit) before any fill: the saga is
        // never filled. The tombstone is announced now, so fx-krw releases, and a later
        // krw.held never reaches the venue. It stays unverified: a delivery of krw.held whose
        // fill was lost in a crash may have executed, so the krw.released that follows asks
        // the venue (and reverses what it finds), as after venue_unavailable.
        (None, Event::UsdCreditFailed(cf)) if cf.reason == CreditFailReason::Operator => {
            let mut d = failed(
                cf.saga_id,
                &cf.user_id,
                TradeFailReason::CreditRefused,
                "fx-usd refused the credit before fx-trade filled; this exchange will not be \
                 filled"
                    .into(),
                now_ms,
            );
            if let Some(OrderRecord {
                state: OrderState::Failed { unverified, .. },
                ..
            }) = d.writes.as_mut().map(|w| &mut w.order)
            {
                *unverified = true;
            }
            d
        }
        (Some(OrderState::Filled(fill)), Event::UsdCreditFailed(cf)) => cancel(
            cf.saga_id,
            order.map(|o| &o.user_id).unwrap_or(&cf.user_id),
            fill,
            CancelReason::CreditFailed,
            now_ms,
        ),
        (
            Some(OrderState::Cancelled {
                fill,
                reason,
                reversal: None,
            }),
            Event::TradeCancelled(tc),
        ) => reverse(
            order.expect("matched a record"),
            tc,
            fill,
            *reason,
            quote,
            now_ms,
            config,
        ),
        // Everything else is a duplicate or a word that changes nothing now:
        // - krw.held again (redelivery, or after the tombstone: already answered; prepare did
        //   not call the venue for it, since the record exists);
        // - krw.released after trade.failed / trade.cancelled: the normal compensation echo;
        // - usd.credit_failed after a cancel or a failure, or before any fill for any reason
        //   but an operator's (fx-usd answers only our fills then; nothing to reverse);
        // - trade.cancelled again after its reversal was booked (a redelivery).
        _ => Decision::ignored(),
    }
}

fn decide_held(held: &KrwHeld, quote: &Quote, now_ms: u64, config: &TradeConfig) -> Decision {
    let margin = config.hold_safety_margin_ms;
    match quote {
        // The venue executed: book it, even if the hold is now inside the margin (a fill lost
        // in a crash, found again by the lookup). If the fill reaches fx-krw after the hold
        // expired, fx-krw releases, and krw.released reverses the fill here and the credit at
        // fx-usd: the designed compensation. Refusing it would leave the execution booked
        // nowhere.
        Quote::Rate(rate) => match limit_fill(*rate, held.krw_amount, held.min_usd_amount) {
            Some(usd) => {
                let fill = Fill {
                    krw_amount: held.krw_amount,
                    usd_amount: usd,
                    rate: *rate,
                    filled_at_ms: now_ms,
                };
                filled(held, fill, now_ms)
            }
            // Only a venue that breaks its limit-order contract gets here: it executed below
            // the minimum (or for nothing), which the user never accepted. That execution is
            // the venue's error to unwind; the saga fails as the limit says it must.
            None => rate_moved(held, *rate, now_ms),
        },
        Quote::LimitNotMet { rate } => rate_moved(held, *rate, now_ms),
        Quote::NoExecution if hold_expiring(held.hold_expires_at_ms, now_ms, margin) => {
            let left = held.hold_expires_at_ms.saturating_sub(now_ms);
            failed(
                held.saga_id,
                &held.user_id,
                TradeFailReason::HoldExpiring,
                format!(
                    "the KRW hold expires in {left} ms, inside the {margin} ms safety margin, and \
                     the venue holds no execution for it; not filling"
                ),
                now_ms,
            )
        }
        Quote::Unavailable {
            reason,
            retry_in_ms,
        } => {
            let delay = config.venue_retry_ms.max(*retry_in_ms);
            // Retry while the hold outlives the delay: outside the margin the next delivery
            // orders, inside it it looks for an execution a lost delivery made. Only when the
            // hold runs out first is the final word said without the venue's answer (if a lost
            // delivery did execute, that execution is left to reconciliation).
            // Only when the hold runs out first is the final word said without the venue's
            // answer; the record stays unverified until the krw.released that follows finds
            // out whether a lost delivery executed (see `verify`).
            if now_ms.saturating_add(delay) < held.hold_expires_at_ms {
                Decision::retry(delay)
            } else {
                let reason: String = reason.chars().take(200).collect();
                let mut d = failed(
                    held.saga_id,
                    &held.user_id,
                    TradeFailReason::VenueUnavailable,
                    format!(
                        "the venue is unavailable ({reason}) and the KRW hold expires before \
                         another attempt"
                    ),
                    now_ms,
                );
                if let Some(OrderRecord {
                    state: OrderState::Failed { unverified, .. },
                    ..
                }) = d.writes.as_mut().map(|w| &mut w.order)
                {
                    *unverified = true;
                }
                d
            }
        }
        // prepare did not learn what the venue holds for this saga: the record it read was
        // gone by now, or it could not read it, or its clock saw the hold in the margin and
        // ours does not (NoExecution outside the margin). Deciding without the venue could
        // leave an execution unbooked; the next delivery asks again.
        // Answers to other questions (a reversal is never asked for a krw.held): ask again.
        Quote::NotNeeded | Quote::NoExecution | Quote::Reversal(_) | Quote::Reversed { .. } => {
            Decision::retry(config.venue_retry_ms)
        }
    }
}

fn rate_moved(held: &KrwHeld, rate: Rate, now_ms: u64) -> Decision {
    let got = rate.usd_for(held.krw_amount).unwrap_or(Usd::ZERO);
    let message = match held.min_usd_amount {
        Some(m) => format!(
            "at {rate} KRW/USD, {} KRW buys {got} USD, below the minimum {m} USD",
            held.krw_amount
        ),
        None => format!(
            "at {rate} KRW/USD, {} KRW buys {got} USD; nothing to fill",
            held.krw_amount
        ),
    };
    failed(
        held.saga_id,
        &held.user_id,
        TradeFailReason::RateMoved,
        message,
        now_ms,
    )
}

/// Reordering: the release overtook the hold (or the hold expired while fx-trade could not
/// fill it). The answer is the tombstone, announced now (ARCHITECTURE.md: the tombstone is
/// announced) so the later krw.held never reaches the venue; but only once the venue confirmed
/// it holds no execution for the saga: a delivery of krw.held whose fill was lost in a crash
/// may have executed, and that execution is booked and reversed at once instead.
fn decide_released(
    rel: &KrwReleased,
    quote: &Quote,
    now_ms: u64,
    config: &TradeConfig,
) -> Decision {
    match quote {
        Quote::NoExecution => failed(
            rel.saga_id,
            &rel.user_id,
            TradeFailReason::HoldReleased,
            "the KRW hold was released before fx-trade saw it; this exchange will not be filled"
                .into(),
            now_ms,
        ),
        Quote::Rate(rate) => match rate.usd_for(rel.krw_amount).filter(|u| u.is_positive()) {
            Some(usd) => {
                let fill = Fill {
                    krw_amount: rel.krw_amount,
                    usd_amount: usd,
                    rate: *rate,
                    filled_at_ms: now_ms,
                };
                let mut d = filled_parts(rel.saga_id, &rel.user_id, fill.clone(), now_ms);
                let c = cancel(
                    rel.saga_id,
                    &rel.user_id,
                    &fill,
                    CancelReason::HoldReleased,
                    now_ms,
                );
                d.events.extend(c.events);
                d.journal.extend(c.journal);
                d.writes = c.writes;
                d
            }
            // A venue that executed an order for nothing broke its contract (see
            // decide_held); there is no fill to book, so the tombstone stands.
            None => decide_released(rel, &Quote::NoExecution, now_ms, config),
        },
        // No deadline here: the KRW is already back with the user, and only fx-trade's final
        // word waits for the venue to say whether it executed.
        Quote::Unavailable { retry_in_ms, .. } => {
            Decision::retry(config.venue_retry_ms.max(*retry_in_ms))
        }
        Quote::LimitNotMet { .. }
        | Quote::NotNeeded
        | Quote::Reversal(_)
        | Quote::Reversed { .. } => Decision::retry(config.venue_retry_ms),
    }
}

/// The krw.released that follows a trade.failed(venue_unavailable): the saga is over for the
/// user (fx-krw released the KRW; fx-usd never heard of a fill), but fx-trade said its word
/// without knowing whether a delivery whose fill was lost executed. Now it asks: nothing
/// executed clears the record; an execution is booked and reversed at once, the house's own
/// business with the venue, so no event. While the venue cannot answer, ask again later: no
/// one waits on this answer, so there is no deadline.
fn verify(
    failed_reason: TradeFailReason,
    user_id: &UserId,
    rel: &KrwReleased,
    quote: &Quote,
    now_ms: u64,
    config: &TradeConfig,
) -> Decision {
    let (reversed, reversal) = match quote {
        Quote::Reversed { fill, reversal } => (
            Some(Fill {
                krw_amount: fill.krw_amount,
                usd_amount: fill.usd_amount,
                rate: fill.rate,
                filled_at_ms: now_ms,
            }),
            Some(Reversal::from_execution(reversal, now_ms)),
        ),
        Quote::NoExecution => (None, None),
        Quote::Unavailable { retry_in_ms, .. } => {
            return Decision::retry(config.venue_retry_ms.max(*retry_in_ms))
        }
        // prepare found an execution but did not get it reversed, or did not ask: ask again.
        Quote::Rate(_) | Quote::Reversal(_) | Quote::LimitNotMet { .. } | Quote::NotNeeded => {
            return Decision::retry(config.venue_retry_ms)
        }
    };
    let mut journal = Vec::new();
    let mut events = Vec::new();
    if let (Some(fill), Some(r)) = (&reversed, &reversal) {
        journal.push(fill_entry(rel.saga_id, fill, now_ms));
        journal.push(cancel_entry(rel.saga_id, fill, now_ms));
        journal.extend(reversal_entries(rel.saga_id, fill, r, now_ms));
        events.push(reversed_event(rel.saga_id, user_id, fill, r));
    }
    Decision {
        handled: Handled::Applied,
        writes: Some(OrderWrite {
            saga_id: rel.saga_id,
            order: OrderRecord {
                user_id: user_id.clone(),
                state: OrderState::Failed {
                    reason: failed_reason,
                    unverified: false,
                    reversed,
                    reversal,
                },
                updated_at_ms: now_ms,
            },
        }),
        events,
        journal,
    }
}

/// fx-trade's own trade.cancelled, consumed back: the cancelled fill's USD is sold at the venue
/// (in `prepare`), and once the venue confirms, the sale and the FX gain or loss are booked.
/// Until then, retry with a backoff that grows with the time since the cancel, without end:
/// the user's saga is over, and the house carries the position meanwhile.
fn reverse(
    order: &OrderRecord,
    tc: &TradeCancelled,
    fill: &Fill,
    reason: CancelReason,
    quote: &Quote,
    now_ms: u64,
    config: &TradeConfig,
) -> Decision {
    let backoff = |retry_in_ms: u64| {
        let waited = now_ms.saturating_sub(order.updated_at_ms);
        Decision::retry(
            config
                .venue_retry_ms
                .max(retry_in_ms)
                .max((waited / 2).min(REVERSAL_RETRY_MAX_MS)),
        )
    };
    let execution = match quote {
        Quote::Reversal(e) => e,
        Quote::Unavailable { retry_in_ms, .. } => return backoff(*retry_in_ms),
        _ => return backoff(0),
    };
    let reversal = Reversal::from_execution(execution, now_ms);
    Decision {
        handled: Handled::Applied,
        journal: reversal_entries(tc.saga_id, fill, &reversal, now_ms),
        events: vec![reversed_event(tc.saga_id, &order.user_id, fill, &reversal)],
        writes: Some(OrderWrite {
            saga_id: tc.saga_id,
            order: OrderRecord {
                user_id: order.user_id.clone(),
                state: OrderState::Cancelled {
                    fill: fill.clone(),
                    reason,
                    reversal: Some(reversal),
                },
                updated_at_ms: now_ms,
            },
        }),
    }
}

fn reversed_event(saga_id: SagaId, user_id: &UserId, fill: &Fill, r: &Reversal) -> Event {
    Event::TradeReversed(TradeReversed {
        saga_id,
        user_id: user_id.clone(),
        usd_amount: r.usd_amount,
        krw_amount: r.krw_amount,
        rate: r.rate,
        fill_krw_amount: fill.krw_amount,
    })
}

/// The sale: the position's USD goes to the venue (`reverse`), and the KRW it brought against
/// the KRW the fill cost is the house's gain or loss (`fx_pnl`; none when they are equal).
fn reversal_entries(saga_id: SagaId, fill: &Fill, r: &Reversal, now_ms: u64) -> Vec<JournalEntry> {
    let mut entries = vec![JournalEntry::new(
        saga_id,
        Op::Reverse,
        Currency::Usd,
        (Account::Position, Account::Venue),
        r.usd_amount.amount(),
        now_ms,
    )];
    let pnl = r.pnl_krw(fill);
    if !pnl.is_zero() {
        // A gain moves KRW from the position into fx_pnl; a loss the other way.
        let sides = if pnl.is_sign_positive() {
            (Account::Position, Account::FxPnl)
        } else {
            (Account::FxPnl, Account::Position)
        };
        entries.push(JournalEntry::new(
            saga_id,
            Op::FxPnl,
            Currency::Krw,
            sides,
            pnl.abs(),
            now_ms,
        ));
    }
    entries
}

/// The house bought USD at the venue: journaled so the audit counts fills and can match them
/// against fx-usd's credits.
fn fill_entry(saga_id: SagaId, fill: &Fill, now_ms: u64) -> JournalEntry {
    JournalEntry::new(
        saga_id,
        Op::Fill,
        Currency::Usd,
        (Account::Venue, Account::House),
        fill.usd_amount.amount(),
        now_ms,
    )
}

/// The user's fill is undone: its USD becomes the house's own open position, until the
/// reversal sells it back to the venue.
fn cancel_entry(saga_id: SagaId, fill: &Fill, now_ms: u64) -> JournalEntry {
    JournalEntry::new(
        saga_id,
        Op::Cancel,
        Currency::Usd,
        (Account::House, Account::Position),
        fill.usd_amount.amount(),
        now_ms,
    )
}

fn filled(held: &KrwHeld, fill: Fill, now_ms: u64) -> Decision {
    filled_parts(held.saga_id, &held.user_id, fill, now_ms)
}

fn filled_parts(saga_id: SagaId, user_id: &UserId, fill: Fill, now_ms: u64) -> Decision {
    let event = Event::TradeFilled(TradeFilled {
        saga_id,
        user_id: user_id.clone(),
        krw_amount: fill.krw_amount,
        usd_amount: fill.usd_amount,
        rate: fill.rate,
    });
    let journal = fill_entry(saga_id, &fill, now_ms);
    let record = OrderRecord {
        user_id: user_id.clone(),
        state: OrderState::Filled(fill),
        updated_at_ms: now_ms,
    };
    applied(record, event, Some(journal))
}

fn failed(
    saga_id: SagaId,
    user_id: &UserId,
    reason: TradeFailReason,
    message: String,
    now_ms: u64,
) -> Decision {
    let event = Event::TradeFailed(TradeFailed {
        saga_id,
        user_id: user_id.clone(),
        reason,
        message,
    });
    let record = OrderRecord {
        user_id: user_id.clone(),
        state: OrderState::Failed {
            reason,
            unverified: false,
            reversed: None,
            reversal: None,
        },
        updated_at_ms: now_ms,
    };
    applied(record, event, None)
}

fn cancel(
    saga_id: SagaId,
    user_id: &UserId,
    fill: &Fill,
    reason: CancelReason,
    now_ms: u64,
) -> Decision {
    // The amounts are the fill's, not the triggering event's: this reverses what we did.
    let event = Event::TradeCancelled(TradeCancelled {
        saga_id,
        user_id: user_id.clone(),
        krw_amount: fill.krw_amount,
        usd_amount: fill.usd_amount,
        reason,
    });
    let journal = cancel_entry(saga_id, fill, now_ms);
    let record = OrderRecord {
        user_id: user_id.clone(),
        state: OrderState::Cancelled {
            fill: fill.clone(),
            reason,
            reversal: None,
        },
        updated_at_ms: now_ms,
    };
    applied(record, event, Some(journal))
}

/// `fxctl saga reemit` at fx-trade: its last word for the saga, rebuilt from the order record
/// with the original event ids (trade.filled; trade.failed; trade.cancelled; and
/// trade.reversed once booked). trade.failed's human message is not kept, so its re-emit says
/// so; its reason is the original's. `None` when fx-trade has no record of the saga.
pub fn reemit_events(saga_id: SagaId, order: &OrderRecord) -> Vec<Event> {
    let user_id = &order.user_id;
    match &order.state {
        OrderState::Filled(fill) => filled_parts(saga_id, user_id, fill.clone(), 0).events,
        OrderState::Failed {
            reason,
            reversed,
            reversal,
            ..
        } => {
            let mut events = vec![Event::TradeFailed(TradeFailed {
                saga_id,
                user_id: user_id.clone(),
                reason: *reason,
                message: "re-emitted by an operator; fx-trade keeps the reason, not the \
                          original message"
                    .into(),
            })];
            if let (Some(fill), Some(r)) = (reversed, reversal) {
                events.push(reversed_event(saga_id, user_id, fill, r));
            }
            events
        }
        OrderState::Cancelled {
            fill,
            reason,
            reversal,
        } => {
            let mut events = cancel(saga_id, user_id, fill, *reason, 0).events;
            if let Some(r) = reversal {
                events.push(reversed_event(saga_id, user_id, fill, r));
            }
            events
        }
    }
}

/// `fxctl saga reemit` at fx-trade, decided from `order:<saga_id>`: its last word (see
/// [`reemit_events`]), then trade.intervened. Changes no record; refused for a saga fx-trade
/// has no record of.
pub fn decide_reemit(
    order: Option<&OrderRecord>,
    req: &InterventionRequest,
    actor: &str,
) -> Result<Decision, Refusal> {
    let Some(order) = order else {
        return Err(Refusal::new(
            reasons::UNKNOWN_SAGA,
            format!(
                "fx-trade has no record of saga {}: it has not answered a krw.held of it",
                req.saga_id
            ),
        ));
    };
    let mut events = reemit_events(req.saga_id, order);
    events.push(intervened(
        EventKind::TradeIntervened,
        req.saga_id,
        &order.user_id,
        InterventionAction::Reemit,
        actor,
        &req.reason,
        &events,
    ));
    Ok(Decision::emitting(events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::{KrwReleased, ReleaseReason, UsdCreditFailed};
    use rust_decimal::Decimal;

    const NOW: u64 = 1_000_000;

    fn saga() -> SagaId {
        SagaId::parse("0193f0e2-5c1a-7cc3-9b1e-6a4f2d0c8e11").unwrap()
    }

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    fn rate(r: i64) -> Rate {
        Rate::new(Decimal::from(r)).unwrap()
    }

    fn held(min: Option<&str>, expires_in_ms: u64) -> Event {
        Event::KrwHeld(KrwHeld {
            saga_id: saga(),
            user_id: alice(),
            krw_amount: Krw::parse("1500000").unwrap(),
            min_usd_amount: min.map(|m| Usd::parse(m).unwrap()),
            hold_expires_at_ms: NOW + expires_in_ms,
        })
    }

    fn released() -> Event {
        Event::KrwReleased(KrwReleased {
            saga_id: saga(),
            user_id: alice(),
            krw_amount: Krw::parse("1500000").unwrap(),
            reason: ReleaseReason::Expired,
        })
    }

    fn credit_failed() -> Event {
        Event::UsdCreditFailed(UsdCreditFailed {
            saga_id: saga(),
            user_id: alice(),
            reason: events::CreditFailReason::AccountFrozen,
            message: "frozen".into(),
        })
    }

    fn config() -> TradeConfig {
        TradeConfig::default()
    }

    #[test]
    fn a_credit_refused_before_any_fill_fails_the_saga_for_good_and_verifies_on_release() {
        let refused = Event::UsdCreditFailed(UsdCreditFailed {
            saga_id: saga(),
            user_id: alice(),
            reason: events::CreditFailReason::Operator,
            message: "an operator refused this credit".into(),
        });
        let d = decide(None, &refused, &Quote::NotNeeded, NOW, &config());
        let [Event::TradeFailed(f)] = d.events.as_slice() else {
            panic!("{:?}", d.events)
        };
        assert_eq!(f.reason, TradeFailReason::CreditRefused);
        let order = d.writes.expect("tombstone").order;
        assert!(order.state.unverified(), "the release asks the venue");
        // A later krw.held never fills: the record answers it.
        let later = decide(
            Some(&order),
            &held(None, 60_000),
            &Quote::NotNeeded,
            NOW + 1,
            &config(),
        );
        assert_eq!(later.handled, Handled::Ignored);
        // The release that follows verifies, keeping the reason.
        let v = decide(
            Some(&order),
            &released(),
            &Quote::NoExecution,
            NOW + 2,
            &config(),
        );
        assert!(matches!(
            v.writes.unwrap().order.state,
            OrderState::Failed {
                reason: TradeFailReason::CreditRefused,
                unverified: false,
                ..
            }
        ));
    }

    #[test]
    fn reemit_rebuilds_the_events_that_were_emitted() {
        let d = decide(
            None,
            &held(None, 60_000),
            &Quote::Rate(rate(1400)),
            NOW,
            &config(),
        );
        let filled = d.writes.unwrap().order;
        assert_eq!(reemit_events(saga(), &filled), d.events);
        let c = decide(
            Some(&filled),
            &credit_failed(),
            &Quote::NotNeeded,
            NOW + 1,
            &config(),
        );
        assert_eq!(reemit_events(saga(), &c.writes.unwrap().order), c.events);
    }

    fn the_event(d: &Decision) -> &Event {
        assert_eq!(d.events.len(), 1, "exactly one event: {d:?}");
        &d.events[0]
    }

    fn fail_reason(d: &Decision) -> TradeFailReason {
        match the_event(d) {
            Event::TradeFailed(f) => f.reason,
            other => panic!("expected trade.failed, got {other:?}"),
        }
    }

    fn filled_record() -> OrderRecord {
        decide(
            None,
            &held(None, 30_000),
            &Quote::Rate(rate(1400)),
            NOW,
            &config(),
        )
        .writes
        .unwrap()
        .order
    }

    #[test]
    fn given_no_order_when_held_with_a_rate_then_filled_rounding_down() {
        let d = decide(
            None,
            &held(Some("1000.00"), 30_000),
            &Quote::Rate(rate(1400)),
            NOW,
            &config(),
        );
        assert_eq!(d.handled, Handled::Applied);
        let Event::TradeFilled(f) = the_event(&d) else {
            panic!("expected trade.filled")
        };
        assert_eq!(f.usd_amount.to_string(), "1071.42");
        assert_eq!(f.rate, rate(1400));
        assert_eq!(d.journal.len(), 1);
        assert_eq!(d.journal[0].op.to_string(), "fill");
        assert!(matches!(
            d.writes.unwrap().order.state,
            OrderState::Filled(_)
        ));
    }

    #[test]
    fn given_no_order_when_the_venue_refused_the_limit_then_failed_rate_moved_with_the_rate() {
        let d = decide(
            None,
            &held(Some("1071.43"), 30_000),
            &Quote::LimitNotMet { rate: rate(1400) },
            NOW,
            &config(),
        );
        assert_eq!(fail_reason(&d), TradeFailReason::RateMoved);
        let Event::TradeFailed(f) = the_event(&d) else {
            unreachable!()
        };
        assert_eq!(
            f.message,
            "at 1400 KRW/USD, 1500000 KRW buys 1071.42 USD, below the minimum 1071.43 USD"
        );
        assert!(d.journal.is_empty());
    }

    #[test]
    fn given_a_rate_so_high_the_fill_rounds_to_zero_then_failed_rate_moved() {
        let d = decide(
            None,
            &held(None, 30_000),
            &Quote::LimitNotMet {
                rate: rate(1_000_000_000),
            },
            NOW,
            &config(),
        );
        assert_eq!(fail_reason(&d), TradeFailReason::RateMoved);
    }

    #[test]
    fn given_a_venue_that_executed_below_the_limit_the_user_is_not_filled_below_it() {
        // A venue that breaks the limit-order contract: the minimum still holds for the user.
        let d = decide(
            None,
            &held(Some("1071.43"), 30_000),
            &Quote::Rate(rate(1400)),
            NOW,
            &config(),
        );
        assert_eq!(fail_reason(&d), TradeFailReason::RateMoved);
    }

    #[test]
    fn given_a_hold_inside_the_margin_an_execution_is_booked_and_only_its_absence_fails() {
        // The venue executed (a delivery whose fill was lost): booked, margin or not.
        let d = decide(
            None,
            &held(None, 2_000),
            &Quote::Rate(rate(1400)),
            NOW,
            &config(),
        );
        assert!(matches!(the_event(&d), Event::TradeFilled(_)));
        assert_eq!(d.journal[0].op.to_string(), "fill");
        // The venue confirmed it holds nothing: too late to order.
        let d = decide(
            None,
            &held(None, 2_000),
            &Quote::NoExecution,
            NOW,
            &config(),
        );
        assert_eq!(fail_reason(&d), TradeFailReason::HoldExpiring);
        // Nobody asked the venue: never fail without knowing, ask again.
        let d = decide(None, &held(None, 2_000), &Quote::NotNeeded, NOW, &config());
        assert_eq!(d, Decision::retry(500));
    }

    #[test]
    fn given_no_execution_by_a_clock_that_saw_the_margin_but_ours_does_not_then_retry() {
        let d = decide(
            None,
            &held(None, 30_000),
            &Quote::NoExecution,
            NOW,
            &config(),
        );
        assert_eq!(d, Decision::retry(500));
    }

    #[test]
    fn given_the_venue_down_then_retry_while_time_remains_else_failed_venue_unavailable() {
        let down = Quote::Unavailable {
            reason: "venue is down".into(),
            retry_in_ms: 0,
        };
        // Retries go on into the margin (where they only look for an execution) while the
        // hold outlives the 500 ms delay: 501 ms left still retries, 500 ms does not.
        for left in [30_000, 2_501, 2_000, 501] {
            let d = decide(None, &held(None, left), &down, NOW, &config());
            assert_eq!(
                d.handled,
                Handled::RetryAfter { delay_ms: 500 },
                "{left} ms left"
            );
            assert!(d.writes.is_none() && d.events.is_empty());
        }
        let d = decide(None, &held(None, 500), &down, NOW, &config());
        assert_eq!(fail_reason(&d), TradeFailReason::VenueUnavailable);
    }

    #[test]
    fn a_venue_unavailable_is_unverified_until_the_release_hears_from_the_venue() {
        let down = Quote::Unavailable {
            reason: "venue is down".into(),
            retry_in_ms: 0,
        };
        let d = decide(None, &held(None, 500), &down, NOW, &config());
        assert_eq!(fail_reason(&d), TradeFailReason::VenueUnavailable);
        let failed = d.writes.unwrap().order;
        assert!(failed.state.unverified());

        // The release cannot be verified while the venue is still away: no deadline, retry.
        let d = decide(Some(&failed), &released(), &down, NOW, &config());
        assert_eq!(d, Decision::retry(500));

        // Nothing executed: verified, nothing to say.
        let d = decide(
            Some(&failed),
            &released(),
            &Quote::NoExecution,
            NOW,
            &config(),
        );
        assert_eq!(d.handled, Handled::Applied);
        assert!(d.events.is_empty() && d.journal.is_empty());
        let verified = d.writes.unwrap().order;
        assert!(!verified.state.unverified());
        let d = decide(
            Some(&verified),
            &released(),
            &Quote::Rate(rate(1400)),
            NOW,
            &config(),
        );
        assert_eq!(d, Decision::ignored(), "verified once is verified");

        // A lost delivery had executed: prepare found it and sold it back at 1450. Booked and
        // reversed at once, with the house's gain, and only trade.reversed: the user's saga
        // ended with the trade.failed already said.
        let exec = |side, rate_: i64, krw: &str| crate::Execution {
            seq: 1,
            client_order_id: crate::ClientOrderId::buy(saga()),
            user_id: UserId::parse("alice").unwrap(),
            side,
            rate: rate(rate_),
            krw_amount: Krw::parse(krw).unwrap(),
            usd_amount: Usd::parse("1071.42").unwrap(),
            executed_at_ms: 0,
        };
        let quote = Quote::Reversed {
            fill: exec(crate::Side::Buy, 1400, "1500000"),
            reversal: exec(crate::Side::Sell, 1450, "1553559"),
        };
        let d = decide(Some(&failed), &released(), &quote, NOW, &config());
        assert_eq!(d.handled, Handled::Applied);
        assert!(
            matches!(&d.events[..], [Event::TradeReversed(r)] if r.krw_amount.to_string() == "1553559"),
            "{:?}",
            d.events
        );
        let ops: Vec<(&str, String)> = d
            .journal
            .iter()
            .map(|e| (e.op.as_str(), e.amount.to_string()))
            .collect();
        assert_eq!(
            ops,
            [
                ("fill", "1071.42".to_string()),
                ("cancel", "1071.42".to_string()),
                ("reverse", "1071.42".to_string()),
                ("fx_pnl", "53559".to_string()),
            ]
        );
        assert_eq!(d.journal[3].credit, Account::FxPnl, "a gain");
        let OrderState::Failed {
            reason,
            unverified,
            reversed: Some(fill),
            reversal: Some(r),
        } = d.writes.unwrap().order.state
        else {
            panic!("expected a failed order with its reversed execution")
        };
        assert_eq!(
            (reason, unverified, fill.rate, r.rate),
            (
                TradeFailReason::VenueUnavailable,
                false,
                rate(1400),
                rate(1450)
            )
        );
        // Found but not yet sold back: nothing is booked, ask again.
        let d = decide(
            Some(&failed),
            &released(),
            &Quote::Rate(rate(1400)),
            NOW,
            &config(),
        );
        assert_eq!(d, Decision::retry(500));
    }

    #[test]
    fn other_failures_were_said_on_the_venues_word_and_are_never_reopened() {
        for (quote, h) in [
            (
                Quote::LimitNotMet { rate: rate(1500) },
                held(Some("1071.42"), 30_000),
            ),
            (Quote::NoExecution, held(None, 1_000)),
        ] {
            let failed = decide(None, &h, &quote, NOW, &config())
                .writes
                .unwrap()
                .order;
            assert!(!failed.state.unverified(), "{quote:?}");
            let d = decide(
                Some(&failed),
                &released(),
                &Quote::Rate(rate(1400)),
                NOW,
                &config(),
            );
            assert_eq!(d, Decision::ignored());
        }
    }

    #[test]
    fn an_old_failed_record_without_the_new_fields_still_reads() {
        let old = r#"{"user_id":"alice","state":{"failed":{"reason":"venue_unavailable"}},"updated_at_ms":1}"#;
        let r: OrderRecord = serde_json::from_str(old).unwrap();
        assert!(!r.state.unverified());
        let written = serde_json::to_string(&r).unwrap();
        assert_eq!(
            written, old,
            "the new fields are written only when they say something"
        );
    }

    #[test]
    fn given_an_open_breaker_the_retry_waits_for_its_probe() {
        let open = Quote::Unavailable {
            reason: "circuit breaker open".into(),
            retry_in_ms: 4_000,
        };
        let d = decide(None, &held(None, 30_000), &open, NOW, &config());
        assert_eq!(d.handled, Handled::RetryAfter { delay_ms: 4_000 });
        let d = decide(None, &held(None, 4_000), &open, NOW, &config());
        assert_eq!(fail_reason(&d), TradeFailReason::VenueUnavailable);
    }

    #[test]
    fn given_a_fill_when_credit_failed_then_cancelled_once() {
        let order = filled_record();
        let d = decide(
            Some(&order),
            &credit_failed(),
            &Quote::NotNeeded,
            NOW,
            &config(),
        );
        let Event::TradeCancelled(c) = the_event(&d) else {
            panic!("expected trade.cancelled")
        };
        assert_eq!(c.reason, CancelReason::CreditFailed);
        assert_eq!(c.usd_amount.to_string(), "1071.42");
        assert_eq!(d.journal[0].op.to_string(), "cancel");
        let cancelled = d.writes.unwrap().order;
        for again in [credit_failed(), released(), held(None, 30_000)] {
            let d = decide(
                Some(&cancelled),
                &again,
                &Quote::Rate(rate(1)),
                NOW,
                &config(),
            );
            assert_eq!(d, Decision::ignored());
        }
    }

    #[test]
    fn given_a_fill_when_the_hold_is_released_then_cancelled_hold_released() {
        let order = filled_record();
        let d = decide(Some(&order), &released(), &Quote::NotNeeded, NOW, &config());
        let Event::TradeCancelled(c) = the_event(&d) else {
            panic!("expected trade.cancelled")
        };
        assert_eq!(c.reason, CancelReason::HoldReleased);
    }

    #[test]
    fn given_no_order_when_released_then_tombstone_announced_and_the_later_hold_never_fills() {
        let d = decide(None, &released(), &Quote::NoExecution, NOW, &config());
        assert_eq!(fail_reason(&d), TradeFailReason::HoldReleased);
        let tomb = d.writes.unwrap().order;
        let d = decide(
            Some(&tomb),
            &held(None, 30_000),
            &Quote::Rate(rate(1400)),
            NOW,
            &config(),
        );
        assert_eq!(d, Decision::ignored());
    }

    #[test]
    fn given_no_order_a_release_waits_for_the_venue_to_say_whether_it_executed() {
        for quote in [
            Quote::NotNeeded,
            Quote::Unavailable {
                reason: "venue is down".into(),
                retry_in_ms: 0,
            },
        ] {
            let d = decide(None, &released(), &quote, NOW, &config());
            assert_eq!(d, Decision::retry(500), "{quote:?}");
        }
    }

    #[test]
    fn given_no_order_when_released_but_the_venue_executed_then_filled_and_cancelled_at_once() {
        let d = decide(None, &released(), &Quote::Rate(rate(1400)), NOW, &config());
        assert_eq!(d.handled, Handled::Applied);
        let [Event::TradeFilled(f), Event::TradeCancelled(c)] = &d.events[..] else {
            panic!("expected trade.filled then trade.cancelled: {:?}", d.events)
        };
        assert_eq!(f.usd_amount.to_string(), "1071.42");
        assert_eq!(
            (c.usd_amount, c.reason),
            (f.usd_amount, CancelReason::HoldReleased)
        );
        let ops: Vec<&str> = d.journal.iter().map(|e| e.op.as_str()).collect();
        assert_eq!(ops, ["fill", "cancel"]);
        assert!(matches!(
            d.writes.unwrap().order.state,
            OrderState::Cancelled {
                reason: CancelReason::HoldReleased,
                ..
            }
        ));
    }

    #[test]
    fn given_no_order_a_credit_failure_reverses_nothing() {
        let d = decide(None, &credit_failed(), &Quote::NotNeeded, NOW, &config());
        assert_eq!(d, Decision::ignored());
    }

    #[test]
    fn given_a_fill_a_duplicate_hold_is_ignored() {
        let order = filled_record();
        let d = decide(
            Some(&order),
            &held(None, 30_000),
            &Quote::Rate(rate(1300)),
            NOW,
            &config(),
        );
        assert_eq!(d, Decision::ignored());
    }
}
