use serde::{Deserialize, Serialize};

/// How long a tenant's results are kept (`[tenants.<name>.retention]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantRetention {}
