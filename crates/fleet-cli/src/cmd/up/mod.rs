//! `fleet up`: the whole fleet on this machine — Redis, RabbitMQ and S3 (started when nothing
//! answers), one dispatcher with the web console, and workers — until Ctrl-C, which drains the
//! workers, then stops the dispatcher and the services this run started.

mod children;
mod services;
mod settings;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use fleet_core::FleetConfig;
use fleet_core::config::ConfigSources;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, LOCAL_CONFIG, UpArgs};
use crate::client::ApiClient;
use children::Child;
use services::Services;
use settings::Settings;

/// Where `fleet up` keeps its logs (and, outside a checkout, the services' data).
const STATE_DIR: &str = ".fleet";
/// How long a dispatcher may take to answer `/readyz`.
const DISPATCHER_READY: Duration = Duration::from_secs(60);
/// How long a worker may take to load its models and send its first heartbeat (a real SDXL
/// checkpoint takes minutes to read on a slow disk).
const WORKER_READY: Duration = Duration::from_secs(30 * 60);
/// Extra time a dispatcher gets to finish its requests after SIGTERM.
const DISPATCHER_GRACE: Duration = Duration::from_secs(20);

pub fn run(cli: &Cli, args: &UpArgs) -> anyhow::Result<ExitCode> {
    let path = cli.config.clone().unwrap_or_else(|| PathBuf::from(LOCAL_CONFIG));
    let state = PathBuf::from(STATE_DIR);
    std::fs::create_dir_all(state.join("logs")).with_context(|| format!("cannot create {STATE_DIR}/logs"))?;

    let before = load(cli, &path)?;
    let models = choose_models(&before, &args.models)?;
    let listen = args.listen.clone().unwrap_or_else(|| before.http.listen.clone());
    let api_key = match settings::ensure(&path, &listen, &models[0])? {
        Settings::Written { api_key, created } => {
            let verb = if created { "wrote" } else { "updated" };
            eprintln!("fleet up: {verb} {} (API key and client settings for this directory)", path.display());
            api_key
        }
        Settings::Theirs => settings::check_theirs(&path, &before)?,
    };
    let config = load(cli, &path)?;
    check_listen_free(&listen)?;
    let mut plan = Plan {
        config_path: path,
        logs: state.join("logs"),
        overrides: cli.overrides.clone(),
        models,
        workers: args.workers,
        listen,
        api_key,
        drain: Duration::from_secs(config.worker.drain_timeout_secs) + Duration::from_secs(10),
    };
    let services = Services::start(&config, &state)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = match runtime.block_on(volatile_redis(&config)) {
        Ok(volatile) => {
            if let Some(evidence) = volatile {
                eprintln!(
                    "fleet up: warning: Redis at {} keeps nothing across a restart ({evidence}); running anyway \
                     (redis.allow_volatile = true for this run's processes): a Redis restart loses job records \
                     (`fleet recover` rebuilds finished ones from their images); set `appendonly yes` on Redis to keep them",
                    fleet_core::config::mask_url(&config.redis.url)
                );
                plan.overrides.push("redis.allow_volatile=true".into());
            }
            runtime.block_on(serve(&plan))
        }
        Err(e) => Err(e),
    };
    services.stop_started();
    outcome
}

/// What shows that the Redis `fleet up` uses keeps nothing across a restart, unless the
/// configuration allows that already. A Redis that `scripts/services.sh` started keeps an
/// append-only file; one that was already running (a distribution's package) may not, and
/// `fleet up`, for trying the fleet on one machine, runs on it with a warning rather than refusing.
async fn volatile_redis(config: &FleetConfig) -> anyhow::Result<Option<String>> {
    if config.redis.allow_volatile {
        return Ok(None);
    }
    let status = fleet_status::StatusStore::connect(&config.redis).await?;
    Ok(match status.persistence().await? {
        fleet_status::Persistence::Volatile { evidence } => Some(evidence),
        _ => None,
    })
}

