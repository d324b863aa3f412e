//! The checks a loaded configuration passes: every value in range, every name one the fleet
//! knows, all problems reported together; and masking for printing.

use std::net::SocketAddr;

use super::{ConfigError, FleetConfig};

/// Longest presigned-URL lifetime SigV4 allows (7 days).
const MAX_PRESIGN_TTL_SECS: u64 = 7 * 24 * 3600;

impl FleetConfig {
    /// Every problem with the values, at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }

    /// Every problem with the values (empty: valid).
    pub(super) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut need = |ok: bool, msg: String| {
            if !ok {
                problems.push(msg);
            }
        };
        for problem in self.rabbitmq_url_problems() {
            need(false, problem);
        }
        need(
            has_scheme(&self.redis.url, &["redis", "rediss"]),
            format!("redis.url `{}`: must start with redis:// or rediss://", mask_url(&self.redis.url)),
        );
        for (i, sentinel) in self.redis.sentinels.iter().enumerate() {
            need(
                is_sentinel_address(sentinel),
                format!("redis.sentinels[{i}] `{}`: must be redis://host:port", mask_url(sentinel)),
            );
        }
        need(
            !self.redis.sentinel_master.is_empty() && self.redis.sentinel_master.chars().all(|c| c.is_ascii_graphic()),
            format!("redis.sentinel_master `{}`: must be a name without spaces", self.redis.sentinel_master),
        );
        need(
            self.s3.endpoint.is_empty() || has_scheme(&self.s3.endpoint, &["http", "https"]),
            format!("s3.endpoint `{}`: must be empty or an http(s) URL", self.s3.endpoint),
        );
        need(!self.s3.bucket.is_empty(), "s3.bucket: must not be empty".into());
        need(
            self.s3.access_key_id.is_empty() == self.s3.secret_access_key.is_empty(),
            "s3.access_key_id and s3.secret_access_key: set both or neither".into(),
        );
        need(
            self.http.listen.parse::<SocketAddr>().is_ok(),
            format!("http.listen `{}`: must be an address like 0.0.0.0:8080", self.http.listen),
        );
        need(
            self.rabbitmq.quorum_initial_group_size != Some(0),
            "rabbitmq.quorum_initial_group_size: must be at least 1 (or unset: a replica on every node)".into(),
        );
        need(self.redis.usage_ttl_secs >= 3600, "redis.usage_ttl_secs: must be at least 3600 (one hour)".into());
        need(self.rabbitmq.delivery_limit >= 1, "rabbitmq.delivery_limit: must be at least 1".into());
        need(self.rabbitmq.publish_timeout_secs >= 1, "rabbitmq.publish_timeout_secs: must be at least 1".into());
        let mut seen = std::collections::HashSet::new();
        for (i, key) in self.http.api_keys.iter().enumerate() {
            need(key.key.len() >= 8, format!("http.api_keys[{i}].key: must be at least 8 characters"));
            need(seen.insert(key.key.as_str()), format!("http.api_keys[{i}].key: duplicate key"));
            need(
                crate::names::is_tenant_name(&key.tenant),
                format!("http.api_keys[{i}].tenant `{}`: letters, digits, '.', '_', '-' only", key.tenant),
            );
        }
        for (name, settings) in self.tenants.entries() {
            need(
                crate::names::is_tenant_name(name),
                format!("tenants.{name}: tenant names are letters, digits, '.', '_', '-' only"),
            );
            for problem in settings.quota.problems(&format!("tenants.{name}.quota")) {
                need(false, problem);
            }
            for problem in settings.retention.problems(&format!("tenants.{name}.retention")) {
                need(false, problem);
            }
            for problem in settings.webhooks.problems(&format!("tenants.{name}.webhooks")) {
                need(false, problem);
            }
            for problem in settings.share.problems(&format!("tenants.{name}.share")) {
                need(false, problem);
            }
        }
        for problem in self.retention.problems() {
            need(false, problem);
        }
        for problem in self.webhooks.problems() {
            need(false, problem);
        }
        need(!self.models.is_empty(), "models: at least one model must be configured".into());
        for (name, model) in &self.models {
            need(!model.source.is_empty(), format!("models.{name}.source: must not be empty"));
            need(
                model.max_side >= 64 && model.max_side % 8 == 0,
                format!("models.{name}.max_side: must be a multiple of 8, at least 64"),
            );
            need(model.max_pixels >= 64 * 64, format!("models.{name}.max_pixels: must be at least 4096"));
            if let Some(p) = &model.prediction_type
                && let Err(e) = p.parse::<crate::PredictionType>()
            {
                need(false, format!("models.{name}.prediction_type: {e}"));
            }
        }
        need(self.worker.max_batch_images >= 1, "worker.max_batch_images: must be at least 1".into());
        need(
            self.worker.max_batch_pixel_steps >= 64 * 64,
            "worker.max_batch_pixel_steps: must be at least 4096".into(),
        );
        need(self.worker.heartbeat_interval_secs >= 1, "worker.heartbeat_interval_secs: must be at least 1".into());
        need(
            self.redis.heartbeat_ttl_secs > self.worker.heartbeat_interval_secs,
            "redis.heartbeat_ttl_secs: must exceed worker.heartbeat_interval_secs".into(),
        );
        need(
            has_scheme(&self.client.server, &["http", "https"]),
            format!("client.server `{}`: must be an http(s) URL", self.client.server),
        );
        need(self.limits.max_num_images >= 1, "limits.max_num_images: must be at least 1".into());
        need(self.limits.max_prompt_chars >= 1, "limits.max_prompt_chars: must be at least 1".into());
        need(
            is_device(&self.worker.device),
            format!("worker.device `{}`: must be cpu, cuda, cuda:N or metal", self.worker.device),
        );
        need(
            (1..=MAX_PRESIGN_TTL_SECS).contains(&self.s3.presign_ttl_secs),
            format!("s3.presign_ttl_secs: must be 1 to {MAX_PRESIGN_TTL_SECS} (7 days, S3's limit)"),
        );
        need(self.http.max_body_bytes >= 1, "http.max_body_bytes: must be at least 1".into());
        need(self.http.max_jobs_per_request >= 1, "http.max_jobs_per_request: must be at least 1".into());
        need(self.http.max_in_flight_per_tenant >= 1, "http.max_in_flight_per_tenant: must be at least 1".into());
        need(
            self.worker.metrics_listen.trim().is_empty() || self.worker.metrics_listen.parse::<SocketAddr>().is_ok(),
            format!(
                "worker.metrics_listen `{}`: must be empty or an address like 127.0.0.1:9464",
                self.worker.metrics_listen
            ),
        );
        let fetch = &self.worker.lora_fetch;
        need(!fetch.cache_dir.as_os_str().is_empty(), "worker.lora_fetch.cache_dir: must not be empty".into());
        need(fetch.max_file_bytes >= 1, "worker.lora_fetch.max_file_bytes: must be at least 1".into());
        need(
            fetch.cache_max_bytes >= fetch.max_file_bytes,
            "worker.lora_fetch.cache_max_bytes: must be at least worker.lora_fetch.max_file_bytes".into(),
        );
        need(fetch.timeout_secs >= 1, "worker.lora_fetch.timeout_secs: must be at least 1".into());
        for (i, host) in fetch.allowed_hosts.iter().enumerate() {
            need(
                is_host_pattern(host),
                format!("worker.lora_fetch.allowed_hosts[{i}] `{host}`: must be a host name, *.domain or IP address"),
            );
        }
        for (i, bucket) in fetch.allowed_buckets.iter().enumerate() {
            need(
                !bucket.is_empty() && !bucket.contains(['/', ' ']),
                format!("worker.lora_fetch.allowed_buckets[{i}] `{bucket}`: must be a bucket name"),
            );
        }
        for (i, network) in fetch.allowed_private.iter().enumerate() {
            need(
                is_network(network),
                format!("worker.lora_fetch.allowed_private[{i}] `{network}`: must be a CIDR or IP address"),
            );
        }
        problems
    }

    /// Problems with the broker addresses: `rabbitmq.url` when `rabbitmq.urls` is empty, else
    /// every entry of `rabbitmq.urls`.
    fn rabbitmq_url_problems(&self) -> Vec<String> {
        if self.rabbitmq.urls.is_empty() && self.rabbitmq.url.trim().is_empty() {
            return vec!["rabbitmq.url, rabbitmq.urls: no broker address given (set one of them)".into()];
        }
        if self.rabbitmq.urls.is_empty() {
            return amqp_url_problem(&self.rabbitmq.url).map(|p| format!("rabbitmq.url {p}")).into_iter().collect();
        }
        let mut seen = std::collections::HashSet::new();
        let mut problems = Vec::new();
        for (i, url) in self.rabbitmq.urls.iter().enumerate() {
            if let Some(p) = amqp_url_problem(url) {
                problems.push(format!("rabbitmq.urls[{i}] {p}"));
            } else if !seen.insert(url.as_str()) {
                problems.push(format!("rabbitmq.urls[{i}] `{}`: listed twice", mask_url(url)));
            }
        }
        problems
    }

    /// A copy safe to print: passwords in URLs, API keys, the S3 secret and webhook secrets are
    /// masked.
    pub fn masked(&self) -> FleetConfig {
        let mut cfg = self.clone();
        cfg.rabbitmq.url = mask_url(&cfg.rabbitmq.url);
        cfg.rabbitmq.urls = cfg.rabbitmq.urls.iter().map(|u| mask_url(u)).collect();
        cfg.redis.url = mask_url(&cfg.redis.url);
        cfg.redis.sentinels = cfg.redis.sentinels.iter().map(|s| mask_url(s)).collect();
        for key in &mut cfg.http.api_keys {
            key.key = mask_secret(&key.key);
        }
        cfg.s3.secret_access_key = mask_secret(&cfg.s3.secret_access_key);
        cfg.client.api_key = mask_secret(&cfg.client.api_key);
        for settings in cfg.tenants.0.values_mut() {
            settings.webhooks.secret = mask_secret(&settings.webhooks.secret);
        }
        cfg
    }
}

