//! A 2-D convolution for the CPU that spends its time in the matrix product.
//!
//! candle 0.11's CPU convolution rebuilds the flattened kernel on every call, transposes the input
//! to NHWC element by element, gathers each patch with per-element index arithmetic and scatters
//! the result back: on the UNet's convolutions that data movement costs more than the product
//! itself (a profile of the tiny model showed it well ahead of the gemm kernel). Here the kernel is
//! flattened once, at load, in (kh, kw, c_in) order with the bias as one more column. The output
//! positions are cut into tiles; for each, a gather builds the [k·k·c_in + 1, tile] patch matrix
//! (zero padding written in place, last row ones) and one gemm product writes the biased output
//! straight into the NCHW planes. Few-channel layers (the VAE at full resolution) use small tiles,
//! one per thread, so the patch matrix never leaves the core's cache; wide layers use large ones
//! with the product spread over the threads (see [`Plan`]).
//!
//! Used for stride-1 f32 convolutions on the CPU. Strided convolutions (the two downsamplers) and
//! other dtypes use candle's; GPU convolutions use cuDNN as PyTorch does with the `cudnn` feature
//! ([`crate::cudnn_conv`]), candle's own kernels otherwise.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Module, Shape, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use rayon::prelude::*;

use crate::matmul::{Operand, Product, SharedOut, product_shared};
use crate::util::contiguous_f32;

/// Elements of one large patch tile (16 MiB of f32): bounds the extra memory of a wide convolution.
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
            Self::Candle(c) => {
                #[cfg(feature = "cudnn")]
                if crate::cudnn_conv::takes(x, c) {
                    return crate::cudnn_conv::forward(x, c);
                }
                return c.forward(x);
            }
            Self::Patches { weight, has_bias, k, padding, c_out, fallback } => {
                (weight, *has_bias, *k, *padding, *c_out, fallback)
            }
        };
        if !x.device().is_cpu()
            || x.dtype() != DType::F32
            || weight.dtype() != DType::F32
            || !crate::util::own_kernels()
        {
            return fallback.forward(x);
        }
        x.contiguous()?.apply_op2_no_bwd(weight, &PatchConv { k, padding, ones_row: has_bias, c_out })
    }
}

/// The convolution as products of the flattened kernel with patch matrices, one per tile of
/// output positions (see [`Plan`]).
struct PatchConv {
    k: usize,
    padding: usize,
    ones_row: bool,
    c_out: usize,
}

/// How one convolution is cut into products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    /// Output positions (flattened h·w) per patch matrix.
    cols: usize,
    /// Whether tiles run side by side, each product on one thread; otherwise tiles run one after
    /// another and each product uses every thread.
    tiles_in_parallel: bool,
}

/// Bytes of one patch tile when tiles run side by side: with the kernel, it stays in a core's L2,
/// so the gather's writes are read back by the product from cache instead of from memory.
const TILE_BYTES: usize = 1 << 20;
/// The largest flattened kernel that tiles share from cache: above it (the UNet's wide layers),
/// each tile would stream the kernel from memory again, so one product over many columns wins.
const SHARED_KERNEL_BYTES: usize = 1 << 20;

impl Plan {
    /// Pure so the choice can be tested: `patch_rows` = k·k·c_in (+1 for the bias row),
    /// `positions` = output h·w, `threads` = the rayon pool's size.
    fn new(c_out: usize, patch_rows: usize, positions: usize, threads: usize) -> Self {
        let row_bytes = patch_rows * std::mem::size_of::<f32>();
        let positions = positions.max(1);
        if c_out * row_bytes > SHARED_KERNEL_BYTES {
            return Self { cols: (PATCH_ELEMENTS / patch_rows).max(1).min(positions), tiles_in_parallel: false };
        }
        // A whole number of tiles per thread, all about the same size: the UNet's small levels
        // (1,024 or 256 positions) would otherwise make, say, three tiles for two threads.
        let threads = threads.max(1);
        let largest = (TILE_BYTES / row_bytes).max(MIN_TILE_COLS);
        let tiles = positions.div_ceil(largest).div_ceil(threads) * threads;
        // Whole SIMD rows: gemm copies (packs) the patch tile first when its length is not a
        // multiple of 16 f32.
        let cols = positions.div_ceil(tiles).next_multiple_of(16).max(MIN_TILE_COLS).min(positions);
        Self { cols, tiles_in_parallel: true }
    }
}

