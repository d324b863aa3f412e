//! Small helpers shared across the engine (loaders, the CPU kernels).

use serde::de::DeserializeOwned;
use std::path::Path;

use crate::error::{EngineError, Result};

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path, component: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            EngineError::MissingFile { component: component.to_string(), path: path.to_path_buf(), hint: String::new() }
        } else {
            EngineError::Io { path: path.to_path_buf(), source: e }
        }
    })?;
    serde_json::from_str(&text).map_err(|e| EngineError::Config {
        component: component.to_string(),
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// A config value that diffusers allows either as one integer or as one per block.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(usize),
    Many(Vec<usize>),
}

impl OneOrMany {
    pub fn expand(&self, n: usize, what: &str) -> Result<Vec<usize>> {
        match self {
            Self::One(v) => Ok(vec![*v; n]),
            Self::Many(v) if v.len() == n => Ok(v.clone()),
            Self::Many(v) => Err(EngineError::Unsupported {
                component: "unet".into(),
                message: format!("{what} has {} entries for {n} blocks", v.len()),
            }),
        }
    }
}

/// Whether the engine's own CPU kernels (fused GroupNorm + SiLU, the im2col convolution) run.
/// `FLEET_ENGINE_KERNELS=candle` switches them off, so candle's ops compute the same layers: for
/// A/B measurements in one build and for ruling the kernels out when chasing a numeric problem.
pub(crate) fn own_cpu_kernels() -> bool {
    static OWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OWN.get_or_init(|| std::env::var("FLEET_ENGINE_KERNELS").map_or(true, |v| v != "candle"))
}

/// The f32 values of a contiguous CPU tensor, for the engine's custom CPU ops (`what` names the
/// operand in the error).
pub(crate) fn contiguous_f32<'a>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let candle_core::CpuStorage::F32(data) = storage else { candle_core::bail!("{what} is not f32") };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what} is not contiguous"),
    }
}
