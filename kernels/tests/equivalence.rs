//! Every generated kernel against the references, teacher-forced: the same token, position and
//! uniform draw at every step of full-length sequences, logits and drawn tokens compared.
//!
//! fp32 kernels: logits within 1e-4 of the fp32 reference and of the float64 golden logits,
//! tokens equal except draws within 1e-6 of a CDF boundary. Q4.12 kernels: logits (integers
//! / 4096) bit-identical to the scalar Q4.12 reference.

use microgpt_model::Shape;
use microgpt_runtime::bench::BOUNDARY_TOLERANCE;
use microgpt_runtime::variant::{q412_variant, reference_variant};
use microgpt_runtime::{Precision, Sampler, Settings, Variant, VariantSpec, XorShift32};
use microgpt_testdata::shared_data;
use microgpt_weights::{LoadOptions, Weights, load};

/// Kernels a target must be able to run here. On CI (`CI` set) a kernel that cannot be prepared
/// fails the test; elsewhere it is reported and skipped.
fn prepare(spec: &VariantSpec, weights: &Weights) -> Option<Box<dyn Variant>> {
    match spec.prepare(weights, &Settings::default()) {
        Ok(v) => Some(v),
        Err(reason) => {
            if std::env::var_os("CI").is_some() {
                panic!("{}: cannot run on this CI machine: {reason}", spec.name);
            }
            eprintln!("SKIPPED {}: {reason}", spec.name);
            None
        }
    }
}

fn specs_for(shape: Shape) -> Vec<VariantSpec> {
    microgpt_kernels::variants()
        .into_iter()
        .filter(|s| s.shape == Some(shape))
        .collect()
}

/// Token sequences covering every position `0..block` (BOS first, then pseudo-random tokens).
fn sequences(shape: &Shape, count: usize, seed: u32) -> Vec<Vec<usize>> {
    let mut rng = XorShift32::new(seed);
    (0..count)
        .map(|_| {
            let mut seq = vec![shape.bos()];
            seq.extend((1..shape.block).map(|_| (rng.step() as usize >> 3) % shape.vocab));
            seq
        })
        .collect()
}

struct Compared {
    max_diff: f64,
    steps: usize,
    excused: usize,
    /// Q4.12 logits away from saturation (so equality is not vacuous).
    unsaturated: usize,
}

/// Feeds both the same sequences and draws; returns the largest logit difference. Panics on a
/// token difference that is not excused, or (when `exact`) on any logit difference.
fn compare(
    name: &str,
    oracle: &mut dyn Variant,
    kernel: &mut dyn Variant,
    seqs: &[Vec<usize>],
    exact: bool,
) -> Compared {
    let mut rng = XorShift32::new(7);
    let mut sampler = Sampler::new(Settings::default().temperature);
    let mut c = Compared {
        max_diff: 0.0,
        steps: 0,
        excused: 0,
        unsaturated: 0,
    };
    for seq in seqs {
        for (pos, &tok) in seq.iter().enumerate() {
            let r = rng.uniform();
            let want = oracle.step(tok, pos, r);
            let got = kernel.step(tok, pos, r);
            let (lo, lk) = (oracle.logits(), kernel.logits());
            assert_eq!(lo.len(), lk.len());
            if exact {
                assert_eq!(lo, lk, "{name}: logits differ at pos {pos} (tok {tok})");
                c.unsaturated += lo.iter().filter(|l| l.abs() < 7.99).count();
            }
            for (a, b) in lo.iter().zip(&lk) {
                let d = (*a as f64 - *b as f64).abs();
                assert!(!d.is_nan(), "{name}: NaN logit");
                c.max_diff = c.max_diff.max(d);
            }
            if got != want {
                sampler.draw(&lo, r);
                let dist = sampler.boundary_distance(r);
                assert!(
                    dist < BOUNDARY_TOLERANCE,
                    "{name}: drew {got}, reference {want} at pos {pos}; r = {r} is {dist} from a boundary"
                );
                c.excused += 1;
            }
            c.steps += 1;
        }
    }
    c
}

