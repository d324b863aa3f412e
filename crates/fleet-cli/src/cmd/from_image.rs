//! `fleet generate --from-image FILE --out OUT`: an image made again from the parameters embedded
//! in it (`fleet_request`, written by `fleet generate` and by workers): the same prompt, seed,
//! size, steps, guidance, LoRAs, ControlNet and init image (with its strength and mask), so the
//! same model and files give the same pixels.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use fleet_core::request_record::{INLINE_IMAGE, sha256_hex};
use fleet_engine::{GenerationParams, InitImageUsed, PredictionType, read_generation_params};

use super::generate::GenerateCommand;
use crate::cli::{Cli, GenerateArgs};

/// The command that makes the image in `file` again, written where `args` says.
pub fn command(cli: &Cli, args: &GenerateArgs, file: &Path) -> anyhow::Result<GenerateCommand> {
    let shown = file.display();
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {shown}"))?;
    let params = read_generation_params(&bytes).with_context(|| shown.to_string())?.ok_or_else(|| {
        anyhow!(
            "{shown} has no fleet metadata (no `fleet_request` PNG text chunk, JPEG comment or WebP XMP \
             element): only images written by `fleet generate` or a fleet worker can be made again"
        )
    })?;
    if let Some(latents) = &params.provenance.latents {
        bail!(
            "{shown} was made from the initial noise in {latents}, not from its seed: --from-image does \
             not replay a latents file (run fleet generate --latents {latents} with the same flags)"
        );
    }
    let config = cli.load_config()?;
    // A worker records the model's configured name; `fleet generate` records what --model named.
    let configured = if args.generation.model.is_none() { config.models.get(&params.model) } else { None };
    let model = match (&args.generation.model, configured) {
        (Some(model), _) => model.clone(),
        (None, Some(m)) => m.source.clone(),
        (None, None) => params.model.clone(),
    };
    let unet = params.provenance.unet.clone().or_else(|| configured.and_then(|m| m.unet.clone()));
    let configured_prediction = configured.and_then(|m| m.prediction_type.as_deref());
    let prediction_type = match (params.request.prediction_type, configured_prediction) {
        (Some(p), _) => Some(p),
        (None, Some(p)) => Some(p.parse::<PredictionType>().map_err(|e| anyhow!("model `{}`: {e}", params.model))?),
        (None, None) => None,
    };
    let (controlnet, control_image) = control(args, &params, file, &config.library.controlnet_dir)?;
    let (init_image, strength, mask_image) = init(args, params.provenance.init.as_ref(), file)?;
    let loras: Vec<String> = params.provenance.loras.iter().map(|l| format!("{}:{}", l.name, l.scale)).collect();
    let lora_dir = (!loras.is_empty()).then(|| config.library.lora_dir.clone());
    let cn = params.provenance.controlnet.as_ref();
    let defaults = GenerateCommand::default();
    Ok(GenerateCommand {
        prompts: vec![params.prompt.clone()],
        negative_prompt: params.negative_prompt.clone(),
        model,
        unet: unet.map(PathBuf::from),
        steps: params.steps,
        guidance: params.guidance,
        width: params.width,
        height: params.height,
        seed: params.seed,
        num_images: 1,
        latents: None,
        prediction_type,
        device: args.device.clone(),
        out: args.out.clone(),
        quality: args.quality,
        png_compression: args.png_compression,
        loras,
        lora_dir,
        allow_unmatched_lora: false,
        controlnet,
        control_image,
        control_scale: cn.map_or(defaults.control_scale, |c| c.scale),
        control_start: cn.map_or(defaults.control_start, |c| c.start),
        control_end: cn.map_or(defaults.control_end, |c| c.end),
        control_preprocess: cn.map_or(defaults.control_preprocess, |c| c.preprocess),
        init_image,
        strength: strength.unwrap_or(defaults.strength),
        mask_image,
    })
}

/// The ControlNet folder and control image of a recorded ControlNet: the flags' when given, else
/// the recorded folder (or library name) and file. A control image must have the recorded SHA-256.
fn control(
    args: &GenerateArgs,
    params: &GenerationParams,
    file: &Path,
    library: &Path,
) -> anyhow::Result<(Option<PathBuf>, Option<PathBuf>)> {
    let shown = file.display();
    let Some(cn) = &params.provenance.controlnet else {
        if args.controlnet.is_some() || args.control_image.is_some() {
            bail!("{shown} was made without a ControlNet: drop --controlnet and --control-image");
        }
        return Ok((None, None));
    };
    let dir = args.controlnet.clone().unwrap_or_else(|| {
        let recorded = PathBuf::from(&cn.model);
        if recorded.is_dir() { recorded } else { library.join(&cn.model) }
    });
    let image = input_file(
        InputFile {
            what: "control image",
            flag: "--control-image",
            recorded: &cn.image,
            sha256: cn.image_sha256.as_deref(),
        },
        args.control_image.as_deref(),
        file,
    )?;
    Ok((Some(dir), Some(image)))
}

/// The init image, strength and mask of a recorded image-to-image or inpainting image: the
/// flags' files when given, else the recorded ones, each with its recorded SHA-256.
fn init(
    args: &GenerateArgs,
    init: Option<&InitImageUsed>,
    file: &Path,
) -> anyhow::Result<(Option<PathBuf>, Option<f64>, Option<PathBuf>)> {
    let shown = file.display();
    let Some(init) = init else {
        if args.init_image.is_some() || args.mask_image.is_some() {
            bail!("{shown} was made without an init image: drop --init-image and --mask-image");
        }
        return Ok((None, None, None));
    };
    let image = input_file(
        InputFile {
            what: "init image",
            flag: "--init-image",
            recorded: &init.image,
            sha256: init.image_sha256.as_deref(),
        },
        args.init_image.as_deref(),
        file,
    )?;
    let mask = match &init.mask {
        Some(mask) => Some(input_file(
            InputFile { what: "mask image", flag: "--mask-image", recorded: mask, sha256: init.mask_sha256.as_deref() },
            args.mask_image.as_deref(),
            file,
        )?),
        None if args.mask_image.is_some() => bail!("{shown} was made without a mask: drop --mask-image"),
        None => None,
    };
    Ok((Some(image), Some(init.strength), mask))
}

/// An input image as the metadata records it.
struct InputFile<'a> {
    /// What it is, in messages.
    what: &'a str,
    /// The flag that points at it.
    flag: &'a str,
    /// A file as given, an `s3://` URI or `inline`.
    recorded: &'a str,
    sha256: Option<&'a str>,
}

/// The file of a recorded input image: `given` (its flag), else the recorded file; a job's image
/// (`s3://` or inline) must be given. The file must have the recorded SHA-256.
fn input_file(input: InputFile<'_>, given: Option<&Path>, file: &Path) -> anyhow::Result<PathBuf> {
    let shown = file.display();
    let InputFile { what, flag, recorded, sha256 } = input;
    let image = match given {
        Some(image) => image.to_owned(),
        None if recorded.starts_with("s3://") || recorded == INLINE_IMAGE => {
            bail!("{shown} was made with the {what} {recorded} (a job's): pass that image with {flag} FILE")
        }
        None => PathBuf::from(recorded),
    };
    if let Some(expected) = sha256 {
        let bytes = std::fs::read(&image).with_context(|| {
            format!("cannot read the {what} {} ({shown} was made with it; {flag} FILE)", image.display())
        })?;
        let found = sha256_hex(&bytes);
        if found != expected {
            bail!(
                "the {what} {} has SHA-256 {found}, but {shown} was made with one whose SHA-256 is {expected}",
                image.display()
            );
        }
    }
    Ok(image)
}
