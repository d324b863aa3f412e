//! `[retention]`: the sweeper that removes finished jobs (images and status record) once their
//! retention has passed. How long each job is kept is a tenant setting
//! (`[tenants.<name>.retention]`).

use serde::{Deserialize, Serialize};

/// How the dispatchers sweep expired jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Seconds between two sweeps of one dispatcher (0: this dispatcher does not sweep).
    pub sweep_interval_secs: u64,
    /// Seconds a sweeper holds the jobs it claimed; a job it has not removed by then (it crashed,
    /// or the store failed) is claimed again by the next sweep of any dispatcher.
    pub sweep_lease_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { sweep_interval_secs: 60, sweep_lease_secs: 300 }
    }
}

impl RetentionConfig {
    /// What is wrong with the values, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.sweep_lease_secs < 10 {
            problems.push("retention.sweep_lease_secs: must be at least 10".to_owned());
        }
        problems
    }
}

impl super::FleetConfig {
    /// How long `tenant`'s job that asked for `requested` seconds (`None`: asked for nothing) is
    /// kept after it finishes: its own retention within its tenant's maximum, else the tenant's
    /// default (see [`super::TenantRetention::resolve`]).
    pub fn retention_for(&self, tenant: &str, requested: Option<u64>) -> Result<u64, super::RetentionTooLong> {
        let entry = self.tenants.entry_of(tenant);
        self.tenants.settings(tenant).retention.resolve(requested, self.redis.status_ttl_secs, entry)
    }
}
