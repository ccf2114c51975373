//! fx-trade's per-saga order record and its pure decision function.
//!
//! `decide(order, event, quote, now_ms, config)` is the whole of fx-trade's logic: no IO, no
//! clock, no randomness. The venue was already asked (in `prepare`) and its answer is the
//! `quote`; the adapter in `lib.rs` loads the record, calls `decide`, and writes what it says.
//!
//! Transitions per saga (anything not listed is a duplicate or a late word: `Ignored`):
//!
//! | record        | event              | result                                               |
//! |---------------|--------------------|------------------------------------------------------|
//! | none          | krw.held           | filled, or failed(rate_moved / hold_expiring / venue_unavailable), or retry later |
//! | none          | krw.released       | failed(hold_released): the tombstone, announced now  |
//! | filled        | krw.released       | cancelled(hold_released)                             |
//! | filled        | usd.credit_failed  | cancelled(credit_failed)                             |

use events::{
    CancelReason, Event, Krw, KrwHeld, Rate, SagaId, TradeCancelled, TradeFailReason, TradeFailed,
    TradeFilled, Usd, UserId,
};
use runtime::{Handled, JournalEntry};
use serde::{Deserialize, Serialize};

use crate::TradeConfig;

/// The state key of a saga's order: `order:<saga_id>`.
pub fn order_key(saga_id: SagaId) -> String {
    format!("order:{saga_id}")
}

/// Prefix of every order record, for scans.
pub const ORDER_PREFIX: &str = "order:";

/// Journal account the venue side of a fill is booked against.
pub const VENUE_ACCOUNT: &str = "venue";
/// Journal account of the house's USD position bought at the venue.
pub const HOUSE_ACCOUNT: &str = "house";

/// What the venue said in `prepare`, handed to `decide`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Quote {
    /// The venue was not asked: the event is not krw.held, or the hold expires too soon.
    NotNeeded,
    /// The venue executed the order at this rate (KRW per USD).
    Rate(Rate),
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
    },
    /// trade.cancelled was emitted after a fill; terminal.
    Cancelled {
        /// The reversed fill.
        fill: Fill,
        /// The reason announced in trade.cancelled.
        reason: CancelReason,
    },
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

/// What `decide` wants done; the adapter applies it in one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// What to tell the runtime.
    pub handled: Handled,
    /// The new record to write, if it changed.
    pub order: Option<OrderRecord>,
    /// Events to emit (caused by the consumed event).
    pub events: Vec<Event>,
    /// Journal entries to append.
    pub journal: Vec<JournalEntry>,
}

impl Decision {
    /// Nothing to do.
    pub fn ignored() -> Decision {
        Decision {
            handled: Handled::Ignored,
            order: None,
            events: Vec::new(),
            journal: Vec::new(),
        }
    }

    /// Not now: redeliver after `delay_ms`; nothing is written.
    pub fn retry(delay_ms: u64) -> Decision {
        Decision {
            handled: Handled::RetryAfter { delay_ms },
            ..Decision::ignored()
        }
    }

    fn applied(order: OrderRecord, event: Event, journal: Option<JournalEntry>) -> Decision {
        Decision {
            handled: Handled::Applied,
            order: Some(order),
            events: vec![event],
            journal: journal.into_iter().collect(),
        }
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
        // Reordering: the release overtook the hold. Record the tombstone and say the final
        // word now (DESIGN.md: the tombstone is announced), so the later krw.held never fills.
        (None, Event::KrwReleased(rel)) => failed(
            rel.saga_id,
            &rel.user_id,
            TradeFailReason::HoldReleased,
            "the KRW hold was released before fx-trade saw it; this exchange will not be filled"
                .into(),
            now_ms,
        ),
        (Some(OrderState::Filled(fill)), Event::KrwReleased(rel)) => cancel(
            rel.saga_id,
            order.map(|o| &o.user_id).unwrap_or(&rel.user_id),
            fill,
            CancelReason::HoldReleased,
            now_ms,
        ),
        (Some(OrderState::Filled(fill)), Event::UsdCreditFailed(cf)) => cancel(
            cf.saga_id,
            order.map(|o| &o.user_id).unwrap_or(&cf.user_id),
            fill,
            CancelReason::CreditFailed,
            now_ms,
        ),
        // Everything else is a duplicate or a word that changes nothing now:
        // - krw.held again (redelivery, or after the tombstone: already answered);
        // - krw.released after trade.failed / trade.cancelled: the normal compensation echo;
        // - usd.credit_failed after a cancel, or before any fill (fx-usd only answers our own
        //   events, so this cannot happen; there is nothing to reverse either way).
        _ => Decision::ignored(),
    }
}

