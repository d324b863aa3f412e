//! LoRA files fused into the base weights while a model is built.
//!
//! Formats (diffusers `loaders/lora_conversion_utils.py`, peft `tuners/lora/layer.py`):
//! * kohya: `lora_unet_<module>.lora_down.weight` / `.lora_up.weight` / `.alpha`,
//!   `lora_te1_…` / `lora_te_…` (text encoder 1), `lora_te2_…`; module names either in the
//!   diffusers layout (`down_blocks_1_attentions_0_…`) or the original SGM layout
//!   (`input_blocks_4_1_…`, `middle_block_1_…`, `output_blocks_…`, `time_embed_0`, `label_emb_0_0`,
//!   `out_2`), which kohya's sd-scripts writes for SDXL;
//! * diffusers/PEFT: `unet.<path>.lora_A.weight` (down) / `.lora_B.weight` (up), same with
//!   `text_encoder.` / `text_encoder_2.`; alphas from `<path>.alpha` tensors or the
//!   `lora_adapter_metadata` that diffusers writes into the safetensors header
//!   (`unet.lora_alpha`, `unet.r`, `unet.alpha_pattern`, `unet.rank_pattern`).
//!
//! Fused weight: `W + scale · (alpha / rank) · up @ down` (alpha defaults to rank; convs are
//! reshaped to 2-D and back). [`FusingBackend`] adds the deltas as the model fetches its tensors,
//! so the fused model is built in one pass without a second copy of the base weights.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::Init;
use candle_nn::var_builder::SimpleBackend;

use crate::error::{EngineError, Result};
use crate::unet::UNetConfig;

/// Which model of the pipeline a LoRA entry changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Unet,
    TextEncoder,
    TextEncoder2,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unet => "unet",
            Self::TextEncoder => "text_encoder",
            Self::TextEncoder2 => "text_encoder_2",
        }
    }
}

/// The key layout a LoRA file was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraFormat {
    /// kohya with diffusers module names.
    Kohya,
    /// kohya with the original SGM/LDM UNet module names.
    KohyaSgm,
    /// diffusers/PEFT (`lora_A` / `lora_B`).
    Peft,
}

/// One low-rank update of one module.
#[derive(Debug, Clone)]
struct Pair {
    /// [rank, in, (kh, kw)]
    down: Tensor,
    /// [out, rank, (1, 1)]
    up: Tensor,
    alpha: Option<f64>,
    /// peft `use_rslora`: scale by alpha / √rank.
    rslora: bool,
}

/// A parsed LoRA file: its updates by component and module (module names as written, before
/// any SGM → diffusers mapping).
#[derive(Debug, Clone)]
pub struct LoraFile {
    pub name: String,
    pub format: LoraFormat,
    entries: BTreeMap<(Component, String), Pair>,
}

fn lora_err(name: &str, message: impl Into<String>) -> EngineError {
    EngineError::Lora { name: name.to_string(), message: message.into() }
}

/// Which part of a LoRA key a tensor is.
#[derive(Clone, Copy)]
enum Part {
    Down,
    Up,
    Alpha,
}

/// `(component, module, part)` of a kohya key, module in underscore form.
fn parse_kohya(key: &str) -> Option<(Component, String, Part)> {
    let (stem, part) = split_part(key, &[(".lora_down.weight", Part::Down), (".lora_up.weight", Part::Up)])?;
    let (comp, module) = if let Some(m) = stem.strip_prefix("lora_unet_") {
        (Component::Unet, m)
    } else if let Some(m) = stem.strip_prefix("lora_te1_").or_else(|| stem.strip_prefix("lora_te_")) {
        (Component::TextEncoder, m)
    } else if let Some(m) = stem.strip_prefix("lora_te2_") {
        (Component::TextEncoder2, m)
    } else {
        return None;
    };
    Some((comp, module.to_string(), part))
}

