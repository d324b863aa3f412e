//! Generating: requests (one, or several sharing each forward pass) through text encoding, the
//! denoising loop (UNet, ControlNets, classifier-free guidance, the scheduler) and the VAE decode,
//! timed per stage.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::batch::{BatchControl, BatchRows, cfg_on, check_batchable, repeat_images};
use super::{GenerateOutput, GenerateRequest, Pipeline, Progress, PromptEmbeds, TensorOutput, Timings};
use crate::controlnet::controlled;
use crate::error::{CandleContext, EngineError, Result};
use crate::prompt_cache::CachedPrompt;
use crate::rng::SplitMix64;
use crate::scheduler::EulerDiscrete;
use crate::unet::{AddedCond, ControlResiduals};

impl Pipeline {
    /// Latent channels and the image→latent scale (8 for SDXL).
    pub fn latent_shape(&self, width: usize, height: usize) -> (usize, usize, usize) {
        let f = self.vae.config.scale_factor();
        (self.vae.config.latent_channels, height / f, width / f)
    }

    /// Encode prompts with both encoders: penultimate states concatenated, pooled from encoder 2.
    /// Each prompt is encoded on its own and kept in [`Pipeline::prompt_cache`], so a repeated
    /// prompt costs nothing and its embedding never depends on the rest of the batch.
    pub fn encode_prompts(&self, prompts: &[String]) -> Result<PromptEmbeds> {
        let rows = prompts
            .iter()
            .map(|p| self.prompt_cache.get_or_encode(p, |p| self.encode_one(p)))
            .collect::<Result<Vec<_>>>()?;
        if let [one] = rows.as_slice() {
            return Ok(PromptEmbeds { embeds: one.embeds.clone(), pooled: one.pooled.clone() });
        }
        let embeds = rows.iter().map(|r| &r.embeds).collect::<Vec<_>>();
        let pooled = rows.iter().map(|r| &r.pooled).collect::<Vec<_>>();
        Ok(PromptEmbeds {
            embeds: Tensor::cat(&embeds, 0).ctx("prompt embeddings")?,
            pooled: Tensor::cat(&pooled, 0).ctx("pooled prompt embeddings")?,
        })
    }

    /// One prompt through both tokenizers and encoders (batch 1).
    fn encode_one(&self, prompt: &str) -> Result<CachedPrompt> {
        let o1 = self.text_encoder.forward(&[self.tokenizer.encode(prompt)])?;
        let o2 = self.text_encoder_2.forward(&[self.tokenizer_2.encode(prompt)])?;
        let embeds = Tensor::cat(&[&o1.penultimate, &o2.penultimate], 2).ctx("concat prompt embeddings")?;
        let pooled = o2.text_embeds.ok_or_else(|| EngineError::Unsupported {
            component: "text_encoder_2".into(),
            message: "no text_projection".into(),
        })?;
        Ok(CachedPrompt { embeds, pooled })
    }

