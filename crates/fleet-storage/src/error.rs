//! The one error type of the crate and its mapping onto the fleet's stable error codes.

use std::path::PathBuf;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use fleet_core::ErrorCode;

/// A boxed error from the S3 client, kept as the `source` of [`StorageError::Unavailable`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a storage operation failed.
///
/// Messages name the operation, endpoint, bucket and key; they never contain credentials.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The store could not be reached, did not answer in time, or answered with a server-side
    /// error (5xx, throttling). Retrying later, with backoff, may help.
    #[error("S3 unavailable: {op} {} at {endpoint}: {detail}", target(.bucket, .key.as_deref()))]
    Unavailable {
        /// Endpoint URL (or `AWS S3 (<region>)`).
        endpoint: String,
        /// Bucket the call was for.
        bucket: String,
        /// The S3 operation, e.g. `PutObject`.
        op: &'static str,
        /// The object key, when the call was about one object.
        key: Option<String>,
        /// The client's explanation, with its cause chain.
        detail: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The store refused our identity (403, bad or missing credentials, signature mismatch).
    /// Retrying does not help until the configuration changes.
    #[error("S3 access denied: {op} {} at {endpoint}: {detail}", target(.bucket, .key.as_deref()))]
    Denied {
        /// Endpoint URL (or `AWS S3 (<region>)`).
        endpoint: String,
        /// Bucket the call was for.
        bucket: String,
        /// The S3 operation.
        op: &'static str,
        /// The object key, when the call was about one object.
        key: Option<String>,
        /// The server's error code and message.
        detail: String,
    },
    /// The configured bucket does not exist.
    #[error("S3 bucket `{bucket}` does not exist at {endpoint}")]
    NoSuchBucket {
        /// Endpoint URL (or `AWS S3 (<region>)`).
        endpoint: String,
        /// The missing bucket.
        bucket: String,
    },
    /// The request could not be built or was refused for a reason other than access (no
    /// credentials found by the AWS chain, a 4xx such as `EntityTooLarge`). Not transient.
    #[error("S3 request failed: {op} {} at {endpoint}: {detail}", target(.bucket, .key.as_deref()))]
    Rejected {
        /// Endpoint URL (or `AWS S3 (<region>)`).
        endpoint: String,
        /// Bucket the call was for.
        bucket: String,
        /// The S3 operation.
        op: &'static str,
        /// The object key, when the call was about one object.
        key: Option<String>,
        /// HTTP status, when the server answered.
        status: Option<u16>,
        /// What went wrong.
        detail: String,
    },
    /// A key this store does not accept (empty segments, `..`, control characters, or a name the
    /// local store reserves for its own files).
    #[error("invalid object key `{key}`: {reason}")]
    InvalidKey {
        /// The key as given (control characters escaped by `Debug` where printed).
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A setting the store cannot work with (e.g. a presign TTL above S3's 7-day limit).
    #[error("storage configuration: {0}")]
    InvalidConfig(String),
    /// A local-directory operation failed.
    #[error("local store: {op} {}: {source}", .path.display())]
    Io {
        /// What we were doing (`write`, `read`, `rename`, …).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// The store failed the check a process makes at start ([`crate::ImageStore::connect`]): the
/// error, then the configuration keys to look at.
#[derive(Debug, thiserror::Error)]
#[error("{error} ({remedy})")]
pub struct StartupCheckError {
    /// What the check met (it names endpoint, bucket and the store's answer).
    pub error: StorageError,
    /// What to change.
    pub remedy: &'static str,
}

impl From<StorageError> for StartupCheckError {
    fn from(error: StorageError) -> Self {
        let remedy = match &error {
            StorageError::Unavailable { .. } => {
                "is the S3 server at s3.endpoint running? scripts/services.sh starts one on 127.0.0.1:8333"
            }
            StorageError::Denied { .. } => "check s3.access_key_id and s3.secret_access_key",
            StorageError::NoSuchBucket { .. } => "create the bucket, or set s3.bucket to one that exists",
            StorageError::Rejected { .. } => "check s3.endpoint, s3.region and the credentials",
            StorageError::InvalidKey { .. } | StorageError::InvalidConfig(_) => "check the s3.* settings",
            StorageError::Io { .. } => "check s3.local_dir: it must be a writable directory",
        };
        StartupCheckError { error, remedy }
    }
}

impl StorageError {
    /// The stable error code a failed job or API response carries for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            StorageError::Unavailable { .. }
            | StorageError::Denied { .. }
            | StorageError::NoSuchBucket { .. }
            | StorageError::Rejected { .. }
            | StorageError::Io { .. } => ErrorCode::StorageUnavailable,
            // Our own keys and settings are wrong: a bug or a bad deployment, not the job's fault
            // and not the store's.
            StorageError::InvalidKey { .. } | StorageError::InvalidConfig(_) => ErrorCode::Internal,
        }
    }

    /// Whether the same call may succeed if retried after a backoff (the worker retries these
    /// before failing the job; everything else fails at once).
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::Unavailable { .. } => true,
            StorageError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> StorageError {
        StorageError::Io { op, path: path.into(), source }
    }
}

/// `outer: cause: root cause`, from the `Display` of each error in the chain (the SDK's own
/// `DisplayErrorContext` appends a `Debug` dump, too noisy for logs and job errors).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        // Some layers repeat their cause's text; say it once.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

fn target(bucket: &str, key: Option<&str>) -> String {
    match key {
        Some(key) => format!("`{key}` in bucket `{bucket}`"),
        None => format!("bucket `{bucket}`"),
    }
}

/// Where an S3 call went, for error messages.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub endpoint: String,
    pub bucket: String,
}

/// What a failed S3 call means for the caller.
pub(crate) enum Failure {
    /// The object (or, for HeadBucket, the bucket) is not there; the server's words.
    Missing(String),
    /// Anything else, as the error to return.
    Error(StorageError),
}

impl Ctx {
    /// Sorts an SDK error into the crate's error kinds.
    ///
    /// Transport failures, timeouts, unparseable answers, 5xx and throttling are transient;
    /// 403 and credential problems are `Denied`; 404 is reported as [`Failure::Missing`] unless
    /// the server says the bucket is missing.
    pub(crate) fn classify<E>(&self, op: &'static str, key: Option<&str>, err: SdkError<E>) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let key = key.map(str::to_owned);
        let (endpoint, bucket) = (self.endpoint.clone(), self.bucket.clone());
        let unavailable = |detail: String, source: BoxError| StorageError::Unavailable {
            endpoint: endpoint.clone(),
            bucket: bucket.clone(),
            op,
            key: key.clone(),
            detail,
            source,
        };
        match &err {
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
                let detail = error_chain(&err);
                Failure::Error(unavailable(detail, Box::new(err)))
            }
            SdkError::ConstructionFailure(_) => {
                // Before anything was sent: in practice the credentials chain found nothing usable.
                Failure::Error(StorageError::Rejected {
                    endpoint,
                    bucket,
                    op,
                    key,
                    status: None,
                    detail: error_chain(&err),
                })
            }
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                let code = err.code().unwrap_or("").to_owned();
                let message = err.message().unwrap_or("").to_owned();
                let detail = match (code.is_empty(), message.is_empty()) {
                    (true, _) => format!("HTTP {status}"),
                    (false, true) => format!("HTTP {status} {code}"),
                    (false, false) => format!("HTTP {status} {code}: {message}"),
                };
                if code == "NoSuchBucket" {
                    Failure::Error(StorageError::NoSuchBucket { endpoint, bucket })
                } else if status == 404 {
                    Failure::Missing(detail)
                } else if status >= 500
                    || status == 429
                    || status == 408
                    || matches!(code.as_str(), "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable")
                {
                    Failure::Error(unavailable(detail, Box::new(err)))
                } else if status == 401
                    || status == 403
                    || matches!(
                        code.as_str(),
                        "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken"
                    )
                {
                    Failure::Error(StorageError::Denied { endpoint, bucket, op, key, detail })
                } else {
                    Failure::Error(StorageError::Rejected { endpoint, bucket, op, key, status: Some(status), detail })
                }
            }
            _ => {
                // `SdkError` is non-exhaustive; an unknown kind is safest treated as transient.
                let detail = error_chain(&err);
                Failure::Error(unavailable(detail, Box::new(err)))
            }
        }
    }

    /// Like [`Ctx::classify`], for calls where a 404 is an error too (e.g. PutObject).
    pub(crate) fn error<E>(&self, op: &'static str, key: Option<&str>, err: SdkError<E>) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match self.classify(op, key, err) {
            Failure::Error(e) => e,
            // A 404 where none is expected (e.g. `NoSuchUpload` when a multipart upload vanished).
            Failure::Missing(detail) => StorageError::Rejected {
                endpoint: self.endpoint.clone(),
                bucket: self.bucket.clone(),
                op,
                key: key.map(str::to_owned),
                status: Some(404),
                detail,
            },
        }
    }
}
