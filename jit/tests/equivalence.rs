//! The JIT against the references, teacher-forced, for several shapes: fp32 logits within 1e-4
//! (and of the float64 golden logits), Q4.12 logits bit-identical. The verifier runs on every
//! compiled function.

use microgpt_jit::{JitOptions, JitVariant, Precision, compile};
use microgpt_model::Shape;
use microgpt_runtime::Oracle;
use microgpt_runtime::check::teacher_forced;
use microgpt_runtime::{Settings, Variant};
use microgpt_testdata::{full_length_sequences, golden_logits, golden_max_diff, shared_data};
use microgpt_weights::{LoadOptions, Weights, load};

fn options(precision: Precision) -> JitOptions {
    JitOptions {
        verify: true,
        ..JitOptions::new(precision)
    }
}

/// Shapes covering: the default; two layers; three layers with widths that leave vector padding
/// (embd 12, mlp 20, vocab 11); heads of 2 channels in a padded embedding (embd 6); heads of 5
/// channels, which straddle vectors; a single-layer model with one head.
fn shapes() -> Vec<Shape> {
    vec![
        Shape::DEFAULT,
        Shape::new(27, 16, 32, 4, 2, 128).unwrap(),
        Shape::new(11, 8, 12, 3, 3, 20).unwrap(),
        Shape::new(7, 5, 6, 3, 2, 10).unwrap(),
        Shape::new(9, 6, 10, 2, 1, 7).unwrap(),
        Shape::new(5, 4, 8, 1, 1, 8).unwrap(),
    ]
}

fn check(weights: &Weights, precision: Precision, opts: &JitOptions) {
    let shape = *weights.shape();
    let settings = Settings::default();
    let mut jit = JitVariant::new(weights, &settings, opts).unwrap_or_else(|e| panic!("{shape}: {e}"));
    let mut oracle: Box<dyn Variant> = Oracle::for_precision(precision)
        .build(weights, &settings)
        .expect("fp32 and Q4.12 have a reference");
    let seqs = full_length_sequences(shape.vocab, shape.block, 8, 5);
    let a = teacher_forced(&mut jit, oracle.as_mut(), &seqs, settings.temperature, 3);
    assert_eq!(a.differed, 0, "{shape} {precision:?}: tokens differ: {a:?}");
    if precision == Precision::Q412 {
        assert_eq!(a.max_abs_logit_diff, 0.0, "{shape}: Q4.12 integers differ");
    } else {
        assert!(
            a.max_abs_logit_diff <= 1e-4,
            "{shape}: max |Δlogit| {}",
            a.max_abs_logit_diff
        );
    }
    eprintln!(
        "{shape} {precision:?}: {} steps, max |Δlogit| {:.2e}, {} boundary draws, compiled in {:.1} ms",
        a.tokens,
        a.max_abs_logit_diff,
        a.excused,
        jit.jit().compile_ms()
    );
}

#[test]
fn fp32_matches_the_reference_for_every_shape() {
    for (i, shape) in shapes().into_iter().enumerate() {
        check(
            &Weights::random(shape, i as u64 + 1, 0.3),
            Precision::F32,
            &options(Precision::F32),
        );
    }
}

#[test]
fn q412_matches_the_reference_bit_for_bit_for_every_shape() {
    for (i, shape) in shapes().into_iter().enumerate() {
        check(
            &Weights::random(shape, i as u64 + 11, 0.3),
            Precision::Q412,
            &options(Precision::Q412),
        );
    }
}

#[test]
fn both_match_on_the_default_weights() {
    let w = microgpt_weights::default_weights();
    check(&w, Precision::F32, &options(Precision::F32));
    check(&w, Precision::Q412, &options(Precision::Q412));
}

/// Without FMA, fused multiply-adds become calls to `fmaf`, which the JIT provides.
#[test]
fn fma_falls_back_to_the_library_call() {
    let opts = JitOptions {
        without_fma: true,
        disassemble: true,
        ..options(Precision::F32)
    };
    let w = Weights::random(Shape::DEFAULT, 4, 0.4);
    check(&w, Precision::F32, &opts);
    #[cfg(target_arch = "x86_64")]
    {
        let jit = compile(&w, &Settings::default(), &opts).unwrap();
        let asm = jit.asm().expect("disassembly requested");
        assert!(!asm.contains("vfmadd"), "no FMA instruction without FMA");
        let fused = JitOptions {
            disassemble: true,
            ..options(Precision::F32)
        };
        let with = compile(&w, &Settings::default(), &fused).unwrap();
        if std::arch::is_x86_feature_detected!("fma") {
            assert!(with.asm().unwrap().contains("vfmadd"), "FMA used when available");
        }
    }
}

#[test]
fn shapes_too_large_to_unroll_are_refused_with_the_count() {
    let shape = Shape::parse("embd=512,mlp=4096").unwrap();
    assert!(shape.weight_macs() > microgpt_jit::MAX_MACS);
    let w = Weights::random(shape, 1, 0.01);
    let err = compile(&w, &Settings::default(), &options(Precision::F32))
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains(&shape.weight_macs().to_string()),
        "{err}"
    );
}

#[test]
fn fp32_matches_the_golden_logits() {
    let test = "fp32_matches_the_golden_logits";
    let (Some(doc), Some(path)) = (golden_logits(test), shared_data("talos/weights_fp32.bin", test)) else {
        return;
    };
    let weights = load(&path, &LoadOptions::default()).unwrap();
    let mut jit = compile(&weights, &Settings::default(), &options(Precision::F32)).unwrap();
    let worst = golden_max_diff(&doc, |tok, pos| {
        jit.step(tok, pos, 0.5);
        jit.logits()
    });
    assert!(worst <= 1e-4, "max |Δlogit| vs golden {worst}");
}

#[test]
fn clif_names_the_ops_and_compiles_quickly_enough_to_notice() {
    let w = microgpt_weights::default_weights();
    let with_clif = |p| JitOptions {
        clif: true,
        ..options(p)
    };
    let jit = compile(&w, &Settings::default(), &with_clif(Precision::F32)).unwrap();
    let clif = jit.clif().expect("CLIF requested");
    assert!(clif.contains("function") && clif.contains("f32x4") && clif.contains("fma"));
    // Source locations carry the op index: the last op (the logits) is 14, the sampler 15.
    assert!(
        clif.contains("@000e") && clif.contains("@000f"),
        "op indices as source locations"
    );
    assert!(jit.compile_ms() > 0.0);
    let q = compile(&w, &Settings::default(), &with_clif(Precision::Q412)).unwrap();
    let q = q.clif().expect("CLIF requested");
    assert!(q.contains("iadd_pairwise") && q.contains("i16x8"));
    let plain = compile(&w, &Settings::default(), &options(Precision::F32)).unwrap();
    assert!(plain.clif().is_none(), "CLIF text only when asked for");
}
