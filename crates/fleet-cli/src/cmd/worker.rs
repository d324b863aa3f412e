//! `fleet worker`: serve models from the queue until SIGINT/SIGTERM, then drain.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, WorkerArgs};
use crate::cmd::dispatcher::cancel_on_signal;

pub fn run(cli: &Cli, args: &WorkerArgs) -> anyhow::Result<ExitCode> {
    let config = cli.load_config()?;
    let models = if args.models.is_empty() { config.models.keys().cloned().collect() } else { args.models.clone() };
    let options = fleet_worker::WorkerOptions { models, id: args.id.clone() };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let worker = fleet_worker::Worker::start(config, options).await?;
        eprintln!("fleet worker {} started", worker.id());
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        // On the runtime's workers rather than this thread: the loop's Redis and AMQP replies are
        // then picked up by the thread that read them, not handed across threads.
        tokio::spawn(worker.run(shutdown)).await??;
        Ok(ExitCode::SUCCESS)
    })
}
