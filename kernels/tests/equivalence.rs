//! Every generated kernel against the references, teacher-forced: the same token, position and
//! uniform draw at every step of full-length sequences, logits and drawn tokens compared.
//!
//! fp32 kernels: logits within 1e-4 of the fp32 reference and of the float64 golden logits,
//! tokens equal except draws within 1e-6 of a CDF boundary. Q4.12 kernels: logits (integers
//! / 4096) bit-identical to the scalar Q4.12 reference.

use microgpt_model::Shape;
use microgpt_runtime::check::{teacher_forced, teacher_forced_lanes};
use microgpt_runtime::kernel::BatchKernel;
use microgpt_runtime::variant::{q412_variant, reference_variant};
use microgpt_runtime::{Precision, PrepareError, Q412Reference, Settings, Variant, VariantSpec};
use microgpt_testdata::{full_length_sequences, golden_logits, shared_data};
use microgpt_weights::{LoadOptions, Weights, load};

/// A kernel that cannot be prepared is skipped (reported) only where this CPU lacks a feature it
/// is compiled for, and never on CI (`CI` set), which runs them all; any other reason fails.
fn skip(name: &str, reason: PrepareError) {
    match reason {
        PrepareError::MissingFeature { .. } if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED {name}: {reason}");
        }
        _ => panic!("{name} cannot be prepared: {reason}"),
    }
}

fn prepare(spec: &VariantSpec, weights: &Weights) -> Option<Box<dyn Variant>> {
    spec.prepare(weights, &Settings::default())
        .map_err(|reason| skip(&spec.name, reason))
        .ok()
}

fn specs_for(shape: Shape) -> Vec<VariantSpec> {
    microgpt_kernels::variants()
        .into_iter()
        .filter(|s| s.shape == Some(shape))
        .collect()
}

/// Most Q4.12 logits of these weights lie inside the representable range, so bit-equality of
/// logits says something.
fn assert_q412_logits_informative(weights: &Weights, seqs: &[Vec<usize>]) {
    let mut engine = Q412Reference::new(weights);
    let (mut inside, mut all) = (0, 0);
    for seq in seqs {
        for (pos, &tok) in seq.iter().enumerate() {
            for &l in engine.forward(tok, pos) {
                inside += usize::from((l as i32).abs() < 32700);
                all += 1;
            }
        }
    }
    assert!(inside * 2 > all, "{inside} of {all} Q4.12 logits unsaturated");
}

fn check_shape(shape: Shape, weights: &Weights, seqs: &[Vec<usize>]) -> usize {
    let specs = specs_for(shape);
    assert!(specs.len() >= 8, "kernels of shape {shape}: {}", specs.len());
    assert_q412_logits_informative(weights, seqs);
    let settings = Settings::default();
    let mut ran = 0;
    for spec in &specs {
        let Some(mut kernel) = prepare(spec, weights) else {
            continue;
        };
        let mut oracle: Box<dyn Variant> = match spec.precision {
            Precision::F32 => Box::new(reference_variant::<f32>(weights, &settings)),
            Precision::Q412 => Box::new(q412_variant(weights, &settings)),
            p => panic!("{}: unexpected precision {p}", spec.name),
        };
        let a = teacher_forced(kernel.as_mut(), oracle.as_mut(), seqs, settings.temperature, 7);
        assert_eq!(
            a.differed, 0,
            "{}: tokens differ beyond the boundary tolerance: {a:?}",
            spec.name
        );
        match spec.precision {
            Precision::Q412 => assert_eq!(a.max_abs_logit_diff, 0.0, "{}: integers differ", spec.name),
            _ => assert!(
                a.max_abs_logit_diff <= 1e-4,
                "{}: max |Δlogit| {}",
                spec.name,
                a.max_abs_logit_diff
            ),
        }
        eprintln!(
            "{shape} {}: {} steps, max |Δlogit| {:.2e}, {} boundary draws",
            spec.name, a.tokens, a.max_abs_logit_diff, a.excused
        );
        ran += 1;
    }
    ran
}

#[test]
fn default_shape_kernels_match_the_references_on_random_weights() {
    let shape = Shape::DEFAULT;
    for seed in [1, 2] {
        let weights = Weights::random(shape, seed, 0.4);
        let seqs = full_length_sequences(shape.vocab, shape.block, 12, seed as u32);
        assert!(check_shape(shape, &weights, &seqs) > 0);
    }
}

