//! The choreographed exchange end to end: the services' real code against a real nats-server.
//! Every test asserts balances and journal entries, not just event names.

mod common;

use async_nats::jetstream::message::PublishMessage;
use common::{balance, System};
use events::{Rate, SagaId};
use rust_decimal::Decimal;

fn rate(r: u32) -> Rate {
    Rate::new(Decimal::from(r)).unwrap()
}

#[tokio::test]
async fn happy_path_moves_krw_to_the_house_and_credits_usd_at_the_filled_rate() {
    let sys = System::start().await;
    sys.deposit_krw("alice", "5000000").await;
    let saga = SagaId::new_v7();
    let out = sys
        .exchange_saga("alice", "1500000", Some("1000.00"), saga)
        .await;
    assert_eq!(out.state, "COMPLETED");
    assert_eq!(
        out.events,
        [
            "exchange.requested",
            "krw.held",
            "trade.filled",
            "usd.credited",
            "krw.committed"
        ]
    );
    // 1,500,000 / 1400 = 1071.428... rounded down to the cent.
    assert_eq!(out.usd_amount.as_deref(), Some("1071.42"));
    assert_eq!(
        sys.balance("alice").await,
        balance("alice", "3500000", "0", "1071.42")
    );
    assert_eq!(sys.journal_ops("krw", saga), ["commit", "hold"]);
    assert_eq!(sys.journal_ops("usd", saga), ["credit"]);
    assert_eq!(sys.journal_ops("trade", saga), ["fill"]);
    sys.assert_audit_ok().await;
}

#[tokio::test]
async fn insufficient_funds_and_limits_are_rejected_with_nothing_moved() {
    let sys = System::start().await;
    sys.deposit_krw("bob", "200000").await;
    let poor = SagaId::new_v7();
    let out = sys.exchange_saga("bob", "1500000", None, poor).await;
    assert_eq!(out.state, "REJECTED");
    assert!(
        out.reason
            .as_deref()
            .unwrap()
            .starts_with("insufficient_funds"),
        "{out:?}"
    );
    let huge = sys.exchange("bob", "60000000", None).await;
    assert!(huge.reason.unwrap().starts_with("above_transaction_limit"));
    let tiny = sys.exchange("bob", "10", None).await;
    assert!(tiny.reason.unwrap().starts_with("below_minimum"));
    let stranger = sys.exchange("nobody", "5000", None).await;
    assert!(stranger.reason.unwrap().starts_with("unknown_user"));
    assert_eq!(
        sys.balance("bob").await,
        balance("bob", "200000", "0", "0.00")
    );
    assert!(sys.journal_ops("krw", poor).is_empty());
    sys.assert_audit_ok().await;
}

#[tokio::test]
async fn a_rate_below_the_slippage_guard_fails_the_trade_and_releases_the_hold() {
    let sys = System::start().await;
    sys.deposit_krw("carol", "2000000").await;
    sys.venue.set_rate(rate(1600));
    let saga = SagaId::new_v7();
    let out = sys
        .exchange_saga("carol", "1500000", Some("1000.00"), saga)
        .await;
    assert_eq!(out.state, "COMPENSATED");
    assert_eq!(
        out.events,
        [
            "exchange.requested",
            "krw.held",
            "trade.failed",
            "krw.released"
        ]
    );
    assert!(out.reason.unwrap().starts_with("rate_moved"));
    assert_eq!(
        sys.balance("carol").await,
        balance("carol", "2000000", "0", "0.00")
    );
    assert_eq!(sys.journal_ops("krw", saga), ["hold", "release"]);
    assert!(sys.journal_ops("usd", saga).is_empty());
    sys.assert_audit_ok().await;
}

