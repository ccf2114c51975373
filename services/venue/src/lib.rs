//! fx-venue: a liquidity provider in its own process, the venue fx-trade's `HttpVenue` trades
//! with.
//!
//! It runs fx-trade's simulated market ([`trade::Market`]: a seeded random walk, failure draws,
//! the limit rule) over an order book kept in sled ([`book::SledBook`]), behind an HTTP JSON
//! API ([`api`], described for users in docs/venue.md):
//!
//! - `POST /v1/orders`: a limit order, idempotent by client order id;
//! - `GET /v1/orders/{client_order_id}`: the execution of an earlier order;
//! - `GET /v1/executions?after=&limit=`: every execution in sequence order (reconciliation);
//! - `/healthz`, `/readyz`, `/metrics`.
//!
//! An execution is answered only once it is flushed and fdatasynced ([`commit::GroupCommit`]),
//! so a confirmed execution survives kill -9 and a power cut; concurrent orders share flushes.

pub mod api;
pub mod book;
pub mod commit;
mod error;
mod service;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use error::{Result, VenueServerError};
pub use service::{FxVenue, Placed, MAX_PAGE};
use trade::VenueConfig;

/// Default data directory when `FX_DATA_DIR` is unset.
pub const DEFAULT_DATA_DIR: &str = ".fx/venue";
/// Default listening address when `FX_HTTP_ADDR` is unset.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:9104";

/// fx-venue's settings.
#[derive(Clone, Debug)]
pub struct VenueSettings {
    /// `FX_DATA_DIR` (default `.fx/venue`): the order book's sled store lives in `<dir>/sled`.
    pub data_dir: PathBuf,
    /// `FX_HTTP_ADDR` (default `127.0.0.1:9104`): the API, health and metrics.
    pub http_addr: SocketAddr,
    /// `FX_VENUE_RATE`, `_VOLATILITY_BPS`, `_SEED`, `_LATENCY_MS`, `_FAILURE_RATE`.
    pub market: VenueConfig,
}

impl VenueSettings {
    /// Reads every setting; a malformed value is an error naming its variable.
    pub fn from_env() -> Result<VenueSettings> {
        let addr = runtime::env_or("FX_HTTP_ADDR", DEFAULT_HTTP_ADDR);
        let http_addr = addr.parse().map_err(|e| runtime::RuntimeError::Config {
            var: "FX_HTTP_ADDR",
            message: format!("{addr:?} is not a socket address like 127.0.0.1:9104: {e}"),
        })?;
        Ok(VenueSettings {
            data_dir: PathBuf::from(runtime::env_or("FX_DATA_DIR", DEFAULT_DATA_DIR)),
            http_addr,
            market: VenueConfig::from_env()?,
        })
    }
}

/// Binds `addr` and returns the bound address and the future that serves `venue` until
/// `shutdown` resolves (then it finishes the requests in flight and flushes a last time).
pub async fn bind(
    venue: Arc<FxVenue>,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl Future<Output = Result<()>>)> {
    let http_error = move |e: std::io::Error| VenueServerError::Http {
        addr: addr.to_string(),
        message: e.to_string(),
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(http_error)?;
    let local = listener.local_addr().map_err(http_error)?;
    let app = api::router(venue.clone());
    let serve = async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(http_error);
        venue.close();
        served
    };
    Ok((local, serve))
}

/// Runs fx-venue as configured until `shutdown` resolves.
pub async fn run(
    settings: VenueSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let venue = Arc::new(FxVenue::open(&settings.data_dir, &settings.market)?);
    let rate = venue.rate();
    let (addr, serve) = bind(venue, settings.http_addr, shutdown).await?;
    tracing::info!(%addr, %rate, "fx-venue listening");
    serve.await
}
