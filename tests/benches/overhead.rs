//! Fleet overhead: what the dispatcher → RabbitMQ → worker → S3 → Redis path adds to a job, against
//! raw baselines measured in the same run: a lapin publish-with-confirms → consume → ack round trip
//! and an S3 PUT of an image-sized object.
//!
//! The worker runs the no-op engine (`Worker::start_noop_engine`: fixed grey 64×64 images, no
//! model), so the numbers are orchestration only; `FLEET_BENCH_TINY=1` adds the same run with the
//! tiny model. `worker.batch_deadline_ms` is 0 (a lone job does not wait for company: that wait is
//! a configured trade, not overhead); `FLEET_BENCH_DEADLINE_MS` sets it.
//!
//! The throughput runs in rounds (`FLEET_BENCH_ROUNDS`, default 3): each round times both raw
//! baselines and then the fleet back to back, its fractions compare those three, and the summary
//! gives the median fraction. Each round then runs a second fleet that stores its images in a
//! local directory (`s3.local_dir`) instead of through the S3 server on this machine: what the
//! orchestration reaches without an S3 server sharing the CPU (reported beside, not instead).
//! Each round also reports the CPU time per job of the fleet, of the submitting clients (on a
//! runtime of their own) and of each server (from `/proc`), Redis commands per job and the
//! machine's context switches per job.
//!
//! Needs the services of `scripts/services.sh`. Run:
//! `cargo bench --profile dev -p fleet-e2e --bench overhead` (`FLEET_BENCH_JOBS` per round, default 200).
//! `FLEET_BENCH_SIZE` (side, default 64) and `FLEET_BENCH_IMAGES` (`num_images`, default 1) shape
//! every job; `FLEET_BENCH_COMPUTE_RUNS` (default 20) sets how often the tiny engine is timed alone;
//! `FLEET_BENCH_THREADS=1` also breaks this process's CPU and context switches down by thread name;
//! `FLEET_BENCH_FLEET_ONLY=1` times only the fleet with S3 (no baselines), for a profiler.
//! `cargo test` runs it too, on 5 jobs, to check that it still works. A program that prints
//! numbers, not a test: nothing here asserts a speed.

use std::time::{Duration, Instant};

use fleet_core::{JobState, JobStatus};
use fleet_e2e::fleet::Fleet;
use fleet_e2e::isolated_config;
use fleet_worker::noop::EngineMode;
use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use serde_json::json;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[allow(unsafe_code)]
fn main() {
    // SAFETY: nothing has started a thread yet (the tiny model runs in this process).
    unsafe { fleet_engine::cpu_threads::settle_cpu_threads() };
    // `cargo bench` passes `--bench`; under `cargo test` this is a quick check that it still runs.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let n = if smoke { 5 } else { env_num("FLEET_BENCH_JOBS", 200) as usize };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run(n, smoke));
}

/// Side and `num_images` of every bench job (`FLEET_BENCH_SIZE`, `FLEET_BENCH_IMAGES`).
static SHAPE: std::sync::LazyLock<(u64, u64)> =
    std::sync::LazyLock::new(|| (env_num("FLEET_BENCH_SIZE", 64), env_num("FLEET_BENCH_IMAGES", 1)));

fn job(i: usize) -> serde_json::Value {
    let (side, images) = *SHAPE;
    json!({"prompt": format!("overhead {i}"), "model": "tiny", "width": side, "height": side, "num_images": images,
           "steps": 1, "seed": i})
}