/// `(component, module, part)` of a diffusers/PEFT key, module in dotted form.
fn parse_peft(key: &str) -> Option<(Component, String, Part)> {
    let (stem, part) = split_part(key, &[(".lora_A.weight", Part::Down), (".lora_B.weight", Part::Up)])?;
    let (comp, module) = if let Some(m) = stem.strip_prefix("unet.") {
        (Component::Unet, m)
    } else if let Some(m) = stem.strip_prefix("text_encoder_2.") {
        (Component::TextEncoder2, m)
    } else if let Some(m) = stem.strip_prefix("text_encoder.") {
        (Component::TextEncoder, m)
    } else {
        // A bare PEFT UNet adapter (`down_blocks.0...lora_A.weight`).
        (Component::Unet, stem)
    };
    Some((comp, module.to_string(), part))
}

fn split_part<'a>(key: &'a str, weights: &[(&str, Part); 2]) -> Option<(&'a str, Part)> {
    for &(suffix, part) in weights {
        if let Some(stem) = key.strip_suffix(suffix) {
            return Some((stem, part));
        }
    }
    key.strip_suffix(".alpha").map(|stem| (stem, Part::Alpha))
}

/// Alphas given in diffusers' `lora_adapter_metadata` (a packed peft `LoraConfig` per component).
#[derive(Debug, Default)]
struct PeftAlphas {
    by_component: HashMap<Component, PeftConfig>,
}

#[derive(Debug, Default)]
struct PeftConfig {
    lora_alpha: Option<f64>,
    alpha_pattern: Vec<(String, f64)>,
    use_rslora: bool,
}

impl PeftAlphas {
    fn parse(name: &str, json: &str) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| lora_err(name, format!("invalid lora_adapter_metadata: {e}")))?;
        let mut out = Self::default();
        for comp in [Component::Unet, Component::TextEncoder, Component::TextEncoder2] {
            let get = |k: &str| v.get(format!("{}.{k}", comp.as_str()));
            let pattern = |k: &str| -> Vec<(String, f64)> {
                get(k)
                    .and_then(|p| p.as_object())
                    .map(|m| m.iter().filter_map(|(k, v)| v.as_f64().map(|f| (k.clone(), f))).collect())
                    .unwrap_or_default()
            };
            let flag = |k: &str| get(k).and_then(|v| v.as_bool()).unwrap_or(false);
            if flag("use_dora") {
                return Err(lora_err(name, format!("{}: DoRA adapters are not supported", comp.as_str())));
            }
            let cfg = PeftConfig {
                lora_alpha: get("lora_alpha").and_then(|a| a.as_f64()),
                alpha_pattern: pattern("alpha_pattern"),
                use_rslora: flag("use_rslora"),
            };
            out.by_component.insert(comp, cfg);
        }
        Ok(out)
    }

    /// peft: `alpha_pattern[key]` when a key is the module name or a dotted suffix of it, else
    /// `lora_alpha` (whatever the module's rank).
    fn alpha(&self, comp: Component, module: &str) -> Option<f64> {
        let c = self.by_component.get(&comp)?;
        let matches = |pat: &str| module == pat || module.ends_with(&format!(".{pat}"));
        c.alpha_pattern.iter().find(|(p, _)| matches(p)).map(|(_, a)| *a).or(c.lora_alpha)
    }

    fn rslora(&self, comp: Component) -> bool {
        self.by_component.get(&comp).is_some_and(|c| c.use_rslora)
    }
}

