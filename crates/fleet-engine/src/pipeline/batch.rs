//! How the requests of one forward pass share its batch: which UNet rows belong to which request,
//! the classifier-free-guidance layout, each request's guidance and ControlNet settings per row.

use std::sync::Arc;

use candle_core::Tensor;

use super::GenerateRequest;
use crate::controlnet::ControlNetModel;
use crate::error::{CandleContext, EngineError, Result};

/// Whether a request runs classifier-free guidance (Lightning is made for guidance 0).
pub(super) fn cfg_on(req: &GenerateRequest) -> bool {
    req.guidance > 1.0
}

/// A request's per-prompt rows repeated to its images, prompt-major (prompt p → images p·n ..
/// p·n + n − 1).
pub(super) fn repeat_images(t: &Tensor, req: &GenerateRequest) -> Result<Tensor> {
    let n = req.num_images;
    if n == 1 {
        return Ok(t.clone());
    }
    let run = || -> candle_core::Result<Tensor> {
        let mut reps = vec![1usize; t.rank()];
        reps[0] = n;
        let rows: Vec<Tensor> =
            (0..t.dim(0)?).map(|i| t.narrow(0, i, 1)?.repeat(&reps[..])).collect::<candle_core::Result<_>>()?;
        Tensor::cat(&rows, 0)
    };
    run().ctx("repeat")
}

/// Requests share a pass only when everything that shapes it is the same.
pub(super) fn check_batchable(reqs: &[GenerateRequest]) -> Result<()> {
    let first = &reqs[0];
    for (j, r) in reqs.iter().enumerate().skip(1) {
        let differs = |what: &str| {
            Err(EngineError::InvalidRequest(format!(
                "request {j} cannot share a forward pass with request 0: {what} differs"
            )))
        };
        if (r.width, r.height) != (first.width, first.height) {
            return differs("the size");
        }
        if r.steps != first.steps {
            return differs("the number of steps");
        }
        if r.prediction_type != first.prediction_type {
            return differs("the prediction type");
        }
        let same_models = r.controls.len() == first.controls.len()
            && r.controls.iter().zip(&first.controls).all(|(a, b)| Arc::ptr_eq(&a.model, &b.model));
        if !same_models {
            return differs("the set of ControlNet models");
        }
        let mode = |q: &GenerateRequest| q.init.as_ref().map(|i| i.mask.is_some());
        if mode(r) != mode(first) {
            return differs("the mode (text-to-image, image-to-image or inpainting)");
        }
        if r.first_step() != first.first_step() {
            return differs("the number of steps the strength keeps");
        }
    }
    Ok(())
}

/// Where each request's rows sit in the batch. The UNet batch holds the unconditional rows of
/// the guided requests first (in request order), then every request's conditional rows; a single
/// request thus keeps the classic `[uncond; cond]` layout.
pub(super) struct BatchRows {
    /// First image row of each request in the latents (and the output).
    pub(super) offsets: Vec<usize>,
    /// First unconditional UNet row of each guided request.
    pub(super) uncond_offsets: Vec<Option<usize>>,
    /// Images in all.
    pub(super) images: usize,
    /// Unconditional rows in all.
    pub(super) uncond: usize,
}

impl BatchRows {
    pub(super) fn of(reqs: &[GenerateRequest]) -> Self {
        let (mut offsets, mut uncond_offsets) = (Vec::new(), Vec::new());
        let (mut images, mut uncond) = (0, 0);
        for r in reqs {
            offsets.push(images);
            images += r.batch_size();
            uncond_offsets.push(cfg_on(r).then_some(uncond));
            if cfg_on(r) {
                uncond += r.batch_size();
            }
        }
        Self { offsets, uncond_offsets, images, uncond }
    }

    /// The request of every UNet row.
    pub(super) fn unet_row_jobs(&self, reqs: &[GenerateRequest]) -> Vec<usize> {
        let mut jobs = Vec::with_capacity(self.uncond + self.images);
        for (j, r) in reqs.iter().enumerate() {
            if self.uncond_offsets[j].is_some() {
                jobs.extend(std::iter::repeat_n(j, r.batch_size()));
            }
        }
        for (j, r) in reqs.iter().enumerate() {
            jobs.extend(std::iter::repeat_n(j, r.batch_size()));
        }
        jobs
    }

    /// The UNet's input rows: the guided requests' latents again for their unconditional rows,
    /// then all latents.
    pub(super) fn unet_input(&self, latents: &Tensor) -> Result<Tensor> {
        if self.uncond == 0 {
            return Ok(latents.clone());
        }
        let mut parts = Vec::new();
        for (j, at) in self.uncond_offsets.iter().enumerate() {
            if at.is_some() {
                let b = self.rows_of(j);
                parts.push(latents.narrow(0, self.offsets[j], b).ctx("cfg input")?);
            }
        }
        parts.push(latents.clone());
        Tensor::cat(&parts, 0).ctx("cfg input")
    }

    fn rows_of(&self, j: usize) -> usize {
        self.offsets.get(j + 1).copied().unwrap_or(self.images) - self.offsets[j]
    }

    /// The UNet's output to one prediction per image: `u + g·(c − u)` for guided requests (each
    /// with its own guidance), `c` for the others.
    pub(super) fn guide(&self, reqs: &[GenerateRequest], out: &Tensor) -> Result<Tensor> {
        if self.uncond == 0 {
            return Ok(out.clone());
        }
        let mut parts = Vec::with_capacity(reqs.len());
        for (j, req) in reqs.iter().enumerate() {
            let b = self.rows_of(j);
            let c = out.narrow(0, self.uncond + self.offsets[j], b).ctx("cfg")?;
            parts.push(match self.uncond_offsets[j] {
                Some(at) => {
                    let u = out.narrow(0, at, b).ctx("cfg")?;
                    (&u + ((c - &u).ctx("cfg")? * req.guidance).ctx("cfg")?).ctx("cfg")?
                }
                None => c,
            });
        }
        if let [one] = parts.as_slice() {
            return Ok(one.clone());
        }
        Tensor::cat(&parts, 0).ctx("cfg")
    }
}

/// One ControlNet of a batch: its conditioning embedding over every UNet row, and each request's
/// scale and active window.
pub(super) struct BatchControl {
    pub(super) model: Arc<ControlNetModel>,
    pub(super) embedding: Tensor,
    pub(super) scales: Vec<f64>,
    pub(super) windows: Vec<(f64, f64)>,
    /// The request of every UNet row.
    pub(super) row_job: Vec<usize>,
}
