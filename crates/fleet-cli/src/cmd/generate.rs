//! `fleet generate`: text → image on this machine, no fleet needed.

use std::process::ExitCode;

use fleet_engine::{ControlPreprocess, GenerateCommand, PredictionType};

use crate::cli::{Cli, GenerateArgs};

pub fn run(cli: &Cli, args: &GenerateArgs) -> anyhow::Result<ExitCode> {
    let g = &args.generation;
    // LoRA names (not files) resolve in the configured library; the configuration is only read
    // when a LoRA needs it, so `fleet generate` works without one.
    let lora_dir = if g.loras.is_empty() { None } else { Some(cli.load_config()?.library.lora_dir) };
    let control_preprocess: ControlPreprocess = args.control_preprocess.parse()?;
    let prediction_type = match args.prediction_type.as_deref() {
        None => None,
        Some("epsilon") => Some(PredictionType::Epsilon),
        Some("sample") => Some(PredictionType::Sample),
        Some(other) => anyhow::bail!("--prediction-type {other}: expected epsilon or sample"),
    };
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
    };
    let bar = indicatif::ProgressBar::new(command.steps as u64);
    let report = command.run(&mut |p| bar.set_position(p.step as u64))?;
    bar.finish_and_clear();
    for path in &report.paths {
        println!("{}", path.display());
    }
    let t = report.timings;
    eprintln!(
        "{} image(s): load {:.2}s, text {:.2}s, denoise {:.2}s, decode {:.2}s, save {:.2}s",
        report.paths.len(),
        report.load_seconds,
        t.text_encode.as_secs_f64(),
        t.denoise.as_secs_f64(),
        t.vae_decode.as_secs_f64(),
        report.save_seconds
    );
    Ok(ExitCode::SUCCESS)
}
