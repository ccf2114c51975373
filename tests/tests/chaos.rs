//! Process-level chaos: the four real binaries, fx-venue (fx-trade's venue, over HTTP) and a
//! real nats-server (with the project's `config/nats.conf` and one identity per process) as
//! processes, driven at a set rate from an outside client while a seeded schedule SIGKILLs and
//! restarts services, SIGKILLs and restarts the broker, SIGSTOPs a service past its ack wait,
//! SIGKILLs fx-venue, SIGSTOPs it past fx-trade's venue deadline, and cuts the power: every
//! process SIGKILLed at once and every write not fsynced lost (the stores live on
//! `testkit::LazyFs`; where FUSE is missing the power cuts are skipped, and the summary says
//! so). Then, once the faults stop: every saga terminal in the tracker, every reversal booked,
//! every balance what the outcomes imply, the audits clean (fx-trade's reconciled with the
//! venue's executions), FX_DLQ empty, and a tracker rebuilt from the stream equal to the live
//! one.
//!
//! CI runs the short version; `scripts/chaos.sh` runs long ones. `CHAOS_SEED`, `CHAOS_SAGAS`,
//! `CHAOS_RATE`, `CHAOS_KILLS`, `CHAOS_BROKER_KILLS`, `CHAOS_STOPS`, `CHAOS_VENUE_KILLS`,
//! `CHAOS_VENUE_STOPS`, `CHAOS_POWER_CUTS` override the plan.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::Identities;
use events::{Krw, SagaId, Usd, UserId};
use fx_tests::procs::{
    all_sagas, binaries, dec, http_get, service_env, venue_env, Service, ACK_WAIT_MS,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use serde_json::Value;
use testkit::{free_port, wait_for, LazyFs};

const SERVICES: [&str; 4] = ["krw", "trade", "usd", "tracker"];
const QUIESCE_DEADLINE_MS: u64 = 180_000;
/// fx-trade's deadline on a venue call here; a venue SIGSTOP lasts three of them.
const VENUE_TIMEOUT_MS: u64 = 500;

fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default, Debug)]
struct Counts {
    kills: BTreeMap<&'static str, u32>,
    stops: u32,
    venue_kills: u32,
    venue_stops: u32,
    broker_restarts: u32,
    power_cuts: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_loses_nothing() {
    let seed: u64 = env_or("CHAOS_SEED", rand::random::<u64>() % 1_000_000);
    let sagas: usize = env_or("CHAOS_SAGAS", 500);
    let rate: u64 = env_or("CHAOS_RATE", 25);
    let kills: usize = env_or("CHAOS_KILLS", 10);
    let broker_kills: usize = env_or("CHAOS_BROKER_KILLS", 1);
    let stops: usize = env_or("CHAOS_STOPS", 2);
    let venue_kills: usize = env_or("CHAOS_VENUE_KILLS", 2);
    let venue_stops: usize = env_or("CHAOS_VENUE_STOPS", 1);
    let mut power_cuts: usize = env_or("CHAOS_POWER_CUTS", 1);
    println!("chaos seed {seed} (replay: CHAOS_SEED={seed} cargo test -p fx-tests --test chaos)");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);

    let bins = binaries();
    let dir = tempfile::tempdir().unwrap();
    // The stores (the broker's and the services') live on a filesystem that can lose power.
    let backing = tempfile::tempdir().unwrap();
    let mountpoint = tempfile::tempdir().unwrap();
    let mut fs = match LazyFs::available() {
        Ok(()) => Some(LazyFs::mount(backing.path(), mountpoint.path()).expect("mount LazyFs")),
        Err(why) => {
            println!("power cuts skipped: {why}");
            power_cuts = 0;
            None
        }
    };
    let root = match &fs {
        Some(fs) => fs.mountpoint().to_path_buf(),
        None => backing.path().to_path_buf(),
    };
    let ids = Identities::random();
    let mut broker = ids.broker_builder().store_dir(root.join("nats")).start();
    let url = broker.url();
    // The venue in its own process, its order book on the same filesystem as everything else.
    let venue_port = free_port();
    let market = [
        ("FX_VENUE_FAILURE_RATE", "0.03".to_owned()),
        ("FX_VENUE_VOLATILITY_BPS", "20".to_owned()),
        ("FX_VENUE_SEED", seed.to_string()),
    ];
    let env = venue_env(&root, venue_port, &market);
    let mut venue = Service::new(&bins, "venue", env, dir.path(), venue_port);
    venue.spawn();
    let mut services: HashMap<&'static str, Service> = HashMap::new();
    for name in SERVICES {
        let http_port = free_port();
        let identity = Some((name, ids.password(name)));
        let mut env = service_env(name, &url, identity, &root, http_port);
        env.extend([
            (
                "FX_VENUE_URL".into(),
                format!("http://127.0.0.1:{venue_port}"),
            ),
            ("FX_VENUE_TIMEOUT_MS".into(), VENUE_TIMEOUT_MS.to_string()),
            ("FX_BREAKER_OPEN_MS".into(), "500".into()),
            ("FX_VENUE_RETRY_MS".into(), "100".into()),
        ]);
        let mut s = Service::new(&bins, name, env, dir.path(), http_port);
        s.spawn();
        services.insert(name, s);
    }
    let client = ids.connect(&url, "admin").await;
    let tracker_port = services["tracker"].http_port;
    wait_for("fx-krw and fx-usd admin", 60_000, || async {
        fxctl::audit(&client, "chaos").await.ok().map(|_| ())
    })
    .await;
    wait_for("fx-tracker", 60_000, || async {
        http_get(tracker_port, "/api/stats").map(|_| ())
    })
    .await;

