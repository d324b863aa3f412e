//! The fault suite: jobs through separate dispatcher and worker processes while workers are
//! SIGKILLed or SIGSTOPped, the dispatcher is SIGKILLed, RabbitMQ and Redis restart and S3 goes
//! away, one fault at a time and then mixed. After each scenario the clients' view, Redis and S3
//! are compared: nothing accepted may be lost or run twice, every failure must carry a reason.
//!
//! `chaos_suite_short` runs with the other tests (a few jobs per scenario); the full run is
//! `scripts/chaos.sh` (the ignored `chaos_suite_full`, 500 jobs per scenario by default).

use std::time::Duration;

use fleet_core::JobState;
use fleet_e2e::chaos::scenario::FAULTS;
use fleet_e2e::chaos::{Row, RunSize, Scenario, Services};
use fleet_e2e::fleet::Fleet;
use fleet_e2e::isolated_config;
use fleet_e2e::link::Link;
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
    let table = format!("{}\n{}", Row::header(), rows.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"));
    println!("\nfault suite: {} jobs per scenario at {}/s, {} workers\n{table}\n", size.jobs, size.rate, size.workers);
    if let Ok(path) = std::env::var("FLEET_CHAOS_REPORT") {
        let _ = std::fs::write(path, format!("{table}\n"));
    }
    for row in &rows {
        assert_eq!(row.lost, 0, "{}: lost jobs: {:#?}", row.scenario, row.problems);
        assert_eq!(row.duplicated, 0, "{}: duplicated jobs: {:#?}", row.scenario, row.problems);
        assert!(row.problems.is_empty(), "{}: {:#?}", row.scenario, row.problems);
        assert!(row.accepted > 0, "{}: nothing was accepted", row.scenario);
    }
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
    let size = RunSize {
        jobs: env("FLEET_CHAOS_JOBS", 500),
        rate: env("FLEET_CHAOS_RATE", 8.0),
        workers: env("FLEET_CHAOS_WORKERS", 3),
        drain_limit: Duration::from_secs(env("FLEET_CHAOS_DRAIN_SECS", 1800)),
    };
    let only: Vec<usize> = std::env::var("FLEET_CHAOS_SCENARIOS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let seed = env("FLEET_CHAOS_SEED", 7);
    suite(size, &only, seed, env("FLEET_CHAOS_MIXED_FAULTS", 8)).await;
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
    let valid =
        spec.validate(&config.limits_for("tiny")).unwrap().assign("e2e", fleet_core::validate::new_job_id, || 1);
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