/// `cpu`, `metal`, `cuda` or `cuda:N`: the devices the engine opens (whether this build has the
/// backend is the engine's to say when the worker starts).
fn is_device(name: &str) -> bool {
    match name.strip_prefix("cuda") {
        Some("") => true,
        Some(rest) => rest.strip_prefix(':').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        None => matches!(name, "cpu" | "metal"),
    }
}

/// A host name, `*.domain` or IP literal, as `allowed_hosts` lists take them.
pub(super) fn is_host_pattern(host: &str) -> bool {
    (!host.trim().is_empty() && !host.contains(['/', ':', '@', ' '])) || host.parse::<std::net::IpAddr>().is_ok()
}

/// `ADDR` or `ADDR/PREFIX` with the prefix within the address's width.
pub(super) fn is_network(entry: &str) -> bool {
    let (addr, prefix) = match entry.trim().split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (entry.trim(), None),
    };
    let Ok(addr) = addr.parse::<std::net::IpAddr>() else { return false };
    let width = if addr.is_ipv4() { 32 } else { 128 };
    prefix.is_none_or(|p| p.parse::<u8>().is_ok_and(|p| p <= width))
}

fn has_scheme(url: &str, schemes: &[&str]) -> bool {
    url.split_once("://").is_some_and(|(scheme, rest)| schemes.contains(&scheme) && !rest.is_empty())
}

