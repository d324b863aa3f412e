//! Batch invariance: requests that share a forward pass get, bit for bit, the images each gets
//! alone — whatever their prompts, negative prompts, seeds, image counts, guidance and control
//! images, and however many rows share the pass.

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Tensor};
use fleet_engine::controlnet::ControlNetModel;
use fleet_engine::lora::LoraSpec;
use fleet_engine::{
    ControlInput, ControlPreprocess, EngineError, GenerateRequest, LoadOptions, ModelSource, Pipeline, RandomPreset,
    control_image_tensor,
};

fn tiny() -> &'static Pipeline {
    super::tiny()
}

fn medium() -> &'static Pipeline {
    static P: OnceLock<Pipeline> = OnceLock::new();
    P.get_or_init(|| Pipeline::random(RandomPreset::Medium, &Device::Cpu, DType::F32).expect("random-medium builds"))
}

fn extras() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/extras")
}

/// A varied set of jobs: prompts, negative prompts, seeds, image counts, guidance 0 beside > 1.
fn jobs(size: usize, steps: usize) -> Vec<GenerateRequest> {
    let job = |prompt: &str, seed: u64, n: usize, guidance: f64, negative: Option<&str>| GenerateRequest {
        prompts: vec![prompt.into()],
        negative_prompt: negative.map(String::from),
        steps,
        guidance,
        width: size,
        height: size,
        seed,
        num_images: n,
        ..GenerateRequest::default()
    };
    vec![
        job("a red bicycle", 1, 1, 0.0, None),
        job("a lighthouse at dusk, oil painting", 7, 2, 0.0, None),
        job("a cat", 40, 1, 3.0, Some("blurry")),
        job("a cat", 41, 1, 0.0, Some("ignored without guidance")),
        job("", 5, 3, 2.0, None),
        job("a mountain lake", 9, 1, 1.5, Some("fog, people")),
        job("a red bicycle", 2, 1, 0.0, None),
        job("portrait of an old sailor", 123_456_789, 2, 5.0, Some("")),
    ]
}

/// Each request alone, then every window of `size` consecutive requests joined: each joined
/// request's images must equal its solo images exactly.
fn assert_invariant(p: &Pipeline, reqs: &[GenerateRequest], sizes: &[usize]) {
    let solo: Vec<Tensor> = reqs.iter().map(|r| p.generate_tensor(r, &mut |_| {}).expect("solo run").images).collect();
    for &size in sizes {
        for start in 0..=reqs.len().saturating_sub(size) {
            let window = &reqs[start..start + size];
            let joint = p.generate_batch_tensor_until(window, &mut |_| std::ops::ControlFlow::Continue(())).unwrap();
            assert_eq!(joint.len(), size);
            for (k, out) in joint.iter().enumerate() {
                let alone = &solo[start + k];
                assert!(
                    bits(&out.images) == bits(alone),
                    "batch of {size} from request {start}: request {} (prompt {:?}, guidance {}) differs from its solo run \
                     by up to {}",
                    start + k,
                    window[k].prompts,
                    window[k].guidance,
                    max_diff(&out.images, alone)
                );
                assert_eq!(out.seeds, window[k].seeds());
            }
        }
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn tiny_joint_runs_equal_solo_runs_at_batch_sizes_2_3_4_and_8() {
    assert_invariant(tiny(), &jobs(64, 2), &[2, 3, 4, 8]);
}

#[test]
fn random_medium_joint_runs_equal_solo_runs_at_batch_sizes_2_3_4_and_8() {
    let reqs = jobs(64, 1);
    assert_invariant(medium(), &reqs[..4], &[2, 3, 4]);
    assert_invariant(medium(), &reqs, &[8]);
}

#[test]
fn a_lora_batch_is_invariant() {
    let opts = LoadOptions {
        loras: vec![LoraSpec { path: extras().join("lora_kohya.safetensors"), scale: 0.7 }],
        ..LoadOptions::default()
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sdxl");
    let p = Pipeline::load_with(&ModelSource::Dir(dir), &Device::Cpu, DType::F32, &opts).unwrap();
    assert_invariant(&p, &jobs(64, 2)[..4], &[2, 4]);
}

#[test]
fn a_controlnet_batch_with_per_job_images_scales_and_windows_is_invariant() {
    let model = Arc::new(ControlNetModel::load(&extras().join("tiny-controlnet"), &Device::Cpu, DType::F32).unwrap());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sdxl");
    let p = Pipeline::load(&ModelSource::Dir(dir), &Device::Cpu, DType::F32).unwrap();
    let image = |name: &str| {
        control_image_tensor(&std::fs::read(extras().join(name)).unwrap(), 64, 64, ControlPreprocess::None).unwrap()
    };
    let mut reqs = jobs(64, 4)[..4].to_vec();
    let settings = [
        ("control_a.png", 1.0, 0.0, 1.0),
        ("control_b.png", 0.5, 0.0, 0.5),
        ("control_a.png", 0.8, 0.5, 1.0),
        ("control_b.png", 1.3, 0.25, 0.75),
    ];
    for (r, (file, scale, start, end)) in reqs.iter_mut().zip(settings) {
        r.controls = vec![ControlInput { model: model.clone(), image: image(file), scale, start, end }];
    }
    assert_invariant(&p, &reqs, &[2, 3, 4]);
}

#[test]
fn requests_that_cannot_share_a_pass_are_refused_by_name() {
    let reqs = jobs(64, 2);
    let other_size = GenerateRequest { width: 128, ..reqs[1].clone() };
    let e = tiny()
        .generate_batch_tensor_until(&[reqs[0].clone(), other_size], &mut |_| std::ops::ControlFlow::Continue(()))
        .unwrap_err();
    assert!(matches!(&e, EngineError::InvalidRequest(m) if m.contains("request 1") && m.contains("size")), "{e}");
    let other_steps = GenerateRequest { steps: 4, ..reqs[1].clone() };
    let e = tiny()
        .generate_batch_tensor_until(&[reqs[0].clone(), other_steps], &mut |_| std::ops::ControlFlow::Continue(()))
        .unwrap_err();
    assert!(e.to_string().contains("steps"), "{e}");
}
