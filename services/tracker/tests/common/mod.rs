//! Shared test support: a real nats-server, hand-built events published with `Nats-Msg-Id`,
//! a tracker on a free port with an injected clock, and a tiny HTTP client.

#![allow(dead_code)]

pub mod cdp;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, message::PublishMessage};
use events::*;
use testkit::NatsServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tracker::{ReadModel, Tracker, TrackerConfig, TrackerError};

/// How long any condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A broker with the streams provisioned.
pub struct Broker {
    pub server: NatsServer,
    pub js: jetstream::Context,
}

impl Broker {
    pub async fn start() -> Broker {
        let server = NatsServer::start();
        let client = async_nats::connect(server.url()).await.expect("connect");
        let js = runtime::broker::jetstream(client);
        runtime::provision(&js, &runtime::StreamSettings::default())
            .await
            .expect("provision");
        Broker { server, js }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Publishes an event as a service would (deterministic `Nats-Msg-Id`); returns its
    /// stream sequence.
    pub async fn publish(&self, e: &Event) -> u64 {
        let msg = PublishMessage::build()
            .payload(e.to_json().into())
            .message_id(e.id())
            .header(headers::SAGA_ID, e.saga_id().to_string().as_str());
        self.js
            .send_publish(e.subject(), msg)
            .await
            .expect("publish")
            .await
            .expect("puback")
            .sequence
    }

    /// Publishes every event, pipelining the PubAcks; returns the last sequence.
    pub async fn publish_all(&self, events: &[Event]) -> u64 {
        let mut last = 0;
        for chunk in events.chunks(256) {
            let mut acks = Vec::with_capacity(chunk.len());
            for e in chunk {
                let msg = PublishMessage::build()
                    .payload(e.to_json().into())
                    .message_id(e.id());
                acks.push(
                    self.js
                        .send_publish(e.subject(), msg)
                        .await
                        .expect("publish"),
                );
            }
            for a in futures::future::join_all(
                acks.into_iter().map(std::future::IntoFuture::into_future),
            )
            .await
            {
                last = last.max(a.expect("puback").sequence);
            }
        }
        last
    }

    /// Publishes arbitrary bytes on a subject (for undecodable messages).
    pub async fn publish_raw(&self, subject: &str, body: &[u8]) -> u64 {
        self.js
            .publish(subject.to_owned(), body.to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("puback")
            .sequence
    }
}

/// A clock the test moves by hand.
#[derive(Clone)]
pub struct TestClock(pub Arc<AtomicU64>);

impl TestClock {
    pub fn at_now() -> TestClock {
        TestClock(Arc::new(AtomicU64::new(wall_ms())))
    }
    pub fn clock(&self) -> runtime::Clock {
        let c = self.0.clone();
        Arc::new(move || c.load(Ordering::SeqCst))
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A running tracker and the means to stop it.
pub struct Running {
    pub model: Arc<ReadModel>,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), TrackerError>>>,
}

impl Running {
    pub async fn start(url: &str, dir: &Path, clock: &TestClock, retain: usize) -> Running {
        let mut config = TrackerConfig::for_test(url, dir);
        config.retain = retain;
        config.stuck_after_ms = 60_000;
        Running::start_config(config, clock).await
    }

    /// Starts a tracker with the given config.
    pub async fn start_config(config: TrackerConfig, clock: &TestClock) -> Running {
        let t = Tracker::start_with_clock(config, clock.clock())
            .await
            .expect("tracker starts");
        let model = t.model();
        let addr = t.http_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(t.run(async {
            let _ = rx.await;
        }));
        Running {
            model,
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Waits until the tracker has processed `seq`.
    pub async fn caught_up(&self, seq: u64) {
        assert!(
            self.model.wait_for_seq(seq, DEADLINE).await,
            "tracker did not reach seq {seq} (at {})",
            self.model.last_seq()
        );
    }

    /// Stops gracefully and returns the run's result.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task
            .take()
            .unwrap()
            .await
            .expect("join")
            .expect("tracker ran without error");
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }

    pub async fn json(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = self.get(path).await;
        let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        (status, v)
    }
}

/// `GET path` over HTTP/1.0; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http_request(addr, "GET", path, &[]).await;
    (status, body)
}

/// One HTTP/1.0 request with extra headers; returns status, response head and body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect http");
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        s.write_all(
            format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n{extra}\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8(buf).expect("utf-8 response");
        let (head, body) = text.split_once("\r\n\r\n").expect("http response");
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        (status, head.to_owned(), body.to_owned())
    };
    tokio::time::timeout(DEADLINE, fut)
        .await
        .expect("http in time")
}

/// The outcomes a hand-built saga can be driven to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    /// trade.failed, then krw.released.
    CompensatedTradeFailed,
    /// trade.filled, usd.credit_failed, trade.cancelled, krw.released.
    CompensatedCreditFailed,
    Rejected,
    /// A completed saga whose hold is also released: INCONSISTENT.
    CommittedAndReleased,
    /// Held, then nothing: STUCK once the clock moves.
    Stalled,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 6] = [
        Outcome::Completed,
        Outcome::CompensatedTradeFailed,
        Outcome::CompensatedCreditFailed,
        Outcome::Rejected,
        Outcome::CommittedAndReleased,
        Outcome::Stalled,
    ];
}