/// What `fleet up` runs, settled before anything starts.
#[derive(Debug)]
struct Plan {
    config_path: PathBuf,
    logs: PathBuf,
    /// `--set` overrides, passed on to every child.
    overrides: Vec<String>,
    models: Vec<String>,
    workers: u32,
    listen: String,
    api_key: String,
    /// How long a stopping worker may take (its drain timeout and a margin).
    drain: Duration,
}

impl Plan {
    /// `--set` arguments every child gets.
    fn common_args(&self) -> Vec<String> {
        let mut args: Vec<String> = self.overrides.iter().flat_map(|o| ["--set".to_owned(), o.clone()]).collect();
        args.extend(["--set".to_owned(), format!("http.listen={}", self.listen)]);
        args
    }

    fn worker_args(&self, id: &str) -> Vec<String> {
        let mut args = self.common_args();
        // Port 0: several workers on one machine each get a free metrics port.
        args.extend(["--set".into(), "worker.metrics_listen=127.0.0.1:0".into(), "worker".into()]);
        args.extend(["--id".into(), id.to_owned()]);
        for m in &self.models {
            args.extend(["--model".into(), m.clone()]);
        }
        args
    }
}

/// The configuration from `path` (when it exists) and the command line's layers.
fn load(cli: &Cli, path: &Path) -> anyhow::Result<FleetConfig> {
    let file = path.is_file().then(|| path.to_path_buf());
    let sources = ConfigSources::from_process(file, cli.overrides.clone());
    Ok(FleetConfig::load(&sources)?)
}

/// `--model` names (each configured), else sdxl-lightning-4step when its weights need no
/// download, else tiny.
fn choose_models(config: &FleetConfig, asked: &[String]) -> anyhow::Result<Vec<String>> {
    let known = || config.models.keys().cloned().collect::<Vec<_>>().join(", ");
    if let Some(unknown) = asked.iter().find(|m| !config.models.contains_key(*m)) {
        bail!("--model {unknown}: not a configured model (configured: {})", known());
    }
    if !asked.is_empty() {
        eprintln!("fleet up: serving {}", asked.join(", "));
        return Ok(asked.to_vec());
    }
    let real = fleet_core::job::DEFAULT_MODEL;
    let cached = config.models.get(real).is_some_and(|m| {
        let unet = m.unet.as_deref();
        fleet_engine::files::in_hub_cache(&m.source, false, unet)
            || fleet_engine::files::in_hub_cache(&m.source, true, unet)
    });
    if cached {
        eprintln!("fleet up: serving {real} (its weights are in the Hugging Face cache)");
        return Ok(vec![real.to_owned()]);
    }
    if !config.models.contains_key("tiny") {
        bail!(
            "{real}'s weights are not in the Hugging Face cache and no `tiny` model is configured: pass --model NAME"
        );
    }
    eprintln!(
        "fleet up: serving tiny, the built-in random test model ({real}'s weights are not in the Hugging Face \
         cache; `fleet up --model {real}` downloads them)"
    );
    Ok(vec!["tiny".to_owned()])
}

fn check_listen_free(listen: &str) -> anyhow::Result<()> {
    std::net::TcpListener::bind(listen).map(drop).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {listen} (http.listen, or --listen): {e}; is another `fleet up` or dispatcher \
             running? Stop it or pass --listen 127.0.0.1:PORT"
        )
    })
}

