//! The worker's Prometheus endpoint (`GET /metrics`) and liveness probe (`GET /healthz`) on
//! `worker.metrics_listen`, so a fleet can be watched (and scaled) per pod.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::heartbeat::Liveness;

/// Upper bounds (seconds) of the time histograms: from one tiny step to a long SDXL batch.
pub const SECONDS_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
/// Upper bounds of the batch-size histogram (images per batch).
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// A Prometheus histogram with fixed buckets (and `+Inf`).
#[derive(Clone, Debug)]
pub struct Histogram(prometheus_client::metrics::histogram::Histogram);

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram(prometheus_client::metrics::histogram::Histogram::new(bounds.iter().copied()))
    }

    pub fn observe(&self, value: f64) {
        // Negative durations (clock skew) count as 0.
        self.0.observe(value.max(0.0));
    }

    pub fn observe_duration(&self, d: std::time::Duration) {
        self.observe(d.as_secs_f64());
    }

    fn encode(&self, encoder: &mut DescriptorEncoder, name: &str, help: &str) -> std::fmt::Result {
        self.0.encode(encoder.encode_descriptor(name, help, None, MetricType::Histogram)?)
    }
}

/// Binds the metrics address; an empty address turns the endpoint off, and an address another
/// process holds gives way to a free port on the same interface (logged as a warning).
pub async fn bind(addr: &str) -> Result<Option<tokio::net::TcpListener>, crate::WorkerError> {
    if addr.trim().is_empty() {
        return Ok(None);
    }
    let taken = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => return Ok(Some(listener)),
        Err(source) if source.kind() == std::io::ErrorKind::AddrInUse => source,
        Err(source) => return Err(crate::WorkerError::MetricsBind { addr: addr.to_owned(), source }),
    };
    // Another worker on this machine has the port: take a free one on the same address, so a
    // second worker starts, and say where its metrics are.
    let fallback = match addr.parse::<std::net::SocketAddr>() {
        Ok(mut wanted) => {
            wanted.set_port(0);
            tokio::net::TcpListener::bind(wanted).await
        }
        Err(_) => Err(taken),
    };
    let listener = fallback.map_err(|source| crate::WorkerError::MetricsBind { addr: addr.to_owned(), source })?;
    if let Ok(local) = listener.local_addr() {
        tracing::warn!(
            wanted = addr,
            serving = %local,
            "worker.metrics_listen is in use (another worker on this machine?); serving metrics on a free port"
        );
    }
    Ok(Some(listener))
}

/// Serves until `stop` is cancelled.
pub async fn serve(listener: tokio::net::TcpListener, liveness: Arc<Liveness>, stop: CancellationToken) {
    let router = Router::new()
        .route("/metrics", get(|State(l): State<Arc<Liveness>>| async move { render(&l) }))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(liveness);
    if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(async move { stop.cancelled().await }).await {
        tracing::warn!(error = %e, "worker metrics endpoint stopped");
    }
}

/// The Prometheus text exposition (format 0.0.4) of the worker's counters, gauges and histograms.
pub fn render(liveness: &Arc<Liveness>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(WorkerMetrics(liveness.clone())));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &registry);
    out
}

/// Reads the worker's statistics at each scrape. Counter names go without `_total`: the encoder
/// appends it to the samples and to the `# HELP`/`# TYPE` lines.
#[derive(Debug)]
struct WorkerMetrics(Arc<Liveness>);

