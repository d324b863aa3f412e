//! `EulerDiscreteScheduler` with trailing timestep spacing, as diffusers runs SDXL-Lightning.
//!
//! Mirrors `diffusers/schedulers/scheduling_euler_discrete.py` (s_churn = 0, linear sigma
//! interpolation, final sigma zero): `betas = linspace(√β0, √β1, T)²` ("scaled_linear"),
//! `ᾱ = cumprod(1 − β)`, `σ_t = √((1 − ᾱ_t)/ᾱ_t)`, timesteps
//! `round(arange(T, 0, −T/N)) − 1`, sigmas interpolated at those timesteps followed by 0.

use serde::Deserialize;
use std::path::Path;

use crate::error::{EngineError, Result};

/// What the UNet predicts: fleet-core's list, shared with the configuration and the CLI.
pub use fleet_core::PredictionType;

/// The fields of diffusers' `scheduler/scheduler_config.json` this engine reads.
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    #[serde(default = "default_train_steps")]
    pub num_train_timesteps: usize,
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    #[serde(default = "default_beta_schedule")]
    pub beta_schedule: String,
    #[serde(default = "default_prediction")]
    pub prediction_type: PredictionType,
}

fn default_train_steps() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    0.00085
}
fn default_beta_end() -> f64 {
    0.012
}
fn default_beta_schedule() -> String {
    "scaled_linear".into()
}
fn default_prediction() -> PredictionType {
    PredictionType::Epsilon
}

impl Default for SchedulerConfig {
    /// SDXL base (`stabilityai/stable-diffusion-xl-base-1.0/scheduler/scheduler_config.json`).
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear".into(),
            prediction_type: PredictionType::Epsilon,
        }
    }
}

impl SchedulerConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        crate::util::read_json(path, "scheduler")
    }
}

/// Trailing-spacing Euler discrete scheduler.
#[derive(Debug, Clone)]
pub struct EulerDiscrete {
    pub timesteps: Vec<f64>,
    /// `timesteps.len() + 1` values, the last one 0.
    pub sigmas: Vec<f64>,
    pub prediction_type: PredictionType,
}

impl EulerDiscrete {
    pub fn new(cfg: &SchedulerConfig, steps: usize, prediction: Option<PredictionType>) -> Result<Self> {
        let t = cfg.num_train_timesteps;
        if steps == 0 || steps > t {
            return Err(EngineError::InvalidRequest(format!("steps must be between 1 and {t}, got {steps}")));
        }
        // diffusers computes betas and ᾱ in float32; do the same so sigmas agree to the last bit.
        let betas: Vec<f32> = match cfg.beta_schedule.as_str() {
            "scaled_linear" => {
                let (a, b) = ((cfg.beta_start as f32).sqrt(), (cfg.beta_end as f32).sqrt());
                linspace(a, b, t).into_iter().map(|x| x * x).collect()
            }
            "linear" => linspace(cfg.beta_start as f32, cfg.beta_end as f32, t),
            other => {
                return Err(EngineError::Unsupported {
                    component: "scheduler".into(),
                    message: format!("beta_schedule {other:?}"),
                });
            }
        };
        let mut acc = 1f32;
        let all_sigmas: Vec<f64> = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                (((1.0 - acc) / acc) as f64).sqrt()
            })
            .collect();
        let ratio = t as f64 / steps as f64;
        let timesteps: Vec<f64> = (0..steps).map(|i| (t as f64 - i as f64 * ratio).round() - 1.0).collect();
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&ts| interp(ts, &all_sigmas)).collect();
        sigmas.push(0.0);
        // diffusers stores sigmas as float32.
        let sigmas = sigmas.into_iter().map(|s| s as f32 as f64).collect();
        Ok(Self { timesteps, sigmas, prediction_type: prediction.unwrap_or(cfg.prediction_type) })
    }

    /// Scale applied to unit-variance noise to get the initial latents (σ_max for trailing).
    pub fn init_noise_sigma(&self) -> f64 {
        self.sigmas.iter().cloned().fold(0.0, f64::max)
    }

    /// Factor the latents are multiplied by before the UNet at step `i`: 1/√(σ²+1).
    pub fn input_scale(&self, i: usize) -> f64 {
        1.0 / (self.sigmas[i] * self.sigmas[i] + 1.0).sqrt()
    }

    /// One Euler step on f32 latents.
    pub fn step(
        &self,
        i: usize,
        model_output: &candle_core::Tensor,
        sample: &candle_core::Tensor,
    ) -> candle_core::Result<candle_core::Tensor> {
        let sigma = self.sigmas[i];
        let sigma_next = self.sigmas[i + 1];
        let model_output = model_output.to_dtype(candle_core::DType::F32)?;
        let x0 = match self.prediction_type {
            PredictionType::Epsilon => (sample - (&model_output * sigma)?)?,
            PredictionType::Sample => model_output,
            PredictionType::VPrediction => {
                let c = sigma * sigma + 1.0;
                ((&model_output * (-sigma / c.sqrt()))? + (sample / c)?)?
            }
        };
        let derivative = ((sample - x0)? / sigma)?;
        sample + (derivative * (sigma_next - sigma))?
    }
}

