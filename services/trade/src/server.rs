//! fx-trade as a process: the runtime's consumer loop plus an audit endpoint.

use std::future::Future;
use std::sync::Arc;

use runtime::admin::{handler, serve_admin, AdminError, AdminRequest};
use runtime::{Runtime, RuntimeConfig};

use crate::{SimulatedVenue, TradeConfig, TradeService};

/// Default data directory when `FX_DATA_DIR` is unset.
pub const DEFAULT_DATA_DIR: &str = ".fx/trade";
/// Default `/healthz` `/readyz` `/metrics` address.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:9102";

/// Runs fx-trade with the simulated venue configured by `config.venue`.
pub async fn run(
    runtime_config: RuntimeConfig,
    config: TradeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> runtime::Result<()> {
    let venue = Arc::new(SimulatedVenue::new(&config.venue));
    let rt = Runtime::start(TradeService::new(config, venue), runtime_config).await?;
    serve(rt, shutdown).await
}

/// Runs an already started runtime (tests choose the venue, clock and faults).
pub async fn serve(
    rt: Runtime<TradeService>,
    shutdown: impl Future<Output = ()> + Send,
) -> runtime::Result<()> {
    let store = rt.store();
    let venue = rt.participant().venue();
    let partitioning = rt.partitioning();
    // The books, then the venue's executions: a reconciliation, not just a self-check.
    let audit = handler(move |_req: AdminRequest| {
        let store = store.clone();
        let venue = venue.clone();
        async move {
            let a = crate::report(&store, &*venue, partitioning)
                .await
                .map_err(AdminError::internal)?;
            serde_json::to_value(a).map_err(AdminError::internal)
        }
    });
    let admin = serve_admin(
        rt.client(),
        "trade",
        rt.partitioning(),
        "fx-trade admin: audit (books and venue reconciliation)",
        vec![("audit", audit)],
    )
    .await?;
    tokio::select! {
        r = rt.run(shutdown) => r,
        _ = admin => Ok(()),
    }
}
