//! Statistics over a row's timed windows: the median, its confidence interval, the windows that
//! stand out, and the change from a saved run's windows of the same row.
//!
//! Intervals are percentile bootstraps of the median (10,000 resamples, a fixed seed, so the
//! same windows always give the same interval). With few windows a bootstrap interval is only as
//! wide as the windows' spread: with five windows it runs about from the slowest to the fastest
//! (docs/bench.md#statistics).

/// The confidence level of every interval the bench reports.
pub const CONFIDENCE: f64 = 0.95;

/// Bootstrap resamples per interval.
pub const RESAMPLES: usize = 10_000;

/// The median (the mean of the middle two for an even count). `NaN` for no values.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    median_of_sorted(&sorted)
}

fn median_of_sorted(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// SplitMix64: the bootstrap's resampling indices (fixed seed: reproducible intervals).
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // Multiply-shift: unbiased enough for n far below 2^32.
        (((z >> 32) * n as u64) >> 32) as usize
    }
}

/// The medians of `RESAMPLES` resamples (with replacement) of `values`.
fn bootstrap_medians(values: &[f64], rng: &mut SplitMix) -> Vec<f64> {
    let mut sample = vec![0.0; values.len()];
    (0..RESAMPLES)
        .map(|_| {
            for s in sample.iter_mut() {
                *s = values[rng.below(values.len())];
            }
            sample.sort_by(f64::total_cmp);
            median_of_sorted(&sample)
        })
        .collect()
}

/// The nearest rank of quantile `q` among `n` sorted values, 1-based: the smallest rank with at
/// least `q · n` values at or below it (at least 1). The one quantile rule of the bench.
pub fn nearest_rank(q: f64, n: u64) -> u64 {
    // Less a rounding error, so that 0.025 · 10000 (250.00000000000003) is rank 250.
    ((q * n as f64 - 1e-9).ceil() as u64).clamp(1, n.max(1))
}

/// The `(1 - CONFIDENCE) / 2` and `(1 + CONFIDENCE) / 2` quantiles of `estimates`.
fn percentile_interval(mut estimates: Vec<f64>) -> (f64, f64) {
    estimates.sort_by(f64::total_cmp);
    let at = |q: f64| estimates[nearest_rank(q, estimates.len() as u64) as usize - 1];
    (at((1.0 - CONFIDENCE) / 2.0), at((1.0 + CONFIDENCE) / 2.0))
}

const SEED: u64 = 0x6D69_6372_6F67_7074;

/// The median's bootstrap interval: `(low, high)`. One window gives `(w, w)`; none, `NaN`s.
pub fn median_interval(windows: &[f64]) -> (f64, f64) {
    match windows {
        [] => (f64::NAN, f64::NAN),
        [w] => (*w, *w),
        _ => percentile_interval(bootstrap_medians(windows, &mut SplitMix(SEED))),
    }
}

/// How far from the median a window must be, as a fraction of it, to count as an outlier: closer
/// ones are within what this kind of machine does from window to window.
pub const OUTLIER_MIN_DEVIATION: f64 = 0.05;

/// Windows that stand out from the rest: a modified z-score (0.6745 · |x − median| / MAD, after
/// Iglewicz and Hoaglin) above 3.5, and at least [`OUTLIER_MIN_DEVIATION`] from the median.
/// Indices in the order run. None below three windows, or when more than half the windows are
/// equal (MAD = 0).
pub fn outliers(windows: &[f64]) -> Vec<usize> {
    if windows.len() < 3 {
        return Vec::new();
    }
    let m = median(windows);
    let deviations: Vec<f64> = windows.iter().map(|w| (w - m).abs()).collect();
    let mad = median(&deviations);
    if mad <= 0.0 || !mad.is_finite() {
        return Vec::new();
    }
    deviations
        .iter()
        .enumerate()
        .filter(|(_, d)| 0.6745 * **d / mad > 3.5 && **d >= OUTLIER_MIN_DEVIATION * m.abs())
        .map(|(i, _)| i)
        .collect()
}

/// How a row compares with the same row of a saved run.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// median(now) / median(baseline) − 1: +0.10 is 10 % faster.
    pub change: f64,
    /// The change's bootstrap interval (both sets of windows resampled).
    pub interval: (f64, f64),
    pub verdict: Verdict,
}

/// Whether the interval of the change lies wholly above or below zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Faster,
    Slower,
    Same,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Faster => "faster",
            Verdict::Slower => "slower",
            Verdict::Same => "same",
        }
    }
}

