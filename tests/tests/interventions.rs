//! Operator interventions on one saga (`fxctl saga reemit|cancel|refuse-credit`) against a real
//! nats-server and the services' real code: each action's effect on balances, journals and the
//! saga's events, the `<domain>.intervened` record naming the operator and the reason, its
//! idempotency, and its refusals.

mod common;

use common::{uid, System};
use events::{
    CreditFailReason, Event, EventKind, Intervened, InterventionAction, Krw, ReleaseReason, SagaId,
    TradeFailReason,
};
use fxctl::CtlError;

const OPERATOR: &str = "ops-kim";

async fn act(
    sys: &System,
    saga: SagaId,
    action: InterventionAction,
    reason: &str,
) -> Result<serde_json::Value, CtlError> {
    fxctl::intervene(&sys.client, saga, &uid("alice"), action, reason, OPERATOR).await
}

/// Publishes alice's request without following it.
async fn request(sys: &System, krw: &str) -> SagaId {
    let saga = SagaId::new_v7();
    fxctl::exchange(
        &sys.client,
        uid("alice"),
        Krw::parse(krw).unwrap(),
        None,
        Some(saga),
        None,
    )
    .await
    .unwrap();
    saga
}

fn interventions(events: &[Event], kind: EventKind) -> Vec<Intervened> {
    events
        .iter()
        .filter(|e| e.kind() == kind)
        .filter_map(|e| e.intervention().cloned())
        .collect()
}

fn refused(r: Result<serde_json::Value, CtlError>, code: &str) {
    match r {
        Err(CtlError::Refused(m)) => assert!(m.contains(code), "{code} not in {m:?}"),
        other => panic!("expected a refusal {code}, got {other:?}"),
    }
}

