//! fx-tracker: a passive read model of every saga of the FX exchange, projected from the stream.
//!
//! - It never publishes. It reads `fx.>` of stream `FX` from the start with an ordered consumer
//!   ([`consumer`]), decodes each message with [`events::Event::decode`] (undecodable ones are
//!   counted and skipped) and projects it with the pure [`apply`] ([`projection`]).
//! - Records, indices, aggregates and the last stream sequence are written to sled in one atomic
//!   batch per group of messages ([`store`]): a restart resumes after the last stored sequence,
//!   and an empty data dir rebuilds everything from the stream.
//! - Memory holds non-terminal sagas and the last `FX_TRACKER_RETAIN` finished ones
//!   ([`model`]); the rest is read from sled. Timeline bodies are not stored at all: the timeline
//!   keeps (kind, seq, time) and the saga page reads bodies back from the stream by sequence
//!   with a JetStream direct get.
//! - HTTP ([`http`]): `/` dashboard, `/sagas/{id}` timeline, `/api/sagas`, `/api/sagas/{id}`,
//!   `/api/stats`, `/metrics`, `/healthz`, `/readyz`. Read-only (GET only), on loopback by
//!   default; with `FX_TRACKER_TOKEN` set, the pages and the API require that bearer token.

#![warn(missing_docs)]

pub mod charts;
pub mod codec;
pub mod consumer;
pub mod diagram;
pub mod html;
pub mod http;
pub mod metrics;
pub mod model;
pub mod projection;
pub mod stats;
pub mod store;
pub mod view;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use runtime::{Clock, NatsConfig, StreamSettings};
use tokio::sync::watch;
use tracing::info;

pub use http::ApiToken;
pub use model::{Flag, ListQuery, Page, ReadModel, StreamMessage};
pub use projection::{
    apply, Applied, Reversal, ReversalStatus, SagaRecord, SagaState, TimelineEntry,
};
pub use stats::{Aggregates, Minute, Minutes, StatsView};
pub use view::{EventView, SagaView};

/// The service's name (NATS connection name, logs).
pub const SERVICE: &str = "fx-tracker";
/// How often the stream's last sequence is asked for (lag) and gauges are refreshed.
const WATCH_INTERVAL_MS: u64 = 1_000;

/// Errors of the tracker. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    /// Broker connection or provisioning failed at start-up: check `NATS_URL`, then restart.
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    /// A JetStream call failed (usually transient; the consumer retries by itself).
    #[error("JetStream {action}: {message}")]
    JetStream {
        /// What was being done.
        action: &'static str,
        /// The client's error.
        message: String,
    },
    /// The sled store failed: fatal; restart (the store resumes, or rebuild on an empty dir).
    #[error("store: {0}")]
    Store(#[from] sled::Error),
    /// Stored bytes did not decode: remove `FX_DATA_DIR` to rebuild from the stream.
    #[error("stored {key} does not decode: {message} (remove FX_DATA_DIR to rebuild)")]
    Corrupt {
        /// Which entry.
        key: String,
        /// What was wrong.
        message: String,
    },
    /// The data dir could not be created.
    #[error("data dir {path}: {message}")]
    DataDir {
        /// `FX_DATA_DIR`.
        path: String,
        /// The OS error.
        message: String,
    },
    /// A configuration variable is malformed.
    #[error("configuration: {var}: {message}")]
    Config {
        /// The variable.
        var: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A worker task panicked (a bug).
    #[error("task failed: {0}")]
    Task(String),
}

/// Settings of the tracker, from the environment ([`TrackerConfig::from_env`]).
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// Broker connection (`NATS_URL`, `NATS_USER`/`NATS_PASSWORD`, `NATS_CREDS`,
    /// `FX_CONNECT_TIMEOUT_MS`).
    pub nats: NatsConfig,
    /// Stream settings used when the tracker has to create `FX` itself
    /// (`FX_STREAM_REPLICAS`, `FX_STREAM_MAX_AGE_MS`).
    pub streams: StreamSettings,
    /// `FX_DATA_DIR` (default `./.fx/tracker`): the sled store. Empty or missing: rebuild.
    pub data_dir: PathBuf,
    /// `FX_HTTP_ADDR` (default `127.0.0.1:8080`): dashboard, API and metrics.
    pub http_addr: SocketAddr,
    /// `FX_STUCK_AFTER_MS` (default 60000): a non-terminal saga with no event for longer is STUCK.
    pub stuck_after_ms: u64,
    /// `FX_TRACKER_RETAIN` (default 10000): finished sagas kept in memory; older ones are read
    /// from sled.
    pub retain: usize,
    /// `FX_TRACKER_BATCH_MAX` (default 4096): most messages projected per sled write.
    pub batch_max: usize,
    /// `FX_TRACKER_TOKEN` (default unset): when set, the dashboard, the saga pages and `/api/*`
    /// require it (`Authorization: Bearer <token>`, or HTTP Basic with it as the password).
    pub token: Option<ApiToken>,
}

