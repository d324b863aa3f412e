//! GroupNorm, optionally followed by SiLU, in one pass over the activations on the CPU.
//!
//! candle 0.11's `GroupNorm` is a chain of tensor ops (sum, broadcast subtract, square, sum,
//! broadcast divide, reshape, broadcast multiply, broadcast add; then SiLU as another op), each a
//! pass over the whole activation with its own allocation. At full image resolution in the VAE
//! decoder and at the UNet's first level these passes cost about as much as the convolutions
//! around them. Here each (image, group) slice is read twice for its mean and variance and written
//! once with the affine transform and the SiLU applied, the groups spread over the rayon threads.
//!
//! Contiguous f32 tensors on the CPU take this path, and with the `cuda` feature contiguous f32,
//! f16 and bf16 tensors on a CUDA GPU (three kernels, see [`crate::group_norm_cuda`]); anything
//! else uses candle's ops, which compute the same thing.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Module, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

use crate::fast_math::exp;
use crate::util::contiguous_f32;

/// `torch.nn.GroupNorm(groups, channels, eps)` with its `weight` and `bias`.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
    /// candle's GroupNorm over the same weights, for inputs the fused kernel does not take.
    fallback: candle_nn::GroupNorm,
}

impl GroupNorm {
    pub fn new(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> candle_core::Result<Self> {
        // The same names and init hints as candle_nn::group_norm (random models stay identical).
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.))?;
        let fallback = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?;
        Ok(Self { weight, bias, groups, eps, fallback })
    }

    /// GroupNorm followed by SiLU (`F.silu(norm(x))`), the pattern of every SDXL resnet.
    pub fn forward_silu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.apply(x, true)
    }

    fn apply(&self, x: &Tensor, silu: bool) -> candle_core::Result<Tensor> {
        if self.fused(x) {
            let op = FusedGroupNorm { groups: self.groups, eps: self.eps, silu };
            return x.apply_op3_no_bwd(&self.weight, &self.bias, &op);
        }
        let y = self.fallback.forward(x)?;
        if silu { y.silu() } else { Ok(y) }
    }

    fn fused(&self, x: &Tensor) -> bool {
        let kernel_for_dtype = match x.device() {
            candle_core::Device::Cpu => x.dtype() == DType::F32,
            candle_core::Device::Cuda(_) => {
                cfg!(feature = "cuda")
                    && crate::util::own_cuda_kernel("norm")
                    && matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
            }
            _ => false,
        };
        crate::util::own_kernels()
            && kernel_for_dtype
            && self.weight.dtype() == x.dtype()
            && x.rank() >= 3
            && x.is_contiguous()
            && x.dim(1).is_ok_and(|c| c % self.groups == 0)
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.apply(x, false)
    }
}

/// The kernel: x [B, C, …], weight and bias [C].
struct FusedGroupNorm {
    groups: usize,
    eps: f64,
    silu: bool,
}

impl CustomOp3 for FusedGroupNorm {
    fn name(&self) -> &'static str {
        "fused-group-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x, x_layout, "group norm input")?;
        let w = contiguous_f32(w, w_layout, "group norm weight")?;
        let b = contiguous_f32(b, b_layout, "group norm bias")?;
        let dims = x_layout.dims();
        let channels = dims[1];
        let spatial: usize = dims[2..].iter().product();
        if w.len() != channels || b.len() != channels || !channels.is_multiple_of(self.groups) {
            candle_core::bail!(
                "group norm: {channels} channels, {} groups, weight {}, bias {}",
                self.groups,
                w.len(),
                b.len()
            );
        }
        let per_group = channels / self.groups;
        let group_len = per_group * spatial;
        let mut out = vec![0f32; x.len()];
        if group_len > 0 {
            // The build targets generic x86-64 (SSE2: 4 lanes); pulp runs each group's loops
            // compiled for the CPU's widest vectors (AVX-512 or AVX2 + FMA) when it has them.
            let arch = pulp::Arch::new();
            out.par_chunks_mut(group_len).zip(x.par_chunks(group_len)).enumerate().for_each(|(index, (out, x))| {
                let first_channel = (index % self.groups) * per_group;
                let (weight, bias) = (&w[first_channel..][..per_group], &b[first_channel..][..per_group]);
                arch.dispatch(NormGroup { x, out, weight, bias, spatial, eps: self.eps, silu: self.silu });
            });
        }
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        w: &candle_core::CudaStorage,
        w_layout: &Layout,
        b: &candle_core::CudaStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let params = crate::group_norm_cuda::Params { groups: self.groups, eps: self.eps, silu: self.silu };
        crate::group_norm_cuda::forward(params, (x, x_layout), (w, w_layout), (b, b_layout))
    }
}

