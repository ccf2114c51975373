//! The participant runtime: consumer loop with group commit, relay, inbox pruning, HTTP.
//!
//! [`Runtime`] (this file) starts the service and runs its tasks until the stop; each task has
//! its own file: [`consumer`] (the pull consumer and its loop), [`pipeline`] (the prepares in
//! flight), [`commit`] (the group commit), [`relay`] (outbox to JetStream), and [`outcomes`]
//! (how each handled message is counted).

mod commit;
mod consumer;
mod outcomes;
mod pipeline;
mod relay;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, info_span, warn, Instrument};

use crate::broker;
use crate::telemetry::{self, Health};
use crate::{FaultHook, Participant, Result, RuntimeConfig, RuntimeError, Store};

pub use consumer::consumer_config;
pub use relay::publish_message;

/// Milliseconds since the Unix epoch; injectable so tests and the simulation control time.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    })
}

/// How often consumed event ids older than the retention are pruned.
const INBOX_PRUNE_INTERVAL_MS: u64 = 3_600_000;

/// The durable consumer name of a service.
pub fn durable_name(service: &str) -> String {
    format!("fx-{service}")
}

/// A participant wired to its store and the broker, ready to run.
pub struct Runtime<P: Participant> {
    participant: Arc<P>,
    config: RuntimeConfig,
    store: Arc<Store>,
    client: async_nats::Client,
    js: jetstream::Context,
    relay_js: jetstream::Context,
    clock: Clock,
    faults: FaultHook,
    health: Health,
    /// Tasks run beside the consumer (the admin server, timers), by name.
    tasks: Vec<(&'static str, SideTask)>,
}

/// A task run beside the consumer; it is not expected to end.
type SideTask = std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send>>;

impl<P: Participant> Runtime<P> {
    /// Connects (with retry), provisions the streams, and opens the store.
    pub async fn start(participant: P, config: RuntimeConfig) -> Result<Runtime<P>> {
        let name = durable_name(&config.partitioning.instance_name(participant.name()));
        let client = broker::connect(&config.nats, &name).await?;
        // The relay gets its own connection: heavy publishing with many PubAcks in flight has
        // stalled consumers that share a connection (nats.rs#1285).
        let relay_client = broker::connect(&config.nats, &format!("{name}-relay")).await?;
        let js = broker::jetstream(client.clone());
        broker::retry_setup("provisioning", config.nats.connect_timeout_ms, || {
            broker::provision(&js, &config.streams)
        })
        .await?;
        broker::retry_setup("partition check", config.nats.connect_timeout_ms, || {
            broker::check_partitions(&js, config.partitioning.count())
        })
        .await?;
        let store = Arc::new(Store::open_with(
            &config.data_dir,
            crate::StoreOptions {
                cache_mib: config.store_cache_mib,
                checkpoint_entries: config.checkpoint_entries,
            },
        )?);
        Ok(Runtime {
            participant: Arc::new(participant),
            config,
            store,
            client,
            js,
            relay_js: broker::jetstream(relay_client),
            clock: system_clock(),
            faults: crate::no_faults(),
            health: Health::default(),
            tasks: Vec::new(),
        })
    }

    /// Runs `task` (the admin server, a timer) beside the consumer for as long as the runtime
    /// runs. If it ends first, with an error or not, the runtime stops the graceful way (the
    /// batch in flight commits, flushes and is acked, the outbox drains) and then returns
    /// [`RuntimeError::TaskEnded`].
    pub fn with_task(
        mut self,
        name: &'static str,
        task: impl Future<Output = Result<()>> + Send + 'static,
    ) -> Self {
        self.tasks.push((name, Box::pin(task)));
        self
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Installs a fault hook (crash tests).
    pub fn with_faults(mut self, faults: FaultHook) -> Self {
        self.store.set_faults(faults.clone());
        self.faults = faults;
        self
    }

    /// The service's store, for admin operations and timers that run beside the consumer.
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// The broker connection (admin services, requests).
    pub fn client(&self) -> async_nats::Client {
        self.client.clone()
    }

    /// The participant.
    pub fn participant(&self) -> Arc<P> {
        self.participant.clone()
    }

    /// The clock in use.
    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }

