//! `fleet`: the lightning-fleet command line.

#[macro_use]
mod output;
mod cli;
mod client;
mod cmd;

use std::process::ExitCode;

use clap::Parser as _;

use cli::{Cli, Command};

#[allow(unsafe_code)]
fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Generate(_) | Command::Worker(_) | Command::Bulk(_)) {
        // SAFETY: nothing has started a thread yet (argument parsing starts none).
        unsafe { fleet_engine::cpu_threads::settle_cpu_threads() };
    }
    init_tracing(cli.verbose);
    let result = match &cli.command {
        Command::Up(args) => cmd::up::run(&cli, args),
        Command::Validate(args) => cmd::validate::run(&cli, args),
        Command::Config(args) => cmd::config::run(&cli, args),
        Command::Generate(args) => cmd::generate::run(&cli, args),
        Command::Dispatcher => cmd::dispatcher::run(&cli),
        Command::Worker(args) => cmd::worker::run(&cli, args),
        Command::Submit(args) => cmd::submit::run(&cli, args),
        Command::Status(args) => cmd::jobs::status(&cli, args),
        Command::Wait(args) => cmd::wait::run(&cli, args),
        Command::Cancel(args) => cmd::jobs::cancel(&cli, args),
        Command::Delete(args) => cmd::jobs::delete(&cli, args),
        Command::Jobs(args) => cmd::jobs::list(&cli, args),
        Command::Download(args) => cmd::jobs::download(&cli, args),
        Command::Queues(args) => cmd::jobs::queues(&cli, args),
        Command::Workers(args) => cmd::jobs::workers(&cli, args),
        Command::Usage(args) => cmd::usage::run(&cli, args),
        Command::Bulk(args) => cmd::bulk::run(&cli, args),
        Command::Recover(args) => cmd::recover::run(&cli, args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", output::error_text(&err));
            ExitCode::from(2)
        }
    }
}

fn init_tracing(verbose: u8) {
    // Without -v: warnings, and the worker's one line per finished job.
    let default = match verbose {
        0 => "warn,fleet_worker=info",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLEET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour).init();
}
