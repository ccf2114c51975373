//! The simulated world: three nodes (fx-krw, fx-trade, fx-usd) running the services' real
//! handler code against the runtime's own store ([`SimStore`]), a broker with one stream and
//! one consumer per node, the relays between them, a dead-letter stream, and one clock.
//!
//! Every method is one thing that can happen in the real system (a delivery, a flush, a crash,
//! a publish, a timer, an operator action), so the random driver and the fixed scenarios in
//! `tests/simulation.rs` drive the same code. What happens around a handler is the runtime's
//! own core (`runtime::core`), driven here as the NATS consumer loop drives it: `prepare`
//! before the transaction (reading the node's live, committed records), then
//! `core::commit_run` (the inbox check and mark, the participant, nothing kept for a dead
//! letter or a retry), `core::answer` and `core::Group` (dead letters stored, acks and naks
//! sent only after the consumer's flush, so a crash before it loses them with the rest of the
//! unflushed work), and `core::Relay` (only flushed outbox entries published, a record removed
//! once acknowledged). fx-krw's expiry timer is `KrwService::expire_due` itself.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use events::{Event, EventKind, ExchangeRequested, Krw, SagaId, Usd, UserId};
use futures::executor::block_on;
use krw::{KrwConfig, KrwService};
pub use runtime::core::Mutation;
use runtime::core::{self, Answer, Group, Input, Relay, Storage};
use runtime::{Handled, OutboxEntry, Participant, ReadRecords, TxResult};
use trade::{SimulatedVenue, TradeConfig, TradeService, VenueConfig};
use usd::{AdminOutcome, UsdService};

use super::check;
use super::store::{SimStore, SimTx};

/// Where simulated time starts by default: 2027-01-15T08:00:00Z, far from a UTC day boundary
/// (a seed may move the start close to midnight to cross one).
pub const START_MS: u64 = 1_800_000_000_000;

/// One of the three participants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeId {
    /// fx-krw.
    Krw,
    /// fx-trade.
    Trade,
    /// fx-usd.
    Usd,
}

impl NodeId {
    /// All three, in flow order.
    pub const ALL: [NodeId; 3] = [NodeId::Krw, NodeId::Trade, NodeId::Usd];

    /// Index into per-node arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Short name for traces.
    pub fn name(self) -> &'static str {
        match self {
            NodeId::Krw => "krw",
            NodeId::Trade => "trade",
            NodeId::Usd => "usd",
        }
    }
}

/// A message handed to a node's consumer.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The stream sequence of the message.
    pub seq: u64,
    /// The decoded event.
    pub event: Rc<Event>,
    /// A nak'd message is not redelivered before this time.
    pub not_before_ms: u64,
    /// How many times it was handed to the consumer.
    pub delivered: u64,
}

/// What a handled delivery came to (the runtime's `Outcome` plus handler failures).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The service's own answer.
    Handled(Handled),
    /// The inbox had seen the event id: skipped without calling the service.
    Duplicate,
    /// The handler aborted its transaction (a bug: records contradict each other).
    Failed(String),
}

/// One participant: its store, its consumer's view of the broker and its relay queue.
#[derive(Debug)]
pub struct Node {
    /// Which participant.
    pub id: NodeId,
    /// Its records.
    pub store: SimStore,
    /// Messages the broker may hand to this consumer, in arrival order.
    pub pending: Vec<Delivery>,
    /// Handled messages waiting for the flush that makes their effects durable (the
    /// runtime's core holds their answers until then).
    group: Group<Delivery>,
}

impl Node {
    fn new(id: NodeId, mutation: Option<Mutation>) -> Node {
        Node {
            id,
            store: SimStore::default(),
            pending: Vec::new(),
            group: Group::new(mutation),
        }
    }

    /// Handled messages not yet acked.
    pub fn unacked(&self) -> usize {
        self.group.len()
    }

    /// Indexes of pending messages the broker may deliver at `now_ms`.
    pub fn deliverable(&self, now_ms: u64) -> impl Iterator<Item = usize> + '_ {
        self.pending
            .iter()
            .enumerate()
            .filter(move |(_, d)| d.not_before_ms <= now_ms)
            .map(|(i, _)| i)
    }

    /// True when nothing is pending, unacked, unflushed or waiting to be published.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
            && self.group.is_empty()
            && self.store.outbox_len_up_to(self.store.flushed_up_to()) == 0
            && self.store.is_flushed()
    }
}

/// A message on the `FX` stream.
#[derive(Clone, Debug)]
pub struct StreamMsg {
    /// Stream sequence, from 1.
    pub seq: u64,
    /// The event, as decoded from the published body.
    pub event: Rc<Event>,
}

/// A message a service refused, kept whole with the reason (the `FX_DLQ` stream).
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// Which service refused it.
    pub node: NodeId,
    /// The stream sequence of the refused message.
    pub seq: u64,
    /// The message.
    pub event: Rc<Event>,
    /// The machine-readable reason.
    pub reason: &'static str,
    /// The words for a person.
    pub message: String,
}