#[tokio::test]
async fn a_frozen_usd_account_runs_the_whole_reverse_chain() {
    let sys = System::start().await;
    sys.deposit_krw("dave", "3000000").await;
    fxctl::set_frozen(&sys.client, &common::uid("dave"), true, "test")
        .await
        .unwrap();
    let saga = SagaId::new_v7();
    let out = sys.exchange_saga("dave", "1400000", None, saga).await;
    assert_eq!(out.state, "COMPENSATED");
    // The house's reversal at the venue runs beside the user's compensation, so it may be on
    // the stream already, anywhere after trade.cancelled.
    let user_steps: Vec<&String> = out
        .events
        .iter()
        .filter(|e| *e != "trade.reversed")
        .collect();
    assert_eq!(
        user_steps,
        [
            "exchange.requested",
            "krw.held",
            "trade.filled",
            "usd.credit_failed",
            "trade.cancelled",
            "krw.released"
        ]
    );
    assert!(out.reason.unwrap().starts_with("account_frozen"));
    // The freeze itself is on the stream, naming who did it.
    let frozen = testkit::messages_on(&sys.js, "FX", "fx.usd.frozen.dave").await;
    assert_eq!(frozen.len(), 1);
    match events::Event::decode(frozen[0].subject.as_str(), &frozen[0].payload).unwrap() {
        events::Event::UsdFrozen(f) => assert_eq!(f.actor, "test"),
        other => panic!("{other:?}"),
    }
    let mut b = balance("dave", "3000000", "0", "0.00");
    b.usd_frozen = true;
    assert_eq!(sys.balance("dave").await, b);
    assert_eq!(sys.journal_ops("krw", saga), ["hold", "release"]);
    // The fill's USD is sold back at the venue: 1,400,000 KRW bought 1000.00 USD at the flat
    // 1400, which sells back for exactly what it cost, so there is no gain or loss to book.
    sys.wait_for_event(saga, events::EventKind::TradeReversed)
        .await;
    assert_eq!(
        sys.journal_ops("trade", saga),
        ["cancel", "fill", "reverse"]
    );
    assert!(sys.journal_ops("usd", saga).is_empty());
    sys.assert_audit_ok().await;
}

#[tokio::test]
async fn the_breaker_opens_while_the_venue_is_down_and_closes_after_it_recovers() {
    let trade_config = trade::TradeConfig {
        breaker: trade::BreakerConfig {
            failures: 2,
            open_ms: 5_000,
        },
        venue_retry_ms: 50,
        ..trade::TradeConfig::default()
    };
    // A short hold, so that "no venue while the hold has time" ends quickly.
    let krw_config = krw::KrwConfig {
        hold_ttl_ms: 4_000,
        ..krw::KrwConfig::default()
    };
    let sys = System::start_with(krw_config, trade_config).await;
    sys.deposit_krw("erin", "9000000").await;
    sys.venue.set_down(true);
    let down = sys.exchange("erin", "1000000", None).await;
    assert_eq!(down.state, "COMPENSATED");
    assert!(
        down.reason.unwrap().starts_with("venue_unavailable"),
        "fails once the hold runs short"
    );
    let now = runtime::system_clock()();
    assert_eq!(sys.trade().breaker_state(now), trade::BreakerState::Open);

    sys.venue.set_down(false);
    // Past the open period, one probe goes through, succeeds, and closes the breaker. Both
    // clocks move, so the new hold is fresh for fx-trade too.
    sys.advance("trade", 6_000);
    sys.advance("krw", 6_000);
    let up = sys.exchange("erin", "1000000", None).await;
    assert_eq!(up.state, "COMPLETED");
    let now = runtime::system_clock()() + 6_000;
    assert_eq!(sys.trade().breaker_state(now), trade::BreakerState::Closed);
    assert_eq!(
        sys.balance("erin").await,
        balance("erin", "8000000", "0", "714.28")
    );
    sys.assert_audit_ok().await;
}

#[tokio::test]
async fn a_hold_expires_while_fx_trade_is_stopped_and_trade_then_refuses_the_stale_hold() {
    let mut sys = System::start().await;
    sys.deposit_krw("fay", "2000000").await;
    sys.stop_service("trade").await;
    let saga = SagaId::new_v7();
    let request = fxctl::exchange(
        &sys.client,
        common::uid("fay"),
        events::Krw::parse("1000000").unwrap(),
        None,
        Some(saga),
        None,
    );
    request.await.unwrap();
    testkit::wait_for("the hold", 20_000, || async {
        (sys.balance("fay").await.krw_held == "1000000").then_some(())
    })
    .await;
    // 30 s TTL + 5 s grace pass for fx-krw (and for fx-trade, which then sees a stale hold).
    sys.advance("krw", 40_000);
    sys.advance("trade", 40_000);
    testkit::wait_for("the expiry release", 20_000, || async {
        (sys.balance("fay").await.krw_held == "0").then_some(())
    })
    .await;
    sys.start_service("trade").await;
    sys.wait_for_event(saga, events::EventKind::TradeFailed)
        .await;
    assert_eq!(
        sys.balance("fay").await,
        balance("fay", "2000000", "0", "0.00")
    );
    assert_eq!(sys.journal_ops("krw", saga), ["hold", "release"]);
    assert!(
        sys.journal_ops("trade", saga).is_empty(),
        "a stale hold must not be filled"
    );
    sys.assert_audit_ok().await;
}

