//! Adapter tests: the service's real code inside real sled transactions
//! (`Store::temporary()`), checking balances, journal, outbox and records.

use events::{
    CancelReason, Event, EventKind, ExchangeRequested, Krw, RejectReason, ReleaseReason, SagaId,
    TradeCancelled, TradeFailReason, TradeFailed, TradeFilled, Usd, UsdCredited, UserId,
};
use runtime::{Handled, JournalEntry, Participant, Records, Store};

use crate::records::{saga_key, SagaRecord, SagaStatus};
use crate::{audit, balance, deposit, Account, KrwConfig, KrwService};

const T0: u64 = 1_800_000_000_000;
const TTL: u64 = 30_000;
const GRACE: u64 = 5_000;

fn krw(s: &str) -> Krw {
    Krw::parse(s).unwrap()
}

fn usd(s: &str) -> Usd {
    Usd::parse(s).unwrap()
}

fn user(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn sid(n: u128) -> SagaId {
    SagaId::from(uuid::Uuid::from_u128(n))
}

struct Fixture {
    store: Store,
    service: KrwService,
}

impl Fixture {
    /// Given a fresh store and the default limits.
    fn new() -> Fixture {
        Fixture {
            store: Store::temporary().unwrap(),
            service: KrwService::new(KrwConfig::default()),
        }
    }

    /// Given `who` was deposited `amount` with deposit id `id`.
    fn funded(self, id: u128, who: &str, amount: &str) -> Fixture {
        assert_eq!(self.deposit(id, who, amount), Handled::Applied);
        self
    }

    fn deposit(&self, id: u128, who: &str, amount: &str) -> Handled {
        self.store
            .transact(|tx| deposit(tx, sid(id), &user(who), krw(amount), "ops@example", T0))
            .unwrap()
    }

    fn handle(&self, event: &Event, now: u64) -> Handled {
        self.store
            .transact(|tx| self.service.handle(tx, event, &(), now))
            .unwrap()
    }

    fn expire(&self, saga: SagaId, now: u64) -> Handled {
        self.store
            .transact(|tx| self.service.expire(tx, saga, now))
            .unwrap()
    }

    fn account(&self, who: &str) -> Account {
        balance(&self.store, &user(who))
            .unwrap()
            .expect("account exists")
    }

    fn saga(&self, id: SagaId) -> SagaRecord {
        self.store.get(&saga_key(id)).unwrap().expect("saga record")
    }

    /// Every event in the outbox, decoded as a consumer would, with its causation id.
    fn outbox(&self) -> Vec<(Event, String)> {
        self.store
            .outbox_batch(u64::MAX, 100)
            .unwrap()
            .into_iter()
            .map(|(_, e)| {
                let event =
                    Event::decode(&e.subject, e.payload.as_bytes()).expect("emitted events decode");
                assert_eq!(e.event_id, event.id());
                (event, e.causation_id)
            })
            .collect()
    }

    fn outbox_kinds(&self) -> Vec<EventKind> {
        self.outbox().iter().map(|(e, _)| e.kind()).collect()
    }

    fn journal(&self) -> Vec<JournalEntry> {
        self.store.journal_entries().unwrap()
    }

    fn journal_ops(&self, saga: SagaId) -> Vec<String> {
        let mut ops: Vec<String> = self
            .journal()
            .into_iter()
            .filter(|e| e.saga_id == saga)
            .map(|e| e.op.to_string())
            .collect();
        ops.sort();
        ops
    }

    fn expiry_keys(&self) -> Vec<String> {
        self.store
            .scan::<serde_json::Value>(crate::EXPIRY_PREFIX)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    fn assert_audit_ok(&self) {
        let report = audit(&self.store).unwrap();
        assert!(report.ok, "audit failed: {:#?}", report.failures);
    }
}

fn request(saga: SagaId, who: &str, amount: &str) -> Event {
    Event::ExchangeRequested(ExchangeRequested {
        saga_id: saga,
        user_id: user(who),
        krw_amount: krw(amount),
        min_usd_amount: Some(usd("1000.00")),
    })
}

fn filled(saga: SagaId, who: &str, amount: &str) -> Event {
    Event::TradeFilled(TradeFilled {
        saga_id: saga,
        user_id: user(who),
        krw_amount: krw(amount),
        usd_amount: usd("1071.42"),
        rate: serde_json::from_str("\"1400\"").unwrap(),
    })
}

fn credited(saga: SagaId, who: &str) -> Event {
    Event::UsdCredited(UsdCredited {
        saga_id: saga,
        user_id: user(who),
        usd_amount: usd("1071.42"),
    })
}

fn trade_failed(saga: SagaId, who: &str) -> Event {
    Event::TradeFailed(TradeFailed {
        saga_id: saga,
        user_id: user(who),
        reason: TradeFailReason::RateMoved,
        message: "fill would give 998.57 USD, below min_usd_amount 1000.00".into(),
    })
}

fn cancelled(saga: SagaId, who: &str, amount: &str) -> Event {
    Event::TradeCancelled(TradeCancelled {
        saga_id: saga,
        user_id: user(who),
        krw_amount: krw(amount),
        usd_amount: usd("1071.42"),
        reason: CancelReason::HoldReleased,
    })
}

#[test]
fn happy_path_holds_pins_and_commits_to_the_house() {
    // Given alice has 5,000,000 KRW.
    let f = Fixture::new().funded(100, "alice", "5000000");
    let saga = sid(1);
    // When she requests 1,500,000 and trade fills and USD credits.
    assert_eq!(
        f.handle(&request(saga, "alice", "1500000"), T0),
        Handled::Applied
    );
    assert_eq!(f.account("alice").held, krw("1500000"));
    assert_eq!(f.expiry_keys().len(), 1);
    assert_eq!(
        f.handle(&filled(saga, "alice", "1500000"), T0 + 100),
        Handled::Applied
    );
    assert!(
        f.expiry_keys().is_empty(),
        "a pinned hold leaves the expiry index"
    );
    assert_eq!(
        f.handle(&credited(saga, "alice"), T0 + 200),
        Handled::Applied
    );
    // Then the KRW went to the house, once, and the saga says so.
    let acct = f.account("alice");
    assert_eq!((acct.available, acct.held), (krw("3500000"), Krw::ZERO));
    let house: crate::House = f.store.get("house").unwrap().unwrap();
    assert_eq!(house.krw, krw("1500000"));
    assert_eq!(f.journal_ops(saga), ["commit", "hold"]);
    assert_eq!(f.saga(saga).status, SagaStatus::Committed);
    let out = f.outbox();
    assert_eq!(
        out.iter().map(|(e, _)| e.kind()).collect::<Vec<_>>(),
        [
            EventKind::KrwDeposited,
            EventKind::KrwHeld,
            EventKind::KrwCommitted
        ]
    );
    // Causation: each event names the event it answers.
    assert_eq!(out[1].1, saga.event_id(EventKind::ExchangeRequested));
    assert_eq!(out[2].1, saga.event_id(EventKind::UsdCredited));
    let Event::KrwHeld(held) = &out[1].0 else {
        unreachable!()
    };
    assert_eq!(held.hold_expires_at_ms, T0 + TTL);
    assert_eq!(held.min_usd_amount, Some(usd("1000")));
    // Duplicates of every event change nothing.
    for e in [
        request(saga, "alice", "1500000"),
        filled(saga, "alice", "1500000"),
        credited(saga, "alice"),
    ] {
        assert_eq!(f.handle(&e, T0 + 300), Handled::Ignored, "{:?}", e.kind());
    }
    assert_eq!(f.outbox().len(), 3);
    f.assert_audit_ok();
}

#[test]
fn each_rejection_reason_is_announced_and_moves_nothing() {
    let f = Fixture::new()
        .funded(100, "alice", "200000")
        .funded(101, "rich", "95000000");
    let cases = [
        (sid(1), "nobody", "5000", RejectReason::UnknownUser),
        (sid(2), "alice", "500", RejectReason::BelowMinimum),
        (
            sid(3),
            "rich",
            "60000000",
            RejectReason::AboveTransactionLimit,
        ),
        (sid(4), "alice", "1500000", RejectReason::InsufficientFunds),
    ];
    for (saga, who, amount, reason) in cases {
        assert_eq!(f.handle(&request(saga, who, amount), T0), Handled::Applied);
        assert_eq!(
            f.saga(saga).status,
            SagaStatus::Rejected { reason },
            "{reason:?}"
        );
    }
    // The daily limit: 50,000,000 twice is 100,000,000 (allowed); one more won is not.
    assert_eq!(
        f.handle(&request(sid(5), "rich", "50000000"), T0),
        Handled::Applied
    );
    assert_eq!(
        f.handle(&request(sid(6), "rich", "40000000"), T0),
        Handled::Applied
    );
    assert_eq!(
        f.handle(&request(sid(7), "rich", "10000001"), T0),
        Handled::Applied
    );
    assert_eq!(
        f.saga(sid(7)).status,
        SagaStatus::Rejected {
            reason: RejectReason::AboveDailyLimit
        }
    );
    let rejections: Vec<_> = f
        .outbox()
        .into_iter()
        .filter_map(|(e, _)| match e {
            Event::KrwRejected(r) => Some((r.reason, r.message)),
            _ => None,
        })
        .collect();
    assert_eq!(rejections.len(), 5);
    let insufficient = &rejections[3];
    assert_eq!(insufficient.0, RejectReason::InsufficientFunds);
    assert_eq!(
        insufficient.1,
        "alice has 200000 KRW available, 1500000 KRW requested; deposit more or request less, \
         with a new saga_id"
    );
    assert!(
        rejections[4].1.contains("at most 10000000 KRW"),
        "{}",
        rejections[4].1
    );
    // Only the two accepted holds moved money.
    assert_eq!(f.account("alice").available, krw("200000"));
    assert_eq!(f.account("rich").held, krw("90000000"));
    assert!(balance(&f.store, &user("nobody")).unwrap().is_none());
    f.assert_audit_ok();
}

#[test]
fn a_duplicate_request_holds_once_and_a_different_body_is_dead_lettered() {
    let f = Fixture::new().funded(100, "alice", "5000000");
    let saga = sid(1);
    assert_eq!(
        f.handle(&request(saga, "alice", "1000000"), T0),
        Handled::Applied
    );
    assert_eq!(
        f.handle(&request(saga, "alice", "1000000"), T0 + 1),
        Handled::Ignored
    );
    let conflict = f.handle(&request(saga, "alice", "2000000"), T0 + 2);
    let Handled::DeadLetter { reason, message } = conflict else {
        panic!("expected a dead letter, got {conflict:?}")
    };
    assert_eq!(reason, "saga_id_conflict");
    assert!(message.contains("new saga_id"), "{message}");
    assert_eq!(f.account("alice").held, krw("1000000"));
    assert_eq!(f.journal_ops(saga), ["hold"]);
    assert_eq!(
        f.outbox_kinds(),
        [EventKind::KrwDeposited, EventKind::KrwHeld]
    );
    f.assert_audit_ok();
}

#[test]
fn trade_failed_releases_the_hold() {
    let f = Fixture::new().funded(100, "alice", "5000000");
    let saga = sid(1);
    f.handle(&request(saga, "alice", "1000000"), T0);
    assert_eq!(
        f.handle(&trade_failed(saga, "alice"), T0 + 50),
        Handled::Applied
    );
    let acct = f.account("alice");
    assert_eq!((acct.available, acct.held), (krw("5000000"), Krw::ZERO));
    assert_eq!(f.journal_ops(saga), ["hold", "release"]);
    let (last, cause) = f.outbox().pop().unwrap();
    let Event::KrwReleased(rel) = last else {
        panic!("expected krw.released, got {last:?}")
    };
    assert_eq!(rel.reason, ReleaseReason::TradeFailed);
    assert_eq!(cause, saga.event_id(EventKind::TradeFailed));
    assert!(f.expiry_keys().is_empty());
    assert_eq!(
        f.handle(&trade_failed(saga, "alice"), T0 + 60),
        Handled::Ignored
    );
    f.assert_audit_ok();
}

#[test]
fn usd_credited_before_trade_filled_commits() {
    let f = Fixture::new().funded(100, "alice", "5000000");
    let saga = sid(1);
    f.handle(&request(saga, "alice", "1000000"), T0);
    assert_eq!(
        f.handle(&credited(saga, "alice"), T0 + 10),
        Handled::Applied
    );
    assert_eq!(
        f.handle(&filled(saga, "alice", "1000000"), T0 + 20),
        Handled::Ignored
    );
    assert_eq!(f.journal_ops(saga), ["commit", "hold"]);
    assert!(f.saga(saga).seen.trade_filled);
    assert!(f.expiry_keys().is_empty());
    // The expiry timer has nothing to do with a committed saga.
    assert_eq!(f.expire(saga, u64::MAX), Handled::Ignored);
    f.assert_audit_ok();
}

#[test]
fn expiry_releases_an_unpinned_hold_only_after_ttl_plus_grace() {
    let f = Fixture::new().funded(100, "alice", "5000000");
    let (open, pinned) = (sid(1), sid(2));
    f.handle(&request(open, "alice", "1000000"), T0);
    f.handle(&request(pinned, "alice", "1000000"), T0);
    f.handle(&filled(pinned, "alice", "1000000"), T0 + 10);
    let deadline = T0 + TTL + GRACE;

    // Just before the deadline: nothing is due, and expiring anyway is a no-op.
    assert!(f
        .service
        .due_expiries(&f.store, deadline - 1)
        .unwrap()
        .is_empty());
    assert!(f
        .service
        .expire_due(&f.store, deadline - 1)
        .unwrap()
        .is_empty());
    assert_eq!(f.expire(open, deadline - 1), Handled::Ignored);
    // At the deadline: only the unpinned hold is due, and it is released once.
    assert_eq!(f.service.due_expiries(&f.store, deadline).unwrap(), [open]);
    assert_eq!(f.service.expire_due(&f.store, deadline).unwrap(), [open]);
    assert!(f
        .service
        .expire_due(&f.store, deadline + 1)
        .unwrap()
        .is_empty());
    assert_eq!(f.expire(open, deadline + 2), Handled::Ignored);
    assert_eq!(
        f.saga(open).status,
        SagaStatus::Released {
            reason: ReleaseReason::Expired
        }
    );
    let (last, cause) = f.outbox().pop().unwrap();
    assert!(matches!(
        last,
        Event::KrwReleased(events::KrwReleased {
            reason: ReleaseReason::Expired,
            ..
        })
    ));
    assert_eq!(cause, open.event_id(EventKind::KrwHeld));
    // The pinned hold never expires.
    assert_eq!(f.expire(pinned, u64::MAX), Handled::Ignored);
    assert_eq!(f.saga(pinned).status, SagaStatus::Held);
    assert_eq!(f.account("alice").held, krw("1000000"));
    assert!(f.expiry_keys().is_empty());
    f.assert_audit_ok();
}

#[test]
fn expiry_racing_a_fill_ends_the_same_saga_either_way() {
    let f = Fixture::new().funded(100, "alice", "5000000");
    let deadline = T0 + TTL + GRACE;

    // The fill wins (even arriving after the deadline, before the sweep): pinned, then
    // committed; the sweep that comes later finds nothing.
    let won = sid(1);
    f.handle(&request(won, "alice", "1000000"), T0);
    assert_eq!(
        f.handle(&filled(won, "alice", "1000000"), deadline + 1),
        Handled::Applied
    );
    assert_eq!(f.expire(won, deadline + 2), Handled::Ignored);
    assert_eq!(
        f.handle(&credited(won, "alice"), deadline + 3),
        Handled::Applied
    );
    assert_eq!(f.journal_ops(won), ["commit", "hold"]);

    // The expiry wins: released; the late fill, credit and cancel move nothing (trade cancels
    // on krw.released, USD debits on trade.cancelled).
    let lost = sid(2);
    f.handle(&request(lost, "alice", "1000000"), T0);
    assert_eq!(f.expire(lost, deadline), Handled::Applied);
    for e in [
        filled(lost, "alice", "1000000"),
        credited(lost, "alice"),
        cancelled(lost, "alice", "1000000"),
    ] {
        assert_eq!(
            f.handle(&e, deadline + 5),
            Handled::Ignored,
            "{:?}",
            e.kind()
        );
    }
    assert_eq!(f.journal_ops(lost), ["hold", "release"]);
    let acct = f.account("alice");
    assert_eq!((acct.available, acct.held), (krw("4000000"), Krw::ZERO));
    f.assert_audit_ok();
}

#[test]
fn a_trade_failure_that_overtakes_the_request_still_ends_the_hold() {
    let f = Fixture::new().funded(100, "alice", "5000000");
    let saga = sid(1);
    assert_eq!(f.handle(&trade_failed(saga, "alice"), T0), Handled::Applied);
    assert_eq!(f.handle(&trade_failed(saga, "alice"), T0), Handled::Ignored);
    assert_eq!(
        f.handle(&request(saga, "alice", "1000000"), T0 + 1),
        Handled::Applied
    );
    assert_eq!(
        f.outbox_kinds(),
        [
            EventKind::KrwDeposited,
            EventKind::KrwHeld,
            EventKind::KrwReleased
        ]
    );
    assert_eq!(f.account("alice").held, Krw::ZERO);
    assert!(f.expiry_keys().is_empty());
    f.assert_audit_ok();
}

#[test]
fn deposits_are_idempotent_by_deposit_id() {
    let f = Fixture::new();
    assert_eq!(f.deposit(100, "bob", "700000"), Handled::Applied);
    assert_eq!(f.deposit(100, "bob", "700000"), Handled::Ignored);
    assert!(matches!(
        f.deposit(100, "bob", "1"),
        Handled::DeadLetter {
            reason: "deposit_id_conflict",
            ..
        }
    ));
    assert_eq!(f.deposit(101, "bob", "300000"), Handled::Applied);
    assert_eq!(f.account("bob").available, krw("1000000"));
    let deposits: Vec<_> = f
        .journal()
        .into_iter()
        .filter(|e| e.op == runtime::ledger::Op::Deposit)
        .collect();
    assert_eq!(deposits.len(), 2);
    assert_eq!(deposits[0].actor.as_deref(), Some("ops@example"));
    assert_eq!(
        f.outbox_kinds(),
        [EventKind::KrwDeposited, EventKind::KrwDeposited]
    );
    let out = f.outbox();
    let (Event::KrwDeposited(d), cause) = &out[0] else {
        unreachable!()
    };
    assert_eq!(d.actor, "ops@example");
    assert_eq!(*cause, sid(100).to_string());
    f.assert_audit_ok();
}

#[test]
fn unreadable_requests_are_rejected_when_they_can_be_addressed() {
    let f = Fixture::new().funded(100, "alice", "5000000");
    let undecodable = |subject: &str, body: &str| {
        let err = Event::decode(subject, body.as_bytes()).unwrap_err();
        f.store
            .transact(|tx| {
                f.service
                    .undecodable(tx, subject, body.as_bytes(), &err, T0)
            })
            .unwrap()
    };
    let s1 = sid(1).to_string();
    // A float amount: krw.rejected(invalid_request) with the decode error's words.
    let bad = format!(r#"{{"saga_id":"{s1}","user_id":"alice","krw_amount":1500000}}"#);
    assert_eq!(
        undecodable("fx.exchange.requested.alice", &bad),
        Handled::Applied
    );
    // Redelivered: already answered.
    assert_eq!(
        undecodable("fx.exchange.requested.alice", &bad),
        Handled::Ignored
    );
    // A valid request on that saga id now conflicts.
    assert!(matches!(
        f.handle(&request(sid(1), "alice", "5000"), T0),
        Handled::DeadLetter {
            reason: "saga_id_conflict",
            ..
        }
    ));
    // A body naming another user: user_mismatch, answered on the subject's user.
    let s2 = sid(2).to_string();
    let mismatch = format!(r#"{{"saga_id":"{s2}","user_id":"bob","krw_amount":"5000"}}"#);
    assert_eq!(
        undecodable("fx.exchange.requested.alice", &mismatch),
        Handled::Applied
    );
    // An unreadable request on a saga that holds money: conflict, nothing written.
    f.handle(&request(sid(3), "alice", "5000"), T0);
    let s3 = sid(3).to_string();
    let late = format!(r#"{{"saga_id":"{s3}","user_id":"alice"}}"#);
    assert!(matches!(
        undecodable("fx.exchange.requested.alice", &late),
        Handled::DeadLetter {
            reason: "saga_id_conflict",
            ..
        }
    ));
    // No saga id to answer to: the default dead letter with the decode reason.
    assert!(matches!(
        undecodable("fx.exchange.requested.alice", "not json"),
        Handled::DeadLetter {
            reason: "malformed_body",
            ..
        }
    ));

    let rejected: Vec<_> = f
        .outbox()
        .into_iter()
        .filter_map(|(e, cause)| match e {
            Event::KrwRejected(r) => Some((r, cause)),
            _ => None,
        })
        .collect();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0].0.reason, RejectReason::InvalidRequest);
    assert!(
        rejected[0].0.message.contains("JSON string"),
        "{}",
        rejected[0].0.message
    );
    assert_eq!(rejected[0].1, sid(1).event_id(EventKind::ExchangeRequested));
    assert_eq!(rejected[1].0.reason, RejectReason::UserMismatch);
    assert_eq!(rejected[1].0.user_id, user("alice"));
    f.assert_audit_ok();
}

#[test]
fn the_audit_passes_after_everything_and_names_a_corrupted_balance() {
    // Given a store that went through every path.
    let f = Fixture::new()
        .funded(100, "alice", "5000000")
        .funded(101, "bob", "3000000");
    f.handle(&request(sid(1), "alice", "1000000"), T0);
    f.handle(&credited(sid(1), "alice"), T0 + 1);
    f.handle(&request(sid(2), "alice", "1000000"), T0);
    f.handle(&trade_failed(sid(2), "alice"), T0 + 1);
    f.handle(&request(sid(3), "bob", "2000000"), T0);
    f.handle(&filled(sid(3), "bob", "2000000"), T0 + 1);
    f.handle(&request(sid(4), "bob", "500000"), T0);
    f.handle(&request(sid(5), "bob", "9000000"), T0);
    f.handle(&cancelled(sid(6), "bob", "1000"), T0);
    f.service.expire_due(&f.store, T0 + TTL + GRACE).unwrap();
    let report = audit(&f.store).unwrap();
    assert!(report.ok, "{:#?}", report.failures);
    assert_eq!(report.figures.totals.deposits.to_string(), "8000000");
    assert_eq!(report.figures.totals.house.to_string(), "1000000");
    assert_eq!(report.figures.totals.held.to_string(), "2000000");
    assert_eq!(report.figures.totals.open_holds, 1);
    // The report is JSON an operator can read.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["totals"]["available"], "5000000");

    // When a balance record is corrupted (1 KRW minted out of nowhere).
    let mut acct = f.account("alice");
    acct.available = acct.available.checked_add(krw("1")).unwrap();
    f.store.transact(|tx| tx.put("acct:alice", &acct)).unwrap();
    // Then the audit fails and says where.
    let report = audit(&f.store).unwrap();
    assert!(!report.ok);
    assert!(!report.figures.conservation && !report.figures.journal_matches_balances);
    assert!(report.figures.no_negative_balance && report.figures.holds_consistent);
    let words = report.failures.join("\n");
    assert!(
        words.contains("conservation:") && words.contains("off by 1 KRW"),
        "{words}"
    );
    assert!(
        words.contains("acct:alice records 4000001 KRW available, the journal gives 4000000 KRW"),
        "{words}"
    );

    // And a negative balance written behind the service's back is named as such.
    f.store
        .transact(|tx| {
            tx.put_raw(
                "acct:bob",
                br#"{"available":"-5","held":"2000000","day":0,"day_total":"0"}"#.to_vec(),
            )
        })
        .unwrap();
    let report = audit(&f.store).unwrap();
    assert!(
        !report.figures.no_negative_balance,
        "{:#?}",
        report.failures
    );
    assert!(report
        .failures
        .iter()
        .any(|f| f.contains("acct:bob has available -5 KRW")));
}

#[test]
fn an_intervention_goes_through_the_shared_path_reason_first() {
    use events::InterventionAction as A;
    use runtime::intervention::{intervene, reasons, InterventionRequest, Verdict};
    let f = Fixture::new().funded(1, "alice", "1000000");
    let saga = sid(100);
    assert_eq!(
        f.handle(&request(saga, "alice", "300000"), T0),
        Handled::Applied
    );
    let ask = |action, reason: &str| {
        let req = InterventionRequest {
            saga_id: saga,
            user_id: user("alice"),
            reason: reason.into(),
        };
        f.store
            .transact(|tx| intervene(&f.service, &*tx, action, &req, "ops@example", T0 + 1))
            .unwrap()
    };
    // No reason: refused before the service decides, nothing written.
    assert_eq!(ask(A::Cancel, "  ").unwrap_err().code, reasons::BAD_REASON);
    assert_eq!(f.saga(saga).status, SagaStatus::Held);
    // Another service's action: refused.
    assert_eq!(
        ask(A::RefuseCredit, "why").unwrap_err().code,
        reasons::WRONG_SERVICE
    );
    // A cancel releases the hold, journals and emits, caused by the intervention's id.
    let Ok(Verdict::Done(events)) = ask(A::Cancel, "customer called") else {
        panic!("the cancel is carried out")
    };
    assert_eq!(
        events.iter().map(Event::kind).collect::<Vec<_>>(),
        [EventKind::KrwReleased, EventKind::KrwIntervened]
    );
    assert_eq!(f.account("alice").available, krw("1000000"));
    assert_eq!(f.journal_ops(saga), ["hold", "release"]);
    let cause = saga.intervention_id(EventKind::KrwIntervened, A::Cancel);
    let outbox = f.outbox();
    assert!(outbox[outbox.len() - 2..].iter().all(|(_, c)| *c == cause));
    assert!(f.expiry_keys().is_empty());
    // Again: already done, nothing more.
    assert_eq!(ask(A::Cancel, "again"), Ok(Verdict::AlreadyDone));
    assert_eq!(f.outbox().len(), outbox.len());
    f.assert_audit_ok();
}
