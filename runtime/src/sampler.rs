//! The canonical sampler (docs/spec.md#sampler): xorshift32, a 24-bit uniform draw, and an inverse-CDF scan
//! of `softmax(logits / T)` computed in f32, left to right.

use rand_core::{RngCore, SeedableRng, impls};

/// The seed used when the user gives none.
pub const DEFAULT_SEED: u32 = 42;
/// The sampling temperature used when the user gives none.
pub const DEFAULT_TEMPERATURE: f32 = 0.5;
/// The smallest sampling temperature the bench accepts: below it, logits / T leave the range
/// where the variants' orders of rounding agree on the draw (at 1e-10 the lane-batched rows,
/// which fold 1/T into their weights, draw differently; near 1e-38 it overflows).
pub const MIN_TEMPERATURE: f32 = 1e-3;

/// Marsaglia's xorshift32 (`x ^= x << 13; x ^= x >> 17; x ^= x << 5`) on a u32 state.
///
/// It plugs into the `rand` ecosystem as an [`RngCore`] + [`SeedableRng`]. The state 0 is a fixed
/// point: seeded with 0 it returns 0 forever, as the hardware it mirrors does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct XorShift32 {
    state: u32,
}

impl XorShift32 {
    pub const fn new(seed: u32) -> XorShift32 {
        XorShift32 { state: seed }
    }

    /// The current state (the last value returned, or the seed).
    pub const fn state(&self) -> u32 {
        self.state
    }

    /// Advances the state and returns it.
    #[inline(always)]
    pub fn step(&mut self) -> u32 {
        self.state = xorshift32(self.state);
        self.state
    }

    /// One draw: `r = (x >> 8) · 2^-24`, uniform in [0, 1) with 24 bits.
    #[inline(always)]
    pub fn uniform(&mut self) -> f32 {
        uniform24(self.step())
    }
}

/// One xorshift32 step.
#[inline(always)]
pub const fn xorshift32(mut x: u32) -> u32 {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    x
}

/// The top 24 bits of a state as a float in [0, 1).
#[inline(always)]
pub fn uniform24(x: u32) -> f32 {
    (x >> 8) as f32 * (1.0 / 16_777_216.0)
}

impl RngCore for XorShift32 {
    fn next_u32(&mut self) -> u32 {
        self.step()
    }

    fn next_u64(&mut self) -> u64 {
        impls::next_u64_via_u32(self)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        impls::fill_bytes_via_next(self, dst)
    }
}

impl SeedableRng for XorShift32 {
    type Seed = [u8; 4];

    /// The seed is the initial state, little-endian.
    fn from_seed(seed: [u8; 4]) -> XorShift32 {
        XorShift32::new(u32::from_le_bytes(seed))
    }

    /// The low 32 bits of `state` become the initial state (so `seed_from_u64(42)` is the
    /// default stream), rather than rand's hashed expansion.
    fn seed_from_u64(state: u64) -> XorShift32 {
        XorShift32::new(state as u32)
    }
}

/// The canonical draw: `probs = softmax(logits / T)` in f32 (max-subtracted, sums left to
/// right), then the first `i < vocab - 1` with `r < Σ_{j ≤ i} probs[j]`, else `vocab - 1` (BOS).
///
/// Keeps its scratch so that a draw allocates nothing; [`Sampler::cdf`] exposes the running sums
/// of the last draw (the agreement check uses them to excuse draws that fall on a boundary).
#[derive(Clone, Debug)]
pub struct Sampler {
    temperature: f32,
    cdf: Vec<f32>,
}

impl Sampler {
    pub fn new(temperature: f32) -> Sampler {
        Sampler {
            temperature,
            cdf: Vec::new(),
        }
    }

    pub fn temperature(&self) -> f32 {
        self.temperature
    }

    /// Draws a token from `logits` with the uniform `r`.
    pub fn draw(&mut self, logits: &[f32], r: f32) -> usize {
        let n = logits.len();
        self.cdf.clear();
        let mut m = f32::NEG_INFINITY;
        for &l in logits {
            m = m.max(l / self.temperature);
        }
        let mut sum = 0.0f32;
        for &l in logits {
            let e = (l / self.temperature - m).exp();
            sum += e;
            self.cdf.push(e);
        }
        let mut c = 0.0f32;
        let mut chosen = n - 1;
        for (i, slot) in self.cdf.iter_mut().enumerate().take(n - 1) {
            c += *slot / sum;
            *slot = c;
            if r < c && chosen == n - 1 {
                chosen = i;
            }
        }
        self.cdf.truncate(n - 1);
        chosen
    }

    /// The running sums of the last draw (`vocab - 1` values).
    pub fn cdf(&self) -> &[f32] {
        &self.cdf
    }

