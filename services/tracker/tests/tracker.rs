//! fx-tracker against a real nats-server: outcomes, flags, the HTTP API, metrics, rebuild.

mod common;

use common::cdp::{chromium, FLAGS};
use common::*;
use events::{EventKind, ReleaseReason};
use serde_json::Value;
use tracker::SagaState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_outcomes_flags_and_serves_the_api() {
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at_now();
    let t = Running::start(&broker.url(), dir.path(), &clock, 10_000).await;

    let completed = Saga::new("alice");
    let trade_failed = Saga::new("bob");
    let credit_failed = Saga::new("carol");
    let rejected = Saga::new("dave");
    let inconsistent = Saga::new("erin");
    let stalled = Saga::new("frank");
    for (s, o) in [
        (&completed, Outcome::Completed),
        (&trade_failed, Outcome::CompensatedTradeFailed),
        (&credit_failed, Outcome::CompensatedCreditFailed),
        (&rejected, Outcome::Rejected),
        (&inconsistent, Outcome::CommittedAndReleased),
        (&stalled, Outcome::Stalled),
    ] {
        for e in s.events(o) {
            broker.publish(&e).await;
        }
    }
    broker.publish(&krw_deposit("alice")).await;
    broker.publish_raw("fx.krw.held.alice", b"not json").await;
    let last = broker.publish_raw("fx.krw.exploded.alice", b"{}").await;
    t.caught_up(last).await;

    // The projection.
    let m = &t.model;
    let state = |s: &Saga| m.get(s.id).unwrap().expect("saga known").state;
    assert_eq!(state(&completed), SagaState::Completed);
    assert_eq!(state(&trade_failed), SagaState::Compensated);
    assert_eq!(state(&credit_failed), SagaState::Compensated);
    assert_eq!(state(&rejected), SagaState::Rejected);
    assert_eq!(state(&inconsistent), SagaState::Completed);
    assert_eq!(state(&stalled), SagaState::KrwHeld);
    assert!(m.get(inconsistent.id).unwrap().unwrap().is_inconsistent());

    // /api/sagas/{id}: every field the contract names.
    let (status, v) = t.json(&format!("/api/sagas/{}", completed.id)).await;
    assert_eq!(status, 200);
    assert_eq!(v["saga_id"], completed.id.to_string());
    assert_eq!(v["state"], "COMPLETED");
    assert_eq!(v["user_id"], "alice");
    assert_eq!(v["krw_amount"], "1500000");
    assert_eq!(v["usd_amount"], "1071.42");
    assert_eq!(v["rate"], "1400");
    assert_eq!(v["stuck"], false);
    assert_eq!(v["inconsistent"], false);
    assert_eq!(v["inconsistent_reasons"], serde_json::json!([]));
    assert!(v["started_at"].as_u64().unwrap() > 0);
    let duration = v["duration_ms"].as_u64().unwrap();
    assert_eq!(
        v["finished_at"].as_u64().unwrap() - v["started_at"].as_u64().unwrap(),
        duration
    );
    let types: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "exchange.requested",
            "krw.held",
            "trade.filled",
            "usd.credited",
            "krw.committed"
        ]
    );
    let first = &v["events"][0];
    assert_eq!(first["subject"], "fx.exchange.requested.alice");
    assert!(first["seq"].as_u64().unwrap() >= 1);
    assert!(first["at"].as_u64().unwrap() > 0);

    let (_, v) = t.json(&format!("/api/sagas/{}", rejected.id)).await;
    assert_eq!(v["state"], "REJECTED");
    assert_eq!(v["usd_amount"], Value::Null);
    assert_eq!(v["rate"], Value::Null);
    assert_eq!(v["failure_reason"], "krw.rejected: insufficient_funds");

    let (_, v) = t.json(&format!("/api/sagas/{}", credit_failed.id)).await;
    assert_eq!(v["state"], "COMPENSATED");
    assert_eq!(v["failure_reason"], "usd.credit_failed: account_frozen");

    let (_, v) = t.json(&format!("/api/sagas/{}", inconsistent.id)).await;
    assert_eq!(v["inconsistent"], true);
    assert!(v["inconsistent_reasons"][0]
        .as_str()
        .unwrap()
        .starts_with("committed and released"));

    // Not stuck yet; STUCK once the injected clock passes the threshold.
    let (_, v) = t.json(&format!("/api/sagas/{}", stalled.id)).await;
    assert_eq!(v["stuck"], false);
    assert_eq!(v["finished_at"], Value::Null);
    assert_eq!(v["duration_ms"], Value::Null);
    clock.advance(120_000);
    let (_, v) = t.json(&format!("/api/sagas/{}", stalled.id)).await;
    assert_eq!(v["stuck"], true);
    assert!(v["stuck_reason"]
        .as_str()
        .unwrap()
        .contains("trade.filled or trade.failed"));
    let (_, v) = t.json(&format!("/api/sagas/{}", completed.id)).await;
    assert_eq!(v["stuck"], false, "terminal sagas are never stuck");

    // Unknown and malformed ids.
    let (status, v) = t
        .json("/api/sagas/00000000-0000-7000-8000-000000000000")
        .await;
    assert_eq!(status, 404);
    assert!(v["error"].as_str().unwrap().contains("no saga"));
    let (status, v) = t.json("/api/sagas/nope").await;
    assert_eq!(status, 404);
    assert!(v["error"].is_string());

    // /api/stats.
    let (_, s) = t.json("/api/stats").await;
    let by_state = s["by_state"].as_object().unwrap();
    assert_eq!(by_state.len(), 8, "every state present: {by_state:?}");
    assert_eq!(s["by_state"]["COMPLETED"], 2);
    assert_eq!(s["by_state"]["COMPENSATED"], 2);
    assert_eq!(s["by_state"]["REJECTED"], 1);
    assert_eq!(s["by_state"]["KRW_HELD"], 1);
    assert_eq!(s["by_state"]["REQUESTED"], 0);
    assert_eq!(s["success_rate"], 0.4);
    assert_eq!(s["compensation_rate"], 0.4);
    assert_eq!(s["rejection_rate"], 0.2);
    for p in ["p50_ms", "p95_ms", "p99_ms"] {
        assert!(s[p].is_u64(), "{p}: {s}");
    }
    assert_eq!(s["stuck"], 1);
    assert_eq!(s["inconsistent"], 1);
    assert_eq!(s["last_seq"], last);
    assert_eq!(s["undecodable"], 2);
    assert_eq!(s["krw_deposits"], 1);
    assert_eq!(s["total"], 6, "deposits are not sagas");

    // /api/sagas: newest first, filters, cursor pagination, bad input.
    let (_, l) = t.json("/api/sagas").await;
    let ids: Vec<&str> = l["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["saga_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 6);
    assert_eq!(ids[0], stalled.id.to_string(), "newest first");
    assert_eq!(ids[5], completed.id.to_string());
    assert_eq!(l["next_cursor"], Value::Null);
    let (_, l) = t.json("/api/sagas?state=compensated").await;
    assert_eq!(l["sagas"].as_array().unwrap().len(), 2);
    let (_, l) = t.json("/api/sagas?user=carol").await;
    assert_eq!(l["sagas"][0]["saga_id"], credit_failed.id.to_string());
    assert_eq!(l["sagas"].as_array().unwrap().len(), 1);
    let (_, l) = t.json("/api/sagas?user=carol&state=COMPLETED").await;
    assert_eq!(l["sagas"].as_array().unwrap().len(), 0);
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (_, page) = t.json(&format!("/api/sagas?limit=4{cursor}")).await;
        for s in page["sagas"].as_array().unwrap() {
            seen.push(s["saga_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ids, "pages join up to the full listing");
    let (status, v) = t.json("/api/sagas?state=DONE").await;
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("COMPENSATED"));
    // Search: reason, flags, time range and amounts.
    let only = saga_ids;
    let (_, l) = t.json("/api/sagas?reason=account_frozen").await;
    assert_eq!(only(&l), [credit_failed.id.to_string()]);
    let (_, l) = t.json("/api/sagas?flag=inconsistent").await;
    assert_eq!(only(&l), [inconsistent.id.to_string()]);
    let (_, l) = t.json("/api/sagas?flag=stuck").await;
    assert_eq!(only(&l), [stalled.id.to_string()]);
    let (_, l) = t
        .json("/api/sagas?min_krw=1500000&max_krw=1500000&user=dave")
        .await;
    assert_eq!(only(&l), [rejected.id.to_string()]);
    let (_, l) = t.json("/api/sagas?max_krw=1499999.99").await;
    assert!(only(&l).is_empty());
    let (_, c) = t.json(&format!("/api/sagas/{}", credit_failed.id)).await;
    let at = c["started_at"].as_u64().unwrap();
    let (_, l) = t
        .json(&format!("/api/sagas?from={at}&to={at}&state=COMPENSATED"))
        .await;
    // Another saga may have started in the same millisecond: all that started then, no other.
    assert!(only(&l).contains(&credit_failed.id.to_string()), "{l}");
    for s in l["sagas"].as_array().unwrap() {
        assert_eq!(s["started_at"], at, "{s}");
    }
    let (_, l) = t.json(&format!("/api/sagas?to={}", at - 1)).await;
    assert!(!only(&l).contains(&credit_failed.id.to_string()), "{l}");
    let (_, l) = t.json("/api/sagas?to=2000-01-01T00:00:00Z").await;
    assert!(only(&l).is_empty());
    for (bad, word) in [
        ("reason=bored", "account_frozen"),
        ("flag=stuckish", "inconsistent"),
        ("from=yesterday", "from"),
        ("min_krw=lots", "min_krw"),
    ] {
        let (status, v) = t.json(&format!("/api/sagas?{bad}")).await;
        assert_eq!(status, 400, "{bad}");
        assert!(v["error"].as_str().unwrap().contains(word), "{bad}: {v}");
    }

    // The dashboard and a timeline page (bodies read back from the stream).
    let (status, page) = t.get("/").await;
    assert_eq!(status, 200);
    assert!(!page.contains("http-equiv=\"refresh\""), "no reloads");
    for chart in [
        "chart-outcomes",
        "chart-percentiles",
        "chart-compensation",
        "chart-durations",
    ] {
        assert!(page.contains(chart), "dashboard lacks {chart}");
    }
    // The search form's results, with a link to the next page.
    let (_, found) = t.get("/?state=COMPENSATED&limit=1").await;
    let results = &found[found.find("id=\"results\"").expect("results")..];
    assert!(results.contains("next page"), "{results}");
    let (_, bad) = t.get("/?reason=bored").await;
    assert!(
        bad.contains("is not one of"),
        "the search says what is wrong"
    );
    for needle in [
        "COMPLETED",
        "COMPENSATED",
        "REJECTED",
        "Stuck (1)",
        "Inconsistent (1)",
        &format!("/sagas/{}", stalled.id),
    ] {
        assert!(page.contains(needle), "dashboard lacks {needle}");
    }
    let stuck_at = page.find("id=\"stuck\"").unwrap();
    let recent_at = page.find("id=\"recent\"").unwrap();
    assert!(stuck_at < recent_at, "flagged sagas come first");
    let (status, page) = t.get(&format!("/sagas/{}", credit_failed.id)).await;
    assert_eq!(status, 200);
    assert!(page.contains("fx.usd.credit_failed.carol"));
    assert!(
        page.contains("carol&#39;s USD account is frozen"),
        "body fetched and escaped"
    );
    assert!(page.contains("since previous"));
    let (status, _) = t.get("/sagas/00000000-0000-7000-8000-000000000000").await;
    assert_eq!(status, 404);

    // Health and metrics.
    let (status, _) = t.get("/healthz").await;
    assert_eq!(status, 200);
    let (status, metrics) = t.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "fx_tracker_sagas{state=\"COMPLETED\"}",
        "fx_tracker_step_success_total{kind=\"krw.held\"}",
        "fx_tracker_step_failure_total{kind=\"trade.failed\"}",
        "fx_tracker_compensation_steps_total{kind=\"krw.released\"}",
        "fx_tracker_compensation_rate",
        "fx_tracker_compensation_latency_seconds_bucket",
        "fx_tracker_saga_duration_seconds_bucket",
        "fx_tracker_stuck_sagas{state=\"KRW_HELD\"}",
        "fx_tracker_oldest_idle_seconds{state=\"COMPENSATING\"}",
        "fx_tracker_oldest_compensating_seconds",
        "fx_tracker_dlq_messages",
        "fx_tracker_inconsistent_sagas",
        "fx_tracker_last_processed_seq",
        "fx_tracker_lag_messages",
        "fx_tracker_undecodable_total",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }

    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilt_tracker_equals_the_live_one_and_restarts_resume() {
    let broker = Broker::start().await;
    let live_dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at_now();
    // A tiny retention makes finished sagas leave memory, so late events reload them.
    let live = Running::start(&broker.url(), live_dir.path(), &clock, 3).await;

    let outcomes = Outcome::ALL;
    let sagas: Vec<(Saga, Outcome)> = (0..36)
        .map(|i| (Saga::new(&format!("user{}", i % 5)), outcomes[i % 6]))
        .collect();
    let all = interleave(sagas.iter().map(|(s, o)| s.events(*o)).collect());
    let (first_half, second_half) = all.split_at(all.len() / 2);

    // Wave 1 while the tracker runs.
    let seq = broker.publish_all(first_half).await;
    live.caught_up(seq).await;
    // Stop, publish more, restart on the same store: it resumes after its last sequence.
    live.stop().await;
    let seq = broker.publish_all(second_half).await;
    let live = Running::start(&broker.url(), live_dir.path(), &clock, 3).await;
    live.caught_up(seq).await;
    // Late duplicates of final words for long-finished (evicted) sagas, and admin events.
    let mut late = Vec::new();
    for (s, o) in sagas.iter().take(6) {
        if *o == Outcome::CompensatedTradeFailed {
            late.push(s.released(ReleaseReason::TradeFailed));
        }
        if *o == Outcome::Completed {
            late.push(s.committed());
        }
    }
    late.push(krw_deposit("user1"));
    let mut last = 0;
    for e in &late {
        // Past the broker's dedup: a re-derived event after a long outage looks like this.
        last = broker
            .publish_raw(&e.subject(), &e.to_json())
            .await
            .max(last);
    }
    live.caught_up(last).await;

    // A second tracker from an empty data dir rebuilds the same records and aggregates.
    let rebuilt_dir = tempfile::tempdir().unwrap();
    let rebuilt = Running::start(&broker.url(), rebuilt_dir.path(), &clock, 10_000).await;
    rebuilt.caught_up(last).await;

    let a = live.model.all_records().unwrap();
    let b = rebuilt.model.all_records().unwrap();
    assert_eq!(a.len(), 36);
    assert_eq!(a, b, "rebuilt records equal the incrementally built ones");
    assert_eq!(live.model.aggregates(), rebuilt.model.aggregates());
    assert_eq!(
        live.model.minutes(),
        rebuilt.model.minutes(),
        "the charts' series too"
    );
    assert_eq!(
        live.model.aggregates().events as usize,
        all.len() + late.len() - 1
    );
    assert_eq!(live.model.aggregates().duplicates as usize, late.len() - 1);
    let (_, sa) = live.json("/api/stats").await;
    let (_, sb) = rebuilt.json("/api/stats").await;
    for k in [
        "by_state",
        "p50_ms",
        "p99_ms",
        "inconsistent",
        "stuck",
        "last_seq",
    ] {
        assert_eq!(sa[k], sb[k], "{k}");
    }
    assert!(live.model.resident() < rebuilt.model.resident());

    // What each saga should be, checked through the live API.
    for (s, o) in &sagas {
        let (_, v) = live.json(&format!("/api/sagas/{}", s.id)).await;
        let want = match o {
            Outcome::Completed | Outcome::CommittedAndReleased => "COMPLETED",
            Outcome::CompensatedTradeFailed | Outcome::CompensatedCreditFailed => "COMPENSATED",
            Outcome::Rejected => "REJECTED",
            Outcome::Stalled => "KRW_HELD",
        };
        assert_eq!(v["state"], want, "{o:?}");
        assert_eq!(v["inconsistent"], *o == Outcome::CommittedAndReleased);
    }
    // A late duplicate shows in the timeline of its (reloaded) saga.
    let dup = sagas
        .iter()
        .find(|(_, o)| *o == Outcome::CompensatedTradeFailed)
        .unwrap();
    let rec = live.model.get(dup.0.id).unwrap().unwrap();
    assert_eq!(
        rec.timeline
            .iter()
            .filter(|e| e.kind == EventKind::KrwReleased)
            .count(),
        2
    );

    live.stop().await;
    rebuilt.stop().await;
}

/// The dashboard's live part arrives on `/live` as server-sent events, and a saga published
/// after the stream opened shows up in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_pushes_the_dashboard_when_sagas_arrive() {
    use tokio::io::AsyncWriteExt;
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at_now();
    let t = Running::start(&broker.url(), dir.path(), &clock, 10_000).await;
    let mut conn = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    conn.write_all(b"GET /live?state=COMPLETED HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut conn, &mut seen, "text/event-stream").await;
    let saga = Saga::new("alice");
    let last = broker.publish_all(&saga.events(Outcome::Completed)).await;
    t.caught_up(last).await;
    read_until(&mut conn, &mut seen, &saga.id.to_string()).await;
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(text.contains("event: dashboard"), "{text}");
    assert!(
        text.contains("Search results"),
        "the page's search stays applied"
    );
    t.stop().await;
}

/// Reads from `conn` into `seen` until it holds `want`, with the deadline.
async fn read_until(conn: &mut tokio::net::TcpStream, seen: &mut Vec<u8>, want: &str) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 8192];
    let read = async {
        while !String::from_utf8_lossy(seen).contains(want) {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended");
            seen.extend_from_slice(&buf[..n]);
        }
    };
    if tokio::time::timeout(DEADLINE, read).await.is_err() {
        panic!("no {want:?} in time:\n{}", String::from_utf8_lossy(seen));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        println!("SKIPPED: chromium not installed (apt-get install chromium)");
        return;
    };
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at_now();
    let t = Running::start(&broker.url(), dir.path(), &clock, 10_000).await;
    let sagas = [
        (Saga::new("alice"), Outcome::Completed),
        (Saga::new("bob"), Outcome::CompensatedCreditFailed),
        (Saga::new("dave"), Outcome::Rejected),
    ];
    let mut last = 0;
    for (s, o) in &sagas {
        last = broker.publish_all(&s.events(*o)).await;
    }
    t.caught_up(last).await;

    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", t.addr);
    let run = tokio::process::Command::new(&chromium)
        .args(FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(&url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(90), run)
        .await
        .expect("chromium finished in time")
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && dom.contains("fx-tracker"),
        "chromium failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for (s, o) in &sagas {
        let state = match o {
            Outcome::Completed => "COMPLETED",
            Outcome::CompensatedCreditFailed => "COMPENSATED",
            _ => "REJECTED",
        };
        let row = dom
            .lines()
            .find(|l| l.contains(&s.id.to_string()) && l.contains("class=\"saga\""))
            .unwrap_or_else(|| panic!("no row for {o:?} in the rendered dashboard:\n{dom}"));
        assert!(row.contains(state), "{o:?} row: {row}");
    }
    t.stop().await;
}
