//! Service binaries as processes, for the tests that kill them for real (SIGKILL, SIGSTOP):
//! the chaos test and the partitioned cluster test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

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
        "build", "--quiet", "-p", "krw", "-p", "trade", "-p", "usd", "-p", "tracker", "--bins",
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

/// One service binary run as a process; killed (after a SIGCONT) when dropped.
pub struct Service {
    pub name: &'static str,
    pub bin: PathBuf,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub http_port: u16,
}

impl Service {
    /// Starts the process, appending its output to `log`.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.bin)
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
