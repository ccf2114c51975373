//! Search over the tracker's store: every page is full whenever enough sagas match, however
//! many newer sagas do not (the store's indexes, not a bounded walk, find them).

mod common;

use common::*;
use tracker::{Flag, ListQuery, ReadModel, SagaState, StreamMessage};

/// Stream messages for `sagas`, each driven to its outcome, one saga after the other, with
/// stream times one millisecond apart from `at_ms`.
fn messages(sagas: &[(Saga, Outcome)], first_seq: u64, at_ms: u64) -> Vec<StreamMessage> {
    sagas
        .iter()
        .flat_map(|(s, o)| s.events(*o))
        .enumerate()
        .map(|(i, e)| StreamMessage {
            seq: first_seq + i as u64,
            at_ms: at_ms + i as u64,
            subject: e.subject(),
            payload: e.to_json().into(),
        })
        .collect()
}

fn ingest(model: &ReadModel, msgs: &[StreamMessage]) {
    for batch in msgs.chunks(4096) {
        model.ingest(batch).unwrap();
    }
}

/// Every page of `q`, joined.
fn all_pages(model: &ReadModel, q: ListQuery) -> Vec<Vec<events::SagaId>> {
    let mut pages = Vec::new();
    let mut q = q;
    loop {
        let page = model.list(&q).unwrap();
        pages.push(page.sagas.iter().map(|r| r.saga_id).collect());
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => return pages,
        }
    }
}

/// Issue 21: 30 COMPENSATED sagas behind 20,000 newer COMPLETED ones. The first page of
/// `state=COMPENSATED` used to be empty (terminal states had no index, and a page walked at
/// most 20,000 entries of the all-sagas index).
#[test]
fn compensated_sagas_behind_twenty_thousand_newer_completed_ones_fill_the_first_page() {
    let dir = tempfile::tempdir().unwrap();
    let model = ReadModel::open(dir.path(), 1_000, 60_000, TestClock::at_now().clock()).unwrap();
    let old: Vec<(Saga, Outcome)> = (0..30)
        .map(|i| {
            (
                Saga::new(&format!("old{i}")),
                Outcome::CompensatedCreditFailed,
            )
        })
        .collect();
    let newer: Vec<(Saga, Outcome)> = (0..20_000)
        .map(|i| (Saga::new(&format!("user{}", i % 100)), Outcome::Completed))
        .collect();
    let first = messages(&old, 1, wall_ms());
    let next_seq = first.len() as u64 + 1;
    ingest(&model, &first);
    ingest(&model, &messages(&newer, next_seq, wall_ms()));

    let page = model
        .list(&ListQuery {
            state: Some(SagaState::Compensated),
            limit: 50,
            ..ListQuery::default()
        })
        .unwrap();
    let mut want: Vec<events::SagaId> = old.iter().map(|(s, _)| s.id).collect();
    want.reverse(); // newest first
    assert_eq!(
        page.sagas.iter().map(|r| r.saga_id).collect::<Vec<_>>(),
        want,
        "the first page holds every COMPENSATED saga"
    );
    assert_eq!(page.next_cursor, None);

    // Pages of 8: full until the last, joined they are the 30, newest first.
    let pages = all_pages(
        &model,
        ListQuery {
            state: Some(SagaState::Compensated),
            limit: 8,
            ..ListQuery::default()
        },
    );
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [8, 8, 8, 6],
        "every page but the last is full"
    );
    assert_eq!(pages.concat(), want);
}

