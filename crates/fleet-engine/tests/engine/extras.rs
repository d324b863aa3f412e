//! LoRA and ControlNet against diffusers, and their error cases. Fixtures in
//! `tests/fixtures/extras/` come from `tools/make_reference.py --extras-only`: random kohya LoRAs
//! (diffusers and SGM module names, UNet + both text encoders) and a PEFT LoRA, each fused by
//! diffusers with `fuse_lora(lora_scale=…)`; a small random ControlNet made with
//! `ControlNetModel.from_unet` (zero convs perturbed) run through
//! `StableDiffusionXLControlNetPipeline`; all on the `tiny-sdxl` fixture model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Tensor};
use fleet_engine::controlnet::{ControlNetConfig, ControlNetModel};
use fleet_engine::lora::LoraSpec;
use fleet_engine::unet::AddedCond;
use fleet_engine::{
    ControlInput, ControlPreprocess, EngineError, GenerateRequest, LoadOptions, ModelSource, Pipeline,
    control_image_tensor,
};

pub(super) fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub(super) fn extras() -> PathBuf {
    fixtures().join("extras")
}

/// One folder of diffusers outputs (`reference.safetensors`, `reference.json`) that
/// `tools/make_reference.py` writes, each file read once.
pub(super) struct ReferenceSet {
    folder: &'static str,
    /// The script's flag that writes this folder.
    flag: &'static str,
    tensors: OnceLock<HashMap<String, Tensor>>,
    meta: OnceLock<serde_json::Value>,
}

impl ReferenceSet {
    pub(super) const fn new(folder: &'static str, flag: &'static str) -> Self {
        ReferenceSet { folder, flag, tensors: OnceLock::new(), meta: OnceLock::new() }
    }

    pub(super) fn dir(&self) -> PathBuf {
        fixtures().join(self.folder)
    }

    pub(super) fn meta(&self) -> &serde_json::Value {
        self.meta.get_or_init(|| {
            serde_json::from_str(&std::fs::read_to_string(self.dir().join("reference.json")).unwrap()).unwrap()
        })
    }

    /// The reference tensor `name`.
    pub(super) fn r(&self, name: &str) -> Tensor {
        let tensors = self.tensors.get_or_init(|| {
            candle_core::safetensors::load(self.dir().join("reference.safetensors"), &Device::Cpu).unwrap_or_else(|e| {
                panic!(
                    "tests/fixtures/{}/reference.safetensors (run tools/make_reference.py {}): {e}",
                    self.folder, self.flag
                )
            })
        });
        tensors.get(name).unwrap_or_else(|| panic!("reference tensor {name} missing")).clone()
    }
}

static EXTRAS: ReferenceSet = ReferenceSet::new("extras", "--extras-only");

fn meta() -> &'static serde_json::Value {
    EXTRAS.meta()
}

fn r(name: &str) -> Tensor {
    EXTRAS.r(name)
}

fn model_dir() -> ModelSource {
    ModelSource::Dir(fixtures().join("tiny-sdxl"))
}

pub(super) fn base() -> &'static Pipeline {
    static P: OnceLock<Pipeline> = OnceLock::new();
    P.get_or_init(|| Pipeline::load(&model_dir(), &Device::Cpu, DType::F32).expect("fixture model loads"))
}

pub(super) fn with_loras(loras: Vec<LoraSpec>) -> fleet_engine::Result<Pipeline> {
    let opts = LoadOptions { loras, ..LoadOptions::default() };
    Pipeline::load_with(&model_dir(), &Device::Cpu, DType::F32, &opts)
}

pub(super) fn lora(file: &str, scale: f64) -> LoraSpec {
    LoraSpec { path: extras().join(file), scale }
}

pub(super) fn controlnet() -> Arc<ControlNetModel> {
    static C: OnceLock<Arc<ControlNetModel>> = OnceLock::new();
    C.get_or_init(|| {
        Arc::new(ControlNetModel::load(&extras().join("tiny-controlnet"), &Device::Cpu, DType::F32).expect("loads"))
    })
    .clone()
}

