//! The commands: start a run, resume it, retry its failed samples, cancel it, read its status.
//! A run is found by name in Redis, or by its output location (`run.json` there).

use std::collections::BTreeSet;

use chrono::Utc;
use fleet_core::FleetConfig;
use fleet_status::StatusStore;
use fleet_storage::ImageStore;

use crate::api::ApiClient;
use crate::error::BulkError;
use crate::exec::Executor;
use crate::fleet_exec::{FleetExecutor, FleetServices};
use crate::hamming::MAX_HAMMING;
use crate::local_exec::LocalExecutor;
use crate::output::Output;
use crate::plan::{ShardPlan, check_run_name};
use crate::record::ShardStats;
use crate::registry::Registry;
use crate::run::{CANCEL_FILE, PROGRESS_FILE, RUN_FILE, RunConfig, RunFile, RunState, Snapshot, Totals};
use crate::runner::{ProgressHook, RunContext, execute, sample_settings, save_run};
use crate::sample::SampleFactory;
use crate::scan::{Scan, scan};
use crate::shard::stats_name;
use crate::staging;

/// Largest job array a run sends (the dispatcher's own limit may be lower).
const MAX_BATCH: usize = 500;

/// What every command needs: the configuration and, for fleet runs, the dispatcher.
#[derive(Clone)]
pub struct Session {
    pub config: FleetConfig,
    /// `None` for local runs and for commands that do not call the dispatcher.
    pub api: Option<ApiClient>,
    /// Progress callback for runs.
    pub on_progress: Option<ProgressHook>,
}

/// A run found by name or location.
struct Located {
    run: RunFile,
    output: Output,
    registry: Option<Registry>,
}

/// Checks the input (every row), then starts a new run and runs it to its end.
pub async fn start(config: RunConfig, session: &Session) -> Result<RunFile, BulkError> {
    start_with(config, session, |_| {}).await
}

/// [`start`], calling `on_scan` with the input's scan (samples, duplicate prompts, the first
/// prompts) once it passed and before anything is submitted.
pub async fn start_with(
    config: RunConfig,
    session: &Session,
    on_scan: impl FnOnce(&Scan),
) -> Result<RunFile, BulkError> {
    check_run_name(&config.name).map_err(BulkError::Config)?;
    check_settings(&config)?;
    let output = Output::open(&config.out, &session.config.s3).await?;
    if config.local && output.dir().is_none() {
        return Err(BulkError::Config("--local writes to a directory; give --out DIR".into()));
    }
    if output.exists(RUN_FILE).await? {
        return Err(BulkError::Config(format!(
            "{output} already holds a run; use `fleet bulk resume {}` or another --out",
            config.name
        )));
    }
    let registry = if config.local { None } else { Some(Registry::connect(&session.config.redis).await?) };
    if let Some(registry) = &registry
        && registry.load_run(&config.name).await?.is_some()
    {
        return Err(BulkError::Config(format!(
            "a run named `{}` exists; resume it or pick another --name",
            config.name
        )));
    }
    let scanned = check_input(&config, &session.config)?;
    if scanned.summary.invalid_rows > 0 && !config.skip_invalid {
        return Err(BulkError::InvalidRows { rows: scanned.errors, total: scanned.summary.invalid_rows });
    }
    on_scan(&scanned);
    let run = RunFile {
        config,
        input: scanned.summary,
        state: RunState::Running,
        started_at: Utc::now(),
        finished_at: None,
        totals: Totals::default(),
        fleet_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    save_run(&run, &output, registry.as_ref()).await?;
    run_to_end(Located { run, output, registry }, session).await
}

/// The settings a run needs in range, whatever made the [`RunConfig`].
fn check_settings(config: &RunConfig) -> Result<(), BulkError> {
    if config.shard_size == 0 || config.seeds_per_prompt == 0 {
        return Err(BulkError::Config("--shard-size and --seeds-per-prompt must be at least 1".into()));
    }
    if config.samples == Some(0) {
        return Err(BulkError::Config("--samples must be at least 1".into()));
    }
    if let Some(bits) = config.dedup_hamming
        && bits > MAX_HAMMING
    {
        return Err(BulkError::Config(format!(
            "--dedup-hamming {bits}: at most {MAX_HAMMING} of the hash's 64 bits (unrelated images differ in about 32)"
        )));
    }
    Ok(())
}

/// Scans the input with the run's settings: every invalid row, counts, duplicate prompts, the
/// first prompts, hash. Writes nothing (what `--dry-run` shows).
pub fn check_input(config: &RunConfig, fleet: &FleetConfig) -> Result<Scan, BulkError> {
    check_settings(config)?;
    let mut factory = SampleFactory::new(sample_settings(config, local_models(config, fleet)), fleet.clone());
    scan(&config.input, config.input_format, ShardPlan { shard_size: config.shard_size }, &mut factory)
}

/// Goes on with a run: finished shards stay as they are, the rest is made (fleet jobs that
/// already exist are found again by their idempotency keys).
pub async fn resume(name: &str, out: Option<&str>, session: &Session) -> Result<RunFile, BulkError> {
    let located = locate(name, out, &session.config).await?;
    let hash = crate::scan::hash_file(&located.run.config.input)?;
    if hash != located.run.input.sha256 {
        return Err(BulkError::Config(format!(
            "{} changed since the run started (sha256 {} → {hash}); a resume needs the same input",
            located.run.config.input.display(),
            located.run.input.sha256
        )));
    }
    located.output.delete(CANCEL_FILE).await?;
    run_to_end(located, session).await
}

/// Reopens every shard with failed samples and resumes: those samples get a new attempt, the
/// shard is written again. Its made samples are staged again from the published shard first, so
/// they are taken as they are, not made again.
pub async fn retry_failed(name: &str, out: Option<&str>, session: &Session) -> Result<(RunFile, u64), BulkError> {
    let located = locate(name, out, &session.config).await?;
    let mut reopened = 0;
    for shard in 0..located.run.input.shards {
        if let Some(bytes) = located.output.get(&stats_name(shard)).await? {
            let stats: ShardStats =
                serde_json::from_slice(&bytes).map_err(|e| BulkError::json(stats_name(shard), e))?;
            if stats.failed > 0 {
                staging::restage(&located.output, located.run.config.layout, shard).await?;
                located.output.delete(&stats_name(shard)).await?;
                reopened += 1;
            }
        }
    }
    let run = resume(name, out, session).await?;
    Ok((run, reopened))
}

/// Stops a run: the marker tells a running `fleet bulk` to stop; the run's unfinished fleet jobs
/// are cancelled (also when no process is running it). Returns how many jobs were cancelled.
pub async fn cancel(name: &str, out: Option<&str>, session: &Session) -> Result<usize, BulkError> {
    let mut located = locate(name, out, &session.config).await?;
    located.output.put(CANCEL_FILE, b"cancelled\n".to_vec(), "text/plain").await?;
    let mut cancelled = 0;
    if let (Some(registry), Some(api)) = (&located.registry, &session.api) {
        let ids = registry.jobs(name).await?;
        for id in &ids {
            api.cancel(*id).await?;
        }
        registry.remove_jobs(name, &ids).await?;
        cancelled = ids.len();
    }
    located.run.state = RunState::Cancelled;
    located.run.finished_at = Some(Utc::now());
    save_run(&located.run, &located.output, located.registry.as_ref()).await?;
    // The stored progress says what every reader shows: nothing in flight any more.
    if let Some(registry) = &located.registry
        && let Some(mut snapshot) = registry.load_progress(name).await?
    {
        snapshot.settle(&located.run, Utc::now());
        registry.save_progress(name, &snapshot).await?;
    }
    Ok(cancelled)
}

/// The run record and its latest progress (from Redis, else the output location).
pub async fn status(name: &str, out: Option<&str>, config: &FleetConfig) -> Result<(RunFile, Snapshot), BulkError> {
    let located = locate(name, out, config).await?;
    let mut snapshot = match &located.registry {
        Some(registry) => registry.load_progress(name).await?,
        None => None,
    };
    if snapshot.is_none() {
        snapshot = match located.output.get(PROGRESS_FILE).await? {
            Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| BulkError::json(PROGRESS_FILE, e))?),
            None => None,
        };
    }
    let mut snapshot = snapshot.unwrap_or_default();
    snapshot.settle(&located.run, Utc::now());
    Ok((located.run, snapshot))
}

