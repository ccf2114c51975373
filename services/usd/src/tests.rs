//! Adapter and admin tests over a real (temporary) sled store with injected time.

use events::{
    CancelReason, CreditFailReason, Event, Krw, Rate, SagaId, TradeCancelled, TradeFilled, Usd,
    UserId,
};
use futures::executor::block_on;
use runtime::ledger::Op;
use runtime::{Handled, JournalEntry, Participant, Records, RuntimeError, Store};
use rust_decimal::Decimal;

use crate::*;

const T0: u64 = 1_700_000_000_000;

fn saga(n: u128) -> SagaId {
    SagaId::from(uuid::Uuid::from_u128(
        0x0193_f0e2_0000_7000_8000_0000_0000_0000 + n,
    ))
}

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

fn usd(s: &str) -> Usd {
    Usd::parse(s).unwrap()
}

fn filled(n: u128, who: &str, amount: &str) -> Event {
    Event::TradeFilled(TradeFilled {
        saga_id: saga(n),
        user_id: user(who),
        krw_amount: Krw::parse("1500000").unwrap(),
        usd_amount: usd(amount),
        rate: Rate::new(Decimal::from(1400)).unwrap(),
    })
}

fn cancelled(n: u128, who: &str, amount: &str) -> Event {
    Event::TradeCancelled(TradeCancelled {
        saga_id: saga(n),
        user_id: user(who),
        krw_amount: Krw::parse("1500000").unwrap(),
        usd_amount: usd(amount),
        reason: CancelReason::CreditFailed,
    })
}

struct Harness {
    store: Store,
    svc: UsdService,
    /// Events emitted by admin operations, in order.
    admin_events: std::cell::RefCell<Vec<Event>>,
}

impl Harness {
    /// A store whose house float is `float`, seeded at `T0`.
    fn new(float: &str) -> Harness {
        let h = Harness {
            store: Store::temporary().unwrap(),
            svc: UsdService::new(UsdConfig::new(usd(float))),
            admin_events: Default::default(),
        };
        let outcome = h
            .store
            .transact(|tx| seed_house_float(&*tx, usd(float), T0))
            .unwrap();
        assert_eq!(outcome, AdminOutcome::Done);
        h
    }

    fn deliver(&self, event: &Event, now_ms: u64) -> Handled {
        self.try_deliver(event, now_ms).unwrap()
    }

    fn try_deliver(&self, event: &Event, now_ms: u64) -> runtime::Result<Handled> {
        block_on(self.svc.prepare(&self.store, event, now_ms));
        self.store
            .transact(|tx| self.svc.handle(&*tx, event, &(), now_ms))
    }

    /// Emitted events since the last call, with their causation ids.
    fn emitted(&self) -> Vec<(Event, String)> {
        let batch = self.store.outbox_batch(u64::MAX, 100).unwrap();
        let keys: Vec<u64> = batch.iter().map(|(k, _)| *k).collect();
        self.store.outbox_remove(&keys).unwrap();
        batch
            .into_iter()
            .map(|(_, entry)| {
                let e = Event::decode(&entry.subject, entry.payload.as_bytes()).unwrap();
                (e, entry.causation_id)
            })
            .collect()
    }

    /// The one event emitted since the last call, checking it names `cause`.
    fn only(&self, cause: &Event) -> Event {
        let mut events = self.emitted();
        assert_eq!(events.len(), 1, "exactly one event: {events:?}");
        let (e, causation) = events.pop().unwrap();
        assert_eq!(causation, cause.id());
        e
    }

    fn balance(&self, who: &str) -> Option<Usd> {
        balance(&self.store, &user(who)).unwrap().map(|a| a.usd)
    }

    fn house(&self) -> Usd {
        house_balance(&self.store).unwrap()
    }

    fn journal(&self) -> Vec<JournalEntry> {
        self.store.journal_entries().unwrap()
    }

    fn credit(&self, n: u128) -> Option<CreditRecord> {
        self.store.get(&credit_key(saga(n))).unwrap()
    }

