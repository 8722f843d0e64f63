//! The reference engines against the float64 golden logits of the TALOS weights.

use microgpt_model::numerics::max_error;
use microgpt_runtime::{Q412Reference, Reference};
use microgpt_testdata::shared_data;
use microgpt_weights::{LoadOptions, Weights, load};

struct Golden {
    tokens: Vec<usize>,
    logits: Vec<Vec<f64>>,
}

fn golden(test: &str) -> Option<(Weights, Vec<Golden>)> {
    let json_path = shared_data("golden_logits_talos.json", test)?;
    let weights_path = shared_data("talos/weights_fp32.bin", test)?;
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json_path).unwrap()).unwrap();
    let seqs = doc["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Golden {
            tokens: s["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as usize)
                .collect(),
            logits: s["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| {
                    row.as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap())
                        .collect()
                })
                .collect(),
        })
        .collect();
    Some((load(&weights_path, &LoadOptions::default()).unwrap(), seqs))
}

fn max_diff_over_golden<F: microgpt_runtime::Real>(weights: &Weights, seqs: &[Golden]) -> f64 {
    let mut worst = 0.0f64;
    for seq in seqs {
        let mut engine = Reference::<F>::new(weights);
        assert_eq!(seq.tokens.len(), seq.logits.len());
        for (pos, (&tok, want)) in seq.tokens.iter().zip(&seq.logits).enumerate() {
            let got = engine.forward(tok, pos);
            assert_eq!(got.len(), 27);
            for (g, w) in got.iter().zip(want) {
                worst = max_error(worst, (g.to_f64() - w).abs());
            }
        }
    }
    worst
}

#[test]
fn f32_reference_matches_golden_logits() {
    let Some((weights, seqs)) = golden("f32_reference_matches_golden_logits") else {
        return;
    };
    assert_eq!(seqs.len(), 4);
    let d = max_diff_over_golden::<f32>(&weights, &seqs);
    assert!(d <= 1e-4, "max |Δlogit| {d}");
    eprintln!("f32 reference: max |Δlogit| vs golden = {d:.2e}");
}

#[test]
fn f64_reference_matches_golden_logits_closely() {
    let Some((weights, seqs)) = golden("f64_reference_matches_golden_logits_closely") else {
        return;
    };
    let d = max_diff_over_golden::<f64>(&weights, &seqs);
    assert!(d <= 1e-9, "max |Δlogit| {d}");
}

#[test]
fn q412_reference_tracks_the_float_model() {
    let Some((weights, seqs)) = golden("q412_reference_tracks_the_float_model") else {
        return;
    };
    let mut worst = 0.0f64;
    for seq in &seqs {
        let mut engine = Q412Reference::new(&weights);
        for (pos, (&tok, want)) in seq.tokens.iter().zip(&seq.logits).enumerate() {
            engine.forward(tok, pos);
            for (g, w) in engine.logits_f32().iter().zip(want) {
                // Q4.12 saturates at ±8: compare only logits inside its range.
                if w.abs() < 7.9 {
                    worst = max_error(worst, (*g as f64 - w).abs());
                }
            }
        }
    }
    eprintln!("Q4.12 reference: max |Δlogit| vs golden (unsaturated logits) = {worst:.3e}");
    // Quantisation error, not a bug: small but clearly nonzero.
    assert!(worst > 1e-4 && worst < 0.02, "Q4.12 max |Δlogit| {worst}");
}
