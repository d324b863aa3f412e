//! Fleet overhead: what the dispatcher → RabbitMQ → worker → S3 → Redis path adds to a job, with
//! the tiny model, against raw baselines measured in the same run: a lapin publish-with-confirms →
//! consume → ack round trip and an S3 PUT of an image-sized object.
//!
//! Needs the services of `scripts/services.sh`. Run:
//! `cargo bench --profile dev -p fleet-e2e --bench overhead` (`FLEET_BENCH_JOBS`, default 200).
//! A program that prints numbers, not a test: nothing here asserts a speed.

use std::time::{Duration, Instant};

use fleet_e2e::fleet::Fleet;
use fleet_e2e::isolated_config;
use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::json;

fn main() {
    let n: usize = std::env::var("FLEET_BENCH_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run(n));
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
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    let mean = samples.iter().sum::<Duration>() / samples.len().max(1) as u32;
    Summary { p50: at(0.5), p99: at(0.99), mean }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn row(name: &str, rate: f64, s: &Summary) {
    println!("{name:<48} {rate:>9.1}/s   p50 {:>8.2} ms   p99 {:>8.2} ms", ms(s.p50), ms(s.p99));
}

async fn run(n: usize) {
    let config = isolated_config();
    println!("fleet overhead, {n} jobs (tiny model, 64x64, 1 step), {} cores", num_cpus());

    // What the worker computes per job (generate + PNG encode), measured on its own.
    let compute = compute_time(20);
    println!(
        "{:<48} {:>9.1}/s   p50 {:>8.2} ms",
        "engine + encode alone (per job)",
        1.0 / compute.p50.as_secs_f64(),
        ms(compute.p50)
    );

    let amqp = raw_broker_round_trips(&config.rabbitmq.url, n).await;
    let s3 = raw_s3_puts(&config, n).await;

    let fleet = Fleet::start(config.clone(), 1).await;
    // Warm-up: connections, first batch.
    let warm = fleet.submit(job(usize::MAX / 2)).await.id;
    fleet.wait_all(&[warm], Duration::from_secs(60)).await;

    // Latency: one job at a time, from the record's own timestamps (accepted → succeeded).
    let mut latency = Vec::new();
    for i in 0..n.min(100) {
        let id = fleet.submit(job(i)).await.id;
        let status = fleet.wait_all(&[id], Duration::from_secs(60)).await.remove(0);
        let finished = status.finished_at.expect("a succeeded job has finished_at");
        latency.push((finished - status.created_at).to_std().unwrap_or_default());
    }
    let latency = summarize(latency);

    // Throughput: all jobs at once, until the last one succeeded.
    let started = Instant::now();
    let ids: Vec<_> = futures::stream::iter(0..n)
        .map(|i| fleet.submit(job(n + i)))
        .buffer_unordered(16)
        .map(|s| s.id)
        .collect()
        .await;
    let statuses = fleet.wait_all(&ids, Duration::from_secs(1800)).await;
    let wall = started.elapsed();
    let failed = statuses.iter().filter(|s| s.state != fleet_core::JobState::Succeeded).count();
    let rate = n as f64 / wall.as_secs_f64();

    println!();
    row("raw AMQP publish+confirm → consume → ack", amqp.0, &amqp.1);
    row("raw S3 PUT (image-sized object)", s3.0, &s3.1);
    row("fleet, one job at a time (accepted → succeeded)", 1.0 / latency.mean.as_secs_f64(), &latency);
    println!("{:<48} {rate:>9.1}/s   ({failed} failed)", "fleet, all at once, one worker");
    let added_p50 = latency.p50.saturating_sub(compute.p50);
    let added_p99 = latency.p99.saturating_sub(compute.p50);
    println!();
    println!("added per job (latency − compute): p50 {:.2} ms, p99 {:.2} ms", ms(added_p50), ms(added_p99));
    println!("throughput as a fraction of the worker's compute-bound rate: {:.2}", rate * compute.p50.as_secs_f64());
    fleet.stop().await;
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
    let spec = fleet_core::parse_job(&job(0).to_string()).expect("bench job parses");
    let request = fleet_worker::runner::job_request(&spec);
    let samples = (0..runs)
        .map(|_| {
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
    let conn = Connection::connect(url, ConnectionProperties::default()).await.expect("RabbitMQ");
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
