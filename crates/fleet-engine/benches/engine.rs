//! CPU benchmark: seconds per image, split into text encoding / denoising / VAE decode, and
//! peak resident memory, for the tiny model and a medium SDXL-shaped random model.
//!
//! ```text
//! cargo bench -p fleet-engine --bench engine                  # tiny + random-medium
//! cargo bench -p fleet-engine --bench engine -- --model DIR --size 1024 --steps 4 --runs 2
//! ```
//! Each model runs in its own child process so its peak RSS (VmHWM) is its own.
//! `--only tiny --save out.png` also writes the images.
//!
//! `-- --lora` benchmarks LoRA fusing (parse + fuse of SDXL-UNet-shaped kohya LoRAs of rank 8,
//! 32 and 64 — rank 64 over every Linear/Conv is the 394 MB shape of the SDXL-Lightning LoRAs —
//! and a pipeline load with vs without a LoRA, i.e. a worker's cache miss vs hit);
//! `-- --controlnet` the ControlNet overhead per denoising step.

use std::time::Duration;

use candle_core::{DType, Device};
use fleet_engine::{GenerateRequest, ModelSource, Pipeline};

struct Args {
    only: Option<String>,
    models: Vec<(String, usize)>,
    steps: usize,
    runs: usize,
    batch: usize,
    save: Option<String>,
    warmup: bool,
    mode: Mode,
}

#[derive(PartialEq)]
enum Mode {
    Images,
    Lora,
    ControlNet,
}

fn parse() -> Args {
    let mut a = Args {
        only: None,
        models: vec![("tiny".into(), 256), ("random-medium".into(), 512)],
        steps: 4,
        runs: 3,
        batch: 1,
        save: None,
        warmup: true,
        mode: Mode::Images,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut size: Option<usize> = None;
    let mut custom: Option<String> = None;
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--only" => a.only = Some(v),
            "--model" => custom = Some(v),
            "--size" => size = v.parse().ok(),
            "--steps" => a.steps = v.parse().unwrap_or(4),
            "--runs" => a.runs = v.parse().unwrap_or(3),
            "--batch" => a.batch = v.parse().unwrap_or(1),
            "--save" => a.save = Some(v),
            "--warmup" => a.warmup = v != "0",
            "--lora" => {
                a.mode = Mode::Lora;
                i += 1;
                continue;
            }
            "--controlnet" => {
                a.mode = Mode::ControlNet;
                i += 1;
                continue;
            }
            _ => {
                i += 1; // `cargo bench` passes `--bench`
                continue;
            }
        }
        i += 2;
    }
    if let Some(m) = custom {
        a.models = vec![(m, size.unwrap_or(1024))];
    } else if let Some(s) = size {
        for m in &mut a.models {
            m.1 = s;
        }
    }
    a
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<f64>().ok()))
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn run_one(model: &str, size: usize, a: &Args) {
    let src: ModelSource = model.parse().expect("model");
    let t = std::time::Instant::now();
    let pipe = Pipeline::load(&src, &Device::Cpu, DType::F32).expect("load");
    let load = t.elapsed();
    let req = GenerateRequest {
        prompts: vec!["a photograph of an astronaut riding a horse".into()],
        num_images: a.batch,
        width: size,
        height: size,
        steps: a.steps,
        ..GenerateRequest::default()
    };
    pipe.generate(&GenerateRequest { steps: 1, ..req.clone() }, &mut |_| {}).expect("warm-up");
    let (mut te, mut dn, mut vd) = (0.0, 0.0, 0.0);
    for _ in 0..a.runs {
        let out = pipe.generate(&req, &mut |_| {}).expect("generate");
        if let Some(path) = &a.save {
            let pt = pipe.scheduler.prediction_type.to_string();
            fleet_engine::save_images(path.as_ref(), &out.images, &req, &pipe.model_name, &pt, 90).expect("save");
        }
        te += secs(out.timings.text_encode);
        dn += secs(out.timings.denoise);
        vd += secs(out.timings.vae_decode);
    }
    let per = (a.runs * a.batch) as f64;
    println!(
        "{model:>14} {size:>5}x{size:<5} steps {} batch {}: {:.3} s/image = text {:.3} + denoise {:.3} + vae {:.3}; load {:.2} s; peak RSS {:.0} MiB",
        a.steps,
        a.batch,
        (te + dn + vd) / per,
        te / per,
        dn / per,
        vd / per,
        secs(load),
        peak_rss_mib()
    );
}

fn main() {
    let a = parse();
    match a.mode {
        Mode::Lora => return extras::lora_bench(),
        Mode::ControlNet => return extras::controlnet_bench(&a.models, a.steps, a.runs),
        Mode::Images => {}
    }
    if let Some(only) = &a.only {
        let size = a.models.iter().find(|m| &m.0 == only).map(|m| m.1).unwrap_or(1024);
        run_one(only, size, &a);
        return;
    }
    println!(
        "fleet-engine CPU benchmark ({} threads), f32, guidance 0, {} timed runs after a warm-up",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        a.runs
    );
    let exe = std::env::current_exe().expect("exe");
    for (m, size) in &a.models {
        let status = std::process::Command::new(&exe)
            .args(["--only", m, "--size", &size.to_string(), "--steps", &a.steps.to_string()])
            .args(["--runs", &a.runs.to_string(), "--batch", &a.batch.to_string()])
            .args(if a.models.len() == 1 && !matches!(m.as_str(), "tiny" | "random-medium") {
                vec!["--model", m.as_str()]
            } else {
                vec![]
            })
            .status()
            .expect("spawn");
        if !status.success() {
            eprintln!("{m}: failed ({status})");
        }
    }
}

#[path = "engine/extras.rs"]
mod extras;
