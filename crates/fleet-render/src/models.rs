//! The pipelines a process serves: base models loaded once at start, pipelines with a LoRA set
//! fused in built on demand and kept in a small LRU cache, ControlNets loaded on first use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_core::{ErrorCode, FleetConfig, JobError, LoraRef, LoraSource};
use fleet_engine::candle_core::{DType, Device};
use fleet_engine::lora::{LoraSpec, is_library_name, resolve_library_lora};
use fleet_engine::{ControlNetModel, LoadOptions, ModelSource, Pipeline, PredictionType};

/// A LoRA set as a cache key: identities ([`LoraRef::identity`]: library names, or the digests of
/// fetched files) with the exact bits of their scales, in job order (fusing order changes float
/// rounding, so `[a, b]` and `[b, a]` are different pipelines).
pub type LoraKey = Vec<(String, u32)>;

/// The fused-pipeline cache's key of a model with a LoRA set.
fn fused_key(model: &str, loras: &[LoraRef]) -> (String, LoraKey) {
    (model.to_owned(), loras.iter().map(|l| (l.identity(), l.scale.to_bits())).collect())
}

/// Where the worker's LoRA cache keeps the file with SHA-256 `sha256` (lowercase hex).
pub fn cached_lora_file(cache_dir: &Path, sha256: &str) -> PathBuf {
    cache_dir.join(format!("{sha256}.safetensors"))
}

/// Loaded pipelines by the model name jobs use.
pub struct Models {
    pipelines: BTreeMap<String, Arc<Pipeline>>,
    /// How each model was loaded, to rebuild it with LoRAs.
    sources: BTreeMap<String, (ModelSource, LoadOptions)>,
    fused: Mutex<LruCache<(String, LoraKey), Arc<Pipeline>>>,
    controlnets: Mutex<BTreeMap<String, Arc<ControlNetModel>>>,
    lora_dir: PathBuf,
    /// The worker's cache of LoRAs fetched by URL ([`cached_lora_file`]).
    lora_cache_dir: PathBuf,
    controlnet_dir: PathBuf,
    device: Device,
    dtype: DType,
    /// Time each model took to load.
    pub load_times: BTreeMap<String, Duration>,
    pub device_name: String,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Models").field("names", &self.pipelines.keys().collect::<Vec<_>>()).finish()
    }
}

/// A model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model `{0}` is not configured (add [models.{0}] to the configuration)")]
    NotConfigured(String),
    #[error("model `{name}`: {source}")]
    Engine { name: String, source: Box<fleet_engine::EngineError> },
    #[error("LoRA `{0}` is not in this worker's library")]
    UnknownLora(String),
    /// A LoRA given by URL whose file the worker has not fetched into its cache.
    #[error("LoRA `{0}` is not in this worker's LoRA cache (it is fetched before fusing)")]
    NotFetched(String),
    #[error("ControlNet `{0}` is not in this worker's library")]
    UnknownControlNet(String),
}

impl ModelError {
    /// The code a job fails with for this reason, the same on every path that renders jobs.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ModelError::UnknownLora(_) => ErrorCode::UnknownLora,
            ModelError::NotFetched(_) => ErrorCode::Internal,
            ModelError::UnknownControlNet(_) => ErrorCode::UnknownControlnet,
            ModelError::NotConfigured(_) => ErrorCode::ModelUnavailable,
            ModelError::Engine { source, .. } => match source.as_ref() {
                // A LoRA or ControlNet that does not fit the model (unmatched keys, rank or shape
                // mismatch) is the job's choice: invalid for this model.
                fleet_engine::EngineError::Lora { .. }
                | fleet_engine::EngineError::LoraUnmatched { .. }
                | fleet_engine::EngineError::ControlNet { .. } => ErrorCode::InvalidSpec,
                // Files this worker cannot load (missing, unparsable config, weights that do not
                // fit their config): the operator's to fix; the message names the file.
                fleet_engine::EngineError::MissingFile { .. }
                | fleet_engine::EngineError::Config { .. }
                | fleet_engine::EngineError::Unsupported { .. }
                | fleet_engine::EngineError::Weights { .. }
                | fleet_engine::EngineError::Tokenizer { .. }
                | fleet_engine::EngineError::Hub { .. }
                | fleet_engine::EngineError::Io { .. } => ErrorCode::ModelUnavailable,
                _ => ErrorCode::Internal,
            },
        }
    }
}

