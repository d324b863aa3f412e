//! CPU benchmark: seconds per image, split into text encoding / denoising / VAE decode, and
//! peak resident memory, for the tiny model and a medium SDXL-shaped random model.
//!
//! ```text
//! cargo bench -p fleet-engine --bench engine                  # tiny + random-medium
//! cargo bench -p fleet-engine --bench engine -- --model DIR --size 1024 --steps 4 --runs 2
//! cargo bench -p fleet-engine --bench engine -- --size 256 --batch 1,2,4,8   # batching sweep
//! cargo bench -p fleet-engine --bench engine -- --only random-medium --size 256 --batch 4 --distinct
//!     # a batch of 4 distinct jobs (own prompt and seed each) in one forward pass, as a worker runs them
//! ```
//! Each model (and batch size) runs in its own child process so its peak RSS (VmHWM) is its own.
//! Every timed run has a prompt of its own, so the text encoder really runs (the pipeline caches
//! embeddings of repeated prompts); the line ends with the text time of a repeated prompt.
//! `--save out.png` also writes the images (each configuration overwrites the one before).
//!
//! `-- --lora` benchmarks LoRA fusing (parse + fuse of SDXL-UNet-shaped kohya LoRAs of rank 8,
//! 32 and 64 — rank 64 over every Linear/Conv is the 394 MB shape of the SDXL-Lightning LoRAs —
//! and a pipeline load with vs without a LoRA, i.e. a worker's cache miss vs hit);
//! `-- --controlnet` the ControlNet overhead per denoising step; `-- --kernels` the engine's CPU
//! convolution and GroupNorm against candle's and a plain matmul at the VAE's shapes;
//! `-- --encode [--size N] [--save-raw DIR] [--image FILE …]` what encoding a result image costs
//! per format and PNG compression level (1024² by default).
//!
//! `-- --device cuda` runs the image benchmark on a GPU (a build with `--features cuda`), in the
//! device's default dtype (f16); each stage's time ends with a device synchronise, and the peak
//! RSS is then host memory only (read the GPU's from `nvidia-smi`).

use std::time::Duration;

use candle_core::DType;
use fleet_engine::{GenerateRequest, ModelSource, Pipeline, default_dtype, parse_device};

struct Args {
    only: Option<String>,
    models: Vec<(String, usize)>,
    steps: usize,
    runs: usize,
    batches: Vec<usize>,
    /// `--distinct`: a batch is that many distinct jobs (own prompt and seed) sharing one pass,
    /// not one job with that many images.
    distinct: bool,
    save: Option<String>,
    warmup: bool,
    device: String,
    mode: Mode,
    /// Side of the `--encode` test images.
    encode_size: usize,
    /// `--save-raw DIR`: `--encode` also writes its test images' pixels there.
    save_raw: Option<String>,
    /// `--image FILE` (repeatable): `--encode` times these instead of its test images.
    images: Vec<String>,
    /// Under `cargo test`: a quick check that the benchmark still runs.
    smoke: bool,
}

#[derive(PartialEq)]
enum Mode {
    Images,
    Lora,
    ControlNet,
    Kernels,
    Encode,
}

