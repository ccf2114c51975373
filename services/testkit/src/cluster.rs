//! A local JetStream cluster: several real nats-server processes on loopback, routed to each
//! other, each with its own temp store. Killed on Drop.
//!
//! Every node runs `--server_name n<i> --cluster_name fx --cluster nats://127.0.0.1:<port>
//! --routes <the others> -js -sd <its store> -a 127.0.0.1 -p <port> -m <port>`. The cluster
//! is ready when every node has logged "Server is ready" (read from its stderr, as for
//! [`NatsServer`](crate::NatsServer)) and every node's `/jsz` names a `meta_cluster` leader,
//! so streams can be created right away.
//!
//! Leaders are found through the monitoring endpoint: `/jsz?accounts=true&streams=true` lists,
//! per account, the streams the node holds with their `cluster.leader`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{free_port, nats_server_bin, spawn_logged, wait_for};

/// How long the nodes may take to elect a JetStream meta leader.
pub const META_LEADER_TIMEOUT_MS: u64 = 30_000;

/// The `--cluster_name` of every node.
pub const CLUSTER_NAME: &str = "fx";

struct Node {
    name: String,
    port: u16,
    monitor_port: u16,
    cluster_port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

/// A running local cluster of nats-servers with JetStream.
pub struct NatsCluster {
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts `n` routed nodes (`n0`..) and waits until each is ready and sees a JetStream
    /// meta leader.
    pub async fn start(n: usize) -> NatsCluster {
        assert!(n >= 1, "a cluster needs at least one node");
        let nodes = (0..n)
            .map(|i| Node {
                name: format!("n{i}"),
                port: free_port(),
                monitor_port: free_port(),
                cluster_port: free_port(),
                store: tempfile::tempdir().expect("temp dir for a JetStream store"),
                child: None,
                log: Arc::default(),
            })
            .collect();
        let mut cluster = NatsCluster { nodes };
        // Spawn every node before waiting on any, so that none waits on routes to a node
        // that has not started yet.
        let spawned: Vec<_> = (0..n)
            .map(|i| spawn_logged(&mut cluster.command(i), &cluster.nodes[i].log))
            .collect();
        for (i, s) in spawned.into_iter().enumerate() {
            cluster.nodes[i].child = Some(s.wait_ready());
        }
        for i in 0..n {
            cluster.wait_meta_leader(i).await;
        }
        cluster
    }

