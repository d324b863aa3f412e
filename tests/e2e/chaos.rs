//! The fault suite: jobs through separate dispatcher and worker processes while workers are
//! SIGKILLed or SIGSTOPped, the dispatcher is SIGKILLed, RabbitMQ and Redis restart and S3 goes
//! away, one fault at a time and then mixed. After each scenario the clients' view, Redis and S3
//! are compared: nothing accepted may be lost or run twice, every failure must carry a reason.
//!
//! `chaos_suite_short` runs with the other tests (a few jobs per scenario); the full run is
//! `scripts/chaos.sh` (the ignored `chaos_suite_full`, 500 jobs per scenario by default).

use std::sync::Arc;
use std::time::Duration;

use fleet_core::JobState;
use fleet_e2e::chaos::cluster::{CLUSTER_FAULTS, ClusterFault, ClusterServices};
use fleet_e2e::chaos::scenario::FAULTS;
use fleet_e2e::chaos::{Row, RunSize, Scenario, Services};
use fleet_e2e::fleet::Fleet;
use fleet_e2e::isolated_config;
use fleet_e2e::link::Link;
use fleet_e2e::rabbit_cluster::RabbitCluster;
use fleet_e2e::rabbit_server::PrivateRabbit;

use crate::fleet::tiny_job;

pub(crate) fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs the scenarios (numbers 1–7, 7 being the mix), prints the table, then asserts.
async fn suite(size: RunSize, only: &[usize], seed: u64, mixed_faults: usize) {
    let mut services = tokio::task::block_in_place(Services::start);
    let mut scenarios: Vec<Scenario> = FAULTS.iter().map(|f| Scenario::One(*f)).collect();
    scenarios.push(Scenario::Mixed { seed, faults: mixed_faults });
    let mut rows: Vec<Row> = Vec::new();
    for (i, scenario) in scenarios.into_iter().enumerate() {
        if !only.is_empty() && !only.contains(&(i + 1)) {
            continue;
        }
        let row = fleet_e2e::chaos::scenario::run(scenario, &mut services, size).await;
        eprintln!("{}\n{row}", Row::header());
        rows.push(row);
    }
    report(&rows, size);
}

/// Prints the table (also to `FLEET_CHAOS_REPORT`), then asserts every row.
fn report(rows: &[Row], size: RunSize) {
    let table = format!("{}\n{}", Row::header(), rows.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"));
    println!("\nfault suite: {} jobs per scenario at {}/s, {} workers\n{table}\n", size.jobs, size.rate, size.workers);
    if let Ok(path) = std::env::var("FLEET_CHAOS_REPORT") {
        let _ = std::fs::write(path, format!("{table}\n"));
    }
    for row in rows {
        assert_eq!(row.lost, 0, "{}: lost jobs: {:#?}", row.scenario, row.problems);
        assert_eq!(row.duplicated, 0, "{}: duplicated jobs: {:#?}", row.scenario, row.problems);
        assert!(row.problems.is_empty(), "{}: {:#?}", row.scenario, row.problems);
        assert!(row.accepted > 0, "{}: nothing was accepted", row.scenario);
    }
}

/// The size of a full run: `FLEET_CHAOS_JOBS` (`jobs`) jobs per scenario at `FLEET_CHAOS_RATE`
/// (8) jobs/s over `FLEET_CHAOS_WORKERS` (3) workers, `FLEET_CHAOS_DRAIN_SECS` (1800) to drain.
fn full_size(jobs: usize) -> RunSize {
    RunSize {
        jobs: env("FLEET_CHAOS_JOBS", jobs),
        rate: env("FLEET_CHAOS_RATE", 8.0),
        workers: env("FLEET_CHAOS_WORKERS", 3),
        drain_limit: Duration::from_secs(env("FLEET_CHAOS_DRAIN_SECS", 1800)),
    }
}

/// Scenario numbers listed in the variable `var` (e.g. `1,5,7`); empty: all.
fn picked(var: &str) -> Vec<usize> {
    std::env::var(var).unwrap_or_default().split(',').filter_map(|s| s.trim().parse().ok()).collect()
}

/// A few jobs per scenario, with the other tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_suite_short() {
    let size =
        RunSize { jobs: env("FLEET_CHAOS_CI_JOBS", 20), rate: 10.0, workers: 2, drain_limit: Duration::from_secs(240) };
    suite(size, &[], env("FLEET_CHAOS_SEED", 7), 3).await;
}

