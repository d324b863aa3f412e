//! Fleet overhead: what the dispatcher → RabbitMQ → worker → S3 → Redis path adds to a job, against
//! raw baselines measured in the same run: a lapin publish-with-confirms → consume → ack round trip
//! and an S3 PUT of an image-sized object.
//!
//! The worker runs the no-op engine (`Worker::start_noop_engine`: fixed grey 64×64 images, no
//! model), so the numbers are orchestration only; `FLEET_BENCH_TINY=1` adds the same run with the
//! tiny model. `worker.batch_deadline_ms` is 0 (a lone job does not wait for company: that wait is
//! a configured trade, not overhead); `FLEET_BENCH_DEADLINE_MS` sets it.
//!
//! Needs the services of `scripts/services.sh`. Run:
//! `cargo bench --profile dev -p fleet-e2e --bench overhead` (`FLEET_BENCH_JOBS`, default 200).
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

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test` this is a quick check that it still runs.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let n = if smoke { 5 } else { env_num("FLEET_BENCH_JOBS", 200) as usize };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run(n, smoke));
}

fn job(i: usize) -> serde_json::Value {
    json!({"prompt": format!("overhead {i}"), "model": "tiny", "width": 64, "height": 64, "steps": 1, "seed": i})
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
    println!(
        "fleet overhead, {n} jobs (64x64, 1 step), batch deadline {} ms, {} cores",
        config.worker.batch_deadline_ms,
        num_cpus()
    );

    let compute = compute_time(if smoke { 2 } else { 20 });
    let amqp = raw_broker_round_trips(&config.rabbitmq.url, n).await;
    let s3 = raw_s3_puts(&config, n).await;
    let noop = measure_fleet(&config, EngineMode::Noop, n).await;
    let tiny = if std::env::var("FLEET_BENCH_TINY").is_ok_and(|v| v == "1") {
        Some(measure_fleet(&isolated_like(&config), EngineMode::Models, n).await)
    } else {
        None
    };

    println!();
    println!(
        "{:<52} {:>9.1}/s   p50 {:>8.2} ms",
        "tiny engine + PNG encode alone (per job)",
        1.0 / compute.p50.as_secs_f64(),
        ms(compute.p50)
    );
    row("raw AMQP publish+confirm → consume → ack", amqp.0, &amqp.1);
    row("raw S3 PUT (8 KiB object)", s3.0, &s3.1);
    let slower = amqp.0.min(s3.0);
    for (name, m) in std::iter::once(("no-op engine", &noop)).chain(tiny.as_ref().map(|t| ("tiny model", t))) {
        println!("--- fleet, {name}");
        row("one job at a time: accepted → succeeded", 1.0 / m.latency.mean.as_secs_f64(), &m.latency);
        row("  of which accepted → started (queue, dispatch)", 0.0, &m.to_start);
        row("  of which started → succeeded (run, upload)", 0.0, &m.to_finish);
        println!(
            "{:<52} {:>9.1}/s   ({} failed; {:.1}/s by the client's clock)",
            "all at once, one worker (first accepted → last done)", m.rate, m.failed, m.wall_rate
        );
        println!("fraction of the slower raw baseline ({slower:.1}/s): {:.2}", m.rate / slower);
    }
    if let Some(t) = &tiny {
        println!(
            "tiny model: added per job (latency − compute) p50 {:.2} ms, p99 {:.2} ms",
            ms(t.latency.p50.saturating_sub(compute.p50)),
            ms(t.latency.p99.saturating_sub(compute.p50))
        );
    }
}

/// A second isolated configuration with the same worker settings (fresh queues and keys).
fn isolated_like(config: &fleet_core::FleetConfig) -> fleet_core::FleetConfig {
    let mut c = isolated_config();
    c.worker = config.worker.clone();
    c
}

struct FleetRun {
    latency: Summary,
    to_start: Summary,
    to_finish: Summary,
    rate: f64,
    wall_rate: f64,
    failed: usize,
}

async fn measure_fleet(config: &fleet_core::FleetConfig, engine: EngineMode, n: usize) -> FleetRun {
    let mut fleet = Fleet::start(config.clone(), 0).await;
    fleet.add_worker_with(engine).await;
    // Warm-up: connections, first batch.
    let warm = fleet.submit(job(usize::MAX / 2)).await.id;
    fleet.wait_all(&[warm], Duration::from_secs(60)).await;

    // Latency: one job at a time, from the record's own timestamps.
    let mut latency = Vec::new();
    let mut to_start = Vec::new();
    let mut to_finish = Vec::new();
    for i in 0..n.min(100) {
        let status = wait_one(&fleet, fleet.submit(job(i)).await.id).await;
        latency.push(between(status.created_at, status.finished_at));
        to_start.push(between(status.created_at, status.started_at));
        to_finish.push(status.started_at.map(|s| between(s, status.finished_at)).unwrap_or_default());
    }

    // Throughput: all jobs at once (16 submitters), until the last one succeeded.
    let started = Instant::now();
    let ids: Vec<_> = futures::stream::iter(0..n)
        .map(|i| fleet.submit(job(n + i)))
        .buffer_unordered(16)
        .map(|s| s.id)
        .collect()
        .await;
    let statuses = fleet.wait_all(&ids, Duration::from_secs(1800)).await;
    let wall = started.elapsed();
    fleet.stop().await;
    let failed = statuses.iter().filter(|s| s.state != JobState::Succeeded).count();
    // The records' clocks, so the client's 200 ms polling does not count.
    let first = statuses.iter().map(|s| s.created_at).min();
    let last = statuses.iter().filter_map(|s| s.finished_at).max();
    let span = first.map(|f| between(f, last)).unwrap_or(wall).max(Duration::from_micros(1));
    FleetRun {
        latency: summarize(latency),
        to_start: summarize(to_start),
        to_finish: summarize(to_finish),
        rate: n as f64 / span.as_secs_f64(),
        wall_rate: n as f64 / wall.as_secs_f64(),
        failed,
    }
}

/// Polls one job every 5 ms until it is final (the latency comes from its record, not from here).
async fn wait_one(fleet: &Fleet, id: uuid::Uuid) -> JobStatus {
    let started = Instant::now();
    loop {
        let status = fleet.status(id).await;
        if status.state.is_terminal() {
            assert_eq!(status.state, JobState::Succeeded, "{status:?}");
            return status;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "job {id} not final after 60 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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
            let request = fleet_worker::runner::job_request(&spec);
            let t = Instant::now();
            let out = engine.generate(&request, &mut |_| {}).expect("generate");
            for image in &out.images {
                fleet_engine::encode_image(image, fleet_engine::ImageFormat::Png, 90, None).expect("encode");
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
    let meta = fleet_storage::ObjectMeta { seed: 0, model: "tiny".into(), job_id: uuid::Uuid::now_v7(), index: 0 };
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
