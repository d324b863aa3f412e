//! Making samples in this process: the engine on one thread, exactly as a worker runs a job
//! (same request, same LoRA library, same encoding), so `--local` gives the fleet's pixels for the
//! same keys. Input images (ControlNet, init, mask) come inline (files in the rows are inlined
//! when the rows are read) or from the configured bucket (`s3://`), as a worker reads them.
//!
//! Each finished sample is staged as `<out>/_staging/NNNNN/KEY.<ext>` plus `KEY.json` (written
//! last) until its shard is published; a resume after a crash takes what is staged
//! ([`crate::staging`]) and regenerates nothing it had.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use fleet_core::{ErrorCode, FleetConfig, JobSpec};
use fleet_engine::GenerateRequest;
use fleet_engine::Pipeline;
use fleet_render::{InputImage, JobImages, Models, encode_job_image};

use crate::error::BulkError;
use crate::exec::{Finished, ImageSource};
use crate::plan::shard_name;
use crate::record::{SampleRecord, SampleState, SampleTimings};
use crate::sample::Sample;
use crate::staging::STAGING_DIR;

/// The engine thread and its queue.
pub struct LocalExecutor {
    tasks: Option<std::sync::mpsc::Sender<Sample>>,
    results: tokio::sync::mpsc::UnboundedReceiver<Finished>,
    in_flight: usize,
    stop: Arc<AtomicBool>,
}

impl LocalExecutor {
    /// Starts the engine thread; models load on first use (from `config.models`, on `worker.device`).
    pub fn start(config: FleetConfig, output_dir: &Path) -> LocalExecutor {
        let staging = output_dir.join(STAGING_DIR);
        let (tasks, task_rx) = std::sync::mpsc::channel::<Sample>();
        let (result_tx, results) = tokio::sync::mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let runtime = tokio::runtime::Handle::try_current().ok();
        let engine = Engine { config, staging, models: HashMap::new(), runtime, store: None };
        let thread_stop = stop.clone();
        std::thread::spawn(move || {
            let mut engine = engine;
            while let Ok(sample) = task_rx.recv() {
                if thread_stop.load(Ordering::Relaxed) {
                    break;
                }
                if result_tx.send(engine.make(sample)).is_err() {
                    break;
                }
            }
        });
        LocalExecutor { tasks: Some(tasks), results, in_flight: 0, stop }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues samples for the engine thread.
    pub fn submit(&mut self, samples: Vec<Sample>) -> Result<Vec<Finished>, BulkError> {
        let Some(tasks) = &self.tasks else { return Err(BulkError::Engine("the run was cancelled".into())) };
        for sample in samples {
            tasks.send(sample).map_err(|_| BulkError::Engine("the engine thread stopped".into()))?;
            self.in_flight += 1;
        }
        Ok(Vec::new())
    }

    /// Waits up to a tick for the next finished sample, then takes all that are ready.
    pub async fn poll(&mut self) -> Result<Vec<Finished>, BulkError> {
        let mut finished = Vec::new();
        match tokio::time::timeout(Duration::from_millis(200), self.results.recv()).await {
            Ok(Some(first)) => finished.push(first),
            Ok(None) if self.in_flight > 0 => return Err(BulkError::Engine("the engine thread stopped".into())),
            _ => {}
        }
        while let Ok(more) = self.results.try_recv() {
            finished.push(more);
        }
        self.in_flight -= finished.len().min(self.in_flight);
        Ok(finished)
    }

    /// Stops the engine thread after the sample it is on.
    pub fn cancel(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tasks = None;
        self.in_flight = 0;
    }
}

/// State of the engine thread.
struct Engine {
    config: FleetConfig,
    staging: PathBuf,
    /// Loaded models (with their fused-LoRA caches), or why a model could not be loaded (every
    /// sample of it fails alike).
    models: HashMap<String, Result<Arc<Models>, String>>,
    /// The caller's runtime, for reading `s3://` input images from this thread.
    runtime: Option<tokio::runtime::Handle>,
    /// The configured S3 endpoint (or local directory), connected on the first `s3://` input
    /// image.
    store: Option<fleet_storage::ImageStore>,
}

impl Engine {
    fn make(&mut self, sample: Sample) -> Finished {
        let dir = self.staging.join(shard_name(sample.shard));
        let record_path = dir.join(format!("{}.json", sample.key));
        let Ok(spec) = &sample.job else { return Finished::failed(&sample, ErrorCode::InvalidSpec, "invalid row") };
        match self.generate(spec, &sample, &dir) {
            Ok((record, image_path)) => {
                if let Err(e) = write_record(&record_path, &record) {
                    return Finished::failed(&sample, ErrorCode::Internal, e.to_string());
                }
                Finished { index: sample.index, record, image: ImageSource::File(image_path) }
            }
            Err((code, message)) => Finished::failed(&sample, code, message),
        }
    }