    fn validate(&self, req: &GenerateRequest) -> Result<()> {
        let bad = |m: String| Err(EngineError::InvalidRequest(m));
        let f = self.vae.config.scale_factor();
        if req.prompts.is_empty() {
            return bad("at least one prompt is required".into());
        }
        if req.num_images == 0 {
            return bad("num_images must be at least 1".into());
        }
        if req.batch_size() > 256 {
            return bad(format!("{} images in one call is too many (at most 256)", req.batch_size()));
        }
        if req.width == 0 || req.height == 0 || !req.width.is_multiple_of(f) || !req.height.is_multiple_of(f) {
            return bad(format!(
                "unsupported size {}x{}: width and height must be positive multiples of {f}",
                req.width, req.height
            ));
        }
        if req.width > 8192 || req.height > 8192 {
            return bad(format!("unsupported size {}x{}: at most 8192 per side", req.width, req.height));
        }
        if req.steps == 0 || req.steps > self.scheduler.num_train_timesteps {
            return bad(format!(
                "steps must be between 1 and {}, got {}",
                self.scheduler.num_train_timesteps, req.steps
            ));
        }
        if !req.guidance.is_finite() || req.guidance < 0.0 {
            return bad(format!("guidance must be a finite number >= 0, got {}", req.guidance));
        }
        for c in &req.controls {
            let name = &c.model.name;
            if !c.scale.is_finite() {
                return bad(format!("ControlNet {name}: scale must be finite, got {}", c.scale));
            }
            if !(0.0..=1.0).contains(&c.start) || !(0.0..=1.0).contains(&c.end) || c.start >= c.end {
                return bad(format!(
                    "ControlNet {name}: start {} and end {} must satisfy 0 <= start < end <= 1",
                    c.start, c.end
                ));
            }
            let want = [1, 3, req.height, req.width];
            if c.image.dims() != want {
                return Err(EngineError::Shape {
                    name: format!("ControlNet {name} image"),
                    expected: format!("{want:?} (the output size; see control_image_tensor)"),
                    got: format!("{:?}", c.image.dims()),
                });
            }
            c.model.check_fits(&self.unet.config)?;
        }
        if let Some(init) = &req.init {
            super::request::check_strength(init.strength, req.steps)?;
            let want = [1, 3, req.height, req.width];
            if init.image.dims() != want {
                return Err(EngineError::Shape {
                    name: "init image".into(),
                    expected: format!("{want:?} (the output size; see init_image_tensor)"),
                    got: format!("{:?}", init.image.dims()),
                });
            }
            if let Some(mask) = &init.mask {
                let want = [1, 1, req.height, req.width];
                if mask.dims() != want {
                    return Err(EngineError::Shape {
                        name: "mask image".into(),
                        expected: format!("{want:?} (the output size; see mask_tensor)"),
                        got: format!("{:?}", mask.dims()),
                    });
                }
            }
        }
        Ok(())
    }

    /// Each request's init image encoded once and repeated to its images, all requests
    /// concatenated: [B, C, h, w] scaled latents (diffusers' `image_latents`).
    fn init_latents(&self, reqs: &[GenerateRequest]) -> Result<Option<Tensor>> {
        if reqs[0].init.is_none() {
            return Ok(None);
        }
        let mut parts = Vec::with_capacity(reqs.len());
        for req in reqs {
            let Some(init) = &req.init else {
                return Err(EngineError::InvalidRequest(
                    "every request of an image-to-image batch needs an init image".into(),
                ));
            };
            let image = init.image.to_device(&self.device).ctx("init image")?;
            let z = self.on_pool(|| self.vae.encode(&image))?;
            parts.push(z.repeat((req.batch_size(), 1, 1, 1)).ctx("init latents")?);
        }
        Tensor::cat(&parts, 0).map(Some).ctx("init latents")
    }

    /// Each inpainting request's mask at latent resolution, repeated to its images: [B, 1, h, w]
    /// (diffusers' nearest `interpolate` of the binarised mask: pixel (f·i, f·j) for latent (i, j)).
    fn latent_masks(&self, reqs: &[GenerateRequest]) -> Result<Option<Tensor>> {
        if reqs[0].init.as_ref().and_then(|i| i.mask.as_ref()).is_none() {
            return Ok(None);
        }
        let f = self.vae.config.scale_factor();
        let mut parts = Vec::with_capacity(reqs.len());
        for req in reqs {
            let Some(mask) = req.init.as_ref().and_then(|i| i.mask.as_ref()) else {
                return Err(EngineError::InvalidRequest("every request of an inpainting batch needs a mask".into()));
            };
            let (_, _, h, w) = mask.dims4().ctx("mask")?;
            let px = mask.flatten_all().and_then(|m| m.to_vec1::<f32>()).ctx("mask")?;
            let (lh, lw) = (h / f, w / f);
            let mut data = Vec::with_capacity(lh * lw);
            for i in 0..lh {
                for j in 0..lw {
                    data.push(px[i * f * w + j * f]);
                }
            }
            let m = Tensor::from_vec(data, (1, 1, lh, lw), &self.device).ctx("latent mask")?;
            parts.push(m.repeat((req.batch_size(), 1, 1, 1)).ctx("latent mask")?);
        }
        Tensor::cat(&parts, 0).map(Some).ctx("latent masks")
    }