#[tokio::test]
async fn a_fill_racing_the_hold_expiry_is_reversed_and_the_user_ends_whole() {
    let mut sys = System::start().await;
    sys.deposit_krw("gus", "2000000").await;
    sys.stop_service("trade").await;
    let saga = SagaId::new_v7();
    fxctl::exchange(
        &sys.client,
        common::uid("gus"),
        events::Krw::parse("1000000").unwrap(),
        None,
        Some(saga),
        None,
    )
    .await
    .unwrap();
    testkit::wait_for("the hold", 20_000, || async {
        (sys.balance("gus").await.krw_held == "1000000").then_some(())
    })
    .await;
    // Only fx-krw's clock jumps: it releases the hold, while fx-trade (on the wall clock) still
    // sees time left and fills. The fill and the release cross: trade must reverse, USD debit.
    sys.advance("krw", 40_000);
    testkit::wait_for("the expiry release", 20_000, || async {
        (sys.balance("gus").await.krw_held == "0").then_some(())
    })
    .await;
    sys.start_service("trade").await;
    let kinds = sys
        .wait_for_event(saga, events::EventKind::UsdDebited)
        .await;
    assert!(
        kinds.contains(&"trade.filled".to_string())
            && kinds.contains(&"trade.cancelled".to_string()),
        "{kinds:?}"
    );
    assert_eq!(
        sys.balance("gus").await,
        balance("gus", "2000000", "0", "0.00")
    );
    assert_eq!(sys.journal_ops("usd", saga), ["credit", "debit"]);
    // Sold back at the venue: 714.28 USD at 1400 brings 999,992 KRW for the 1,000,000 paid,
    // rounding's 8 KRW loss, booked as fx_pnl.
    sys.wait_for_event(saga, events::EventKind::TradeReversed)
        .await;
    let reversed = sys
        .saga_events(saga)
        .await
        .into_iter()
        .find_map(|e| match e {
            events::Event::TradeReversed(r) => Some(r),
            _ => None,
        })
        .expect("trade.reversed is on the stream");
    assert_eq!(
        (
            reversed.krw_amount.to_string(),
            reversed.fill_krw_amount.to_string()
        ),
        ("999992".to_string(), "1000000".to_string())
    );
    assert_eq!(
        sys.journal_ops("trade", saga),
        ["cancel", "fill", "fx_pnl", "reverse"]
    );
    sys.assert_audit_ok().await;
}

