//! Test support: a real `nats-server` with JetStream on a free port and a temp store.
//!
//! Modelled on the nats.rs test crate: every test gets its own server, killed on Drop. A server
//! can be killed (SIGKILL) and restarted on the same port and store, for broker-restart tests.
//! Readiness is read from the server's own log ("Server is ready"), so nothing polls or sleeps.
//!
//! The binary is `$NATS_SERVER_BIN`, else the one `scripts/ensure-nats.sh` installs into
//! `.tools/`, else `nats-server` on PATH.
//!
//! [`cpu_seconds`] is the process's CPU time, which the benchmarks report per event.
//!
//! [`NatsCluster`] runs several such servers as a routed JetStream cluster (see [`cluster`]).
//!
//! [`NatsServer::builder`] adds arguments and environment variables, e.g. the project's broker
//! config with its passwords (`config/nats.conf` reads `FX_NATS_PASSWORD_*`). The command
//! always passes `-js -a 127.0.0.1 -p <port> -m <port> -sd <tempdir>`, and nats-server lets
//! command-line flags override the config file, so a config's listen settings never apply.

pub mod cluster;
pub mod lazyfs;
pub mod wait;
pub use cluster::NatsCluster;
pub use lazyfs::{LazyFs, Loss};
pub use wait::{messages_on, stream_messages, try_wait_for, wait_for};

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// How long a server may take to report ready before the test fails.
pub const READY_TIMEOUT_MS: u64 = 20_000;

/// Most log lines [`NatsServer::log`] keeps (later lines are still drained, not kept).
pub const MAX_LOG_LINES: usize = 100_000;

/// User + system CPU seconds this process has used so far, every thread included (sled's IO
/// threads and the store's flush thread too): what the benchmarks divide by their events.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) }, 0);
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(u.ru_utime) + s(u.ru_stime)
}

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

/// Ports handed out by [`free_port`] come from below Linux's ephemeral range (32768–60999): a
/// port from inside it can be taken by any outgoing connection between the check and the
/// server's bind (seen: a cluster node's route port, with a dozen processes connecting).
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_768;

/// A free TCP port on loopback, never the same twice in one process. Bound and released, so
/// another process could still take it before it is used; outside the ephemeral range that
/// takes another test choosing the same port at the same moment.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::hash::{BuildHasher, RandomState};
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let span = u64::from(TEST_PORTS.end - TEST_PORTS.start);
    let seed = RandomState::new();
    for attempt in 0u64.. {
        assert!(attempt < 10_000, "no free port in {TEST_PORTS:?}");
        let port = TEST_PORTS.start + (seed.hash_one(attempt) % span) as u16;
        let mut given = GIVEN.lock().expect("port registry");
        let given = given.get_or_insert_with(HashSet::new);
        if given.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        given.insert(port);
        return port;
    }
    unreachable!()
}

/// A nats-server process just spawned, whose stderr a thread reads into a shared log.
pub(crate) struct Spawned {
    child: Child,
    ready: mpsc::Receiver<String>,
}

impl Spawned {
    /// Blocks until the server logs "Server is ready"; panics with its log if it exits first,
    /// or after [`READY_TIMEOUT_MS`].
    pub(crate) fn wait_ready(self) -> Child {
        match self
            .ready
            .recv_timeout(Duration::from_millis(READY_TIMEOUT_MS))
        {
            Ok(log) if log.is_empty() => self.child,
            Ok(log) => panic!("nats-server exited before it was ready:\n{log}"),
            Err(_) => {
                let mut child = self.child;
                let _ = child.kill();
                let _ = child.wait();
                panic!("nats-server not ready within {READY_TIMEOUT_MS} ms")
            }
        }
    }
}

/// Spawns `cmd` (stderr piped) and a thread that keeps its log in `kept` and reports readiness.
pub(crate) fn spawn_logged(cmd: &mut Command, kept: &Arc<Mutex<Vec<String>>>) -> Spawned {
    let bin = cmd.get_program().to_owned();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", Path::new(&bin).display()));
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel::<String>();
    let kept = kept.clone();
    // The reader thread lives as long as the server; it also keeps the pipe drained so
    // a chatty server never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut ready_sent = false;
        let mut log = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(mut kept) = kept.lock() {
                if kept.len() < MAX_LOG_LINES {
                    kept.push(line.clone());
                }
            }
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
    Spawned { child, ready: rx }
}

/// A running nats-server with JetStream. Killed on Drop; its store is removed with it.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    monitor_port: u16,
    /// The JetStream store directory (`-sd`).
    store: PathBuf,
    /// The temp dir holding `store` when the builder named none; removed with the server.
    _temp_store: Option<tempfile::TempDir>,
    extra_args: Vec<String>,
    env: Vec<(String, Option<String>)>,
    log: Arc<Mutex<Vec<String>>>,
}

