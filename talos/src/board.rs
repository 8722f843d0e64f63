//! The generation loop as the board runs it, and direct (greedy) mode.

use super::{StepInput, Talos, TalosError};

/// The longest sample the board produces (`max_gen` is at most 15; it also stops at position 15).
pub const MAX_GEN: usize = 15;

/// One generated sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Emitted tokens (BOS and the token drawn at position 15 are not emitted).
    pub tokens: Vec<usize>,
    /// The RNG after the last step: the next sample's seed when samples are chained.
    pub rng: u32,
    /// Core steps run, the final BOS-producing one included.
    pub steps: usize,
    /// `perf_cycles`: Σ over steps of 868 + 20·pos, less 25 per RMS clamp.
    pub cycles: u64,
}

impl Sample {
    /// The board's own throughput figure: emitted tokens over cycles at 56.25 MHz.
    pub fn tok_per_s(&self) -> f64 {
        self.tokens.len() as f64 * super::CLOCK_HZ / self.cycles as f64
    }
}

impl Talos {
    /// One sample as the board's generate mode makes it: BOS at position 0 with a cleared
    /// cache, then each drawn token fed back, stopping at BOS, at position 15 (that token is not
    /// emitted) or after `max_gen` emitted tokens.
    pub fn generate(&mut self, seed: u32, theta: u16, max_gen: usize) -> Result<Sample, TalosError> {
        self.run_loop(seed, theta, max_gen, true)
    }

    /// Direct mode from BOS: each step's argmax fed back, the RNG untouched, until BOS or
    /// position 15.
    pub fn greedy(&mut self) -> Result<Sample, TalosError> {
        self.run_loop(0, 0, MAX_GEN, false)
    }

    fn run_loop(
        &mut self,
        seed: u32,
        theta: u16,
        max_gen: usize,
        sample: bool,
    ) -> Result<Sample, TalosError> {
        if max_gen == 0 || max_gen > MAX_GEN {
            return Err(TalosError::MaxGen(max_gen));
        }
        let shape = microgpt_model::Shape::DEFAULT;
        let (bos, last) = (shape.bos(), shape.block - 1);
        let mut out = Sample {
            tokens: Vec::new(),
            rng: seed,
            steps: 0,
            cycles: 0,
        };
        let (mut token, mut pos) = (bos, 0);
        loop {
            let o = self.step(StepInput {
                token,
                pos,
                clear: pos == 0,
                rng: out.rng,
                theta,
                sample,
            })?;
            out.rng = o.rng;
            out.steps += 1;
            out.cycles += o.cycles as u64;
            if o.next == bos || pos == last {
                break;
            }
            out.tokens.push(o.next);
            token = o.next;
            pos += 1;
            if out.tokens.len() >= max_gen {
                break;
            }
        }
        Ok(out)
    }
}