/// Fewer output positions per product than this and gemm's fixed costs take over.
const MIN_TILE_COLS: usize = 16;

/// Where a patch row's values come from: one image [c, h, w] and the convolution's geometry.
struct Gather<'a> {
    image: &'a [f32],
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    pad: usize,
    ow: usize,
}

impl Gather<'_> {
    /// Row `r` of the patch matrix for output positions `first..first + dst.len()` (flattened
    /// over rows of `ow`): input channel r % c shifted by tap r / c, zero outside the image;
    /// r = k·k·c is the ones row that multiplies the bias column.
    fn row(&self, r: usize, first: usize, dst: &mut [f32]) {
        let (c, h, w, k, pad, ow) = (self.c, self.h, self.w, self.k, self.pad, self.ow);
        if r == k * k * c {
            dst.fill(1.0);
            return;
        }
        let (tap, ci) = (r / c, r % c);
        let (kh, kw) = (tap / k, tap % k);
        // Output columns whose input column j + kw − pad lies inside the image.
        let col_lo = pad.saturating_sub(kw).min(ow);
        let col_hi = (w + pad).saturating_sub(kw).min(ow).max(col_lo);
        let channel = &self.image[ci * h * w..(ci + 1) * h * w];
        let (mut p, mut dst) = (first, dst);
        while !dst.is_empty() {
            let (y, x0) = (p / ow, p % ow);
            let len = (ow - x0).min(dst.len());
            let (seg, rest) = dst.split_at_mut(len);
            match (y + kh).checked_sub(pad).filter(|&iy| iy < h) {
                None => seg.fill(0.0),
                Some(iy) => {
                    let (a, b) = (col_lo.clamp(x0, x0 + len), col_hi.clamp(x0, x0 + len));
                    let b = b.max(a);
                    let src = &channel[iy * w..(iy + 1) * w];
                    seg[..a - x0].fill(0.0);
                    seg[a - x0..b - x0].copy_from_slice(&src[a + kw - pad..b + kw - pad]);
                    seg[b - x0..].fill(0.0);
                }
            }
            p += len;
            dst = rest;
        }
    }
}