    /// The pipeline of the sample's model with its LoRAs fused in, from the library
    /// (`library.lora_dir`) exactly as a worker finds them, and the request with its ControlNet,
    /// init image and mask (fleet-render's one mapping, as a worker builds it).
    fn prepare(&mut self, spec: &JobSpec) -> Result<(Arc<Pipeline>, GenerateRequest), (ErrorCode, String)> {
        let config = &self.config;
        let models = self
            .models
            .entry(spec.model.clone())
            .or_insert_with(|| {
                Models::load(config, std::slice::from_ref(&spec.model)).map(Arc::new).map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|e| (ErrorCode::ModelUnavailable, e))?;
        let control = self.input_image(spec, "controlnet.image", spec.controlnet.as_ref().map(|c| c.image.as_str()))?;
        let init = self.input_image(spec, "init_image", spec.init_image.as_deref())?;
        let mask = self.input_image(spec, "mask_image", spec.mask_image.as_deref())?;
        let images = JobImages { control: control.as_deref(), init: init.as_deref(), mask: mask.as_deref() };
        fleet_render::prepare(&models, spec, images).map_err(|e| (e.code, e.message))
    }

    /// The bytes of an input image field: inline, or an object of an allowed bucket
    /// (`limits.allowed_image_buckets`), read with the configured S3 endpoint and credentials.
    fn input_image(
        &mut self,
        spec: &JobSpec,
        field: &str,
        image: Option<&str>,
    ) -> Result<Option<Vec<u8>>, (ErrorCode, String)> {
        let Some(image) = image else { return Ok(None) };
        let limits = self.config.limits_for(&spec.model);
        let (bucket, key) = match fleet_render::input_image(field, image, &limits).map_err(|e| (e.code, e.message))? {
            InputImage::Inline(bytes) => return Ok(Some(bytes)),
            InputImage::Object { bucket, key } => (bucket, key),
        };
        let invalid = |m: String| (ErrorCode::InvalidSpec, format!("{field}: {m}"));
        let runtime = self.runtime.clone().ok_or_else(|| invalid("no async runtime to read S3 with".into()))?;
        let unreachable =
            |e: fleet_storage::StorageError| (ErrorCode::Internal, format!("{field}: s3://{bucket}/{key}: {e}"));
        if self.store.is_none() {
            let store =
                runtime.block_on(fleet_storage::ImageStore::from_config(&self.config.s3)).map_err(unreachable)?;
            self.store = Some(store);
        }
        let Some(store) = &self.store else { return Err(invalid("no S3 store".into())) };
        match runtime.block_on(store.get_from(&bucket, &key)).map_err(unreachable)? {
            Some(object) => Ok(Some(object.body)),
            None => Err(invalid(format!("s3://{bucket}/{key} does not exist"))),
        }
    }

    /// Runs the job as a worker would and stages the image.
    fn generate(
        &mut self,
        spec: &JobSpec,
        sample: &Sample,
        dir: &Path,
    ) -> Result<(SampleRecord, PathBuf), (ErrorCode, String)> {
        let (pipeline, request) = self.prepare(spec)?;
        let started = Utc::now();
        let output = pipeline.generate(&request, &mut |_| {}).map_err(|e| (ErrorCode::Internal, e.to_string()))?;
        let image = output.images.into_iter().next().ok_or((ErrorCode::InvalidOutput, "no image".to_owned()))?;
        let prediction = pipeline.scheduler.prediction_type.as_str();
        let bytes = encode_job_image(spec, &self.config.worker, 0, &image, prediction)
            .map_err(|e| (ErrorCode::InvalidOutput, e.to_string()))?;
        let finished = Utc::now();
        let mut record = SampleRecord::of(sample);
        record.status = SampleState::Succeeded;
        record.sha256 = Some(fleet_storage::sha256_hex(&bytes));
        record.bytes = Some(bytes.len() as u64);
        record.worker = Some("local".to_owned());
        record.timings = SampleTimings {
            started_at: Some(started),
            finished_at: Some(finished),
            run_seconds: Some((finished - started).num_milliseconds() as f64 / 1000.0),
            ..SampleTimings::default()
        };
        let image_path = dir.join(record.image_name());
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&image_path, &bytes))
            .map_err(|e| (ErrorCode::Internal, format!("{}: {e}", image_path.display())))?;
        Ok((record, image_path))
    }
}

/// The record goes last: once it exists, the staged sample is complete.
fn write_record(path: &Path, record: &SampleRecord) -> Result<(), BulkError> {
    let json = serde_json::to_vec(record).map_err(|e| BulkError::json("sample record", e))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json).map_err(|e| BulkError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| BulkError::io(path, e))
}