    /// The latents the loop starts from. Text-to-image: noise × σ_max. Image-to-image:
    /// `image_latents + noise · σ[t_start]` (diffusers' `scheduler.add_noise` at the first kept
    /// timestep). Inpainting at strength 1 starts from pure noise × `init_noise_sigma`, as
    /// diffusers' inpainting pipeline does (`is_strength_max`).
    fn start_latents(
        &self,
        reqs: &[GenerateRequest],
        rows: &BatchRows,
        sched: &EulerDiscrete,
        noise: &Tensor,
        image_latents: Option<&Tensor>,
    ) -> Result<Tensor> {
        let Some(image_latents) = image_latents else {
            return (noise * sched.init_noise_sigma()).ctx("init latents");
        };
        let mut parts = Vec::with_capacity(reqs.len());
        for (req, &at) in reqs.iter().zip(&rows.offsets) {
            let b = req.batch_size();
            let n = noise.narrow(0, at, b).ctx("init latents")?;
            let pure_noise = req.init.as_ref().is_some_and(|i| i.mask.is_some() && i.strength == 1.0);
            parts.push(if pure_noise {
                (n * sched.init_noise_sigma()).ctx("init latents")?
            } else {
                let z = image_latents.narrow(0, at, b).ctx("init latents")?;
                (z + (n * sched.sigmas[req.first_step()]).ctx("init latents")?).ctx("init latents")?
            });
        }
        Tensor::cat(&parts, 0).ctx("init latents")
    }

    /// Summed residuals of the ControlNets at step `i` of `n`, each row scaled by its job's scale
    /// (0 where that job's control is inactive); `None` when no job's control is active.
    fn control_residuals(
        &self,
        controls: &[BatchControl],
        (i, n): (usize, usize),
        x: &Tensor,
        t: f64,
        (embeds, added): (&Tensor, &AddedCond),
    ) -> Result<Option<ControlResiduals>> {
        let mut sum: Option<ControlResiduals> = None;
        for c in controls {
            let active: Vec<bool> = c.windows.iter().map(|&(start, end)| controlled(i, n, start, end)).collect();
            // diffusers runs inactive ControlNets with scale 0; skipping them adds the same zeros.
            if !active.contains(&true) {
                continue;
            }
            let scales: Vec<f64> = c.row_job.iter().map(|&j| if active[j] { c.scales[j] } else { 0.0 }).collect();
            let scales = if scales.iter().all(|s| s.to_bits() == scales[0].to_bits()) { &scales[..1] } else { &scales };
            let r = c.model.forward_embedded_rows(x, t, embeds, Some(added), &c.embedding, scales)?;
            sum = Some(match sum {
                None => r,
                Some(s) => {
                    let add = |a: &Tensor, b: &Tensor| (a + b).ctx("sum control residuals");
                    let down = s.down.iter().zip(&r.down).map(|(a, b)| add(a, b)).collect::<Result<Vec<_>>>()?;
                    ControlResiduals { down, mid: add(&s.mid, &r.mid)? }
                }
            });
        }
        Ok(sum)
    }

    /// Initial unit-variance noise of a request: the user's latents or the documented RNG.
    pub fn initial_noise(&self, req: &GenerateRequest) -> Result<Tensor> {
        let (c, h, w) = self.latent_shape(req.width, req.height);
        let b = req.batch_size();
        if let Some(l) = &req.latents {
            if l.dims() != [b, c, h, w] {
                return Err(EngineError::Shape {
                    name: "latents".into(),
                    expected: format!("[{b}, {c}, {h}, {w}]"),
                    got: format!("{:?}", l.dims()),
                });
            }
            return l.to_dtype(DType::F32).and_then(|l| l.to_device(&self.device)).ctx("user latents");
        }
        let mut data = Vec::with_capacity(b * c * h * w);
        for s in req.seeds() {
            data.extend(SplitMix64::new(s).normals(c * h * w));
        }
        Tensor::from_vec(data, (b, c, h, w), &Device::Cpu).and_then(|t| t.to_device(&self.device)).ctx("initial noise")
    }

    /// Generate images as a float tensor (what the parity tests compare).
    pub fn generate_tensor(&self, req: &GenerateRequest, progress: &mut dyn FnMut(Progress)) -> Result<TensorOutput> {
        self.generate_tensor_until(req, &mut |p| {
            progress(p);
            ControlFlow::Continue(())
        })
    }

