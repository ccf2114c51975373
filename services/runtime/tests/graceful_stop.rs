//! A task beside the consumer (the admin server, a timer) that ends first stops the runtime
//! the graceful way: the batch in flight still commits, flushes, is acked, and its events are
//! published, before `run` returns the task's end. Real broker, real store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_nats::jetstream;
use events::{Event, EventKind, Krw, KrwHeld, SagaId, TradeFailReason, TradeFailed, UserId};
use runtime::{Handled, Participant, ReadRecords, Records, RuntimeConfig, RuntimeError, TxResult};
use testkit::{messages_on, wait_for, NatsServer};
use tokio::sync::{oneshot, Semaphore};

/// Answers krw.held with trade.failed, after a `prepare` that waits for the test's go.
struct Gated {
    entered: Arc<AtomicBool>,
    go: Arc<Semaphore>,
}

impl Participant for Gated {
    type Prepared = ();

    fn name(&self) -> &'static str {
        "gated"
    }

    fn consumes(&self) -> &'static [EventKind] {
        &[EventKind::KrwHeld]
    }

    fn prepare<V: ReadRecords>(
        &self,
        _: &V,
        _: &Event,
        _: u64,
    ) -> impl std::future::Future<Output = ()> + Send {
        let (entered, go) = (self.entered.clone(), self.go.clone());
        async move {
            entered.store(true, Ordering::SeqCst);
            go.acquire().await.expect("open").forget();
        }
    }

    fn handle<R: Records>(&self, r: &R, event: &Event, _: &(), now_ms: u64) -> TxResult<Handled> {
        r.put(&format!("done:{}", event.saga_id()), &true)?;
        let answer = Event::TradeFailed(TradeFailed {
            saga_id: event.saga_id(),
            user_id: event.user_id().clone(),
            reason: TradeFailReason::VenueUnavailable,
            message: "gated".into(),
        });
        r.emit(&answer, &event.id(), now_ms)?;
        Ok(Handled::Applied)
    }
}

#[tokio::test]
async fn a_side_task_that_fails_first_still_lets_the_batch_in_flight_commit_and_ack() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (entered, go) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Semaphore::new(0)),
    );
    let gated = Gated {
        entered: entered.clone(),
        go: go.clone(),
    };
    let (fail, failed) = oneshot::channel::<()>();
    let rt = runtime::Runtime::start(gated, RuntimeConfig::for_test(&server.url(), dir.path()))
        .await
        .expect("runtime starts")
        .with_task("admin server", async move {
            let _ = failed.await;
            Err(RuntimeError::Handler("the admin connection broke".into()))
        });
    let store = rt.store();
    let run = tokio::spawn(rt.run(std::future::pending()));

    let js = runtime::broker::jetstream(async_nats::connect(server.url()).await.unwrap());
    let saga = SagaId::new_v7();
    let held = Event::KrwHeld(KrwHeld {
        saga_id: saga,
        user_id: UserId::parse("alice").unwrap(),
        krw_amount: Krw::parse("1500000").unwrap(),
        min_usd_amount: None,
        hold_expires_at_ms: 4_000_000_000_000,
    });
    js.send_publish(
        held.subject(),
        jetstream::message::PublishMessage::build()
            .payload(held.to_json().into())
            .message_id(held.id()),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    // The message is in flight (its prepare waits) when the admin server fails.
    wait_for("the prepare to start", 20_000, || async {
        entered.load(Ordering::SeqCst).then_some(())
    })
    .await;
    fail.send(()).unwrap();
    go.add_permits(1);
    let ended = run.await.unwrap();
    assert!(
        matches!(&ended, Err(RuntimeError::TaskEnded { task: "admin server", reason }) if reason.contains("admin connection broke")),
        "{ended:?}"
    );

    // Committed and flushed, its answer published by the relay, the message acked.
    assert_eq!(
        store.get::<bool>(&format!("done:{saga}")).unwrap(),
        Some(true)
    );
    let answers = messages_on(&js, "FX", "fx.trade.failed.alice").await;
    assert_eq!(
        answers.len(),
        1,
        "the relay drained the outbox before stopping"
    );
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_stream("FX")
        .await
        .unwrap()
        .get_consumer("fx-gated")
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(
        (info.num_ack_pending, info.num_pending),
        (0, 0),
        "the message was acked, not left for redelivery"
    );
}
