//! Fleet configuration: types and defaults here; layered loading
//! (defaults < `fleet.toml` < `FLEET__…` environment < command-line `--set key=value`) in
//! [`load`], and the checks that run at load, so a bad value fails at start, not mid-job, in
//! [`check`].

mod check;
mod load;
mod retention;
mod tenants;
mod webhooks;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::validate::Limits;

pub use retention::RetentionConfig;
pub use tenants::RetentionTooLong;
pub use tenants::{
    DEFAULT_TENANT_SETTINGS, MAX_SHARE_WEIGHT, TenantQuota, TenantRetention, TenantSettings, TenantShare,
    TenantWebhooks, TenantsConfig,
};
pub use webhooks::WebhooksConfig;

/// Everything a dispatcher, worker or CLI reads from configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    pub rabbitmq: RabbitMqConfig,
    pub redis: RedisConfig,
    pub s3: S3Config,
    pub http: HttpConfig,
    pub library: LibraryConfig,
    /// Models the workers serve, by the name jobs use in `model`.
    pub models: BTreeMap<String, ModelConfig>,
    pub worker: WorkerConfig,
    pub limits: LimitsConfig,
    pub client: ClientConfig,
    /// Per-tenant settings by tenant name (`default`: every tenant without its own entry).
    pub tenants: TenantsConfig,
    /// The sweeper that removes finished jobs whose retention has passed.
    pub retention: RetentionConfig,
    /// Signed webhooks: whether dispatchers deliver them, and the egress rules they follow.
    pub webhooks: WebhooksConfig,
}

