//! The store's share of a saga: fx-krw's real decisions and records in a real sled store on
//! disk, no broker, with the runtime's group-commit shape (a batch, one flush, the relay's
//! outbox read and removal). It measures CPU per event two ways:
//!
//! - `per_event`: one group commit per event,
//! - `batched`: one group commit per batch, each event rolling back alone (what the runtime
//!   does).
//!
//! Ignored by default; run it with a release build:
//!
//! ```text
//! cargo test --release -p krw --test store_bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! `FX_BENCH_SAGAS` changes the saga count (default 20,000; 3 events each at fx-krw; 1,000
//! users, one more per 50 sagas beyond 50,000).
//!
//! After the run it prints where the bytes go ([`Store::footprint`], after a flush, less what
//! the users' deposits left before it): per saga, what each kind holds (entries, key + value
//! bytes, wherever kept: in its own tree or in the saga's bundle, which `sagas` counts as
//! stored) and what was handed to sled for it (per event: the bytes one group commit hands to
//! sled), and the store's directory on disk.

use std::time::Instant;

use events::{Event, ExchangeRequested, Krw, SagaId, TradeFilled, Usd, UsdCredited, UserId};
use krw::{deposit, KrwConfig, KrwService};
use runtime::{Footprint, Handled, Store};
use testkit::cpu_seconds;

const T0: u64 = 1_800_000_000_000;
/// Sagas per pipeline stage in one batch: every stage at once, as at saturation (60 events).
const SAGAS_PER_STAGE: usize = 20;
const USERS: usize = 1_000;
/// Most sagas per user: 50 of 1,500,000 KRW stay within a deposit of 100,000,000 and the
/// default daily limit of the same (more sagas than 50 per 1,000 users bring more users).
const SAGAS_PER_USER: usize = 50;

fn users(sagas: usize) -> usize {
    USERS.max(sagas.div_ceil(SAGAS_PER_USER))
}

fn user(i: usize, users: usize) -> UserId {
    UserId::parse(&format!("bench-{}", i % users)).unwrap()
}

/// Stage 0: the request; 1: the fill (pins the hold); 2: the credit (commits it).
fn event(stage: usize, saga: SagaId, i: usize, users: usize) -> Event {
    let (krw, usd) = (
        Krw::parse("1500000").unwrap(),
        Usd::parse("1071.42").unwrap(),
    );
    match stage {
        0 => Event::ExchangeRequested(ExchangeRequested {
            saga_id: saga,
            user_id: user(i, users),
            krw_amount: krw,
            min_usd_amount: None,
        }),
        1 => Event::TradeFilled(TradeFilled {
            saga_id: saga,
            user_id: user(i, users),
            krw_amount: krw,
            usd_amount: usd,
            rate: serde_json::from_str("\"1400\"").unwrap(),
        }),
        _ => Event::UsdCredited(UsdCredited {
            saga_id: saga,
            user_id: user(i, users),
            usd_amount: usd,
        }),
    }
}

/// What the consumer loop runs per event inside the transaction: the inbox, then the service.
fn handle(svc: &KrwService, tx: &runtime::Tx<'_>, e: &Event) -> runtime::TxResult<Handled> {
    let input = runtime::core::Input::Decoded {
        event: e,
        prepared: &(),
    };
    match runtime::core::handle_message(svc, tx, &input, T0)? {
        runtime::core::Outcome::Handled(h) => Ok(h),
        runtime::core::Outcome::Duplicate => panic!("no duplicates in the bench"),
    }
}

