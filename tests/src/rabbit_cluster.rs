//! A private RabbitMQ cluster on loopback that a test may break node by node: the nodes of
//! `scripts/rabbitmq-cluster.sh` (own node names, AMQP and distribution ports, data, logs and one
//! shared Erlang cookie under a temporary directory, joined with `join_cluster`), next to (never
//! instead of) the machine's shared broker.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A cluster of `scripts/rabbitmq-cluster.sh` nodes; stopped and removed when dropped.
pub struct RabbitCluster {
    dir: PathBuf,
    urls: Vec<String>,
    name: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq-cluster.sh")
}

/// A first AMQP port such that the `nodes` ports from it and their distribution ports (+20000)
/// are free; below 15535 so that the CLI's distribution ports (+30000 …) stay valid.
fn free_base_port(nodes: u16) -> u16 {
    for _ in 0..200 {
        let bytes = uuid::Uuid::new_v4().into_bytes();
        let base = 10_000 + u16::from_le_bytes([bytes[0], bytes[1]]) % 5_000;
        let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if (base..base + nodes).all(|p| free(p) && free(p + 20_000)) {
            return base;
        }
    }
    panic!("no free ports for a private RabbitMQ cluster");
}

impl RabbitCluster {
    /// Starts `nodes` nodes, joins them into one cluster and waits until every node runs.
    pub fn start(nodes: u16) -> RabbitCluster {
        let tag = uuid::Uuid::now_v7().simple().to_string();
        let dir = std::env::temp_dir().join(format!("fleet-rabbit-cluster-{tag}"));
        let name = format!("fleetcl{}n", &tag[tag.len() - 8..]);
        let output = Command::new(script())
            .args(["start", &dir.to_string_lossy()])
            .env("RABBITMQ_CLUSTER_NODES", nodes.to_string())
            .env("RABBITMQ_CLUSTER_PORT", free_base_port(nodes).to_string())
            .env("RABBITMQ_CLUSTER_NAME", &name)
            .stdin(Stdio::null())
            .output()
            .expect("scripts/rabbitmq-cluster.sh");
        let mut cluster = RabbitCluster { dir, urls: Vec::new(), name };
        assert!(output.status.success(), "the cluster did not start: {}", String::from_utf8_lossy(&output.stderr));
        cluster.urls = String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect();
        cluster
    }

    /// One AMQP URL per node, node 1 first.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The Erlang node name of node `i` (0-based).
    pub fn node_name(&self, i: usize) -> String {
        format!("{}{}@localhost", self.name, i + 1)
    }

    /// `scripts/rabbitmq-cluster.sh COMMAND DIR [node] [args…]`, with its output.
    fn run(&self, command: &str, node: Option<usize>, args: &[&str]) -> Output {
        let mut cmd = Command::new(script());
        cmd.args([command, &self.dir.to_string_lossy()]);
        if let Some(i) = node {
            cmd.arg((i + 1).to_string());
        }
        cmd.args(args).stdin(Stdio::null()).output().expect("scripts/rabbitmq-cluster.sh")
    }

    fn must(&self, command: &str, node: usize) {
        let out = self.run(command, Some(node), &[]);
        assert!(
            out.status.success(),
            "{command} of node {}: {}",
            self.node_name(node),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILL of node `i`'s Erlang VM (no clean shutdown).
    pub fn kill_node(&self, i: usize) {
        self.must("kill-node", i);
    }

    /// Clean stop of node `i`.
    pub fn stop_node(&self, i: usize) {
        self.must("stop-node", i);
    }

    /// Starts node `i` again on its data and waits until it has booted (and rejoined).
    pub fn start_node(&self, i: usize) {
        self.must("start-node", i);
    }

    /// `rabbitmqctl` against node `i`; stdout when it succeeds.
    pub fn ctl(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let out = self.run("ctl", Some(i), args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The node (0-based) leading quorum queue `queue`, asked of node `via`.
    pub fn leader_of(&self, queue: &str, via: usize) -> Option<usize> {
        let json = self.ctl(via, &["list_queues", "name", "leader", "--formatter", "json"]).ok()?;
        let rows: Vec<serde_json::Value> = serde_json::from_str(json.trim()).ok()?;
        let leader = rows.iter().find(|r| r["name"] == queue)?["leader"].as_str()?.to_owned();
        (0..self.urls.len()).find(|&i| self.node_name(i) == leader)
    }

    /// The nodes (0-based) that node `via` sees running.
    pub fn running_nodes(&self, via: usize) -> Vec<usize> {
        let Ok(json) = self.ctl(via, &["cluster_status", "--formatter", "json"]) else { return Vec::new() };
        let status: serde_json::Value = serde_json::from_str(json.trim()).unwrap_or_default();
        let running: Vec<&str> =
            status["running_nodes"].as_array().into_iter().flatten().filter_map(|n| n.as_str()).collect();
        (0..self.urls.len()).filter(|&i| running.contains(&self.node_name(i).as_str())).collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        let _ = self.run("stop", None, &[]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
