//! The pipelines this worker serves, loaded once at start.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_core::FleetConfig;
use fleet_engine::{LoadOptions, ModelSource, Pipeline, PredictionType};

/// Loaded pipelines by the model name jobs use.
pub struct Models {
    pipelines: BTreeMap<String, Arc<Pipeline>>,
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
    Engine { name: String, source: fleet_engine::EngineError },
}

impl Models {
    /// Loads each named model from its configuration entry onto the configured device (blocking).
    pub fn load(config: &FleetConfig, names: &[String]) -> Result<Models, ModelError> {
        let engine_err = |name: &str| {
            let name = name.to_owned();
            move |source| ModelError::Engine { name, source }
        };
        let device = fleet_engine::parse_device(&config.worker.device).map_err(engine_err("(device)"))?;
        let dtype = fleet_engine::default_dtype(&device);
        let mut pipelines = BTreeMap::new();
        let mut load_times = BTreeMap::new();
        for name in names {
            let model = config.models.get(name).ok_or_else(|| ModelError::NotConfigured(name.clone()))?;
            let source: ModelSource = model.source.parse().map_err(engine_err(name))?;
            let opts = LoadOptions {
                unet_override: model.unet.clone().map(std::path::PathBuf::from),
                prediction_type: match model.prediction_type.as_deref() {
                    Some("sample") => Some(PredictionType::Sample),
                    Some("epsilon") => Some(PredictionType::Epsilon),
                    _ => None,
                },
                ..LoadOptions::default()
            };
            let started = Instant::now();
            let pipeline = Pipeline::load_with(&source, &device, dtype, &opts).map_err(engine_err(name))?;
            load_times.insert(name.clone(), started.elapsed());
            tracing::info!(model = %name, seconds = started.elapsed().as_secs_f64(), "model loaded");
            pipelines.insert(name.clone(), Arc::new(pipeline));
        }
        Ok(Models { pipelines, load_times, device_name: config.worker.device.clone() })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Pipeline>> {
        self.pipelines.get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.pipelines.keys().cloned().collect()
    }
}