/// Waits until fx-krw says the saga's hold is pinned by its fill.
async fn wait_pinned(sys: &System, saga: SagaId) {
    testkit::wait_for("fx-krw pins the hold", 20_000, || async {
        let v = fxctl::krw_saga(&sys.client, saga, &uid("alice"), "test")
            .await
            .ok()?;
        (v["pinned"] == serde_json::json!(true)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn cancel_before_the_pivot_releases_the_hold_and_the_saga_compensates() {
    let mut sys = System::start().await;
    sys.deposit_krw("alice", "5000000").await;
    // fx-trade is down: the hold waits, unpinned, for the venue.
    sys.stop_service("trade").await;
    let saga = request(&sys, "1400000").await;
    sys.wait_for_event(saga, EventKind::KrwHeld).await;
    assert_eq!(sys.balance("alice").await.krw_held, "1400000");

    let out = act(
        &sys,
        saga,
        InterventionAction::Cancel,
        "customer called to cancel",
    )
    .await
    .unwrap();
    assert_eq!(out["krw"]["outcome"], "done");
    assert_eq!(
        out["krw"]["events"],
        serde_json::json!(["krw.released", "krw.intervened"])
    );
    // The KRW is back at once, journaled as a release.
    let b = sys.balance("alice").await;
    assert_eq!(
        (b.krw_available.as_str(), b.krw_held.as_str()),
        ("5000000", "0")
    );
    assert_eq!(sys.journal_ops("krw", saga), ["hold", "release"]);
    sys.wait_for_event(saga, EventKind::KrwIntervened).await;
    let events = sys.saga_events(saga).await;
    let released: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::KrwReleased(r) => Some(r.reason),
            _ => None,
        })
        .collect();
    assert_eq!(released, [ReleaseReason::Operator]);
    let record = interventions(&events, EventKind::KrwIntervened);
    assert_eq!(record.len(), 1);
    assert_eq!(record[0].action, InterventionAction::Cancel);
    assert_eq!(record[0].actor, OPERATOR);
    assert_eq!(record[0].reason, "customer called to cancel");
    assert_eq!(record[0].events, ["krw.released"]);

    // Idempotent: a second cancel changes nothing.
    let again = act(&sys, saga, InterventionAction::Cancel, "again")
        .await
        .unwrap();
    assert_eq!(again["krw"]["outcome"], "already_done");
    assert_eq!(sys.journal_ops("krw", saga), ["hold", "release"]);

    // fx-trade comes back: the usual compensation after a release (it fails the saga, or
    // cancels and reverses a fill it made first), and the user ends with her KRW, no USD.
    sys.start_service("trade").await;
    testkit::wait_for("fx-trade's final word", 20_000, || async {
        let kinds: Vec<EventKind> = sys
            .saga_events(saga)
            .await
            .iter()
            .map(Event::kind)
            .collect();
        let done = kinds.contains(&EventKind::TradeFailed)
            || (kinds.contains(&EventKind::TradeCancelled)
                && kinds.contains(&EventKind::UsdDebited));
        done.then_some(())
    })
    .await;
    let b = sys.balance("alice").await;
    assert_eq!(
        (
            b.krw_available.as_str(),
            b.krw_held.as_str(),
            b.usd.as_str()
        ),
        ("5000000", "0", "0.00")
    );
    sys.assert_audit_ok().await;
}

#[tokio::test]
async fn cancel_is_refused_after_the_pivot_and_on_a_finished_saga() {
    let mut sys = System::start().await;
    sys.deposit_krw("alice", "5000000").await;
    let done_id = SagaId::new_v7();
    let done = sys.exchange_saga("alice", "1400000", None, done_id).await;
    assert_eq!(done.state, "COMPLETED");
    refused(
        act(&sys, done_id, InterventionAction::Cancel, "too late").await,
        "finished",
    );
    refused(
        act(&sys, SagaId::new_v7(), InterventionAction::Cancel, "who?").await,
        "unknown_saga",
    );
    refused(
        act(&sys, done_id, InterventionAction::Cancel, " ").await,
        "bad_reason",
    );

    // Past the pivot: fx-usd is down, the hold is pinned by the fill.
    sys.stop_service("usd").await;
    let saga = request(&sys, "1400000").await;
    wait_pinned(&sys, saga).await;
    refused(
        act(&sys, saga, InterventionAction::Cancel, "customer called").await,
        "pinned",
    );
    assert_eq!(sys.journal_ops("krw", saga), ["hold"]);
    assert!(interventions(&sys.saga_events(saga).await, EventKind::KrwIntervened).is_empty());
    sys.start_service("usd").await;
    sys.wait_for_event(saga, EventKind::KrwCommitted).await;
    sys.assert_audit_ok().await;
}

/// Pauses (or resumes) fx-usd's durable consumer: the broker delivers it nothing meanwhile,
/// as when its fill was dead-lettered or lost, while fx-usd itself keeps answering admin
/// requests.
async fn pause_usd_consumer(sys: &System, paused: bool) {
    let body = if paused {
        serde_json::json!({ "pause_until": "2100-01-01T00:00:00Z" })
    } else {
        serde_json::json!({})
    };
    let reply = sys
        .client
        .request(
            "$JS.API.CONSUMER.PAUSE.FX.fx-usd",
            serde_json::to_vec(&body).unwrap().into(),
        )
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v["paused"], serde_json::json!(paused), "{v}");
}

#[tokio::test]
async fn refuse_credit_answers_a_fill_that_never_reached_fx_usd_and_the_usual_compensation_runs() {
    let sys = System::start().await;
    sys.deposit_krw("alice", "5000000").await;
    pause_usd_consumer(&sys, true).await;
    let saga = request(&sys, "1400000").await;
    wait_pinned(&sys, saga).await;

    let out = act(
        &sys,
        saga,
        InterventionAction::RefuseCredit,
        "fill dead-lettered",
    )
    .await
    .unwrap();
    assert_eq!(out["usd"]["outcome"], "done");
    assert_eq!(
        out["usd"]["events"],
        serde_json::json!(["usd.credit_failed", "usd.intervened"])
    );
    // fx-trade cancels the fill, fx-krw releases; the house sells the USD back.
    sys.wait_for_event(saga, EventKind::KrwReleased).await;
    sys.wait_for_event(saga, EventKind::TradeReversed).await;
    let events = sys.saga_events(saga).await;
    assert!(events.iter().any(|e| matches!(e,
        Event::UsdCreditFailed(f) if f.reason == CreditFailReason::Operator)));
    assert!(events.iter().any(|e| matches!(e,
        Event::TradeCancelled(c) if c.reason == events::CancelReason::CreditFailed)));
    let record = interventions(&events, EventKind::UsdIntervened);
    assert_eq!(record.len(), 1);
    assert_eq!(
        (record[0].actor.as_str(), record[0].reason.as_str()),
        (OPERATOR, "fill dead-lettered")
    );
    let b = sys.balance("alice").await;
    assert_eq!(
        (
            b.krw_available.as_str(),
            b.krw_held.as_str(),
            b.usd.as_str()
        ),
        ("5000000", "0", "0.00")
    );
    assert_eq!(sys.journal_ops("krw", saga), ["hold", "release"]);
    let trade_ops = sys.journal_ops("trade", saga);
    assert!(
        trade_ops.starts_with(&["cancel".to_owned(), "fill".to_owned()])
            && trade_ops.contains(&"reverse".to_owned()),
        "{trade_ops:?}"
    );
    // The fill finally reaches fx-usd: its answer was given, so it credits nothing.
    pause_usd_consumer(&sys, false).await;
    testkit::wait_for("fx-usd drains its consumer", 20_000, || async {
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            sys.js.get_consumer_from_stream("fx-usd", "FX").await.ok()?;
        let info = c.info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await;
    assert!(sys.journal_ops("usd", saga).is_empty(), "nothing credited");
    assert_eq!(sys.balance("alice").await.usd, "0.00");
    sys.assert_audit_ok().await;

    // Refused once the saga ended at fx-krw.
    refused(
        act(&sys, saga, InterventionAction::RefuseCredit, "again").await,
        "finished",
    );
}

#[tokio::test]
async fn refuse_credit_before_the_fill_compensates_and_is_idempotent_and_refused_once_finished() {
    let mut sys = System::start().await;
    sys.deposit_krw("alice", "5000000").await;
    // Answered: a completed saga is refused (fx-krw holds nothing any more).
    let done_id = SagaId::new_v7();
    let done = sys.exchange_saga("alice", "1400000", None, done_id).await;
    assert_eq!(done.state, "COMPLETED");
    refused(
        act(&sys, done_id, InterventionAction::RefuseCredit, "late").await,
        "finished",
    );
    // fx-usd itself refuses it too, asked directly: it credited that fill.
    let e = runtime::admin::request(
        &sys.client,
        "usd",
        runtime::intervention::REFUSE_CREDIT_ENDPOINT,
        OPERATOR,
        &serde_json::json!({ "saga_id": done_id, "user_id": "alice", "reason": "late" }),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, 409);
    assert!(e.message.starts_with("already_answered: "), "{}", e.message);
    assert_eq!(sys.journal_ops("usd", done_id), ["credit"]);

    // Before the pivot: fx-trade is down, so no fill exists yet.
    sys.stop_service("trade").await;
    let saga = request(&sys, "1400000").await;
    sys.wait_for_event(saga, EventKind::KrwHeld).await;
    let out = act(
        &sys,
        saga,
        InterventionAction::RefuseCredit,
        "compliance hold",
    )
    .await
    .unwrap();
    assert_eq!(out["usd"]["outcome"], "done");
    let again = act(&sys, saga, InterventionAction::RefuseCredit, "twice")
        .await
        .unwrap();
    assert_eq!(again["usd"]["outcome"], "already_done");
    sys.start_service("trade").await;
    sys.wait_for_event(saga, EventKind::KrwReleased).await;
    // fx-trade reads krw.held first (stream order) and fills; the refusal then cancels and
    // reverses that fill. (The other order, the refusal before krw.held, ends in
    // trade.failed(credit_refused) without a venue call: the simulation reorders for it.)
    sys.wait_for_event(saga, EventKind::TradeReversed).await;
    let events = sys.saga_events(saga).await;
    assert!(events.iter().any(|e| matches!(e,
        Event::TradeCancelled(c) if c.reason == events::CancelReason::CreditFailed)));
    assert!(!events.iter().any(|e| matches!(e,
        Event::TradeFailed(f) if f.reason == TradeFailReason::CreditRefused)));
    let b = sys.balance("alice").await;
    assert_eq!(
        (
            b.krw_available.as_str(),
            b.krw_held.as_str(),
            b.usd.as_str()
        ),
        ("3600000", "0", "1000.00")
    );
    assert_eq!(sys.journal_ops("krw", saga), ["hold", "release"]);
    assert!(sys.journal_ops("usd", saga).is_empty(), "never credited");
    sys.assert_audit_ok().await;
}

#[tokio::test]
async fn reemit_republishes_each_services_last_word_with_its_id_and_changes_nothing() {
    let sys = System::start().await;
    sys.deposit_krw("alice", "5000000").await;
    let saga = SagaId::new_v7();
    let done = sys.exchange_saga("alice", "1400000", None, saga).await;
    assert_eq!(done.state, "COMPLETED");
    let before = sys.balance("alice").await;

    let out = act(&sys, saga, InterventionAction::Reemit, "checking the trail")
        .await
        .unwrap();
    assert_eq!(
        out["krw"]["events"],
        serde_json::json!(["krw.committed", "krw.intervened"])
    );
    assert_eq!(
        out["trade"]["events"],
        serde_json::json!(["trade.filled", "trade.intervened"])
    );
    assert_eq!(
        out["usd"]["events"],
        serde_json::json!(["usd.credited", "usd.intervened"])
    );
    for kind in [
        EventKind::KrwIntervened,
        EventKind::TradeIntervened,
        EventKind::UsdIntervened,
    ] {
        sys.wait_for_event(saga, kind).await;
    }
    // Same ids: within the broker's duplicate window the re-emits are dropped, so every step
    // is on the stream once, and no service acted twice.
    let events = sys.saga_events(saga).await;
    for kind in [
        EventKind::KrwCommitted,
        EventKind::TradeFilled,
        EventKind::UsdCredited,
    ] {
        assert_eq!(
            events.iter().filter(|e| e.kind() == kind).count(),
            1,
            "{kind}"
        );
    }
    let record = interventions(&events, EventKind::TradeIntervened);
    assert_eq!(
        (record[0].actor.as_str(), record[0].reason.as_str()),
        (OPERATOR, "checking the trail")
    );
    assert_eq!(sys.balance("alice").await, before);
    assert_eq!(sys.journal_ops("krw", saga), ["commit", "hold"]);
    assert_eq!(sys.journal_ops("usd", saga), ["credit"]);
    sys.assert_audit_ok().await;

    // A saga nobody knows: every service refuses, so the command does.
    refused(
        act(&sys, SagaId::new_v7(), InterventionAction::Reemit, "who?").await,
        "unknown_saga",
    );
}
