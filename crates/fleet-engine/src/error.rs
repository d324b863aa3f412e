//! Typed errors of the engine.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running the engine.
///
/// No engine entry point panics on bad input: each failure mode is one of these variants,
/// naming the component, file or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A component folder or file of a diffusers-layout model is absent.
    #[error("missing {component}: {path} does not exist{hint}")]
    MissingFile { component: String, path: PathBuf, hint: String },
    /// A JSON config could not be read or parsed.
    #[error("invalid config for {component} ({path}): {message}")]
    Config { component: String, path: PathBuf, message: String },
    /// The config asks for something this engine does not implement.
    #[error("unsupported {component} config: {message}")]
    Unsupported { component: String, message: String },
    /// A weight tensor is missing or has the wrong shape (candle names the tensor).
    #[error("weights of {component}: {source}")]
    Weights {
        component: String,
        #[source]
        source: candle_core::Error,
    },
    /// A tensor given by the caller has the wrong shape.
    #[error("shape mismatch for {name}: expected {expected}, got {got}")]
    Shape { name: String, expected: String, got: String },
    /// A generation request is invalid (size, steps, batch...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The tokenizer files are invalid.
    #[error("tokenizer {component}: {message}")]
    Tokenizer { component: String, message: String },
    /// A model could not be fetched from the Hugging Face Hub (or its cache).
    #[error(
        "cannot get {repo} from the Hugging Face Hub: missing {missing}. {message}. Download the model and load it from a local diffusers-layout folder (ModelSource::Dir), or load the built-in tiny model (ModelSource::Tiny)"
    )]
    Hub { repo: String, missing: String, message: String },
    /// The requested device is not available in this build.
    #[error("device {0}")]
    Device(String),
    /// Image encoding failed.
    #[error("image encoding: {0}")]
    Image(String),
    /// A stage produced NaN or infinite values (typically f16 overflow), so no image is returned.
    #[error("{count} non-finite (NaN/Inf) value(s) after {stage}; {hint}")]
    NonFinite { stage: &'static str, count: usize, hint: &'static str },
    /// The caller asked to stop (between two denoising steps).
    #[error("cancelled between denoising steps")]
    Cancelled,
    /// The device had no memory left for a tensor (a CUDA allocation or cuBLAS workspace failed).
    /// A smaller batch, or the same one on a less busy device, may succeed.
    #[error("out of device memory: {context}: {source}")]
    OutOfMemory {
        context: String,
        #[source]
        source: candle_core::Error,
    },
    /// Any other tensor error during computation.
    #[error("{context}: {source}")]
    Candle {
        context: String,
        #[source]
        source: candle_core::Error,
    },
    /// A LoRA file is unreadable, of an unsupported format, or inconsistent (e.g. rank mismatch).
    #[error("LoRA `{name}`: {message}")]
    Lora { name: String, message: String },
    /// LoRA entries matched no module of the model (a LoRA for another architecture?).
    #[error(
        "{count} LoRA entr(y/ies) match no module of this model (a LoRA for another architecture?): {keys}; set LoadOptions::allow_unmatched_lora to ignore them"
    )]
    LoraUnmatched { count: usize, keys: String },
    /// A ControlNet model or its conditioning image is unusable with this request or model.
    #[error("ControlNet {name}: {message}")]
    ControlNet { name: String, message: String },
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Attach a context string to candle results.
pub(crate) trait CandleContext<T> {
    fn ctx(self, context: &str) -> Result<T>;
    fn weights(self, component: &str) -> Result<T>;
}

impl<T> CandleContext<T> for candle_core::Result<T> {
    fn ctx(self, context: &str) -> Result<T> {
        self.map_err(|source| EngineError::from_candle(context, source))
    }
    fn weights(self, component: &str) -> Result<T> {
        self.map_err(|source| {
            if is_out_of_memory(&source) {
                EngineError::OutOfMemory { context: format!("weights of {component}"), source }
            } else {
                EngineError::Weights { component: component.to_string(), source }
            }
        })
    }
}

impl EngineError {
    /// A tensor error during computation: [`EngineError::OutOfMemory`] when the device ran out of
    /// memory (by the error's kind, not its text), else [`EngineError::Candle`].
    pub fn from_candle(context: &str, source: candle_core::Error) -> EngineError {
        let context = context.to_string();
        if is_out_of_memory(&source) {
            EngineError::OutOfMemory { context, source }
        } else {
            EngineError::Candle { context, source }
        }
    }
}

/// Whether a candle error is a failed device allocation, looking through candle's wrappers
/// (backtrace, context, path) to the backend's own error.
fn is_out_of_memory(err: &candle_core::Error) -> bool {
    use candle_core::Error;
    match err {
        Error::WithBacktrace { inner, .. } | Error::Context { inner, .. } | Error::WithPath { inner, .. } => {
            is_out_of_memory(inner)
        }
        #[cfg(feature = "cuda")]
        Error::Cuda(inner) => cuda_out_of_memory(inner.as_ref()),
        _ => false,
    }
}

/// `CUDA_ERROR_OUT_OF_MEMORY` from the driver, or `CUBLAS_STATUS_ALLOC_FAILED` from cuBLAS.
#[cfg(feature = "cuda")]
fn cuda_out_of_memory(err: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    use candle_core::cuda_backend::CudaError;
    use candle_core::cuda_backend::cudarc::{cublas, driver};
    let driver_oom = |e: &driver::DriverError| e.0 == driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY;
    match err.downcast_ref::<CudaError>() {
        Some(CudaError::Cuda(e) | CudaError::Load { cuda: e, .. }) => driver_oom(e),
        Some(CudaError::Cublas(e)) => e.0 == cublas::sys::cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED,
        Some(_) => false,
        None => err.downcast_ref::<driver::DriverError>().is_some_and(driver_oom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_allocation_failure_is_out_of_memory() {
        // A message that merely says "out of memory" is not the kind.
        let text = candle_core::Error::Msg("CUDA_ERROR_OUT_OF_MEMORY: out of memory".into());
        assert!(matches!(EngineError::from_candle("unet", text), EngineError::Candle { .. }));
        let wrapped = candle_core::Error::Msg("shape".into()).context("decoding");
        assert!(!is_out_of_memory(&wrapped));
    }
}