impl LoraFile {
    /// Read a `.safetensors` LoRA file.
    pub fn load(path: &Path) -> Result<Self> {
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("lora").to_string();
        let bytes = std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                EngineError::MissingFile { component: "lora".into(), path: path.to_path_buf(), hint: String::new() }
            } else {
                EngineError::Io { path: path.to_path_buf(), source: e }
            }
        })?;
        Self::from_bytes(&name, &bytes)
    }

    /// Parse a LoRA from the bytes of a `.safetensors` file.
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Self> {
        let corrupt = |e: &dyn std::fmt::Display| lora_err(name, format!("not a valid safetensors file: {e}"));
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| corrupt(&e))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu).map_err(|e| corrupt(&e))?;
        let alphas = match metadata.get("lora_adapter_metadata") {
            Some(json) => PeftAlphas::parse(name, json)?,
            None => PeftAlphas::default(),
        };
        Self::from_tensors(name, tensors, &alphas)
    }

    fn from_tensors(name: &str, tensors: HashMap<String, Tensor>, alphas: &PeftAlphas) -> Result<Self> {
        if tensors.is_empty() {
            return Err(lora_err(name, "the file holds no tensors"));
        }
        let kohya = tensors.keys().any(|k| k.starts_with("lora_unet_") || k.starts_with("lora_te"));
        let mut downs: BTreeMap<(Component, String), Tensor> = BTreeMap::new();
        let mut ups: BTreeMap<(Component, String), Tensor> = BTreeMap::new();
        let mut alpha_t: HashMap<(Component, String), f64> = HashMap::new();
        let mut unknown = Vec::new();
        for (key, t) in tensors {
            let parsed = if kohya { parse_kohya(&key) } else { parse_peft(&key) };
            let Some((comp, module, part)) = parsed else {
                unknown.push(key);
                continue;
            };
            let t = t.to_dtype(DType::F32).map_err(|e| lora_err(name, format!("{key}: {e}")))?;
            match part {
                Part::Down => {
                    downs.insert((comp, module), t);
                }
                Part::Up => {
                    ups.insert((comp, module), t);
                }
                Part::Alpha => {
                    let a = t
                        .flatten_all()
                        .and_then(|t| t.to_vec1::<f32>())
                        .ok()
                        .filter(|v| v.len() == 1)
                        .ok_or_else(|| lora_err(name, format!("{key}: alpha must be a scalar")))?;
                    alpha_t.insert((comp, module), f64::from(a[0]));
                }
            }
        }
        if !unknown.is_empty() {
            unknown.sort();
            return Err(lora_err(
                name,
                format!(
                    "{} key(s) are not LoRA weights of a supported format (kohya lora_down/lora_up/alpha, PEFT lora_A/lora_B; DoRA and LoHa/LoKr are not supported): {}",
                    unknown.len(),
                    list(&unknown)
                ),
            ));
        }
        let mut entries = BTreeMap::new();
        for (k, down) in downs {
            let up =
                ups.remove(&k).ok_or_else(|| lora_err(name, format!("{} has a down weight but no up weight", k.1)))?;
            let alpha = alpha_t.remove(&k).or_else(|| alphas.alpha(k.0, &k.1));
            check_pair(name, &k.1, &down, &up)?;
            let rslora = alphas.rslora(k.0);
            entries.insert(k, Pair { down, up, alpha, rslora });
        }
        if let Some((k, _)) = ups.into_iter().next() {
            return Err(lora_err(name, format!("{} has an up weight but no down weight", k.1)));
        }
        if let Some((k, _)) = alpha_t.into_iter().next() {
            return Err(lora_err(name, format!("{} has an alpha but no weights", k.1)));
        }
        let sgm = kohya
            && entries.keys().any(|(c, m)| {
                *c == Component::Unet
                    && ["input_blocks_", "middle_block_", "output_blocks_"].iter().any(|p| m.starts_with(p))
            });
        let format = match (kohya, sgm) {
            (true, true) => LoraFormat::KohyaSgm,
            (true, false) => LoraFormat::Kohya,
            _ => LoraFormat::Peft,
        };
        Ok(Self { name: name.to_string(), format, entries })
    }

    /// Number of module updates.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Up and down must agree on the rank and be 2-D (linear) or 4-D (conv) alike.
fn check_pair(name: &str, module: &str, down: &Tensor, up: &Tensor) -> Result<()> {
    let (d, u) = (down.dims(), up.dims());
    let shapes_ok = matches!((d.len(), u.len()), (2, 2) | (4, 4)) && (u.len() == 2 || u[2..] == [1, 1]);
    if !shapes_ok {
        return Err(lora_err(
            name,
            format!(
                "{module}: unsupported shapes down {d:?} / up {u:?} (linear [r, in] / [out, r] or conv [r, in, k, k] / [out, r, 1, 1])"
            ),
        ));
    }
    if d[0] != u[1] || d[0] == 0 {
        return Err(lora_err(
            name,
            format!("{module}: rank mismatch: down has rank {} ({d:?}) but up has rank {} ({u:?})", d[0], u[1]),
        ));
    }
    Ok(())
}

