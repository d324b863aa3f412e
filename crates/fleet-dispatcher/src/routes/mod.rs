//! The router: which path goes to which handler.

pub mod bulk;
pub mod console;
pub mod jobs;
pub mod library;
pub mod ops;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

use crate::App;

/// Every route of the API, with the body-size limit applied.
///
/// Two groups: the `/v1` API, behind [`crate::auth::require_key`] (a route added there needs a key
/// whatever its handler does), and the few public routes: liveness, readiness, Prometheus metrics,
/// the API description and the console's static files, none of which reveals a tenant's data.
pub fn router(app: App) -> Router {
    let max_body = app.config.http.max_body_bytes;
    let api = Router::new()
        .route("/v1/jobs", get(jobs::list).post(jobs::submit))
        .route("/v1/jobs/{id}", get(jobs::get_one).delete(jobs::cancel))
        .route("/v1/jobs/{id}/events", get(jobs::events))
        .route("/v1/jobs/{id}/images/{n}", get(jobs::image))
        .route("/v1/jobs/{id}/images/{n}/url", get(jobs::image_url))
        .route("/v1/library", get(library::library))
        .route("/v1/queues", get(ops::queues))
        .route("/v1/workers", get(ops::workers))
        .route("/v1/dead-letters", get(ops::dead_letters))
        .route("/v1/bulk/runs", get(bulk::list))
        .route("/v1/bulk/runs/{name}", get(bulk::get_one))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), crate::auth::require_key));
    let public = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route("/ui", get(console::root))
        .route("/ui/", get(console::index))
        .route("/ui/{file}", get(console::file));
    api.merge(public)
        .fallback(ops::not_found)
        // Bodies are read only by extractors, which refuse one over the limit; the submit handler
        // turns that into a `payload_too_large` error.
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(app)
}
