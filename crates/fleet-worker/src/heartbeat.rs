//! Liveness: a heartbeat in Redis every `worker.heartbeat_interval_secs`, with the current batch and counters.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleet_status::{BatchInfo, StatusStore, WorkerHeartbeat};
use tokio_util::sync::CancellationToken;

use crate::runner::Stats;

/// What the heartbeat reports, shared with the consume loop.
#[derive(Debug)]
pub struct Liveness {
    pub id: String,
    pub host: String,
    pub models: Vec<String>,
    pub device: String,
    pub started_at: DateTime<Utc>,
    pub stats: Arc<Stats>,
    pub current_batch: Mutex<Option<BatchInfo>>,
}

impl Liveness {
    fn snapshot(&self) -> WorkerHeartbeat {
        WorkerHeartbeat {
            id: self.id.clone(),
            host: self.host.clone(),
            models: self.models.clone(),
            device: self.device.clone(),
            current_batch: self.current_batch.lock().ok().and_then(|b| b.clone()),
            jobs_done: self.stats.jobs_done.load(Ordering::Relaxed),
            images_done: self.stats.images_done.load(Ordering::Relaxed),
            jobs_failed: self.stats.jobs_failed.load(Ordering::Relaxed),
            forward_passes: self.stats.forward_passes.load(Ordering::Relaxed),
            forward_images: self.stats.forward_images_total.load(Ordering::Relaxed),
            started_at: self.started_at,
            last_seen: Utc::now(),
        }
    }

    pub fn set_batch(&self, batch: Option<BatchInfo>) {
        if let Ok(mut current) = self.current_batch.lock() {
            *current = batch;
        }
    }
}

/// Beats until `stop` is cancelled. Redis outages are logged and survived: the next beat retries.
pub async fn run(status: Arc<StatusStore>, liveness: Arc<Liveness>, every: Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {
                if let Err(e) = status.heartbeat(&liveness.snapshot()).await {
                    tracing::warn!(error = %e, "heartbeat not recorded");
                }
            }
        }
    }
}
