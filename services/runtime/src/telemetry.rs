//! Logs, metrics and the small HTTP server every service exposes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::{Result, RuntimeError};

/// Metric names, in one place so dashboards and docs can rely on them.
pub mod names {
    /// Counter: messages consumed, by `service` and `outcome`.
    pub const CONSUMED: &str = "fx_consumed_total";
    /// Counter: events published by the relay, by `service`.
    pub const PUBLISHED: &str = "fx_published_total";
    /// Counter: deliveries recognized as duplicates by the inbox, by `service`.
    pub const DUPLICATES: &str = "fx_duplicates_total";
    /// Counter: messages sent to FX_DLQ, by `service` and `reason`.
    pub const DEAD_LETTERED: &str = "fx_dead_lettered_total";
    /// Counter: messages delivered more than once by the broker, by `service`.
    pub const REDELIVERIES: &str = "fx_redeliveries_total";
    /// Counter: publish attempts that failed and will be retried, by `service`.
    pub const PUBLISH_RETRIES: &str = "fx_publish_retries_total";
    /// Gauge: outbox entries waiting, by `service`.
    pub const OUTBOX_DEPTH: &str = "fx_outbox_depth";
    /// Gauge: age of the oldest outbox entry in seconds, by `service`.
    pub const OUTBOX_OLDEST_AGE: &str = "fx_outbox_oldest_age_seconds";
    /// Gauge: messages on the stream this service's durable consumer has yet to receive
    /// (the broker's `num_pending`), by `service` and `consumer`.
    pub const CONSUMER_PENDING: &str = "fx_consumer_pending_messages";
    /// Gauge: messages delivered to the consumer and not acked yet (`num_ack_pending`), by
    /// `service` and `consumer`.
    pub const CONSUMER_ACK_PENDING: &str = "fx_consumer_ack_pending_messages";
    /// Gauge: messages the broker redelivered that are not acked yet (`num_redelivered`), by
    /// `service` and `consumer`.
    pub const CONSUMER_REDELIVERED: &str = "fx_consumer_redelivered_messages";
    /// Histogram: messages per group commit, by `service`.
    pub const BATCH_SIZE: &str = "fx_batch_size";
    /// Histogram: seconds to handle one message (decode, prepare, transaction), by `service`.
    pub const HANDLER_SECONDS: &str = "fx_handler_seconds";
    /// Histogram: seconds of one group-commit flush, by `service`.
    pub const FLUSH_SECONDS: &str = "fx_flush_seconds";
}

/// Installs the tracing subscriber once; `RUST_LOG` sets the filter (default `info`).
pub fn init_tracing() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(false)
            .try_init();
    });
}

/// Sets up a service process's telemetry: logs ([`init_tracing`]) and, when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the export of its spans with `service.name` =
/// `service_name` ([`crate::trace`]). Keep the guard until the process stops: dropping it
/// flushes the spans not exported yet.
pub fn init(service_name: &'static str) -> crate::trace::TraceGuard {
    init_tracing();
    crate::trace::install(service_name)
}

/// The process-wide Prometheus recorder (installed on first use; tests that run several
/// services in one process share it and tell them apart by the `service` label).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, 300.0,
                ])
                .expect("bucket list is not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. by a test); ours still renders
            // whatever was recorded through it.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Liveness and readiness shared with the HTTP server.
#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    /// Marks the service ready (consuming) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// True once the consumer runs.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// The standard routes: `/healthz` (the process answers), `/readyz` (consuming), `/metrics`.
pub fn standard_routes(health: Health) -> Router {
    let handle = prometheus();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let health = health.clone();
                async move {
                    if health.is_ready() {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                    }
                }
            }),
        )
        .route("/metrics", get(move || std::future::ready(handle.render())))
}

/// Binds `addr` and serves `router` until the returned future is dropped.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| RuntimeError::Http {
            addr: addr.to_string(),
            message: e.to_string(),
        })?;
    let local = listener.local_addr().map_err(|e| RuntimeError::Http {
        addr: addr.to_string(),
        message: e.to_string(),
    })?;
    let fut = async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "http server stopped");
        }
    };
    Ok((local, fut))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM: the graceful-stop trigger of every binary.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("stop signal received");
}