fn check_shape(shape: Shape, weights: &Weights, seqs: &[Vec<usize>]) -> usize {
    let specs = specs_for(shape);
    assert!(specs.len() >= 8, "kernels of shape {shape}: {}", specs.len());
    let mut ran = 0;
    for spec in &specs {
        let Some(mut kernel) = prepare(spec, weights) else {
            continue;
        };
        let (mut oracle, exact): (Box<dyn Variant>, bool) = match spec.precision {
            Precision::F32 => (
                Box::new(reference_variant::<f32>(weights, &Settings::default())),
                false,
            ),
            Precision::Q412 => (Box::new(q412_variant(weights, &Settings::default())), true),
            p => panic!("{}: unexpected precision {p}", spec.name),
        };
        let c = compare(&spec.name, oracle.as_mut(), kernel.as_mut(), seqs, exact);
        if exact {
            let total = c.steps * shape.vocab;
            assert!(
                c.unsaturated * 2 > total,
                "{}: {} of {total} logits unsaturated",
                spec.name,
                c.unsaturated
            );
        } else {
            assert!(c.max_diff <= 1e-4, "{}: max |Δlogit| {}", spec.name, c.max_diff);
        }
        eprintln!(
            "{shape} {}: {} steps, max |Δlogit| {:.2e}, {} boundary draws",
            spec.name, c.steps, c.max_diff, c.excused
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
        let ran = check_shape(shape, &weights, &sequences(&shape, 12, seed as u32));
        assert!(ran > 0);
    }
}

#[test]
fn larger_shape_kernels_match_the_references_on_random_weights() {
    let shape = microgpt_kernels::microgpt_32x2::SHAPE;
    assert_eq!(shape.layers, 2);
    let weights = Weights::random(shape, 3, 0.3);
    assert!(check_shape(shape, &weights, &sequences(&shape, 8, 3)) > 0);
}

#[test]
fn default_shape_kernels_match_on_the_default_weights() {
    let weights = microgpt_weights::default_weights();
    let shape = *weights.shape();
    assert!(check_shape(shape, &weights, &sequences(&shape, 10, 11)) > 0);
}

/// fp32 kernels against the float64 golden logits of the TALOS weights.
#[test]
fn fp32_kernels_match_the_golden_logits() {
    let test = "fp32_kernels_match_the_golden_logits";
    let (Some(json), Some(path)) = (
        shared_data("golden_logits_talos.json", test),
        shared_data("talos/weights_fp32.bin", test),
    ) else {
        return;
    };
    let weights = load(&path, &LoadOptions::default()).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    for spec in specs_for(Shape::DEFAULT)
        .iter()
        .filter(|s| s.precision == Precision::F32)
    {
        let Some(mut kernel) = prepare(spec, &weights) else {
            continue;
        };
        let mut worst = 0.0f64;
        for seq in doc["sequences"].as_array().unwrap() {
            let tokens = seq["tokens"].as_array().unwrap();
            let logits = seq["logits"].as_array().unwrap();
            for (pos, (tok, want)) in tokens.iter().zip(logits).enumerate() {
                kernel.step(tok.as_u64().unwrap() as usize, pos, 0.5);
                for (g, w) in kernel.logits().iter().zip(want.as_array().unwrap()) {
                    worst = worst.max((*g as f64 - w.as_f64().unwrap()).abs());
                }
            }
        }
        assert!(worst <= 1e-4, "{}: max |Δlogit| vs golden {worst}", spec.name);
        eprintln!("{}: max |Δlogit| vs golden {worst:.2e}", spec.name);
    }
}

/// The kernels a CPU with AVX-512 VNNI (CI's) must have run: the test fails if a path it should
/// cover was skipped.
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
            "avx2-f32",
            "avx512-f32",
            "avx2-q4.12",
            "avx512-q4.12",
            "avx512-f32-table",
        ]);
    }
    if cfg!(target_arch = "aarch64") {
        expected.extend(["neon-f32", "neon-q4.12", "neon-f32-table", "neon-q4.12-table"]);
    }
    for e in expected {
        assert!(names.iter().any(|n| n == e), "{e} missing from {names:?}");
    }
}