    fn command(&self, i: usize) -> Command {
        let node = &self.nodes[i];
        let routes = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, o)| format!("nats://127.0.0.1:{}", o.cluster_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cmd = Command::new(nats_server_bin());
        cmd.args(["--server_name", &node.name])
            .args(["--cluster_name", CLUSTER_NAME])
            .args([
                "--cluster",
                &format!("nats://127.0.0.1:{}", node.cluster_port),
            ])
            .arg("-js")
            .args(["-a", "127.0.0.1"])
            .args(["-p", &node.port.to_string()])
            .args(["-m", &node.monitor_port.to_string()])
            .arg("-sd")
            .arg(node.store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if !routes.is_empty() {
            cmd.args(["--routes", &routes]);
        }
        cmd
    }

    /// Waits until node `i`'s `/jsz` names a meta leader; panics with the node's log after
    /// [`META_LEADER_TIMEOUT_MS`].
    async fn wait_meta_leader(&self, i: usize) {
        let port = self.nodes[i].monitor_port;
        let what = format!("{} to see a JetStream meta leader", self.nodes[i].name);
        let seen = tokio::time::timeout(
            Duration::from_millis(META_LEADER_TIMEOUT_MS),
            wait_for(&what, 2 * META_LEADER_TIMEOUT_MS, || async move {
                let jsz = monitor_json(port, "/jsz")?;
                let leader = jsz.get("meta_cluster")?.get("leader")?.as_str()?;
                (!leader.is_empty()).then_some(())
            }),
        )
        .await;
        if seen.is_err() {
            panic!(
                "timed out after {META_LEADER_TIMEOUT_MS} ms waiting for {what}; its log:\n{}",
                self.log(i).join("\n")
            );
        }
    }

    /// How many nodes the cluster has (running or killed).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's client URL, comma-separated (for `NATS_URL` and `async_nats::connect`).
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's client URL, as a list (`async_nats::connect` takes a slice of them; a
    /// comma-separated string is one URL to it).
    pub fn url_list(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// Node `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// Node `i`'s `--server_name` (`n<i>`).
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node with this server name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Node `i`'s client port.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// Node `i`'s HTTP monitoring port.
    pub fn monitor_port(&self, i: usize) -> u16 {
        self.nodes[i].monitor_port
    }

    /// Node `i`'s route port.
    pub fn cluster_port(&self, i: usize) -> u16 {
        self.nodes[i].cluster_port
    }

    /// Node `i`'s JetStream store.
    pub fn store_dir(&self, i: usize) -> &Path {
        self.nodes[i].store.path()
    }

    /// Node `i`'s log (stderr) so far, across restarts.
    pub fn log(&self, i: usize) -> Vec<String> {
        self.nodes[i].log.lock().expect("log lock").clone()
    }

    /// Whether node `i` runs (it was not killed, or was restarted).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// SIGKILLs node `i`: no shutdown, no leadership transfer.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills node `i` if it runs, starts it again on the same ports and store, and waits until
    /// it is ready and sees a meta leader.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        let spawned = spawn_logged(&mut self.command(i), &self.nodes[i].log);
        self.nodes[i].child = Some(spawned.wait_ready());
        self.wait_meta_leader(i).await;
    }

    /// The index of the node that leads `stream` (in any account), as the running nodes'
    /// `/jsz?accounts=true&streams=true` report it; `None` while no running node names a
    /// running leader (e.g. during an election).
    pub fn leader_of_stream(&self, stream: &str) -> Option<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.is_running(i))
            .find_map(|i| {
                let name = stream_leader_on(self.nodes[i].monitor_port, stream)?;
                self.index_of(&name).filter(|&j| self.is_running(j))
            })
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// The leader of `stream` as the node on `monitor_port` reports it.
fn stream_leader_on(monitor_port: u16, stream: &str) -> Option<String> {
    let jsz = monitor_json(monitor_port, "/jsz?accounts=true&streams=true")?;
    jsz.get("account_details")?
        .as_array()?
        .iter()
        .filter_map(|acc| acc.get("stream_detail")?.as_array())
        .flatten()
        .filter(|s| s.get("name").and_then(|n| n.as_str()) == Some(stream))
        .find_map(|s| {
            let leader = s.get("cluster")?.get("leader")?.as_str()?;
            (!leader.is_empty()).then(|| leader.to_owned())
        })
}

/// GETs a monitoring path on loopback and parses the JSON body; `None` on any failure.
pub fn monitor_json(port: u16, path: &str) -> Option<serde_json::Value> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.") || !head.lines().next()?.contains(" 200 ") {
        return None;
    }
    serde_json::from_str(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn three_nodes_elect_a_meta_leader_and_a_killed_node_rejoins() {
        let mut c = NatsCluster::start(3).await;
        assert_eq!(c.urls().split(',').count(), 3);
        let names: Vec<String> = (0..3)
            .filter_map(|i| {
                let jsz = monitor_json(c.monitor_port(i), "/jsz")?;
                Some(jsz["meta_cluster"]["leader"].as_str()?.to_owned())
            })
            .collect();
        assert_eq!(names.len(), 3);
        assert!(names.iter().all(|n| n == &names[0]), "{names:?}");
        let port = c.port(1);
        c.kill(1);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
        c.restart(1).await;
        assert_eq!(c.port(1), port);
        assert!(c.log(1).iter().any(|l| l.contains("Server is ready")));
    }

    #[tokio::test]
    async fn the_leader_of_an_r3_stream_is_found_and_moves_when_its_node_dies() {
        let mut c = NatsCluster::start(3).await;
        let client = async_nats::connect(c.url_list().as_slice()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "T".into(),
            subjects: vec!["t.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap();
        let leader = wait_for("a leader of T", 10_000, || async {
            c.leader_of_stream("T")
        })
        .await;
        c.kill(leader);
        let next = wait_for("a new leader of T", 20_000, || async {
            c.leader_of_stream("T").filter(|&l| l != leader)
        })
        .await;
        assert_ne!(next, leader);
        c.restart(leader).await;
    }
}
