//! The body of `POST /v1/jobs`, read by axum's JSON extractor: it refuses a body that is not sent
//! as JSON (415), is over `http.max_body_bytes` (413) or is not JSON at all (400, with the line and
//! column), each as the API's error envelope. The text is kept as sent, for the job parser that
//! names the failing field.

use aide::OperationInput;
use aide::generate::GenContext;
use aide::openapi::Operation;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use fleet_core::{ErrorCode, JobSpec};
use schemars::JsonSchema;
use serde_json::value::RawValue;

use crate::App;
use crate::error::{ApiError, innermost};

/// A syntactically valid JSON body: one job object, or an array of them.
#[derive(Debug)]
pub struct JobsBody(Box<RawValue>);

impl JobsBody {
    pub fn text(&self) -> &str {
        self.0.get()
    }
}

impl FromRequest<App> for JobsBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, app: &App) -> Result<Self, ApiError> {
        match axum::Json::<Box<RawValue>>::from_request(request, app).await {
            Ok(axum::Json(raw)) => Ok(JobsBody(raw)),
            Err(rejection) => Err(refused(app, &rejection, "jobs", ErrorCode::InvalidSpec)),
        }
    }
}

/// The error for a JSON body axum refused: 415 and 413 as such, anything else `unreadable` (with
/// the line and column of a syntax error). `what` names the body's content in the 415's message.
pub(super) fn refused(app: &App, rejection: &JsonRejection, what: &str, unreadable: ErrorCode) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("send {what} as JSON, with `Content-Type: application/json`"),
        ),
        _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let max = app.config.http.max_body_bytes;
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("request body is larger than {max} bytes (http.max_body_bytes)"),
            )
        }
        JsonRejection::JsonSyntaxError(e) => ApiError::new(unreadable, format!("body: {}", innermost(e))),
        other => ApiError::new(unreadable, format!("could not read the request body: {}", other.body_text())),
    }
}

/// One job, or an array of up to `http.max_jobs_per_request` jobs.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)] // the schema of what `JobsBody` holds; the body is parsed job by job
enum JobSubmission {
    One(Box<JobSpec>),
    Many(Vec<JobSpec>),
}

impl OperationInput for JobsBody {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        axum::Json::<JobSubmission>::operation_input(ctx, operation);
    }
}
