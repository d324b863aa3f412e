//! `fleet generate`: text → image on this machine, no fleet needed.

use std::process::ExitCode;

use fleet_engine::{GenerateCommand, PredictionType};

use crate::cli::{Cli, GenerateArgs};

pub fn run(_cli: &Cli, args: &GenerateArgs) -> anyhow::Result<ExitCode> {
    let g = &args.generation;
    if !g.loras.is_empty() {
        anyhow::bail!("--lora is not supported by the engine yet (LoRA support is tracked separately)");
    }
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
    };
    let bar = indicatif::ProgressBar::new(command.steps as u64);
    let report = command.run(&mut |p| bar.set_position(p.step as u64))?;
    bar.finish_and_clear();
    for path in &report.paths {
        println!("{}", path.display());
    }
    let t = report.timings;
    eprintln!(
        "{} image(s): load {:.2}s, text {:.2}s, denoise {:.2}s, decode {:.2}s",
        report.paths.len(),
        report.load_seconds,
        t.text_encode.as_secs_f64(),
        t.denoise.as_secs_f64(),
        t.vae_decode.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
