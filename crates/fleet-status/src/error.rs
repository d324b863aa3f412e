//! The one error type of the crate and its mapping onto the fleet's stable error codes.

use fleet_core::ErrorCode;
use fleet_core::status::IllegalTransition;
use redis::{ErrorKind, RedisError};
use uuid::Uuid;

/// Why a status operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Redis could not be reached, refused us, or did not answer in time. Retrying later may help.
    #[error("Redis at {url} is unavailable: {source}")]
    Unavailable {
        /// The Redis URL with any password masked.
        url: String,
        /// What the client reported (connection refused, timed out, dropped, loading, …).
        #[source]
        source: RedisError,
    },
    /// A stored value is not what this crate writes (bad JSON, wrong Redis type, a script bug).
    #[error("unexpected data at Redis key {key}: {message}")]
    Corrupt {
        /// The key (or channel) the bad value came from.
        key: String,
        /// What was wrong with it.
        message: String,
    },
    /// The requested change breaks the job state machine; nothing was written.
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    /// No job with this id (never created, or its status has expired).
    #[error("job {0} not found")]
    NotFound(Uuid),
    /// Too many concurrent writers kept changing the job while we tried to update it,
    /// or a create reused an id that another tenant's job already has.
    #[error("job {0}: conflicting concurrent writes, try again")]
    Conflict(Uuid),
    /// Redis keeps nothing across a restart and the configuration does not allow that.
    #[error(
        "Redis at {url} keeps nothing across a restart ({evidence}), so a restart would lose every job's status \
         and idempotency key: turn persistence on in Redis (`appendonly yes`: `CONFIG SET appendonly yes` and in \
         redis.conf), or set redis.allow_volatile = true to run anyway"
    )]
    Volatile {
        /// The Redis URL with any password masked.
        url: String,
        /// What showed it (`appendonly no, save ""`, or what `INFO persistence` said).
        evidence: String,
    },
    /// A `list` cursor that this crate did not hand out.
    #[error("invalid list cursor `{0}`")]
    InvalidCursor(String),
    /// A usage read over a range this crate does not read at once.
    #[error("invalid usage range: {0}")]
    InvalidRange(String),
}

impl StatusError {
    /// The stable error code an API response for this error carries.
    pub fn code(&self) -> ErrorCode {
        match self {
            StatusError::Unavailable { .. } | StatusError::Volatile { .. } => ErrorCode::StatusUnavailable,
            StatusError::NotFound(_) => ErrorCode::NotFound,
            StatusError::Illegal(_) | StatusError::Conflict(_) => ErrorCode::Conflict,
            StatusError::Corrupt { .. } => ErrorCode::Internal,
            StatusError::InvalidCursor(_) | StatusError::InvalidRange(_) => ErrorCode::InvalidSpec,
        }
    }

    /// Sorts a Redis error into "Redis is not usable right now" (retryable) or
    /// "Redis answered, but not with what we expect" (a bug or foreign data at our keys).
    pub(crate) fn from_redis(url: &str, key: &str, source: RedisError) -> StatusError {
        if is_availability_error(&source) {
            StatusError::Unavailable { url: url.to_owned(), source }
        } else {
            StatusError::Corrupt { key: key.to_owned(), message: source.to_string() }
        }
    }

    /// An `Unavailable` error for a call that got no answer within `limit`.
    pub(crate) fn timed_out(url: &str, limit: std::time::Duration) -> StatusError {
        let io =
            std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {:.1}s", limit.as_secs_f64()));
        StatusError::Unavailable { url: url.to_owned(), source: RedisError::from(io) }
    }

    /// An `Unavailable` error for a connection that closed under us (e.g. an event subscription).
    pub(crate) fn closed(url: &str, what: &str) -> StatusError {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, what.to_owned());
        StatusError::Unavailable { url: url.to_owned(), source: RedisError::from(io) }
    }
}

/// Errors that say nothing about our data, only that Redis cannot serve us now: I/O failures,
/// a server that is loading, read-only, out of memory or refusing our credentials.
pub(crate) fn is_availability_error(e: &RedisError) -> bool {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return true;
    }
    if matches!(
        e.kind(),
        ErrorKind::BusyLoadingError
            | ErrorKind::TryAgain
            | ErrorKind::ClusterDown
            | ErrorKind::MasterDown
            // The sentinels name no primary that is up (it is down, or a failover is under way).
            | ErrorKind::MasterNameNotFoundBySentinel
            | ErrorKind::ReadOnly
            | ErrorKind::AuthenticationFailed
            | ErrorKind::InvalidClientConfig
    ) {
        return true;
    }
    // Server error codes that are about the server's condition, not about our request.
    matches!(e.code(), Some("OOM" | "BUSY" | "NOAUTH" | "WRONGPASS" | "NOPERM" | "MISCONF"))
        || e.is_unrecoverable_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinels_without_a_primary_mean_unavailable_not_corrupt() {
        let e =
            RedisError::from((ErrorKind::MasterNameNotFoundBySentinel, "Master with given name not found in sentinel"));
        let sorted = StatusError::from_redis("redis://127.0.0.1:6379/0", "fleet:job:x", e);
        assert!(matches!(sorted, StatusError::Unavailable { .. }), "{sorted:?}");
        assert_eq!(sorted.code(), ErrorCode::StatusUnavailable);
    }
}