    /// Distance from `r` to the nearest boundary of the last draw's CDF.
    pub fn boundary_distance(&self, r: f32) -> f32 {
        self.cdf
            .iter()
            .map(|&c| (c - r).abs())
            .fold(f32::INFINITY, f32::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::RngCore;

    #[test]
    fn xorshift_matches_the_talos_vector() {
        // XS(2) = 0x00084042, the value TALOS-V2's RTL simulation gives.
        let mut r = XorShift32::new(2);
        assert_eq!(r.step(), 0x0008_4042);
        let mut z = XorShift32::new(0);
        assert_eq!(z.step(), 0);
        assert_eq!(XorShift32::seed_from_u64(42), XorShift32::new(42));
        assert_eq!(XorShift32::from_seed(42u32.to_le_bytes()), XorShift32::new(42));
    }

    #[test]
    fn rngcore_and_determinism() {
        let mut a = XorShift32::new(42);
        let mut b = XorShift32::new(42);
        let xs: Vec<u32> = (0..100).map(|_| a.next_u32()).collect();
        let ys: Vec<u32> = (0..100).map(|_| b.step()).collect();
        assert_eq!(xs, ys);
        let mut c = XorShift32::new(42);
        let lo = c.step();
        let hi = c.step();
        assert_eq!(XorShift32::new(42).next_u64(), (hi as u64) << 32 | lo as u64);
        let mut bytes = [0u8; 6];
        XorShift32::new(42).fill_bytes(&mut bytes);
        assert_eq!(bytes[..4], lo.to_le_bytes());
        assert_eq!(bytes[4..], hi.to_le_bytes()[..2]);
    }

    #[test]
    fn uniform_uses_the_top_24_bits() {
        assert_eq!(uniform24(0), 0.0);
        assert_eq!(uniform24(0xFF), 0.0);
        assert_eq!(uniform24(0x100), 1.0 / 16_777_216.0);
        let top = uniform24(u32::MAX);
        assert!(top < 1.0 && top == 1.0 - 1.0 / 16_777_216.0);
    }

    #[test]
    fn cdf_boundaries_and_bos_fallback() {
        let mut s = Sampler::new(1.0);
        // Four equal logits: probs 0.25 each; the CDF scans ids 0..=2.
        let logits = [0.0f32; 4];
        assert_eq!(s.draw(&logits, 0.0), 0);
        assert_eq!(s.draw(&logits, 0.2499), 0);
        assert_eq!(
            s.draw(&logits, 0.25),
            1,
            "r equal to a boundary goes to the next token"
        );
        assert_eq!(s.draw(&logits, 0.5), 2);
        assert_eq!(s.draw(&logits, 0.7499), 2);
        assert_eq!(s.draw(&logits, 0.75), 3, "past the last scanned id: BOS");
        assert_eq!(s.draw(&logits, 0.999_999_9), 3);
        assert_eq!(s.cdf(), &[0.25, 0.5, 0.75]);
        assert!((s.boundary_distance(0.26) - 0.01).abs() < 1e-6);
    }

    #[test]
    fn r_near_one_and_two_token_vocab() {
        let mut s = Sampler::new(1.0);
        let r_max = 1.0 - 1.0 / 16_777_216.0;
        // The scan covers ids 0..vocab-2 only: r close to 1 lands on BOS.
        assert_eq!(s.draw(&[0.0, 0.0, 0.0], r_max), 2);
        assert_eq!(s.draw(&[0.0, 0.0, 0.0], 0.6666), 1);
        // Even when BOS is very unlikely, r beyond the last running sum gives BOS, never an
        // index past the end.
        let t = s.draw(&[10.0, 10.0, -30.0], r_max);
        let last = *s.cdf().last().unwrap();
        assert_eq!(t, if r_max < last { 1 } else { 2 });
        // vocab 2: one ordinary token and BOS.
        assert_eq!(s.draw(&[0.0, 0.0], 0.4999), 0);
        assert_eq!(s.draw(&[0.0, 0.0], 0.5), 1);
    }

    #[test]
    fn temperature_divides_the_logits() {
        let mut hot = Sampler::new(1.0);
        let mut cold = Sampler::new(0.5);
        let logits = [1.0f32, 0.0, 0.0];
        hot.draw(&logits, 0.0);
        cold.draw(&logits, 0.0);
        // p0 = e^1/(e^1+2) at T=1, e^2/(e^2+2) at T=0.5.
        assert!((hot.cdf()[0] - (1f32.exp() / (1f32.exp() + 2.0))).abs() < 1e-6);
        assert!((cold.cdf()[0] - (2f32.exp() / (2f32.exp() + 2.0))).abs() < 1e-6);
    }
}
