//! The agreement checks every variant is held to: its logits and draws against its oracle's,
//! teacher-forced step by step, then free-running from the same seed.

use crate::kernel::BatchKernel;
use crate::sampler::{Sampler, XorShift32};
use crate::stream::{Stream, stream_seed};
use crate::variant::Variant;
use microgpt_model::numerics::max_error;
use microgpt_weights::Weights;

/// A draw that differs from the oracle's is excused only when `r` lies this close to a
/// boundary of the oracle's CDF (docs/spec.md#agreement).
pub const BOUNDARY_TOLERANCE: f32 = 1e-6;

/// What a check compares: the benchmark stream's seed, the sampling temperature and the
/// number of steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CheckOptions {
    pub seed: u32,
    pub temperature: f32,
    pub tokens: usize,
}

/// How a variant's results compare with its oracle's.
#[derive(Clone, Debug, PartialEq)]
pub struct Agreement {
    pub oracle: String,
    /// Teacher-forced steps compared.
    pub tokens: usize,
    /// Largest |Δlogit| over every compared step.
    pub max_abs_logit_diff: f64,
    /// Steps whose drawn token equals the oracle's.
    pub agreed: usize,
    /// Steps that differ where `r` lies within [`BOUNDARY_TOLERANCE`] of an oracle CDF boundary.
    pub excused: usize,
    /// Steps that differ for no such reason.
    pub differed: usize,
    /// Free-running: tokens identical to the oracle's own stream before the first difference.
    pub free_run_identical: usize,
    pub free_run_tokens: usize,
}

impl Agreement {
    /// Teacher-forced token agreement, counting excused boundary draws as agreeing.
    pub fn token_agreement(&self) -> f64 {
        (self.agreed + self.excused) as f64 / self.tokens.max(1) as f64
    }
}

/// Whether fp32 can compute `weights` at all: over the first `o.tokens` steps of the benchmark
/// stream the fp32 reference's logits must be finite and agree with the f64 reference's (within
/// 1e-3, relative to their size). Weights that are finite but so large that fp32 overflows (a
/// sum of squares in an RMSNorm, say) are refused up front with the step, instead of every fp32
/// row, the reference included, disagreeing with its oracle.
pub fn check_fp32_range(weights: &Weights, o: &CheckOptions) -> Result<(), String> {
    let shape = *weights.shape();
    let mut single = crate::reference::Reference::<f32>::new(weights);
    let mut double = crate::reference::Reference::<f64>::new(weights);
    let mut sampler = Sampler::new(o.temperature);
    let mut stream = Stream::new(&shape, o.seed);
    for step in 0..o.tokens {
        let (tok, pos) = (stream.tok, stream.pos);
        let want = double.forward(tok, pos);
        let got = single.forward(tok, pos);
        for (&g, &w) in got.iter().zip(want) {
            let off = (g as f64 - w).abs();
            if !(g.is_finite() && w.is_finite() && off <= 1e-3 * w.abs().max(1.0)) {
                return Err(format!(
                    "these weights are out of fp32's range: at step {step} (token {tok}, position {pos}) the fp32 reference gives a logit of {g:e} where the f64 reference gives {w:e}; the kernels compute in fp32"
                ));
            }
        }
        let next = sampler.draw(got, stream.rng.uniform());
        stream.advance(next);
    }
    Ok(())
}

/// Compares `variant` with `oracle` on the oracle's own benchmark stream, teacher-forced: both
/// get the same token, position and `r` at every step; logits and drawn tokens are compared.
/// Then both run free from the same seed and the identical prefix is counted.
pub fn check_agreement(variant: &mut dyn Variant, oracle: &mut dyn Variant, o: &CheckOptions) -> Agreement {
    let shape = oracle.shape();
    let mut a = Agreement::new(oracle, o.tokens);
    let mut sampler = Sampler::new(o.temperature);
    let mut stream = Stream::new(&shape, o.seed);
    for _ in 0..o.tokens {
        let r = stream.rng.uniform();
        let want = a.compare_step(oracle, variant, &mut sampler, stream.tok, stream.pos, r);
        stream.advance(want);
    }
    let (mut s1, mut s2) = (Stream::new(&shape, o.seed), Stream::new(&shape, o.seed));
    for _ in 0..o.tokens {
        let r = s1.rng.uniform();
        s2.rng.uniform();
        let want = oracle.step(s1.tok, s1.pos, r);
        let got = variant.step(s2.tok, s2.pos, r);
        if got != want {
            break;
        }
        a.free_run_identical += 1;
        s1.advance(want);
        s2.advance(got);
    }
    a
}

