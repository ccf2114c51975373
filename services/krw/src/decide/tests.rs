//! Given/when/then tests of the pure decisions: no store, no clock, only records in and out.

use events::{Event, ExchangeRequested, Krw, RejectReason, ReleaseReason, SagaId, Usd, UserId};
use runtime::Handled;

use super::*;
use crate::records::{Account, House, SagaStatus, Totals};
use crate::KrwConfig;

const T0: u64 = 1_800_000_000_000;

fn krw(s: &str) -> Krw {
    Krw::parse(s).unwrap()
}

fn alice() -> UserId {
    UserId::parse("alice").unwrap()
}

fn saga_id(n: u128) -> SagaId {
    SagaId::from(uuid::Uuid::from_u128(n))
}

fn config() -> KrwConfig {
    KrwConfig::default()
}

fn account(available: &str) -> Account {
    Account {
        available: krw(available),
        ..Account::empty()
    }
}

fn request(id: SagaId, amount: &str) -> ExchangeRequested {
    ExchangeRequested {
        saga_id: id,
        user_id: alice(),
        krw_amount: krw(amount),
        min_usd_amount: Some(Usd::parse("700.00").unwrap()),
    }
}

/// Given alice has `available` KRW and no saga yet.
fn given(available: &str) -> State {
    State {
        saga: None,
        account: Some(account(available)),
        house: House::default(),
    }
}

/// One decision, with the records it leaves (`state`: the input records after its writes).
struct Step {
    outcome: Handled,
    state: State,
    writes: KrwWrites,
    events: Vec<Event>,
    journal: Vec<runtime::JournalEntry>,
}

fn when(state: &State, input: Input<'_>, now: u64) -> Step {
    let d = decide(state, &config(), &input, now).expect("records are consistent");
    Step {
        outcome: d.handled,
        state: state.after(&d.writes),
        writes: d.writes,
        events: d.events,
        journal: d.journal,
    }
}

/// Given alice's 1,000,000 KRW of which `amount` is held for saga 1 at T0.
fn given_held(amount: &str) -> State {
    let d = when(
        &given("1000000"),
        Input::Requested(&request(saga_id(1), amount)),
        T0,
    );
    assert_eq!(d.outcome, Handled::Applied);
    d.state
}

fn filled(u: &UserId) -> Input<'_> {
    Input::TradeFilled {
        saga_id: saga_id(1),
        user: u,
    }
}

fn failed(u: &UserId) -> Input<'_> {
    Input::TradeFailed {
        saga_id: saga_id(1),
        user: u,
    }
}

fn cancelled(u: &UserId) -> Input<'_> {
    Input::TradeCancelled {
        saga_id: saga_id(1),
        user: u,
    }
}

fn credited(u: &UserId) -> Input<'_> {
    Input::UsdCredited {
        saga_id: saga_id(1),
        user: u,
    }
}

fn status(s: &State) -> SagaStatus {
    s.saga.as_ref().unwrap().status
}

fn ops_of(d: &Step) -> Vec<&str> {
    d.journal.iter().map(|e| e.op.as_str()).collect()
}

fn kinds(d: &Step) -> Vec<events::EventKind> {
    d.events.iter().map(Event::kind).collect()
}

#[test]
fn a_request_within_limits_holds_the_amount_until_ttl() {
    // Given alice has 1,000,000 KRW.
    let state = given("1000000");
    // When she asks to exchange 300,000.
    let d = when(&state, Input::Requested(&request(saga_id(1), "300000")), T0);
    // Then 300,000 moves to held, counted against today, journaled and announced.
    assert_eq!(d.outcome, Handled::Applied);
    let acct = d.state.account.as_ref().unwrap();
    assert_eq!((acct.available, acct.held), (krw("700000"), krw("300000")));
    assert_eq!((acct.day, acct.day_total), (T0 / 86_400_000, krw("300000")));
    assert_eq!(ops_of(&d), ["hold"]);
    assert_eq!(d.journal[0].debit.to_string(), "user:alice:available");
    assert_eq!(d.journal[0].credit.to_string(), "user:alice:held");
    let Event::KrwHeld(held) = &d.events[0] else {
        panic!("expected krw.held, got {:?}", d.events)
    };
    assert_eq!(held.krw_amount, krw("300000"));
    assert_eq!(held.hold_expires_at_ms, T0 + 30_000);
    assert_eq!(held.min_usd_amount, Some(Usd::parse("700").unwrap()));
    let saga = d.state.saga.as_ref().unwrap();
    assert_eq!(saga.status, SagaStatus::Held);
    assert_eq!(saga.expires_at_ms, Some(T0 + 30_000));
    assert!(saga.expiry_index_key(saga_id(1)).is_some());
}

