//! A deterministic random-weight `VarBuilder` backend: every tensor is drawn from the
//! documented SplitMix64/Box–Muller stream ([`crate::rng`]) seeded with
//! `seed ^ fnv1a64(tensor name)`, so a model built with it is identical on every run and
//! platform whatever order the tensors are requested in. Norm weights/biases follow the
//! init hints (ones/zeros), matrices are N(0, 1/fan_in). Tensors of more than
//! [`MAX_DISTINCT`] values (only in the SDXL-sized benchmark model) repeat a block.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Init, VarBuilder, var_builder::SimpleBackend};

use crate::rng::SplitMix64;

#[derive(Debug, Clone)]
pub struct RandomBackend {
    pub seed: u64,
}

pub fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Tensors larger than this repeat a block of this many values (drawn from their own stream):
/// this keeps the SDXL-sized random model's construction fast; the tiny and medium models
/// have no tensor this large, so every one of their values is an independent draw.
pub const MAX_DISTINCT: usize = 1 << 20;

impl SimpleBackend for RandomBackend {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let n = s.elem_count();
        let m = n.min(MAX_DISTINCT);
        let dims = s.dims().to_vec();
        let fan_in =
            if dims.len() >= 2 { dims[1..].iter().product::<usize>() } else { dims.first().copied().unwrap_or(1) };
        let mut rng = SplitMix64::new(self.seed ^ fnv1a64(name));
        let data: Vec<f32> = match h {
            Init::Const(v) => vec![v as f32; m],
            Init::Randn { mean, stdev } => {
                // Embeddings: keep them at a scale similar to trained CLIP (≈0.02 · 10).
                let stdev = if name.ends_with("embedding.weight") { 0.2 } else { stdev };
                rng.normals(m).into_iter().map(|x| (mean + stdev * x as f64) as f32).collect()
            }
            Init::Uniform { lo, up } => (0..m)
                .map(|_| {
                    let u = (rng.next_u64() >> 11) as f64 / 9_007_199_254_740_992.0;
                    (lo + (up - lo) * u) as f32
                })
                .collect(),
            Init::Kaiming { .. } => {
                let std = 1.0 / (fan_in.max(1) as f64).sqrt();
                rng.normals(m).into_iter().map(|x| (std * x as f64) as f32).collect()
            }
        };
        let mut t = Tensor::from_vec(data, m, &Device::Cpu)?;
        if m < n {
            t = t.repeat(n.div_ceil(m))?.narrow(0, 0, n)?;
        }
        t.reshape(s)?.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random backend cannot create {name} without a shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// A `VarBuilder` producing deterministic random weights for any model built from it.
pub fn random_var_builder(seed: u64, dtype: DType, dev: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(RandomBackend { seed }), dtype, dev.clone())
}
