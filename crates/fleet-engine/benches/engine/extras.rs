//! LoRA and ControlNet benchmarks (printed numbers, not timed tests).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::Init;
use candle_nn::var_builder::SimpleBackend;
use fleet_engine::controlnet::{ControlNetConfig, ControlNetModel};
use fleet_engine::lora::{Component, LoraFile, LoraSet, LoraSpec};
use fleet_engine::unet::UNetConfig;
use fleet_engine::{ControlInput, GenerateRequest, LoadOptions, ModelSource, Pipeline};

/// Base weights of zeros without storage: the fuse cost alone (matmuls + adds), no loading.
struct Zeros;

impl SimpleBackend for Zeros {
    fn get(&self, s: Shape, _: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Linear/Conv weights of the SDXL UNet (from the layout fixture), without norms.
fn sdxl_modules() -> Vec<(String, Vec<usize>)> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sdxl_layout.json");
    let l: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).expect("layout")).expect("json");
    let keys: HashMap<String, Vec<usize>> = serde_json::from_value(l["unet"]["keys"].clone()).expect("keys");
    let mut m: Vec<_> = keys
        .into_iter()
        .filter(|(k, v)| k.ends_with(".weight") && matches!(v.len(), 2 | 4) && !k.contains("norm"))
        .map(|(k, v)| (k.trim_end_matches(".weight").to_string(), v))
        .collect();
    m.sort();
    m
}

fn write_kohya(path: &Path, modules: &[(String, Vec<usize>)], rank: usize) {
    let mut t = HashMap::new();
    for (name, shape) in modules {
        let key = format!("lora_unet_{}", name.replace('.', "_"));
        let inner: Vec<usize> = shape[1..].to_vec();
        let mut down_shape = vec![rank];
        down_shape.extend(&inner);
        let up_shape = if shape.len() == 4 { vec![shape[0], rank, 1, 1] } else { vec![shape[0], rank] };
        let rnd = |s: &[usize]| {
            Tensor::randn(0f32, 0.01, s, &Device::Cpu).and_then(|t| t.to_dtype(DType::F16)).expect("randn")
        };
        t.insert(format!("{key}.lora_down.weight"), rnd(&down_shape));
        t.insert(format!("{key}.lora_up.weight"), rnd(&up_shape));
        t.insert(format!("{key}.alpha"), Tensor::new(rank as f32, &Device::Cpu).expect("alpha"));
    }
    candle_core::safetensors::save(&t, path).expect("save");
}

pub fn lora_bench() {
    println!(
        "LoRA fuse on CPU ({} threads), SDXL-UNet-shaped kohya LoRAs over all {} Linear/Conv weights, f32",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        sdxl_modules().len()
    );
    let dir = tempfile::tempdir().expect("tmp");
    let modules = sdxl_modules();
    let ucfg = UNetConfig::sdxl_base();
    for rank in [8usize, 32, 64] {
        let path = dir.path().join(format!("r{rank}.safetensors"));
        write_kohya(&path, &modules, rank);
        let mb = std::fs::metadata(&path).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0);
        let t = Instant::now();
        let file = LoraFile::load(&path).expect("parse");
        let parse = t.elapsed().as_secs_f64();
        let set = LoraSet::new(&[(file, 1.0)], &ucfg).expect("set");
        let backend = set.backend(Component::Unet, Box::new(Zeros));
        let t = Instant::now();
        for (name, shape) in &modules {
            let w = backend
                .get(Shape::from(shape.clone()), &format!("{name}.weight"), Init::Const(0.0), DType::F32, &Device::Cpu)
                .expect("fuse");
            drop(w);
        }
        let fuse = t.elapsed().as_secs_f64();
        assert!(set.unmatched().is_empty());
        println!("rank {rank:>3}: {mb:>6.1} MB file: parse {parse:.2} s + fuse {fuse:.2} s = {:.2} s", parse + fuse);
        std::fs::remove_file(&path).ok();
    }
    // A worker's cache miss (load + fuse) vs hit (the fused pipeline is reused: no load at all),
    // on the random-medium model with a rank-16 LoRA over its attention projections.
    let medium: ModelSource = "random-medium".parse().expect("model");
    let t = Instant::now();
    let base = Pipeline::load(&medium, &Device::Cpu, DType::F32).expect("load");
    let plain = t.elapsed().as_secs_f64();
    let path = dir.path().join("medium.safetensors");
    let mut mods = Vec::new();
    collect_attention(&base, &mut mods);
    write_kohya(&path, &mods, 16);
    let opts = LoadOptions { loras: vec![LoraSpec { path: path.clone(), scale: 1.0 }], ..LoadOptions::default() };
    let t = Instant::now();
    let fused = Pipeline::load_with(&medium, &Device::Cpu, DType::F32, &opts).expect("load+fuse");
    let miss = t.elapsed().as_secs_f64();
    let req = GenerateRequest { width: 256, height: 256, steps: 4, ..GenerateRequest::new("a cat") };
    let t = Instant::now();
    fused.generate(&req, &mut |_| {}).expect("generate");
    let image_s = t.elapsed().as_secs_f64();
    println!(
        "random-medium, rank-16 LoRA on {} attention projections ({:.1} MB): load {plain:.2} s; cache miss = load + fuse {miss:.2} s; cache hit = 0 s (Arc clone); one 256² 4-step image {image_s:.2} s",
        mods.len(),
        std::fs::metadata(&path).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0)
    );
}

