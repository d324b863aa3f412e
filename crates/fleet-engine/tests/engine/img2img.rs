//! Image-to-image and inpainting against diffusers, and their error cases. Fixtures in
//! `tests/fixtures/img2img/` come from `tools/make_reference.py --img2img-only`: diffusers'
//! `StableDiffusionXLImg2ImgPipeline`, `StableDiffusionXLInpaintPipeline` and
//! `StableDiffusionXLControlNetImg2ImgPipeline` on the `tiny-sdxl` fixture model (with the extras'
//! kohya LoRA and ControlNet), the VAE posterior's mean in place of a sample, and the fixture's
//! unit noise in place of the torch generator's.

use std::ops::ControlFlow;
use std::path::PathBuf;

use candle_core::Tensor;
use fleet_engine::init_image::{init_image_tensor, mask_tensor};
use fleet_engine::{
    ControlInput, ControlPreprocess, EngineError, GenerateRequest, InitInput, Pipeline, control_image_tensor,
};

use super::extras::{
    ReferenceSet, assert_image_close, assert_image_differs, base, controlnet, diff, extras, lora, with_loras,
};

static IMG2IMG: ReferenceSet = ReferenceSet::new("img2img", "--img2img-only");

fn dir() -> PathBuf {
    IMG2IMG.dir()
}

fn meta() -> &'static serde_json::Value {
    IMG2IMG.meta()
}

fn r(name: &str) -> Tensor {
    IMG2IMG.r(name)
}

fn file(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap()
}

/// The request of a fixture case (its init image, strength, mask, ControlNet) and diffusers' image.
fn case(name: &str) -> (GenerateRequest, Tensor) {
    let c = &meta()["cases"][name];
    let (w, h) = (c["width"].as_u64().unwrap() as usize, c["height"].as_u64().unwrap() as usize);
    let image = init_image_tensor(&file(c["init"].as_str().unwrap()), w, h).unwrap();
    let mut init = InitInput::new(image, c["strength"].as_f64().unwrap());
    init.mask = c["mask"].as_str().map(|m| mask_tensor(&file(m), w, h).unwrap());
    let controls = match c["control"].as_str() {
        Some(png) => {
            let image =
                control_image_tensor(&std::fs::read(extras().join(png)).unwrap(), w, h, ControlPreprocess::None)
                    .unwrap();
            vec![ControlInput {
                model: controlnet(),
                image,
                scale: c["scale"].as_f64().unwrap(),
                start: c["start"].as_f64().unwrap(),
                end: c["end"].as_f64().unwrap(),
            }]
        }
        None => Vec::new(),
    };
    let req = GenerateRequest {
        prompts: serde_json::from_value(c["prompt"].clone()).unwrap(),
        negative_prompt: c["negative_prompt"].as_str().map(String::from),
        steps: c["steps"].as_u64().unwrap() as usize,
        guidance: c["guidance"].as_f64().unwrap(),
        width: w,
        height: h,
        latents: Some(r(&format!("case.{name}.latents"))),
        controls,
        init: Some(init),
        ..GenerateRequest::default()
    };
    (req, r(&format!("case.{name}.image")))
}

fn run_case_on(p: &Pipeline, name: &str) -> Tensor {
    let (req, want) = case(name);
    let out = p.generate_tensor(&req, &mut |_| {}).unwrap();
    assert_image_close(name, &out.images, &want);
    out.images
}

fn run_case(name: &str) -> Tensor {
    run_case_on(base(), name)
}

#[test]
fn img2img_vae_encoder_posterior_mean_matches_diffusers() {
    let image = init_image_tensor(&file("init_a.png"), 64, 64).unwrap();
    let got = base().vae.encode(&image).unwrap();
    let want = r("encode.init_a");
    let (max, _) = diff(&got, &want);
    let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    eprintln!("encoder: max abs diff {max:.3e} (values up to {scale:.3})");
    assert!(max < 1e-4 * scale.max(1.0), "encoder latents differ by {max}");
}

#[test]
fn img2img_two_strengths_by_two_step_counts_match_diffusers() {
    for name in ["i2i_s6_4", "i2i_s6_8", "i2i_s9_4", "i2i_s9_8"] {
        run_case(name);
    }
}

#[test]
fn img2img_full_strength_batch_cfg_and_non_square_match_diffusers() {
    for name in ["i2i_full", "i2i_batch_cfg", "i2i_non_square"] {
        run_case(name);
    }
}

#[test]
fn inpainting_rectangular_and_irregular_masks_match_diffusers() {
    let rect = run_case("inpaint_rect");
    let irregular = run_case("inpaint_irregular");
    assert_image_differs("two masks", &rect, &irregular);
    // Strength 1 starts from pure noise (diffusers' `is_strength_max`), with guidance.
    run_case("inpaint_full_cfg");
}

#[test]
fn inpainting_keeps_the_unmasked_region_close_to_the_init_image() {
    let (req, _) = case("inpaint_rect");
    let out = base().generate_tensor(&req, &mut |_| {}).unwrap();
    let init = &req.init.as_ref().unwrap().image;
    // Outside the rectangle (x 16..48, y 8..40) only the VAE round trip changes pixels; inside
    // the model paints. Compare a kept strip (rows 48..64) with a painted block.
    let strip =
        |t: &Tensor, y: usize, x: usize, h: usize, w: usize| t.narrow(2, y, h).unwrap().narrow(3, x, w).unwrap();
    let (_, kept) = diff(&strip(&out.images, 48, 0, 16, 64), &strip(init, 48, 0, 16, 64));
    let (_, painted) = diff(&strip(&out.images, 16, 24, 16, 16), &strip(init, 16, 24, 16, 16));
    eprintln!("kept region mean diff {kept:.3e}, painted region {painted:.3e}");
    assert!(painted > kept, "the masked region is repainted more than the kept one");
}

