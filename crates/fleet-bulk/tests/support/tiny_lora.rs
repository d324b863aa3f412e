//! A LoRA for the built-in `tiny` model, shared by the crate's tests and the end-to-end tests
//! (`#[path]`-included by both).

/// Writes a rank-2 LoRA of one attention projection of `tiny` to `path`.
pub fn write_tiny_lora(path: &std::path::Path) {
    use fleet_engine::candle_core::{DType, Device, Tensor};
    let key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q";
    let ones = |shape: (usize, usize)| Tensor::ones(shape, DType::F32, &Device::Cpu).unwrap();
    let tensors = std::collections::HashMap::from([
        (format!("{key}.lora_down.weight"), ones((2, 32))),
        (format!("{key}.lora_up.weight"), ones((32, 2))),
    ]);
    fleet_engine::candle_core::safetensors::save(&tensors, path).unwrap();
}
