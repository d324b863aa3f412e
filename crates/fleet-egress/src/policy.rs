//! What outbound requests may reach: the policy as configured, and its checked form.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::Url;

use crate::address::is_public;
use crate::error::{EgressError, shown};

/// Where outbound requests may go. The default allows `https://` to any public address, follows
/// no redirects, connects within 5 s and finishes within 30 s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    /// `http://` allowed besides `https://` (tests, trusted networks).
    pub allow_http: bool,
    /// Hosts a URL may name: exact names (case-insensitive), `*.example.com` for any subdomain
    /// of `example.com`, or IP literals. Empty: any host.
    pub allowed_hosts: Vec<String>,
    /// Non-public targets allowed anyway, as CIDRs (`127.0.0.0/8`, `::1/128`) or bare IPs.
    pub allowed_private: Vec<String>,
    /// Redirects followed, each hop checked like the first URL; 0: a 3xx answer is returned as is.
    pub max_redirects: usize,
    pub connect_timeout: Duration,
    /// The whole request, body included.
    pub timeout: Duration,
}

impl Default for EgressPolicy {
    fn default() -> Self {
        EgressPolicy {
            allow_http: false,
            allowed_hosts: Vec::new(),
            allowed_private: Vec::new(),
            max_redirects: 0,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
        }
    }
}

/// A policy whose networks are parsed, shared by the client, its resolver and its redirect check.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    allow_http: bool,
    hosts: Vec<String>,
    private: Vec<IpNet>,
}

impl Rules {
    pub(crate) fn new(policy: &EgressPolicy) -> Result<Self, EgressError> {
        let private = policy
            .allowed_private
            .iter()
            .map(|entry| {
                parse_network(entry).ok_or_else(|| {
                    EgressError::Policy(format!("allowed_private: `{entry}` is not a CIDR or IP address"))
                })
            })
            .collect::<Result<_, _>>()?;
        let hosts = policy.allowed_hosts.iter().map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase()).collect();
        Ok(Rules { allow_http: policy.allow_http, hosts, private })
    }

    /// The URL's scheme, host and (for an IP literal) address, without DNS.
    pub(crate) fn check_url(&self, url: &Url) -> Result<(), EgressError> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            scheme => return Err(EgressError::SchemeNotAllowed { url: shown(url), scheme: scheme.to_owned() }),
        }
        let host = match url.host() {
            Some(host) => host,
            None => return Err(EgressError::InvalidUrl { url: shown(url), reason: "it names no host".into() }),
        };
        let (name, literal) = match host {
            url::Host::Domain(d) => (d.trim_end_matches('.').to_ascii_lowercase(), None),
            url::Host::Ipv4(v4) => (v4.to_string(), Some(IpAddr::V4(v4))),
            url::Host::Ipv6(v6) => (v6.to_string(), Some(IpAddr::V6(v6))),
        };
        if !self.host_allowed(&name) {
            return Err(EgressError::HostNotAllowed { url: shown(url), host: name });
        }
        if let Some(addr) = literal {
            self.check_addr(&name, addr)?;
        }
        Ok(())
    }

    /// One address the host resolved to (or its literal).
    pub(crate) fn check_addr(&self, host: &str, addr: IpAddr) -> Result<(), EgressError> {
        let addr = canonical(addr);
        if is_public(addr) || self.private.iter().any(|net| net.contains(&addr)) {
            Ok(())
        } else {
            Err(EgressError::AddressNotAllowed { host: host.to_owned(), addr })
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        self.hosts.is_empty()
            || self.hosts.iter().any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => {
                    host.len() > parent.len() + 1
                        && host.ends_with(parent)
                        && host[..host.len() - parent.len()].ends_with('.')
                }
                None => pattern == host,
            })
    }
}

/// IPv4-mapped IPv6 addresses compare as their IPv4 address, so `127.0.0.0/8` covers `::ffff:127.0.0.1`.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    }
}

fn parse_network(entry: &str) -> Option<IpNet> {
    let entry = entry.trim();
    entry.parse::<IpNet>().ok().or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(f: impl FnOnce(&mut EgressPolicy)) -> Rules {
        let mut policy = EgressPolicy::default();
        f(&mut policy);
        Rules::new(&policy).unwrap()
    }

    fn check(rules: &Rules, url: &str) -> Result<(), EgressError> {
        rules.check_url(&Url::parse(url).unwrap())
    }

    #[test]
    fn https_only_by_default() {
        let r = rules(|_| {});
        assert!(check(&r, "https://example.com/hook").is_ok());
        assert!(matches!(check(&r, "http://example.com/hook"), Err(EgressError::SchemeNotAllowed { .. })));
        assert!(matches!(check(&r, "ftp://example.com/x"), Err(EgressError::SchemeNotAllowed { .. })));
        assert!(check(&rules(|p| p.allow_http = true), "http://example.com/hook").is_ok());
    }

    #[test]
    fn private_literals_refused_unless_listed() {
        let r = rules(|p| p.allow_http = true);
        for url in
            ["http://127.0.0.1:8080/", "http://[::1]/", "http://169.254.169.254/latest", "http://[::ffff:10.0.0.1]/"]
        {
            assert!(matches!(check(&r, url), Err(EgressError::AddressNotAllowed { .. })), "{url}");
        }
        let r = rules(|p| {
            p.allow_http = true;
            p.allowed_private = vec!["127.0.0.0/8".into(), "::1".into()];
        });
        assert!(check(&r, "http://127.0.0.1:8080/").is_ok());
        assert!(check(&r, "http://[::1]/").is_ok());
        assert!(check(&r, "http://[::ffff:127.0.0.1]/").is_ok());
        assert!(matches!(check(&r, "http://10.0.0.1/"), Err(EgressError::AddressNotAllowed { .. })));
    }

    #[test]
    fn host_patterns() {
        let r = rules(|p| p.allowed_hosts = vec!["hooks.example.com".into(), "*.cdn.example.org".into()]);
        assert!(check(&r, "https://HOOKS.example.com./x").is_ok());
        assert!(check(&r, "https://a.cdn.example.org/x").is_ok());
        assert!(check(&r, "https://a.b.cdn.example.org/x").is_ok());
        for url in [
            "https://cdn.example.org/x",
            "https://evilcdn.example.org/x",
            "https://example.com/",
            "https://hooks.example.com.evil.net/",
        ] {
            assert!(matches!(check(&r, url), Err(EgressError::HostNotAllowed { .. })), "{url}");
        }
    }

    #[test]
    fn bad_policy_named() {
        let err = Rules::new(&EgressPolicy { allowed_private: vec!["10.0.0.0/33".into()], ..EgressPolicy::default() })
            .unwrap_err();
        assert!(err.to_string().contains("10.0.0.0/33"), "{err}");
    }
}
