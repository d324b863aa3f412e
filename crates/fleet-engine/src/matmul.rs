//! One checked entry into gemm for the engine's CPU kernels (the convolution's patch tiles, the
//! fused attention's blocks): operands as slices with row and column strides, bounds checked
//! before the unsafe call. [`product`] writes a destination it borrows exclusively (safe);
//! [`product_shared`] one that threads share, writing disjoint elements (`unsafe`: the caller
//! vouches for the disjointness, which a strided tile cannot express as a `&mut` chunk).

use std::marker::PhantomData;

/// A strided view of an f32 matrix: element (i, j) is `data[i·rs + j·cs]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Operand<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Operand<'a> {
    /// A contiguous row-major matrix with `cols` columns.
    pub fn row_major(data: &'a [f32], cols: usize) -> Self {
        Self { data, rs: cols, cs: 1 }
    }

    /// Whether a rows × cols matrix with these strides lies inside the slice.
    fn holds(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// An output buffer that several threads write at once, each its own elements (tiles of
/// output positions in every channel's plane, which no `chunks_mut` can hand out).
///
/// Writing through it takes [`product_shared`], an `unsafe fn` whose caller promises that no
/// two concurrent products touch the same elements.
pub(crate) struct SharedOut<'a> {
    ptr: *mut f32,
    len: usize,
    _buffer: PhantomData<&'a mut [f32]>,
}

impl<'a> SharedOut<'a> {
    pub fn new(buffer: &'a mut [f32]) -> Self {
        Self { ptr: buffer.as_mut_ptr(), len: buffer.len(), _buffer: PhantomData }
    }
}

// SAFETY: the pointer comes from a `&mut [f32]` borrowed for 'a, so the buffer outlives every
// use; the only write through a shared `SharedOut` is `product_shared`, whose contract rules out
// two threads writing the same elements.
#[allow(unsafe_code)]
unsafe impl Sync for SharedOut<'_> {}

/// The shape of dst[m, n] = scale · lhs[m, k] × rhs[k, n]; destination rows `dst_rs` apart
/// starting at `offset`, columns adjacent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Product {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub offset: usize,
    pub dst_rs: usize,
    pub scale: f32,
}

/// dst = scale · lhs × rhs (dst's previous values are not read), on `threads` threads, into a
/// destination this call borrows exclusively.
pub(crate) fn product(
    dst: &mut [f32],
    p: Product,
    lhs: Operand,
    rhs: Operand,
    threads: usize,
) -> candle_core::Result<()> {
    let (ptr, len) = (dst.as_mut_ptr(), dst.len());
    // SAFETY: `dst` is borrowed mutably for the whole call, so no other thread can touch it.
    #[allow(unsafe_code)]
    unsafe {
        product_raw(ptr, len, p, lhs, rhs, threads)
    }
}

/// dst = scale · lhs × rhs (dst's previous values are not read), on `threads` threads, into a
/// destination that other threads write at the same time.
///
/// # Safety
///
/// While this call runs, no other thread may read or write the m × n destination block it
/// writes (rows `dst_rs` apart from `offset`, `n` elements each): concurrent calls on one
/// `SharedOut` must write disjoint elements. Bounds are checked here, not by the caller.
#[allow(unsafe_code)]
pub(crate) unsafe fn product_shared(
    dst: &SharedOut,
    p: Product,
    lhs: Operand,
    rhs: Operand,
    threads: usize,
) -> candle_core::Result<()> {
    // SAFETY: the pointer and length describe a live `&mut [f32]` (see `SharedOut`); the
    // caller guarantees that no other thread touches the block written.
    unsafe { product_raw(dst.ptr, dst.len, p, lhs, rhs, threads) }
}

/// The checked gemm call behind both entries.
///
/// # Safety
///
/// `ptr` points to `len` writable f32 that outlive the call, and no other thread reads or
/// writes the destination block during it.
#[allow(unsafe_code)]
unsafe fn product_raw(
    ptr: *mut f32,
    len: usize,
    p: Product,
    lhs: Operand,
    rhs: Operand,
    threads: usize,
) -> candle_core::Result<()> {
    let end = p.m.checked_sub(1).map_or(0, |rows| p.offset + rows * p.dst_rs + p.n);
    if !lhs.holds(p.m, p.k) || !rhs.holds(p.k, p.n) || end > len || (p.m > 1 && p.n > p.dst_rs) {
        candle_core::bail!("matrix product [{}×{}]·[{}×{}] does not fit its buffers", p.m, p.k, p.k, p.n);
    }
    if p.m == 0 || p.n == 0 {
        return Ok(());
    }
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: checked just above: the m × n destination block (rows `dst_rs` apart from
    // `offset`) lies inside the buffer, and both operands' last elements inside their slices.
    // `read_dst` is false, so the destination's old values are not read; the caller guarantees
    // that the buffer is live and the block is this call's alone.
    unsafe {
        gemm::gemm(
            p.m,
            p.n,
            p.k,
            ptr.add(p.offset),
            1,
            p.dst_rs as isize,
            false,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            0.0,
            p.scale,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_operands_and_offset_destination() {
        // lhs 2×3 row-major, rhs 3×2 given transposed (column-major), dst rows 4 apart at offset 1.
        let lhs = [1., 2., 3., 4., 5., 6.];
        let rhs_t = [1., 0., 1., 0., 1., 1.]; // rhs = [[1,0],[0,1],[1,1]]
        let mut out = vec![-1f32; 9];
        let p = Product { m: 2, n: 2, k: 3, offset: 1, dst_rs: 4, scale: 2.0 };
        product(&mut out, p, Operand::row_major(&lhs, 3), Operand { data: &rhs_t, rs: 1, cs: 3 }, 1).unwrap();
        assert_eq!(out, vec![-1., 8., 10., -1., -1., 20., 22., -1., -1.]);
    }

    #[test]
    fn out_of_bounds_products_are_errors() {
        let mut out = vec![0f32; 3];
        let a = [1f32; 4];
        let p = Product { m: 2, n: 2, k: 2, offset: 0, dst_rs: 2, scale: 1.0 };
        let err = product(&mut out, p, Operand::row_major(&a, 2), Operand::row_major(&a, 2), 1).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
        let dst = SharedOut::new(&mut out);
        // SAFETY: one thread, one product: nothing else touches the buffer.
        #[allow(unsafe_code)]
        let err = unsafe { product_shared(&dst, p, Operand::row_major(&a, 2), Operand::row_major(&a, 2), 1) };
        assert!(err.unwrap_err().to_string().contains("does not fit"));
    }
}