/// The full run (`scripts/chaos.sh`): `FLEET_CHAOS_JOBS` (500) jobs per scenario at
/// `FLEET_CHAOS_RATE` (8) jobs/s over `FLEET_CHAOS_WORKERS` (3) workers; `FLEET_CHAOS_SCENARIOS`
/// (e.g. `1,5,7`) picks scenarios, `FLEET_CHAOS_SEED` the mix.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "minutes long: run by scripts/chaos.sh"]
async fn chaos_suite_full() {
    let size = full_size(500);
    let only = picked("FLEET_CHAOS_SCENARIOS");
    let seed = env("FLEET_CHAOS_SEED", 7);
    suite(size, &only, seed, env("FLEET_CHAOS_MIXED_FAULTS", 8)).await;
}

/// Rolling graceful restarts under load with the default delivery limit (3): SIGTERM to a worker
/// every 3 s, a replacement started each time; nothing dead-lettered, lost or run twice, every
/// job succeeded, every stopped worker exited with status 0.
async fn rolling(spec: fleet_e2e::chaos::rolling::Rolling) {
    let mut services = tokio::task::block_in_place(Services::start);
    let (row, handbacks) = fleet_e2e::chaos::rolling::run(&mut services, spec).await;
    println!(
        "
{}
{row}
{handbacks:?}
",
        Row::header()
    );
    assert_eq!(row.failed.values().sum::<usize>(), 0, "no job failed (none dead-lettered): {:?}", row.failed);
    assert_eq!((row.lost, row.duplicated), (0, 0), "{:#?}", row.problems);
    assert!(row.problems.is_empty(), "{:#?}", row.problems);
    assert_eq!(row.succeeded, row.accepted, "every accepted job succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restarts_short() {
    let every = Duration::from_secs(3);
    let spec = fleet_e2e::chaos::rolling::Rolling {
        jobs: 60,
        restarts: 8,
        every,
        workers: 2,
        drain_limit: Duration::from_secs(240),
    };
    rolling(spec).await;
}

/// The run: 25 SIGTERMs, 400 jobs (`FLEET_ROLLING_RESTARTS`, `FLEET_ROLLING_JOBS`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "minutes long: run by hand (docs/RELIABILITY.md)"]
async fn rolling_restarts_full() {
    let spec = fleet_e2e::chaos::rolling::Rolling {
        jobs: env("FLEET_ROLLING_JOBS", 400),
        restarts: env("FLEET_ROLLING_RESTARTS", 25),
        every: Duration::from_secs(3),
        workers: env("FLEET_CHAOS_WORKERS", 3),
        drain_limit: Duration::from_secs(env("FLEET_CHAOS_DRAIN_SECS", 1800)),
    };
    rolling(spec).await;
}

/// The broker-cluster faults (C1–C3, `fleet_e2e::chaos::cluster`) on one three-node cluster.
async fn cluster_suite(services: &ClusterServices, size: RunSize, faults: &[ClusterFault]) {
    let mut rows = Vec::new();
    for &fault in faults {
        let row = fleet_e2e::chaos::cluster::run(fault, services, size).await;
        eprintln!("{}\n{row}", Row::header());
        rows.push(row);
    }
    report(&rows, size);
}

/// A queue leader SIGKILLed and a whole rolling restart of a three-node cluster, a few jobs
/// each, with the other tests (the node restart is part of the rolling restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_chaos_short() {
    let services = tokio::task::block_in_place(ClusterServices::start);
    a_broker_moves_to_a_live_node(&services.cluster).await;
    let size = RunSize {
        jobs: env("FLEET_CHAOS_CLUSTER_CI_JOBS", 12),
        rate: 10.0,
        workers: 2,
        drain_limit: Duration::from_secs(240),
    };
    cluster_suite(&services, size, &[ClusterFault::KillLeader, ClusterFault::RollingRestart]).await;
}

/// The cluster scenarios at full size: `FLEET_CHAOS_JOBS` (300) jobs each at `FLEET_CHAOS_RATE`
/// (8) jobs/s over `FLEET_CHAOS_WORKERS` (3) workers; `FLEET_CHAOS_CLUSTER_SCENARIOS` (e.g. `1,3`)
/// picks among C1–C3.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "minutes long: run by hand (docs/RELIABILITY.md)"]
async fn cluster_chaos_full() {
    let size = full_size(300);
    let only = picked("FLEET_CHAOS_CLUSTER_SCENARIOS");
    let faults: Vec<ClusterFault> = (1..=CLUSTER_FAULTS.len())
        .filter(|i| only.is_empty() || only.contains(i))
        .map(|i| CLUSTER_FAULTS[i - 1])
        .collect();
    let services = tokio::task::block_in_place(ClusterServices::start);
    cluster_suite(&services, size, &faults).await;
}

