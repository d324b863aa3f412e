//! Uploads and status writes of finished generations, overlapped with the next generation.
//!
//! Storing a job's images (encode, S3 PUT, Redis write, ack) needs no engine, so the worker hands
//! it to a task and starts its next batch at once. The images waiting to be stored are bounded by
//! their size in pixels, so a slow S3 slows generation down instead of piling images up in memory.
//! The bound is on pixels, not on jobs: a fixed number of jobs either lets large images pile up
//! or, for small ones, caps the worker at that many S3 and Redis round trips at a time. The number of jobs is bounded anyway: each holds an unacked message, and
//! the consumer's prefetch limits those.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// Pixels of images that may be waiting to be stored while the next batch generates: 32
/// megapixels, 96 MiB as 8-bit RGB — eight single 1024² images, or two 4-image jobs.
pub const PIXEL_BUDGET: u32 = 32 * 1024 * 1024;

/// The worker's finishing tasks.
#[derive(Debug, Clone)]
pub struct Finishing {
    tracker: TaskTracker,
    slots: Arc<Semaphore>,
}

impl Default for Finishing {
    fn default() -> Self {
        Self { tracker: TaskTracker::new(), slots: Arc::new(Semaphore::new(PIXEL_BUDGET as usize)) }
    }
}

impl Finishing {
    /// Runs `work`, which holds images of `pixels` pixels in all, in its own task once that much
    /// of the budget is free (waiting for it here). Work larger than the whole budget runs alone.
    pub async fn spawn<F>(&self, pixels: u64, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let need = u32::try_from(pixels).unwrap_or(u32::MAX).clamp(1, PIXEL_BUDGET);
        // The semaphore is never closed, so acquiring only waits.
        let Ok(permit) = self.slots.clone().acquire_many_owned(need).await else { return };
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

    /// Spawns `jobs` pieces of work of `pixels` each, every one running 50 ms; returns how many
    /// ran at once at the most, once all are done.
    async fn peak_of(finishing: &Finishing, jobs: usize, pixels: u64) -> usize {
        let (running, peak, done) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        for _ in 0..jobs {
            let (running, peak, done) = (running.clone(), peak.clone(), done.clone());
            finishing
                .spawn(pixels, async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    done.fetch_add(1, Ordering::SeqCst);
                })
                .await;
        }
        assert!(finishing.wait(Duration::from_secs(5)).await);
        assert_eq!(done.load(Ordering::SeqCst), jobs, "wait sees them all done");
        peak.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn the_pixel_budget_bounds_large_images_and_lets_small_ones_overlap() {
        let finishing = Finishing::default();
        let budget = u64::from(PIXEL_BUDGET);
        assert_eq!(peak_of(&finishing, 12, budget / 4).await, 4, "four quarters of the budget at once, no more");
        // Still usable after a wait (a reconnecting worker goes on with the same context).
        assert_eq!(peak_of(&finishing, 3, budget * 2).await, 1, "work over the whole budget runs alone");
        assert_eq!(peak_of(&finishing, 3, 0).await, 3, "work without images takes a share all the same");
    }

    #[tokio::test]
    async fn many_jobs_of_small_images_store_at_once() {
        // 40 jobs of 64² images can only all pass this barrier if none waits for another's slot.
        let finishing = Finishing::default();
        let barrier = Arc::new(tokio::sync::Barrier::new(40));
        let all = async {
            for _ in 0..40 {
                let barrier = barrier.clone();
                finishing
                    .spawn(64 * 64, async move {
                        barrier.wait().await;
                    })
                    .await;
            }
            finishing.wait(Duration::from_secs(5)).await
        };
        assert!(tokio::time::timeout(Duration::from_secs(10), all).await.unwrap_or(false));
    }

    #[tokio::test]
    async fn wait_gives_up_at_its_limit() {
        let finishing = Finishing::default();
        finishing.spawn(1024 * 1024, tokio::time::sleep(Duration::from_secs(30))).await;
        assert!(!finishing.wait(Duration::from_millis(50)).await);
    }
}
