//! The deterministic simulation of the exchange saga, in the spirit of TigerBeetle's VOPR.
//!
//! One `u64` seed decides everything: the workload (users, deposits, requests with duplicates
//! and conflicts, the house float, the venue's walk, the clocks), how the scheduler leans
//! (swarm testing), and every choice it makes. The three services run their real handler code
//! ([`runtime::Participant`], and fx-krw's expiry) against the runtime's own store (sled in a
//! temporary directory, its group commit, log, checkpoint, trim and recovery: [`store`]),
//! wired by a simulated broker that reorders, duplicates and redelivers, with crashes that lose unflushed work (also between flush and
//! ack), relays that republish, inbox pruning, per-node clock skew, a clock that jumps past
//! hold expiries, faults at the venue and in USD accounts, and operator interventions on
//! random sagas at random moments (reemit, cancel, refuse-credit, through the services' own
//! decisions) ([`world`]). After the faults
//! heal and the system is quiescent, [`check`] verifies invariants 1 to 4 (ARCHITECTURE.md), that
//! only conflicting requests are dead-lettered, and that every venue execution is booked; one
//! seed in [`AUDIT_EVERY`] also runs the services' own audits.
//!
//! A failing seed replays exactly: `SIM_SEED=<n> cargo test -p fx-tests --test simulation`.
//!
//! Not modelled: the broker losing a good message (ARCHITECTURE.md: forbidden by configuration),
//! undecodable messages, admin requests racing a consumer batch inside one transaction,
//! venue latency (a real timer), sled's own recovery of its files (a crash is taken in place:
//! what was flushed survives, with what a checkpoint began to write and sometimes the oldest
//! unflushed group commits; see [`store`]), and the tracker
//! (invariants 5 and the read-model half of 6).

pub mod check;
pub mod store;
pub mod workload;
pub mod world;

use std::collections::{BTreeMap, VecDeque};

use events::{Event, ExchangeRequested, Rate};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;

pub use check::{Report, SagaOutcome};
pub use workload::Workload;
pub use world::{Mutation, NodeId, Outcome, World, WorldConfig};

/// Steps after the faulty phase within which the system must become quiescent.
pub const SETTLE_STEPS_MAX: usize = 20_000;
/// One seed in this many also runs the services' own audits over its final state.
pub const AUDIT_EVERY: u64 = 10;
/// In the settling phase, crashes and duplicate deliveries stop after this many steps, so the
/// run converges (faults heal; the broker stops misbehaving).
const SETTLE_MISCHIEF_STEPS: usize = 200;

/// What one seed's run came to.
#[derive(Clone, Debug)]
pub struct SimResult {
    /// The seed.
    pub seed: u64,
    /// The final check.
    pub report: Report,
    /// The step-by-step trace (empty unless asked for).
    pub trace: Vec<String>,
    /// How many scheduler steps ran.
    pub steps: usize,
    /// What happened, counted by kind (outcomes, notable events, crashes), for coverage.
    pub coverage: BTreeMap<String, u64>,
}

impl SimResult {
    /// True when every invariant held.
    pub fn passed(&self) -> bool {
        self.report.violations.is_empty()
    }
}

/// The kinds of scheduler step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Deliver,
    Publish,
    Flush,
    Request,
    Duplicate,
    Tick,
    Leap,
    Sweep,
    Crash,
    Fault,
    Prune,
    Intervene,
    Checkpoint,
    /// A checkpoint that dies half way (a crash).
    CheckpointCrash,
}

/// Runs one seed to the end and checks it; with `trace`, records every step.
pub fn run(seed: u64, trace: bool) -> SimResult {
    run_with(seed, trace, None)
}

