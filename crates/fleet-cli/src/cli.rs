//! Command-line definitions (clap). Each subcommand's behaviour lives in `cmd/<name>.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use fleet_core::FleetConfig;
use fleet_core::config::ConfigSources;

/// lightning-fleet: SDXL-Lightning image generation at fleet scale.
#[derive(Debug, Parser)]
#[command(name = "fleet", version, about)]
pub struct Cli {
    /// Configuration file (TOML). Defaults to $FLEET_CONFIG, else `./fleet.toml` when it exists
    /// (`fleet up` writes one), else built-in defaults.
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
    /// The whole fleet on this machine: services, a dispatcher, workers and the web console, until Ctrl-C.
    Up(UpArgs),
    /// Check a job file (one JSON object) or a JSONL file of jobs; print every error with its line and field.
    Validate(ValidateArgs),
    /// Print the effective configuration (all layers applied), secrets masked.
    Config(ConfigArgs),
    /// Generate images on this machine with the engine (no fleet needed).
    Generate(GenerateArgs),
    /// Run the HTTP API (dispatcher) until SIGINT/SIGTERM.
    Dispatcher,
    /// Run a worker: pull jobs for the given models, generate, upload, report status.
    Worker(WorkerArgs),
    /// Submit jobs to the dispatcher (from flags or a JSONL file); `--wait` follows them to the end.
    Submit(SubmitArgs),
    /// Show one job's status.
    Status(JobArgs),
    /// Follow jobs until they finish, with progress bars: exit 0 if all succeeded, 1 if one failed
    /// or was cancelled, 3 if --timeout passed first (printing why a job is still waiting).
    Wait(WaitArgs),
    /// Cancel a job: a queued job never runs, a running one stops at its next step (the job and
    /// its images are kept until its retention passes).
    Cancel(JobArgs),
    /// Delete jobs: a finished job's images and record are removed now; a queued or running job
    /// is cancelled and removed once it is final. Exit 1 if any could not be deleted.
    Delete(DeleteArgs),
    /// List your jobs, newest first.
    Jobs(JobsArgs),
    /// Download a finished job's images into a directory (`<DIR>/<job id>_<n>.<ext>`).
    Download(DownloadArgs),
    /// Queue depths and counters (admin key).
    Queues(ServerArgs),
    /// Live workers from their heartbeats (admin key).
    Workers(ServerArgs),
    /// Usage (jobs, images, megapixel-steps, worker seconds) by day or hour, tenant and model:
    /// your tenant's, or with an admin key any tenant's.
    Usage(UsageArgs),
    /// Datasets: a file of prompts into WebDataset shards (run, status, resume, retry-failed, cancel).
    Bulk(BulkArgs),
    /// Rebuild finished jobs' status records (and idempotency keys) from their images in S3, for
    /// jobs whose records Redis lost; never overwrites a record.
    Recover(RecoverArgs),
}