#[test]
fn every_rejection_reason_leaves_the_money_alone_and_says_what_to_do() {
    let cases: [(Option<Account>, &str, RejectReason, &str); 5] = [
        (None, "5000", RejectReason::UnknownUser, "no KRW account"),
        (
            Some(account("1000000")),
            "999",
            RejectReason::BelowMinimum,
            "at least 1000 KRW",
        ),
        (
            Some(account("90000000")),
            "50000001",
            RejectReason::AboveTransactionLimit,
            "at most 50000000 KRW",
        ),
        (
            Some(Account {
                day: T0 / 86_400_000,
                day_total: krw("99000000"),
                ..account("90000000")
            }),
            "1000001",
            RejectReason::AboveDailyLimit,
            "at most 1000000 KRW",
        ),
        (
            Some(account("200000")),
            "1500000",
            RejectReason::InsufficientFunds,
            "alice has 200000 KRW available, 1500000 KRW requested",
        ),
    ];
    for (acct, amount, reason, words) in cases {
        // Given the account (or none).
        let state = State {
            saga: None,
            account: acct,
            house: House::default(),
        };
        // When alice requests `amount`.
        let d = when(&state, Input::Requested(&request(saga_id(1), amount)), T0);
        // Then krw.rejected with the reason and a message with the numbers; nothing moved.
        let Some(Event::KrwRejected(rej)) = d.events.first() else {
            panic!("{reason:?}: expected krw.rejected, got {:?}", d.events)
        };
        assert_eq!(rej.reason, reason);
        assert!(rej.message.contains(words), "{reason:?}: {}", rej.message);
        assert!(
            rej.message.contains("saga_id"),
            "{reason:?}: {}",
            rej.message
        );
        assert_eq!(d.state.account, state.account, "{reason:?}");
        assert!(d.journal.is_empty());
        assert_eq!(status(&d.state), SagaStatus::Rejected { reason });
    }
}

#[test]
fn the_daily_limit_resets_on_a_new_utc_day() {
    // Given alice held 99,000,000 yesterday.
    let state = State {
        account: Some(Account {
            day: T0 / 86_400_000 - 1,
            day_total: krw("99000000"),
            ..account("90000000")
        }),
        ..given("0")
    };
    // When she asks for 40,000,000 today, Then it is held and today's total starts over.
    let d = when(
        &state,
        Input::Requested(&request(saga_id(1), "40000000")),
        T0,
    );
    assert_eq!(kinds(&d), [events::EventKind::KrwHeld]);
    assert_eq!(d.state.account.unwrap().day_total, krw("40000000"));
}

#[test]
fn a_repeated_request_is_a_no_op_and_a_different_body_is_a_conflict() {
    // Given saga 1 holds 300,000.
    let state = given_held("300000");
    // When the same request arrives again, Then nothing changes.
    let same = when(
        &state,
        Input::Requested(&request(saga_id(1), "300000")),
        T0 + 5,
    );
    assert_eq!(same.outcome, Handled::Ignored);
    assert_eq!(same.state, state);
    assert_eq!(
        same.writes,
        KrwWrites::default(),
        "a duplicate writes nothing"
    );
    assert!(same.events.is_empty() && same.journal.is_empty());
    // When a different body arrives with the same saga id, Then it is dead-lettered unchanged.
    let other = when(
        &state,
        Input::Requested(&request(saga_id(1), "400000")),
        T0 + 5,
    );
    let Handled::DeadLetter { reason, message } = &other.outcome else {
        panic!("expected a dead letter, got {:?}", other.outcome)
    };
    assert_eq!(*reason, SAGA_ID_CONFLICT);
    assert!(
        message.contains("300000") && message.contains("400000"),
        "{message}"
    );
    assert_eq!(other.state, state);
    assert_eq!(other.writes, KrwWrites::default());
    assert!(other.events.is_empty() && other.journal.is_empty());
}