impl From<ModelError> for JobError {
    fn from(e: ModelError) -> Self {
        JobError::new(e.error_code(), e.to_string())
    }
}

/// Where fused pipelines come from: a hit or a fuse, with the time it took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CacheOutcome {
    Base,
    Hit,
    Miss { seconds: f64 },
}

/// A least-recently-used map bounded by entry count (entries are whole pipelines, all of
/// similar size, so the count bounds the memory).
#[derive(Debug)]
pub struct LruCache<K, V> {
    capacity: usize,
    entries: Vec<(K, V)>,
}

impl<K: PartialEq, V: Clone> LruCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, entries: Vec::new() }
    }
    pub fn get(&mut self, k: &K) -> Option<V> {
        let i = self.entries.iter().position(|(key, _)| key == k)?;
        let e = self.entries.remove(i);
        let v = e.1.clone();
        self.entries.push(e);
        Some(v)
    }
    pub fn insert(&mut self, k: K, v: V) {
        self.entries.retain(|(key, _)| key != &k);
        if self.capacity == 0 {
            return;
        }
        while self.entries.len() >= self.capacity {
            self.entries.remove(0);
        }
        self.entries.push((k, v));
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Models {
    /// Loads each named model from its configuration entry onto the configured device (blocking).
    pub fn load(config: &FleetConfig, names: &[String]) -> Result<Models, ModelError> {
        let engine_err = |name: &str| {
            let name = name.to_owned();
            move |source| ModelError::Engine { name, source: Box::new(source) }
        };
        let device = fleet_engine::parse_device(&config.worker.device).map_err(engine_err("(device)"))?;
        let dtype = fleet_engine::default_dtype(&device);
        let mut pipelines = BTreeMap::new();
        let mut sources = BTreeMap::new();
        let mut load_times = BTreeMap::new();
        for name in names {
            let model = config.models.get(name).ok_or_else(|| ModelError::NotConfigured(name.clone()))?;
            let source: ModelSource = model.source.parse().map_err(engine_err(name))?;
            let opts = LoadOptions {
                unet_override: model.unet.clone().map(std::path::PathBuf::from),
                prediction_type: model
                    .prediction_type
                    .as_deref()
                    .map(str::parse::<PredictionType>)
                    .transpose()
                    .map_err(|e| fleet_engine::EngineError::InvalidRequest(e.to_string()))
                    .map_err(engine_err(name))?,
                ..LoadOptions::default()
            };
            let started = Instant::now();
            let pipeline = Pipeline::load_with(&source, &device, dtype, &opts).map_err(engine_err(name))?;
            load_times.insert(name.clone(), started.elapsed());
            tracing::info!(model = %name, seconds = started.elapsed().as_secs_f64(), "model loaded");
            pipelines.insert(name.clone(), Arc::new(pipeline));
            sources.insert(name.clone(), (source, opts));
        }
        Ok(Models {
            pipelines,
            sources,
            fused: Mutex::new(LruCache::new(config.library.lora_cache_pipelines)),
            controlnets: Mutex::new(BTreeMap::new()),
            lora_dir: config.library.lora_dir.clone(),
            lora_cache_dir: config.worker.lora_fetch.cache_dir.clone(),
            controlnet_dir: config.library.controlnet_dir.clone(),
            device,
            dtype,
            load_times,
            device_name: config.worker.device.clone(),
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Pipeline>> {
        self.pipelines.get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.pipelines.keys().cloned().collect()
    }

    /// The library file of a LoRA name (`<lora_dir>/NAME.safetensors`, or a Lightning LoRA
    /// from the Hub). Names are library names only, never paths.
    pub fn lora_file(&self, name: &str) -> Result<PathBuf, ModelError> {
        if !is_library_name(name) {
            return Err(ModelError::UnknownLora(name.to_owned()));
        }
        // never `resolve_lora`: a job's name must not reach a file outside the library (one in the
        // worker's working directory, say)
        resolve_library_lora(name, Some(&self.lora_dir)).map_err(|_| ModelError::UnknownLora(name.to_owned()))
    }

    /// The file of a job's LoRA: from the library, or for a LoRA given by URL the cache's file
    /// of its digest, which the caller fetched (and keeps from eviction) before fusing.
    pub fn lora_source_file(&self, lora: &LoraRef) -> Result<PathBuf, ModelError> {
        match lora.source() {
            Some(LoraSource::Library(name)) => self.lora_file(name),
            Some(LoraSource::Url { url, sha256 }) => {
                let path = cached_lora_file(&self.lora_cache_dir, sha256);
                if path.is_file() { Ok(path) } else { Err(ModelError::NotFetched(url.to_owned())) }
            }
            None => Err(ModelError::UnknownLora(lora.label().to_owned())),
        }
    }

    /// Whether a LoRA name can be served, without touching the network (a Lightning LoRA not in
    /// the library is fetched later, off the async runtime, by [`Models::with_loras`]).
    pub fn has_lora(&self, name: &str) -> bool {
        is_library_name(name)
            && (self.lora_dir.join(format!("{name}.safetensors")).is_file()
                || fleet_engine::lora::LIGHTNING_LORAS.contains(&name))
    }

    /// The folder of a ControlNet name (`<controlnet_dir>/NAME/config.json`).
    pub fn controlnet_dir(&self, name: &str) -> Result<PathBuf, ModelError> {
        let dir = self.controlnet_dir.join(name);
        if is_library_name(name) && dir.join("config.json").is_file() {
            Ok(dir)
        } else {
            Err(ModelError::UnknownControlNet(name.to_owned()))
        }
    }

    /// The pipeline of `model` with `loras` fused in, if it is ready (the base model, or a LoRA
    /// set in the cache); never blocks, so it can be asked on the async runtime.
    pub fn ready(&self, model: &str, loras: &[LoraRef]) -> Option<(Arc<Pipeline>, CacheOutcome)> {
        let base = self.get(model)?;
        if loras.is_empty() {
            return Some((base, CacheOutcome::Base));
        }
        let p = self.fused.lock().ok().and_then(|mut c| c.get(&fused_key(model, loras)))?;
        Some((p, CacheOutcome::Hit))
    }

    /// The pipeline of `model` with `loras` fused in (blocking on a miss: it builds the model).
    pub fn with_loras(&self, model: &str, loras: &[LoraRef]) -> Result<(Arc<Pipeline>, CacheOutcome), ModelError> {
        if let Some(ready) = self.ready(model, loras) {
            return Ok(ready);
        }
        if self.get(model).is_none() {
            return Err(ModelError::NotConfigured(model.to_owned()));
        }
        let cache_key = fused_key(model, loras);
        let (source, opts) = self.sources.get(model).ok_or_else(|| ModelError::NotConfigured(model.to_owned()))?;
        let specs = loras
            .iter()
            .map(|l| Ok(LoraSpec { path: self.lora_source_file(l)?, scale: f64::from(l.scale) }))
            .collect::<Result<Vec<_>, ModelError>>()?;
        let opts = LoadOptions { loras: specs, ..opts.clone() };
        let started = Instant::now();
        let pipeline = Pipeline::load_with(source, &self.device, self.dtype, &opts)
            .map_err(|source| ModelError::Engine { name: model.to_owned(), source: Box::new(source) })?;
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(model, loras = ?cache_key.1, seconds, "LoRA set fused");
        let pipeline = Arc::new(pipeline);
        if let Ok(mut c) = self.fused.lock() {
            c.insert(cache_key, pipeline.clone());
        }
        Ok((pipeline, CacheOutcome::Miss { seconds }))
    }

    /// A ControlNet by library name, loaded on first use.
    pub fn controlnet(&self, name: &str) -> Result<Arc<ControlNetModel>, ModelError> {
        if let Some(c) = self.controlnets.lock().ok().and_then(|m| m.get(name).cloned()) {
            return Ok(c);
        }
        let dir = self.controlnet_dir(name)?;
        let model = ControlNetModel::load(&dir, &self.device, self.dtype).map_err(|source| ModelError::Engine {
            name: format!("controlnet {name} ({})", dir.display()),
            source: Box::new(source),
        })?;
        let model = Arc::new(model.named(name));
        if let Ok(mut m) = self.controlnets.lock() {
            m.insert(name.to_owned(), model.clone());
        }
        Ok(model)
    }

    /// Fused pipelines held now.
    pub fn cached_lora_pipelines(&self) -> usize {
        self.fused.lock().map(|c| c.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use fleet_engine::candle_core::Tensor;

    /// A config serving `tiny` with a LoRA library holding `style` (one attention projection).
    fn setup(dir: &std::path::Path) -> FleetConfig {
        let key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q";
        let t = |s: (usize, usize)| Tensor::ones(s, DType::F32, &Device::Cpu).unwrap();
        let tensors = std::collections::HashMap::from([
            (format!("{key}.lora_down.weight"), t((2, 32))),
            (format!("{key}.lora_up.weight"), t((32, 2))),
        ]);
        fleet_engine::candle_core::safetensors::save(&tensors, dir.join("style.safetensors")).unwrap();
        let mut config = FleetConfig::default();
        config.models.clear();
        config.models.insert("tiny".into(), fleet_core::config::ModelConfig::default());
        config.library.lora_dir = dir.to_path_buf();
        config.library.controlnet_dir = dir.join("controlnet");
        config.library.lora_cache_pipelines = 1;
        config
    }

    /// A LoRA given by URL fuses from the cache's file of its digest, and its fused pipeline is
    /// keyed by the digest, not the URL.
    #[test]
    fn url_loras_fuse_from_the_cache_file_of_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = setup(dir.path());
        config.worker.lora_fetch.cache_dir = dir.path().join("cache");
        std::fs::create_dir_all(&config.worker.lora_fetch.cache_dir).unwrap();
        let models = Models::load(&config, &["tiny".to_string()]).unwrap();
        let digest = "ab".repeat(32);
        let lora = |url: &str| vec![LoraRef::from_url(url, &digest, 0.5)];
        let e = models.with_loras("tiny", &lora("https://a.example.com/style.safetensors")).unwrap_err();
        assert!(matches!(e, ModelError::NotFetched(_)), "{e}");
        let cached = cached_lora_file(&config.worker.lora_fetch.cache_dir, &digest);
        std::fs::copy(dir.path().join("style.safetensors"), &cached).unwrap();
        let (a, o) = models.with_loras("tiny", &lora("https://a.example.com/style.safetensors")).unwrap();
        assert!(matches!(o, CacheOutcome::Miss { .. }));
        let (b, o) = models.with_loras("tiny", &lora("s3://mirror/style.safetensors")).unwrap();
        assert_eq!(o, CacheOutcome::Hit, "the same digest from another URL is the same pipeline");
        assert!(Arc::ptr_eq(&a, &b));
        let (library, _) = models.with_loras("tiny", &[LoraRef::library("style", 0.5)]).unwrap();
        assert!(!Arc::ptr_eq(&a, &library), "a library LoRA is keyed by its name");
    }

    #[test]
    fn fused_pipelines_are_cached_by_model_and_lora_set() {
        let dir = tempfile::tempdir().unwrap();
        let models = Models::load(&setup(dir.path()), &["tiny".to_string()]).unwrap();
        let style = |scale: f32| vec![LoraRef::library("style", scale)];
        let (base, o) = models.with_loras("tiny", &[]).unwrap();
        assert_eq!(o, CacheOutcome::Base);
        let (a, o) = models.with_loras("tiny", &style(0.5)).unwrap();
        assert!(matches!(o, CacheOutcome::Miss { .. }));
        assert!(!Arc::ptr_eq(&a, &base));
        assert_eq!(a.loras, vec![("style".to_string(), 0.5)]);
        let (b, o) = models.with_loras("tiny", &style(0.5)).unwrap();
        assert_eq!(o, CacheOutcome::Hit);
        assert!(Arc::ptr_eq(&a, &b));
        // Another scale is another pipeline; with room for one, it evicts the first.
        let (_, o) = models.with_loras("tiny", &style(0.75)).unwrap();
        assert!(matches!(o, CacheOutcome::Miss { .. }));
        assert_eq!(models.cached_lora_pipelines(), 1);
        assert!(matches!(models.with_loras("tiny", &style(0.5)).unwrap().1, CacheOutcome::Miss { .. }));
        // Unknown names and paths are not in the library.
        assert!(models.has_lora("style") && models.has_lora("sdxl_lightning_4step_lora"));
        // `Cargo.toml` is a library-shaped name of a file in the test's working directory: a job
        // must not get the worker to open it.
        assert!(std::path::Path::new("Cargo.toml").is_file());
        for bad in ["absent", "../style", "/etc/passwd", "Cargo.toml"] {
            assert!(!models.has_lora(bad));
            assert!(matches!(models.lora_file(bad), Err(ModelError::UnknownLora(_))), "{bad}");
            let e = models.with_loras("tiny", &[LoraRef::library(bad, 1.0)]).unwrap_err();
            assert!(matches!(e, ModelError::UnknownLora(_)), "{bad}: {e}");
        }
        assert!(matches!(models.controlnet("canny").unwrap_err(), ModelError::UnknownControlNet(_)));
        assert!(matches!(models.controlnet_dir("../x").unwrap_err(), ModelError::UnknownControlNet(_)));
    }

    /// A ControlNet folder whose files cannot be loaded fails with `model_unavailable`, naming
    /// the file, not as an internal error.
    #[test]
    fn a_broken_controlnet_file_is_model_unavailable_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let models = Models::load(&setup(dir.path()), &["tiny".to_string()]).unwrap();
        let broken = dir.path().join("controlnet").join("broken");
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::write(broken.join("config.json"), "{ not json").unwrap();
        let e = models.controlnet("broken").unwrap_err();
        assert_eq!(e.error_code(), ErrorCode::ModelUnavailable, "{e}");
        let config = broken.join("config.json");
        assert!(e.to_string().contains(&*config.to_string_lossy()), "{e}");
        // A readable config with no weights beside it names the folder it looked in.
        std::fs::write(&config, "{}").unwrap();
        let e = models.controlnet("broken").unwrap_err();
        assert_eq!(e.error_code(), ErrorCode::ModelUnavailable, "{e}");
        assert!(e.to_string().contains(&*broken.to_string_lossy()), "{e}");
    }

    #[test]
    fn lru_keeps_the_most_recently_used() {
        let mut c = LruCache::new(2);
        c.insert("a", 1);
        c.insert("b", 2);
        assert_eq!(c.get(&"a"), Some(1)); // a is now newest
        c.insert("c", 3); // evicts b
        assert_eq!(c.get(&"b"), None);
        assert_eq!((c.get(&"a"), c.get(&"c"), c.len()), (Some(1), Some(3), 2));
        let mut none = LruCache::new(0);
        none.insert("a", 1);
        assert!(none.is_empty());
    }
}
