//! Numerical definitions shared by the renderers (docs/spec.md#shared-numerical-rules): the
//! Q4.12 datapath's `exp`, the power of two of the fp32 lane-batched kernels, RMSNorm's factor
//! (see [`rms_factor`]) and the Q4.12 RMSNorm and attention scale.
//!
//! The Q4.12 arithmetic (docs/spec.md#q412-operations) computes its softmax in f32. For every
//! Q4.12 kernel to reproduce the scalar reference's integers bit for bit, all of them must evaluate `exp` with the same
//! sequence of IEEE operations; this is that sequence (Cody-Waite range reduction and a
//! degree-6 polynomial, every multiply and add rounded separately, no fused multiply-add). It is
//! within 2 ulp of the correctly rounded `e^x` on [-87, 0].

/// Inputs below this are clamped (e^-87 ≈ 1.6e-38, the smallest normal result kept).
pub const EXP_MIN: f32 = -87.0;
/// Inputs above this are clamped (keeps `2^n` finite).
pub const EXP_MAX: f32 = 88.0;
/// log2(e).
pub const EXP_LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two: the high part has few enough bits that `n · LN2_HI` is exact.
pub const EXP_LN2_HI: f32 = 0.693_359_4;
pub const EXP_LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes' minimax polynomial for e^r on [-ln2/2, ln2/2], coefficients as published: `1 + r + r²·(c0 + r·(c1 + r·(c2 + r·(c3 + r·(c4 + r·c5)))))`.
#[allow(clippy::excessive_precision)]
pub const EXP_POLY: [f32; 6] = [
    5.000_000_1e-1,
    1.666_666_5e-1,
    4.166_579_6e-2,
    8.333_452e-3,
    1.398_2e-3,
    1.987_569_1e-4,
];

/// The fp32 lane-batched kernels' softmax weights are powers of two (the base-e scores scaled by
/// log2(e) on the way): `2^y = 2^n · p(f)` with `n = round(y)`, `f = y - n` in [-1/2, 1/2] and
/// `p` this degree-6 polynomial (a least-squares fit of `2^f` on Chebyshev nodes with `p(0) = 1`,
/// coefficients from the constant term up), evaluated by Horner's rule with fused multiply-adds.
/// Within 1e-7 relative of `2^y` (see [`exp2_fp32`]).
// Fitted values: the linear one rounds to ln 2, the others are not Taylor's.
#[allow(clippy::excessive_precision, clippy::approx_constant)]
pub const EXP2_POLY: [f32; 7] = [
    1.0,
    0.693_147_18,
    0.240_226_48,
    0.055_503_29,
    0.009_618_374,
    0.001_339_984_8,
    0.000_153_707_03,
];

/// `2^y` as the fp32 lane-batched kernels compute it ([`exp2_rule`]), one lane in scalar code,
/// for tests. `y` in [-126, 126].
pub fn exp2_fp32(y: f32) -> f32 {
    exp2_rule(&mut Eval, y)
}

/// What the kernels that take attention's softmax in base 2 multiply the query weights by when
/// they prepare them: `1/√head_dim` (the attention's scale) times `log2(e)`, so that the scores
/// come out in base 2 and each softmax weight is a power of two (`2^(s·log2 e) = e^s`).
pub fn base2_query_scale(shape: &crate::Shape) -> f32 {
    std::f32::consts::LOG2_E / (shape.head_dim() as f32).sqrt()
}

/// The larger of two errors, NaN when either is NaN: every maximum of errors a check takes goes
/// through this, since `f64::max` drops a NaN and would let NaN results pass.
pub fn max_error(worst: f64, err: f64) -> f64 {
    if worst.is_nan() || err.is_nan() {
        f64::NAN
    } else {
        worst.max(err)
    }
}

/// Scalar f32 arithmetic, each operation rounded once: [`Eval`] computes, a renderer builds the
/// expression it emits. Rules written against it ([`rms_factor`]) are one order of operations
/// for every renderer.
pub trait F32Ops {
    type V: Clone;
    fn constant(&mut self, x: f32) -> Self::V;
    fn mul(&mut self, a: Self::V, b: Self::V) -> Self::V;
    fn add(&mut self, a: Self::V, b: Self::V) -> Self::V;
    fn div(&mut self, a: Self::V, b: Self::V) -> Self::V;
    fn sqrt(&mut self, a: Self::V) -> Self::V;
    /// `1/√a`: by default `1` divided by the root, each rounded once; a renderer whose tolerance
    /// allows may emit the hardware's approximation instead (the lane-batched AVX-512 kernels'
    /// `vrsqrt14ps` and a Newton step, CUDA's `rsqrtf`). Only fp32 rules call it: a Q4.12 rule
    /// must stay exact, so it divides by a root itself.
    fn rsqrt(&mut self, a: Self::V) -> Self::V {
        let one = self.constant(1.0);
        let root = self.sqrt(a);
        self.div(one, root)
    }
}

