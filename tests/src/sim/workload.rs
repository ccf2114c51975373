//! What one seed asks of the system: users and their deposits, the house float, the venue,
//! the requests (with duplicates and conflicts), and how the scheduler leans (swarm testing:
//! each seed weighs the kinds of steps differently, so some seeds crash a lot, others reorder a
//! lot, others barely do either).

use events::{ExchangeRequested, Krw, Rate, SagaId, Usd, UserId};
use krw::KrwConfig;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use trade::{TradeConfig, VenueConfig};

use super::world::{WorldConfig, START_MS};

/// The market rate most seeds start from, KRW per USD.
const BASE_RATE: i64 = 1400;

/// Relative weights of the steps the random scheduler picks from.
#[derive(Clone, Debug)]
pub struct Weights {
    /// Deliver a pending message to a node.
    pub deliver: u32,
    /// Publish the oldest flushed outbox entry of a node.
    pub publish: u32,
    /// Flush a node (and ack its batch).
    pub flush: u32,
    /// Publish the next user request.
    pub request: u32,
    /// Hand a node a copy of a message again.
    pub duplicate: u32,
    /// Move the clock a little.
    pub tick: u32,
    /// Move the clock past a hold's expiry and grace.
    pub leap: u32,
    /// Run fx-krw's expiry sweeper.
    pub sweep: u32,
    /// Crash a node (sometimes right after a flush, before its ack).
    pub crash: u32,
    /// Venue faults, freezes.
    pub fault: u32,
    /// Inbox pruning at a node.
    pub prune: u32,
    /// A node's store checkpoints (memory into its trees; the next flush trims the log).
    pub checkpoint: u32,
}

impl Weights {
    fn random(rng: &mut ChaCha8Rng) -> Weights {
        // Deliveries and flushes always happen; everything else may be absent from a seed.
        Weights {
            deliver: rng.gen_range(10..=40),
            publish: rng.gen_range(5..=20),
            flush: rng.gen_range(3..=15),
            request: rng.gen_range(2..=8),
            duplicate: rng.gen_range(0..=6),
            tick: rng.gen_range(0..=8),
            leap: rng.gen_range(0..=2),
            sweep: rng.gen_range(0..=6),
            crash: rng.gen_range(0..=10),
            fault: rng.gen_range(0..=4),
            prune: rng.gen_range(0..=2),
            checkpoint: rng.gen_range(0..=4),
        }
    }
}

/// Everything one seed decides before the run.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The services' settings.
    pub config: WorldConfig,
    /// The users.
    pub users: Vec<UserId>,
    /// KRW deposits made before the first request.
    pub krw_deposits: Vec<(UserId, Krw)>,
    /// USD deposits made before the first request.
    pub usd_deposits: Vec<(UserId, Usd)>,
    /// The house float (small for some seeds, so credits fail for lack of liquidity).
    pub house_float: Usd,
    /// Requests in the order users publish them, duplicates and conflicts included.
    pub requests: Vec<ExchangeRequested>,
    /// The distinct sagas, in creation order (named `s0`, `s1`, ... in traces).
    pub sagas: Vec<SagaId>,
    /// Steps of the faulty phase before faults heal.
    pub chaos_steps: usize,
    /// How the scheduler leans.
    pub weights: Weights,
    /// Chance that the broker delivers the oldest deliverable message rather than a random one.
    pub fifo: f64,
    /// Chance that a republished event id is dropped by the broker's duplicate window.
    pub dedup: f64,
    /// Chance that the relay's removal after a publish is lost, so the entry goes out again.
    pub republish: f64,
}

fn krw(n: u64) -> Krw {
    Krw::from_decimal(Decimal::from(n)).expect("valid KRW")
}

fn usd_cents(cents: u64) -> Usd {
    Usd::from_decimal(Decimal::new(cents as i64, 2)).expect("valid USD")
}

