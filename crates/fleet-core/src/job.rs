//! The job wire format: one generation request, as it travels over HTTP and RabbitMQ.
//!
//! A [`JobSpec`] is only parsed here; [`crate::validate`] turns it into a [`crate::ValidJob`],
//! the only form later stages accept.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The wire-format version this build reads and writes.
pub const SPEC_VERSION: u32 = 1;
/// The model a job runs on when it names none.
pub const DEFAULT_MODEL: &str = "sdxl-lightning-4step";
/// Step counts the SDXL-Lightning checkpoints are distilled for.
pub const ALLOWED_STEPS: [u32; 4] = [1, 2, 4, 8];

/// One image-generation job, as `POST /v1/jobs` takes it and as a RabbitMQ message carries it.
///
/// Published straight onto RabbitMQ, a message's job id is its `id`, else its AMQP `message_id`
/// when that is a UUID (recommended: set it), else a UUIDv5 derived from the message (namespace
/// `6c1f5e0a-2d4b-4c3e-9a7f-1b2c3d4e5f60`, name: the `x-fleet-tenant` header, a NUL byte, the
/// body), so every redelivery is the same job. A job without `seed` runs with the seed its id
/// implies: the first 8 bytes (big-endian) of SHA-256 of the id's lower-case hyphenated text,
/// shifted right by 11 bits, so every delivery, republish and resume draws the same images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "lightning-fleet job", extend("$id" = "https://lightning-fleet.dev/schemas/job.v1.json"))]
pub struct JobSpec {
    /// Wire-format version; must be 1.
    #[serde(default = "spec_version")]
    pub v: u32,
    /// Job id (UUID). Assigned by the dispatcher (UUID v7, time-ordered) when absent; on RabbitMQ the
    /// message's `message_id` or an id derived from the message (see the job's description).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    /// Client-chosen key: the same key from the same tenant with the same request returns the existing job instead of
    /// creating a new one; with a different request it is refused (HTTP 409 `conflict`, naming the existing job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// What to draw. Required, non-empty, at most 4000 characters; longer than 77 CLIP tokens is truncated by the model.
    pub prompt: String,
    /// What not to draw; only used when `guidance` > 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    /// Name of a model configured on the workers.
    #[serde(default = "default_model")]
    pub model: String,
    /// Denoising steps: 1, 2, 4 or 8 (the Lightning checkpoints are distilled for exactly these).
    #[serde(default = "default_steps")]
    pub steps: u32,
    /// Classifier-free guidance scale, 0–20. Lightning is made for 0; values above 1 run the negative prompt too.
    #[serde(default)]
    pub guidance: f32,
    /// Image width in pixels: a multiple of 8, at least 64, at most the model's maximum.
    #[serde(default = "default_side")]
    pub width: u32,
    /// Image height in pixels: a multiple of 8, at least 64, at most the model's maximum.
    #[serde(default = "default_side")]
    pub height: u32,
    /// Seed of the first image; image i uses seed + i. When absent, derived from the job id (see the
    /// job's description) and recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Number of images, 1–16.
    #[serde(default = "default_num_images")]
    pub num_images: u32,
    /// Style LoRAs to fuse, in order: by name from the workers' LoRA library, or by URL and SHA-256.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<LoraRef>,
    /// Optional ControlNet conditioning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controlnet: Option<ControlNetSpec>,
    /// Image-to-image: the picture to start from, resized to `width` × `height` and encoded with the
    /// VAE (the same sources and limits as `controlnet.image`: `s3://bucket/key` in an allowed bucket,
    /// or inline base64 PNG/JPEG/WebP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image: Option<String>,
    /// How much of `init_image` is repainted, 0 < strength ≤ 1 (default 0.6; only with
    /// `init_image`): the last ⌊steps × strength⌋ steps run, so it must be at least 1/steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength: Option<f32>,
    /// Inpainting (with `init_image`): white repaints, black keeps; resized to the output size and
    /// cut at half grey. The same sources and limits as `init_image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_image: Option<String>,
    /// Encoding of the result images.
    #[serde(default)]
    pub output: OutputSpec,
    /// Scheduling class: `interactive` work is always served before `bulk` work.
    #[serde(default)]
    pub priority: Priority,
    /// Seconds the job's images and status record are kept after it finishes, then removed
    /// together: at least 1, at most the tenant's `tenants.<name>.retention.max_secs`. Absent:
    /// the tenant's `retention.default_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 315_360_000))]
    pub retention: Option<u64>,
    /// Owner of the job. Set by the dispatcher from the caller's API key; a value in a request body is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Free JSON object (at most 8 KiB serialised), stored and returned untouched.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Where to POST the job's status when it finishes (and, if asked, as it progresses), signed
    /// per the Standard Webhooks specification with the tenant's secret. Without it, the tenant's
    /// default webhook (if configured) applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<crate::webhook::WebhookSpec>,
}

