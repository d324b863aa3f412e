//! Where a model's files are: a local diffusers-layout folder or the Hugging Face Hub cache.

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

/// The files of one SDXL-architecture model, component by component.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub name: String,
    pub model_index: Option<PathBuf>,
    pub unet_config: PathBuf,
    pub unet_weights: Vec<PathBuf>,
    pub vae_config: PathBuf,
    pub vae_weights: Vec<PathBuf>,
    pub text_encoder_config: PathBuf,
    pub text_encoder_weights: Vec<PathBuf>,
    pub text_encoder_2_config: PathBuf,
    pub text_encoder_2_weights: Vec<PathBuf>,
    pub tokenizer_dir: PathBuf,
    pub tokenizer_2_dir: PathBuf,
    pub scheduler_config: Option<PathBuf>,
}

fn missing(component: &str, path: PathBuf, hint: &str) -> EngineError {
    EngineError::MissingFile { component: component.to_string(), path, hint: hint.to_string() }
}

/// Weight files of a component folder: `{stem}[.fp16].safetensors` or a sharded
/// `{stem}[.fp16].safetensors.index.json`; the fp16 variant first when `prefer_fp16`.
pub fn component_weights(dir: &Path, stem: &str, prefer_fp16: bool, component: &str) -> Result<Vec<PathBuf>> {
    let variants: [&str; 2] = if prefer_fp16 { [".fp16", ""] } else { ["", ".fp16"] };
    for v in variants {
        let single = dir.join(format!("{stem}{v}.safetensors"));
        if single.is_file() {
            return Ok(vec![single]);
        }
        let index = dir.join(format!("{stem}{v}.safetensors.index.json"));
        if index.is_file() {
            let idx: serde_json::Value = crate::util::read_json(&index, component)?;
            let mut files: Vec<PathBuf> = Vec::new();
            if let Some(map) = idx.get("weight_map").and_then(|m| m.as_object()) {
                for f in map.values().filter_map(|f| f.as_str()) {
                    let p = dir.join(f);
                    if !files.contains(&p) {
                        if !p.is_file() {
                            return Err(missing(component, p, ""));
                        }
                        files.push(p);
                    }
                }
            }
            if files.is_empty() {
                return Err(EngineError::Config {
                    component: component.into(),
                    path: index,
                    message: "empty weight_map".into(),
                });
            }
            return Ok(files);
        }
    }
    Err(missing(component, dir.join(format!("{stem}.safetensors")), " (nor an .fp16 variant or a sharded index)"))
}

fn existing(path: PathBuf, component: &str) -> Result<PathBuf> {
    if path.exists() { Ok(path) } else { Err(missing(component, path, "")) }
}

impl ModelFiles {
    /// Resolve a diffusers-layout folder (`model_index.json`, `unet/`, `vae/`,
    /// `text_encoder/`, `text_encoder_2/`, `tokenizer/`, `tokenizer_2/`, `scheduler/`).
    pub fn from_dir(dir: &Path, prefer_fp16: bool) -> Result<Self> {
        Self::from_dir_with_unet(dir, prefer_fp16, None)
    }

    /// Like [`ModelFiles::from_dir`], with the UNet weights taken from `unet_weights` when
    /// given (then the folder's own UNet weights need not exist; `unet/config.json` must).
    pub fn from_dir_with_unet(dir: &Path, prefer_fp16: bool, unet_weights: Option<&Path>) -> Result<Self> {
        if !dir.is_dir() {
            return Err(missing(
                "model folder",
                dir.to_path_buf(),
                " (expected a diffusers-layout folder, `tiny`, or a Hugging Face repo id)",
            ));
        }
        let model_index = dir.join("model_index.json");
        let model_index = existing(model_index, "model_index")?;
        let sched = dir.join("scheduler/scheduler_config.json");
        Ok(Self {
            name: dir.display().to_string(),
            model_index: Some(model_index),
            unet_config: existing(dir.join("unet/config.json"), "unet")?,
            unet_weights: match unet_weights {
                Some(u) => vec![u.to_path_buf()],
                None => component_weights(&dir.join("unet"), "diffusion_pytorch_model", prefer_fp16, "unet")?,
            },
            vae_config: existing(dir.join("vae/config.json"), "vae")?,
            vae_weights: component_weights(&dir.join("vae"), "diffusion_pytorch_model", prefer_fp16, "vae")?,
            text_encoder_config: existing(dir.join("text_encoder/config.json"), "text_encoder")?,
            text_encoder_weights: component_weights(&dir.join("text_encoder"), "model", prefer_fp16, "text_encoder")?,
            text_encoder_2_config: existing(dir.join("text_encoder_2/config.json"), "text_encoder_2")?,
            text_encoder_2_weights: component_weights(
                &dir.join("text_encoder_2"),
                "model",
                prefer_fp16,
                "text_encoder_2",
            )?,
            tokenizer_dir: existing(dir.join("tokenizer"), "tokenizer")?,
            tokenizer_2_dir: existing(dir.join("tokenizer_2"), "tokenizer_2")?,
            scheduler_config: sched.is_file().then_some(sched),
        })
    }
}

