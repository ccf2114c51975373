//! Search over the tracker's store: every page is full whenever enough sagas match, however
//! many newer sagas do not (the store's indexes, not a bounded walk, find them).

mod common;

use common::*;
use tracker::{ListQuery, ReadModel, SagaState, StreamMessage};

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