/// Where the `fleet` CLI sends requests (flags `--server`/`--api-key` and `FLEET_SERVER`/`FLEET_API_KEY` win).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Base URL of the dispatcher.
    pub server: String,
    /// API key the CLI sends.
    pub api_key: String,
    /// Model `fleet submit` asks for when neither `--model` nor a job line names one (empty: the
    /// job contract's default, `sdxl-lightning-4step`); `fleet up` sets it to the model it serves.
    pub model: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig { server: "http://127.0.0.1:8080".into(), api_key: String::new(), model: String::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitMqConfig {
    /// AMQP URL, with credentials and vhost (`%2f` is `/`): the one-broker form of `urls`, used
    /// when `urls` is empty.
    pub url: String,
    /// AMQP URLs of the nodes of one RabbitMQ cluster (a list, or one string of comma-separated
    /// URLs as environment variables give it). When set, `url` is not used. Processes connect to
    /// one node, starting at a random one, and move to the next when it cannot be reached or the
    /// connection is lost.
    #[serde(deserialize_with = "one_or_many")]
    pub urls: Vec<String>,
    /// `x-quorum-initial-group-size` of the job queues: how many cluster nodes hold a replica of
    /// each. Unset: not sent, so the broker places a replica on every cluster node. Part of the
    /// queue arguments (like `delivery_limit`): existing queues keep theirs.
    pub quorum_initial_group_size: Option<u32>,
    /// Topic exchange jobs are published to.
    pub exchange: String,
    /// Prefix of the per-model, per-priority queues (`<prefix>.<model>.<priority>`).
    pub queue_prefix: String,
    /// Exchange that receives rejected and over-delivered jobs.
    pub dead_letter_exchange: String,
    /// Queue bound to the dead-letter exchange.
    pub dead_letter_queue: String,
    /// Deliveries after which a job that keeps failing workers is dead-lettered.
    pub delivery_limit: u32,
    /// Seconds to wait for a publisher confirm before reporting the publish failed.
    pub publish_timeout_secs: u64,
    /// Ready messages a queue may hold before the dispatcher answers 429 instead of publishing.
    pub max_queue_depth: u64,
    /// Publish each tenant's jobs to a queue of its own per model and priority (a lane,
    /// `<prefix>.<model>.<priority>@<tenant>`), which every worker of the model consumes beside
    /// the shared queue, so one tenant's backlog cannot hold back another's jobs. Off: every
    /// job goes to the shared queue in arrival order.
    pub tenant_lanes: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Redis URL (`redis://` or `rediss://`).
    pub url: String,
    /// Prefix of every key the fleet writes.
    pub key_prefix: String,
    /// Seconds a finished job's status is kept.
    pub status_ttl_secs: u64,
    /// Seconds an idempotency key maps to its job.
    pub idempotency_ttl_secs: u64,
    /// Seconds after which a worker without a heartbeat counts as gone.
    pub heartbeat_ttl_secs: u64,
    /// Seconds an hour of usage counts (`GET /v1/usage`) is kept.
    pub usage_ttl_secs: u64,
    /// Run on a Redis that keeps nothing across a restart (no AOF, no RDB snapshots). The
    /// dispatcher, workers and bulk runner refuse such a Redis at start unless this is true.
    pub allow_volatile: bool,
    /// Redis Sentinel addresses (`redis://host:port`). When set, the fleet asks them for the
    /// current primary of [`RedisConfig::sentinel_master`] and follows a failover; `url` then
    /// only supplies the database, user and password of the primary. A list, or one
    /// comma-separated string (so `FLEET__REDIS__SENTINELS` and `--set` can carry it).
    #[serde(deserialize_with = "one_or_many")]
    pub sentinels: Vec<String>,
    /// Name of the primary the sentinels monitor.
    pub sentinel_master: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL of an S3-compatible server; empty means AWS itself.
    pub endpoint: String,
    /// Region (any value for MinIO/SeaweedFS).
    pub region: String,
    /// Bucket for result images.
    pub bucket: String,
    /// Key prefix for result images.
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), needed by MinIO and SeaweedFS.
    pub path_style: bool,
    /// Access key; empty means the standard AWS chain (`AWS_ACCESS_KEY_ID`, profiles, instance roles).
    /// With the endpoint at its default ([`LOCAL_S3_ENDPOINT`]), the key of the S3 server
    /// `scripts/services.sh` starts ([`LOCAL_S3_ACCESS_KEY`]) when not set.
    pub access_key_id: String,
    /// Secret key; empty means the standard AWS chain (see `access_key_id` for its default).
    pub secret_access_key: String,
    /// Lifetime of presigned GET URLs, in seconds.
    pub presign_ttl_secs: u64,
    /// Store images in this directory instead of S3, for single-machine use (the other `s3.*` keys
    /// are then ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address the dispatcher listens on.
    pub listen: String,
    /// API keys and the tenant each one acts as.
    pub api_keys: Vec<ApiKeyConfig>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Jobs a tenant may have queued or running before new ones get 429.
    pub max_in_flight_per_tenant: u64,
    /// Authenticated requests a tenant may make per second, across all dispatchers, before 429
    /// (0: no limit).
    pub max_requests_per_sec_per_tenant: u32,
    /// Most jobs in one `POST /v1/jobs` array.
    pub max_jobs_per_request: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The secret the client sends as `Authorization: Bearer <key>`.
    pub key: String,
    /// Tenant the key acts as.
    pub tenant: String,
    /// Whether the key may use admin endpoints.
    #[serde(default)]
    pub admin: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LibraryConfig {
    /// Hugging Face cache / model directory.
    pub model_dir: PathBuf,
    /// Directory of LoRA `.safetensors` files; a job's LoRA `name` is a file stem here.
    pub lora_dir: PathBuf,
    /// Directory of ControlNet models (diffusers layout), one folder per name.
    pub controlnet_dir: PathBuf,
    /// Pipelines with LoRAs fused in that a worker keeps (each a full copy of the model);
    /// jobs with the same model and LoRA set (with scales) reuse one and pay the fuse once.
    pub lora_cache_pipelines: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// `tiny` (built-in random test model), a local diffusers folder, or a Hugging Face hub id.
    pub source: String,
    /// Optional UNet weights replacing the source's UNet (e.g. an SDXL-Lightning UNet file or hub path).
    pub unet: Option<String>,
    /// Override of the scheduler's prediction type (`epsilon` or `sample`).
    pub prediction_type: Option<String>,
    /// Largest width or height a job may ask for.
    pub max_side: u32,
    /// Largest width × height a job may ask for.
    pub max_pixels: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// `cpu`, `cuda`, `cuda:N` or `metal`.
    pub device: String,
    /// Most images in one batch.
    pub max_batch_images: u32,
    /// Budget of one batch in images × pixels × steps.
    pub max_batch_pixel_steps: u64,
    /// Milliseconds a batch waits for compatible jobs before it runs.
    pub batch_deadline_ms: u64,
    /// Seconds between heartbeats.
    pub heartbeat_interval_secs: u64,
    /// Seconds a stopping worker waits for its batch to finish before giving jobs back.
    pub drain_timeout_secs: u64,
    /// Address of the worker's Prometheus `/metrics` and `/healthz` (empty: not served).
    pub metrics_listen: String,
    /// Deflate effort for PNG results.
    pub png_compression: PngCompression,
    /// LoRAs jobs give by URL: where they may come from and the disk cache they are kept in.
    pub lora_fetch: LoraFetchConfig,
}

/// How a worker fetches LoRAs that jobs give by `url` (`[worker.lora_fetch]`). Files are kept in
/// a content-addressed disk cache, `<cache_dir>/<sha256>.safetensors`, bounded in bytes, the
/// least recently used evicted first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraFetchConfig {
    /// Directory of the cache (created at start).
    pub cache_dir: PathBuf,
    /// Most bytes the cached files may take together; a file larger than this is refused.
    pub cache_max_bytes: u64,
    /// Largest LoRA file, in bytes (declared or streamed).
    pub max_file_bytes: u64,
    /// Seconds one download may take, connection included.
    pub timeout_secs: u64,
    /// Hosts an `https://` URL may name: exact names, `*.example.com` for subdomains, or IP
    /// literals; empty: none (URL LoRAs over HTTP are refused).
    #[serde(deserialize_with = "one_or_many")]
    pub allowed_hosts: Vec<String>,
    /// Buckets an `s3://` URL may name, read with the worker's S3 client; empty: none.
    #[serde(deserialize_with = "one_or_many")]
    pub allowed_buckets: Vec<String>,
    /// Plain `http://` URLs allowed besides `https://` (tests, trusted networks).
    pub allow_http: bool,
    /// Non-public addresses (loopback, private, link-local, …) allowed anyway, as CIDRs or IPs.
    #[serde(deserialize_with = "one_or_many")]
    pub allowed_private: Vec<String>,
    /// Redirects followed, each hop checked like the first URL (0: none).
    pub max_redirects: usize,
}

