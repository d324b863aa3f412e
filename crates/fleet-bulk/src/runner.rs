//! The run loop: samples read from the input in order, handed to the executor with at most
//! `max_in_flight` unfinished, collected per shard, and each shard published once all its
//! samples are final. Shards whose stats already exist are skipped, and so are the samples of
//! the others that an earlier invocation staged ([`crate::staging`]): that is all a resume is.
//! Every sample the fleet makes is staged in the output as soon as its job succeeds, so a
//! resume never makes again a sample whose image is in the output.
//!
//! Every made image gets its perceptual hash as its shard is written. With `--dedup-hamming`,
//! shards are written strictly in order and samples in index order, so "earlier" means earlier
//! in the plan, whatever order jobs finish in; a resume rebuilds the index of kept samples from
//! the manifests of the shards already written, in the same order, and so decides alike.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chrono::Utc;
use fleet_core::{ErrorCode, FleetConfig};

use crate::error::BulkError;
use crate::exec::{Executor, Finished, ImageSource};
use crate::hamming::{NearDuplicates, hash_hex, parse_hash};
use crate::input::{RowResult, read_rows};
use crate::output::Output;
use crate::phash::PerceptualHasher;
use crate::plan::ShardPlan;
use crate::record::{SampleRecord, SampleState, ShardStats};
use crate::registry::Registry;
use crate::run::{CANCEL_FILE, PROGRESS_FILE, RUN_FILE, RunConfig, RunFile, RunState, Snapshot};
use crate::sample::{Sample, SampleFactory, SampleSettings};
use crate::shard::{ShardWriter, manifest_name, stats_name};
use crate::staging::{self, Staged};

