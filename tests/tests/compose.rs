//! Docker is not available where the suite runs, so this test checks docker-compose.yml
//! against the code instead: every service runs a binary the workspace builds, every
//! environment variable it sets is one the code reads, every HTTP port it publishes or probes is
//! the one the service listens on, and every data directory is a volume.

use std::collections::BTreeSet;
use std::path::Path;

use serde_yaml_ng::Value;

fn root() -> std::path::PathBuf {
    testkit::workspace_root()
}

/// Every string literal the Rust sources contain (good enough to know which env vars are read).
fn source_text() -> String {
    fn walk(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut text = String::new();
    for dir in ["events/src", "services"] {
        walk(&root().join(dir), &mut text);
    }
    text
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

#[test]
fn docker_compose_matches_the_binaries_real_configuration() {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let compose: Value = serde_yaml_ng::from_str(&text).unwrap();
    let services = compose["services"].as_mapping().unwrap();
    let sources = source_text();
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();

    let names: BTreeSet<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["nats", "krw", "trade", "usd", "tracker", "venue"])
    );

    // The broker runs the project's config with JetStream.
    let nats = &compose["services"]["nats"];
    let conf = std::fs::read_to_string(root().join("config/nats.conf")).unwrap();
    assert!(
        conf.contains("jetstream"),
        "config/nats.conf enables JetStream"
    );
    assert!(nats["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|v| v.as_str().unwrap().starts_with("./config/nats.conf:")));

    for name in ["krw", "trade", "usd", "tracker", "venue"] {
        let svc = &compose["services"][name];
        // The binary exists in the workspace and the Dockerfile builds its crate.
        let bin = svc["command"][0].as_str().unwrap();
        assert_eq!(bin, format!("fx-{name}"));
        let manifest =
            std::fs::read_to_string(root().join(format!("services/{name}/Cargo.toml"))).unwrap();
        assert!(
            manifest.contains(&format!("name = \"{bin}\"")),
            "{name} builds {bin}"
        );
        assert!(
            dockerfile.contains(&format!("-p {name}")),
            "Dockerfile builds {name}"
        );
        assert!(
            dockerfile.contains(&format!("target/release/{bin}")),
            "Dockerfile copies {bin}"
        );

        // Every variable set is one the code reads.
        let env = svc["environment"].as_mapping().unwrap();
        for (key, value) in env {
            let key = key.as_str().unwrap();
            assert!(
                sources.contains(&format!("\"{key}\"")),
                "{name} sets {key}, which no code reads"
            );
            assert!(
                value.is_string(),
                "{name}: {key} must be a quoted string in YAML"
            );
        }
        // The HTTP address is what the healthcheck probes and what is published.
        let http = env[&Value::from("FX_HTTP_ADDR")].as_str().unwrap();
        let port = port_of(http);
        let probe = svc["healthcheck"]["test"].as_sequence().unwrap();
        let url = probe
            .iter()
            .filter_map(|v| v.as_str())
            .find(|s| s.starts_with("http"))
            .unwrap();
        assert!(
            url.ends_with("/healthz"),
            "{name} healthcheck probes /healthz"
        );
        assert_eq!(
            port_of(url.trim_end_matches("/healthz")),
            port,
            "{name} healthcheck port"
        );
        if let Some(ports) = svc["ports"].as_sequence() {
            for p in ports {
                assert_eq!(
                    port_of(p.as_str().unwrap()),
                    port,
                    "{name} publishes its HTTP port"
                );
            }
        }
        // The data directory is a volume, so the sled store survives the container.
        let data = env[&Value::from("FX_DATA_DIR")].as_str().unwrap();
        assert!(svc["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|v| v.as_str().unwrap().ends_with(&format!(":{data}"))));
        if name == "venue" {
            // fx-venue talks to no broker, and fx-trade is pointed at it.
            assert!(!env.contains_key(Value::from("NATS_URL")));
            let trade = &compose["services"]["trade"];
            assert_eq!(
                trade["environment"]["FX_VENUE_URL"].as_str(),
                Some(format!("http://venue:{port}").as_str())
            );
            assert_eq!(
                trade["depends_on"]["venue"]["condition"].as_str(),
                Some("service_healthy")
            );
            continue;
        }
        // It waits for a healthy broker.
        assert_eq!(
            svc["depends_on"]["nats"]["condition"].as_str(),
            Some("service_healthy")
        );
        assert!(env.contains_key(Value::from("NATS_URL")));
    }
    // The dashboard is published.
    assert!(compose["services"]["tracker"]["ports"]
        .as_sequence()
        .is_some());
}
