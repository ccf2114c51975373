//! The participant runtime: consumer loop with group commit, relay, inbox pruning, HTTP.

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind};
use events::{Event, EventKind, SagaId};
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::broker::{self, DeadLetter};
use crate::core;
use crate::telemetry::{self, names, Health};
use crate::{
    FaultAction, FaultHook, FaultPoint, Handled, OutboxEntry, Participant, Result, RuntimeConfig,
    RuntimeError, Store,
};

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
/// The broker's idle heartbeat on the pull stream; two missed ones surface as an error item and
/// the loop pulls again. On a cluster a pull request can be lost while a consumer's leader
/// moves, and the consumer then idles until this notices: 5 s showed as 10 s stalls in the
/// cluster benchmark, so 1 s (one small message a second per idle consumer).
const PULL_HEARTBEAT_MS: u64 = 1_000;
/// How long one pull request waits for messages before the client issues the next.
const PULL_EXPIRES_MS: u64 = 30_000;
/// Most messages the broker lets this consumer have unacked: a few batches in flight.
const MAX_ACK_PENDING: i64 = 20_000;
/// Most often the outbox depth and age gauges are refreshed while the relay is busy.
const OUTBOX_GAUGE_INTERVAL_MS: u64 = 1_000;
/// How often a service asks the broker about its own durable consumer, for the consumer
/// gauges (one small request a second, like the pull heartbeat).
const CONSUMER_GAUGE_INTERVAL_MS: u64 = 1_000;
/// Relay retry policy: first and largest delay after a failed publish.
const RELAY_RETRY_MIN_MS: u64 = 50;
const RELAY_RETRY_MAX_MS: u64 = 5_000;

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
        let store = Arc::new(Store::open_with_cache(
            &config.data_dir,
            config.store_cache_mib,
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
        let service = self.participant.name();
        let (stop_consume_tx, stop_consume) = watch::channel(false);
        let (stop_relay_tx, stop_relay) = watch::channel(false);

        let http = match self.config.http_addr {
            Some(addr) => {
                let (local, fut) =
                    telemetry::serve(addr, telemetry::standard_routes(self.health.clone())).await?;
                info!(%local, "http: /healthz /readyz /metrics");
                Some(tokio::spawn(fut))
            }
            None => None,
        };

        let consumer = tokio::spawn(
            consume_loop(
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
            relay_loop(
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

        // Each task handle is awaited at most once; `None` once it has completed.
        let mut consumer = Some(consumer);
        let mut relay = Some(relay);
        let mut side: futures::stream::FuturesUnordered<_> = self
            .tasks
            .drain(..)
            .map(|(name, task)| async move { (name, task.await) })
            .collect();
        let has_side = !side.is_empty();
        // A side task that ended: the graceful stop runs, then its end is the result.
        let mut ended: Option<RuntimeError> = None;
        let outcome = tokio::select! {
            _ = shutdown => Ok(()),
            r = consumer.as_mut().expect("running") => { consumer = None; flatten(r) }
            r = relay.as_mut().expect("running") => { relay = None; flatten(r) }
            Some((task, r)) = side.next(), if has_side => {
                let reason = match r {
                    Ok(()) => "it returned".to_owned(),
                    Err(e) => e.to_string(),
                };
                error!(service, task, %reason, "a task beside the consumer ended; stopping gracefully");
                ended = Some(RuntimeError::TaskEnded { task, reason });
                Ok(())
            }
        };
        drop(side);
        let result = match outcome {
            Ok(()) => {
                info!(
                    service,
                    "stopping: finishing the batch, then draining the outbox"
                );
                let deadline = Duration::from_millis(self.config.shutdown_deadline_ms);
                let started = Instant::now();
                let _ = stop_consume_tx.send(true);
                let consumed = match consumer.as_mut() {
                    None => Ok(()),
                    Some(task) => match tokio::time::timeout(deadline, task).await {
                        Ok(r) => {
                            consumer = None;
                            flatten(r)
                        }
                        Err(_) => Err(RuntimeError::StopTimedOut {
                            deadline_ms: self.config.shutdown_deadline_ms,
                        }),
                    },
                };
                let _ = stop_relay_tx.send(true);
                let left = deadline.saturating_sub(started.elapsed());
                let drained = match relay.as_mut() {
                    None => Ok(()),
                    Some(task) => {
                        match tokio::time::timeout(left, task).await {
                            Ok(r) => {
                                relay = None;
                                flatten(r)
                            }
                            Err(_) => {
                                warn!(service, "outbox not drained before the deadline; it resumes at next start");
                                Ok(())
                            }
                        }
                    }
                };
                consumed.and(drained)
            }
            Err(e) => Err(e),
        };
        // Abort what still runs and wait for it to drop its store handle, so that the caller
        // can reopen the store (a restart in the same process, as the crash tests do).
        for task in [consumer, relay, Some(pruner)].into_iter().flatten() {
            task.abort();
            let _ = task.await;
        }
        if let Some(h) = http {
            h.abort();
        }
        self.health.set_ready(false);
        match ended {
            Some(e) => result.and(Err(e)),
            None => result,
        }
    }
}

fn flatten(r: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    match r {
        Ok(r) => r,
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(RuntimeError::TaskPanicked(e.to_string())),
    }
}

/// The durable pull consumer's configuration, every option set on purpose: `fx-<service>`
/// filtered to the kinds it reacts to, or `fx-<service>-p<k>` filtered to those kinds in
/// partition `k`.
pub fn consumer_config(
    service: &str,
    partitioning: events::Partitioning,
    kinds: &[EventKind],
    ack_wait: Duration,
) -> pull::Config {
    let name = durable_name(&partitioning.instance_name(service));
    pull::Config {
        durable_name: Some(name.clone()),
        name: Some(name),
        description: Some(if partitioning.is_partitioned() {
            format!("fx-{service}, {partitioning}: the events it reacts to")
        } else {
            format!("fx-{service}: the events it reacts to")
        }),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait,
        // No finite max_deliver: a good event must never be dropped by the broker. A poison
        // message is dead-lettered by the service itself.
        max_deliver: -1,
        filter_subject: String::new(),
        filter_subjects: kinds.iter().map(|&k| partitioning.filter(k)).collect(),
        replay_policy: ReplayPolicy::Instant,
        rate_limit: 0,
        sample_frequency: 0,
        max_waiting: 512,
        max_ack_pending: MAX_ACK_PENDING,
        headers_only: false,
        max_batch: 0,
        max_bytes: 0,
        max_expires: Duration::ZERO,
        inactive_threshold: Duration::ZERO,
        num_replicas: 0,
        memory_storage: false,
        // The remaining options (backoff, metadata, pause, priority groups) stay at the
        // server's defaults: consumer backoff does not apply to NAKs, which carry their delay.
        ..pull::Config::default()
    }
}

#[allow(clippy::too_many_arguments)]
async fn consume_loop<P: Participant>(
    participant: Arc<P>,
    config: RuntimeConfig,
    store: Arc<Store>,
    js: jetstream::Context,
    clock: Clock,
    faults: FaultHook,
    health: Health,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let service = participant.name();
    let wanted = consumer_config(
        service,
        config.partitioning,
        participant.consumes(),
        config.ack_wait(),
    );
    let consumer: jetstream::consumer::PullConsumer = broker::retry_setup(
        "consumer creation",
        config.nats.connect_timeout_ms,
        || async {
            js.get_stream(broker::STREAM)
                .await
                .map_err(|e| RuntimeError::js("get stream FX", e))?
                .create_consumer(wanted.clone())
                .await
                .map_err(|e| RuntimeError::js("create consumer", e))
        },
    )
    .await?;
    let _gauges = AbortOnDrop(tokio::spawn(consumer_gauges(service, consumer.clone())));
    let batch_max = config.batch_max.max(1);
    let mut pipe = Pipeline::new(
        participant.clone(),
        store.clone(),
        clock.clone(),
        batch_max,
        participant.prepare_concurrency().max(1),
    );
    'connect: loop {
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(batch_max)
            .heartbeat(Duration::from_millis(PULL_HEARTBEAT_MS))
            .expires(Duration::from_millis(PULL_EXPIRES_MS))
            .messages()
            .await
            .map_err(|e| RuntimeError::js("pull", e))?;
        health.set_ready(true);
        info!(service, "consuming");
        loop {
            // Every prepare that finished meanwhile (during the last flush, say) joins the next
            // group, so groups grow with the load instead of committing one answer at a time.
            pipe.collect_finished();
            pipe.admit_deferred();
            // Group commit sized by what is ready: admit what has already arrived, no waiting.
            while pipe.can_admit() {
                match messages.next().now_or_never() {
                    Some(item) => {
                        if let Pulled::Reconnect = pipe.pulled(service, item) {
                            continue 'connect;
                        }
                    }
                    None => break,
                }
            }
            if pipe.has_ready() {
                let group = pipe.take_ready();
                commit_group(&*participant, &store, &js, &faults, group).await?;
                continue;
            }
            // Nothing to commit yet: wait for a message, a prepare to finish, or the stop.
            let can_admit = pipe.can_admit();
            let running = pipe.running();
            let woke = tokio::select! {
                biased;
                _ = stop.changed() => Woke::Stop,
                done = pipe.tasks.join_next_with_id(), if running > 0 => Woke::Prepared(done),
                m = messages.next(), if can_admit => Woke::Message(m),
            };
            match woke {
                Woke::Stop => {
                    // Finish what was started: every running prepare, then its commit. What
                    // was deferred stays unacked and is redelivered to the next instance.
                    while pipe.running() > 0 || pipe.has_ready() {
                        if let Some(done) = pipe.tasks.join_next_with_id().await {
                            pipe.finished(done);
                        }
                        if pipe.has_ready() {
                            let group = pipe.take_ready();
                            commit_group(&*participant, &store, &js, &faults, group).await?;
                        }
                    }
                    return Ok(());
                }
                Woke::Prepared(Some(done)) => pipe.finished(done),
                Woke::Prepared(None) => {}
                Woke::Message(item) => {
                    if let Pulled::Reconnect = pipe.pulled(service, item) {
                        continue 'connect;
                    }
                }
            }
        }
    }
}

/// Aborts the task when dropped: a helper task that lives as long as the loop that spawned it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sets the consumer gauges (pending, ack pending, redelivered) from the broker's view of
/// this service's durable consumer, every [`CONSUMER_GAUGE_INTERVAL_MS`]. While the broker
/// does not answer they keep their last values; the broker's own view of a stopped service is
/// `nats consumer report FX`.
async fn consumer_gauges(service: &'static str, consumer: jetstream::consumer::PullConsumer) {
    let name = consumer.cached_info().name.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(CONSUMER_GAUGE_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match consumer.get_info().await {
            Ok(info) => {
                let labels = [("service", service.to_owned()), ("consumer", name.clone())];
                metrics::gauge!(names::CONSUMER_PENDING, &labels).set(info.num_pending as f64);
                metrics::gauge!(names::CONSUMER_ACK_PENDING, &labels)
                    .set(info.num_ack_pending as f64);
                metrics::gauge!(names::CONSUMER_REDELIVERED, &labels)
                    .set(info.num_redelivered as f64);
            }
            Err(e) => tracing::debug!(service, error = %e, "consumer info"),
        }
    }
}

type PrepareResult<Pr> =
    std::result::Result<(tokio::task::Id, (Event, Pr)), tokio::task::JoinError>;

/// What woke the waiting consumer. Lives on the stack for one turn of the loop, so the size of
/// a message inside it costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Woke<Pr> {
    Stop,
    Prepared(Option<PrepareResult<Pr>>),
    Message(Option<std::result::Result<jetstream::Message, pull::MessagesError>>),
}

enum Pulled {
    Continue,
    /// The pull stream is gone or lost its heartbeats: pull again (in-flight messages stay
    /// valid; their acks go to their own reply subjects).
    Reconnect,
}

/// Where one admitted message stands.
enum Stage<Pr> {
    /// Decoded and prepared, or undecodable: ready to commit.
    Ready(std::result::Result<(Event, Pr), events::DecodeError>),
    /// Its prepare is still running as this task (a venue call).
    Running(tokio::task::Id),
    /// Its prepare task panicked: the message is nak'ed, loudly.
    Panicked(String),
}

struct Slot<Pr> {
    msg: jetstream::Message,
    saga: Option<SagaId>,
    now_ms: u64,
    started: Instant,
    stage: Stage<Pr>,
}

impl<Pr> Slot<Pr> {
    /// The message as the core handles it; only ready slots are committed.
    fn input(&self) -> core::Input<'_, Pr> {
        match &self.stage {
            Stage::Ready(Ok((event, prepared))) => core::Input::Decoded { event, prepared },
            Stage::Ready(Err(error)) => core::Input::Undecodable {
                subject: self.msg.subject.as_str(),
                payload: &self.msg.payload,
                error,
            },
            Stage::Panicked(e) => core::Input::PreparePanicked(e),
            Stage::Running(_) => unreachable!("only ready slots are committed"),
        }
    }
}

