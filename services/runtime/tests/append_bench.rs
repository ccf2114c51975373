//! The floor of a store whose group commit is one append: what sled costs when a group of 60
//! events (fx-krw's batches in store_bench: 20 sagas at each of its three stages) writes its
//! effects — inbox marks, record writes, journal lines, outgoing events — as one encoded log
//! record in one tree, makes it durable with the store's flush (sled's flush, then the
//! fdatasync of `runtime::durable::DataFiles`), and removes it again as the relay's trim would.
//! No decisions run here: the effects are built before the clock starts, shaped and sized like
//! what store_bench's footprint measures per event, so the figure is storage alone.
//!
//! Four runs, each on a fresh sled database on disk:
//!
//! - `log json` / `log binary`: per group, one insert of the record (JSON, the record values
//!   in it as JSON strings; or length-prefixed fields, the record values and journal lines as
//!   the JSON bytes the trees hold today),
//!   the flush, one remove. The pure one-append floor: the state would have to live elsewhere.
//! - `checkpoint json` / `checkpoint binary`: the same, but the record writes also go into a
//!   `HashMap` (state served from memory) and every `FX_BENCH_CHECKPOINT` groups (default 16)
//!   a checkpoint writes the dirty records, the journal lines and the inbox marks into the
//!   `state`, `journal` and `inbox` trees as today's store lays them out (one `apply_batch`
//!   each) and removes the log records it covers.
//!
//! Ignored by default; run it with a release build:
//!
//! ```text
//! cargo test --release -p runtime --test append_bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! `FX_BENCH_GROUPS` changes the group count (default 1,000: 60,000 events).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use events::{Event, Krw, KrwCommitted, KrwHeld, SagaId, UserId};
use rust_decimal::Decimal;
use serde::Serialize;

use runtime::durable::{self, DataFiles};
use runtime::ledger::{Account, Currency, Op};
use runtime::{outbox_entry, Footprint, JournalEntry, OutboxEntry};
use testkit::cpu_seconds;

const GROUP: usize = 60;
const USERS: usize = 1_000;
const T0: u64 = 1_800_000_000_000;

/// One handled event's effects, as a log record would carry them.
#[derive(Serialize)]
struct Effects {
    /// The consumed event's id (fx-krw's requests use no inbox).
    inbox: Option<String>,
    /// Record writes: key and the JSON value `Records::put` encodes today (in a JSON log
    /// record, a JSON string: escaped).
    records: Vec<(String, String)>,
    journal: Vec<JournalEntry>,
    event: Option<OutboxEntry>,
}

fn user(i: usize) -> UserId {
    UserId::parse(&format!("bench-{}", i % USERS)).unwrap()
}

fn raw(v: serde_json::Value) -> String {
    v.to_string()
}

/// The saga record, about as large as fx-krw's (~290 bytes of JSON).
fn saga_record(saga: SagaId, i: usize, state: &str) -> String {
    raw(serde_json::json!({
        "saga_id": saga, "user_id": user(i), "state": state, "krw_amount": "1500000",
        "min_usd_amount": null, "usd_amount": "1071.42", "rate": "1400",
        "hold_expires_at_ms": T0 + 30_000, "created_at_ms": T0, "updated_at_ms": T0 + 2,
        "reason": null, "journaled": ["hold"], "cause": saga.to_string(),
    }))
}

fn account_record() -> String {
    raw(serde_json::json!({ "available": "98500000", "held": "1500000", "holds": 1 }))
}

fn journal(saga: SagaId, i: usize, op: Op) -> JournalEntry {
    let accounts = match op {
        Op::Hold => (Account::Available(user(i)), Account::Held(user(i))),
        _ => (Account::Held(user(i)), Account::House),
    };
    JournalEntry::new(
        saga,
        op,
        Currency::Krw,
        accounts,
        Decimal::from(1_500_000),
        T0,
    )
}

/// The outbox entry of an event decided on a saga's `cause` event.
fn emitted(event: Event, cause: &str) -> Option<OutboxEntry> {
    let cause = format!("{}:{cause}", event.saga_id());
    Some(outbox_entry(&event, &cause, T0))
}