#[test]
fn larger_shape_kernels_match_the_references_on_random_weights() {
    let shape = microgpt_kernels::microgpt_32x2::SHAPE;
    assert_eq!(shape.layers, 2);
    let weights = Weights::random(shape, 3, 0.3);
    let seqs = full_length_sequences(shape.vocab, shape.block, 8, 3);
    assert!(check_shape(shape, &weights, &seqs) > 0);
}

#[test]
fn default_shape_kernels_match_on_the_default_weights() {
    let weights = microgpt_weights::default_weights();
    let shape = *weights.shape();
    let seqs = full_length_sequences(shape.vocab, shape.block, 10, 11);
    assert!(check_shape(shape, &weights, &seqs) > 0);
}

/// fp32 kernels against the float64 golden logits of the TALOS weights.
#[test]
fn fp32_kernels_match_the_golden_logits() {
    let test = "fp32_kernels_match_the_golden_logits";
    let (Some(doc), Some(path)) = (golden_logits(test), shared_data("talos/weights_fp32.bin", test)) else {
        return;
    };
    let weights = load(&path, &LoadOptions::default()).unwrap();
    for spec in specs_for(Shape::DEFAULT)
        .iter()
        .filter(|s| s.precision == Precision::F32)
    {
        let Some(mut kernel) = prepare(spec, &weights) else {
            continue;
        };
        let worst = microgpt_testdata::golden_max_diff(&doc, |tok, pos| {
            kernel.step(tok, pos, 0.5);
            kernel.logits()
        });
        assert!(worst <= 1e-4, "{}: max |Δlogit| vs golden {worst}", spec.name);
        eprintln!("{}: max |Δlogit| vs golden {worst:.2e}", spec.name);
    }
}

/// The kernels this architecture must have: the test fails if a path it should cover is gone.
#[test]
fn every_simd_path_of_this_architecture_is_registered() {
    let names: Vec<String> = specs_for(Shape::DEFAULT).iter().map(|s| s.name.clone()).collect();
    let mut expected = vec![
        "scalar-f32",
        "scalar-q4.12",
        "scalar-f32-table",
        "scalar-q4.12-table",
    ];
    if cfg!(target_arch = "x86_64") {
        expected.extend([
            "sse-f32",
            "sse-q4.12",
            "avx2-f32",
            "avx512-f32",
            "avx2-q4.12",
            "avx512-q4.12",
            "avx512-f32-table",
            "avx2-f32-x8",
            "avx2-q4.12-x8",
            "avx512-f32-x16",
            "avx512-q4.12-x16",
        ]);
    }
    if cfg!(target_arch = "aarch64") {
        expected.extend([
            "neon-f32",
            "neon-q4.12",
            "neon-f32-table",
            "neon-q4.12-table",
            "neon-f32-x4",
            "neon-q4.12-x4",
        ]);
    }
    for e in expected {
        assert!(names.iter().any(|n| n == e), "{e} missing from {names:?}");
    }
}

/// Every lane of a lane-batched kernel against its own reference: the lanes run different
/// sequences at different positions (see `teacher_forced_lanes`), so a lane reading another's
/// data or cache shows up.
fn check_lanes<K: BatchKernel>(weights: &Weights, seqs: &[Vec<usize>]) {
    let settings = Settings::default();
    let mut kernel = match K::prepare(weights, &settings) {
        Ok(k) => k,
        Err(reason) => return skip(K::NAME, reason),
    };
    let oracle = || -> Box<dyn Variant> {
        match K::PRECISION {
            Precision::F32 => Box::new(reference_variant::<f32>(weights, &settings)),
            _ => Box::new(q412_variant(weights, &settings)),
        }
    };
    let a = teacher_forced_lanes(&mut kernel, oracle, seqs, settings.temperature, 5);
    assert_eq!(
        a.differed,
        0,
        "{}: tokens differ beyond the boundary tolerance: {a:?}",
        K::NAME
    );
    if K::PRECISION == Precision::Q412 {
        assert_eq!(a.max_abs_logit_diff, 0.0, "{}: integers differ", K::NAME);
    } else {
        assert!(
            a.max_abs_logit_diff <= 1e-4,
            "{}: max |Δlogit| {}",
            K::NAME,
            a.max_abs_logit_diff
        );
    }
    eprintln!(
        "{}: {} lane steps, max |Δlogit| {:.2e}, {} boundary draws",
        K::NAME,
        a.tokens,
        a.max_abs_logit_diff,
        a.excused
    );
}

