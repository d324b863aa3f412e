use serde::{Deserialize, Serialize};

/// Largest weight a tenant may have: beyond it one tenant's turns would round the others' away.
pub const MAX_SHARE_WEIGHT: f64 = 1000.0;

/// A tenant's share of the workers within a priority (`[tenants.<name>.share]`).
///
/// Workers give the tenants with waiting jobs turns in proportion to their weights, counted in
/// pixel-steps (images × width × height × steps), so a tenant of weight 2 gets twice the device
/// time of one of weight 1 while both have work waiting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantShare {
    /// The tenant's weight against the others'; above 0, at most [`MAX_SHARE_WEIGHT`].
    pub weight: f64,
}

impl Default for TenantShare {
    fn default() -> Self {
        TenantShare { weight: 1.0 }
    }
}

impl TenantShare {
    /// What is wrong with the values, each naming its key under `at` (`tenants.<name>.share`).
    pub fn problems(&self, at: &str) -> Vec<String> {
        let w = self.weight;
        if w.is_finite() && w > 0.0 && w <= MAX_SHARE_WEIGHT {
            Vec::new()
        } else {
            vec![format!("{at}.weight `{w}`: must be a number above 0 and at most {MAX_SHARE_WEIGHT}")]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_above_zero_up_to_the_maximum() {
        assert!(TenantShare::default().problems("tenants.a.share").is_empty());
        assert!(TenantShare { weight: MAX_SHARE_WEIGHT }.problems("x").is_empty());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, MAX_SHARE_WEIGHT * 2.0] {
            let problems = TenantShare { weight: bad }.problems("tenants.a.share");
            assert_eq!(problems.len(), 1, "{bad}");
            assert!(problems[0].starts_with("tenants.a.share.weight"), "{problems:?}");
        }
    }
}