/// How the services are configured.
#[derive(Clone, Debug, Default)]
pub struct WorldConfig {
    /// fx-krw's limits and hold timing.
    pub krw: KrwConfig,
    /// fx-trade's margin, retry and breaker settings.
    pub trade: TradeConfig,
    /// The simulated venue's starting rate, volatility and seed (latency must stay 0: the
    /// simulation has no timer).
    pub venue: VenueConfig,
    /// A rule of the runtime to break on purpose (`None`: the runtime as built).
    pub mutation: Option<Mutation>,
    /// Added to [`START_MS`]: where the clock starts.
    pub start_offset_ms: u64,
    /// Each node's clock runs this far ahead (or behind) the broker's, in flow order (krw,
    /// trade, usd): holds expire by fx-krw's clock and are judged by fx-trade's.
    pub clock_skew_ms: [i64; 3],
}

/// The whole simulated system.
pub struct World {
    /// The broker's clock (true time), in ms since the Unix epoch. Nodes read it with their
    /// skew ([`World::node_now`]).
    pub now_ms: u64,
    start_ms: u64,
    skew_ms: [i64; 3],
    krw: KrwService,
    trade: TradeService,
    usd: UsdService,
    trade_config: TradeConfig,
    relay: Relay,
    /// The market, shared by every incarnation of fx-trade (it is outside the process).
    pub venue: Arc<SimulatedVenue>,
    nodes: [Node; 3],
    stream: Vec<StreamMsg>,
    /// The first body published under each event id, to catch an event re-decided differently.
    by_id: HashMap<String, Rc<Event>>,
    dlq: Vec<DeadLetter>,
    violations: Vec<String>,
    trace: Option<Vec<String>>,
    names: BTreeMap<SagaId, String>,
    /// Every request users published, in publication order.
    requests: Vec<ExchangeRequested>,
    /// Σ KRW deposited per user (what conservation is measured against).
    krw_deposits: BTreeMap<UserId, Krw>,
    /// Σ USD deposited per user.
    usd_deposits: BTreeMap<UserId, Usd>,
    /// The house float deposited at start.
    house_float: Usd,
    frozen: BTreeMap<UserId, bool>,
    admin_ids: u128,
}

impl World {
    /// A world with empty stores at [`START_MS`] plus the configured offset.
    pub fn new(config: WorldConfig) -> World {
        assert_eq!(
            config.venue.latency_ms, 0,
            "the simulation has no timer: venue latency must be 0"
        );
        let venue = Arc::new(SimulatedVenue::new(&config.venue));
        let start_ms = START_MS + config.start_offset_ms;
        World {
            now_ms: start_ms,
            start_ms,
            skew_ms: config.clock_skew_ms,
            krw: KrwService::new(config.krw),
            trade: TradeService::new(config.trade.clone(), venue.clone()),
            usd: UsdService::default(),
            trade_config: config.trade,
            relay: Relay::new(config.mutation),
            venue,
            nodes: [
                Node::new(NodeId::Krw, config.mutation),
                Node::new(NodeId::Trade, config.mutation),
                Node::new(NodeId::Usd, config.mutation),
            ],
            stream: Vec::new(),
            by_id: HashMap::new(),
            dlq: Vec::new(),
            violations: Vec::new(),
            trace: None,
            names: BTreeMap::new(),
            requests: Vec::new(),
            krw_deposits: BTreeMap::new(),
            usd_deposits: BTreeMap::new(),
            house_float: Usd::ZERO,
            frozen: BTreeMap::new(),
            admin_ids: 0,
        }
    }

    /// Starts recording a human-readable trace of every step.
    pub fn enable_trace(&mut self) {
        self.trace.get_or_insert_with(Vec::new);
    }

    /// The trace so far (empty unless enabled).
    pub fn trace(&self) -> &[String] {
        self.trace.as_deref().unwrap_or(&[])
    }

    /// Adds a line to the trace (the driver's notes, the scenarios' steps).
    pub fn note(&mut self, line: impl FnOnce(&World) -> String) {
        if self.trace.is_some() {
            let line = line(self);
            self.push_trace(line);
        }
    }

    fn push_trace(&mut self, line: String) {
        let at = self.now_ms - self.start_ms;
        if let Some(t) = self.trace.as_mut() {
            let n = t.len();
            t.push(format!("{n:>5} t+{at:>7}ms  {line}"));
        }
    }

    /// Names a saga in traces (`s0`, `s1`, ...) instead of its UUID.
    pub fn name_saga(&mut self, saga: SagaId, name: impl Into<String>) {
        self.names.insert(saga, name.into());
    }

    /// The trace name of a saga.
    pub fn saga_name(&self, saga: SagaId) -> String {
        self.names
            .get(&saga)
            .cloned()
            .unwrap_or_else(|| saga.to_string())
    }

    /// Records a broken invariant (checked at the end; the run goes on so the trace shows what
    /// followed).
    pub fn violate(&mut self, what: String) {
        self.note(|_| format!("!! VIOLATION: {what}"));
        self.violations.push(what);
    }

    /// Invariant violations seen while running.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// A node.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }

    /// Every message on the `FX` stream, in order.
    pub fn stream(&self) -> &[StreamMsg] {
        &self.stream
    }

    /// Every dead letter.
    pub fn dlq(&self) -> &[DeadLetter] {
        &self.dlq
    }

    /// Every request users published.
    pub fn requests(&self) -> &[ExchangeRequested] {
        &self.requests
    }

    /// Σ KRW deposited per user.
    pub fn krw_deposits(&self) -> &BTreeMap<UserId, Krw> {
        &self.krw_deposits
    }