/// The attention projections of the random-medium UNet (names and shapes from its config).
fn collect_attention(p: &Pipeline, out: &mut Vec<(String, Vec<usize>)>) {
    let c = &p.unet.config;
    let n = c.block_out_channels.len();
    let tl = c.transformer_layers_per_block.expand(n, "tl").expect("tl");
    let layers = c.layers_per_block.expand(n, "layers").expect("layers");
    let ctx = p.unet.cross_attention_dim();
    for (b, &ch) in c.block_out_channels.iter().enumerate() {
        if !c.down_block_types[b].starts_with("CrossAttn") {
            continue;
        }
        for a in 0..layers[b] {
            for t in 0..tl[b] {
                let base = format!("down_blocks.{b}.attentions.{a}.transformer_blocks.{t}");
                for (m, i) in [("attn1.to_q", ch), ("attn1.to_k", ch), ("attn2.to_k", ctx), ("attn2.to_v", ctx)] {
                    out.push((format!("{base}.{m}"), vec![ch, i]));
                }
            }
        }
    }
}

pub fn controlnet_bench(models: &[(String, usize)], steps: usize, runs: usize) {
    println!("ControlNet overhead per denoising step (CPU, f32, guidance 0, {runs} runs)");
    for (m, size) in models {
        let src: ModelSource = m.parse().expect("model");
        let pipe = Pipeline::load(&src, &Device::Cpu, DType::F32).expect("load");
        let cfg = ControlNetConfig {
            unet: UNetConfig { up_block_types: vec![], ..pipe.unet.config.clone() },
            ..ControlNetConfig::sdxl()
        };
        let vb = fleet_engine::random::random_var_builder(99, DType::F32, &Device::Cpu);
        let cn = Arc::new(ControlNetModel::new(vb, &cfg, "random").expect("controlnet"));
        let image = Tensor::rand(0f32, 1.0, (1, 3, *size, *size), &Device::Cpu).expect("image");
        let req = GenerateRequest { width: *size, height: *size, steps, ..GenerateRequest::new("a cat") };
        let with = GenerateRequest { controls: vec![ControlInput::new(cn, image)], ..req.clone() };
        pipe.generate(&GenerateRequest { steps: 1, ..with.clone() }, &mut |_| {}).expect("warm-up");
        let per_step = |r: &GenerateRequest| {
            (0..runs).map(|_| pipe.generate(r, &mut |_| {}).expect("gen").timings.denoise.as_secs_f64()).sum::<f64>()
                / (runs * steps) as f64
        };
        let (a, b) = (per_step(&req), per_step(&with));
        println!(
            "{m:>14} {size}x{size}: denoise {a:.3} s/step without, {b:.3} s/step with one ControlNet (+{:.0} %)",
            (b / a - 1.0) * 100.0
        );
    }
}
