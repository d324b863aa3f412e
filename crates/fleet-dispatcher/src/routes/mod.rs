//! The routes: which path goes to which handler, declared once for both the router and the
//! OpenAPI document (`aide` records each `api_route` with its handler's types and the summary
//! given here).

pub mod bulk;
pub mod console;
pub mod fallback;
pub mod jobs;
pub mod library;
pub mod ops;
pub mod usage;

use aide::axum::ApiRouter;
use aide::axum::routing::{get_with, post_with};
use aide::openapi::OpenApi;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

use crate::App;
use crate::openapi::{API_KEY, plain_response};
pub use fallback::MAX_HEADER_BYTES;

/// The `/v1` API. Every route here sits behind [`crate::auth::require_key`] (a route added here
/// needs a key whatever its handler does) and is documented as needing one.
fn keyed() -> ApiRouter<App> {
    ApiRouter::new()
        .api_route(
            "/v1/jobs",
            get_with(jobs::list, |op| op.summary("The caller's jobs, newest first")).post_with(jobs::submit, jobs::submit_docs),
        )
        .api_route(
            "/v1/jobs/{id}",
            get_with(jobs::get_one, |op| {
                op.summary("One job's status, with a presigned URL per image and when the job expires")
            })
            .delete_with(jobs::delete, jobs::delete_docs),
        )
        .api_route("/v1/jobs/delete", post_with(jobs::delete_many, jobs::delete_many_docs))
        .api_route(
            "/v1/jobs/{id}/cancel",
            post_with(jobs::cancel, |op| {
                op.summary("Cancel: a queued job never runs, a running job stops at its next step (the job is kept)")
                    .response::<202, axum::Json<fleet_core::JobStatus>>()
            }),
        )
        .api_route(
            "/v1/jobs/{id}/events",
            get_with(jobs::events, |op| {
                let op = op.summary("Server-sent events (event: state, data: JobEvent) until the job is final");
                plain_response::<200>(op, "text/event-stream", "one event per status change; `id:` is the record's revision")
            }),
        )
        .api_route(
            "/v1/jobs/{id}/images/{n}",
            get_with(jobs::image, |op| {
                let op = op.summary(
                    "Image n of a finished job: 307 to a presigned S3 URL, or the bytes when images are in a local directory",
                );
                plain_response::<200>(op, "application/octet-stream", "the image (local store)")
                    .response_with::<307, axum::response::Redirect, _>(|res| res.description("to a presigned S3 URL"))
            }),
        )
        .api_route(
            "/v1/jobs/{id}/images/{n}/url",
            get_with(jobs::image_url, |op| {
                op.summary("The presigned URL of image n as JSON (null when images are in a local directory), for browsers")
            }),
        )
        .api_route(
            "/v1/jobs/{id}/webhooks",
            get_with(jobs::webhook_log::webhook_log, |op| {
                op.summary("The job's webhook deliveries: every attempt with its status code or error and the next try")
            }),
        )
        .api_route(
            "/v1/library",
            get_with(library::library, |op| {
                op.summary("What the caller can ask for: tenant, models with size limits, LoRA and ControlNet names")
            }),
        )
        .api_route(
            "/v1/usage",
            get_with(usage::usage, |op| {
                op.summary(
                    "Usage (jobs, images, megapixel-steps, worker seconds) by hour or day, tenant and model: the caller's own, any tenant's for admins",
                )
            }),
        )
        .api_route("/v1/queues", get_with(ops::queues, |op| op.summary("Queue depths and per-model counters (admin)")))
        .api_route("/v1/workers", get_with(ops::workers, |op| op.summary("Live workers from their heartbeats (admin)")))
        .api_route(
            "/v1/dead-letters",
            get_with(ops::dead_letters, |op| {
                op.summary(
                    "The dead-letter queue's first messages (job, tenant, reason, queue, count, time), left in the queue (admin)",
                )
            }),
        )
        .api_route(
            "/v1/bulk/runs",
            get_with(bulk::list, |op| {
                op.summary("Bulk runs with their progress, most recently started or resumed first (admin)")
            }),
        )
        .api_route(
            "/v1/bulk/runs/{name}",
            get_with(bulk::get_one, |op| op.summary("One bulk run: settings, input, progress, unfinished jobs (admin)")),
        )
        .with_path_items(|item| item.security_requirement(API_KEY))
}

/// Routes anyone may call: liveness, readiness, Prometheus metrics, the API description and the
/// console's static files (undocumented), none of which reveals a tenant's data.
fn public() -> ApiRouter<App> {
    ApiRouter::new()
        .api_route("/healthz", get_with(ops::healthz, |op| op.summary("The process is up")))
        .api_route(
            "/readyz",
            get_with(ops::readyz, |op| {
                let op = op.summary(
                    "Redis, RabbitMQ and S3 (the bucket, with the configured keys) answer right now (else 503)",
                );
                op.response_with::<200, axum::Json<serde_json::Value>, _>(|res| {
                    res.description("each service: `ok` or its error")
                })
            }),
        )
        .api_route(
            "/metrics",
            get_with(ops::metrics, |op| {
                plain_response::<200>(op.summary("Prometheus text"), "text/plain; version=0.0.4", "metrics")
            }),
        )
        .api_route("/openapi.json", get_with(ops::openapi, |op| op.summary("This document")))
        .route("/ui", get(console::root))
        .route("/ui/", get(console::index))
        .route("/ui/{file}", get(console::file))
}

/// The declared routes and the document they make. With `app`, the keyed group gets the key
/// layer (which checks keys against `app`); without (writing the document) the layer is left
/// out, which changes nothing in the document.
fn assemble(app: Option<&App>) -> (Router<App>, OpenApi) {
    crate::openapi::start();
    let mut keyed = keyed();
    if let Some(app) = app {
        keyed = keyed.route_layer(axum::middleware::from_fn_with_state(app.clone(), crate::auth::require_key));
    }
    let mut document = crate::openapi::base();
    let router = keyed.merge(public()).finish_api(&mut document);
    (router, document)
}

/// The OpenAPI document of every declared route.
pub fn document() -> OpenApi {
    assemble(None).1
}

/// Every route of the API, with the body-size and header-size limits applied. Whatever refuses a
/// request (the router, an extractor, a limit) answers in the API's error envelope.
pub fn router(app: App) -> Router {
    let max_body = app.config.http.max_body_bytes;
    let (routes, document) = assemble(Some(&app));
    let document = serde_json::to_value(&document).unwrap_or_default();
    routes
        .method_not_allowed_fallback(fallback::method_not_allowed)
        .fallback(fallback::not_found)
        // Bodies are read only by extractors, which refuse one over the limit; the submit handler
        // turns that into a `payload_too_large` error.
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(fallback::limit_headers))
        // Outermost: every answer is counted, the limits' and the key layer's (401, 429) too.
        .layer(axum::middleware::from_fn_with_state(app.metrics.clone(), crate::http_metrics::track))
        .layer(axum::Extension(std::sync::Arc::new(document)))
        .with_state(app)
}
