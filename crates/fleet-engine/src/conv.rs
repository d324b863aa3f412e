//! A 2-D convolution for the CPU that spends its time in the matrix product.
//!
//! candle 0.11's CPU convolution rebuilds the flattened kernel on every call, transposes the input
//! to NHWC element by element, gathers each patch with per-element index arithmetic and scatters
//! the result back: on the UNet's convolutions that data movement costs more than the product
//! itself (a profile of the tiny model showed it well ahead of the gemm kernel). Here the kernel is
//! flattened once, at load, in (kh, kw, c_in) order with the bias as one more column; one gather
//! ([`Im2Col`], rows spread over the rayon threads, zero padding written in place) builds the
//! [k·k·c_in + 1, rows·w] patch matrix whose last row is ones; and one product per block of rows
//! writes the biased output directly in NCHW order.
//!
//! Used for stride-1 f32 convolutions on the CPU. Strided convolutions (the two downsamplers),
//! other dtypes and every GPU convolution use candle's (cuDNN or its own kernels).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Shape, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use rayon::prelude::*;

use crate::util::contiguous_f32;

/// Elements of one patch matrix (16 MiB of f32): bounds the extra memory of a large convolution.
const PATCH_ELEMENTS: usize = 4 << 20;

#[derive(Debug, Clone)]
pub enum Conv2d {
    Patches {
        /// The kernel flattened to [c_out, k·k·c_in], then the bias as one more column (when the
        /// convolution has one).
        weight: Tensor,
        has_bias: bool,
        k: usize,
        padding: usize,
        c_out: usize,
        /// candle's convolution over the same weights, for inputs the gather does not take.
        fallback: candle_nn::Conv2d,
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
        let flat = w.permute((0, 2, 3, 1))?.reshape((c_out, k * k * c_in))?;
        let weight = match &bias {
            Some(b) => Tensor::cat(&[&flat, &b.reshape((c_out, 1))?], 1)?,
            None => flat,
        }
        .contiguous()?;
        let fallback = candle_nn::Conv2d::new(w, bias.clone(), Conv2dConfig { padding, ..Default::default() });
        Ok(Self::Patches { weight, has_bias: bias.is_some(), k, padding, c_out, fallback })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (weight, has_bias, k, padding, c_out, fallback) = match self {
            Self::Candle(c) => return c.forward(x),
            Self::Patches { weight, has_bias, k, padding, c_out, fallback } => {
                (weight, *has_bias, *k, *padding, *c_out, fallback)
            }
        };
        if !x.device().is_cpu()
            || x.dtype() != DType::F32
            || weight.dtype() != DType::F32
            || !crate::util::own_cpu_kernels()
        {
            return fallback.forward(x);
        }
        let (b, c, h, w) = x.dims4()?;
        let (oh, ow) = ((h + 2 * padding + 1).saturating_sub(k), (w + 2 * padding + 1).saturating_sub(k));
        let patch_rows = k * k * c + usize::from(has_bias);
        let rows_per_block = (PATCH_ELEMENTS / (patch_rows * ow).max(1)).clamp(1, oh.max(1));
        let x = x.contiguous()?;
        let mut images = Vec::with_capacity(b);
        for i in 0..b {
            let xi = x.get(i)?;
            let mut blocks = Vec::with_capacity(oh.div_ceil(rows_per_block));
            for first_row in (0..oh).step_by(rows_per_block) {
                let rows = rows_per_block.min(oh - first_row);
                let gather = Im2Col { k, padding, first_row, rows, ones_row: has_bias };
                let patches = xi.apply_op1_no_bwd(&gather)?;
                blocks.push(weight.matmul(&patches)?.reshape((c_out, rows, ow))?);
            }
            images.push(if blocks.len() == 1 { blocks.remove(0) } else { Tensor::cat(&blocks, 1)? });
        }
        if b == 1 { images.remove(0).unsqueeze(0) } else { Tensor::stack(&images, 0) }
    }
}

/// The patch matrix of output rows `first_row..first_row + rows` of one image [c, h, w]:
/// row (kh·k + kw)·c + ci holds input channel ci shifted by (kh − padding, kw − padding), zero
/// outside the image; with `ones_row`, a last row of ones that multiplies the bias column.
struct Im2Col {
    k: usize,
    padding: usize,
    first_row: usize,
    rows: usize,
    ones_row: bool,
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col-rows"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "im2col input")?;
        let (c, h, w) = layout.shape().dims3()?;
        let (k, pad) = (self.k, self.padding);
        let ow = (w + 2 * pad + 1).saturating_sub(k);
        let row_len = self.rows * ow;
        let patch_rows = k * k * c + usize::from(self.ones_row);
        let mut out = vec![0f32; patch_rows * row_len];
        if row_len > 0 {
            out.par_chunks_mut(row_len).enumerate().for_each(|(p, dst)| {
                if p == k * k * c {
                    dst.fill(1.0);
                    return;
                }
                let (tap, ci) = (p / c, p % c);
                let (kh, kw) = (tap / k, tap % k);
                // Output columns whose input column j + kw − pad lies inside the image.
                let col_lo = pad.saturating_sub(kw).min(ow);
                let col_hi = (w + pad).saturating_sub(kw).min(ow).max(col_lo);
                let channel = &x[ci * h * w..(ci + 1) * h * w];
                for (r, dst) in dst.chunks_exact_mut(ow).enumerate() {
                    let Some(y) = (self.first_row + r + kh).checked_sub(pad).filter(|&y| y < h) else { continue };
                    let src = &channel[y * w..(y + 1) * w];
                    let src_lo = col_lo + kw - pad;
                    dst[col_lo..col_hi].copy_from_slice(&src[src_lo..src_lo + (col_hi - col_lo)]);
                }
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((patch_rows, row_len))))
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
