//! Services that go away while jobs run: the network to the real S3 or Redis is cut for a while
//! (a [`Link`] between the fleet and the service), then restored. Nothing may fail or be lost.

use std::time::Duration;

use fleet_core::JobState;
use fleet_e2e::isolated_config;
use fleet_e2e::link::Link;
use fleet_e2e::redis_server::PrivateRedis;

use fleet_e2e::fleet::Fleet;

use crate::fleet::tiny_job;

/// How long each outage lasts: longer than one retry step, well inside the worker's 2-minute budget.
const OUTAGE: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_survive_an_s3_outage_and_are_stored_once() {
    let mut config = isolated_config();
    let direct = config.s3.clone();
    let link = Link::start(direct.endpoint.trim_start_matches("http://")).await.unwrap();
    config.s3.endpoint = format!("http://{}", link.addr());
    let fleet = Fleet::start(config.clone(), 1).await;

    link.cut();
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(fleet.submit(tiny_job(i)).await.id);
    }
    tokio::time::sleep(OUTAGE).await;
    for id in &ids {
        let state = fleet.status(*id).await.state;
        assert!(matches!(state, JobState::Queued | JobState::Running), "job {id} is {state:?} during the S3 outage");
    }
    link.restore();

    let statuses = fleet.wait_all(&ids, Duration::from_secs(180)).await;
    let store = fleet_storage::ImageStore::from_config(&direct).await.unwrap();
    for s in &statuses {
        assert_eq!(s.state, JobState::Succeeded, "{s:?}");
        let keys = store.list(&format!("{}/e2e/{}/", direct.prefix, s.id)).await.unwrap();
        assert_eq!(keys.len(), s.result.len(), "exactly one result set for {}: {keys:?}", s.id);
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_survive_redis_going_away_mid_run() {
    let mut config = isolated_config();
    let target = config.redis.url.trim_start_matches("redis://").split('/').next().unwrap_or_default().to_owned();
    let link = Link::start(&target).await.unwrap();
    config.redis.url = format!("redis://{}/0", link.addr());
    let fleet = Fleet::start(config.clone(), 1).await;

    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(fleet.submit(tiny_job(i)).await.id);
    }
    // Cut while the worker is busy, so progress and result writes hit the outage. The API cannot
    // answer during it (its records are in Redis too), so the test waits it out without polling.
    until_one_started(&fleet, &ids).await;
    link.cut();
    tokio::time::sleep(OUTAGE).await;
    link.restore();

    let statuses = fleet.wait_all(&ids, Duration::from_secs(180)).await;
    for s in &statuses {
        assert_eq!(s.state, JobState::Succeeded, "{s:?}");
        assert_eq!(s.result.len() as u32, s.progress.images_total, "{s:?}");
    }
    fleet.stop().await;
}

/// Redis stopped and started again (append-only file on, as recommended) while a worker runs:
/// the dispatcher and the worker reconnect by themselves and every job finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_survive_a_redis_restart() {
    let mut redis = PrivateRedis::start();
    let mut config = isolated_config();
    config.redis.url = redis.url();
    let fleet = Fleet::start(config.clone(), 1).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(fleet.submit(tiny_job(i)).await.id);
    }
    until_one_started(&fleet, &ids).await;
    tokio::task::block_in_place(|| redis.restart(Duration::from_secs(2)));

    let statuses = fleet.wait_all(&ids, Duration::from_secs(180)).await;
    for s in &statuses {
        assert_eq!(s.state, JobState::Succeeded, "{s:?}");
    }
    fleet.stop().await;
}

/// How long a worker may take to start its first job once the jobs are queued.
const START_LIMIT: Duration = Duration::from_secs(120);

/// Waits until the worker has taken up at least one of the jobs; fails after [`START_LIMIT`]
/// naming the jobs and their states.
async fn until_one_started(fleet: &Fleet, ids: &[uuid::Uuid]) {
    let deadline = tokio::time::Instant::now() + START_LIMIT;
    loop {
        let states = futures::future::join_all(ids.iter().map(|id| fleet.status(*id))).await;
        if states.iter().any(|s| s.state != JobState::Queued) {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let states: Vec<_> = states.iter().map(|s| format!("{} {:?}", s.id, s.state)).collect();
            panic!("no worker started any of {} jobs within {START_LIMIT:?}: {states:?}", ids.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