fn list(keys: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut s = keys.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if keys.len() > SHOWN {
        s.push_str(&format!(", … and {} more", keys.len() - SHOWN));
    }
    s
}

/// Map an SGM (original Stable Diffusion / sd-scripts) UNet module name in underscore form to
/// the diffusers one, structurally (diffusers `_maybe_map_sgm_blocks_to_diffusers` +
/// `_convert_unet_lora_key`). `layers` is the UNet's `layers_per_block`.
pub fn sgm_to_diffusers(module: &str, layers: usize) -> Option<String> {
    let fixed = [
        ("time_embed_0", "time_embedding_linear_1"),
        ("time_embed_2", "time_embedding_linear_2"),
        ("label_emb_0_0", "add_embedding_linear_1"),
        ("label_emb_0_2", "add_embedding_linear_2"),
        ("input_blocks_0_0", "conv_in"),
        ("out_0", "conv_norm_out"),
        ("out_2", "conv_out"),
    ];
    for (from, to) in fixed {
        if module == from {
            return Some(to.into());
        }
    }
    let (kind, rest) = if let Some(r) = module.strip_prefix("input_blocks_") {
        ("in", r)
    } else if let Some(r) = module.strip_prefix("middle_block_") {
        ("mid", r)
    } else if let Some(r) = module.strip_prefix("output_blocks_") {
        ("out", r)
    } else {
        return None;
    };
    let mut it = rest.splitn(3, '_');
    let i: usize = it.next()?.parse().ok()?;
    let (inner, tail) = if kind == "mid" {
        (None, it.collect::<Vec<_>>().join("_"))
    } else {
        (Some(it.next()?.parse::<usize>().ok()?), it.next().unwrap_or("").to_string())
    };
    let per = layers + 1;
    let path = match (kind, inner) {
        ("in", Some(k)) if i >= 1 => {
            let (block, layer) = ((i - 1) / per, (i - 1) % per);
            if tail == "op" {
                return Some(format!("down_blocks_{block}_downsamplers_0_conv"));
            }
            match k {
                0 => format!("down_blocks_{block}_resnets_{layer}_{}", resnet_part(&tail)?),
                1 => format!("down_blocks_{block}_attentions_{layer}_{tail}"),
                _ => return None,
            }
        }
        ("mid", None) => {
            let (i, tail) = (i, tail);
            match i {
                0 => format!("mid_block_resnets_0_{}", resnet_part(&tail)?),
                1 => format!("mid_block_attentions_0_{tail}"),
                2 => format!("mid_block_resnets_1_{}", resnet_part(&tail)?),
                _ => return None,
            }
        }
        ("out", Some(k)) => {
            let (block, layer) = (i / per, i % per);
            // The upsampler is the block's last child: index 2 after an attention, 1 without.
            if tail == "conv" && k >= 1 {
                return Some(format!("up_blocks_{block}_upsamplers_0_conv"));
            }
            match k {
                0 => format!("up_blocks_{block}_resnets_{layer}_{}", resnet_part(&tail)?),
                1 => format!("up_blocks_{block}_attentions_{layer}_{tail}"),
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(path)
}

/// SGM `ResBlock` children → diffusers `ResnetBlock2D` ones.
fn resnet_part(tail: &str) -> Option<&'static str> {
    Some(match tail {
        "in_layers_0" => "norm1",
        "in_layers_2" => "conv1",
        "emb_layers_1" => "time_emb_proj",
        "out_layers_0" => "norm2",
        "out_layers_3" => "conv2",
        "skip_connection" => "conv_shortcut",
        _ => return None,
    })
}

/// Lookup key of a module: underscore form, without the text encoders' `text_model_` prefix
/// (transformers 5 checkpoints drop it; kohya keeps it).
fn match_key(module_underscored: &str) -> String {
    let k = module_underscored.replace('.', "_");
    k.strip_prefix("text_model_").map(str::to_string).unwrap_or(k)
}

/// One update of a module, ready to fuse.
#[derive(Debug, Clone)]
struct Update {
    lora: String,
    key: String,
    down: Tensor,
    up: Tensor,
    /// scale · alpha / rank
    factor: f64,
}

impl Update {
    fn delta(&self, shape: &[usize], dev: &Device) -> candle_core::Result<Tensor> {
        let (out, rank) = (self.up.dim(0)?, self.up.dim(1)?);
        let inner: usize = self.down.dims()[1..].iter().product();
        let expected: usize = shape.iter().product();
        // Element counts, not ranks: a 2-D update also fits a 1×1 conv weight.
        if shape.first() != Some(&out) || out * inner != expected {
            candle_core::bail!(
                "LoRA `{}` entry {}: update of shape [{out}, {:?}] does not fit the model's weight {shape:?} (a LoRA for another architecture or model size?)",
                self.lora,
                self.key,
                &self.down.dims()[1..]
            );
        }
        // Scale the small `up` factor rather than the full-size product.
        let up = (self.up.to_device(dev)?.reshape((out, rank))? * self.factor)?;
        let down = self.down.to_device(dev)?.reshape((rank, inner))?;
        up.matmul(&down)?.reshape(shape)
    }
}

/// Several LoRAs, each with its scale, resolved against a UNet config: the updates by
/// component and module, ready for [`FusingBackend`].
#[derive(Debug, Clone, Default)]
pub struct LoraSet {
    updates: HashMap<Component, HashMap<String, Vec<Update>>>,
    /// `(lora, key)` of every update, to report the ones no module asked for.
    all: Vec<(Component, String, String)>,
    used: Arc<Mutex<HashSet<(Component, String)>>>,
}

impl LoraSet {
    pub fn new(loras: &[(LoraFile, f64)], unet: &UNetConfig) -> Result<Self> {
        let layers = unet.layers_per_block.expand(unet.block_out_channels.len(), "layers_per_block")?;
        let layers = layers.first().copied().unwrap_or(2);
        let mut set = Self::default();
        for (file, scale) in loras {
            if !scale.is_finite() {
                return Err(lora_err(&file.name, format!("scale {scale} is not a finite number")));
            }
            for ((comp, module), pair) in &file.entries {
                let key = match (file.format, comp) {
                    (LoraFormat::KohyaSgm, Component::Unet) => sgm_to_diffusers(module, layers)
                        .map(|m| match_key(&m))
                        .unwrap_or_else(|| format!("(sgm){module}")),
                    _ => match_key(module),
                };
                let rank = pair.down.dim(0).unwrap_or(1).max(1) as f64;
                let denom = if pair.rslora { rank.sqrt() } else { rank };
                let factor = scale * pair.alpha.unwrap_or(rank) / denom;
                set.all.push((*comp, key.clone(), format!("{}:{}", comp.as_str(), module)));
                set.updates.entry(*comp).or_default().entry(key.clone()).or_default().push(Update {
                    lora: file.name.clone(),
                    key: module.clone(),
                    down: pair.down.clone(),
                    up: pair.up.clone(),
                    factor,
                });
            }
        }
        Ok(set)
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Wrap a component's weight backend so LoRA updates are added as tensors are fetched.
    pub fn backend(&self, component: Component, inner: Box<dyn SimpleBackend>) -> Box<dyn SimpleBackend> {
        match self.updates.get(&component) {
            Some(u) if !u.is_empty() => {
                Box::new(FusingBackend { inner, component, updates: u.clone(), used: self.used.clone() })
            }
            _ => inner,
        }
    }

    /// LoRA entries (as `component:module` in the file's naming) that no module of the built
    /// model matched.
    pub fn unmatched(&self) -> Vec<String> {
        let used = self.used.lock().map(|u| u.clone()).unwrap_or_default();
        let mut out: Vec<String> =
            self.all.iter().filter(|(c, k, _)| !used.contains(&(*c, k.clone()))).map(|(_, _, l)| l.clone()).collect();
        out.sort();
        out.dedup();
        out
    }

    /// Error when entries matched no module, unless `allow` (then they are returned for logging).
    pub fn check_unmatched(&self, allow: bool) -> Result<Vec<String>> {
        let unmatched = self.unmatched();
        if unmatched.is_empty() || allow {
            return Ok(unmatched);
        }
        Err(EngineError::LoraUnmatched { count: unmatched.len(), keys: list(&unmatched) })
    }
}

/// A `VarBuilder` backend adding LoRA updates to the weights it passes through.
struct FusingBackend {
    inner: Box<dyn SimpleBackend>,
    component: Component,
    updates: HashMap<String, Vec<Update>>,
    used: Arc<Mutex<HashSet<(Component, String)>>>,
}

impl SimpleBackend for FusingBackend {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let key = name.strip_suffix(".weight").map(match_key);
        let Some((key, ups)) = key.and_then(|k| self.updates.get(&k).map(|u| (k, u))) else {
            return self.inner.get(s, name, h, dtype, dev);
        };
        // Sum in f32 whatever the model's dtype, then convert once.
        let mut w = self.inner.get(s.clone(), name, h, DType::F32, dev)?;
        for u in ups {
            w = (w + u.delta(s.dims(), dev)?)?;
        }
        if let Ok(mut used) = self.used.lock() {
            used.insert((self.component, key));
        }
        w.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.inner.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

/// A LoRA to fuse at load time: a file and its scale.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub path: PathBuf,
    pub scale: f64,
}

impl LoraSpec {
    /// Parse `FILE_OR_NAME[:SCALE]` (scale default 1.0). A trailing `:x` is a scale only when
    /// `x` parses as a number, so Windows-style `C:\…` paths stay paths.
    pub fn parse(s: &str) -> Result<(String, f64)> {
        if let Some((head, tail)) = s.rsplit_once(':')
            && !head.is_empty()
            && let Ok(scale) = tail.parse::<f64>()
        {
            if !scale.is_finite() {
                return Err(EngineError::InvalidRequest(format!("--lora {s}: scale must be finite")));
            }
            return Ok((head.to_string(), scale));
        }
        if s.is_empty() {
            return Err(EngineError::InvalidRequest("--lora needs a file or a library name".into()));
        }
        Ok((s.to_string(), 1.0))
    }
}

/// The SDXL-Lightning LoRAs that [`resolve_lora`] fetches from the Hub when the library does
/// not have them.
pub const LIGHTNING_LORAS: [&str; 3] =
    ["sdxl_lightning_2step_lora", "sdxl_lightning_4step_lora", "sdxl_lightning_8step_lora"];

/// Library names: letters, digits, `-`, `_`, `.` (not leading), at most 128 characters — no
/// paths.
pub fn is_library_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Find a LoRA: an existing file path, else `NAME` → `<library>/NAME.safetensors`, else one of
/// the [`LIGHTNING_LORAS`] from the `ByteDance/SDXL-Lightning` Hub repository (cache first).
/// For names from a job (someone else's input) use [`resolve_library_lora`], which never takes a path.
pub fn resolve_lora(name_or_path: &str, library: Option<&Path>) -> Result<PathBuf> {
    let p = Path::new(name_or_path);
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    resolve_library_lora(name_or_path, library)
}

/// Find a LoRA by library name only: `<library>/NAME.safetensors`, else one of the
/// [`LIGHTNING_LORAS`]. A name that is a path (or a file in the working directory) is not looked at.
pub fn resolve_library_lora(name: &str, library: Option<&Path>) -> Result<PathBuf> {
    let (name_or_path, p) = (name, Path::new(name));
    if !is_library_name(name_or_path) || name_or_path.ends_with(".safetensors") {
        return Err(EngineError::MissingFile {
            component: "lora".into(),
            path: p.to_path_buf(),
            hint: " (not a file; a library name has only letters, digits, '-', '_' and '.')".into(),
        });
    }
    let mut looked = Vec::new();
    if let Some(dir) = library {
        let f = dir.join(format!("{name_or_path}.safetensors"));
        if f.is_file() {
            return Ok(f);
        }
        looked.push(f.display().to_string());
    }
    if LIGHTNING_LORAS.contains(&name_or_path) {
        return crate::files::hub_file(crate::files::LIGHTNING_REPO, &format!("{name_or_path}.safetensors"));
    }
    Err(EngineError::MissingFile {
        component: "lora".into(),
        path: p.to_path_buf(),
        hint: if looked.is_empty() {
            " (no such file and no LoRA library configured)".into()
        } else {
            format!(" (no such file; looked in the library: {})", looked.join(", "))
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgm_names_map_onto_sdxl_diffusers_modules() {
        let m = |s: &str| sgm_to_diffusers(s, 2);
        assert_eq!(m("input_blocks_0_0").as_deref(), Some("conv_in"));
        assert_eq!(m("input_blocks_1_0_in_layers_2").as_deref(), Some("down_blocks_0_resnets_0_conv1"));
        assert_eq!(m("input_blocks_3_0_op").as_deref(), Some("down_blocks_0_downsamplers_0_conv"));
        assert_eq!(
            m("input_blocks_4_1_transformer_blocks_0_attn1_to_q").as_deref(),
            Some("down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q")
        );
        assert_eq!(m("input_blocks_4_0_skip_connection").as_deref(), Some("down_blocks_1_resnets_0_conv_shortcut"));
        assert_eq!(m("input_blocks_8_1_proj_in").as_deref(), Some("down_blocks_2_attentions_1_proj_in"));
        assert_eq!(m("middle_block_0_emb_layers_1").as_deref(), Some("mid_block_resnets_0_time_emb_proj"));
        assert_eq!(m("middle_block_1_proj_out").as_deref(), Some("mid_block_attentions_0_proj_out"));
        assert_eq!(m("middle_block_2_out_layers_3").as_deref(), Some("mid_block_resnets_1_conv2"));
        assert_eq!(m("output_blocks_0_0_out_layers_3").as_deref(), Some("up_blocks_0_resnets_0_conv2"));
        assert_eq!(m("output_blocks_2_2_conv").as_deref(), Some("up_blocks_0_upsamplers_0_conv"));
        assert_eq!(
            m("output_blocks_5_1_transformer_blocks_1_ff_net_2").as_deref(),
            Some("up_blocks_1_attentions_2_transformer_blocks_1_ff_net_2")
        );
        assert_eq!(m("output_blocks_8_0_skip_connection").as_deref(), Some("up_blocks_2_resnets_2_conv_shortcut"));
        assert_eq!(m("time_embed_2").as_deref(), Some("time_embedding_linear_2"));
        assert_eq!(m("label_emb_0_0").as_deref(), Some("add_embedding_linear_1"));
        assert_eq!(m("out_2").as_deref(), Some("conv_out"));
        assert_eq!(m("input_blocks_1_0_nonsense"), None);
        assert_eq!(m("middle_block_3_proj_in"), None);
    }

    #[test]
    fn lora_spec_parses_name_and_scale() {
        assert_eq!(LoraSpec::parse("style").unwrap(), ("style".into(), 1.0));
        assert_eq!(LoraSpec::parse("style:0.5").unwrap(), ("style".into(), 0.5));
        assert_eq!(LoraSpec::parse("dir/a.safetensors:-1").unwrap(), ("dir/a.safetensors".into(), -1.0));
        assert_eq!(LoraSpec::parse("C:\\x.safetensors").unwrap(), ("C:\\x.safetensors".into(), 1.0));
        assert!(LoraSpec::parse("").is_err());
        assert!(LoraSpec::parse("a:inf").is_err());
    }

    #[test]
    fn library_names_exclude_paths() {
        assert!(is_library_name("my-style_v1.2"));
        for bad in ["", "../x", "a/b", ".hidden", "a b", "a\\b"] {
            assert!(!is_library_name(bad), "{bad}");
        }
    }
}