/// How far an fp32 engine's logits may lie from the fp32 reference's at one step, given the
/// reference's logits in fp32 (`single`) and in f64 (`double`): 1e-4 relative to their size,
/// plus four times fp32's own error at that step (where large weights make fp32 inexact, two
/// orders of summation differ by as much as either differs from the exact value).
pub fn fp32_logit_tolerance(single: &[f32], double: &[f64]) -> f64 {
    let largest = single.iter().map(|l| (*l as f64).abs()).fold(1.0, f64::max);
    let error = single
        .iter()
        .zip(double)
        .map(|(&s, &d)| (s as f64 - d).abs())
        .fold(0.0, f64::max);
    1e-4 * largest + 4.0 * error
}

/// Compares `variant` with `oracle` teacher-forced on given sequences (each fed from position
/// 0), drawing with uniforms from xorshift32 seeded with `seed`. No free run.
pub fn teacher_forced(
    variant: &mut dyn Variant,
    oracle: &mut dyn Variant,
    sequences: &[Vec<usize>],
    temperature: f32,
    seed: u32,
) -> Agreement {
    let mut rng = XorShift32::new(seed);
    teacher_forced_with(variant, oracle, sequences, temperature, &mut || rng.uniform())
}

/// [`teacher_forced`] with the uniforms from `uniform`, one a step (to try chosen draws, such as
/// the sampler's edges).
pub fn teacher_forced_with(
    variant: &mut dyn Variant,
    oracle: &mut dyn Variant,
    sequences: &[Vec<usize>],
    temperature: f32,
    uniform: &mut dyn FnMut() -> f32,
) -> Agreement {
    let steps = sequences.iter().map(Vec::len).sum();
    let mut a = Agreement::new(oracle, steps);
    a.free_run_tokens = 0;
    let mut sampler = Sampler::new(temperature);
    for seq in sequences {
        for (pos, &tok) in seq.iter().enumerate() {
            a.compare_step(oracle, variant, &mut sampler, tok, pos, uniform());
        }
    }
    a
}

impl Agreement {
    fn new(oracle: &dyn Variant, tokens: usize) -> Agreement {
        Agreement {
            oracle: oracle.info().name.clone(),
            tokens,
            max_abs_logit_diff: 0.0,
            agreed: 0,
            excused: 0,
            differed: 0,
            free_run_identical: 0,
            free_run_tokens: tokens,
        }
    }

    /// One teacher-forced step of both; returns the oracle's token.
    fn compare_step(
        &mut self,
        oracle: &mut dyn Variant,
        variant: &mut dyn Variant,
        sampler: &mut Sampler,
        tok: usize,
        pos: usize,
        r: f32,
    ) -> usize {
        let want = oracle.step(tok, pos, r);
        let got = variant.step(tok, pos, r);
        self.record(sampler, want, got, &oracle.logits(), &variant.logits(), r);
        want
    }

    /// Records one step: the oracle drew `want` with logits `lo`, the variant `got` with `lv`.
    fn record(&mut self, sampler: &mut Sampler, want: usize, got: usize, lo: &[f32], lv: &[f32], r: f32) {
        for (x, y) in lo.iter().zip(lv) {
            // NaN must never look like agreement.
            self.max_abs_logit_diff = max_error(self.max_abs_logit_diff, (*x as f64 - *y as f64).abs());
        }
        if got == want {
            self.agreed += 1;
        } else {
            sampler.draw(lo, r);
            if sampler.boundary_distance(r) < BOUNDARY_TOLERANCE {
                self.excused += 1;
            } else {
                self.differed += 1;
            }
        }
    }
}

