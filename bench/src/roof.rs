//! The roof: this machine's measured fp32 FMA throughput, the ceiling every CPU row is held to.
//!
//! A short loop of independent fused multiply-adds in the widest vectors the CPU has (twelve
//! accumulators, more than latency × issue width on current cores) runs on one core, then on
//! every core at once; the best of a few calibrated windows counts. A row's share of the roof is
//! `tok/s × MACs per token ÷ (FMA/s per core × cores it uses)`.

use std::hint::black_box;
use std::time::Instant;

/// Measured FMA throughput, in lane-FMAs (one multiply-add of one f32) per second.
#[derive(Clone, Debug, PartialEq)]
pub struct Roof {
    /// The instructions the loop used, e.g. `avx512f`.
    pub isa: &'static str,
    /// f32 lanes per FMA instruction.
    pub lanes: usize,
    /// One core alone.
    pub per_core: f64,
    /// Every core at once, summed (below `per_core × cores` when cores share power or clocks).
    pub all_cores: f64,
    pub cores: usize,
}

impl Roof {
    /// Measures for about `seconds` in all.
    pub fn measure(seconds: f64) -> Roof {
        let cores = microgpt_runtime::threads::cores();
        let (isa, lanes, kernel) = widest();
        let window = (seconds / 10.0).max(1e-3);
        // Calibrate the iteration count to about one window.
        let mut iters = 1u64 << 12;
        loop {
            let t = Instant::now();
            black_box(kernel(iters));
            if t.elapsed().as_secs_f64() >= window / 4.0 || iters >= 1 << 36 {
                break;
            }
            iters *= 2;
        }
        let fmas = (iters * ACCUMULATORS as u64 * lanes as u64) as f64;
        let rate = || {
            let t = Instant::now();
            black_box(kernel(iters));
            fmas / t.elapsed().as_secs_f64().max(1e-9)
        };
        let per_core = (0..5).map(|_| rate()).fold(0.0, f64::max);
        let all_cores = (0..3)
            .map(|_| {
                std::thread::scope(|s| {
                    let hs: Vec<_> = (0..cores).map(|_| s.spawn(rate)).collect();
                    hs.into_iter()
                        .map(|h| h.join().expect("roof thread"))
                        .sum::<f64>()
                })
            })
            .fold(0.0, f64::max);
        Roof {
            isa,
            lanes,
            per_core,
            all_cores,
            cores,
        }
    }

    /// The share of the roof a rate reaches: `tok_per_s × macs ÷ (per_core × threads)`.
    pub fn share(&self, tok_per_s: f64, macs_per_token: usize, threads: usize) -> f64 {
        tok_per_s * macs_per_token as f64 / (self.per_core * threads.max(1) as f64)
    }

    /// The roof in tokens per second per core for a shape's MACs per token.
    pub fn tok_per_s_per_core(&self, macs_per_token: usize) -> f64 {
        self.per_core / macs_per_token as f64
    }
}

const ACCUMULATORS: usize = 12;

type Loop = fn(u64) -> f32;

/// The widest FMA loop this CPU runs.
fn widest() -> (&'static str, usize, Loop) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return ("avx512f", 16, |n| {
                // SAFETY: avx512f was detected just above.
                unsafe { x86::fma512(n) }
            });
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return ("avx2+fma", 8, |n| {
                // SAFETY: avx2 and fma were detected just above.
                unsafe { x86::fma256(n) }
            });
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        return ("neon", 4, |n| {
            // SAFETY: NEON is part of the aarch64 baseline.
            unsafe { arm::fma128(n) }
        });
    }
    #[allow(unreachable_code)]
    ("scalar", 1, scalar)
}

/// Twelve independent scalar multiply-add chains (the compiler may fuse or vectorise them; the
/// count of multiply-adds is what it is either way).
fn scalar(n: u64) -> f32 {
    let mut acc = [0.0f32; ACCUMULATORS];
    let (a, b) = (black_box(0.999_999f32), black_box(1e-7f32));
    for _ in 0..n {
        for x in &mut acc {
            *x = *x * a + b;
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::ACCUMULATORS;
    use std::arch::x86_64::*;
    use std::hint::black_box;

    /// `n` rounds of twelve independent 16-lane FMAs.
    ///
    /// # Safety
    /// The CPU must support avx512f.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(n: u64) -> f32 {
        let a = _mm512_set1_ps(black_box(0.999_999));
        let b = _mm512_set1_ps(black_box(1e-7));
        let mut acc = [_mm512_setzero_ps(); ACCUMULATORS];
        for _ in 0..n {
            for x in &mut acc {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        let mut s = _mm512_setzero_ps();
        for x in acc {
            s = _mm512_add_ps(s, x);
        }
        _mm512_reduce_add_ps(s)
    }

    /// `n` rounds of twelve independent 8-lane FMAs.
    ///
    /// # Safety
    /// The CPU must support avx2 and fma.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(n: u64) -> f32 {
        let a = _mm256_set1_ps(black_box(0.999_999));
        let b = _mm256_set1_ps(black_box(1e-7));
        let mut acc = [_mm256_setzero_ps(); ACCUMULATORS];
        for _ in 0..n {
            for x in &mut acc {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut out = [0.0f32; 8];
        let mut s = _mm256_setzero_ps();
        for x in acc {
            s = _mm256_add_ps(s, x);
        }
        // SAFETY: `out` holds the 8 f32 an unaligned store writes.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
        out.iter().sum()
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::ACCUMULATORS;
    use std::arch::aarch64::*;
    use std::hint::black_box;

    /// `n` rounds of twelve independent 4-lane FMAs.
    ///
    /// # Safety
    /// NEON must be present (always, on aarch64).
    #[target_feature(enable = "neon")]
    pub unsafe fn fma128(n: u64) -> f32 {
        let a = vdupq_n_f32(black_box(0.999_999));
        let b = vdupq_n_f32(black_box(1e-7));
        let mut acc = [vdupq_n_f32(0.0); ACCUMULATORS];
        for _ in 0..n {
            for x in &mut acc {
                *x = vfmaq_f32(b, *x, a);
            }
        }
        let mut s = vdupq_n_f32(0.0);
        for x in acc {
            s = vaddq_f32(s, x);
        }
        vaddvq_f32(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_computes_what_it_counts() {
        let (_, _, kernel) = widest();
        // Each accumulator follows x ← 0.999999·x + 1e-7 from 0: after n rounds it holds
        // 1e-7 · (1 − aⁿ)/(1 − a); the sum of all lanes and accumulators must match.
        let n = 1000u64;
        let a = 0.999_999f64;
        let one = 1e-7 * (1.0 - a.powi(n as i32)) / (1.0 - a);
        let (_, lanes, _) = widest();
        let want = one * (ACCUMULATORS * lanes) as f64;
        let got = kernel(n) as f64;
        assert!((got - want).abs() < want * 1e-3, "{got} vs {want}");
    }

    #[test]
    fn a_measured_roof_is_positive_and_shares_scale() {
        let roof = Roof::measure(0.05);
        assert!(roof.per_core > 0.0 && roof.all_cores > 0.0);
        let r = roof.tok_per_s_per_core(3504);
        assert!((roof.share(r, 3504, 1) - 1.0).abs() < 1e-9);
        assert!((roof.share(r, 3504, 2) - 0.5).abs() < 1e-9);
    }
}