async fn run(batched: bool) {
    let sagas: usize = std::env::var("FX_BENCH_SAGAS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let svc = KrwService::new(KrwConfig::default());
    let amount = Krw::parse("100000000").unwrap();
    let users = users(sagas);
    for i in 0..users {
        let id = SagaId::new_v7();
        store
            .transact(|tx| deposit(tx, id, &user(i, users), amount, "bench", T0))
            .unwrap();
    }
    store.checkpoint().unwrap();
    store.flush().await.unwrap();
    let before = store.footprint().unwrap();
    let ids: Vec<SagaId> = (0..sagas).map(|_| SagaId::new_v7()).collect();

    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    let (mut events, mut applied) = (0, 0);
    // Batch k holds the requests of group k, the fills of group k-1, the credits of group k-2.
    let groups = sagas.div_ceil(SAGAS_PER_STAGE);
    for k in 0..groups + 2 {
        let mut batch = Vec::new();
        for stage in 0..3 {
            let Some(g) = k.checked_sub(stage).filter(|g| *g < groups) else {
                continue;
            };
            for (i, id) in ids
                .iter()
                .enumerate()
                .skip(g * SAGAS_PER_STAGE)
                .take(SAGAS_PER_STAGE)
            {
                batch.push(event(stage, *id, i, users));
            }
        }
        let outcomes: Vec<Handled> = if batched {
            store
                .transact_each(&batch, |tx, e| handle(&svc, tx, e))
                .unwrap()
                .into_iter()
                .map(Result::unwrap)
                .collect()
        } else {
            batch
                .iter()
                .map(|e| store.transact(|tx| handle(&svc, tx, e)).unwrap())
                .collect()
        };
        events += batch.len();
        applied += outcomes.iter().filter(|h| **h == Handled::Applied).count();
        // Group commit, then the relay's read and removal of what it published.
        let wm = store.flush().await.unwrap();
        let published = store.outbox_batch(wm, usize::MAX).unwrap();
        let keys: Vec<u64> = published.iter().map(|(k, _)| *k).collect();
        store.outbox_remove(&keys).unwrap();
    }
    // What memory still holds is written into the trees (and made durable, and the log
    // trimmed) inside the timing: its cost is part of every event's.
    store.checkpoint().unwrap();
    store.flush().await.unwrap();
    store.flush().await.unwrap();
    let (cpu, wall) = (cpu_seconds() - cpu0, wall0.elapsed().as_secs_f64());

    // Every saga held and committed: two journal entries each, beside the deposits.
    assert_eq!(applied, events, "every event applied");
    assert_eq!(store.journal_entries().unwrap().len(), users + 2 * sagas);
    println!(
        "{}: {sagas} sagas, {events} events: {:.1} µs CPU per event, {:.0} events/s ({:.2} s wall, {:.2} s CPU)",
        if batched { "batched" } else { "per_event" },
        cpu * 1e6 / events as f64,
        events as f64 / wall,
        wall,
        cpu,
    );
    store.flush().await.unwrap();
    print_footprint(&before, &store.footprint().unwrap(), sagas, events);
}

/// What the run added to each tree and to the disk, per saga (held) and per event (written).
fn print_footprint(before: &Footprint, after: &Footprint, sagas: usize, events: usize) {
    let per = |a: u64, b: u64, n: usize| a.saturating_sub(b) as f64 / n as f64;
    let (mut held, mut written) = (0.0, 0.0);
    for ((name, a), (_, b)) in after.trees().into_iter().zip(before.trees()) {
        let bytes = per(
            a.key_bytes + a.value_bytes,
            b.key_bytes + b.value_bytes,
            sagas,
        );
        let w = per(a.written_bytes, b.written_bytes, events);
        (held, written) = (held + bytes, written + w);
        println!(
            "  {name:<8} held per saga: {:5.2} entries, {bytes:6.0} B (keys {:4.0} B); \
             written per event: {:4.2} inserts, {w:5.0} B",
            per(a.entries, b.entries, sagas),
            per(a.key_bytes, b.key_bytes, sagas),
            per(a.written_entries, b.written_entries, events),
        );
    }
    // What the trees hold, once: entries kept in bundles count in their kind's line and in
    // `sagas`.
    let held = held - per(after.bundled_bytes, before.bundled_bytes, sagas);
    println!(
        "  all trees held per saga: {held:.0} B; written per event: {written:.0} B; \
         on disk per saga: {:.0} B ({:.0} B allocated; {:.1} MiB in all)",
        per(after.disk_bytes, before.disk_bytes, sagas),
        per(
            after.disk_allocated_bytes,
            before.disk_allocated_bytes,
            sagas
        ),
        after.disk_allocated_bytes as f64 / (1 << 20) as f64,
    );
}

#[tokio::test]
#[ignore = "benchmark: run with --release -- --ignored --nocapture --test-threads=1"]
async fn per_event() {
    run(false).await;
}

#[tokio::test]
#[ignore = "benchmark: run with --release -- --ignored --nocapture --test-threads=1"]
async fn batched() {
    run(true).await;
}