#[test]
fn the_writes_are_the_changed_records_and_the_expiry_index_follows_the_hold() {
    // A hold writes the saga with its expiry index entry, the account, not the house.
    let d = when(
        &given("1000000"),
        Input::Requested(&request(saga_id(1), "300000")),
        T0,
    );
    let saga = d.writes.saga.as_ref().expect("the saga is written");
    let index = saga.record.expiry_index_key(saga_id(1));
    assert!(index.is_some());
    assert_eq!((&saga.index, &saga.unindex), (&index, &None));
    assert_eq!(d.writes.account.as_ref().unwrap().0, alice());
    assert_eq!(d.writes.house, None);
    // The fill pins it: the entry goes, the account and house stay as they are.
    let pinned = when(&d.state, filled(&alice()), T0 + 1);
    let saga = pinned.writes.saga.as_ref().expect("the saga is written");
    assert_eq!((&saga.index, &saga.unindex), (&None, &index));
    assert_eq!(
        (&pinned.writes.account, &pinned.writes.house),
        (&None, &None)
    );
    // The credit commits it: the held KRW moves to the house.
    let committed = when(&pinned.state, credited(&alice()), T0 + 2);
    assert_eq!(
        committed.writes.house.as_ref().map(|h| h.krw),
        Some(krw("300000"))
    );
    assert_eq!(committed.writes.saga.as_ref().unwrap().unindex, None);
}

#[test]
fn a_rejected_saga_stays_rejected_even_after_a_deposit() {
    // Given saga 1 was rejected for insufficient funds.
    let rejected = when(
        &given("100"),
        Input::Requested(&request(saga_id(1), "5000")),
        T0,
    )
    .state;
    // When alice gets money and the same request is redelivered.
    let state = State {
        account: Some(account("1000000")),
        ..rejected
    };
    let d = when(
        &state,
        Input::Requested(&request(saga_id(1), "5000")),
        T0 + 1,
    );
    // Then it is still rejected: no hold beside a krw.rejected.
    assert_eq!(d.outcome, Handled::Ignored);
    assert_eq!(d.state, state);
}

#[test]
fn a_fill_pins_the_hold_and_removes_it_from_the_expiry_index() {
    let state = given_held("300000");
    let d = when(&state, filled(&alice()), T0 + 10);
    assert_eq!(d.outcome, Handled::Applied);
    let saga = d.state.saga.as_ref().unwrap();
    assert!(saga.pinned && saga.seen.trade_filled);
    assert_eq!(saga.expiry_index_key(saga_id(1)), None);
    assert!(d.events.is_empty() && d.journal.is_empty());
    // A duplicate fill changes nothing.
    let again = when(&d.state, filled(&alice()), T0 + 11);
    assert_eq!(again.outcome, Handled::Ignored);
    assert_eq!(again.state, d.state);
}

#[test]
fn a_credit_commits_even_before_the_fill_is_seen() {
    // Given an unpinned hold (the credit overtook the fill).
    let state = given_held("300000");
    // When usd.credited arrives.
    let d = when(&state, credited(&alice()), T0 + 10);
    // Then held goes to the house.
    assert_eq!(kinds(&d), [events::EventKind::KrwCommitted]);
    assert_eq!(ops_of(&d), ["commit"]);
    assert_eq!(d.journal[0].credit.to_string(), "house");
    assert_eq!(d.state.house.krw, krw("300000"));
    assert_eq!(d.state.account.as_ref().unwrap().held, Krw::ZERO);
    assert_eq!(status(&d.state), SagaStatus::Committed);
    // And the late fill is recorded but changes nothing else.
    let late = when(&d.state, filled(&alice()), T0 + 20);
    assert_eq!(late.outcome, Handled::Ignored);
    assert!(late.events.is_empty() && late.journal.is_empty());
    assert_eq!(late.state.account, d.state.account);
    assert!(late.state.saga.unwrap().seen.trade_filled);
}

#[test]
fn trade_failed_releases_and_gives_the_daily_limit_back() {
    let state = given_held("300000");
    let d = when(&state, failed(&alice()), T0 + 10);
    let Event::KrwReleased(rel) = &d.events[0] else {
        panic!("expected krw.released, got {:?}", d.events)
    };
    assert_eq!(rel.reason, ReleaseReason::TradeFailed);
    let acct = d.state.account.as_ref().unwrap();
    assert_eq!((acct.available, acct.held), (krw("1000000"), Krw::ZERO));
    assert_eq!(acct.day_total, Krw::ZERO);
    assert_eq!(ops_of(&d), ["release"]);
    // A duplicate does nothing.
    let again = when(&d.state, failed(&alice()), T0 + 11);
    assert_eq!(again.outcome, Handled::Ignored);
    assert_eq!(again.state, d.state);
}

#[test]
fn trade_cancelled_after_a_fill_releases_the_pinned_hold() {
    let pinned = when(&given_held("300000"), filled(&alice()), T0 + 10).state;
    let d = when(&pinned, cancelled(&alice()), T0 + 20);
    assert_eq!(
        status(&d.state),
        SagaStatus::Released {
            reason: ReleaseReason::TradeCancelled
        }
    );
    assert_eq!(d.state.account.unwrap().available, krw("1000000"));
}

