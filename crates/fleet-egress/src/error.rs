//! What can go wrong with an outbound request, each error naming the URL (credentials masked).

use std::net::IpAddr;
use std::path::PathBuf;

use reqwest::Url;

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("egress policy: {0}")]
    Policy(String),
    #[error("`{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("`{url}`: scheme `{scheme}` is not allowed (https only unless plain http is allowed in configuration)")]
    SchemeNotAllowed { url: String, scheme: String },
    #[error("`{url}`: host `{host}` is not in the allowed hosts")]
    HostNotAllowed { url: String, host: String },
    #[error("`{host}` is at {addr}, which is not a public address (allow it in configuration to reach it)")]
    AddressNotAllowed { host: String, addr: IpAddr },
    #[error("`{host}`: name not resolved: {reason}")]
    Resolve { host: String, reason: String },
    #[error("`{url}`: connection failed: {reason}")]
    Connect { url: String, reason: String },
    #[error("`{url}`: timed out")]
    Timeout { url: String },
    #[error("`{url}`: redirect to `{location}` not followed")]
    Redirect { url: String, location: String },
    #[error("`{url}`: answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("`{url}`: larger than the limit of {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl EgressError {
    /// Whether trying again later may succeed: timeouts, failed connections and name lookups,
    /// and answers 408, 429 and 5xx. Refusals by the policy, other 4xx answers and oversize
    /// bodies are final.
    pub fn is_retryable(&self) -> bool {
        match self {
            EgressError::Timeout { .. } | EgressError::Connect { .. } | EgressError::Resolve { .. } => true,
            EgressError::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// The URL as errors and logs show it: user name and password replaced by `***`.
pub(crate) fn shown(url: &Url) -> String {
    let mut url = url.clone();
    if !url.username().is_empty() || url.password().is_some() {
        let _ = url.set_username("***");
        let _ = url.set_password(None);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_masked() {
        let url = Url::parse("https://user:secret@example.com/x?y=1").unwrap();
        assert_eq!(shown(&url), "https://***@example.com/x?y=1");
    }

    #[test]
    fn retryable_answers() {
        let status = |status| EgressError::Status { url: "u".into(), status };
        assert!(status(503).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(404).is_retryable());
        assert!(EgressError::Timeout { url: "u".into() }.is_retryable());
        assert!(!EgressError::TooLarge { url: "u".into(), limit: 1 }.is_retryable());
    }
}
