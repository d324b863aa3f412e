//! The webhook outbox and the delivery logs. Deliveries are pushed onto the outbox by the update
//! script (see [`crate::scripts::UPDATE`]); a relay moves them to RabbitMQ through `relaying`:
//! [`StatusStore::claim_webhook`] takes the oldest entry into `relaying`, the relay publishes it
//! and waits for the broker's confirm, then [`StatusStore::relayed_webhook`] removes it. An entry
//! left in `relaying` by a relay that died is put back by [`StatusStore::requeue_relaying_webhooks`].

use fleet_core::webhook::WebhookAttempt;
use uuid::Uuid;

use super::{StatusStore, from_json, to_json};
use crate::error::StatusError;

/// Attempts a job's delivery log keeps (the newest).
pub const MAX_LOGGED_ATTEMPTS: isize = 100;

impl StatusStore {
    /// Moves the oldest outbox entry into `relaying` and returns it (the JSON text as written);
    /// `None` when the outbox is empty. Never blocks (the connection is shared).
    pub async fn claim_webhook(&self) -> Result<Option<String>, StatusError> {
        let (outbox, relaying) = (self.keys.webhook_outbox(), self.keys.webhook_relaying());
        let query = redis::cmd("LMOVE").arg(&outbox).arg(&relaying).arg("RIGHT").arg("LEFT").clone();
        let mut con = self.conn.clone();
        self.call(&outbox, async move { query.query_async(&mut con).await }).await
    }

    /// Removes an entry from `relaying` once RabbitMQ has confirmed it.
    pub async fn relayed_webhook(&self, entry: &str) -> Result<(), StatusError> {
        let relaying = self.keys.webhook_relaying();
        let query = redis::cmd("LREM").arg(&relaying).arg(1).arg(entry).clone();
        let mut con = self.conn.clone();
        self.call(&relaying, async move { query.query_async::<i64>(&mut con).await }).await.map(drop)
    }

    /// Puts every entry of `relaying` back at the outbox's sending end (a relay starting after
    /// one died mid-publish); returns how many. An entry whose publish was in fact confirmed is
    /// sent again, under the same `webhook-id`.
    pub async fn requeue_relaying_webhooks(&self) -> Result<usize, StatusError> {
        let (outbox, relaying) = (self.keys.webhook_outbox(), self.keys.webhook_relaying());
        let mut moved = 0;
        loop {
            let query = redis::cmd("LMOVE").arg(&relaying).arg(&outbox).arg("RIGHT").arg("RIGHT").clone();
            let mut con = self.conn.clone();
            let entry: Option<String> = self.call(&relaying, async move { query.query_async(&mut con).await }).await?;
            if entry.is_none() {
                return Ok(moved);
            }
            moved += 1;
        }
    }

    /// Deliveries waiting in the outbox and in `relaying`.
    pub async fn webhook_backlog(&self) -> Result<(u64, u64), StatusError> {
        let (outbox, relaying) = (self.keys.webhook_outbox(), self.keys.webhook_relaying());
        let mut pipe = redis::pipe();
        pipe.llen(&outbox).llen(&relaying);
        let mut con = self.conn.clone();
        self.call(&outbox, async move { pipe.query_async(&mut con).await }).await
    }

    /// Appends one attempt to the job's delivery log (the newest [`MAX_LOGGED_ATTEMPTS`] kept,
    /// for as long as a status record).
    pub async fn log_webhook_attempt(&self, job: Uuid, attempt: &WebhookAttempt) -> Result<(), StatusError> {
        let key = self.keys.webhook_log(job);
        let line = to_json(&key, attempt)?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .rpush(&key, line)
            .ignore()
            .ltrim(&key, -MAX_LOGGED_ATTEMPTS, -1)
            .ignore()
            .expire(&key, i64::try_from(self.status_ttl).unwrap_or(i64::MAX))
            .ignore();
        let mut con = self.conn.clone();
        self.call(&key, async move { pipe.query_async::<()>(&mut con).await }).await
    }

    /// The job's delivery log, oldest first.
    pub async fn webhook_attempts(&self, job: Uuid) -> Result<Vec<WebhookAttempt>, StatusError> {
        let key = self.keys.webhook_log(job);
        let query = redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).clone();
        let mut con = self.conn.clone();
        let lines: Vec<String> = self.call(&key, async move { query.query_async(&mut con).await }).await?;
        lines.iter().map(|line| from_json(&key, line)).collect()
    }
}