/// (max, mean) abs difference.
pub(super) fn diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    assert_eq!(a.dims(), b.dims());
    let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
    (d.max(0).unwrap().to_scalar::<f32>().unwrap(), d.mean(0).unwrap().to_scalar::<f32>().unwrap())
}

/// The image tolerance of the base parity tests: mean < 0.1/255, max < 2/255.
pub(super) fn assert_image_close(what: &str, got: &Tensor, want: &Tensor) {
    let (max, mean) = diff(got, want);
    eprintln!("{what}: image max abs diff {max:.3e}, mean {mean:.3e} (1/255 = 3.9e-3)");
    assert!(mean < 0.1 / 255.0, "{what}: mean abs diff {mean}");
    assert!(max < 2.0 / 255.0, "{what}: max abs diff {max}");
}

/// Clearly different pictures (far beyond the parity tolerance).
pub(super) fn assert_image_differs(what: &str, a: &Tensor, b: &Tensor) {
    let (max, mean) = diff(a, b);
    eprintln!("{what}: differs by max {max:.3e}, mean {mean:.3e}");
    assert!(max > 20.0 / 255.0 && mean > 1.0 / 255.0, "{what}: only max {max}, mean {mean}");
}

fn lora_request() -> GenerateRequest {
    let c = &meta()["lora_case"];
    GenerateRequest {
        prompts: serde_json::from_value(c["prompt"].clone()).unwrap(),
        steps: c["steps"].as_u64().unwrap() as usize,
        guidance: c["guidance"].as_f64().unwrap(),
        width: c["width"].as_u64().unwrap() as usize,
        height: c["height"].as_u64().unwrap() as usize,
        latents: Some(r("lora.latents")),
        ..GenerateRequest::default()
    }
}

fn lora_case(name: &str) {
    let m = &meta()["loras"][name];
    let scale = m["scale"].as_f64().unwrap();
    let p = with_loras(vec![lora(m["file"].as_str().unwrap(), scale)]).unwrap();
    assert!(p.lora_unmatched.is_empty());
    let out = p.generate_tensor(&lora_request(), &mut |_| {}).unwrap();
    assert_image_close(&format!("lora {name}"), &out.images, &r(&format!("lora.{name}.image")));
    // Without the LoRA: diffusers' base image, clearly different from the fused one.
    let plain = base().generate_tensor(&lora_request(), &mut |_| {}).unwrap();
    assert_image_close("no lora", &plain.images, &r("lora.base.image"));
    assert_image_differs(&format!("lora {name} vs none"), &out.images, &plain.images);
}

#[test]
fn lora_kohya_diffusers_names_matches_diffusers() {
    // UNet (resnets, attentions, 3x3 convs, samplers, conv_in/out, time embedding) + both text encoders.
    assert!(meta()["loras"]["kohya"]["modules"]["te1"].as_u64().unwrap() > 0);
    lora_case("kohya");
}

#[test]
fn lora_kohya_sgm_names_matches_diffusers() {
    lora_case("kohya_sgm");
}

#[test]
fn lora_peft_with_adapter_metadata_matches_diffusers() {
    lora_case("peft");
}

#[test]
fn lora_scales_add_up_and_zero_is_the_base_model() {
    let req = lora_request();
    let plain = base().generate_tensor(&req, &mut |_| {}).unwrap();
    let zero =
        with_loras(vec![lora("lora_kohya.safetensors", 0.0)]).unwrap().generate_tensor(&req, &mut |_| {}).unwrap();
    assert_eq!(diff(&zero.images, &plain.images).0, 0.0, "scale 0 leaves every weight as it was");
    // Two LoRAs at once: +s and -s cancel (up to float rounding of the sums).
    let both = with_loras(vec![lora("lora_kohya.safetensors", 0.8), lora("lora_kohya.safetensors", -0.8)])
        .unwrap()
        .generate_tensor(&req, &mut |_| {})
        .unwrap();
    assert_image_close("kohya +0.8 -0.8", &both.images, &plain.images);
    // Two different LoRAs at once differ from each alone.
    let two = with_loras(vec![lora("lora_kohya.safetensors", 0.8), lora("lora_peft.safetensors", 0.7)])
        .unwrap()
        .generate_tensor(&req, &mut |_| {})
        .unwrap();
    assert_image_differs("kohya+peft vs kohya", &two.images, &r("lora.kohya.image"));
    assert_image_differs("kohya+peft vs peft", &two.images, &r("lora.peft.image"));
}

