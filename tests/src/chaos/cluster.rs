//! Broker-cluster faults: the fleet runs on a three-node RabbitMQ cluster with every node's URL
//! (`rabbitmq.urls`), and nodes die or restart under load. A quorum queue goes on while a majority
//! of its replicas runs; the fleet's processes must move to a live node by themselves and lose or
//! repeat nothing.

use std::time::{Duration, Instant};

use super::audit::Row;
use super::fleet::ChaosFleet;
use super::scenario::{RunSize, before_fault, settle, submit};
use crate::rabbit_cluster::RabbitCluster;
use crate::redis_server::PrivateRedis;

/// How long a restarted node may take until every queue has all its replicas online again.
const REJOIN_LIMIT: Duration = Duration::from_secs(180);
/// How long a killed or stopped node stays down.
const DOWN: Duration = Duration::from_secs(3);

/// The services of the cluster scenarios.
pub struct ClusterServices {
    pub cluster: RabbitCluster,
    pub redis: PrivateRedis,
}

impl ClusterServices {
    /// A three-node cluster and a private Redis.
    pub fn start() -> ClusterServices {
        ClusterServices { cluster: RabbitCluster::start(3), redis: PrivateRedis::start() }
    }
}

/// One cluster fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterFault {
    /// SIGKILL of the node leading a job queue; started again after a few seconds.
    KillLeader,
    /// Clean stop of the node leading a job queue, started again after a few seconds.
    RestartNode,
    /// Every node stopped and started again, one at a time, each once the one before has all
    /// its replicas back.
    RollingRestart,
}

pub const CLUSTER_FAULTS: [ClusterFault; 3] =
    [ClusterFault::KillLeader, ClusterFault::RestartNode, ClusterFault::RollingRestart];

impl ClusterFault {
    pub fn name(self) -> &'static str {
        match self {
            ClusterFault::KillLeader => "C1 cluster: queue leader SIGKILL",
            ClusterFault::RestartNode => "C2 cluster: node restart",
            ClusterFault::RollingRestart => "C3 cluster: rolling restart",
        }
    }

    async fn inject(self, fleet: &ChaosFleet, cluster: &RabbitCluster) {
        let queue = format!("{}.tiny.interactive@e2e", fleet.config.rabbitmq.queue_prefix);
        let started = Instant::now();
        match self {
            ClusterFault::KillLeader | ClusterFault::RestartNode => {
                let leader = leader(cluster, &queue);
                let kill = self == ClusterFault::KillLeader;
                let what = if kill { "SIGKILL" } else { "restart" };
                eprintln!("  {what} of {} (leader of {queue})", cluster.node_name(leader));
                block(|| if kill { cluster.kill_node(leader) } else { cluster.stop_node(leader) });
                tokio::time::sleep(DOWN).await;
                block(|| cluster.start_node(leader));
            }
            ClusterFault::RollingRestart => {
                for node in 0..cluster.urls().len() {
                    eprintln!("  rolling restart: {}", cluster.node_name(node));
                    block(|| cluster.stop_node(node));
                    block(|| cluster.start_node(node));
                    until_all_replicas_online(cluster, node).await;
                }
            }
        }
        until_all_replicas_online(cluster, 0).await;
        eprintln!("  cluster whole again after {:.1} s", started.elapsed().as_secs_f64());
    }
}

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The node leading `queue`, asked of each node in turn until one answers.
fn leader(cluster: &RabbitCluster, queue: &str) -> usize {
    let nodes = cluster.urls().len();
    (0..nodes)
        .find_map(|via| block(|| cluster.leader_of(queue, via)))
        .unwrap_or_else(|| panic!("no node names a leader of {queue}; see {}", cluster.dir().display()))
}

/// Waits until node `via` sees every node running and every quorum queue with all its replicas
/// online: only then may the next node go down without a queue losing its majority.
async fn until_all_replicas_online(cluster: &RabbitCluster, via: usize) {
    let nodes = cluster.urls().len();
    let started = Instant::now();
    loop {
        let whole = block(|| cluster.running_nodes(via).len() == nodes && all_online(cluster, via, nodes));
        if whole {
            return;
        }
        assert!(
            started.elapsed() < REJOIN_LIMIT,
            "the cluster is not whole again after {REJOIN_LIMIT:?}; see {}",
            cluster.dir().display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether every quorum queue lists `nodes` online members.
fn all_online(cluster: &RabbitCluster, via: usize, nodes: usize) -> bool {
    let Ok(json) = cluster.ctl(via, &["list_queues", "name", "type", "online", "--formatter", "json"]) else {
        return false;
    };
    let rows: Vec<serde_json::Value> = serde_json::from_str(json.trim()).unwrap_or_default();
    rows.iter()
        .filter(|r| r["type"] == "quorum")
        .all(|r| r["online"].as_array().is_some_and(|online| online.len() == nodes))
}

/// Runs one cluster fault under load on a fresh fleet that knows every node, and audits it.
pub async fn run(fault: ClusterFault, services: &ClusterServices, size: RunSize) -> Row {
    let name = fault.name().to_owned();
    let fleet = ChaosFleet::start_on(
        services.cluster.urls(),
        &services.redis.url(),
        size.workers,
        &name.replace(' ', "_"),
        |_| {},
    )
    .await;
    let submitter = submit(&fleet, size);
    before_fault(&submitter, &name, 0, 1, size, fault.name()).await;
    fault.inject(&fleet, &services.cluster).await;
    settle(&name, fleet, submitter, size).await
}
