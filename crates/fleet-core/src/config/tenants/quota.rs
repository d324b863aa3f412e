use serde::{Deserialize, Serialize};

/// Usage limits of a tenant (`[tenants.<name>.quota]`); a limit left out does not apply.
/// Quotas are checked by the dispatcher when it admits a job; jobs published straight onto
/// RabbitMQ come from trusted producers and are not checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantQuota {
    /// Megapixel-steps (width × height × steps × images / 10⁶) the tenant's admitted jobs may
    /// cost per UTC day.
    pub daily_megapixel_steps: Option<f64>,
    /// Most jobs the tenant may have queued (not yet started) at once.
    pub max_queued_jobs: Option<u64>,
}

impl TenantQuota {
    /// The daily budget in pixel-steps (what Redis counts, as an integer), if there is one.
    pub fn daily_pixel_steps(&self) -> Option<u64> {
        // Checked at load to be finite, positive and at most 10⁹, so the pixel-steps stay below
        // 2⁵³, where Redis's Lua numbers are exact.
        self.daily_megapixel_steps.map(|mps| (mps * 1e6).round() as u64)
    }

    /// What is wrong with the values, each naming its key under `at` (`tenants.<name>.quota`).
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(mps) = self.daily_megapixel_steps
            && !(mps.is_finite() && mps > 0.0 && mps <= 1e9)
        {
            problems.push(format!("{at}.daily_megapixel_steps `{mps}`: must be a number above 0 and at most 10^9"));
        }
        if self.max_queued_jobs == Some(0) {
            problems.push(format!("{at}.max_queued_jobs: must be at least 1 (leave it out for no limit)"));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_in_pixel_steps_and_range_checks() {
        let quota = TenantQuota { daily_megapixel_steps: Some(4.194304), max_queued_jobs: Some(3) };
        assert_eq!(quota.daily_pixel_steps(), Some(1024 * 1024 * 4));
        assert!(quota.problems("tenants.a.quota").is_empty());
        let bad = TenantQuota { daily_megapixel_steps: Some(-1.0), max_queued_jobs: Some(0) };
        let problems = bad.problems("tenants.a.quota");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("tenants.a.quota.daily_megapixel_steps"), "{problems:?}");
        assert!(problems[1].starts_with("tenants.a.quota.max_queued_jobs"), "{problems:?}");
        assert_eq!(TenantQuota::default().daily_pixel_steps(), None);
    }
}
