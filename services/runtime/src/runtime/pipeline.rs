//! The consumer's prepare pipeline: which messages are admitted, whose `prepare` runs (at once
//! or as its own task, at most `prepare_concurrency` at a time), which wait behind an earlier
//! message of their saga, and which are ready to commit as the next group. No IO of its own:
//! the consumer loop ([`super::consumer`]) feeds it messages and commits what it hands back.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull;
use events::{Event, SagaId};
use tracing::{info_span, warn, Instrument};

use super::Clock;
use crate::{core, Participant, Store};

pub(super) type PrepareResult<Pr> =
    std::result::Result<(tokio::task::Id, (Event, Pr)), tokio::task::JoinError>;

/// What taking one item of the pull stream asks of the consumer.
pub(super) enum Pulled {
    Continue,
    /// The pull stream is gone or lost its heartbeats: pull again (in-flight messages stay
    /// valid; their acks go to their own reply subjects).
    Reconnect,
}

/// Where one admitted message stands.
pub(super) enum Stage<Pr> {
    /// Decoded and prepared, or undecodable: ready to commit.
    Ready(std::result::Result<(Event, Pr), events::DecodeError>),
    /// Its prepare is still running as this task (a venue call).
    Running(tokio::task::Id),
    /// Its prepare task panicked: the message is nak'ed, loudly.
    Panicked(String),
}

/// One admitted message and where it stands.
pub(super) struct Slot<Pr> {
    pub(super) msg: jetstream::Message,
    pub(super) saga: Option<SagaId>,
    pub(super) now_ms: u64,
    pub(super) started: Instant,
    pub(super) stage: Stage<Pr>,
}

impl<Pr> Slot<Pr> {
    /// The message as the core handles it; only ready slots are committed.
    pub(super) fn input(&self) -> core::Input<'_, Pr> {
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
pub(super) struct Pipeline<P: Participant> {
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
    pub(super) fn new(
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

    /// Prepares running as their own tasks.
    pub(super) fn running(&self) -> usize {
        self.tasks.len()
    }

    /// Waits for the next prepare task to finish; `None` at once when none runs.
    pub(super) async fn join_next(&mut self) -> Option<PrepareResult<P::Prepared>> {
        self.tasks.join_next_with_id().await
    }

    fn ready(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| !matches!(s.stage, Stage::Running(_)))
            .count()
    }

    pub(super) fn has_ready(&self) -> bool {
        self.slots
            .iter()
            .any(|s| !matches!(s.stage, Stage::Running(_)))
    }

    /// Room for one more message: a free prepare slot, a group not yet full, and a bounded
    /// number of deferred messages.
    pub(super) fn can_admit(&self) -> bool {
        self.running() < self.max_running
            && self.ready() < self.batch_max
            && self.deferred.len() < self.batch_max
    }

    /// Takes one item of the pull stream.
    pub(super) fn pulled(
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
    pub(super) fn admit_deferred(&mut self) {
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
    pub(super) fn collect_finished(&mut self) {
        while let Some(done) = self.tasks.try_join_next_with_id() {
            self.finished(done);
        }
    }

    /// Books a finished prepare task on its slot.
    pub(super) fn finished(&mut self, done: PrepareResult<P::Prepared>) {
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
    pub(super) fn take_ready(&mut self) -> Vec<Slot<P::Prepared>> {
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