/// [`run`], with one of the runtime's rules broken on purpose (the simulation's own test:
/// it must catch what the rules prevent).
pub fn run_with(seed: u64, trace: bool, mutation: Option<Mutation>) -> SimResult {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut w = Workload::generate(&mut rng);
    w.config.mutation = mutation;
    let mut world = World::new(w.config.clone());
    if trace {
        world.enable_trace();
    }
    for (i, s) in w.sagas.iter().enumerate() {
        world.name_saga(*s, format!("s{i}"));
    }
    world.note(|_| {
        format!(
            "seed {seed}: users {:?}, {} sagas, {} requests, float {} USD, venue {} volatility {} bps, \
             start +{}ms, clock skew {:?} ms, chaos {} steps, fifo {:.2}, dedup {:.2}, \
             republish {:.2}, {:?}",
            w.users.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
            w.sagas.len(),
            w.requests.len(),
            w.house_float,
            w.config.venue.rate,
            w.config.venue.volatility_bps,
            w.config.start_offset_ms,
            w.config.clock_skew_ms,
            w.chaos_steps,
            w.fifo,
            w.dedup,
            w.republish,
            w.weights
        )
    });
    world.seed_house_float(w.house_float);
    for (u, k) in &w.krw_deposits {
        world.deposit_krw(u, *k);
    }
    for (u, a) in &w.usd_deposits {
        world.deposit_usd(u, *a);
    }

    let mut coverage = BTreeMap::new();
    let mut requests: VecDeque<ExchangeRequested> = w.requests.iter().cloned().collect();
    let mut steps = 0;
    for _ in 0..w.chaos_steps {
        // Once every request is in and everything settled, more chaos only moves the clock.
        if requests.is_empty() && world.is_quiescent() {
            break;
        }
        step(
            &mut world,
            &mut rng,
            &w,
            &mut requests,
            Phase::Chaos,
            &mut coverage,
        );
        steps += 1;
    }

    // Faults heal so that every saga can end: the venue comes back, accounts are unfrozen.
    world.note(|_| "---- faults heal ----".into());
    world.set_venue_down(false);
    world.set_venue_answers_late(false);
    world.set_venue_failure_rate(0.0);
    for u in world.frozen_users() {
        world.unfreeze(&u);
    }
    let mut settled = false;
    for i in 0..SETTLE_STEPS_MAX {
        if requests.is_empty() && world.is_quiescent() {
            settled = true;
            break;
        }
        let phase = if i < SETTLE_MISCHIEF_STEPS {
            Phase::Settle
        } else {
            Phase::Calm
        };
        step(
            &mut world,
            &mut rng,
            &w,
            &mut requests,
            phase,
            &mut coverage,
        );
        steps += 1;
    }

    let mut report = check::check(&world);
    // The services' own audits must agree with the simulation's checks. They need a real
    // sled store each (about 2 ms for the three), so one seed in AUDIT_EVERY runs them.
    if seed.is_multiple_of(AUDIT_EVERY) || trace {
        report.violations.extend(check::service_audits(&world));
    }
    if !settled {
        report.violations.push(format!(
            "the system did not become quiescent within {SETTLE_STEPS_MAX} steps after faults healed"
        ));
    }
    for o in report.outcomes.values() {
        *coverage.entry(format!("outcome {}", o.name())).or_default() += 1;
    }
    for m in world.stream() {
        if let Some(what) = notable(&m.event) {
            *coverage.entry(what).or_default() += 1;
        }
    }
    *coverage.entry("dead letters".into()).or_default() += world.dlq().len() as u64;
    // The venue's side: executions, and lookups (fx-trade asking, when it may no longer order,
    // whether a delivery whose fill was lost executed).
    *coverage.entry("venue executions".into()).or_default() += world.venue.orders_executed() as u64;
    *coverage.entry("venue reversals".into()).or_default() +=
        world.venue.reversals_executed() as u64;
    *coverage
        .entry("venue answers after the deadline".into())
        .or_default() += world.venue.late_answers();
    *coverage.entry("venue lookups".into()).or_default() += world.venue.lookups();
    let trade_data = world.node(NodeId::Trade).store.durable();
    let reversed = trade_data
        .scan::<trade::OrderRecord>(trade::ORDER_PREFIX)
        .into_iter()
        .filter(|(_, o)| {
            matches!(
                &o.state,
                trade::OrderState::Failed {
                    reversed: Some(_),
                    ..
                }
            )
        })
        .count();
    *coverage
        .entry("venue reversals after venue_unavailable".into())
        .or_default() += reversed as u64;
    SimResult {
        seed,
        report,
        trace: world.trace().to_vec(),
        steps,
        coverage,
    }
}