/// A broker given every node's URL whose node is SIGKILLed publishes again on another node,
/// and quorum queues keep what was confirmed before the kill.
async fn a_broker_moves_to_a_live_node(cluster: &RabbitCluster) {
    let mut config = isolated_config();
    // Publishing straight through fleet-queue: the shared queue, which the topology declares
    // (a lane is declared by the dispatcher before its first job).
    config.rabbitmq.tenant_lanes = false;
    let topology = fleet_queue::Topology::new(&config.rabbitmq, ["tiny"]);
    let queue = topology.queues[0].name.clone();
    let broker = Arc::new(fleet_queue::Broker::connect_any(cluster.urls().to_vec(), topology).await.unwrap());
    let publisher = fleet_queue::Publisher::new(broker.clone(), Duration::from_secs(30));
    let job = |n: usize| {
        let spec = fleet_core::parse_job(&tiny_job(n).to_string()).unwrap();
        spec.validate(&config.limits_for("tiny")).unwrap().assign("e2e", fleet_core::validate::new_job_id)
    };
    publisher.publish(&job(1), "before").await.unwrap();
    let first = broker.node().await.expect("connected");
    let dead = cluster.urls().iter().position(|u| fleet_core::config::mask_url(u) == first).unwrap();
    tokio::task::block_in_place(|| cluster.kill_node(dead));

    // The surviving nodes refuse publishes to a queue whose leader died (negative confirms) until
    // they have elected a new one: wait for that, then the broker must publish on a live node. The
    // node is gone before any publish starts, so a refused try enqueued nothing.
    let started = std::time::Instant::now();
    let live = (dead + 1) % cluster.urls().len();
    while tokio::task::block_in_place(|| cluster.leader_of(&queue, live)).is_none_or(|l| l == dead) {
        assert!(started.elapsed() < Duration::from_secs(90), "{queue} elected no new leader");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut failures = Vec::new();
    while let Err(e) = publisher.publish(&job(2), "after").await {
        failures.push(e.to_string());
        assert!(failures.len() < 60, "no publish on a live node: {failures:#?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "published on a live node {:.1} s after the kill ({} refused tries: {failures:?})",
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    let second = broker.node().await.expect("connected again");
    assert_ne!(second, first, "the broker moved to a live node");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let depth = loop {
        match broker.depth(&queue).await {
            Ok(depth) => break depth,
            Err(e) => assert!(std::time::Instant::now() < deadline, "the queue never answered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(depth.messages, 2, "jobs 1 and 2 are on the queue, across the kill");
    broker.close().await;
    tokio::task::block_in_place(|| cluster.start_node(dead));
}

/// A worker whose broker connection breaks (connections reset, then the broker is back) reconnects
/// and serves the next job by itself: it does not exit, and no other worker is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_reconnects_to_the_broker_by_itself() {
    let rabbit = tokio::task::block_in_place(PrivateRabbit::start);
    let link = Link::start(&rabbit.addr()).await.unwrap();
    let mut config = isolated_config();
    config.rabbitmq.url = rabbit.url().replace(&rabbit.addr(), &link.addr().to_string());
    let fleet = Fleet::start(config, 1).await;
    let first = fleet.submit(tiny_job(1)).await.id;
    let before = fleet.wait_all(&[first], Duration::from_secs(120)).await.remove(0);
    assert_eq!(before.state, JobState::Succeeded, "{before:?}");

    link.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    link.restore();

    // The dispatcher reconnects on its next publish; the worker must have reconnected on its own.
    let second = fleet.submit(tiny_job(2)).await.id;
    let after = fleet.wait_all(&[second], Duration::from_secs(120)).await.remove(0);
    assert_eq!(after.state, JobState::Succeeded, "{after:?}");
    assert_eq!(after.worker, before.worker, "the same worker served both jobs");
    fleet.stop().await;
}

/// A worker that loses its broker connection again and again while jobs wait in its prefetch
/// (more often than the delivery limit) pushes none of them toward the dead-letter queue: the
/// broker counts each return, but a copy returned without a start is handed back afresh by the
/// worker that gets it next, and a job the worker was running when its link went is finished by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_connections_while_jobs_wait_dead_letter_nothing() {
    let rabbit = tokio::task::block_in_place(PrivateRabbit::start);
    let link = Link::start(&rabbit.addr()).await.unwrap();
    let mut config = isolated_config();
    config.rabbitmq.delivery_limit = fleet_core::FleetConfig::default().rabbitmq.delivery_limit;
    config.rabbitmq.url = rabbit.url().replace(&rabbit.addr(), &link.addr().to_string());
    let fleet = Fleet::start(config.clone(), 1).await;
    // Larger than the suite's usual jobs, so the worker holds a backlog in its prefetch.
    let mut ids = Vec::new();
    for i in 0..16 {
        let mut job = tiny_job(i);
        (job["width"], job["height"], job["steps"], job["priority"]) =
            (256.into(), 256.into(), 4.into(), "interactive".into());
        ids.push(fleet.submit(job).await.id);
    }
    let cuts = config.rabbitmq.delivery_limit + 2;
    for _ in 0..cuts {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        link.cut();
        tokio::time::sleep(Duration::from_millis(500)).await;
        link.restore();
    }
    let done = fleet.wait_all(&ids, Duration::from_secs(300)).await;
    let failed: Vec<_> = done.iter().filter(|s| s.state != JobState::Succeeded).collect();
    assert!(failed.is_empty(), "after {cuts} lost connections: {failed:#?}");
    let refreshed = done.iter().filter(|s| s.handbacks > 0).count();
    eprintln!("{refreshed} of {} jobs were handed back afresh after a return without a start", done.len());
    // Through the link, restored: the configuration the fleet ran with.
    assert_eq!(fleet_e2e::chaos::audit::dead_letter_depth(&config).await, 0, "nothing dead-lettered");
    fleet.stop().await;
}

/// A dispatcher killed between recording a job and publishing it leaves a queued record that no
/// message stands for. The client, which got no answer, retries with its idempotency key: the job
/// must then run, not stay queued for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_runs_a_job_whose_dispatcher_died_before_publishing_it() {
    let rabbit = tokio::task::block_in_place(PrivateRabbit::start);
    let mut config = isolated_config();
    config.rabbitmq.url = rabbit.url();
    let fleet = Fleet::start(config.clone(), 1).await;
    let mut job = tiny_job(5);
    job["idempotency_key"] = serde_json::json!("died-before-publish");
    let spec = fleet_core::parse_job(&job.to_string()).unwrap();
    let valid = spec.validate(&config.limits_for("tiny")).unwrap().assign("e2e", fleet_core::validate::new_job_id);
    let record = fleet_core::JobStatus::queued(&valid, chrono::Utc::now()).unwrap();
    let store = fleet_status::StatusStore::connect(&config.redis).await.unwrap();
    store.create(&record, Some("died-before-publish")).await.unwrap();

    let retried = fleet.submit(job).await;
    assert_eq!(retried.id, record.id, "the retry names the recorded job");
    let done = fleet.wait_all(&[record.id], Duration::from_secs(120)).await.remove(0);
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(done.attempts, 1, "{done:?}");
    fleet.stop().await;
}

/// The load run's machinery on a tiny input (the real run is the `load` bench): every job
/// submitted is accepted and every process's memory is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_load_run_works_on_a_tiny_input() {
    let spec = fleet_e2e::load::LoadSpec {
        rate: 5.0,
        duration: Duration::from_secs(2),
        max_jobs: 10,
        workers: 1,
        clients: 2,
        sample_every: Duration::from_secs(1),
    };
    let report = fleet_e2e::load::run(spec).await;
    println!("{}", report.markdown());
    assert_eq!((report.accepted, report.refused), (10, 0));
    assert!(!report.depth.is_empty(), "queue depth was sampled");
    assert_eq!(report.memory.len(), 4, "dispatcher, worker, Redis and RabbitMQ: {:?}", report.memory);
    assert!(report.memory.iter().all(|(_, start, end)| *start > 0 && *end > 0), "{:?}", report.memory);
}

/// The load run from the e2e binary (the same as the `load` bench, without building the bench
/// profile): `FLEET_LOAD_RATE`, `FLEET_LOAD_SECS`, `FLEET_LOAD_MAX_JOBS`, `FLEET_LOAD_WORKERS`,
/// `FLEET_LOAD_CLIENTS`, `FLEET_LOAD_SAMPLE_SECS` as there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "minutes long: a measurement, run by hand (docs/RELIABILITY.md)"]
async fn load_run() {
    let report = fleet_e2e::load::run(fleet_e2e::load::LoadSpec::from_env()).await;
    println!("{}", report.markdown());
}