#[tokio::test]
async fn a_duplicate_request_holds_once_with_or_without_a_message_id() {
    let sys = System::start().await;
    sys.deposit_krw("hana", "5000000").await;
    for with_msg_id in [true, false] {
        let saga = SagaId::new_v7();
        let body = format!(r#"{{"saga_id":"{saga}","user_id":"hana","krw_amount":"1000000"}}"#);
        for _ in 0..2 {
            let mut m = PublishMessage::build().payload(body.clone().into());
            if with_msg_id {
                m = m.message_id(saga.to_string());
            }
            sys.js
                .send_publish("fx.exchange.requested.hana", m)
                .await
                .unwrap()
                .await
                .unwrap();
        }
        sys.wait_for_event(saga, events::EventKind::KrwCommitted)
            .await;
        assert_eq!(
            sys.journal_ops("krw", saga),
            ["commit", "hold"],
            "with_msg_id={with_msg_id}"
        );
    }
    assert_eq!(
        sys.balance("hana").await,
        balance("hana", "3000000", "0", "1428.56")
    );
    sys.assert_audit_ok().await;
}

#[tokio::test]
async fn malformed_json_is_dead_lettered_and_a_user_mismatch_is_rejected() {
    let sys = System::start().await;
    sys.deposit_krw("ivan", "1000000").await;
    sys.js
        .send_publish(
            "fx.exchange.requested.ivan",
            PublishMessage::build().payload("{oops".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let saga = SagaId::new_v7();
    let body = format!(r#"{{"saga_id":"{saga}","user_id":"mallory","krw_amount":"1000"}}"#);
    sys.js
        .send_publish(
            "fx.exchange.requested.ivan",
            PublishMessage::build().payload(body.into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let letters = testkit::wait_for("a dead letter", 20_000, || async {
        let l = fxctl::dlq_list(&sys.client).await.ok()?;
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, "malformed_body");
    assert_eq!(letters[0].payload, "{oops");
    assert_eq!(letters[0].subject, "fx.exchange.requested.ivan");
    let rejected = testkit::wait_for("the rejection", 20_000, || async {
        sys.saga_events(saga)
            .await
            .into_iter()
            .find_map(|e| match e {
                events::Event::KrwRejected(r) => Some(r),
                _ => None,
            })
    })
    .await;
    assert_eq!(rejected.reason, events::RejectReason::UserMismatch);
    assert_eq!(
        rejected.user_id.as_str(),
        "ivan",
        "answered on the subject's user"
    );

    // The dead letter, replayed as it is, still does not decode: refused with what to do.
    let err = fxctl::dlq_replay(&sys.client, letters[0].seq, None)
        .await
        .unwrap_err();
    assert!(matches!(err, fxctl::CtlError::Refused(_)), "{err}");
    assert!(err.to_string().contains("--payload"), "{err}");
    // Fixed and replayed onto its subject, it runs as a normal request.
    let fixed_saga = SagaId::new_v7();
    let fixed = format!(r#"{{"saga_id":"{fixed_saga}","user_id":"ivan","krw_amount":"14000"}}"#);
    fxctl::dlq_replay(&sys.client, letters[0].seq, Some(fixed))
        .await
        .unwrap();
    sys.wait_for_event(fixed_saga, events::EventKind::KrwCommitted)
        .await;
    assert_eq!(
        sys.balance("ivan").await,
        balance("ivan", "986000", "0", "10.00")
    );
    sys.assert_audit_ok().await;
}

#[tokio::test]
async fn fxctl_tail_shows_a_users_saga_as_readable_lines() {
    let sys = System::start().await;
    sys.deposit_krw("jin", "2000000").await;
    let saga = SagaId::new_v7();
    sys.exchange_saga("jin", "1400000", None, saga).await;
    let mut lines = Vec::new();
    fxctl::tail(&sys.client, Some(&common::uid("jin")), true, |seq, e| {
        let e = e.expect("every event decodes");
        lines.push(fxctl::describe(seq, &e));
        e.kind() != events::EventKind::KrwCommitted
    })
    .await
    .unwrap();
    let text = lines.join("\n");
    assert!(text.contains("krw.deposited"), "{text}");
    assert!(
        text.contains(&format!(
            "trade.filled           jin          {saga}  krw=1400000 usd=1000.00 rate=1400"
        )),
        "{text}"
    );
    assert!(lines.last().unwrap().contains("krw.committed"));
}

/// A venue call that never answers holds back its own saga for one deadline, and nothing
/// else: fx-trade's calls run side by side, and what has an answer commits without waiting.
#[tokio::test]
async fn a_hung_venue_call_holds_back_its_own_saga_only() {
    let config = trade::TradeConfig {
        venue_timeout_ms: 5_000,
        ..trade::TradeConfig::default()
    };
    let sys = System::start_with(krw::KrwConfig::default(), config).await;
    sys.deposit_krw("slow", "2000000").await;
    let fast_users: Vec<String> = (0..10).map(|i| format!("fast{i}")).collect();
    for u in &fast_users {
        sys.deposit_krw(u, "1000000").await;
    }
    sys.venue.set_hangs_for(Some(common::uid("slow")));

    let slow = SagaId::new_v7();
    let others = async {
        // The slow saga's order reached the venue first and hangs there.
        testkit::wait_for("the slow order to hang", 20_000, || async {
            (sys.venue.hung_calls() == (1, 1)).then_some(())
        })
        .await;
        let outs =
            futures::future::join_all(fast_users.iter().map(|u| sys.exchange(u, "700000", None)))
                .await;
        // Every other saga completed while the slow saga's first call was still hanging (were
        // they queued behind it, it would have been dropped at its deadline, and the slow
        // saga's retry would hang a second time, before they finished).
        let still_hung = sys.venue.hung_calls();
        sys.venue.set_hangs_for(None);
        (outs, still_hung)
    };
    let (slow_out, (outs, still_hung)) =
        tokio::join!(sys.exchange_saga("slow", "1400000", None, slow), others);
    assert_eq!(
        still_hung,
        (1, 1),
        "(hanging now, hung ever): the other sagas waited for the hung call"
    );
    for out in &outs {
        assert_eq!(out.state, "COMPLETED", "{out:?}");
        assert_eq!(out.usd_amount.as_deref(), Some("500.00"));
    }
    // The hung call cost its saga one deadline: it timed out (an unknown outcome, so the
    // order was asked again under the same client order id) and then filled once.
    assert_eq!(slow_out.state, "COMPLETED", "{slow_out:?}");
    assert_eq!(
        sys.balance("slow").await,
        balance("slow", "600000", "0", "1000.00")
    );
    assert_eq!(sys.venue.orders_executed(), 11);
    assert_eq!(sys.journal_ops("trade", slow), ["fill"]);
    sys.assert_audit_ok().await;
}
