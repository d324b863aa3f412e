//! One forward pass over a batch's jobs on the engine thread, with throttled progress writes
//! and cancels.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fleet_core::Progress;
use fleet_engine::{EngineError, GenerateRequest, Pipeline};
use image::RgbImage;

use super::{PROGRESS_EVERY, RunContext};
use crate::intake::Pending;
use crate::noop::EngineMode;

/// Runs the engine over every job's request in one pass, off the async runtime, writing
/// throttled progress for every job; the images come back in job order.
pub(super) async fn generate(
    ctx: &RunContext,
    pipeline: Arc<Pipeline>,
    requests: Vec<GenerateRequest>,
    jobs: &mut [Pending],
) -> Result<Vec<RgbImage>, EngineError> {
    let steps = requests.first().map_or(0, |r| r.steps);
    let (tx, mut rx) = tokio::sync::watch::channel((0usize, steps));
    let stats = ctx.stats.clone();
    // Set by the reporter when every job of the pass was cancelled; the engine stops at the next step.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_engine = stop.clone();
    let engine = ctx.engine;
    let work = ctx.engine_thread.run(move || {
        if engine == EngineMode::Noop {
            // Every step reported at once, through the same reporter as a real run.
            for step in 1..=steps {
                let _ = tx.send((step, steps));
            }
            return Ok(requests.iter().flat_map(crate::noop::fixed_images).collect());
        }
        let mut last = std::time::Duration::ZERO;
        pipeline
            .generate_batch_until(&requests, &mut |p| {
                stats.step_seconds.observe_duration(p.elapsed.saturating_sub(last));
                last = p.elapsed;
                // A closed receiver only means progress is no longer wanted.
                let _ = tx.send((p.step, p.total));
                if stop_engine.load(Ordering::Relaxed) { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
            })
            .map(|outputs| outputs.into_iter().flat_map(|out| out.images).collect())
    });
    let status = ctx.status.clone();
    let ids: Vec<(uuid::Uuid, u32)> = jobs.iter().map(|j| (j.id(), j.job.spec().num_images)).collect();
    // Cancelled when the engine is done, so that the reporter's throttling pause never delays the
    // job's completion (it used to add up to PROGRESS_EVERY to every job).
    let done = tokio_util::sync::CancellationToken::new();
    let reporter_done = done.clone();
    // Polled by this task alongside the engine (not spawned): a task per job would cost a
    // wake-up across threads at its start and end.
    let reporter = async move {
        // Whether a progress write was tried (it may have landed even if its reply did not).
        let mut wrote = false;
        // A write costs three Redis round trips (read, compare-and-set with its event, cancel
        // check), a third of a job's status traffic: not worth it for a job that finishes within
        // PROGRESS_EVERY (a 1-step image on a fast GPU). Steps reported meanwhile are not lost: the
        // watch channel keeps the latest for the loop below. A cancel request is noticed here too.
        tokio::select! {
            _ = tokio::time::sleep(PROGRESS_EVERY) => {}
            _ = reporter_done.cancelled() => return wrote,
        }
        while rx.changed().await.is_ok() {
            let (step, steps) = *rx.borrow_and_update();
            let mut cancelled = 0;
            wrote = true;
            for (id, images_total) in &ids {
                let progress =
                    Progress { step: step as u32, steps: steps as u32, images_done: 0, images_total: *images_total };
                if let Err(e) = status.set_progress(*id, progress).await {
                    tracing::debug!(job = %id, error = %e, "progress not recorded");
                }
                if status.is_cancel_requested(*id).await.unwrap_or(false) {
                    cancelled += 1;
                }
            }
            if cancelled == ids.len() {
                stop.store(true, Ordering::Relaxed);
            }
            tokio::select! {
                _ = tokio::time::sleep(PROGRESS_EVERY) => {}
                _ = reporter_done.cancelled() => break,
            }
        }
        wrote
    };
    let engine_done = async {
        let result = work.await;
        done.cancel();
        result
    };
    let (result, wrote) = tokio::join!(engine_done, reporter);
    if wrote {
        // The records moved on past the ones `begin` wrote: the final writes must read them.
        for job in jobs.iter_mut() {
            job.record = None;
        }
    }
    match result {
        Ok(Ok(images)) => Ok(images),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(EngineError::Device(format!("generation thread failed: {e}"))),
    }
}