impl TrackerConfig {
    /// Default `FX_DATA_DIR`.
    pub const DEFAULT_DATA_DIR: &'static str = "./.fx/tracker";
    /// Default `FX_HTTP_ADDR`.
    pub const DEFAULT_HTTP_ADDR: &'static str = "127.0.0.1:8080";
    /// Default `FX_STUCK_AFTER_MS`.
    pub const DEFAULT_STUCK_AFTER_MS: u64 = 60_000;
    /// Default `FX_TRACKER_RETAIN`.
    pub const DEFAULT_RETAIN: usize = 10_000;
    /// Default `FX_TRACKER_BATCH_MAX`.
    pub const DEFAULT_BATCH_MAX: usize = 4096;

    /// Reads the settings from the environment.
    pub fn from_env() -> Result<TrackerConfig, TrackerError> {
        let addr = runtime::env_or("FX_HTTP_ADDR", Self::DEFAULT_HTTP_ADDR);
        let http_addr = addr.parse().map_err(|e| TrackerError::Config {
            var: "FX_HTTP_ADDR",
            message: format!("{addr:?} is not a socket address like 127.0.0.1:8080: {e}"),
        })?;
        let batch_max: usize = runtime::env_parse("FX_TRACKER_BATCH_MAX", Self::DEFAULT_BATCH_MAX)?;
        if batch_max == 0 {
            return Err(TrackerError::Config {
                var: "FX_TRACKER_BATCH_MAX",
                message: "must be at least 1".into(),
            });
        }
        Ok(TrackerConfig {
            nats: NatsConfig::from_env()?,
            streams: StreamSettings::from_env()?,
            data_dir: PathBuf::from(runtime::env_or("FX_DATA_DIR", Self::DEFAULT_DATA_DIR)),
            http_addr,
            stuck_after_ms: runtime::env_parse("FX_STUCK_AFTER_MS", Self::DEFAULT_STUCK_AFTER_MS)?,
            retain: runtime::env_parse("FX_TRACKER_RETAIN", Self::DEFAULT_RETAIN)?,
            batch_max,
            token: std::env::var("FX_TRACKER_TOKEN")
                .ok()
                .and_then(|t| ApiToken::new(t.trim())),
        })
    }

    /// A config for tests: the given broker and data dir, HTTP on a free loopback port.
    pub fn for_test(nats_url: &str, data_dir: impl Into<PathBuf>) -> TrackerConfig {
        TrackerConfig {
            nats: NatsConfig::with_url(nats_url),
            streams: StreamSettings::default(),
            data_dir: data_dir.into(),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stuck_after_ms: Self::DEFAULT_STUCK_AFTER_MS,
            retain: Self::DEFAULT_RETAIN,
            batch_max: Self::DEFAULT_BATCH_MAX,
            token: None,
        }
    }
}

/// A tracker connected to the broker with its store open and its HTTP port bound, ready to run.
pub struct Tracker {
    config: TrackerConfig,
    model: Arc<ReadModel>,
    stream: async_nats::jetstream::stream::Stream,
    dlq: async_nats::jetstream::stream::Stream,
    http_addr: SocketAddr,
    http: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
    health: runtime::telemetry::Health,
}

impl Tracker {
    /// Connects (with retry), makes sure `FX` exists, opens the store and binds HTTP.
    pub async fn start(config: TrackerConfig) -> Result<Tracker, TrackerError> {
        Tracker::start_with_clock(config, runtime::system_clock()).await
    }