    /// Runs an admin operation. The freeze events it emits (the audit trail) are set aside in
    /// `admin_events`, so that `only()` and `emitted()` see what the saga events cause.
    fn admin<T>(&self, f: impl Fn(&runtime::Tx<'_>) -> runtime::TxResult<T>) -> T {
        let out = self.store.transact(|tx| f(tx)).unwrap();
        let batch = self.store.outbox_batch(u64::MAX, 100).unwrap();
        for (key, entry) in batch {
            let e = Event::decode(&entry.subject, entry.payload.as_bytes()).unwrap();
            if matches!(e, Event::UsdFrozen(_) | Event::UsdUnfrozen(_)) {
                self.store.outbox_remove(&[key]).unwrap();
                self.admin_events.borrow_mut().push(e);
            }
        }
        out
    }

    fn assert_audit_ok(&self) {
        let a = audit(&self.store).unwrap();
        assert!(a.ok, "audit failed: {:?}", a.failures);
    }
}

fn credit_fail_reason(e: Event) -> CreditFailReason {
    match e {
        Event::UsdCreditFailed(f) => f.reason,
        other => panic!("expected usd.credit_failed, got {other:?}"),
    }
}

#[test]
fn house_float_is_seeded_once() {
    let h = Harness::new("10000.00");
    let again = h.admin(|tx| seed_house_float(tx, usd("99.00"), T0 + 1));
    assert_eq!(again, AdminOutcome::AlreadyDone);
    assert_eq!(h.house(), usd("10000.00"));
    let journal = h.journal();
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0].saga_id, house_float_deposit_id());
    assert_eq!(
        (
            journal[0].debit.to_string().as_str(),
            journal[0].credit.to_string().as_str()
        ),
        ("external", "house")
    );
    assert!(h.emitted().is_empty(), "the house float is not announced");
    h.assert_audit_ok();
}

#[test]
fn a_fill_credits_the_user_from_the_house_opening_the_account() {
    let h = Harness::new("10000.00");
    let ev = filled(1, "alice", "1071.42");
    assert_eq!(h.balance("alice"), None);
    assert_eq!(h.deliver(&ev, T0 + 10), Handled::Applied);

    let Event::UsdCredited(c) = h.only(&ev) else {
        panic!("expected usd.credited")
    };
    assert_eq!(c.usd_amount, usd("1071.42"));
    assert_eq!(h.balance("alice"), Some(usd("1071.42")));
    assert_eq!(h.house(), usd("8928.58"));
    let credit = h
        .journal()
        .into_iter()
        .find(|e| e.op == Op::Credit)
        .unwrap();
    assert_eq!(credit.saga_id, saga(1));
    assert_eq!(
        (
            credit.debit.to_string().as_str(),
            credit.credit.to_string().as_str()
        ),
        ("house", "user:alice")
    );
    assert!(matches!(
        h.credit(1).unwrap().state,
        CreditState::Credited { .. }
    ));
    h.assert_audit_ok();
}

#[test]
fn a_frozen_account_fails_the_credit_and_moves_nothing() {
    let h = Harness::new("10000.00");
    assert_eq!(
        h.admin(|tx| freeze(tx, SagaId::new_v7(), &user("alice"), "ops-kim", T0 + 1)),
        AdminOutcome::Done
    );
    let account = balance(&h.store, &user("alice")).unwrap().unwrap();
    assert!(account.frozen);
    assert_eq!(account.frozen_changed_by.as_deref(), Some("ops-kim"));
    // The freeze is on the stream too, naming who did it: the stream is the audit trail.
    match h.admin_events.borrow().as_slice() {
        [Event::UsdFrozen(f)] => {
            assert_eq!(f.actor, "ops-kim");
            assert_eq!(f.user_id, user("alice"));
        }
        other => panic!("expected one usd.frozen, got {other:?}"),
    }
    assert_eq!(account.frozen_changed_at_ms, Some(T0 + 1));

    let ev = filled(1, "alice", "1071.42");
    assert_eq!(h.deliver(&ev, T0 + 10), Handled::Applied);
    assert_eq!(
        credit_fail_reason(h.only(&ev)),
        CreditFailReason::AccountFrozen
    );
    assert_eq!(h.balance("alice"), Some(Usd::ZERO));
    assert_eq!(h.house(), usd("10000.00"));
    assert_eq!(h.journal().len(), 1, "only the float deposit");

    // trade reverses the order; there was no credit to undo.
    let cancel = cancelled(1, "alice", "1071.42");
    assert_eq!(h.deliver(&cancel, T0 + 20), Handled::Ignored);
    assert!(h.emitted().is_empty());
    h.assert_audit_ok();
}

#[test]
fn a_thin_house_float_fails_the_credit_with_insufficient_liquidity() {
    let h = Harness::new("1000.00");
    let ev = filled(1, "alice", "1071.42");
    assert_eq!(h.deliver(&ev, T0 + 10), Handled::Applied);
    assert_eq!(
        credit_fail_reason(h.only(&ev)),
        CreditFailReason::InsufficientLiquidity
    );
    assert_eq!(h.house(), usd("1000.00"));
    assert_eq!(h.balance("alice"), None);
    h.assert_audit_ok();
}