impl CustomOp2 for PatchConv {
    fn name(&self) -> &'static str {
        "conv2d-patches"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x_storage, x_layout, "conv input")?;
        let weight = contiguous_f32(w_storage, w_layout, "conv weight")?;
        let (b, c, h, w) = x_layout.shape().dims4()?;
        let (k, pad, c_out) = (self.k, self.padding, self.c_out);
        let (oh, ow) = ((h + 2 * pad + 1).saturating_sub(k), (w + 2 * pad + 1).saturating_sub(k));
        let patch_rows = k * k * c + usize::from(self.ones_row);
        if weight.len() != c_out * patch_rows {
            candle_core::bail!("conv weight has {} values, expected {c_out}×{patch_rows}", weight.len());
        }
        let positions = oh * ow;
        let mut out = vec![0f32; b * c_out * positions];
        if positions == 0 || c_out == 0 {
            return Ok((CpuStorage::F32(out), Shape::from((b, c_out, oh, ow))));
        }
        let plan = Plan::new(c_out, patch_rows, positions, rayon::current_num_threads());
        let tiles_per_image = positions.div_ceil(plan.cols);
        // Tiles write disjoint output positions (in every channel's plane).
        let dst = SharedOut::new(&mut out);
        let tile = |t: usize, patches: &mut Vec<f32>, threads: usize| {
            let (img, first) = (t / tiles_per_image, (t % tiles_per_image) * plan.cols);
            let cols = plan.cols.min(positions - first);
            let gather = Gather { image: &x[img * c * h * w..(img + 1) * c * h * w], c, h, w, k, pad, ow };
            patches.resize(patch_rows * cols, 0.0);
            let rows = &mut patches[..patch_rows * cols];
            if threads > 1 {
                rows.par_chunks_mut(cols).enumerate().for_each(|(r, row)| gather.row(r, first, row));
            } else {
                rows.chunks_exact_mut(cols).enumerate().for_each(|(r, row)| gather.row(r, first, row));
            }
            let offset = img * c_out * positions + first;
            let shape = Product { m: c_out, n: cols, k: patch_rows, offset, dst_rs: positions, scale: 1.0 };
            let (lhs, rhs) = (Operand::row_major(weight, patch_rows), Operand::row_major(rows, cols));
            // SAFETY: tile `t` writes output positions [first, first + cols) of image `img` in
            // every channel's plane, and tiles cover disjoint (image, position) ranges, so no two
            // tiles (run in parallel or not) write the same element; nothing reads `out` until
            // every tile is done.
            #[allow(unsafe_code)]
            unsafe {
                product_shared(&dst, shape, lhs, rhs, threads)
            }
        };
        let tiles = b * tiles_per_image;
        if plan.tiles_in_parallel {
            (0..tiles).into_par_iter().try_for_each_init(Vec::new, |patches, t| tile(t, patches, 1))?;
        } else {
            let mut patches = Vec::new();
            (0..tiles).try_for_each(|t| tile(t, &mut patches, rayon::current_num_threads()))?;
        }
        Ok((CpuStorage::F32(out), Shape::from((b, c_out, oh, ow))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

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

    /// Max |a − b| between our convolution and candle's on the same input and weights.
    fn max_diff_to_candle(x: &Tensor, kernel: Tensor, bias: Option<Tensor>) -> f32 {
        let cfg = Conv2dConfig { padding: 1, ..Default::default() };
        let reference = candle_nn::Conv2d::new(kernel.clone(), bias.clone(), cfg).forward(x).unwrap();
        let ours = Conv2d::from_weights(kernel, bias, 1).unwrap().forward(x).unwrap();
        assert_eq!(ours.dims(), reference.dims());
        (ours - reference).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn tiles_that_cross_rows_and_images_give_candles_result() {
        // 64 channels: 577 patch rows, at most 1 MiB / 2,308 B = 454 positions per tile, so
        // tiles start mid-row; batch 2.
        let dev = Device::Cpu;
        // 16,640 positions / 454 per tile = 37 tiles, 38 for two threads: 438 positions each,
        // rounded up to 448 (whole 16-lane rows).
        assert_eq!(Plan::new(2, 577, 130 * 128, 2), Plan { cols: 448, tiles_in_parallel: true });
        let x = Tensor::randn(0f32, 1., (2, 64, 130, 128), &dev).unwrap();
        let kernel = Tensor::randn(0f32, 0.1, (2, 64, 3, 3), &dev).unwrap();
        let bias = Tensor::randn(0f32, 0.1, 2, &dev).unwrap();
        let diff = max_diff_to_candle(&x, kernel, Some(bias));
        assert!(diff < 1e-3, "differs by {diff}");
    }

    #[test]
    fn wide_kernels_take_one_product_over_all_threads() {
        // 512 × 577 f32 = 1.18 MB of kernel: above SHARED_KERNEL_BYTES, one tile of all 12·10 positions.
        assert_eq!(Plan::new(512, 577, 120, 2), Plan { cols: 120, tiles_in_parallel: false });
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (1, 64, 12, 10), &dev).unwrap();
        let kernel = Tensor::randn(0f32, 0.1, (512, 64, 3, 3), &dev).unwrap();
        let bias = Tensor::randn(0f32, 0.1, 512, &dev).unwrap();
        let diff = max_diff_to_candle(&x, kernel, Some(bias));
        assert!(diff < 1e-3, "differs by {diff}");
    }

    #[test]
    fn plan_bounds_tiles() {
        // A wide kernel over many positions: tiles of PATCH_ELEMENTS / patch_rows positions.
        let wide = Plan::new(1280, 11521, 64 * 64, 2);
        assert_eq!(wide, Plan { cols: PATCH_ELEMENTS / 11521, tiles_in_parallel: false });
        // The UNet's 128-channel level at 16²: 227 positions fit a tile; two even tiles, not 227 + 29.
        assert_eq!(Plan::new(128, 1153, 256, 2), Plan { cols: 128, tiles_in_parallel: true });
        // 64 channels at 32²: 1,024 / 454 = 3 tiles → 4 for two threads.
        assert_eq!(Plan::new(64, 577, 1024, 2), Plan { cols: 256, tiles_in_parallel: true });
        // Never below MIN_TILE_COLS columns for many threads, never more than the positions.
        assert_eq!(Plan::new(64, 577, 100, 16), Plan { cols: 16, tiles_in_parallel: true });
        assert_eq!(Plan::new(4, 37, 1, 2), Plan { cols: 1, tiles_in_parallel: true });
        assert_eq!(Plan::new(4, 37, 0, 2).cols, 1);
    }
}