/// Starts the dispatcher and workers, waits for a signal or a crash, then stops them in order.
async fn serve(plan: &Plan) -> anyhow::Result<ExitCode> {
    let server = settings::server_url(&plan.listen);
    let client = ApiClient::new(&server, &plan.api_key)?;
    let dispatcher_args = [plan.common_args(), vec!["dispatcher".into()]].concat();
    let mut dispatcher = Child::spawn("dispatcher", &plan.config_path, &dispatcher_args, &plan.logs)?;
    wait_ready(&client, &mut dispatcher).await?;

    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let mut workers = Vec::new();
    for i in 1..=plan.workers {
        let id = format!("up-{run_id}-{i}");
        let worker = Child::spawn(&format!("worker-{i}"), &plan.config_path, &plan.worker_args(&id), &plan.logs)?;
        workers.push((id, worker));
    }
    wait_workers(&client, &mut dispatcher, &mut workers, &plan.models.join(", "), &plan.logs).await?;

    outln!("ready: {server}/ui/ (web console; logs in {})", plan.logs.display());
    outln!("api key: {}", plan.api_key);
    outln!("try: fleet submit --prompt \"a red bicycle\" --wait");

    let shutdown = CancellationToken::new();
    tokio::spawn(crate::cmd::dispatcher::cancel_on_signal(shutdown.clone()));
    let crashed = tokio::select! {
        _ = shutdown.cancelled() => None,
        crashed = first_exit(&mut dispatcher, &mut workers) => Some(crashed),
    };
    eprintln!("fleet up: stopping {} worker(s) (they finish or hand back their jobs)", workers.len());
    futures::future::join_all(workers.iter_mut().map(|(_, w)| w.stop(plan.drain))).await;
    eprintln!("fleet up: stopping the dispatcher");
    dispatcher.stop(DISPATCHER_GRACE).await;
    match crashed {
        None => Ok(ExitCode::SUCCESS),
        Some(message) => Err(anyhow::anyhow!(message)),
    }
}

/// Polls `/readyz` until the dispatcher is ready; its exit or a timeout is an error with its log.
async fn wait_ready(client: &ApiClient, dispatcher: &mut Child) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if client.call(reqwest::Method::GET, "/readyz", None).await.is_ok() {
            return Ok(());
        }
        if let Some(crash) = exited(dispatcher, &mut []) {
            bail!(crash);
        }
        if start.elapsed() > DISPATCHER_READY {
            bail!("the dispatcher was not ready within {DISPATCHER_READY:?}:\n{}", dispatcher.log_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every worker has sent a heartbeat (it has loaded its models and takes jobs).
async fn wait_workers(
    client: &ApiClient,
    dispatcher: &mut Child,
    workers: &mut [(String, Child)],
    models: &str,
    logs: &Path,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut said = false;
    loop {
        let live = client.call(reqwest::Method::GET, "/v1/workers", None).await.unwrap_or(Value::Null);
        let seen: Vec<&str> =
            live["workers"].as_array().into_iter().flatten().filter_map(|w| w["id"].as_str()).collect();
        if workers.iter().all(|(id, _)| seen.contains(&id.as_str())) {
            return Ok(());
        }
        // a dispatcher that dies here would otherwise keep the loop waiting for heartbeats
        if let Some(crash) = exited(dispatcher, workers) {
            bail!(crash);
        }
        if !said && start.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "fleet up: waiting for {} worker(s) to load {models} (logs in {})",
                workers.len(),
                logs.display()
            );
            said = true;
        }
        if start.elapsed() > WORKER_READY {
            bail!("the workers sent no heartbeat within {WORKER_READY:?}; see {}", logs.display());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Resolves when any child exits, with a message naming it and its log's last lines.
async fn first_exit(dispatcher: &mut Child, workers: &mut [(String, Child)]) -> String {
    loop {
        if let Some(crash) = exited(dispatcher, workers) {
            return crash;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The first child that has exited, as a message naming it and its log's last lines.
fn exited(dispatcher: &mut Child, workers: &mut [(String, Child)]) -> Option<String> {
    std::iter::once(dispatcher).chain(workers.iter_mut().map(|(_, w)| w)).find_map(|child| {
        let status = child.exited()?;
        Some(format!("{} exited ({status}):\n{}", child.name, child.log_tail(20)))
    })
}
