//! `fleet bulk` at scale: `BULK_SCALE_SAMPLES` samples (default 1,000,000) through the real
//! dispatcher, RabbitMQ, Redis and S3, workers on the no-op engine (fixed grey 64×64 images),
//! writing real WebDataset shards to a local directory.
//!
//!     scripts/services.sh && BULK_SCALE_SAMPLES=100000 cargo bench --profile dev -p fleet-e2e --bench bulk_scale
//!
//! The dispatcher, each worker and each `fleet bulk` invocation run as processes of their own
//! (this program started again in a role), so the peak memory of each is its own `VmHWM`; this
//! process only starts them and watches. The run is interrupted (killed) once half of its shards
//! are written, resumed to its end, then resumed again once finished: the three timings are
//! printed apart, with samples/s, each process's peak memory, Redis `used_memory` (before, the
//! most sampled once a second during each phase, after) and the keys Redis holds at the end.
//! Afterwards the shard writer alone writes one shard of the run's samples again (tar, JSONL and
//! Parquet manifests, stats) and is timed. It checks that the dataset holds every sample once
//! and that the fleet made exactly one job per sample (no regeneration on resume), which the run
//! deleted once its sample was staged.
//!
//! `BULK_SCALE_WORKERS` (default 2), `BULK_SCALE_MAX_IN_FLIGHT` (default 2,000),
//! `BULK_SCALE_SHARD` (samples per shard, default 1,000), `BULK_SCALE_KEEP_JOBS=1` runs with
//! `--keep-jobs` (the fleet keeps every job, as before jobs were deleted), `BULK_SCALE_KEEP=1`
//! keeps the Redis keys, images and output. `cargo test` runs it on 200 samples to check that it still works.
//! A program that prints numbers: it asserts correctness, never a speed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleet_bulk::api::ApiClient;
use fleet_bulk::record::{SampleRecord, ShardStats};
use fleet_bulk::{InputFormat, Layout, RunConfig, Session};
use fleet_core::FleetConfig;
use fleet_e2e::{E2E_KEY, isolated_config, unique};
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

const ROLE: &str = "BULK_SCALE_ROLE";
const CONFIG: &str = "BULK_SCALE_CONFIG";
const ADDR: &str = "BULK_SCALE_ADDR";
const RUN: &str = "BULK_SCALE_RUN";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `VmHWM` (peak resident memory) of a process, in MiB.
fn peak_mib(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let Ok(role) = std::env::var(ROLE) else { return runtime.block_on(watch()) };
    let config: FleetConfig = serde_json::from_slice(&std::fs::read(std::env::var(CONFIG)?)?)?;
    runtime.block_on(async {
        match role.as_str() {
            "dispatcher" => {
                let app = fleet_dispatcher::App::connect(config).await?;
                let listener = tokio::net::TcpListener::bind(std::env::var(ADDR)?).await?;
                fleet_dispatcher::serve(app, listener, CancellationToken::new()).await?;
            }
            "worker" => {
                let options = fleet_worker::WorkerOptions { models: vec!["tiny".into()], id: None };
                let worker = fleet_worker::Worker::start_noop_engine(config, options).await?;
                worker.run(CancellationToken::new()).await?;
            }
            "run" | "resume" => drive(&role, config).await?,
            other => anyhow::bail!("unknown {ROLE} `{other}`"),
        }
        anyhow::Ok(())
    })
}

/// One `fleet bulk run` or `resume`, as the CLI makes it; prints its own numbers as one JSON line.
async fn drive(role: &str, config: FleetConfig) -> anyhow::Result<()> {
    let run: RunConfig = serde_json::from_slice(&std::fs::read(std::env::var(RUN)?)?)?;
    let base = format!("http://{}", std::env::var(ADDR)?);
    let session = Session { config, api: Some(ApiClient::new(&base, E2E_KEY)?), on_progress: None };
    let started = Instant::now();
    let done = match role {
        "run" => fleet_bulk::start(run, &session).await?,
        _ => fleet_bulk::resume(&run.name, None, &session).await?,
    };
    let line = serde_json::json!({
        "seconds": started.elapsed().as_secs_f64(),
        "succeeded": done.totals.succeeded,
        "failed": done.totals.failed,
        "peak_mib": peak_mib("self"),
    });
    println!("{line}");
    Ok(())
}

