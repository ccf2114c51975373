//! fx-venue's HTTP API over a real TCP listener, with its store in a temp dir.

mod common;

use std::time::{Duration, Instant};

use common::{answer, assert_error, bad_order, buy_json, flat, http, saga, start, start_with};
use serde_json::{json, Value};
use trade::VenueConfig;

#[tokio::test]
async fn orders_execute_once_per_client_order_id_and_refuse_below_their_limit() {
    let dir = tempfile::tempdir().unwrap();
    let v = start(dir.path(), flat()).await;

    let (status, first) = v.order(&buy_json(1, None)).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "executed");
    // 1,500,000 KRW at 1400 = 1071.428… USD, rounded down to the cent.
    let e = &first["execution"];
    let amounts = ["rate", "usd_amount", "krw_amount", "side"].map(|k| e[k].as_str());
    assert_eq!(amounts, ["1400", "1071.42", "1500000", "buy"].map(Some));
    assert_eq!(e["seq"], 1);
    assert_eq!(e["client_order_id"], saga(1).to_string());

    // Repeated, even with another limit: the same execution, no second one.
    assert_eq!(
        v.order(&buy_json(1, Some("9999.00"))).await,
        (200, first.clone())
    );
    assert_eq!(
        v.order(&buy_json(2, Some("1071.43"))).await,
        (200, json!({"status": "limit_not_met", "rate": "1400"}))
    );

    // Looked up: the execution, or 404 for an order that never executed.
    assert_eq!(
        v.get(&format!("/v1/orders/{}", saga(1))).await,
        (200, e.clone())
    );
    let (status, missing) = v.get(&format!("/v1/orders/{}", saga(2))).await;
    assert_eq!(
        (status, missing["error"].as_str()),
        (404, Some("not_found"))
    );
    assert_eq!(v.venue.last_seq(), 1, "the refused order left no execution");
    v.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_a_reason_and_a_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let v = start(dir.path(), flat()).await;
    let order = |id: &str, side: &str| json!({"client_order_id": id, "user_id": "alice", "side": side, "krw_amount": "1000"});
    for body in [
        bad_order(),
        json!("not an order"),
        order("has space", "buy"),
        order("a", "hold"),
    ] {
        assert_error(&v.order(&body).await, 400, "invalid_order");
    }
    let raw = http()
        .post(format!("{}/v1/orders", v.url))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(answer(raw).await.1["error"], "invalid_order");
    for (path, status, reason) in [
        ("/v1/orders/bad%20id", 400, "invalid_client_order_id"),
        ("/v1/executions?after=-1", 400, "invalid_query"),
        ("/v1/executions?limit=0", 400, "invalid_query"),
        ("/v2/orders", 404, "no_such_route"),
    ] {
        assert_error(&v.get(path).await, status, reason);
    }
    assert_eq!(v.venue.last_seq(), 0);
    v.stop().await;
}

#[tokio::test]
async fn a_matching_engine_failure_answers_503_and_executes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let v = start_with(dir.path(), |c| c.failure_rate = 1.0).await;
    assert_error(&v.order(&buy_json(1, None)).await, 503, "failed");
    assert_eq!(v.venue.last_seq(), 0);
    v.stop().await;
}

#[tokio::test]
async fn executions_page_in_sequence_order_from_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let v = start_with(dir.path(), |c| {
        c.volatility_bps = 30;
        c.seed = 9
    })
    .await;
    for n in 1..=7 {
        assert_eq!(v.order(&buy_json(n, None)).await.0, 200);
    }
    let seqs = |body: &Value| -> Vec<u64> {
        let list = body["executions"].as_array().expect("a list");
        list.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
    };
    let (status, all) = v.get("/v1/executions").await;
    assert_eq!(
        (status, seqs(&all), &all["last_seq"]),
        (200, (1..=7).collect(), &json!(7))
    );
    for (query, want) in [
        ("after=3&limit=2", vec![4, 5]),
        ("after=5&limit=100", vec![6, 7]),
        ("after=7", vec![]),
        ("limit=99999", (1..=7).collect()),
    ] {
        let (_, page) = v.get(&format!("/v1/executions?{query}")).await;
        assert_eq!(
            (seqs(&page), &page["last_seq"]),
            (want, &json!(7)),
            "{query}"
        );
    }
    // Each listed execution is the one a lookup returns.
    for e in all["executions"].as_array().unwrap() {
        let id = e["client_order_id"].as_str().unwrap();
        assert_eq!(v.get(&format!("/v1/orders/{id}")).await, (200, e.clone()));
    }
    v.stop().await;
}

