//! Command-line definitions (clap). Each subcommand's behaviour lives in `cmd/<name>.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use fleet_core::FleetConfig;
use fleet_core::config::ConfigSources;

/// lightning-fleet: SDXL-Lightning image generation at fleet scale.
#[derive(Debug, Parser)]
#[command(name = "fleet", version, about)]
pub struct Cli {
    /// Configuration file (TOML). Defaults to $FLEET_CONFIG, else built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Override one configuration key, e.g. `--set redis.url=redis://host:6379` (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,

    /// More log output (-v info, -vv debug); FLEET_LOG takes a full filter.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a job file (one JSON object) or a JSONL file of jobs; print every error with its line and field.
    Validate(ValidateArgs),
    /// Print the effective configuration (all layers applied), secrets masked.
    Config(ConfigArgs),
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Job file: `.json` (one job), `.jsonl`/`.ndjson` (one job per line), or `-` for stdin.
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "toml")]
    pub format: ConfigFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ConfigFormat {
    Toml,
    Json,
}

impl Cli {
    /// The effective configuration: defaults < file < environment < `--set`.
    pub fn load_config(&self) -> anyhow::Result<FleetConfig> {
        let sources = ConfigSources::from_process(self.config.clone(), self.overrides.clone());
        Ok(FleetConfig::load(&sources)?)
    }
}
