//! `fleet generate`: text → image on this machine, no fleet needed. The flags become a
//! [`GenerateCommand`]; its request is the job's (fleet-render's mapping, as a worker builds it),
//! so the same values give a worker's pixels.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use fleet_core::JobSpec;
use fleet_core::request_record::sha256_hex;
use fleet_engine::files::DEFAULT_HUB_MODEL;
use fleet_engine::{
    ControlInput, ControlNetModel, ControlNetUsed, ControlPreprocess, EncodeOptions, EngineError, GenerateRequest,
    LoadOptions, LoraSpec, LoraUsed, ModelSource, Pipeline, PngCompression, PredictionType, Progress, Provenance,
    Result, Timings, control_image_tensor, default_dtype, parse_device, read_latents, resolve_lora, save_images,
};
use fleet_engine::{InitImageUsed, InitInput, check_strength, init_image::init_image_tensor, init_image::mask_tensor};

use crate::cli::{Cli, GenerateArgs};

pub fn run(cli: &Cli, args: &GenerateArgs) -> anyhow::Result<ExitCode> {
    if let Some(file) = &args.jobs {
        return super::generate_jobs::run(cli, args, file);
    }
    let command = match &args.from_image {
        Some(file) => super::from_image::command(cli, args, file)?,
        None => command_from_flags(cli, args)?,
    };
    execute(&command)
}

/// The command the generation flags describe.
fn command_from_flags(cli: &Cli, args: &GenerateArgs) -> anyhow::Result<GenerateCommand> {
    let g = &args.generation;
    // LoRA names (not files) resolve in the configured library; the configuration is only read
    // when a LoRA needs it, so `fleet generate` works without one.
    let lora_dir = if g.loras.is_empty() { None } else { Some(cli.load_config()?.library.lora_dir) };
    let control_preprocess: ControlPreprocess = args.control_preprocess.parse()?;
    let prediction_type = args
        .prediction_type
        .as_deref()
        .map(|p| p.parse::<PredictionType>().map_err(|e| anyhow!("--prediction-type: {e}")))
        .transpose()?;
    let defaults = GenerateCommand::default();
    let command = GenerateCommand {
        prompts: g.prompts.clone(),
        negative_prompt: g.negative_prompt.clone(),
        model: g.model.clone().unwrap_or(defaults.model.clone()),
        unet: args.unet.clone(),
        steps: g.steps.map_or(defaults.steps, |s| s as usize),
        guidance: g.guidance.map_or(defaults.guidance, f64::from),
        width: g.width.map_or(defaults.width, |w| w as usize),
        height: g.height.map_or(defaults.height, |h| h as usize),
        seed: g.seed.unwrap_or(defaults.seed),
        num_images: g.num_images.map_or(defaults.num_images, |n| n as usize),
        latents: args.latents.clone(),
        prediction_type,
        device: args.device.clone(),
        out: args.out.clone(),
        quality: args.quality,
        png_compression: args.png_compression,
        loras: g.loras.clone(),
        lora_dir,
        allow_unmatched_lora: args.lora_allow_unmatched,
        controlnet: args.controlnet.clone(),
        control_image: args.control_image.clone(),
        control_scale: args.control_scale,
        control_start: args.control_start,
        control_end: args.control_end,
        control_preprocess,
        init_image: args.init_image.clone(),
        strength: args.strength,
        mask_image: args.mask_image.clone(),
    };
    Ok(command)
}

/// Runs `command` with a progress bar; prints the paths written and the stage times.
fn execute(command: &GenerateCommand) -> anyhow::Result<ExitCode> {
    let bar = indicatif::ProgressBar::new(command.steps as u64);
    let report = command.run(&mut |p| bar.set_position(p.step as u64))?;
    bar.finish_and_clear();
    for path in &report.paths {
        outln!("{}", path.display());
    }
    let t = report.timings;
    eprintln!(
        "{} image(s), seeds {:?}: load {:.2}s, text {:.2}s, denoise {:.2}s, decode {:.2}s, save {:.2}s",
        report.paths.len(),
        report.seeds,
        report.load_seconds,
        t.text_encode.as_secs_f64(),
        t.denoise.as_secs_f64(),
        t.vae_decode.as_secs_f64(),
        report.save_seconds
    );
    Ok(ExitCode::SUCCESS)
}

