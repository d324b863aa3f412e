//! Loading the layers (defaults < file < `FLEET__SECTION__KEY` variables < `--set` overrides)
//! into a [`FleetConfig`], with every problem reported at once.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::check::mask_secret;
use super::{ApiKeyConfig, FleetConfig, ModelConfig};

/// Most values a load repairs (to report the problems after them) before it gives up.
const MAX_REPAIRS: usize = 32;

/// Configuration could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: --set {0}: expected key=value")]
    BadOverride(String),
    #[error("configuration: FLEET_API_KEYS entry `{0}`: expected key=tenant or key=tenant:admin")]
    BadApiKeyEnv(String),
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// Where configuration layers come from; tests pass their own environment.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// A TOML file; it must exist when given.
    pub file: Option<PathBuf>,
    /// Environment variables (normally `std::env::vars()`).
    pub env: HashMap<String, String>,
    /// `key=value` overrides from the command line, e.g. `redis.url=redis://host:6379`.
    pub overrides: Vec<String>,
}

impl ConfigSources {
    /// Sources from the process environment, with `FLEET_CONFIG` naming the file when `file` is `None`.
    pub fn from_process(file: Option<PathBuf>, overrides: Vec<String>) -> Self {
        let env: HashMap<String, String> = std::env::vars().collect();
        // An empty FLEET_CONFIG means "no file" (and turns off the CLI's `./fleet.toml` lookup).
        let file = file.or_else(|| env.get("FLEET_CONFIG").filter(|f| !f.is_empty()).map(PathBuf::from));
        ConfigSources { file, env, overrides }
    }
}

impl FleetConfig {
    /// Loads defaults < file < `FLEET__SECTION__KEY` variables < overrides, then validates.
    pub fn load(sources: &ConfigSources) -> Result<FleetConfig, ConfigError> {
        // The built-in models count only when no layer names a model: a deployment's `[models]`
        // replaces them rather than adding to them (else its dispatcher would accept `tiny` jobs
        // that none of its workers serve).
        // Likewise the built-in S3 keys: they count only for the built-in endpoint
        // ([`S3Config::fill_local_keys`]).
        let mut bare = FleetConfig { models: BTreeMap::new(), ..FleetConfig::default() };
        bare.s3.access_key_id.clear();
        bare.s3.secret_access_key.clear();
        let defaults = config::Config::try_from(&bare)?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(file) = &sources.file {
            builder = builder.add_source(config::File::from(file.as_path()).format(config::FileFormat::Toml));
        }
        let fleet_env: HashMap<String, String> =
            sources.env.iter().filter(|(k, _)| k.starts_with("FLEET__")).map(|(k, v)| (k.clone(), v.clone())).collect();
        builder = builder.add_source(
            config::Environment::with_prefix("FLEET")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(fleet_env)),
        );
        for pair in &sources.overrides {
            let (key, value) = pair.split_once('=').ok_or_else(|| ConfigError::BadOverride(pair.clone()))?;
            builder = builder.set_override(key.trim(), value.trim())?;
        }
        let (mut cfg, mut problems) = deserialize_reporting_all(builder)?;
        if cfg.models.is_empty() {
            cfg.models = FleetConfig::default().models;
        }
        cfg.s3.fill_local_keys();
        if let Some(keys) = sources.env.get("FLEET_API_KEYS") {
            cfg.http.api_keys.extend(parse_api_keys(keys)?);
        }
        problems.extend(cfg.problems());
        if problems.is_empty() { Ok(cfg) } else { Err(ConfigError::Invalid(problems)) }
    }

    /// Loads from a file path only (no environment), for tools and tests.
    pub fn from_file(path: &Path) -> Result<FleetConfig, ConfigError> {
        FleetConfig::load(&ConfigSources { file: Some(path.to_owned()), ..ConfigSources::default() })
    }
}

/// Deserializes the merged layers, collecting every value of the wrong type or sign, or outside
/// its enum, instead of stopping at the first: each bad value is reported, replaced by its
/// default, and the rest read again. A problem with no default to fall back on (an unknown key,
/// say) ends the collection; the ones found so far are reported with it.
fn deserialize_reporting_all(
    mut builder: config::ConfigBuilder<config::builder::DefaultState>,
) -> Result<(FleetConfig, Vec<String>), ConfigError> {
    let defaults = config::Config::try_from(&FleetConfig::default())?;
    let model_defaults = config::Config::try_from(&ModelConfig::default())?;
    let mut problems = Vec::new();
    let mut repaired = Vec::new();
    loop {
        let error = match builder.build_cloned()?.try_deserialize::<FleetConfig>() {
            Ok(cfg) => return Ok((cfg, problems)),
            Err(error) => error,
        };
        let fallback = error_key(&error)
            .filter(|key| !repaired.contains(key) && repaired.len() < MAX_REPAIRS)
            .and_then(|key| default_at(&defaults, &model_defaults, &key).map(|value| (key, value)));
        problems.push(error.to_string());
        let Some((key, value)) = fallback else { return Err(ConfigError::Invalid(problems)) };
        builder = builder.set_override(key.as_str(), value)?;
        repaired.push(key);
    }
}

/// The configuration key an error is about, when it names one.
fn error_key(error: &config::ConfigError) -> Option<String> {
    match error {
        config::ConfigError::Type { key, .. } | config::ConfigError::At { key, .. } => key.clone(),
        _ => None,
    }
}

/// The built-in value at `key`; for `models.<name>.<field>`, a model's default field.
fn default_at(defaults: &config::Config, model_defaults: &config::Config, key: &str) -> Option<config::Value> {
    if let Ok(value) = defaults.get::<config::Value>(key) {
        return Some(value);
    }
    let field = key.strip_prefix("models.")?.split_once('.')?.1;
    model_defaults.get::<config::Value>(field).ok()
}

/// `FLEET_API_KEYS=key1=tenant1:admin,key2=tenant2`: keys from a secret without a config file.
fn parse_api_keys(value: &str) -> Result<Vec<ApiKeyConfig>, ConfigError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|entry| {
            let (key, rest) = entry.split_once('=').ok_or_else(|| ConfigError::BadApiKeyEnv(mask_secret(entry)))?;
            let (tenant, admin) = match rest.split_once(':') {
                Some((tenant, "admin")) => (tenant, true),
                Some(_) => return Err(ConfigError::BadApiKeyEnv(mask_secret(entry))),
                None => (rest, false),
            };
            Ok(ApiKeyConfig { key: key.to_owned(), tenant: tenant.to_owned(), admin })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_from_env() {
        let keys = parse_api_keys("k1k1k1k1=alice:admin, k2k2k2k2=bob").unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys[0].admin && !keys[1].admin);
        assert!(parse_api_keys("nokey").is_err());
        assert!(parse_api_keys("k=t:root").is_err());
    }
}