    /// Which users this instance owns.
    pub fn partitioning(&self) -> events::Partitioning {
        self.config.partitioning
    }

    /// Readiness shared with the HTTP server.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Runs until `shutdown` resolves (then stops gracefully: finish the batch, flush, ack,
    /// drain the relay, within the deadline) or until a task fails (then returns the error at
    /// once, as a crash would, leaving unacked messages to the broker's redelivery).
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let (stop_consume_tx, stop_consume) = watch::channel(false);
        let (stop_relay_tx, stop_relay) = watch::channel(false);
        let http = self.serve_http().await?;
        let mut running = self.spawn_tasks(stop_consume, stop_relay);
        // A side task that ended: the graceful stop runs, then its end is the result.
        let (outcome, ended) = self.first_end(shutdown, &mut running).await;
        let result = match outcome {
            Ok(()) => {
                self.stop_gracefully(&mut running, &stop_consume_tx, &stop_relay_tx)
                    .await
            }
            Err(e) => Err(e),
        };
        running.abort_and_wait().await;
        if let Some(h) = http {
            h.abort();
        }
        self.health.set_ready(false);
        match ended {
            Some(e) => result.and(Err(e)),
            None => result,
        }
    }

    /// Starts the `/healthz` `/readyz` `/metrics` server, if an address is configured.
    /// (`&mut`, as the other steps of `run` that await: the runtime is `Send` but not `Sync`,
    /// since the tasks registered with it are not.)
    async fn serve_http(&mut self) -> Result<Option<JoinHandle<()>>> {
        let Some(addr) = self.config.http_addr else {
            return Ok(None);
        };
        let (local, fut) =
            telemetry::serve(addr, telemetry::standard_routes(self.health.clone())).await?;
        info!(%local, "http: /healthz /readyz /metrics");
        Ok(Some(tokio::spawn(fut)))
    }

    /// Spawns the runtime's own tasks: the consumer, the relay and the inbox pruner.
    fn spawn_tasks(
        &self,
        stop_consume: watch::Receiver<bool>,
        stop_relay: watch::Receiver<bool>,
    ) -> Running {
        let service = self.participant.name();
        let consumer = tokio::spawn(
            consumer::consume_loop(
                self.participant.clone(),
                self.config.clone(),
                self.store.clone(),
                self.js.clone(),
                self.clock.clone(),
                self.faults.clone(),
                self.health.clone(),
                stop_consume,
            )
            .instrument(info_span!("consumer", service)),
        );
        let relay = tokio::spawn(
            relay::relay_loop(
                service,
                self.store.clone(),
                self.relay_js.clone(),
                self.config.relay_window,
                self.clock.clone(),
                self.faults.clone(),
                stop_relay,
            )
            .instrument(info_span!("relay", service)),
        );
        let pruner = tokio::spawn(prune_loop(
            self.store.clone(),
            self.clock.clone(),
            self.config.inbox_retention_ms,
        ));
        Running {
            consumer: Some(consumer),
            relay: Some(relay),
            pruner,
        }
    }

    /// Runs the tasks registered with [`Runtime::with_task`] beside the runtime's own until the
    /// first end: the shutdown (`Ok`), the consumer or the relay failing (its error), or a
    /// registered task ending (`Ok`, with the [`RuntimeError::TaskEnded`] to report once the
    /// graceful stop has run). The registered tasks are dropped on return.
    async fn first_end(
        &mut self,
        shutdown: impl Future<Output = ()> + Send,
        running: &mut Running,
    ) -> (Result<()>, Option<RuntimeError>) {
        let service = self.participant.name();
        let mut side: futures::stream::FuturesUnordered<_> = self
            .tasks
            .drain(..)
            .map(|(name, task)| async move { (name, task.await) })
            .collect();
        let has_side = !side.is_empty();
        tokio::select! {
            _ = shutdown => (Ok(()), None),
            r = running.consumer.as_mut().expect("running") => {
                running.consumer = None;
                (flatten(r), None)
            }
            r = running.relay.as_mut().expect("running") => {
                running.relay = None;
                (flatten(r), None)
            }
            Some((task, r)) = side.next(), if has_side => {
                let reason = match r {
                    Ok(()) => "it returned".to_owned(),
                    Err(e) => e.to_string(),
                };
                error!(service, task, %reason, "a task beside the consumer ended; stopping gracefully");
                (Ok(()), Some(RuntimeError::TaskEnded { task, reason }))
            }
        }
    }

