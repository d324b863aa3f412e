//! Accept throughput and latency of the dispatcher (HTTP → Redis record → confirmed publish),
//! against a plain lapin publish-with-confirms loop on the same broker, in one run.
//!
//! Needs the services of `scripts/services.sh`. Run: `cargo bench -p fleet-dispatcher --bench accept`
//! (`FLEET_BENCH_JOBS`, default 2000; `FLEET_BENCH_CONCURRENCY`, default 16).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_core::config::{ApiKeyConfig, FleetConfig, ModelConfig};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};

const KEY: &str = "bench-key-00001";

fn config() -> FleetConfig {
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let mut cfg = FleetConfig::default();
    cfg.rabbitmq.exchange = format!("bench-{tag}.jobs");
    cfg.rabbitmq.queue_prefix = format!("bench-{tag}");
    cfg.rabbitmq.dead_letter_exchange = format!("bench-{tag}.dlx");
    cfg.rabbitmq.dead_letter_queue = format!("bench-{tag}.dead");
    cfg.redis.key_prefix = format!("bench-{tag}");
    cfg.models = [("tiny".to_owned(), ModelConfig::default())].into_iter().collect();
    cfg.http.api_keys = vec![ApiKeyConfig { key: KEY.into(), tenant: "bench".into(), admin: true }];
    cfg.http.max_in_flight_per_tenant = u64::MAX;
    cfg.http.max_requests_per_sec_per_tenant = 0;
    cfg.rabbitmq.max_queue_depth = u64::MAX;
    cfg
}

fn report(name: &str, n: usize, wall: Duration, mut lat: Vec<Duration>) -> f64 {
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1000.0;
    let rate = n as f64 / wall.as_secs_f64();
    println!("{name:<44} {rate:>10.0} jobs/s   p50 {:>7.2} ms   p99 {:>7.2} ms", pct(0.5), pct(0.99));
    rate
}

async fn run_concurrent<F, Fut>(n: usize, concurrency: usize, op: F) -> (Duration, Vec<Duration>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return lat;
                }
                let t = Instant::now();
                op(i).await;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("bench task"));
    }
    (started.elapsed(), all)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("FLEET_BENCH_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let concurrency: usize = std::env::var("FLEET_BENCH_CONCURRENCY").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let cfg = config();
    println!(
        "{n} jobs, {concurrency} concurrent clients, {} CPUs",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );

    // Baseline: publish with confirms straight to a quorum queue, the same body size.
    let conn = Connection::connect(&cfg.rabbitmq.url, fleet_queue::connection_properties()).await.expect("RabbitMQ");
    let channel = conn.create_channel().await.expect("channel");
    channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let queue = format!("{}.baseline", cfg.rabbitmq.queue_prefix);
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    channel
        .queue_declare(&queue, QueueDeclareOptions { durable: true, ..Default::default() }, args)
        .await
        .expect("queue");
    let body =
        serde_json::to_vec(&serde_json::json!({"v": 1, "prompt": "bench", "model": "tiny", "width": 64, "height": 64}))
            .unwrap();
    let (ch, q, b) = (channel.clone(), queue.clone(), body.clone());
    let (wall, lat) = run_concurrent(n, concurrency, move |_| {
        let (ch, q, b) = (ch.clone(), q.clone(), b.clone());
        async move {
            let confirm = ch
                .basic_publish(
                    "",
                    &q,
                    BasicPublishOptions::default(),
                    &b,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish");
            assert!(confirm.await.expect("confirm").is_ack());
        }
    })
    .await;
    let baseline = report("raw lapin publish + confirm (baseline)", n, wall, lat);
    let _ = channel.queue_delete(&queue, QueueDeleteOptions::default()).await;

    // The dispatcher over HTTP.
    let app = fleet_dispatcher::App::connect(cfg.clone()).await.expect("dispatcher connects");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/jobs", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(fleet_dispatcher::serve(app.clone(), listener, stop.clone()));
    let http = reqwest::Client::new();
    let (wall, lat) = run_concurrent(n, concurrency, move |i| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let job = serde_json::json!({"prompt": format!("bench {i}"), "model": "tiny", "width": 64, "height": 64});
            let resp = http.post(&url).bearer_auth(KEY).json(&job).send().await.expect("submit");
            assert_eq!(resp.status().as_u16(), 202);
        }
    })
    .await;
    let fleet = report("dispatcher: HTTP + Redis record + confirm", n, wall, lat);
    println!("dispatcher throughput = {:.2} × baseline", fleet / baseline);

    let channel = app.broker.channel().await.expect("channel");
    let topology = app.broker.topology();
    let lanes = app.status.lanes().await.unwrap_or_default();
    let lanes = lanes.iter().filter_map(|key| fleet_queue::Lane::parse(key)).map(|lane| topology.lane_queue(&lane));
    for q in topology.queues.iter().cloned().chain(lanes) {
        let _ = channel.queue_delete(&q.name, QueueDeleteOptions::default()).await;
    }
    stop.cancel();
}
