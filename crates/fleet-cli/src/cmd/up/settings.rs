//! The `fleet.toml` that `fleet up` writes: an admin API key and the client settings (server,
//! key, model), so every other `fleet` command in the directory works without flags.

use std::path::Path;

use anyhow::{Context as _, bail};
use fleet_core::FleetConfig;

/// First line of a file `fleet up` wrote; only such a file is rewritten (keeping its key).
const MARKER: &str = "# Written by `fleet up`";

/// What `fleet up` found or wrote.
#[derive(Debug)]
pub enum Settings {
    /// A file `fleet up` (re)wrote.
    Written { api_key: String, created: bool },
    /// The user's own file, used as it is.
    Theirs,
}

/// Writes `path` when it is missing or `fleet up` wrote it (reusing the key it holds); leaves a
/// file the user wrote alone.
pub fn ensure(path: &Path, listen: &str, model: &str) -> anyhow::Result<Settings> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let (api_key, created) = match existing {
        Some(text) if !text.starts_with(MARKER) => return Ok(Settings::Theirs),
        Some(text) => (written_key(&text).with_context(|| format!("{} (written by fleet up)", path.display()))?, false),
        None => (uuid::Uuid::new_v4().simple().to_string(), true),
    };
    std::fs::write(path, render(listen, &api_key, model))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Settings::Written { api_key, created })
}

/// The client key of a file `fleet up` wrote.
fn written_key(text: &str) -> anyhow::Result<String> {
    let config: FleetConfig = toml::from_str(text).context("not a valid configuration")?;
    if config.client.api_key.is_empty() {
        bail!("client.api_key is empty");
    }
    Ok(config.client.api_key)
}

/// The client needs a key the dispatcher accepts; a user's own file must provide both.
pub fn check_theirs(path: &Path, config: &FleetConfig) -> anyhow::Result<String> {
    let key = &config.client.api_key;
    if key.is_empty() || !config.http.api_keys.iter().any(|k| &k.key == key) {
        bail!(
            "{} (your own file) needs client.api_key set to one of its http.api_keys, so the other \
             `fleet` commands here can reach the fleet; or run `fleet up` in an empty directory",
            path.display()
        );
    }
    Ok(key.clone())
}

/// The base URL clients on this machine use for a listen address (`0.0.0.0` → loopback).
pub fn server_url(listen: &str) -> String {
    let local = listen.replacen("0.0.0.0:", "127.0.0.1:", 1).replacen("[::]:", "[::1]:", 1);
    format!("http://{local}")
}

fn render(listen: &str, api_key: &str, model: &str) -> String {
    let server = server_url(listen);
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    format!(
        "{MARKER}, which rewrites it on each start (keeping the key): delete this line to keep edits.\n\
         # Every `fleet` command in this directory reads it; README \"Configuration\" lists every key.\n\
         \n\
         [http]\n\
         listen = {listen}\n\
         \n\
         [[http.api_keys]]\n\
         key = {key}\n\
         tenant = \"local\"\n\
         admin = true\n\
         \n\
         [client]\n\
         server = {server}\n\
         api_key = {key}\n\
         model = {model}\n",
        listen = q(listen),
        key = q(api_key),
        server = q(&server),
        model = q(model),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_file_is_a_valid_configuration_and_keeps_its_key_when_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.toml");
        let Settings::Written { api_key, created: true } = ensure(&path, "127.0.0.1:8080", "tiny").unwrap() else {
            panic!("a missing file is written")
        };
        let config: FleetConfig = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(config.client.api_key, api_key);
        assert_eq!(config.client.server, "http://127.0.0.1:8080");
        assert_eq!(config.client.model, "tiny");
        assert!(config.http.api_keys.iter().any(|k| k.key == api_key && k.admin));
        check_theirs(&path, &config).unwrap();

        let Settings::Written { api_key: again, created: false } =
            ensure(&path, "0.0.0.0:9000", "sdxl-lightning-4step").unwrap()
        else {
            panic!("a file fleet up wrote is rewritten")
        };
        assert_eq!(again, api_key);
        let config: FleetConfig = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(config.client.server, "http://127.0.0.1:9000");
        assert_eq!(config.client.model, "sdxl-lightning-4step");
    }

    #[test]
    fn a_users_own_file_is_left_alone_and_must_name_a_client_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.toml");
        std::fs::write(&path, "[redis]\nkey_prefix = \"mine\"\n").unwrap();
        assert!(matches!(ensure(&path, "127.0.0.1:8080", "tiny").unwrap(), Settings::Theirs));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[redis]\nkey_prefix = \"mine\"\n");
        let config: FleetConfig = toml::from_str("[redis]\nkey_prefix = \"mine\"\n").unwrap();
        let err = check_theirs(&path, &config).unwrap_err().to_string();
        assert!(err.contains("client.api_key"), "{err}");
    }
}
