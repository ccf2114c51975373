//! The house's reversals as operators see them: pending and done counts and the FX P&L in
//! `/api/stats`, `/metrics` and on the dashboard, a saga's reversal on its page and in its JSON,
//! `flag=reversal_pending`, and the same figures after a restart and after a rebuild.
//!
//! Its own test binary: the Prometheus recorder is global to a process, so the gauge values
//! asserted here must not be set by another test's tracker at the same time.

mod common;

use std::time::Instant;

use common::*;
use serde_json::Value;

/// The value of an unlabelled sample in `/metrics`, waiting (with the deadline) until it is
/// `want`: gauges are refreshed on the tracker's periodic tick, not with each batch.
async fn wait_metric(t: &Running, name: &str, want: f64) {
    let start = Instant::now();
    loop {
        let (_, text) = t.get("/metrics").await;
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok());
        if value == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{name} is {value:?}, want {want}:\n{text}"
        );
        tokio::task::yield_now().await;
    }
}

/// The ids listed by `/api/sagas?<query>`.
async fn listed(t: &Running, query: &str) -> Vec<String> {
    let (status, l) = t.json(&format!("/api/sagas?{query}")).await;
    assert_eq!(status, 200, "{l}");
    saga_ids(&l)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reversals_are_counted_listed_shown_and_survive_restart_and_rebuild() {
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at_now();
    let live = Running::start(&broker.url(), dir.path(), &clock, 10_000).await;

    // Every saga: 1500000 KRW bought 1071.42 USD at 1400.
    let pending = Saga::new("alice"); // cancelled, not yet sold back
    let gain = Saga::new("bob"); // sold back at 1450: 1553559 KRW, +53559
    let loss = Saga::new("carol"); // sold back at 1350: 1446417 KRW, -53583
    let late = Saga::new("dave"); // venue_unavailable, execution found and sold at 1400: -12
    let completed = Saga::new("erin");
    let mut events = Vec::new();
    events.extend(pending.events(Outcome::CompensatedCreditFailed));
    events.extend(gain.events(Outcome::CompensatedCreditFailed));
    events.push(gain.reversed("1450"));
    events.extend(loss.events(Outcome::CompensatedCreditFailed));
    events.push(loss.reversed("1350"));
    events.extend([
        late.requested(),
        late.held(),
        late.venue_unavailable(),
        late.released(events::ReleaseReason::TradeFailed),
        late.reversed("1400"),
    ]);
    events.extend(completed.events(Outcome::Completed));
    let seq = broker.publish_all(&events).await;
    live.caught_up(seq).await;

    // /api/stats.
    let (_, s) = live.json("/api/stats").await;
    assert_eq!(s["reversals_pending"], 1, "{s}");
    assert_eq!(s["reversals_total"], 3, "{s}");
    assert_eq!(s["fx_pnl_krw"], "-36", "53559 - 53583 - 12: {s}");
    assert_eq!(
        s["by_state"]["COMPENSATED"], 4,
        "reversals do not change states"
    );

    // The filter, alone, with a user, and a wrong flag.
    assert_eq!(
        listed(&live, "flag=reversal_pending").await,
        [pending.id.to_string()]
    );
    assert_eq!(
        listed(&live, "flag=REVERSAL_PENDING&user=alice").await,
        [pending.id.to_string()]
    );
    assert!(listed(&live, "flag=reversal_pending&user=bob")
        .await
        .is_empty());
    assert!(listed(&live, "flag=reversal_pending&state=COMPLETED")
        .await
        .is_empty());
    let (status, v) = live.json("/api/sagas?flag=stuckish").await;
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("reversal_pending"));

    // A saga's JSON: pending, then reversed with its terms and P&L; the state stays.
    let (_, v) = live.json(&format!("/api/sagas/{}", pending.id)).await;
    assert_eq!(v["state"], "COMPENSATED");
    assert_eq!(v["reversal_pending"], true);
    assert_eq!(v["reversal"]["status"], "pending");
    assert_eq!(v["reversal"]["usd_amount"], "1071.42");
    assert_eq!(v["reversal"]["krw_amount"], Value::Null);
    assert_eq!(v["reversal"]["fx_pnl_krw"], Value::Null);
    let (_, v) = live.json(&format!("/api/sagas/{}", gain.id)).await;
    assert_eq!(v["state"], "COMPENSATED");
    assert_eq!(v["reversal_pending"], false);
    let r = &v["reversal"];
    assert_eq!(r["status"], "reversed");
    assert_eq!(r["usd_amount"], "1071.42");
    assert_eq!(r["krw_amount"], "1553559");
    assert_eq!(r["rate"], "1450");
    assert_eq!(r["fill_krw_amount"], "1500000");
    assert_eq!(r["fx_pnl_krw"], "53559");
    assert!(r["reversed_at"].as_u64().unwrap() >= v["finished_at"].as_u64().unwrap());
    let (_, v) = live.json(&format!("/api/sagas/{}", loss.id)).await;
    assert_eq!(v["reversal"]["fx_pnl_krw"], "-53583");
    let (_, v) = live.json(&format!("/api/sagas/{}", late.id)).await;
    assert_eq!(v["failure_reason"], "trade.failed: venue_unavailable");
    assert_eq!(v["reversal"]["status"], "reversed");
    assert_eq!(v["reversal"]["fx_pnl_krw"], "-12");
    let (_, v) = live.json(&format!("/api/sagas/{}", completed.id)).await;
    assert_eq!(v["reversal_pending"], false);
    assert_eq!(v["reversal"], Value::Null);

    // The saga pages.
    let (_, page) = live.get(&format!("/sagas/{}", pending.id)).await;
    assert!(page.contains("reversal pending at the venue"), "{page}");
    let (_, page) = live.get(&format!("/sagas/{}", gain.id)).await;
    assert!(
        page.contains("sold 1071.42 USD for 1553559 KRW at 1450"),
        "{page}"
    );
    assert!(page.contains("FX gain 53559 KRW"), "{page}");
    let (_, page) = live.get(&format!("/sagas/{}", loss.id)).await;
    assert!(page.contains("FX loss 53583 KRW"), "{page}");
    let (_, page) = live.get(&format!("/sagas/{}", completed.id)).await;
    assert!(!page.contains("id=\"reversal\""), "no reversal to show");

    // The dashboard: the count, the P&L, and the pending saga listed in its section.
    let (_, page) = live.get("/").await;
    assert!(page.contains("reversals pending 1"), "{page}");
    assert!(page.contains("reversals done 3"), "{page}");
    assert!(page.contains("FX loss 36 KRW"), "{page}");
    let section = &page
        [page.find("id=\"reversals-pending-list\"").unwrap()..page.find("id=\"recent\"").unwrap()];
    assert!(section.contains(&pending.id.to_string()), "{section}");
    assert!(!section.contains(&gain.id.to_string()), "{section}");

    // /metrics.
    wait_metric(&live, "fx_tracker_reversals_pending", 1.0).await;
    wait_metric(&live, "fx_tracker_reversals_total", 3.0).await;
    wait_metric(&live, "fx_tracker_fx_pnl_krw", -36.0).await;

    // Stopped: alice's fill is sold back at 1500 (+107130) and frank's saga is cancelled.
    // Restarted on the same store, the tracker resumes with the stored totals.
    live.stop().await;
    let frank = Saga::new("frank");
    let mut more = vec![pending.reversed("1500")];
    more.extend(frank.events(Outcome::CompensatedCreditFailed));
    let last = broker.publish_all(&more).await;
    let live = Running::start(&broker.url(), dir.path(), &clock, 10_000).await;
    live.caught_up(last).await;
    let (_, s) = live.json("/api/stats").await;
    assert_eq!(s["reversals_pending"], 1, "{s}");
    assert_eq!(s["reversals_total"], 4, "{s}");
    assert_eq!(s["fx_pnl_krw"], "107094", "{s}");
    assert_eq!(
        listed(&live, "flag=reversal_pending").await,
        [frank.id.to_string()]
    );
    let (_, page) = live.get("/").await;
    assert!(page.contains("FX gain 107094 KRW"), "{page}");
    wait_metric(&live, "fx_tracker_reversals_pending", 1.0).await;
    wait_metric(&live, "fx_tracker_reversals_total", 4.0).await;
    wait_metric(&live, "fx_tracker_fx_pnl_krw", 107_094.0).await;
    let live_stats = s;
    let live_agg = live.model.aggregates();
    live.stop().await;

    // Rebuilt from the stream into an empty store: the same figures.
    let rebuilt_dir = tempfile::tempdir().unwrap();
    let rebuilt = Running::start(&broker.url(), rebuilt_dir.path(), &clock, 10_000).await;
    rebuilt.caught_up(last).await;
    assert_eq!(rebuilt.model.aggregates(), live_agg);
    let (_, s) = rebuilt.json("/api/stats").await;
    for k in [
        "reversals_pending",
        "reversals_total",
        "fx_pnl_krw",
        "by_state",
    ] {
        assert_eq!(s[k], live_stats[k], "{k}");
    }
    assert_eq!(
        listed(&rebuilt, "flag=reversal_pending").await,
        [frank.id.to_string()]
    );
    wait_metric(&rebuilt, "fx_tracker_fx_pnl_krw", 107_094.0).await;
    rebuilt.stop().await;
}