/// Where the dispatcher is and which key to use (flags > environment > `client.*` configuration).
#[derive(Debug, Args, Clone)]
pub struct ServerArgs {
    /// Dispatcher URL.
    #[arg(long, env = "FLEET_SERVER")]
    pub server: Option<String>,
    /// API key.
    #[arg(long, env = "FLEET_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The generation flags shared by `fleet submit` and `fleet generate`.
#[derive(Debug, Args, Clone)]
pub struct GenerationArgs {
    /// Prompt (repeatable: one job per prompt).
    #[arg(long = "prompt", value_name = "TEXT")]
    pub prompts: Vec<String>,
    #[arg(long, value_name = "TEXT")]
    pub negative_prompt: Option<String>,
    /// Model name (as configured on the workers).
    #[arg(long)]
    pub model: Option<String>,
    /// 1, 2, 4 or 8.
    #[arg(long)]
    pub steps: Option<u32>,
    #[arg(long)]
    pub guidance: Option<f32>,
    #[arg(long)]
    pub width: Option<u32>,
    #[arg(long)]
    pub height: Option<u32>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub num_images: Option<u32>,
    /// LoRA, `NAME[:SCALE]` (scale default 1.0, repeatable): a name from the workers' library;
    /// for `fleet generate` also a `.safetensors` file (names resolve in `library.lora_dir`).
    #[arg(long = "lora", value_name = "FILE_OR_NAME[:SCALE]")]
    pub loras: Vec<String>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub generation: GenerationArgs,
    /// Replacement UNet weights (e.g. sdxl_lightning_4step_unet.safetensors).
    #[arg(long, value_name = "FILE")]
    pub unet: Option<PathBuf>,
    /// safetensors file with a float32 `latents` tensor [batch, 4, H/8, W/8] of unit-variance noise.
    #[arg(long, value_name = "FILE")]
    pub latents: Option<PathBuf>,
    /// Override the scheduler's prediction type: epsilon or sample (the 1-step x0 UNet).
    #[arg(long)]
    pub prediction_type: Option<String>,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// JPEG quality.
    #[arg(long, default_value_t = 90)]
    pub quality: u8,
    /// PNG compression: fast (fdeflate), balanced (zlib 6) or high (zlib 9); the same pixels,
    /// larger files for less CPU (balanced takes 15–30× fast's time for files up to 7 % smaller).
    #[arg(long, default_value = "fast", value_parser = |s: &str| s.parse::<fleet_engine::PngCompression>())]
    pub png_compression: fleet_engine::PngCompression,
    /// Make an image again from the parameters embedded in it by `fleet generate` or a worker
    /// (prompt, seed, size, steps, guidance, LoRAs, ControlNet, init image, strength and mask):
    /// bit-identical when the same model, LoRA, ControlNet and input files are at hand. `--model`,
    /// `--controlnet`, `--control-image`, `--init-image` and `--mask-image` point at files that
    /// moved (or at a job's inline or `s3://` images); other generation flags are refused.
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "prompts", "negative_prompt", "steps", "guidance", "width", "height", "seed", "num_images", "loras",
        "jobs", "latents", "unet", "prediction_type", "control_scale", "control_start", "control_end",
        "control_preprocess", "lora_allow_unmatched", "strength",
    ])]
    pub from_image: Option<PathBuf>,
    /// A job file (JSON Lines, the queue's job contract, checked as `fleet validate` does): every
    /// job through the worker's batcher, images written as `OUT/<line>_<i>.<ext>`.
    #[arg(long, value_name = "FILE.jsonl", conflicts_with_all = ["prompts", "latents", "controlnet"])]
    pub jobs: Option<PathBuf>,
    /// With --jobs: most images per forward pass (1 = one job per pass); default worker.max_batch_images.
    #[arg(long, value_name = "N", requires = "jobs")]
    pub max_batch_images: Option<u32>,
    /// Output image (.png, .jpg, .webp); several images become `<stem>_<i>.<ext>`. With --jobs, a directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Fuse LoRAs whose entries match no module of the model (default: an error listing them).
    #[arg(long)]
    pub lora_allow_unmatched: bool,
    /// ControlNet: a diffusers-layout folder (config.json + diffusion_pytorch_model.safetensors).
    #[arg(long, value_name = "DIR", requires = "control_image")]
    pub controlnet: Option<PathBuf>,
    /// Conditioning image (PNG/JPEG/WebP), resized to the output size (Lanczos3).
    #[arg(long, value_name = "FILE")]
    pub control_image: Option<PathBuf>,
    /// ControlNet conditioning scale.
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    pub control_scale: f64,
    /// Fraction of the steps at which control starts.
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub control_start: f64,
    /// Fraction of the steps at which control ends.
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    pub control_end: f64,
    /// `none` (the image is a control map) or `canny` (edges of a photo, thresholds 100/200;
    /// `canny:LOW:HIGH` sets them).
    #[arg(long, value_name = "none|canny", default_value = "none")]
    pub control_preprocess: String,
    /// Image-to-image: the picture to start from (PNG/JPEG/WebP), resized to the output size
    /// (Lanczos3) and encoded with the VAE (its posterior mean). With --from-image: the file of
    /// the recorded init image.
    #[arg(long, value_name = "FILE", conflicts_with = "jobs")]
    pub init_image: Option<PathBuf>,
    /// How much of the init image is repainted, 0 < F ≤ 1: the last ⌊steps × F⌋ steps run, so at
    /// least 1/steps.
    #[arg(long, value_name = "F", default_value_t = 0.6, requires = "init_image")]
    pub strength: f64,
    /// Inpainting (with --init-image): white repaints, black keeps; resized to the output size
    /// and cut at half grey. With --from-image: the file of the recorded mask.
    #[arg(long, value_name = "FILE", conflicts_with = "jobs")]
    pub mask_image: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Workers to start.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,
    /// Model to serve (repeatable; names from the configuration's [models]). Default:
    /// sdxl-lightning-4step when its weights are in the Hugging Face cache, else tiny.
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// Address of the API and console (default: http.listen, 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Only this tenant's jobs (default: every tenant under s3.prefix).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only this job.
    #[arg(long = "job", value_name = "ID")]
    pub job: Option<uuid::Uuid>,
    /// Print what would be rebuilt; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Model to serve (repeatable; names from the configuration's [models]). Default: every configured model.
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// Worker id in heartbeats and status records.
    #[arg(long)]
    pub id: Option<String>,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub generation: GenerationArgs,
    /// Submit the jobs of a JSONL file instead (flags above fill fields the lines leave out).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// `interactive` or `bulk`.
    #[arg(long)]
    pub priority: Option<String>,
    /// png, jpeg or webp.
    #[arg(long)]
    pub format: Option<String>,
    /// Idempotency key (one job only).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Keep the jobs' images and records this many seconds after they finish (at most the
    /// tenant's `retention.max_secs`; default: the tenant's `retention.default_secs`).
    #[arg(long, value_name = "SECONDS")]
    pub retention: Option<u64>,
    /// ControlNet: a name from the workers' library (`library.controlnet_dir`).
    #[arg(long, value_name = "NAME", requires = "control_image")]
    pub controlnet: Option<String>,
    /// Control image: a PNG/JPEG/WebP file (sent inline) or `s3://bucket/key` in an allowed bucket.
    #[arg(long, value_name = "FILE|s3://BUCKET/KEY", requires = "controlnet")]
    pub control_image: Option<String>,
    /// Image-to-image: the picture to start from, a PNG/JPEG/WebP file (sent inline) or `s3://bucket/key`
    /// in an allowed bucket.
    #[arg(long, value_name = "FILE|s3://BUCKET/KEY")]
    pub init_image: Option<String>,
    /// How much of the init image is repainted, 0 < F ≤ 1 (default 0.6); at least 1/steps.
    #[arg(long, value_name = "F", requires = "init_image")]
    pub strength: Option<f32>,
    /// Inpainting: white repaints, black keeps; a file (sent inline) or `s3://bucket/key`.
    #[arg(long, value_name = "FILE|s3://BUCKET/KEY", requires = "init_image")]
    pub mask_image: Option<String>,
    /// ControlNet conditioning scale, 0–2 (default 1).
    #[arg(long, value_name = "F", requires = "controlnet")]
    pub control_scale: Option<f32>,
    /// Fraction of the steps at which control starts (default 0).
    #[arg(long, value_name = "F", requires = "controlnet")]
    pub control_start: Option<f32>,
    /// Fraction of the steps at which control ends (default 1).
    #[arg(long, value_name = "F", requires = "controlnet")]
    pub control_end: Option<f32>,
    /// Follow the jobs (all at once) until they finish; exit codes as `fleet wait`.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds (exit 3, saying why each job still waits).
    #[arg(long, value_name = "SECONDS", requires = "wait")]
    pub timeout: Option<u64>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Job ids.
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
    /// Give up after this many seconds (exit 3, saying why each job still waits).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct JobArgs {
    /// Job id.
    pub id: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Job ids.
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// Job id.
    pub id: String,
    /// Directory to write into (created if missing).
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs in this state (queued, running, succeeded, failed, cancelled).
    #[arg(long)]
    pub state: Option<String>,
    /// How many (1–100).
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Continue from a previous page's cursor.
    #[arg(long)]
    pub cursor: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Start: an RFC 3339 time or a date YYYY-MM-DD (UTC midnight). Default: 7 days before --to.
    #[arg(long)]
    pub from: Option<String>,
    /// End (exclusive), same forms. Default: now.
    #[arg(long)]
    pub to: Option<String>,
    /// Comma-separated: hour or day, tenant, model ("" for one total row). Default: day,model.
    #[arg(long)]
    pub group_by: Option<String>,
    /// Admin key only: this tenant's usage (default: every tenant's).
    #[arg(long)]
    pub tenant: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct BulkArgs {
    #[command(subcommand)]
    pub command: BulkCommand,
}

