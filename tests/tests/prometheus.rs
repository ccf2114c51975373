//! The alert rules in a real Prometheus: the four service binaries and fx-venue as processes on
//! a real nats-server with `config/nats.conf`, scraped by a real Prometheus running the shipped
//! `config/prometheus/` (its scrape jobs and its rules), with the STUCK threshold and `for:`
//! shortened and the intervals at one second. fx-usd is stopped while a saga is pinned (filled,
//! waiting for its credit): FxSagaStuck fires in Prometheus's own `/api/v1/alerts`, and resolves
//! once fx-usd is back and the saga completes. A dead letter on the way shows FX_DLQ's depth
//! (`fx_tracker_dlq_messages`) reaching Prometheus and FxDlqGrowing firing.
//!
//! Skipped, with a message, where no `prometheus` binary is found (`PROMETHEUS_BIN`, or on
//! `PATH`; `scripts/test.sh` installs Debian's package where it can).

mod common;

use std::path::{Path, PathBuf};

use common::Identities;
use events::{Krw, UserId};
use fx_tests::procs::{binaries, http_get, service_env, venue_env, Service};
use serde_json::Value;
use testkit::{free_port, wait_for};

/// Every wait of this test; each is a condition that normally holds within a few seconds.
const DEADLINE_MS: u64 = 60_000;
/// The STUCK threshold of ORDER_PLACED here, seconds (the tracker's `FX_STUCK_AFTER_MS` too).
const STUCK_AFTER_S: u64 = 2;

/// The prometheus binary: `PROMETHEUS_BIN`, or `prometheus` on `PATH`.
fn prometheus_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PROMETHEUS_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
}

/// `text` with the one occurrence of `from` at or after `after` replaced; panics when there
/// is none, so a rules file that drifted from this test fails loudly instead of testing
/// something else.
fn replace_after(text: &str, after: &str, from: &str, to: &str) -> String {
    let start = text
        .find(after)
        .unwrap_or_else(|| panic!("{after:?} not found"));
    let at = start
        + text[start..]
            .find(from)
            .unwrap_or_else(|| panic!("{from:?} not found after {after:?}"));
    format!("{}{to}{}", &text[..at], &text[at + from.len()..])
}

/// Writes the shipped config into `dir` with this test's ports, one-second intervals, and
/// FxSagaStuck's threshold for ORDER_PLACED and its `for:` shortened.
fn write_config(dir: &Path, targets: &[(&str, &str, u16)]) {
    let shipped = testkit::workspace_root().join("config/prometheus");
    let mut config = std::fs::read_to_string(shipped.join("prometheus.yml")).unwrap();
    for (from, to) in [
        ("scrape_interval: 5s", "scrape_interval: 1s"),
        ("scrape_timeout: 4s", "scrape_timeout: 1s"),
        ("evaluation_interval: 5s", "evaluation_interval: 1s"),
    ] {
        config = replace_after(&config, "global:", from, to);
    }
    for (job, shipped, port) in targets {
        config = replace_after(
            &config,
            &format!("job_name: {job}\n"),
            shipped,
            &format!("127.0.0.1:{port}"),
        );
    }
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let mut rules = std::fs::read_to_string(shipped.join("alerts.yml")).unwrap();
    rules = replace_after(
        &rules,
        "- record: fx:threshold:saga_stuck_seconds\n        expr: vector(60)\n        labels: { state: ORDER_PLACED }",
        "vector(60)",
        &format!("vector({STUCK_AFTER_S})"),
    );
    rules = replace_after(&rules, "- alert: FxSagaStuck", "for: 1m", "for: 2s");
    std::fs::write(dir.join("alerts.yml"), rules).unwrap();
}

/// A Prometheus HTTP API answer's `data`; `None` while it does not answer.
fn api(port: u16, path: &str, query: Option<&str>) -> Option<Value> {
    let mut req = ureq::get(&format!("http://127.0.0.1:{port}{path}"));
    if let Some(q) = query {
        req = req.query("query", q);
    }
    let mut resp = req.call().ok()?;
    let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().ok()?).ok()?;
    (v["status"] == "success").then(|| v["data"].clone())
}

/// The alerts Prometheus has, pending or firing, named `name`.
fn alerts(port: u16, name: &str) -> Option<Vec<Value>> {
    let data = api(port, "/api/v1/alerts", None)?;
    Some(
        data["alerts"]
            .as_array()?
            .iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .cloned()
            .collect(),
    )
}

