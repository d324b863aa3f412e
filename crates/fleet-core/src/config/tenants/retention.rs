use serde::{Deserialize, Serialize};

use crate::validate::MAX_RETENTION_SECS;

/// How long a tenant's finished jobs (images and status record together) are kept
/// (`[tenants.<name>.retention]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantRetention {
    /// Seconds a finished job that sets no `retention` is kept; unset: `redis.status_ttl_secs`
    /// (never more than `max_secs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_secs: Option<u64>,
    /// Most seconds a job may ask for with its `retention`.
    pub max_secs: u64,
}

/// A job asked for a longer retention than its tenant allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be at most {max_secs} seconds, the tenant's maximum (`{key}`)")]
pub struct RetentionTooLong {
    /// The tenant's maximum.
    pub max_secs: u64,
    /// The configuration key that sets it, `tenants.<name>.retention.max_secs`.
    pub key: String,
}

impl Default for TenantRetention {
    fn default() -> Self {
        TenantRetention { default_secs: None, max_secs: 30 * 24 * 3600 }
    }
}

impl TenantRetention {
    /// The retention of a job that asked for `requested` (`None`: the default, which falls back
    /// to `status_ttl_secs` and never exceeds `max_secs`). `entry` names the `[tenants.<entry>]`
    /// these settings come from, for the error.
    pub fn resolve(&self, requested: Option<u64>, status_ttl_secs: u64, entry: &str) -> Result<u64, RetentionTooLong> {
        match requested {
            Some(secs) if secs > self.max_secs => {
                Err(RetentionTooLong { max_secs: self.max_secs, key: format!("tenants.{entry}.retention.max_secs") })
            }
            Some(secs) => Ok(secs),
            None => Ok(self.default_secs.unwrap_or(status_ttl_secs).min(self.max_secs)),
        }
    }

    /// What is wrong with the values, each naming its key under `at` (`tenants.<name>.retention`).
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let range = 1..=MAX_RETENTION_SECS;
        if let Some(default) = self.default_secs {
            if !range.contains(&default) {
                problems.push(format!("{at}.default_secs: must be 1 to {MAX_RETENTION_SECS} (10 years)"));
            } else if default > self.max_secs {
                problems
                    .push(format!("{at}.default_secs `{default}`: must be at most {at}.max_secs ({})", self.max_secs));
            }
        }
        if !range.contains(&self.max_secs) {
            problems.push(format!("{at}.max_secs: must be 1 to {MAX_RETENTION_SECS} (10 years)"));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_gets_its_own_retention_within_the_maximum_else_the_default() {
        let retention = TenantRetention { default_secs: Some(3600), max_secs: 7200 };
        assert_eq!(retention.resolve(Some(7200), 604_800, "acme"), Ok(7200));
        assert_eq!(retention.resolve(None, 604_800, "acme"), Ok(3600));
        let err = retention.resolve(Some(7201), 604_800, "default").unwrap_err();
        assert_eq!(err.key, "tenants.default.retention.max_secs");
        assert!(err.to_string().contains("at most 7200 seconds"), "{err}");
        // Without a default the status TTL applies, cut to the maximum.
        let built_in = TenantRetention::default();
        assert_eq!(built_in.resolve(None, 604_800, "a"), Ok(604_800));
        assert_eq!(built_in.resolve(None, 365 * 24 * 3600, "a"), Ok(built_in.max_secs));
    }

    #[test]
    fn values_are_checked_naming_their_keys() {
        assert!(TenantRetention::default().problems("tenants.a.retention").is_empty());
        let bad = TenantRetention { default_secs: Some(10), max_secs: 5 };
        assert_eq!(
            bad.problems("tenants.a.retention"),
            ["tenants.a.retention.default_secs `10`: must be at most tenants.a.retention.max_secs (5)"]
        );
        let zero = TenantRetention { default_secs: Some(0), max_secs: 0 };
        let problems = zero.problems("tenants.a.retention");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("tenants.a.retention.default_secs")
                && problems[1].starts_with("tenants.a.retention.max_secs")
        );
    }
}