fn parse() -> Args {
    let mut a = Args {
        only: None,
        models: vec![("tiny".into(), 256), ("random-medium".into(), 512)],
        steps: 4,
        runs: 3,
        batches: vec![1],
        distinct: false,
        save: None,
        warmup: true,
        device: "cpu".into(),
        mode: Mode::Images,
        encode_size: 1024,
        save_raw: None,
        images: Vec::new(),
        smoke: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; without it (under `cargo test`) this is a quick check that
    // the benchmark still runs: the tiny model, 64×64, 1 step, batches of 1 and 2.
    if !argv.iter().any(|x| x == "--bench") {
        a.models = vec![("tiny".into(), 64)];
        (a.steps, a.runs, a.batches) = (1, 1, vec![1, 2]);
        (a.encode_size, a.smoke) = (64, true);
        return a;
    }
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
            "--batch" => {
                a.batches = v.split(',').filter_map(|b| b.parse().ok()).filter(|&b| b > 0).collect();
                if a.batches.is_empty() {
                    a.batches = vec![1];
                }
            }
            "--save" => a.save = Some(v),
            "--save-raw" => a.save_raw = Some(v),
            "--image" => a.images.push(v),
            "--warmup" => a.warmup = v != "0",
            "--device" => a.device = v,
            "--distinct" => {
                a.distinct = true;
                i += 1;
                continue;
            }
            "--lora" => {
                a.mode = Mode::Lora;
                i += 1;
                continue;
            }
            "--kernels" => {
                a.mode = Mode::Kernels;
                i += 1;
                continue;
            }
            "--encode" => {
                a.mode = Mode::Encode;
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
    a.encode_size = size.unwrap_or(1024);
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

const PROMPT: &str = "a photograph of an astronaut riding a horse";

fn run_one(model: &str, size: usize, batch: usize, a: &Args) {
    let src: ModelSource = model.parse().expect("model");
    let device = parse_device(&a.device).expect("device");
    let t = std::time::Instant::now();
    let pipe = Pipeline::load(&src, &device, default_dtype(&device)).expect("load");
    let load = t.elapsed();
    let req = |prompt: String| GenerateRequest {
        prompts: vec![prompt],
        num_images: batch,
        width: size,
        height: size,
        steps: a.steps,
        ..GenerateRequest::default()
    };
    pipe.generate(&GenerateRequest { steps: 1, ..req("warm-up".into()) }, &mut |_| {}).expect("warm-up");
    let (mut te, mut dn, mut vd) = (0.0, 0.0, 0.0);
    for run in 0..a.runs {
        if a.distinct {
            let reqs: Vec<GenerateRequest> = (0..batch)
                .map(|j| GenerateRequest {
                    num_images: 1,
                    seed: j as u64,
                    ..req(format!("{PROMPT}, take {run}, job {j}"))
                })
                .collect();
            let outs =
                pipe.generate_batch_until(&reqs, &mut |_| std::ops::ControlFlow::Continue(())).expect("generate batch");
            let timings = outs[0].timings;
            te += secs(timings.text_encode);
            dn += secs(timings.denoise);
            vd += secs(timings.vae_decode);
            continue;
        }
        let req = req(format!("{PROMPT}, take {run}"));
        let out = pipe.generate(&req, &mut |_| {}).expect("generate");
        if let Some(path) = &a.save {
            let pt = pipe.scheduler.prediction_type.to_string();
            fleet_engine::save_images(
                path.as_ref(),
                &out.images,
                &req,
                &pipe.model_name,
                &pt,
                &Default::default(),
                &Default::default(),
            )
            .expect("save");
        }
        te += secs(out.timings.text_encode);
        dn += secs(out.timings.denoise);
        vd += secs(out.timings.vae_decode);
    }
    // The same prompt again: the embedding comes from the pipeline's prompt cache.
    let t = std::time::Instant::now();
    pipe.encode_prompts(&[format!("{PROMPT}, take 0")]).expect("encode");
    let cached = t.elapsed();
    let per = (a.runs * batch) as f64;
    println!(
        "{model:>14} {size:>5}x{size:<5} steps {} {} {batch}: {:.3} s/image = text {:.3} + denoise {:.3} + vae {:.3}; load {:.2} s; peak RSS {:.0} MiB; {:.2} images/s; repeated prompt: text {:.6} s",
        a.steps,
        if a.distinct { "jobs" } else { "batch" },
        (te + dn + vd) / per,
        te / per,
        dn / per,
        vd / per,
        secs(load),
        peak_rss_mib(),
        per / (te + dn + vd),
        secs(cached),
    );
}

#[allow(unsafe_code)]
fn main() {
    let a = parse();
    // The image benchmark's parent only starts children, which inherit its environment: each
    // child settles its own counts.
    if a.mode != Mode::Images || a.only.is_some() {
        // SAFETY: nothing has started a thread yet.
        unsafe { fleet_engine::cpu_threads::settle_cpu_threads() };
    }
    if a.smoke && a.only.is_none() {
        encode::encode_bench(a.encode_size, None, &[]);
    }
    match a.mode {
        Mode::Lora => return extras::lora_bench(),
        Mode::ControlNet => return extras::controlnet_bench(&a.models, a.steps, a.runs),
        Mode::Kernels => return kernels::kernels_bench(),
        Mode::Encode => return encode::encode_bench(a.encode_size, a.save_raw.as_deref(), &a.images),
        Mode::Images => {}
    }
    if let Some(only) = &a.only {
        let size = a.models.iter().find(|m| &m.0 == only).map(|m| m.1).unwrap_or(1024);
        run_one(only, size, a.batches[0], &a);
        return;
    }
    // `default_dtype`'s rule, from the name: the parent must not open the GPU (a CUDA context in
    // this process would count in every child's device-memory reading).
    let dtype = if a.device == "cpu" { DType::F32 } else { DType::F16 };
    println!(
        "fleet-engine {} benchmark ({} CPU threads), {dtype:?}, guidance 0, {} timed runs after a warm-up",
        if a.device == "cpu" { "CPU".to_owned() } else { a.device.clone() },
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        a.runs
    );
    let exe = std::env::current_exe().expect("exe");
    let mut failed = false;
    for ((m, size), batch) in a.models.iter().flat_map(|m| a.batches.iter().map(move |b| (m, b))) {
        let status = std::process::Command::new(&exe)
            .args(["--bench", "--only", m, "--size", &size.to_string(), "--steps", &a.steps.to_string()])
            .args(["--runs", &a.runs.to_string(), "--batch", &batch.to_string(), "--device", &a.device])
            .args(a.distinct.then_some("--distinct"))
            .args(if a.models.len() == 1 && !matches!(m.as_str(), "tiny" | "random-medium") {
                vec!["--model", m.as_str()]
            } else {
                vec![]
            })
            .args(a.save.as_deref().map(|path| ["--save", path]).into_iter().flatten())
            .status()
            .expect("spawn");
        if !status.success() {
            eprintln!("{m}: failed ({status})");
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
}

#[path = "engine/extras.rs"]
mod extras;

#[path = "engine/kernels.rs"]
mod kernels;

#[path = "engine/encode.rs"]
mod encode;