macro_rules! check_batches {
    ($shape:ident, $weights:expr, $seqs:expr) => {{
        use microgpt_kernels::$shape as m;
        #[cfg(target_arch = "x86_64")]
        {
            check_lanes::<m::avx2_f32_x8::Kernel>($weights, $seqs);
            check_lanes::<m::avx2_q4_12_x8::Kernel>($weights, $seqs);
            check_lanes::<m::avx512_f32_x16::Kernel>($weights, $seqs);
            check_lanes::<m::avx512_q4_12_x16::Kernel>($weights, $seqs);
        }
        #[cfg(target_arch = "aarch64")]
        {
            check_lanes::<m::neon_f32_x4::Kernel>($weights, $seqs);
            check_lanes::<m::neon_q4_12_x4::Kernel>($weights, $seqs);
        }
    }};
}

#[test]
fn batch_lanes_are_independent_streams() {
    let shape = Shape::DEFAULT;
    for seed in [4, 5] {
        let weights = Weights::random(shape, seed, 0.4);
        let seqs = full_length_sequences(shape.vocab, shape.block, 12, seed as u32);
        check_batches!(microgpt_16, &weights, &seqs);
    }
    let weights = microgpt_weights::default_weights();
    let seqs = full_length_sequences(shape.vocab, shape.block, 12, 9);
    check_batches!(microgpt_16, &weights, &seqs);
    let shape = microgpt_kernels::microgpt_32x2::SHAPE;
    let weights = Weights::random(shape, 6, 0.3);
    let seqs = full_length_sequences(shape.vocab, shape.block, 8, 6);
    check_batches!(microgpt_32x2, &weights, &seqs);
}

/// The largest amount, in powers of two, by which a score of some step of `seqs` exceeds that
/// step's own score (age 0) in the same head, for a one-layer model (the fp32 reference's query
/// and cache after each step).
fn largest_score_excess(weights: &Weights, seqs: &[Vec<usize>]) -> f32 {
    let s = *weights.shape();
    assert_eq!(s.layers, 1, "reads the last layer's query only");
    let hd = s.head_dim();
    let mut engine = microgpt_runtime::Reference::<f32>::new(weights);
    let mut worst = f32::NEG_INFINITY;
    for seq in seqs {
        for (pos, &tok) in seq.iter().enumerate() {
            engine.forward(tok, pos);
            let q = engine.buffer(microgpt_model::Buffer::Q).to_vec();
            let (keys, _) = engine.cache(0);
            for h in 0..s.heads {
                let score = |a: usize| -> f32 {
                    (h * hd..(h + 1) * hd)
                        .map(|j| q[j] * keys[a * s.embd + j])
                        .sum::<f32>()
                        / (hd as f32).sqrt()
                };
                let own = score(pos);
                for a in 0..pos {
                    worst = worst.max((score(a) - own) * std::f32::consts::LOG2_E);
                }
            }
        }
    }
    worst
}

/// Queries scaled up until some scores exceed a step's own by far more than 64 powers of two:
/// the fp32 batch kernels' one-pass attention would overflow there, so they take the max-shifted
/// form, and must still match the reference.
#[test]
fn batch_attention_with_peaked_scores_matches() {
    let shape = Shape::DEFAULT;
    let mut weights = Weights::random(shape, 8, 0.4);
    let wq = weights.layout().tensor(microgpt_model::Param::Wq(0)).range();
    for w in &mut weights.data_mut()[wq] {
        *w *= 40.0;
    }
    let seqs = full_length_sequences(shape.vocab, shape.block, 12, 8);
    let excess = largest_score_excess(&weights, &seqs);
    assert!(
        excess > 200.0,
        "scores exceed their step's own by at most 2^{excess}"
    );
    check_batches!(microgpt_16, &weights, &seqs);
}
