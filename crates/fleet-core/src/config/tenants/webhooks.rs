use serde::{Deserialize, Serialize};

/// A tenant's webhook settings (`[tenants.<name>.webhooks]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantWebhooks {}
