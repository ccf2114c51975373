//! Adapter tests: the service over a real (temporary) sled store, the simulated venue, and
//! injected time. Each test reads back records, journal entries and the outbox.

use std::sync::Arc;

use events::{
    CancelReason, CreditFailReason, Event, Krw, KrwHeld, KrwReleased, Rate, ReleaseReason, SagaId,
    TradeFailReason, Usd, UsdCreditFailed, UserId,
};
use futures::executor::block_on;
use runtime::ledger::Op;
use runtime::{Handled, JournalEntry, Participant, Store};
use rust_decimal::Decimal;

use crate::*;

const T0: u64 = 1_700_000_000_000;
const HOLD_MS: u64 = 30_000;

fn saga(n: u128) -> SagaId {
    SagaId::from(uuid::Uuid::from_u128(
        0x0193_f0e2_0000_7000_8000_0000_0000_0000 + n,
    ))
}

fn alice() -> UserId {
    UserId::parse("alice").unwrap()
}

fn rate(r: i64) -> Rate {
    Rate::new(Decimal::from(r)).unwrap()
}

fn held(n: u128, min_usd: Option<&str>, expires_at_ms: u64) -> Event {
    Event::KrwHeld(KrwHeld {
        saga_id: saga(n),
        user_id: alice(),
        krw_amount: Krw::parse("1500000").unwrap(),
        min_usd_amount: min_usd.map(|m| Usd::parse(m).unwrap()),
        hold_expires_at_ms: expires_at_ms,
    })
}

fn released(n: u128) -> Event {
    Event::KrwReleased(KrwReleased {
        saga_id: saga(n),
        user_id: alice(),
        krw_amount: Krw::parse("1500000").unwrap(),
        reason: ReleaseReason::Expired,
    })
}

fn credit_failed(n: u128) -> Event {
    Event::UsdCreditFailed(UsdCreditFailed {
        saga_id: saga(n),
        user_id: alice(),
        reason: CreditFailReason::AccountFrozen,
        message: "the USD account of alice is frozen".into(),
    })
}

struct Harness {
    store: Store,
    venue: Arc<SimulatedVenue>,
    svc: TradeService,
}

impl Harness {
    fn new(venue: VenueConfig) -> Harness {
        Harness::with(TradeConfig::default(), venue)
    }

    fn with(config: TradeConfig, venue: VenueConfig) -> Harness {
        let venue = Arc::new(SimulatedVenue::new(&venue));
        Harness {
            store: Store::temporary().unwrap(),
            svc: TradeService::new(config, venue.clone()),
            venue,
        }
    }

    /// One delivery as the runtime does it: prepare, then handle in one transaction.
    fn deliver(&self, event: &Event, now_ms: u64) -> Handled {
        let quote = block_on(self.svc.prepare(&self.store, event, now_ms));
        self.store
            .transact(|tx| self.svc.handle(&*tx, event, &quote, now_ms))
            .unwrap()
    }

    /// Emitted events since the last call, checking each names its cause.
    fn emitted(&self, cause: &Event) -> Vec<Event> {
        let batch = self.store.outbox_batch(u64::MAX, 100).unwrap();
        let keys: Vec<u64> = batch.iter().map(|(k, _)| *k).collect();
        self.store.outbox_remove(&keys).unwrap();
        batch
            .into_iter()
            .map(|(_, entry)| {
                assert_eq!(entry.causation_id, cause.id(), "causation id");
                let e = Event::decode(&entry.subject, entry.payload.as_bytes()).unwrap();
                assert_eq!(entry.event_id, e.id());
                e
            })
            .collect()
    }

    fn order(&self, n: u128) -> Option<OrderRecord> {
        self.store.get(&order_key(saga(n))).unwrap()
    }

    fn journal(&self) -> Vec<JournalEntry> {
        self.store.journal_entries().unwrap()
    }
}

fn only(events: Vec<Event>) -> Event {
    assert_eq!(events.len(), 1, "exactly one event: {events:?}");
    events.into_iter().next().unwrap()
}

fn fail_reason(e: Event) -> TradeFailReason {
    match e {
        Event::TradeFailed(f) => f.reason,
        other => panic!("expected trade.failed, got {other:?}"),
    }
}

