//! Every Redis key and channel name the crate uses, in one place (see the crate README for the table).
//!
//! Tenants are restricted by configuration to `[A-Za-z0-9._-]` and never contain `:`, so
//! `{p}:idem:{tenant}:{key}` stays unambiguous even when the idempotency key itself has colons.

use fleet_core::JobState;
use uuid::Uuid;

/// Builds key names under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Keys { prefix: prefix.to_owned() }
    }

    /// Hash `rev`, `data` (JobStatus JSON), `tenant`.
    pub(crate) fn job(&self, id: Uuid) -> String {
        format!("{}:job:{id}", self.prefix)
    }

    /// Prefix of job keys, for the create script to look up the job an idempotency key names.
    pub(crate) fn job_prefix(&self) -> String {
        format!("{}:job:", self.prefix)
    }

    /// Sorted set of all a tenant's job ids, scored by creation time in ms.
    pub(crate) fn tenant_jobs(&self, tenant: &str) -> String {
        format!("{}:tenant:{tenant}:jobs", self.prefix)
    }

    /// Sorted set of a tenant's job ids in one state, scored by creation time in ms.
    pub(crate) fn tenant_state(&self, tenant: &str, state: JobState) -> String {
        format!("{}:tenant:{tenant}:jobs:{}", self.prefix, state.as_str())
    }

    /// Counter of the tenant's jobs that are queued or running.
    pub(crate) fn in_flight(&self, tenant: &str) -> String {
        format!("{}:tenant:{tenant}:inflight", self.prefix)
    }

    /// String: the id of the job first submitted with this idempotency key.
    pub(crate) fn idem(&self, tenant: &str, key: &str) -> String {
        format!("{}:idem:{tenant}:{key}", self.prefix)
    }

    /// Hash of per-model counters (`accepted`, `succeeded`, `failed`, `cancelled`).
    pub(crate) fn counters(&self, model: &str) -> String {
        format!("{}:counters:{model}", self.prefix)
    }

    /// Set of the routing keys of the tenants' lanes (`<model>.<priority>@<tenant>`).
    pub(crate) fn lanes(&self) -> String {
        format!("{}:lanes", self.prefix)
    }

    /// Set of model names that have counters, so `counters()` needs no SCAN.
    pub(crate) fn models(&self) -> String {
        format!("{}:models", self.prefix)
    }

    /// Hash of one hour's usage (`YYYYMMDDHH`, UTC): field `tenant/model/metric` → count.
    pub(crate) fn usage_hour(&self, hour: &str) -> String {
        format!("{}:usage:{hour}", self.prefix)
    }

    /// Hash of all-time usage totals, fields as in [`Self::usage_hour`] (never expires).
    pub(crate) fn usage_totals(&self) -> String {
        format!("{}:usage_totals", self.prefix)
    }

    /// Integer: pixel-steps charged to a tenant's daily budget on one UTC day (`YYYYMMDD`).
    pub(crate) fn quota_day(&self, tenant: &str, day: &str) -> String {
        format!("{}:tenant:{tenant}:charged:{day}", self.prefix)
    }

    /// Sorted set of finished jobs to remove, as [`Self::expiry_member`]s scored by when they
    /// are due in ms (0: at once; a claimed job: when its sweeper's lease ends).
    pub(crate) fn expiry(&self) -> String {
        format!("{}:expiry", self.prefix)
    }

    /// A job in [`Self::expiry`]: `<tenant>/<id>`, so a sweeper finds its images without the
    /// record (tenant names never contain `/`).
    pub(crate) fn expiry_member(tenant: &str, id: Uuid) -> String {
        format!("{tenant}/{id}")
    }

    /// List of webhook deliveries (JSON) written with their state change and not yet on
    /// RabbitMQ: pushed on the left, taken from the right.
    pub(crate) fn webhook_outbox(&self) -> String {
        format!("{}:webhooks:outbox", self.prefix)
    }

    /// List of the deliveries a relay has taken from the outbox and not yet seen confirmed by
    /// RabbitMQ.
    pub(crate) fn webhook_relaying(&self) -> String {
        format!("{}:webhooks:relaying", self.prefix)
    }

    /// List of a job's webhook delivery attempts (JSON), oldest first, the newest 100 kept.
    pub(crate) fn webhook_log(&self, id: Uuid) -> String {
        format!("{}:webhooks:{id}", self.prefix)
    }

    /// Pub/sub channel of a job's events.
    pub(crate) fn events(&self, id: Uuid) -> String {
        format!("{}:events:{id}", self.prefix)
    }

    /// String flag: the job's owner asked for it to be cancelled. Also left behind when a job is
    /// removed, so a message of it still on a queue is never run.
    pub(crate) fn cancel(&self, id: Uuid) -> String {
        format!("{}:cancel:{id}", self.prefix)
    }

    /// Integer: the tenant's requests in one wall-clock second (fixed-window rate limit).
    pub(crate) fn rate(&self, tenant: &str, epoch_second: u64) -> String {
        format!("{}:rate:{tenant}:{epoch_second}", self.prefix)
    }

    /// String: a worker's last heartbeat JSON.
    pub(crate) fn worker(&self, id: &str) -> String {
        format!("{}:worker:{id}", self.prefix)
    }

    /// Prefix of worker keys, for the prune script.
    pub(crate) fn worker_prefix(&self) -> String {
        format!("{}:worker:", self.prefix)
    }

    /// Set of worker ids that have sent a heartbeat (expired ones are pruned on read).
    pub(crate) fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// Hash: model name → RFC 3339 time of the last heartbeat of a worker serving it (kept, so
    /// a job can say when its model was last served).
    pub(crate) fn models_seen(&self) -> String {
        format!("{}:models_seen", self.prefix)
    }

    /// Hash of one bulk run: `run` (`RunRecord` JSON), `progress` (`Snapshot` JSON).
    pub(crate) fn bulk_run(&self, run: &str) -> String {
        format!("{}:bulk:{run}", self.prefix)
    }

    /// Set of the ids of a bulk run's jobs not yet final.
    pub(crate) fn bulk_run_jobs(&self, run: &str) -> String {
        format!("{}:bulk:{run}:jobs", self.prefix)
    }

    /// Sorted set of bulk-run names, scored by their record's last write in ms. Not under
    /// `{p}:bulk:`, where a run could be named like it.
    pub(crate) fn bulk_runs(&self) -> String {
        format!("{}:bulk_runs", self.prefix)
    }
}
