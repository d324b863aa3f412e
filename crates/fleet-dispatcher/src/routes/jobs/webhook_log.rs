//! `GET /v1/jobs/{id}/webhooks`: a job's webhook delivery log, for the job's owner (or an admin).

use axum::Json;
use axum::extract::State;
use fleet_core::webhook::WebhookLog;

use super::{JobPath, visible_job};
use crate::App;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::Path;

/// The attempts of every delivery of the job (the newest 100, oldest first) and its webhook URL.
pub async fn webhook_log(
    State(app): State<App>,
    caller: Caller,
    Path(JobPath { id }): Path<JobPath>,
) -> Result<Json<WebhookLog>, ApiError> {
    let status = visible_job(&app, &caller, id).await?;
    let attempts = app.status.webhook_attempts(status.id).await?;
    let url = status.request.and_then(|r| r.webhook).map(|w| w.url);
    Ok(Json(WebhookLog { job_id: status.id, url, attempts }))
}