/// The consumer's pipeline: messages are admitted in delivery order and their `prepare`s start
/// at once, concurrently (at most `max_running` at a time); whatever has finished preparing is
/// committed as one group, in delivery order, while slower prepares keep running. A call that
/// hangs until its deadline therefore holds back its own saga only.
///
/// Two messages of one saga are never in the pipeline together: the second waits (deferred)
/// until the first has committed, so its `prepare` reads what the first wrote (fx-trade never
/// asks the venue twice for one saga).
struct Pipeline<P: Participant> {
    participant: Arc<P>,
    store: Arc<Store>,
    clock: Clock,
    batch_max: usize,
    max_running: usize,
    /// Admitted messages in delivery order.
    slots: std::collections::VecDeque<Slot<P::Prepared>>,
    /// Messages waiting for an earlier message of their saga to commit, in delivery order.
    deferred: std::collections::VecDeque<(SagaId, jetstream::Message)>,
    /// Sagas with a message in `slots`.
    sagas: std::collections::HashMap<SagaId, usize>,
    tasks: tokio::task::JoinSet<(Event, P::Prepared)>,
}

impl<P: Participant> Pipeline<P> {
    fn new(
        participant: Arc<P>,
        store: Arc<Store>,
        clock: Clock,
        batch_max: usize,
        max_running: usize,
    ) -> Self {
        Pipeline {
            participant,
            store,
            clock,
            batch_max,
            max_running,
            slots: Default::default(),
            deferred: Default::default(),
            sagas: Default::default(),
            tasks: tokio::task::JoinSet::new(),
        }
    }

