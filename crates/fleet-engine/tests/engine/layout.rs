//! The real SDXL-base checkpoint layout: `fixtures/sdxl_layout.json` lists every key and
//! shape of the SDXL-base UNet, VAE and both text encoders as diffusers/transformers build
//! them from the real configs (made by `tools/make_reference.py`, on torch's meta device).
//! Each component is built here from that config with a recording backend (zero-storage
//! broadcast tensors, so no memory), and the requested names/shapes must match exactly.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Init, VarBuilder, var_builder::SimpleBackend};
use fleet_engine::clip::{ClipTextConfig, ClipTextModel};
use fleet_engine::controlnet::{ControlNetConfig, ControlNetModel};
use fleet_engine::unet::{UNet2DConditionModel, UNetConfig};
use fleet_engine::vae::{Vae, VaeConfig};

type Keys = BTreeMap<String, Vec<usize>>;

#[derive(Clone)]
struct Recorder {
    expected: Arc<Keys>,
    seen: Arc<Mutex<Keys>>,
}

impl SimpleBackend for Recorder {
    fn get(&self, s: Shape, name: &str, _h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.seen.lock().unwrap().insert(name.to_string(), s.dims().to_vec());
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }
    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("unchecked get of {name}")
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.expected.contains_key(name)
    }
}

fn layout() -> serde_json::Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sdxl_layout.json");
    serde_json::from_str(&std::fs::read_to_string(p).expect("sdxl_layout.json")).unwrap()
}

fn check<T>(component: &str, build: impl FnOnce(VarBuilder<'static>, &serde_json::Value) -> T) -> T {
    check_keys(component, |_| true, build)
}

/// [`check`] against the checkpoint keys for which `used` holds (the others may stay unread).
fn check_keys<T>(
    component: &str,
    used: impl Fn(&str) -> bool,
    build: impl FnOnce(VarBuilder<'static>, &serde_json::Value) -> T,
) -> T {
    let l = layout();
    let mut expected: Keys = serde_json::from_value(l[component]["keys"].clone()).unwrap();
    expected.retain(|k, _| used(k));
    assert!(expected.len() > 100, "{component}: too few reference keys");
    let rec = Recorder { expected: Arc::new(expected.clone()), seen: Arc::new(Mutex::new(Keys::new())) };
    let vb = VarBuilder::from_backend(Box::new(rec.clone()), DType::F32, Device::Cpu);
    let model = build(vb, &l[component]["config"]);
    let seen = rec.seen.lock().unwrap().clone();
    let missing: Vec<_> = expected.keys().filter(|k| !seen.contains_key(*k)).collect();
    let extra: Vec<_> = seen.keys().filter(|k| !expected.contains_key(*k)).collect();
    let wrong: Vec<_> = seen
        .iter()
        .filter(|(k, s)| expected.get(*k).is_some_and(|e| e != *s))
        .map(|(k, s)| format!("{k}: {s:?} vs {:?}", expected[k]))
        .collect();
    assert!(
        missing.is_empty(),
        "{component}: {} checkpoint keys never loaded, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        extra.is_empty(),
        "{component}: {} requested keys not in the checkpoint, e.g. {:?}",
        extra.len(),
        &extra[..extra.len().min(5)]
    );
    assert!(wrong.is_empty(), "{component}: shape mismatches {:?}", &wrong[..wrong.len().min(5)]);
    model
}

#[test]
fn sdxl_unet_layout_and_config() {
    let unet = check("unet", |vb, cfg| {
        let c: UNetConfig = serde_json::from_value(cfg.clone()).expect("real SDXL unet config parses");
        UNet2DConditionModel::new(vb, &c).unwrap()
    });
    assert_eq!(unet.config.num_down_residuals().unwrap(), 9, "SDXL has 9 ControlNet down residuals");
    // the preset in code equals the real config
    let preset = serde_json::to_value(UNetConfig::sdxl_base()).unwrap();
    let parsed = serde_json::to_value(&unet.config).unwrap();
    assert_eq!(preset, parsed);
}

#[test]
fn sdxl_vae_layout_and_config() {
    // The engine only decodes: the encoder's weights are never read.
    let decoder = |k: &str| !k.starts_with("encoder.") && !k.starts_with("quant_conv.");
    let vae = check_keys("vae", decoder, |vb, cfg| {
        let c: VaeConfig = serde_json::from_value(cfg.clone()).expect("real SDXL vae config parses");
        Vae::new(vb, &c).unwrap()
    });
    assert_eq!(vae.config.scaling_factor, 0.13025);
    assert_eq!(vae.config.scale_factor(), 8);
    assert!(vae.config.force_upcast);
}

#[test]
fn sdxl_text_encoders_layout_and_config() {
    let te1 = check("text_encoder", |vb, cfg| {
        let c: ClipTextConfig = serde_json::from_value(cfg.clone()).unwrap();
        ClipTextModel::new(vb, &c, false, "text_encoder").unwrap()
    });
    assert_eq!(te1.config.hidden_act, "quick_gelu");
    assert_eq!(
        serde_json::to_value(&te1.config).unwrap(),
        serde_json::to_value(ClipTextConfig::sdxl_encoder1()).unwrap()
    );
    let te2 = check("text_encoder_2", |vb, cfg| {
        let c: ClipTextConfig = serde_json::from_value(cfg.clone()).unwrap();
        ClipTextModel::new(vb, &c, true, "text_encoder_2").unwrap()
    });
    assert_eq!(te2.config.hidden_act, "gelu");
    assert_eq!(
        serde_json::to_value(&te2.config).unwrap(),
        serde_json::to_value(ClipTextConfig::sdxl_encoder2()).unwrap()
    );
    assert_eq!(te1.config.hidden_size + te2.config.hidden_size, 2048);
}

#[test]
fn sdxl_controlnet_layout_and_config() {
    // `ControlNetModel.from_unet(sdxl_unet)`: the layout of the SDXL canny/depth ControlNets.
    let cn = check("controlnet", |vb, cfg| {
        let c: ControlNetConfig = serde_json::from_value(cfg.clone()).expect("SDXL controlnet config parses");
        ControlNetModel::new(vb, &c, "sdxl").unwrap()
    });
    assert_eq!(
        serde_json::to_value(&cn.config).unwrap(),
        serde_json::to_value(ControlNetConfig::sdxl()).unwrap(),
        "the preset equals diffusers' config"
    );
    cn.check_fits(&UNetConfig::sdxl_base()).unwrap();
}