/// The processes of one benchmark, killed when it ends whatever happens.
struct Processes(Vec<(String, Child)>);

impl Processes {
    fn spawn(&mut self, name: &str, role: &str, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let mut command = Command::new(std::env::current_exe()?);
        command.env(ROLE, role).stdout(Stdio::piped()).stderr(Stdio::inherit());
        for (k, v) in env {
            command.env(k, v);
        }
        self.0.push((name.to_owned(), command.spawn()?));
        Ok(())
    }

    /// (name, peak MiB) of every process still running.
    fn peaks(&self) -> Vec<(String, f64)> {
        self.0.iter().map(|(name, child)| (name.clone(), peak_mib(&child.id().to_string()))).collect()
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Redis `used_memory` in bytes.
async fn used_memory(redis: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO").arg("memory").query_async(redis).await.unwrap_or_default();
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Every key matching `pattern` (SCAN, so Redis is never blocked).
async fn scan_keys(redis: &mut redis::aio::MultiplexedConnection, pattern: &str) -> anyhow::Result<Vec<String>> {
    let (mut cursor, mut keys) = (0u64, Vec::new());
    loop {
        let (next, batch): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).query_async(redis).await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Counts `_stats.json` files (written shards) in `out`.
fn shards_written(out: &Path) -> usize {
    std::fs::read_dir(out)
        .map(|d| d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().ends_with("_stats.json")).count())
        .unwrap_or(0)
}

/// One phase (a `fleet bulk` process) run to its end or, with `stop_at` shards written, killed
/// there; Redis `used_memory` sampled once a second meanwhile. Returns the process's JSON line
/// (none when killed), its wall seconds and the most Redis memory seen.
async fn phase(
    role: &str,
    env: &[(&str, &str)],
    out: &Path,
    stop_at: Option<usize>,
    redis: &mut redis::aio::MultiplexedConnection,
) -> anyhow::Result<(Option<serde_json::Value>, f64, u64)> {
    let started = Instant::now();
    let mut own = Processes(Vec::new());
    own.spawn(role, role, env)?;
    let child = &mut own.0[0].1;
    let mut redis_peak = 0;
    let mut last_print = Instant::now();
    loop {
        redis_peak = redis_peak.max(used_memory(redis).await);
        if let Some(status) = child.try_wait()? {
            anyhow::ensure!(status.success(), "`{role}` exited with {status}");
            let mut stdout = String::new();
            std::io::Read::read_to_string(&mut child.stdout.take().expect("piped"), &mut stdout)?;
            let line = stdout.lines().last().map(serde_json::from_str).transpose()?;
            return Ok((line, started.elapsed().as_secs_f64(), redis_peak));
        }
        if let Some(stop_at) = stop_at
            && shards_written(out) >= stop_at
        {
            let peak = peak_mib(&child.id().to_string());
            child.kill()?;
            child.wait()?;
            println!("  {role}: killed with {stop_at} shards written; its peak memory {peak:.1} MiB");
            return Ok((None, started.elapsed().as_secs_f64(), redis_peak));
        }
        if last_print.elapsed() >= Duration::from_secs(30) {
            last_print = Instant::now();
            let s = started.elapsed().as_secs_f64();
            println!("  {role}: {s:.0}s, {} shards, Redis {:.1} MiB", shards_written(out), mib(redis_peak));
        }
        tokio::time::sleep(Duration::from_millis(if stop_at.is_some() { 100 } else { 1000 })).await;
    }
}

async fn watch() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; under `cargo test` this is a quick check that it still runs.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let n = if smoke { 200 } else { env_usize("BULK_SCALE_SAMPLES", 1_000_000) };
    let shard_size = if smoke { 50 } else { env_usize("BULK_SCALE_SHARD", 1000) };
    let max_in_flight = if smoke { 100 } else { env_usize("BULK_SCALE_MAX_IN_FLIGHT", 2000) };
    let workers = env_usize("BULK_SCALE_WORKERS", 2);
    let keep = std::env::var("BULK_SCALE_KEEP").is_ok_and(|v| v == "1");
    let keep_jobs = std::env::var("BULK_SCALE_KEEP_JOBS").is_ok_and(|v| v == "1");

    let mut config = isolated_config();
    config.http.max_in_flight_per_tenant = u64::MAX / 2;
    config.rabbitmq.max_queue_depth = u64::MAX / 2;
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("prompts.jsonl");
    {
        use std::io::Write as _;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&input)?);
        for i in 0..n {
            writeln!(file, r#"{{"prompt": "a scale sample number {i}", "metadata": {{"row": {i}}}}}"#)?;
        }
    }
    let out = dir.path().join("out");
    let run = RunConfig {
        name: unique("scale"),
        input: input.clone(),
        input_format: InputFormat::Jsonl,
        out: out.display().to_string(),
        layout: Layout::WebDataset,
        shard_size: shard_size as u32,
        seeds_per_prompt: 1,
        seed: 1,
        defaults: serde_json::json!({"model": "tiny", "width": 64, "height": 64, "steps": 1})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        max_in_flight,
        skip_invalid: false,
        local: false,
        samples: None,
        dedup_hamming: None,
        keep_jobs,
    };
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, serde_json::to_vec(&config)?)?;
    let run_path = dir.path().join("run.json");
    std::fs::write(&run_path, serde_json::to_vec(&run)?)?;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string();
    let (config_s, run_s) = (config_path.display().to_string(), run_path.display().to_string());
    let env = [(CONFIG, config_s.as_str()), (ADDR, addr.as_str()), (RUN, run_s.as_str())];