/// Each filter alone and together, over sagas of every outcome, stored through the tracker's
/// own projection; pages join up to what one big page says, newest first.
#[test]
fn every_filter_selects_what_it_names_and_pages_join_up() {
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at_now();
    let model = ReadModel::open(dir.path(), 5, 60_000, clock.clock()).unwrap();
    let outcomes = Outcome::ALL;
    let sagas: Vec<(Saga, Outcome)> = (0..600)
        .map(|i| {
            let mut s = Saga::new(&format!("user{}", i % 7));
            if i % 10 == 0 {
                s.krw = events::Krw::parse("20000000").unwrap();
                s.usd = s.rate.usd_for(s.krw).unwrap();
            }
            (s, outcomes[i % outcomes.len()])
        })
        .collect();
    let start = wall_ms() - 3_600_000;
    let msgs = messages(&sagas, 1, start);
    ingest(&model, &msgs);
    // Saga i starts at `start + (events before it)`: the time range below is sagas 100..200.
    let started: Vec<u64> = {
        let mut at = start;
        sagas
            .iter()
            .map(|(s, o)| {
                let t = at;
                at += s.events(*o).len() as u64;
                t
            })
            .collect()
    };
    clock.advance(120_000); // the stalled sagas are STUCK now

    let want = |f: &dyn Fn(usize, &Saga, Outcome) -> bool| -> Vec<events::SagaId> {
        let mut v: Vec<_> = sagas
            .iter()
            .enumerate()
            .filter(|(i, (s, o))| f(*i, s, *o))
            .map(|(_, (s, _))| s.id)
            .collect();
        v.reverse();
        v
    };
    let search = |q: ListQuery| -> Vec<events::SagaId> {
        let pages = all_pages(&model, ListQuery { limit: 7, ..q });
        let n = pages.len();
        for (i, p) in pages.iter().enumerate() {
            assert!(
                i + 1 == n || p.len() == 7,
                "page {i} of {n} is not full: {}",
                p.len()
            );
        }
        pages.concat()
    };
    let user3 = events::UserId::parse("user3").unwrap();
    let cases: Vec<(&str, ListQuery, Vec<events::SagaId>)> = vec![
        (
            "state",
            ListQuery {
                state: Some(SagaState::Rejected),
                ..ListQuery::default()
            },
            want(&|_, _, o| o == Outcome::Rejected),
        ),
        (
            "user and state",
            ListQuery {
                state: Some(SagaState::Compensated),
                user: Some(user3.clone()),
                ..ListQuery::default()
            },
            want(&|_, s, o| {
                s.user == user3
                    && matches!(
                        o,
                        Outcome::CompensatedTradeFailed | Outcome::CompensatedCreditFailed
                    )
            }),
        ),
        (
            "reason",
            ListQuery {
                reason: Some("account_frozen"),
                ..ListQuery::default()
            },
            want(&|_, _, o| o == Outcome::CompensatedCreditFailed),
        ),
        (
            "flag stuck",
            ListQuery {
                flag: Some(Flag::Stuck),
                ..ListQuery::default()
            },
            want(&|_, _, o| o == Outcome::Stalled),
        ),
        (
            "flag inconsistent and user",
            ListQuery {
                flag: Some(Flag::Inconsistent),
                user: Some(user3.clone()),
                ..ListQuery::default()
            },
            want(&|_, s, o| o == Outcome::CommittedAndReleased && s.user == user3),
        ),
        (
            "flag reversal_pending",
            ListQuery {
                flag: Some(Flag::ReversalPending),
                ..ListQuery::default()
            },
            want(&|_, _, o| o == Outcome::CompensatedCreditFailed),
        ),
        (
            "time range",
            ListQuery {
                from_ms: Some(started[100]),
                to_ms: Some(started[199]),
                ..ListQuery::default()
            },
            want(&|i, _, _| (100..200).contains(&i)),
        ),
        (
            "amount and state",
            ListQuery {
                min_krw: Some(10_000_000.into()),
                state: Some(SagaState::Completed),
                ..ListQuery::default()
            },
            want(&|_, s, o| {
                s.krw.amount() >= 10_000_000.into()
                    && matches!(o, Outcome::Completed | Outcome::CommittedAndReleased)
            }),
        ),
        (
            "at most an amount, within a time range",
            ListQuery {
                max_krw: Some(1_500_000.into()),
                from_ms: Some(started[0]),
                to_ms: Some(started[29]),
                ..ListQuery::default()
            },
            want(&|i, s, _| i < 30 && s.krw.amount() <= 1_500_000.into()),
        ),
        ("nothing", ListQuery::default(), want(&|_, _, _| true)),
    ];
    for (name, q, want) in cases {
        assert!(!want.is_empty(), "{name}: the case selects something");
        assert_eq!(search(q), want, "{name}");
    }
    // A time range before every saga, and a reason no saga has: empty, no cursor.
    let page = model
        .list(&ListQuery {
            to_ms: Some(start - 1),
            limit: 10,
            ..ListQuery::default()
        })
        .unwrap();
    assert!(page.sagas.is_empty() && page.next_cursor.is_none());
    assert!(search(ListQuery {
        reason: Some("above_daily_limit"),
        ..ListQuery::default()
    })
    .is_empty());
}
