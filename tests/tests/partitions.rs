//! Partitioned services (`FX_PARTITIONS=2`) on a local 3-node JetStream cluster with R3 streams:
//! two instances of each of fx-krw, fx-trade and fx-usd run as real processes, each owning the
//! users whose id hashes to its partition, plus one fx-tracker reading everything. Sagas of
//! many users run while (a) the node leading `FX` is SIGKILLed and later restarted, and (b) one
//! fx-krw instance is SIGKILLed and restarted: only its partition pauses, the other keeps
//! completing sagas. Then every balance is exact, both partitions' audits are clean, FX_DLQ is
//! empty, the tracker shows every saga COMPLETED, and the broker put every event in the
//! partition `events::partition_of` computes.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use common::*;
use events::{partition_of, Event, SagaId, Subject};
use fx_tests::procs::{binaries, http_get, is_ready, Service};
use testkit::{free_port, try_wait_for, wait_for, NatsCluster};

const PARTITIONS: u32 = 2;
/// Every process: (name, binary, partition).
const INSTANCES: [(&str, &str, Option<u32>); 7] = [
    ("usd-p0", "usd", Some(0)),
    ("usd-p1", "usd", Some(1)),
    ("trade-p0", "trade", Some(0)),
    ("trade-p1", "trade", Some(1)),
    ("krw-p0", "krw", Some(0)),
    ("krw-p1", "krw", Some(1)),
    ("tracker", "tracker", None),
];
const USERS: usize = 12;
/// How long a process may take to start consuming (a cluster elects leaders first).
const READY_DEADLINE_MS: u64 = 60_000;
const DEPOSIT_KRW: u64 = 10_000_000;
/// 700,000 KRW at the venue's flat 1400 KRW/USD is exactly 500.00 USD.
const EXCHANGE_KRW: u64 = 700_000;
const EXCHANGE_USD_CENTS: u64 = 50_000;
const ROUNDS_DURING_FAILOVER: usize = 2;

fn users() -> Vec<String> {
    (0..USERS).map(|i| format!("user{i:02}")).collect()
}

fn partition(user: &str) -> u32 {
    partition_of(&uid(user), PARTITIONS)
}