#[test]
fn held_is_filled_at_the_venue_rate_and_journaled() {
    let h = Harness::new(VenueConfig::default());
    let ev = held(1, Some("1000.00"), T0 + HOLD_MS);
    assert_eq!(h.deliver(&ev, T0), Handled::Applied);

    let Event::TradeFilled(f) = only(h.emitted(&ev)) else {
        panic!("expected trade.filled")
    };
    assert_eq!(f.usd_amount.to_string(), "1071.42");
    assert_eq!(f.krw_amount.to_string(), "1500000");
    assert_eq!(f.rate, rate(1400));
    let Some(OrderRecord {
        state: OrderState::Filled(fill),
        ..
    }) = h.order(1)
    else {
        panic!("expected a filled order")
    };
    assert_eq!(fill.usd_amount, f.usd_amount);
    let journal = h.journal();
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0].op, Op::Fill);
    assert_eq!(journal[0].saga_id, saga(1));
    assert_eq!(journal[0].amount.to_string(), "1071.42");
    assert_eq!(h.venue.orders_executed(), 1);
    assert!(audit(&h.store).unwrap().ok);
}

#[test]
fn rate_moved_below_the_minimum_fails_without_a_fill() {
    let h = Harness::new(VenueConfig {
        rate: rate(1500),
        ..VenueConfig::default()
    });
    let ev = held(1, Some("1071.42"), T0 + HOLD_MS);
    assert_eq!(h.deliver(&ev, T0), Handled::Applied);
    let Event::TradeFailed(f) = only(h.emitted(&ev)) else {
        panic!("expected trade.failed")
    };
    assert_eq!(f.reason, TradeFailReason::RateMoved);
    assert!(f.message.starts_with("at 1500 KRW/USD"), "{}", f.message);
    assert!(h.journal().is_empty());
    assert!(matches!(
        h.order(1).unwrap().state,
        OrderState::Failed {
            reason: TradeFailReason::RateMoved,
            ..
        }
    ));
    // A limit order: the venue refused it, so nothing executed that nobody books.
    assert_eq!(h.venue.attempts(), 1);
    assert_eq!(h.venue.orders_executed(), 0);
    assert_eq!(h.venue.executed_rate(saga(1)), None);
}

#[test]
fn a_hold_expiring_within_the_margin_fails_after_the_venue_confirms_it_executed_nothing() {
    let h = Harness::new(VenueConfig::default());
    let ev = held(1, None, T0 + 1_999);
    assert_eq!(h.deliver(&ev, T0), Handled::Applied);
    assert_eq!(
        fail_reason(only(h.emitted(&ev))),
        TradeFailReason::HoldExpiring
    );
    assert_eq!(h.venue.attempts(), 0, "too late to order");
    assert_eq!(
        h.venue.lookups(),
        1,
        "but the venue was asked for an execution"
    );
    assert!(h.journal().is_empty());
}

#[test]
fn a_fill_lost_in_a_crash_is_booked_when_the_redelivery_finds_the_hold_inside_the_margin() {
    let h = Harness::new(VenueConfig::default());
    let expires = T0 + HOLD_MS;
    let ev = held(1, None, expires);
    // The venue executed, then the process died before the fill was committed.
    assert_eq!(
        block_on(h.svc.prepare(&h.store, &ev, T0)),
        Quote::Rate(rate(1400))
    );
    // The redelivery comes when no new order may be placed: the lookup finds the execution.
    assert_eq!(h.deliver(&ev, expires - 1_000), Handled::Applied);
    let Event::TradeFilled(f) = only(h.emitted(&ev)) else {
        panic!("expected trade.filled")
    };
    assert_eq!(f.rate, rate(1400));
    assert_eq!(h.journal().len(), 1);
    assert_eq!((h.venue.attempts(), h.venue.lookups()), (1, 1));
    assert_eq!(h.venue.orders_executed(), 1);
    assert!(audit(&h.store).unwrap().ok);
}

