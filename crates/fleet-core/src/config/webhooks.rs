//! `[webhooks]`: whether the dispatcher delivers webhooks, where they may go and how long they
//! are retried. The per-tenant secret and default webhook are `[tenants.<name>.webhooks]`.

use serde::{Deserialize, Serialize};

use super::one_or_many;

/// Webhook delivery (`[webhooks]`). Targets are checked like `[worker.lora_fetch]`'s: `https://`
/// to public addresses only, unless allowed here, after DNS resolution and on every redirect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Dispatchers deliver webhooks (and accept jobs that ask for one).
    pub enabled: bool,
    /// Plain `http://` receivers allowed besides `https://` (tests, trusted networks).
    pub allow_http: bool,
    /// Hosts a receiver URL may name: exact names, `*.example.com` for subdomains, or IP
    /// literals; empty: any host.
    #[serde(deserialize_with = "one_or_many")]
    pub allowed_hosts: Vec<String>,
    /// Non-public addresses (loopback, private, link-local, …) allowed anyway, as CIDRs or IPs.
    #[serde(deserialize_with = "one_or_many")]
    pub allowed_private: Vec<String>,
    /// Redirects followed, each hop checked like the first URL (0: a 3xx answer is a failure).
    pub max_redirects: usize,
    /// Seconds one attempt may take, connection included.
    pub timeout_secs: u64,
    /// Seconds a delivery is retried (exponential backoff with jitter) before it is given up.
    pub retry_for_secs: u64,
    /// Deliveries one dispatcher sends at once.
    pub max_concurrent: u16,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            enabled: false,
            allow_http: false,
            allowed_hosts: Vec::new(),
            allowed_private: Vec::new(),
            max_redirects: 0,
            timeout_secs: 10,
            retry_for_secs: 24 * 3600,
            max_concurrent: 32,
        }
    }
}

impl WebhooksConfig {
    /// What is wrong with the values, each naming its key.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=300).contains(&self.timeout_secs) {
            problems.push("webhooks.timeout_secs: must be 1 to 300".to_owned());
        }
        if self.max_concurrent == 0 {
            problems.push("webhooks.max_concurrent: must be at least 1".to_owned());
        }
        if self.max_redirects > 10 {
            problems.push("webhooks.max_redirects: must be at most 10".to_owned());
        }
        for (i, host) in self.allowed_hosts.iter().enumerate() {
            if !super::check::is_host_pattern(host) {
                problems
                    .push(format!("webhooks.allowed_hosts[{i}] `{host}`: must be a host name, *.domain or IP address"));
            }
        }
        for (i, network) in self.allowed_private.iter().enumerate() {
            if !super::check::is_network(network) {
                problems.push(format!("webhooks.allowed_private[{i}] `{network}`: must be a CIDR or IP address"));
            }
        }
        problems
    }
}