/// [`F32Ops`] on plain `f32` values.
pub struct Eval;

impl F32Ops for Eval {
    type V = f32;
    fn constant(&mut self, x: f32) -> f32 {
        x
    }
    fn mul(&mut self, a: f32, b: f32) -> f32 {
        a * b
    }
    fn add(&mut self, a: f32, b: f32) -> f32 {
        a + b
    }
    fn div(&mut self, a: f32, b: f32) -> f32 {
        a / b
    }
    fn sqrt(&mut self, a: f32) -> f32 {
        a.sqrt()
    }
}

/// RMSNorm's factor for `n` values whose squares sum to `sum_sq` (applied at once, or deferred to
/// where a value is used). Without a `pending` factor: `1 / √(sum_sq · (1/n) + ε)`.
/// With one (the values stand for `c · x` and `x` is what was squared): the factor that
/// normalises `c · x` and also applies `c`, `c / √(sum_sq · (1/n) · c² + ε)`.
pub fn rms_factor<O: F32Ops>(o: &mut O, sum_sq: O::V, n: usize, pending: Option<O::V>) -> O::V {
    let inv_n = o.constant(1.0 / n as f32);
    let mut ms = o.mul(sum_sq, inv_n);
    if let Some(c) = &pending {
        let c2 = o.mul(c.clone(), c.clone());
        ms = o.mul(ms, c2);
    }
    let eps = o.constant(crate::RMS_EPS as f32);
    let d = o.add(ms, eps);
    match pending {
        Some(c) => {
            let root = o.sqrt(d);
            o.div(c, root)
        }
        None => o.rsqrt(d),
    }
}

/// 1.0 in Q4.12: the i16 `q` stands for the real `q / Q412_ONE`.
pub const Q412_ONE: f32 = 4096.0;

/// A Q4.12 value (already an `f32`, exactly) as the real it stands for: `q · (1/4096)`, exact.
pub fn q412_real<O: F32Ops>(o: &mut O, q: O::V) -> O::V {
    let inv_one = o.constant(1.0 / Q412_ONE);
    o.mul(q, inv_one)
}

/// Q4.12 RMSNorm's scale, in f32 as the reference has it: `1 / √(ms / n + ε)`, where `ms` is the
/// sum of the squares of the `n` inputs as reals ([`q412_real`]), each square rounded and the
/// sum taken from the first input on. Every renderer of a Q4.12 RMSNorm evaluates this.
pub fn q412_rms_scale<O: F32Ops>(o: &mut O, ms: O::V, n: usize) -> O::V {
    let n = o.constant(n as f32);
    let mean = o.div(ms, n);
    let eps = o.constant(crate::RMS_EPS as f32);
    let d = o.add(mean, eps);
    let root = o.sqrt(d);
    let one = o.constant(1.0);
    o.div(one, root)
}

/// A real in Q4.12 units (`· 4096`), before it is rounded half to even and saturated to i16.
pub fn q412_units<O: F32Ops>(o: &mut O, real: O::V) -> O::V {
    let one = o.constant(Q412_ONE);
    o.mul(real, one)
}

/// One output of a Q4.12 RMSNorm before it is rounded and saturated: the input as a real times
/// the [`q412_rms_scale`], in Q4.12 units ([`q412_units`]).
pub fn q412_rms_value<O: F32Ops>(o: &mut O, real: O::V, scale: O::V) -> O::V {
    let y = o.mul(real, scale);
    q412_units(o, y)
}

/// The Q4.12 attention's score scale, `1/√head_dim` in f32 (see [`q412_score`]).
pub fn q412_score_scale(head_dim: usize) -> f32 {
    1.0 / (head_dim as f32).sqrt()
}

