//! Counters served at `/metrics` in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use fleet_core::ErrorCode;

/// In-process counters of this dispatcher.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: BTreeMap<(String, &'static str), u64>,
    rejected: BTreeMap<&'static str, u64>,
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

    /// The Prometheus exposition, plus `extra` gauge lines (queue depths) appended by the caller.
    pub fn render(&self, queue_depths: &[fleet_queue::QueueDepth]) -> String {
        let mut out = String::new();
        let Ok(c) = self.inner.lock() else { return out };
        out.push_str("# HELP fleet_jobs_accepted_total Jobs confirmed onto the queue.\n# TYPE fleet_jobs_accepted_total counter\n");
        for ((model, priority), n) in &c.accepted {
            let _ = writeln!(out, "fleet_jobs_accepted_total{{model=\"{model}\",priority=\"{priority}\"}} {n}");
        }
        out.push_str("# HELP fleet_jobs_rejected_total Submissions refused, by error code.\n# TYPE fleet_jobs_rejected_total counter\n");
        for (code, n) in &c.rejected {
            let _ = writeln!(out, "fleet_jobs_rejected_total{{code=\"{code}\"}} {n}");
        }
        out.push_str("# HELP fleet_accept_seconds Time from request to publisher confirm.\n# TYPE fleet_accept_seconds summary\n");
        let _ = writeln!(out, "fleet_accept_seconds_sum {}", c.accept_seconds_sum);
        let _ = writeln!(out, "fleet_accept_seconds_count {}", c.accept_count);
        out.push_str("# HELP fleet_queue_messages Ready messages per queue.\n# TYPE fleet_queue_messages gauge\n");
        for d in queue_depths {
            let _ = writeln!(out, "fleet_queue_messages{{queue=\"{}\"}} {}", d.name, d.messages);
        }
        out.push_str("# HELP fleet_queue_consumers Consumers per queue.\n# TYPE fleet_queue_consumers gauge\n");
        for d in queue_depths {
            let _ = writeln!(out, "fleet_queue_consumers{{queue=\"{}\"}} {}", d.name, d.consumers);
        }
        out
    }
}
