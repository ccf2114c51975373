//! Exactly-once effects from at-least-once delivery, against a real nats-server.
//!
//! A probe participant counts how often its handler's effect is applied per saga, writes a
//! journal line for each application, and answers every krw.held with a trade.failed. Each test delivers or crashes in one way and asserts the
//! count, the events on the stream, and the dead letters.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use events::{Event, EventKind, Krw, KrwHeld, SagaId, TradeFailReason, TradeFailed, UserId};
use runtime::ledger::{Account, Currency, Op};
use runtime::{
    FaultAction, FaultHook, FaultPoint, Handled, JournalEntry, Participant, ReadRecords, Records,
    RuntimeConfig, RuntimeError, Store, TxResult,
};
use rust_decimal::Decimal;
use testkit::{messages_on, wait_for, NatsServer};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Counts applications per saga in its own records and emits one trade.failed per krw.held.
/// Its `prepare` notes the count it read (what a venue call would be decided on).
#[derive(Default)]
struct Probe {
    prepared: Arc<Mutex<Vec<(SagaId, u64)>>>,
}

impl Participant for Probe {
    type Prepared = ();

    fn name(&self) -> &'static str {
        "probe"
    }

    fn consumes(&self) -> &'static [EventKind] {
        &[EventKind::KrwHeld]
    }

    fn prepare<V: ReadRecords>(
        &self,
        records: &V,
        event: &Event,
        _: u64,
    ) -> impl std::future::Future<Output = ()> + Send {
        let saga = event.saga_id();
        let n: u64 = records.read(&format!("count:{saga}")).unwrap().unwrap_or(0);
        self.prepared.lock().unwrap().push((saga, n));
        std::future::ready(())
    }

    fn handle<R: Records>(&self, r: &R, event: &Event, _: &(), now_ms: u64) -> TxResult<Handled> {
        // Deliberately no per-saga dedup here: only the runtime's inbox stands between a
        // redelivery and a second application, so these tests can see it fail.
        let key = format!("count:{}", event.saga_id());
        let n: u64 = r.get(&key)?.unwrap_or(0);
        r.put(&key, &(n + 1))?;
        // A journal line per application, its operation saying which one (hold, then commit,
        // then release): a store that loses or doubles an application shows in the journal.
        let op = [Op::Hold, Op::Commit, Op::Release][n.min(2) as usize];
        let user = event.user_id().clone();
        r.journal(&JournalEntry::new(
            event.saga_id(),
            op,
            Currency::Krw,
            (Account::Available(user.clone()), Account::Held(user)),
            Decimal::ONE,
            now_ms,
        ))?;
        let answer = Event::TradeFailed(TradeFailed {
            saga_id: event.saga_id(),
            user_id: event.user_id().clone(),
            reason: TradeFailReason::VenueUnavailable,
            message: "probe".into(),
        });
        r.emit(&answer, &event.id(), now_ms)?;
        Ok(Handled::Applied)
    }
}

fn held(saga: SagaId) -> Event {
    Event::KrwHeld(KrwHeld {
        saga_id: saga,
        user_id: UserId::parse("alice").unwrap(),
        krw_amount: Krw::parse("1500000").unwrap(),
        min_usd_amount: None,
        hold_expires_at_ms: 4_000_000_000_000,
    })
}

/// A fault hook that crashes the runtime the first time it reaches `point`, and never again.
fn crash_once(point: FaultPoint) -> FaultHook {
    let crashes = Arc::new(AtomicUsize::new(0));
    Arc::new(move |p| {
        if p == point && crashes.fetch_add(1, Ordering::SeqCst) == 0 {
            FaultAction::Crash
        } else {
            FaultAction::Continue
        }
    })
}

struct Running {
    task: JoinHandle<runtime::Result<()>>,
    stop: oneshot::Sender<()>,
    store: Arc<Store>,
    prepared: Arc<Mutex<Vec<(SagaId, u64)>>>,
}