/// Compares every lane of a lane-batched kernel with its own oracle, teacher-forced. Lane `l`
/// feeds a different token list: the first `1 + 3l mod block` tokens of sequence `l`, then all
/// the sequences in turn from sequence `l + 1`, so the lanes hold different tokens at different
/// positions and restart at different steps; its draws come from xorshift32 seeded with
/// [`crate::stream::stream_seed`]`(seed, l)`. Runs as many steps as the sequences hold.
pub fn teacher_forced_lanes<K: BatchKernel>(
    kernel: &mut K,
    mut oracle: impl FnMut() -> Box<dyn Variant>,
    sequences: &[Vec<usize>],
    temperature: f32,
    seed: u32,
) -> Agreement {
    assert!(!sequences.is_empty(), "no sequences to feed");
    let lanes = K::LANES;
    let steps: usize = sequences.iter().map(Vec::len).sum();
    let mut oracles: Vec<Box<dyn Variant>> = (0..lanes).map(|_| oracle()).collect();
    let mut a = Agreement::new(oracles[0].as_ref(), steps * lanes);
    a.free_run_tokens = 0;
    let n = sequences.len();
    let feeds: Vec<Vec<(usize, usize)>> = (0..lanes)
        .map(|l| {
            let first = &sequences[l % n];
            let head = first.iter().take(1 + (3 * l) % first.len()).copied().enumerate();
            let tail = (1..=n).flat_map(|i| sequences[(l + i) % n].iter().copied().enumerate());
            head.chain(tail.cycle())
                .take(steps)
                .map(|(pos, tok)| (tok, pos))
                .collect()
        })
        .collect();
    let mut rngs: Vec<XorShift32> = (0..lanes)
        .map(|l| XorShift32::new(stream_seed(seed, l)))
        .collect();
    let mut sampler = Sampler::new(temperature);
    let (mut toks, mut pos, mut rs, mut next) = (
        vec![0u32; lanes],
        vec![0u32; lanes],
        vec![0.0; lanes],
        vec![0u32; lanes],
    );
    for step in 0..steps {
        for (l, (feed, rng)) in feeds.iter().zip(&mut rngs).enumerate() {
            let (tok, p) = feed[step];
            (toks[l], pos[l]) = (tok as u32, p as u32);
            rs[l] = rng.uniform();
        }
        kernel.step(&toks, &pos, &rs, &mut next);
        for l in 0..lanes {
            let (tok, p) = feeds[l][step];
            let want = oracles[l].step(tok, p, rs[l]);
            a.record(
                &mut sampler,
                want,
                next[l] as usize,
                &oracles[l].logits(),
                &kernel.logits(l),
                rs[l],
            );
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use microgpt_model::Shape;

    #[test]
    fn weights_beyond_fp32_are_refused_and_ordinary_ones_pass() {
        let o = CheckOptions {
            seed: crate::sampler::DEFAULT_SEED,
            temperature: crate::sampler::DEFAULT_TEMPERATURE,
            tokens: 64,
        };
        assert_eq!(check_fp32_range(&microgpt_weights::default_weights(), &o), Ok(()));
        let shape = Shape::parse("embd=32,layers=2,mlp=128").unwrap();
        assert_eq!(check_fp32_range(&Weights::random(shape, 3, 0.3), &o), Ok(()));
        // Finite weights whose squares overflow fp32 in the first RMSNorm: the fp32 reference
        // then computes zeros where the f64 one does not.
        let mut big = microgpt_weights::default_weights();
        big.data_mut().iter_mut().for_each(|w| *w = 1e30);
        let e = check_fp32_range(&big, &o).unwrap_err();
        assert!(e.contains("out of fp32's range") && e.contains("step 0"), "{e}");
    }
}
