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

/// Whether the engine's own kernels run (on the CPU: fused GroupNorm + SiLU, the im2col
/// convolution, attention, SiLU; on CUDA: see [`own_cuda_kernel`]). `FLEET_ENGINE_KERNELS=candle`
/// switches them off, so candle's ops compute the same layers: for A/B measurements in one build
/// and for ruling the kernels out when chasing a numeric problem.
pub(crate) fn own_kernels() -> bool {
    kernels_setting().is_none_or(|v| v != "candle")
}

/// Whether the engine's CUDA kernel `name` runs: `norm` (fused GroupNorm + SiLU), `linear` (bias
/// in the product's epilogue), `geglu` (the feed-forward's GEGLU in one pass), `vae-attention`
/// (the VAE's attention in the model's dtype instead of f32), `conv` (cuDNN, with the `cudnn`
/// feature) and `bias` (a convolution's bias added by our kernel, not cuDNN's). All of them unless
/// `FLEET_ENGINE_KERNELS` is `candle` (none) or a list of those names separated by `,` or `+`
/// (only those, for measuring one kernel at a time).
pub(crate) fn own_cuda_kernel(name: &str) -> bool {
    cuda_kernel_enabled(kernels_setting(), name)
}

/// [`own_cuda_kernel`]'s rule for a given setting (pure, for the tests).
fn cuda_kernel_enabled(setting: Option<&str>, name: &str) -> bool {
    match setting {
        None | Some("all") => true,
        Some(list) => list.split([',', '+']).any(|k| k.trim() == name),
    }
}

fn kernels_setting() -> Option<&'static str> {
    static SETTING: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    SETTING.get_or_init(|| std::env::var("FLEET_ENGINE_KERNELS").ok().filter(|v| !v.is_empty())).as_deref()
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

/// One operand of a custom CUDA op: its storage and the layout to read it with.
#[cfg(feature = "cuda")]
pub(crate) type CudaOperand<'a> = (&'a candle_core::CudaStorage, &'a candle_core::Layout);

/// The contiguous elements of `storage` that `layout` covers.
#[cfg(feature = "cuda")]
pub(crate) fn cuda_contiguous<'a, T: candle_core::cuda_backend::CudaDType>(
    storage: &'a candle_core::CudaStorage,
    layout: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, T>> {
    let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("{what} is not contiguous") };
    Ok(storage.as_cuda_slice::<T>()?.slice(start..end))
}

/// ‖a − b‖ / ‖b‖ over all elements, in f64 on the CPU: how the CUDA kernels' tests compare.
#[cfg(all(test, feature = "cuda"))]
pub(crate) fn relative_error(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    use candle_core::{DType, Device};
    let a = a.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
    let b = b.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
    let norm = |t: &candle_core::Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
    norm(&(&a - &b).unwrap()) / norm(&b)
}

#[cfg(test)]
mod tests {
    use super::cuda_kernel_enabled;

    #[test]
    fn kernel_setting_selects_cuda_kernels() {
        assert!(cuda_kernel_enabled(None, "conv"));
        assert!(cuda_kernel_enabled(Some("all"), "geglu"));
        assert!(!cuda_kernel_enabled(Some("candle"), "conv"));
        assert!(cuda_kernel_enabled(Some("conv+norm"), "norm"));
        assert!(cuda_kernel_enabled(Some("conv, linear"), "linear"));
        assert!(!cuda_kernel_enabled(Some("conv+norm"), "linear"));
        // Names match whole: `vae-attention` does not switch on `attention`-like prefixes.
        assert!(!cuda_kernel_enabled(Some("vae-attention"), "vae"));
    }
}
