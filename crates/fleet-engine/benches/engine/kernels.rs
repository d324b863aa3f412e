//! `-- --kernels`: the engine's CPU kernels against candle's ops and a plain matrix product of the
//! same arithmetic, at the VAE decoder's shapes (printed numbers, not timed tests).

use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use fleet_engine::conv::Conv2d;
use fleet_engine::norm::GroupNorm;

/// Mean seconds of `f` over enough runs to take about half a second, after one warm-up.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let (start, mut n) = (Instant::now(), 0u32);
    while n < 3 || start.elapsed().as_secs_f64() < 0.5 {
        f();
        n += 1;
    }
    start.elapsed().as_secs_f64() / f64::from(n)
}

pub fn kernels_bench() {
    let dev = Device::Cpu;
    let threads = candle_core::utils::get_num_threads();
    println!("CPU kernels, f32, batch 1, {threads} matmul threads (RAYON_NUM_THREADS); ms per call, GFLOP/s");
    println!("{:<24} {:>16} {:>16} {:>18}", "3x3 conv c→c, h×w", "engine", "candle", "matmul alone");
    for (c, hw) in [(16usize, 256usize), (32, 256), (64, 128), (128, 64), (128, 32), (256, 16)] {
        let x = Tensor::randn(0f32, 1., (1, c, hw, hw), &dev).expect("x");
        let w = Tensor::randn(0f32, 0.05, (c, c, 3, 3), &dev).expect("w");
        let b = Tensor::randn(0f32, 0.05, c, &dev).expect("b");
        let ours = Conv2d::from_weights(w.clone(), Some(b.clone()), 1).expect("conv");
        let theirs = candle_nn::Conv2d::new(w, Some(b), Conv2dConfig { padding: 1, ..Default::default() });
        let lhs = Tensor::randn(0f32, 1., (c, 9 * c), &dev).expect("lhs");
        let rhs = Tensor::randn(0f32, 1., (9 * c, hw * hw), &dev).expect("rhs");
        let flop = 2.0 * 9.0 * (c * c * hw * hw) as f64;
        let t_ours = time(|| drop(ours.forward(&x).expect("conv")));
        let t_theirs = time(|| drop(theirs.forward(&x).expect("conv")));
        let t_mm = time(|| drop(lhs.matmul(&rhs).expect("matmul")));
        let cell = |t: f64| format!("{:>7.2} {:>6.0}", t * 1e3, flop / t / 1e9);
        println!("{:<24} {:>16} {:>16} {:>18}", format!("{c} ch, {hw}²"), cell(t_ours), cell(t_theirs), cell(t_mm));
    }
    println!("{:<24} {:>16} {:>16}", "GroupNorm(32) + SiLU", "engine", "candle");
    for (c, hw) in [(32usize, 256usize), (64, 128), (128, 64)] {
        let x = Tensor::randn(0f32, 1., (1, c, hw, hw), &dev).expect("x");
        let vb = VarBuilder::zeros(DType::F32, &dev);
        let ours = GroupNorm::new(vb, 32, c, 1e-6).expect("norm");
        let (weight, bias) =
            (Tensor::ones(c, DType::F32, &dev).expect("w"), Tensor::zeros(c, DType::F32, &dev).expect("b"));
        let theirs = candle_nn::GroupNorm::new(weight, bias, c, 32, 1e-6).expect("norm");
        let t_ours = time(|| drop(ours.forward_silu(&x).expect("norm")));
        let t_theirs = time(|| drop(theirs.forward(&x).and_then(|y| y.silu()).expect("norm")));
        println!("{:<24} {:>13.2} ms {:>13.2} ms", format!("{c} ch, {hw}²"), t_ours * 1e3, t_theirs * 1e3);
    }
}