/// One (image, group) slice: normalised, scaled per channel, SiLU when asked.
struct NormGroup<'a> {
    x: &'a [f32],
    out: &'a mut [f32],
    weight: &'a [f32],
    bias: &'a [f32],
    spatial: usize,
    eps: f64,
    silu: bool,
}

impl pulp::WithSimd for NormGroup<'_> {
    type Output = ();

    // Inlined into pulp's per-CPU-feature copies; everything it calls is `inline(always)` too.
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let (mean, var) = mean_and_variance(self.x);
        let inv_std = 1.0 / (var + self.eps).sqrt();
        let rows = self.out.chunks_mut(self.spatial).zip(self.x.chunks(self.spatial));
        for ((out, x), (&w, &b)) in rows.zip(self.weight.iter().zip(self.bias)) {
            let scale = (inv_std * f64::from(w)) as f32;
            let shift = (f64::from(b) - mean * inv_std * f64::from(w)) as f32;
            affine(out, x, scale, shift, self.silu);
        }
    }
}

/// out = x·scale + shift, then SiLU when asked.
#[inline(always)]
fn affine(out: &mut [f32], x: &[f32], scale: f32, shift: f32, silu: bool) {
    if silu {
        out.iter_mut().zip(x).for_each(|(o, &v)| {
            let y = v * scale + shift;
            *o = y / (1.0 + exp(-y));
        });
    } else {
        out.iter_mut().zip(x).for_each(|(o, &v)| *o = v * scale + shift);
    }
}

/// Two passes, as torch and candle do (mean, then the mean of squared deviations); f32 partial
/// sums over 16 lanes (vectorised), added up in f64.
#[inline(always)]
fn mean_and_variance(x: &[f32]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = lane_sum(x, |v| v) / n;
    let m = mean as f32;
    let var = lane_sum(x, |v| (v - m) * (v - m)) / n;
    (mean, var)
}