impl Default for LoraFetchConfig {
    fn default() -> Self {
        LoraFetchConfig {
            cache_dir: PathBuf::from("models/lora-cache"),
            cache_max_bytes: 10 * 1024 * 1024 * 1024,
            max_file_bytes: 2 * 1024 * 1024 * 1024,
            timeout_secs: 300,
            allowed_hosts: Vec::new(),
            allowed_buckets: Vec::new(),
            allow_http: false,
            allowed_private: Vec::new(),
            max_redirects: 0,
        }
    }
}

/// How hard PNG's deflate works (`worker.png_compression`, `fleet generate --png-compression`).
/// Every level writes a standard PNG any decoder reads; they differ in CPU time and size. Per
/// megapixel of a photograph (docs/PERFORMANCE.md): `fast` ≈ 6–9 ms, `balanced` (zlib level 6,
/// what Pillow's `save` and `image`'s encoder use) 130–250 ms for files up to 7 % smaller, `high`
/// (level 9) 130–610 ms for ≈ 1 % less again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PngCompression {
    /// fdeflate's single-pass compressor.
    #[default]
    Fast,
    /// zlib level 6 (Pillow's and the `image` crate's default).
    Balanced,
    /// zlib level 9.
    High,
}

impl std::str::FromStr for PngCompression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "fast" => Ok(Self::Fast),
            "balanced" => Ok(Self::Balanced),
            "high" => Ok(Self::High),
            other => Err(format!("unknown PNG compression `{other}` (use fast, balanced or high)")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest prompt, in characters.
    pub max_prompt_chars: usize,
    /// Largest `num_images`.
    pub max_num_images: u32,
    /// Largest number of LoRAs per job.
    pub max_loras: usize,
    /// Largest `metadata`, serialised, in bytes.
    pub max_metadata_bytes: usize,
    /// Largest inline control image, decoded, in bytes.
    pub max_control_image_bytes: usize,
    /// Buckets control images may be read from.
    pub allowed_image_buckets: Vec<String>,
}