async fn start(url: &str, dir: &std::path::Path, faults: FaultHook) -> Running {
    start_with(RuntimeConfig::for_test(url, dir), faults).await
}

async fn start_with(config: RuntimeConfig, faults: FaultHook) -> Running {
    let probe = Probe::default();
    let prepared = probe.prepared.clone();
    let rt = runtime::Runtime::start(probe, config)
        .await
        .expect("runtime starts")
        .with_faults(faults);
    let store = rt.store();
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(rt.run(async {
        let _ = stopped.await;
    }));
    Running {
        task,
        stop,
        store,
        prepared,
    }
}

impl Running {
    async fn stop(self) {
        drop(self.store);
        let _ = self.stop.send(());
        self.task.await.unwrap().expect("clean stop");
    }

    fn count(&self, saga: SagaId) -> u64 {
        self.store
            .get(&format!("count:{saga}"))
            .unwrap()
            .unwrap_or(0)
    }

    async fn wait_count(&self, saga: SagaId, n: u64) {
        let store = self.store.clone();
        wait_for(&format!("{n} application(s) of {saga}"), 20_000, || {
            let got: u64 = store.get(&format!("count:{saga}")).unwrap().unwrap_or(0);
            std::future::ready((got >= n).then_some(()))
        })
        .await;
    }
}

async fn client(server: &NatsServer) -> jetstream::Context {
    runtime::broker::jetstream(async_nats::connect(server.url()).await.unwrap())
}

async fn publish(js: &jetstream::Context, e: &Event, msg_id: Option<&str>) {
    let mut m = jetstream::message::PublishMessage::build().payload(e.to_json().into());
    if let Some(id) = msg_id {
        m = m.message_id(id);
    }
    js.send_publish(e.subject(), m)
        .await
        .unwrap()
        .await
        .unwrap();
}

/// The probe's durable consumer, as the broker reports it.
async fn probe_consumer(js: &jetstream::Context) -> jetstream::consumer::Info {
    let mut c = js
        .get_stream("FX")
        .await
        .unwrap()
        .get_consumer::<jetstream::consumer::pull::Config>("fx-probe")
        .await
        .unwrap();
    c.info().await.unwrap().clone()
}

async fn trade_failed_count(js: &jetstream::Context, saga: SagaId) -> usize {
    messages_on(js, "FX", "fx.trade.failed.")
        .await
        .into_iter()
        .filter(|m| {
            m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned())
                == Some(saga.event_id(EventKind::TradeFailed))
        })
        .count()
}

