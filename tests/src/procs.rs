//! Service binaries as processes, for the tests that kill them for real (SIGKILL, SIGSTOP):
//! the chaos test, the partitioned cluster test and the real-Prometheus test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde_json::Value;

/// The built binaries' directory: the profile directory this test runs from. Builds them
/// first, so the test works whatever `cargo test` happened to build.
pub fn binaries() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let release = profile_dir.ends_with("release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(testkit::workspace_root()).args([
        "build", "--quiet", "-p", "krw", "-p", "trade", "-p", "usd", "-p", "tracker", "-p",
        "venue", "--bins",
    ]);
    if release {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().unwrap().success(),
        "building the service binaries failed"
    );
    profile_dir
}

/// The environment of a service process in a whole-system test: its broker (and identity, as
/// `(user, password)`), a store under `data_root`, its HTTP port, and timings short enough for a
/// test: redelivery after 2 s, holds of 8 s swept every 200 ms.
pub fn service_env(
    name: &str,
    url: &str,
    identity: Option<(&str, &str)>,
    data_root: &Path,
    http_port: u16,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("NATS_URL".into(), url.into()),
        (
            "FX_DATA_DIR".into(),
            data_root.join(name).display().to_string(),
        ),
        ("FX_HTTP_ADDR".into(), format!("127.0.0.1:{http_port}")),
        ("FX_ACK_WAIT_MS".into(), ACK_WAIT_MS.to_string()),
        // Short holds so sagas stalled by a fault end quickly after it heals.
        ("FX_HOLD_TTL_MS".into(), "8000".into()),
        ("FX_HOLD_GRACE_MS".into(), "1000".into()),
        ("FX_EXPIRY_SWEEP_MS".into(), "200".into()),
        ("FX_STUCK_AFTER_MS".into(), "600000".into()),
        // A process restarted while the broker is down waits for it instead of exiting.
        ("FX_CONNECT_TIMEOUT_MS".into(), "600000".into()),
        ("RUST_LOG".into(), "warn".into()),
    ];
    if let Some((user, password)) = identity {
        env.push(("NATS_USER".into(), user.into()));
        env.push(("NATS_PASSWORD".into(), password.into()));
    }
    env
}

/// The environment of fx-venue as a process: its order book under `data_root/venue`, its HTTP
/// (API and `/metrics`) on `http_port`, then `market` (the `FX_VENUE_*` knobs of the test).
pub fn venue_env(
    data_root: &Path,
    http_port: u16,
    market: &[(&str, String)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        (
            "FX_DATA_DIR".into(),
            data_root.join("venue").display().to_string(),
        ),
        ("FX_HTTP_ADDR".into(), format!("127.0.0.1:{http_port}")),
    ];
    env.extend(market.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    env.push(("RUST_LOG".into(), "warn".into()));
    env
}

/// The broker redelivers an unacked message after this (`FX_ACK_WAIT_MS` of [`service_env`]).
pub const ACK_WAIT_MS: u64 = 2_000;

/// One service binary run as a process; killed (after a SIGCONT) when dropped.
pub struct Service {
    pub name: &'static str,
    pub bin: PathBuf,
    /// Command-line arguments (none for the services, which read the environment).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub http_port: u16,
}

impl Service {
    /// `fx-<name>` from `bins` with `env`, logging to `<logs>/<name>.log`; not started yet.
    pub fn new(
        bins: &Path,
        name: &'static str,
        env: Vec<(String, String)>,
        logs: &Path,
        http_port: u16,
    ) -> Service {
        Service {
            name,
            bin: bins.join(format!("fx-{name}")),
            args: Vec::new(),
            env,
            log: logs.join(format!("{name}.log")),
            child: None,
            http_port,
        }
    }

    /// Starts the process, appending its output to `log`.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.bin)
            .args(&self.args)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({}): {e}", self.name, self.bin.display()));
        self.child = Some(child);
    }

    /// The last `n` lines of the process's log (for failure messages).
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (`-STOP`, `-CONT`, `-TERM`).
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.signal("-CONT");
        self.kill9();
    }
}

/// GET a JSON document from `127.0.0.1:port`; `None` when it does not answer with JSON.
pub fn http_get(port: u16, path: &str) -> Option<Value> {
    let mut resp = ureq::get(&format!("http://127.0.0.1:{port}{path}"))
        .call()
        .ok()?;
    serde_json::from_str(&resp.body_mut().read_to_string().ok()?).ok()
}

/// Whether the process on `127.0.0.1:port` answers `/readyz` with 200 (it consumes).
pub fn is_ready(port: u16) -> bool {
    ureq::get(&format!("http://127.0.0.1:{port}/readyz"))
        .call()
        .map(|r| r.status() == 200)
        .unwrap_or(false)
}

/// Every saga the tracker on `port` knows, by id; `None` while it does not answer (it may be
/// restarting after a kill).
pub fn all_sagas(port: u16) -> Option<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/sagas?limit=500&cursor={c}"),
            None => "/api/sagas?limit=500".into(),
        };
        let page = http_get(port, &path)?;
        for s in page["sagas"].as_array()? {
            out.insert(s["saga_id"].as_str().unwrap().to_owned(), s.clone());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Some(out),
        }
    }
}

/// A decimal field of a tracker record (`"0"` when absent).
pub fn dec(v: &Value) -> Decimal {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or_default()
}
