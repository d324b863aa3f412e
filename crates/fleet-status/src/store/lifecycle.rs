//! The Redis side of a job's end of life: the expiry set a finished job joins (written by the
//! create and update scripts, see [`crate::scripts::UPDATE`]), claiming due jobs for a sweeper
//! under a lease, asking for a job's removal, and removing its record.
//!
//! Removing a job's images is the caller's part (the dispatcher's sweeper and `DELETE`), done
//! between [`StatusStore::claim_expired`] and [`StatusStore::remove`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use fleet_core::JobStatus;
use redis::ScriptInvocation;
use uuid::Uuid;

use super::{ALL_STATES, StatusStore};
use crate::error::StatusError;
use crate::keys::Keys;
use crate::scripts;

/// How long a finished job's record outlives its expiry, so that the sweeper removes it together
/// with its images (even after a sweeper outage of up to this long) rather than Redis alone.
const RECORD_GRACE_SECS: u64 = 24 * 3600;

/// How long the cancel flag a removed job leaves lives when a worker finished the job. Its
/// message is acked once the final state is written; if the worker dies first, the broker
/// returns the message when the connection drops (within the heartbeat timeout) and a quorum
/// queue delivers returned messages before the rest, so it comes back within minutes, not days.
/// Short, so that removing jobs at a high rate (a bulk run releasing each staged sample) leaves
/// Redis holding minutes of flags rather than a week's.
pub const FINISHED_MARKER_SECS: u64 = 15 * 60;

/// A finished job whose retention has passed (or whose removal was asked for), claimed by one
/// sweeper.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExpiredJob {
    /// The job's tenant, which its images' keys start with.
    pub tenant: String,
    /// The job.
    pub id: Uuid,
}

/// What [`StatusStore::request_removal`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalRequest {
    /// The job is finished: the next sweep removes it.
    Due,
    /// The job is not finished: it is removed at the first sweep after it finishes.
    Marked,
}