/// How often the snapshot goes to Redis and the cancel marker is looked for.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How often the snapshot goes to the output location.
const OUTPUT_PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Made samples staged at once (each an image read from the fleet's store and two writes).
const STAGE_CONCURRENCY: usize = 32;

/// What a run needs besides its record.
pub struct RunContext {
    pub output: Output,
    pub executor: Executor,
    /// Redis run state (fleet runs).
    pub registry: Option<Registry>,
    /// Validation limits per model.
    pub config: FleetConfig,
    /// Models samples may use (`None`: the dispatcher decides).
    pub models: Option<BTreeSet<String>>,
    /// Called with each progress snapshot (about once a second), e.g. to draw a progress bar.
    pub on_progress: Option<ProgressHook>,
}

/// A progress callback.
pub type ProgressHook = std::sync::Arc<dyn Fn(&Snapshot) + Send + Sync>;

/// The samples of one shard seen so far.
#[derive(Default)]
struct Assembly {
    /// No more samples of this shard will come.
    closed: bool,
    seen: u32,
    /// Already published by an earlier invocation.
    skip: bool,
    /// Samples an earlier invocation made and staged, by key, not yet taken.
    staged: HashMap<String, Staged>,
    finished: Vec<Finished>,
}

/// The sample settings a run's configuration gives.
pub fn sample_settings(config: &RunConfig, models: Option<BTreeSet<String>>) -> SampleSettings {
    SampleSettings {
        run: config.name.clone(),
        seed: config.seed,
        seeds_per_prompt: config.seeds_per_prompt,
        defaults: config.defaults.clone(),
        plan: ShardPlan { shard_size: config.shard_size },
        models,
        samples: config.samples,
        list_dir: config.input.parent().map_or_else(|| ".".into(), std::path::Path::to_path_buf),
    }
}

/// Shards open at once in a deduplicating run (they are written in order, so a slow sample in
/// the first holds back the rest; this bounds what waits behind it).
fn dedup_open_shards(config: &RunConfig) -> usize {
    (2 * config.max_in_flight / config.shard_size.max(1) as usize).max(4)
}

struct Runner {
    run: RunFile,
    ctx: RunContext,
    rows: Box<dyn Iterator<Item = RowResult> + Send>,
    factory: SampleFactory,
    /// A sample taken from the factory and not yet handed on (its shard could not open yet).
    held: Option<Sample>,
    exhausted: bool,
    hasher: PerceptualHasher,
    /// Kept samples' hashes, with `--dedup-hamming`.
    dedup: Option<NearDuplicates>,
    shards: BTreeMap<u64, Assembly>,
    /// Counts of published shards (including those skipped).
    succeeded: u64,
    failed: u64,
    duplicates: u64,
    failed_by_code: BTreeMap<String, u64>,
    shards_done: u64,
    /// Samples finished by this invocation, for the rate.
    finished_here: u64,
    started: Instant,
    /// When this invocation started: samples whose jobs finished before (while no process drove
    /// the run) do not count toward its rate.
    started_at: chrono::DateTime<Utc>,
}

/// Runs (or resumes) `run` to its end or until it is cancelled; returns the final record.
pub async fn execute(mut run: RunFile, ctx: RunContext) -> Result<RunFile, BulkError> {
    run.state = RunState::Running;
    run.finished_at = None;
    let factory = SampleFactory::new(sample_settings(&run.config, ctx.models.clone()), ctx.config.clone());
    let rows = read_rows(&run.config.input, run.config.input_format)?;
    let mut runner = Runner {
        run,
        ctx,
        rows,
        factory,
        held: None,
        exhausted: false,
        hasher: PerceptualHasher::default(),
        dedup: None,
        shards: BTreeMap::new(),
        succeeded: 0,
        failed: 0,
        duplicates: 0,
        failed_by_code: BTreeMap::new(),
        shards_done: 0,
        finished_here: 0,
        started: Instant::now(),
        started_at: Utc::now(),
    };
    runner.dedup = runner.run.config.dedup_hamming.map(NearDuplicates::new);
    let ended = runner.go().await;
    // Also when the run stops (a cancel, an error): deletions cut short would leave jobs behind.
    runner.ctx.executor.finish_releases().await;
    ended.map(|()| runner.run)
}

impl Runner {
    async fn go(&mut self) -> Result<(), BulkError> {
        let mut last_progress = Instant::now();
        let mut last_output_progress = Instant::now();
        loop {
            self.fill().await?;
            if self.ctx.executor.in_flight() > 0 {
                let finished = self.ctx.executor.poll().await?;
                let finished = self.stage(finished).await?;
                self.absorb(finished);
            }
            // `fleet bulk cancel` leaves its marker, then cancels the jobs: a sample whose job
            // was cancelled is not published as failed while the marker says the run stops.
            if self.ctx.executor.take_saw_cancelled() && self.ctx.output.exists(CANCEL_FILE).await? {
                return self.stop_cancelled().await;
            }
            self.publish_complete().await?;
            if self.exhausted && self.ctx.executor.in_flight() == 0 && self.shards.is_empty() {
                break;
            }
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                if self.ctx.output.exists(CANCEL_FILE).await? {
                    return self.stop_cancelled().await;
                }
                let to_output = last_output_progress.elapsed() >= OUTPUT_PROGRESS_EVERY;
                if to_output {
                    last_output_progress = Instant::now();
                }
                self.save_progress(to_output).await?;
            }
        }
        self.ctx.executor.finish_releases().await;
        self.run.state = RunState::Finished;
        self.run.finished_at = Some(Utc::now());
        self.run.totals.succeeded = self.succeeded;
        self.run.totals.failed = self.failed;
        self.run.totals.duplicates = self.duplicates;
        self.run.totals.shards = self.shards_done;
        self.save_run().await?;
        self.save_progress(true).await
    }

    fn next_sample(&mut self) -> Option<Sample> {
        if let Some(sample) = self.held.take() {
            return Some(sample);
        }
        loop {
            if let Some(sample) = self.factory.next_sample() {
                return Some(sample);
            }
            let row = self.rows.next()?;
            self.factory.push_row(row);
        }
    }

    /// Hands samples to the executor until it holds `max_in_flight` or the input ends.
    async fn fill(&mut self) -> Result<(), BulkError> {
        let limit = self.run.config.max_in_flight.max(1);
        let mut batch = Vec::new();
        while !self.exhausted
            && self.ctx.executor.in_flight() + batch.len() < limit
            && batch.len() < self.ctx.executor.batch_size()
        {
            let Some(sample) = self.next_sample() else {
                self.exhausted = true;
                for assembly in self.shards.values_mut() {
                    assembly.closed = true;
                }
                break;
            };
            if !self.shards.contains_key(&sample.shard) {
                if self.dedup.is_some() && self.shards.len() >= dedup_open_shards(&self.run.config) {
                    self.held = Some(sample);
                    break;
                }
                self.open_shard(sample.shard).await?;
            }
            let Some(assembly) = self.shards.get_mut(&sample.shard) else { continue };
            assembly.seen += 1;
            if assembly.skip {
                continue;
            }
            if let Some(Staged { record, image }) = assembly.staged.remove(&sample.key) {
                assembly.finished.push(Finished { index: sample.index, record, image: ImageSource::Staged(image) });
                continue;
            }
            if sample.job.is_err() {
                // Only reached with --skip-invalid: the row is a failed sample of its shard.
                let record = crate::record::SampleRecord::of(&sample);
                assembly.finished.push(Finished { index: sample.index, record, image: crate::exec::ImageSource::None });
                continue;
            }
            batch.push(sample);
        }
        if !batch.is_empty() {
            let finished = self.ctx.executor.submit(batch).await?;
            let finished = self.stage(finished).await?;
            self.absorb(finished);
        }
        Ok(())
    }

    /// A new shard starts: the previous ones are closed; one with stats is already done, one
    /// without may have samples staged (whose jobs are deleted, if an earlier invocation did not).
    async fn open_shard(&mut self, shard: u64) -> Result<(), BulkError> {
        for assembly in self.shards.values_mut() {
            assembly.closed = true;
        }
        let mut assembly = Assembly::default();
        if let Some(bytes) = self.ctx.output.get(&stats_name(shard)).await? {
            let stats: ShardStats =
                serde_json::from_slice(&bytes).map_err(|e| BulkError::json(stats_name(shard), e))?;
            self.count_published(&stats);
            assembly.skip = true;
        } else {
            assembly.staged = staging::load(&self.ctx.output, shard).await?;
            // Staged by an invocation that stopped before it deleted all their jobs.
            let jobs: Vec<_> = assembly.staged.values().filter_map(|s| s.record.job_id).collect();
            self.ctx.executor.release(&jobs).await;
        }
        self.shards.insert(shard, assembly);
        Ok(())
    }

    /// Adds a published (or earlier finished) shard's counts to the run's.
    fn count_published(&mut self, stats: &ShardStats) {
        self.succeeded += stats.succeeded;
        self.failed += stats.failed;
        self.duplicates += stats.duplicate;
        for (code, n) in &stats.failed_by_code {
            *self.failed_by_code.entry(code.clone()).or_default() += n;
        }
        self.shards_done += 1;
    }

    /// Stages the samples the fleet made (image copied from its store into the output) before
    /// anything else happens to them, so they outlive their jobs, then has the fleet forget those
    /// jobs (unless `--keep-jobs`); the image of a sample whose copy fails to match its record,
    /// or cannot be read, is not trusted and the sample fails.
    async fn stage(&mut self, finished: Vec<Finished>) -> Result<Vec<Finished>, BulkError> {
        use futures::{StreamExt as _, TryStreamExt as _};
        let (executor, output) = (&self.ctx.executor, &self.ctx.output);
        let staged: Vec<Finished> = futures::stream::iter(finished)
            .map(|f| stage_one(executor, output, f))
            .buffered(STAGE_CONCURRENCY)
            .try_collect()
            .await?;
        let released: Vec<_> = staged
            .iter()
            .filter(|f| matches!(f.image, ImageSource::Staged(_)))
            .filter_map(|f| f.record.job_id)
            .collect();
        self.ctx.executor.release(&released).await;
        Ok(staged)
    }

    fn absorb(&mut self, finished: Vec<Finished>) {
        let started_at = self.started_at;
        self.finished_here +=
            finished.iter().filter(|f| f.record.timings.finished_at.is_none_or(|at| at >= started_at)).count() as u64;
        for f in finished {
            if let Some(assembly) = self.shards.get_mut(&f.record.shard) {
                assembly.finished.push(f);
            }
        }
    }

    /// Publishes every shard whose samples are all final (with near-duplicate control, only
    /// those with every earlier shard published).
    async fn publish_complete(&mut self) -> Result<(), BulkError> {
        let ready = |a: &Assembly| a.closed && (a.skip || a.finished.len() as u32 == a.seen);
        let complete: Vec<u64> = if self.dedup.is_some() {
            self.shards.iter().take_while(|(_, a)| ready(a)).map(|(shard, _)| *shard).collect()
        } else {
            self.shards.iter().filter(|(_, a)| ready(a)).map(|(shard, _)| *shard).collect()
        };
        if !complete.is_empty() {
            // Publishing clears a shard's staging, after which nothing leads back to its jobs.
            self.ctx.executor.finish_releases().await;
        }
        for shard in complete {
            let Some(assembly) = self.shards.remove(&shard) else { continue };
            if assembly.skip {
                if self.dedup.is_some() {
                    self.keep_written(shard).await?;
                }
                continue;
            }
            let stats = self.publish(shard, assembly.finished).await?;
            self.count_published(&stats);
            tracing::info!(shard, succeeded = stats.succeeded, failed = stats.failed, "shard published");
        }
        Ok(())
    }

    async fn publish(&mut self, shard: u64, mut finished: Vec<Finished>) -> Result<ShardStats, BulkError> {
        finished.sort_by_key(|f| f.index);
        let mut writer = ShardWriter::new(self.run.config.layout, shard, &self.ctx.output)?;
        let mut records = Vec::with_capacity(finished.len());
        for f in finished {
            let mut record = f.record;
            record.timings.truncate_to_micros();
            if record.status == SampleState::Succeeded {
                match self.ctx.executor.image(&f.image, &self.ctx.output).await {
                    Ok(bytes) if record.sha256.as_deref() == Some(fleet_storage::sha256_hex(&bytes).as_str()) => {
                        if self.keep(&mut record, &bytes) {
                            writer.add(&self.ctx.output, &record, bytes).await?;
                        }
                    }
                    Ok(_) => record.fail(ErrorCode::InvalidOutput, "image bytes do not match the recorded sha256"),
                    Err(e) => record.fail(ErrorCode::StorageUnavailable, e.to_string()),
                }
            }
            records.push(record);
        }
        let stats = writer.finish(&self.ctx.output, &records).await?;
        staging::clear(&self.ctx.output, shard).await;
        Ok(stats)
    }

    /// Hashes a made sample's image and decides whether it stays: false for a near-duplicate
    /// of an earlier kept sample (or an image that does not decode, then failed).
    fn keep(&mut self, record: &mut SampleRecord, image: &[u8]) -> bool {
        let hash = match self.hasher.hash(image) {
            Ok(hash) => hash,
            Err(message) => {
                record.fail(ErrorCode::InvalidOutput, message);
                return false;
            }
        };
        record.phash = Some(hash_hex(hash));
        let Some(dedup) = &mut self.dedup else { return true };
        if let Some((of, distance)) = dedup.duplicate_of(hash) {
            let of = of.to_owned();
            record.mark_duplicate(&of, distance);
            return false;
        }
        dedup.keep(hash, &record.key);
        true
    }

    /// Adds the kept samples of a shard written before (by an earlier invocation) to the
    /// near-duplicate index, in manifest (index) order.
    async fn keep_written(&mut self, shard: u64) -> Result<(), BulkError> {
        let name = manifest_name(shard);
        let bytes = self.ctx.output.get(&name).await?.ok_or_else(|| {
            BulkError::Config(format!("{name} is missing: shard {shard} is written but its kept samples are unknown"))
        })?;
        let Some(dedup) = &mut self.dedup else { return Ok(()) };
        for record in crate::shard::parse_manifest(&name, &bytes)? {
            if let (SampleState::Succeeded, Some(hash)) = (record.status, record.phash.as_deref().and_then(parse_hash))
            {
                dedup.keep(hash, &record.key);
            }
        }
        Ok(())
    }

    fn snapshot(&self) -> Snapshot {
        let (mut succeeded, mut failed, mut duplicates) = (self.succeeded, self.failed, self.duplicates);
        let mut failed_by_code = self.failed_by_code.clone();
        for f in self.shards.values().flat_map(|a| &a.finished) {
            match f.record.status {
                SampleState::Succeeded => succeeded += 1,
                SampleState::Duplicate => duplicates += 1,
                SampleState::Failed => {
                    failed += 1;
                    let code = f.record.error.as_ref().map_or(ErrorCode::Internal, |e| e.code);
                    *failed_by_code.entry(code.name().to_owned()).or_default() += 1;
                }
            }
        }
        let (queued, running) = self.ctx.executor.counts();
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.finished_here as f64 / elapsed;
        let total = self.run.input.samples;
        let remaining = total.saturating_sub(succeeded + failed + duplicates);
        Snapshot {
            state: self.run.state,
            total,
            succeeded,
            failed,
            duplicates,
            failed_by_code,
            queued,
            running,
            shards_done: self.shards_done,
            shards_total: self.run.input.shards,
            images_per_second: rate,
            eta_seconds: (rate > 0.0).then(|| remaining as f64 / rate),
            updated_at: Some(Utc::now()),
            stalled_since: None,
        }
    }

    // `&mut self` (here and in `save_run`) keeps the run future `Send` without the runner being `Sync`.
    async fn save_progress(&mut self, to_output: bool) -> Result<(), BulkError> {
        let snapshot = self.snapshot();
        if let Some(hook) = &self.ctx.on_progress {
            hook(&snapshot);
        }
        if let Some(registry) = &self.ctx.registry {
            registry.save_progress(&self.run.config.name, &snapshot).await?;
        }
        if to_output {
            let body = serde_json::to_vec_pretty(&snapshot).map_err(|e| BulkError::json("progress", e))?;
            self.ctx.output.put(PROGRESS_FILE, body, "application/json").await?;
        }
        Ok(())
    }

    async fn save_run(&mut self) -> Result<(), BulkError> {
        save_run(&self.run, &self.ctx.output, self.ctx.registry.as_ref()).await
    }

    async fn stop_cancelled(&mut self) -> Result<(), BulkError> {
        self.ctx.executor.cancel().await?;
        self.run.state = RunState::Cancelled;
        self.run.finished_at = Some(Utc::now());
        self.save_run().await?;
        self.save_progress(true).await
    }
}

