//! The consumer task: the service's durable pull consumer on `FX`, and the loop that feeds its
//! messages through the prepare pipeline ([`super::pipeline`]) and commits whatever is ready as
//! one group ([`super::commit`]), until the stop, after which it finishes what it started.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer, ReplayPolicy};
use events::EventKind;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tracing::info;

use super::commit::commit_group;
use super::pipeline::{Pipeline, PrepareResult, Pulled};
use super::{durable_name, Clock};
use crate::broker;
use crate::telemetry::{names, Health};
use crate::{FaultHook, Participant, Result, RuntimeConfig, RuntimeError, Store};

/// The broker's idle heartbeat on the pull stream; two missed ones surface as an error item and
/// the loop pulls again. On a cluster a pull request can be lost while a consumer's leader
/// moves, and the consumer then idles until this notices: 5 s showed as 10 s stalls in the
/// cluster benchmark, so 1 s (one small message a second per idle consumer).
const PULL_HEARTBEAT_MS: u64 = 1_000;
/// How long one pull request waits for messages before the client issues the next.
const PULL_EXPIRES_MS: u64 = 30_000;
/// Most messages the broker lets this consumer have unacked: a few batches in flight.
const MAX_ACK_PENDING: i64 = 20_000;
/// How often a service asks the broker about its own durable consumer, for the consumer
/// gauges (one small request a second, like the pull heartbeat).
const CONSUMER_GAUGE_INTERVAL_MS: u64 = 1_000;

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

/// The consumer task: creates (or finds) the durable consumer, then pulls, prepares and commits
/// until the stop, pulling again whenever the pull stream is lost.
#[allow(clippy::too_many_arguments)]
pub(super) async fn consume_loop<P: Participant>(
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
    let consumer = create_consumer(&*participant, &config, &js).await?;
    let _gauges = AbortOnDrop(tokio::spawn(consumer_gauges(service, consumer.clone())));
    let batch_max = config.batch_max.max(1);
    let pipe = Pipeline::new(
        participant.clone(),
        store.clone(),
        clock,
        batch_max,
        participant.prepare_concurrency().max(1),
    );
    let mut consuming = Consuming {
        participant,
        store,
        js,
        faults,
        pipe,
    };
    loop {
        let mut messages = open_pull_stream(&consumer, batch_max).await?;
        health.set_ready(true);
        info!(service, "consuming");
        match consuming.consume(&mut messages, &mut stop).await? {
            StreamEnd::Reconnect => continue,
            StreamEnd::Stopped => return Ok(()),
        }
    }
}

/// Creates the service's durable consumer as [`consumer_config`] says, retrying while the
/// broker is not reachable yet.
async fn create_consumer<P: Participant>(
    participant: &P,
    config: &RuntimeConfig,
    js: &jetstream::Context,
) -> Result<PullConsumer> {
    let wanted = consumer_config(
        participant.name(),
        config.partitioning,
        participant.consumes(),
        config.ack_wait(),
    );
    broker::retry_setup(
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
    .await
}

/// A new pull stream on the consumer: batches of up to `batch_max`, with the heartbeat that
/// notices a lost pull request.
async fn open_pull_stream(consumer: &PullConsumer, batch_max: usize) -> Result<pull::Stream> {
    consumer
        .stream()
        .max_messages_per_batch(batch_max)
        .heartbeat(Duration::from_millis(PULL_HEARTBEAT_MS))
        .expires(Duration::from_millis(PULL_EXPIRES_MS))
        .messages()
        .await
        .map_err(|e| RuntimeError::js("pull", e))
}

/// How consuming one pull stream ended.
enum StreamEnd {
    /// The stream is gone or lost its heartbeats: pull again.
    Reconnect,
    /// The stop came and everything started has been committed.
    Stopped,
}

/// The running consumer: its pipeline, and what a group commit needs.
struct Consuming<P: Participant> {
    participant: Arc<P>,
    store: Arc<Store>,
    js: jetstream::Context,
    faults: FaultHook,
    pipe: Pipeline<P>,
}

impl<P: Participant> Consuming<P> {
    /// Consumes one pull stream, one turn at a time: admit what has arrived, commit what is
    /// ready, or else wait for something to happen.
    async fn consume(
        &mut self,
        messages: &mut pull::Stream,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<StreamEnd> {
        loop {
            // Every prepare that finished meanwhile (during the last flush, say) joins the next
            // group, so groups grow with the load instead of committing one answer at a time.
            self.pipe.collect_finished();
            self.pipe.admit_deferred();
            if let Pulled::Reconnect = self.admit_arrived(messages) {
                return Ok(StreamEnd::Reconnect);
            }
            if self.pipe.has_ready() {
                self.commit_ready().await?;
                continue;
            }
            match self.wait(messages, stop).await {
                Woke::Stop => {
                    self.finish().await?;
                    return Ok(StreamEnd::Stopped);
                }
                Woke::Prepared(Some(done)) => self.pipe.finished(done),
                Woke::Prepared(None) => {}
                Woke::Message(item) => {
                    if let Pulled::Reconnect = self.pipe.pulled(self.participant.name(), item) {
                        return Ok(StreamEnd::Reconnect);
                    }
                }
            }
        }
    }

    /// Group commit sized by what is ready: admits what has already arrived, no waiting.
    fn admit_arrived(&mut self, messages: &mut pull::Stream) -> Pulled {
        while self.pipe.can_admit() {
            match messages.next().now_or_never() {
                Some(item) => {
                    if let Pulled::Reconnect = self.pipe.pulled(self.participant.name(), item) {
                        return Pulled::Reconnect;
                    }
                }
                None => break,
            }
        }
        Pulled::Continue
    }

    /// Nothing to commit yet: waits for the stop, a prepare to finish, or a message (if there
    /// is room for one), in that order of precedence.
    async fn wait(
        &mut self,
        messages: &mut pull::Stream,
        stop: &mut watch::Receiver<bool>,
    ) -> Woke<P::Prepared> {
        let can_admit = self.pipe.can_admit();
        let running = self.pipe.running();
        tokio::select! {
            biased;
            _ = stop.changed() => Woke::Stop,
            done = self.pipe.join_next(), if running > 0 => Woke::Prepared(done),
            m = messages.next(), if can_admit => Woke::Message(m),
        }
    }

    /// On the stop, finishes what was started: every running prepare, then its commit. What
    /// was deferred stays unacked and is redelivered to the next instance.
    async fn finish(&mut self) -> Result<()> {
        while self.pipe.running() > 0 || self.pipe.has_ready() {
            if let Some(done) = self.pipe.join_next().await {
                self.pipe.finished(done);
            }
            if self.pipe.has_ready() {
                self.commit_ready().await?;
            }
        }
        Ok(())
    }

    /// Commits the messages that are ready as one group.
    async fn commit_ready(&mut self) -> Result<()> {
        let group = self.pipe.take_ready();
        commit_group(
            &*self.participant,
            &self.store,
            &self.js,
            &self.faults,
            group,
        )
        .await
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

/// What woke the waiting consumer. Lives on the stack for one turn of the loop, so the size of
/// a message inside it costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Woke<Pr> {
    Stop,
    Prepared(Option<PrepareResult<Pr>>),
    Message(Option<std::result::Result<jetstream::Message, pull::MessagesError>>),
}
