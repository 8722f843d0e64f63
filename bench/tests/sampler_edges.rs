//! The sampler's edges in every variant this build provides (the references, the generated CPU
//! kernels, the JIT; the CUDA rows where a GPU is present, the candle row with `peers`): draws
//! with `r` at 0, one step above it, one half and the largest uniform below 1 (where the last CDF
//! entry can fall below `r`: the contract's answer is the last token, never token 0), for logits
//! all equal, of the trained weights' spread and far apart, at the smallest temperature the bench
//! accepts, the default and a large one. Teacher-forced through every position against each
//! row's oracle; a draw within 1e-6 of a boundary of the oracle's CDF is excused, as in the
//! bench's check. (TALOS-V2 draws with its own sampler by design; its edges are in its tests.)

use microgpt_model::Shape;
use microgpt_runtime::check::teacher_forced_with;
use microgpt_runtime::{Settings, Variant};
use microgpt_testdata::full_length_sequences;
use microgpt_testdata::props::{EDGE_TEMPERATURES, SAMPLER_EDGES};
use microgpt_weights::{Weights, default_weights};

fn weights() -> Vec<(&'static str, Weights)> {
    let trained = default_weights();
    let zeros = Weights::new(Shape::DEFAULT, vec![0.0; Shape::DEFAULT.param_count()], "zeros").unwrap();
    let mut far = trained.clone();
    for w in far.data_mut() {
        *w *= 4.0;
    }
    vec![
        ("all-equal logits", zeros),
        ("trained", trained),
        ("trained x4", far),
    ]
}

#[test]
fn every_variant_draws_like_its_oracle_at_the_edges() {
    assert_eq!(EDGE_TEMPERATURES[0], microgpt_runtime::sampler::MIN_TEMPERATURE);
    let seqs = full_length_sequences(Shape::DEFAULT.vocab, Shape::DEFAULT.block, 1, 7);
    let mut checked = 0;
    for (what, weights) in weights() {
        for temperature in EDGE_TEMPERATURES {
            let settings = Settings { temperature };
            for spec in microgpt_bench::registry() {
                if spec.shape.is_some_and(|s| s != Shape::DEFAULT) {
                    continue;
                }
                let mut variant: Box<dyn Variant> = match spec.prepare(&weights, &settings) {
                    Ok(v) => v,
                    Err(why) => {
                        if temperature == 0.5 && what == "trained" {
                            eprintln!("{}: not run here: {why}", spec.name);
                        }
                        continue;
                    }
                };
                let info = variant.info().clone();
                let Some(mut oracle) = info.oracle.build(&weights, &settings) else {
                    continue;
                };
                for r in SAMPLER_EDGES {
                    let a =
                        teacher_forced_with(variant.as_mut(), oracle.as_mut(), &seqs, temperature, &mut || r);
                    if info.exact_tokens {
                        assert_eq!(
                            a.differed, 0,
                            "{} ({what}, T={temperature}, r={r}): draws differ from {}: {a:?}",
                            info.name, a.oracle
                        );
                    }
                    assert!(
                        !a.max_abs_logit_diff.is_nan(),
                        "{} ({what}, T={temperature}): NaN logits",
                        info.name
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 9 * 3, "only {checked} variant runs");
}
