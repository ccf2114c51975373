//! fx-trade as a process: the runtime's consumer loop plus an audit endpoint.

use std::future::Future;
use std::sync::Arc;

use events::InterventionAction;
use runtime::admin::{audit_json, job_handler, walk_store, AdminError, Progress};
use runtime::intervention;
use runtime::{Runtime, RuntimeConfig};

use crate::{HttpVenue, SimulatedVenue, TradeConfig, TradeService, Venue};

/// Default data directory when `FX_DATA_DIR` is unset.
pub const DEFAULT_DATA_DIR: &str = ".fx/trade";
/// Default `/healthz` `/readyz` `/metrics` address.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:9102";

/// Runs fx-trade with the HTTP venue at `config.venue_url` when it is set, else with the
/// simulated venue configured by `config.venue`, in process.
pub async fn run(
    runtime_config: RuntimeConfig,
    config: TradeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> runtime::Result<()> {
    let venue = venue(&config)?;
    let rt = Runtime::start(TradeService::new(config, venue), runtime_config).await?;
    serve(rt, shutdown).await
}

/// The venue `config` asks for.
fn venue(config: &TradeConfig) -> runtime::Result<Arc<dyn Venue>> {
    match &config.venue_url {
        Some(url) => {
            let venue = HttpVenue::new(
                url,
                config.venue_timeout_ms,
                config.venue_connect_timeout_ms,
            )
            .map_err(|e| runtime::RuntimeError::Config {
                var: "FX_VENUE_URL",
                message: e.to_string(),
            })?;
            tracing::info!(
                url = %venue.base_url(),
                timeout_ms = config.venue_timeout_ms,
                connect_timeout_ms = config.venue_connect_timeout_ms,
                "venue: HTTP (FX_VENUE_URL)"
            );
            Ok(Arc::new(venue))
        }
        None => {
            tracing::info!(
                rate = %config.venue.rate,
                volatility_bps = config.venue.volatility_bps,
                "venue: simulated in process (FX_VENUE_URL unset)"
            );
            // It forgets its executions when this process ends: what it remembers begins now.
            let now_ms = runtime::system_clock()();
            Ok(Arc::new(
                SimulatedVenue::new(&config.venue).remembering_from(now_ms),
            ))
        }
    }
}

/// Runs an already started runtime (tests choose the venue, clock and faults).
pub async fn serve(
    rt: Runtime<TradeService>,
    shutdown: impl Future<Output = ()> + Send,
) -> runtime::Result<()> {
    let store = rt.store();
    let venue = rt.participant().venue();
    let partitioning = rt.partitioning();
    // The books, then the venue's executions: a reconciliation, not just a self-check. A long
    // job, reporting progress while it walks the store off the async workers.
    let audit = job_handler(move |progress: Progress| {
        let store = store.clone();
        let venue = venue.clone();
        async move {
            let (books, changed) =
                walk_store(store.clone(), progress, crate::audit_with_progress).await?;
            let venue_part = crate::reconcile(&store, &*venue, partitioning).await;
            let a = crate::combine(books, venue_part).map_err(AdminError::internal)?;
            audit_json(a, changed)
        }
    });
    let reemit = intervention::endpoint(
        rt.participant(),
        rt.store(),
        rt.clock(),
        InterventionAction::Reemit,
    );
    rt.run_with_admin(
        "fx-trade admin: audit (books and venue reconciliation), saga_reemit",
        vec![("audit", audit), (intervention::REEMIT_ENDPOINT, reemit)],
        shutdown,
    )
    .await
}
