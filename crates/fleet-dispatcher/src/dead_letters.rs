//! Marks dead-lettered jobs failed, so a job that keeps killing workers ends as `failed` with code
//! `dead_lettered` instead of sitting `queued`/`running` forever.
//!
//! RabbitMQ copies every dead-lettered message to the watch queue (see `fleet_queue::topology`);
//! every dispatcher consumes it (competing consumers). A message is acked only after its job's
//! record is final, so a Redis outage delays the marking but loses nothing. The dead-letter queue
//! proper keeps its copy for operators.

use std::time::Duration;

use chrono::Utc;
use fleet_core::{ErrorCode, JobError, JobStatus};
use fleet_queue::message::{DELIVERY_LIMIT_CODE, DeadLetterReason, dead_letter_reason, job_id};
use fleet_status::StatusError;
use futures::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use crate::App;

/// Wait before consuming again after the broker went away or Redis refused a write.
const RETRY_DELAY: Duration = Duration::from_secs(2);

/// Consumes the watch queue until `shutdown`, reconnecting when the broker goes away.
pub async fn watch(app: App, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            result = consume(&app) => {
                if let Err(message) = result {
                    tracing::warn!(error = %message, "dead-letter watch stopped; retrying");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RETRY_DELAY) => {}
        }
    }
}

async fn consume(app: &App) -> Result<(), String> {
    let queue = app.broker.topology().dead_letter_watch_queue.clone();
    let channel = app.broker.channel().await.map_err(|e| e.to_string())?;
    channel.basic_qos(16, BasicQosOptions::default()).await.map_err(|e| e.to_string())?;
    let tag = format!("dispatcher-dead-letters-{}", uuid::Uuid::now_v7().simple());
    let mut consumer = channel
        .basic_consume(&queue, &tag, BasicConsumeOptions::default(), FieldTable::default())
        .await
        .map_err(|e| format!("cannot consume {queue}: {e}"))?;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.map_err(|e| format!("consuming {queue}: {e}"))?;
        match mark_failed(app, &delivery).await {
            Ok(()) => delivery.ack(BasicAckOptions::default()).await.map_err(|e| e.to_string())?,
            Err(e) => {
                // Keep the message for a later try, and give Redis time to come back.
                let _ = delivery.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await;
                return Err(format!("cannot record a dead-lettered job: {e}"));
            }
        }
    }
    Err(format!("the broker closed the consumer of {queue}"))
}

/// Records the job behind a dead-lettered message as failed, unless it already ended.
async fn mark_failed(app: &App, delivery: &Delivery) -> Result<(), StatusError> {
    let id = job_id(&delivery.data, &delivery.properties);
    let reason = dead_letter_reason(&delivery.properties);
    let update = app.status.update(id, |s| {
        if s.state.is_terminal() {
            return Ok(());
        }
        let error = JobError::new(ErrorCode::DeadLettered, explain(reason.as_ref(), s));
        s.fail(error, Utc::now())
    });
    match update.await {
        Ok(status) => {
            let reason = reason.as_ref().map_or("unknown", |r| r.code.as_str());
            tracing::warn!(job = %id, state = status.state.as_str(), %reason, "job dead-lettered");
            Ok(())
        }
        // Its record expired or was never written (a job published straight to RabbitMQ).
        Err(StatusError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The failed job's message: what happened, from the worker's reason header or the broker's
/// `x-death` (a crash is never described as a clean stop, nor the other way round). For the
/// broker's delivery limit the record tells the two stories apart: a job no worker ever started
/// was only ever returned while it waited (lost connections, killed workers); a started one
/// ended its starts without finishing (its worker died, or gave up on it mid-job).
fn explain(reason: Option<&DeadLetterReason>, record: &JobStatus) -> String {
    const KEPT: &str = "the message is kept in the dead-letter queue";
    match reason {
        Some(r) if r.code == DELIVERY_LIMIT_CODE && record.attempts == 0 => format!(
            "never started: the broker's count of returns passed the delivery limit before any worker started \
             the job (connections lost or workers killed while it waited, copies that could not be handed back \
             afresh; from {}) ({}); {KEPT}",
            r.queue.as_deref().unwrap_or("its queue"),
            r.code
        ),
        Some(r) if r.code == DELIVERY_LIMIT_CODE => format!(
            "started {} time(s) and never finished: its workers died, lost their connection or gave up on it \
             mid-job (a drain deadline, an outage) until the broker's count of returns passed the delivery \
             limit; clean stops do not count ({}); {KEPT}",
            record.attempts, r.code
        ),
        Some(r) => format!("{} ({}); {KEPT}", r.detail, r.code),
        None => format!("RabbitMQ dead-lettered the job; {KEPT}"),
    }
}