    /// Σ USD deposited per user.
    pub fn usd_deposits(&self) -> &BTreeMap<UserId, Usd> {
        &self.usd_deposits
    }

    /// The house float deposited at start.
    pub fn house_float(&self) -> Usd {
        self.house_float
    }

    /// Users whose USD account is frozen now (as far as the operator knows).
    pub fn frozen_users(&self) -> Vec<UserId> {
        self.frozen
            .iter()
            .filter(|(_, f)| **f)
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// fx-krw's settings.
    pub fn krw_config(&self) -> &KrwConfig {
        self.krw.config()
    }

    /// fx-trade's settings.
    pub fn trade_config(&self) -> &TradeConfig {
        &self.trade_config
    }

    /// The event kinds a node consumes (its consumer's filter), from the service itself.
    pub fn consumes(&self, node: NodeId) -> &'static [EventKind] {
        match node {
            NodeId::Krw => self.krw.consumes(),
            NodeId::Trade => self.trade.consumes(),
            NodeId::Usd => self.usd.consumes(),
        }
    }

    /// `user`'s durable KRW account at fx-krw (available, held), zero if it has none.
    pub fn krw_balance(&self, user: &UserId) -> (Krw, Krw) {
        self.node(NodeId::Krw)
            .store
            .durable()
            .get::<krw::Account>(&krw::records::account_key(user))
            .map(|a| (a.available, a.held))
            .unwrap_or_default()
    }

    /// `user`'s durable USD balance at fx-usd, zero if it has no account.
    pub fn usd_balance(&self, user: &UserId) -> Usd {
        self.node(NodeId::Usd)
            .store
            .durable()
            .get::<usd::UsdAccount>(&usd::account_key(user))
            .map(|a| a.usd)
            .unwrap_or_default()
    }

    /// The durable USD house float.
    pub fn usd_house(&self) -> Usd {
        self.node(NodeId::Usd)
            .store
            .durable()
            .get::<usd::HouseAccount>(usd::model::HOUSE_KEY)
            .unwrap_or_default()
            .usd
    }

    /// The events of `saga` on the stream, in order (duplicates included).
    pub fn saga_events(&self, saga: SagaId) -> Vec<Event> {
        self.stream
            .iter()
            .filter(|m| m.event.saga_id() == saga)
            .map(|m| (*m.event).clone())
            .collect()
    }

    // ---- operators -------------------------------------------------------------------------

    fn next_admin_id(&mut self) -> SagaId {
        self.admin_ids += 1;
        // A range no saga of the workload uses (those are random 128-bit ids).
        SagaId::from(uuid::Uuid::from_u128(
            0xad00_0000_0000_0000 + self.admin_ids,
        ))
    }