/// A LoRA and the strength it is fused with: from the workers' library by `name`, or fetched by
/// the workers from `url` and identified by its `sha256` (exactly one of `name` and `url`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraRef {
    /// Library name (letters, digits, `.`, `_`, `-`); never a path or URL. Exactly one of `name` and `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where the workers fetch the `.safetensors` file: `https://…` (a host the workers allow) or
    /// `s3://bucket/key` (a bucket the workers allow). Exactly one of `name` and `url`; needs `sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// SHA-256 of the file at `url`, 64 hex digits: required with `url`, checked before the file
    /// is used, and the file's identity (cache, batching).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Strength, −4 to 4.
    #[serde(default = "default_lora_scale")]
    pub scale: f32,
}

/// Where a validated job's LoRA comes from ([`LoraRef::source`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraSource<'a> {
    /// A library name.
    Library(&'a str),
    /// A URL and the lowercase hex SHA-256 its file must have.
    Url { url: &'a str, sha256: &'a str },
}

impl LoraRef {
    /// A LoRA from the library.
    pub fn library(name: impl Into<String>, scale: f32) -> Self {
        LoraRef { name: Some(name.into()), url: None, sha256: None, scale }
    }

    /// A LoRA fetched from `url`, whose file has the SHA-256 `sha256`.
    pub fn from_url(url: impl Into<String>, sha256: impl Into<String>, scale: f32) -> Self {
        LoraRef { name: None, url: Some(url.into()), sha256: Some(sha256.into()), scale }
    }

    /// Where the LoRA comes from; `None` unless exactly one of `name` and `url` (with `sha256`)
    /// is set, which validation guarantees.
    pub fn source(&self) -> Option<LoraSource<'_>> {
        match (&self.name, &self.url, &self.sha256) {
            (Some(name), None, None) => Some(LoraSource::Library(name)),
            (None, Some(url), Some(sha256)) => Some(LoraSource::Url { url, sha256 }),
            _ => None,
        }
    }

    /// What names the LoRA to people: its library name, else its URL.
    pub fn label(&self) -> &str {
        self.name.as_deref().or(self.url.as_deref()).unwrap_or_default()
    }

    /// What makes two LoRAs the same weights: the library name, or `sha256:<digest>` for a
    /// fetched file (a library name has no `:`, so the two never collide; the same file from two
    /// URLs is one LoRA).
    pub fn identity(&self) -> String {
        match (&self.name, &self.sha256) {
            (Some(name), _) => name.clone(),
            (None, Some(sha256)) => format!("sha256:{}", sha256.to_ascii_lowercase()),
            (None, None) => String::new(),
        }
    }
}

