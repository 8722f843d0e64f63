//! Per-token latency of single-stream rows: each step timed on its own, recorded in an
//! HdrHistogram; and the FPGA's exact latency from its cycle model, in the same form.
//!
//! A sample is the time between two consecutive timestamps with one step (`run(1)`, one token)
//! between them, so it includes one reading of the timer and one call through the variant's
//! interface. The timer's own cost is measured and reported beside the figures, not subtracted
//! (docs/bench.md#latency).

use hdrhistogram::Histogram;
use microgpt_runtime::variant::Variant;
use std::hint::black_box;
use std::time::Instant;

/// A latency distribution's summary, in nanoseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    /// Steps recorded (for the modelled row: steps the cycle model was applied to).
    pub samples: u64,
    /// How the figures were obtained.
    pub source: LatencySource,
    /// (quantile, ns) along the distribution, for the percentile chart.
    pub curve: Vec<(f64, f64)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum LatencySource {
    /// Timestamps around every single step; `timer_ns`: the median cost of one timer reading.
    Timed { timer_ns: f64 },
    /// A cycle model's exact figures.
    Modelled,
}

impl LatencySource {
    pub fn label(&self) -> &'static str {
        match self {
            LatencySource::Timed { .. } => "timed, single steps",
            LatencySource::Modelled => "modelled, exact",
        }
    }
}

/// The quantiles the curve samples: from 0, evenly in "nines" (−log10(1 − q)), up to 1 − 10⁻⁵ or
/// as far as `samples` resolve (one sample beyond the last quantile).
fn curve_quantiles(samples: u64) -> impl Iterator<Item = f64> {
    (0..=100)
        .map(|i| 1.0 - 10f64.powf(-(i as f64) * 0.05))
        .filter(move |q| (1.0 - q) * samples as f64 >= 1.0 - 1e-9)
}

/// The median cost of one `Instant::now()` on this machine, in nanoseconds.
pub fn timer_cost_ns() -> f64 {
    let mut costs: Vec<f64> = (0..2001)
        .map(|_| {
            let a = Instant::now();
            let b = black_box(Instant::now());
            (b - a).as_nanos() as f64
        })
        .collect();
    costs.sort_by(f64::total_cmp);
    costs[costs.len() / 2]
}

/// Steps a latency pass records by default (`--latency-samples`).
pub const DEFAULT_SAMPLES: u64 = 100_000;

/// Times single steps of `variant` (one stream), up to `samples` of them or for at most
/// `seconds`, whichever comes first (at least one step). `None` for a multi-stream variant,
/// where one step is many tokens.
pub fn measure(variant: &mut dyn Variant, samples: u64, seconds: f64) -> Option<Latency> {
    if variant.info().streams != 1 || samples == 0 {
        return None;
    }
    let timer_ns = timer_cost_ns();
    // Three significant figures; the histogram grows to the largest value recorded.
    let mut h = Histogram::<u64>::new(3).expect("3 significant figures is valid");
    let start = Instant::now();
    let mut t0 = start;
    let mut n = 0u64;
    while n < samples {
        black_box(variant.run(1));
        let t1 = Instant::now();
        let ns = (t1 - t0).as_nanos().min(u64::MAX as u128) as u64;
        // `record` grows the histogram; only past its largest trackable value does it clamp.
        if h.record(ns).is_err() {
            h.saturating_record(ns);
        }
        t0 = t1;
        n += 1;
        if (t1 - start).as_secs_f64() >= seconds {
            break;
        }
    }
    let at = |q: f64| h.value_at_quantile(q) as f64;
    Some(Latency {
        p50: at(0.5),
        p99: at(0.99),
        p999: at(0.999),
        max: h.max() as f64,
        mean: h.mean(),
        samples: h.len(),
        source: LatencySource::Timed { timer_ns },
        curve: curve_quantiles(h.len()).map(|q| (q, at(q))).collect(),
    })
}