    /// An admin operation: one transaction. The caller then flushes, as the admin endpoints
    /// do before replying; that flush also makes the consumer's committed work durable and
    /// releases its outbox, but does not ack its messages (that is the consumer's own flush).
    fn admin<T>(&mut self, node: NodeId, f: impl Fn(&SimTx<'_>, u64) -> TxResult<T>) -> T {
        let now = self.node_now(node);
        self.nodes[node.index()]
            .store
            .transact(|tx| f(tx, now))
            .unwrap_or_else(|e| panic!("admin operation on {} failed: {e:?}", node.name()))
    }

    /// An operator deposits KRW for `user` (krw::deposit with a fresh id).
    pub fn deposit_krw(&mut self, user: &UserId, amount: Krw) {
        let id = self.next_admin_id();
        let h = self.admin(NodeId::Krw, |tx, now| {
            krw::deposit(tx, id, user, amount, "sim", now)
        });
        assert_eq!(h, Handled::Applied, "deposit of {amount} KRW to {user}");
        let total = self.krw_deposits.entry(user.clone()).or_default();
        *total = total.checked_add(amount).expect("deposits stay in range");
        self.note(|_| format!("admin krw.deposit {user} {amount} KRW"));
        self.flush(NodeId::Krw, false);
    }

    /// The house float is seeded once at start (usd::seed_house_float).
    pub fn seed_house_float(&mut self, amount: Usd) {
        let out = self.admin(NodeId::Usd, |tx, now| {
            usd::seed_house_float(tx, amount, now)
        });
        assert_eq!(out, AdminOutcome::Done, "house float of {amount} USD");
        self.house_float = amount;
        self.note(|_| format!("admin usd house float {amount} USD"));
        self.flush(NodeId::Usd, false);
    }

    /// An operator deposits USD for `user` (usd::deposit with a fresh id).
    pub fn deposit_usd(&mut self, user: &UserId, amount: Usd) {
        let id = self.next_admin_id();
        let out = self.admin(NodeId::Usd, |tx, now| {
            usd::deposit(tx, id, user, amount, "sim", now)
        });
        assert_eq!(out, AdminOutcome::Done, "deposit of {amount} USD to {user}");
        let total = self.usd_deposits.entry(user.clone()).or_default();
        *total = total.checked_add(amount).expect("deposits stay in range");
        self.note(|_| format!("admin usd.deposit {user} {amount} USD"));
        self.flush(NodeId::Usd, false);
    }

    /// An operator freezes `user`'s USD account.
    pub fn freeze(&mut self, user: &UserId) {
        let id = self.next_admin_id();
        self.admin(NodeId::Usd, |tx, now| usd::freeze(tx, id, user, "sim", now));
        self.frozen.insert(user.clone(), true);
        self.note(|_| format!("admin usd freeze {user}"));
        self.flush(NodeId::Usd, false);
    }

    /// An operator unfreezes `user`'s USD account.
    pub fn unfreeze(&mut self, user: &UserId) {
        let id = self.next_admin_id();
        self.admin(NodeId::Usd, |tx, now| {
            usd::unfreeze(tx, id, user, "sim", now)
        });
        self.frozen.insert(user.clone(), false);
        self.note(|_| format!("admin usd unfreeze {user}"));
        self.flush(NodeId::Usd, false);
    }

    /// An operator's intervention on one saga (`fxctl saga <action>`), through the services'
    /// own code: `reemit` asks fx-krw, fx-trade and fx-usd; `cancel` fx-krw; `refuse_credit`
    /// fx-usd, after fxctl's check that fx-krw holds the saga's KRW. Each is one admin
    /// transaction, then a flush (the admin endpoint's). Returns what each service answered:
    /// `done`, `already_done`, or the refusal's reason.
    pub fn intervene(
        &mut self,
        action: events::InterventionAction,
        saga_id: SagaId,
        user_id: &UserId,
    ) -> Vec<String> {
        use events::InterventionAction as A;
        use runtime::intervention::{intervene, InterventionRequest, Verdict};
        use runtime::Records;
        let req = InterventionRequest {
            saga_id,
            user_id: user_id.clone(),
            reason: format!("sim operator: {}", action.as_str()),
        };
        let nodes: &[NodeId] = match action {
            A::Reemit => &[NodeId::Krw, NodeId::Trade, NodeId::Usd],
            A::Cancel => &[NodeId::Krw],
            A::RefuseCredit => {
                let held = self.admin(NodeId::Krw, |tx, _| {
                    tx.get::<krw::SagaRecord>(&krw::records::saga_key(saga_id))
                });
                // Every admin answer leaves after its store's flush: what it said survives a
                // crash.
                self.flush(NodeId::Krw, false);
                if held.is_none_or(|r| r.status != krw::SagaStatus::Held || &r.user != user_id) {
                    self.note(|w| {
                        format!(
                            "operator refuse_credit {}: fxctl refuses, fx-krw holds nothing \
                             for this user",
                            w.saga_name(saga_id)
                        )
                    });
                    return vec!["finished".into()];
                }
                &[NodeId::Usd]
            }
        };
        let mut answers = Vec::new();
        for &node in nodes {
            // Through the one path every caller takes (the reason checked, then the
            // service's decision applied), as the admin endpoint does.
            let now = self.node_now(node);
            let verdict = self.nodes[node.index()]
                .store
                .transact(|tx| {
                    let operator = "sim-operator";
                    match node {
                        NodeId::Krw => intervene(&self.krw, tx, action, &req, operator, now),
                        NodeId::Trade => intervene(&self.trade, tx, action, &req, operator, now),
                        NodeId::Usd => intervene(&self.usd, tx, action, &req, operator, now),
                    }
                })
                .unwrap_or_else(|e| panic!("intervention at {} failed: {e:?}", node.name()));
            let answer = match &verdict {
                Ok(Verdict::Done(_)) => "done".to_owned(),
                Ok(Verdict::AlreadyDone) => "already_done".to_owned(),
                Err(r) => r.code.to_owned(),
            };
            self.note(|w| {
                format!(
                    "operator {} {} at {}: {answer}",
                    action.as_str(),
                    w.saga_name(saga_id),
                    node.name()
                )
            });
            if matches!(verdict, Ok(Verdict::Done(_))) {
                self.flush(node, false);
            }
            answers.push(answer);
        }
        answers
    }

    // ---- the venue ---------------------------------------------------------------------------

    /// Takes the venue down or brings it back.
    pub fn set_venue_down(&mut self, down: bool) {
        self.venue.set_down(down);
        self.note(|_| format!("fault venue {}", if down { "DOWN" } else { "up" }));
    }

    /// Makes every venue call execute but answer after fx-trade's deadline (a hung call), or
    /// answer in time again.
    pub fn set_venue_answers_late(&mut self, late: bool) {
        self.venue.set_answers_late(late);
        self.note(|_| {
            format!(
                "fault venue answers {}",
                if late { "LATE" } else { "in time" }
            )
        });
    }

    /// Sets the probability that a new venue order fails.
    pub fn set_venue_failure_rate(&mut self, p: f64) {
        self.venue.set_failure_rate(p);
        self.note(|_| format!("fault venue failure rate {p}"));
    }

    /// Moves the market.
    pub fn set_venue_rate(&mut self, rate: events::Rate) {
        self.venue.set_rate(rate);
        self.note(|_| format!("fault venue rate -> {rate}"));
    }

    // ---- users and the broker ----------------------------------------------------------------

    /// A user publishes a request on `fx.exchange.requested.<user>`. Requests carry the bare saga
    /// id (or no id) as `Nats-Msg-Id`, so the broker does not deduplicate them against events.
    pub fn request(&mut self, req: ExchangeRequested) {
        let event = Rc::new(Event::ExchangeRequested(req.clone()));
        self.requests.push(req);
        let seq = self.append(event.clone());
        self.note(|w| format!("user publishes {} (seq {seq})", w.describe(&event)));
    }

    /// Appends to the stream and offers the message to every consumer whose filter matches.
    fn append(&mut self, event: Rc<Event>) -> u64 {
        let seq = self.stream.len() as u64 + 1;
        self.stream.push(StreamMsg {
            seq,
            event: event.clone(),
        });
        for node in NodeId::ALL {
            if self.consumes(node).contains(&event.kind()) {
                self.nodes[node.index()].pending.push(Delivery {
                    seq,
                    event: event.clone(),
                    not_before_ms: 0,
                    delivered: 0,
                });
            }
        }
        seq
    }

    /// Hands `node` its pending message at `index` and handles it as the runtime does:
    /// `prepare`, then the core's `commit_run` (a run of one) and `answer`; the answer waits in
    /// the node's [`Group`] for the next flush.
    pub fn deliver(&mut self, node: NodeId, index: usize) -> Outcome {
        let n = node.index();
        let mut d = self.nodes[n].pending.remove(index);
        d.delivered += 1;
        let outbox_before = self.nodes[n].store.unflushed_outbox().len();
        let commits_before = self.nodes[n].store.commits();
        let result = self.handle(node, &d);
        let outcome = match &result {
            Ok(core::Outcome::Handled(h)) => Outcome::Handled(h.clone()),
            Ok(core::Outcome::Duplicate) => Outcome::Duplicate,
            Err(e) => Outcome::Failed(format!("{e:?}")),
        };
        let wrote = self.nodes[n].store.commits() != commits_before
            || self.nodes[n].store.unflushed_outbox().len() != outbox_before;
        match &outcome {
            Outcome::Handled(Handled::RetryAfter { .. } | Handled::DeadLetter { .. }) if wrote => {
                self.violate(format!(
                    "{} kept writes of a message it dead-lettered or asked to retry: {}",
                    node.name(),
                    self.describe(&d.event)
                ));
            }
            Outcome::Failed(e) => self.violate(format!(
                "{} failed to handle {}: {e}",
                node.name(),
                self.describe(&d.event)
            )),
            _ => {}
        }
        if self.trace.is_some() {
            let emitted: Vec<String> = self.nodes[n].store.unflushed_outbox()[outbox_before..]
                .iter()
                .map(|e| e.subject.clone())
                .collect();
            let line = format!(
                "deliver {:<5} <- {} (seq {}{}) => {}{}",
                node.name(),
                self.describe(&d.event),
                d.seq,
                if d.delivered > 1 || d.not_before_ms > 0 {
                    format!(", delivery #{}", d.delivered)
                } else {
                    String::new()
                },
                describe_outcome(&outcome),
                if emitted.is_empty() {
                    String::new()
                } else {
                    format!("; emits {}", emitted.join(", "))
                }
            );
            self.push_trace(line);
        }
        let answer = core::answer(&result, d.delivered);
        // Empty unless a mutation answers before the flush.
        let now = self.nodes[n].group.handled(d, answer);
        self.send_answers(node, now);
        outcome
    }

    /// Tells the broker what the core decided: a nak'd message comes back after its delay, a
    /// dead letter is stored then terminated, an ack forgets the message.
    fn send_answers(&mut self, node: NodeId, answers: Vec<(Delivery, Answer)>) {
        let now = self.now_ms;
        for (d, answer) in answers {
            match answer {
                Answer::Ack => {}
                Answer::Nak { delay_ms } => self.nodes[node.index()].pending.push(Delivery {
                    not_before_ms: now + delay_ms,
                    ..d
                }),
                Answer::DeadLetter { reason, message } => {
                    self.store_dead_letter(node, &d, reason, message)
                }
            }
        }
    }

    fn store_dead_letter(
        &mut self,
        node: NodeId,
        d: &Delivery,
        reason: &'static str,
        message: String,
    ) {
        self.dlq.push(DeadLetter {
            node,
            seq: d.seq,
            event: d.event.clone(),
            reason,
            message,
        });
        self.note(|w| {
            format!(
                "dlq   {:<5} stores {} (seq {}): {reason}",
                node.name(),
                w.describe(&d.event),
                d.seq
            )
        });
    }

    /// Delivers the first pending message of `kind` for `saga` to `node`, whatever its place in
    /// the queue (the fixed scenarios force orderings with this). Panics if there is none.
    pub fn deliver_kind(&mut self, node: NodeId, kind: EventKind, saga: SagaId) -> Outcome {
        let index = self.nodes[node.index()]
            .pending
            .iter()
            .position(|d| d.event.kind() == kind && d.event.saga_id() == saga)
            .unwrap_or_else(|| {
                panic!(
                    "no pending {kind} for {} at {}",
                    self.saga_name(saga),
                    node.name()
                )
            });
        self.deliver(node, index)
    }

    fn handle(&mut self, node: NodeId, d: &Delivery) -> runtime::Result<core::Outcome> {
        let now = self.node_now(node);
        let event: &Event = &d.event;
        let store = &self.nodes[node.index()].store;
        // As in the runtime's pipeline: prepare (the venue call) runs before the transaction,
        // once per delivery, duplicates included, reading the node's live records, committed
        // but maybe unflushed (a crash that loses them also redelivers what they decided).
        // With latency 0 the simulated venue needs no timer.
        let mut outcomes = match node {
            NodeId::Krw => commit_one(&self.krw, store, event, &(), now),
            NodeId::Trade => {
                let quote = block_on(self.trade.prepare(store, event, now));
                commit_one(&self.trade, store, event, &quote, now)
            }
            NodeId::Usd => commit_one(&self.usd, store, event, &(), now),
        };
        outcomes.pop().expect("one outcome per message")
    }

    /// The broker hands a message to the consumer again although it may still be in flight (ack
    /// wait passed, or the ack was lost): a copy of the pending or unacked message at `index`
    /// (unacked ones first) goes back to the pending pool.
    pub fn duplicate(&mut self, node: NodeId, index: usize) {
        let n = &mut self.nodes[node.index()];
        let d = match n.group.held().nth(index) {
            Some(d) => d.clone(),
            None => n.pending[index - n.group.len()].clone(),
        };
        let (event, seq) = (d.event.clone(), d.seq);
        self.nodes[node.index()].pending.push(Delivery {
            not_before_ms: 0,
            ..d
        });
        self.note(|w| {
            format!(
                "broker redelivers to {} a copy of {} (seq {seq})",
                node.name(),
                w.describe(&event)
            )
        });
    }

    /// Outbox entries of `node` the relay may publish now (the core's rule: flushed ones).
    pub fn relay_backlog(&self, node: NodeId) -> usize {
        let store = &self.node(node).store;
        let up_to = self
            .relay
            .up_to(store, store.flushed_up_to())
            .expect("the store reads its outbox");
        store.outbox_len_up_to(up_to)
    }

    /// How many messages [`World::duplicate`] can choose from.
    pub fn duplicable(&self, node: NodeId) -> usize {
        let n = &self.nodes[node.index()];
        n.group.len() + n.pending.len()
    }

    /// Group commit: makes the node's committed work durable and hands its outbox entries to
    /// the relay; with `ack`, then stores the batch's dead letters and acks (or naks, or terms)
    /// every message handled since the last flush. `ack = false` is the crash window "after
    /// commit, before ack" (or an admin or sweeper flush, which does not end the batch).
    pub fn flush(&mut self, node: NodeId, ack: bool) {
        let n = &mut self.nodes[node.index()];
        let published = n.store.flush();
        // The core hands back the group's answers only now, dead letters first.
        let answers = if ack { n.group.flushed() } else { Vec::new() };
        let acked = answers.len();
        self.note(|_| {
            format!(
                "flush {:<5} relay +{published}{}",
                node.name(),
                if ack {
                    format!(", acked {acked}")
                } else {
                    ", no ack".into()
                }
            )
        });
        self.send_answers(node, answers);
        // Conservation holds after every transaction, so it holds for every durable state.
        let durable = self.nodes[node.index()].store.durable();
        let broken = match node {
            NodeId::Krw => check::krw_conservation(&durable, self.krw_deposits.values()),
            NodeId::Usd => check::usd_conservation(
                &durable,
                self.usd_deposits.values().chain([&self.house_float]),
            ),
            NodeId::Trade => Ok(()),
        };
        drop(durable);
        if let Err(e) = broken {
            self.violate(format!("invariant 1 after a flush of {}: {e}", node.name()));
        }
    }

    /// The process dies: unflushed work is lost, unacked messages will be redelivered (and the
    /// dead letters of their batch were never stored), the relay queue (durable) survives, and
    /// fx-trade's in-memory circuit breaker starts afresh.
    /// Returns how many group commits were lost.
    pub fn crash(&mut self, node: NodeId) -> usize {
        self.crash_keeping(node, 0)
    }

    /// [`World::crash`], where the oldest `survivors` unflushed group commits reached the disk
    /// before the process died (sled wrote them on its own): their effects and events survive,
    /// their messages were not acked, so the broker redelivers them as duplicates.
    pub fn crash_keeping(&mut self, node: NodeId, survivors: usize) -> usize {
        let now = self.now_ms;
        let n = &mut self.nodes[node.index()];
        let lost = n.store.crash(survivors);
        let lost_answers = n.group.crashed();
        let back = lost_answers.len();
        for d in lost_answers {
            n.pending.push(Delivery {
                not_before_ms: now,
                ..d
            });
        }
        if node == NodeId::Trade {
            self.trade = TradeService::new(self.trade_config.clone(), self.venue.clone());
        }
        self.note(|_| {
            format!(
                "CRASH {}: {lost} unflushed group commits lost, {back} messages back to the broker",
                node.name()
            )
        });
        lost
    }

    /// The relay publishes the oldest flushed outbox record of `node` (one group commit's
    /// events, published whole as the runtime's relay does). With `keep`, the record
    /// stays in the queue as if the process died between the PubAck and the removal, so it is
    /// published again later. A republished id is dropped by the broker's duplicate window when
    /// `dedup`, and stored again (delivered twice) otherwise. Returns false if the queue is
    /// empty.
    pub fn relay_publish(&mut self, node: NodeId, keep: bool, dedup: bool) -> bool {
        let store = &self.nodes[node.index()].store;
        // The runtime's relay: the next flushed entry (any committed one under the
        // PublishBeforeFlush mutation), removed once the broker has acknowledged it, which in
        // the simulation is at once.
        let batch = self
            .relay
            .batch(store, store.flushed_up_to(), 1)
            .expect("the store reads its outbox");
        if batch.is_empty() {
            return false;
        }
        // A record (one group commit's events) is published whole, then removed.
        if !keep {
            store
                .outbox_remove(&Relay::settled(&batch, batch.len()))
                .expect("the store removes published records");
        }
        for (_, entry) in batch {
            self.publish_entry(node, entry, keep, dedup);
        }
        true
    }

    /// The relay's publish of one outbox entry (see [`World::relay_publish`]).
    fn publish_entry(&mut self, node: NodeId, entry: OutboxEntry, keep: bool, dedup: bool) {
        let event = match Event::decode(&entry.subject, entry.payload.as_bytes()) {
            Ok(e) => Rc::new(e),
            Err(e) => {
                self.violate(format!(
                    "{} published an event that does not decode ({}): {e}",
                    node.name(),
                    entry.subject
                ));
                return;
            }
        };
        if event.id() != entry.event_id {
            self.violate(format!(
                "outbox entry id {} differs from its event's id {}",
                entry.event_id,
                event.id()
            ));
        }
        if let Some(first) = self.by_id.get(&entry.event_id).cloned() {
            if !same_decision(&first, &event) {
                // The same event id with another body: a decision was made twice differently,
                // which "publish only what is durable" exists to prevent.
                self.violate(format!(
                    "event {} published twice with different bodies: {} then {}",
                    entry.event_id,
                    self.describe(&first),
                    self.describe(&event)
                ));
            }
            if dedup {
                self.note(|w| {
                    format!(
                        "relay {:<5} republishes {}: dropped by the duplicate window{}",
                        node.name(),
                        w.describe(&event),
                        if keep { ", entry kept" } else { "" }
                    )
                });
                return;
            }
        } else {
            self.by_id.insert(entry.event_id.clone(), event.clone());
        }
        let seq = self.append(event.clone());
        self.note(|w| {
            format!(
                "relay {:<5} publishes {} (seq {seq}){}",
                node.name(),
                w.describe(&event),
                if keep { ", entry kept" } else { "" }
            )
        });
    }

    /// The node's store checkpoints: what it holds in memory goes into its trees (durable at
    /// the next flush, which then trims the log records it covers and whose events are
    /// published).
    pub fn checkpoint(&mut self, node: NodeId) {
        self.nodes[node.index()].store.checkpoint();
        self.note(|_| format!("checkpoint {:<5}", node.name()));
    }

    /// The node's process dies half way through a checkpoint (its state tree written, its
    /// journal and inbox trees not), then restarts as after any crash. Returns how many group
    /// commits were lost.
    pub fn crash_during_checkpoint(&mut self, node: NodeId) -> usize {
        self.nodes[node.index()].store.checkpoint_dying_half_way();
        self.note(|_| format!("checkpoint {:<5} dies half way", node.name()));
        self.crash(node)
    }

    /// Inbox pruning (retention passed): the node forgets every consumed event id. Safe by
    /// design, because each service's per-saga state turns a replayed event into a no-op.
    pub fn prune_inbox(&mut self, node: NodeId) {
        let n = self.nodes[node.index()].store.prune_inbox();
        self.note(|_| format!("prune {:<5} inbox: {n} ids forgotten", node.name()));
    }

    /// Moves the clock forward.
    pub fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
        self.note(|_| format!("clock +{ms}ms"));
    }