async fn wait_trade_failed(js: &jetstream::Context, saga: SagaId) {
    wait_for("trade.failed on the stream", 30_000, || async {
        (trade_failed_count(js, saga).await >= 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_same_event_delivered_twice_is_applied_once() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let run = start(&server.url(), dir.path(), runtime::no_faults()).await;
    let js = client(&server).await;
    let saga = SagaId::new_v7();
    // No Nats-Msg-Id, so the broker stores both copies: only the inbox can catch the second.
    publish(&js, &held(saga), None).await;
    publish(&js, &held(saga), None).await;
    let second = SagaId::new_v7();
    publish(&js, &held(second), None).await;
    run.wait_count(second, 1).await;
    assert_eq!(run.count(saga), 1, "the duplicate was applied");
    wait_trade_failed(&js, saga).await;
    assert_eq!(trade_failed_count(&js, saga).await, 1);
    run.stop().await;
}

#[tokio::test]
async fn a_second_message_of_a_saga_is_prepared_after_the_first_is_committed() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let js = client(&server).await;
    runtime::provision(&js, &runtime::StreamSettings::default())
        .await
        .unwrap();
    // On the stream before the consumer exists, so that they arrive together in one batch,
    // which is handled in one transaction: the second copy's prepare must still see the
    // first's write (fx-trade decides on it whether to call the venue).
    let (saga, other) = (SagaId::new_v7(), SagaId::new_v7());
    publish(&js, &held(saga), None).await;
    publish(&js, &held(saga), None).await;
    publish(&js, &held(other), None).await;
    let run = start(&server.url(), dir.path(), runtime::no_faults()).await;
    run.wait_count(other, 1).await;
    // The second copy waits in the pipeline until the first has committed, then is prepared.
    let prepared_of = |saga: SagaId| -> Vec<u64> {
        run.prepared
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| *s == saga)
            .map(|(_, n)| *n)
            .collect()
    };
    let seen = wait_for("both copies prepared", 30_000, || async {
        let seen = prepared_of(saga);
        (seen.len() >= 2).then_some(seen)
    })
    .await;
    assert_eq!(seen, [0, 1], "what each delivery's prepare read");
    assert_eq!(run.count(saga), 1, "the duplicate was applied");
    run.stop().await;
}

#[tokio::test]
async fn dying_after_the_commit_before_the_ack_applies_once() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let run = start(
        &server.url(),
        dir.path(),
        crash_once(FaultPoint::AfterCommitBeforeAck),
    )
    .await;
    let js = client(&server).await;
    let saga = SagaId::new_v7();
    publish(&js, &held(saga), Some(&saga.event_id(EventKind::KrwHeld))).await;
    let crashed = run.task.await.unwrap();
    assert!(matches!(
        crashed,
        Err(RuntimeError::Crashed(FaultPoint::AfterCommitBeforeAck))
    ));
    drop(run.store);

    // The process is gone without acking; a new one on the same store gets the redelivery.
    let run = start(&server.url(), dir.path(), runtime::no_faults()).await;
    let info = wait_for("the redelivery to be acked", 20_000, || async {
        let info = probe_consumer(&js).await;
        (info.num_ack_pending == 0 && info.num_pending == 0 && info.delivered.stream_sequence >= 1)
            .then_some(info)
    })
    .await;
    assert_eq!(info.ack_floor.stream_sequence, 1);
    assert_eq!(
        run.count(saga),
        1,
        "the redelivered event was applied again"
    );
    wait_trade_failed(&js, saga).await;
    assert_eq!(trade_failed_count(&js, saga).await, 1);
    run.stop().await;
}

#[tokio::test]
async fn dying_after_the_publish_before_the_outbox_removal_publishes_once() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let run = start(
        &server.url(),
        dir.path(),
        crash_once(FaultPoint::AfterPublishBeforeRemove),
    )
    .await;
    let js = client(&server).await;
    let saga = SagaId::new_v7();
    publish(&js, &held(saga), None).await;
    let crashed = run.task.await.unwrap();
    assert!(matches!(
        crashed,
        Err(RuntimeError::Crashed(FaultPoint::AfterPublishBeforeRemove))
    ));
    // The entry is still in the outbox: the crash came before its removal.
    let (depth, _) = run.store.outbox_stats(0).unwrap();
    assert_eq!(depth, 1);
    drop(run.store);

    let run = start(&server.url(), dir.path(), runtime::no_faults()).await;
    let store = run.store.clone();
    wait_for("the outbox to drain", 20_000, || {
        std::future::ready((store.outbox_stats(0).unwrap().0 == 0).then_some(()))
    })
    .await;
    // Published twice with the same Nats-Msg-Id: the stream holds it once.
    assert_eq!(trade_failed_count(&js, saga).await, 1);
    assert_eq!(run.count(saga), 1);
    run.stop().await;
}

