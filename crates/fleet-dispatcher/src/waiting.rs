//! The `waiting_for` hint of a queued job: no live worker serves its model. The job is accepted
//! anyway (workers may scale from zero); the hint says why it is not starting.

use fleet_core::{JobState, JobStatus};
use fleet_status::{StatusError, StatusStore};

/// Sets `waiting_for` on each queued status whose model no live worker serves. A hint is an
/// extra: when Redis cannot give it, the answer goes out without it.
pub async fn explain(status: &StatusStore, jobs: &mut [&mut JobStatus]) {
    if let Err(e) = try_explain(status, jobs).await {
        tracing::warn!(error = %e, "no waiting_for hint");
    }
}

async fn try_explain(status: &StatusStore, jobs: &mut [&mut JobStatus]) -> Result<(), StatusError> {
    if !jobs.iter().any(|j| j.state == JobState::Queued) {
        return Ok(());
    }
    let workers = status.workers().await?;
    for job in jobs.iter_mut().filter(|j| j.state == JobState::Queued) {
        if workers.iter().any(|w| w.models.contains(&job.model)) {
            continue;
        }
        let last = status.model_last_served(&job.model).await?;
        job.waiting_for = Some(hint(&job.model, last));
    }
    Ok(())
}

fn hint(model: &str, last: Option<chrono::DateTime<chrono::Utc>>) -> String {
    match last {
        Some(t) => format!(
            "no worker serves model {model}; last seen {}",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        None => format!("no worker serves model {model}; none has been seen"),
    }
}