    let mut redis = redis::Client::open(config.redis.url.as_str())?.get_multiplexed_async_connection().await?;
    let redis_before = used_memory(&mut redis).await;
    let mut procs = Processes(Vec::new());
    procs.spawn("dispatcher", "dispatcher", &env)?;
    let ready = Instant::now();
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        anyhow::ensure!(ready.elapsed() < Duration::from_secs(60), "the dispatcher did not listen in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..workers {
        procs.spawn(&format!("worker {i}"), "worker", &env)?;
    }
    println!(
        "bulk_scale: {n} samples, shards of {shard_size}, --max-in-flight {max_in_flight}, {workers} no-op worker(s), \
         {} core(s){}; Redis used_memory before: {:.1} MiB",
        std::thread::available_parallelism().map_or(0, usize::from),
        if keep_jobs { ", --keep-jobs" } else { "" },
        mib(redis_before)
    );

    let shards = n.div_ceil(shard_size);
    let half = shards.div_ceil(2);
    let (_, first_s, first_redis) = phase("run", &env, &out, Some(half), &mut redis).await?;
    let made_first = shards_written(&out) * shard_size;
    println!(
        "run (killed at half): {first_s:.1}s, {made_first} samples in written shards = {:.0} samples/s; \
         Redis used_memory at most {:.1} MiB",
        made_first as f64 / first_s,
        mib(first_redis)
    );
    let (line, resume_s, resume_redis) = phase("resume", &env, &out, None, &mut redis).await?;
    let line = line.unwrap_or_default();
    println!(
        "resume of the half-finished run: {resume_s:.1}s to the end ({:.0} samples/s over the rest); \
         the process: {line}; Redis used_memory at most {:.1} MiB",
        (n - made_first) as f64 / resume_s,
        mib(resume_redis)
    );
    println!("whole run: {:.1}s = {:.0} samples/s", first_s + resume_s, n as f64 / (first_s + resume_s));
    let (again, again_s, _) = phase("resume", &env, &out, None, &mut redis).await?;
    println!("resume of the finished run: {again_s:.2}s; the process: {}", again.unwrap_or_default());
    for (name, peak) in procs.peaks() {
        println!("peak memory of {name}: {peak:.1} MiB");
    }
    let redis_after = used_memory(&mut redis).await;
    let mut keys = BTreeMap::<String, u64>::new();
    for key in scan_keys(&mut redis, &format!("{}:*", config.redis.key_prefix)).await? {
        let kind = key.split(':').nth(1).unwrap_or("?").to_owned();
        *keys.entry(kind).or_default() += 1;
    }
    println!(
        "Redis used_memory after: {:.1} MiB ({:+.1} MiB over before); keys under the run's prefix by kind: {keys:?}",
        mib(redis_after),
        mib(redis_after) - mib(redis_before)
    );