impl RabbitMqConfig {
    /// The broker addresses to use: `urls` when set, else `url`.
    pub fn broker_urls(&self) -> Vec<String> {
        if self.urls.is_empty() { vec![self.url.clone()] } else { self.urls.clone() }
    }
}

/// A list of strings from a list, or from one string of comma-separated items (environment
/// variables and `--set` give a list as one string).
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        OneOrMany::Many(list) => list,
    })
}

impl Default for RabbitMqConfig {
    fn default() -> Self {
        RabbitMqConfig {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            urls: Vec::new(),
            quorum_initial_group_size: None,
            exchange: "fleet.jobs".into(),
            queue_prefix: "fleet".into(),
            dead_letter_exchange: "fleet.dlx".into(),
            dead_letter_queue: "fleet.dead".into(),
            delivery_limit: 3,
            publish_timeout_secs: 10,
            max_queue_depth: 100_000,
            tenant_lanes: true,
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379/0".into(),
            key_prefix: "fleet".into(),
            status_ttl_secs: 7 * 24 * 3600,
            idempotency_ttl_secs: 24 * 3600,
            heartbeat_ttl_secs: 30,
            usage_ttl_secs: 90 * 24 * 3600,
            allow_volatile: false,
            sentinels: Vec::new(),
            sentinel_master: "mymaster".into(),
        }
    }
}

/// The S3 endpoint of the server `scripts/services.sh` starts, the default `s3.endpoint`.
pub const LOCAL_S3_ENDPOINT: &str = "http://127.0.0.1:8333";
/// The bucket `scripts/services.sh` creates, the default `s3.bucket`.
pub const LOCAL_S3_BUCKET: &str = "fleet-images";
/// The access key `scripts/services.sh` creates, the default `s3.access_key_id` while the endpoint
/// is [`LOCAL_S3_ENDPOINT`]. A development key for a server on loopback, never an AWS one.
pub const LOCAL_S3_ACCESS_KEY: &str = "fleet-dev-access";
/// The secret of [`LOCAL_S3_ACCESS_KEY`].
pub const LOCAL_S3_SECRET_KEY: &str = "fleet-dev-secret";

impl S3Config {
    /// The built-in keys belong to the built-in endpoint: they fill in what is not set only while
    /// the endpoint is [`LOCAL_S3_ENDPOINT`] (so a wrong secret given alone is tried, and refused
    /// by the server, rather than reported as half a pair), and a deployment that names its own
    /// endpoint and no keys gets the standard AWS chain.
    fn fill_local_keys(&mut self) {
        if self.endpoint != LOCAL_S3_ENDPOINT {
            return;
        }
        if self.access_key_id.is_empty() {
            self.access_key_id = LOCAL_S3_ACCESS_KEY.into();
        }
        if self.secret_access_key.is_empty() {
            self.secret_access_key = LOCAL_S3_SECRET_KEY.into();
        }
    }
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: LOCAL_S3_ENDPOINT.into(),
            region: "us-east-1".into(),
            bucket: LOCAL_S3_BUCKET.into(),
            prefix: "images".into(),
            path_style: true,
            access_key_id: LOCAL_S3_ACCESS_KEY.into(),
            secret_access_key: LOCAL_S3_SECRET_KEY.into(),
            presign_ttl_secs: 3600,
            local_dir: None,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            api_keys: Vec::new(),
            max_body_bytes: 12 * 1024 * 1024,
            max_in_flight_per_tenant: 10_000,
            max_requests_per_sec_per_tenant: 100,
            max_jobs_per_request: 1000,
        }
    }
}

