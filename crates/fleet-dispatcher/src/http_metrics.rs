//! HTTP metrics per route and status: a request counter and a latency histogram, labelled with
//! the route's template (`/v1/jobs/{id}`, never the raw path, so a client cannot grow the label
//! set), the method and the status. 401s of the key layer and 429s of the rate limit are counted
//! like any other answer.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::metrics::Metrics;

/// The route label of a request that matched no route (answered 404 by the fallback).
pub const UNMATCHED: &str = "unmatched";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    method: String,
    route: String,
    status: u16,
}

/// Latency buckets: 1 ms to about 16 s, doubling.
fn histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The families, shared by every request and read at each scrape.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<Labels, Counter>,
    seconds: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> HttpMetrics {
        HttpMetrics { requests: Family::default(), seconds: Family::new_with_constructor(histogram) }
    }
}

impl HttpMetrics {
    fn observe(&self, labels: Labels, seconds: f64) {
        self.requests.get_or_create(&labels).inc();
        self.seconds.get_or_create(&labels).observe(seconds);
    }

    /// Adds both families to a scrape's registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "fleet_http_requests",
            "HTTP requests answered, by route, method and status",
            self.requests.clone(),
        );
        registry.register(
            "fleet_http_request_duration_seconds",
            "Time from request to response head, by route, method and status",
            self.seconds.clone(),
        );
    }
}

/// The layer that counts and times every request; the time ends with the response's head (a
/// stream of server-sent events counts until it starts).
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request.extensions().get::<MatchedPath>().map_or(UNMATCHED, MatchedPath::as_str).to_owned();
    let response = next.run(request).await;
    let labels = Labels { method, route, status: response.status().as_u16() };
    metrics.http.observe(labels, started.elapsed().as_secs_f64());
    response
}
