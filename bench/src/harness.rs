//! The bench harness: every variant timed the same way and checked against its oracle.

use crate::energy::{DEFAULT_WATTS_PER_CORE, Power, Rapl};
use crate::latency::{self, Latency};
use crate::stats;
use microgpt_runtime::check::{Agreement, CheckOptions, check_agreement};
use microgpt_runtime::sampler::{DEFAULT_SEED, DEFAULT_TEMPERATURE};
use microgpt_runtime::variant::{Settings, Variant, VariantInfo, VariantSpec};
use microgpt_weights::Weights;
use std::hint::black_box;
use std::time::Instant;

/// How to time and check.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub seed: u32,
    pub temperature: f32,
    /// Minimum tokens per timed window.
    pub min_tokens: u64,
    /// Minimum duration of a timed window, seconds.
    pub min_window_s: f64,
    /// Timed windows; the median is reported, with its confidence interval.
    pub repeats: usize,
    /// Single steps timed for the latency percentiles of single-stream rows (0: none).
    pub latency_samples: u64,
    /// Warm-up before timing, seconds.
    pub warmup_s: f64,
    /// Teacher-forced steps compared with the oracle (and free-running steps compared too).
    pub check_tokens: usize,
    /// Names to generate per variant (0: none).
    pub names: usize,
    /// The CPU package's energy counters, when readable: rows' power is then measured.
    pub rapl: Option<Rapl>,
    /// Otherwise power is estimated as this many watts per core used.
    pub watts_per_core: f64,
}

impl Default for BenchOptions {
    fn default() -> BenchOptions {
        BenchOptions {
            seed: DEFAULT_SEED,
            temperature: DEFAULT_TEMPERATURE,
            min_tokens: 10_000,
            min_window_s: 0.2,
            repeats: 5,
            latency_samples: latency::DEFAULT_SAMPLES,
            warmup_s: 0.1,
            check_tokens: 4096,
            names: 0,
            rapl: Rapl::detect(),
            watts_per_core: DEFAULT_WATTS_PER_CORE,
        }
    }
}

pub use microgpt_runtime::sampler::MIN_TEMPERATURE;

/// The most timed windows per variant, and tokens per window, the bench accepts.
pub const MAX_REPEATS: usize = 1000;
pub const MAX_WINDOW_TOKENS: u64 = 1_000_000_000_000;
/// The most single steps a latency pass records.
pub const MAX_LATENCY_SAMPLES: u64 = 100_000_000;
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
        if self.latency_samples > MAX_LATENCY_SAMPLES {
            return Err(format!(
                "--latency-samples must be 0 to {MAX_LATENCY_SAMPLES}, got {}",
                self.latency_samples
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

    /// What the agreement checks compare.
    pub fn check(&self) -> CheckOptions {
        CheckOptions {
            seed: self.seed,
            temperature: self.temperature,
            tokens: self.check_tokens,
        }
    }

    /// The most seconds a row's latency pass runs: twice a window, and 50 ms more.
    pub fn latency_budget_s(&self) -> f64 {
        2.0 * self.min_window_s + 0.05
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
    /// The median's confidence interval ([`stats::median_interval`]).
    pub interval: (f64, f64),
    pub ns_per_token: f64,
    pub window_tokens: u64,
    /// Each window's rate, in the order run.
    pub windows: Vec<f64>,
    /// The windows that stand out from the rest ([`stats::outliers`]).
    pub outliers: Vec<usize>,
    /// Per-token latency (single-stream rows).
    pub latency: Option<Latency>,
    /// Power over the timed windows, measured or estimated.
    pub power: Power,
}

/// Times `variant`: a warm-up, then `repeats` windows of at least `min_tokens` tokens and
/// `min_window_s` seconds each; the median rate is reported, with its interval. Then, for a
/// single-stream row, single steps are timed for the latency percentiles (up to
/// `latency_samples`, for at most [`BenchOptions::latency_budget_s`]).
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
        Some(Power::Measured {
            watts: rapl.joules(&from, &to) / seconds,
            source: "RAPL package",
        })
    });
    let power = if on_gpu {
        match (device_from, variant.device_energy_joules()) {
            (Some(from), Some(to)) => Power::Measured {
                watts: (to - from) / seconds,
                source: "NVML",
            },
            _ => Power::NotMeasured,
        }
    } else {
        measured.unwrap_or(Power::Estimated {
            watts: o.watts_per_core * variant.info().threads.max(1) as f64,
            watts_per_core: o.watts_per_core,
        })
    };
    let tok_per_s = stats::median(&windows);
    let latency = latency::measure(variant, o.latency_samples, o.latency_budget_s());
    Timing {
        tok_per_s,
        interval: stats::median_interval(&windows),
        ns_per_token: 1e9 / tok_per_s,
        window_tokens: window,
        outliers: stats::outliers(&windows),
        windows,
        power,
        latency,
    }
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
                    reason: reason.to_string(),
                });
                continue;
            }
        };
        progress(Event::Checking(&spec.name));
        let agreement = variant
            .info()
            .oracle
            .build(weights, &settings)
            .map(|mut oracle| check_agreement(variant.as_mut(), oracle.as_mut(), &o.check()));
        progress(Event::Timing(&spec.name));
        let timing = time_variant(variant.as_mut(), o);
        variant.settle();
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
                    latency_samples: u64::MAX,
                    ..options()
                },
                "--latency-samples",
            ),
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
}