/// The default hub model: the SDXL-Lightning 4-step UNet on SDXL base with the fp16-fix VAE.
pub const DEFAULT_HUB_MODEL: &str = "ByteDance/SDXL-Lightning";
pub const SDXL_BASE_REPO: &str = "stabilityai/stable-diffusion-xl-base-1.0";
pub const LIGHTNING_REPO: &str = "ByteDance/SDXL-Lightning";
pub const FP16_FIX_VAE_REPO: &str = "madebyollin/sdxl-vae-fp16-fix";
pub const DEFAULT_LIGHTNING_UNET: &str = "sdxl_lightning_4step_unet.safetensors";

/// Resolve a hub id with the `hf-hub` crate: files already in the Hugging Face cache are used
/// as they are, others are downloaded unless `HF_HUB_OFFLINE` is set. `ByteDance/SDXL-Lightning`
/// means SDXL base + a Lightning UNet file (`lightning_unet`, default 4-step) + the fp16-fix
/// VAE; any other id is read as a diffusers-layout repository. Every missing file is listed
/// in one error.
#[cfg(feature = "hub")]
pub fn from_hub(repo_id: &str, prefer_fp16: bool, lightning_unet: Option<&str>) -> Result<ModelFiles> {
    let offline = std::env::var("HF_HUB_OFFLINE").map(|v| v != "0" && !v.is_empty()).unwrap_or(false);
    resolve_hub(repo_id, prefer_fp16, lightning_unet, offline)
}

/// Whether every file [`from_hub`] needs is already in the Hugging Face cache (nothing is
/// downloaded), e.g. to pick a default model that starts without a download.
#[cfg(feature = "hub")]
pub fn in_hub_cache(repo_id: &str, prefer_fp16: bool, lightning_unet: Option<&str>) -> bool {
    resolve_hub(repo_id, prefer_fp16, lightning_unet, true).is_ok()
}

#[cfg(not(feature = "hub"))]
pub fn in_hub_cache(_repo_id: &str, _prefer_fp16: bool, _lightning_unet: Option<&str>) -> bool {
    false
}