    /// fx-krw's expiry sweeper: its timer step, `KrwService::expire_due`, over the node's
    /// store (one transaction per due hold); then, with `flush`, the sweeper's flush if it
    /// released anything. Returns how many holds were released.
    pub fn sweep(&mut self, flush: bool) -> usize {
        let now = self.node_now(NodeId::Krw);
        let released = match self
            .krw
            .expire_due(&self.nodes[NodeId::Krw.index()].store, now)
        {
            Ok(released) => released,
            Err(e) => {
                self.violate(format!("krw failed to expire holds: {e:?}"));
                Vec::new()
            }
        };
        for saga in &released {
            self.note(|w| format!("expiry krw releases {}", w.saga_name(*saga)));
        }
        // The sweeper flushes only when it released something (krw's server does the same).
        if flush && !released.is_empty() {
            self.flush(NodeId::Krw, false);
        }
        released.len()
    }

    /// When (by the broker's clock) the earliest open hold becomes due for expiry, if any.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        let grace = self.krw.config().hold_grace_ms;
        let skew = self.skew_ms[NodeId::Krw.index()];
        self.node(NodeId::Krw)
            .store
            .keys_with_prefix(krw::EXPIRY_PREFIX)
            .map(|k| k.expect("keys read"))
            .find_map(|k| krw::parse_expiry_key(&k))
            .map(|(at, _)| at.saturating_add(grace).saturating_add_signed(-skew))
    }

    /// `node`'s clock: the broker's plus the node's skew.
    pub fn node_now(&self, node: NodeId) -> u64 {
        self.now_ms
            .saturating_add_signed(self.skew_ms[node.index()])
    }

    /// When the earliest nak'd message becomes deliverable again, if any is waiting.
    pub fn next_redelivery_ms(&self) -> Option<u64> {
        self.nodes
            .iter()
            .flat_map(|n| n.pending.iter())
            .map(|d| d.not_before_ms)
            .filter(|t| *t > self.now_ms)
            .min()
    }

    /// True when the system has nothing left to do: nothing pending, unacked, unflushed or
    /// unpublished anywhere, and no open hold left to expire.
    pub fn is_quiescent(&self) -> bool {
        self.nodes.iter().all(Node::is_idle) && self.next_expiry_ms().is_none()
    }

    /// Runs the system to quiescence without faults: delivers in stream order, flushes,
    /// publishes, and moves the clock to the next redelivery or expiry when nothing else can
    /// happen. For the fixed scenarios, after their forced orderings. Panics if it does not
    /// settle within `max_steps` rounds.
    pub fn settle(&mut self, max_steps: usize) {
        for _ in 0..max_steps {
            if self.is_quiescent() {
                return;
            }
            let mut progressed = false;
            for node in NodeId::ALL {
                let next = self.nodes[node.index()]
                    .deliverable(self.now_ms)
                    .min_by_key(|&i| self.nodes[node.index()].pending[i].seq);
                if let Some(i) = next {
                    self.deliver(node, i);
                    progressed = true;
                }
            }
            for node in NodeId::ALL {
                let n = &self.nodes[node.index()];
                if n.unacked() > 0 || !n.store.is_flushed() {
                    self.flush(node, true);
                    progressed = true;
                }
                while self.relay_publish(node, false, true) {
                    progressed = true;
                }
            }
            if !progressed {
                let next = [self.next_redelivery_ms(), self.next_expiry_ms()]
                    .into_iter()
                    .flatten()
                    .min();
                match next {
                    Some(t) if t > self.now_ms => self.advance(t - self.now_ms),
                    _ => {}
                }
                self.sweep(true);
            }
        }
        panic!(
            "the system did not settle within {max_steps} rounds\n{}",
            self.trace().join("\n")
        );
    }

    /// An event in words for traces: kind, saga name and the fields that matter.
    pub fn describe(&self, e: &Event) -> String {
        let s = self.saga_name(e.saga_id());
        match e {
            Event::ExchangeRequested(r) => format!(
                "exchange.requested {s} by {} for {} KRW{}",
                r.user_id,
                r.krw_amount,
                r.min_usd_amount
                    .map(|m| format!(" min {m} USD"))
                    .unwrap_or_default()
            ),
            Event::KrwHeld(h) => format!(
                "krw.held {s} {} KRW until t+{}ms",
                h.krw_amount,
                h.hold_expires_at_ms.saturating_sub(self.start_ms)
            ),
            Event::KrwRejected(r) => format!("krw.rejected {s} ({:?})", r.reason),
            Event::KrwCommitted(c) => format!("krw.committed {s} {} KRW", c.krw_amount),
            Event::KrwReleased(r) => {
                format!("krw.released {s} {} KRW ({:?})", r.krw_amount, r.reason)
            }
            Event::TradeFilled(f) => {
                format!("trade.filled {s} {} USD at {}", f.usd_amount, f.rate)
            }
            Event::TradeFailed(f) => format!("trade.failed {s} ({:?})", f.reason),
            Event::TradeCancelled(c) => format!("trade.cancelled {s} ({:?})", c.reason),
            Event::UsdCredited(c) => format!("usd.credited {s} {} USD", c.usd_amount),
            Event::UsdCreditFailed(f) => format!("usd.credit_failed {s} ({:?})", f.reason),
            Event::UsdDebited(d) => format!("usd.debited {s} {} USD", d.usd_amount),
            other => format!("{} {s}", other.kind()),
        }
    }
}

