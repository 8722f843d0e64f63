//! Seeded random initialisation.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// `n` draws from N(0, std), from ChaCha8 seeded with `seed` (portable across platforms).
pub(crate) fn normal(n: usize, seed: u64, std: f32) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dist = Normal::new(0.0f32, std.abs()).expect("a finite standard deviation");
    (0..n).map(|_| dist.sample(&mut rng)).collect()
}