    // Every sample once in the dataset, and one image per sample in the fleet's store.
    let mut succeeded = 0;
    for shard in 0..shards as u64 {
        let stats: ShardStats =
            serde_json::from_slice(&std::fs::read(out.join(fleet_bulk::shard::stats_name(shard)))?)?;
        succeeded += stats.succeeded;
    }
    anyhow::ensure!(succeeded == n as u64, "{succeeded} samples in the dataset, not {n}");
    let status = fleet_status::StatusStore::connect(&config.redis).await?;
    let made = status.counters().await?.remove("tiny").unwrap_or_default();
    anyhow::ensure!(
        (made.accepted, made.succeeded) == (n as u64, n as u64),
        "the fleet made {} jobs ({} succeeded) for {n} samples",
        made.accepted,
        made.succeeded
    );
    let store = fleet_storage::ImageStore::from_config(&config.s3).await?;
    let images = store.list(&format!("{}/", config.s3.prefix)).await?;
    let expected_images = if keep_jobs { n } else { 0 };
    anyhow::ensure!(images.len() == expected_images, "{} images left in the fleet's store", images.len());
    println!(
        "checked: {n} samples in {shards} shards, {} jobs made (one per sample), {} images left in the fleet's store",
        made.accepted,
        images.len()
    );

    shard_write(&out, shard_size).await?;

    drop(procs);
    if !keep {
        futures::stream::iter(images)
            .for_each_concurrent(32, |key| {
                let store = &store;
                async move {
                    let _ = store.delete(&key).await;
                }
            })
            .await;
        let doomed = scan_keys(&mut redis, &format!("{}:*", config.redis.key_prefix)).await?;
        for chunk in doomed.chunks(1000) {
            let () = redis::cmd("UNLINK").arg(chunk).query_async(&mut redis).await?;
        }
    } else {
        println!("kept: output {}, Redis prefix {}", dir.keep().display(), config.redis.key_prefix);
    }
    Ok(())
}

/// Writes shard 0's samples again as a new shard (tar, manifests, stats) and times it.
async fn shard_write(out: &Path, shard_size: usize) -> anyhow::Result<()> {
    let manifest = std::fs::read_to_string(out.join(fleet_bulk::shard::manifest_name(0)))?;
    let records: Vec<SampleRecord> = manifest.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let images: BTreeMap<String, Vec<u8>> =
        fleet_bulk::shard::read_tar(&out.join(fleet_bulk::shard::tar_name(0)))?.into_iter().collect();
    let scratch: PathBuf = out.join("_bench_shard");
    let output = fleet_bulk::output::Output::Dir(scratch.clone());
    std::fs::create_dir_all(&scratch)?;
    let started = Instant::now();
    let mut writer = fleet_bulk::shard::ShardWriter::new(Layout::WebDataset, 0, &output)?;
    for record in &records {
        let image = images.get(&record.image_name()).cloned().unwrap_or_default();
        writer.add(&output, record, image).await?;
    }
    writer.finish(&output, &records).await?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "shard write: {} samples (of {shard_size} a shard) as tar + JSONL + Parquet manifests + stats in {:.1} ms \
         ({:.0} µs a sample)",
        records.len(),
        seconds * 1e3,
        seconds * 1e6 / records.len().max(1) as f64
    );
    std::fs::remove_dir_all(&scratch)?;
    Ok(())
}