fn linspace(a: f32, b: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![a];
    }
    let step = (b - a) / (n - 1) as f32;
    (0..n)
        .map(|i| {
            // torch.linspace fills the second half from the end for symmetry.
            if i < n / 2 { a + step * i as f32 } else { b - step * (n - 1 - i) as f32 }
        })
        .collect()
}

fn interp(x: f64, ys: &[f64]) -> f64 {
    if x <= 0.0 {
        return ys[0];
    }
    let last = ys.len() - 1;
    if x >= last as f64 {
        return ys[last];
    }
    let i = x.floor() as usize;
    let f = x - i as f64;
    ys[i] * (1.0 - f) + ys[i + 1] * f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(n: usize) -> (Vec<f64>, Vec<f64>) {
        let s = EulerDiscrete::new(&SchedulerConfig::default(), n, None).unwrap();
        (s.timesteps, s.sigmas)
    }

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 6e-5, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn trailing_table_matches_facts() {
        let (t, s) = table(1);
        assert_eq!(t, vec![999.0]);
        close(&s, &[14.6147, 0.0]);
        let (t, s) = table(2);
        assert_eq!(t, vec![999.0, 499.0]);
        close(&s, &[14.6147, 1.6129, 0.0]);
        let (t, s) = table(4);
        assert_eq!(t, vec![999.0, 749.0, 499.0, 249.0]);
        close(&s, &[14.6147, 4.0817, 1.6129, 0.6932, 0.0]);
        let (t, s) = table(8);
        assert_eq!(t, vec![999.0, 874.0, 749.0, 624.0, 499.0, 374.0, 249.0, 124.0]);
        close(&s, &[14.6147, 7.2974, 4.0817, 2.4925, 1.6129, 1.0690, 0.6932, 0.3977, 0.0]);
    }

    #[test]
    fn init_sigma_and_scale() {
        let s = EulerDiscrete::new(&SchedulerConfig::default(), 4, None).unwrap();
        assert!((s.init_noise_sigma() - 14.6147).abs() < 1e-4);
        assert!((s.input_scale(0) - 1.0 / (14.6147f64.powi(2) + 1.0).sqrt()).abs() < 1e-6);
    }

    #[test]
    fn zero_steps_is_an_error() {
        assert!(EulerDiscrete::new(&SchedulerConfig::default(), 0, None).is_err());
        assert!(EulerDiscrete::new(&SchedulerConfig::default(), 1001, None).is_err());
    }

    #[test]
    fn step_formulas() {
        use candle_core::{Device, Tensor};
        let dev = Device::Cpu;
        let x = Tensor::new(&[2.0f32, -1.0], &dev).unwrap();
        let out = Tensor::new(&[0.5f32, 0.25], &dev).unwrap();
        for p in [PredictionType::Epsilon, PredictionType::Sample] {
            let s = EulerDiscrete::new(&SchedulerConfig::default(), 2, Some(p)).unwrap();
            let (sg, sn) = (s.sigmas[0], s.sigmas[1]);
            let got: Vec<f32> = s.step(0, &out, &x).unwrap().to_vec1().unwrap();
            for k in 0..2 {
                let xv = [2.0f64, -1.0][k];
                let ov = [0.5f64, 0.25][k];
                let x0 = if p == PredictionType::Epsilon { xv - sg * ov } else { ov };
                let want = xv + (xv - x0) / sg * (sn - sg);
                assert!((got[k] as f64 - want).abs() < 1e-4, "{p:?}: {got:?} vs {want}");
            }
            // Last step of a 1-step sample schedule lands exactly on x0.
            let s1 = EulerDiscrete::new(&SchedulerConfig::default(), 1, Some(PredictionType::Sample)).unwrap();
            let last: Vec<f32> = s1.step(0, &out, &x).unwrap().to_vec1().unwrap();
            assert!((last[0] - 0.5).abs() < 1e-6 && (last[1] - 0.25).abs() < 1e-6);
        }
    }
}