impl Collector for WorkerMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let liveness = &self.0;
        let stats = &liveness.stats;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let seconds = |c: &AtomicU64| load(c) as f64 / 1e6;
        let busy = liveness.current_batch.lock().ok().is_some_and(|b| b.is_some());

        let models = liveness.models.join(",");
        let identity = [("worker", liveness.id.as_str()), ("device", liveness.device.as_str()), ("models", &models)];
        let mut info = encoder.encode_descriptor("fleet_worker_info", "Worker identity.", None, MetricType::Gauge)?;
        ConstGauge::new(1_i64).encode(info.encode_family(&identity)?)?;

        let mut jobs = encoder.encode_descriptor(
            "fleet_worker_jobs",
            "Jobs this worker settled, by outcome.",
            None,
            MetricType::Counter,
        )?;
        for (outcome, count) in
            [("succeeded", &stats.jobs_done), ("failed", &stats.jobs_failed), ("requeued", &stats.jobs_requeued)]
        {
            ConstCounter::new(load(count)).encode(jobs.encode_family(&[("outcome", outcome)])?)?;
        }
        put(&mut encoder, "fleet_worker_images", "Images stored.", &ConstCounter::new(load(&stats.images_done)))?;
        put(&mut encoder, "fleet_worker_batches", "Batches run.", &ConstCounter::new(load(&stats.batches)))?;
        let batch_seconds = ConstCounter::new(seconds(&stats.batch_micros));
        put(&mut encoder, "fleet_worker_batch_seconds", "Time spent running batches.", &batch_seconds)?;
        put(&mut encoder, "fleet_worker_busy", "1 while a batch runs.", &ConstGauge::new(i64::from(busy)))?;
        let waiting = ConstGauge::new(load(&stats.waiting));
        put(&mut encoder, "fleet_worker_waiting_jobs", "Jobs received and waiting for a batch.", &waiting)?;
        let model_load = ConstGauge::new(seconds(&stats.model_load_micros));
        put(&mut encoder, "fleet_worker_model_load_seconds", "Time the worker took to load its models.", &model_load)?;

        let failures = stats.failures_by_code.lock().map(|f| f.clone()).unwrap_or_default();
        if !failures.is_empty() {
            let mut by_code = encoder.encode_descriptor(
                "fleet_worker_failures",
                "Jobs failed, by error code.",
                None,
                MetricType::Counter,
            )?;
            for (code, n) in failures {
                ConstCounter::new(n).encode(by_code.encode_family(&[("code", code)])?)?;
            }
        }

        stats.batch_images.encode(&mut encoder, "fleet_worker_batch_images", "Images per batch.")?;
        stats.forward_images.encode(&mut encoder, "fleet_worker_forward_images", "Images per forward pass.")?;
        stats.queue_wait.encode(
            &mut encoder,
            "fleet_worker_queue_wait_seconds",
            "From acceptance to the start of generation.",
        )?;
        stats.step_seconds.encode(&mut encoder, "fleet_worker_step_seconds", "One denoising step of a batch.")?;
        stats.encode_seconds.encode(
            &mut encoder,
            "fleet_worker_encode_seconds",
            "One image encoded (PNG, JPEG or WebP).",
        )?;
        stats.upload_seconds.encode(&mut encoder, "fleet_worker_upload_seconds", "One image upload to storage.")
    }
}