fn decide_held(held: &KrwHeld, quote: &Quote, now_ms: u64, config: &TradeConfig) -> Decision {
    let margin = config.hold_safety_margin_ms;
    // Checked first, even with a rate in hand: the venue's latency may have eaten the margin,
    // and a fill that reaches fx-krw after the hold expired would be reversed anyway.
    if hold_expiring(held.hold_expires_at_ms, now_ms, margin) {
        let left = held.hold_expires_at_ms.saturating_sub(now_ms);
        return failed(
            held.saga_id,
            &held.user_id,
            TradeFailReason::HoldExpiring,
            format!(
                "the KRW hold expires in {left} ms, inside the {margin} ms safety margin; \
                 not filling"
            ),
            now_ms,
        );
    }
    match quote {
        Quote::Rate(rate) => {
            let usd = rate.usd_for(held.krw_amount).filter(|u| u.is_positive());
            let min = held.min_usd_amount;
            match usd {
                Some(usd) if min.is_none_or(|m| usd >= m) => {
                    let fill = Fill {
                        krw_amount: held.krw_amount,
                        usd_amount: usd,
                        rate: *rate,
                        filled_at_ms: now_ms,
                    };
                    filled(held, fill, now_ms)
                }
                _ => {
                    let got = usd.unwrap_or(Usd::ZERO);
                    let message = match min {
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
            }
        }
        Quote::Unavailable {
            reason,
            retry_in_ms,
        } => {
            let delay = config.venue_retry_ms.max(*retry_in_ms);
            // Retry only if, after the delay, the hold would still be outside the margin;
            // otherwise say the final word now instead of waiting to fail as hold_expiring.
            if !hold_expiring(
                held.hold_expires_at_ms,
                now_ms.saturating_add(delay),
                margin,
            ) {
                Decision::retry(delay)
            } else {
                let reason: String = reason.chars().take(200).collect();
                failed(
                    held.saga_id,
                    &held.user_id,
                    TradeFailReason::VenueUnavailable,
                    format!(
                        "the venue is unavailable ({reason}) and the KRW hold expires before \
                         another attempt"
                    ),
                    now_ms,
                )
            }
        }
        // prepare skipped the venue because the hold was expiring by its clock, but by ours it
        // is not (the clock stepped back, or the caller skipped prepare): ask again later.
        Quote::NotNeeded => Decision::retry(config.venue_retry_ms),
    }
}

fn filled(held: &KrwHeld, fill: Fill, now_ms: u64) -> Decision {
    let event = Event::TradeFilled(TradeFilled {
        saga_id: held.saga_id,
        user_id: held.user_id.clone(),
        krw_amount: fill.krw_amount,
        usd_amount: fill.usd_amount,
        rate: fill.rate,
    });
    // The house bought USD at the venue: journaled so the audit counts fills and can match
    // them against fx-usd's credits.
    let journal = JournalEntry {
        saga_id: held.saga_id,
        op: "fill".into(),
        currency: "USD".into(),
        debit: VENUE_ACCOUNT.into(),
        credit: HOUSE_ACCOUNT.into(),
        amount: fill.usd_amount.amount(),
        at_ms: now_ms,
        actor: None,
    };
    let record = OrderRecord {
        user_id: held.user_id.clone(),
        state: OrderState::Filled(fill),
        updated_at_ms: now_ms,
    };
    Decision::applied(record, event, Some(journal))
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
        state: OrderState::Failed { reason },
        updated_at_ms: now_ms,
    };
    Decision::applied(record, event, None)
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
    let journal = JournalEntry {
        saga_id,
        op: "cancel".into(),
        currency: "USD".into(),
        debit: HOUSE_ACCOUNT.into(),
        credit: VENUE_ACCOUNT.into(),
        amount: fill.usd_amount.amount(),
        at_ms: now_ms,
        actor: None,
    };
    let record = OrderRecord {
        user_id: user_id.clone(),
        state: OrderState::Cancelled {
            fill: fill.clone(),
            reason,
        },
        updated_at_ms: now_ms,
    };
    Decision::applied(record, event, Some(journal))
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
        .order
        .unwrap()
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
        assert_eq!(d.journal[0].op, "fill");
        assert!(matches!(d.order.unwrap().state, OrderState::Filled(_)));
    }

    #[test]
    fn given_no_order_when_the_rate_moved_below_the_minimum_then_failed_rate_moved() {
        let d = decide(
            None,
            &held(Some("1071.43"), 30_000),
            &Quote::Rate(rate(1400)),
            NOW,
            &config(),
        );
        assert_eq!(fail_reason(&d), TradeFailReason::RateMoved);
        assert!(d.journal.is_empty());
    }

    #[test]
    fn given_a_rate_so_high_the_fill_rounds_to_zero_then_failed_rate_moved() {
        let d = decide(
            None,
            &held(None, 30_000),
            &Quote::Rate(rate(1_000_000_000)),
            NOW,
            &config(),
        );
        assert_eq!(fail_reason(&d), TradeFailReason::RateMoved);
    }

    #[test]
    fn given_a_hold_inside_the_margin_then_failed_hold_expiring_even_with_a_rate() {
        for quote in [Quote::NotNeeded, Quote::Rate(rate(1400))] {
            let d = decide(None, &held(None, 2_000), &quote, NOW, &config());
            assert_eq!(fail_reason(&d), TradeFailReason::HoldExpiring);
        }
    }

    #[test]
    fn given_the_venue_down_then_retry_while_time_remains_else_failed_venue_unavailable() {
        let down = Quote::Unavailable {
            reason: "venue is down".into(),
            retry_in_ms: 0,
        };
        // 2501 ms left: after the 500 ms retry 2001 ms remain, outside the 2000 ms margin.
        // With 2500 ms the retry would land exactly on the margin, which counts as expiring.
        let d = decide(None, &held(None, 2_501), &down, NOW, &config());
        assert_eq!(d.handled, Handled::RetryAfter { delay_ms: 500 });
        assert!(d.order.is_none() && d.events.is_empty());
        let d = decide(None, &held(None, 2_500), &down, NOW, &config());
        assert_eq!(fail_reason(&d), TradeFailReason::VenueUnavailable);
    }

    #[test]
    fn given_an_open_breaker_the_retry_waits_for_its_probe() {
        let open = Quote::Unavailable {
            reason: "circuit breaker open".into(),
            retry_in_ms: 4_000,
        };
        let d = decide(None, &held(None, 30_000), &open, NOW, &config());
        assert_eq!(d.handled, Handled::RetryAfter { delay_ms: 4_000 });
        let d = decide(None, &held(None, 5_000), &open, NOW, &config());
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
        assert_eq!(d.journal[0].op, "cancel");
        let cancelled = d.order.unwrap();
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
        let d = decide(None, &released(), &Quote::NotNeeded, NOW, &config());
        assert_eq!(fail_reason(&d), TradeFailReason::HoldReleased);
        let tomb = d.order.unwrap();
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
