//! Scaled dot-product attention on the CPU, one block of query rows at a time.
//!
//! As candle ops, softmax(q·kᵀ·scale)·v materialises the whole score matrix per head (at 1,024
//! tokens, 4 MiB per head; at the VAE's 128² latent of a 1024² image it would be 1 GiB), runs
//! the softmax with libm's `expf` (a call per element; 15 % of a tiny-model profile at 512²),
//! and hands each matmul to the thread pool separately. Here each task takes one head and a block
//! of query rows: scores for the block (a gemm into a buffer that stays in the core's cache), a
//! softmax over each row with the vectorised [`crate::fast_math::exp`], and the block's output
//! rows (a second gemm) — the tasks spread over the rayon threads, like PyTorch's CPU
//! flash-attention kernel. Contiguous f32 CPU tensors only; anything else takes candle's ops.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::fast_math::exp;
use crate::matmul::{Operand, Product, product};
use crate::util::contiguous_f32;

/// softmax(q·kᵀ·scale)·v over the last two dimensions: q [.., n, d], k and v [.., m, d] with
/// the same leading dimensions (batch · heads) → [.., n, d].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    let fused = q.device().is_cpu()
        && [q, k, v].iter().all(|t| t.dtype() == DType::F32 && t.is_contiguous() && t.rank() >= 2)
        && crate::util::own_kernels();
    if fused {
        return q.apply_op3_no_bwd(k, v, &Attention { scale: scale as f32 });
    }
    let dtype = q.dtype();
    // q·kᵀ in the model dtype (tensor cores on GPUs; the matmul accumulates in f32), the
    // softmax's sums in f32, as diffusers' SDPA does.
    let w = (q * scale)?.matmul(&k.t()?)?;
    if w.device().is_cuda() {
        // candle's CUDA softmax sums f16/bf16 rows in f32 itself. Casting the score matrix to
        // f32 and back cost two more passes over it (the largest tensor of a UNet step): in an
        // H100 profile at 1024² the two casts and the f32 softmax took 30 % of the GPU time.
        return candle_nn::ops::softmax_last_dim(&w)?.matmul(v);
    }
    candle_nn::ops::softmax_last_dim(&w.to_dtype(DType::F32)?)?.to_dtype(dtype)?.matmul(v)
}

struct Attention {
    scale: f32,
}

/// Score-block size in f32 (256 KiB): a block of query rows × all keys stays in L2.
const BLOCK_SCORES: usize = 64 << 10;

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention-blocks"
    }

    fn cpu_fwd(
        &self,
        q_storage: &CpuStorage,
        q_layout: &Layout,
        k_storage: &CpuStorage,
        k_layout: &Layout,
        v_storage: &CpuStorage,
        v_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            contiguous_f32(q_storage, q_layout, "attention query")?,
            contiguous_f32(k_storage, k_layout, "attention key")?,
            contiguous_f32(v_storage, v_layout, "attention value")?,
        );
        let (q_dims, k_dims, v_dims) = (q_layout.dims(), k_layout.dims(), v_layout.dims());
        let rank = q_dims.len();
        let (n, d) = (q_dims[rank - 2], q_dims[rank - 1]);
        let m = k_dims[k_dims.len() - 2];
        if k_dims.len() != rank || k_dims != v_dims || k_dims[..rank - 2] != q_dims[..rank - 2] || k_dims[rank - 1] != d
        {
            candle_core::bail!("attention: query {q_dims:?}, key {k_dims:?} and value {v_dims:?} do not match");
        }
        let heads: usize = q_dims[..rank - 2].iter().product();
        let mut out = vec![0f32; heads * n * d];
        if heads == 0 || n == 0 || d == 0 {
            return Ok((CpuStorage::F32(out), q_layout.shape().clone()));
        }
        // Query rows per block: the score block within BLOCK_SCORES, and at least one block per
        // thread (but not below 16 rows, where gemm's fixed costs take over).
        let by_cache = (BLOCK_SCORES / m.max(1)).max(1);
        let by_threads = n.div_ceil(rayon::current_num_threads()).max(16);
        let rows = by_cache.min(by_threads).clamp(1, n);
        let scale = self.scale;
        let arch = pulp::Arch::new();
        // Each task writes only its own block of output rows: the output cut into one disjoint
        // `&mut` chunk per (head, block of query rows).
        let blocks: Vec<(usize, usize, &mut [f32])> = out
            .chunks_mut(n * d)
            .enumerate()
            .flat_map(|(head, head_out)| {
                head_out.chunks_mut(rows * d).enumerate().map(move |(block, dst)| (head, block * rows, dst))
            })
            .collect();
        blocks.into_par_iter().try_for_each_init(Vec::new, |scores: &mut Vec<f32>, (head, first, dst)| {
            let count = rows.min(n - first);
            let q_block = &q[(head * n + first) * d..(head * n + first + count) * d];
            let (k_head, v_head) = (&k[head * m * d..(head + 1) * m * d], &v[head * m * d..(head + 1) * m * d]);
            scores.resize(count * m, 0.0);
            // scores = scale · q_block × kᵀ (kᵀ: k read column-major).
            let shape = Product { m: count, n: m, k: d, offset: 0, dst_rs: m, scale };
            product(scores, shape, Operand::row_major(q_block, d), Operand { data: k_head, rs: 1, cs: d }, 1)?;
            arch.dispatch(SoftmaxRows { scores, width: m });
            let shape = Product { m: count, n: d, k: m, offset: 0, dst_rs: d, scale: 1.0 };
            product(dst, shape, Operand::row_major(scores, m), Operand::row_major(v_head, d), 1)
        })?;
        Ok((CpuStorage::F32(out), q_layout.shape().clone()))
    }
}