/// ControlNet conditioning for a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlNetSpec {
    /// Library name of the ControlNet model (e.g. `canny`, `depth`).
    pub model: String,
    /// The control image: `s3://bucket/key` in an allowed bucket, or inline base64 PNG/JPEG/WebP
    /// (bare or as a `data:image/png;base64,` URI) up to the configured size.
    pub image: String,
    /// Conditioning scale, 0–2.
    #[serde(default = "default_controlnet_scale")]
    pub scale: f32,
    /// Fraction of the steps after which control starts, 0–1.
    #[serde(default)]
    pub start: f32,
    /// Fraction of the steps after which control ends, 0–1, greater than `start`.
    #[serde(default = "default_controlnet_end")]
    pub end: f32,
}

/// How result images are encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Image format.
    #[serde(default)]
    pub format: ImageFormat,
    /// Quality 1–100 for JPEG (ignored for PNG and for WebP, which is written lossless).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<u8>,
}

/// Result image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// PNG, with the generation parameters in text chunks.
    #[default]
    Png,
    /// JPEG.
    Jpeg,
    /// WebP (lossless).
    Webp,
}

impl ImageFormat {
    /// From a file's extension (`png`, `jpg`/`jpeg`, `webp`, any case).
    pub fn from_path(path: &std::path::Path) -> Result<Self, String> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        match ext.as_str() {
            "png" => Ok(Self::Png),
            "jpg" | "jpeg" => Ok(Self::Jpeg),
            "webp" => Ok(Self::Webp),
            _ => Err(format!("unsupported output format for {} (use .png, .jpg or .webp)", path.display())),
        }
    }

    /// File extension without the dot.
    pub const fn extension(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpg",
            ImageFormat::Webp => "webp",
        }
    }

    /// MIME type for uploads.
    pub const fn content_type(self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Webp => "image/webp",
        }
    }
}

/// Scheduling class of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Someone is waiting for it.
    #[default]
    Interactive,
    /// Dataset generation; yields to interactive work.
    Bulk,
}

impl Priority {
    /// Wire name (`interactive` / `bulk`), also used in queue names.
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Bulk => "bulk",
        }
    }
}

impl Default for OutputSpec {
    fn default() -> Self {
        OutputSpec { format: ImageFormat::Png, quality: None }
    }
}

impl JobSpec {
    /// A job with every optional field at its default.
    pub fn new(prompt: impl Into<String>) -> Self {
        JobSpec {
            v: SPEC_VERSION,
            id: None,
            idempotency_key: None,
            prompt: prompt.into(),
            negative_prompt: None,
            model: default_model(),
            steps: default_steps(),
            guidance: 0.0,
            width: default_side(),
            height: default_side(),
            seed: None,
            num_images: default_num_images(),
            loras: Vec::new(),
            controlnet: None,
            init_image: None,
            strength: None,
            mask_image: None,
            output: OutputSpec::default(),
            priority: Priority::default(),
            retention: None,
            tenant: None,
            metadata: serde_json::Map::new(),
            webhook: None,
        }
    }
}

/// The strength of an image-to-image job that sets none.
pub const DEFAULT_STRENGTH: f32 = 0.6;

impl JobSpec {
    /// The strength this job runs with: its own, else [`DEFAULT_STRENGTH`] (`None` without an
    /// init image).
    pub fn effective_strength(&self) -> Option<f32> {
        self.init_image.as_ref().map(|_| self.strength.unwrap_or(DEFAULT_STRENGTH))
    }
}

/// Steps of a `steps`-step schedule that `strength` keeps: diffusers'
/// `min(int(steps × strength), steps)`.
pub fn kept_steps(steps: u32, strength: f32) -> u32 {
    ((f64::from(steps) * f64::from(strength)) as u32).min(steps)
}

fn spec_version() -> u32 {
    SPEC_VERSION
}
fn default_model() -> String {
    DEFAULT_MODEL.to_owned()
}
fn default_steps() -> u32 {
    4
}
fn default_side() -> u32 {
    1024
}
fn default_num_images() -> u32 {
    1
}
fn default_lora_scale() -> f32 {
    1.0
}
fn default_controlnet_scale() -> f32 {
    0.5
}
fn default_controlnet_end() -> f32 {
    1.0
}
