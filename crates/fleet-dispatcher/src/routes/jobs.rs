//! `/v1/jobs`: submit, read, list, cancel, delete, follow.

use std::convert::Infallible;

use aide::openapi::{ParameterSchemaOrContent, ReferenceOr, SchemaObject};
use aide::transform::TransformOperation;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use fleet_core::{ErrorCode, FieldError, ImageResult, JobState, JobStatus};
use futures::StreamExt as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::App;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::submit::{accept, validate_for};
pub use removal::{delete, delete_docs, delete_many, delete_many_docs};
use submission::JobsBody;

mod removal;
mod submission;
pub mod webhook_log;

/// `/v1/jobs/{id}…`
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct JobPath {
    /// The job's id (a UUID).
    id: Uuid,
}

/// `/v1/jobs/{id}/images/{n}…`
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct ImagePath {
    /// The job's id (a UUID).
    id: Uuid,
    /// The image's index, 0-based.
    n: u32,
}

/// The trace id of a request: the caller's `x-trace-id`, the trace part of a W3C `traceparent`, or a new one.
fn trace_id(headers: &HeaderMap) -> String {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(id) = header("x-trace-id").filter(|v| !v.is_empty() && v.len() <= 128) {
        return id.to_owned();
    }
    if let Some(trace) = header("traceparent").and_then(|tp| tp.split('-').nth(1)).filter(|t| t.len() == 32) {
        return trace.to_owned();
    }
    Uuid::new_v4().simple().to_string()
}

/// What became of one job of an array: its status, or why it was not accepted.
#[derive(Serialize, JsonSchema)]
struct BatchItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<JobStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ApiError>,
}

/// The answer to an array of jobs.
#[derive(Serialize, JsonSchema)]
struct BatchAccepted {
    /// One item per submitted job, in order.
    jobs: Vec<BatchItem>,
}

/// The 202 of `POST /v1/jobs`: the job's status, or for an array one item per job.
#[derive(Serialize, JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)] // describes the two answers; each is built as its own type
enum Submitted {
    One(Box<JobStatus>),
    Many(BatchAccepted),
}

/// The documentation of `POST /v1/jobs` beyond what its types say.
pub fn submit_docs(op: TransformOperation<'_>) -> TransformOperation<'_> {
    op.summary("Submit one job (object) or several (array); every job is validated before any is accepted")
        .response_with::<202, Json<Submitted>, _>(|mut res| {
            res.inner().headers.insert("Location".into(), location_header());
            res.description("accepted: the job's status, or one item per job of an array")
        })
        .response_with::<200, Json<JobStatus>, _>(|mut res| {
            res.inner().headers.insert("Location".into(), location_header());
            res.description(
                "an idempotency key (or the job's own id) matched an existing job with the same request: its status",
            )
        })
        .response_with::<409, Json<crate::error::ErrorBody<'static>>, _>(|res| {
            res.description(
                "`conflict`: the idempotency key (or the job's own id) was already used for a different request; \
                 `error.job_id` names that job (in an array, the item's `error`)",
            )
        })
}

/// `Location` of a single job's answer; an array's answer has none (each item names its job).
fn location_header() -> ReferenceOr<aide::openapi::Header> {
    let schema =
        SchemaObject { json_schema: schemars::json_schema!({"type": "string"}), example: None, external_docs: None };
    ReferenceOr::Item(aide::openapi::Header {
        description: Some("`/v1/jobs/{id}` of the job (single-job submissions only)".into()),
        style: Default::default(),
        required: false,
        deprecated: None,
        format: ParameterSchemaOrContent::Schema(schema),
        example: None,
        examples: Default::default(),
        extensions: Default::default(),
    })
}

/// `POST /v1/jobs`: one job object, or an array of them. Every job is validated before any is accepted.
pub async fn submit(
    State(app): State<App>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<JobsBody, ApiError>,
) -> Result<Response, ApiError> {
    let trace = trace_id(&headers);
    let body = body.inspect_err(|e| app.metrics.rejected(e.code))?;
    let text = body.text();
    if text.trim_start().starts_with('[') {
        return submit_batch(app, caller, text, &trace).await;
    }
    let spec = fleet_core::parse_job(text)?;
    let job = validate_for(&app, &caller, spec, "").inspect_err(|e| app.metrics.rejected(e.code))?;
    let mut accepted = accept(&app, job, &trace).await.inspect_err(|e| app.metrics.rejected(e.code))?;
    crate::waiting::explain(&app.status, &mut [&mut accepted.status]).await;
    let code = if accepted.created { StatusCode::ACCEPTED } else { StatusCode::OK };
    let location = format!("/v1/jobs/{}", accepted.status.id);
    Ok((code, [("x-trace-id", trace), (header::LOCATION.as_str(), location)], Json(accepted.status)).into_response())
}