/// Write a kohya LoRA with the given tensors into `dir`.
fn write_lora(dir: &Path, name: &str, tensors: &[(&str, Tensor)]) -> PathBuf {
    let map: HashMap<String, Tensor> = tensors.iter().map(|(k, t)| (k.to_string(), t.clone())).collect();
    let path = dir.join(format!("{name}.safetensors"));
    candle_core::safetensors::save(&map, &path).unwrap();
    path
}

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 0.1, shape, &Device::Cpu).unwrap()
}

const TO_Q: &str = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q";

#[test]
fn lora_alpha_defaults_to_the_rank() {
    let dir = tempfile::tempdir().unwrap();
    let (down, up) = (randn(&[4, 32]), randn(&[32, 4]));
    let a = write_lora(
        dir.path(),
        "no_alpha",
        &[(&format!("{TO_Q}.lora_down.weight"), down.clone()), (&format!("{TO_Q}.lora_up.weight"), up.clone())],
    );
    let alpha = |v: f32| Tensor::new(v, &Device::Cpu).unwrap();
    let mk = |name: &str, v: f32| {
        write_lora(
            dir.path(),
            name,
            &[
                (&format!("{TO_Q}.lora_down.weight"), down.clone()),
                (&format!("{TO_Q}.lora_up.weight"), up.clone()),
                (&format!("{TO_Q}.alpha"), alpha(v)),
            ],
        )
    };
    let (b, c) = (mk("alpha_rank", 4.0), mk("alpha_half", 2.0));
    let req = GenerateRequest { steps: 1, ..lora_request() };
    let run = |path: &Path, s: f64| {
        with_loras(vec![LoraSpec { path: path.to_path_buf(), scale: s }])
            .unwrap()
            .generate_tensor(&req, &mut |_| {})
            .unwrap()
    };
    let (ia, ib) = (run(&a, 1.0), run(&b, 1.0));
    assert_eq!(diff(&ia.images, &ib.images).0, 0.0, "no alpha == alpha = rank");
    // alpha 2 at scale 2 == alpha 4 at scale 1 (the factor is scale·alpha/rank).
    let (ic, id) = (run(&c, 2.0), run(&b, 1.0));
    assert!(diff(&ic.images, &id.images).0 < 1e-6);
    assert!(diff(&ia.images, &base().generate_tensor(&req, &mut |_| {}).unwrap().images).0 > 1e-4);
}