#[cfg(feature = "hub")]
fn resolve_hub(repo_id: &str, prefer_fp16: bool, lightning_unet: Option<&str>, offline: bool) -> Result<ModelFiles> {
    use hf_hub::{Cache, api::sync::ApiBuilder};

    let cache = Cache::from_env();
    let api = if offline { None } else { ApiBuilder::from_env().with_progress(false).build().ok() };
    let missing = std::cell::RefCell::new(Vec::<String>::new());
    let first_error = std::cell::RefCell::new(None::<String>);
    // After a transport failure (no network) stop trying: one clear error, no long waits.
    let network_down = std::cell::Cell::new(false);
    let fetch = |repo: &str, file: &str| -> Option<PathBuf> {
        if let Some(p) = cache.model(repo.to_string()).get(file) {
            return Some(p);
        }
        let api = api.as_ref().filter(|_| !network_down.get())?;
        match api.model(repo.to_string()).get(file) {
            Ok(p) => Some(p),
            Err(e) => {
                let msg = e.to_string();
                if !msg.contains("status code") {
                    network_down.set(true);
                }
                first_error.borrow_mut().get_or_insert(msg);
                None
            }
        }
    };
    let get = |repo: &str, file: &str| -> Option<PathBuf> {
        let p = fetch(repo, file);
        if p.is_none() {
            missing.borrow_mut().push(format!("{repo}/{file}"));
        }
        p
    };
    let lightning = repo_id == LIGHTNING_REPO;
    let base = if lightning { SDXL_BASE_REPO } else { repo_id };
    let v = if prefer_fp16 { ".fp16" } else { "" };
    let model_index = get(base, "model_index.json");
    let unet_config = get(base, "unet/config.json");
    let unet_weights = if lightning {
        get(LIGHTNING_REPO, lightning_unet.unwrap_or(DEFAULT_LIGHTNING_UNET))
    } else {
        get(base, &format!("unet/diffusion_pytorch_model{v}.safetensors"))
    };
    let (vae_config, vae_weights) = if lightning {
        (get(FP16_FIX_VAE_REPO, "config.json"), get(FP16_FIX_VAE_REPO, "diffusion_pytorch_model.safetensors"))
    } else {
        (get(base, "vae/config.json"), get(base, &format!("vae/diffusion_pytorch_model{v}.safetensors")))
    };
    let te1c = get(base, "text_encoder/config.json");
    let te1w = get(base, &format!("text_encoder/model{v}.safetensors"));
    let te2c = get(base, "text_encoder_2/config.json");
    let te2w = get(base, &format!("text_encoder_2/model{v}.safetensors"));
    let mut tok_dirs = Vec::new();
    for t in ["tokenizer", "tokenizer_2"] {
        let vocab = get(base, &format!("{t}/vocab.json"));
        let _ = get(base, &format!("{t}/merges.txt"));
        // Optional files: only used when present.
        let _ = fetch(base, &format!("{t}/tokenizer_config.json"));
        let _ = fetch(base, &format!("{t}/special_tokens_map.json"));
        tok_dirs.push(vocab.and_then(|p| p.parent().map(Path::to_path_buf)));
    }
    let sched = get(base, "scheduler/scheduler_config.json");
    let missing = missing.into_inner();
    let first_error = first_error.into_inner();
    if !missing.is_empty() {
        let reason = if offline {
            "HF_HUB_OFFLINE is set and they are not in the Hugging Face cache".to_string()
        } else {
            format!(
                "they are not in the Hugging Face cache ({}) and downloading failed: {}{}",
                cache.path().display(),
                first_error.unwrap_or_else(|| "no network client".into()),
                if Path::new(repo_id).exists() { "" } else { " (there is no local folder of that name either)" }
            )
        };
        return Err(EngineError::Hub { repo: repo_id.to_string(), missing: missing.join(", "), message: reason });
    }
    let some = |p: Option<PathBuf>| p.unwrap_or_default();
    let mut tok_dirs = tok_dirs.into_iter().map(some);
    Ok(ModelFiles {
        name: repo_id.to_string(),
        model_index,
        unet_config: some(unet_config),
        unet_weights: vec![some(unet_weights)],
        vae_config: some(vae_config),
        vae_weights: vec![some(vae_weights)],
        text_encoder_config: some(te1c),
        text_encoder_weights: vec![some(te1w)],
        text_encoder_2_config: some(te2c),
        text_encoder_2_weights: vec![some(te2w)],
        tokenizer_dir: tok_dirs.next().unwrap_or_default(),
        tokenizer_2_dir: tok_dirs.next().unwrap_or_default(),
        scheduler_config: sched,
    })
}

#[cfg(not(feature = "hub"))]
pub fn from_hub(repo_id: &str, _prefer_fp16: bool, _lightning_unet: Option<&str>) -> Result<ModelFiles> {
    Err(EngineError::Hub {
        repo: repo_id.to_string(),
        missing: "all files".into(),
        message: "this build has no `hub` feature".into(),
    })
}

/// One file of a Hub repository (cache first, then a download unless `HF_HUB_OFFLINE` is set),
/// e.g. a Lightning LoRA.
#[cfg(feature = "hub")]
pub fn hub_file(repo_id: &str, file: &str) -> Result<PathBuf> {
    use hf_hub::{Cache, api::sync::ApiBuilder};

    if let Some(p) = Cache::from_env().model(repo_id.to_string()).get(file) {
        return Ok(p);
    }
    let offline = std::env::var("HF_HUB_OFFLINE").map(|v| v != "0" && !v.is_empty()).unwrap_or(false);
    let message = if offline {
        "HF_HUB_OFFLINE is set and it is not in the Hugging Face cache".to_string()
    } else {
        match ApiBuilder::from_env().with_progress(false).build() {
            Ok(api) => match api.model(repo_id.to_string()).get(file) {
                Ok(p) => return Ok(p),
                Err(e) => format!("downloading failed: {e}"),
            },
            Err(e) => format!("no Hub client: {e}"),
        }
    };
    Err(EngineError::Hub { repo: repo_id.to_string(), missing: file.to_string(), message })
}

#[cfg(not(feature = "hub"))]
pub fn hub_file(repo_id: &str, file: &str) -> Result<PathBuf> {
    Err(EngineError::Hub {
        repo: repo_id.to_string(),
        missing: file.to_string(),
        message: "this build has no `hub` feature".into(),
    })
}
