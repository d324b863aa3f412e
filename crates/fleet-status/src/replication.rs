//! Waiting for a replica behind Sentinel, and when to stop waiting.
//!
//! Redis replicates asynchronously: a write the primary acknowledged may be missing on the
//! replica Sentinel promotes. `WAIT 1 <ms>` after a write returns once a replica has it, which
//! closes that window for the writes that matter (a job's creation, its state changes, the
//! "published" mark). Progress writes do not wait: losing one only shows older progress.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Whether writes wait for a replica now.
#[derive(Debug, Default)]
pub(crate) struct ReplicaWait {
    paused_until: Mutex<Option<Instant>>,
}

impl ReplicaWait {
    /// Longest one write waits for a replica.
    pub(crate) const TIMEOUT: Duration = Duration::from_millis(500);
    /// How long writes stop waiting after a replica did not answer in time.
    pub(crate) const PAUSE: Duration = Duration::from_secs(5);

    pub(crate) fn paused(&self) -> bool {
        let until = *self.paused_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        until.is_some_and(|t| Instant::now() < t)
    }

    pub(crate) fn pause(&self) {
        *self.paused_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(Instant::now() + Self::PAUSE);
    }
}
