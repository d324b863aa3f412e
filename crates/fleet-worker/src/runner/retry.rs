//! Transient status and storage failures, retried by the fleet's one backoff policy.

use std::future::Future;
use std::time::Duration;

use fleet_core::backoff::{self, Retryable as _};
use fleet_status::StatusError;

use super::TRANSIENT_BUDGET;

/// Retries an operation while its error is transient, with backoff, for at most [`TRANSIENT_BUDGET`].
pub(crate) async fn retry<T, E, F, Fut>(op: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Transient + std::fmt::Display,
{
    op.retry(backoff::policy(Duration::from_millis(200), Duration::from_secs(5), Some(TRANSIENT_BUDGET)))
        .sleep(tokio::time::sleep)
        .when(E::is_transient)
        .notify(|e, delay| {
            if e.is_outage() {
                tracing::warn!(error = %e, ?delay, "service unavailable; retrying");
            } else {
                tracing::debug!(error = %e, ?delay, "transient failure; retrying");
            }
        })
        .await
}

/// Errors worth retrying.
pub trait Transient {
    fn is_transient(&self) -> bool;
    /// Whether the error is a service out of reach (logged as a warning on every retry), rather
    /// than the ordinary contention a retry settles (a conflicting status write).
    fn is_outage(&self) -> bool {
        self.is_transient()
    }
}

impl Transient for StatusError {
    fn is_transient(&self) -> bool {
        matches!(self, StatusError::Unavailable { .. } | StatusError::Conflict(_))
    }
    fn is_outage(&self) -> bool {
        matches!(self, StatusError::Unavailable { .. })
    }
}

impl Transient for fleet_storage::StorageError {
    fn is_transient(&self) -> bool {
        fleet_storage::StorageError::is_transient(self)
    }
}