    fn running(&self) -> usize {
        self.tasks.len()
    }

    fn ready(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| !matches!(s.stage, Stage::Running(_)))
            .count()
    }

    fn has_ready(&self) -> bool {
        self.slots
            .iter()
            .any(|s| !matches!(s.stage, Stage::Running(_)))
    }

    /// Room for one more message: a free prepare slot, a group not yet full, and a bounded
    /// number of deferred messages.
    fn can_admit(&self) -> bool {
        self.running() < self.max_running
            && self.ready() < self.batch_max
            && self.deferred.len() < self.batch_max
    }

    /// Takes one item of the pull stream.
    fn pulled(
        &mut self,
        service: &'static str,
        item: Option<std::result::Result<jetstream::Message, pull::MessagesError>>,
    ) -> Pulled {
        match item {
            Some(Ok(m)) => {
                self.admit(m);
                Pulled::Continue
            }
            Some(Err(e)) if e.kind() == pull::MessagesErrorKind::MissingHeartbeat => {
                // The pull request is gone (on a cluster: the consumer's leader moved or its
                // node died, or the request was routed before the new leader's interest
                // arrived). The client would only re-pull once it expires, so pull again now.
                warn!(service, error = %e, "pull stream: missed heartbeats; pulling again");
                Pulled::Reconnect
            }
            Some(Err(e)) => {
                // Other pull errors arrive as items; the stream goes on.
                warn!(service, error = %e, "pull stream");
                Pulled::Continue
            }
            None => {
                warn!(service, "pull stream ended; starting a new one");
                Pulled::Reconnect
            }
        }
    }

    /// Admits a message: decodes it and starts its prepare, or defers it behind its saga.
    fn admit(&mut self, msg: jetstream::Message) {
        let started = Instant::now();
        let event = match Event::decode(msg.subject.as_str(), &msg.payload) {
            Ok(event) => event,
            Err(err) => {
                let now_ms = (self.clock)();
                self.slots.push_back(Slot {
                    msg,
                    saga: None,
                    now_ms,
                    started,
                    stage: Stage::Ready(Err(err)),
                });
                return;
            }
        };
        let saga = event.saga_id();
        if self.sagas.contains_key(&saga) || self.deferred.iter().any(|(s, _)| *s == saga) {
            self.deferred.push_back((saga, msg));
            return;
        }
        self.start(msg, event, started);
    }

    fn start(&mut self, msg: jetstream::Message, event: Event, started: Instant) {
        let saga = event.saga_id();
        let now_ms = (self.clock)();
        let participant = self.participant.clone();
        let store = self.store.clone();
        let span = info_span!("prepare", saga_id = %saga, kind = %event.kind());
        let mut prepare: std::pin::Pin<Box<dyn Future<Output = (Event, P::Prepared)> + Send>> =
            Box::pin(
                async move {
                    let prepared = participant.prepare(&*store, &event, now_ms).await;
                    (event, prepared)
                }
                .instrument(span),
            );
        // Most prepares finish at once (no IO, or the record settles the event): poll once
        // here and spawn only what has to wait. The task's first poll registers its own waker.
        let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
        let stage = match prepare.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(done) => Stage::Ready(Ok(done)),
            std::task::Poll::Pending => Stage::Running(self.tasks.spawn(prepare).id()),
        };
        *self.sagas.entry(saga).or_default() += 1;
        self.slots.push_back(Slot {
            msg,
            saga: Some(saga),
            now_ms,
            started,
            stage,
        });
    }

    /// Starts the deferred messages whose saga has left the pipeline, in delivery order.
    fn admit_deferred(&mut self) {
        let mut i = 0;
        while i < self.deferred.len() && self.running() < self.max_running {
            let saga = self.deferred[i].0;
            let blocked = self.sagas.contains_key(&saga)
                || self.deferred.iter().take(i).any(|(s, _)| *s == saga);
            if blocked {
                i += 1;
                continue;
            }
            let (_, msg) = self.deferred.remove(i).expect("index in range");
            // Decoded once already; a message that decoded then decodes again.
            match Event::decode(msg.subject.as_str(), &msg.payload) {
                Ok(event) => self.start(msg, event, Instant::now()),
                Err(_) => unreachable!("a deferred message decoded when it was admitted"),
            }
        }
    }

    /// Books every prepare task that has finished, without waiting.
    fn collect_finished(&mut self) {
        while let Some(done) = self.tasks.try_join_next_with_id() {
            self.finished(done);
        }
    }

    /// Books a finished prepare task on its slot.
    fn finished(&mut self, done: PrepareResult<P::Prepared>) {
        let (id, stage) = match done {
            Ok((id, prepared)) => (id, Stage::Ready(Ok(prepared))),
            Err(e) => (e.id(), Stage::Panicked(e.to_string())),
        };
        if let Some(slot) = self
            .slots
            .iter_mut()
            .find(|s| matches!(s.stage, Stage::Running(t) if t == id))
        {
            slot.stage = stage;
        }
    }

    /// Removes the slots that are ready, in delivery order, up to a group's size.
    fn take_ready(&mut self) -> Vec<Slot<P::Prepared>> {
        let mut group = Vec::new();
        let mut kept = std::collections::VecDeque::with_capacity(self.slots.len());
        for slot in self.slots.drain(..) {
            if group.len() < self.batch_max && !matches!(slot.stage, Stage::Running(_)) {
                group.push(slot);
            } else {
                kept.push_back(slot);
            }
        }
        self.slots = kept;
        for slot in &group {
            if let Some(saga) = slot.saga {
                if let Some(n) = self.sagas.get_mut(&saga) {
                    *n -= 1;
                    if *n == 0 {
                        self.sagas.remove(&saga);
                    }
                }
            }
        }
        group
    }
}