#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    const LANES: usize = 16;
    // Each block's lane sums are added in f64, so long rows (a 1024² channel) keep their precision.
    const BLOCK: usize = 4096;
    let mut total = 0f64;
    for block in x.chunks(BLOCK) {
        let mut acc = [0f32; LANES];
        let mut chunks = block.chunks_exact(LANES);
        for chunk in &mut chunks {
            for (a, &v) in acc.iter_mut().zip(chunk) {
                *a += f(v);
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
        total += acc.iter().map(|&a| f64::from(a)).sum::<f64>() + f64::from(tail);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// How far two correct f32 implementations may differ: rounding of the inputs (a few ulp of
    /// the largest |x|) divided by the group's standard deviation. A group of two nearly equal
    /// values (the 1×1 case with random inputs) amplifies it far beyond 1e-4 now and then.
    fn rounding_bound(x: &Tensor, groups: usize, eps: f64) -> f32 {
        let b = x.dim(0).unwrap();
        let rows = x.reshape((b * groups, ())).unwrap().to_vec2::<f32>().unwrap();
        let bound = |g: &Vec<f32>| {
            let n = g.len() as f64;
            let mean = g.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let var = g.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
            let largest = g.iter().fold(0f32, |a, &v| a.max(v.abs()));
            (4.0 * f64::from(largest) * f64::from(f32::EPSILON) / (var + eps).sqrt()) as f32
        };
        rows.iter().map(bound).fold(0f32, f32::max)
    }

    #[test]
    fn equals_candles_group_norm_and_silu() {
        let dev = Device::Cpu;
        for (b, c, h, w, groups) in [(2, 8, 5, 7, 4), (1, 64, 32, 32, 32), (3, 6, 1, 1, 3), (1, 4, 9, 1, 1)] {
            // An offset and a scale, so the mean and variance matter.
            let x = ((Tensor::randn(0f32, 1., (b, c, h, w), &dev).unwrap() * 3.).unwrap() + 5.).unwrap();
            let weight = Tensor::randn(1f32, 0.5, c, &dev).unwrap();
            let bias = Tensor::randn(0f32, 0.5, c, &dev).unwrap();
            let reference = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), c, groups, 1e-6).unwrap();
            let largest_weight = weight.abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            let tolerance = 1e-4 + rounding_bound(&x, groups, 1e-6) * largest_weight;
            let vb = VarBuilder::from_tensors(
                [("weight".to_string(), weight), ("bias".to_string(), bias)].into_iter().collect(),
                DType::F32,
                &dev,
            );
            let ours = GroupNorm::new(vb, groups, c, 1e-6).unwrap();
            let expected = reference.forward(&x).unwrap();
            let diff = max_diff(&ours.forward(&x).unwrap(), &expected);
            assert!(diff < tolerance, "{b}x{c}x{h}x{w}/{groups}: norm differs by {diff} (tolerance {tolerance})");
            let diff = max_diff(&ours.forward_silu(&x).unwrap(), &expected.silu().unwrap());
            assert!(
                diff < tolerance,
                "{b}x{c}x{h}x{w}/{groups}: norm + silu differs by {diff} (tolerance {tolerance})"
            );
        }
    }

    #[test]
    fn strided_and_other_dtypes_take_candles_path_with_the_same_result() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (1, 8, 6, 4), &dev).unwrap();
        let weights = |dtype| {
            let w = Tensor::randn(1f32, 0.5, 8, &Device::Cpu).unwrap();
            let b = Tensor::randn(0f32, 0.5, 8, &Device::Cpu).unwrap();
            VarBuilder::from_tensors(
                [("weight".to_string(), w), ("bias".to_string(), b)].into_iter().collect(),
                dtype,
                &Device::Cpu,
            )
        };
        let vb = weights(DType::F32);
        let norm = GroupNorm::new(vb.clone(), 2, 8, 1e-5).unwrap();
        let transposed = x.transpose(2, 3).unwrap();
        let direct = norm.forward_silu(&transposed.contiguous().unwrap()).unwrap();
        assert!(max_diff(&norm.forward_silu(&transposed).unwrap(), &direct) < 1e-5);
        // f64 weights and input: candle's ops; the same values as the fused f32 kernel.
        let wide = GroupNorm::new(vb.set_dtype(DType::F64), 2, 8, 1e-5).unwrap();
        let via_candle = wide.forward_silu(&x.to_dtype(DType::F64).unwrap()).unwrap().to_dtype(DType::F32).unwrap();
        assert!(max_diff(&via_candle, &norm.forward_silu(&x).unwrap()) < 1e-4);
    }

    /// The CUDA kernels against the CPU kernel (itself checked against candle above) on the same
    /// values, in each dtype they take.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_kernels_match_the_cpu_kernel() {
        let gpu = Device::new_cuda(0).expect("the `cuda` feature's tests need a CUDA GPU");
        let cpu = Device::Cpu;
        // Batch 2; groups longer than one statistics chunk (4 × 20,480 values: 5 blocks each);
        // a mean 50 standard deviations from zero; a rank-3 input.
        let cases: [(&[usize], usize, f64); 4] = [
            (&[2, 64, 40, 33], 32, 0.),
            (&[1, 128, 160, 128], 32, 0.),
            (&[1, 320, 16, 16], 32, 50.),
            (&[3, 8, 5], 4, 0.),
        ];
        for (shape, groups, offset) in cases {
            let c = shape[1];
            let x = (Tensor::randn(0f32, 1., shape, &cpu).unwrap() + offset).unwrap();
            let weight = Tensor::randn(1f32, 0.5, c, &cpu).unwrap();
            let bias = Tensor::randn(0f32, 0.5, c, &cpu).unwrap();
            // f32: 1e-5 is f32 rounding; f16/bf16: their output rounding (2⁻¹¹, 2⁻⁸ relative).
            for (dtype, tolerance) in [(DType::F32, 1e-5), (DType::F16, 2e-3), (DType::BF16, 1.5e-2)] {
                let round = |t: &Tensor| t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
                let tensors = |dtype, dev: &Device| {
                    let named = [("weight".to_string(), round(&weight)), ("bias".to_string(), round(&bias))];
                    VarBuilder::from_tensors(named.into_iter().collect(), dtype, dev)
                };
                let on_cpu = GroupNorm::new(tensors(DType::F32, &cpu), groups, c, 1e-5).unwrap();
                let on_gpu = GroupNorm::new(tensors(dtype, &gpu), groups, c, 1e-5).unwrap();
                let x_gpu = x.to_dtype(dtype).unwrap().to_device(&gpu).unwrap();
                assert!(on_gpu.fused(&x_gpu), "{shape:?} {dtype:?} must take the CUDA kernels");
                let expected = on_cpu.forward(&round(&x)).unwrap();
                let error = crate::util::relative_error(&on_gpu.forward(&x_gpu).unwrap(), &expected);
                assert!(error < tolerance, "{shape:?}/{groups} {dtype:?}: norm off by {error:e}");
                let expected = on_cpu.forward_silu(&round(&x)).unwrap();
                let error = crate::util::relative_error(&on_gpu.forward_silu(&x_gpu).unwrap(), &expected);
                assert!(error < tolerance, "{shape:?}/{groups} {dtype:?}: norm + silu off by {error:e}");
            }
        }
    }
}
