//! The worker's Prometheus endpoint (`GET /metrics`) and liveness probe (`GET /healthz`) on
//! `worker.metrics_listen`, so a fleet can be watched (and scaled) per pod.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::heartbeat::Liveness;

/// Upper bounds (seconds) of the time histograms: from one tiny step to a long SDXL batch.
pub const SECONDS_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
/// Upper bounds of the batch-size histogram (images per batch).
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// A Prometheus histogram with fixed buckets, lock-free to observe.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative; summed when rendered), plus one for `+Inf`.
    counts: Vec<AtomicU64>,
    /// Sum of observations in millionths.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let bucket = self.bounds.iter().position(|&b| value <= b).unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        // Saturating float → int conversion; negative durations (clock skew) count as 0.
        self.sum_micros.fetch_add((value.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: std::time::Duration) {
        self.observe(d.as_secs_f64());
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = self.bounds.get(i).map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// Binds the metrics address; an empty address turns the endpoint off.
pub async fn bind(addr: &str) -> Result<Option<tokio::net::TcpListener>, crate::WorkerError> {
    if addr.trim().is_empty() {
        return Ok(None);
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| crate::WorkerError::MetricsBind { addr: addr.to_owned(), source })
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

/// The Prometheus text exposition of the worker's counters and gauges.
pub fn render(liveness: &Liveness) -> String {
    let stats = &liveness.stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let busy = liveness.current_batch.lock().ok().is_some_and(|b| b.is_some());
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let info = format!(
        "{{worker=\"{}\",device=\"{}\",models=\"{}\"}}",
        escape(&liveness.id),
        escape(&liveness.device),
        escape(&liveness.models.join(","))
    );
    metric("fleet_worker_info", "gauge", "Worker identity.", &[(&info, 1)]);
    metric(
        "fleet_worker_jobs_total",
        "counter",
        "Jobs this worker settled, by outcome.",
        &[
            ("{outcome=\"succeeded\"}", load(&stats.jobs_done)),
            ("{outcome=\"failed\"}", load(&stats.jobs_failed)),
            ("{outcome=\"requeued\"}", load(&stats.jobs_requeued)),
        ],
    );
    metric("fleet_worker_images_total", "counter", "Images stored.", &[("", load(&stats.images_done))]);
    metric("fleet_worker_batches_total", "counter", "Batches run.", &[("", load(&stats.batches))]);
    let _ = writeln!(
        out,
        "# HELP fleet_worker_batch_seconds_total Time spent running batches.\n\
         # TYPE fleet_worker_batch_seconds_total counter\n\
         fleet_worker_batch_seconds_total {:.3}",
        load(&stats.batch_micros) as f64 / 1e6
    );
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    };
    gauge("fleet_worker_busy", "1 while a batch runs.", u64::from(busy));
    gauge("fleet_worker_waiting_jobs", "Jobs received and waiting for a batch.", load(&stats.waiting));
    let _ = writeln!(
        out,
        "# HELP fleet_worker_model_load_seconds Time the worker took to load its models.\n\
         # TYPE fleet_worker_model_load_seconds gauge\n\
         fleet_worker_model_load_seconds {:.3}",
        load(&stats.model_load_micros) as f64 / 1e6
    );
    let failures = stats.failures_by_code.lock().map(|f| f.clone()).unwrap_or_default();
    if !failures.is_empty() {
        let _ = writeln!(
            out,
            "# HELP fleet_worker_failures_total Jobs failed, by error code.\n# TYPE fleet_worker_failures_total counter"
        );
        for (code, n) in failures {
            let _ = writeln!(out, "fleet_worker_failures_total{{code=\"{code}\"}} {n}");
        }
    }
    stats.batch_images.render(&mut out, "fleet_worker_batch_images", "Images per batch.");
    stats.queue_wait.render(&mut out, "fleet_worker_queue_wait_seconds", "From acceptance to the start of generation.");
    stats.step_seconds.render(&mut out, "fleet_worker_step_seconds", "One denoising step of a batch.");
    stats.encode_seconds.render(&mut out, "fleet_worker_encode_seconds", "One image encoded (PNG, JPEG or WebP).");
    stats.upload_seconds.render(&mut out, "fleet_worker_upload_seconds", "One image upload to storage.");
    out
}

/// Escapes a Prometheus label value.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::Stats;

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
        let text = render(&liveness);
        assert!(text.contains("fleet_worker_jobs_total{outcome=\"succeeded\"} 7"), "{text}");
        assert!(text.contains("fleet_worker_jobs_total{outcome=\"failed\"} 2"), "{text}");
        assert!(text.contains("fleet_worker_images_total 9"), "{text}");
        assert!(text.contains("fleet_worker_batch_seconds_total 1.500"), "{text}");
        assert!(text.contains("fleet_worker_busy 0"), "{text}");
        assert!(text.contains("fleet_worker_upload_seconds_count 0"), "{text}");
        assert!(text.contains("fleet_worker_encode_seconds_count 0"), "{text}");
        assert!(text.contains(r#"fleet_worker_info{worker="w\"1",device="cpu",models="tiny"} 1"#), "{text}");
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 7.0] {
            h.observe(v);
        }
        let mut text = String::new();
        h.render(&mut text, "x", "help");
        for line in ["x_bucket{le=\"1\"} 2", "x_bucket{le=\"2\"} 3", "x_bucket{le=\"+Inf\"} 4", "x_sum 10", "x_count 4"]
        {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
    }
}