#[test]
fn lora_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A key matching no module: an error listing it, unless allowed.
    let bad = write_lora(
        d,
        "wrong_arch",
        &[
            (&format!("{TO_Q}.lora_down.weight"), randn(&[2, 32])),
            (&format!("{TO_Q}.lora_up.weight"), randn(&[32, 2])),
            ("lora_unet_single_transformer_blocks_0_attn_to_q.lora_down.weight", randn(&[2, 32])),
            ("lora_unet_single_transformer_blocks_0_attn_to_q.lora_up.weight", randn(&[32, 2])),
        ],
    );
    let spec = LoraSpec { path: bad.clone(), scale: 1.0 };
    let e = with_loras(vec![spec.clone()]).unwrap_err();
    assert!(matches!(e, EngineError::LoraUnmatched { count: 1, .. }), "{e}");
    assert!(e.to_string().contains("unet:single_transformer_blocks_0_attn_to_q"), "{e}");
    let opts = LoadOptions { loras: vec![spec], allow_unmatched_lora: true, ..LoadOptions::default() };
    let p = Pipeline::load_with(&model_dir(), &Device::Cpu, DType::F32, &opts).unwrap();
    assert_eq!(p.lora_unmatched, vec!["unet:single_transformer_blocks_0_attn_to_q".to_string()]);

    // Rank mismatch between down and up.
    let rank = write_lora(
        d,
        "rank",
        &[(&format!("{TO_Q}.lora_down.weight"), randn(&[4, 32])), (&format!("{TO_Q}.lora_up.weight"), randn(&[32, 2]))],
    );
    let e = with_loras(vec![LoraSpec { path: rank, scale: 1.0 }]).unwrap_err();
    assert!(matches!(e, EngineError::Lora { .. }) && e.to_string().contains("rank mismatch"), "{e}");

    // A LoRA for a wider model: the update does not fit the weight.
    let wide = write_lora(
        d,
        "wide",
        &[(&format!("{TO_Q}.lora_down.weight"), randn(&[2, 64])), (&format!("{TO_Q}.lora_up.weight"), randn(&[64, 2]))],
    );
    let e = with_loras(vec![LoraSpec { path: wide, scale: 1.0 }]).unwrap_err();
    assert!(e.to_string().contains("does not fit the model's weight"), "{e}");

    // Corrupt and truncated files, a file without LoRA keys, a missing file.
    let corrupt = d.join("corrupt.safetensors");
    std::fs::write(&corrupt, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all").unwrap();
    let good = std::fs::read(extras().join("lora_kohya.safetensors")).unwrap();
    let truncated = d.join("truncated.safetensors");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    for f in [&corrupt, &truncated] {
        let e = with_loras(vec![LoraSpec { path: f.clone(), scale: 1.0 }]).unwrap_err();
        assert!(e.to_string().contains("not a valid safetensors file"), "{e}");
    }
    let other = write_lora(d, "not_lora", &[("model.layers.0.weight", randn(&[2, 2]))]);
    let e = with_loras(vec![LoraSpec { path: other, scale: 1.0 }]).unwrap_err();
    assert!(e.to_string().contains("not LoRA weights of a supported format"), "{e}");
    let e = with_loras(vec![LoraSpec { path: d.join("absent.safetensors"), scale: 1.0 }]).unwrap_err();
    assert!(matches!(e, EngineError::MissingFile { .. }), "{e}");
}

