//! The load run (see `fleet_e2e::load`): a steady submission rate against a dispatcher process
//! with worker processes running, on a private RabbitMQ node and Redis plus the test S3 server.
//!
//! `cargo bench --profile dev --workspace --bench load`, with `FLEET_LOAD_RATE` (jobs/s, 20),
//! `FLEET_LOAD_SECS` (180), `FLEET_LOAD_MAX_JOBS` (10000), `FLEET_LOAD_WORKERS` (2),
//! `FLEET_LOAD_CLIENTS` (8) and `FLEET_LOAD_SAMPLE_SECS` (10). Loopback only; bounded in time
//! and count.

use std::time::Duration;

use fleet_e2e::load::{LoadSpec, run};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let spec = LoadSpec {
        rate: env("FLEET_LOAD_RATE", 20.0),
        duration: Duration::from_secs(env("FLEET_LOAD_SECS", 180)),
        max_jobs: env("FLEET_LOAD_MAX_JOBS", 10_000),
        workers: env("FLEET_LOAD_WORKERS", 2),
        clients: env("FLEET_LOAD_CLIENTS", 8),
        sample_every: Duration::from_secs(env("FLEET_LOAD_SAMPLE_SECS", 10)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let report = runtime.block_on(run(spec));
    println!("{}", report.markdown());
}
