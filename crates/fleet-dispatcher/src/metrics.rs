//! Counters served at `/metrics` in the Prometheus text format (version 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use fleet_core::ErrorCode;
use fleet_core::usage::UsageCounts;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::http_metrics::HttpMetrics;
use crate::lifecycle::Removal;

/// In-process counters of this dispatcher.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Counters>,
    /// Requests per route, method and status ([`crate::http_metrics`]).
    pub http: HttpMetrics,
}

#[derive(Clone, Debug, Default)]
struct Counters {
    accepted: BTreeMap<(String, &'static str), u64>,
    rejected: BTreeMap<&'static str, u64>,
    removed: BTreeMap<Removal, u64>,
    accept_seconds_sum: f64,
    accept_count: u64,
}

impl Metrics {
    pub fn accepted(&self, model: &str, priority: fleet_core::Priority, seconds: f64) {
        if let Ok(mut c) = self.inner.lock() {
            *c.accepted.entry((model.to_owned(), priority.as_str())).or_default() += 1;
            c.accept_seconds_sum += seconds;
            c.accept_count += 1;
        }
    }

    pub fn rejected(&self, code: ErrorCode) {
        if let Ok(mut c) = self.inner.lock() {
            *c.rejected.entry(code.name()).or_default() += 1;
        }
    }

    /// A job's images and record were removed (by this dispatcher).
    pub fn removed(&self, why: Removal) {
        if let Ok(mut c) = self.inner.lock() {
            *c.removed.entry(why).or_default() += 1;
        }
    }

    /// The Prometheus exposition of the counters and of what the caller read of the fleet's
    /// state (queue depths, usage totals, webhook backlog).
    pub fn render(&self, fleet: FleetState) -> String {
        let mut out = String::new();
        let Ok(counters) = self.inner.lock().map(|c| c.clone()) else { return out };
        let (sum, count) = (counters.accept_seconds_sum, counters.accept_count);
        let mut registry = Registry::default();
        let snapshot = Snapshot { counters, fleet };
        registry.register_collector(Box::new(snapshot));
        self.http.register(&mut registry);
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &registry);
        // prometheus-client has no summary type; this one has no quantiles and no labels.
        let _ = write!(
            out,
            "# HELP fleet_accept_seconds Time from request to publisher confirm.\n\
             # TYPE fleet_accept_seconds summary\n\
             fleet_accept_seconds_sum {sum}\n\
             fleet_accept_seconds_count {count}\n"
        );
        out
    }
}

/// The counters and queue depths of one scrape. Counter names go without `_total`: the encoder
/// appends it to the samples and to the `# HELP`/`# TYPE` lines.
#[derive(Debug)]
struct Snapshot {
    counters: Counters,
    fleet: FleetState,
}

/// What one scrape reads of the fleet's shared state (the same on every dispatcher); a part that
/// could not be read is left empty and its metrics out.
#[derive(Debug, Default)]
pub struct FleetState {
    pub queue_depths: Vec<fleet_queue::QueueDepth>,
    pub usage: UsageTotals,
    /// Webhook deliveries in the Redis outbox and being relayed onto RabbitMQ.
    pub webhook_backlog: Option<(u64, u64)>,
}

/// The fleet's usage since it first counted, by tenant and model (from Redis, the same on every
/// dispatcher).
pub type UsageTotals = BTreeMap<(String, String), UsageCounts>;

/// A usage counter family: name, help, and its value from the counts.
type UsageMetric = (&'static str, &'static str, fn(&UsageCounts) -> f64);