    /// The graceful stop, within `FX_SHUTDOWN_DEADLINE_MS`: the consumer stops pulling,
    /// finishes and commits what it started; then the relay drains the outbox with what time
    /// is left (what it does not publish, it publishes at the next start).
    async fn stop_gracefully(
        &mut self,
        running: &mut Running,
        stop_consume: &watch::Sender<bool>,
        stop_relay: &watch::Sender<bool>,
    ) -> Result<()> {
        let service = self.participant.name();
        info!(
            service,
            "stopping: finishing the batch, then draining the outbox"
        );
        let deadline = Duration::from_millis(self.config.shutdown_deadline_ms);
        let started = Instant::now();
        let _ = stop_consume.send(true);
        let consumed = join_within(&mut running.consumer, deadline)
            .await
            .unwrap_or_else(|_| {
                Err(RuntimeError::StopTimedOut {
                    deadline_ms: self.config.shutdown_deadline_ms,
                })
            });
        let _ = stop_relay.send(true);
        let left = deadline.saturating_sub(started.elapsed());
        let drained = join_within(&mut running.relay, left)
            .await
            .unwrap_or_else(|_| {
                warn!(
                    service,
                    "outbox not drained before the deadline; it resumes at next start"
                );
                Ok(())
            });
        consumed.and(drained)
    }
}

/// The runtime's own tasks. Each handle is awaited at most once; `None` once it has completed.
struct Running {
    consumer: Option<JoinHandle<Result<()>>>,
    relay: Option<JoinHandle<Result<()>>>,
    pruner: JoinHandle<Result<()>>,
}

impl Running {
    /// Aborts what still runs and waits for it to drop its store handle, so that the caller can
    /// reopen the store (a restart in the same process, as the crash tests do).
    async fn abort_and_wait(self) {
        for task in [self.consumer, self.relay, Some(self.pruner)]
            .into_iter()
            .flatten()
        {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Waits up to `limit` for a task of the runtime to end, and takes it out of its slot if it
/// did (a handle is awaited at most once); an empty slot has ended already. `Err` when the
/// task is still running.
async fn join_within(
    slot: &mut Option<JoinHandle<Result<()>>>,
    limit: Duration,
) -> std::result::Result<Result<()>, tokio::time::error::Elapsed> {
    let Some(task) = slot.as_mut() else {
        return Ok(Ok(()));
    };
    let r = tokio::time::timeout(limit, task).await?;
    *slot = None;
    Ok(flatten(r))
}

fn flatten(r: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    match r {
        Ok(r) => r,
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(RuntimeError::TaskPanicked(e.to_string())),
    }
}

/// Forgets consumed event ids older than the retention, every [`INBOX_PRUNE_INTERVAL_MS`].
async fn prune_loop(store: Arc<Store>, clock: Clock, retention_ms: u64) -> Result<()> {
    let mut every = tokio::time::interval(Duration::from_millis(INBOX_PRUNE_INTERVAL_MS));
    loop {
        every.tick().await;
        let before = clock().saturating_sub(retention_ms);
        match store.prune_inbox(before) {
            Ok(0) => {}
            Ok(n) => info!(pruned = n, "inbox pruned"),
            Err(e) => warn!(error = %e, "inbox pruning failed"),
        }
    }
}