/// `fleet generate --prompt TEXT [--prompt TEXT ...] [--negative-prompt TEXT]
/// [--model tiny|DIR|HUB_ID] [--unet FILE] [--steps N] [--guidance F] [--width W]
/// [--height H] [--seed S] [--num-images N] [--latents FILE]
/// [--prediction-type epsilon|sample] [--device cpu|cuda|metal]
/// [--lora FILE_OR_NAME[:SCALE] ...] [--lora-allow-unmatched]
/// [--controlnet DIR --control-image FILE [--control-scale F] [--control-start F]
/// [--control-end F] [--control-preprocess none|canny]]
/// [--init-image FILE [--strength F] [--mask-image FILE]] --out PATH`
#[derive(Debug, Clone)]
pub struct GenerateCommand {
    pub prompts: Vec<String>,
    pub negative_prompt: Option<String>,
    /// `tiny`, a diffusers folder or a hub id (default `ByteDance/SDXL-Lightning`).
    pub model: String,
    pub unet: Option<PathBuf>,
    pub steps: usize,
    pub guidance: f64,
    pub width: usize,
    pub height: usize,
    pub seed: u64,
    pub num_images: usize,
    pub latents: Option<PathBuf>,
    pub prediction_type: Option<PredictionType>,
    pub device: String,
    pub out: PathBuf,
    /// JPEG quality (1–100).
    pub quality: u8,
    /// PNG's deflate effort.
    pub png_compression: PngCompression,
    /// `FILE_OR_NAME[:SCALE]` (scale default 1.0), fused in order.
    pub loras: Vec<String>,
    /// Where LoRA names (not files) are looked up: `<dir>/NAME.safetensors`.
    pub lora_dir: Option<PathBuf>,
    /// Accept LoRA entries that match no module.
    pub allow_unmatched_lora: bool,
    /// A diffusers-layout ControlNet folder.
    pub controlnet: Option<PathBuf>,
    /// The conditioning image (PNG/JPEG/WebP), resized to the output size.
    pub control_image: Option<PathBuf>,
    pub control_scale: f64,
    pub control_start: f64,
    pub control_end: f64,
    pub control_preprocess: ControlPreprocess,
    /// Image-to-image: the picture to start from (PNG/JPEG/WebP), resized to the output size.
    pub init_image: Option<PathBuf>,
    /// Fraction of the schedule that repaints the init image, 0 < strength ≤ 1.
    pub strength: f64,
    /// Inpainting: white repaints, black keeps (with `init_image`).
    pub mask_image: Option<PathBuf>,
}

impl Default for GenerateCommand {
    fn default() -> Self {
        Self {
            prompts: vec![],
            negative_prompt: None,
            model: DEFAULT_HUB_MODEL.into(),
            unet: None,
            steps: 4,
            guidance: 0.0,
            width: 1024,
            height: 1024,
            seed: 0,
            num_images: 1,
            latents: None,
            prediction_type: None,
            device: "cpu".into(),
            out: PathBuf::from("out.png"),
            quality: 90,
            png_compression: PngCompression::default(),
            loras: Vec::new(),
            lora_dir: None,
            allow_unmatched_lora: false,
            controlnet: None,
            control_image: None,
            control_scale: 1.0,
            control_start: 0.0,
            control_end: 1.0,
            control_preprocess: ControlPreprocess::None,
            init_image: None,
            strength: f64::from(fleet_core::job::DEFAULT_STRENGTH),
            mask_image: None,
        }
    }
}

/// The bytes of `--init-image` and `--mask-image`.
struct InitBytes {
    image: Vec<u8>,
    mask: Option<Vec<u8>>,
}

/// What [`GenerateCommand::run`] did.
#[derive(Debug, Clone)]
pub struct GenerateReport {
    pub paths: Vec<PathBuf>,
    pub seeds: Vec<u64>,
    pub timings: Timings,
    pub load_seconds: f64,
    /// Encoding and writing the image files.
    pub save_seconds: f64,
}

