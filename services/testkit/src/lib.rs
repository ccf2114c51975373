//! Test support: a real `nats-server` with JetStream on a free port and a temp store.
//!
//! Modelled on the nats.rs test crate: every test gets its own server, killed on Drop. A server
//! can be killed (SIGKILL) and restarted on the same port and store, for broker-restart tests.
//! Readiness is read from the server's own log ("Server is ready"), so nothing polls or sleeps.
//!
//! The binary is `$NATS_SERVER_BIN`, else the one `scripts/ensure-nats.sh` installs into
//! `.tools/`, else `nats-server` on PATH.

pub mod wait;
pub use wait::{messages_on, stream_messages, wait_for};

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a server may take to report ready before the test fails.
pub const READY_TIMEOUT_MS: u64 = 20_000;

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root exists")
}

/// Where the nats-server binary is, or a panic that says how to get one.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let local = workspace_root().join(".tools/venv/bin/nats-server");
    if local.exists() {
        return local;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.exists() {
                return candidate;
            }
        }
    }
    panic!("no nats-server found: run scripts/ensure-nats.sh (or set NATS_SERVER_BIN)");
}

/// A free TCP port on loopback (bound and released; the tiny race is acceptable in tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A running nats-server with JetStream. Killed on Drop; its store is removed with it.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    monitor_port: u16,
    store: tempfile::TempDir,
    extra_args: Vec<String>,
}

impl NatsServer {
    /// Starts a fresh server with JetStream on a free port and a new temp store.
    pub fn start() -> NatsServer {
        NatsServer::start_with(&[])
    }

    /// Starts a server with extra command-line arguments (e.g. `["-c", "nats.conf"]`).
    pub fn start_with(extra_args: &[&str]) -> NatsServer {
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            monitor_port: free_port(),
            store: tempfile::tempdir().expect("temp dir for the JetStream store"),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        server
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring port (`/healthz`, `/jsz`, `/varz`).
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// SIGKILLs the server: no shutdown, no flush beyond what the OS page cache holds.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let bin = nats_server_bin();
        let mut cmd = Command::new(&bin);
        cmd.arg("-js")
            .args(["-a", "127.0.0.1"])
            .args(["-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .arg("-sd")
            .arg(self.store.path())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel::<String>();
        // The reader thread lives as long as the server; it also keeps the pipe drained so
        // a chatty server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut ready_sent = false;
            let mut log = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !ready_sent {
                    log.push(line.clone());
                    if line.contains("Server is ready") {
                        let _ = tx.send(String::new());
                        ready_sent = true;
                    }
                }
            }
            if !ready_sent {
                let _ = tx.send(log.join("\n"));
            }
        });
        match rx.recv_timeout(Duration::from_millis(READY_TIMEOUT_MS)) {
            Ok(log) if log.is_empty() => {}
            Ok(log) => panic!("nats-server exited before it was ready:\n{log}"),
            Err(_) => panic!("nats-server not ready within {READY_TIMEOUT_MS} ms"),
        }
        self.child = Some(child);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn healthz(port: u16) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "GET /healthz?js-enabled-only=true HTTP/1.0\r\nHost: localhost\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn server_starts_with_jetstream_and_restarts_on_the_same_port() {
        let mut server = NatsServer::start();
        assert!(healthz(server.monitor_port()).contains("200 OK"));
        let port = server.port();
        server.restart();
        assert_eq!(server.port(), port);
        assert!(healthz(server.monitor_port()).contains("200 OK"));
        server.kill();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
