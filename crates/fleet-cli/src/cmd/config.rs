//! `fleet config`: the effective configuration with secrets masked.

use std::process::ExitCode;

use crate::cli::{Cli, ConfigArgs, ConfigFormat};

pub fn run(cli: &Cli, args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let masked = cli.load_config()?.masked();
    let text = match args.format {
        ConfigFormat::Toml => toml::to_string_pretty(&masked)?,
        ConfigFormat::Json => serde_json::to_string_pretty(&masked)? + "\n",
    };
    out!("{text}");
    Ok(ExitCode::SUCCESS)
}