impl GenerateCommand {
    /// The job these flags describe: what a worker would run for the same values.
    fn job_spec(&self) -> JobSpec {
        let mut spec = JobSpec::new(self.prompts.first().cloned().unwrap_or_default());
        spec.negative_prompt = self.negative_prompt.clone();
        spec.model = self.model.clone();
        spec.steps = self.steps as u32;
        spec.guidance = self.guidance as f32;
        spec.width = self.width as u32;
        spec.height = self.height as u32;
        spec.seed = Some(self.seed);
        spec.num_images = self.num_images as u32;
        spec
    }

    /// The engine request (without loading anything) from the init image and mask read by
    /// [`Self::init_bytes`]: the job's, through the same mapping as the worker's, plus what only
    /// this command has (several prompts, latents, a prediction type).
    fn request_with(&self, init_bytes: Option<&InitBytes>) -> Result<GenerateRequest> {
        let mut request = fleet_render::job_request(&self.job_spec());
        request.prompts = self.prompts.clone();
        // the flag is an f64 where a job's guidance is an f32: keep every bit the user gave
        request.guidance = self.guidance;
        request.prediction_type = self.prediction_type;
        request.latents = self.latents.as_deref().map(read_latents).transpose()?;
        if let Some(bytes) = init_bytes {
            let image = init_image_tensor(&bytes.image, self.width, self.height)?;
            let mut init = InitInput::new(image, self.strength);
            init.mask = bytes.mask.as_deref().map(|m| mask_tensor(m, self.width, self.height)).transpose()?;
            request.init = Some(init);
        }
        Ok(request)
    }