const USAGE_METRICS: [UsageMetric; 4] = [
    ("fleet_usage_jobs", "Jobs finished, by tenant and model (fleet-wide, from Redis).", |c| c.jobs as f64),
    ("fleet_usage_images", "Images stored, by tenant and model (fleet-wide, from Redis).", |c| c.images as f64),
    (
        "fleet_usage_megapixel_steps",
        "Width x height x steps of the stored images / 1e6 (fleet-wide, from Redis).",
        |c| c.pixel_steps as f64 / 1e6,
    ),
    (
        "fleet_usage_worker_seconds",
        "Seconds from jobs' starts on a worker to their ends (fleet-wide, from Redis).",
        |c| c.worker_ms as f64 / 1e3,
    ),
];

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut accepted = encoder.encode_descriptor(
            "fleet_jobs_accepted",
            "Jobs confirmed onto the queue.",
            None,
            MetricType::Counter,
        )?;
        for ((model, priority), n) in &self.counters.accepted {
            let labels = [("model", model.as_str()), ("priority", priority)];
            ConstCounter::new(*n).encode(accepted.encode_family(&labels)?)?;
        }
        let mut rejected = encoder.encode_descriptor(
            "fleet_jobs_rejected",
            "Submissions refused, by error code.",
            None,
            MetricType::Counter,
        )?;
        for (code, n) in &self.counters.rejected {
            ConstCounter::new(*n).encode(rejected.encode_family(&[("code", *code)])?)?;
        }
        let mut removed = encoder.encode_descriptor(
            "fleet_jobs_removed",
            "Jobs whose images and record this dispatcher removed, by reason (expired, deleted).",
            None,
            MetricType::Counter,
        )?;
        for (why, n) in &self.counters.removed {
            ConstCounter::new(*n).encode(removed.encode_family(&[("reason", why.as_str())])?)?;
        }
        let mut messages =
            encoder.encode_descriptor("fleet_queue_messages", "Ready messages per queue.", None, MetricType::Gauge)?;
        for d in &self.fleet.queue_depths {
            ConstGauge::new(d.messages).encode(messages.encode_family(&[("queue", d.name.as_str())])?)?;
        }
        let mut consumers =
            encoder.encode_descriptor("fleet_queue_consumers", "Consumers per queue.", None, MetricType::Gauge)?;
        for d in &self.fleet.queue_depths {
            ConstGauge::new(d.consumers).encode(consumers.encode_family(&[("queue", d.name.as_str())])?)?;
        }
        if let Some((outbox, relaying)) = self.fleet.webhook_backlog {
            let mut backlog = encoder.encode_descriptor(
                "fleet_webhooks_backlog",
                "Webhook deliveries not yet on RabbitMQ: in the Redis outbox, or being relayed (fleet-wide).",
                None,
                MetricType::Gauge,
            )?;
            for (stage, n) in [("outbox", outbox), ("relaying", relaying)] {
                ConstGauge::new(n as i64).encode(backlog.encode_family(&[("stage", stage)])?)?;
            }
        }
        if self.fleet.usage.is_empty() {
            return Ok(());
        }
        for (name, help, value) in USAGE_METRICS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for ((tenant, model), counts) in &self.fleet.usage {
                let labels = [("tenant", tenant.as_str()), ("model", model.as_str())];
                ConstCounter::new(value(counts)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_core::Priority;

    fn depth(name: &str, messages: u32, consumers: u32) -> fleet_queue::QueueDepth {
        fleet_queue::QueueDepth { name: name.into(), messages, consumers }
    }

    #[test]
    fn exposition_has_every_metric_with_its_value() {
        let metrics = Metrics::default();
        metrics.accepted("tiny", Priority::Interactive, 0.25);
        metrics.accepted("tiny", Priority::Interactive, 0.5);
        metrics.rejected(ErrorCode::RateLimited);
        metrics.removed(Removal::Expired);
        metrics.removed(Removal::Expired);
        metrics.removed(Removal::Deleted);
        let text = metrics
            .render(FleetState { queue_depths: vec![depth("jobs.tiny.interactive", 4, 2)], ..FleetState::default() });
        let described: Vec<&str> = text.lines().filter(|l| l.starts_with('#')).collect();
        assert_eq!(
            described,
            [
                "# HELP fleet_jobs_accepted_total Jobs confirmed onto the queue.",
                "# TYPE fleet_jobs_accepted_total counter",
                "# HELP fleet_jobs_rejected_total Submissions refused, by error code.",
                "# TYPE fleet_jobs_rejected_total counter",
                "# HELP fleet_jobs_removed_total Jobs whose images and record this dispatcher removed, by reason (expired, deleted).",
                "# TYPE fleet_jobs_removed_total counter",
                "# HELP fleet_queue_messages Ready messages per queue.",
                "# TYPE fleet_queue_messages gauge",
                "# HELP fleet_queue_consumers Consumers per queue.",
                "# TYPE fleet_queue_consumers gauge",
                "# HELP fleet_accept_seconds Time from request to publisher confirm.",
                "# TYPE fleet_accept_seconds summary",
            ],
            "{text}"
        );
        for line in [
            r#"fleet_jobs_accepted_total{model="tiny",priority="interactive"} 2"#,
            &format!(r#"fleet_jobs_rejected_total{{code="{}"}} 1"#, ErrorCode::RateLimited.name()),
            r#"fleet_jobs_removed_total{reason="expired"} 2"#,
            r#"fleet_jobs_removed_total{reason="deleted"} 1"#,
            r#"fleet_queue_messages{queue="jobs.tiny.interactive"} 4"#,
            r#"fleet_queue_consumers{queue="jobs.tiny.interactive"} 2"#,
            "fleet_accept_seconds_sum 0.75",
            "fleet_accept_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
    }

    #[test]
    fn usage_totals_are_counters_by_tenant_and_model() {
        let mut usage = UsageTotals::new();
        let counts = UsageCounts { jobs: 3, images: 4, pixel_steps: 2_500_000, worker_ms: 1_250 };
        usage.insert(("acme".into(), "tiny".into()), counts);
        let text = Metrics::default().render(FleetState { usage, ..FleetState::default() });
        for line in [
            r#"fleet_usage_jobs_total{tenant="acme",model="tiny"} 3.0"#,
            r#"fleet_usage_images_total{tenant="acme",model="tiny"} 4.0"#,
            r#"fleet_usage_megapixel_steps_total{tenant="acme",model="tiny"} 2.5"#,
            r#"fleet_usage_worker_seconds_total{tenant="acme",model="tiny"} 1.25"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
        let text = Metrics::default().render(FleetState::default());
        assert!(!text.contains("fleet_usage_") && !text.contains("fleet_webhooks_"), "{text}");
    }

    #[test]
    fn the_webhook_backlog_is_a_gauge_by_stage() {
        let text = Metrics::default().render(FleetState { webhook_backlog: Some((3, 1)), ..FleetState::default() });
        assert!(text.contains("# TYPE fleet_webhooks_backlog gauge"), "{text}");
        for line in [r#"fleet_webhooks_backlog{stage="outbox"} 3"#, r#"fleet_webhooks_backlog{stage="relaying"} 1"#] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::default();
        metrics.accepted("a\"b\\c\nd", Priority::Interactive, 0.1);
        let text = metrics.render(FleetState { queue_depths: vec![depth("q\"\\\n", 1, 0)], ..FleetState::default() });
        for line in [
            r#"fleet_jobs_accepted_total{model="a\"b\\c\nd",priority="interactive"} 1"#,
            r#"fleet_queue_messages{queue="q\"\\\n"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
    }
}
