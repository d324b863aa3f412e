//! Branch-free f32 functions for the engine's CPU kernels, written so that loops over them
//! vectorise (libm's `expf` and `erff` are a call per element). Inline everywhere: the kernels
//! run them inside pulp's per-CPU-feature copies, where they compile to AVX-512 or AVX2 + FMA.

/// e^x to within 3e-7 relative (2–3 ulp), branch-free so that the SiLU loop vectorises (libm's `expf` is a
/// call per element). Cody–Waite reduction x = n·ln 2 + r with |r| ≤ ln 2 / 2 (ln 2 split in a
/// short high part, so n·LN2_HI is exact), e^r by its Taylor polynomial to degree 6 (remainder
/// < 1.2e-7), and 2^n put straight into the exponent bits.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // 1.5·2^23: adding and subtracting it rounds to the nearest integer (vectorises, unlike round()).
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // At 1.5·2^23 one ulp is 1, so `shifted`'s bits are ROUND's plus n: the integer n without a
    // float → int cast (Rust's saturating `as` is a scalar conversion per lane). n is within
    // [-126, 127] after the clamp; wrapping ops keep the test build's overflow checks (a branch
    // per element) out of this loop, so it vectorises there too.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    f32::from_bits(n_bits.wrapping_add(127).wrapping_shl(23)) * p
}

/// GELU with the exact erf (`torch.nn.functional.gelu`, approximate = "none"):
/// x·Φ(x) = x·(1 − ½·erfc(x/√2)) for x ≥ 0 and x·½·erfc(|x|/√2) below, erfc by the Chebyshev
/// fit of Numerical Recipes (§6.2, `erfcc`: relative error < 1.2e-7 everywhere) on [`exp`].
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204 + t * (1.488_515_9 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let half_erfc = 0.5 * t * exp(-z * z + poly);
    x * if x >= 0.0 { 1.0 - half_erfc } else { half_erfc }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_3e_7_of_libm_over_the_whole_range() {
        let (mut worst, mut at) = (0f32, 0f32);
        for i in -86_900..=87_900 {
            let x = i as f32 * 1e-3;
            let (ours, libm) = (exp(x), x.exp());
            let error = ((ours - libm) / libm).abs();
            if error > worst {
                (worst, at) = (error, x);
            }
        }
        assert!(worst < 3e-7, "worst relative error {worst} at {at}");
        // Beyond the clamp: finite, and the SiLU limits hold.
        assert!(exp(-200.0) > 0.0 && exp(-200.0) < 1e-37 && exp(200.0).is_finite());
        assert_eq!(100.0 / (1.0 + exp(-100.0)), 100.0);
    }

    #[test]
    fn gelu_is_within_4e_7_of_candles_exact_gelu() {
        let xs: Vec<f32> = (-12_000..=12_000).map(|i| i as f32 * 1e-3).collect();
        let reference = candle_core::Tensor::new(xs.as_slice(), &candle_core::Device::Cpu).unwrap();
        let reference = reference.gelu_erf().unwrap().to_vec1::<f32>().unwrap();
        let mut worst = (0f32, 0f32);
        for (&x, &r) in xs.iter().zip(&reference) {
            // Relative to |x| (the scale of GELU's output), so values near the zero at x = 0 and
            // the vanishing left tail are judged by what they add to a layer's output.
            let error = (gelu(x) - r).abs() / x.abs().max(1.0);
            if error > worst.0 {
                worst = (error, x);
            }
        }
        assert!(worst.0 < 4e-7, "worst error {} at {}", worst.0, worst.1);
        assert_eq!(gelu(0.0), 0.0);
        // The far left tail is e^-87 (the exp clamp) times a small factor: zero for any sum.
        assert!(gelu(-100.0).abs() < 1e-35);
        assert_eq!(gelu(100.0), 100.0);
    }
}