/// Softmax of each row in place: subtract the row's max, exponentiate, divide by the sum.
struct SoftmaxRows<'a> {
    scores: &'a mut [f32],
    width: usize,
}

impl pulp::WithSimd for SoftmaxRows<'_> {
    type Output = ();

    // Inlined into pulp's per-CPU-feature copies, so the loops compile to the widest vectors.
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        const LANES: usize = 16;
        for row in self.scores.chunks_exact_mut(self.width) {
            // Lane-wise max and sum: a single accumulator would keep the loops scalar.
            let mut lanes = [f32::NEG_INFINITY; LANES];
            let mut chunks = row.chunks_exact(LANES);
            for chunk in &mut chunks {
                for (l, &x) in lanes.iter_mut().zip(chunk) {
                    *l = if x > *l { x } else { *l };
                }
            }
            let max =
                chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a });
            let mut sums = [0f32; LANES];
            let mut chunks = row.chunks_exact_mut(LANES);
            for chunk in &mut chunks {
                for (s, x) in sums.iter_mut().zip(chunk) {
                    *x = exp(*x - max);
                    *s += *x;
                }
            }
            let mut sum: f32 = 0.0;
            for x in chunks.into_remainder() {
                *x = exp(*x - max);
                sum += *x;
            }
            let inv = 1.0 / (sum + sums.iter().sum::<f32>());
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn candle_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
        let w = (q * scale).unwrap().matmul(&k.t().unwrap()).unwrap();
        candle_nn::ops::softmax_last_dim(&w).unwrap().matmul(v).unwrap()
    }

    #[test]
    fn equals_candles_matmul_softmax_matmul() {
        let dev = Device::Cpu;
        // Self-attention over many blocks, cross-attention with 77 keys, one query, odd sizes.
        for (b, h, n, m, d) in
            [(1usize, 2usize, 1024usize, 1024usize, 16usize), (2, 3, 50, 77, 8), (1, 1, 1, 5, 3), (1, 4, 33, 7, 64)]
        {
            let q = (Tensor::randn(0f32, 1., (b, h, n, d), &dev).unwrap() * 2.).unwrap();
            let k = (Tensor::randn(0f32, 1., (b, h, m, d), &dev).unwrap() * 2.).unwrap();
            let v = Tensor::randn(0f32, 1., (b, h, m, d), &dev).unwrap();
            let scale = 1.0 / (d as f64).sqrt();
            let ours = attention(&q, &k, &v, scale).unwrap();
            let reference = candle_attention(&q, &k, &v, scale);
            assert_eq!(ours.dims(), reference.dims());
            let diff = (ours - reference).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            let diff = diff.to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "{b}×{h}, {n} queries, {m} keys, dim {d}: differs by {diff}");
        }
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 2, 4, 8), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 2, 5, 8), DType::F32, &dev).unwrap();
        let v = Tensor::zeros((1, 2, 6, 8), DType::F32, &dev).unwrap();
        let err = attention(&q, &k, &v, 1.0).unwrap_err();
        assert!(err.to_string().contains("do not match"), "{err}");
    }
}
