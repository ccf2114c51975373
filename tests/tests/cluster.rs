//! The saga on a local 3-node JetStream cluster with R3 streams (`FX_STREAM_REPLICAS=3`): the
//! node that leads `FX` is SIGKILLed while sagas run, users keep exchanging (retrying a request
//! with the same saga id when a publish fails during the election), the node comes back, and
//! every saga ends COMPLETED with exact balances and a clean audit.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use events::SagaId;
use testkit::{wait_for, NatsCluster};

const USERS: [&str; 6] = ["ana", "ben", "cho", "dan", "eun", "fay"];
const DEPOSIT_KRW: u64 = 10_000_000;
/// Each exchange: 700,000 KRW at the flat 1400 KRW/USD gives exactly 500.00 USD.
const EXCHANGE_KRW: u64 = 700_000;
const EXCHANGE_USD_CENTS: u64 = 50_000;
/// Sagas per user while the leader's node is killed and restarted.
const ROUNDS_DURING_FAILOVER: usize = 4;
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_complete_while_the_stream_leaders_node_is_killed_and_restarted() {
    if std::env::var_os("RUST_LOG").is_some() {
        runtime::telemetry::init_tracing();
    }
    let t0 = Instant::now();
    let cluster = NatsCluster::start(3).await;
    let mut sys = System::start_on(cluster, 3).await;
    eprintln!("cluster and services up after {:?}", t0.elapsed());

    for name in ["FX", "FX_DLQ"] {
        let stream = sys.js.get_stream(name).await.unwrap();
        assert_eq!(stream.cached_info().config.num_replicas, 3, "{name} is R3");
    }
    let nats = &sys.nats;
    wait_for("a leader of FX", 10_000, || async {
        nats.cluster().leader_of_stream("FX")
    })
    .await;

    for user in USERS {
        sys.deposit_krw(user, &DEPOSIT_KRW.to_string()).await;
    }

    // A first round on the healthy cluster.
    let client = sys.client.clone();
    let js = sys.js.clone();
    let first = futures::future::join_all(USERS.iter().map(|&user| {
        let (client, js) = (client.clone(), js.clone());
        async move { run_saga(&client, &js, user, SagaId::new_v7(), EXCHANGE_KRW).await }
    }))
    .await;
    for (o, _) in &first {
        assert_eq!(o.state, "COMPLETED", "{o:?}");
    }

    // Every user keeps exchanging while the leader's node is killed and later restarted.
    let completed = AtomicUsize::new(0);
    let recovered = AtomicUsize::new(0);
    let users = futures::future::join_all(USERS.iter().map(|&user| {
        let (client, js, completed, recovered) =
            (client.clone(), js.clone(), &completed, &recovered);
        async move {
            for _ in 0..ROUNDS_DURING_FAILOVER {
                let saga = SagaId::new_v7();
                let (o, first_try) = run_saga(&client, &js, user, saga, EXCHANGE_KRW).await;
                assert_eq!(o.state, "COMPLETED", "saga {saga} of {user}: {o:?}");
                completed.fetch_add(1, Ordering::SeqCst);
                if !first_try {
                    recovered.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }));
    let nats = &mut sys.nats;
    let completed_ref = &completed;
    let js_diag = js.clone();
    let chaos = async move {
        wait_for("the first sagas of the run", 20_000, || async {
            (completed_ref.load(Ordering::SeqCst) >= 3).then_some(())
        })
        .await;
        let leader = nats
            .cluster()
            .leader_of_stream("FX")
            .expect("FX has a leader");
        let killed_at = Instant::now();
        nats.cluster_mut().kill(leader);
        let done_at_kill = completed_ref.load(Ordering::SeqCst);
        eprintln!("killed n{leader}, the leader of FX, after {done_at_kill} sagas");
        let next = wait_for("a new leader of FX", 30_000, || async {
            nats.cluster().leader_of_stream("FX")
        })
        .await;
        assert_ne!(next, leader);
        eprintln!("n{next} leads FX {:?} after the kill", killed_at.elapsed());
        // Progress while the node is down.
        let want = (done_at_kill + USERS.len()).min(USERS.len() * ROUNDS_DURING_FAILOVER);
        let progressed = tokio::time::timeout(
            Duration::from_millis(30_000),
            wait_for("sagas to complete with a node down", 60_000, || async {
                (completed_ref.load(Ordering::SeqCst) >= want).then_some(())
            }),
        )
        .await;
        if progressed.is_err() {
            // Say where it stands: the stream and its consumers as each live node sees them.
            let mut report = String::new();
            let stream = js_diag
                .get_stream("FX")
                .await
                .map(|s| s.cached_info().state.clone());
            report.push_str(&format!("FX: {stream:?}\n"));
            for i in 0..3 {
                if !nats.cluster().is_running(i) {
                    continue;
                }
                let port = nats.cluster().monitor_port(i);
                let jsz = testkit::cluster::monitor_json(
                    port,
                    "/jsz?accounts=true&streams=true&consumers=true",
                );
                let fx: Vec<_> = jsz
                    .iter()
                    .flat_map(|j| j["account_details"].as_array().cloned().unwrap_or_default())
                    .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
                    .filter(|s| s["name"] == "FX")
                    .map(|s| {
                        let cons: Vec<_> = s["consumer_detail"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                            .iter()
                            .map(|c| {
                                format!(
                                    "{} pending {} delivered {} waiting {} leader {}",
                                    c["name"],
                                    c["num_pending"],
                                    c["delivered"]["stream_seq"],
                                    c["num_waiting"],
                                    c["cluster"]["leader"]
                                )
                            })
                            .collect();
                        format!(
                            "state {} leader {} consumers {cons:?}",
                            s["state"], s["cluster"]["leader"]
                        )
                    })
                    .collect();
                report.push_str(&format!("n{i}: {fx:?}\n"));
            }
            panic!("no sagas completed with a node down:\n{report}");
        }
        nats.cluster_mut().restart(leader).await;
        eprintln!(
            "restarted n{leader} after {} sagas",
            completed_ref.load(Ordering::SeqCst)
        );
        leader
    };
    let (_, restarted) = tokio::join!(users, chaos);
    eprintln!(
        "{} sagas during the failover, {} of them not answered at the first attempt",
        completed.load(Ordering::SeqCst),
        recovered.load(Ordering::SeqCst)
    );

    // The restarted node catches up, and one more round runs on the whole cluster.
    let cluster = sys.nats.cluster();
    let monitor = cluster.monitor_port(restarted);
    wait_for("the restarted node to hold FX again", 20_000, || async {
        let jsz = testkit::cluster::monitor_json(monitor, "/jsz?accounts=true&streams=true")?;
        let holds = jsz["account_details"]
            .as_array()?
            .iter()
            .filter_map(|a| a["stream_detail"].as_array())
            .flatten()
            .any(|s| s["name"] == "FX");
        holds.then_some(())
    })
    .await;
    let last = futures::future::join_all(USERS.iter().map(|&user| {
        let (client, js) = (client.clone(), js.clone());
        async move { run_saga(&client, &js, user, SagaId::new_v7(), EXCHANGE_KRW).await }
    }))
    .await;
    for (o, _) in &last {
        assert_eq!(o.state, "COMPLETED", "{o:?}");
    }

    // Exact balances: every saga moved its KRW and credited its USD exactly once.
    let per_user = (2 + ROUNDS_DURING_FAILOVER) as u64;
    for user in USERS {
        assert_eq!(
            sys.balance(user).await,
            balance(
                user,
                &(DEPOSIT_KRW - per_user * EXCHANGE_KRW).to_string(),
                "0",
                &usd(per_user * EXCHANGE_USD_CENTS)
            ),
            "{user}"
        );
    }
    sys.assert_audit_ok().await;
    eprintln!("done in {:?}", t0.elapsed());
}
