//! Axum's path and query extractors with the API's error envelope as their rejection.
//!
//! Axum answers a path or query value it cannot read (`/v1/jobs/not-a-uuid`, `?limit=x`) with a
//! plain-text 400; these wrappers hand the same rejection to [`ApiError`], so the body is the
//! JSON envelope every other error has. The OpenAPI description is axum's extractors'.

use aide::OperationInput;
use aide::generate::GenContext;
use aide::openapi::Operation;
use axum::extract::FromRequestParts;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::request::Parts;
use fleet_core::ErrorCode;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Path parameters, deserialised into `T` (a struct naming each `{param}` of the route).
#[derive(Debug, Clone, Copy)]
pub struct Path<T>(pub T);

/// The query string, deserialised into `T`.
#[derive(Debug, Clone, Copy)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(value) = axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(value))
    }
}

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(value) = axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}

impl<T: JsonSchema> OperationInput for Path<T> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        axum::extract::Path::<T>::operation_input(ctx, operation);
    }
}

impl<T: JsonSchema> OperationInput for Query<T> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        axum::extract::Query::<T>::operation_input(ctx, operation);
    }
}

/// A rejection's own status decides: a value the client sent wrong is `invalid_request`; the
/// rest (a route whose parameters do not fit its extractor) is a bug here.
fn rejected(status: axum::http::StatusCode, message: String) -> ApiError {
    let code = if status.is_client_error() { ErrorCode::InvalidRequest } else { ErrorCode::Internal };
    ApiError::new(code, message)
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        let what = match &rejection {
            PathRejection::FailedToDeserializePathParams(e) => e.kind().to_string(),
            other => other.body_text(),
        };
        rejected(rejection.status(), format!("bad path: {what}"))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        let what = match &rejection {
            // The error below axum's preamble names the parameter: `limit: invalid digit found in string`.
            QueryRejection::FailedToDeserializeQueryString(e) => {
                std::error::Error::source(e).map_or_else(|| e.body_text(), ToString::to_string)
            }
            other => other.body_text(),
        };
        rejected(rejection.status(), format!("bad query string: {what}"))
    }
}
