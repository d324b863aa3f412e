//! Fair share between tenants: a tenant's jobs queued behind another's deep backlog start within
//! the first turns, through the tenants' lanes and the workers' fair order.

use std::time::Duration;

use fleet_e2e::fleet::Fleet;
use fleet_e2e::isolated_config;
use fleet_e2e::tenants::{add_tenants, key_of, submit_as};
use fleet_worker::noop::EngineMode;

/// The rank (0 = first) at which each of `ids` started among all `statuses`.
fn start_ranks(statuses: &[fleet_core::JobStatus], ids: &[uuid::Uuid]) -> Vec<usize> {
    let mut order: Vec<_> = statuses.iter().map(|s| (s.started_at.expect("a finished job started"), s.id)).collect();
    order.sort();
    ids.iter().map(|id| order.iter().position(|(_, o)| o == id).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_tenant_behind_a_deep_backlog_starts_within_the_first_turns() {
    let mut config = isolated_config();
    add_tenants(&mut config, &["big", "small"]);
    config.worker.max_batch_images = 2;
    let mut fleet = Fleet::start(config, 0).await;
    // The whole backlog waits before any worker runs: first come, first served would run every
    // one of big's jobs before small's.
    let big = submit_as(&fleet, "big", 120).await;
    let small = submit_as(&fleet, "small", 4).await;

    let queues: serde_json::Value = fleet
        .http
        .get(format!("{}/v1/queues", fleet.base))
        .bearer_auth(fleet_e2e::E2E_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let depth = |lane: &str| {
        let name = format!("{}.tiny.bulk@{lane}", fleet.config.rabbitmq.queue_prefix);
        queues["queues"].as_array().unwrap().iter().find(|q| q["name"] == name.as_str()).map(|q| q["messages"].clone())
    };
    assert_eq!(depth("big"), Some(120.into()), "each tenant's jobs wait in its own lane: {queues}");
    assert_eq!(depth("small"), Some(4.into()), "{queues}");

    fleet.add_worker_with(EngineMode::Noop).await;
    let ids = |v: &[fleet_core::JobStatus]| v.iter().map(|s| s.id).collect::<Vec<_>>();
    let mut all = fleet.wait_all_as(&key_of("big"), &ids(&big), Duration::from_secs(120)).await;
    let small_done = fleet.wait_all_as(&key_of("small"), &ids(&small), Duration::from_secs(60)).await;
    assert!(all.iter().chain(&small_done).all(|s| s.state == fleet_core::JobState::Succeeded));
    all.extend(small_done);

    // Equal weights: small's 4 jobs take every other turn from the start (a batch holds two
    // jobs, so a few places of slack), not places 121 to 124.
    let ranks = start_ranks(&all, &ids(&small));
    assert!(ranks.iter().all(|&r| r < 24), "small's jobs started at places {ranks:?} of 124");
    fleet.stop().await;
}