/// One metric without labels.
fn put(encoder: &mut DescriptorEncoder, name: &str, help: &str, metric: &impl EncodeMetric) -> std::fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::Stats;

    /// Two workers on one machine with the same `worker.metrics_listen`: the second serves on a
    /// free port of the same address.
    #[tokio::test]
    async fn a_taken_metrics_port_gives_way_to_a_free_one() {
        let first = bind("127.0.0.1:0").await.unwrap().unwrap();
        let taken = first.local_addr().unwrap();
        let second = bind(&taken.to_string()).await.unwrap().unwrap();
        let got = second.local_addr().unwrap();
        assert_eq!(got.ip(), taken.ip());
        assert_ne!(got.port(), taken.port());
        assert!(bind("").await.unwrap().is_none(), "empty: no endpoint");
        let err = bind("not-an-address").await.unwrap_err().to_string();
        assert!(err.contains("not-an-address") && err.contains("worker.metrics_listen"), "{err}");
    }

    #[test]
    fn exposition_has_every_counter_with_its_value() {
        let stats = Arc::new(Stats::default());
        stats.jobs_done.store(7, Ordering::Relaxed);
        stats.jobs_failed.store(2, Ordering::Relaxed);
        stats.images_done.store(9, Ordering::Relaxed);
        stats.batch_micros.store(1_500_000, Ordering::Relaxed);
        let liveness = Liveness {
            id: "w\"1".into(),
            host: "h".into(),
            models: vec!["tiny".into()],
            device: "cpu".into(),
            started_at: chrono::Utc::now(),
            stats,
            current_batch: std::sync::Mutex::new(None),
        };
        let text = render(&Arc::new(liveness));
        assert!(text.contains("fleet_worker_jobs_total{outcome=\"succeeded\"} 7"), "{text}");
        assert!(text.contains("fleet_worker_jobs_total{outcome=\"failed\"} 2"), "{text}");
        assert!(text.contains("fleet_worker_images_total 9"), "{text}");
        assert!(text.lines().any(|l| l == "fleet_worker_batch_seconds_total 1.5"), "{text}");
        assert!(text.contains("fleet_worker_busy 0"), "{text}");
        assert!(text.contains("fleet_worker_upload_seconds_count 0"), "{text}");
        assert!(text.contains("fleet_worker_encode_seconds_count 0"), "{text}");
        assert!(text.contains(r#"fleet_worker_info{worker="w\"1",device="cpu",models="tiny"} 1"#), "{text}");
    }

    fn liveness(id: &str, device: &str, models: &[&str], stats: Stats) -> Arc<Liveness> {
        Arc::new(Liveness {
            id: id.into(),
            host: "h".into(),
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            device: device.into(),
            started_at: chrono::Utc::now(),
            stats: Arc::new(stats),
            current_batch: std::sync::Mutex::new(None),
        })
    }

    #[test]
    fn label_values_are_escaped() {
        let text = render(&liveness("a\"b\\c\nd", "cpu\\0", &["x\"y", "z\nw"], Stats::default()));
        let line = r#"fleet_worker_info{worker="a\"b\\c\nd",device="cpu\\0",models="x\"y,z\nw"} 1"#;
        assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
    }

    #[test]
    fn every_metric_keeps_its_name_type_and_help() {
        let stats = Stats::default();
        stats.failures_by_code.lock().unwrap().insert("invalid_spec", 3);
        let text = render(&liveness("w", "cpu", &["tiny"], stats));
        let expected = [
            ("fleet_worker_info", "gauge", "Worker identity."),
            ("fleet_worker_jobs_total", "counter", "Jobs this worker settled, by outcome."),
            ("fleet_worker_images_total", "counter", "Images stored."),
            ("fleet_worker_batches_total", "counter", "Batches run."),
            ("fleet_worker_batch_seconds_total", "counter", "Time spent running batches."),
            ("fleet_worker_busy", "gauge", "1 while a batch runs."),
            ("fleet_worker_waiting_jobs", "gauge", "Jobs received and waiting for a batch."),
            ("fleet_worker_model_load_seconds", "gauge", "Time the worker took to load its models."),
            ("fleet_worker_failures_total", "counter", "Jobs failed, by error code."),
            ("fleet_worker_batch_images", "histogram", "Images per batch."),
            ("fleet_worker_forward_images", "histogram", "Images per forward pass."),
            ("fleet_worker_queue_wait_seconds", "histogram", "From acceptance to the start of generation."),
            ("fleet_worker_step_seconds", "histogram", "One denoising step of a batch."),
            ("fleet_worker_encode_seconds", "histogram", "One image encoded (PNG, JPEG or WebP)."),
            ("fleet_worker_upload_seconds", "histogram", "One image upload to storage."),
        ];
        let described: Vec<&str> = text.lines().filter(|l| l.starts_with('#')).collect();
        let wanted: Vec<String> = expected
            .iter()
            .flat_map(|(name, kind, help)| [format!("# HELP {name} {help}"), format!("# TYPE {name} {kind}")])
            .collect();
        assert_eq!(described, wanted, "{text}");
        assert!(text.lines().any(|l| l == r#"fleet_worker_failures_total{code="invalid_spec"} 3"#), "{text}");
        for (name, bounds) in
            [("fleet_worker_batch_images", BATCH_BUCKETS), ("fleet_worker_step_seconds", SECONDS_BUCKETS)]
        {
            let les: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix(name)?.strip_prefix("_bucket{le=\"")?.split('"').next())
                .collect();
            let mut wanted: Vec<String> = bounds.iter().map(f64::to_string).collect();
            wanted.push("+Inf".into());
            assert_eq!(les, wanted, "{text}");
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 7.0] {
            h.observe(v);
        }
        #[derive(Debug)]
        struct One(Histogram);
        impl Collector for One {
            fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
                self.0.encode(&mut encoder, "x", "help")
            }
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(One(h)));
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).unwrap();
        for line in [
            "# HELP x help",
            "# TYPE x histogram",
            "x_bucket{le=\"1\"} 2",
            "x_bucket{le=\"2\"} 3",
            "x_bucket{le=\"+Inf\"} 4",
            "x_sum 10.0",
            "x_count 4",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
    }
}
