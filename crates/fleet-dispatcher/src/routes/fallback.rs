//! What the router answers itself, in the API's error envelope like every other refusal: a path
//! no route has (404), a method the route does not have (405, with axum's `Allow` header), and
//! headers over [`MAX_HEADER_BYTES`] (431).

use axum::extract::Request;
use axum::http::{Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fleet_core::ErrorCode;

use crate::error::ApiError;

/// The most header bytes (names and values) a request may carry. Far above what a client of this
/// API sends (a key, a trace id, content headers); heads hyper itself would refuse are answered
/// before it reads them (`request_head.rs`).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The fallback: no route has this path.
pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

/// A route has this path, but not this method; axum adds the `Allow` header.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {} (see the Allow header)", uri.path()),
    )
}

/// Refuses a request whose headers exceed [`MAX_HEADER_BYTES`] before anything reads them.
pub async fn limit_headers(request: Request, next: Next) -> Response {
    let bytes: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    if bytes > MAX_HEADER_BYTES {
        let message = format!("the request's headers hold {bytes} bytes; at most {MAX_HEADER_BYTES} are accepted");
        return ApiError::new(ErrorCode::HeadersTooLarge, message).into_response();
    }
    next.run(request).await
}