async fn submit_batch(app: App, caller: Caller, text: &str, trace: &str) -> Result<Response, ApiError> {
    let values: Vec<serde_json::Value> =
        serde_json::from_str(text).map_err(|e| ApiError::new(ErrorCode::InvalidSpec, format!("body: {e}")))?;
    let max = app.config.http.max_jobs_per_request;
    if values.is_empty() || values.len() > max {
        return Err(ApiError::new(
            ErrorCode::InvalidSpec,
            format!("a job array holds 1 to {max} jobs, not {}", values.len()),
        ));
    }
    let mut jobs = Vec::with_capacity(values.len());
    let mut fields = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let prefix = format!("[{i}].");
        // The element's own text, not the body: a position within it would mislead, so none is given.
        let parsed = fleet_core::parse_job(&value.to_string())
            .map_err(|e| ApiError::invalid("", vec![FieldError { field: e.field, message: e.message }]));
        match parsed.and_then(|spec| validate_for(&app, &caller, spec, &prefix)) {
            Ok(job) => jobs.push(job),
            Err(err) if err.fields.is_empty() => return Err(err),
            Err(err) => fields.extend(err.fields.into_iter().map(|mut f| {
                if !f.field.starts_with('[') {
                    f.field = format!("{prefix}{}", f.field);
                }
                f
            })),
        }
    }
    if !fields.is_empty() {
        app.metrics.rejected(ErrorCode::InvalidSpec);
        return Err(ApiError::invalid("", fields));
    }
    let mut items = Vec::with_capacity(jobs.len());
    for job in jobs {
        match accept(&app, job, trace).await {
            Ok(accepted) => items.push(BatchItem { status: Some(accepted.status), error: None }),
            Err(err) => {
                app.metrics.rejected(err.code);
                items.push(BatchItem { status: None, error: Some(err) });
            }
        }
    }
    let mut statuses: Vec<&mut JobStatus> = items.iter_mut().filter_map(|i| i.status.as_mut()).collect();
    crate::waiting::explain(&app.status, &mut statuses).await;
    Ok((StatusCode::ACCEPTED, [("x-trace-id", trace.to_owned())], Json(BatchAccepted { jobs: items })).into_response())
}

/// A job the caller may see: their own, or any for an admin. Others' jobs are "not found", not "forbidden".
async fn visible_job(app: &App, caller: &Caller, id: Uuid) -> Result<JobStatus, ApiError> {
    match app.status.get(id).await? {
        Some(status) if caller.admin || status.tenant == caller.tenant => Ok(status),
        _ => Err(ApiError::not_found(format!("job {id}"))),
    }
}

/// `GET /v1/jobs/{id}`.
pub async fn get_one(
    State(app): State<App>,
    caller: Caller,
    Path(JobPath { id }): Path<JobPath>,
) -> Result<Json<JobStatus>, ApiError> {
    let mut status = visible_job(&app, &caller, id).await?;
    crate::waiting::explain(&app.status, &mut [&mut status]).await;
    answer_with_urls(&app, &mut status).await?;
    Ok(Json(status))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(inline)]
pub struct ListQuery {
    /// Only jobs in this state.
    state: Option<JobState>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Jobs per page: 1 to 100, default 50.
    limit: Option<usize>,
}

/// A page of the caller's jobs, newest first.
#[derive(Debug, Serialize, JsonSchema)]
pub struct JobPage {
    jobs: Vec<JobStatus>,
    /// Pass as `cursor` for the next page; null on the last.
    next_cursor: Option<String>,
}

/// `GET /v1/jobs?state=&cursor=&limit=`: the caller's jobs, newest first.
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<JobPage>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 100);
    let mut page = app.status.list(&caller.tenant, q.state, q.cursor.as_deref(), limit).await?;
    for status in &mut page.jobs {
        answer_with_urls(&app, status).await?;
    }
    Ok(Json(JobPage { jobs: page.jobs, next_cursor: page.next_cursor }))
}

/// `POST /v1/jobs/{id}/cancel`: a queued job never runs; a running one stops at its next step.
pub async fn cancel(
    State(app): State<App>,
    caller: Caller,
    Path(JobPath { id }): Path<JobPath>,
) -> Result<Response, ApiError> {
    let status = visible_job(&app, &caller, id).await?;
    if status.state.is_terminal() {
        return Err(ApiError::new(ErrorCode::Conflict, format!("job {} is already {}", status.id, status.state)));
    }
    cancel_unfinished(&app, status).await
}

/// Cancels a job that is not finished: a queued one at once, a running one through the flag its
/// worker reads at its next step. Answers 202 with the job's status afterwards.
async fn cancel_unfinished(app: &App, status: JobStatus) -> Result<Response, ApiError> {
    let mut updated = cancelled(app, status).await?;
    answer_with_urls(app, &mut updated).await?;
    Ok((StatusCode::ACCEPTED, Json(updated)).into_response())
}