async fn locate(name: &str, out: Option<&str>, config: &FleetConfig) -> Result<Located, BulkError> {
    if let Some(out) = out {
        let output = Output::open(out, &config.s3).await?;
        let bytes = output.get(RUN_FILE).await?.ok_or_else(|| BulkError::RunNotFound(name.to_owned()))?;
        let run: RunFile = serde_json::from_slice(&bytes).map_err(|e| BulkError::json(RUN_FILE, e))?;
        if run.config.name != name {
            return Err(BulkError::Config(format!("{out} holds run `{}`, not `{name}`", run.config.name)));
        }
        let registry = if run.config.local { None } else { Some(Registry::connect(&config.redis).await?) };
        return Ok(Located { run, output, registry });
    }
    let registry = Registry::connect(&config.redis).await?;
    let run = registry.load_run(name).await?.ok_or_else(|| BulkError::RunNotFound(name.to_owned()))?;
    let output = Output::open(&run.config.out, &config.s3).await?;
    Ok(Located { run, output, registry: Some(registry) })
}

/// Models a local run may use: the configured ones. Fleet runs leave it to the dispatcher.
fn local_models(config: &RunConfig, fleet: &FleetConfig) -> Option<BTreeSet<String>> {
    config.local.then(|| fleet.models.keys().cloned().collect())
}

async fn run_to_end(located: Located, session: &Session) -> Result<RunFile, BulkError> {
    let Located { run, output, registry } = located;
    let executor = match (&registry, run.config.local, output.dir()) {
        (_, true, Some(dir)) => Executor::Local(LocalExecutor::start(session.config.clone(), dir)),
        (_, true, None) => return Err(BulkError::Config("a local run needs a directory output".into())),
        (Some(registry), false, _) => {
            let api = session
                .api
                .clone()
                .ok_or_else(|| BulkError::Config("a fleet run needs the dispatcher (--server, --api-key)".into()))?;
            let status = StatusStore::connect(&session.config.redis).await?;
            status.check_durability(session.config.redis.allow_volatile).await?;
            let services = FleetServices {
                api,
                status,
                images: ImageStore::from_config(&session.config.s3).await?,
                registry: registry.clone(),
            };
            let batch = session.config.http.max_jobs_per_request.clamp(1, MAX_BATCH);
            Executor::Fleet(Box::new(FleetExecutor::new(&run.config.name, services, batch, run.config.keep_jobs)))
        }
        (None, false, _) => return Err(BulkError::Config("a fleet run needs Redis".into())),
    };
    let models = local_models(&run.config, &session.config);
    let on_progress = session.on_progress.clone();
    let ctx = RunContext { output, executor, registry, config: session.config.clone(), models, on_progress };
    execute(run, ctx).await
}
