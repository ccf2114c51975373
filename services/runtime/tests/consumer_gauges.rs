//! The consumer gauges (`fx_consumer_*`) report the broker's view of a service's durable
//! consumer, against a real nats-server. Its own test binary: the metrics recorder is
//! process-wide, and other tests' runtimes would set the same series.

use async_nats::jetstream;
use events::{Event, EventKind, Krw, KrwHeld, SagaId, UserId};
use runtime::{Handled, Participant, ReadRecords, Records, RuntimeConfig, TxResult};
use testkit::{wait_for, NatsServer};
use tokio::sync::watch;

/// Applies every krw.held, but only once its gate opens: until then the deliveries stay
/// unacked (and the broker redelivers them past `ack_wait`).
struct Gated {
    open: watch::Receiver<bool>,
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
        let mut open = self.open.clone();
        async move {
            let _ = open.wait_for(|o| *o).await;
        }
    }

    fn handle<R: Records>(&self, r: &R, event: &Event, _: &(), _: u64) -> TxResult<Handled> {
        r.put(&format!("seen:{}", event.saga_id()), &1u64)?;
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

/// The value of the gauge `name` of consumer `fx-gated`, if rendered.
fn gauge(name: &str) -> Option<f64> {
    let text = runtime::telemetry::prometheus().render();
    let series = format!("{name}{{service=\"gated\",consumer=\"fx-gated\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
}

async fn wait_gauge(name: &str, what: &str, ok: impl Fn(f64) -> bool) {
    wait_for(&format!("{name} {what}"), 20_000, || {
        std::future::ready(gauge(name).filter(|v| ok(*v)))
    })
    .await;
}

#[tokio::test]
async fn the_consumer_gauges_follow_the_brokers_view_of_the_consumer() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (open_tx, open) = watch::channel(false);
    let rt = runtime::Runtime::start(
        Gated { open },
        RuntimeConfig::for_test(&server.url(), dir.path()),
    )
    .await
    .expect("runtime starts");
    let store = rt.store();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(rt.run(async {
        let _ = stopped.await;
    }));

    let js = runtime::broker::jetstream(async_nats::connect(server.url()).await.unwrap());
    let sagas: Vec<SagaId> = (0..3).map(|_| SagaId::new_v7()).collect();
    for &saga in &sagas {
        let e = held(saga);
        let m = jetstream::message::PublishMessage::build().payload(e.to_json().into());
        js.send_publish(e.subject(), m)
            .await
            .unwrap()
            .await
            .unwrap();
    }

    // Gate shut: all three delivered and unacked, and redelivered past the 1 s ack_wait.
    wait_gauge("fx_consumer_ack_pending_messages", "= 3", |v| v == 3.0).await;
    wait_gauge("fx_consumer_redelivered_messages", ">= 1", |v| v >= 1.0).await;
    assert_eq!(gauge("fx_consumer_pending_messages"), Some(0.0));
    for saga in &sagas {
        assert_eq!(store.get::<u64>(&format!("seen:{saga}")).unwrap(), None);
    }

    // Gate open: every message applied and acked; the gauges drain to zero.
    open_tx.send(true).unwrap();
    wait_gauge("fx_consumer_ack_pending_messages", "= 0", |v| v == 0.0).await;
    wait_gauge("fx_consumer_redelivered_messages", "= 0", |v| v == 0.0).await;
    assert_eq!(gauge("fx_consumer_pending_messages"), Some(0.0));
    for saga in &sagas {
        assert_eq!(store.get::<u64>(&format!("seen:{saga}")).unwrap(), Some(1));
    }
    drop(store);
    let _ = stop.send(());
    task.await.unwrap().expect("clean stop");
}