#[test]
fn expiry_releases_only_after_ttl_plus_grace_and_never_a_pinned_hold() {
    let state = given_held("300000");
    let deadline = T0 + 30_000 + 5_000;
    // Before the deadline: nothing.
    let early = when(
        &state,
        Input::Expire {
            saga_id: saga_id(1),
        },
        deadline - 1,
    );
    assert_eq!(early.outcome, Handled::Ignored);
    assert_eq!(early.state, state);
    // At the deadline: released as expired.
    let due = when(
        &state,
        Input::Expire {
            saga_id: saga_id(1),
        },
        deadline,
    );
    assert_eq!(
        status(&due.state),
        SagaStatus::Released {
            reason: ReleaseReason::Expired
        }
    );
    assert_eq!(ops_of(&due), ["release"]);
    // Pinned: never, however late.
    let pinned = when(&state, filled(&alice()), T0 + 1).state;
    let never = when(
        &pinned,
        Input::Expire {
            saga_id: saga_id(1),
        },
        u64::MAX,
    );
    assert_eq!(never.outcome, Handled::Ignored);
    assert_eq!(never.state, pinned);
}

#[test]
fn after_an_expiry_late_trade_and_usd_events_move_nothing() {
    // Given the hold expired while a fill was in flight.
    let expired = when(
        &given_held("300000"),
        Input::Expire {
            saga_id: saga_id(1),
        },
        T0 + 35_000,
    )
    .state;
    // When the fill, the credit and the cancel arrive, Then each is recorded and nothing moves:
    // trade cancels on krw.released, and USD debits on trade.cancelled.
    let mut state = expired.clone();
    for input in [filled(&alice()), credited(&alice()), cancelled(&alice())] {
        let d = when(&state, input, T0 + 40_000);
        assert_eq!(d.outcome, Handled::Ignored, "{input:?}");
        assert!(d.events.is_empty() && d.journal.is_empty(), "{input:?}");
        state = d.state;
    }
    assert_eq!(state.account, expired.account);
    assert_eq!(state.house, expired.house);
    assert_eq!(
        status(&state),
        SagaStatus::Released {
            reason: ReleaseReason::Expired
        }
    );
}

#[test]
fn a_failure_seen_before_the_request_ends_the_hold_as_soon_as_it_is_taken() {
    // Given trade.failed arrived before the request (a tombstone).
    let tomb = when(&given("1000000"), failed(&alice()), T0);
    assert_eq!(tomb.outcome, Handled::Applied);
    assert_eq!(status(&tomb.state), SagaStatus::NoRequest);
    assert!(tomb.events.is_empty());
    // When the request arrives.
    let d = when(
        &tomb.state,
        Input::Requested(&request(saga_id(1), "300000")),
        T0 + 1,
    );
    // Then it is held and released at once, as the in-order saga would have been.
    assert_eq!(
        kinds(&d),
        [events::EventKind::KrwHeld, events::EventKind::KrwReleased]
    );
    assert_eq!(ops_of(&d), ["hold", "release"]);
    assert_eq!(d.state.account.unwrap().available, krw("1000000"));
    assert_eq!(d.state.saga.unwrap().expiry_index_key(saga_id(1)), None);
}

#[test]
fn a_fill_and_credit_seen_before_the_request_commit_it() {
    let mut state = given("1000000");
    for input in [credited(&alice()), filled(&alice())] {
        state = when(&state, input, T0).state;
    }
    let d = when(
        &state,
        Input::Requested(&request(saga_id(1), "300000")),
        T0 + 1,
    );
    assert_eq!(
        kinds(&d),
        [events::EventKind::KrwHeld, events::EventKind::KrwCommitted]
    );
    assert_eq!(d.state.house.krw, krw("300000"));
    let saga = d.state.saga.unwrap();
    assert!(saga.pinned);
    assert_eq!(saga.status, SagaStatus::Committed);
}

#[test]
fn a_fill_seen_before_the_request_pins_the_new_hold() {
    let state = when(&given("1000000"), filled(&alice()), T0).state;
    let d = when(
        &state,
        Input::Requested(&request(saga_id(1), "300000")),
        T0 + 1,
    );
    let saga = d.state.saga.unwrap();
    assert_eq!(saga.status, SagaStatus::Held);
    assert!(saga.pinned);
    assert_eq!(
        saga.expiry_index_key(saga_id(1)),
        None,
        "a pinned hold never expires"
    );
}