#[test]
fn a_cancel_after_the_credit_debits_even_when_frozen() {
    let h = Harness::new("10000.00");
    let ev = filled(1, "alice", "1071.42");
    h.deliver(&ev, T0 + 10);
    h.emitted();
    h.admin(|tx| freeze(tx, SagaId::new_v7(), &user("alice"), "ops-kim", T0 + 15));

    let cancel = cancelled(1, "alice", "1071.42");
    assert_eq!(h.deliver(&cancel, T0 + 20), Handled::Applied);
    let Event::UsdDebited(d) = h.only(&cancel) else {
        panic!("expected usd.debited")
    };
    assert_eq!(d.usd_amount, usd("1071.42"));
    assert_eq!(h.balance("alice"), Some(Usd::ZERO));
    assert_eq!(h.house(), usd("10000.00"));
    let debit = h.journal().into_iter().find(|e| e.op == Op::Debit).unwrap();
    assert_eq!(
        (
            debit.debit.to_string().as_str(),
            debit.credit.to_string().as_str()
        ),
        ("user:alice", "house")
    );
    assert!(matches!(
        h.credit(1).unwrap().state,
        CreditState::Debited { .. }
    ));

    // Duplicates of either event change nothing.
    for again in [&cancel, &ev] {
        assert_eq!(h.deliver(again, T0 + 30), Handled::Ignored);
    }
    assert!(h.emitted().is_empty());
    h.assert_audit_ok();
}

#[test]
fn a_debit_that_would_go_negative_aborts_and_writes_nothing() {
    let h = Harness::new("10000.00");
    h.deliver(&filled(1, "alice", "1071.42"), T0 + 10);
    h.emitted();
    // Corrupt the balance below what was credited.
    h.admin(|tx| {
        let mut a: UsdAccount = tx.get(&account_key(&user("alice")))?.unwrap();
        a.usd = usd("10.00");
        tx.put(&account_key(&user("alice")), &a)
    });

    let err = h
        .try_deliver(&cancelled(1, "alice", "1071.42"), T0 + 20)
        .unwrap_err();
    assert!(
        matches!(&err, RuntimeError::Handler(m) if m.contains("holds only 10.00 USD")),
        "{err}"
    );
    assert!(h.emitted().is_empty());
    assert!(matches!(
        h.credit(1).unwrap().state,
        CreditState::Credited { .. }
    ));
}

#[test]
fn a_cancel_before_the_fill_is_a_tombstone_and_the_fill_is_ignored() {
    let h = Harness::new("10000.00");
    let cancel = cancelled(1, "alice", "1071.42");
    assert_eq!(h.deliver(&cancel, T0 + 10), Handled::Applied);
    assert_eq!(
        credit_fail_reason(h.only(&cancel)),
        CreditFailReason::OrderCancelled
    );

    let ev = filled(1, "alice", "1071.42");
    assert_eq!(h.deliver(&ev, T0 + 20), Handled::Ignored);
    assert!(h.emitted().is_empty());
    assert_eq!(h.balance("alice"), None);
    assert_eq!(h.house(), usd("10000.00"));
    h.assert_audit_ok();
}

#[test]
fn a_duplicate_fill_credits_once() {
    let h = Harness::new("10000.00");
    let ev = filled(1, "alice", "1071.42");
    h.deliver(&ev, T0 + 10);
    assert_eq!(h.deliver(&ev, T0 + 11), Handled::Ignored);
    assert_eq!(h.emitted().len(), 1);
    assert_eq!(h.balance("alice"), Some(usd("1071.42")));
    assert_eq!(h.journal().len(), 2);
}

#[test]
fn deposits_are_idempotent_by_id_and_conflicts_are_refused() {
    let h = Harness::new("10000.00");
    let id = saga(100);
    let alice = user("alice");
    let dep = |amount: &str, t| {
        let amount = usd(amount);
        h.admin(|tx| deposit(tx, id, &alice, amount, "ops-kim", t))
    };
    assert_eq!(dep("250.00", T0 + 1), AdminOutcome::Done);
    let emitted = h.emitted();
    let [(Event::UsdDeposited(d), cause)] = emitted.as_slice() else {
        panic!("expected one usd.deposited: {emitted:?}")
    };
    assert_eq!((d.usd_amount, d.actor.as_str()), (usd("250.00"), "ops-kim"));
    assert_eq!(cause, &Event::UsdDeposited(d.clone()).id());

    assert_eq!(dep("250.00", T0 + 2), AdminOutcome::AlreadyDone);
    assert!(matches!(
        dep("300.00", T0 + 3),
        AdminOutcome::Refused { .. }
    ));
    assert!(h.emitted().is_empty());
    assert_eq!(h.balance("alice"), Some(usd("250.00")));

    let nil = h.admin(|tx| {
        deposit(
            tx,
            house_float_deposit_id(),
            &user("bob"),
            usd("1.00"),
            "x",
            T0,
        )
    });
    assert!(matches!(nil, AdminOutcome::Refused { .. }));

    let entry = h.journal().into_iter().find(|e| e.saga_id == id).unwrap();
    assert_eq!(entry.actor.as_deref(), Some("ops-kim"));
    let a = audit(&h.store).unwrap();
    assert!(a.ok, "{:?}", a.failures);
    assert_eq!(a.figures.deposits, Decimal::new(1_025_000, 2));
}