    /// [`Tracker::start`] with an injected clock (STUCK is evaluated against it).
    pub async fn start_with_clock(
        config: TrackerConfig,
        clock: Clock,
    ) -> Result<Tracker, TrackerError> {
        let client = runtime::connect(&config.nats, SERVICE).await?;
        let js = runtime::broker::jetstream(client);
        // Creating the stream is not publishing: it only lets the tracker start before the
        // services. An existing stream is left as it is (drift is logged by provision).
        // Retried like the services do: on a cluster these calls time out while leaders are
        // elected, and the tracker should wait that out rather than exit.
        let timeout_ms = config.nats.connect_timeout_ms;
        runtime::broker::retry_setup("provisioning", timeout_ms, || {
            runtime::provision(&js, &config.streams)
        })
        .await?;
        let stream = runtime::broker::retry_setup("get stream FX", timeout_ms, || async {
            js.get_stream(runtime::STREAM)
                .await
                .map_err(|e| runtime::RuntimeError::js("get stream FX", e))
        })
        .await?;
        // FX_DLQ's depth is a gauge (`fx_tracker_dlq_messages`): the tracker only reads its info.
        let dlq = runtime::broker::retry_setup("get stream FX_DLQ", timeout_ms, || async {
            js.get_stream(runtime::DLQ_STREAM)
                .await
                .map_err(|e| runtime::RuntimeError::js("get stream FX_DLQ", e))
        })
        .await?;
        let model = Arc::new(ReadModel::open(
            &config.data_dir,
            config.retain,
            config.stuck_after_ms,
            clock,
        )?);
        let stream_last = stream.cached_info().state.last_sequence;
        if model.last_seq() > stream_last {
            // The stream was deleted and recreated (or this store belongs to another broker):
            // new messages reuse sequences the store already holds and would be skipped.
            tracing::error!(
                store_last_seq = model.last_seq(),
                stream_last_seq = stream_last,
                data_dir = %config.data_dir.display(),
                "the store is ahead of stream FX; stop the tracker and remove FX_DATA_DIR to rebuild"
            );
        }
        model.set_stream_last_seq(stream_last);
        crate::metrics::describe();
        let health = runtime::telemetry::Health::default();
        let router = http::router(
            model.clone(),
            Some(stream.clone()),
            Some(dlq.clone()),
            health.clone(),
            config.token.clone(),
        );
        let (http_addr, http) = runtime::telemetry::serve(config.http_addr, router).await?;
        if config.token.is_none() && !http_addr.ip().is_loopback() {
            tracing::warn!(
                %http_addr,
                "the dashboard and API are reachable beyond this host without a token: \
                 anyone who reaches them reads every saga; set FX_TRACKER_TOKEN"
            );
        }
        info!(%http_addr, data_dir = %config.data_dir.display(), last_seq = model.last_seq(), "fx-tracker started");
        Ok(Tracker {
            config,
            model,
            stream,
            dlq,
            http_addr,
            http: Box::pin(http),
            health,
        })
    }

    /// The read model (records, listings, stats), shared with the HTTP handlers.
    pub fn model(&self) -> Arc<ReadModel> {
        self.model.clone()
    }

    /// The address HTTP is served on (the bound port when configured with port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Consumes the stream and serves HTTP until `shutdown` resolves, then flushes the store.
    /// Returns early with the error if the store fails.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), TrackerError> {
        let (stop_tx, stop) = watch::channel(false);
        let mut consumer = tokio::spawn(consumer::consume(
            self.model.clone(),
            self.stream.clone(),
            self.config.batch_max,
            stop.clone(),
        ));
        let watcher = tokio::spawn(consumer::watch_stream(
            self.model.clone(),
            self.stream.clone(),
            self.dlq.clone(),
            Duration::from_millis(WATCH_INTERVAL_MS),
            stop.clone(),
        ));
        self.health.set_ready(true);
        let http = self.http;
        let mut consumer_done = false;
        let result = tokio::select! {
            _ = shutdown => Ok(()),
            r = &mut consumer => {
                consumer_done = true;
                match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(TrackerError::Task(e.to_string())),
                }
            }
            _ = http => Err(TrackerError::Task("http server stopped".into())),
        };
        self.health.set_ready(false);
        let _ = stop_tx.send(true);
        if !consumer_done {
            // Let the batch in hand finish so the flush below covers it.
            let _ = consumer.await;
        }
        let _ = watcher.await;
        self.model.flush().await?;
        crate::metrics::set_gauges(&self.model);
        info!(last_seq = self.model.last_seq(), "fx-tracker stopped");
        result
    }
}

/// Starts the tracker and runs it until `shutdown` resolves.
pub async fn run(
    config: TrackerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), TrackerError> {
    Tracker::start(config).await?.run(shutdown).await
}
