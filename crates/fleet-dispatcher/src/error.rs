//! The one place where failures become HTTP responses.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fleet_core::{ErrorCode, FieldError, ValidationErrors};
use schemars::JsonSchema;
use serde::Serialize;

/// What went wrong, as the API returns it inside [`ErrorBody`]: `{"error": {"code", "message",
/// "retryable", "fields", "job_id"}}`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub retryable: bool,
    /// Field errors of an `invalid_spec`, with their paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
    /// The existing job a `conflict` is about (an idempotency key already used for another request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<uuid::Uuid>,
    /// Seconds after which a retry may succeed (sent as `Retry-After`).
    #[serde(skip)]
    pub retry_after_secs: Option<u64>,
}

/// The body of every error response: 4xx and 5xx alike.
#[derive(Serialize, JsonSchema)]
#[schemars(rename = "Error")]
pub struct ErrorBody<'a> {
    pub error: &'a ApiError,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            retryable: code.retryable(),
            fields: Vec::new(),
            job_id: None,
            retry_after_secs: None,
        }
    }

    pub fn with_retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after_secs = Some(secs);
        self
    }

    /// Field errors, each path prefixed (e.g. `jobs[3].`) when the request held several jobs.
    pub fn invalid(prefix: &str, errors: Vec<FieldError>) -> ApiError {
        let fields: Vec<FieldError> = errors
            .into_iter()
            .map(|e| FieldError { field: format!("{prefix}{}", e.field), message: e.message })
            .collect();
        let summary = fields.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        ApiError { fields, ..ApiError::new(ErrorCode::InvalidSpec, format!("invalid job: {summary}")) }
    }

    pub fn not_found(what: impl std::fmt::Display) -> ApiError {
        ApiError::new(ErrorCode::NotFound, format!("{what} not found"))
    }
}

/// The words of the error at the bottom of `error`'s chain: serde's own (`EOF while parsing an
/// object at line 1 column 27`) without the preambles of the layers above.
pub(crate) fn innermost(error: &dyn std::error::Error) -> String {
    let mut inner = error;
    while let Some(source) = inner.source() {
        inner = source;
    }
    inner.to_string()
}

impl From<ValidationErrors> for ApiError {
    fn from(errors: ValidationErrors) -> ApiError {
        ApiError::invalid("", errors.0)
    }
}

impl From<fleet_core::ParseError> for ApiError {
    /// A job that is the whole request body: its line and column are the body's.
    fn from(err: fleet_core::ParseError) -> ApiError {
        let message = format!("{} (line {}, column {})", err.message, err.line, err.column);
        ApiError::invalid("", vec![FieldError { field: err.field, message }])
    }
}

impl ApiError {
    /// A backing service's error: its own code and message; retryable ones suggest a retry in 5 s.
    fn from_service(code: ErrorCode, message: String) -> ApiError {
        let api = ApiError::new(code, message);
        if api.retryable { api.with_retry_after(5) } else { api }
    }
}

/// Errors of the service crates, which each know their `ErrorCode`.
macro_rules! from_service_error {
    ($($error:ty),+) => {$(
        impl From<$error> for ApiError {
            fn from(err: $error) -> ApiError {
                ApiError::from_service(err.code(), err.to_string())
            }
        }
    )+};
}

from_service_error!(
    fleet_queue::QueueError,
    fleet_status::StatusError,
    fleet_storage::StorageError,
    crate::bulk_runs::BulkRunsError,
    crate::lifecycle::RemoveError
);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(code = %self.code, message = %self.message, "request failed");
        }
        let retry_after = self.retry_after_secs;
        let mut response = (status, Json(ErrorBody { error: &self })).into_response();
        if let Some(value) = retry_after.and_then(|secs| HeaderValue::from_str(&secs.to_string()).ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}