/// The exact distribution of steps whose latencies are known: `(ns, steps)` pairs. `None` when
/// there are no steps.
pub fn exact(counts: &[(f64, u64)]) -> Option<Latency> {
    let mut sorted: Vec<(f64, u64)> = counts.iter().copied().filter(|(_, c)| *c > 0).collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: u64 = sorted.iter().map(|(_, c)| c).sum();
    if total == 0 {
        return None;
    }
    let at = |q: f64| {
        let rank = crate::stats::nearest_rank(q, total);
        let mut seen = 0;
        for (v, c) in &sorted {
            seen += c;
            if seen >= rank {
                return *v;
            }
        }
        sorted[sorted.len() - 1].0
    };
    let mean = sorted.iter().map(|(v, c)| v * *c as f64).sum::<f64>() / total as f64;
    Some(Latency {
        p50: at(0.5),
        p99: at(0.99),
        p999: at(0.999),
        max: sorted[sorted.len() - 1].0,
        mean,
        samples: total,
        source: LatencySource::Modelled,
        curve: curve_quantiles(total).map(|q| (q, at(q))).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use microgpt_runtime::Precision;
    use microgpt_runtime::variant::VariantInfo;

    /// A stand-in variant whose every 100th step spins for a while.
    struct Spiky {
        info: VariantInfo,
        steps: u64,
    }

    impl Variant for Spiky {
        fn info(&self) -> &VariantInfo {
            &self.info
        }
        fn shape(&self) -> microgpt_model::Shape {
            microgpt_model::Shape::DEFAULT
        }
        fn step(&mut self, _: usize, _: usize, _: f32) -> usize {
            0
        }
        fn logits(&self) -> Vec<f32> {
            Vec::new()
        }
        fn reset(&mut self, _: u32) {}
        fn run(&mut self, tokens: u64) -> u64 {
            for _ in 0..tokens {
                self.steps += 1;
                if self.steps.is_multiple_of(100) {
                    let t = Instant::now();
                    while t.elapsed().as_micros() < 200 {
                        std::hint::spin_loop();
                    }
                }
            }
            self.steps
        }
    }

    #[test]
    fn slow_steps_show_in_the_tail_not_the_median() {
        let mut v = Spiky {
            info: VariantInfo::new("spiky", "test", "scalar", Precision::F32),
            steps: 0,
        };
        let l = measure(&mut v, 20_000, 60.0).unwrap();
        assert_eq!(l.samples, 20_000);
        // One step in a hundred takes >= 200 µs: p99.9 and max see it, the median does not.
        assert!(l.p999 >= 199_000.0 && l.max >= 199_000.0, "{l:?}");
        assert!(l.p50 < 100_000.0, "{l:?}");
        assert!(l.p50 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max);
        assert!(matches!(l.source, LatencySource::Timed { .. }));
        assert!(l.curve.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn many_streams_have_no_per_token_latency() {
        let mut info = VariantInfo::new("wide", "test", "scalar", Precision::F32);
        info.streams = 16;
        let mut v = Spiky { info, steps: 0 };
        assert_eq!(measure(&mut v, 100, 1.0), None);
    }

    #[test]
    fn exact_percentiles_from_counts() {
        // 900 steps of 10 ns, 99 of 20 ns, one of 30 ns.
        let l = exact(&[(20.0, 99), (10.0, 900), (30.0, 1), (99.0, 0)]).unwrap();
        assert_eq!((l.p50, l.p99, l.p999, l.max), (10.0, 20.0, 20.0, 30.0));
        assert_eq!(l.samples, 1000);
        // The curve stops where 1000 steps stop resolving: 99.9%.
        let last = l.curve.last().unwrap().0;
        assert!((last - 0.999).abs() < 1e-9, "{last}");
        assert!((l.mean - (9000.0 + 1980.0 + 30.0) / 1000.0).abs() < 1e-9);
        assert_eq!(exact(&[]), None);
        assert_eq!(exact(&[(5.0, 0)]), None);
    }
}
