//! A LoRA for the built-in `tiny` model, shared by the crate's tests and the end-to-end tests
//! (`#[path]`-included by both).

/// Writes a rank-2 LoRA of one attention projection of `tiny` to `path`.
///
/// It changes the output projection: an all-ones delta on `to_q` (as this LoRA had) adds
/// sum(x)·1 to every query, and the LayerNorm'd x of `tiny` (weight 1, bias 0) sums to zero, so
/// that LoRA changed the images by rounding noise only — whether a pixel flipped depended on the
/// order of float operations in the engine's kernels.
pub fn write_tiny_lora(path: &std::path::Path) {
    use fleet_engine::candle_core::{DType, Device, Tensor};
    let key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0";
    let ones = |shape: (usize, usize)| Tensor::ones(shape, DType::F32, &Device::Cpu).unwrap();
    let tensors = std::collections::HashMap::from([
        (format!("{key}.lora_down.weight"), ones((2, 32))),
        (format!("{key}.lora_up.weight"), ones((32, 2))),
    ]);
    fleet_engine::candle_core::safetensors::save(&tensors, path).unwrap();
}
