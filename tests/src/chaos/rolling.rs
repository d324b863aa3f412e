//! Rolling graceful restarts, as a Kubernetes rollout or a KEDA scale-down does them: under load,
//! every few seconds one worker gets SIGTERM and a replacement starts. A worker that stops cleanly
//! hands its unstarted jobs back without the broker counting a failed delivery, so with the default
//! `rabbitmq.delivery_limit` (3) nothing may be dead-lettered, lost or run twice, and every
//! stopped worker must exit by itself with status 0.

use std::time::{Duration, Instant};

use super::audit::{Row, audit, dead_letter_depth, wait_final};
use super::fleet::{ChaosFleet, Services};
use super::submit::{Submitter, chaos_job};

/// Sizes of a rolling-restart run.
#[derive(Debug, Clone, Copy)]
pub struct Rolling {
    /// Jobs submitted, spread over the restarts.
    pub jobs: usize,
    /// SIGTERMs (each with a replacement worker started at once).
    pub restarts: usize,
    /// Time between two SIGTERMs.
    pub every: Duration,
    /// Worker processes running at any time.
    pub workers: usize,
    /// How long every accepted job has to become final after the last restart.
    pub drain_limit: Duration,
}

/// What the run's records say about hand-backs, beside the audit's row.
#[derive(Debug, Clone, Default)]
pub struct Handbacks {
    /// Clean hand-backs recorded by the jobs' last starts, summed.
    pub clean: u64,
    /// Returns the broker counted (its `x-delivery-count` at the jobs' last starts), summed.
    pub counted: u64,
    /// The most returns the broker counted for any one job.
    pub most_counted: u32,
}

/// Runs the rolling restarts on a fresh fleet (with the default delivery limit) and audits it.
pub async fn run(services: &mut Services, spec: Rolling) -> (Row, Handbacks) {
    let name = format!("rolling restarts ({} SIGTERMs, every {:?})", spec.restarts, spec.every);
    let defaults = fleet_core::FleetConfig::default();
    let mut fleet = ChaosFleet::start_with(services, spec.workers, "rolling", |config| {
        config.rabbitmq.delivery_limit = defaults.rabbitmq.delivery_limit;
    })
    .await;
    let tag = crate::unique("rolling");
    // Submitted within the first quarter of the restarts, faster than the workers finish them:
    // the restarts meet a backlog, so stopping workers hold prefetched jobs to hand back.
    let rate = spec.jobs as f64 / (spec.every.as_secs_f64() * spec.restarts as f64 / 4.0).max(1.0);
    let submitter = Submitter::start(&fleet.base, spec.jobs, 4, rate, move |i| heavier(chaos_job(&tag, i)));
    let mut stopping = Vec::new();
    for k in 0..spec.restarts {
        tokio::time::sleep(spec.every).await;
        // A worker mid-batch when there is one: its batch drains, its waiting jobs go back.
        let i = fleet.busy_worker().await.unwrap_or(0);
        let worker = fleet.workers.remove(i);
        eprintln!("[{name}] restart {}/{}: SIGTERM to {}", k + 1, spec.restarts, worker.name);
        worker.signal("TERM");
        stopping.push(worker);
        fleet.add_worker();
    }
    let restarts_end = Instant::now();
    let submissions = submitter.finish().await;
    let ids: Vec<uuid::Uuid> = submissions.accepted.values().filter_map(|v| v.first().copied()).collect();
    let done = wait_final(&fleet.status, &ids, spec.drain_limit).await;
    let handbacks = count_handbacks(&fleet, &ids).await;
    let mut row =
        audit(&name, &submissions, &fleet.status, &fleet.s3_direct, done.saturating_duration_since(restarts_end), true)
            .await;
    let dead_letters = dead_letter_depth(&fleet.config).await;
    if dead_letters != 0 {
        row.problems.push(format!("{dead_letters} message(s) in the dead-letter queue"));
    }
    if handbacks.clean == 0 {
        row.problems.push("no stopping worker handed a job back: the restarts met no backlog".to_owned());
    }
    for mut worker in stopping {
        let drain = Duration::from_secs(fleet.config.worker.drain_timeout_secs + 20);
        if !tokio::task::block_in_place(|| worker.terminate(drain)) {
            row.problems.push(format!("worker {} did not exit with status 0 after SIGTERM", worker.name));
        }
    }
    for gone in fleet.exited_workers() {
        row.problems.push(format!("worker {gone} exited by itself"));
    }
    eprintln!("[{name}] {handbacks:?}; retried submissions: {:?}", submissions.retries);
    fleet.stop();
    if row.problems.is_empty() {
        fleet.clean_up();
    } else {
        eprintln!("[{name}] problems (logs in {}):\n  {}", fleet.log_dir().display(), row.problems.join("\n  "));
    }
    (row, handbacks)
}

/// A chaos job made larger (256², 4 steps), so the workers hold a backlog while they are restarted.
fn heavier(mut job: serde_json::Value) -> serde_json::Value {
    (job["width"], job["height"], job["steps"]) = (256.into(), 256.into(), 4.into());
    job
}

async fn count_handbacks(fleet: &ChaosFleet, ids: &[uuid::Uuid]) -> Handbacks {
    let mut counts = Handbacks::default();
    for id in ids {
        if let Ok(Some(record)) = fleet.status.get(*id).await {
            counts.clean += u64::from(record.handbacks);
            counts.counted += u64::from(record.deliveries);
            counts.most_counted = counts.most_counted.max(record.deliveries);
        }
    }
    counts
}