/// The cancel itself, see [`cancel_unfinished`].
async fn cancelled(app: &App, status: JobStatus) -> Result<JobStatus, ApiError> {
    // The flag first: a worker that picks the job up in the meantime still sees it.
    app.status.request_cancel(status.id).await?;
    if status.state != JobState::Queued {
        return Ok(status);
    }
    match app.status.update(status.id, |s| s.cancel(Utc::now())).await {
        Ok(s) => Ok(s),
        // it started meanwhile: the worker honours the flag at its next step
        Err(fleet_status::StatusError::Illegal(_)) => Ok(app.status.get(status.id).await?.unwrap_or(status)),
        Err(e) => Err(e.into()),
    }
}

/// `GET /v1/jobs/{id}/events`: server-sent events, one per status change, ending with the final state.
/// Each event's id is the record's revision; a reconnecting client (`Last-Event-ID`) gets the
/// current status first, which is all it needs to resume.
pub async fn events(
    State(app): State<App>,
    caller: Caller,
    Path(JobPath { id }): Path<JobPath>,
) -> Result<Response, ApiError> {
    let status = visible_job(&app, &caller, id).await?;
    let stream = app.status.events(status.id).await?;
    let events = stream.then(move |item| {
        let app = app.clone();
        async move {
            match item {
                // a queued job's events say what it waits for, and a finished one's where its
                // images are, as its status does
                Ok(mut event) => {
                    crate::waiting::explain(&app.status, &mut [&mut event.status]).await;
                    answer_with_urls(&app, &mut event.status).await.map_err(|e| e.message)?;
                    Ok(event)
                }
                Err(err) => Err(err.to_string()),
            }
        }
    });
    let events = events.map(|item| {
        Ok::<_, Infallible>(match item {
            Ok(event) => Event::default()
                .id(event.rev.to_string())
                .event(event.state.as_str())
                .json_data(&event)
                .unwrap_or_else(|_| Event::default().event("error").data("unserialisable event")),
            Err(err) => Event::default().event("error").data(err),
        })
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

/// Image `n` of a job the caller may see.
async fn stored_image(app: &App, caller: &Caller, id: Uuid, n: u32) -> Result<ImageResult, ApiError> {
    let status = visible_job(app, caller, id).await?;
    let found = status.result.iter().find(|r| r.index == n).cloned();
    found.ok_or_else(|| ApiError::not_found(format!("image {n} of job {} (state {})", status.id, status.state)))
}

/// Gives each image of `status` its presigned URL and when that stops working (left out when
/// images are in a local directory): what a status carries in every answer, never in Redis.
async fn answer_with_urls(app: &App, status: &mut JobStatus) -> Result<(), ApiError> {
    let expires_at =
        Utc::now() + chrono::TimeDelta::seconds(i64::try_from(app.config.s3.presign_ttl_secs).unwrap_or(0));
    for image in &mut status.result {
        image.url = presigned(app, image).await?;
        image.url_expires_at = image.url.as_ref().map(|_| expires_at);
    }
    Ok(())
}

/// A presigned URL of a stored image; `None` when images are in a local directory, whose
/// `file://` URLs mean nothing to a client on another machine.
async fn presigned(app: &App, image: &ImageResult) -> Result<Option<String>, ApiError> {
    if let fleet_storage::ImageStore::S3(_) = app.store.as_ref() {
        let ttl = std::time::Duration::from_secs(app.config.s3.presign_ttl_secs);
        return Ok(app.store.presign_get(&image.key, ttl).await?);
    }
    Ok(None)
}

/// `GET /v1/jobs/{id}/images/{n}`: a redirect to a presigned S3 URL, or the bytes from a local store.
pub async fn image(
    State(app): State<App>,
    caller: Caller,
    Path(ImagePath { id, n }): Path<ImagePath>,
) -> Result<Response, ApiError> {
    let image = stored_image(&app, &caller, id, n).await?;
    if let Some(url) = presigned(&app, &image).await? {
        return Ok(axum::response::Redirect::temporary(&url).into_response());
    }
    let object =
        app.store.get(&image.key).await?.ok_or_else(|| ApiError::not_found(format!("object {}", image.key)))?;
    Ok(([(axum::http::header::CONTENT_TYPE, object.content_type)], object.body).into_response())
}

/// `GET /v1/jobs/{id}/images/{n}/url`: the presigned URL as JSON, for clients that cannot follow the
/// redirect above with their key (a browser's `fetch` drops it, or needs CORS, at the S3 origin).
/// `url` is null when images are in a local directory: fetch the bytes from the redirect endpoint.
pub async fn image_url(
    State(app): State<App>,
    caller: Caller,
    Path(ImagePath { id, n }): Path<ImagePath>,
) -> Result<Json<ImageUrl>, ApiError> {
    let image = stored_image(&app, &caller, id, n).await?;
    let url = presigned(&app, &image).await?;
    let expires_in_secs = url.as_ref().map(|_| app.config.s3.presign_ttl_secs);
    Ok(Json(ImageUrl { url, expires_in_secs }))
}

/// Where a browser fetches an image.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ImageUrl {
    /// A presigned S3 URL; null when images are in a local directory.
    url: Option<String>,
    /// How long the URL is valid (`s3.presign_ttl_secs`); null with `url`.
    expires_in_secs: Option<u64>,
}