#[derive(Debug, Subcommand)]
pub enum BulkCommand {
    /// Start a run: check every row, then generate the dataset (through the fleet, or --local).
    Run(Box<BulkRunArgs>),
    /// Where a run stands: done, failed, queued, running, rate, ETA (--watch: live progress bar).
    Status(BulkStatusArgs),
    /// Go on after the CLI, a worker or the fleet stopped: only what is missing is made.
    Resume(BulkRunRef),
    /// Give failed samples a new attempt and rewrite their shards.
    RetryFailed(BulkRunRef),
    /// Stop a run and cancel its unfinished jobs.
    Cancel(BulkRunRef),
}

/// The prompts come from INPUT and each row makes `--seeds-per-prompt` images: the shared
/// generation flags `--prompt` and `--num-images` are hidden here (and refused if given).
#[derive(Debug, Args)]
#[command(mut_arg("prompts", |a| a.hide(true)), mut_arg("num_images", |a| a.hide(true)))]
pub struct BulkRunArgs {
    /// Prompt file: JSONL (`prompt` or `template` + job-field overrides, `key`, `metadata`), CSV
    /// with a header, or text.
    #[arg(required_unless_present = "template", conflicts_with = "template")]
    pub input: Option<PathBuf>,
    /// Prompt programs instead of INPUT, one per line: `{a|b}` wildcards, `{3::a|1::b}` weights,
    /// `{__name__}` options from `name.txt` beside the file.
    #[arg(long, value_name = "FILE")]
    pub template: Option<PathBuf>,
    /// Draw N prompts from each program with the run seed (default: every expansion).
    #[arg(long, value_name = "N")]
    pub samples: Option<u64>,
    /// Drop a sample whose perceptual hash lies within N bits of an earlier kept one (0–24).
    #[arg(long, value_name = "N")]
    pub dedup_hamming: Option<u32>,
    /// Keep each made sample's job in the fleet for its retention (default: deleted once the
    /// sample is staged in the output, so Redis holds only the run's unfinished jobs).
    #[arg(long)]
    pub keep_jobs: bool,
    /// Check the input and print the sample count, duplicate prompts and first prompts; submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Run name (letters, digits, `.`, `_`, `-`); how status, resume and cancel find the run.
    #[arg(long)]
    pub name: String,
    /// Images per prompt, each with its own seed.
    #[arg(long, default_value_t = 1)]
    pub seeds_per_prompt: u32,
    /// Job defaults for every row (`--seed` is the run seed every sample's seed derives from, default 0).
    #[command(flatten)]
    pub generation: GenerationArgs,
    /// png, jpeg or webp.
    #[arg(long)]
    pub image_format: Option<String>,
    /// JPEG quality 1–100.
    #[arg(long)]
    pub quality: Option<u8>,
    /// Samples per shard.
    #[arg(long, default_value_t = 1000)]
    pub shard_size: u32,
    /// webdataset (tar shards) or files (image folders with metadata.jsonl).
    #[arg(long, default_value = "webdataset")]
    pub format: String,
    /// Output: a directory or s3://bucket/prefix (default: ./NAME).
    #[arg(long)]
    pub out: Option<String>,
    /// Most jobs submitted and not yet finished.
    #[arg(long, default_value_t = 1000)]
    pub max_in_flight: usize,
    /// jsonl, csv or text (default: from the file extension).
    #[arg(long)]
    pub input_format: Option<String>,
    /// Generate on this machine with the engine (no RabbitMQ, Redis or S3); needs a directory --out.
    #[arg(long)]
    pub local: bool,
    /// Record invalid rows as failed samples instead of refusing to start.
    #[arg(long)]
    pub skip_invalid: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct BulkRunRef {
    /// Run name.
    pub name: String,
    /// Output location of the run (needed for --local runs, which have no Redis record).
    #[arg(long)]
    pub out: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct BulkStatusArgs {
    #[command(flatten)]
    pub run: BulkRunRef,
    /// Follow the run with a live progress bar until it ends.
    #[arg(long)]
    pub watch: bool,
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
    /// An API client: flags and environment first, then the configuration's `client` section.
    pub fn client(&self, args: &ServerArgs) -> anyhow::Result<crate::client::ApiClient> {
        let (server, key) = server_and_key(args, &self.load_config()?);
        crate::client::ApiClient::new(&server, &key)
    }

    /// The effective configuration: defaults < file < environment < `--set`.
    pub fn load_config(&self) -> anyhow::Result<FleetConfig> {
        let sources = ConfigSources::from_process(self.config_file(), self.overrides.clone());
        Ok(FleetConfig::load(&sources)?)
    }

    /// `--config`, else `./fleet.toml` when it exists and FLEET_CONFIG is not set (an empty
    /// FLEET_CONFIG means no file at all).
    pub fn config_file(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| {
            let local = PathBuf::from(LOCAL_CONFIG);
            (std::env::var_os("FLEET_CONFIG").is_none() && local.is_file()).then_some(local)
        })
    }
}

/// The configuration file every command reads from the current directory when no other is named.
pub const LOCAL_CONFIG: &str = "fleet.toml";

/// The dispatcher URL and API key: flags and environment first, then the `client` section.
pub fn server_and_key(args: &ServerArgs, config: &FleetConfig) -> (String, String) {
    let server = args.server.clone().unwrap_or_else(|| config.client.server.clone());
    let key = args.api_key.clone().unwrap_or_else(|| config.client.api_key.clone());
    (server, key)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn bulk_run_help_lists_only_the_flags_it_accepts() {
        let mut cli = super::Cli::command();
        let bulk = cli.find_subcommand_mut("bulk").expect("bulk");
        let run = bulk.find_subcommand_mut("run").expect("bulk run");
        let help = run.render_long_help().to_string();
        assert!(help.contains("--seeds-per-prompt"), "{help}");
        assert!(!help.contains("--prompt <") && !help.contains("--num-images"), "{help}");
    }
}