#[test]
fn a_saga_with_a_record_never_reaches_the_venue_again() {
    let h = Harness::new(VenueConfig::default());
    let ev = held(1, None, T0 + HOLD_MS);
    h.deliver(&ev, T0);
    h.emitted(&ev);
    assert_eq!((h.venue.attempts(), h.venue.lookups()), (1, 0));
    // A redelivered hold (the inbox pruned, say) and the release after the fill are decided
    // from the record alone.
    for (i, again) in [ev.clone(), released(1)].into_iter().enumerate() {
        assert_eq!(
            block_on(h.svc.prepare(&h.store, &again, T0 + 10)),
            Quote::NotNeeded,
            "delivery {i}"
        );
    }
    h.venue.set_down(true);
    assert_eq!(h.deliver(&released(1), T0 + 20), Handled::Applied);
    assert!(matches!(
        only(h.emitted(&released(1))),
        Event::TradeCancelled(_)
    ));
    assert_eq!((h.venue.attempts(), h.venue.lookups()), (1, 0));
}

#[test]
fn venue_down_retries_while_the_hold_has_time_then_fails_venue_unavailable() {
    let h = Harness::new(VenueConfig::default());
    h.venue.set_down(true);
    let expires = T0 + HOLD_MS;
    let ev = held(1, None, expires);

    assert_eq!(h.deliver(&ev, T0), Handled::RetryAfter { delay_ms: 500 });
    assert!(h.order(1).is_none(), "a retry writes nothing");
    assert!(h.emitted(&ev).is_empty());

    // Inside the 2000 ms margin fx-trade no longer orders, but keeps asking whether an
    // earlier delivery executed, as long as the hold outlives the next delay.
    assert_eq!(
        h.deliver(&ev, expires - 1_000),
        Handled::RetryAfter { delay_ms: 500 }
    );
    assert_eq!((h.venue.attempts(), h.venue.lookups()), (1, 1));
    let late = expires - 500;
    assert_eq!(h.deliver(&ev, late), Handled::Applied);
    assert_eq!(
        fail_reason(only(h.emitted(&ev))),
        TradeFailReason::VenueUnavailable
    );
    assert!(h.journal().is_empty());

    // The final word stands even when the venue comes back, and the venue is not asked again.
    h.venue.set_down(false);
    assert_eq!(h.deliver(&ev, late + 1), Handled::Ignored);
    assert!(h.emitted(&ev).is_empty());
    assert_eq!((h.venue.attempts(), h.venue.lookups()), (1, 2));

    // fx-krw's release answering it verifies with the venue that nothing executed.
    assert!(h.order(1).unwrap().state.unverified());
    let rel = released(1);
    assert_eq!(h.deliver(&rel, late + 2), Handled::Applied);
    assert!(h.emitted(&rel).is_empty());
    assert!(!h.order(1).unwrap().state.unverified());
    assert_eq!((h.venue.attempts(), h.venue.lookups()), (1, 3));
    assert!(h.journal().is_empty());
}

#[test]
fn an_execution_found_after_a_venue_unavailable_is_booked_and_reversed() {
    let h = Harness::new(VenueConfig::default());
    let expires = T0 + HOLD_MS;
    let ev = held(1, None, expires);
    // The venue executed, the fill was lost in a crash, and the venue is unreachable until the
    // hold runs out: the final word is said without it.
    block_on(h.svc.prepare(&h.store, &ev, T0));
    h.venue.set_down(true);
    assert_eq!(h.deliver(&ev, expires - 400), Handled::Applied);
    assert_eq!(
        fail_reason(only(h.emitted(&ev))),
        TradeFailReason::VenueUnavailable
    );
    // fx-krw releases; the release waits for the venue, then books what it executed and
    // reverses it, so the house's USD at the venue is accounted for.
    let rel = released(1);
    assert_eq!(
        h.deliver(&rel, expires),
        Handled::RetryAfter { delay_ms: 500 }
    );
    h.venue.set_down(false);
    h.venue.set_rate(rate(1350));
    assert_eq!(h.deliver(&rel, expires + 500), Handled::Applied);
    // The user's saga is already over: only the house's reversal is announced. 1071.42 USD
    // sold at 1350 brings 1,446,417 KRW against the 1,500,000 the fill cost.
    let Event::TradeReversed(r) = only(h.emitted(&rel)) else {
        panic!("expected trade.reversed")
    };
    assert_eq!(
        (r.krw_amount.to_string(), r.fill_krw_amount.to_string()),
        ("1446417".into(), "1500000".into())
    );
    assert_eq!(h.venue.reversals_executed(), 1);
    let ops: Vec<String> = h.journal().into_iter().map(|e| e.op.to_string()).collect();
    assert_eq!(ops, ["cancel", "fill", "fx_pnl", "reverse"]);
    assert!(matches!(
        h.order(1).unwrap().state,
        OrderState::Failed {
            reason: TradeFailReason::VenueUnavailable,
            unverified: false,
            reversed: Some(_),
            reversal: Some(_),
        }
    ));
    let a = audit(&h.store).unwrap();
    assert!(a.ok, "{a:?}");
    assert_eq!(
        (
            a.figures.failed,
            a.journal.count(Op::Fill),
            a.journal.count(Op::Cancel)
        ),
        (1, 1, 1)
    );
    assert_eq!((a.figures.reversed, a.figures.reversals_pending), (1, 0));
    assert_eq!(a.figures.pnl_krw, Decimal::from(-53_583));
    // Verified once: a redelivered release does not ask again.
    assert_eq!(h.deliver(&rel, expires + 600), Handled::Ignored);
    assert_eq!(h.venue.lookups(), 3);
}

