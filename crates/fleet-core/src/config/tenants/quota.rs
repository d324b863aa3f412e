use serde::{Deserialize, Serialize};

/// Usage limits of a tenant (`[tenants.<name>.quota]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantQuota {}