/// The value of an instant query with one result.
fn query_one(port: u16, q: &str) -> Option<f64> {
    let data = api(port, "/api/v1/query", Some(q))?;
    let result = data["result"].as_array()?;
    if result.len() != 1 {
        return None;
    }
    result[0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_pinned_while_fx_usd_is_down_fires_fx_saga_stuck_which_resolves_when_it_is_back() {
    let Some(prometheus) = prometheus_bin() else {
        println!(
            "skipped: no prometheus binary (set PROMETHEUS_BIN, or install Debian's \
             prometheus package; scripts/test.sh does where it can)"
        );
        return;
    };
    let bins = binaries();
    let dir = tempfile::tempdir().unwrap();
    let ids = Identities::random();
    let broker = ids.broker();
    let url = broker.url();

    let venue_port = free_port();
    let env = venue_env(dir.path(), venue_port, &[]);
    let mut venue = Service::new(&bins, "venue", env, dir.path(), venue_port);
    venue.spawn();
    let mut services = Vec::new();
    for name in ["krw", "trade", "usd", "tracker"] {
        let port = free_port();
        let mut env = service_env(
            name,
            &url,
            Some((name, ids.password(name))),
            dir.path(),
            port,
        );
        env.extend([
            (
                "FX_VENUE_URL".into(),
                format!("http://127.0.0.1:{venue_port}"),
            ),
            // The tracker's STUCK agrees with the rule's shortened threshold.
            (
                "FX_STUCK_AFTER_MS".into(),
                (STUCK_AFTER_S * 1000).to_string(),
            ),
        ]);
        let mut s = Service::new(&bins, name, env, dir.path(), port);
        s.spawn();
        services.push(s);
    }
    let port_of = |i: usize| services[i].http_port;
    let (tracker_port, usd) = (port_of(3), 2);

    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    write_config(
        &prom_dir,
        &[
            ("fx-krw", "127.0.0.1:9101", port_of(0)),
            ("fx-trade", "127.0.0.1:9102", port_of(1)),
            ("fx-usd", "127.0.0.1:9103", port_of(2)),
            ("fx-tracker", "127.0.0.1:8080", tracker_port),
            ("fx-venue", "127.0.0.1:9104", venue_port),
        ],
    );
    let prom_port = free_port();
    let mut prom = Service {
        name: "prometheus",
        bin: prometheus,
        args: vec![
            format!(
                "--config.file={}",
                prom_dir.join("prometheus.yml").display()
            ),
            format!("--storage.tsdb.path={}", prom_dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
        env: Vec::new(),
        log: dir.path().join("prometheus.log"),
        child: None,
        http_port: prom_port,
    };
    prom.spawn();

    // Every job of the shipped scrape config is scraped and up.
    wait_for("Prometheus to scrape all five jobs up", DEADLINE_MS, || {
        let up = query_one(prom_port, "count(up{job=~\"fx-.*\"} == 1)");
        std::future::ready((up == Some(5.0)).then_some(()))
    })
    .await;
    let admin = ids.connect(&url, "admin").await;
    let alice = UserId::parse("alice").unwrap();
    fxctl::deposit(
        &admin,
        &alice,
        Some(Krw::parse("5000000").unwrap()),
        None,
        "test",
    )
    .await
    .unwrap();
    assert_eq!(alerts(prom_port, "FxSagaStuck"), Some(vec![]));

    // A dead letter: FX_DLQ's depth reaches Prometheus, and FxDlqGrowing (no `for:`) fires.
    let client = ids.connect(&url, "client").await;
    let js = runtime::broker::jetstream(client.clone());
    js.publish("fx.exchange.requested.alice", "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    wait_for(
        "fx_tracker_dlq_messages = 1 in Prometheus",
        DEADLINE_MS,
        || {
            let v = query_one(prom_port, "fx_tracker_dlq_messages");
            std::future::ready((v == Some(1.0)).then_some(()))
        },
    )
    .await;
    wait_for("FxDlqGrowing firing", DEADLINE_MS, || {
        let firing = alerts(prom_port, "FxDlqGrowing")
            .is_some_and(|a| a.iter().any(|a| a["state"] == "firing"));
        std::future::ready(firing.then_some(()))
    })
    .await;

    // fx-usd stops; a saga fills and stays pinned, waiting for its credit.
    services[usd].kill9();
    let saga = fxctl::exchange(
        &client,
        alice.clone(),
        Krw::parse("1400000").unwrap(),
        None,
        None,
        None,
    )
    .await
    .unwrap()
    .saga_id;
    let state = |s: Option<Value>| s.and_then(|s| s["state"].as_str().map(str::to_owned));
    wait_for("the saga ORDER_PLACED in the tracker", DEADLINE_MS, || {
        let st = state(http_get(tracker_port, &format!("/api/sagas/{saga}")));
        std::future::ready((st.as_deref() == Some("ORDER_PLACED")).then_some(()))
    })
    .await;

    let fired = wait_for("FxSagaStuck firing for ORDER_PLACED", DEADLINE_MS, || {
        let firing = alerts(prom_port, "FxSagaStuck").and_then(|a| {
            a.into_iter()
                .find(|a| a["state"] == "firing" && a["labels"]["state"] == "ORDER_PLACED")
        });
        std::future::ready(firing)
    })
    .await;
    assert_eq!(fired["labels"]["severity"], "page", "{fired}");
    assert_eq!(
        fired["annotations"]["runbook_url"], "docs/runbook.md#fxsagastuck",
        "{fired}"
    );
    assert_eq!(
        query_one(
            prom_port,
            "fx_tracker_stuck_sagas{job=\"fx-tracker\",state=\"ORDER_PLACED\"}"
        ),
        Some(1.0),
        "the tracker's own STUCK (FX_STUCK_AFTER_MS) agrees"
    );
    assert_eq!(query_one(prom_port, "up{job=\"fx-usd\"}"), Some(0.0));

    // fx-usd is back: it credits, fx-krw commits, and the alert resolves.
    services[usd].spawn();
    wait_for("the saga COMPLETED", DEADLINE_MS, || {
        let st = state(http_get(tracker_port, &format!("/api/sagas/{saga}")));
        std::future::ready((st.as_deref() == Some("COMPLETED")).then_some(()))
    })
    .await;
    wait_for("FxSagaStuck resolved", DEADLINE_MS, || {
        let gone = alerts(prom_port, "FxSagaStuck").is_some_and(|a| a.is_empty());
        std::future::ready(gone.then_some(()))
    })
    .await;
    assert_eq!(
        query_one(prom_port, "fx_tracker_stuck_sagas{state=\"ORDER_PLACED\"}"),
        Some(0.0)
    );
    drop(prom);
    drop(services);
    drop(venue);
}