/// Stages one finished sample whose image is in the fleet's store; any other passes through.
async fn stage_one(executor: &Executor, output: &Output, mut f: Finished) -> Result<Finished, BulkError> {
    if f.record.status != SampleState::Succeeded || !matches!(f.image, ImageSource::Store(_)) {
        return Ok(f);
    }
    match executor.image(&f.image, output).await {
        Ok(bytes) if f.record.sha256.as_deref() == Some(fleet_storage::sha256_hex(&bytes).as_str()) => {
            f.image = ImageSource::Staged(staging::stage(output, &f.record, bytes).await?);
        }
        Ok(_) => {
            f.record.fail(ErrorCode::InvalidOutput, "image bytes do not match the recorded sha256");
            f.image = ImageSource::None;
        }
        Err(e) => {
            f.record.fail(ErrorCode::StorageUnavailable, e.to_string());
            f.image = ImageSource::None;
        }
    }
    Ok(f)
}

/// Writes `run.json` to the output location and the record to Redis.
pub async fn save_run(run: &RunFile, output: &Output, registry: Option<&Registry>) -> Result<(), BulkError> {
    let body = serde_json::to_vec_pretty(run).map_err(|e| BulkError::json(RUN_FILE, e))?;
    output.put(RUN_FILE, body, "application/json").await?;
    if let Some(registry) = registry {
        registry.save_run(run).await?;
    }
    Ok(())
}
