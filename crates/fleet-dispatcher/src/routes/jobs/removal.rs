//! `DELETE /v1/jobs/{id}`: a job's images and record removed now, or, for a job not yet
//! finished, cancelled first and removed by the sweeper once it is final; `POST
//! /v1/jobs/delete` does the same for many jobs in one request.

use aide::transform::TransformOperation;
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fleet_core::{ErrorCode, JobStatus};
use futures::StreamExt as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::submission::refused;
use super::{JobPath, cancel_unfinished, cancelled, visible_job};
use crate::App;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::Path;

/// The documentation of `DELETE /v1/jobs/{id}` beyond what its types say.
pub fn delete_docs(op: TransformOperation<'_>) -> TransformOperation<'_> {
    op.summary(
        "Delete: a finished job's images and record are removed now; a job not yet finished is cancelled first \
         and removed once final",
    )
    .response_with::<204, (), _>(|res| {
        res.description("the job was finished: its images and record are gone (a later request for it is 404)")
    })
    .response_with::<202, Json<JobStatus>, _>(|res| {
        res.description(
            "the job was queued or running: it is cancelled (a queued job at once, a running one at its next \
             step) and its images and record are removed at the first sweep after it is final; its status",
        )
    })
}

/// `DELETE /v1/jobs/{id}`: removes a finished job now (204), or cancels an unfinished one and
/// has it removed once final (202 with its status). A job removed before is 404.
pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    Path(JobPath { id }): Path<JobPath>,
) -> Result<Response, ApiError> {
    let status = visible_job(&app, &caller, id).await?;
    if status.state.is_terminal() {
        crate::lifecycle::remove_job(&app, &status.tenant, status.id, crate::lifecycle::Removal::Deleted).await?;
        tracing::info!(job = %status.id, tenant = %status.tenant, "job deleted by its owner");
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    // Marked before the cancel, so the write that makes the job final finds the mark: whoever
    // finishes it (this cancel, or its worker) puts it up for the next sweep.
    app.status.request_removal(&status).await?;
    cancel_unfinished(&app, status).await
}

/// Jobs of one `POST /v1/jobs/delete` removed at once: each waits mostly on S3 (list, delete)
/// and Redis round trips.
const DELETE_CONCURRENCY: usize = 16;

/// The body of `POST /v1/jobs/delete`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct DeleteMany {
    /// The jobs to delete: 1 to `http.max_jobs_per_request` ids.
    ids: Vec<Uuid>,
}

/// What became of one job of `POST /v1/jobs/delete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Deletion {
    /// It was finished: its images and record are gone (as `DELETE /v1/jobs/{id}` → 204).
    Deleted,
    /// It was queued or running: cancelled, and removed at the first sweep after it is final (→ 202).
    Cancelled,
    /// No such job of the caller's (never there, already removed, or another tenant's) (→ 404).
    NotFound,
}

/// One job of `POST /v1/jobs/delete`: what became of it, or why it could not be deleted.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DeletionItem {
    id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<Deletion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ApiError>,
}

/// The answer of `POST /v1/jobs/delete`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DeletedMany {
    /// One item per id, in order.
    jobs: Vec<DeletionItem>,
}

/// The documentation of `POST /v1/jobs/delete` beyond what its types say.
pub fn delete_many_docs(op: TransformOperation<'_>) -> TransformOperation<'_> {
    op.summary("Delete many jobs in one request, each as `DELETE /v1/jobs/{id}` would (one rate-limit count for all)")
        .response_with::<200, Json<DeletedMany>, _>(|res| {
        res.description(
            "one item per id, in order: `outcome` (`deleted`, `cancelled`, `not_found`), or `error` when a service \
             failed for that job (nothing of it that was removed comes back; ask again)",
        )
    })
}

/// `POST /v1/jobs/delete` `{"ids": [...]}`: [`delete`] for each id, answered together. A bulk
/// run releases the jobs of the samples it has staged this way, a request per batch instead of
/// one per sample.
pub async fn delete_many(
    State(app): State<App>,
    caller: Caller,
    body: Result<Json<DeleteMany>, JsonRejection>,
) -> Result<Json<DeletedMany>, ApiError> {
    let Json(body) = body.map_err(|r| refused(&app, &r, "the ids", ErrorCode::InvalidRequest))?;
    let max = app.config.http.max_jobs_per_request;
    if body.ids.is_empty() || body.ids.len() > max {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("ids: 1 to {max} job ids, not {}", body.ids.len()),
        ));
    }
    let jobs = futures::stream::iter(body.ids)
        .map(|id| {
            let (app, caller) = (&app, &caller);
            async move {
                match delete_one(app, caller, id).await {
                    Ok(outcome) => DeletionItem { id, outcome: Some(outcome), error: None },
                    Err(e) => DeletionItem { id, outcome: None, error: Some(e) },
                }
            }
        })
        .buffered(DELETE_CONCURRENCY)
        .collect()
        .await;
    Ok(Json(DeletedMany { jobs }))
}

async fn delete_one(app: &App, caller: &Caller, id: Uuid) -> Result<Deletion, ApiError> {
    let status = match visible_job(app, caller, id).await {
        Ok(status) => status,
        Err(e) if e.code == ErrorCode::NotFound => return Ok(Deletion::NotFound),
        Err(e) => return Err(e),
    };
    if status.state.is_terminal() {
        crate::lifecycle::remove_job(app, &status.tenant, status.id, crate::lifecycle::Removal::Deleted).await?;
        tracing::debug!(job = %status.id, tenant = %status.tenant, "job deleted by its owner (one of many)");
        return Ok(Deletion::Deleted);
    }
    app.status.request_removal(&status).await?;
    cancelled(app, status).await?;
    Ok(Deletion::Cancelled)
}