/// Commits one group through the core: every ready message in one transaction (each rolls
/// back alone), one flush, then dead letters and acks.
async fn commit_group<P: Participant>(
    participant: &P,
    store: &Store,
    js: &jetstream::Context,
    faults: &FaultHook,
    group: Vec<Slot<P::Prepared>>,
) -> Result<()> {
    let service = participant.name();
    metrics::histogram!(names::BATCH_SIZE, "service" => service).record(group.len() as f64);
    let run: Vec<(core::Input<'_, P::Prepared>, u64)> = group
        .iter()
        .map(|slot| (slot.input(), slot.now_ms))
        .collect();
    let outcomes = {
        let _span = info_span!("commit", service, messages = group.len()).entered();
        core::commit_run(participant, store, &run)
    };
    let mut answers = core::Group::default();
    let mut spans = crate::trace::GroupSpans::new(service);
    for (i, (slot, outcome)) in group.iter().zip(outcomes).enumerate() {
        let (stream_seq, delivered) = delivery_info(&slot.msg);
        if delivered > 1 {
            metrics::counter!(names::REDELIVERIES, "service" => service).increment(1);
        }
        count_outcome(service, &outcome, stream_seq);
        let event = match &slot.stage {
            Stage::Ready(Ok((event, _))) => Some(event),
            _ => None,
        };
        let (label, committed) = outcome_label(&outcome);
        let (headers, subject) = (slot.msg.headers.as_ref(), slot.msg.subject.as_str());
        spans.handled(headers, subject, event, slot.started, label, committed);
        metrics::histogram!(names::HANDLER_SECONDS, "service" => service)
            .record(slot.started.elapsed().as_secs_f64());
        // Never anything to send before the flush (the core holds the answers).
        let now = answers.handled(i, core::answer(&outcome, delivered));
        debug_assert!(now.is_empty());
    }
    // Group commit: one flush makes every transaction of the group durable and releases their
    // outbox entries to the relay; only then may the broker forget the messages.
    let flush_started = Instant::now();
    store.flush().await?;
    metrics::histogram!(names::FLUSH_SECONDS, "service" => service)
        .record(flush_started.elapsed().as_secs_f64());
    spans.end();
    if faults(FaultPoint::AfterCommitBeforeAck) == FaultAction::Crash {
        return Err(RuntimeError::Crashed(FaultPoint::AfterCommitBeforeAck));
    }
    for (i, answer) in answers.flushed() {
        let msg = &group[i].msg;
        let kind = match answer {
            core::Answer::Ack => AckKind::Ack,
            core::Answer::Nak { delay_ms } => AckKind::Nak(Some(Duration::from_millis(delay_ms))),
            core::Answer::DeadLetter { reason, message } => {
                dead_letter(service, js, msg, reason, &message).await
            }
        };
        // A lost ack only means a redelivery, which the inbox and per-saga state absorb.
        if let Err(e) = msg.ack_with(kind).await {
            debug!(service, error = %e, "ack not sent");
        }
    }
    Ok(())
}

/// The message's stream sequence and delivery count (0 and 1 when it has no JetStream info).
fn delivery_info(msg: &jetstream::Message) -> (u64, u64) {
    match msg.info() {
        Ok(info) => (info.stream_sequence, info.delivered.max(1) as u64),
        Err(_) => (0, 1),
    }
}

/// Stores `msg` whole in `FX_DLQ`; the ack to send after: term, or a nak when the dead letter
/// could not be stored (the message stays on the stream and is tried again later).
async fn dead_letter(
    service: &'static str,
    js: &jetstream::Context,
    msg: &jetstream::Message,
    reason: &'static str,
    message: &str,
) -> AckKind {
    let (stream_seq, _) = delivery_info(msg);
    warn!(service, reason, %message, subject = %msg.subject, stream_seq, "dead-lettering");
    let letter = DeadLetter {
        service,
        reason,
        message,
        subject: msg.subject.as_str(),
        headers: msg.headers.as_ref(),
        payload: msg.payload.clone(),
        stream_seq,
    };
    match broker::publish_dead_letter(js, &letter).await {
        Ok(_) => {
            count(service, "dead_lettered");
            metrics::counter!(names::DEAD_LETTERED, "service" => service, "reason" => reason)
                .increment(1);
            AckKind::Term
        }
        Err(e) => {
            warn!(service, error = %e, "dead letter not stored; will retry");
            AckKind::Nak(Some(Duration::from_millis(core::store_failed_nak_ms())))
        }
    }
}

/// Counts one message's outcome, and logs a failure: a store failure is transient, anything
/// else is a bug; either way the message is retried, not lost.
fn count_outcome(service: &'static str, outcome: &Result<core::Outcome>, stream_seq: u64) {
    use core::Outcome as O;
    match outcome {
        Ok(O::Handled(Handled::Applied)) => count(service, "applied"),
        Ok(O::Handled(Handled::Ignored)) => count(service, "ignored"),
        Ok(O::Duplicate) => {
            count(service, "duplicate");
            metrics::counter!(names::DUPLICATES, "service" => service).increment(1);
        }
        Ok(O::Handled(Handled::RetryAfter { .. })) => count(service, "retry"),
        Ok(O::Handled(Handled::DeadLetter { .. })) => {}
        Err(e) => {
            count(service, "error");
            match e {
                RuntimeError::StoreFailed(_) => {
                    warn!(service, error = %e, stream_seq, "transient failure")
                }
                _ => {
                    error!(service, error = %e, stream_seq, "handler failed; the event will be retried")
                }
            }
        }
    }
}

/// A handling's label on its span, and whether its effects are in the group's transaction.
fn outcome_label(outcome: &Result<core::Outcome>) -> (&'static str, bool) {
    use core::Outcome as O;
    match outcome {
        Ok(O::Handled(Handled::Applied)) => ("applied", true),
        Ok(O::Handled(Handled::Ignored)) => ("ignored", true),
        Ok(O::Duplicate) => ("duplicate", false),
        Ok(O::Handled(Handled::RetryAfter { .. })) => ("retry", false),
        Ok(O::Handled(Handled::DeadLetter { .. })) => ("dead_letter", false),
        Err(_) => ("error", false),
    }
}

fn count(service: &'static str, outcome: &'static str) {
    metrics::counter!(names::CONSUMED, "service" => service, "outcome" => outcome).increment(1);
}

/// Publishes flushed outbox entries in order, pipelined, removing each only after its PubAck.
async fn relay_loop(
    service: &'static str,
    store: Arc<Store>,
    js: jetstream::Context,
    window: usize,
    clock: Clock,
    faults: FaultHook,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let relay = core::Relay::default();
    let mut watermark = store.watermark();
    let mut retry_ms = 0u64;
    let mut gauges_due_ms = 0u64;
    loop {
        let flushed = *watermark.borrow_and_update();
        let entries = relay.batch(&*store, flushed, window)?;
        // Counting the outbox walks the whole tree: do it at most once per interval, not on
        // every pass of the hot loop.
        let now_ms = clock();
        if entries.is_empty() || now_ms >= gauges_due_ms {
            gauges_due_ms = now_ms + OUTBOX_GAUGE_INTERVAL_MS;
            let (depth, oldest_ms) = store.outbox_stats(now_ms)?;
            metrics::gauge!(names::OUTBOX_DEPTH, "service" => service).set(depth as f64);
            metrics::gauge!(names::OUTBOX_OLDEST_AGE, "service" => service)
                .set(oldest_ms as f64 / 1000.0);
        }
        if entries.is_empty() {
            if *stop.borrow() {
                return Ok(());
            }
            tokio::select! {
                r = watermark.changed() => { if r.is_err() { return Ok(()); } }
                _ = stop.changed() => {}
            }
            continue;
        }
        let (acked, failure) = publish_window(service, &js, &entries).await;
        let done = core::Relay::settled(&entries, acked);
        if !done.is_empty() {
            if faults(FaultPoint::AfterPublishBeforeRemove) == FaultAction::Crash {
                return Err(RuntimeError::Crashed(FaultPoint::AfterPublishBeforeRemove));
            }
            let published = entries.iter().filter(|(k, _)| done.contains(k)).count();
            metrics::counter!(names::PUBLISHED, "service" => service).increment(published as u64);
            store.outbox_remove(&done)?;
        }
        match failure {
            None => retry_ms = 0,
            Some(e) => {
                metrics::counter!(names::PUBLISH_RETRIES, "service" => service).increment(1);
                retry_ms = (retry_ms * 2).clamp(RELAY_RETRY_MIN_MS, RELAY_RETRY_MAX_MS);
                warn!(service, error = %e, retry_ms, "publish failed; retrying");
                // A deliberate backoff while the broker is unreachable; stop cuts it short.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(retry_ms)) => {}
                    _ = stop.changed() => {}
                }
                if *stop.borrow() && !is_connected(&js) {
                    warn!(
                        service,
                        "stopping with the broker unreachable; the outbox resumes at next start"
                    );
                    return Ok(());
                }
            }
        }
    }
}