#[test]
fn venue_recovers_and_the_retried_hold_fills() {
    let h = Harness::new(VenueConfig::default());
    h.venue.set_down(true);
    let ev = held(1, None, T0 + HOLD_MS);
    assert_eq!(h.deliver(&ev, T0), Handled::RetryAfter { delay_ms: 500 });
    h.venue.set_down(false);
    assert_eq!(h.deliver(&ev, T0 + 500), Handled::Applied);
    assert!(matches!(only(h.emitted(&ev)), Event::TradeFilled(_)));
}

#[test]
fn breaker_opens_after_n_failures_half_opens_after_the_period_and_closes_on_success() {
    let config = TradeConfig::new(
        2_000,
        500,
        BreakerConfig {
            failures: 3,
            open_ms: 5_000,
        },
    );
    let h = Harness::with(config, VenueConfig::default());
    h.venue.set_down(true);
    let expires = T0 + 60_000;

    // Three failures, each a retry: the third opens the breaker, and its retry waits for
    // the probe instead of hammering the venue.
    for n in 1..=2 {
        assert_eq!(
            h.deliver(&held(n, None, expires), T0 + n as u64),
            Handled::RetryAfter { delay_ms: 500 }
        );
    }
    assert_eq!(h.svc.breaker_state(T0 + 2), BreakerState::Closed);
    assert_eq!(
        h.deliver(&held(3, None, expires), T0 + 3),
        Handled::RetryAfter { delay_ms: 5_000 }
    );
    assert_eq!(h.svc.breaker_state(T0 + 3), BreakerState::Open);
    assert_eq!(h.venue.attempts(), 3);

    // Open: refused without a venue call.
    assert_eq!(
        h.deliver(&held(4, None, expires), T0 + 1_003),
        Handled::RetryAfter { delay_ms: 4_000 }
    );
    assert_eq!(
        h.venue.attempts(),
        3,
        "an open breaker does not call the venue"
    );

    // After the open period: half-open, one probe. The venue is back, so it closes.
    h.venue.set_down(false);
    assert_eq!(h.svc.breaker_state(T0 + 5_003), BreakerState::HalfOpen);
    let probe = held(1, None, expires);
    assert_eq!(h.deliver(&probe, T0 + 5_003), Handled::Applied);
    assert_eq!(h.venue.attempts(), 4);
    assert_eq!(h.svc.breaker_state(T0 + 5_003), BreakerState::Closed);
    assert!(matches!(only(h.emitted(&probe)), Event::TradeFilled(_)));
    for n in 2..=4 {
        assert_eq!(
            h.deliver(&held(n, None, expires), T0 + 5_004),
            Handled::Applied
        );
    }
    assert_eq!(h.venue.orders_executed(), 4);
}