/// Compares the windows' rates of a row (`now`) with a saved run's (`baseline`); `None` when
/// either has no window or a rate that is not a positive number.
pub fn compare(now: &[f64], baseline: &[f64]) -> Option<Change> {
    let valid = |w: &[f64]| !w.is_empty() && w.iter().all(|x| x.is_finite() && *x > 0.0);
    if !valid(now) || !valid(baseline) {
        return None;
    }
    let change = median(now) / median(baseline) - 1.0;
    let mut rng = SplitMix(SEED);
    let a = bootstrap_medians(now, &mut rng);
    let b = bootstrap_medians(baseline, &mut rng);
    let ratios = a.iter().zip(&b).map(|(a, b)| a / b - 1.0).collect();
    let interval = percentile_interval(ratios);
    let verdict = if interval.0 > 0.0 {
        Verdict::Faster
    } else if interval.1 < 0.0 {
        Verdict::Slower
    } else {
        Verdict::Same
    };
    Some(Change {
        change,
        interval,
        verdict,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_ranks() {
        assert_eq!(nearest_rank(0.025, 10_000), 250);
        assert_eq!(nearest_rank(0.975, 10_000), 9750);
        assert_eq!(nearest_rank(0.5, 5), 3);
        assert_eq!(nearest_rank(0.0, 5), 1);
        assert_eq!(nearest_rank(1.0, 5), 5);
        assert_eq!(nearest_rank(0.999, 1000), 999);
    }

    #[test]
    fn five_windows_give_the_slowest_to_the_fastest() {
        let w = [10.0, 11.0, 9.5, 10.4, 10.1];
        assert_eq!(median_interval(&w), (9.5, 11.0));
    }

    #[test]
    fn medians_of_odd_even_and_no_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn the_interval_holds_the_median_and_lies_within_the_windows() {
        let w = [10.0, 11.0, 9.5, 10.4, 10.1, 9.9, 10.2];
        let (lo, hi) = median_interval(&w);
        let m = median(&w);
        assert!(lo <= m && m <= hi, "{lo} {m} {hi}");
        assert!(lo >= 9.5 && hi <= 11.0, "{lo} {hi}");
        assert!(lo < hi);
        // Reproducible: a fixed seed.
        assert_eq!(median_interval(&w), (lo, hi));
        assert_eq!(median_interval(&[5.0]), (5.0, 5.0));
        assert_eq!(median_interval(&[5.0; 4]), (5.0, 5.0));
    }

    #[test]
    fn more_windows_narrow_the_interval() {
        // The same spread, 5 windows and 50: the interval of the median shrinks.
        let few: Vec<f64> = (0..5).map(|i| 100.0 + (i * 37 % 11) as f64).collect();
        let many: Vec<f64> = (0..50).map(|i| 100.0 + (i * 37 % 11) as f64).collect();
        let width = |w: &[f64]| {
            let (lo, hi) = median_interval(w);
            hi - lo
        };
        assert!(width(&many) < width(&few), "{} {}", width(&many), width(&few));
    }

    #[test]
    fn a_window_far_from_the_rest_is_an_outlier() {
        assert_eq!(outliers(&[10.0, 10.2, 9.9, 10.1, 6.0]), vec![4]);
        assert_eq!(outliers(&[10.0, 10.2, 9.9, 10.1, 10.05]), Vec::<usize>::new());
        // Far in MADs, but within a few percent: not flagged.
        assert_eq!(
            outliers(&[10.0, 10.001, 9.999, 10.0005, 10.3]),
            Vec::<usize>::new()
        );
        assert_eq!(outliers(&[10.0, 10.001, 9.999, 10.0005, 11.0]), vec![4]);
        assert_eq!(outliers(&[10.0, 3.0]), Vec::<usize>::new());
        assert_eq!(outliers(&[10.0, 10.0, 10.0, 2.0]), Vec::<usize>::new());
    }

    #[test]
    fn verdicts_follow_the_interval_of_the_change() {
        let base = [100.0, 101.0, 99.0, 100.5, 99.5];
        let faster = base.map(|x| x * 1.2);
        let slower = base.map(|x| x * 0.8);
        let c = compare(&faster, &base).unwrap();
        assert_eq!(c.verdict, Verdict::Faster);
        assert!((c.change - 0.2).abs() < 1e-9, "{}", c.change);
        assert!(c.interval.0 > 0.0 && c.interval.0 <= c.change && c.change <= c.interval.1);
        assert_eq!(compare(&slower, &base).unwrap().verdict, Verdict::Slower);
        // Within the noise: the same.
        let noisy = [100.5, 99.0, 101.5, 100.0, 98.5];
        let same = compare(&noisy, &base).unwrap();
        assert_eq!(same.verdict, Verdict::Same);
        assert!(same.interval.0 < 0.0 && same.interval.1 > 0.0);
        assert_eq!(compare(&[], &base), None);
        assert_eq!(compare(&base, &[0.0]), None);
        assert_eq!(compare(&[f64::NAN], &base), None);
    }
}