#[test]
fn img2img_with_a_lora_matches_diffusers() {
    let m = &meta()["cases"]["i2i_lora"];
    let p = with_loras(vec![lora(m["lora"].as_str().unwrap(), m["lora_scale"].as_f64().unwrap())]).unwrap();
    let fused = run_case_on(&p, "i2i_lora");
    let (req, _) = case("i2i_lora");
    let plain = base().generate_tensor(&req, &mut |_| {}).unwrap();
    assert_image_differs("img2img lora vs none", &fused, &plain.images);
}

#[test]
fn img2img_with_controlnet_windows_over_kept_steps_matches_diffusers() {
    let with = run_case("i2i_controlnet");
    let (req, _) = case("i2i_controlnet");
    let plain = base().generate_tensor(&GenerateRequest { controls: vec![], ..req }, &mut |_| {}).unwrap();
    assert_image_differs("img2img controlnet vs none", &with, &plain.images);
}

#[test]
fn img2img_progress_counts_the_kept_steps() {
    let (req, _) = case("i2i_s6_8");
    let mut seen = Vec::new();
    base().generate_tensor(&req, &mut |p| seen.push((p.step, p.total, p.timestep))).unwrap();
    // 8 steps at strength 0.6: ⌊4.8⌋ = 4 kept, the last four of 999, 874, …, 124.
    assert_eq!(seen, vec![(1, 4, 499.0), (2, 4, 374.0), (3, 4, 249.0), (4, 4, 124.0)]);
}

#[test]
fn img2img_batches_equal_single_runs() {
    let (a, _) = case("i2i_s6_4");
    let (b, _) = case("inpaint_rect");
    // Another image-to-image job with the same kept steps (4 × 0.7 → 2, as 4 × 0.6).
    let mut c = case("i2i_s6_4").0;
    c.prompts = vec!["a red car on a road".into()];
    c.init.as_mut().unwrap().strength = 0.7;
    c.latents = Some((r("case.i2i_s6_4.latents") * -1.0).unwrap());
    let batch =
        base().generate_batch_tensor_until(&[a.clone(), c.clone()], &mut |_| ControlFlow::Continue(())).unwrap();
    for (req, got) in [(&a, &batch[0]), (&c, &batch[1])] {
        let single = base().generate_tensor(req, &mut |_| {}).unwrap();
        let (max, _) = diff(&got.images, &single.images);
        assert!(max < 1e-5, "batched vs single differ by {max}");
    }
    // Modes and kept steps that differ cannot share a pass.
    for (other, what) in [(b, "mode"), (GenerateRequest { init: None, ..a.clone() }, "mode")] {
        let err =
            base().generate_batch_tensor_until(&[a.clone(), other], &mut |_| ControlFlow::Continue(())).unwrap_err();
        assert!(err.to_string().contains(what), "{err}");
    }
    let mut d = a.clone();
    d.init.as_mut().unwrap().strength = 1.0;
    let err = base().generate_batch_tensor_until(&[a, d], &mut |_| ControlFlow::Continue(())).unwrap_err();
    assert!(err.to_string().contains("steps the strength keeps"), "{err}");
}

#[test]
fn img2img_seeded_noise_is_deterministic_and_strength_matters() {
    let (mut req, _) = case("i2i_s6_4");
    req.latents = None;
    let one = base().generate_tensor(&req, &mut |_| {}).unwrap();
    let again = base().generate_tensor(&req, &mut |_| {}).unwrap();
    assert_eq!(diff(&one.images, &again.images).0, 0.0, "the posterior mean: same job, same pixels");
    req.init.as_mut().unwrap().strength = 1.0;
    let full = base().generate_tensor(&req, &mut |_| {}).unwrap();
    assert_image_differs("strength 0.6 vs 1", &one.images, &full.images);
}

#[test]
fn too_small_a_strength_names_the_minimum_and_bad_inputs_are_errors() {
    let (req, _) = case("i2i_s6_4");
    let with_strength = |s: f64| {
        let mut q = req.clone();
        q.init.as_mut().unwrap().strength = s;
        base().generate(&q, &mut |_| {})
    };
    match with_strength(0.2) {
        Err(EngineError::InvalidRequest(m)) => {
            assert!(m.contains("strength 0.2 keeps no step of 4") && m.contains("strength >= 0.25"), "{m}")
        }
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
    assert!(with_strength(0.25).is_ok());
    for s in [0.0, -0.5, 1.5, f64::NAN] {
        assert!(matches!(with_strength(s), Err(EngineError::InvalidRequest(_))), "strength {s}");
    }
    let mut wrong = req.clone();
    wrong.init.as_mut().unwrap().image = init_image_tensor(&file("init_a.png"), 32, 32).unwrap();
    match base().generate(&wrong, &mut |_| {}) {
        Err(EngineError::Shape { name, .. }) => assert_eq!(name, "init image"),
        other => panic!("expected Shape, got {other:?}"),
    }
    let mut wrong = req;
    wrong.init.as_mut().unwrap().mask = Some(mask_tensor(&file("mask_rect.png"), 32, 64).unwrap());
    match base().generate(&wrong, &mut |_| {}) {
        Err(EngineError::Shape { name, .. }) => assert_eq!(name, "mask image"),
        other => panic!("expected Shape, got {other:?}"),
    }
}