#[test]
fn a_failed_probe_reopens_the_breaker() {
    let config = TradeConfig::new(
        2_000,
        500,
        BreakerConfig {
            failures: 1,
            open_ms: 1_000,
        },
    );
    let h = Harness::with(config, VenueConfig::default());
    h.venue.set_down(true);
    let ev = held(1, None, T0 + 60_000);
    assert_eq!(h.deliver(&ev, T0), Handled::RetryAfter { delay_ms: 1_000 });
    assert_eq!(
        h.deliver(&ev, T0 + 1_000),
        Handled::RetryAfter { delay_ms: 1_000 }
    );
    assert_eq!(h.venue.attempts(), 2, "the probe reached the venue");
    assert_eq!(h.svc.breaker_state(T0 + 1_500), BreakerState::Open);
}

#[test]
fn a_fill_is_cancelled_once_on_credit_failed() {
    let h = Harness::new(VenueConfig::default());
    let ev = held(1, None, T0 + HOLD_MS);
    h.deliver(&ev, T0);
    h.emitted(&ev);

    let cf = credit_failed(1);
    assert_eq!(h.deliver(&cf, T0 + 10), Handled::Applied);
    let Event::TradeCancelled(c) = only(h.emitted(&cf)) else {
        panic!("expected trade.cancelled")
    };
    assert_eq!(c.reason, CancelReason::CreditFailed);
    assert_eq!(c.usd_amount.to_string(), "1071.42");
    assert_eq!(c.krw_amount.to_string(), "1500000");

    // KRW's release answering our cancel, and a redelivered credit_failed: nothing more.
    for again in [released(1), cf.clone()] {
        assert_eq!(h.deliver(&again, T0 + 20), Handled::Ignored);
        assert!(h.emitted(&again).is_empty());
    }
    let ops: Vec<String> = h.journal().into_iter().map(|e| e.op.to_string()).collect();
    assert_eq!(ops, ["cancel", "fill"]);
    assert!(matches!(
        h.order(1).unwrap().state,
        OrderState::Cancelled {
            reason: CancelReason::CreditFailed,
            ..
        }
    ));
    let a = audit(&h.store).unwrap();
    assert!(a.ok, "{a:?}");
    assert_eq!(
        (
            a.figures.cancelled,
            a.journal.count(Op::Fill),
            a.journal.count(Op::Cancel)
        ),
        (1, 1, 1)
    );
}

#[test]
fn a_cancelled_fill_is_sold_back_at_the_venue_and_the_difference_booked_as_pnl() {
    let h = Harness::new(VenueConfig::default());
    let ev = held(1, None, T0 + HOLD_MS);
    h.deliver(&ev, T0);
    h.emitted(&ev);
    let cf = credit_failed(1);
    h.deliver(&cf, T0 + 10);
    let cancelled = only(h.emitted(&cf));
    assert!(matches!(cancelled, Event::TradeCancelled(_)));
    // The user was made whole without the venue; the house holds the fill's USD.
    let a = audit(&h.store).unwrap();
    assert!(a.ok, "{a:?}");
    assert_eq!(
        (
            a.figures.reversals_pending,
            a.figures.position_usd.to_string()
        ),
        (1, "1071.42".into())
    );

    // fx-trade consumes its own trade.cancelled and sells the USD back. The venue is down:
    // retried, with a wait that grows with the time since the cancel, and no deadline.
    h.venue.set_down(true);
    assert_eq!(
        h.deliver(&cancelled, T0 + 20),
        Handled::RetryAfter { delay_ms: 500 }
    );
    assert_eq!(
        h.deliver(&cancelled, T0 + 10 + 40_000),
        Handled::RetryAfter { delay_ms: 20_000 }
    );
    assert_eq!(
        h.deliver(&cancelled, T0 + 10 + 3_600_000),
        Handled::RetryAfter {
            delay_ms: REVERSAL_RETRY_MAX_MS
        }
    );
    assert!(h.emitted(&cancelled).is_empty());
    assert_eq!(h.venue.reversals_executed(), 0);

    // The venue is back, at 1450: the sale brings 1,553,559 KRW for 1,500,000 paid.
    h.venue.set_down(false);
    h.venue.set_rate(rate(1450));
    assert_eq!(h.deliver(&cancelled, T0 + 5_000_000), Handled::Applied);
    let Event::TradeReversed(r) = only(h.emitted(&cancelled)) else {
        panic!("expected trade.reversed")
    };
    assert_eq!(
        (r.usd_amount.to_string(), r.krw_amount.to_string(), r.rate),
        ("1071.42".into(), "1553559".into(), rate(1450))
    );
    let ops: Vec<(String, String, String, String)> = h
        .journal()
        .into_iter()
        .map(|e| {
            (
                e.op.to_string(),
                e.debit.to_string(),
                e.credit.to_string(),
                e.amount.to_string(),
            )
        })
        .collect();
    let row = |op: &str, d: &str, c: &str, amt: &str| {
        (
            op.to_string(),
            d.to_string(),
            c.to_string(),
            amt.to_string(),
        )
    };
    assert_eq!(
        ops,
        [
            row("cancel", "house", "position", "1071.42"),
            row("fill", "venue", "house", "1071.42"),
            row("fx_pnl", "position", "fx_pnl", "53559"),
            row("reverse", "position", "venue", "1071.42"),
        ]
    );
    let a = audit(&h.store).unwrap();
    assert!(a.ok, "{a:?}");
    assert_eq!(
        (
            a.figures.reversed,
            a.figures.reversals_pending,
            a.figures.pnl_krw,
            a.figures.position_usd
        ),
        (1, 0, Decimal::from(53_559), Decimal::ZERO)
    );
    // Redelivered: booked once, and the venue is not asked again.
    let attempts = h.venue.attempts();
    assert_eq!(h.deliver(&cancelled, T0 + 5_000_100), Handled::Ignored);
    assert!(h.emitted(&cancelled).is_empty());
    assert_eq!(h.venue.attempts(), attempts);
    assert_eq!(h.venue.reversals_executed(), 1);
}

