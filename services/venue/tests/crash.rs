//! The real fx-venue binary, SIGKILLed under load and restarted on the same store (once as it
//! is, once after a power cut that drops every write not fsynced): every execution it confirmed
//! is still there, by lookup, in the listing, and for a repeated order.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{buy, saga};
use testkit::LazyFs;
use trade::{ClientOrderId, Execution, HttpVenue, OrderOutcome, Venue};

/// fx-venue as a process; SIGKILLed on drop if still running.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn spawn(dir: &Path, log: &Path) -> (Process, String) {
    let port = testkit::free_port();
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_fx-venue"))
        .env("FX_DATA_DIR", dir)
        .env("FX_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("FX_VENUE_VOLATILITY_BPS", "25")
        .env("FX_VENUE_SEED", "3")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start fx-venue");
    let url = format!("http://127.0.0.1:{port}");
    let health = format!("{url}/healthz");
    let http = common::http();
    testkit::wait_for("fx-venue to answer /healthz", 30_000, || {
        let request = http.get(&health).send();
        async move { request.await.ok().filter(|r| r.status().is_success()) }
    })
    .await;
    (Process(child), url)
}

/// Every execution the venue lists, paging by its cursor.
async fn list_all(venue: &HttpVenue) -> Vec<Execution> {
    let mut all = Vec::new();
    loop {
        let after = all.last().map_or(0, |e: &Execution| e.seq);
        let page = venue.executions(after, 37).await.expect("a page");
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_execution_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    kill_and_restart(&dir.path().join("venue"), dir.path(), None).await;
}

/// The same on LazyFs, with a power cut after the SIGKILL: only what fx-venue fsynced is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_execution_survives_a_power_cut() {
    if let Err(why) = LazyFs::available() {
        println!("skipped: this test needs FUSE: {why}");
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let backing = tempfile::tempdir().unwrap();
    let mountpoint = tempfile::tempdir().unwrap();
    let mut fs = LazyFs::mount(backing.path(), mountpoint.path()).expect("mount LazyFs");
    let data = fs.mountpoint().join("venue");
    kill_and_restart(&data, logs.path(), Some(&mut fs)).await;
}

/// Orders from eight clients, SIGKILL in the middle (and a power cut when `fs` is given),
/// a restart on the same `data` dir, then every check.
async fn kill_and_restart(data: &Path, logs: &Path, fs: Option<&mut LazyFs>) {
    let dir = logs;
    let (mut process, url) = spawn(data, &dir.join("first.log")).await;
    let venue = Arc::new(HttpVenue::new(&url, 5_000, 250).unwrap());

    // Eight clients place new orders until told to stop; each keeps what was confirmed.
    let confirmed: Arc<Mutex<BTreeMap<ClientOrderId, Execution>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8u128)
        .map(|w| {
            let (venue, confirmed, stop) = (venue.clone(), confirmed.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u128;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let order = buy(w * 1_000_000 + n, None);
                    match venue.order(&order).await {
                        Ok(OrderOutcome::Executed(e)) => {
                            confirmed
                                .lock()
                                .unwrap()
                                .insert(e.client_order_id.clone(), e);
                        }
                        Ok(other) => panic!("a market order did not execute: {other:?}"),
                        // Orders in flight when the venue dies get no answer: unknown.
                        Err(_) => {}
                    }
                }
            })
        })
        .collect();
    let count = || confirmed.lock().unwrap().len();
    testkit::wait_for("200 confirmed executions", 60_000, || {
        let n = count();
        async move { (n >= 200).then_some(()) }
    })
    .await;
    // SIGKILL while orders are in flight.
    process.0.kill().expect("SIGKILL");
    process.0.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let confirmed = confirmed.lock().unwrap().clone();
    if let Some(fs) = fs {
        let unsynced = fs.unsynced_bytes();
        fs.power_cut().expect("power cut");
        println!("power cut: {unsynced} unsynced bytes lost");
    }

    let (_process, url) = spawn(data, &dir.join("second.log")).await;
    let venue = HttpVenue::new(&url, 5_000, 250).unwrap();
    for (id, e) in &confirmed {
        assert_eq!(
            venue.execution(id).await,
            Ok(Some(e.clone())),
            "confirmed execution {id} lost"
        );
    }
    let listed = list_all(&venue).await;
    let seqs: Vec<u64> = listed.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=listed.len() as u64).collect::<Vec<_>>(),
        "gapless"
    );
    let listed: BTreeMap<_, _> = listed
        .into_iter()
        .map(|e| (e.client_order_id.clone(), e))
        .collect();
    for (id, e) in &confirmed {
        assert_eq!(listed.get(id), Some(e), "{id} missing from the listing");
    }
    // A repeated order gets the original execution, and a new one continues the sequence.
    let (id, first) = confirmed.iter().next().unwrap();
    let again = venue.order(&buy(saga_number(id), None)).await;
    assert_eq!(again, Ok(OrderOutcome::Executed(first.clone())));
    match venue.order(&buy(u128::MAX, None)).await {
        Ok(OrderOutcome::Executed(e)) => assert_eq!(e.seq, listed.len() as u64 + 1),
        other => panic!("a new order after the restart: {other:?}"),
    }
    println!(
        "{} confirmed before SIGKILL, {} in the book after the restart",
        confirmed.len(),
        listed.len()
    );
}

/// The saga number behind a buy's client order id (the tests' sagas are `Uuid::from_u128(n)`).
fn saga_number(id: &ClientOrderId) -> u128 {
    let n = uuid::Uuid::parse_str(id.as_str()).unwrap().as_u128();
    assert_eq!(ClientOrderId::buy(saga(n)), *id);
    n
}