#[test]
fn lora_library_resolution() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(extras().join("lora_peft.safetensors"), dir.path().join("style.safetensors")).unwrap();
    let lib = Some(dir.path());
    assert_eq!(fleet_engine::resolve_lora("style", lib).unwrap(), dir.path().join("style.safetensors"));
    let direct = extras().join("lora_kohya.safetensors");
    assert_eq!(fleet_engine::resolve_lora(direct.to_str().unwrap(), None).unwrap(), direct);
    for bad in ["missing", "../style", "a/b"] {
        let e = fleet_engine::resolve_lora(bad, lib).unwrap_err();
        assert!(matches!(e, EngineError::MissingFile { .. }), "{bad}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// ControlNet

#[test]
fn controlnet_residuals_match_diffusers() {
    let cn = controlnet();
    let added = AddedCond { text_embeds: r("cn.text_embeds"), time_ids: r("cn.time_ids") };
    let out = cn.forward(&r("cn.sample"), 499.0, &r("cn.ctx"), Some(&added), &r("cn.cond"), 0.6).unwrap();
    assert_eq!(out.down.len(), 6);
    for (i, d) in out.down.iter().enumerate() {
        let want = r(&format!("cn.down.{i}"));
        let (max, _) = diff(d, &want);
        let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(scale > 0.0 && max < 1e-5 * scale.max(1.0), "down {i}: {max} (scale {scale})");
    }
    let (max, _) = diff(&out.mid, &r("cn.mid"));
    assert!(max < 1e-5, "mid: {max}");
}

fn cn_case(name: &str) -> (GenerateRequest, Tensor) {
    let c = &meta()["cases"][name];
    let (w, h) = (c["width"].as_u64().unwrap() as usize, c["height"].as_u64().unwrap() as usize);
    let f = |k: &str, i: usize| c[k][i].as_f64().unwrap();
    let controls = (0..c["images"].as_array().unwrap().len())
        .map(|i| {
            let file = extras().join(format!("control_{}.png", c["images"][i].as_str().unwrap()));
            let image = control_image_tensor(&std::fs::read(file).unwrap(), w, h, ControlPreprocess::None).unwrap();
            ControlInput { model: controlnet(), image, scale: f("scale", i), start: f("start", i), end: f("end", i) }
        })
        .collect();
    let req = GenerateRequest {
        prompts: serde_json::from_value(c["prompt"].clone()).unwrap(),
        negative_prompt: c["negative_prompt"].as_str().map(String::from),
        steps: c["steps"].as_u64().unwrap() as usize,
        guidance: c["guidance"].as_f64().unwrap(),
        width: w,
        height: h,
        latents: Some(r(&format!("case.{name}.latents"))),
        controls,
        ..GenerateRequest::default()
    };
    (req, r(&format!("case.{name}.image")))
}

fn run_cn_case(name: &str) {
    let (req, want) = cn_case(name);
    let out = base().generate_tensor(&req, &mut |_| {}).unwrap();
    assert_image_close(name, &out.images, &want);
    // Without the control image the picture is clearly different.
    let plain = base().generate_tensor(&GenerateRequest { controls: vec![], ..req }, &mut |_| {}).unwrap();
    assert_image_differs(&format!("{name} vs no control"), &out.images, &plain.images);
}

#[test]
fn controlnet_image_matches_diffusers() {
    run_cn_case("cn_base");
}

#[test]
fn controlnet_start_end_window_on_a_non_square_image_matches_diffusers() {
    run_cn_case("cn_window");
}

#[test]
fn controlnet_with_cfg_matches_diffusers() {
    run_cn_case("cn_cfg");
}

#[test]
fn two_controlnets_sum_like_diffusers_multicontrolnet() {
    run_cn_case("cn_multi");
}

#[test]
fn controlnet_errors_are_clear() {
    // A ControlNet built for another UNet width (SDXL-like widths on the tiny model).
    let cfg = ControlNetConfig {
        unet: fleet_engine::unet::UNetConfig {
            block_out_channels: vec![32, 64, 64],
            ..controlnet().config.unet.clone()
        },
        ..controlnet().config.clone()
    };
    let other =
        ControlNetModel::new(fleet_engine::random::random_var_builder(1, DType::F32, &Device::Cpu), &cfg, "wide")
            .unwrap();
    let e = other.check_fits(&base().unet.config).unwrap_err();
    assert!(e.to_string().contains("does not fit the base model: its block_out_channels is [32, 64, 64]"), "{e}");
    let (mut req, _) = cn_case("cn_base");
    req.controls[0].model = Arc::new(other);
    let e = base().generate_tensor(&req, &mut |_| {}).unwrap_err();
    assert!(matches!(e, EngineError::ControlNet { .. }), "{e}");

    // A control image of the wrong size, a bad window.
    let (mut req, _) = cn_case("cn_base");
    req.controls[0].image = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let e = base().generate_tensor(&req, &mut |_| {}).unwrap_err();
    assert!(matches!(e, EngineError::Shape { .. }), "{e}");
    let (mut req, _) = cn_case("cn_base");
    req.controls[0].start = 0.8;
    req.controls[0].end = 0.2;
    assert!(matches!(base().generate_tensor(&req, &mut |_| {}).unwrap_err(), EngineError::InvalidRequest(_)));

    // Bytes that are not an image; a folder that is not a ControlNet.
    let e = control_image_tensor(b"%PDF-1.4 not an image", 64, 64, ControlPreprocess::None).unwrap_err();
    assert!(e.to_string().contains("control image is not a readable PNG/JPEG/WebP image"), "{e}");
    let e = ControlNetModel::load(&fixtures().join("tiny-sdxl"), &Device::Cpu, DType::F32).unwrap_err();
    assert!(matches!(e, EngineError::MissingFile { .. }), "{e}");
}
