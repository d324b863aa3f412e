//! Uploads and status writes of finished generations, overlapped with the next generation.
//!
//! Storing a job's images (encode, S3 PUT, Redis write, ack) needs no engine, so the worker hands
//! it to a task and starts its next batch at once. A bounded number of jobs may be finishing at a
//! time, so a slow S3 slows generation down instead of piling images up in memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// Jobs that may be storing their images while the next batch generates.
const IN_FLIGHT: usize = 4;

/// The worker's finishing tasks.
#[derive(Debug, Clone)]
pub struct Finishing {
    tracker: TaskTracker,
    slots: Arc<Semaphore>,
}

impl Default for Finishing {
    fn default() -> Self {
        Self { tracker: TaskTracker::new(), slots: Arc::new(Semaphore::new(IN_FLIGHT)) }
    }
}

impl Finishing {
    /// Runs `work` in its own task once a slot is free (waiting for one here).
    pub async fn spawn<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // The semaphore is never closed, so acquiring only waits.
        let Ok(permit) = self.slots.clone().acquire_owned().await else { return };
        self.tracker.spawn(async move {
            work.await;
            drop(permit);
        });
    }

    /// Waits until every finishing task is done, at most `limit`; true when all are.
    pub async fn wait(&self, limit: Duration) -> bool {
        // A tracker is waited for once it is closed; reopened so a reconnecting worker can go on.
        self.tracker.close();
        let done = tokio::time::timeout(limit, self.tracker.wait()).await.is_ok();
        self.tracker.reopen();
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn at_most_in_flight_run_at_once_and_wait_sees_them_all_done() {
        let finishing = Finishing::default();
        let (running, peak, done) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        for _ in 0..IN_FLIGHT * 3 {
            let (running, peak, done) = (running.clone(), peak.clone(), done.clone());
            finishing
                .spawn(async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    done.fetch_add(1, Ordering::SeqCst);
                })
                .await;
        }
        assert!(finishing.wait(Duration::from_secs(5)).await);
        assert_eq!(done.load(Ordering::SeqCst), IN_FLIGHT * 3);
        assert_eq!(peak.load(Ordering::SeqCst), IN_FLIGHT, "the bound is reached and held");
        // Still usable after a wait (a reconnecting worker goes on with the same context).
        let again = done.clone();
        finishing
            .spawn(async move {
                again.fetch_add(1, Ordering::SeqCst);
            })
            .await;
        assert!(finishing.wait(Duration::from_secs(5)).await);
        assert_eq!(done.load(Ordering::SeqCst), IN_FLIGHT * 3 + 1);
    }

    #[tokio::test]
    async fn wait_gives_up_at_its_limit() {
        let finishing = Finishing::default();
        finishing.spawn(tokio::time::sleep(Duration::from_secs(30))).await;
        assert!(!finishing.wait(Duration::from_millis(50)).await);
    }
}
