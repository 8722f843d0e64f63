//! Property tests: the JIT at random valid shapes, random weights at several scales (larger ones
//! for Q4.12, whose integers are exact in any order) and random temperatures, teacher-forced against the scalar references over every position: no refusal,
//! the reference's tokens (boundary draws excused), fp32 logits within 1e-4 of the reference's
//! relative to their size (or within four times the fp32 reference's own error against f64,
//! where large weights make fp32 inexact), Q4.12 logits bit-identical. `PROPTEST_CASES` sets the case count
//! (CI runs the default); a failure shrinks to a small shape and its seed is kept in
//! `properties.proptest-regressions` beside this file, a case every later run tries first.

use microgpt_jit::{JitOptions, JitVariant, Precision};
use microgpt_model::Shape;
use microgpt_runtime::check::{fp32_logit_tolerance, teacher_forced};
use microgpt_runtime::{Oracle, Reference, Settings, Variant};
use microgpt_testdata::full_length_sequences;
use microgpt_testdata::props::{config, fp32_temperatures, saturating_scales, scales, shapes, temperatures};
use microgpt_weights::Weights;
use proptest::prelude::*;

/// The largest [`fp32_logit_tolerance`] over `seqs`, teacher-forced.
fn tolerance(weights: &Weights, seqs: &[Vec<usize>]) -> f64 {
    let mut single = Reference::<f32>::new(weights);
    let mut double = Reference::<f64>::new(weights);
    let mut most = 0.0f64;
    for seq in seqs {
        for (pos, &tok) in seq.iter().enumerate() {
            let exact = double.forward(tok, pos).to_vec();
            most = most.max(fp32_logit_tolerance(single.forward(tok, pos), &exact));
        }
    }
    most
}

fn jit_matches(
    shape: Shape,
    scale: f32,
    seed: u64,
    temperature: f32,
    precision: Precision,
) -> Result<(), TestCaseError> {
    let weights = Weights::random(shape, seed, scale);
    let settings = Settings { temperature };
    let options = JitOptions {
        verify: true,
        ..JitOptions::new(precision)
    };
    let mut jit = JitVariant::new(&weights, &settings, &options)
        .map_err(|e| TestCaseError::fail(format!("{shape}: refused: {e}")))?;
    let mut oracle: Box<dyn Variant> = Oracle::for_precision(precision)
        .build(&weights, &settings)
        .expect("fp32 and Q4.12 have a reference");
    let seqs = full_length_sequences(shape.vocab, shape.block, 2, seed as u32 | 1);
    let a = teacher_forced(&mut jit, oracle.as_mut(), &seqs, temperature, seed as u32 | 1);
    prop_assert_eq!(
        a.differed,
        0,
        "{} {:?} T={}: tokens differ: {:?}",
        shape,
        precision,
        temperature,
        a
    );
    if precision == Precision::Q412 {
        prop_assert_eq!(a.max_abs_logit_diff, 0.0, "{}: Q4.12 logits differ", shape);
    } else {
        let tolerance = tolerance(&weights, &seqs);
        prop_assert!(
            a.max_abs_logit_diff <= tolerance,
            "{shape}: max |Δlogit| {} above {tolerance}",
            a.max_abs_logit_diff
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(24, 64))]

    #[test]
    fn fp32_matches_the_reference_at_random_shapes(
        shape in shapes(), scale in scales(), seed in any::<u64>(), temperature in fp32_temperatures()
    ) {
        jit_matches(shape, scale, seed, temperature, Precision::F32)?;
    }

    #[test]
    fn q412_matches_the_reference_at_random_shapes(
        shape in shapes(), scale in saturating_scales(), seed in any::<u64>(), temperature in temperatures()
    ) {
        jit_matches(shape, scale, seed, temperature, Precision::Q412)?;
    }
}