/// The `saga_id`s of a `/api/sagas` page, in order.
pub fn saga_ids(page: &serde_json::Value) -> Vec<String> {
    page["sagas"]
        .as_array()
        .expect("a page of sagas")
        .iter()
        .map(|s| s["saga_id"].as_str().expect("saga_id").to_owned())
        .collect()
}

/// A saga's ids and amounts.
#[derive(Clone, Debug)]
pub struct Saga {
    pub id: SagaId,
    pub user: UserId,
    pub krw: Krw,
    pub usd: Usd,
    pub rate: Rate,
}

impl Saga {
    pub fn new(user: &str) -> Saga {
        let rate: Rate = serde_json::from_str("\"1400\"").unwrap();
        let krw = Krw::parse("1500000").unwrap();
        Saga {
            id: SagaId::new_v7(),
            user: UserId::parse(user).unwrap(),
            krw,
            usd: rate.usd_for(krw).unwrap(),
            rate,
        }
    }

    pub fn requested(&self) -> Event {
        Event::ExchangeRequested(ExchangeRequested {
            saga_id: self.id,
            user_id: self.user.clone(),
            krw_amount: self.krw,
            min_usd_amount: Some(Usd::parse("1000.00").unwrap()),
        })
    }
    pub fn held(&self) -> Event {
        Event::KrwHeld(KrwHeld {
            saga_id: self.id,
            user_id: self.user.clone(),
            krw_amount: self.krw,
            min_usd_amount: Some(Usd::parse("1000.00").unwrap()),
            hold_expires_at_ms: wall_ms() + 30_000,
        })
    }
    pub fn rejected(&self) -> Event {
        Event::KrwRejected(KrwRejected {
            saga_id: self.id,
            user_id: self.user.clone(),
            reason: RejectReason::InsufficientFunds,
            message: format!("{} has 0 KRW available; deposit more", self.user),
        })
    }
    pub fn filled(&self) -> Event {
        Event::TradeFilled(TradeFilled {
            saga_id: self.id,
            user_id: self.user.clone(),
            krw_amount: self.krw,
            usd_amount: self.usd,
            rate: self.rate,
        })
    }
    pub fn trade_failed(&self) -> Event {
        Event::TradeFailed(TradeFailed {
            saga_id: self.id,
            user_id: self.user.clone(),
            reason: TradeFailReason::RateMoved,
            message: "fill would give 998.57 USD, below min_usd_amount 1000.00".into(),
        })
    }
    pub fn credited(&self) -> Event {
        Event::UsdCredited(UsdCredited {
            saga_id: self.id,
            user_id: self.user.clone(),
            usd_amount: self.usd,
        })
    }
    pub fn credit_failed(&self) -> Event {
        Event::UsdCreditFailed(UsdCreditFailed {
            saga_id: self.id,
            user_id: self.user.clone(),
            reason: CreditFailReason::AccountFrozen,
            message: format!("{}'s USD account is frozen", self.user),
        })
    }
    pub fn cancelled(&self) -> Event {
        Event::TradeCancelled(TradeCancelled {
            saga_id: self.id,
            user_id: self.user.clone(),
            krw_amount: self.krw,
            usd_amount: self.usd,
            reason: CancelReason::CreditFailed,
        })
    }
    pub fn released(&self, reason: ReleaseReason) -> Event {
        Event::KrwReleased(KrwReleased {
            saga_id: self.id,
            user_id: self.user.clone(),
            krw_amount: self.krw,
            reason,
        })
    }
    /// trade.failed with venue_unavailable (an execution may be found and reversed later).
    pub fn venue_unavailable(&self) -> Event {
        Event::TradeFailed(TradeFailed {
            saga_id: self.id,
            user_id: self.user.clone(),
            reason: TradeFailReason::VenueUnavailable,
            message: "venue did not answer; the order's outcome is unknown".into(),
        })
    }
    /// The house sold the fill's USD back at `rate` (KRW per USD), as fx-trade says it.
    pub fn reversed(&self, rate: &str) -> Event {
        let rate: Rate = serde_json::from_str(&format!("\"{rate}\"")).unwrap();
        Event::TradeReversed(TradeReversed {
            saga_id: self.id,
            user_id: self.user.clone(),
            usd_amount: self.usd,
            krw_amount: rate.krw_for(self.usd).unwrap(),
            rate,
            fill_krw_amount: self.krw,
        })
    }
    pub fn committed(&self) -> Event {
        Event::KrwCommitted(KrwCommitted {
            saga_id: self.id,
            user_id: self.user.clone(),
            krw_amount: self.krw,
        })
    }

