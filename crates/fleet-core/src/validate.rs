//! Validation: every problem of a [`JobSpec`] at once, each with its field path.
//!
//! A [`ValidJob`] can only be made here, so code that takes one never sees unchecked input.

use base64::Engine as _;
use uuid::Uuid;

use crate::job::{ALLOWED_STEPS, JobSpec, SPEC_VERSION};
use crate::names::check_library_name;

/// Longest `retention` any job may ask for (10 years); a tenant's own maximum
/// (`tenants.<name>.retention.max_secs`) is checked by the dispatcher.
pub const MAX_RETENTION_SECS: u64 = 10 * 365 * 24 * 3600;

/// Per-model and per-deployment limits a job is checked against.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest width or height in pixels.
    pub max_side: u32,
    /// Largest width × height.
    pub max_pixels: u64,
    /// Largest prompt (and negative prompt), in characters.
    pub max_prompt_chars: usize,
    /// Largest number of images per job.
    pub max_num_images: u32,
    /// Largest number of LoRAs per job.
    pub max_loras: usize,
    /// Largest `metadata` object, serialised, in bytes.
    pub max_metadata_bytes: usize,
    /// Largest inline control image, decoded, in bytes.
    pub max_control_image_bytes: usize,
    /// Buckets a control image may be read from (`s3://bucket/...`).
    pub allowed_image_buckets: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_side: 2048,
            max_pixels: 4_200_000,
            max_prompt_chars: 4000,
            max_num_images: 16,
            max_loras: 8,
            max_metadata_bytes: 8 * 1024,
            max_control_image_bytes: 8 * 1024 * 1024,
            allowed_image_buckets: Vec::new(),
        }
    }
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct FieldError {
    /// Path of the field, e.g. `loras[2].scale`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All problems found in one job (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", join(.0))]
pub struct ValidationErrors(pub Vec<FieldError>);

fn join(errors: &[FieldError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// A job that passed validation. Only [`JobSpec::validate`] makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidJob {
    spec: JobSpec,
    /// The id came with the job (from the client, or from an earlier accept), not from
    /// [`ValidJob::assign`].
    id_given: bool,
    /// The seed came with the job, not from [`ValidJob::assign`].
    seed_given: bool,
}

impl ValidJob {
    /// The validated spec.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// Gives up the guarantee and returns the spec (e.g. to serialise it).
    pub fn into_spec(self) -> JobSpec {
        self.spec
    }

    /// Whether a later request can name this same job — it carries an idempotency key or an id
    /// that was not assigned here — so that a retry may find its record (the dispatcher then
    /// notes that its message was published; no retry can ever find any other job).
    pub fn findable_by_retry(&self) -> bool {
        self.spec.idempotency_key.is_some() || self.id_given
    }

    /// The job as its record has it: `id` and the seed its first accept assigned (`seed` when the
    /// record knows it, else the id's rule for a seed the client did not send), while the request
    /// stays as the client sent it — so [`Self::request_digest`] is the digest the record was
    /// created with.
    pub fn as_recorded(mut self, id: Uuid, seed: Option<u64>) -> ValidJob {
        self.spec.id = Some(id);
        match seed {
            Some(seed) => self.spec.seed = Some(seed),
            None if !self.seed_given => self.spec.seed = Some(crate::identity::seed_for(id)),
            None => {}
        }
        self
    }

    /// Fills in what the dispatcher owns: the id (kept when the client sent one), the seed (kept
    /// when sent, else derived from the id: [`crate::identity::seed_for`]) and the tenant (always
    /// replaced: it is never trusted from the body).
    pub fn assign(mut self, tenant: &str, new_id: impl FnOnce() -> Uuid) -> ValidJob {
        let id = *self.spec.id.get_or_insert_with(new_id);
        self.spec.seed.get_or_insert_with(|| crate::identity::seed_for(id));
        self.spec.tenant = Some(tenant.to_owned());
        self
    }

    /// The digest of the request as the client sent it ([`crate::identity::request_digest`]):
    /// without the id and seed [`Self::assign`] filled in, so a retry of the same body matches.
    pub fn request_digest(&self) -> String {
        let mut spec = self.spec.clone();
        if !self.id_given {
            spec.id = None;
        }
        if !self.seed_given {
            spec.seed = None;
        }
        spec.tenant = None;
        crate::identity::request_digest(&spec)
    }
}

/// A new time-ordered job id (UUID v7).
pub fn new_job_id() -> Uuid {
    Uuid::now_v7()
}

/// Where a control image comes from, once its reference is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlImageSource {
    /// An object in an allowed bucket.
    S3 { bucket: String, key: String },
    /// Image bytes sent inline.
    Inline { bytes: Vec<u8>, kind: InlineImageKind },
}

/// Formats accepted inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InlineImageKind {
    Png,
    Jpeg,
    Webp,
}

