//! The bench harness: every variant timed the same way and checked against its oracle.

use crate::sampler::Sampler;
use crate::stream::Stream;
use crate::variant::{Settings, Variant, VariantInfo, VariantSpec};
use microgpt_weights::Weights;
use std::hint::black_box;
use std::time::Instant;

/// TALOS-V2's claimed throughput at 56.25 MHz: the "× FPGA" column divides by this.
pub const TALOS_CLAIMED_TOK_PER_S: f64 = 53_000.0;

/// A draw that differs from the oracle's is excused only when `r` lies this close to a
/// boundary of the oracle's CDF (model.md).
pub const BOUNDARY_TOLERANCE: f32 = 1e-6;

/// How to time and check.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub seed: u32,
    pub temperature: f32,
    /// Minimum tokens per timed window.
    pub min_tokens: u64,
    /// Minimum duration of a timed window, seconds.
    pub min_window_s: f64,
    /// Timed windows; the median is reported.
    pub repeats: usize,
    /// Warm-up before timing, seconds.
    pub warmup_s: f64,
    /// Teacher-forced steps compared with the oracle (and free-running steps compared too).
    pub check_tokens: usize,
    /// Names to generate per variant (0: none).
    pub names: usize,
    /// The CPU package's energy counters, when readable: rows' power is then measured.
    pub rapl: Option<crate::energy::Rapl>,
    /// Otherwise power is estimated as this many watts per core used.
    pub watts_per_core: f64,
}

impl Default for BenchOptions {
    fn default() -> BenchOptions {
        BenchOptions {
            seed: crate::sampler::DEFAULT_SEED,
            temperature: crate::sampler::DEFAULT_TEMPERATURE,
            min_tokens: 10_000,
            min_window_s: 0.2,
            repeats: 5,
            warmup_s: 0.1,
            check_tokens: 4096,
            names: 0,
            rapl: crate::energy::Rapl::detect(),
            watts_per_core: crate::energy::DEFAULT_WATTS_PER_CORE,
        }
    }
}

/// The smallest sampling temperature the bench accepts: below it, logits / T leave the range
/// where the variants' orders of rounding agree on the draw (at 1e-10 the lane-batched rows,
/// which fold 1/T into their weights, draw differently; near 1e-38 it overflows).
pub const MIN_TEMPERATURE: f32 = 1e-3;

/// The most timed windows per variant, and tokens per window, the bench accepts.
pub const MAX_REPEATS: usize = 1000;
pub const MAX_WINDOW_TOKENS: u64 = 1_000_000_000_000;
/// The most teacher-forced steps per check.
pub const MAX_CHECK_TOKENS: usize = 100_000_000;

impl BenchOptions {
    /// Whether the options make sense: a one-line reason naming the option when not.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= MIN_TEMPERATURE) {
            return Err(format!(
                "--temperature must be a number >= {MIN_TEMPERATURE}, got {}",
                self.temperature
            ));
        }
        if self.seed == 0 {
            return Err("--seed must not be 0 (xorshift32 stays at 0: every draw would be the same)".into());
        }
        if !(1..=MAX_REPEATS).contains(&self.repeats) {
            return Err(format!(
                "--repeats must be 1 to {MAX_REPEATS}, got {}",
                self.repeats
            ));
        }
        if self.min_tokens > MAX_WINDOW_TOKENS {
            return Err(format!(
                "--tokens must be at most {MAX_WINDOW_TOKENS}, got {}",
                self.min_tokens
            ));
        }
        if !(self.min_window_s.is_finite() && (0.0..=3600.0).contains(&self.min_window_s)) {
            return Err(format!(
                "--min-window must be 0 to 3600 seconds, got {}",
                self.min_window_s
            ));
        }
        if !(1..=MAX_CHECK_TOKENS).contains(&self.check_tokens) {
            return Err(format!(
                "--check-tokens must be 1 to {MAX_CHECK_TOKENS} (every row is checked before it is timed), got {}",
                self.check_tokens
            ));
        }
        if !(self.watts_per_core.is_finite() && self.watts_per_core > 0.0) {
            return Err(format!(
                "--watts-per-core must be a positive number, got {}",
                self.watts_per_core
            ));
        }
        Ok(())
    }

    pub fn settings(&self) -> Settings {
        Settings {
            temperature: self.temperature,
        }
    }
}