    // Users: most funded well, some poorly (insufficient funds), some frozen (compensations).
    let users: Vec<UserId> = (0..20)
        .map(|i| UserId::parse(&format!("u{i}")).unwrap())
        .collect();
    let mut deposits: BTreeMap<String, Decimal> = BTreeMap::new();
    for (i, u) in users.iter().enumerate() {
        let amount: u64 = if i % 5 == 4 { 300_000 } else { 40_000_000 };
        fxctl::deposit(
            &client,
            u,
            Some(Krw::parse(&amount.to_string()).unwrap()),
            None,
            "chaos",
        )
        .await
        .unwrap();
        deposits.insert(u.to_string(), Decimal::from(amount));
    }
    for u in users.iter().filter(|u| u.as_str().ends_with('3')) {
        fxctl::set_frozen(&client, u, true, "chaos").await.unwrap();
    }

    // The fault plan: kinds and times spread over the driving period, from the seed.
    let drive_ms = (sagas as u64 * 1000 / rate.max(1)).max(1000);
    let mut plan: Vec<(u64, &'static str)> = Vec::new();
    for _ in 0..kills {
        plan.push((rng.gen_range(0..drive_ms), "kill"));
    }
    for _ in 0..broker_kills {
        plan.push((rng.gen_range(drive_ms / 4..drive_ms * 3 / 4), "broker"));
    }
    for _ in 0..stops {
        plan.push((rng.gen_range(0..drive_ms), "stop"));
    }
    for _ in 0..venue_kills {
        plan.push((rng.gen_range(0..drive_ms), "venue-kill"));
    }
    for _ in 0..venue_stops {
        plan.push((rng.gen_range(0..drive_ms), "venue-stop"));
    }
    for _ in 0..power_cuts {
        plan.push((rng.gen_range(drive_ms / 4..drive_ms * 3 / 4), "power"));
    }
    plan.sort();
    let picks: Vec<&'static str> = (0..plan.len())
        .map(|_| SERVICES[rng.gen_range(0..4)])
        .collect();
    let amounts: Vec<(usize, u64, Option<&str>)> = (0..sagas)
        .map(|_| {
            let user = rng.gen_range(0..users.len());
            let krw = rng.gen_range(1..=60) * 10_000;
            // One in ten asks for more USD than any rate gives: the slippage guard.
            let min = if rng.gen_ratio(1, 10) {
                Some("1000000.00")
            } else {
                None
            };
            (user, krw, min)
        })
        .collect();

    // The driver publishes at the set rate, retrying a request (same saga id) while the broker
    // is down. It runs beside the fault schedule.
    let driver_client = ids.connect(&url, "client").await;
    let driver_users = users.clone();
    let driver = tokio::spawn(async move {
        let js = runtime::broker::jetstream(driver_client);
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / rate.max(1)));
        let mut ids = Vec::with_capacity(amounts.len());
        for (user, krw, min) in amounts {
            tick.tick().await;
            let saga = SagaId::new_v7();
            let req = events::Event::ExchangeRequested(events::ExchangeRequested {
                saga_id: saga,
                user_id: driver_users[user].clone(),
                krw_amount: Krw::parse(&krw.to_string()).unwrap(),
                min_usd_amount: min.map(|m| Usd::parse(m).unwrap()),
            });
            loop {
                let sent = async {
                    js.send_publish(
                        req.subject(),
                        async_nats::jetstream::message::PublishMessage::build()
                            .payload(req.to_json().into())
                            .message_id(saga.to_string()),
                    )
                    .await
                    .ok()?
                    .await
                    .ok()
                };
                if sent.await.is_some() {
                    break;
                }
            }
            ids.push(saga);
        }
        ids
    });

    let started = Instant::now();
    let mut counts = Counts::default();
    for ((at_ms, kind), pick) in plan.iter().zip(picks) {
        // A deliberate fault schedule: faults land at planned moments of the load.
        tokio::time::sleep_until((started + Duration::from_millis(*at_ms)).into()).await;
        match *kind {
            "kill" => {
                let s = services.get_mut(pick).unwrap();
                s.kill9();
                s.spawn();
                *counts.kills.entry(pick).or_default() += 1;
            }
            "stop" => {
                let s = &services[pick];
                s.signal("-STOP");
                tokio::time::sleep(Duration::from_millis(ACK_WAIT_MS + 500)).await;
                s.signal("-CONT");
                counts.stops += 1;
            }
            "venue-kill" => {
                venue.kill9();
                venue.spawn();
                counts.venue_kills += 1;
            }
            "venue-stop" => {
                // Hung, not gone: every call in flight runs into fx-trade's deadline.
                venue.signal("-STOP");
                tokio::time::sleep(Duration::from_millis(3 * VENUE_TIMEOUT_MS)).await;
                venue.signal("-CONT");
                counts.venue_stops += 1;
            }
            "power" => {
                for s in services.values_mut() {
                    s.kill9();
                }
                venue.kill9();
                broker.kill();
                fs.as_mut()
                    .expect("power cuts are planned only on LazyFs")
                    .power_cut()
                    .expect("power cut");
                broker.restart();
                venue.spawn();
                for s in services.values_mut() {
                    s.spawn();
                }
                counts.power_cuts += 1;
            }
            _ => {
                broker.restart();
                counts.broker_restarts += 1;
            }
        }
    }
    let saga_ids = driver.await.unwrap();
    let faults_done = Instant::now();

    // Quiescence: every saga terminal in the tracker.
    let terminal = ["COMPLETED", "REJECTED", "COMPENSATED"];
    let live = wait_for(
        "every saga to be terminal in the tracker",
        QUIESCE_DEADLINE_MS,
        || async {
            let sagas = tokio::task::spawn_blocking(move || all_sagas(tracker_port))
                .await
                .ok()??;
            let done = saga_ids.iter().all(|id| {
                sagas
                    .get(&id.to_string())
                    .is_some_and(|s| terminal.contains(&s["state"].as_str().unwrap_or("")))
            });
            done.then_some(sagas)
        },
    )
    .await;
    let quiesce_ms = faults_done.elapsed().as_millis();

    // The house's reversals run after the users' sagas ended, and a service killed near the
    // end of the plan may still be starting: wait until every service answers, fx-trade has
    // booked every reversal and its books reconcile with the venue.
    let reconciled = testkit::try_wait_for(QUIESCE_DEADLINE_MS, || async {
        let a = fxctl::audit(&client, "chaos").await.ok()?;
        (a["ok"] == Value::Bool(true)).then_some(())
    })
    .await
    .is_some();

    // Balances are what the outcomes imply.
    let mut outcomes: BTreeMap<&str, u32> = BTreeMap::new();
    let mut expect: BTreeMap<String, (Decimal, Decimal)> = deposits
        .iter()
        .map(|(u, d)| (u.clone(), (*d, Decimal::ZERO)))
        .collect();
    for id in &saga_ids {
        let s = &live[&id.to_string()];
        let state = s["state"].as_str().unwrap();
        *outcomes
            .entry(terminal.iter().find(|t| **t == state).unwrap())
            .or_default() += 1;
        assert!(
            s["inconsistent"] == Value::Bool(false),
            "inconsistent saga: {s:#}"
        );
        if state == "COMPLETED" {
            let e = expect.get_mut(s["user_id"].as_str().unwrap()).unwrap();
            e.0 -= dec(&s["krw_amount"]);
            e.1 += dec(&s["usd_amount"]);
        }
    }
    let mut balance_failures = Vec::new();
    for u in &users {
        let b = fxctl::balance(&client, u, "chaos")
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "balance of {u}: {e}\nfx-krw log:\n{}\nfx-usd log:\n{}",
                    services["krw"].log_tail(30),
                    services["usd"].log_tail(30)
                )
            });
        let (krw, usd) = expect[u.as_str()];
        if dec(&Value::from(b.krw_available.clone())) != krw
            || b.krw_held != "0"
            || dec(&Value::from(b.usd.clone())) != usd
        {
            balance_failures.push(format!("{u}: have {b:?}, want krw {krw} usd {usd}"));
        }
    }
    let audit = fxctl::audit(&client, "chaos").await.unwrap();
    let dlq = fxctl::dlq_list(&client).await.unwrap();

    // A tracker rebuilt from the stream equals the live one.
    let rebuilt_port = free_port();
    let identity = Some(("tracker", ids.password("tracker")));
    let mut rebuilt = Service {
        name: "tracker-rebuilt",
        bin: bins.join("fx-tracker"),
        args: Vec::new(),
        env: service_env("tracker-rebuilt", &url, identity, dir.path(), rebuilt_port),
        log: dir.path().join("tracker-rebuilt.log"),
        child: None,
        http_port: rebuilt_port,
    };
    rebuilt.spawn();
    let live_seq = http_get(tracker_port, "/api/stats").unwrap()["last_seq"]
        .as_u64()
        .unwrap();
    wait_for("the rebuilt tracker to catch up", 60_000, || async move {
        let s = http_get(rebuilt_port, "/api/stats")?;
        (s["last_seq"].as_u64()? >= live_seq).then_some(())
    })
    .await;
    let live_now = tokio::task::spawn_blocking(move || all_sagas(tracker_port))
        .await
        .unwrap()
        .expect("the live tracker answers");
    let again = tokio::task::spawn_blocking(move || all_sagas(rebuilt_port))
        .await
        .unwrap()
        .expect("the rebuilt tracker answers");
    let strip = |m: &BTreeMap<String, Value>| -> BTreeMap<String, (Value, Value, Value, Value)> {
        m.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    (
                        v["state"].clone(),
                        v["krw_amount"].clone(),
                        v["usd_amount"].clone(),
                        v["last_seq"].clone(),
                    ),
                )
            })
            .collect()
    };
    let rebuild_equal = strip(&live_now) == strip(&again);

    let audit_ok = audit["ok"] == Value::Bool(true);
    println!("\n=== chaos summary (seed {seed}) ===");
    println!("sagas            {}", saga_ids.len());
    println!("outcomes         {outcomes:?}");
    println!("service kills    {:?}", counts.kills);
    println!("SIGSTOPs         {}", counts.stops);
    println!("venue kills      {}", counts.venue_kills);
    println!("venue SIGSTOPs   {}", counts.venue_stops);
    println!("broker restarts  {}", counts.broker_restarts);
    println!("power cuts       {}", counts.power_cuts);
    println!("time to quiesce  {quiesce_ms} ms");
    println!(
        "1 conservation / 2 no negative / 4 once   {}",
        if audit_ok { "ok" } else { "FAILED" }
    );
    let v = &audit["trade"]["venue"];
    println!(
        "  fx-trade reconciled with the venue     {} ({} executions: {} buys, {} sells; FX P&L {} KRW; {} reversals pending)",
        if v["ok"] == Value::Bool(true) {
            "ok"
        } else {
            "FAILED"
        },
        v["executions"],
        v["buys"],
        v["sells"],
        v["pnl_krw"],
        audit["trade"]["reversals_pending"],
    );
    println!("3 every saga terminal                    ok");
    println!(
        "  balances match outcomes                {}",
        if balance_failures.is_empty() {
            "ok"
        } else {
            "FAILED"
        }
    );
    println!(
        "5 rebuilt tracker equals live            {}",
        if rebuild_equal { "ok" } else { "FAILED" }
    );
    println!(
        "6 FX_DLQ holds no good event             {}",
        if dlq.is_empty() { "ok" } else { "FAILED" }
    );
    println!("replay: CHAOS_SEED={seed} cargo test -p fx-tests --test chaos -- --nocapture");
    assert!(
        audit_ok && reconciled,
        "audit: {audit:#}\nfx-venue log:\n{}",
        venue.log_tail(20)
    );
    assert_eq!(audit["trade"]["reversals_pending"], Value::from(0));
    assert!(balance_failures.is_empty(), "{balance_failures:#?}");
    assert!(rebuild_equal, "rebuilt tracker differs from the live one");
    assert!(dlq.is_empty(), "dead letters: {dlq:#?}");
    assert_eq!(counts.kills.values().sum::<u32>() as usize, kills);
}