/// Parses and checks a control image reference against the limits.
pub fn parse_control_image(image: &str, limits: &Limits) -> Result<ControlImageSource, String> {
    if let Some(rest) = image.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').ok_or("an S3 URI needs a key: s3://bucket/key")?;
        if bucket.is_empty() || key.is_empty() {
            return Err("an S3 URI needs a bucket and a key: s3://bucket/key".to_owned());
        }
        if !limits.allowed_image_buckets.iter().any(|b| b == bucket) {
            return Err(format!("bucket `{bucket}` is not an allowed control-image bucket"));
        }
        return Ok(ControlImageSource::S3 { bucket: bucket.to_owned(), key: key.to_owned() });
    }
    let bytes = decode_inline_image(image, limits.max_control_image_bytes)?;
    if bytes.len() > limits.max_control_image_bytes {
        return Err(format!("inline image is larger than {} bytes", limits.max_control_image_bytes));
    }
    let kind = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        InlineImageKind::Png
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        InlineImageKind::Jpeg
    } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
        InlineImageKind::Webp
    } else {
        return Err("inline image is neither PNG, JPEG nor WebP".to_owned());
    };
    crate::control_image::check_inline_image(&bytes, kind)?;
    Ok(ControlImageSource::Inline { bytes, kind })
}

/// Where a LoRA URL points ([`parse_lora_url`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoraUrl {
    /// An `https://` (or, where workers allow it, `http://`) URL, fetched through the guarded
    /// HTTP client.
    Http(String),
    /// An object of an S3 bucket, read through the workers' S3 client.
    S3 { bucket: String, key: String },
}

/// Longest LoRA URL, in bytes.
pub const MAX_LORA_URL_LEN: usize = 2048;

/// A LoRA's `url`: `https://host/…` (plain `http://` passes here; workers refuse it unless their
/// configuration allows it) or `s3://bucket/key`. Which hosts and buckets are allowed is the
/// workers' configuration, checked when they fetch.
pub fn parse_lora_url(url: &str) -> Result<LoraUrl, String> {
    if url.len() > MAX_LORA_URL_LEN {
        return Err(format!("must be at most {MAX_LORA_URL_LEN} characters"));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must not contain spaces or control characters".to_owned());
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').ok_or("an S3 URI needs a key: s3://bucket/key")?;
        if bucket.is_empty() || key.is_empty() {
            return Err("an S3 URI needs a bucket and a key: s3://bucket/key".to_owned());
        }
        return Ok(LoraUrl::S3 { bucket: bucket.to_owned(), key: key.to_owned() });
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        let host = url.split_once("://").map(|(_, rest)| rest).unwrap_or_default();
        if host.is_empty() || host.starts_with('/') {
            return Err("a URL needs a host: https://host/path".to_owned());
        }
        return Ok(LoraUrl::Http(url.to_owned()));
    }
    Err("must be an https:// URL or an s3://bucket/key URI".to_owned())
}

/// Why `digest` is not a SHA-256 in hex, or `Ok`.
pub fn check_sha256(digest: &str) -> Result<(), String> {
    if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err("must be a SHA-256 digest: 64 hex digits".to_owned())
    }
}

/// The bytes of an inline image (bare base64 or a `data:image/png|jpeg|webp;base64,` URI), refused
/// unread when its text is longer than `max_bytes` could encode.
pub fn decode_inline_image(image: &str, max_bytes: usize) -> Result<Vec<u8>, String> {
    let encoded = match image.strip_prefix("data:") {
        Some(uri) => {
            let (mime, data) =
                uri.split_once(";base64,").ok_or("a data URI must be base64: data:image/png;base64,...")?;
            if !matches!(mime, "image/png" | "image/jpeg" | "image/webp") {
                return Err(format!("data URI type `{mime}` is not image/png, image/jpeg or image/webp"));
            }
            data
        }
        None => image,
    };
    // Bound the work before decoding: base64 is 4/3 the size of its bytes.
    if encoded.len() / 4 * 3 > max_bytes.saturating_add(3) {
        return Err(format!("inline image is larger than {max_bytes} bytes"));
    }
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| format!("not an s3:// URI and not valid base64 ({e})"))
}