fn is_connected(js: &jetstream::Context) -> bool {
    js.client().connection_state() == async_nats::connection::State::Connected
}

/// Sends a window of entries without waiting, then awaits the PubAcks in order. Returns how
/// many entries were acknowledged before the first failure (later ones are retried, and
/// deduplicated by their `Nats-Msg-Id` if they did land).
async fn publish_window(
    service: &str,
    js: &jetstream::Context,
    entries: &[(u64, OutboxEntry)],
) -> (usize, Option<String>) {
    let mut pending = Vec::with_capacity(entries.len());
    let mut failure = None;
    for (_, e) in entries {
        match js
            .send_publish(e.subject.clone(), publish_message(service, e))
            .await
        {
            Ok(ack) => pending.push(ack),
            Err(err) => {
                failure = Some(err.to_string());
                break;
            }
        }
    }
    // Await every PubAck together: each one's timeout starts when it is awaited, so awaiting
    // them one by one would stall the relay for one timeout per lost message (while a cluster
    // elects a new stream leader, every message of the window can be lost).
    let acks = futures::future::join_all(pending.into_iter().map(IntoFuture::into_future)).await;
    let mut acked = 0;
    for ack in acks {
        if failure.is_some() {
            // Count nothing after a failure; those entries are published again.
            break;
        }
        match ack {
            Ok(_) => acked += 1,
            Err(err) => failure = Some(err.to_string()),
        }
    }
    (acked, failure)
}

/// The message for an outbox entry `service` emitted, with the contract's headers.
pub fn publish_message(service: &str, e: &OutboxEntry) -> PublishMessage {
    PublishMessage::build()
        .payload(e.payload.clone().into())
        .message_id(&e.event_id)
        .header(events::headers::SAGA_ID, e.saga_id.to_string().as_str())
        .header(events::headers::CAUSATION_ID, e.causation_id.as_str())
        .header(
            events::headers::TRACEPARENT,
            crate::trace::traceparent(service, e).as_str(),
        )
}

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