struct Summary {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn summarize(mut samples: Vec<Duration>) -> Summary {
    samples.sort_unstable();
    let at = |p: f64| samples.get(((samples.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default();
    let mean = samples.iter().sum::<Duration>() / samples.len().max(1) as u32;
    Summary { p50: at(0.5), p99: at(0.99), mean }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn row(name: &str, rate: f64, s: &Summary) {
    println!("{name:<52} {rate:>9.1}/s   p50 {:>8.2} ms   p99 {:>8.2} ms", ms(s.p50), ms(s.p99));
}

fn between(a: chrono::DateTime<chrono::Utc>, b: Option<chrono::DateTime<chrono::Utc>>) -> Duration {
    b.map(|b| (b - a).to_std().unwrap_or_default()).unwrap_or_default()
}

async fn run(n: usize, smoke: bool) {
    let mut config = isolated_config();
    config.worker.batch_deadline_ms = env_num("FLEET_BENCH_DEADLINE_MS", 0);
    let rounds = if smoke { 1 } else { env_num("FLEET_BENCH_ROUNDS", 3).max(1) as usize };
    let (side, images) = *SHAPE;
    println!(
        "fleet overhead, {n} jobs ({side}x{side}, {images} image(s), 1 step) per round, {rounds} round(s), batch deadline {} ms, {} cores",
        config.worker.batch_deadline_ms,
        num_cpus()
    );

    let compute = compute_time(if smoke { 2 } else { env_num("FLEET_BENCH_COMPUTE_RUNS", 20).max(1) as usize });
    println!(
        "{:<52} {:>9.1}/s   p50 {:>8.2} ms",
        "tiny engine + PNG encode alone (per job)",
        1.0 / compute.p50.as_secs_f64(),
        ms(compute.p50)
    );

    let fleet = start_fleet(&config, EngineMode::Noop).await;
    println!("--- fleet, no-op engine");
    print_latency(&measure_latency(&fleet, n.min(100)).await);
    // The same fleet storing its images in a local directory (`s3.local_dir`: written, flushed
    // and renamed) instead of through the S3 server on this machine: what the orchestration
    // reaches when the S3 server does not share the CPU, as it would not in a deployment. The
    // S3 fleet above stays the measurement of the whole path.
    if std::env::var("FLEET_BENCH_FLEET_ONLY").is_ok_and(|v| v == "1") {
        // For a profiler attached to this process: only the S3 fleet's all-at-once phase, so
        // that the baselines' own client work does not mix into its samples.
        for round in 0..rounds {
            println!("round {} (fleet only)", round + 1);
            print_all_at_once(&measure_throughput(&fleet, n, (round + 1) * n).await);
        }
        fleet.stop().await;
        remove_topology(&config).await;
        return;
    }
    let images = tempfile::tempdir().expect("a directory for the images");
    let mut local_config = isolated_like(&config);
    local_config.s3.local_dir = Some(images.path().to_path_buf());
    let local_fleet = start_fleet(&local_config, EngineMode::Noop).await;
    // Each round times both raw baselines and then the fleet, back to back, and its fractions
    // compare those three: this shared machine's speed drifts by a third within minutes, so a
    // baseline taken once at the start would flatter or wrong the fleet runs after it.
    println!(
        "--- rounds: raw AMQP round trips, raw S3 PUTs, the fleet with all jobs at once, the same with images in a local directory"
    );
    let mut fractions = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let amqp = raw_broker_round_trips(&config.rabbitmq.url, n).await;
        let s3 = raw_s3_puts(&config, n).await;
        let all = measure_throughput(&fleet, n, (round + 1) * n).await;
        let local = measure_throughput(&local_fleet, n, (round + 1) * n).await;
        print_round(round + 1, &amqp, &s3, &all, &local);
        fractions.push(Fractions {
            amqp: all.rate / amqp.0,
            s3: all.rate / s3.0,
            slower: all.rate / amqp.0.min(s3.0),
            local_amqp: local.rate / amqp.0,
        });
    }
    fleet.stop().await;
    local_fleet.stop().await;
    remove_topology(&config).await;
    remove_topology(&local_config).await;
    let median = |pick: fn(&Fractions) -> f64| {
        let mut v: Vec<f64> = fractions.iter().map(pick).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "median of {rounds} round(s): fraction of the raw AMQP round trip {:.2}, of the raw S3 PUT {:.2}, of the slower baseline {:.2}",
        median(|f| f.amqp),
        median(|f| f.s3),
        median(|f| f.slower)
    );
    println!(
        "median of {rounds} round(s), images in a local directory (no S3 server sharing the CPU): fraction of the raw AMQP round trip {:.2}",
        median(|f| f.local_amqp)
    );

    if std::env::var("FLEET_BENCH_TINY").is_ok_and(|v| v == "1") {
        let tiny_config = isolated_like(&config);
        let fleet = start_fleet(&tiny_config, EngineMode::Models).await;
        println!("--- fleet, tiny model");
        let latency = measure_latency(&fleet, n.min(100)).await;
        print_latency(&latency);
        let all = measure_throughput(&fleet, n, n).await;
        fleet.stop().await;
        remove_topology(&tiny_config).await;
        print_all_at_once(&all);
        println!(
            "tiny model: added per job (latency − compute) p50 {:.2} ms, p99 {:.2} ms",
            ms(latency.total.p50.saturating_sub(compute.p50)),
            ms(latency.total.p99.saturating_sub(compute.p50))
        );
    }
}

fn print_latency(l: &Latency) {
    row("one job at a time: accepted → succeeded", 1.0 / l.total.mean.as_secs_f64(), &l.total);
    row("  of which accepted → started (queue, dispatch)", 0.0, &l.to_start);
    row("  of which started → succeeded (run, upload)", 0.0, &l.to_finish);
}

/// One round's fleet rates over its baselines.
struct Fractions {
    amqp: f64,
    s3: f64,
    slower: f64,
    /// The fleet storing into a local directory, over the raw AMQP round trip.
    local_amqp: f64,
}

fn print_round(round: usize, amqp: &(f64, Summary), s3: &(f64, Summary), all: &Throughput, local: &Throughput) {
    println!("round {round}");
    row("  raw AMQP publish+confirm → consume → ack", amqp.0, &amqp.1);
    row("  raw S3 PUT (8 KiB object)", s3.0, &s3.1);
    print_all_at_once(all);
    println!(
        "  fraction of the raw AMQP round trip {:.2}, of the raw S3 PUT {:.2}",
        all.rate / amqp.0,
        all.rate / s3.0
    );
    println!("  the same, images in a local directory instead of S3:");
    print_all_at_once(local);
    println!("  fraction of the raw AMQP round trip {:.2}", local.rate / amqp.0);
}

fn print_all_at_once(all: &Throughput) {
    println!(
        "{:<52} {:>9.1}/s   ({} failed; {:.1}/s by the client's clock)",
        "  all at once, one worker (first accepted → last done)", all.rate, all.failed, all.wall_rate
    );
    if let Some(cpu) = &all.cpu_per_job {
        let parts: Vec<String> = cpu.iter().map(|(name, ms)| format!("{name} {ms:.2}")).collect();
        println!("  CPU ms per job, all at once: {}", parts.join(", "));
    }
    if let Some(commands) = all.redis_per_job {
        println!("  Redis commands per job, all at once: {commands:.2}");
    }
    if let Some(switches) = all.switches_per_job {
        println!("  context switches per job (whole machine), all at once: {switches:.1}");
    }
    if let Some(threads) = &all.threads {
        threads.print(all.jobs);
    }
}

/// A second isolated configuration with the same worker settings (fresh queues and keys).
fn isolated_like(config: &fleet_core::FleetConfig) -> fleet_core::FleetConfig {
    let mut c = isolated_config();
    c.worker = config.worker.clone();
    c
}

/// Latency of jobs submitted one at a time, from their records' own timestamps.
struct Latency {
    total: Summary,
    to_start: Summary,
    to_finish: Summary,
}

/// Jobs submitted all at once to one worker.
struct Throughput {
    jobs: usize,
    rate: f64,
    wall_rate: f64,
    failed: usize,
    /// CPU milliseconds per job of this process and of each server, over the all-at-once phase.
    cpu_per_job: Option<Vec<(&'static str, f64)>>,
    /// Redis commands per job over the same phase (the submitting clients' reads included).
    redis_per_job: Option<f64>,
    /// Context switches of the whole machine per job over the same phase (`/proc/stat`).
    switches_per_job: Option<f64>,
    /// This process's threads by name over the same phase (`FLEET_BENCH_THREADS=1`).
    threads: Option<ThreadTable>,
}

/// A dispatcher and one worker, warmed up (connections, a first batch).
async fn start_fleet(config: &fleet_core::FleetConfig, engine: EngineMode) -> Fleet {
    let mut fleet = Fleet::start(config.clone(), 0).await;
    fleet.add_worker_with(engine).await;
    let warm = fleet.submit(job(usize::MAX / 2)).await.id;
    fleet.wait_all(&[warm], Duration::from_secs(60)).await;
    fleet
}

async fn measure_latency(fleet: &Fleet, n: usize) -> Latency {
    let mut total = Vec::new();
    let mut to_start = Vec::new();
    let mut to_finish = Vec::new();
    for i in 0..n {
        let status = wait_one(fleet, fleet.submit(job(i)).await.id).await;
        total.push(between(status.created_at, status.finished_at));
        to_start.push(between(status.created_at, status.started_at));
        to_finish.push(status.started_at.map(|s| between(s, status.finished_at)).unwrap_or_default());
    }
    Latency { total: summarize(total), to_start: summarize(to_start), to_finish: summarize(to_finish) }
}

/// `n` jobs at once (16 submitters, seeds from `first`), until the last one is final.
async fn measure_throughput(fleet: &Fleet, n: usize, first: usize) -> Throughput {
    let cpu_before = CpuTimes::now();
    let threads_before = THREAD_TABLE.then(ThreadTable::now);
    let switches_before = context_switches();
    let commands_before = redis_commands(&fleet.config.redis.url).await;
    let started = Instant::now();
    let (url, key) = (format!("{}/v1/jobs", fleet.base), fleet_e2e::E2E_KEY);
    let ids = CLIENTS.spawn(submit_all(url, key, n, first)).await.expect("the submitting clients");
    // Watch only the last job while the worker is busy, then read every record once: a client
    // sweeping all 2,000 records every 200 ms would take CPU from the fleet it is timing.
    if let Some(last) = ids.last() {
        wait_quietly(fleet, *last, Duration::from_secs(1800)).await;
    }
    let cpu = CpuTimes::now().and_then(|now| now.since(&cpu_before));
    let threads = threads_before.map(|before| ThreadTable::now().since(&before));
    let switches = per_job(context_switches(), switches_before, n);
    let redis_per_job = per_job(redis_commands(&fleet.config.redis.url).await, commands_before, n);
    let statuses = fleet.wait_all(&ids, Duration::from_secs(1800)).await;
    let wall = started.elapsed();
    let failed = statuses.iter().filter(|s| s.state != JobState::Succeeded).count();
    // The records' clocks, so the client's polling does not count.
    let first = statuses.iter().map(|s| s.created_at).min();
    let last = statuses.iter().filter_map(|s| s.finished_at).max();
    let span = first.map(|f| between(f, last)).unwrap_or(wall).max(Duration::from_micros(1));
    Throughput {
        jobs: n,
        rate: n as f64 / span.as_secs_f64(),
        wall_rate: n as f64 / wall.as_secs_f64(),
        failed,
        cpu_per_job: cpu.map(|c| c.per_job(n)),
        redis_per_job,
        switches_per_job: switches,
        threads,
    }
}

/// How much a counter grew per job, when it could be read both times.
fn per_job(after: Option<u64>, before: Option<u64>, n: usize) -> Option<f64> {
    after.zip(before).map(|(after, before)| after.saturating_sub(before) as f64 / n.max(1) as f64)
}

/// The submitting clients' own runtime, on threads named [`CLIENT_THREAD`], so that their CPU time
/// can be told apart from the fleet's (a client elsewhere would not share the fleet's threads).
static CLIENTS: std::sync::LazyLock<tokio::runtime::Runtime> = std::sync::LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(CLIENT_THREAD)
        .enable_all()
        .build()
        .expect("the clients' runtime")
});
const CLIENT_THREAD: &str = "bench-client";

/// Submits `n` jobs through 16 concurrent requests, on a connection pool of its own.
async fn submit_all(url: String, key: &'static str, n: usize, first: usize) -> Vec<uuid::Uuid> {
    let http = reqwest::Client::new();
    futures::stream::iter(0..n)
        .map(|i| {
            let request = http.post(&url).bearer_auth(key).json(&job(first + i));
            async move {
                let resp = request.send().await.expect("submit");
                assert!(resp.status().is_success(), "submit: {}", resp.status());
                resp.json::<JobStatus>().await.expect("submit reply").id
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// Polls one job every `every` until it is final; `None` if it is not within `limit`.
async fn poll_until_final(fleet: &Fleet, id: uuid::Uuid, every: Duration, limit: Duration) -> Option<JobStatus> {
    let started = Instant::now();
    loop {
        let status = fleet.status(id).await;
        if status.state.is_terminal() {
            return Some(status);
        }
        if started.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls one job every 20 ms until it is final, whatever its outcome (the sweep after it reports).
async fn wait_quietly(fleet: &Fleet, id: uuid::Uuid, limit: Duration) {
    poll_until_final(fleet, id, Duration::from_millis(20), limit).await;
}

/// Polls one job every 5 ms until it succeeded (the latency comes from its record, not from here).
async fn wait_one(fleet: &Fleet, id: uuid::Uuid) -> JobStatus {
    let status = poll_until_final(fleet, id, Duration::from_millis(5), Duration::from_secs(60)).await;
    let status = status.unwrap_or_else(|| panic!("job {id} not final after 60 s"));
    assert_eq!(status.state, JobState::Succeeded, "{status:?}");
    status
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Median time of the tiny engine plus PNG encoding for one bench job.
fn compute_time(runs: usize) -> Summary {
    let cpu = fleet_engine::candle_core::Device::Cpu;
    let engine =
        fleet_engine::Pipeline::load(&fleet_engine::ModelSource::Tiny, &cpu, fleet_engine::candle_core::DType::F32)
            .expect("tiny model");
    let samples = (0..runs)
        .map(|i| {
            // A prompt of its own each time, as in the fleet runs (no prompt-cache hits).
            let spec = fleet_core::parse_job(&job(i).to_string()).expect("bench job parses");
            let request = fleet_render::job_request(&spec);
            let t = Instant::now();
            let out = engine.generate(&request, &mut |_| {}).expect("generate");
            for image in &out.images {
                fleet_engine::encode_image(image, fleet_engine::ImageFormat::Png, &Default::default(), None)
                    .expect("encode");
            }
            t.elapsed()
        })
        .collect();
    summarize(samples)
}

/// Publish with confirms, consume and ack one message at a time on a private queue.
async fn raw_broker_round_trips(url: &str, n: usize) -> (f64, Summary) {
    let conn = Connection::connect(url, fleet_queue::connection_properties()).await.expect("RabbitMQ");
    let channel = conn.create_channel().await.expect("channel");
    channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let queue = fleet_e2e::unique("bench-raw");
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), lapin::types::AMQPValue::LongString("quorum".into()));
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    channel.queue_declare(&queue, durable, args).await.expect("declare");
    let mut consumer = channel
        .basic_consume(&queue, "bench", BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    let body = job(0).to_string().into_bytes();
    let started = Instant::now();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let props = BasicProperties::default().with_delivery_mode(2);
        let confirm =
            channel.basic_publish("", &queue, BasicPublishOptions::default(), &body, props).await.expect("publish");
        confirm.await.expect("confirm");
        let delivery = consumer.next().await.expect("delivery").expect("delivery");
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
        samples.push(t.elapsed());
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = channel.queue_delete(&queue, QueueDeleteOptions::default()).await;
    (rate, summarize(samples))
}

/// PUTs of an object the size of a tiny-model PNG, one at a time.
async fn raw_s3_puts(config: &fleet_core::FleetConfig, n: usize) -> (f64, Summary) {
    let store = fleet_storage::ImageStore::from_config(&config.s3).await.expect("S3");
    let body = vec![7u8; 8 * 1024];
    let meta = fleet_storage::ObjectMeta {
        seed: 0,
        model: "tiny".into(),
        job_id: uuid::Uuid::now_v7(),
        index: 0,
        idempotency_key: None,
        priority: None,
    };
    let started = Instant::now();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("{}/bench/{i}.png", config.s3.prefix);
        let t = Instant::now();
        store.put(&key, body.clone(), "image/png", &meta).await.expect("put");
        samples.push(t.elapsed());
    }
    (n as f64 / started.elapsed().as_secs_f64(), summarize(samples))
}

/// Processes whose CPU time the benchmark reports: this one (dispatcher, worker and the
/// submitting clients) and the three servers, found by their command names in `/proc`.
const SERVERS: [(&str, &str); 3] = [("rabbitmq", "beam.smp"), ("redis", "redis-server"), ("seaweedfs", "weed")];

/// Cumulative CPU time (user + system) per process, from `/proc` (Linux only).
struct CpuTimes(Vec<(&'static str, Duration)>);

impl CpuTimes {
    fn now() -> Option<CpuTimes> {
        let clients = client_threads_cpu();
        let fleet = proc_cpu("self")?.saturating_sub(clients);
        let mut times = vec![("fleet (dispatcher + worker)", fleet), ("bench clients", clients)];
        for (name, comm) in SERVERS {
            let total = server_pids(comm).iter().filter_map(|pid| proc_cpu(pid)).sum();
            times.push((name, total));
        }
        Some(CpuTimes(times))
    }

    fn since(&self, before: &Option<CpuTimes>) -> Option<CpuTimes> {
        let before = before.as_ref()?;
        let diff = self.0.iter().zip(&before.0).map(|((name, now), (_, then))| (*name, now.saturating_sub(*then)));
        Some(CpuTimes(diff.collect()))
    }

    fn per_job(&self, n: usize) -> Vec<(&'static str, f64)> {
        self.0.iter().map(|(name, t)| (*name, ms(*t) / n.max(1) as f64)).collect()
    }
}

/// Whether each all-at-once phase also breaks this process down by thread name.
static THREAD_TABLE: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var("FLEET_BENCH_THREADS").is_ok_and(|v| v == "1"));

/// This process's threads grouped by name: threads seen, CPU time, voluntary and involuntary
/// context switches (`/proc/self/task/*/{comm,stat,status}`). Where a job's thread hand-offs go.
struct ThreadTable(std::collections::BTreeMap<String, (usize, Duration, u64, u64)>);

impl ThreadTable {
    fn now() -> ThreadTable {
        let mut table = std::collections::BTreeMap::new();
        let tids = std::fs::read_dir("/proc/self/task").into_iter().flatten().filter_map(|t| t.ok());
        for tid in tids.filter_map(|t| t.file_name().into_string().ok()) {
            let task = format!("self/task/{tid}");
            let Ok(comm) = std::fs::read_to_string(format!("/proc/{task}/comm")) else { continue };
            let status = std::fs::read_to_string(format!("/proc/{task}/status")).unwrap_or_default();
            let count = |field: &str| {
                status.lines().find_map(|l| l.strip_prefix(field)?.trim().parse::<u64>().ok()).unwrap_or(0)
            };
            let entry = table.entry(comm.trim().to_owned()).or_insert((0, Duration::ZERO, 0, 0));
            entry.0 += 1;
            entry.1 += proc_cpu(&task).unwrap_or_default();
            entry.2 += count("voluntary_ctxt_switches:");
            entry.3 += count("nonvoluntary_ctxt_switches:");
        }
        ThreadTable(table)
    }

    /// Growth since `before`; threads that ended meanwhile are not counted.
    fn since(&self, before: &ThreadTable) -> ThreadTable {
        let grown = self.0.iter().map(|(name, &(threads, cpu, vol, invol))| {
            let (_, cpu0, vol0, invol0) = before.0.get(name).copied().unwrap_or_default();
            (name.clone(), (threads, cpu.saturating_sub(cpu0), vol.saturating_sub(vol0), invol.saturating_sub(invol0)))
        });
        ThreadTable(grown.collect())
    }

    fn print(&self, n: usize) {
        let n = n.max(1) as f64;
        for (name, (threads, cpu, vol, invol)) in &self.0 {
            println!(
                "    thread {name:<22} ×{threads:<3} CPU {:.3} ms, switches {:.2} voluntary + {:.2} involuntary per job",
                ms(*cpu) / n,
                *vol as f64 / n,
                *invol as f64 / n
            );
        }
    }
}

fn server_pids(comm: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm))
        .collect()
}

/// CPU time of this process's threads named [`CLIENT_THREAD`].
fn client_threads_cpu() -> Duration {
    ThreadTable::now().0.get(CLIENT_THREAD).map_or(Duration::ZERO, |&(_, cpu, _, _)| cpu)
}

/// utime + stime of a process. `/proc/PID/stat` counts in USER_HZ ticks, 100 per second on Linux.
fn proc_cpu(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3, the state.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Commands Redis has processed since it started (`INFO stats`), counting every client.
async fn redis_commands(url: &str) -> Option<u64> {
    let client = redis::Client::open(url).ok()?;
    let mut con = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO").arg("stats").query_async(&mut con).await.ok()?;
    info.lines().find_map(|l| l.strip_prefix("total_commands_processed:")?.trim().parse().ok())
}

/// Context switches of the whole machine since boot (`ctxt` in `/proc/stat`).
fn context_switches() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|l| l.strip_prefix("ctxt ")?.trim().parse().ok())
}

/// Deletes the queues and exchanges of a finished run: quorum queues outlive their connections,
/// and a few hundred left over slow RabbitMQ 3.10 down (they skewed earlier runs of this bench).
async fn remove_topology(config: &fleet_core::FleetConfig) {
    let topology = fleet_queue::topology::Topology::new(&config.rabbitmq, config.models.keys().map(String::as_str));
    let Ok(conn) = Connection::connect(&config.rabbitmq.url, fleet_queue::connection_properties()).await else {
        return;
    };
    let Ok(channel) = conn.create_channel().await else { return };
    let queues = topology.queues.iter().map(|q| q.name.as_str());
    for queue in queues.chain([topology.dead_letter_queue.as_str(), topology.dead_letter_watch_queue.as_str()]) {
        let _ = channel.queue_delete(queue, QueueDeleteOptions::default()).await;
    }
    for exchange in [&topology.exchange, &topology.dead_letter_exchange] {
        let _ = channel.exchange_delete(exchange, lapin::options::ExchangeDeleteOptions::default()).await;
    }
    let _ = conn.close(200, "bench done").await;
}
