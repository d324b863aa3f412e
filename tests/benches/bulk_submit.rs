//! `fleet bulk`, fleet side only: how fast a run reads and checks rows, and how fast it submits
//! them to a real dispatcher (Redis + RabbitMQ, no workers, no images), with peak memory.
//!
//!     scripts/services.sh && cargo bench -p fleet-e2e --bench bulk_submit
//!
//! `BULK_BENCH_ROWS` rows (default 1,000,000) are scanned (parse, merge, validate, key and seed
//! derivation, SHA-256 of the file); the first `BULK_BENCH_SUBMIT` of them (default 20,000) are
//! submitted as job arrays of 500 exactly as a run submits them. Prints numbers; asserts nothing.

use std::time::Instant;

use fleet_bulk::api::{ApiClient, Submitted};
use fleet_bulk::input::read_rows;
use fleet_bulk::runner::sample_settings;
use fleet_bulk::sample::SampleFactory;
use fleet_bulk::{InputFormat, Layout, RunConfig};
use fleet_e2e::{E2E_KEY, isolated_config, unique};
use tokio_util::sync::CancellationToken;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn main() -> anyhow::Result<()> {
    let rows = env_usize("BULK_BENCH_ROWS", 1_000_000);
    let submit = env_usize("BULK_BENCH_SUBMIT", 20_000).min(rows);
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("prompts.jsonl");
    {
        use std::io::Write as _;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&input)?);
        for i in 0..rows {
            writeln!(
                file,
                r#"{{"prompt": "a benchmark prompt number {i}, oil painting", "metadata": {{"row": {i}}}}}"#
            )?;
        }
    }
    let mut config = isolated_config();
    config.http.max_in_flight_per_tenant = u64::MAX / 2;
    config.rabbitmq.max_queue_depth = u64::MAX / 2;
    let run = RunConfig {
        name: unique("bench"),
        input: input.clone(),
        input_format: InputFormat::Jsonl,
        out: dir.path().join("out").display().to_string(),
        layout: Layout::WebDataset,
        shard_size: 1000,
        seeds_per_prompt: 1,
        seed: 1,
        defaults: serde_json::json!({"model": "tiny", "width": 64, "height": 64, "steps": 1})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        max_in_flight: submit,
        skip_invalid: false,
        local: false,
        samples: None,
        dedup_hamming: None,
        keep_jobs: false,
    };
    let memory_before = peak_mib();
    let started = Instant::now();
    let scanned = fleet_bulk::check_input(&run, &config)?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "scan: {} rows, {} samples, {} shards in {seconds:.2}s = {:.0} rows/s; peak RSS {:.1} MiB (before {memory_before:.1} MiB)",
        scanned.summary.rows,
        scanned.summary.samples,
        scanned.summary.shards,
        scanned.summary.rows as f64 / seconds,
        peak_mib()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let app = fleet_dispatcher::App::connect(config.clone()).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let stop = CancellationToken::new();
        let server = tokio::spawn({
            let stop = stop.clone();
            async move { fleet_dispatcher::serve(app, listener, stop).await }
        });
        let api = ApiClient::new(&base, E2E_KEY)?;
        let registry = fleet_bulk::registry::Registry::connect(&config.redis).await?;
        let mut factory = SampleFactory::new(sample_settings(&run, None), config.clone());
        let started = Instant::now();
        let (mut accepted, mut batch) = (0usize, Vec::with_capacity(500));
        let mut samples = read_rows(&input, InputFormat::Jsonl)?.flat_map(|row| factory.samples(row)).take(submit);
        loop {
            batch.clear();
            batch.extend(samples.by_ref().take(500).filter_map(|s| s.job.ok()));
            if batch.is_empty() {
                break;
            }
            let answers = api.submit(&batch).await?;
            let ids: Vec<_> = answers
                .iter()
                .filter_map(|a| match a {
                    Submitted::Accepted(s) => Some(s.id),
                    Submitted::Refused { .. } => None,
                })
                .collect();
            accepted += ids.len();
            registry.add_jobs(&run.name, &ids).await?;
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "submit: {accepted} of {submit} jobs accepted in {seconds:.2}s = {:.0} jobs/s (arrays of 500, one dispatcher, Redis + RabbitMQ confirms); peak RSS {:.1} MiB",
            accepted as f64 / seconds,
            peak_mib()
        );
        if accepted > 0 {
            println!("extrapolated: 1,000,000 jobs in {:.0} min at this rate", 1e6 / (accepted as f64 / seconds) / 60.0);
        }
        stop.cancel();
        let _ = server.await;
        // The queue holds `submit` jobs no worker will take: remove it.
        let conn = lapin::Connection::connect(&config.rabbitmq.url, fleet_queue::connection_properties()).await?;
        let channel = conn.create_channel().await?;
        let queue = format!("{}.tiny.bulk", config.rabbitmq.queue_prefix);
        channel.queue_delete(&queue, lapin::options::QueueDeleteOptions::default()).await?;
        anyhow::Ok(())
    })
}
