//! Replay speed: rebuild the read model from a stream of 1,000,000 events.
//!
//! Ignored by default (it publishes a million messages first). Run it with a release build:
//!
//! ```text
//! cargo test --release -p tracker --test replay_bench -- --ignored --nocapture
//! ```
//!
//! `FX_BENCH_EVENTS` changes the event count (default 1,000,000; rounded to whole sagas).

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: publishes 1,000,000 events; run with --release -- --ignored --nocapture"]
async fn replay_one_million_events() {
    let events_wanted: usize = std::env::var("FX_BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let broker = Broker::start().await;

    // At most 4096 PubAcks in flight: the context allows 5000 (max_ack_inflight) and a
    // send beyond that waits for acks that nobody polls yet.
    // 5 events per completed saga, 64 sagas in flight at a time (interleaved as on a busy
    // stream), 1,000 users.
    let sagas = events_wanted / 5;
    let published = Instant::now();
    let mut last = 0;
    let mut acks = Vec::with_capacity(4096);
    let mut count = 0usize;
    for group in 0..sagas.div_ceil(64) {
        let lists: Vec<_> = (0..64.min(sagas - group * 64))
            .map(|i| {
                Saga::new(&format!("user{}", (group * 64 + i) % 1000)).events(Outcome::Completed)
            })
            .collect();
        for e in interleave(lists) {
            let msg = PublishMessage::build().payload(e.to_json().into());
            acks.push(
                broker
                    .js
                    .send_publish(e.subject(), msg)
                    .await
                    .expect("publish"),
            );
            count += 1;
            if acks.len() == 4096 {
                for a in futures::future::join_all(
                    acks.drain(..).map(std::future::IntoFuture::into_future),
                )
                .await
                {
                    last = last.max(a.expect("puback").sequence);
                }
            }
        }
    }
    for a in
        futures::future::join_all(acks.drain(..).map(std::future::IntoFuture::into_future)).await
    {
        last = last.max(a.expect("puback").sequence);
    }
    let publish_s = published.elapsed().as_secs_f64();
    println!(
        "published {count} events in {publish_s:.1}s ({:.0}/s)",
        count as f64 / publish_s
    );

    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at_now();
    let started = Instant::now();
    let t = Running::start(&broker.url(), dir.path(), &clock, 10_000).await;
    assert!(
        t.model.wait_for_seq(last, Duration::from_secs(600)).await,
        "replay did not finish (at {} of {last})",
        t.model.last_seq()
    );
    let replay_s = started.elapsed().as_secs_f64();
    let stats = t.model.stats();
    assert_eq!(stats.by_state["COMPLETED"] as usize, sagas);
    assert_eq!(stats.events as usize, count);
    println!(
        "replayed {count} events ({sagas} sagas) in {replay_s:.2}s: {:.0} events/s; \
         resident sagas {}, sled on disk {} MiB",
        count as f64 / replay_s,
        t.model.resident(),
        t.model.size_on_disk() / (1024 * 1024)
    );
    t.stop().await;
}

/// The projection and sled side alone: 1,000,000 pre-built messages through
/// `ReadModel::ingest`, no broker. Separates the tracker's own cost from delivery.
#[test]
#[ignore = "benchmark; run with --release -- --ignored --nocapture"]
fn ingest_one_million_events_without_a_broker() {
    let events_wanted: usize = std::env::var("FX_BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let sagas = events_wanted / 5;
    let mut messages = Vec::with_capacity(sagas * 5);
    let at = wall_ms();
    for group in 0..sagas.div_ceil(64) {
        let lists: Vec<_> = (0..64.min(sagas - group * 64))
            .map(|i| {
                Saga::new(&format!("user{}", (group * 64 + i) % 1000)).events(Outcome::Completed)
            })
            .collect();
        for e in interleave(lists) {
            let seq = messages.len() as u64 + 1;
            messages.push(tracker::StreamMessage {
                seq,
                at_ms: at + seq / 10,
                subject: e.subject(),
                payload: e.to_json().into(),
            });
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let model =
        tracker::ReadModel::open(dir.path(), 10_000, 60_000, TestClock::at_now().clock()).unwrap();
    let started = Instant::now();
    for batch in messages.chunks(4096) {
        model.ingest(batch).unwrap();
    }
    let s = started.elapsed().as_secs_f64();
    println!(
        "ingested {} events in {s:.2}s: {:.0} events/s",
        messages.len(),
        messages.len() as f64 / s
    );
    assert_eq!(model.stats().by_state["COMPLETED"] as usize, sagas);
}