/// Stage 0: the request (hold: saga record, account, expiry index, journal, krw.held);
/// 1: the fill (pins the hold: saga record); 2: the credit (commit: saga record, account,
/// journal, krw.committed).
fn effects(stage: usize, saga: SagaId, i: usize) -> Effects {
    let krw = Krw::parse("1500000").unwrap();
    let sk = format!("saga:{saga}");
    match stage {
        0 => Effects {
            inbox: None,
            records: vec![
                (sk, saga_record(saga, i, "held")),
                (format!("acct:{}", user(i)), account_record()),
                (format!("exp:{:020}:{saga}", T0 + 30_000), raw(true.into())),
            ],
            journal: vec![journal(saga, i, Op::Hold)],
            event: emitted(
                Event::KrwHeld(KrwHeld {
                    saga_id: saga,
                    user_id: user(i),
                    krw_amount: krw,
                    min_usd_amount: None,
                    hold_expires_at_ms: T0 + 30_000,
                }),
                "exchange.requested",
            ),
        },
        1 => Effects {
            inbox: Some(format!("{saga}:trade.filled")),
            records: vec![(sk, saga_record(saga, i, "pinned"))],
            journal: vec![],
            event: None,
        },
        _ => Effects {
            inbox: Some(format!("{saga}:usd.credited")),
            records: vec![
                (sk, saga_record(saga, i, "committed")),
                (format!("acct:{}", user(i)), account_record()),
            ],
            journal: vec![journal(saga, i, Op::Commit)],
            event: emitted(
                Event::KrwCommitted(KrwCommitted {
                    saga_id: saga,
                    user_id: user(i),
                    krw_amount: krw,
                }),
                "usd.credited",
            ),
        },
    }
}

