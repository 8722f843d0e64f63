//! The space the property tests draw from (docs/validation.md#property-tests): random valid
//! shapes, weight scales, temperatures, and how many cases to run.

use microgpt_model::Shape;
use proptest::prelude::*;
use proptest::test_runner::Config;

/// Random valid shapes: vocab 2 to 300, block 1 to 64, 1 to 8 heads of 1 to 64 channels with the
/// embedding (heads × head size) at most 64 (odd head sizes included), layers 1 to 4, mlp 1 to
/// 256. Shrinks towards the smallest of each.
pub fn shapes() -> impl Strategy<Value = Shape> {
    (1usize..=8)
        .prop_flat_map(|heads| {
            (
                2usize..=300,
                1usize..=64,
                Just(heads),
                1usize..=64 / heads,
                1usize..=4,
                1usize..=256,
            )
        })
        .prop_map(|(vocab, block, heads, head, layers, mlp)| {
            Shape::new(vocab, block, heads * head, heads, layers, mlp).expect("every drawn shape is valid")
        })
}

/// Standard deviations of random weights for fp32 checks: small (near-uniform draws), the trained
/// weights' order, and large (logits far apart). Larger ones make the activations of a deep
/// model grow past 10^4, where fp32 itself is off by whole units against f64 and two fp32 orders
/// of summation cannot be expected to agree.
pub fn scales() -> impl Strategy<Value = f32> {
    prop_oneof![Just(0.02f32), Just(0.1), Just(0.3), Just(1.0)]
}

/// [`scales`] and one larger, for integer arithmetic (exact in any order): values far outside
/// Q4.12's ±8, so that every saturation is reached.
pub fn saturating_scales() -> impl Strategy<Value = f32> {
    prop_oneof![Just(0.02f32), Just(0.1), Just(0.3), Just(1.0), Just(2.5)]
}

/// Sampling temperatures: the smallest the bench accepts (`runtime::sampler::MIN_TEMPERATURE`),
/// the default, 1 and a large one. For engines whose logits match the reference's exactly.
pub fn temperatures() -> impl Strategy<Value = f32> {
    prop_oneof![Just(1e-3f32), Just(0.5), Just(1.0), Just(100.0)]
}

/// [`temperatures`] from the default up, for fp32 engines: their logits may differ from the
/// reference's by the fp32 tolerance δ, which moves a boundary of the CDF by up to about δ / T;
/// at T = 0.001 that is far beyond the 1e-6 within which a differing draw is excused. The
/// smallest temperature is tried with chosen weights by the sampler-edge tests.
pub fn fp32_temperatures() -> impl Strategy<Value = f32> {
    prop_oneof![Just(0.5f32), Just(1.0), Just(100.0)]
}

/// The uniforms the sampler-edge tests draw with: 0, 2^-24, 1/2 and 1 - 2^-24, the largest
/// xorshift32's draw gives, where the last CDF entry can fall below `r` (the contract's answer is
/// the last token, never token 0).
pub const SAMPLER_EDGES: [f32; 4] = [0.0, 1.0 / 16_777_216.0, 0.5, 1.0 - 1.0 / 16_777_216.0];

/// The temperatures the sampler-edge tests try: the smallest the bench accepts, the default and a
/// large one.
pub const EDGE_TEMPERATURES: [f32; 3] = [1e-3, 0.5, 100.0];

/// A property test's configuration: `cases` cases (the count CI runs), or `PROPTEST_CASES` when
/// set; at most `shrink_iters` shrinking steps (fewer where a case is slow, as where it compiles
/// C++).
pub fn config(cases: u32, shrink_iters: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        max_shrink_iters: shrink_iters,
        ..Config::default()
    }
}