/// A Q4.12 attention score: the i32 dot product of two Q4.12 vectors (as an f32) as a real,
/// `dot / 4096 / 4096` (exact: a power of two), times [`q412_score_scale`], rounded.
pub fn q412_score<O: F32Ops>(o: &mut O, dot: O::V, head_dim: usize) -> O::V {
    let units = o.constant(1.0 / (Q412_ONE * Q412_ONE));
    let real = o.mul(dot, units);
    let scale = o.constant(q412_score_scale(head_dim));
    o.mul(real, scale)
}

/// The operations of [`exp_rule`] beyond [`F32Ops`]'s (on values that are never NaN).
pub trait ExpOps: F32Ops {
    fn sub(&mut self, a: Self::V, b: Self::V) -> Self::V;
    fn min(&mut self, a: Self::V, b: Self::V) -> Self::V;
    fn max(&mut self, a: Self::V, b: Self::V) -> Self::V;
    /// `a · b + c`, rounded once.
    fn fma(&mut self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// To the nearest integer, ties to even.
    fn round(&mut self, a: Self::V) -> Self::V;
    /// `2^n` for an integral `n` in [-126, 127], built from its exponent bits.
    fn pow2(&mut self, n: Self::V) -> Self::V;
    /// `a · b + c`: fused, or rounded after each operation.
    fn mul_add(&mut self, a: Self::V, b: Self::V, c: Self::V, fused: bool) -> Self::V {
        if fused {
            self.fma(a, b, c)
        } else {
            let p = self.mul(a, b);
            self.add(p, c)
        }
    }
    /// `p · 2^n` for an integral `n` in [-126, 127] (a target may take a wider range).
    fn scale_pow2(&mut self, p: Self::V, n: Self::V) -> Self::V {
        let s = self.pow2(n);
        self.mul(p, s)
    }
    /// A value the rule uses more than once, or names for a reader: a renderer may bind it to
    /// a local called `name`.
    fn name(&mut self, v: Self::V, _name: &str) -> Self::V {
        v
    }
}

impl ExpOps for Eval {
    fn sub(&mut self, a: f32, b: f32) -> f32 {
        a - b
    }
    fn min(&mut self, a: f32, b: f32) -> f32 {
        a.min(b)
    }
    fn max(&mut self, a: f32, b: f32) -> f32 {
        a.max(b)
    }
    fn fma(&mut self, a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
    fn round(&mut self, a: f32) -> f32 {
        a.round_ties_even()
    }
    fn pow2(&mut self, n: f32) -> f32 {
        f32::from_bits(((n as i32 + 127) << 23) as u32)
    }
}

/// `e^x` as the Q4.12 datapath defines it (see the module documentation): `x` clamped to
/// [[`EXP_MIN`], [`EXP_MAX`]], `n = round(x · log2(e))`, `r = x - n · ln 2` in two parts, then
/// `2^n · (1 + r + r² · p(r))`. With `fused` the reduction and the polynomial use fused
/// multiply-adds (the fp32 kernels' exponential: fewer instructions, still within a few ulp);
/// without, every operation is rounded separately, the sequence every Q4.12 kernel repeats.
pub fn exp_rule<O: ExpOps>(o: &mut O, x: O::V, fused: bool) -> O::V {
    let (lo, hi) = (o.constant(EXP_MIN), o.constant(EXP_MAX));
    let x = o.min(x, hi);
    let x = o.max(x, lo);
    let x = o.name(x, "x");
    let log2e = o.constant(EXP_LOG2E);
    let t = o.mul(x.clone(), log2e);
    let n = o.round(t);
    let n = o.name(n, "n");
    let r = if fused {
        let (hi, lo) = (o.constant(-EXP_LN2_HI), o.constant(-EXP_LN2_LO));
        let r = o.fma(n.clone(), hi, x);
        o.fma(n.clone(), lo, r)
    } else {
        let (hi, lo) = (o.constant(EXP_LN2_HI), o.constant(EXP_LN2_LO));
        let a = o.mul(n.clone(), hi);
        let r = o.sub(x, a);
        let b = o.mul(n.clone(), lo);
        o.sub(r, b)
    };
    let r = o.name(r, "r");
    let [c0, c1, c2, c3, c4, c5] = EXP_POLY;
    let mut p = o.constant(c5);
    for c in [c4, c3, c2, c1, c0] {
        let c = o.constant(c);
        p = o.mul_add(p, r.clone(), c, fused);
    }
    let p = o.name(p, "p");
    let r2 = o.mul(r.clone(), r.clone());
    let y = o.mul_add(p, r2, r, fused);
    let one = o.constant(1.0);
    let y = o.add(y, one);
    let y = o.name(y, "y");
    let scale = o.pow2(n);
    o.mul(y, scale)
}

/// `2^y` as the fp32 lane-batched kernels compute it (see [`EXP2_POLY`]): `n = round(y)`,
/// `f = y - n`, the polynomial of `f` by Horner's rule with fused multiply-adds, times `2^n`.
pub fn exp2_rule<O: ExpOps>(o: &mut O, y: O::V) -> O::V {
    let n = o.round(y.clone());
    let n = o.name(n, "n");
    let f = o.sub(y, n.clone());
    let f = o.name(f, "f");
    let (top, rest) = EXP2_POLY.split_last().expect("a polynomial");
    let mut p = o.constant(*top);
    for &k in rest.iter().rev() {
        let k = o.constant(k);
        p = o.fma(p, f.clone(), k);
    }
    let p = o.name(p, "p");
    o.scale_pow2(p, n)
}

/// `e^x` as the Q4.12 datapath defines it, on one `f32` ([`exp_rule`], unfused).
#[inline]
pub fn exp_q412(x: f32) -> f32 {
    exp_rule(&mut Eval, x, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest relative error of `got` against `want` at `from, from + step, ..` up to `to`.
    fn worst_relative_error(from: f32, to: f32, step: f32, got: fn(f32) -> f32, want: fn(f64) -> f64) -> f64 {
        let mut worst = 0.0f64;
        let mut x = from;
        while x <= to {
            let w = want(x as f64);
            worst = max_error(worst, ((got(x) as f64 - w) / w).abs());
            x += step;
        }
        worst
    }

    #[test]
    fn a_nan_error_is_never_dropped() {
        assert!(max_error(0.5, f64::NAN).is_nan());
        assert!(max_error(f64::NAN, 0.5).is_nan());
        assert_eq!(max_error(0.5, 0.25), 0.5);
        assert_eq!(
            [0.1, f64::NAN, 0.2].into_iter().fold(0.0, max_error).to_bits(),
            f64::NAN.to_bits()
        );
    }

    #[test]
    fn close_to_libm_over_the_softmax_range_fused_or_not() {
        let worst = worst_relative_error(-87.0, 0.0, 0.000_731, exp_q412, f64::exp);
        assert!(worst < 2.5e-7, "max relative error {worst:e}");
        let fused = |x| exp_rule(&mut Eval, x, true);
        let worst = worst_relative_error(-87.0, 0.0, 0.000_731, fused, f64::exp);
        assert!(worst < 2.5e-7, "fused: max relative error {worst:e}");
        assert_eq!(exp_q412(0.0), 1.0);
        assert!(exp_q412(-1000.0) > 0.0 && exp_q412(-1000.0) < 2e-38);
        assert!(exp_q412(1000.0).is_finite());
    }

    #[test]
    fn a_pending_factor_composes_into_the_rmsnorm_of_the_scaled_values() {
        let x = [0.3f32, -1.25, 2.0, 0.0, -0.5, 4.0, 1.5];
        let (c, n) = (0.37f32, x.len());
        let squares = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        // Materialised: RMSNorm of c·x, then applied to c·x.
        let cx: Vec<f32> = x.iter().map(|a| c * a).collect();
        let direct = rms_factor(&mut Eval, squares(&cx), n, None);
        let want = 1.0 / (squares(&cx) as f64 / n as f64 + crate::RMS_EPS).sqrt();
        assert!((direct as f64 / want - 1.0).abs() < 1e-6, "{direct} vs {want}");
        // Deferred: from x's squares and c, one factor that takes x to the normalised c·x.
        let deferred = rms_factor(&mut Eval, squares(&x), n, Some(c));
        for (a, b) in x.iter().zip(&cx) {
            let (got, want) = (a * deferred, b * direct);
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{got} vs {want}"
            );
        }
    }

    #[test]
    fn exp2_within_1e7_of_the_power_of_two() {
        let worst = worst_relative_error(-40.0, 40.0, 0.000_193, exp2_fp32, f64::exp2);
        assert!(worst < 1e-7, "max relative error {worst:e}");
        assert_eq!(exp2_fp32(0.0), 1.0);
        assert_eq!(exp2_fp32(-3.0), 0.125);
    }
}
