//! A 2-D convolution for the CPU that spends its time in the matrix product.
//!
//! candle 0.11's CPU convolution rebuilds the flattened kernel on every call, transposes the input
//! to NHWC element by element, gathers each patch with per-element index arithmetic and scatters
//! the result back: on the UNet's convolutions that data movement costs more than the product
//! itself (a profile of the tiny model showed it well ahead of the gemm kernel). Here the kernel is
//! flattened once, at load, in (kh, kw, c_in) order; the input is padded once; the k×k shifted
//! windows are copied row by row (contiguous runs) into one [k·k·c_in, rows·w] matrix; and one
//! product per block of rows writes the output directly in NCHW order.
//!
//! Used for stride-1 convolutions on the CPU. Strided convolutions (the two downsamplers) and
//! every GPU convolution use candle's (cuDNN or its own kernels).

use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

/// Elements of one patch matrix (16 MiB of f32): bounds the extra memory of a large convolution.
const PATCH_ELEMENTS: usize = 4 << 20;

#[derive(Debug, Clone)]
pub enum Conv2d {
    /// The kernel flattened to [c_out, k·k·c_in] and the bias [c_out].
    Patches {
        weight: Tensor,
        bias: Option<Tensor>,
        k: usize,
        padding: usize,
        c_out: usize,
    },
    Candle(candle_nn::Conv2d),
}

impl Conv2d {
    /// A k×k convolution with padding k/2 and bias, weights `weight` [o, i, k, k] and `bias` [o].
    pub fn new(vb: VarBuilder, i: usize, o: usize, k: usize, stride: usize) -> candle_core::Result<Self> {
        let padding = k / 2;
        let on_cpu = vb.device().is_cpu();
        // candle's constructor, so the weights (and a random model's init hints) are the same.
        let conv = candle_nn::conv2d(i, o, k, Conv2dConfig { padding, stride, ..Default::default() }, vb)?;
        if stride != 1 || !on_cpu {
            return Ok(Self::Candle(conv));
        }
        Self::from_weights(conv.weight().clone(), conv.bias().cloned(), padding)
    }

    /// A stride-1 convolution from a kernel [o, i, k, k] (and an optional bias [o]).
    pub fn from_weights(w: Tensor, bias: Option<Tensor>, padding: usize) -> candle_core::Result<Self> {
        let (c_out, c_in, k, kw) = w.dims4()?;
        if k != kw {
            candle_core::bail!("conv kernel {k}x{kw}: only square kernels");
        }
        let weight = w.permute((0, 2, 3, 1))?.reshape((c_out, k * k * c_in))?.contiguous()?;
        Ok(Self::Patches { weight, bias, k, padding, c_out })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (weight, bias, k, padding, c_out) = match self {
            Self::Candle(c) => return c.forward(x),
            Self::Patches { weight, bias, k, padding, c_out } => (weight, bias, *k, *padding, *c_out),
        };
        let (b, c, h, w) = x.dims4()?;
        let xp = if padding > 0 {
            x.pad_with_zeros(2, padding, padding)?.pad_with_zeros(3, padding, padding)?
        } else {
            x.clone()
        };
        let (oh, ow) = ((h + 2 * padding + 1).saturating_sub(k), (w + 2 * padding + 1).saturating_sub(k));
        let rows_per_block = (PATCH_ELEMENTS / (k * k * c * ow).max(1)).clamp(1, oh.max(1));
        let mut images = Vec::with_capacity(b);
        for i in 0..b {
            let xi = xp.get(i)?;
            let mut blocks = Vec::with_capacity(oh.div_ceil(rows_per_block));
            for r0 in (0..oh).step_by(rows_per_block) {
                let rows = rows_per_block.min(oh - r0);
                let patches = if k == 1 {
                    xi.narrow(1, r0, rows)?
                } else {
                    let mut taps = Vec::with_capacity(k * k);
                    for kh in 0..k {
                        for kw in 0..k {
                            taps.push(xi.narrow(1, r0 + kh, rows)?.narrow(2, kw, ow)?);
                        }
                    }
                    Tensor::cat(&taps, 0)?
                };
                let patches = patches.reshape((k * k * c, rows * ow))?;
                blocks.push(weight.matmul(&patches)?.reshape((c_out, rows, ow))?);
            }
            images.push(Tensor::cat(&blocks, 1)?);
        }
        let y = Tensor::stack(&images, 0)?;
        match bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, c_out, 1, 1))?),
            None => Ok(y),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, IndexOp};

    #[test]
    fn equals_candles_convolution() {
        let dev = Device::Cpu;
        for (k, c_in, c_out, h, w) in [(3, 5, 7, 9, 6), (1, 4, 3, 5, 8), (3, 2, 2, 1, 1), (3, 16, 8, 64, 40)] {
            let x = Tensor::randn(0f32, 1., (2, c_in, h, w), &dev).unwrap();
            let kernel = Tensor::randn(0f32, 1., (c_out, c_in, k, k), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1., c_out, &dev).unwrap();
            let reference = candle_nn::Conv2d::new(
                kernel.clone(),
                Some(bias.clone()),
                Conv2dConfig { padding: k / 2, ..Default::default() },
            )
            .forward(&x)
            .unwrap();
            let ours = Conv2d::from_weights(kernel, Some(bias), k / 2).unwrap().forward(&x).unwrap();
            assert_eq!(ours.dims(), reference.dims());
            let diff = (ours - &reference).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            let diff = diff.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "k {k}, {c_in}->{c_out}, {h}x{w}: differs by {diff}");
        }
    }

    #[test]
    fn large_inputs_are_split_into_row_blocks() {
        // 3·3·64 channels × 128 columns: PATCH_ELEMENTS / 73,728 = 56 rows per block, 3 blocks.
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (1, 64, 130, 128), &dev).unwrap();
        let kernel = Tensor::randn(0f32, 0.1, (2, 64, 3, 3), &dev).unwrap();
        let cfg = Conv2dConfig { padding: 1, ..Default::default() };
        let reference = candle_nn::Conv2d::new(kernel.clone(), None, cfg).forward(&x).unwrap();
        let ours = Conv2d::from_weights(kernel, None, 1).unwrap().forward(&x).unwrap();
        let row = |t: &Tensor, r: usize| t.i((0, 1, r)).unwrap().to_vec1::<f32>().unwrap();
        for r in [0, 55, 56, 112, 129] {
            let (a, b) = (row(&ours, r), row(&reference, r));
            assert!(a.iter().zip(&b).all(|(a, b)| (a - b).abs() < 1e-3), "row {r}");
        }
    }
}