#[test]
fn a_rejected_request_after_a_tombstone_stays_rejected() {
    let state = when(&given("100"), failed(&alice()), T0).state;
    let d = when(
        &state,
        Input::Requested(&request(saga_id(1), "300000")),
        T0 + 1,
    );
    assert_eq!(kinds(&d), [events::EventKind::KrwRejected]);
    assert!(d.journal.is_empty());
}

#[test]
fn an_event_naming_another_user_is_dead_lettered() {
    let state = given_held("300000");
    let bob = UserId::parse("bob").unwrap();
    let d = when(&state, credited(&bob), T0 + 1);
    assert!(matches!(
        d.outcome,
        Handled::DeadLetter {
            reason: SAGA_USER_MISMATCH,
            ..
        }
    ));
    assert_eq!(d.state, state);
}

#[test]
fn an_unreadable_request_is_rejected_once_and_conflicts_with_anything_else() {
    let inv = InvalidRequest {
        saga_id: saga_id(1),
        user: alice(),
        reason: RejectReason::InvalidRequest,
        message: "x".repeat(2_000),
        digest: "fnv1a64:1".into(),
    };
    let d = when(&given("0"), Input::InvalidRequest(&inv), T0);
    let Event::KrwRejected(rej) = &d.events[0] else {
        panic!("expected krw.rejected")
    };
    // The message is cut to what events accept.
    assert_eq!(rej.message.chars().count(), events::MAX_MESSAGE_CHARS);
    // The same bytes again: no-op. A valid request on the same saga: conflict.
    let again = when(&d.state, Input::InvalidRequest(&inv), T0 + 1);
    assert_eq!(again.outcome, Handled::Ignored);
    let valid = when(
        &d.state,
        Input::Requested(&request(saga_id(1), "5000")),
        T0 + 1,
    );
    assert!(matches!(
        valid.outcome,
        Handled::DeadLetter {
            reason: SAGA_ID_CONFLICT,
            ..
        }
    ));
    // And an unreadable request on a held saga is a conflict too.
    let on_hold = when(&given_held("5000"), Input::InvalidRequest(&inv), T0 + 1);
    assert!(matches!(on_hold.outcome, Handled::DeadLetter { .. }));
}

#[test]
fn records_that_contradict_each_other_abort_instead_of_moving_money() {
    // Given a hold whose account shows less held than the hold.
    let mut state = given_held("300000");
    state.account.as_mut().unwrap().held = krw("100");
    // When the credit arrives, Then the decision refuses.
    let err = decide(&state, &config(), &credited(&alice()), T0 + 1).unwrap_err();
    assert!(err.to_string().contains("less than the hold"), "{err}");
}

#[test]
fn deposits_create_accounts_and_repeat_as_no_ops() {
    let bob = UserId::parse("bob").unwrap();
    let empty = DepositState {
        deposit: None,
        saga_exists: false,
        account: None,
        totals: Totals::default(),
    };
    // When an operator deposits 5,000,000 for bob, Then his account exists with it.
    let d = decide_deposit(&empty, saga_id(9), &bob, krw("5000000"), "admin", T0);
    assert_eq!(d.handled, Handled::Applied);
    let after = empty.after(&d.writes);
    assert_eq!(after.account.as_ref().unwrap().available, krw("5000000"));
    assert_eq!(after.totals.deposits, krw("5000000"));
    assert_eq!(d.writes.deposit.as_ref().unwrap().1.user, bob);
    assert_eq!(d.journal[0].debit.to_string(), "external");
    assert_eq!(d.journal[0].actor.as_deref(), Some("admin"));
    // The same deposit again: Ignored, nothing changes.
    let again = decide_deposit(&after, saga_id(9), &bob, krw("5000000"), "admin", T0 + 1);
    assert_eq!(again.handled, Handled::Ignored);
    assert_eq!(again.writes, DepositWrites::default());
    assert!(again.journal.is_empty() && again.events.is_empty());
    // The same id for another amount: refused.
    let other = decide_deposit(&after, saga_id(9), &bob, krw("1"), "admin", T0 + 1);
    assert!(matches!(
        other.handled,
        Handled::DeadLetter {
            reason: DEPOSIT_ID_CONFLICT,
            ..
        }
    ));
    // Zero: refused.
    let zero = decide_deposit(&empty, saga_id(10), &bob, Krw::ZERO, "admin", T0);
    assert!(matches!(
        zero.handled,
        Handled::DeadLetter {
            reason: INVALID_DEPOSIT,
            ..
        }
    ));
}