    /// The init image's and the mask's bytes (read once: decoded for the request, hashed for the
    /// images' metadata); `None` without `--init-image`. The strength is checked first, so a
    /// strength that keeps no step fails before anything is read or loaded.
    fn init_bytes(&self) -> Result<Option<InitBytes>> {
        let Some(path) = &self.init_image else {
            if self.mask_image.is_some() {
                return Err(EngineError::InvalidRequest("--mask-image needs --init-image FILE".into()));
            }
            return Ok(None);
        };
        check_strength(self.strength, self.steps)?;
        let read = |what: &str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    EngineError::MissingFile { component: what.into(), path: p.clone(), hint: String::new() }
                } else {
                    EngineError::Io { path: p.clone(), source: e }
                }
            })
        };
        let image = read("init image", path)?;
        let mask = self.mask_image.as_ref().map(|m| read("mask image", m)).transpose()?;
        Ok(Some(InitBytes { image, mask }))
    }

    /// The `--lora` flags as files with scales.
    pub fn lora_specs(&self) -> Result<Vec<LoraSpec>> {
        self.loras
            .iter()
            .map(|l| {
                let (name, scale) = LoraSpec::parse(l)?;
                Ok(LoraSpec { path: resolve_lora(&name, self.lora_dir.as_deref())?, scale })
            })
            .collect()
    }

    /// What the images record beyond the request, so that `--from-image` can make them again:
    /// LoRAs, ControlNet, UNet, latents, init image and mask files as given, the control, init and
    /// mask images' SHA-256s, the strength.
    fn provenance(&self, control_bytes: Option<&[u8]>, init_bytes: Option<&InitBytes>) -> Result<Provenance> {
        let loras = self
            .loras
            .iter()
            .map(|l| LoraSpec::parse(l).map(|(name, scale)| LoraUsed { name, scale }))
            .collect::<Result<_>>()?;
        let controlnet = match (&self.controlnet, &self.control_image, control_bytes) {
            (Some(dir), Some(image), Some(bytes)) => Some(ControlNetUsed {
                model: dir.display().to_string(),
                image: image.display().to_string(),
                image_sha256: Some(sha256_hex(bytes)),
                scale: self.control_scale,
                start: self.control_start,
                end: self.control_end,
                preprocess: self.control_preprocess,
            }),
            _ => None,
        };
        let shown = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let init = match (&self.init_image, init_bytes) {
            (Some(image), Some(bytes)) => Some(InitImageUsed {
                image: image.display().to_string(),
                image_sha256: Some(sha256_hex(&bytes.image)),
                strength: self.strength,
                mask: shown(&self.mask_image),
                mask_sha256: bytes.mask.as_deref().map(sha256_hex),
            }),
            _ => None,
        };
        Ok(Provenance { loras, controlnet, unet: shown(&self.unet), latents: shown(&self.latents), init })
    }

    /// Check the ControlNet flags and read the control image (before loading any model).
    fn control_bytes(&self) -> anyhow::Result<Option<Vec<u8>>> {
        match (&self.controlnet, &self.control_image) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(anyhow!("--controlnet needs --control-image FILE")),
            (None, Some(_)) => Err(anyhow!("--control-image needs --controlnet DIR")),
            (Some(_), Some(img)) => std::fs::read(img).map(Some).map_err(|e| {
                anyhow::Error::new(if e.kind() == std::io::ErrorKind::NotFound {
                    EngineError::MissingFile {
                        component: "control image".into(),
                        path: img.clone(),
                        hint: String::new(),
                    }
                } else {
                    EngineError::Io { path: img.clone(), source: e }
                })
            }),
        }
    }

    /// Load the model, generate, write the images (`out`, or `<stem>_<i>.<ext>` for several).
    pub fn run(&self, progress: &mut dyn FnMut(Progress)) -> anyhow::Result<GenerateReport> {
        if self.prompts.is_empty() {
            bail!("at least one --prompt is required");
        }
        fleet_engine::encode::format_of_path(&self.out)?; // fail before loading a model
        let init_bytes = self.init_bytes()?;
        let mut req = self.request_with(init_bytes.as_ref())?;
        let control_bytes = self.control_bytes()?;
        let provenance = self.provenance(control_bytes.as_deref(), init_bytes.as_ref())?;
        // Decode the control image before loading: a bad file fails fast.
        let control_image = control_bytes
            .map(|b| control_image_tensor(&b, self.width, self.height, self.control_preprocess))
            .transpose()?;
        let device = parse_device(&self.device)?;
        let dtype = default_dtype(&device);
        let source: ModelSource = self.model.parse()?;
        let opts = LoadOptions {
            unet_override: self.unet.clone(),
            prediction_type: self.prediction_type,
            prefer_fp16_variant: None,
            loras: self.lora_specs()?,
            allow_unmatched_lora: self.allow_unmatched_lora,
        };
        let t = std::time::Instant::now();
        let pipe = Pipeline::load_with(&source, &device, dtype, &opts).map_err(|e| match e {
            EngineError::Hub { .. } => anyhow::Error::new(e)
                .context("download the model and pass --model DIR (a diffusers-layout folder), or --model tiny"),
            e => e.into(),
        })?;
        if let (Some(dir), Some(image)) = (&self.controlnet, control_image) {
            let model = std::sync::Arc::new(ControlNetModel::load(dir, &device, dtype)?);
            model.check_fits(&pipe.unet.config)?;
            req.controls.push(ControlInput {
                model,
                image,
                scale: self.control_scale,
                start: self.control_start,
                end: self.control_end,
            });
        }
        let load_seconds = t.elapsed().as_secs_f64();
        let out = pipe.generate(&req, progress)?;
        let pt = req.prediction_type.unwrap_or(pipe.scheduler.prediction_type).to_string();
        let encoding = EncodeOptions { quality: self.quality, png: self.png_compression };
        let t = std::time::Instant::now();
        let paths = save_images(&self.out, &out.images, &req, &pipe.model_name, &pt, &provenance, &encoding)?;
        let save_seconds = t.elapsed().as_secs_f64();
        Ok(GenerateReport { paths, seeds: out.seeds, timings: out.timings, load_seconds, save_seconds })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine's test models and LoRA/ControlNet files.
    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fleet-engine/tests/fixtures")
    }

    fn extras() -> PathBuf {
        fixtures().join("extras")
    }

    #[test]
    fn generate_command_writes_files() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = GenerateCommand {
            prompts: vec!["a cat".into(), "a dog".into()],
            model: "tiny".into(),
            width: 64,
            height: 48,
            seed: 5,
            out: dir.path().join("pic.jpg"),
            ..Default::default()
        };
        let mut n = 0;
        let rep = cmd.run(&mut |_| n += 1).unwrap();
        assert_eq!(n, 4);
        assert_eq!(rep.seeds, vec![5, 6]);
        assert_eq!(rep.paths, vec![dir.path().join("pic_0.jpg"), dir.path().join("pic_1.jpg")]);
        for p in &rep.paths {
            assert_eq!(image::open(p).unwrap().to_rgb8().dimensions(), (64, 48));
        }
        let bad = GenerateCommand { out: dir.path().join("pic.gif"), ..cmd.clone() };
        let e = bad.run(&mut |_| {}).unwrap_err();
        assert!(matches!(e.downcast_ref::<EngineError>(), Some(EngineError::InvalidRequest(_))), "{e}");
        let bad_dev = GenerateCommand { device: "tpu".into(), ..cmd };
        let e = bad_dev.run(&mut |_| {}).unwrap_err();
        assert!(matches!(e.downcast_ref::<EngineError>(), Some(EngineError::Device(_))), "{e}");
    }

    #[test]
    fn generate_command_with_lora_controlnet_and_canny() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.png");
        let cmd = GenerateCommand {
            prompts: vec!["a photo of a cat".into()],
            model: fixtures().join("tiny-sdxl").display().to_string(),
            width: 64,
            height: 64,
            steps: 2,
            loras: vec![format!("{}:0.5", extras().join("lora_kohya.safetensors").display()), "style".into()],
            lora_dir: Some(extras()),
            controlnet: Some(extras().join("tiny-controlnet")),
            control_image: Some(extras().join("control_b.png")),
            control_scale: 0.8,
            control_preprocess: ControlPreprocess::Canny { low: 100.0, high: 200.0 },
            out: out.clone(),
            ..GenerateCommand::default()
        };
        // `style` is not in the library: a clear error before any model is loaded.
        let e = cmd.run(&mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("looked in the library"), "{e}");
        let cmd = GenerateCommand { loras: vec![cmd.loras[0].clone(), "lora_peft".into()], ..cmd };
        let report = cmd.run(&mut |_| {}).unwrap();
        assert_eq!(report.paths, vec![out.clone()]);
        assert!(image::open(&out).is_ok());
        // A control image that is not an image fails before loading.
        let txt = dir.path().join("c.png");
        std::fs::write(&txt, "hello").unwrap();
        let e = GenerateCommand { control_image: Some(txt), ..cmd.clone() }.run(&mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("control image is not a readable"), "{e}");
        let e = GenerateCommand { control_image: None, ..cmd }.run(&mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("--controlnet needs --control-image"), "{e}");
    }

    #[test]
    fn the_request_is_the_jobs_with_this_commands_extras() {
        let cmd = GenerateCommand {
            prompts: vec!["a cat".into(), "a dog".into()],
            negative_prompt: Some("blur".into()),
            model: "tiny".into(),
            steps: 2,
            guidance: 1.25,
            width: 64,
            height: 48,
            seed: 9,
            num_images: 3,
            prediction_type: Some(PredictionType::Sample),
            ..Default::default()
        };
        let request = cmd.request_with(None).unwrap();
        let job = fleet_render::job_request(&cmd.job_spec());
        assert_eq!(request.prompts, cmd.prompts);
        assert_eq!(request.prediction_type, Some(PredictionType::Sample));
        assert_eq!(
            (request.negative_prompt.as_deref(), request.steps, request.guidance, request.width, request.height),
            (job.negative_prompt.as_deref(), job.steps, job.guidance, job.width, job.height)
        );
        assert_eq!((request.seed, request.num_images), (job.seed, job.num_images));
        assert_eq!((request.seed, request.num_images, request.guidance), (9, 3, 1.25));
    }
}
