//! The load run (see `fleet_e2e::load`): a steady submission rate against a dispatcher process
//! with worker processes running, on a private RabbitMQ node and Redis plus the test S3 server.
//!
//! `cargo bench --profile dev --workspace --bench load`, with `FLEET_LOAD_RATE` (jobs/s, 20),
//! `FLEET_LOAD_SECS` (180), `FLEET_LOAD_MAX_JOBS` (10000), `FLEET_LOAD_WORKERS` (2),
//! `FLEET_LOAD_CLIENTS` (8) and `FLEET_LOAD_SAMPLE_SECS` (10). Loopback only; bounded in time
//! and count. The ignored e2e test `load_run` runs the same from the test build.

use fleet_e2e::load::{LoadSpec, run};

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let report = runtime.block_on(run(LoadSpec::from_env()));
    println!("{}", report.markdown());
}