#[test]
fn freeze_and_unfreeze_are_idempotent_and_unfreezing_allows_credits_again() {
    let h = Harness::new("10000.00");
    let alice = user("alice");
    assert_eq!(
        h.admin(|tx| unfreeze(tx, SagaId::new_v7(), &alice, "ops", T0)),
        AdminOutcome::AlreadyDone
    );
    assert_eq!(
        h.admin(|tx| freeze(tx, SagaId::new_v7(), &alice, "ops", T0)),
        AdminOutcome::Done
    );
    assert_eq!(
        h.admin(|tx| freeze(tx, SagaId::new_v7(), &alice, "ops", T0 + 1)),
        AdminOutcome::AlreadyDone
    );
    assert_eq!(
        h.admin(|tx| unfreeze(tx, SagaId::new_v7(), &alice, "lead", T0 + 2)),
        AdminOutcome::Done
    );
    let account = balance(&h.store, &alice).unwrap().unwrap();
    assert!(!account.frozen);
    assert_eq!(account.frozen_changed_by.as_deref(), Some("lead"));
    let ev = filled(1, "alice", "5.00");
    h.deliver(&ev, T0 + 3);
    assert!(matches!(h.only(&ev), Event::UsdCredited(_)));
}

#[test]
fn audit_passes_on_a_busy_store_and_reports_corruption_in_words() {
    let h = Harness::new("10000.00");
    h.admin(|tx| deposit(tx, saga(100), &user("bob"), usd("40.00"), "ops", T0));
    h.deliver(&filled(1, "alice", "1071.42"), T0 + 1);
    h.deliver(&filled(2, "bob", "10.00"), T0 + 2);
    h.deliver(&cancelled(2, "bob", "10.00"), T0 + 3);
    h.deliver(&cancelled(3, "carol", "1.00"), T0 + 4);
    let a = audit(&h.store).unwrap();
    assert!(a.ok, "{:?}", a.failures);
    assert_eq!(a.figures.users, 2);
    assert_eq!(a.figures.user_total, Decimal::new(111_142, 2));
    assert_eq!(a.figures.house + a.figures.user_total, a.figures.deposits);
    assert_eq!(a.figures.sagas, 3);
    assert_eq!(a.journal.count(Op::Credit), 2);
    assert_eq!(a.journal.count(Op::Debit), 1);
    let json = serde_json::to_value(&a).unwrap();
    assert_eq!(json["deposits"], "10040.00");

    // Corrupt: bob's balance is raised without a journal entry, and carol's goes negative.
    h.admin(|tx| {
        tx.put_raw(
            &account_key(&user("bob")),
            br#"{"usd":"46.00","frozen":false,"opened_at_ms":0}"#.to_vec(),
        )?;
        tx.put_raw(
            &account_key(&user("carol")),
            br#"{"usd":"-5.00","frozen":false,"opened_at_ms":0}"#.to_vec(),
        )
    });
    let a = audit(&h.store).unwrap();
    assert!(!a.ok);
    let text = a.failures.join("\n");
    assert!(text.contains("conservation broken"), "{text}");
    assert!(text.contains("negative balance -5.00"), "{text}");
    assert!(
        text.contains("user:bob holds 46.00 USD, but the journal replays to 40.00 USD"),
        "{text}"
    );
}

#[test]
fn config_defaults_to_a_ten_million_float() {
    assert_eq!(UsdConfig::default().house_float, usd("10000000.00"));
}

#[test]
fn events_usd_does_not_consume_are_ignored() {
    let h = Harness::new("10.00");
    let ev = Event::UsdCredited(events::UsdCredited {
        saga_id: saga(1),
        user_id: user("alice"),
        usd_amount: usd("1.00"),
    });
    assert_eq!(h.deliver(&ev, T0), Handled::Ignored);
    assert!(h.credit(1).is_none());
}