impl Default for LibraryConfig {
    fn default() -> Self {
        LibraryConfig {
            model_dir: PathBuf::from("models"),
            lora_dir: PathBuf::from("models/loras"),
            controlnet_dir: PathBuf::from("models/controlnet"),
            lora_cache_pipelines: 2,
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig { source: "tiny".into(), unet: None, prediction_type: None, max_side: 2048, max_pixels: 4_200_000 }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            device: "cpu".into(),
            max_batch_images: 8,
            max_batch_pixel_steps: 8 * 1024 * 1024 * 4,
            batch_deadline_ms: 50,
            heartbeat_interval_secs: 5,
            drain_timeout_secs: 120,
            metrics_listen: "127.0.0.1:9464".into(),
            png_compression: PngCompression::Fast,
            lora_fetch: LoraFetchConfig::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let limits = Limits::default();
        LimitsConfig {
            max_prompt_chars: limits.max_prompt_chars,
            max_num_images: limits.max_num_images,
            max_loras: limits.max_loras,
            max_metadata_bytes: limits.max_metadata_bytes,
            max_control_image_bytes: limits.max_control_image_bytes,
            allowed_image_buckets: limits.allowed_image_buckets,
        }
    }
}

impl Default for FleetConfig {
    fn default() -> Self {
        let mut models = BTreeMap::new();
        models.insert(
            crate::job::DEFAULT_MODEL.to_owned(),
            ModelConfig {
                // SDXL base + ByteDance's 4-step UNet + the fp16-fix VAE (fleet-engine resolves this hub id).
                source: "ByteDance/SDXL-Lightning".into(),
                unet: Some("sdxl_lightning_4step_unet.safetensors".into()),
                ..ModelConfig::default()
            },
        );
        models.insert("tiny".to_owned(), ModelConfig::default());
        FleetConfig {
            rabbitmq: RabbitMqConfig::default(),
            redis: RedisConfig::default(),
            s3: S3Config::default(),
            http: HttpConfig::default(),
            library: LibraryConfig::default(),
            models,
            worker: WorkerConfig::default(),
            limits: LimitsConfig::default(),
            client: ClientConfig::default(),
            tenants: TenantsConfig::default(),
            retention: RetentionConfig::default(),
            webhooks: WebhooksConfig::default(),
        }
    }
}

pub use check::mask_url;
pub use load::{ConfigError, ConfigSources};

impl FleetConfig {
    /// The limits a job for `model` is validated against (deployment-wide limits for unknown models:
    /// routing refuses those with `model_unavailable`).
    pub fn limits_for(&self, model: &str) -> Limits {
        let defaults = ModelConfig::default();
        let model = self.models.get(model).unwrap_or(&defaults);
        Limits {
            max_side: model.max_side,
            max_pixels: model.max_pixels,
            max_prompt_chars: self.limits.max_prompt_chars,
            max_num_images: self.limits.max_num_images,
            max_loras: self.limits.max_loras,
            max_metadata_bytes: self.limits.max_metadata_bytes,
            max_control_image_bytes: self.limits.max_control_image_bytes,
            allowed_image_buckets: self.limits.allowed_image_buckets.clone(),
        }
    }
}