    /// Like [`Self::generate_tensor`], but `progress` may stop the run after any denoising step:
    /// `Break` ends it with [`EngineError::Cancelled`] (a worker whose job was cancelled mid-run).
    pub fn generate_tensor_until(
        &self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<TensorOutput> {
        let mut outputs = self.generate_batch_tensor_until(std::slice::from_ref(req), progress)?;
        outputs.pop().ok_or_else(|| EngineError::InvalidRequest("no request".into()))
    }

    /// Several requests in one denoising loop and one VAE decode: the same size, steps and
    /// prediction type (and ControlNet models), each with its own prompts, negative prompt, seeds,
    /// number of images, guidance and control images. Every request's images are those it gets
    /// alone, bit for bit: each batch row goes through the same operations whatever rows share
    /// the pass (see the engine README, "Batch invariance"); a single request is a batch of one.
    pub fn generate_batch_tensor_until(
        &self,
        reqs: &[GenerateRequest],
        progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<Vec<TensorOutput>> {
        let Some(first) = reqs.first() else { return Ok(Vec::new()) };
        let rows = BatchRows::of(reqs);
        let _generate = tracing::info_span!(
            "generate",
            model = %self.model_name,
            requests = reqs.len(),
            images = rows.images,
            steps = first.steps,
            width = first.width,
            height = first.height,
        )
        .entered();
        for req in reqs {
            self.validate(req)?;
        }
        check_batchable(reqs)?;
        let sched = EulerDiscrete::new(
            &self.scheduler,
            first.steps,
            first.prediction_type.or(Some(self.scheduler.prediction_type)),
        )?;
        let noise = reqs.iter().map(|r| self.initial_noise(r)).collect::<Result<Vec<_>>>()?;
        let noise = Tensor::cat(&noise, 0).ctx("initial noise")?;
        let image_latents = {
            let _encode = tracing::info_span!("vae_encode", requests = reqs.len()).entered();
            self.init_latents(reqs)?
        };
        let masks = self.latent_masks(reqs)?;
        let first_step = first.first_step();

        // Text encoding: the unconditional rows of the guided requests, then every request's rows.
        let text_span = tracing::info_span!("text_encode", requests = reqs.len(), cfg = rows.uncond > 0).entered();
        let t0 = Instant::now();
        let (mut embeds, mut pooled) = (Vec::new(), Vec::new());
        let mut conditional = Vec::with_capacity(reqs.len());
        for req in reqs {
            let pos = self.on_pool(|| self.encode_prompts(&req.prompts))?;
            conditional.push((repeat_images(&pos.embeds, req)?, repeat_images(&pos.pooled, req)?));
        }
        for (req, (e, p)) in reqs.iter().zip(&conditional) {
            if !cfg_on(req) {
                continue;
            }
            let neg_text = req.negative_prompt.clone().unwrap_or_default();
            if neg_text.is_empty() && self.force_zeros_for_empty_prompt {
                embeds.push(e.zeros_like().ctx("zeros")?);
                pooled.push(p.zeros_like().ctx("zeros")?);
            } else {
                let neg = self.on_pool(|| self.encode_prompts(&vec![neg_text; req.prompts.len()]))?;
                embeds.push(repeat_images(&neg.embeds, req)?);
                pooled.push(repeat_images(&neg.pooled, req)?);
            }
        }
        for (e, p) in conditional {
            embeds.push(e);
            pooled.push(p);
        }
        let embeds = Tensor::cat(&embeds, 0).ctx("prompt embeddings")?;
        let pooled = Tensor::cat(&pooled, 0).ctx("pooled prompt embeddings")?;
        // GPU kernels run asynchronously: wait for them before reading the clock.
        self.device.synchronize().ctx("sync")?;
        let text_encode = t0.elapsed();
        text_span.exit();

        // Denoising.
        let total = sched.timesteps.len() - first_step;
        let denoise_span = tracing::info_span!("denoise", steps = total).entered();
        let t1 = Instant::now();
        let ub = rows.uncond + rows.images;
        let (h, w) = (first.height as f32, first.width as f32);
        let time_ids = Tensor::from_vec([h, w, 0.0, 0.0, h, w].repeat(ub), (ub, 6), &self.device).ctx("time ids")?;
        let added = AddedCond { text_embeds: pooled, time_ids };
        let mut latents = self.start_latents(reqs, &rows, &sched, &noise, image_latents.as_ref())?;
        let controls = self.batch_controls(reqs, &rows, &rows.unet_input(&latents)?)?;
        // The kept timesteps: `k` counts them (progress, ControlNet windows, as diffusers'
        // img2img pipelines do), `i` indexes the full schedule (sigmas).
        for (k, i) in (first_step..sched.timesteps.len()).enumerate() {
            let t = sched.timesteps[i];
            let _step = tracing::debug_span!("unet_step", step = k + 1, timestep = t).entered();
            let x = (rows.unet_input(&latents)? * sched.input_scale(i)).ctx("scale input")?;
            let out = self.on_pool(|| {
                let control = self.control_residuals(&controls, (k, total), &x, t, (&embeds, &added))?;
                self.unet.forward(&x, t, &embeds, Some(&added), control.as_ref())
            })?;
            let out = out.to_dtype(DType::F32).ctx("unet output")?;
            let out = rows.guide(reqs, &out)?;
            latents = sched.step(i, &out, &latents).ctx("scheduler step")?;
            if let (Some(mask), Some(image_latents)) = (&masks, &image_latents) {
                latents = keep_unmasked(&latents, mask, image_latents, &noise, sched.sigmas[i + 1])?;
            }
            self.device.synchronize().ctx("sync")?;
            if progress(Progress { step: k + 1, total, timestep: t, elapsed: t1.elapsed() }).is_break() {
                return Err(EngineError::Cancelled);
            }
        }
        let denoise = t1.elapsed();
        denoise_span.exit();

        // A NaN image must never reach a caller (or S3): check both stages, naming the guilty one.
        ensure_finite(
            &latents,
            "denoising (UNet)",
            "the UNet or scheduler diverged (f16 overflow or broken weights); the image was not decoded",
        )?;
        let vae_span = tracing::info_span!("vae_decode", images = rows.images).entered();
        let t2 = Instant::now();
        let images = self.on_pool(|| self.vae.decode(&latents))?.to_device(&Device::Cpu).ctx("images to cpu")?;
        ensure_finite(
            &images,
            "VAE decode",
            "the stock SDXL VAE overflows in f16: use the fp16-fix VAE or decode in f32",
        )?;
        let vae_decode = t2.elapsed();
        vae_span.exit();
        let latents = latents.to_device(&Device::Cpu).ctx("latents to cpu")?;
        let timings = Timings { text_encode, denoise, vae_decode };
        reqs.iter()
            .zip(&rows.offsets)
            .map(|(req, &at)| {
                let b = req.batch_size();
                Ok(TensorOutput {
                    images: images.narrow(0, at, b).ctx("split images")?,
                    latents: latents.narrow(0, at, b).ctx("split latents")?,
                    seeds: req.seeds(),
                    timings,
                })
            })
            .collect()
    }

    /// Each ControlNet of the batch with its conditioning embedding over every UNet row (both
    /// classifier-free-guidance halves get their job's image, as in diffusers), computed once: it
    /// does not change per step.
    fn batch_controls(
        &self,
        reqs: &[GenerateRequest],
        rows: &BatchRows,
        unet_input: &Tensor,
    ) -> Result<Vec<BatchControl>> {
        let row_job = rows.unet_row_jobs(reqs);
        (0..reqs[0].controls.len())
            .map(|k| {
                let images = row_job
                    .iter()
                    .map(|&j| reqs[j].controls[k].image.to_device(&self.device))
                    .collect::<candle_core::Result<Vec<_>>>()
                    .and_then(|images| Tensor::cat(&images, 0))
                    .ctx("control images")?;
                let model = reqs[0].controls[k].model.clone();
                Ok(BatchControl {
                    embedding: model.embed_condition(&images, unet_input)?,
                    model,
                    scales: reqs.iter().map(|r| r.controls[k].scale).collect(),
                    windows: reqs.iter().map(|r| (r.controls[k].start, r.controls[k].end)).collect(),
                    row_job: row_job.clone(),
                })
            })
            .collect()
    }

    /// Runs a stage of a CPU pipeline on a rayon worker thread. Called from outside the pool,
    /// every parallel op (the kernels' loops, gemm's products) injects its work into the pool and
    /// blocks the caller until a worker is done: two thread hand-offs per op, a few hundred per
    /// UNet step. From inside, the ops split their work with the other workers directly, and the
    /// caller hands over once. GPU pipelines stay on the caller's thread (the device context is
    /// bound there).
    fn on_pool<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        if !self.device.is_cpu() || rayon::current_thread_index().is_some() {
            return f();
        }
        rayon::scope(|_| f())
    }

    /// Generate RGB images.
    pub fn generate(&self, req: &GenerateRequest, progress: &mut dyn FnMut(Progress)) -> Result<GenerateOutput> {
        let out = self.generate_tensor(req, progress)?;
        Ok(GenerateOutput { images: tensor_to_images(&out.images)?, seeds: out.seeds, timings: out.timings })
    }

    /// Generate RGB images, stoppable between steps (see [`Self::generate_tensor_until`]).
    pub fn generate_until(
        &self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<GenerateOutput> {
        let out = self.generate_tensor_until(req, progress)?;
        Ok(GenerateOutput { images: tensor_to_images(&out.images)?, seeds: out.seeds, timings: out.timings })
    }

    /// RGB images of several requests from one forward pass per step (see
    /// [`Self::generate_batch_tensor_until`]), one output per request.
    pub fn generate_batch_until(
        &self,
        reqs: &[GenerateRequest],
        progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<Vec<GenerateOutput>> {
        self.generate_batch_tensor_until(reqs, progress)?
            .into_iter()
            .map(|out| {
                Ok(GenerateOutput { images: tensor_to_images(&out.images)?, seeds: out.seeds, timings: out.timings })
            })
            .collect()
    }
}

/// Inpainting after a step: the kept region (mask 0) becomes the init latents noised to the next
/// timestep (σ = 0 after the last step: the init latents themselves), diffusers'
/// `(1 − m) · add_noise(image_latents, noise, t_next) + m · latents`.
fn keep_unmasked(
    latents: &Tensor,
    mask: &Tensor,
    image_latents: &Tensor,
    noise: &Tensor,
    sigma_next: f64,
) -> Result<Tensor> {
    let run = || -> candle_core::Result<Tensor> {
        let proper = if sigma_next == 0.0 { image_latents.clone() } else { (image_latents + (noise * sigma_next)?)? };
        let keep = (1.0 - mask)?;
        keep.broadcast_mul(&proper)? + mask.broadcast_mul(latents)?
    };
    run().ctx("inpainting blend")
}

/// Fails with [`EngineError::NonFinite`] when `t` holds any NaN or infinity.
pub(crate) fn ensure_finite(t: &Tensor, stage: &'static str, hint: &'static str) -> Result<()> {
    let values = t.flatten_all().and_then(|v| v.to_dtype(DType::F32)).and_then(|v| v.to_vec1::<f32>()).ctx(stage)?;
    let count = values.iter().filter(|v| !v.is_finite()).count();
    if count == 0 { Ok(()) } else { Err(EngineError::NonFinite { stage, count, hint }) }
}

/// [B, 3, H, W] f32 in [0, 1] → RGB images (`round(x·255)`, as diffusers' `numpy_to_pil`).
pub fn tensor_to_images(t: &Tensor) -> Result<Vec<image::RgbImage>> {
    let (b, c, h, w) = t.dims4().ctx("images")?;
    if c != 3 {
        return Err(EngineError::Shape {
            name: "images".into(),
            expected: "[B, 3, H, W]".into(),
            got: format!("{:?}", t.dims()),
        });
    }
    let data = ((t.to_dtype(DType::F32).ctx("images")?.clamp(0f32, 1f32).ctx("images")? * 255.0).ctx("images")?)
        .round()
        .and_then(|x| x.permute((0, 2, 3, 1)))
        .and_then(|x| x.flatten_all())
        .and_then(|x| x.to_vec1::<f32>())
        .ctx("images")?;
    let per = h * w * 3;
    (0..b)
        .map(|i| {
            let px: Vec<u8> = data[i * per..(i + 1) * per].iter().map(|&v| v as u8).collect();
            image::RgbImage::from_raw(w as u32, h as u32, px).ok_or_else(|| EngineError::Image("buffer size".into()))
        })
        .collect()
}