/// Why `url` is no AMQP URL (`` `url`: reason ``, password masked), if it is not: the scheme
/// `amqp` or `amqps`, a host, and a port that is a number when given.
fn amqp_url_problem(url: &str) -> Option<String> {
    let problem = |why: &str| Some(format!("`{}`: {why}", mask_url(url)));
    let Some(("amqp" | "amqps", rest)) = url.split_once("://") else {
        return problem("must start with amqp:// or amqps://");
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    // `[::1]:5672`: the port follows the bracket.
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) if !port.ends_with(']') => (host, Some(port)),
        _ => (host_port, None),
    };
    if host.is_empty() {
        return problem("names no host");
    }
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return problem("the port must be a number from 0 to 65535");
    }
    None
}

/// `redis://[user:password@]host:port` (a trailing `/` allowed): a sentinel is asked for the
/// primary's address, so it needs its own host and port and no database.
fn is_sentinel_address(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("redis://").or_else(|| url.strip_prefix("rediss://")) else { return false };
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h).trim_end_matches('/');
    host_port.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

/// `amqp://user:secret@host` → `amqp://user:***@host`. Also without a scheme (a mistyped URL is
/// printed in an error), and up to the last `@`, so a password with an unescaped `@` stays hidden.
pub fn mask_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else { return url.to_owned() };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}{user}:***@{host}"),
        None => format!("{scheme}***@{host}"),
    }
}

pub(super) fn mask_secret(secret: &str) -> String {
    if secret.is_empty() {
        return String::new();
    }
    let shown: String = secret.chars().take(4).collect();
    format!("{shown}***")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        FleetConfig::default().validate().unwrap();
    }

    #[test]
    fn url_masking() {
        assert_eq!(mask_url("amqp://guest:guest@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(mask_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(mask_secret("abcdefgh"), "abcd***");
    }

    #[test]
    fn amqp_urls() {
        for ok in [
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "amqps://rabbit.example",
            "amqp://h:5672?heartbeat=2",
            "amqp://[::1]:5672",
            "amqp://[::1]",
        ] {
            assert_eq!(amqp_url_problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("http://h:5672", "must start with amqp"),
            ("amqp://", "names no host"),
            ("amqp:/h", "must start with amqp"),
            ("amqp://u:secret@:5672/%2f", "names no host"),
            ("amqp://u:secret@h:56x72/%2f", "port must be a number"),
        ] {
            let problem = amqp_url_problem(bad).unwrap_or_default();
            assert!(problem.contains(why), "{bad}: {problem}");
            assert!(!problem.contains("secret"), "{problem}");
        }
    }

    #[test]
    fn sentinel_addresses() {
        for ok in ["redis://127.0.0.1:26379", "redis://:pw@sentinel-0.redis:26379/", "rediss://s:1"] {
            assert!(is_sentinel_address(ok), "{ok}");
        }
        for bad in ["127.0.0.1:26379", "redis://127.0.0.1", "redis://:26379", "redis://h:0", "http://h:1"] {
            assert!(!is_sentinel_address(bad), "{bad}");
        }
        let mut cfg = FleetConfig::default();
        cfg.redis.sentinels = vec!["redis://h:26379".into(), "redis://h".into()];
        cfg.redis.sentinel_master = "my master".into();
        let problems = cfg.problems();
        assert!(problems.iter().any(|p| p.starts_with("redis.sentinels[1] `redis://h`")), "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("redis.sentinel_master")), "{problems:?}");
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn devices() {
        for ok in ["cpu", "cuda", "cuda:0", "cuda:12", "metal"] {
            assert!(is_device(ok), "{ok}");
        }
        for bad in ["gpu", "cuda:", "cuda:x", "cuda0", "CPU", ""] {
            assert!(!is_device(bad), "{bad}");
        }
    }
}
