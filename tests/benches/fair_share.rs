//! Fair share between tenants: how long a small tenant waits behind a big tenant's backlog, with
//! tenant lanes (`rabbitmq.tenant_lanes = true`, the default) and without (one shared queue,
//! first come first served), through the real dispatcher, RabbitMQ, Redis and S3 with no-op
//! workers (fixed 64×64 images, no model), so the numbers are the scheduling's alone.
//!
//! Scenarios, each run with lanes on and off:
//! - **queued**: big submits `FLEET_BENCH_BIG` (2,000) jobs, small `FLEET_BENCH_SMALL` (20), then
//!   the workers start: the backlog is all there when the first turn is given.
//! - **arriving**: the workers run; big submits its jobs, and small submits its jobs as soon as
//!   big's are accepted, into a backlog the workers are working through. Small's lane is new
//!   then, so its first job also waits for the workers to find the lane (they look every 0.5 s).
//! - **weights** (lanes only): big has weight 3, both tenants queue the same number of jobs
//!   before the workers start; reported is big's share of the jobs started while both had work.
//!
//! Per tenant: completion time (first submission to last job finished) and wait (accepted →
//! started) p50 / p99 / max. `FLEET_BENCH_WORKERS` (1) no-op workers, `worker.max_batch_images`
//! `FLEET_BENCH_BATCH` (8). Needs the services of `scripts/services.sh`. Run:
//! `cargo bench --profile dev -p fleet-e2e --bench fair_share`. `cargo test` runs it on a few
//! jobs, to check that it still works. A program that prints numbers; nothing here asserts a speed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use fleet_core::{FleetConfig, JobState, JobStatus};
use fleet_e2e::fleet::Fleet;
use fleet_e2e::isolated_config;
use fleet_e2e::tenants::{add_tenants, key_of, submit_as};
use fleet_worker::noop::EngineMode;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Clone, Copy)]
struct Sizes {
    big: usize,
    small: usize,
    workers: usize,
    batch: u32,
}

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test` this is a quick check that it still runs.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let sizes = if smoke {
        Sizes { big: 40, small: 4, workers: 1, batch: 4 }
    } else {
        Sizes {
            big: env_num("FLEET_BENCH_BIG", 2000) as usize,
            small: env_num("FLEET_BENCH_SMALL", 20) as usize,
            workers: env_num("FLEET_BENCH_WORKERS", 1).max(1) as usize,
            batch: env_num("FLEET_BENCH_BATCH", 8).max(1) as u32,
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run(sizes));
}

async fn run(sizes: Sizes) {
    println!(
        "fair share: big {} jobs, small {} jobs, {} no-op worker(s), batches of up to {} images",
        sizes.big, sizes.small, sizes.workers, sizes.batch
    );
    println!(
        "{:<10} {:<6} {:<6} {:>12} {:>10} {:>10} {:>10}",
        "scenario", "lanes", "tenant", "completion", "wait p50", "wait p99", "wait max"
    );
    for arriving in [false, true] {
        for lanes in [true, false] {
            let (big, small) = scenario(sizes, lanes, arriving, 1.0).await;
            let name = if arriving { "arriving" } else { "queued" };
            report(name, lanes, "big", &big);
            report(name, lanes, "small", &small);
        }
    }
    let half = Sizes { small: sizes.big / 2, big: sizes.big / 2, ..sizes };
    let (big, small) = scenario(half, true, false, 3.0).await;
    let both_busy_until = last_start(&big).min(last_start(&small));
    let started_before =
        |v: &[JobStatus]| v.iter().filter(|s| s.started_at.is_some_and(|t| t < both_busy_until)).count();
    let (b, s) = (started_before(&big), started_before(&small));
    println!(
        "weights 3:1, {} jobs each queued: while both had work, big started {b} and small {s} jobs (big's share {:.1} %, weight's 75 %)",
        half.big,
        100.0 * b as f64 / (b + s).max(1) as f64
    );
}

/// One run on a fleet of its own; the final statuses of big's and small's jobs.
async fn scenario(sizes: Sizes, lanes: bool, arriving: bool, big_weight: f64) -> (Vec<JobStatus>, Vec<JobStatus>) {
    let mut fleet = Fleet::start(config(sizes, lanes, big_weight), 0).await;
    if arriving {
        for _ in 0..sizes.workers {
            fleet.add_worker_with(EngineMode::Noop).await;
        }
    }
    let big = submit_as(&fleet, "big", sizes.big).await;
    let small = submit_as(&fleet, "small", sizes.small).await;
    if !arriving {
        for _ in 0..sizes.workers {
            fleet.add_worker_with(EngineMode::Noop).await;
        }
    }
    let ids = |v: &[JobStatus]| v.iter().map(|s| s.id).collect::<Vec<_>>();
    let limit = Duration::from_secs(600);
    let big = fleet.wait_all_as(&key_of("big"), &ids(&big), limit).await;
    let small = fleet.wait_all_as(&key_of("small"), &ids(&small), limit).await;
    let failed = big.iter().chain(&small).filter(|s| s.state != JobState::Succeeded).count();
    assert_eq!(failed, 0, "every bench job succeeds");
    fleet.stop().await;
    (big, small)
}

fn config(sizes: Sizes, lanes: bool, big_weight: f64) -> FleetConfig {
    let mut config = isolated_config();
    add_tenants(&mut config, &["big", "small"]);
    config.rabbitmq.tenant_lanes = lanes;
    config.worker.max_batch_images = sizes.batch;
    config.worker.batch_deadline_ms = 0;
    config.http.max_in_flight_per_tenant = 1_000_000;
    let big = config.tenants.0.entry("big".into()).or_default();
    big.share.weight = big_weight;
    config
}

fn last_start(statuses: &[JobStatus]) -> DateTime<Utc> {
    statuses.iter().filter_map(|s| s.started_at).max().unwrap_or_else(Utc::now)
}

fn report(scenario: &str, lanes: bool, tenant: &str, statuses: &[JobStatus]) {
    let first = statuses.iter().map(|s| s.created_at).min().unwrap_or_else(Utc::now);
    let last = statuses.iter().filter_map(|s| s.finished_at).max().unwrap_or(first);
    let mut waits: Vec<Duration> = statuses
        .iter()
        .map(|s| s.started_at.map_or(Duration::ZERO, |t| (t - s.created_at).to_std().unwrap_or_default()))
        .collect();
    waits.sort_unstable();
    let at = |p: f64| waits.get(((waits.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default();
    let secs = |d: Duration| format!("{:.3} s", d.as_secs_f64());
    println!(
        "{scenario:<10} {:<6} {tenant:<6} {:>12} {:>10} {:>10} {:>10}",
        if lanes { "on" } else { "off" },
        secs((last - first).to_std().unwrap_or_default()),
        secs(at(0.5)),
        secs(at(0.99)),
        secs(at(1.0)),
    );
}
