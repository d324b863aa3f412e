//! Per-tenant service settings (`[tenants.<name>]`, with `[tenants.default]` for every tenant not
//! named): webhooks, retention of results, quotas and the tenant's share of the workers. Each
//! concern has its own section type in its own file.

mod quota;
mod retention;
mod share;
mod webhooks;

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

pub use quota::TenantQuota;
pub use retention::{RetentionTooLong, TenantRetention};
pub use share::{MAX_SHARE_WEIGHT, TenantShare};
pub use webhooks::TenantWebhooks;

/// The name under `[tenants]` whose settings apply to every tenant without its own entry.
pub const DEFAULT_TENANT_SETTINGS: &str = "default";

/// One tenant's settings. A tenant's own entry replaces `[tenants.default]` section by section
/// (a section it does not write takes the built-in defaults, not `[tenants.default]`'s).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantSettings {
    pub webhooks: TenantWebhooks,
    pub retention: TenantRetention,
    pub quota: TenantQuota,
    pub share: TenantShare,
}

/// `[tenants]`: settings by tenant name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantsConfig(pub BTreeMap<String, TenantSettings>);

impl TenantsConfig {
    /// The settings that apply to `tenant`: its own entry, else `[tenants.default]`, else the
    /// built-in defaults.
    pub fn settings(&self, tenant: &str) -> &TenantSettings {
        static BUILT_IN: LazyLock<TenantSettings> = LazyLock::new(TenantSettings::default);
        self.0.get(tenant).or_else(|| self.0.get(DEFAULT_TENANT_SETTINGS)).unwrap_or(&BUILT_IN)
    }

    /// The name of the entry whose settings apply to `tenant`: its own, else `default` (also
    /// when there is no `default` entry, whose built-in values then apply).
    pub fn entry_of<'a>(&self, tenant: &'a str) -> &'a str {
        if self.0.contains_key(tenant) { tenant } else { DEFAULT_TENANT_SETTINGS }
    }

    /// Every configured entry (the `default` entry included), by name.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &TenantSettings)> {
        self.0.iter().map(|(name, settings)| (name.as_str(), settings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_entry_then_default_then_built_in() {
        let mut map = BTreeMap::new();
        map.insert("acme".to_string(), TenantSettings::default());
        let tenants = TenantsConfig(map);
        assert!(std::ptr::eq(tenants.settings("acme"), &tenants.0["acme"]));
        assert_eq!(tenants.settings("other"), &TenantSettings::default());
        let mut with_default = tenants.clone();
        with_default.0.insert(DEFAULT_TENANT_SETTINGS.into(), TenantSettings::default());
        assert!(std::ptr::eq(with_default.settings("other"), &with_default.0[DEFAULT_TENANT_SETTINGS]));
    }
}