#[tokio::test]
async fn metrics_count_orders_by_side_and_outcome_and_health_answers() {
    let dir = tempfile::tempdir().unwrap();
    let v = start(dir.path(), flat()).await;
    v.order(&buy_json(101, None)).await;
    v.order(&buy_json(101, None)).await;
    v.order(&buy_json(102, Some("5000.00"))).await;
    let c = http();
    let health = c.get(format!("{}/healthz", v.url)).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let text = c
        .get(format!("{}/metrics", v.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The recorder is process-wide (other tests run alongside): check names and labels.
    for needle in [
        r#"fx_venue_orders_total{side="buy",outcome="executed"}"#,
        r#"fx_venue_orders_total{side="buy",outcome="repeated"}"#,
        r#"fx_venue_orders_total{side="buy",outcome="limit_not_met"}"#,
        "fx_venue_executions ",
        "fx_venue_rate_krw_per_usd ",
        r#"fx_venue_request_seconds_bucket{route="/v1/orders""#,
        "fx_venue_flush_seconds_count",
    ] {
        assert!(
            text.contains(needle),
            "{needle} missing from /metrics:\n{text}"
        );
    }
    v.stop().await;
}

#[tokio::test]
async fn latency_holds_every_answer_back_but_the_order_executes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let v = start_with(dir.path(), |c| c.latency_ms = 300).await;
    let started = Instant::now();
    assert_eq!(v.order(&buy_json(1, None)).await.0, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered in {:?}",
        started.elapsed()
    );
    v.stop().await;
}

#[tokio::test]
async fn a_reopened_book_keeps_its_executions_and_continues_the_walk_from_its_last_rate() {
    let dir = tempfile::tempdir().unwrap();
    let config = VenueConfig {
        volatility_bps: 40,
        seed: 5,
        ..flat()
    };
    let v = start(dir.path(), config.clone()).await;
    let mut last = Value::Null;
    for n in 1..=5 {
        last = v.order(&buy_json(n, None)).await.1["execution"].clone();
    }
    v.stop().await;

    let v = start(dir.path(), config).await;
    assert_eq!(v.venue.last_seq(), 5);
    assert_eq!(v.venue.rate().to_string(), last["rate"].as_str().unwrap());
    assert_eq!(v.order(&buy_json(6, None)).await.1["execution"]["seq"], 6);
    assert_eq!(v.get(&format!("/v1/orders/{}", saga(5))).await, (200, last));
    v.stop().await;
}

/// Places the buys of sagas `sagas`, `concurrency` at a time; returns how many flushes they
/// took and how long.
async fn place_all(
    v: &common::Running,
    sagas: std::ops::Range<u128>,
    concurrency: usize,
) -> (u64, Duration) {
    use futures::StreamExt;
    let before = v.venue.flushes();
    let started = Instant::now();
    let answers: Vec<(u16, Value)> = futures::stream::iter(sagas)
        .map(|n| async move { v.order(&buy_json(n, None)).await })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let took = started.elapsed();
    assert!(answers.iter().all(|(s, _)| *s == 200));
    (v.venue.flushes() - before, took)
}

/// Group commit: many orders at once share flushes instead of paying one fsync each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_orders_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let v = start(dir.path(), flat()).await;
    let (flushes, _) = place_all(&v, 1..201, 200).await;
    assert_eq!(v.venue.last_seq(), 200);
    assert!(
        flushes < 200,
        "200 concurrent orders took {flushes} flushes: nothing was shared"
    );
    v.stop().await;
}

/// Measures group commit (`cargo test -p venue --test api -- --ignored --nocapture`): the same
/// number of orders one at a time, then 64 at a time; prints orders per second and flushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn group_commit_measurement() {
    let dir = tempfile::tempdir().unwrap();
    let v = start(dir.path(), flat()).await;
    let orders = 1_000u128;
    for (label, concurrency, first) in [("serial", 1, 1), ("64 at a time", 64, 1_000_001)] {
        let (flushes, took) = place_all(&v, first..first + orders, concurrency).await;
        println!(
            "{label}: {orders} orders in {took:?} = {:.0} orders/s, {flushes} flushes ({:.1} orders per flush)",
            orders as f64 / took.as_secs_f64(),
            orders as f64 / flushes as f64
        );
    }
    v.stop().await;
}