#[test]
fn a_release_after_the_fill_cancels_it() {
    let h = Harness::new(VenueConfig::default());
    let ev = held(1, None, T0 + HOLD_MS);
    h.deliver(&ev, T0);
    h.emitted(&ev);

    let rel = released(1);
    assert_eq!(h.deliver(&rel, T0 + HOLD_MS + 5_000), Handled::Applied);
    let Event::TradeCancelled(c) = only(h.emitted(&rel)) else {
        panic!("expected trade.cancelled")
    };
    assert_eq!(c.reason, CancelReason::HoldReleased);
    // fx-usd's answer to the fill may still arrive: nothing left to reverse.
    let cf = credit_failed(1);
    assert_eq!(h.deliver(&cf, T0 + HOLD_MS + 6_000), Handled::Ignored);
    assert!(h.emitted(&cf).is_empty());
}

#[test]
fn a_release_before_the_hold_is_a_tombstone_announced_at_once() {
    let h = Harness::new(VenueConfig::default());
    let rel = released(1);
    assert_eq!(h.deliver(&rel, T0), Handled::Applied);
    assert_eq!(
        fail_reason(only(h.emitted(&rel))),
        TradeFailReason::HoldReleased
    );

    let ev = held(1, None, T0 + HOLD_MS);
    assert_eq!(h.deliver(&ev, T0 + 10), Handled::Ignored);
    assert!(h.emitted(&ev).is_empty(), "no second final word, no fill");
    assert!(h.journal().is_empty());
    // The tombstone waited for the venue's word that nothing executed; the later hold then
    // never reached the venue, so no execution exists that nobody books.
    assert_eq!((h.venue.attempts(), h.venue.lookups()), (0, 1));
    assert_eq!(h.venue.orders_executed(), 0);
    assert!(matches!(
        h.order(1).unwrap().state,
        OrderState::Failed {
            reason: TradeFailReason::HoldReleased,
            ..
        }
    ));
    assert!(audit(&h.store).unwrap().ok);
}

#[test]
fn duplicates_are_ignored_and_a_re_decided_fill_reuses_the_venue_order() {
    let h = Harness::new(VenueConfig {
        volatility_bps: 100,
        seed: 42,
        ..VenueConfig::default()
    });
    let ev = held(1, None, T0 + HOLD_MS);

    // A crash after the venue executed but before the transaction committed: the quote is
    // lost. Meanwhile another order moves the market.
    let lost = block_on(h.svc.prepare(&h.store, &ev, T0));
    h.deliver(&held(2, None, T0 + HOLD_MS), T0 + 1);
    h.emitted(&held(2, None, T0 + HOLD_MS));

    // The redelivery gets the same execution back, not a second order at a new rate.
    assert_eq!(h.deliver(&ev, T0 + 2), Handled::Applied);
    let Event::TradeFilled(f) = only(h.emitted(&ev)) else {
        panic!("expected trade.filled")
    };
    assert_eq!(Quote::Rate(f.rate), lost);
    assert_eq!(h.venue.orders_executed(), 2);

    assert_eq!(h.deliver(&ev, T0 + 3), Handled::Ignored);
    assert!(h.emitted(&ev).is_empty());
    assert_eq!(h.journal().len(), 2, "one fill per saga");
    assert_eq!(
        h.venue.attempts(),
        3,
        "the last duplicate did not reach the venue"
    );
}

