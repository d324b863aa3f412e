//! Fusing: LoRA updates resolved against a UNet config ([`LoraSet`]) and added to the base
//! weights as the model fetches them ([`FusingBackend`]), without a second copy of the weights.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::Init;
use candle_nn::var_builder::SimpleBackend;

use super::Component;
use super::format::{LoraFile, LoraFormat, list, lora_err};
use super::keys::{match_key, sgm_to_diffusers};
use crate::error::{EngineError, Result};
use crate::unet::UNetConfig;

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
