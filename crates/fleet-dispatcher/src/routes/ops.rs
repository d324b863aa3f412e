//! Operational endpoints: health, readiness, queues, workers, dead letters, metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use crate::App;
use crate::auth::Caller;
use crate::dead_letter_list::DeadLetterPage;
use crate::error::ApiError;
use crate::extract::Query;

/// `GET /healthz`: the process is up.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: Redis, RabbitMQ and the image store (its bucket, with our credentials) all
/// answer right now; each says `ok` or its error.
pub async fn readyz(State(app): State<App>) -> Response {
    let (redis, rabbitmq, s3) = tokio::join!(app.status.ping(), app.broker.channel(), app.store.check());
    let checks = [
        ("redis", redis.err().map(|e| e.to_string())),
        ("rabbitmq", rabbitmq.err().map(|e| e.to_string())),
        ("s3", s3.err().map(|e| e.to_string())),
    ];
    let ready = checks.iter().all(|(_, error)| error.is_none());
    let body: serde_json::Map<String, serde_json::Value> = checks
        .into_iter()
        .map(|(name, error)| (name.to_owned(), error.unwrap_or_else(|| "ok".into()).into()))
        .collect();
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}

/// `GET /v1/queues` (admin): depth and consumers of every queue (the tenants' lanes included),
/// with per-model counters.
pub async fn queues(State(app): State<App>, caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_admin()?;
    let depths = crate::lanes::all_depths(&app).await?;
    let counters = app.status.counters().await?;
    Ok(Json(serde_json::json!({ "queues": depths, "counters": counters })))
}

/// `GET /v1/workers` (admin): live workers from their heartbeats.
pub async fn workers(State(app): State<App>, caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_admin()?;
    Ok(Json(serde_json::json!({ "workers": app.status.workers().await? })))
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[schemars(inline)]
pub struct DeadLetterQuery {
    /// Messages to show: 1 to 100, default 20.
    limit: Option<usize>,
}

/// `GET /v1/dead-letters?limit=` (admin): the dead-letter queue's first messages, left in the queue.
pub async fn dead_letters(
    State(app): State<App>,
    caller: Caller,
    Query(q): Query<DeadLetterQuery>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    caller.require_admin()?;
    let limit = q.limit.unwrap_or(20).clamp(1, crate::dead_letter_list::WINDOW);
    Ok(Json(crate::dead_letter_list::look(&app.broker, limit).await?))
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(app): State<App>) -> Response {
    let (depths, usage, backlog) =
        tokio::join!(crate::lanes::all_depths(&app), app.status.usage_totals(), app.status.webhook_backlog());
    let fleet = crate::metrics::FleetState {
        queue_depths: depths.unwrap_or_default(),
        usage: usage.unwrap_or_default(),
        webhook_backlog: backlog.ok(),
    };
    let text = app.metrics.render(fleet);
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

/// `GET /openapi.json`: the document made with the router (see [`crate::routes`]).
pub async fn openapi(Extension(document): Extension<Arc<serde_json::Value>>) -> Json<serde_json::Value> {
    Json(document.as_ref().clone())
}