impl Workload {
    /// Draws a workload from the seed's generator.
    pub fn generate(rng: &mut ChaCha8Rng) -> Workload {
        let mut krw_config = KrwConfig::default();
        if rng.gen_bool(0.1) {
            // A tight daily limit, so some requests are refused for it.
            krw_config.max_krw_per_user_day = krw(rng.gen_range(2_000..=3_000_000));
        }
        let venue = VenueConfig {
            rate: Rate::new(Decimal::from(BASE_RATE)).expect("positive rate"),
            volatility_bps: if rng.gen_bool(0.5) {
                0
            } else {
                rng.gen_range(1..=50)
            },
            seed: rng.gen(),
            latency_ms: 0,
            failure_rate: 0.0,
        };
        let config = WorldConfig {
            krw: krw_config,
            trade: TradeConfig::default(),
            venue,
            mutation: None,
            start_offset_ms: if rng.gen_bool(0.1) {
                // Start shortly before 00:00 UTC, so holds and releases straddle the reset of
                // the daily limit.
                let to_midnight = krw::records::DAY_MS - START_MS % krw::records::DAY_MS;
                to_midnight - rng.gen_range(1..=60_000)
            } else {
                0
            },
            clock_skew_ms: if rng.gen_bool(0.3) {
                [0; 3].map(|_: i64| rng.gen_range(-3_000..=3_000))
            } else {
                [0; 3]
            },
        };

        let n_users = rng.gen_range(1..=3);
        let users: Vec<UserId> = (0..n_users)
            .map(|i| UserId::parse(&format!("u{i}")).expect("valid user id"))
            .collect();
        let mut krw_deposits = Vec::new();
        let mut balance = vec![0u64; users.len()];
        for (i, u) in users.iter().enumerate() {
            // Some users never deposit: their requests are rejected as unknown_user.
            if rng.gen_bool(0.9) {
                for _ in 0..rng.gen_range(1..=2) {
                    let amount = rng.gen_range(10_000..=3_000_000);
                    balance[i] += amount;
                    krw_deposits.push((u.clone(), krw(amount)));
                }
            }
        }
        let mut usd_deposits = Vec::new();
        for u in &users {
            if rng.gen_bool(0.2) {
                usd_deposits.push((u.clone(), usd_cents(rng.gen_range(1..=50_000))));
            }
        }
        let house_float = if rng.gen_bool(0.2) {
            // A few credits' worth: some credits fail with insufficient_liquidity.
            usd_cents(rng.gen_range(1_000..=250_000))
        } else {
            usd_cents(1_000_000_000)
        };

        let n_sagas = rng.gen_range(1..=4);
        let mut requests = Vec::new();
        let mut sagas = Vec::new();
        for _ in 0..n_sagas {
            let saga = SagaId::from(uuid::Uuid::from_u128(rng.gen()));
            sagas.push(saga);
            let u = rng.gen_range(0..users.len());
            let bal = balance[u].max(2_000);
            let amount = match rng.gen_range(0..100) {
                0..=4 => rng.gen_range(1..1_000),               // below the minimum
                5..=19 => rng.gen_range(bal + 1..=bal * 2),     // above the balance
                _ => rng.gen_range(1_000..=bal.min(2_500_000)), // affordable, mostly
            };
            let min_usd_amount = if rng.gen_bool(0.4) {
                // Around what the base rate gives: a moved rate may miss it.
                let at_base = Rate::new(Decimal::from(BASE_RATE))
                    .and_then(|r| r.usd_for(krw(amount)))
                    .map(|u| u.amount())
                    .unwrap_or_default();
                let factor = Decimal::new(rng.gen_range(9_700..=10_300), 4);
                let min = (at_base * factor).round_dp(2);
                Usd::from_decimal(min).filter(|m| m.is_positive())
            } else {
                None
            };
            let req = ExchangeRequested {
                saga_id: saga,
                user_id: users[u].clone(),
                krw_amount: krw(amount),
                min_usd_amount,
            };
            if rng.gen_bool(0.2) {
                // The user retries with the same body: a no-op.
                requests.push(req.clone());
            }
            if rng.gen_bool(0.15) {
                // The same saga id with another body: dead-lettered (saga_id_conflict), not
                // rejected; under reordering either body may be the one fx-krw accepts.
                // Sometimes another user reuses the id.
                let user_id = if rng.gen_bool(0.3) {
                    users.choose(rng).expect("users").clone()
                } else {
                    req.user_id.clone()
                };
                requests.push(ExchangeRequested {
                    krw_amount: krw(amount + 1_000),
                    user_id,
                    ..req.clone()
                });
            }
            requests.push(req);
        }
        requests.shuffle(rng);

        Workload {
            config,
            users,
            krw_deposits,
            usd_deposits,
            house_float,
            requests,
            sagas,
            chaos_steps: rng.gen_range(20..=300),
            weights: Weights::random(rng),
            fifo: rng.gen_range(0.0..=1.0),
            dedup: rng.gen_range(0.0..=1.0),
            republish: rng.gen_range(0.0..=0.2),
        }
    }
}