#[test]
fn a_release_after_a_lost_fill_books_the_execution_and_reverses_it() {
    let h = Harness::new(VenueConfig::default());
    let ev = held(1, None, T0 + HOLD_MS);
    // The venue executed; the fill was lost in a crash; the hold expired at fx-krw, whose
    // release reaches fx-trade before the redelivered hold.
    block_on(h.svc.prepare(&h.store, &ev, T0));
    let rel = released(1);
    assert_eq!(h.deliver(&rel, T0 + HOLD_MS + 5_000), Handled::Applied);
    let out = h.emitted(&rel);
    let [Event::TradeFilled(f), Event::TradeCancelled(c)] = &out[..] else {
        panic!("expected trade.filled then trade.cancelled: {out:?}")
    };
    assert_eq!(f.rate, rate(1400));
    assert_eq!(c.reason, CancelReason::HoldReleased);
    let ops: Vec<String> = h.journal().into_iter().map(|e| e.op.to_string()).collect();
    assert_eq!(ops, ["cancel", "fill"]);
    assert_eq!(h.deliver(&ev, T0 + HOLD_MS + 6_000), Handled::Ignored);
    assert!(h.emitted(&ev).is_empty());
    assert_eq!((h.venue.attempts(), h.venue.lookups()), (1, 1));
    let a = audit(&h.store).unwrap();
    assert!(a.ok, "{a:?}");
    assert_eq!(
        (
            a.figures.cancelled,
            a.journal.count(Op::Fill),
            a.journal.count(Op::Cancel)
        ),
        (1, 1, 1)
    );
}

#[test]
fn a_release_waits_while_the_venue_cannot_say_whether_it_executed() {
    let h = Harness::new(VenueConfig::default());
    h.venue.set_down(true);
    let rel = released(1);
    assert_eq!(h.deliver(&rel, T0), Handled::RetryAfter { delay_ms: 500 });
    assert!(
        h.order(1).is_none(),
        "no tombstone without the venue's word"
    );
    assert!(h.emitted(&rel).is_empty());
    h.venue.set_down(false);
    assert_eq!(h.deliver(&rel, T0 + 500), Handled::Applied);
    assert_eq!(
        fail_reason(only(h.emitted(&rel))),
        TradeFailReason::HoldReleased
    );
}

#[test]
fn events_trade_does_not_consume_are_ignored() {
    let h = Harness::new(VenueConfig::default());
    let ev = Event::UsdCredited(events::UsdCredited {
        saga_id: saga(1),
        user_id: alice(),
        usd_amount: Usd::parse("1.00").unwrap(),
    });
    assert_eq!(h.deliver(&ev, T0), Handled::Ignored);
    assert!(h.order(1).is_none());
}

#[test]
fn audit_reports_a_corrupted_order_in_words() {
    let h = Harness::new(VenueConfig::default());
    let ev = held(1, None, T0 + HOLD_MS);
    h.deliver(&ev, T0);
    // Tamper: the record now claims a different fill amount than the journal.
    let mut order = h.order(1).unwrap();
    if let OrderState::Filled(fill) = &mut order.state {
        fill.usd_amount = Usd::parse("9999.00").unwrap();
    }
    h.store
        .transact(|tx| {
            runtime::Records::put(&*tx, &order_key(saga(1)), &order)?;
            runtime::Records::put_raw(&*tx, &order_key(saga(2)), b"{\"nonsense\":1}".to_vec())
        })
        .unwrap();
    let a = audit(&h.store).unwrap();
    assert!(!a.ok);
    assert_eq!(a.failures.len(), 2, "{:?}", a.failures);
    assert!(a.failures.iter().any(|f| f.contains("9999.00")), "{a:?}");
    assert!(
        a.failures.iter().any(|f| f.contains("does not decode")),
        "{a:?}"
    );
}