/// Prompt text: no NUL or other control characters (tab and line breaks are fine). They mean
/// nothing to the model and break the PNG text chunks and logs the prompt is written to.
fn check_text(text: &str) -> Result<(), String> {
    match text.char_indices().find(|(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r')) {
        Some((at, c)) => Err(format!("contains the control character {:?} at byte {at}", c)),
        None => Ok(()),
    }
}

fn in_range(value: f32, lo: f32, hi: f32) -> bool {
    value.is_finite() && (lo..=hi).contains(&value)
}

struct Collector(Vec<FieldError>);

impl Collector {
    fn check(&mut self, ok: bool, field: impl Into<String>, message: impl Into<String>) {
        if !ok {
            self.0.push(FieldError { field: field.into(), message: message.into() });
        }
    }
    fn result(&mut self, field: impl Into<String>, result: Result<(), String>) {
        if let Err(message) = result {
            self.0.push(FieldError { field: field.into(), message });
        }
    }
}

impl JobSpec {
    /// Checks every field against `limits`; returns every problem, not just the first.
    pub fn validate(self, limits: &Limits) -> Result<ValidJob, ValidationErrors> {
        let mut c = Collector(Vec::new());
        c.check(
            self.v == SPEC_VERSION,
            "v",
            format!("unsupported version {} (this build reads {SPEC_VERSION})", self.v),
        );
        if let Some(key) = &self.idempotency_key {
            c.check(
                !key.is_empty() && key.len() <= 256 && !key.chars().any(char::is_control),
                "idempotency_key",
                "must be 1-256 printable characters",
            );
        }
        c.check(!self.prompt.trim().is_empty(), "prompt", "must not be empty");
        c.result("prompt", check_text(&self.prompt));
        let max_chars = limits.max_prompt_chars;
        c.check(self.prompt.chars().count() <= max_chars, "prompt", format!("must be at most {max_chars} characters"));
        if let Some(negative) = &self.negative_prompt {
            c.check(
                negative.chars().count() <= max_chars,
                "negative_prompt",
                format!("must be at most {max_chars} characters"),
            );
            c.result("negative_prompt", check_text(negative));
        }
        c.result("model", check_library_name(&self.model));
        c.check(ALLOWED_STEPS.contains(&self.steps), "steps", "must be 1, 2, 4 or 8");
        c.check(in_range(self.guidance, 0.0, 20.0), "guidance", "must be between 0 and 20");
        for (field, side) in [("width", self.width), ("height", self.height)] {
            c.check(side % 8 == 0, field, "must be a multiple of 8");
            c.check(
                (64..=limits.max_side).contains(&side),
                field,
                format!("must be between 64 and {} for this model", limits.max_side),
            );
        }
        let pixels = u64::from(self.width) * u64::from(self.height);
        c.check(
            pixels <= limits.max_pixels,
            "width",
            format!("width × height = {pixels} pixels exceeds this model's {} pixel limit", limits.max_pixels),
        );
        c.check(
            (1..=limits.max_num_images).contains(&self.num_images),
            "num_images",
            format!("must be between 1 and {}", limits.max_num_images),
        );
        if let Some(seed) = self.seed {
            c.check(
                seed.checked_add(u64::from(self.num_images.saturating_sub(1))).is_some(),
                "seed",
                "seed + num_images - 1 must fit in 64 bits",
            );
        }
        c.check(self.loras.len() <= limits.max_loras, "loras", format!("at most {} LoRAs per job", limits.max_loras));
        for (i, lora) in self.loras.iter().enumerate() {
            match (&lora.name, &lora.url) {
                (Some(name), None) => {
                    c.result(format!("loras[{i}].name"), check_library_name(name));
                    c.check(
                        lora.sha256.is_none(),
                        format!("loras[{i}].sha256"),
                        "only a LoRA given by `url` takes a sha256",
                    );
                }
                (None, Some(url)) => {
                    c.result(format!("loras[{i}].url"), parse_lora_url(url).map(drop));
                    match &lora.sha256 {
                        Some(digest) => c.result(format!("loras[{i}].sha256"), check_sha256(digest)),
                        None => c.check(false, format!("loras[{i}].sha256"), "is required with `url`"),
                    }
                }
                (Some(_), Some(_)) => c.check(false, format!("loras[{i}]"), "give `name` or `url`, not both"),
                (None, None) => c.check(false, format!("loras[{i}]"), "needs `name` (library) or `url` with `sha256`"),
            }
            c.check(in_range(lora.scale, -4.0, 4.0), format!("loras[{i}].scale"), "must be between -4 and 4");
            if lora.source().is_some() {
                let identity = lora.identity();
                let first =
                    self.loras.iter().position(|other| other.source().is_some() && other.identity() == identity);
                let field = if lora.name.is_some() { "name" } else { "sha256" };
                c.check(first == Some(i), format!("loras[{i}].{field}"), format!("duplicate LoRA `{}`", lora.label()));
            }
        }
        if let Some(cn) = &self.controlnet {
            c.result("controlnet.model", check_library_name(&cn.model));
            c.result("controlnet.image", parse_control_image(&cn.image, limits).map(drop));
            c.check(in_range(cn.scale, 0.0, 2.0), "controlnet.scale", "must be between 0 and 2");
            c.check(in_range(cn.start, 0.0, 1.0), "controlnet.start", "must be between 0 and 1");
            c.check(in_range(cn.end, 0.0, 1.0), "controlnet.end", "must be between 0 and 1");
            c.check(cn.start < cn.end, "controlnet.end", "must be greater than controlnet.start");
        }
        if let Some(init) = &self.init_image {
            c.result("init_image", parse_control_image(init, limits).map(drop));
        }
        if let Some(mask) = &self.mask_image {
            c.check(self.init_image.is_some(), "mask_image", "needs init_image (the picture to inpaint)");
            c.result("mask_image", parse_control_image(mask, limits).map(drop));
        }
        if let Some(strength) = self.strength {
            c.check(self.init_image.is_some(), "strength", "only applies with init_image");
            c.check(strength > 0.0 && strength <= 1.0, "strength", "must be greater than 0 and at most 1");
        }
        if let Some(strength) = self.effective_strength()
            && strength > 0.0
            && ALLOWED_STEPS.contains(&self.steps)
        {
            let steps = self.steps;
            c.check(
                crate::job::kept_steps(steps, strength) >= 1,
                "strength",
                format!(
                    "{strength} keeps no step of {steps} (the last ⌊steps × strength⌋ steps run): \
                     must be at least {} for {steps} steps",
                    1.0 / f64::from(steps)
                ),
            );
        }
        if let Some(quality) = self.output.quality {
            c.check((1..=100).contains(&quality), "output.quality", "must be between 1 and 100");
        }
        if let Some(tenant) = &self.tenant {
            c.result("tenant", check_library_name(tenant));
        }
        if let Some(retention) = self.retention {
            c.check(
                (1..=MAX_RETENTION_SECS).contains(&retention),
                "retention",
                format!("must be 1 to {MAX_RETENTION_SECS} seconds (10 years)"),
            );
        }
        if let Some(webhook) = &self.webhook {
            for (field, message) in webhook.problems() {
                c.check(false, format!("webhook.{field}"), message);
            }
        }
        let metadata_len = serde_json::to_vec(&self.metadata).map_or(usize::MAX, |v| v.len());
        c.check(
            metadata_len <= limits.max_metadata_bytes,
            "metadata",
            format!("is {metadata_len} bytes serialised; at most {} allowed", limits.max_metadata_bytes),
        );
        if c.0.is_empty() {
            let mut spec = self;
            // One spelling of a digest, so the cache file and batching identity never depend on case.
            for digest in spec.loras.iter_mut().filter_map(|l| l.sha256.as_mut()) {
                digest.make_ascii_lowercase();
            }
            Ok(ValidJob { id_given: spec.id.is_some(), seed_given: spec.seed.is_some(), spec })
        } else {
            Err(ValidationErrors(c.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{ControlNetSpec, LoraRef};

    fn fields(spec: JobSpec) -> Vec<String> {
        spec.validate(&Limits::default()).unwrap_err().0.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn default_job_is_valid() {
        assert!(JobSpec::new("a lighthouse at dusk").validate(&Limits::default()).is_ok());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut spec = JobSpec::new(" ");
        spec.steps = 3;
        spec.width = 1000 + 1;
        spec.loras =
            vec![LoraRef::library("ok", 1.0), LoraRef::library("../etc/passwd", 1.0), LoraRef::library("style", 9.0)];
        let errors = spec.validate(&Limits::default()).unwrap_err();
        let text = errors.to_string();
        assert!(text.contains("prompt: must not be empty"), "{text}");
        assert!(text.contains("steps: must be 1, 2, 4 or 8"), "{text}");
        assert!(text.contains("width: must be a multiple of 8"), "{text}");
        assert!(text.contains("loras[1].name: must be a library name"), "{text}");
        assert!(text.contains("loras[2].scale: must be between -4 and 4"), "{text}");
        assert_eq!(errors.0.len(), 5, "{text}");
    }

    #[test]
    fn small_sizes_stay_allowed_and_area_is_capped() {
        let mut spec = JobSpec::new("x");
        (spec.width, spec.height) = (64, 64);
        assert!(spec.clone().validate(&Limits::default()).is_ok());
        (spec.width, spec.height) = (2048, 2048);
        assert!(spec.clone().validate(&Limits::default()).is_ok(), "2048² is 4.19 MP, under 4.2");
        let tight = Limits { max_pixels: 1024 * 1024, ..Limits::default() };
        let errors = spec.validate(&tight).unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert!(errors.0[0].message.contains("exceeds this model's 1048576 pixel limit"), "{errors}");
    }

    #[test]
    fn duplicate_loras_are_rejected() {
        let mut spec = JobSpec::new("x");
        spec.loras = vec![LoraRef::library("a", 1.0), LoraRef::library("a", 0.5)];
        assert_eq!(fields(spec), ["loras[1].name"]);
    }

    #[test]
    fn url_loras_need_a_digest_and_no_name() {
        let digest = "AB".repeat(32);
        let mut spec = JobSpec::new("x");
        spec.loras = vec![
            LoraRef::from_url("https://cdn.example.com/style.safetensors", &digest, 1.0),
            LoraRef::from_url("s3://loras/ink.safetensors", "12".repeat(32), 0.5),
        ];
        let valid = spec.clone().validate(&Limits::default()).unwrap();
        assert_eq!(valid.spec().loras[0].sha256.as_deref(), Some("ab".repeat(32).as_str()), "digests are lowercased");
        assert_eq!(valid.spec().loras[0].identity(), format!("sha256:{}", "ab".repeat(32)));

        spec.loras = vec![
            LoraRef { sha256: None, ..LoraRef::from_url("https://cdn.example.com/a.safetensors", "", 1.0) },
            LoraRef::from_url("https://cdn.example.com/b.safetensors", "xyz", 1.0),
            LoraRef { name: Some("style".into()), ..LoraRef::from_url("https://cdn.example.com/c", &digest, 1.0) },
            LoraRef { name: None, url: None, sha256: None, scale: 1.0 },
            LoraRef::from_url("ftp://cdn.example.com/d.safetensors", "cd".repeat(32), 1.0),
            LoraRef::from_url("s3://bucket-only", "ef".repeat(32), 1.0),
            LoraRef { sha256: Some(digest.clone()), ..LoraRef::library("named", 1.0) },
            LoraRef::from_url("https://cdn.example.com/same.safetensors", &digest, 1.0),
            LoraRef::from_url("https://mirror.example.org/same.safetensors", "ab".repeat(32), 1.0),
        ];
        let errors = spec.validate(&Limits { max_loras: 16, ..Limits::default() }).unwrap_err();
        let text = errors.to_string();
        assert!(text.contains("loras[0].sha256: is required with `url`"), "{text}");
        assert!(text.contains("loras[1].sha256: must be a SHA-256 digest: 64 hex digits"), "{text}");
        assert!(text.contains("loras[2]: give `name` or `url`, not both"), "{text}");
        assert!(text.contains("loras[3]: needs `name` (library) or `url` with `sha256`"), "{text}");
        assert!(text.contains("loras[4].url: must be an https:// URL or an s3://bucket/key URI"), "{text}");
        assert!(text.contains("loras[5].url: an S3 URI needs a key"), "{text}");
        assert!(text.contains("loras[6].sha256: only a LoRA given by `url` takes a sha256"), "{text}");
        assert!(
            text.contains("loras[8].sha256: duplicate LoRA `https://mirror.example.org/same.safetensors`"),
            "{text}"
        );
        assert_eq!(errors.0.len(), 8, "one error per bad entry: {text}");
    }

    fn tiny_png() -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(2, 2).write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn control_image_sources() {
        let limits = Limits { allowed_image_buckets: vec!["controls".into()], ..Limits::default() };
        assert_eq!(
            parse_control_image("s3://controls/a/b.png", &limits).unwrap(),
            ControlImageSource::S3 { bucket: "controls".into(), key: "a/b.png".into() }
        );
        assert!(parse_control_image("s3://elsewhere/a.png", &limits).unwrap_err().contains("not an allowed"));
        let png = base64::engine::general_purpose::STANDARD.encode(tiny_png());
        assert!(matches!(
            parse_control_image(&format!("data:image/png;base64,{png}"), &limits),
            Ok(ControlImageSource::Inline { kind: InlineImageKind::Png, .. })
        ));
        let mut webp = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(2, 2).write_to(&mut webp, image::ImageFormat::WebP).unwrap();
        let webp = base64::engine::general_purpose::STANDARD.encode(webp.into_inner());
        assert!(matches!(
            parse_control_image(&format!("data:image/webp;base64,{webp}"), &limits),
            Ok(ControlImageSource::Inline { kind: InlineImageKind::Webp, .. })
        ));
        let broken = base64::engine::general_purpose::STANDARD.encode(b"RIFF\x10\0\0\0WEBPVP8 nonsense");
        assert!(parse_control_image(&broken, &limits).unwrap_err().contains("not a readable WEBP"));
        let text = base64::engine::general_purpose::STANDARD.encode(b"hello");
        assert!(parse_control_image(&text, &limits).unwrap_err().contains("neither PNG, JPEG nor WebP"));
        let small = Limits { max_control_image_bytes: 4, ..limits };
        assert!(parse_control_image(&png, &small).unwrap_err().contains("larger than"));
    }

    #[test]
    fn controlnet_window_must_be_ordered() {
        let mut spec = JobSpec::new("x");
        spec.controlnet = Some(ControlNetSpec {
            model: "canny".into(),
            image: "s3://nowhere/x.png".into(),
            scale: 0.5,
            start: 0.8,
            end: 0.2,
        });
        assert_eq!(fields(spec), ["controlnet.image", "controlnet.end"]);
    }

    #[test]
    fn init_image_strength_and_mask_rules() {
        let png = base64::engine::general_purpose::STANDARD.encode(tiny_png());
        let mut spec = JobSpec::new("x");
        spec.init_image = Some(png.clone());
        spec.mask_image = Some(png.clone());
        assert!(spec.clone().validate(&Limits::default()).is_ok(), "default strength 0.6 keeps 2 of 4 steps");
        assert_eq!(spec.effective_strength(), Some(crate::job::DEFAULT_STRENGTH));
        // 0.2 × 4 steps keeps none: the message names the minimum for 4 steps.
        let errors = JobSpec { strength: Some(0.2), ..spec.clone() }.validate(&Limits::default()).unwrap_err();
        assert_eq!(errors.0[0].field, "strength");
        assert!(errors.0[0].message.contains("at least 0.25 for 4 steps"), "{}", errors.0[0].message);
        assert!(JobSpec { strength: Some(0.25), ..spec.clone() }.validate(&Limits::default()).is_ok());
        assert!(JobSpec { strength: Some(0.125), steps: 8, ..spec.clone() }.validate(&Limits::default()).is_ok());
        for bad in [0.0, -1.0, 1.5, f32::NAN] {
            assert_eq!(fields(JobSpec { strength: Some(bad), ..spec.clone() }), ["strength"], "strength {bad}");
        }
        // Strength and mask need an init image; the images follow controlnet.image's rules.
        let alone = JobSpec { init_image: None, strength: Some(0.5), ..spec.clone() };
        assert_eq!(fields(alone), ["mask_image", "strength"]);
        let elsewhere =
            JobSpec { init_image: Some("s3://nowhere/x.png".into()), mask_image: Some("hello".into()), ..spec };
        assert_eq!(fields(elsewhere), ["init_image", "mask_image"]);
    }

    #[test]
    fn metadata_is_capped() {
        let mut spec = JobSpec::new("x");
        spec.metadata.insert("blob".into(), serde_json::Value::String("y".repeat(9000)));
        assert_eq!(fields(spec), ["metadata"]);
    }

    #[test]
    fn assign_keeps_client_id_and_seed_and_replaces_tenant() {
        let mut spec = JobSpec::new("x");
        let id = Uuid::now_v7();
        (spec.id, spec.seed) = (Some(id), Some(7));
        spec.tenant = Some("mallory".into());
        let job = spec.validate(&Limits::default()).unwrap().assign("alice", || unreachable!());
        assert_eq!(job.spec().id, Some(id));
        assert_eq!(job.spec().seed, Some(7));
        assert_eq!(job.spec().tenant.as_deref(), Some("alice"));
    }

    #[test]
    fn a_missing_seed_is_derived_from_the_id_whoever_assigns_it() {
        let id = Uuid::now_v7();
        let assigned = |spec: JobSpec| spec.validate(&Limits::default()).unwrap().assign("alice", || id);
        let job = assigned(JobSpec::new("x"));
        assert_eq!(job.spec().seed, Some(crate::identity::seed_for(id)));
        let mut own_id = JobSpec::new("x");
        own_id.id = Some(id);
        assert_eq!(assigned(own_id).spec().seed, job.spec().seed, "a republish under the id draws the same seed");
    }

    #[test]
    fn the_request_digest_leaves_out_what_assign_filled_in_but_not_what_the_client_sent() {
        let valid = |spec: JobSpec| spec.validate(&Limits::default()).unwrap().assign("alice", Uuid::now_v7);
        let digest = valid(JobSpec::new("x")).request_digest();
        assert_eq!(valid(JobSpec::new("x")).request_digest(), digest, "a retry with a new id and seed matches");
        let mut seeded = JobSpec::new("x");
        seeded.seed = Some(5);
        assert_ne!(valid(seeded).request_digest(), digest);
        let mut own_id = JobSpec::new("x");
        own_id.id = Some(Uuid::now_v7());
        assert_ne!(valid(own_id.clone()).request_digest(), digest);
        assert_eq!(valid(own_id.clone()).request_digest(), valid(own_id).request_digest());
    }

    #[test]
    fn a_job_as_recorded_takes_the_records_id_and_seed_and_keeps_the_clients_digest() {
        let valid = |spec: JobSpec| spec.validate(&Limits::default()).unwrap().assign("alice", Uuid::now_v7);
        let (first, retry) = (valid(JobSpec::new("x")), valid(JobSpec::new("x")));
        let recorded_id = first.spec().id.unwrap();
        let again = retry.clone().as_recorded(recorded_id, Some(7)).assign("alice", Uuid::now_v7);
        assert_eq!((again.spec().id, again.spec().seed), (Some(recorded_id), Some(7)));
        assert_eq!(again.request_digest(), first.request_digest(), "the digest the record was created with");
        // A record that does not know its seed: the id's rule, as the first accept applied it.
        let unknown = retry.as_recorded(recorded_id, None);
        assert_eq!(unknown.spec().seed, first.spec().seed);
        let mut seeded = JobSpec::new("x");
        seeded.seed = Some(5);
        assert_eq!(valid(seeded).as_recorded(recorded_id, None).spec().seed, Some(5), "the client's own seed stays");
    }

    #[test]
    fn only_a_job_with_a_key_or_its_own_id_can_be_found_by_a_retry() {
        let valid = |spec: JobSpec| spec.validate(&Limits::default()).unwrap().assign("alice", Uuid::now_v7);
        assert!(!valid(JobSpec::new("x")).findable_by_retry(), "assigned id, no key");
        let mut keyed = JobSpec::new("x");
        keyed.idempotency_key = Some("k1".into());
        assert!(valid(keyed).findable_by_retry());
        let mut own_id = JobSpec::new("x");
        own_id.id = Some(Uuid::now_v7());
        assert!(valid(own_id).findable_by_retry());
    }
}
