//! The emulator as a bench variant, with the FPGA's modelled throughput for the tokens it made.

use super::board::MAX_GEN;
use super::{CLOCK_HZ, StepInput, Talos, arith::theta_of};
use microgpt_model::{Shape, detokenize};
use microgpt_runtime::variant::{Modelled, Oracle, Precision, Settings, Variant, VariantInfo};
use microgpt_weights::{Q412_ONE, Weights};
use std::collections::BTreeMap;

/// TALOS-V2 emulated: the benchmark runs the board's generate loop back to back (samples of at
/// most 15 tokens, the RNG chained from one to the next), every core step counting as a token.
pub struct TalosVariant {
    info: VariantInfo,
    talos: Talos,
    theta: u16,
    rng: u32,
    token: usize,
    pos: usize,
    emitted_in_sample: usize,
    /// Since the last reset: core steps, emitted tokens, modelled cycles, and steps by their
    /// modelled cycles.
    steps: u64,
    emitted: u64,
    cycles: u64,
    step_cycles: BTreeMap<u32, u64>,
}

impl TalosVariant {
    pub fn new(weights: &Weights, settings: &Settings) -> Result<TalosVariant, String> {
        let talos = Talos::new(weights).map_err(|e| e.to_string())?;
        let mut info = VariantInfo::new("talos", "emulator", "scalar", Precision::Integer);
        info.oracle = Oracle::Elsewhere("TALOS-V2 RTL vectors (tests)");
        let theta = theta_of(settings.temperature);
        info.notes.push(format!(
            "TALOS-V2's own arithmetic and sampler (temperature code {theta}); its tokens differ from the \
             float model's by design. Teacher-forced steps use its direct (argmax) mode."
        ));
        Ok(TalosVariant {
            info,
            talos,
            theta,
            rng: microgpt_runtime::sampler::DEFAULT_SEED,
            token: Shape::DEFAULT.bos(),
            pos: 0,
            emitted_in_sample: 0,
            steps: 0,
            emitted: 0,
            cycles: 0,
            step_cycles: BTreeMap::new(),
        })
    }

    fn update_model(&mut self) {
        if self.cycles == 0 {
            return;
        }
        let seconds = self.cycles as f64 / CLOCK_HZ;
        self.info.modelled = Some(Modelled {
            name: "talos-v2-fpga".into(),
            backend: "fpga model".into(),
            tok_per_s: self.emitted as f64 / seconds,
            note: format!(
                "TALOS-V2 at 56.25 MHz by its cycle model (868 + 20·pos cycles a step, less 25 per RMS clamp), \
                 for the {} steps the emulator ran: {} emitted tokens in {} cycles; counted as the board \
                 counts (emitted tokens, the BOS steps' cycles included), {:.0} steps/s",
                self.steps,
                self.emitted,
                self.cycles,
                self.steps as f64 / seconds
            ),
            step_latency_ns: self
                .step_cycles
                .iter()
                .map(|(&cycles, &steps)| (cycles as f64 * 1e9 / CLOCK_HZ, steps))
                .collect(),
        });
    }
}

impl Variant for TalosVariant {
    fn info(&self) -> &VariantInfo {
        &self.info
    }

    fn shape(&self) -> Shape {
        Shape::DEFAULT
    }

    fn step(&mut self, tok: usize, pos: usize, _r: f32) -> usize {
        let input = StepInput {
            token: tok,
            pos,
            clear: pos == 0,
            rng: self.rng,
            theta: self.theta,
            sample: false,
        };
        match self.talos.step(input) {
            Ok(o) => o.next,
            Err(e) => panic!("{e}"),
        }
    }

    fn logits(&self) -> Vec<f32> {
        self.talos.logits().iter().map(|&l| l as f32 / Q412_ONE).collect()
    }

    fn reset(&mut self, seed: u32) {
        self.rng = seed;
        self.token = Shape::DEFAULT.bos();
        self.pos = 0;
        self.emitted_in_sample = 0;
        (self.steps, self.emitted, self.cycles) = (0, 0, 0);
        self.step_cycles.clear();
        self.info.modelled = None;
    }

    fn run(&mut self, tokens: u64) -> u64 {
        let bos = Shape::DEFAULT.bos();
        let last = Shape::DEFAULT.block - 1;
        let mut sum = 0u64;
        for _ in 0..tokens {
            let input = StepInput {
                token: self.token,
                pos: self.pos,
                clear: self.pos == 0,
                rng: self.rng,
                theta: self.theta,
                sample: true,
            };
            let o = self
                .talos
                .step(input)
                .expect("the loop keeps token and position in range");
            self.rng = o.rng;
            self.steps += 1;
            self.cycles += o.cycles as u64;
            *self.step_cycles.entry(o.cycles).or_default() += 1;
            sum = sum.wrapping_mul(31).wrapping_add(o.next as u64);
            if o.next == bos || self.pos == last {
                (self.token, self.pos, self.emitted_in_sample) = (bos, 0, 0);
                continue;
            }
            self.emitted += 1;
            self.emitted_in_sample += 1;
            if self.emitted_in_sample >= MAX_GEN {
                (self.token, self.pos, self.emitted_in_sample) = (bos, 0, 0);
            } else {
                (self.token, self.pos) = (o.next, self.pos + 1);
            }
        }
        sum
    }

    fn settle(&mut self) {
        self.update_model();
    }

    /// The board's names: samples chained through the RNG, as the host tool runs `--count`.
    fn names(&mut self, count: usize, seed: u32) -> Vec<String> {
        let mut rng = seed;
        (0..count)
            .map(|_| {
                let s = self
                    .talos
                    .generate(rng, self.theta, MAX_GEN)
                    .expect("the board loop keeps its inputs in range");
                rng = s.rng;
                detokenize(&Shape::DEFAULT, &s.tokens)
            })
            .collect()
    }
}