#[test]
fn config_reads_defaults() {
    let c = TradeConfig::default();
    assert_eq!(c.hold_safety_margin_ms, 2_000);
    assert_eq!(c.venue_retry_ms, 500);
    assert_eq!(c.breaker, BreakerConfig::default());
    assert_eq!(c.venue.rate, rate(1400));
    assert!(c.validate().is_ok());
}

#[test]
fn the_audit_reconciles_every_execution_at_the_venue_with_the_books() {
    let h = Harness::new(VenueConfig::default());
    let all = events::Partitioning::new(1, 0).unwrap();
    // Saga 1 completes its fill; saga 2 is filled, cancelled and sold back at 1450.
    for n in [1, 2] {
        let ev = held(n, None, T0 + HOLD_MS);
        h.deliver(&ev, T0);
        h.emitted(&ev);
    }
    let cf = credit_failed(2);
    h.deliver(&cf, T0 + 10);
    let cancelled = only(h.emitted(&cf));
    h.venue.set_rate(rate(1450));
    assert_eq!(h.deliver(&cancelled, T0 + 20), Handled::Applied);

    let r = block_on(report(&h.store, &*h.venue, all)).unwrap();
    assert!(r.ok, "{r:?}");
    let v = r.figures.venue.as_ref().unwrap();
    assert_eq!((v.executions, v.buys, v.sells, v.last_seq), (3, 2, 1, 3));
    assert_eq!(v.bought_usd.to_string(), "2142.84");
    assert_eq!(v.sold_usd.to_string(), "1071.42");
    assert_eq!(v.pnl_krw, Decimal::from(53_559));
    assert_eq!(v.pnl_krw, r.figures.pnl_krw);

    // An execution nobody booked (an order placed at the venue behind fx-trade's back) and a
    // booked fill the venue never made (the books against another venue) both fail it.
    block_on(h.venue.order(&VenueOrder::buy(
        saga(3),
        alice(),
        Krw::parse("1000000").unwrap(),
        None,
    )))
    .unwrap();
    let r = block_on(report(&h.store, &*h.venue, all)).unwrap();
    assert!(!r.ok);
    let v = r.figures.venue.unwrap();
    assert_eq!(v.failure_count, 1, "{:?}", v.failures);
    assert!(v.failures[0].contains("booked nowhere"), "{:?}", v.failures);

    let elsewhere = SimulatedVenue::new(&VenueConfig::default());
    let v = block_on(reconcile(&h.store, &elsewhere, all)).unwrap();
    assert_eq!(
        v.failure_count, 3,
        "two fills and a reversal: {:?}",
        v.failures
    );
    assert!(v.failures.iter().all(|f| f.contains("never executed")));

    // fx-trade's embedded venue after a restart: it remembers only executions from T0 + 15,
    // so the two fills before that cannot be confirmed (counted apart, not failures), while
    // the reversal booked at T0 + 20 still must have its sale.
    let restarted = SimulatedVenue::new(&VenueConfig::default()).remembering_from(T0 + 15);
    let v = block_on(reconcile(&h.store, &restarted, all)).unwrap();
    assert_eq!(v.before_history, 2, "{v:?}");
    assert_eq!(v.failure_count, 1, "{:?}", v.failures);
    assert!(v.failures[0].contains("reversal"), "{:?}", v.failures);
    let after_all = SimulatedVenue::new(&VenueConfig::default()).remembering_from(T0 + 30);
    let r = block_on(report(&h.store, &after_all, all)).unwrap();
    assert!(
        r.ok,
        "nothing left to confirm, and the P&L is not compared: {r:?}"
    );
    assert_eq!(r.figures.venue.unwrap().before_history, 3);

    // A venue that does not answer: the books are still audited, and the report says why the
    // venue part is missing.
    h.venue.set_down(true);
    let r = block_on(report(&h.store, &*h.venue, all)).unwrap();
    assert!(!r.ok && r.failures.is_empty() && r.figures.venue.is_none());
    assert!(r.figures.venue_error.unwrap().contains("venue is down"));
}
