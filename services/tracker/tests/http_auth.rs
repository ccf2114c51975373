//! The tracker's HTTP surface is read-only, on loopback by default, and guarded by
//! `FX_TRACKER_TOKEN` when one is set.

mod common;

use std::net::SocketAddr;

use base64::Engine;
use common::*;
use tracker::{ApiToken, TrackerConfig};

const TOKEN: &str = "t0ken-for-the-test";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn basic(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

async fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String, String) {
    match auth {
        Some(a) => http_request(addr, "GET", path, &[("Authorization", a)]).await,
        None => http_request(addr, "GET", path, &[]).await,
    }
}

/// A tracker that has projected one completed saga, with or without a token.
async fn tracker_with(token: Option<&str>) -> (Broker, tempfile::TempDir, Running, Saga) {
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::at_now();
    let mut config = TrackerConfig::for_test(&broker.url(), dir.path());
    config.token = token.and_then(ApiToken::new);
    let t = Running::start_config(config, &clock).await;
    let saga = Saga::new("alice");
    let last = broker.publish_all(&saga.events(Outcome::Completed)).await;
    t.caught_up(last).await;
    (broker, dir, t, saga)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_pages_and_api_answer_401_without_it_and_200_with_it() {
    let (_broker, _dir, t, saga) = tracker_with(Some(TOKEN)).await;
    let saga_api = format!("/api/sagas/{}", saga.id);
    let saga_page = format!("/sagas/{}", saga.id);

    // The API: 401 with a JSON error and a Bearer challenge, without or with a wrong token.
    for path in ["/api/stats", "/api/sagas", saga_api.as_str()] {
        for auth in [
            None,
            Some(bearer("wrong")),
            Some(bearer("")),
            Some(format!("Token {TOKEN}")),
            Some(basic("admin", "wrong")),
        ] {
            let (status, head, body) = get(t.addr, path, auth.as_deref()).await;
            assert_eq!(status, 401, "{path} with {auth:?}: {body}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("www-authenticate: bearer realm=\"fx-tracker\""),
                "{head}"
            );
            let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
            assert!(
                v["error"].as_str().unwrap().contains("FX_TRACKER_TOKEN"),
                "{v}"
            );
            assert!(!body.contains("alice"), "nothing leaks: {body}");
        }
        let (status, _, body) = get(t.addr, path, Some(&bearer(TOKEN))).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.contains("alice") || path == "/api/stats", "{body}");
    }
    let (_, _, body) = get(t.addr, &saga_api, Some(&bearer(TOKEN))).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["state"], "COMPLETED");

    // The pages: 401 with a Basic challenge (a browser asks for the token), 200 with Basic
    // (any user name, the token as password) or Bearer.
    for path in ["/", saga_page.as_str()] {
        let (status, head, body) = get(t.addr, path, None).await;
        assert_eq!(status, 401, "{path}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: basic realm=\"fx-tracker\""),
            "{head}"
        );
        assert!(!body.contains("alice"), "nothing leaks: {body}");
        for auth in [basic("anyone", TOKEN), basic("", TOKEN), bearer(TOKEN)] {
            let (status, _, body) = get(t.addr, path, Some(&auth)).await;
            assert_eq!(status, 200, "{path} with {auth}");
            assert!(body.contains(&saga.id.to_string()), "{body}");
        }
    }

    // Health and metrics stay open (no user, saga or amount in them).
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, _, body) = get(t.addr, path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.contains("alice"), "{path}: {body}");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_only_reads_and_without_a_token_is_open() {
    let (_broker, _dir, t, saga) = tracker_with(None).await;
    let saga_api = format!("/api/sagas/{}", saga.id);
    let saga_page = format!("/sagas/{}", saga.id);
    let paths = [
        "/",
        saga_page.as_str(),
        "/api/stats",
        "/api/sagas",
        saga_api.as_str(),
        "/metrics",
        "/healthz",
        "/readyz",
    ];
    for path in paths {
        let (status, _, _) = get(t.addr, path, None).await;
        assert_eq!(status, 200, "GET {path}");
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            let (status, _, _) = http_request(t.addr, method, path, &[]).await;
            assert_eq!(status, 405, "{method} {path} must not exist");
        }
    }
    t.stop().await;
}

#[test]
fn the_default_address_is_loopback_and_the_token_never_prints() {
    let addr: SocketAddr = TrackerConfig::DEFAULT_HTTP_ADDR.parse().unwrap();
    assert!(addr.ip().is_loopback(), "{addr}");
    assert!(ApiToken::new("").is_none(), "an empty token guards nothing");
    let token = ApiToken::new(TOKEN).unwrap();
    let mut config = TrackerConfig::for_test("nats://127.0.0.1:1", "/nonexistent");
    config.token = Some(token);
    let shown = format!("{config:?}");
    assert!(!shown.contains(TOKEN), "{shown}");
    assert!(shown.contains("ApiToken(***)"), "{shown}");
}
