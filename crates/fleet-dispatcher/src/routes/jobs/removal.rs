//! `DELETE /v1/jobs/{id}`: a job's images and record removed now, or, for a job not yet
//! finished, cancelled first and removed by the sweeper once it is final.

use aide::transform::TransformOperation;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fleet_core::JobStatus;

use super::{JobPath, cancel_unfinished, visible_job};
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