/// The process dies inside the store the third time it reaches `point`, with sagas settled
/// before it (some of them checkpointed into the trees, the latest only in the log); a new
/// process on the same store has applied every saga exactly once, with one journal line each,
/// and published each answer once.
async fn dying_in_the_store_applies_once(point: FaultPoint) {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    // A probe saga writes three entries (its count, its inbox mark, its journal line): a
    // checkpoint every two sagas or so, so that checkpoints and trims come early.
    let mut config = RuntimeConfig::for_test(&server.url(), dir.path());
    config.checkpoint_entries = 6;
    let reached = Arc::new(AtomicUsize::new(0));
    let hook: FaultHook = {
        let reached = reached.clone();
        Arc::new(move |p| {
            if p == point && reached.fetch_add(1, Ordering::SeqCst) == 2 {
                FaultAction::Crash
            } else {
                FaultAction::Continue
            }
        })
    };
    let run = start_with(config.clone(), hook).await;
    let js = client(&server).await;
    // One saga at a time until the store reaches the point (a checkpoint runs in the
    // background, a trim needs a checkpoint and a published answer before it).
    let mut sagas = Vec::new();
    wait_for(&format!("the store to reach {point:?}"), 30_000, || {
        let saga = SagaId::new_v7();
        sagas.push(saga);
        let (js, reached) = (js.clone(), reached.clone());
        async move {
            publish(&js, &held(saga), Some(&saga.event_id(EventKind::KrwHeld))).await;
            (reached.load(Ordering::SeqCst) > 2).then_some(())
        }
    })
    .await;
    // One more message makes the consumer flush, which a dead store refuses.
    let last = SagaId::new_v7();
    sagas.push(last);
    publish(&js, &held(last), Some(&last.event_id(EventKind::KrwHeld))).await;
    let ended = run.task.await.unwrap();
    assert!(
        matches!(ended, Err(RuntimeError::Crashed(p)) if p == point),
        "{ended:?}"
    );
    drop(run.store);

    let run = start_with(config, runtime::no_faults()).await;
    for saga in &sagas {
        run.wait_count(*saga, 1).await;
        wait_trade_failed(&js, *saga).await;
    }
    wait_for("every message acked", 20_000, || async {
        let info = probe_consumer(&js).await;
        (info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
    })
    .await;
    for saga in &sagas {
        assert_eq!(run.count(*saga), 1, "{point:?}: {saga} applied once");
        assert_eq!(trade_failed_count(&js, *saga).await, 1, "{point:?}: {saga}");
    }
    let mut journal: Vec<(SagaId, Op)> = run
        .store
        .journal_entries()
        .unwrap()
        .into_iter()
        .map(|e| (e.saga_id, e.op))
        .collect();
    journal.sort();
    let mut expected: Vec<(SagaId, Op)> = sagas.iter().map(|s| (*s, Op::Hold)).collect();
    expected.sort();
    assert_eq!(journal, expected, "{point:?}: one journal line per saga");
    run.stop().await;
}

#[tokio::test]
async fn dying_before_the_log_write_applies_once() {
    dying_in_the_store_applies_once(FaultPoint::BeforeLogWrite).await;
}

#[tokio::test]
async fn dying_after_the_log_write_before_the_flush_applies_once() {
    dying_in_the_store_applies_once(FaultPoint::AfterLogWriteBeforeFlush).await;
}

#[tokio::test]
async fn dying_during_a_checkpoint_applies_once() {
    dying_in_the_store_applies_once(FaultPoint::DuringCheckpoint).await;
}

#[tokio::test]
async fn dying_before_the_trim_applies_once() {
    dying_in_the_store_applies_once(FaultPoint::BeforeTrim).await;
}

#[tokio::test]
async fn a_broker_restart_with_entries_in_the_outbox_loses_nothing() {
    let mut server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let run = start(&server.url(), dir.path(), runtime::no_faults()).await;
    let js = client(&server).await;
    let before = SagaId::new_v7();
    publish(&js, &held(before), None).await;
    run.wait_count(before, 1).await;
    wait_trade_failed(&js, before).await;

    server.kill();
    // Entries written while the broker is down wait in the outbox.
    let stranded = SagaId::new_v7();
    let answer = Event::TradeFailed(TradeFailed {
        saga_id: stranded,
        user_id: UserId::parse("bob").unwrap(),
        reason: TradeFailReason::HoldExpiring,
        message: "written during the outage".into(),
    });
    run.store
        .transact(|tx| tx.emit(&answer, "test", 1))
        .unwrap();
    run.store.flush().await.unwrap();
    assert_eq!(run.store.outbox_stats(0).unwrap().0, 1);

    server.restart();
    let js = client(&server).await;
    wait_trade_failed(&js, stranded).await;
    wait_trade_failed(&js, before).await;
    // The consumer carries on after the restart too.
    let after = SagaId::new_v7();
    publish(&js, &held(after), None).await;
    run.wait_count(after, 1).await;
    assert_eq!(run.count(before), 1);
    run.stop().await;
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_whole_and_the_next_one_is_handled() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let run = start(&server.url(), dir.path(), runtime::no_faults()).await;
    let js = client(&server).await;
    let poison: &[u8] = br#"{"saga_id":"not-a-uuid","user_id":"alice","krw_amount":1500000}"#;
    js.send_publish(
        "fx.krw.held.alice",
        jetstream::message::PublishMessage::build()
            .payload(poison.into())
            .header("X-Origin", "test"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let good = SagaId::new_v7();
    publish(&js, &held(good), None).await;
    run.wait_count(good, 1).await;

    let letters = wait_for("a dead letter", 20_000, || async {
        let l = messages_on(&js, "FX_DLQ", "fxdlq.").await;
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.subject.as_str(), "fxdlq.probe.malformed_body");
    assert_eq!(
        &letter.payload[..],
        poison,
        "the payload is kept byte for byte"
    );
    let h = |k: &str| letter.headers.get(k).map(|v| v.as_str().to_owned());
    assert_eq!(h("Fx-Dlq-Reason").as_deref(), Some("malformed_body"));
    assert_eq!(h("Fx-Dlq-Subject").as_deref(), Some("fx.krw.held.alice"));
    assert_eq!(h("Fx-Dlq-Stream-Seq").as_deref(), Some("1"));
    assert_eq!(h("Fx-Dlq-Service").as_deref(), Some("probe"));
    assert_eq!(
        h("X-Origin").as_deref(),
        Some("test"),
        "original headers are kept"
    );
    assert!(h("Fx-Dlq-Message").unwrap().contains("saga_id"));
    run.stop().await;
}

#[tokio::test]
async fn emitted_events_carry_the_contract_headers() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let run = start(&server.url(), dir.path(), runtime::no_faults()).await;
    let js = client(&server).await;
    let saga = SagaId::new_v7();
    publish(&js, &held(saga), None).await;
    wait_trade_failed(&js, saga).await;
    let m = messages_on(&js, "FX", "fx.trade.failed.").await.remove(0);
    let h = |k: &str| m.headers.get(k).map(|v| v.as_str().to_owned()).unwrap();
    assert_eq!(h("Nats-Msg-Id"), format!("{saga}:trade.failed"));
    assert_eq!(h("Fx-Saga-Id"), saga.to_string());
    assert_eq!(h("Fx-Causation-Id"), format!("{saga}:krw.held"));
    let tp = h("traceparent");
    assert!(tp.starts_with(&format!("00-{}-", saga.trace_id())), "{tp}");
    assert_eq!(tp.len(), 55);
    let decoded = Event::decode(m.subject.as_str(), &m.payload).unwrap();
    assert_eq!(decoded.saga_id(), saga);
    run.stop().await;
}

#[tokio::test]
async fn provisioning_is_idempotent_and_reports_drift() {
    let server = NatsServer::start();
    let js = client(&server).await;
    let settings = runtime::StreamSettings::default();
    let first = runtime::provision(&js, &settings).await.unwrap();
    assert_eq!(first.created, vec!["FX".to_string(), "FX_DLQ".to_string()]);
    assert!(first.drift.is_empty());
    let again = runtime::provision(&js, &settings).await.unwrap();
    assert!(
        again.created.is_empty() && again.drift.is_empty(),
        "{again:?}"
    );
    let shorter = runtime::StreamSettings {
        max_age_ms: 60_000,
        ..settings
    };
    let drifted = runtime::provision(&js, &shorter).await.unwrap();
    assert!(
        drifted.drift.iter().any(|d| d.starts_with("FX.max_age")),
        "{drifted:?}"
    );
}