impl StatusStore {
    /// Claims up to `max` jobs due at `now` for `lease`: no other claim returns them until the
    /// lease ends, and any still unremoved then (the sweeper died) are due again. Members the
    /// set holds that do not parse are dropped from it (and logged).
    pub async fn claim_expired(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<ExpiredJob>, StatusError> {
        let key = self.keys.expiry();
        let now_ms = now.timestamp_millis();
        let lease_end = now_ms.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let mut invocation = scripts::CLAIM_EXPIRED.prepare_invoke();
        invocation.key(&key).arg(now_ms).arg(lease_end).arg(max.max(1));
        let mut con = self.conn.clone();
        let members: Vec<String> = self.call(&key, async move { invocation.invoke_async(&mut con).await }).await?;
        let mut claimed = Vec::with_capacity(members.len());
        for member in members {
            match parse_member(&member) {
                Some(job) => claimed.push(job),
                None => {
                    tracing::warn!(key = %key, member = %member, "dropping an expiry entry that names no job");
                    let mut con = self.conn.clone();
                    let query = redis::cmd("ZREM").arg(&key).arg(&member).clone();
                    self.call(&key, async move { query.query_async::<()>(&mut con).await }).await?;
                }
            }
        }
        Ok(claimed)
    }

    /// Asks for `status`'s job to be removed: at the next sweep when it is finished, else at the
    /// first sweep after it finishes. [`StatusError::NotFound`] when the job does not exist.
    pub async fn request_removal(&self, status: &JobStatus) -> Result<RemovalRequest, StatusError> {
        let key = self.keys.job(status.id);
        let mut invocation = scripts::MARK_REMOVAL.prepare_invoke();
        invocation.key(&key).key(self.keys.expiry()).arg(Keys::expiry_member(&status.tenant, status.id));
        let mut con = self.conn.clone();
        let reply: i64 = self.call(&key, async move { invocation.invoke_async(&mut con).await }).await?;
        match reply {
            0 => Err(StatusError::NotFound(status.id)),
            1 => Ok(RemovalRequest::Marked),
            _ => Ok(RemovalRequest::Due),
        }
    }

    /// Removes the job's record, its tenant index entries, its expiry entry and its idempotency
    /// key (when that still names it); its cancel flag stays set, so a message of the job still
    /// on a queue is acked unrun: for [`FINISHED_MARKER_SECS`] when a worker finished a job that
    /// had exactly one message (published once by a dispatcher, never handed back), else for the
    /// status TTL (a cancelled job's message, or a second copy, may still wait on a queue). Usage,
    /// counters and quota charges are not touched. Returns whether there was a record; removing a
    /// job twice is not an error.
    ///
    /// Remove the job's images first: once the record and the expiry entry are gone nothing
    /// leads to them any more.
    pub async fn remove(&self, tenant: &str, id: Uuid) -> Result<bool, StatusError> {
        let key = self.keys.job(id);
        let mut invocation = scripts::REMOVE.prepare_invoke();
        invocation.key(&key).key(self.keys.tenant_jobs(tenant));
        for state in ALL_STATES {
            invocation.key(self.keys.tenant_state(tenant, state));
        }
        invocation
            .key(self.keys.expiry())
            .key(self.keys.cancel(id))
            .key(self.keys.webhook_log(id))
            .arg(id.to_string())
            .arg(Keys::expiry_member(tenant, id))
            .arg(self.status_ttl)
            .arg(FINISHED_MARKER_SECS.min(self.status_ttl));
        let mut con = self.conn.clone();
        let removed: i64 = self.call(&key, async move { invocation.invoke_async(&mut con).await }).await?;
        Ok(removed == 1)
    }

    /// When the job is due for removal, in ms (0: at once; during a sweeper's lease, the lease's
    /// end), or `None` when it is not in the expiry set.
    pub async fn removal_due(&self, tenant: &str, id: Uuid) -> Result<Option<i64>, StatusError> {
        let key = self.keys.expiry();
        let mut con = self.conn.clone();
        let query = redis::cmd("ZSCORE").arg(&key).arg(Keys::expiry_member(tenant, id)).clone();
        let score: Option<f64> = self.call(&key, async move { query.query_async(&mut con).await }).await?;
        // Scores are times in ms, well inside f64's exact integer range.
        Ok(score.map(|s| s as i64))
    }

    /// The lifecycle arguments of the create and update scripts for the record `status` (see
    /// [`crate::scripts::UPDATE`]): its expiry in ms, the TTL its record and indexes keep at
    /// least (its expiry plus [`RECORD_GRACE_SECS`], never below the status TTL) and its member.
    pub(super) fn expiry_args(&self, invocation: &mut ScriptInvocation<'_>, status: &JobStatus) {
        let (score, keep) = match status.expires_at.filter(|_| status.state.is_terminal()) {
            Some(at) => {
                let left = u64::try_from((at - Utc::now()).num_seconds()).unwrap_or(0);
                let keep = left.saturating_add(RECORD_GRACE_SECS).max(self.status_ttl);
                (at.timestamp_millis().to_string(), keep.to_string())
            }
            None => (String::new(), String::new()),
        };
        invocation.arg(score).arg(keep).arg(Keys::expiry_member(&status.tenant, status.id));
    }
}

/// `<tenant>/<id>` back into its parts.
fn parse_member(member: &str) -> Option<ExpiredJob> {
    let (tenant, id) = member.rsplit_once('/')?;
    let id = Uuid::parse_str(id).ok()?;
    (!tenant.is_empty()).then(|| ExpiredJob { tenant: tenant.to_owned(), id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_name_the_tenant_and_the_job() {
        let id = Uuid::now_v7();
        let member = Keys::expiry_member("acme.eu-1", id);
        assert_eq!(parse_member(&member), Some(ExpiredJob { tenant: "acme.eu-1".into(), id }));
        for bad in ["", "acme", "/".to_owned().as_str(), "acme/not-a-uuid", &format!("/{id}")] {
            assert_eq!(parse_member(bad), None, "{bad:?}");
        }
    }
}