fn describe_outcome(o: &Outcome) -> String {
    match o {
        Outcome::Handled(Handled::Applied) => "applied".into(),
        Outcome::Handled(Handled::Ignored) => "ignored".into(),
        Outcome::Handled(Handled::RetryAfter { delay_ms }) => format!("retry in {delay_ms}ms"),
        Outcome::Handled(Handled::DeadLetter { reason, .. }) => format!("DEAD-LETTERED ({reason})"),
        Outcome::Duplicate => "duplicate (inbox)".into(),
        Outcome::Failed(e) => format!("HANDLER FAILED: {e}"),
    }
}

/// A run of one message through the runtime's core.
fn commit_one<P: Participant>(
    participant: &P,
    store: &SimStore,
    event: &Event,
    prepared: &P::Prepared,
    now_ms: u64,
) -> Vec<runtime::Result<core::Outcome>> {
    core::commit_run(
        participant,
        store,
        &[(Input::Decoded { event, prepared }, now_ms)],
    )
}

/// True when `again`, published under the id of `first`, says the same decision: the same
/// body; or an operator's re-emit of a final word whose human message the service does not
/// keep (same reason, the message says it was re-emitted); or another intervention record
/// (each operator act under one id per action; the broker's window drops a repeat).
fn same_decision(first: &Event, again: &Event) -> bool {
    if first == again || (first.kind().is_intervention() && again.kind().is_intervention()) {
        return true;
    }
    let body = |e: &Event| {
        let mut v: serde_json::Value = serde_json::from_slice(&e.to_json()).expect("JSON");
        let reemitted = v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("re-emitted by an operator"));
        if let Some(o) = v.as_object_mut() {
            o.remove("message");
        }
        (v, reemitted)
    };
    let ((a, first_reemitted), (b, again_reemitted)) = (body(first), body(again));
    a == b && (first_reemitted || again_reemitted)
}