/// Runs one saga per user of `users`, all at once; each must end COMPLETED.
async fn round(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    users: &[String],
    done: &AtomicUsize,
) {
    futures::future::join_all(users.iter().map(|user| async move {
        let saga = SagaId::new_v7();
        let (o, _) = run_saga(client, js, user, saga, EXCHANGE_KRW).await;
        assert_eq!(o.state, "COMPLETED", "saga {saga} of {user}: {o:?}");
        done.fetch_add(1, Ordering::SeqCst);
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_keep_running_through_a_leader_kill_and_an_instance_kill() {
    let t0 = Instant::now();
    let bins = binaries();
    let mut cluster = NatsCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let url = cluster.urls();
    let mut procs: BTreeMap<&str, Service> = BTreeMap::new();
    for (name, bin, part) in INSTANCES {
        let http_port = free_port();
        let mut env: Vec<(String, String)> = vec![
            ("NATS_URL".into(), url.clone()),
            ("FX_STREAM_REPLICAS".into(), "3".into()),
            ("FX_PARTITIONS".into(), PARTITIONS.to_string()),
            (
                "FX_DATA_DIR".into(),
                dir.path().join(name).display().to_string(),
            ),
            ("FX_HTTP_ADDR".into(), format!("127.0.0.1:{http_port}")),
            ("FX_ACK_WAIT_MS".into(), "3000".into()),
            ("FX_VENUE_LATENCY_MS".into(), "0".into()),
            ("RUST_LOG".into(), "info".into()),
            // A failure's log should end with its error, not a backtrace.
            ("RUST_BACKTRACE".into(), "0".into()),
        ];
        if let Some(k) = part {
            env.push(("FX_PARTITION".into(), k.to_string()));
        }
        let mut s = Service {
            name,
            bin: bins.join(format!("fx-{bin}")),
            args: Vec::new(),
            env,
            log: dir.path().join(format!("{name}.log")),
            child: None,
            http_port,
        };
        s.spawn();
        procs.insert(name, s);
    }
    for (name, s) in &procs {
        let port = s.http_port;
        let ready = try_wait_for(READY_DEADLINE_MS, || async move {
            // The tracker has no /readyz: its API answering is enough.
            let ready = if *name == "tracker" {
                http_get(port, "/api/stats").is_some()
            } else {
                is_ready(port)
            };
            ready.then_some(())
        })
        .await;
        assert!(
            ready.is_some(),
            "{name} not ready; its log ends:\n{}",
            s.log_tail(30)
        );
    }
    eprintln!("cluster and 7 processes ready after {:?}", t0.elapsed());

    let client = async_nats::connect(cluster.url_list().as_slice())
        .await
        .unwrap();
    let js = runtime::broker::jetstream(client.clone());
    let info = js.get_stream("FX").await.unwrap().cached_info().clone();
    assert_eq!(info.config.num_replicas, 3);
    assert_eq!(fxctl::partitions(&client).await.unwrap(), PARTITIONS);

    // Users of both partitions.
    let all = users();
    let (p0, p1): (Vec<String>, Vec<String>) = all.iter().cloned().partition(|u| partition(u) == 0);
    assert!(
        p0.len() >= 3 && p1.len() >= 3,
        "users spread: {p0:?} {p1:?}"
    );
    for user in &all {
        // fxctl routes each deposit to the user's own instances.
        fxctl::deposit(
            &client,
            &uid(user),
            Some(events::Krw::parse(&DEPOSIT_KRW.to_string()).unwrap()),
            None,
            "test",
        )
        .await
        .unwrap();
    }
    let done = AtomicUsize::new(0);
    round(&client, &js, &all, &done).await;
    eprintln!("first round done after {:?}", t0.elapsed());

    // (a) The node leading FX is killed while every user exchanges, and restarted.
    let sagas = async {
        for _ in 0..ROUNDS_DURING_FAILOVER {
            round(&client, &js, &all, &done).await;
        }
    };
    let chaos = async {
        let before = done.load(Ordering::SeqCst);
        wait_for("sagas to run", 20_000, || async {
            (done.load(Ordering::SeqCst) >= before + 3).then_some(())
        })
        .await;
        let leader = cluster.leader_of_stream("FX").expect("FX has a leader");
        cluster.kill(leader);
        eprintln!("killed n{leader}, the leader of FX");
        let next = wait_for("a new leader of FX", 30_000, || async {
            cluster.leader_of_stream("FX")
        })
        .await;
        assert_ne!(next, leader);
        let at_kill = done.load(Ordering::SeqCst);
        wait_for("sagas to complete with a node down", 60_000, || async {
            (done.load(Ordering::SeqCst) >= at_kill + 3).then_some(())
        })
        .await;
        cluster.restart(leader).await;
        eprintln!("restarted n{leader}");
    };
    tokio::join!(sagas, chaos);
    eprintln!("leader failover done after {:?}", t0.elapsed());

    // (b) fx-krw of partition 0 is killed: partition 1 keeps completing sagas, partition 0's
    // requests wait on the stream and complete once the instance is back.
    procs.get_mut("krw-p0").unwrap().kill9();
    let p0_sagas: Vec<SagaId> = p0.iter().map(|_| SagaId::new_v7()).collect();
    let waiting = futures::future::join_all(p0.iter().zip(&p0_sagas).map(|(user, &saga)| {
        let (client, js) = (client.clone(), js.clone());
        async move { run_saga(&client, &js, user, saga, EXCHANGE_KRW).await }
    }));
    let while_down = async {
        round(&client, &js, &p1, &done).await;
        // Partition 1 finished a whole round; partition 0's requests are on the stream, and
        // no hold was placed for any of them (nobody consumes partition 0 of fx-krw).
        for &saga in &p0_sagas {
            let kinds: Vec<String> = wait_for("the request on the stream", 20_000, || async {
                let events = saga_events(&js, saga).await;
                (!events.is_empty()).then(|| events.iter().map(|e| e.kind().type_name()).collect())
            })
            .await;
            assert_eq!(
                kinds,
                ["exchange.requested"],
                "saga {saga} moved while krw-p0 was down"
            );
        }
        eprintln!("partition 1 completed a round with krw-p0 down; restarting it");
        let krw0 = procs.get_mut("krw-p0").unwrap();
        krw0.spawn();
        let port = krw0.http_port;
        wait_for("krw-p0 to be ready again", 60_000, || async move {
            is_ready(port).then_some(())
        })
        .await;
    };
    let (outcomes, ()) = tokio::join!(waiting, while_down);
    for ((o, _), user) in outcomes.iter().zip(&p0) {
        assert_eq!(o.state, "COMPLETED", "{user}: {o:?}");
    }
    eprintln!("instance kill done after {:?}", t0.elapsed());

    // Exact balances: every user's sagas moved KRW and credited USD exactly once.
    for user in &all {
        let rounds = 1 + ROUNDS_DURING_FAILOVER as u64 + 1;
        assert_eq!(
            fxctl::balance(&client, &uid(user), "test").await.unwrap(),
            balance(
                user,
                &(DEPOSIT_KRW - rounds * EXCHANGE_KRW).to_string(),
                "0",
                &usd(rounds * EXCHANGE_USD_CENTS)
            ),
            "{user} (partition {})",
            partition(user)
        );
    }
    let audit = fxctl::audit(&client, "test").await.unwrap();
    assert_eq!(audit["ok"], serde_json::json!(true), "{audit:#}");
    assert_eq!(audit["krw"].as_array().map(Vec::len), Some(2), "{audit:#}");

    // The broker's partition() and events::partition_of agree on every stored event.
    let stored = testkit::stream_messages(&js, "FX").await;
    let total_sagas = (USERS * (2 + ROUNDS_DURING_FAILOVER)) as u64;
    assert!(stored.len() as u64 >= total_sagas * 5);
    for m in &stored {
        let s = Subject::parse(m.subject.as_str()).unwrap();
        assert_eq!(
            s.partition,
            Some(partition_of(&s.user, PARTITIONS)),
            "{}",
            m.subject
        );
    }
    let dlq = js
        .get_stream("FX_DLQ")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(
        dlq,
        0,
        "dead letters: {:?}",
        fxctl::dlq_list(&client).await.unwrap()
    );

    // The single tracker read both partitions.
    let tracker = procs["tracker"].http_port;
    wait_for(
        "the tracker to show every saga COMPLETED",
        30_000,
        || async move {
            let stats = http_get(tracker, "/api/stats")?;
            (stats["by_state"]["COMPLETED"].as_u64() == Some(total_sagas)).then_some(())
        },
    )
    .await;
    eprintln!("done in {:?}", t0.elapsed());
}

/// Every decoded event of one saga on `FX`, in stream order (tolerating an election).
async fn saga_events(js: &async_nats::jetstream::Context, saga: SagaId) -> Vec<Event> {
    let Ok(mut stream) = js.get_stream("FX").await else {
        return Vec::new();
    };
    let Ok(state) = stream.info().await.map(|i| i.state.clone()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for seq in state.first_sequence.max(1)..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            if let Ok(e) = Event::decode(m.subject.as_str(), &m.payload) {
                if e.saga_id() == saga {
                    out.push(e);
                }
            }
        }
    }
    out
}