/// How to start a [`NatsServer`]: extra arguments and environment variables. They apply to
/// every (re)start of that server.
#[derive(Clone, Debug, Default)]
pub struct NatsServerBuilder {
    args: Vec<String>,
    env: Vec<(String, Option<String>)>,
    store_dir: Option<PathBuf>,
}

impl NatsServerBuilder {
    /// Adds command-line arguments after the standard ones.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds `-c <path>`: a config file (its listen, monitoring and store settings are
    /// overridden by the standard flags).
    pub fn config(self, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().to_string_lossy().into_owned();
        self.args(["-c".to_owned(), path])
    }

    /// Sets an environment variable of the server process (e.g. a password the config reads).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    /// Removes an inherited environment variable from the server process.
    pub fn env_remove(mut self, key: impl Into<String>) -> Self {
        self.env.push((key.into(), None));
        self
    }

    /// Keeps the JetStream store in `dir` (created if missing, never removed) instead of a new
    /// temp dir: e.g. on a filesystem that can lose power.
    pub fn store_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.store_dir = Some(dir.into());
        self
    }

    /// Starts the server; panics with its log if it exits before it is ready.
    pub fn start(self) -> NatsServer {
        let (store, temp) = match self.store_dir {
            Some(dir) => {
                std::fs::create_dir_all(&dir).expect("the JetStream store dir");
                (dir, None)
            }
            None => {
                let temp = tempfile::tempdir().expect("temp dir for the JetStream store");
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            monitor_port: free_port(),
            store,
            _temp_store: temp,
            extra_args: self.args,
            env: self.env,
            log: Arc::default(),
        };
        server.spawn();
        server
    }
}

impl NatsServer {
    /// Starts a fresh server with JetStream on a free port and a new temp store.
    pub fn start() -> NatsServer {
        NatsServer::start_with(&[])
    }

    /// Starts a server with extra command-line arguments (e.g. `["-c", "nats.conf"]`).
    pub fn start_with(extra_args: &[&str]) -> NatsServer {
        NatsServer::builder()
            .args(extra_args.iter().copied())
            .start()
    }

    /// A builder for a server with extra arguments and environment variables.
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// The server's log (stderr) so far, one entry per line, across restarts (the first
    /// [`MAX_LOG_LINES`]).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
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
        &self.store
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
            .arg(&self.store)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in &self.env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        let child = spawn_logged(&mut cmd, &self.log);
        self.child = Some(child.wait_ready());
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

    /// A config that sets its own listen address and reads a password from the environment.
    fn config_file(dir: &Path) -> PathBuf {
        let path = dir.join("test.conf");
        std::fs::write(
            &path,
            "listen: 0.0.0.0:4222\nhttp_port: 8222\njetstream {}\n\
             authorization { user: u, password: $TESTKIT_NATS_PASSWORD }\n",
        )
        .unwrap();
        path
    }

    #[test]
    fn a_config_file_gets_its_env_vars_and_the_flags_override_its_listen_settings() {
        let dir = tempfile::tempdir().unwrap();
        let mut server = NatsServer::builder()
            .config(config_file(dir.path()))
            .env("TESTKIT_NATS_PASSWORD", "pw1")
            .start();
        let listening = |s: &NatsServer| {
            let log = s.log();
            let want_client = format!("Listening for client connections on 127.0.0.1:{}", s.port());
            let want_http = format!("Starting http monitor on 127.0.0.1:{}", s.monitor_port());
            assert!(log.iter().any(|l| l.contains(&want_client)), "{log:#?}");
            assert!(log.iter().any(|l| l.contains(&want_http)), "{log:#?}");
            assert!(!log.iter().any(|l| l.contains(":4222")), "{log:#?}");
        };
        listening(&server);
        assert!(healthz(server.monitor_port()).contains("200 OK"));
        // The environment applies to a restart too.
        server.restart();
        assert!(healthz(server.monitor_port()).contains("200 OK"));
        listening(&server);
    }

    #[test]
    fn a_config_whose_env_var_is_missing_does_not_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = config_file(dir.path());
        let started = std::panic::catch_unwind(|| {
            NatsServer::builder()
                .config(&path)
                .env_remove("TESTKIT_NATS_PASSWORD")
                .start()
        });
        let message = match started {
            Ok(_) => panic!("nats-server started without its password variable"),
            Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
        };
        assert!(
            message.contains("TESTKIT_NATS_PASSWORD") && message.contains("can not be found"),
            "{message}"
        );
    }
}
