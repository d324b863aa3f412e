//! Integration tests of fleet-engine: the tiny built-in model, bad input, and (module
//! `parity`, `extras`, `img2img`) agreement with diffusers on committed fixtures.

#[path = "engine/batch.rs"]
mod batch;
#[path = "engine/extras.rs"]
mod extras;
#[path = "engine/hostile.rs"]
mod hostile;
#[path = "engine/img2img.rs"]
mod img2img;
#[path = "engine/layout.rs"]
mod layout;
#[path = "engine/parity.rs"]
mod parity;

use candle_core::{DType, Device, Tensor};
use fleet_engine::{EngineError, GenerateRequest, LoadOptions, ModelSource, Pipeline, PredictionType};
use std::sync::OnceLock;

fn tiny() -> &'static Pipeline {
    static P: OnceLock<Pipeline> = OnceLock::new();
    P.get_or_init(|| Pipeline::load(&ModelSource::Tiny, &Device::Cpu, DType::F32).expect("tiny model loads"))
}

fn req(prompt: &str) -> GenerateRequest {
    GenerateRequest { width: 64, height: 64, steps: 2, seed: 11, ..GenerateRequest::new(prompt) }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn tiny_generates_deterministic_images() {
    let p = tiny();
    let mut steps = Vec::new();
    let out = p.generate(&req("a red cat"), &mut |pr| steps.push((pr.step, pr.total, pr.timestep))).unwrap();
    assert_eq!(out.images.len(), 1);
    assert_eq!(out.images[0].dimensions(), (64, 64));
    assert_eq!(out.seeds, vec![11]);
    assert_eq!(steps, vec![(1, 2, 999.0), (2, 2, 499.0)]);
    let again = p.generate(&req("a red cat"), &mut |_| {}).unwrap();
    assert_eq!(out.images[0], again.images[0], "same seed, same image");
    let other = p.generate(&GenerateRequest { seed: 12, ..req("a red cat") }, &mut |_| {}).unwrap();
    assert_ne!(out.images[0], other.images[0], "another seed, another image");
    let other_prompt = p.generate(&req("a blue dog"), &mut |_| {}).unwrap();
    assert_ne!(out.images[0], other_prompt.images[0], "the prompt matters");
    // Not a constant picture.
    let px = out.images[0].as_raw();
    assert!(px.iter().any(|&v| v != px[0]));
}

#[test]
fn repeated_prompts_are_encoded_once_and_give_the_same_pixels() {
    // A pipeline of its own: the shared one's cache counts depend on the other tests.
    let p = Pipeline::load(&ModelSource::Tiny, &Device::Cpu, DType::F32).unwrap();
    let cold = p.generate_tensor(&req("a lighthouse"), &mut |_| {}).unwrap();
    assert_eq!(p.prompt_cache.counts(), (0, 1));
    let warm = p.generate_tensor(&GenerateRequest { seed: 11, ..req("a lighthouse") }, &mut |_| {}).unwrap();
    assert_eq!(p.prompt_cache.counts(), (1, 1), "the second run is a cache hit");
    assert_eq!(max_abs_diff(&cold.images, &warm.images), 0.0, "a hit gives exactly the same image");
    // In a batch, a prompt's embedding is its batch-1 embedding (cached or not), and two prompts
    // stay distinct.
    let two = p.encode_prompts(&["a lighthouse".into(), "a harbour".into()]).unwrap();
    let one = p.encode_prompts(&["a harbour".into()]).unwrap();
    assert_eq!(p.prompt_cache.counts(), (3, 2), "lighthouse and the second harbour were hits");
    assert_eq!(max_abs_diff(&two.embeds.narrow(0, 1, 1).unwrap(), &one.embeds), 0.0);
    assert_eq!(max_abs_diff(&two.pooled.narrow(0, 1, 1).unwrap(), &one.pooled), 0.0);
    assert!(max_abs_diff(&two.embeds.narrow(0, 0, 1).unwrap(), &one.embeds) > 0.0);
}

#[test]
fn batches_equal_single_runs_with_seed_plus_i() {
    let p = tiny();
    let batch = GenerateRequest { prompts: vec!["a red cat".into(), "a blue dog".into()], num_images: 2, ..req("") };
    let out = p.generate_tensor(&batch, &mut |_| {}).unwrap();
    assert_eq!(out.images.dims(), &[4, 3, 64, 64]);
    assert_eq!(out.seeds, vec![11, 12, 13, 14]);
    // image 3 = prompt 1 ("a blue dog"), seed 14
    let single = p.generate_tensor(&GenerateRequest { seed: 14, ..req("a blue dog") }, &mut |_| {}).unwrap();
    let d = max_abs_diff(&out.images.narrow(0, 3, 1).unwrap(), &single.images);
    assert!(d < 1e-4, "batched vs single differ by {d}");
    let single0 = p.generate_tensor(&req("a red cat"), &mut |_| {}).unwrap();
    let d0 = max_abs_diff(&out.images.narrow(0, 0, 1).unwrap(), &single0.images);
    assert!(d0 < 1e-4, "batched vs single differ by {d0}");
}

#[test]
fn guidance_and_negative_prompt_change_the_result() {
    let p = tiny();
    let plain = p.generate_tensor(&req("a red cat"), &mut |_| {}).unwrap();
    let cfg = p.generate_tensor(&GenerateRequest { guidance: 5.0, ..req("a red cat") }, &mut |_| {}).unwrap();
    let cfg_neg = p
        .generate_tensor(
            &GenerateRequest { guidance: 5.0, negative_prompt: Some("blurry".into()), ..req("a red cat") },
            &mut |_| {},
        )
        .unwrap();
    assert!(max_abs_diff(&plain.images, &cfg.images) > 1e-3);
    assert!(max_abs_diff(&cfg.images, &cfg_neg.images) > 1e-3);
    // guidance 1 is not CFG: identical to guidance 0
    let g1 = p.generate_tensor(&GenerateRequest { guidance: 1.0, ..req("a red cat") }, &mut |_| {}).unwrap();
    assert_eq!(max_abs_diff(&plain.images, &g1.images), 0.0);
    // empty negative prompt = zero embeddings = same as None
    let empty = p
        .generate_tensor(
            &GenerateRequest { guidance: 5.0, negative_prompt: Some(String::new()), ..req("a red cat") },
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(max_abs_diff(&cfg.images, &empty.images), 0.0);
}

#[test]
fn user_latents_non_square_and_sample_prediction() {
    let p = tiny();
    let noise = Tensor::randn(0f32, 1f32, (1, 4, 5, 9), &Device::Cpu).unwrap();
    let r = GenerateRequest {
        width: 72,
        height: 40,
        steps: 1,
        prediction_type: Some(PredictionType::Sample),
        latents: Some(noise.clone()),
        ..req("wide")
    };
    let out = p.generate_tensor(&r, &mut |_| {}).unwrap();
    assert_eq!(out.images.dims(), &[1, 3, 40, 72]);
    let again = p.generate_tensor(&r, &mut |_| {}).unwrap();
    assert_eq!(max_abs_diff(&out.images, &again.images), 0.0);
    let eps = p
        .generate_tensor(&GenerateRequest { prediction_type: Some(PredictionType::Epsilon), ..r.clone() }, &mut |_| {})
        .unwrap();
    assert!(max_abs_diff(&out.latents, &eps.latents) > 1e-3);
}

#[test]
fn non_finite_values_are_an_error_not_an_image() {
    let p = tiny();
    // One NaN in the user's noise spreads through the UNet's convolutions and attention.
    let mut values = vec![0.5f32; 4 * 8 * 8];
    values[17] = f32::NAN;
    let noise = Tensor::from_vec(values, (1, 4, 8, 8), &Device::Cpu).unwrap();
    let r = GenerateRequest { latents: Some(noise), ..req("nan") };
    match p.generate(&r, &mut |_| {}) {
        Err(EngineError::NonFinite { stage, count, .. }) => {
            assert_eq!(stage, "denoising (UNet)");
            assert!(count > 0);
        }
        Err(other) => panic!("expected NonFinite, got {other}"),
        Ok(_) => panic!("a NaN latent produced an image"),
    }
    // Infinity is caught the same way, and a finite request still works afterwards.
    let inf = Tensor::full(f32::INFINITY, (1, 4, 8, 8), &Device::Cpu).unwrap();
    let err = p.generate(&GenerateRequest { latents: Some(inf), ..req("inf") }, &mut |_| {}).err();
    assert!(matches!(err, Some(EngineError::NonFinite { .. })), "{err:?}");
    assert!(p.generate(&req("fine"), &mut |_| {}).is_ok());
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let p = tiny();
    let cases = [
        GenerateRequest { width: 60, ..req("x") },
        GenerateRequest { height: 0, ..req("x") },
        GenerateRequest { steps: 0, ..req("x") },
        GenerateRequest { num_images: 0, ..req("x") },
        GenerateRequest { prompts: vec![], ..req("x") },
        GenerateRequest { guidance: f64::NAN, ..req("x") },
    ];
    for c in cases {
        match p.generate(&c, &mut |_| {}) {
            Err(EngineError::InvalidRequest(_)) => {}
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }
    let wrong =
        GenerateRequest { latents: Some(Tensor::zeros((1, 4, 7, 8), DType::F32, &Device::Cpu).unwrap()), ..req("x") };
    match p.generate(&wrong, &mut |_| {}) {
        Err(EngineError::Shape { name, .. }) => assert_eq!(name, "latents"),
        other => panic!("expected Shape, got {other:?}"),
    }
}

#[test]
fn missing_model_folder_and_components_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = ModelSource::Dir(dir.path().join("nope"));
    match Pipeline::load(&src, &Device::Cpu, DType::F32) {
        Err(EngineError::MissingFile { component, .. }) => assert_eq!(component, "model folder"),
        other => panic!("{other:?}"),
    }
    std::fs::write(dir.path().join("model_index.json"), "{}").unwrap();
    std::fs::create_dir_all(dir.path().join("unet")).unwrap();
    std::fs::write(dir.path().join("unet/config.json"), "{}").unwrap();
    match Pipeline::load(&ModelSource::Dir(dir.path().to_path_buf()), &Device::Cpu, DType::F32) {
        Err(e @ EngineError::MissingFile { .. }) => assert!(e.to_string().contains("unet"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(Pipeline::load(&ModelSource::Tiny, &Device::Cpu, DType::BF16), Err(EngineError::Device(_))));
}

/// Lay out `files` (repo path → source file) as the Hugging Face cache does for `repo`.
fn fake_hub_repo(home: &std::path::Path, repo: &str, files: &[(&str, std::path::PathBuf)]) {
    let dir = home.join("hub").join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(dir.join("refs")).unwrap();
    std::fs::write(dir.join("refs/main"), "0123456789abcdef").unwrap();
    for (name, src) in files {
        let dst = dir.join("snapshots/0123456789abcdef").join(name);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(src, dst).unwrap();
    }
}

#[test]
fn hub_ids_resolve_through_the_cache_and_offline_gives_one_clear_error() {
    let home = tempfile::tempdir().unwrap();
    unsafe_env(home.path());
    let lightning: ModelSource = "ByteDance/SDXL-Lightning".parse().unwrap();
    let err = Pipeline::load_with(&lightning, &Device::Cpu, DType::F32, &LoadOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, EngineError::Hub { .. }), "{msg}");
    assert!(msg.contains("sdxl_lightning_4step_unet.safetensors"), "{msg}");
    assert!(msg.contains("stabilityai/stable-diffusion-xl-base-1.0/text_encoder_2/model.safetensors"), "{msg}");
    assert!(msg.contains("madebyollin/sdxl-vae-fp16-fix/diffusion_pytorch_model.safetensors"), "{msg}");
    assert!(msg.contains("ModelSource::Dir"), "{msg}");

    // Fill a Hugging Face cache with the fixture model under the real repository names: the
    // default recipe (SDXL base + Lightning UNet file + fp16-fix VAE) then loads offline.
    let m = fixture_model();
    let mut base = vec![
        ("model_index.json", m.join("model_index.json")),
        ("scheduler/scheduler_config.json", m.join("scheduler/scheduler_config.json")),
        ("unet/config.json", m.join("unet/config.json")),
    ];
    for c in ["text_encoder", "text_encoder_2"] {
        base.push((
            if c == "text_encoder" { "text_encoder/config.json" } else { "text_encoder_2/config.json" },
            m.join(c).join("config.json"),
        ));
        base.push((
            if c == "text_encoder" { "text_encoder/model.safetensors" } else { "text_encoder_2/model.safetensors" },
            m.join(c).join("model.safetensors"),
        ));
    }
    for (t, names) in [
        ("tokenizer", ["tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json"]),
        ("tokenizer_2", ["tokenizer_2/vocab.json", "tokenizer_2/merges.txt", "tokenizer_2/tokenizer_config.json"]),
    ] {
        for n in names {
            base.push((n, m.join(t).join(n.rsplit('/').next().unwrap())));
        }
    }
    fake_hub_repo(home.path(), "stabilityai/stable-diffusion-xl-base-1.0", &base);
    fake_hub_repo(
        home.path(),
        "ByteDance/SDXL-Lightning",
        &[
            ("sdxl_lightning_4step_unet.safetensors", m.join("unet/diffusion_pytorch_model.safetensors")),
            ("sdxl_lightning_1step_unet_x0.safetensors", m.join("unet/diffusion_pytorch_model.safetensors")),
        ],
    );
    fake_hub_repo(
        home.path(),
        "madebyollin/sdxl-vae-fp16-fix",
        &[
            ("config.json", m.join("vae/config.json")),
            ("diffusion_pytorch_model.safetensors", m.join("vae/diffusion_pytorch_model.safetensors")),
        ],
    );
    let p = Pipeline::load(&lightning, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(p.model_name, "ByteDance/SDXL-Lightning");
    assert_eq!(p.scheduler.prediction_type, PredictionType::Epsilon);
    assert_eq!(p.tokenizer_2.pad_id, 0);
    let out = p
        .generate(&GenerateRequest { width: 64, height: 64, steps: 4, ..GenerateRequest::new("a cat") }, &mut |_| {})
        .unwrap();
    assert_eq!(out.images[0].dimensions(), (64, 64));
    // `--unet` with a bare file name picks that Lightning file; `_x0` means sample prediction.
    let opts =
        LoadOptions { unet_override: Some("sdxl_lightning_1step_unet_x0.safetensors".into()), ..Default::default() };
    let p1 = Pipeline::load_with(&lightning, &Device::Cpu, DType::F32, &opts).unwrap();
    assert_eq!(p1.scheduler.prediction_type, PredictionType::Sample);
    // A plain diffusers-layout repository id.
    let all: Vec<(&str, std::path::PathBuf)> = base
        .iter()
        .cloned()
        .chain([
            ("unet/diffusion_pytorch_model.safetensors", m.join("unet/diffusion_pytorch_model.safetensors")),
            ("vae/config.json", m.join("vae/config.json")),
            ("vae/diffusion_pytorch_model.safetensors", m.join("vae/diffusion_pytorch_model.safetensors")),
        ])
        .collect();
    fake_hub_repo(home.path(), "someone/tiny-sdxl", &all);
    let p2 = Pipeline::load(&"someone/tiny-sdxl".parse().unwrap(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(p2.unet.config.block_out_channels, vec![32, 32, 64]);
}

#[allow(unsafe_code)]
fn unsafe_env(home: &std::path::Path) {
    // SAFETY: set before any thread of this test reads them; other tests do not read them.
    unsafe {
        std::env::set_var("HF_HOME", home);
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
}

#[test]
fn model_source_parsing() {
    assert_eq!("tiny".parse::<ModelSource>().unwrap(), ModelSource::Tiny);
    assert_eq!(
        "ByteDance/SDXL-Lightning".parse::<ModelSource>().unwrap(),
        ModelSource::Hub("ByteDance/SDXL-Lightning".into())
    );
    assert!(matches!("./models/sdxl".parse::<ModelSource>().unwrap(), ModelSource::Dir(_)));
}

fn fixture_model() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sdxl")
}

#[test]
fn unet_override_file_and_shape_errors_name_the_tensor() {
    let model = ModelSource::Dir(fixture_model());
    let unet_file = fixture_model().join("unet/diffusion_pytorch_model.safetensors");
    // A Lightning-style override: a full UNet file replacing the folder's weights.
    let mut tensors = candle_core::safetensors::load(&unet_file, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("my_unet.safetensors");
    let scaled: std::collections::HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| (k.clone(), if k == "conv_out.bias" { (v + 1.0).unwrap() } else { v.clone() }))
        .collect();
    candle_core::safetensors::save(&scaled, &good).unwrap();
    let opts =
        LoadOptions { unet_override: Some(good), prediction_type: Some(PredictionType::Sample), ..Default::default() };
    let p = Pipeline::load_with(&model, &Device::Cpu, DType::F32, &opts).unwrap();
    assert_eq!(p.scheduler.prediction_type, PredictionType::Sample);
    let base = Pipeline::load(&model, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(base.scheduler.prediction_type, PredictionType::Epsilon);
    let r = GenerateRequest { width: 64, height: 64, steps: 1, ..GenerateRequest::new("x") };
    let a = p.generate_tensor(&r, &mut |_| {}).unwrap();
    let b = base
        .generate_tensor(&GenerateRequest { prediction_type: Some(PredictionType::Sample), ..r }, &mut |_| {})
        .unwrap();
    assert!(max_abs_diff(&a.latents, &b.latents) > 0.5, "the override weights are used");

    // Wrong shape: the error names the component and the tensor.
    tensors.insert("conv_in.weight".into(), Tensor::zeros((32, 4, 1, 1), DType::F32, &Device::Cpu).unwrap());
    let bad = dir.path().join("bad_unet.safetensors");
    candle_core::safetensors::save(&tensors, &bad).unwrap();
    let opts = LoadOptions { unet_override: Some(bad), ..Default::default() };
    let err = Pipeline::load_with(&model, &Device::Cpu, DType::F32, &opts).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, EngineError::Weights { .. }), "{msg}");
    assert!(msg.contains("unet") && msg.contains("conv_in.weight"), "{msg}");
    // Missing tensor (a VAE file given as UNet).
    let opts = LoadOptions {
        unet_override: Some(fixture_model().join("vae/diffusion_pytorch_model.safetensors")),
        ..Default::default()
    };
    let msg = Pipeline::load_with(&model, &Device::Cpu, DType::F32, &opts).unwrap_err().to_string();
    assert!(msg.contains("unet") && msg.contains("cannot find tensor"), "{msg}");
}

#[test]
fn fp16_variant_is_preferred_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.safetensors"), b"x").unwrap();
    std::fs::write(dir.path().join("model.fp16.safetensors"), b"x").unwrap();
    let f = fleet_engine::files::component_weights(dir.path(), "model", true, "text_encoder").unwrap();
    assert!(f[0].ends_with("model.fp16.safetensors"));
    let f = fleet_engine::files::component_weights(dir.path(), "model", false, "text_encoder").unwrap();
    assert!(f[0].ends_with("model.safetensors"));
    let e = fleet_engine::files::component_weights(dir.path(), "diffusion_pytorch_model", false, "unet").unwrap_err();
    assert!(e.to_string().contains("unet"), "{e}");
}

#[test]
fn latents_file_and_saving_images() {
    let dir = tempfile::tempdir().unwrap();
    let noise = Tensor::randn(0f32, 1f32, (2, 4, 8, 8), &Device::Cpu).unwrap();
    let f = dir.path().join("lat.safetensors");
    candle_core::safetensors::save(&std::collections::HashMap::from([("latents".to_string(), noise.clone())]), &f)
        .unwrap();
    let lat = fleet_engine::read_latents(&f).unwrap();
    assert_eq!(max_abs_diff(&lat, &noise), 0.0);
    assert!(fleet_engine::read_latents(&dir.path().join("none.safetensors")).is_err());
    let p = tiny();
    let r = GenerateRequest { num_images: 2, latents: Some(lat), ..req("a cat") };
    let out = p.generate(&r, &mut |_| {}).unwrap();
    let paths = fleet_engine::save_images(
        &dir.path().join("out.png"),
        &out.images,
        &r,
        "tiny",
        "epsilon",
        &Default::default(),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(paths, vec![dir.path().join("out_0.png"), dir.path().join("out_1.png")]);
    let bytes = std::fs::read(&paths[1]).unwrap();
    let text = fleet_engine::encode::png_text_chunks(&bytes).unwrap();
    assert!(text.iter().any(|(k, v)| k == "parameters" && v.contains("Seed: 12")), "{text:?}");
    assert_eq!(image::load_from_memory(&bytes).unwrap().to_rgb8(), out.images[1]);
}

#[test]
fn base_folder_without_unet_weights_loads_with_a_unet_file() {
    // SDXL base downloaded without its UNet weights + a Lightning UNet file.
    let dir = tempfile::tempdir().unwrap();
    let m = fixture_model();
    for entry in
        ["model_index.json", "scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae", "unet"]
    {
        let src = m.join(entry);
        let dst = dir.path().join(entry);
        if src.is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            for f in std::fs::read_dir(&src).unwrap() {
                let f = f.unwrap().path();
                if !f.ends_with("diffusion_pytorch_model.safetensors") || entry != "unet" {
                    std::fs::copy(&f, dst.join(f.file_name().unwrap())).unwrap();
                }
            }
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
    let src = ModelSource::Dir(dir.path().to_path_buf());
    match Pipeline::load(&src, &Device::Cpu, DType::F32) {
        Err(e @ EngineError::MissingFile { .. }) => assert!(e.to_string().contains("unet"), "{e}"),
        other => panic!("{other:?}"),
    }
    let opts =
        LoadOptions { unet_override: Some(m.join("unet/diffusion_pytorch_model.safetensors")), ..Default::default() };
    let p = Pipeline::load_with(&src, &Device::Cpu, DType::F32, &opts).unwrap();
    let r = GenerateRequest { width: 64, height: 64, ..GenerateRequest::new("a cat") };
    assert_eq!(p.generate(&r, &mut |_| {}).unwrap().images.len(), 1);
}
