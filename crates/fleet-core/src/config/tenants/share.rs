use serde::{Deserialize, Serialize};

/// A tenant's share of the workers within a priority (`[tenants.<name>.share]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantShare {}
