//! Shared by the venue's tests: an in-process fx-venue on a free port with a temp data dir,
//! and orders.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use events::{Krw, SagaId, Usd, UserId};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use trade::{VenueConfig, VenueOrder};
use venue::FxVenue;

/// A running in-process fx-venue; stops (and flushes) on drop of `stop`.
pub struct Running {
    pub venue: Arc<FxVenue>,
    pub url: String,
    pub addr: SocketAddr,
    /// One pooled client, as a real caller keeps.
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<venue::Result<()>>>,
}

impl Running {
    /// Stops serving and waits until the store is closed (so it may be reopened).
    pub async fn stop(mut self) {
        self.stop.take();
        if let Some(served) = self.served.take() {
            served
                .await
                .expect("server task")
                .expect("server stopped cleanly");
        }
    }
}

impl Running {
    /// POSTs `order` (any JSON) to `/v1/orders`: status and body.
    pub async fn order(&self, order: &Value) -> (u16, Value) {
        answer(
            self.client
                .post(format!("{}/v1/orders", self.url))
                .json(order)
                .send()
                .await
                .expect("POST /v1/orders"),
        )
        .await
    }

    /// GETs `path` (from the root): status and JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        answer(
            self.client
                .get(format!("{}{path}", self.url))
                .send()
                .await
                .expect("GET"),
        )
        .await
    }
}

/// Starts fx-venue's real code on 127.0.0.1 (a free port) over `dir`.
pub async fn start(dir: &Path, config: VenueConfig) -> Running {
    let venue = Arc::new(FxVenue::open(dir, &config).expect("open the venue"));
    let (stop, stopped) = oneshot::channel::<()>();
    let (addr, serve) = venue::bind(venue.clone(), "127.0.0.1:0".parse().unwrap(), async {
        let _ = stopped.await;
    })
    .await
    .expect("bind");
    Running {
        venue,
        url: format!("http://{addr}"),
        addr,
        client: http(),
        stop: Some(stop),
        served: Some(tokio::spawn(serve)),
    }
}

/// Starts fx-venue over `dir` with the flat market changed by `edit`.
pub async fn start_with(dir: &Path, edit: impl FnOnce(&mut VenueConfig)) -> Running {
    let mut config = flat();
    edit(&mut config);
    start(dir, config).await
}

/// A flat market at 1400 with no latency or failures.
pub fn flat() -> VenueConfig {
    VenueConfig::default()
}

pub fn saga(n: u128) -> SagaId {
    SagaId::from(uuid::Uuid::from_u128(n))
}

pub fn alice() -> UserId {
    UserId::parse("alice").unwrap()
}

/// The buy of saga `n`: 1,500,000 KRW, with an optional minimum in USD.
pub fn buy(n: u128, min_usd: Option<&str>) -> VenueOrder {
    VenueOrder::buy(
        saga(n),
        alice(),
        Krw::parse("1500000").unwrap(),
        min_usd.map(|m| Usd::parse(m).unwrap()),
    )
}

/// The same order as JSON, the way a client sends it.
pub fn buy_json(n: u128, min_usd: Option<&str>) -> Value {
    serde_json::to_value(buy(n, min_usd)).unwrap()
}

/// A raw JSON body that is not a valid order.
pub fn bad_order() -> Value {
    json!({"client_order_id": "x", "user_id": "alice", "side": "buy", "krw_amount": 1500000})
}

/// A plain HTTP client for asserting status codes and bodies.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Status and JSON body of a response.
pub async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.expect("a JSON body");
    (status, body)
}

/// Asserts an error answer: its status, its machine reason, and a human sentence.
pub fn assert_error((status, body): &(u16, Value), want_status: u16, reason: &str) {
    assert_eq!(
        (*status, body["error"].as_str()),
        (want_status, Some(reason)),
        "{body}"
    );
    assert!(
        body["message"].as_str().is_some_and(|m| m.len() > 10),
        "{body}"
    );
}