    /// The events that drive this saga to `outcome`, in the order services emit them.
    pub fn events(&self, outcome: Outcome) -> Vec<Event> {
        match outcome {
            Outcome::Completed => vec![
                self.requested(),
                self.held(),
                self.filled(),
                self.credited(),
                self.committed(),
            ],
            Outcome::CompensatedTradeFailed => vec![
                self.requested(),
                self.held(),
                self.trade_failed(),
                self.released(ReleaseReason::TradeFailed),
            ],
            Outcome::CompensatedCreditFailed => vec![
                self.requested(),
                self.held(),
                self.filled(),
                self.credit_failed(),
                self.cancelled(),
                self.released(ReleaseReason::TradeCancelled),
            ],
            Outcome::Rejected => vec![self.requested(), self.rejected()],
            Outcome::CommittedAndReleased => vec![
                self.requested(),
                self.held(),
                self.filled(),
                self.credited(),
                self.committed(),
                self.released(ReleaseReason::Expired),
            ],
            Outcome::Stalled => vec![self.requested(), self.held()],
        }
    }
}

/// An admin deposit (not a saga).
pub fn krw_deposit(user: &str) -> Event {
    Event::KrwDeposited(KrwDeposited {
        saga_id: SagaId::new_v7(),
        user_id: UserId::parse(user).unwrap(),
        krw_amount: Krw::parse("5000000").unwrap(),
        actor: "admin".into(),
    })
}

/// Interleaves several sagas' event lists round-robin (as concurrent sagas reach the stream).
pub fn interleave(lists: Vec<Vec<Event>>) -> Vec<Event> {
    let mut out = Vec::new();
    let mut iters: Vec<_> = lists.into_iter().map(|l| l.into_iter()).collect();
    loop {
        let mut any = false;
        for it in iters.iter_mut() {
            if let Some(e) = it.next() {
                out.push(e);
                any = true;
            }
        }
        if !any {
            return out;
        }
    }
}