/// The timing of one variant.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Median over the windows.
    pub tok_per_s: f64,
    pub ns_per_token: f64,
    pub window_tokens: u64,
    /// Each window's rate, in the order run.
    pub windows: Vec<f64>,
    /// Power over the timed windows, measured or estimated.
    pub power: crate::energy::Power,
}

/// Times `variant`: a warm-up, then `repeats` windows of at least `min_tokens` tokens and
/// `min_window_s` seconds each; the median rate is reported.
pub fn time_variant(variant: &mut dyn Variant, o: &BenchOptions) -> Timing {
    variant.reset(o.seed);
    // Windows are whole steps of every stream, so every token asked for is run exactly.
    let streams = variant.info().streams.max(1) as u64;
    // Warm-up, doubling until it lasts `warmup_s`; it also estimates the rate.
    let mut n = 256u64.next_multiple_of(streams);
    let rate = loop {
        let t = Instant::now();
        black_box(variant.run(n));
        let dt = t.elapsed().as_secs_f64();
        if dt >= o.warmup_s || n >= 1 << 40 {
            break n as f64 / dt.max(1e-9);
        }
        n *= 2;
    };
    let mut window = ((rate * o.min_window_s * 1.1) as u64)
        .max(o.min_tokens)
        .max(1)
        .next_multiple_of(streams);
    let mut windows = Vec::with_capacity(o.repeats);
    let on_gpu = variant.info().on_gpu;
    let energy_from = o.rapl.as_ref().filter(|_| !on_gpu).and_then(|r| r.read());
    let device_from = variant.device_energy_joules();
    let timed = Instant::now();
    while windows.len() < o.repeats.max(1) {
        let t = Instant::now();
        black_box(variant.run(window));
        let dt = t.elapsed().as_secs_f64().max(1e-9);
        if dt < o.min_window_s {
            // Too short (the machine sped up, or the estimate was off): lengthen and redo.
            window = ((window as f64 * o.min_window_s / dt * 1.1) as u64)
                .max(window + 1)
                .next_multiple_of(streams);
            continue;
        }
        windows.push(window as f64 / dt);
    }
    let seconds = timed.elapsed().as_secs_f64().max(1e-9);
    let measured = o.rapl.as_ref().zip(energy_from).and_then(|(rapl, from)| {
        let to = rapl.read()?;
        Some(crate::energy::Power::Measured {
            watts: rapl.joules(&from, &to) / seconds,
            source: "RAPL package",
        })
    });
    let power = if on_gpu {
        match (device_from, variant.device_energy_joules()) {
            (Some(from), Some(to)) => crate::energy::Power::Measured {
                watts: (to - from) / seconds,
                source: "NVML",
            },
            _ => crate::energy::Power::NotMeasured,
        }
    } else {
        measured.unwrap_or(crate::energy::Power::Estimated {
            watts: o.watts_per_core * variant.info().threads.max(1) as f64,
            watts_per_core: o.watts_per_core,
        })
    };
    let mut sorted = windows.clone();
    sorted.sort_by(f64::total_cmp);
    let tok_per_s = sorted[sorted.len() / 2];
    Timing {
        tok_per_s,
        ns_per_token: 1e9 / tok_per_s,
        window_tokens: window,
        windows,
        power,
    }
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

impl Row {
    /// True when the variant must draw the oracle's tokens and did not: a bug.
    pub fn mismatched(&self) -> bool {
        self.info.exact_tokens
            && self
                .agreement
                .as_ref()
                .is_some_and(|a| a.differed > 0 || a.max_abs_logit_diff.is_nan())
    }
}

impl Agreement {
    /// Teacher-forced token agreement, counting excused boundary draws as agreeing.
    pub fn token_agreement(&self) -> f64 {
        (self.agreed + self.excused) as f64 / self.tokens.max(1) as f64
    }
}

/// Whether fp32 can compute `weights` at all: over the first `steps` steps of the benchmark
/// stream the fp32 reference's logits must be finite and agree with the f64 reference's (within
/// 1e-3, relative to their size). Weights that are finite but so large that fp32 overflows (a
/// sum of squares in an RMSNorm, say) are refused up front with the step, instead of every fp32
/// row, the reference included, disagreeing with its oracle.
pub fn check_fp32_range(weights: &Weights, o: &BenchOptions, steps: usize) -> Result<(), String> {
    let shape = *weights.shape();
    let mut single = crate::Reference::<f32>::new(weights);
    let mut double = crate::Reference::<f64>::new(weights);
    let mut sampler = Sampler::new(o.temperature);
    let mut stream = Stream::new(&shape, o.seed);
    for step in 0..steps {
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
pub fn check_agreement(variant: &mut dyn Variant, oracle: &mut dyn Variant, o: &BenchOptions) -> Agreement {
    let shape = oracle.shape();
    let mut a = Agreement::new(oracle, o.check_tokens);
    let mut sampler = Sampler::new(o.temperature);
    let mut stream = Stream::new(&shape, o.seed);
    for _ in 0..o.check_tokens {
        let r = stream.rng.uniform();
        let want = a.compare_step(oracle, variant, &mut sampler, stream.tok, stream.pos, r);
        stream.advance(want);
    }
    let (mut s1, mut s2) = (Stream::new(&shape, o.seed), Stream::new(&shape, o.seed));
    for _ in 0..o.check_tokens {
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

/// Compares `variant` with `oracle` teacher-forced on given sequences (each fed from position
/// 0), drawing with uniforms from xorshift32 seeded with `seed`. No free run.
pub fn teacher_forced(
    variant: &mut dyn Variant,
    oracle: &mut dyn Variant,
    sequences: &[Vec<usize>],
    temperature: f32,
    seed: u32,
) -> Agreement {
    let steps = sequences.iter().map(Vec::len).sum();
    let mut a = Agreement::new(oracle, steps);
    a.free_run_tokens = 0;
    let mut sampler = Sampler::new(temperature);
    let mut rng = crate::XorShift32::new(seed);
    for seq in sequences {
        for (pos, &tok) in seq.iter().enumerate() {
            a.compare_step(oracle, variant, &mut sampler, tok, pos, rng.uniform());
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
            let d = (*x as f64 - *y as f64).abs();
            // NaN must never look like agreement.
            self.max_abs_logit_diff = if d.is_nan() {
                f64::NAN
            } else {
                self.max_abs_logit_diff.max(d)
            };
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
pub fn teacher_forced_lanes<K: crate::kernel::BatchKernel>(
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
    let mut rngs: Vec<crate::XorShift32> = (0..lanes)
        .map(|l| crate::XorShift32::new(crate::stream::stream_seed(seed, l)))
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

/// The outcome of one registry entry.
#[derive(Debug)]
pub enum Outcome {
    Ran(Box<Row>),
    Skipped {
        name: String,
        backend: String,
        reason: String,
    },
}

/// A measured variant.
#[derive(Debug)]
pub struct Row {
    pub info: VariantInfo,
    pub timing: Timing,
    pub agreement: Option<Agreement>,
    pub names: Option<Vec<String>>,
}

/// Progress of a bench run, for the caller to display.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    Preparing(&'a str),
    Checking(&'a str),
    Timing(&'a str),
}

/// Runs every spec `keep` selects: prepare, check against the oracle, time, and (when asked)
/// generate names.
pub fn run_all(
    specs: &[VariantSpec],
    weights: &Weights,
    o: &BenchOptions,
    keep: &dyn Fn(&VariantSpec) -> bool,
    progress: &mut dyn FnMut(Event<'_>),
) -> Vec<Outcome> {
    let settings = o.settings();
    let mut out = Vec::new();
    for spec in specs {
        if !keep(spec) {
            continue;
        }
        if let Some(shape) = spec.shape
            && shape != *weights.shape()
        {
            out.push(Outcome::Skipped {
                name: spec.name.clone(),
                backend: spec.backend.clone(),
                reason: format!("generated for shape {shape} (run the bench with --shape {shape})"),
            });
            continue;
        }
        progress(Event::Preparing(&spec.name));
        let mut variant = match spec.prepare(weights, &settings) {
            Ok(v) => v,
            Err(reason) => {
                out.push(Outcome::Skipped {
                    name: spec.name.clone(),
                    backend: spec.backend.clone(),
                    reason,
                });
                continue;
            }
        };
        progress(Event::Checking(&spec.name));
        let agreement = variant
            .info()
            .oracle
            .build(weights, &settings)
            .map(|mut oracle| check_agreement(variant.as_mut(), oracle.as_mut(), o));
        progress(Event::Timing(&spec.name));
        let timing = time_variant(variant.as_mut(), o);
        let names = (o.names > 0).then(|| variant.names(o.names, o.seed));
        out.push(Outcome::Ran(Box::new(Row {
            info: variant.info().clone(),
            timing,
            agreement,
            names,
        })));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use microgpt_model::Shape;

    fn options() -> BenchOptions {
        BenchOptions {
            rapl: None,
            ..BenchOptions::default()
        }
    }

    #[test]
    fn the_defaults_are_valid_and_each_bad_option_is_named() {
        assert_eq!(options().validate(), Ok(()));
        let bad = [
            (
                BenchOptions {
                    temperature: 1e-10,
                    ..options()
                },
                "--temperature",
            ),
            (
                BenchOptions {
                    temperature: f32::NAN,
                    ..options()
                },
                "--temperature",
            ),
            (BenchOptions { seed: 0, ..options() }, "--seed"),
            (
                BenchOptions {
                    repeats: 0,
                    ..options()
                },
                "--repeats",
            ),
            (
                BenchOptions {
                    repeats: usize::MAX,
                    ..options()
                },
                "--repeats",
            ),
            (
                BenchOptions {
                    min_tokens: u64::MAX,
                    ..options()
                },
                "--tokens",
            ),
            (
                BenchOptions {
                    min_window_s: -1.0,
                    ..options()
                },
                "--min-window",
            ),
            (
                BenchOptions {
                    check_tokens: 0,
                    ..options()
                },
                "--check-tokens",
            ),
            (
                BenchOptions {
                    watts_per_core: 0.0,
                    ..options()
                },
                "--watts-per-core",
            ),
        ];
        for (o, flag) in bad {
            let e = o.validate().unwrap_err();
            assert!(e.starts_with(flag) && !e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn weights_beyond_fp32_are_refused_and_ordinary_ones_pass() {
        let o = options();
        assert_eq!(
            check_fp32_range(&microgpt_weights::default_weights(), &o, 64),
            Ok(())
        );
        let shape = Shape::parse("embd=32,layers=2,mlp=128").unwrap();
        assert_eq!(check_fp32_range(&Weights::random(shape, 3, 0.3), &o, 64), Ok(()));
        // Finite weights whose squares overflow fp32 in the first RMSNorm: the fp32 reference
        // then computes zeros where the f64 one does not.
        let mut big = microgpt_weights::default_weights();
        big.data_mut().iter_mut().for_each(|w| *w = 1e30);
        let e = check_fp32_range(&big, &o, 64).unwrap_err();
        assert!(e.contains("out of fp32's range") && e.contains("step 0"), "{e}");
    }
}
