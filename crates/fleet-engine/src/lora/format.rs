//! Reading LoRA files: kohya (`lora_down` / `lora_up` / `alpha`) and diffusers/PEFT
//! (`lora_A` / `lora_B`, alphas in the header's `lora_adapter_metadata`) into a [`LoraFile`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::Component;
use crate::error::{EngineError, Result};

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
pub(super) struct Pair {
    /// [rank, in, (kh, kw)]
    pub(super) down: Tensor,
    /// [out, rank, (1, 1)]
    pub(super) up: Tensor,
    pub(super) alpha: Option<f64>,
    /// peft `use_rslora`: scale by alpha / √rank.
    pub(super) rslora: bool,
}

/// A parsed LoRA file: its updates by component and module (module names as written, before
/// any SGM → diffusers mapping).
#[derive(Debug, Clone)]
pub struct LoraFile {
    pub name: String,
    pub format: LoraFormat,
    pub(super) entries: BTreeMap<(Component, String), Pair>,
}

pub(super) fn lora_err(name: &str, message: impl Into<String>) -> EngineError {
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

pub(super) fn list(keys: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut s = keys.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if keys.len() > SHOWN {
        s.push_str(&format!(", … and {} more", keys.len() - SHOWN));
    }
    s
}