/// Events worth counting across seeds: the failure paths and tombstones the scheduler must
/// reach for the simulation to mean anything.
fn notable(e: &Event) -> Option<String> {
    Some(match e {
        Event::KrwRejected(r) => format!("krw.rejected {:?}", r.reason),
        Event::KrwReleased(r) => format!("krw.released {:?}", r.reason),
        Event::TradeFailed(f) => format!("trade.failed {:?}", f.reason),
        Event::TradeCancelled(c) => format!("trade.cancelled {:?}", c.reason),
        Event::UsdCreditFailed(f) => format!("usd.credit_failed {:?}", f.reason),
        Event::UsdDebited(_) => "usd.debited".into(),
        Event::KrwIntervened(i) | Event::TradeIntervened(i) | Event::UsdIntervened(i) => {
            format!("{} {}", e.kind(), i.action.as_str())
        }
        _ => return None,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Everything may happen.
    Chaos,
    /// Faults are healed; crashes and duplicates still happen.
    Settle,
    /// Only progress: deliveries, flushes, publishes, time.
    Calm,
}

fn step(
    world: &mut World,
    rng: &mut ChaCha8Rng,
    w: &Workload,
    requests: &mut VecDeque<ExchangeRequested>,
    phase: Phase,
    coverage: &mut BTreeMap<String, u64>,
) {
    let ws = &w.weights;
    let mut table = vec![
        (Action::Deliver, ws.deliver),
        (Action::Publish, ws.publish),
        (Action::Flush, ws.flush),
        (Action::Request, ws.request),
        (Action::Sweep, ws.sweep),
        (Action::Checkpoint, ws.checkpoint),
    ];
    if phase != Phase::Calm {
        table.push((Action::Duplicate, ws.duplicate));
        table.push((Action::Crash, ws.crash));
        table.push((Action::CheckpointCrash, ws.checkpoint.min(ws.crash)));
    }
    if phase == Phase::Chaos {
        table.push((Action::Tick, ws.tick));
        table.push((Action::Leap, ws.leap));
        table.push((Action::Fault, ws.fault));
        table.push((Action::Prune, ws.prune));
        // An operator acts on a saga at a random moment, about as often as a fault.
        table.push((Action::Intervene, ws.fault));
    }
    // A few tries to find a step that applies; if none does, let time pass (the only thing
    // left to do when everything waits for a redelivery delay or an expiry).
    for _ in 0..4 {
        let action = table
            .choose_weighted(rng, |(_, weight)| *weight)
            .map(|(a, _)| *a)
            .unwrap_or(Action::Deliver);
        if try_action(world, rng, w, requests, action, coverage) {
            return;
        }
    }
    for action in [
        Action::Deliver,
        Action::Flush,
        Action::Publish,
        Action::Request,
    ] {
        if try_action(world, rng, w, requests, action, coverage) {
            return;
        }
    }
    let next = [world.next_redelivery_ms(), world.next_expiry_ms()]
        .into_iter()
        .flatten()
        .min();
    match next {
        Some(t) if t > world.now_ms => world.advance(t - world.now_ms),
        _ => world.advance(1_000),
    }
    world.sweep(true);
}

fn pick_node(rng: &mut ChaCha8Rng, nodes: &[NodeId]) -> Option<NodeId> {
    nodes.choose(rng).copied()
}

fn try_action(
    world: &mut World,
    rng: &mut ChaCha8Rng,
    w: &Workload,
    requests: &mut VecDeque<ExchangeRequested>,
    action: Action,
    coverage: &mut BTreeMap<String, u64>,
) -> bool {
    let now = world.now_ms;
    match action {
        Action::Deliver => {
            let ready: Vec<NodeId> = NodeId::ALL
                .into_iter()
                .filter(|n| world.node(*n).deliverable(now).next().is_some())
                .collect();
            let Some(node) = pick_node(rng, &ready) else {
                return false;
            };
            let candidates: Vec<usize> = world.node(node).deliverable(now).collect();
            let index = if rng.gen_bool(w.fifo) {
                *candidates
                    .iter()
                    .min_by_key(|&&i| world.node(node).pending[i].seq)
                    .expect("non-empty")
            } else {
                *candidates.choose(rng).expect("non-empty")
            };
            world.deliver(node, index);
            true
        }
        Action::Publish => {
            let ready: Vec<NodeId> = NodeId::ALL
                .into_iter()
                .filter(|n| world.relay_backlog(*n) > 0)
                .collect();
            let Some(node) = pick_node(rng, &ready) else {
                return false;
            };
            let keep = rng.gen_bool(w.republish);
            let dedup = rng.gen_bool(w.dedup);
            world.relay_publish(node, keep, dedup)
        }
        Action::Flush => {
            let ready: Vec<NodeId> = NodeId::ALL
                .into_iter()
                .filter(|n| {
                    let n = world.node(*n);
                    n.unacked() > 0 || !n.store.is_flushed()
                })
                .collect();
            let Some(node) = pick_node(rng, &ready) else {
                return false;
            };
            world.flush(node, true);
            true
        }
        Action::Request => match requests.pop_front() {
            Some(r) => {
                world.request(r);
                true
            }
            None => false,
        },
        Action::Duplicate => {
            let ready: Vec<NodeId> = NodeId::ALL
                .into_iter()
                .filter(|n| world.duplicable(*n) > 0)
                .collect();
            let Some(node) = pick_node(rng, &ready) else {
                return false;
            };
            let index = rng.gen_range(0..world.duplicable(node));
            world.duplicate(node, index);
            *coverage.entry("step duplicate".into()).or_default() += 1;
            true
        }
        Action::Tick => {
            world.advance(rng.gen_range(1..=3_000));
            true
        }
        Action::Leap => {
            // Past the next expiry (or a whole hold's life), sometimes by a little, sometimes
            // by a lot.
            let target = world
                .next_expiry_ms()
                .unwrap_or(now + world.krw_config().hold_ttl_ms + world.krw_config().hold_grace_ms);
            let extra = rng.gen_range(0..=5_000);
            world.advance(target.saturating_sub(now) + extra);
            *coverage.entry("step leap".into()).or_default() += 1;
            true
        }
        Action::Sweep => {
            let flush = rng.gen_bool(0.8);
            world.sweep(flush);
            true
        }
        Action::Crash => {
            // A crash matters when it has something to lose or to redeliver; aim there mostly.
            let busy: Vec<NodeId> = NodeId::ALL
                .into_iter()
                .filter(|n| {
                    let n = world.node(*n);
                    n.unacked() > 0 || !n.store.is_flushed()
                })
                .collect();
            let node = match pick_node(rng, &busy) {
                Some(n) if rng.gen_bool(0.8) => n,
                _ => NodeId::ALL[rng.gen_range(0..3)],
            };
            if rng.gen_bool(0.5) {
                // The crash window "after commit, before ack": durable and released to the
                // relay, but the broker will redeliver the batch.
                world.flush(node, false);
                *coverage.entry("step crash after flush".into()).or_default() += 1;
            } else {
                *coverage.entry("step crash".into()).or_default() += 1;
            }
            // Sometimes sled wrote some of the unflushed group commits before the process died.
            let survivors = if rng.gen_bool(0.3) {
                rng.gen_range(1..=3)
            } else {
                0
            };
            if survivors > 0 {
                *coverage
                    .entry("step crash keeping unflushed work".into())
                    .or_default() += 1;
            }
            if world.crash_keeping(node, survivors) > 0 {
                *coverage.entry("step crash lost work".into()).or_default() += 1;
            }
            true
        }
        Action::Fault => {
            match rng.gen_range(0..5) {
                0 => match rng.gen_range(0..3) {
                    0 => world.set_venue_down(true),
                    1 => {
                        world.set_venue_down(false);
                        world.set_venue_answers_late(false);
                    }
                    // A hung call: the order executes, its answer comes after the deadline.
                    _ => world.set_venue_answers_late(true),
                },
                1 => {
                    let p = *[0.0, 0.3, 1.0].choose(rng).expect("non-empty");
                    world.set_venue_failure_rate(p);
                }
                2 => {
                    let rate = Rate::new(Decimal::from(rng.gen_range(1_300..=1_500)))
                        .expect("positive rate");
                    world.set_venue_rate(rate);
                }
                3 => {
                    let u = w.users.choose(rng).expect("users").clone();
                    world.freeze(&u);
                }
                _ => {
                    let u = w.users.choose(rng).expect("users").clone();
                    world.unfreeze(&u);
                }
            }
            *coverage.entry("step fault".into()).or_default() += 1;
            true
        }
        Action::Intervene => {
            let Some(req) = world.requests().choose(rng).cloned() else {
                return false;
            };
            let action = *events::InterventionAction::ALL
                .choose(rng)
                .expect("non-empty");
            for answer in world.intervene(action, req.saga_id, &req.user_id) {
                *coverage
                    .entry(format!("operator {} {answer}", action.as_str()))
                    .or_default() += 1;
            }
            true
        }
        Action::Checkpoint => {
            let node = NodeId::ALL[rng.gen_range(0..3)];
            world.checkpoint(node);
            *coverage.entry("step checkpoint".into()).or_default() += 1;
            true
        }
        Action::CheckpointCrash => {
            let node = NodeId::ALL[rng.gen_range(0..3)];
            world.crash_during_checkpoint(node);
            *coverage
                .entry("step crash during checkpoint".into())
                .or_default() += 1;
            true
        }
        Action::Prune => {
            let node = NodeId::ALL[rng.gen_range(0..3)];
            world.prune_inbox(node);
            *coverage.entry("step prune inbox".into()).or_default() += 1;
            true
        }
    }
}
