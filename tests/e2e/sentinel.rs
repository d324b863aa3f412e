//! Redis behind Sentinel: the status store follows a failover, and the fleet loses and
//! duplicates nothing when the primary is SIGKILLed under load (`chaos_sentinel_short` with the
//! other tests, `chaos_sentinel_full` by hand; docs/RELIABILITY.md has the numbers).

use std::time::{Duration, Instant};

use fleet_core::{JobState, JobStatus};
use fleet_e2e::chaos::scenario::Fault;
use fleet_e2e::chaos::{Row, RunSize, Scenario, Services};
use fleet_e2e::isolated_config;
use fleet_e2e::redis_server::{SENTINEL_MASTER, SentinelRedis};
use fleet_status::StatusStore;

use crate::chaos::env;

/// A configuration that reaches the group through its sentinels.
fn sentinel_config(group: &SentinelRedis) -> fleet_core::FleetConfig {
    let mut config = isolated_config();
    config.redis.url = group.url();
    config.redis.sentinels = group.sentinel_urls();
    config.redis.sentinel_master = SENTINEL_MASTER.into();
    config
}

/// A store on the group, through its sentinels.
async fn store_on(config: &fleet_core::FleetConfig) -> StatusStore {
    StatusStore::connect(&config.redis).await.expect("the store connects through the sentinels")
}

fn queued_job(n: u64) -> JobStatus {
    let spec = fleet_core::parse_job(&format!(r#"{{"prompt": "failover {n}", "model": "tiny"}}"#)).unwrap();
    let job =
        spec.validate(&isolated_config().limits_for("tiny")).unwrap().assign("e2e", fleet_core::validate::new_job_id);
    JobStatus::queued(&job, chrono::Utc::now()).unwrap()
}

/// Writes made before the primary dies are on the promoted replica (they waited for it), and the
/// same store goes on writing to the new primary once the sentinels have promoted it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_store_follows_a_failover_and_keeps_what_it_wrote() {
    let mut group = tokio::task::block_in_place(SentinelRedis::start);
    let config = sentinel_config(&group);
    let store = store_on(&config).await;
    let before = queued_job(1);
    store.create(&before, Some("before-the-failover")).await.unwrap();
    store.update(before.id, |s| s.start("w1", chrono::Utc::now())).await.unwrap();
    let old = group.primary_port();

    // Calls all through the failover, as a busy fleet makes them; afterwards the store's writes
    // must be on the primary the sentinels name.
    let busy = store.clone();
    let calling = tokio::spawn(async move {
        loop {
            let _ = busy.ping().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let without_primary = tokio::task::block_in_place(|| group.fail_over(Duration::from_secs(60)));
    assert_ne!(group.primary_port(), old, "the sentinels promoted the replica");

    // The first calls may fail (the old address is gone); the store finds the new primary.
    let after = queued_job(2);
    let started = Instant::now();
    let created = loop {
        match store.create(&after, None).await {
            Ok(outcome) => break outcome,
            Err(e) => {
                assert!(started.elapsed() < Duration::from_secs(30), "still failing after the failover: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    calling.abort();
    assert_eq!(created, fleet_status::CreateOutcome::Created);
    let mut direct = config.clone();
    direct.redis.sentinels = Vec::new();
    direct.redis.url = format!("redis://127.0.0.1:{}/0", group.primary_port().expect("a primary"));
    let on_primary = StatusStore::connect(&direct.redis).await.unwrap().get(after.id).await.unwrap();
    assert!(on_primary.is_some(), "the write after the failover went to the primary the sentinels name");
    let kept = store.get(before.id).await.unwrap().expect("the record written before the kill");
    assert_eq!((kept.state, kept.attempts), (JobState::Running, 1), "{kept:?}");
    let again = store.create(&queued_job(3), Some("before-the-failover")).await.unwrap();
    assert!(
        matches!(&again, fleet_status::CreateOutcome::Existing(s) if s.id == before.id),
        "the idempotency key survived the failover: {again:?}"
    );
    println!(
        "failover: no primary for {:.1} s, writes again after {:.1} s",
        without_primary.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

async fn failover_suite(size: RunSize) {
    let mut services = tokio::task::block_in_place(Services::with_sentinel);
    let row = fleet_e2e::chaos::scenario::run(Scenario::One(Fault::KillRedisPrimary), &mut services, size).await;
    println!(
        "\nRedis failover: {} jobs at {}/s, {} workers\n{}\n{row}\n",
        size.jobs,
        size.rate,
        size.workers,
        Row::header()
    );
    assert_eq!(row.lost, 0, "lost jobs: {:#?}", row.problems);
    assert_eq!(row.duplicated, 0, "duplicated jobs: {:#?}", row.problems);
    assert!(row.problems.is_empty(), "{:#?}", row.problems);
    assert!(row.accepted > 0, "nothing was accepted");
}

/// The primary SIGKILLed once under a short load, with the other tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_sentinel_short() {
    let size =
        RunSize { jobs: env("FLEET_CHAOS_CI_JOBS", 30), rate: 10.0, workers: 2, drain_limit: Duration::from_secs(240) };
    failover_suite(size).await;
}

/// The long run: `FLEET_CHAOS_JOBS` (300) jobs at `FLEET_CHAOS_RATE` (8) jobs/s over
/// `FLEET_CHAOS_WORKERS` (3) workers, one primary kill per 100 jobs (at most 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "minutes long: run by hand (docs/RELIABILITY.md)"]
async fn chaos_sentinel_full() {
    let size = RunSize {
        jobs: env("FLEET_CHAOS_JOBS", 300),
        rate: env("FLEET_CHAOS_RATE", 8.0),
        workers: env("FLEET_CHAOS_WORKERS", 3),
        drain_limit: Duration::from_secs(env("FLEET_CHAOS_DRAIN_SECS", 1800)),
    };
    failover_suite(size).await;
}

/// What waiting for the replica costs: a job's three writes that wait (create, start, succeed),
/// `FLEET_WAIT_JOBS` (500) jobs one after another, through the sentinels (waiting) and straight to
/// the same primary (not waiting). Prints the mean per job of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand (docs/RELIABILITY.md)"]
async fn replica_wait_cost() {
    let group = tokio::task::block_in_place(SentinelRedis::start);
    let waiting = store_on(&sentinel_config(&group)).await;
    let mut direct_config = isolated_config();
    direct_config.redis.url = format!("redis://127.0.0.1:{}/0", group.primary_port().unwrap());
    let direct = StatusStore::connect(&direct_config.redis).await.unwrap();
    let jobs: u64 = env("FLEET_WAIT_JOBS", 500);
    for (name, store) in [("direct (no WAIT)", &direct), ("Sentinel (WAIT 1)", &waiting), ("direct again", &direct)] {
        let started = Instant::now();
        for n in 0..jobs {
            let job = queued_job(n);
            store.create(&job, None).await.unwrap();
            let running = store.update_from(job.id, None, |s| s.start("w", chrono::Utc::now())).await.unwrap();
            store.update_from(job.id, Some(running), |s| s.succeed(Vec::new(), chrono::Utc::now())).await.unwrap();
        }
        let per_job = started.elapsed().as_secs_f64() * 1000.0 / jobs as f64;
        println!("{name}: {jobs} jobs, {per_job:.3} ms per job (create + start + succeed)");
    }
}
