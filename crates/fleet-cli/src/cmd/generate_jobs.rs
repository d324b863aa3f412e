//! `fleet generate --jobs FILE.jsonl --out DIR`: a job file on this machine, through the worker's
//! batcher and one forward pass per batch, as a worker would run the same jobs from the queue.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, anyhow, bail};
use fleet_core::parse::parse_jsonl_line;
use fleet_core::validate::ControlImageSource;
use fleet_core::{FleetConfig, JobSpec};
use fleet_engine::{GenerateRequest, Pipeline};
use fleet_render::batching::{BatchPolicy, Waiting, next_batch};
use fleet_render::fair_share::FairShare;
use fleet_render::{JobImages, Models, encode_job_image};

use super::validate::check_one;
use crate::cli::{Cli, GenerateArgs};

/// One job of the file: its line (from 1) and its spec, seed settled.
struct FileJob {
    line: usize,
    spec: JobSpec,
    read_at: Instant,
}

impl Waiting for FileJob {
    fn spec(&self) -> &JobSpec {
        &self.spec
    }
    fn arrived(&self) -> Instant {
        self.read_at
    }
}

pub fn run(cli: &Cli, args: &GenerateArgs, file: &Path) -> anyhow::Result<ExitCode> {
    let mut config = cli.load_config()?;
    config.worker.device = args.device.clone();
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {name}"))?;
    let mut jobs = match read_jobs(&text, &config) {
        Ok(jobs) => jobs,
        Err(findings) => {
            for f in &findings {
                eprintln!("{name}:{}: {}: {}", f.line, f.field, f.message);
            }
            eprintln!("{name}: nothing generated ({} error(s))", findings.len());
            return Ok(ExitCode::from(1));
        }
    };
    if jobs.is_empty() {
        bail!("{name}: no jobs");
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let models: BTreeSet<String> = jobs.iter().map(|j| j.spec.model.clone()).collect();
    let models = Models::load(&config, &models.into_iter().collect::<Vec<_>>())?;
    let policy = BatchPolicy {
        max_images: args.max_batch_images.unwrap_or(config.worker.max_batch_images).max(1),
        max_pixel_steps: config.worker.max_batch_pixel_steps,
        deadline: std::time::Duration::ZERO,
    };
    let total: u64 = jobs.iter().map(|j| u64::from(j.spec.num_images)).sum();
    let bar = indicatif::ProgressBar::new(total);
    let started = Instant::now();
    let mut passes = 0;
    while let Some(indices) = next_batch(&jobs, &policy, &FairShare::default(), Instant::now(), false) {
        let batch = take(&mut jobs, indices);
        for (pipeline, pass) in prepare_passes(&models, &config, batch)? {
            passes += 1;
            for path in run_pass(&pipeline, &pass, &config, &args.out)? {
                bar.inc(1);
                bar.suspend(|| outln!("{}", path.display()));
            }
        }
    }
    bar.finish_and_clear();
    eprintln!("{total} image(s) in {passes} forward pass(es), {:.2}s", started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

/// Every job of the file, or every problem of every job (nothing runs unless all are valid). A job
/// without a seed gets one drawn here (a local run has no job id to derive one from, as the fleet
/// does) and recorded in its images.
fn read_jobs(text: &str, config: &FleetConfig) -> Result<Vec<FileJob>, Vec<super::validate::Finding>> {
    let mut jobs = Vec::new();
    let mut findings = Vec::new();
    let draw = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    for (index, line) in text.lines().enumerate() {
        let Some(parsed) = parse_jsonl_line(line) else { continue };
        let problems = check_one(parsed.clone(), index + 1, config);
        match parsed {
            Ok(mut spec) if problems.is_empty() => {
                let drawn = draw.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(index as u64) >> 16;
                spec.seed = Some(spec.seed.unwrap_or(drawn));
                jobs.push(FileJob { line: index + 1, spec, read_at: Instant::now() });
            }
            _ => findings.extend(problems),
        }
    }
    if findings.is_empty() { Ok(jobs) } else { Err(findings) }
}

fn take(jobs: &mut Vec<FileJob>, mut indices: Vec<usize>) -> Vec<FileJob> {
    indices.sort_unstable_by(|a, b| b.cmp(a));
    let mut taken: Vec<FileJob> = indices.into_iter().map(|i| jobs.remove(i)).collect();
    taken.sort_by_key(|j| j.line);
    taken
}

/// The jobs of one forward pass, each with its request, and the pipeline they share.
type Pass = (Arc<Pipeline>, Vec<(FileJob, GenerateRequest)>);

/// A batch's jobs prepared (pipeline with the LoRA set, request with its ControlNet) and grouped
/// into forward passes by pipeline, as the worker groups them.
fn prepare_passes(models: &Models, config: &FleetConfig, batch: Vec<FileJob>) -> anyhow::Result<Vec<Pass>> {
    let mut passes: Vec<Pass> = Vec::new();
    for job in batch {
        let control = inline_image(&job, config, "controlnet.image", job.spec.controlnet.as_ref().map(|c| &c.image))?;
        let init = inline_image(&job, config, "init_image", job.spec.init_image.as_ref())?;
        let mask = inline_image(&job, config, "mask_image", job.spec.mask_image.as_ref())?;
        let images = JobImages { control: control.as_deref(), init: init.as_deref(), mask: mask.as_deref() };
        let (pipeline, request) = fleet_render::prepare(models, &job.spec, images)
            .map_err(|e| anyhow!("line {}: {}: {}", job.line, e.code, e.message))?;
        match passes.iter_mut().find(|(p, _)| Arc::ptr_eq(p, &pipeline)) {
            Some((_, jobs)) => jobs.push((job, request)),
            None => passes.push((pipeline, vec![(job, request)])),
        }
    }
    Ok(passes)
}

/// A job's inline input image (`field`: control, init or mask; an `s3://` image lives in the
/// fleet's bucket: run such jobs through the fleet).
fn inline_image(
    job: &FileJob,
    config: &FleetConfig,
    field: &str,
    image: Option<&String>,
) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(image) = image else { return Ok(None) };
    match fleet_core::validate::parse_control_image(image, &config.limits_for(&job.spec.model)) {
        Ok(ControlImageSource::Inline { bytes, .. }) => Ok(Some(bytes)),
        Ok(ControlImageSource::S3 { bucket, key }) => {
            bail!(
                "line {}: {field} s3://{bucket}/{key}: give the image inline, or submit the job to the fleet",
                job.line
            )
        }
        Err(e) => bail!("line {}: {field}: {e}", job.line),
    }
}

/// One forward pass; each job's images encoded as a worker encodes them, `OUT/<line>_<i>.<ext>`.
fn run_pass(
    pipeline: &Pipeline,
    pass: &[(FileJob, GenerateRequest)],
    config: &FleetConfig,
    out: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let requests: Vec<GenerateRequest> = pass.iter().map(|(_, r)| r.clone()).collect();
    let outputs = pipeline.generate_batch_until(&requests, &mut |_| std::ops::ControlFlow::Continue(()))?;
    let prediction = pipeline.scheduler.prediction_type.as_str();
    let mut paths = Vec::new();
    for ((job, _), output) in pass.iter().zip(outputs) {
        for (i, image) in output.images.iter().enumerate() {
            let bytes = encode_job_image(&job.spec, &config.worker, i, image, prediction)?;
            let path = out.join(format!("{}_{i}.{}", job.line, job.spec.output.format.extension()));
            std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
            paths.push(path);
        }
    }
    Ok(paths)
}
