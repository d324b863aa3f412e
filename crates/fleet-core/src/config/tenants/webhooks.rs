use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::webhook::WebhookSpec;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A tenant's webhook settings (`[tenants.<name>.webhooks]`).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantWebhooks {
    /// The signing secret: `whsec_` and the base64 of 24 to 64 random bytes (e.g.
    /// `echo whsec_$(openssl rand -base64 32)`). Without it, the tenant's jobs cannot have webhooks.
    pub secret: String,
    /// Default webhook URL of the tenant's jobs that name none (empty: none).
    pub url: String,
    /// Events of the default webhook (empty: `succeeded`, `failed`, `cancelled`).
    pub events: Vec<crate::webhook::WebhookEvent>,
}

/// The secret never shows in a debug print.
impl std::fmt::Debug for TenantWebhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = if self.secret.is_empty() { "" } else { "whsec_***" };
        f.debug_struct("TenantWebhooks")
            .field("secret", &secret)
            .field("url", &self.url)
            .field("events", &self.events)
            .finish()
    }
}

impl TenantWebhooks {
    /// The secret's key bytes (the base64 after `whsec_`), if a valid secret is set.
    pub fn key(&self) -> Option<Vec<u8>> {
        decode_secret(&self.secret).ok()
    }

    /// The webhook of a job that names none.
    pub fn default_webhook(&self) -> Option<WebhookSpec> {
        if self.url.is_empty() {
            return None;
        }
        let mut webhook = WebhookSpec::new(self.url.clone());
        if !self.events.is_empty() {
            webhook.events = self.events.clone();
        }
        Some(webhook)
    }

    /// What is wrong with the values, each naming its key under `at` (`tenants.<name>.webhooks`).
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.secret.is_empty()
            && let Err(why) = decode_secret(&self.secret)
        {
            problems.push(format!("{at}.secret: {why}"));
        }
        if let Some(webhook) = self.default_webhook() {
            for (field, why) in webhook.problems() {
                problems.push(format!("{at}.{field}: {why}"));
            }
            if self.secret.is_empty() {
                problems.push(format!("{at}.url: a default webhook needs {at}.secret"));
            }
        }
        problems
    }
}

/// The key bytes of `whsec_<base64>`, or why the text is not such a secret (never echoing it).
fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).ok_or("must start with `whsec_`")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "what follows `whsec_` must be standard base64".to_owned())?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!("must encode 24 to 64 bytes (it encodes {})", key.len()));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_checked_and_never_printed() {
        let good = TenantWebhooks { secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(), ..Default::default() };
        assert_eq!(good.key().map(|k| k.len()), Some(24));
        assert!(good.problems("t").is_empty());
        assert!(!format!("{good:?}").contains("MfKQ"));
        for bad in ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_short", "whsec_!!!!"] {
            let w = TenantWebhooks { secret: bad.into(), ..Default::default() };
            let problems = w.problems("tenants.a.webhooks");
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert!(!problems[0].contains(bad), "{problems:?}");
        }
        let url_only = TenantWebhooks { url: "https://x/hook".into(), ..Default::default() };
        assert!(url_only.problems("t")[0].contains("needs t.secret"));
        assert_eq!(url_only.default_webhook().unwrap().events.len(), 3);
    }
}
