//! Redis, RabbitMQ and S3 for `fleet up`: started through the project's services script when
//! nothing answers on their loopback ports, and stopped again on the way out only if started here.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use fleet_core::FleetConfig;

/// The script as this binary was built with it, for a `fleet` run outside a checkout.
const EMBEDDED_SCRIPT: &str = include_str!("../../../../../scripts/services.sh");

/// One service `fleet up` needs, where the configuration says it is.
#[derive(Debug)]
struct Service {
    /// The script's name for it (`redis`, `rabbitmq`, `s3`).
    name: &'static str,
    /// The configuration key that places it.
    key: &'static str,
    host: String,
    port: u16,
}

impl Service {
    fn answers(&self) -> bool {
        let Ok(addrs) = (self.host.as_str(), self.port).to_socket_addrs() else { return false };
        addrs.into_iter().any(|a: SocketAddr| TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok())
    }

    fn is_loopback(&self) -> bool {
        matches!(self.host.as_str(), "127.0.0.1" | "localhost" | "::1" | "[::1]")
    }

    fn place(&self) -> String {
        format!("{} at {}:{} ({})", self.name, self.host, self.port, self.key)
    }
}

/// The services script and the services this run started.
#[derive(Debug)]
pub struct Services {
    script: PathBuf,
    started: Vec<&'static str>,
}

impl Services {
    /// Makes every service answer: those on loopback that do not are started by the script;
    /// one elsewhere that does not is an error naming it.
    pub fn start(config: &FleetConfig, state_dir: &Path) -> anyhow::Result<Services> {
        let services = needed(config)?;
        let missing: Vec<&Service> = services.iter().filter(|s| !s.answers()).collect();
        if let Some(remote) = missing.iter().find(|s| !s.is_loopback()) {
            bail!("{} does not answer; fleet up starts services only on this machine", remote.place());
        }
        let script = script(state_dir)?;
        let started: Vec<&'static str> = missing.iter().map(|s| s.name).collect();
        if !started.is_empty() {
            eprintln!("fleet up: starting {} ({})", started.join(", "), script.display());
            let s3_port = services.iter().find(|s| s.name == "s3").map(|s| s.port.to_string());
            let mut cmd = Command::new("bash");
            cmd.arg(&script).arg("--no-browser");
            if let Some(port) = s3_port {
                cmd.env("FLEET_TEST_S3_PORT", port);
            }
            let status = cmd.status().with_context(|| format!("cannot run {}", script.display()))?;
            if !status.success() {
                bail!("{} failed ({status}); its messages are above", script.display());
            }
        }
        if let Some(down) = services.iter().find(|s| !s.answers()) {
            bail!(
                "{} still does not answer after {}: the script starts Redis on 6379, RabbitMQ on 5672 \
                 and S3 on the s3.endpoint port",
                down.place(),
                script.display()
            );
        }
        Ok(Services { script, started })
    }

    /// Stops what [`Services::start`] started; a failure is reported, not fatal.
    pub fn stop_started(&self) {
        if self.started.is_empty() {
            return;
        }
        eprintln!("fleet up: stopping {}", self.started.join(", "));
        let status = Command::new("bash").arg(&self.script).arg("stop").args(&self.started).status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("fleet up: could not stop every service it started ({})", self.script.display());
        }
    }
}

/// Redis, RabbitMQ and (unless images go to a local directory) S3, from the configuration.
fn needed(config: &FleetConfig) -> anyhow::Result<Vec<Service>> {
    let mut out = vec![
        endpoint("redis", "redis.url", &config.redis.url, 6379)?,
        endpoint("rabbitmq", "rabbitmq.url", &config.rabbitmq.url, 5672)?,
    ];
    if config.s3.local_dir.is_none() {
        out.push(endpoint("s3", "s3.endpoint", &config.s3.endpoint, 443)?);
    }
    Ok(out)
}

fn endpoint(name: &'static str, key: &'static str, url: &str, default_port: u16) -> anyhow::Result<Service> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("{key}: `{url}` is not a URL"))?;
    let host = parsed.host_str().with_context(|| format!("{key}: `{url}` has no host"))?.to_owned();
    let port = parsed.port_or_known_default().unwrap_or(default_port);
    Ok(Service { name, key, host, port })
}

/// The checkout's `scripts/services.sh` (this directory or one above), else the copy built into
/// this binary, written under `state_dir` (it then keeps its data there too).
fn script(state_dir: &Path) -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    if let Some(found) = cwd.ancestors().map(|d| d.join("scripts/services.sh")).find(|p| p.is_file()) {
        return Ok(found);
    }
    let path = state_dir.join("scripts/services.sh");
    std::fs::create_dir_all(state_dir.join("scripts"))
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    std::fs::write(&path, EMBEDDED_SCRIPT).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}
