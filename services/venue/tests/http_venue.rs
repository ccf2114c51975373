//! fx-trade's `HttpVenue` against fx-venue's real code, and against sockets that misbehave.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{buy, flat, saga, start, start_with};
use trade::{ClientOrderId, HttpVenue, OrderOutcome, Venue, VenueError};

fn client(url: &str, timeout_ms: u64) -> HttpVenue {
    HttpVenue::new(url, timeout_ms, 250).expect("a valid base URL")
}

fn executed(outcome: Result<OrderOutcome, VenueError>) -> trade::Execution {
    match outcome {
        Ok(OrderOutcome::Executed(e)) => e,
        other => panic!("expected an execution, got {other:?}"),
    }
}

#[tokio::test]
async fn orders_lookups_and_listings_map_to_the_venue_trait() {
    let dir = tempfile::tempdir().unwrap();
    let v = start(dir.path(), flat()).await;
    let venue = client(&v.url, 2_000);

    let first = executed(venue.order(&buy(1, None)).await);
    assert_eq!((first.seq, first.rate.to_string()), (1, "1400".to_owned()));
    assert_eq!(first.usd_amount.to_string(), "1071.42");
    assert_eq!(executed(venue.order(&buy(1, Some("9999.00"))).await), first);
    assert_eq!(
        venue.order(&buy(2, Some("1071.43"))).await,
        Ok(OrderOutcome::LimitNotMet { rate: first.rate })
    );
    let second = executed(venue.order(&buy(3, None)).await);

    assert_eq!(
        venue.execution(&ClientOrderId::buy(saga(1))).await,
        Ok(Some(first.clone()))
    );
    assert_eq!(
        venue.execution(&ClientOrderId::buy(saga(2))).await,
        Ok(None)
    );
    assert_eq!(
        venue.executions(0, 10).await,
        Ok(vec![first.clone(), second.clone()])
    );
    assert_eq!(venue.executions(1, 1).await, Ok(vec![second]));
    assert_eq!(venue.executions(2, 10).await, Ok(vec![]));
    v.stop().await;
}

#[tokio::test]
async fn a_matching_engine_failure_is_failed() {
    let dir = tempfile::tempdir().unwrap();
    let v = start_with(dir.path(), |c| c.failure_rate = 1.0).await;
    let venue = client(&v.url, 2_000);
    assert!(matches!(
        venue.order(&buy(1, None)).await,
        Err(VenueError::Failed(m)) if m.contains("simulated failure")
    ));
    v.stop().await;
}

#[tokio::test]
async fn a_slow_venue_times_out_as_unknown_and_the_execution_is_found_later() {
    let dir = tempfile::tempdir().unwrap();
    let v = start_with(dir.path(), |c| c.latency_ms = 500).await;
    let impatient = client(&v.url, 150);
    let started = Instant::now();
    assert_eq!(
        impatient.order(&buy(1, None)).await,
        Err(VenueError::Timeout { after_ms: 150 })
    );
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    // The order executed all the same: a patient lookup, or the same order again, finds it.
    let patient = client(&v.url, 5_000);
    let found = patient
        .execution(&ClientOrderId::buy(saga(1)))
        .await
        .expect("lookup")
        .expect("the timed-out order executed");
    assert_eq!(executed(patient.order(&buy(1, None)).await), found);
    v.stop().await;
}

/// A TCP listener that accepts, reads the request, then does `then` with the connection.
fn misbehaving(then: fn(std::net::TcpStream)) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            then(stream);
        }
    });
    url
}

fn hang(stream: std::net::TcpStream) {
    // Keeps the connection open and silent for as long as the test runs.
    std::mem::forget(stream);
}

#[tokio::test]
async fn a_hung_venue_gives_timeout_within_the_deadline() {
    let venue = client(&misbehaving(hang), 300);
    for call in 0..3 {
        let started = Instant::now();
        let outcome = match call {
            0 => venue.order(&buy(1, None)).await.map(|_| ()),
            1 => venue
                .execution(&ClientOrderId::buy(saga(1)))
                .await
                .map(|_| ()),
            _ => venue.executions(0, 10).await.map(|_| ()),
        };
        let took = started.elapsed();
        assert_eq!(
            outcome,
            Err(VenueError::Timeout { after_ms: 300 }),
            "call {call}"
        );
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(2_000),
            "call {call} answered in {took:?}"
        );
    }
}

#[tokio::test]
async fn a_closed_port_gives_down_at_once() {
    let port = testkit::free_port();
    let venue = client(&format!("http://127.0.0.1:{port}"), 5_000);
    let started = Instant::now();
    assert_eq!(venue.order(&buy(1, None)).await, Err(VenueError::Down));
    assert_eq!(
        venue.execution(&ClientOrderId::buy(saga(1))).await,
        Err(VenueError::Down)
    );
    assert_eq!(venue.executions(0, 1).await, Err(VenueError::Down));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_connection_closed_after_the_order_was_sent_is_unknown_not_down() {
    let venue = client(&misbehaving(drop), 2_000);
    // The order may have reached the venue: never "nothing executed".
    assert!(matches!(
        venue.order(&buy(1, None)).await,
        Err(VenueError::Timeout { .. })
    ));
    // A lookup places nothing, so a broken connection there is just a venue that is down.
    assert_eq!(
        venue.execution(&ClientOrderId::buy(saga(1))).await,
        Err(VenueError::Down)
    );
}

#[tokio::test]
async fn answers_outside_the_contract_are_protocol_errors() {
    fn garbled(mut stream: std::net::TcpStream) {
        use std::io::Write;
        let _ = stream.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 6\r\nconnection: close\r\n\r\n<html>",
        );
    }
    let venue = client(&misbehaving(garbled), 2_000);
    assert!(matches!(
        venue.order(&buy(1, None)).await,
        Err(VenueError::Protocol(m)) if m.contains("<html>")
    ));
    assert!(matches!(
        venue.executions(0, 1).await,
        Err(VenueError::Protocol(_))
    ));

    // A 404 that is not the venue's "no such execution" (here: a wrong base path) must not
    // read as "nothing executed".
    let dir = tempfile::tempdir().unwrap();
    let v = start(dir.path(), flat()).await;
    let misconfigured = client(&format!("{}/api", v.url), 2_000);
    assert!(matches!(
        misconfigured.execution(&ClientOrderId::buy(saga(1))).await,
        Err(VenueError::Protocol(m)) if m.contains("404")
    ));
    v.stop().await;
}