/// Groups of 60 events: group k holds the requests of sagas block k, the fills of block k-1,
/// the credits of block k-2, as store_bench's batches do.
fn groups(n: usize) -> Vec<Vec<Effects>> {
    let per_stage = GROUP / 3;
    let ids: Vec<SagaId> = (0..n * per_stage).map(|_| SagaId::new_v7()).collect();
    (0..n)
        .map(|k| {
            let mut g = Vec::with_capacity(GROUP);
            for stage in 0..3 {
                // The first two groups lack the later stages; wrap so every group has 60.
                let block = (k + n - stage) % n;
                for j in 0..per_stage {
                    let i = block * per_stage + j;
                    g.push(effects(stage, ids[i], i));
                }
            }
            g
        })
        .collect()
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Length-prefixed fields; record values and journal lines as the JSON bytes the trees hold.
fn encode_binary(group: &[Effects]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * 1024);
    for e in group {
        put(&mut out, e.inbox.as_deref().unwrap_or("").as_bytes());
        out.push(e.records.len() as u8);
        for (k, v) in &e.records {
            put(&mut out, k.as_bytes());
            put(&mut out, v.as_bytes());
        }
        out.push(e.journal.len() as u8);
        for j in &e.journal {
            put(&mut out, j.key().as_bytes());
            put(&mut out, &serde_json::to_vec(j).unwrap());
        }
        match &e.event {
            None => out.push(0),
            Some(o) => {
                out.push(1);
                put(&mut out, o.subject.as_bytes());
                put(&mut out, o.event_id.as_bytes());
                out.extend_from_slice(o.saga_id.uuid().as_bytes());
                put(&mut out, o.causation_id.as_bytes());
                put(&mut out, o.payload.as_bytes());
                out.extend_from_slice(&o.created_at_ms.to_le_bytes());
            }
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Encoding {
    Json,
    Binary,
}

fn encode(group: &[Effects], encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Json => serde_json::to_vec(group).unwrap(),
        Encoding::Binary => encode_binary(group),
    }
}

/// The state served from memory and what the next checkpoint writes.
#[derive(Default)]
struct Memory {
    records: HashMap<String, String>,
    dirty: HashSet<String>,
    journal: sled::Batch,
    inbox: sled::Batch,
    covered: Vec<u64>,
}

fn run(name: &str, encoding: Encoding, checkpoint_every: Option<usize>, groups: &[Vec<Effects>]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sled");
    // As `Store::open` configures sled (its default 8 MiB cache, the periodic flusher that
    // also reclaims segments).
    let config = sled::Config::new()
        .flush_every_ms(Some(1000))
        .cache_capacity(8 * 1024 * 1024);
    let db = durable::open(config, &path).unwrap();
    let mut files = DataFiles::open(&path).unwrap();
    let (log, state, journal, inbox) = (
        db.open_tree("log").unwrap(),
        db.open_tree("state").unwrap(),
        db.open_tree("journal").unwrap(),
        db.open_tree("inbox").unwrap(),
    );
    let mut memory = Memory::default();
    let mut record_bytes = 0usize;

    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    for (n, group) in groups.iter().enumerate() {
        let id = n as u64 + 1;
        let bytes = encode(group, encoding);
        record_bytes += bytes.len();
        log.insert(id.to_be_bytes(), bytes).unwrap();
        // The group commit: the same two steps as the store's flush thread.
        db.flush().unwrap();
        files.sync().unwrap();
        let Some(every) = checkpoint_every else {
            // The relay published the group's events: trim its record.
            log.remove(id.to_be_bytes()).unwrap();
            continue;
        };
        for e in group {
            for (k, v) in &e.records {
                memory.records.insert(k.clone(), v.clone());
                memory.dirty.insert(k.clone());
            }
            for j in &e.journal {
                memory
                    .journal
                    .insert(j.key().as_bytes(), serde_json::to_vec(j).unwrap());
            }
            if let Some(id) = &e.inbox {
                memory
                    .inbox
                    .insert(id.as_bytes(), T0.to_be_bytes().to_vec());
            }
        }
        memory.covered.push(id);
        if memory.covered.len() == every {
            let mut batch = sled::Batch::default();
            for k in memory.dirty.drain() {
                batch.insert(k.as_bytes(), memory.records[&k].as_bytes());
            }
            state.apply_batch(batch).unwrap();
            journal
                .apply_batch(std::mem::take(&mut memory.journal))
                .unwrap();
            inbox
                .apply_batch(std::mem::take(&mut memory.inbox))
                .unwrap();
            // Its writes become durable with the next group's flush; only then may the log
            // records it covers go (a crash before replays them onto the same keys).
            let mut trim = sled::Batch::default();
            for id in memory.covered.drain(..) {
                trim.remove(&id.to_be_bytes()[..]);
            }
            log.apply_batch(trim).unwrap();
        }
    }
    let (cpu, wall) = (cpu_seconds() - cpu0, wall0.elapsed().as_secs_f64());
    db.flush().unwrap();
    files.sync().unwrap();
    let events = groups.len() * GROUP;
    let (disk, allocated) = Footprint::disk(&path).unwrap();
    println!(
        "{name}: {} groups, {events} events: {:.1} µs CPU per event, {:.0} events/s \
         ({wall:.2} s wall, {cpu:.2} s CPU); log record {:.0} B per event; \
         on disk {:.0} B per event ({:.0} B allocated)",
        groups.len(),
        cpu * 1e6 / events as f64,
        events as f64 / wall,
        record_bytes as f64 / events as f64,
        disk as f64 / events as f64,
        allocated as f64 / events as f64,
    );
}

fn group_count() -> usize {
    std::env::var("FX_BENCH_GROUPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000)
}

fn checkpoint_every() -> usize {
    std::env::var("FX_BENCH_CHECKPOINT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16)
}

/// The effects are built before the clock starts; a check that they are what the doc says.
fn built() -> Vec<Vec<Effects>> {
    let g = groups(group_count());
    let inbox: usize = g[5].iter().filter(|e| e.inbox.is_some()).count();
    let journal: usize = g[5].iter().map(|e| e.journal.len()).sum();
    assert_eq!((g[5].len(), inbox, journal), (GROUP, 40, 40));
    g
}

#[test]
#[ignore = "benchmark: run with --release -- --ignored --nocapture --test-threads=1"]
fn log_only() {
    let g = built();
    run("log json", Encoding::Json, None, &g);
    run("log binary", Encoding::Binary, None, &g);
}

#[test]
#[ignore = "benchmark: run with --release -- --ignored --nocapture --test-threads=1"]
fn checkpointed() {
    let g = built();
    let every = checkpoint_every();
    run(
        &format!("checkpoint/{every} json"),
        Encoding::Json,
        Some(every),
        &g,
    );
    run(
        &format!("checkpoint/{every} binary"),
        Encoding::Binary,
        Some(every),
        &g,
    );
}
